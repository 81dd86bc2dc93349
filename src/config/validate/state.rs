// SPDX-License-Identifier: GPL-3.0-or-later
//! `[state]`: where the counters of storms, rates and the breaker live, and the admin
//! socket.

use super::check_secret_file;
use crate::config::raw::{RawConfig, StateBackendKind};
use crate::config::secret::{SecretUrl, redact_url, redact_url_in};
use crate::config::{OnFailure, StateSettings};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound of `[state] timeout`: Postfix's own milter timeouts are 30 s and more,
/// but a relay that waits seconds per message on a hung Redis is an outage.
const MAX_STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks `[state]` (`timeout` was read with the other durations) and gives the
/// backend's settings and the admin socket's path.
pub(super) fn check(
    raw: &RawConfig,
    state_timeout: Duration,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> (StateSettings, PathBuf) {
    let on_failure = match raw.state.on_failure.as_str() {
        "local" => OnFailure::Local,
        "tempfail" => OnFailure::Tempfail,
        other => {
            report(
                "state.on_failure",
                format!("\"{other}\" must be \"local\" or \"tempfail\""),
            );
            OnFailure::Local
        }
    };
    let state = match raw.state.backend {
        StateBackendKind::Memory => StateSettings::Memory,
        StateBackendKind::Redis => {
            let url = raw.state.url.expose().trim().to_owned();
            if let Err(e) = redis::Client::open(url.as_str()) {
                report(
                    "state.url",
                    format!(
                        "\"{}\" is not a Redis URL such as \"redis://127.0.0.1:6379/\": {}",
                        redact_url(&url),
                        redact_url_in(&e.to_string(), &url)
                    ),
                );
            }
            if raw.state.prefix.is_empty() || raw.state.prefix.chars().any(char::is_whitespace) {
                report(
                    "state.prefix",
                    "must be a non-empty word such as \"fanout:\"".into(),
                );
            }
            if state_timeout > MAX_STATE_TIMEOUT {
                report(
                    "state.timeout",
                    format!(
                        "{} is too long: every message that needs state may wait this long when Redis hangs; use at most {}",
                        raw.state.timeout.trim(),
                        humantime::format_duration(MAX_STATE_TIMEOUT)
                    ),
                );
            }
            let password_file = match raw.state.password_file.trim() {
                "" => None,
                p => {
                    let path = base.join(p);
                    if let Err(e) = check_secret_file(&path) {
                        report("state.password_file", e);
                    }
                    Some(path)
                }
            };
            StateSettings::Redis {
                url: SecretUrl::from(url),
                password_file,
                prefix: raw.state.prefix.clone(),
                timeout: state_timeout,
                on_failure,
            }
        }
    };
    let admin_socket = if raw.state.admin_socket.trim().is_empty() {
        raw.quarantine.state_dir.join("admin.sock")
    } else {
        let p = PathBuf::from(raw.state.admin_socket.trim());
        if !p.is_absolute() {
            report(
                "state.admin_socket",
                format!("\"{}\" must be an absolute path", p.display()),
            );
        }
        p
    };
    (state, admin_socket)
}
