// SPDX-License-Identifier: GPL-3.0-or-later
//! The `fanout-milter` command: serve the milter, check the configuration, explain a
//! verdict offline.

use clap::{Parser, Subcommand};
use fanout_milter::config::{self, Config, DEFAULT_CONFIG_PATH};
use fanout_milter::control;
use fanout_milter::directory::ldap::Snapshots;
use fanout_milter::directory::{Directory, DriftMode, drift::KnownSizes};
use fanout_milter::explain::{ExplainInput, explain, lookup_text};
use fanout_milter::quarantine::admin::{Admin, invoking_user};
use fanout_milter::quarantine::postfix::PostfixTools;
use fanout_milter::quarantine::record::epoch_secs;
use fanout_milter::quarantine::running;
use fanout_milter::quarantine::{Filter, QueueId, State, Store, StoreError};
use fanout_milter::state_dir::StateDir;
use fanout_milter::{NAME, VERSION, daemon, logging, text};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

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
    /// Reply-all storms in the running daemon (through its admin socket).
    Storms {
        #[command(subcommand)]
        command: StormsCommand,
    },
    /// Review held messages (run as root: uses postqueue, postsuper and postcat).
    Quarantine {
        /// Pretend the time is this (RFC 3339 or seconds since the epoch); for tests.
        #[arg(long, hide = true, global = true)]
        now: Option<String>,
        #[command(subcommand)]
        command: QuarantineCommand,
    },
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
        /// Postfix queue id.
        id: String,
    },
    /// Release held messages for delivery (postsuper -H).
    Release {
        /// Postfix queue ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why, for the audit trail.
        #[arg(long)]
        comment: Option<String>,
        /// Also act on messages another tool held (state "foreign").
        #[arg(long)]
        foreign: bool,
    },
    /// Delete held messages (postsuper -d), optionally telling each sender.
    Discard {
        /// Postfix queue ids.
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
    /// Compare the records with Postfix's hold queue both ways and fix the records.
    Reconcile,
    /// Reconcile, escalate messages held past review_within, expire those held past
    /// expire_after (the systemd timer runs this).
    Sweep,
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
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::Explain {
            from,
            rcpts,
            sasl_login,
            client,
            json,
            message,
        } => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let directory = match load_directory(&config) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let message = match message.as_deref().map(read_message).transpose() {
                Ok(m) => m,
                Err(e) => {
                    complain(&e);
                    return ExitCode::from(1);
                }
            };
            let input = ExplainInput {
                from,
                rcpts,
                sasl_login,
                client,
                message,
            };
            let explanation = explain(&config, &directory, input);
            if json {
                let json = format!("{:#}", explanation.to_json());
                println!("{}", text::neutralize_json(&json));
            } else {
                print!("{}", explanation.to_text());
            }
            ExitCode::SUCCESS
        }
        Command::Directory { command } => directory_command(&cli.config, command),
        Command::Storms { command } => storms_command(&cli.config, command),
        Command::Quarantine { now, command } => {
            quarantine_command(&cli.config, now.as_deref(), command)
        }
    }
}

fn storms_command(path: &Path, command: StormsCommand) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let socket = &config.admin_socket;
    let request = match &command {
        StormsCommand::List { .. } => control::Request::StormsList,
        StormsCommand::Clear { id } => control::Request::StormsClear { id: id.clone() },
    };
    let response = match control::request(socket, &request) {
        Ok(r) => r,
        Err(e) => {
            complain(&e);
            return ExitCode::from(1);
        }
    };
    match (command, response) {
        (StormsCommand::List { json: true }, control::Response::Storms { storms }) => {
            let json = serde_json::to_string_pretty(&storms).unwrap_or_default();
            println!("{}", text::neutralize_json(&json));
            ExitCode::SUCCESS
        }
        (StormsCommand::List { json: false }, control::Response::Storms { storms }) => {
            print!("{}", control::storms_text(&storms));
            ExitCode::SUCCESS
        }
        (StormsCommand::Clear { id }, control::Response::Cleared { found }) => {
            if found {
                println!("storm {id} cleared: replies in its thread flow again");
                ExitCode::SUCCESS
            } else {
                println!("no storm {id} in progress");
                ExitCode::from(1)
            }
        }
        (_, control::Response::Error { message }) => {
            complain(format_args!("the daemon refused: {message}"));
            ExitCode::from(1)
        }
        (_, other) => {
            complain(format_args!("unexpected answer from the daemon: {other:?}"));
            ExitCode::from(1)
        }
    }
}

fn parse_now(now: Option<&str>) -> Result<u64, String> {
    match now {
        None => Ok(epoch_secs(SystemTime::now())),
        Some(s) => s
            .parse::<u64>()
            .or_else(|_| humantime::parse_rfc3339_weak(s).map(epoch_secs))
            .map_err(|e| format!("--now {s}: {e}")),
    }
}

fn quarantine_command(path: &Path, now: Option<&str>, command: QuarantineCommand) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let now = match parse_now(now) {
        Ok(n) => n,
        Err(e) => {
            complain(&e);
            return ExitCode::from(2);
        }
    };
    if let Err(e) = check_state_dir(path, &config) {
        complain(&e);
        return ExitCode::from(1);
    }
    let store = match Store::open(&config.state_dir) {
        Ok(s) => s,
        Err(e) => {
            complain(&e);
            return ExitCode::from(1);
        }
    };
    let admin = Admin {
        config: &config,
        store: &store,
        postfix: PostfixTools::new(config.postfix.clone()),
        who: invoking_user(),
        now,
    };
    let report = match command {
        QuarantineCommand::List { state, since, json } => {
            let filter = Filter {
                state,
                since: since.map(|d| now.saturating_sub(d.as_secs())),
            };
            return printed(admin.list(&filter, json));
        }
        QuarantineCommand::Show { id } => match QueueId::parse(&id) {
            Ok(id) => return printed(admin.show(&id)),
            Err(e) => {
                complain(&e);
                return ExitCode::from(2);
            }
        },
        QuarantineCommand::Release {
            ids,
            comment,
            foreign,
        } => admin.release(&ids, comment.as_deref(), foreign),
        QuarantineCommand::Discard {
            ids,
            notify_sender,
            comment,
            foreign,
        } => admin.discard(&ids, notify_sender, comment.as_deref(), foreign),
        QuarantineCommand::Reconcile => admin.reconcile(),
        QuarantineCommand::Sweep => admin.sweep(),
    };
    print!("{}", text::neutralize_lines(&report.text));
    if report.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Root commands use the state directory only when it belongs to root or to
/// `[quarantine] state_owner` (see `state_dir`); a missing one is created by root. And
/// only when it is the one the running daemon (started with the same file) uses: a
/// changed `state_dir` takes effect at restart ([`running::check_same_store`]).
fn check_state_dir(path: &Path, config: &Config) -> Result<(), String> {
    running::check_same_store(path, Path::new(DEFAULT_CONFIG_PATH), &config.state_dir)?;
    match std::fs::symlink_metadata(&config.state_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => StateDir::open(&config.state_dir, Some(&config.state_owner))
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

fn printed(result: Result<String, StoreError>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain(&e);
            ExitCode::from(1)
        }
    }
}

fn load_directory(config: &Config) -> Result<Directory, ExitCode> {
    let (snapshots, errors) = Snapshots::load_saved(config);
    for e in errors {
        complain(format_args!("warning: LDAP snapshot not used: {e}"));
    }
    for s in config.directories.iter().filter_map(|d| d.ldap.as_ref()) {
        match snapshots.by_source.get(&s.name) {
            Some(snap) => eprintln!(
                "{NAME}: LDAP source {}: snapshot taken {} ago ({} entries, {} lists){}",
                s.name,
                humantime::format_duration(std::time::Duration::from_secs(
                    snap.age(snapshots.now).as_secs()
                )),
                snap.stats.entries,
                snap.stats.lists,
                if snap.age(snapshots.now) > s.max_staleness {
                    ", older than max_staleness"
                } else {
                    ""
                }
            ),
            None => eprintln!(
                "{NAME}: LDAP source {}: no snapshot in {} yet (the daemon takes one)",
                s.name,
                config.state_dir.display()
            ),
        }
    }
    Directory::load(config, DriftMode::ReadOnly, &snapshots).map_err(|e| {
        complain(&e);
        ExitCode::from(1)
    })
}

fn directory_command(path: &Path, command: DirectoryCommand) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let DirectoryCommand::Refresh { source } = command {
        return directory_refresh(&config, source);
    }
    if let DirectoryCommand::Accept {
        source: Some(source),
        ..
    } = command
    {
        return directory_daemon(&config, control::Request::DirectoryAccept { source });
    }
    if let Err(e) = check_state_dir(path, &config) {
        complain(&e);
        return ExitCode::from(1);
    }
    let directory = match load_directory(&config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    for w in &directory.report.warnings {
        complain(format_args!("warning: {w}"));
    }
    match command {
        DirectoryCommand::Lookup {
            address,
            members,
            live,
        } => {
            let address = config.postfix.address_form().canonical(&address);
            print!(
                "{}",
                lookup_text(&directory, &config.policy, &address, members)
            );
            if live {
                return live_lookup(&config, &address);
            }
            ExitCode::SUCCESS
        }
        DirectoryCommand::Accept { address, .. } => {
            let address = address.unwrap_or_default();
            let Some(list) = directory.index.list(&address) else {
                complain(format_args!(
                    "{address} is not a list of the configured directory"
                ));
                return ExitCode::from(1);
            };
            let size = list.total();
            let mut known = match KnownSizes::load(&config.state_dir) {
                Ok(k) => k,
                Err(e) => {
                    complain(&e);
                    return ExitCode::from(1);
                }
            };
            let previous = known.accept(&list.address, size);
            if let Err(e) = known.save(&config.state_dir) {
                complain(&e);
                return ExitCode::from(1);
            }
            let name = text::neutralize(&list.address);
            match previous {
                Some(p) => println!("{name}: accepted size {size} (was {p})"),
                None => println!("{name}: accepted size {size}"),
            }
            println!("reload the daemon to apply it: systemctl reload fanout-milter");
            ExitCode::SUCCESS
        }
        DirectoryCommand::Refresh { source } => directory_refresh(&config, source),
    }
}

/// `directory lookup --live`: what each LDAP server says about an address now.
fn live_lookup(config: &Config, address: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            complain(&e);
            return ExitCode::from(1);
        }
    };
    let mut code = ExitCode::SUCCESS;
    let folded = fanout_milter::policy::address::fold_case(address);
    for s in config.directories.iter().filter_map(|d| d.ldap.as_ref()) {
        let found = runtime.block_on(async {
            tokio::time::timeout(
                s.timeout,
                fanout_milter::directory::ldap::live_lookup_as_postfix(
                    s,
                    address,
                    &config.postfix.recipient_delimiter,
                ),
            )
            .await
        });
        if let Ok(Ok((key, _))) = &found
            && *key != folded
        {
            println!(
                "live in LDAP source {}: no entry for {}; looked up as {} \
                 (recipient_delimiter), as Postfix does",
                s.name,
                fanout_milter::text::neutralize(&folded),
                fanout_milter::text::neutralize(key)
            );
        }
        match found {
            Ok(Ok((_, entries))) if entries.is_empty() => {
                println!("live in LDAP source {}: no entry", s.name);
            }
            Ok(Ok((_, entries))) => {
                for e in entries {
                    let kind = if e.list {
                        format!("list, {} direct members", e.direct_members)
                    } else {
                        "mailbox".to_owned()
                    };
                    println!(
                        "live in LDAP source {}: {} ({kind}); addresses: {}",
                        s.name,
                        text::neutralize(&e.dn),
                        text::neutralize(&e.addresses.join(", "))
                    );
                }
            }
            Ok(Err(e)) => {
                complain(format_args!("LDAP source {}: {e}", s.name));
                code = ExitCode::from(1);
            }
            Err(_) => {
                eprintln!(
                    "{NAME}: LDAP source {}: no answer within {}",
                    s.name,
                    humantime::format_duration(s.timeout)
                );
                code = ExitCode::from(1);
            }
        }
    }
    code
}

/// `directory refresh`: asks the daemon to refresh its LDAP sources now.
fn directory_refresh(config: &Config, source: Option<String>) -> ExitCode {
    if !config.directories.iter().any(|d| d.ldap.is_some()) {
        eprintln!("{NAME}: the configuration has no LDAP source");
        return ExitCode::from(1);
    }
    directory_daemon(config, control::Request::DirectoryRefresh { source })
}

/// `directory refresh` and `directory accept --source`: one request to the daemon,
/// one line per source.
fn directory_daemon(config: &Config, request: control::Request) -> ExitCode {
    let done = match request {
        control::Request::DirectoryAccept { .. } => "accepted",
        _ => "refreshed",
    };
    match control::request(&config.admin_socket, &request) {
        Ok(control::Response::Refreshed { outcomes }) => {
            let mut failed = false;
            for o in outcomes {
                failed |= !o.ok;
                let state = match (o.ok, o.refused) {
                    (true, _) => done,
                    (false, true) => "REFUSED",
                    (false, false) => "FAILED",
                };
                println!(
                    "{}: {state}: {}",
                    text::neutralize(&o.source),
                    text::neutralize(&o.message)
                );
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(control::Response::Error { message }) => {
            complain(&message);
            ExitCode::from(1)
        }
        Ok(other) => {
            complain(format_args!("unexpected answer: {other:?}"));
            ExitCode::from(1)
        }
        Err(e) => {
            complain(&e);
            ExitCode::from(1)
        }
    }
}

fn read_message(path: &Path) -> Result<Vec<u8>, String> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read the message from standard input: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// Prints `message` to standard error after the program's name, neutralised line by
/// line ([`text::neutralize_lines`]): error texts quote table files, directory data,
/// server diagnostics and the daemon's answers.
fn complain(message: impl std::fmt::Display) {
    eprintln!("{NAME}: {}", text::neutralize_lines(&message.to_string()));
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        complain(format_args!("configuration error:\n{e}"));
        ExitCode::from(1)
    })
}

fn check_config(path: &Path) -> ExitCode {
    match load(path) {
        Ok(mut config) => {
            if let Some(warning) = config.listen.exposure_warning() {
                complain(format_args!("warning: {warning}"));
            }
            println!(
                "# {}: configuration OK; effective settings:",
                path.display()
            );
            println!(
                "# [postfix] recipient_delimiter: {}",
                config.postfix.delimiter_origin
            );
            config.raw.postfix.recipient_delimiter =
                Some(config.postfix.recipient_delimiter.as_str().to_owned());
            println!("# [postfix] myorigin: {}", config.postfix.myorigin_origin);
            config.raw.postfix.myorigin = Some(config.postfix.myorigin.clone());
            print!("{}", config.effective_toml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // What the daemon creates (state directory, quarantine store, LDAP snapshots, list
    // sizes) holds subjects and recipients: its own user's only, with or without systemd.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    logging::init(&config.raw.logging.level, config.raw.logging.format);
    let runtime = match runtime_builder(config.threads).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config))
}

/// One thread by default: waking one thread for each of Postfix's packets costs less
/// than handing work between threads (scripts/bench-pipeline measured 135-170 us of milter
/// CPU per message against 220-290 us with a worker per core).
fn runtime_builder(threads: usize) -> tokio::runtime::Builder {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
}

async fn serve(config: Config) -> ExitCode {
    info!(version = VERSION, config = %config.file.display(), mode = config.policy.mode.as_str(), "starting");
    let daemon = match daemon::Builder::new(config).start().await {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    let generation = daemon.generation();
    let config = &generation.config;
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            error!("cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    if let Some(warning) = config.listen.exposure_warning() {
        warn!("{warning}");
    }
    info!(listen = %config.listen, "listening");

    let (reload_tx, reload_rx) = mpsc::channel(4);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM received"); break; }
                _ = int.recv() => { info!("SIGINT received"); break; }
                _ = hup.recv() => {
                    info!("SIGHUP received, reloading configuration");
                    let (ack, _) = oneshot::channel();
                    let _ = reload_tx.send(ack).await;
                }
            }
        }
        let _ = shutdown_tx.send(());
    });
    let shutdown = async move {
        let _ = shutdown_rx.await;
    };
    match daemon.run(reload_rx, shutdown).await {
        Ok(()) => {
            info!("shut down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("milter stopped: {e}");
            ExitCode::from(1)
        }
    }
}
