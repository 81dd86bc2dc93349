// SPDX-License-Identifier: GPL-3.0-or-later
//! tracing-subscriber setup: text to stderr (journald adds its own timestamps) or JSON.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("{level},indymilter=warn"))
                .unwrap_or_else(|_| EnvFilter::new("info,indymilter=warn"))
        });
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match (format, under_journald) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Text, false) => builder.with_ansi(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("fanout-milter: logging already initialised: {e}");
    }
}
