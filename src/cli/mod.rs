// SPDX-License-Identifier: GPL-3.0-or-later
//! The commands behind `fanout-milter`'s command line, one module per command group;
//! `main.rs` holds only the clap types and calls these. Each command prints its own
//! output here and returns its exit code, or an error that [`exit`] prints.
//!
//! The commands sit in the library rather than in the binary so that they can use
//! modules the library need not export, and so that tests reach the renderers
//! (`explain`, `directory lookup`) without running the binary.

pub mod brake;
pub mod check;
pub mod directory;
pub mod explain;
pub mod quarantine;
pub mod review;
pub mod run;
pub mod stats;
pub mod storms;
pub mod worker;

use crate::NAME;
use crate::config::{self, Config, DEFAULT_CONFIG_PATH};
use crate::quarantine::running;
use crate::state_dir::StateDir;
use crate::text;
use anyhow::Context as _;
use std::path::Path;
use std::process::ExitCode;

/// What a command returns: its exit code, or the error [`exit`] prints (exit code 1,
/// or 2 for a [`UsageError`]).
pub type Outcome = anyhow::Result<ExitCode>;

/// A mistake on the command line that clap cannot see (a malformed `--now` or queue
/// id): exit code 2, as clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] saying `message`.
pub fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    UsageError(message.to_string()).into()
}

/// The exit code of a command's outcome. An error is printed with its whole cause
/// chain ([`chain_text`]); it exits 2 when a [`UsageError`] is in the chain, else 1.
pub fn exit(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(e) => {
            complain(chain_text(&e));
            if e.chain().any(|c| c.is::<UsageError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// An error and its causes, one per line after a colon. A cause whose text the
/// message already quotes is left out: most of the library's errors name their cause
/// in their own message.
pub fn chain_text(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(":\n");
            out.push_str(&cause);
        }
    }
    out
}

/// Prints `message` to standard error after the program's name, neutralised line by
/// line ([`text::neutralize_lines`]): error texts quote table files, directory data,
/// server diagnostics and the daemon's answers.
pub fn complain(message: impl std::fmt::Display) {
    eprintln!("{NAME}: {}", text::neutralize_lines(&message.to_string()));
}

/// Loads and validates the configuration at `path`.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    config::load(path).context("configuration error")
}

/// Root commands use the state directory only when it belongs to root or to
/// `[quarantine] state_owner` (see `state_dir`); a missing one is created by root. And
/// only when it is the one the running daemon (started with the same file) uses: a
/// changed `state_dir` takes effect at restart ([`running::check_same_store`]). With a
/// fleet's PostgreSQL store (`[quarantine] store = "postgres"`) the records are not in
/// `state_dir`, and that check (which looks at the SQLite file's locks) does not apply.
fn check_state_dir(path: &Path, config: &Config) -> anyhow::Result<()> {
    if config.quarantine_store.is_none() {
        running::check_same_store(path, Path::new(DEFAULT_CONFIG_PATH), &config.state_dir)
            .map_err(anyhow::Error::msg)?;
    }
    match std::fs::symlink_metadata(&config.state_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => Ok(StateDir::open(&config.state_dir, Some(&config.state_owner)).map(drop)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Quoting {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        let quoting = Quoting {
            path: "/x",
            source: std::io::Error::other("denied"),
        };
        let e = anyhow::Error::new(quoting).context("configuration error");
        assert_eq!(chain_text(&e), "configuration error:\n/x: denied");
        let e = anyhow::Error::msg("daemon").context("refresh");
        assert_eq!(chain_text(&e), "refresh:\ndaemon");
    }

    #[test]
    fn a_usage_error_anywhere_in_the_chain_exits_2() {
        assert_eq!(exit(Err(usage("--now x"))), ExitCode::from(2));
        assert_eq!(
            exit(Err(usage("bad id").context("quarantine show"))),
            ExitCode::from(2)
        );
        assert_eq!(exit(Err(anyhow::anyhow!("broken"))), ExitCode::from(1));
        assert_eq!(exit(Ok(ExitCode::SUCCESS)), ExitCode::SUCCESS);
    }
}
