// SPDX-License-Identifier: GPL-3.0-or-later
//! fanout-milter: a Postfix milter that holds or refuses outgoing mail whose real
//! audience is dangerously large.
//!
//! The crate is a pure policy core ([`policy`]) with thin adapters around it: the
//! milter ([`milter`]), the configuration loader ([`config`]), the daemon
//! ([`daemon`]), the offline `explain` ([`explain`]) and the command line's commands
//! ([`cli`]).

pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decide;
pub mod directory;
pub mod explain;
pub mod logging;
pub mod message;
pub mod milter;
pub mod notify;
pub mod policy;
pub mod process;
pub mod quarantine;
pub mod shared;
pub mod state;
pub mod state_dir;
pub mod text;
pub mod unix_socket;

/// Product name.
pub const NAME: &str = "fanout-milter";
/// Crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use daemon::{Builder, Daemon, Generation, ReloadError, ReloadRequest, Reloaded};
