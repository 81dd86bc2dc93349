// SPDX-License-Identifier: GPL-3.0-or-later
//! `[milter]` and `[logging]`: how the daemon listens, serves and logs.

use super::{DAY, HOUR, duration};
use crate::config::ListenAddr;
use crate::config::raw::{RawLogging, RawMilter};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Upper bound of `[milter] threads`.
const MAX_THREADS: usize = 256;

/// The checked `[milter]` values that are not copied as they are.
pub(super) struct Milter {
    /// `listen`; `None` after a problem.
    pub listen: Option<ListenAddr>,
    /// `socket_mode`.
    pub socket_mode: u32,
    /// `connection_timeout`.
    pub connection_timeout: Duration,
    /// `shutdown_timeout`.
    pub shutdown_timeout: Duration,
}

/// Checks `[milter]`.
pub(super) fn check(raw: &RawMilter, report: &mut impl FnMut(&str, String)) -> Milter {
    let listen = match raw.listen.parse::<ListenAddr>() {
        Ok(l) => Some(l),
        Err(e) => {
            report("milter.listen", e.to_string());
            None
        }
    };
    let socket_mode = match u32::from_str_radix(raw.socket_mode.trim(), 8) {
        Ok(m) if m <= 0o777 => m,
        _ => {
            report(
                "milter.socket_mode",
                format!(
                    "\"{}\" is not an octal file mode such as \"0660\"",
                    raw.socket_mode
                ),
            );
            0
        }
    };
    if raw.max_connections == 0 {
        report("milter.max_connections", "must be at least 1".into());
    }
    if raw.threads == 0 || raw.threads > MAX_THREADS {
        report(
            "milter.threads",
            format!("must be between 1 and {MAX_THREADS}"),
        );
    }
    if raw.max_header_bytes < 1024 {
        report(
            "milter.max_header_bytes",
            format!("{} is too small; use at least 1024", raw.max_header_bytes),
        );
    }
    let connection_timeout = duration(
        "milter.connection_timeout",
        &raw.connection_timeout,
        DAY,
        report,
    );
    let shutdown_timeout = duration(
        "milter.shutdown_timeout",
        &raw.shutdown_timeout,
        HOUR,
        report,
    );
    Milter {
        listen,
        socket_mode,
        connection_timeout,
        shutdown_timeout,
    }
}

/// Checks `[logging]`.
pub(super) fn check_logging(raw: &RawLogging, report: &mut impl FnMut(&str, String)) {
    if let Err(e) = check_log_level(&raw.level) {
        report("logging.level", e);
    }
}

/// A tracing filter whose bare words are all levels: EnvFilter would take a typo such
/// as "inof" for a target name and silently drop every log line of ours.
fn check_log_level(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map_err(|e| format!("\"{filter}\" is not a log level or filter: {e}"))?;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "\"{directive}\" is not a log level: use error, warn, info, debug, trace or off \
                 (or TARGET=LEVEL)"
            ));
        }
    }
    Ok(())
}
