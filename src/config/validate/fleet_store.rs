// SPDX-License-Identifier: GPL-3.0-or-later
//! `[quarantine] store`, `url`, `password_file`, `password_env`, `relay`, `ca_file`:
//! where the quarantine records live.

use super::check_secret_file;
use crate::config::fleet_store::{PgSettings, PgTls, valid_relay};
use crate::config::ldap::CaCertificates;
use crate::config::raw::RawConfig;
use crate::config::secret::redact_url;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// How long connecting to the database may take: a hold waits this long before it
/// tempfails while the server is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL settings with `store = "postgres"`; `None` for SQLite (the default).
pub(super) fn check(
    raw: &RawConfig,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> Option<PgSettings> {
    let q = &raw.quarantine;
    match q.store.as_str() {
        "sqlite" => return None,
        "postgres" => {}
        other => {
            report(
                "quarantine.store",
                format!("\"{other}\" must be \"sqlite\" or \"postgres\""),
            );
            return None;
        }
    }
    let url = q.url.trim().to_owned();
    let sslmode = sslmode(&url);
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        report(
            "quarantine.url",
            format!(
                "\"{}\" must be a URL such as \"postgresql://fanout@db.example.org:5432/quarantine\"",
                redact_url(&url)
            ),
        );
    } else if let Some(other) = sslmode
        .as_deref()
        .filter(|m| !matches!(*m, "disable" | "require" | "prefer"))
    {
        report(
            "quarantine.url",
            format!(
                "sslmode={} is not supported: give sslmode=require (with ca_file: the \
                 server's certificate and host name are always verified) or sslmode=disable",
                crate::text::neutralize(other)
            ),
        );
    } else {
        match tokio_postgres::Config::from_str(&url) {
            Ok(c) if c.get_password().is_some() => report(
                "quarantine.url",
                format!(
                    "\"{}\" carries a password: give password_file or password_env instead",
                    redact_url(&url)
                ),
            ),
            Ok(_) => {}
            Err(_) => report(
                "quarantine.url",
                format!("\"{}\" is not a PostgreSQL URL", redact_url(&url)),
            ),
        }
    }
    let password = match (q.password_file.trim(), q.password_env.trim()) {
        ("", "") => None,
        (file, "") => {
            let path = base.join(file);
            match check_secret_file(&path).and_then(|()| crate::config::ldap::read_secret(&path)) {
                Ok(p) => Some(p),
                Err(e) => {
                    report("quarantine.password_file", e);
                    None
                }
            }
        }
        ("", var) => match std::env::var(var) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => {
                report(
                    "quarantine.password_env",
                    format!("the environment variable {var} is not set"),
                );
                None
            }
        },
        _ => {
            report(
                "quarantine.password_env",
                "give password_file or password_env, not both".into(),
            );
            None
        }
    };
    // No default: relays built from one image share a host name, and each would take
    // the other's requests and records as its own.
    let relay = q.relay.trim().to_owned();
    if relay.is_empty() {
        report(
            "quarantine.relay",
            "must be set with store = \"postgres\": this relay's name, unique in the fleet \
             (such as \"relay-a\"; no default, as relays built from one image share a host name)"
                .into(),
        );
    } else if !valid_relay(&relay) {
        report(
            "quarantine.relay",
            format!(
                "\"{}\" must be 1 to 64 letters, digits, '.', '-' or '_'",
                crate::text::neutralize(&relay)
            ),
        );
    }
    let tls = check_tls(sslmode.as_deref(), q.ca_file.trim(), base, report);
    Some(PgSettings {
        url,
        password,
        relay,
        connect_timeout: CONNECT_TIMEOUT,
        tls,
    })
}

/// The value of `sslmode` in the query of `url`, when there is one (the last wins, as
/// in the client).
fn sslmode(url: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "sslmode")
        .map(|(_, value)| value.to_owned())
        .next_back()
}

/// TLS from the URL's `sslmode` and `ca_file`: `require` needs a CA file (there is no
/// fallback to the system's trust store), a CA file alone means `require`, `disable`
/// with a CA file is a contradiction, and `prefer` is refused, as it would silently go
/// on in plain text, unauthenticated, whenever TLS fails.
fn check_tls(
    sslmode: Option<&str>,
    ca_file: &str,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> Option<PgTls> {
    match (sslmode, ca_file) {
        (Some("prefer"), _) => {
            report(
                "quarantine.url",
                "sslmode=prefer would go on in plain text, unauthenticated, whenever TLS \
                 fails: give sslmode=require with ca_file, or sslmode=disable"
                    .into(),
            );
            None
        }
        (Some("require"), "") => {
            report(
                "quarantine.ca_file",
                "must be set with sslmode=require in url: the PEM file of the CA that \
                 signed the database server's certificate (the certificate is always \
                 verified; the system's trust store is not used)"
                    .into(),
            );
            None
        }
        (Some("disable"), file) if !file.is_empty() => {
            report(
                "quarantine.ca_file",
                "is set, but url says sslmode=disable: remove one of them".into(),
            );
            None
        }
        (_, "") => None,
        (_, file) => {
            let path = base.join(file);
            match CaCertificates::read(&path) {
                Ok(ca_certificates) => Some(PgTls {
                    ca_file: path,
                    ca_certificates,
                }),
                Err(e) => {
                    report("quarantine.ca_file", e);
                    None
                }
            }
        }
    }
}
