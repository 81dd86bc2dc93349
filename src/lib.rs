// SPDX-License-Identifier: GPL-3.0-or-later
//! fanout-milter: a Postfix milter that holds or refuses outgoing mail whose real
//! audience is dangerously large.
//!
//! The crate is a pure policy core ([`policy`]) with thin adapters around it: the
//! milter, the configuration loader ([`config`]), the daemon
//! ([`Builder`]) with its web review desk, the offline `explain` ([`explain`]) and the command line's commands
//! ([`cli`]).

#![warn(missing_docs)]

mod brake;
pub mod cli;
pub mod clock;
pub mod config;
mod control;
mod daemon;
pub mod decide;
mod desk;
pub mod directory;
pub mod explain;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod http_listener;
mod link;
mod logging;
mod message;
pub mod metrics;
mod milter;
pub mod notify;
pub mod policy;
mod process;
pub mod quarantine;
mod shared;
pub mod state;
mod state_dir;
mod text;
mod token;
mod unix_socket;

/// Product name.
pub const NAME: &str = "fanout-milter";
/// Crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use daemon::{Builder, Daemon, Generation, ReloadError, ReloadRequest, Reloaded};
