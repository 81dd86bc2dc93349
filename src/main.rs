// SPDX-License-Identifier: GPL-3.0-or-later
//! The `fanout-milter` command: serve the milter, check the configuration, explain a
//! verdict offline, look into the directory, storms and the quarantine. The clap types
//! and the dispatch to [`fanout_milter::cli`], which runs and prints each command.

use clap::{Parser, Subcommand};
use fanout_milter::cli::{
    self, Outcome, brake, check, directory, explain, quarantine, review, stats, storms,
};
use fanout_milter::config::DEFAULT_CONFIG_PATH;
use fanout_milter::explain::ExplainInput;
use fanout_milter::quarantine::State;
use fanout_milter::{NAME, VERSION};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = NAME, version = VERSION, about = "Postfix milter that stops outgoing mail whose real audience is dangerously large")]
struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the milter (the default).
    Run,
    /// Validate the configuration and print the effective settings.
    CheckConfig,
    /// Evaluate one message offline and print the verdict with its reasons.
    Explain {
        /// Envelope sender.
        #[arg(long)]
        from: String,
        /// Envelope recipient; repeat the option or separate addresses with commas.
        #[arg(long = "rcpt", required = true, value_delimiter = ',')]
        rcpts: Vec<String>,
        /// SASL login of the sender.
        #[arg(long)]
        sasl_login: Option<String>,
        /// Client IP address.
        #[arg(long)]
        client: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Message file with its headers; "-" reads standard input.
        message: Option<PathBuf>,
    },
    /// Look into the lists and aliases of the configured directory sources.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// The running daemon's metrics, as /metrics serves them, for a terminal (through
    /// its admin socket).
    Stats {
        /// Also show series at 0 and histogram buckets.
        #[arg(long)]
        all: bool,
        /// Print the Prometheus text as it is.
        #[arg(long, conflicts_with = "all")]
        raw: bool,
    },
    /// Reply-all storms in the running daemon (through its admin socket).
    Storms {
        #[command(subcommand)]
        command: StormsCommand,
    },
    /// The emergency brake: hold every message whose real audience is at least N, on
    /// every relay sharing the state backend (through the daemon's control socket).
    Brake {
        #[command(subcommand)]
        command: BrakeCommand,
    },
    /// Review held messages (run as root: uses postqueue, postsuper and postcat).
    Quarantine {
        /// Pretend the time is this (RFC 3339 or seconds since the epoch). Hidden
        /// because only tests need it: they age held messages past review_within and
        /// expire_after without waiting days.
        #[arg(long, hide = true, global = true)]
        now: Option<String>,
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Accounts of the web review desk ([review] users_file).
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Add a user, or change their role and password (asked twice unless given).
    Passwd {
        /// Login name: letters, digits and . _ @ -.
        user: String,
        /// viewer (reads), reviewer (acts on ordinary holds) or admin (acts on all).
        #[arg(long)]
        role: String,
        /// Read the password from the first line of this file instead of asking.
        #[arg(long, conflicts_with = "no_password")]
        password_file: Option<PathBuf>,
        /// No password: the user signs in only through the SSO proxy.
        #[arg(long)]
        no_password: bool,
    },
    /// List the users and their roles.
    Users,
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List quarantine records: id, age, state, sender, audience, rule, subject.
    List {
        /// Only records in this state: held, released, discarded, expired.
        #[arg(long)]
        state: Option<State>,
        /// Only records held within this long, e.g. 2h or 3d.
        #[arg(long)]
        since: Option<humantime::Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every fact of one held message, its blast radius and its headers.
    Show {
        /// Postfix queue id: this relay's record; with a fleet-wide store (PostgreSQL),
        /// RELAY:QUEUEID for another relay's (queue ids repeat across relays).
        id: String,
    },
    /// Release held messages for delivery (postsuper -H): files a request for each and
    /// carries it out at once. With --to, a copy goes to those envelope recipients only
    /// and the held original is deleted (the lists are left out).
    Release {
        /// Postfix queue ids: this relay's records; with a fleet-wide store
        /// (PostgreSQL), RELAY:QUEUEID for another relay's, carried out by its worker.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Deliver only to this envelope recipient of the message (repeat for more).
        #[arg(long = "to", value_name = "ADDRESS")]
        to: Vec<String>,
        /// Why, for the audit trail.
        #[arg(long)]
        comment: Option<String>,
        /// Also act on messages another tool held (state "foreign").
        #[arg(long)]
        foreign: bool,
    },
    /// Delete held messages (postsuper -d), optionally telling each sender: files a
    /// request for each and carries it out at once.
    Discard {
        /// Postfix queue ids: this relay's records; with a fleet-wide store
        /// (PostgreSQL), RELAY:QUEUEID for another relay's, carried out by its worker.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Mail the sender a notice that the message was not sent, why, and whom to ask.
        #[arg(long)]
        notify_sender: bool,
        /// Why, for the audit trail.
        #[arg(long)]
        comment: Option<String>,
        /// Also act on messages another tool held (state "foreign").
        #[arg(long)]
        foreign: bool,
    },
    /// Keep held messages held, and out of the sweep's reach, until a later time.
    Extend {
        /// Postfix queue ids: this relay's records; with a fleet-wide store
        /// (PostgreSQL), RELAY:QUEUEID for another relay's, carried out by its worker.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Until this time (RFC 3339, e.g. 2026-12-24T18:00:00Z).
        #[arg(long, conflicts_with = "for_", required_unless_present = "for_")]
        until: Option<String>,
        /// For this long from now, e.g. 2d.
        #[arg(long = "for")]
        for_: Option<humantime::Duration>,
        /// Why, for the audit trail.
        #[arg(long)]
        comment: Option<String>,
        /// Also act on messages another tool held (state "foreign").
        #[arg(long)]
        foreign: bool,
    },
    /// Compare the records with Postfix's hold queue both ways and fix the records.
    Reconcile,
    /// Reconcile, escalate messages held past review_within, expire those held past
    /// expire_after (the systemd timer runs this).
    Sweep,
    /// Carry out the action requests filed by the review desk, the digest links and
    /// these commands, until SIGTERM (fanout-milter-worker.service runs this as root).
    Worker,
}

#[derive(Subcommand)]
enum BrakeCommand {
    /// Pull the brake: hold every message whose real audience is at least N.
    On {
        /// The smallest audience held.
        #[arg(long)]
        min_audience: u64,
        /// Let go by itself after this long (e.g. 2h); until `brake off` when absent.
        #[arg(long = "for")]
        hold_for: Option<humantime::Duration>,
        /// Why (recorded with your name).
        #[arg(long)]
        comment: String,
    },
    /// Release the brake.
    Off {
        /// Why (recorded with your name).
        #[arg(long)]
        comment: String,
    },
    /// Whether the brake is on, since when, by whom.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StormsCommand {
    /// Reply-all storms in progress in the running daemon.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a storm now, so replies in its thread flow again.
    Clear {
        /// The storm's id (from `storms list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Show what one address reaches: count, first members, nested lists.
    Lookup {
        /// The address.
        address: String,
        /// How many members to list.
        #[arg(long, default_value_t = 20)]
        members: usize,
        /// Also look the address up on each LDAP server now (lookup_filter), to compare
        /// the directory with the snapshot.
        #[arg(long)]
        live: bool,
    },
    /// Accept a list's current size after it drifted, so its mail flows again
    /// (then reload the daemon); or, with --source, an LDAP refresh that was refused
    /// because it lost too many lists or members (the running daemon takes it now).
    Accept {
        /// The list address.
        #[arg(required_unless_present = "source", conflicts_with = "source")]
        address: Option<String>,
        /// Accept the refused refresh of this LDAP source (its `name`), and forget the
        /// lists that vanished from it.
        #[arg(long)]
        source: Option<String>,
    },
    /// Refresh the LDAP snapshots of the running daemon now and report the result.
    Refresh {
        /// Only this LDAP source (its `name`).
        #[arg(long)]
        source: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = &cli.config;
    let outcome = match cli.command.unwrap_or(Command::Run) {
        Command::Run => return cli::run::run(path),
        Command::CheckConfig => check::check_config(path),
        Command::Explain {
            from,
            rcpts,
            sasl_login,
            client,
            json,
            message,
        } => {
            let input = ExplainInput {
                from,
                rcpts,
                sasl_login,
                client,
                message: None,
            };
            explain::run(path, input, message.as_deref(), json)
        }
        Command::Directory { command } => match command {
            DirectoryCommand::Lookup {
                address,
                members,
                live,
            } => directory::lookup(path, &address, members, live),
            DirectoryCommand::Accept {
                source: Some(source),
                ..
            } => directory::accept_source(path, source),
            DirectoryCommand::Accept { address, .. } => {
                directory::accept(path, &address.unwrap_or_default())
            }
            DirectoryCommand::Refresh { source } => directory::refresh(path, source),
        },
        Command::Stats { all, raw } => stats::stats(path, all, raw),
        Command::Storms { command } => match command {
            StormsCommand::List { json } => storms::list(path, json),
            StormsCommand::Clear { id } => storms::clear(path, id),
        },
        Command::Brake { command } => match command {
            BrakeCommand::On {
                min_audience,
                hold_for,
                comment,
            } => brake::on(path, min_audience, hold_for.map(Into::into), comment),
            BrakeCommand::Off { comment } => brake::off(path, comment),
            BrakeCommand::Status { json } => brake::status(path, json),
        },
        Command::Quarantine { now, command } => quarantine_command(path, now.as_deref(), command),
        Command::Review { command } => match command {
            ReviewCommand::Passwd {
                user,
                role,
                password_file,
                no_password,
            } => review_passwd(path, &user, &role, password_file.as_deref(), no_password),
            ReviewCommand::Users => review::list(path),
        },
    };
    cli::exit(outcome)
}

fn review_passwd(
    path: &Path,
    user: &str,
    role: &str,
    password_file: Option<&Path>,
    no_password: bool,
) -> Outcome {
    let role = role.parse().map_err(cli::usage)?;
    let source = match password_file {
        Some(file) => review::PasswordSource::File(file),
        None if no_password => review::PasswordSource::None,
        None => review::PasswordSource::Prompt,
    };
    review::passwd(path, user, role, source)
}

fn quarantine_command(path: &Path, now: Option<&str>, command: QuarantineCommand) -> Outcome {
    let q = quarantine::Session::open(path, now)?;
    match command {
        QuarantineCommand::List { state, since, json } => {
            q.list(state, since.map(Into::into), json)
        }
        QuarantineCommand::Show { id } => q.show(&id),
        QuarantineCommand::Release {
            ids,
            to,
            comment,
            foreign,
        } => q.release(&ids, &to, comment.as_deref(), foreign),
        QuarantineCommand::Discard {
            ids,
            notify_sender,
            comment,
            foreign,
        } => q.discard(&ids, notify_sender, comment.as_deref(), foreign),
        QuarantineCommand::Extend {
            ids,
            until,
            for_,
            comment,
            foreign,
        } => q.extend(
            &ids,
            until.as_deref(),
            for_.map(Into::into),
            comment.as_deref(),
            foreign,
        ),
        QuarantineCommand::Reconcile => q.reconcile(),
        QuarantineCommand::Sweep => q.sweep(),
        QuarantineCommand::Worker => q.worker(),
    }
}
