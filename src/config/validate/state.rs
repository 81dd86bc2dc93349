// SPDX-License-Identifier: GPL-3.0-or-later
//! `[state]`: where the counters of storms, rates and the breaker live, and the admin
//! socket.

use super::check_secret_file;
use crate::config::ldap::CaCertificates;
use crate::config::raw::{RawConfig, StateBackendKind};
use crate::config::secret::{SecretUrl, redact_url, redact_url_in};
use crate::config::{OnFailure, RedisConnSettings, SentinelSettings, StateSettings};
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
            let conn = check_conn(raw, &url, base, report);
            StateSettings::Redis {
                url: SecretUrl::from(url),
                password_file,
                prefix: raw.state.prefix.clone(),
                timeout: state_timeout,
                on_failure,
                conn: Box::new(conn),
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

/// True for a URL that asks for TLS.
fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
}

/// True for a `rediss://` URL that asks to skip certificate checks (`#insecure`).
fn insecure(url: &str) -> bool {
    redis::IntoConnectionInfo::into_connection_info(url).is_ok_and(|info| {
        matches!(
            info.addr(),
            redis::ConnectionAddr::TcpTls { insecure: true, .. }
        )
    })
}

/// A PEM file named by `[state] key`, relative to the configuration's directory.
fn file_key(value: &str, base: &Path) -> Option<PathBuf> {
    match value.trim() {
        "" => None,
        p => Some(base.join(p)),
    }
}

/// Checks the TLS files and `[state.sentinel]` of a Redis backend on `url`.
fn check_conn(
    raw: &RawConfig,
    url: &str,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> RedisConnSettings {
    let state = &raw.state;
    if insecure(url) {
        report(
            "state.url",
            format!(
                "\"{}\": a rediss:// URL with a fragment (#insecure) would skip certificate checks; remove it and set ca_file",
                redact_url(url)
            ),
        );
    }
    let ca_file = file_key(&state.ca_file, base);
    if let Some(path) = &ca_file
        && let Err(e) = CaCertificates::read(path)
    {
        report("state.ca_file", e);
    }
    let client_cert = match (
        file_key(&state.cert_file, base),
        file_key(&state.key_file, base),
    ) {
        (Some(cert), Some(key)) => {
            if let Err(e) = check_client_cert(&cert) {
                report("state.cert_file", e);
            }
            if let Err(e) = check_secret_file(&key) {
                report("state.key_file", e);
            }
            Some((cert, key))
        }
        (Some(_), None) => {
            report("state.cert_file", "cert_file needs key_file".into());
            None
        }
        (None, Some(_)) => {
            report("state.key_file", "key_file needs cert_file".into());
            None
        }
        (None, None) => None,
    };
    let sentinel = check_sentinel(raw, url, base, report);
    let tls_somewhere = is_tls(url)
        || sentinel
            .as_ref()
            .is_some_and(|s| s.urls.iter().any(|u| is_tls(u.expose())));
    if !tls_somewhere {
        for (key, set) in [
            ("state.ca_file", ca_file.is_some()),
            ("state.cert_file", client_cert.is_some()),
        ] {
            if set {
                report(
                    key,
                    "is only used with TLS: write the URL as rediss://host:port/".into(),
                );
            }
        }
    }
    RedisConnSettings {
        ca_file,
        client_cert,
        sentinel,
    }
}

/// A PEM file holding at least one certificate.
fn check_client_cert(path: &Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("\"{}\" is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "\"{}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(())
}

/// Checks `[state.sentinel]`; `None` when no master name is set (and nothing else).
fn check_sentinel(
    raw: &RawConfig,
    url: &str,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> Option<SentinelSettings> {
    let s = &raw.state.sentinel;
    let master = s.master.trim();
    if master.is_empty() {
        if !s.urls.is_empty() || !s.password_file.trim().is_empty() {
            report(
                "state.sentinel.master",
                "is needed with the other [state.sentinel] keys: the name the sentinels monitor the master under, such as \"mymaster\"".into(),
            );
        }
        return None;
    }
    if master.chars().any(|c| c.is_whitespace() || c.is_control()) {
        report(
            "state.sentinel.master",
            format!(
                "\"{}\" must be one word, such as \"mymaster\"",
                crate::text::neutralize(master)
            ),
        );
    }
    if s.urls.is_empty() {
        report(
            "state.sentinel.urls",
            "list at least one sentinel, such as [\"redis://10.0.0.1:26379\"]".into(),
        );
    }
    for (i, u) in s.urls.iter().enumerate() {
        let u = u.expose().trim();
        let tcp = redis::IntoConnectionInfo::into_connection_info(u).map(|info| {
            matches!(
                info.addr(),
                redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
            )
        });
        match tcp {
            Ok(true) if insecure(u) => report(
                &format!("state.sentinel.urls[{i}]"),
                format!(
                    "\"{}\": a fragment (#insecure) would skip certificate checks",
                    redact_url(u)
                ),
            ),
            Ok(true) => {}
            Ok(false) => report(
                &format!("state.sentinel.urls[{i}]"),
                format!(
                    "\"{}\" must be a TCP sentinel such as \"redis://10.0.0.1:26379\"",
                    redact_url(u)
                ),
            ),
            Err(e) => report(
                &format!("state.sentinel.urls[{i}]"),
                format!(
                    "\"{}\" is not a sentinel URL such as \"redis://10.0.0.1:26379\": {}",
                    redact_url(u),
                    redact_url_in(&e.to_string(), u)
                ),
            ),
        }
    }
    let tls = s.urls.iter().filter(|u| is_tls(u.expose().trim())).count();
    if tls != 0 && tls != s.urls.len() {
        report(
            "state.sentinel.urls",
            "use rediss:// for all the sentinels or for none".into(),
        );
    }
    if let Ok(info) = redis::IntoConnectionInfo::into_connection_info(url)
        && matches!(info.addr(), redis::ConnectionAddr::Unix(_))
    {
        report(
            "state.url",
            "with [state.sentinel], the URL must be redis:// or rediss:// (its host and port are replaced by the master's)".into(),
        );
    }
    let password_file = file_key(&s.password_file, base);
    if let Some(p) = &password_file
        && let Err(e) = check_secret_file(p)
    {
        report("state.sentinel.password_file", e);
    }
    Some(SentinelSettings {
        master: master.to_owned(),
        urls: s
            .urls
            .iter()
            .map(|u| SecretUrl::from(u.expose().trim()))
            .collect(),
        password_file,
    })
}
