// SPDX-License-Identifier: GPL-3.0-or-later
//! The LDAP wire: one page of one search at a time, behind [`LdapServer`] so that the
//! snapshot logic runs the same against a real server (ldap3) and against the
//! in-memory fake the tests use for Active Directory behaviour slapd lacks.

use crate::config::ldap::{LdapSettings, read_secret};
use async_trait::async_trait;
use ldap3::adapters::EntriesOnly;
use ldap3::controls::{Control, ControlType, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, SearchEntry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use ldap3::Scope;

/// One entry as the server returned it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Its DN, as the server spells it.
    pub dn: String,
    /// Text attributes, keyed by the name the server used (`member;range=0-1499`).
    pub attrs: HashMap<String, Vec<String>>,
    /// Binary attributes (Active Directory's `objectGUID`).
    pub bin_attrs: HashMap<String, Vec<Vec<u8>>>,
}

impl Entry {
    /// The values of an attribute, its name matched without regard to case.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attrs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.iter().map(String::as_str))
    }
}

/// One page of a search.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Entries of this page.
    pub entries: Vec<Entry>,
    /// The cookie for the next page; `None` when this was the last.
    pub next: Option<Vec<u8>>,
}

/// What a server or the connection to it did wrong.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LdapFault {
    /// No connection, or it broke.
    #[error("connection to {url} failed: {message}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        message: String,
    },
    /// The bind was refused.
    #[error("bind as {dn} refused: {message}")]
    Bind {
        /// The bind DN.
        dn: String,
        /// Why.
        message: String,
    },
    /// An operation took longer than `timeout`.
    #[error("{what} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// Which operation.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// A search ended with a result code other than success.
    #[error("search of {base} {filter} ended with rc={rc} ({text})")]
    Search {
        /// Its base.
        base: String,
        /// Its filter.
        filter: String,
        /// The LDAP result code.
        rc: u32,
        /// The server's diagnostic text, or the code's name.
        text: String,
    },
}

impl LdapFault {
    /// True when the fault says the snapshot would be incomplete or the server is
    /// unreachable (limits, timeouts, broken connections, a busy or unavailable
    /// server), so the whole refresh must fail. Other faults (a dynamic list's bad
    /// filter or missing base, no access) only make that list unknown.
    pub fn fails_refresh(&self) -> bool {
        match self {
            LdapFault::Search { rc, .. } => matches!(rc, 1 | 3 | 4 | 11 | 51 | 52 | 53 | 80),
            _ => true,
        }
    }
}

/// A directory server, one search page at a time.
#[async_trait]
pub trait LdapServer: Send {
    /// One page of a search. `page` is `(size, cookie)`; `None` asks for an unpaged
    /// search. Entries only: referrals are ignored.
    async fn search_page(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        page: Option<(u32, Vec<u8>)>,
    ) -> Result<Page, LdapFault>;

    /// One page of a search like [`LdapServer::search_page`], each entry handed to
    /// `each` as it arrives, so that a page is never held whole; returns the cookie for
    /// the next page. The default runs [`LdapServer::search_page`].
    async fn search_each(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        page: Option<(u32, Vec<u8>)>,
        each: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<Option<Vec<u8>>, LdapFault> {
        let p = self.search_page(base, scope, filter, attrs, page).await?;
        for e in p.entries {
            each(e);
        }
        Ok(p.next)
    }

    /// Base reads of many entries, one result each, in order. The default reads them
    /// one after the other; a server that multiplexes runs several at once.
    async fn read_many(
        &mut self,
        dns: &[String],
        attrs: &[String],
    ) -> Vec<Result<Page, LdapFault>> {
        let mut out = Vec::with_capacity(dns.len());
        for dn in dns {
            out.push(
                self.search_page(dn, Scope::Base, "(objectClass=*)", attrs, None)
                    .await,
            );
        }
        out
    }
}

/// Base reads in flight at once on one connection ([`LdapServer::read_many`]).
const READS_IN_FLIGHT: usize = 32;

/// A connection through ldap3.
pub struct Ldap3Server {
    ldap: ldap3::Ldap,
    timeout: Duration,
}

impl Ldap3Server {
    /// Connects and binds as the settings say, each step within `timeout`.
    pub async fn connect(settings: &LdapSettings) -> Result<Ldap3Server, LdapFault> {
        let connect_fault = |message: String| LdapFault::Connect {
            url: crate::config::redact_url(&settings.url),
            message,
        };
        let mut conn_settings = LdapConnSettings::new()
            .set_conn_timeout(settings.timeout)
            .set_starttls(settings.start_tls);
        match (&settings.ca_file, &settings.ca_certificates) {
            (Some(ca_file), Some(certs)) => {
                conn_settings = conn_settings.set_config(Arc::new(
                    certs.client_config(ca_file).map_err(connect_fault)?,
                ));
            }
            // A CA file whose certificates were never read must not fall back to the
            // system's trust store: refuse to connect.
            (Some(ca_file), None) => {
                return Err(connect_fault(format!(
                    "the certificates of ca_file {} were not loaded",
                    ca_file.display()
                )));
            }
            (None, _) => {}
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(conn_settings, &settings.url)
            .await
            .map_err(|e| {
                connect_fault(crate::config::secret::redact_url_in(
                    &e.to_string(),
                    &settings.url,
                ))
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("ldap connection ended: {e}");
            }
        });
        if let (Some(dn), Some(file)) = (&settings.bind_dn, &settings.bind_password_file) {
            let password = read_secret(file).map_err(|message| LdapFault::Bind {
                dn: dn.clone(),
                message,
            })?;
            let bind = ldap
                .with_timeout(settings.timeout)
                .simple_bind(dn, &password)
                .await
                .map_err(|e| timeout_or(e, "bind", settings.timeout, connect_fault))?;
            if bind.rc != 0 {
                return Err(LdapFault::Bind {
                    dn: dn.clone(),
                    message: format!("rc={} {}", bind.rc, bind.text),
                });
            }
        }
        Ok(Ldap3Server {
            ldap,
            timeout: settings.timeout,
        })
    }

    /// Unbinds and closes the connection.
    pub async fn close(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

fn timeout_or(
    e: ldap3::LdapError,
    what: &str,
    after: Duration,
    other: impl FnOnce(String) -> LdapFault,
) -> LdapFault {
    match e {
        ldap3::LdapError::Timeout { .. } => LdapFault::Timeout {
            what: what.to_owned(),
            after,
        },
        e => other(e.to_string()),
    }
}

#[async_trait]
impl LdapServer for Ldap3Server {
    async fn search_page(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        page: Option<(u32, Vec<u8>)>,
    ) -> Result<Page, LdapFault> {
        search(
            self.ldap.clone(),
            self.timeout,
            base,
            scope,
            filter,
            attrs,
            page,
        )
        .await
    }

    async fn search_each(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        page: Option<(u32, Vec<u8>)>,
        each: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<Option<Vec<u8>>, LdapFault> {
        search_with(
            self.ldap.clone(),
            self.timeout,
            (base, scope, filter, attrs),
            page,
            each,
        )
        .await
    }

    async fn read_many(
        &mut self,
        dns: &[String],
        attrs: &[String],
    ) -> Vec<Result<Page, LdapFault>> {
        use futures_util::stream::{self, StreamExt};
        let (ldap, timeout) = (self.ldap.clone(), self.timeout);
        let attrs = attrs.to_vec();
        stream::iter(dns.to_vec())
            .map(move |dn| {
                let (ldap, attrs) = (ldap.clone(), attrs.clone());
                async move {
                    search(
                        ldap,
                        timeout,
                        &dn,
                        Scope::Base,
                        "(objectClass=*)",
                        &attrs,
                        None,
                    )
                    .await
                }
            })
            .buffered(READS_IN_FLIGHT)
            .collect()
            .await
    }
}

/// One page of one search on a handle of the connection (handles multiplex).
async fn search(
    ldap: ldap3::Ldap,
    timeout: Duration,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[String],
    page: Option<(u32, Vec<u8>)>,
) -> Result<Page, LdapFault> {
    let mut entries = Vec::new();
    let next = search_with(
        ldap,
        timeout,
        (base, scope, filter, attrs),
        page,
        &mut |e| entries.push(e),
    )
    .await?;
    Ok(Page { entries, next })
}

/// One page of one search, each entry handed to `each` as it arrives (referrals left
/// out); the cookie of the next page, if any.
async fn search_with(
    mut ldap: ldap3::Ldap,
    timeout: Duration,
    (base, scope, filter, attrs): (&str, Scope, &str, &[String]),
    page: Option<(u32, Vec<u8>)>,
    each: &mut (dyn FnMut(Entry) + Send),
) -> Result<Option<Vec<u8>>, LdapFault> {
    ldap.with_timeout(timeout);
    let paged = page.is_some();
    if let Some((size, cookie)) = page {
        ldap.with_controls(PagedResults {
            size: i32::try_from(size).unwrap_or(i32::MAX),
            cookie,
        });
    }
    let what = format!("search of {base}");
    let fault = |e| {
        timeout_or(e, &what, timeout, |message| LdapFault::Connect {
            url: "the server".into(),
            message,
        })
    };
    let mut stream = ldap
        .streaming_search_with(EntriesOnly::new(), base, scope, filter, attrs)
        .await
        .map_err(fault)?;
    while let Some(raw) = stream.next().await.map_err(fault)? {
        let e = SearchEntry::construct(raw);
        each(Entry {
            dn: e.dn,
            attrs: e.attrs,
            bin_attrs: e.bin_attrs,
        });
    }
    let done = stream.finish().await;
    if done.rc != 0 {
        return Err(LdapFault::Search {
            base: base.to_owned(),
            filter: filter.to_owned(),
            rc: done.rc,
            text: if done.text.is_empty() {
                rc_name(done.rc).to_owned()
            } else {
                done.text
            },
        });
    }
    let mut next = None;
    if paged {
        for Control(kind, raw) in done.ctrls {
            if matches!(kind, Some(ControlType::PagedResults)) {
                let cookie = raw.parse::<PagedResults>().cookie;
                if !cookie.is_empty() {
                    next = Some(cookie);
                }
            }
        }
    }
    Ok(next)
}

/// The name of an LDAP result code (RFC 4511 appendix A) for messages.
pub fn rc_name(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        87 => "filterError",
        _ => "error",
    }
}
