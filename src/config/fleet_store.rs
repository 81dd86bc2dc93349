// SPDX-License-Identifier: GPL-3.0-or-later
//! `[quarantine] store = "postgres"`: the settings of a quarantine shared by a fleet
//! of relays in one PostgreSQL database (see `quarantine::pg`).

use super::ldap::CaCertificates;
use std::path::PathBuf;
use std::time::Duration;

/// How a relay reaches the fleet's quarantine database.
#[derive(Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `url`: `postgresql://USER@HOST:PORT/DB`, never with a password.
    pub url: String,
    /// The password, read at start from `password_file` or the variable `password_env`.
    pub password: Option<String>,
    /// `relay`: this relay's name, on every record it writes (required: no default).
    pub relay: String,
    /// How long connecting may take before a hold tempfails.
    pub connect_timeout: Duration,
    /// TLS (`sslmode=require` in `url`, or `ca_file` alone): the server's certificate
    /// must chain to these CA certificates and name the URL's host. `None`: plain TCP
    /// (`sslmode=disable`, or neither `sslmode` nor `ca_file`).
    pub tls: Option<PgTls>,
}

/// `ca_file`: the CA certificates a TLS connection to the database trusts, and no other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// The file they were read from (for messages).
    pub ca_file: PathBuf,
    /// Its certificates, read and checked when the configuration was validated.
    pub ca_certificates: CaCertificates,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &super::secret::redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("relay", &self.relay)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A relay name: 1 to 64 of ASCII letters, digits, `.`, `-` and `_`, so that it is
/// safe in logs, on the desk and in a URL's query.
pub fn valid_relay(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
