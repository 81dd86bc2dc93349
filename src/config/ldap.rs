// SPDX-License-Identifier: GPL-3.0-or-later
//! `[[directory]] type = "ldap"`: the validated settings of an LDAP source, named
//! after Postfix's ldap_table(5) settings where there is one (checked in
//! `validate/ldap.rs`).

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What an LDAP source does once its last good snapshot is older than `max_staleness`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStale {
    /// Keep using it, and say so loudly.
    UseStale,
    /// Tempfail mail that reaches its lists, so Postfix retries later.
    Tempfail,
    /// Count its lists as unknown (`[expansion] on_unknown`).
    Unknown,
}

impl OnStale {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStale::UseStale => "use_stale",
            OnStale::Tempfail => "tempfail",
            OnStale::Unknown => "unknown",
        }
    }
}

/// A share between 0 and 1 (`max_shrink`); never NaN, so it compares as equal or not.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Share(f64);

impl Eq for Share {}

impl Share {
    /// A share already checked to be from 0 to 1.
    pub(in crate::config) fn new(share: f64) -> Share {
        Share(share)
    }

    /// The share as a number from 0 to 1.
    pub fn get(self) -> f64 {
        self.0
    }

    /// `part` of `whole` exceeds this share (false when `whole` is 0).
    pub fn exceeded_by(self, part: u64, whole: u64) -> bool {
        whole > 0 && part as f64 > self.0 * whole as f64
    }
}

/// Default `max_shrink`: a refresh may lose a tenth of the lists or members.
pub const DEFAULT_MAX_SHRINK: f64 = 0.1;

/// Exchange-style dynamic lists: the filter and its base are attributes of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterList {
    /// The attribute holding the filter (`msExchDynamicDLFilter`).
    pub filter_attribute: String,
    /// The attribute holding the base (`msExchDynamicDLBaseDN`); empty: `base_dns`.
    pub base_attribute: String,
}

/// The CA certificates of `ca_file`, read and checked once during validation, so a
/// connection never reads the file again and a bad file is a configuration error.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificates(Vec<CertificateDer<'static>>);

impl CaCertificates {
    /// Reads a PEM file of CA certificates; at least one is needed, and each must be
    /// one rustls accepts as a trust anchor.
    pub fn read(path: &Path) -> Result<CaCertificates, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("\"{}\" is not a PEM certificate file: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "\"{}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| format!("\"{}\": a certificate is not valid: {e}", path.display()))?;
        }
        Ok(CaCertificates(certs))
    }

    /// The certificates, in file order (at least one).
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    /// A TLS client (rustls with ring) trusting exactly these certificates, read from
    /// `ca_file` (named in errors): for the directory and for the fleet's database.
    pub fn client_config(&self, ca_file: &Path) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.0 {
            roots
                .add(cert.clone())
                .map_err(|e| format!("\"{}\": {e}", ca_file.display()))?;
        }
        Ok(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

impl fmt::Debug for CaCertificates {
    /// Their number, not their bytes (settings are printed in tests and logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCertificates({} certificates)", self.0.len())
    }
}

/// A validated LDAP source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LdapSettings {
    /// Name for logs and the snapshot file.
    pub name: String,
    /// Server URL.
    pub url: String,
    /// StartTLS on an `ldap://` URL.
    pub start_tls: bool,
    /// Bind DN; anonymous when absent.
    pub bind_dn: Option<String>,
    /// File holding the bind password, read at each connection.
    pub bind_password_file: Option<PathBuf>,
    /// PEM file of trusted CAs; the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, read when the configuration was validated.
    pub ca_certificates: Option<CaCertificates>,
    /// Subtrees read.
    pub base_dns: Vec<String>,
    /// Filter that finds an address (`%s`), for live lookups; with `%s` as `*` it
    /// also selects the addressable entries of a snapshot.
    pub lookup_filter: String,
    /// Attributes holding addresses.
    pub leaf_mail_attributes: Vec<String>,
    /// Attributes holding member DNs.
    pub member_dn_attributes: Vec<String>,
    /// Attributes holding member URLs.
    pub member_url_attributes: Vec<String>,
    /// Attributes holding literal member addresses.
    pub literal_member_attributes: Vec<String>,
    /// Exchange-style dynamic lists.
    pub filter_list: Option<FilterList>,
    /// Object classes that make an entry a list.
    pub group_object_classes: Vec<String>,
    /// Mail domains of the directory.
    pub domains: Vec<String>,
    /// Snapshot interval.
    pub refresh: Duration,
    /// Limit of one connect, bind or search.
    pub timeout: Duration,
    /// Entries per page.
    pub page_size: u32,
    /// Age beyond which `on_stale` applies.
    pub max_staleness: Duration,
    /// What then.
    pub on_stale: OnStale,
    /// The largest share of lists, or of list members, a refresh may lose and still
    /// be taken without an admin's accept.
    pub max_shrink: Share,
}

/// The password in a password file: its first line.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(format!("\"{}\" is empty", path.display()));
    }
    Ok(line)
}
