// SPDX-License-Identifier: GPL-3.0-or-later
//! The TOML shape of the configuration file, with every default filled in.
//!
//! These structs are only the syntax: values are checked and turned into the immutable
//! [`Config`](super::Config) by [`validate`](super::validate). Serialising a `RawConfig`
//! prints the effective settings (`check-config`).

use super::secret::SecretUrl;
use crate::policy::{Action, DEFAULT_CONFIRM_MAX_AUDIENCE, Mode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[milter]`: socket, mode and protocol limits.
    pub milter: RawMilter,
    /// `[logging]`: level and format.
    pub logging: RawLogging,
    /// `[domains]`: which domains are internal.
    pub domains: RawDomains,
    /// `[limits.*]`: counting rules.
    pub limits: RawLimits,
    /// `[exempt]`: senders no rule applies to.
    pub exempt: RawExempt,
    /// `[reply]`: what refused senders are told.
    pub reply: RawReply,
    /// `[[directory]]`: where lists and aliases come from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub directory: Vec<RawDirectory>,
    /// `[[list]]`: lists known by members, by size, or restricted to senders.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub list: Vec<RawList>,
    /// `[expansion]`: how lists are expanded.
    pub expansion: RawExpansion,
    /// `[restricted]`: lists only some senders may post to.
    pub restricted: RawRestricted,
    /// `[hidden]`: audience far larger than the visible To/Cc.
    pub hidden: RawHidden,
    /// `[drift]`: lists whose size suddenly jumps.
    pub drift: RawDrift,
    /// `[[scope]]`: how far senders may reach through lists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<RawScope>,
    /// `[quarantine]`: state directory.
    pub quarantine: RawQuarantine,
    /// `[postfix]`.
    pub postfix: RawPostfix,
    /// `[notify]`.
    pub notify: RawNotify,
    /// `[storm]`: reply-all storm breaker.
    pub storm: RawStorm,
    /// `[rate]`: per-sender recipient budgets.
    pub rate: RawRate,
    /// `[breaker]`: relay-wide breaker.
    pub breaker: RawBreaker,
    /// `[state]`: where storm, rate and breaker state lives.
    pub state: RawState,
    /// `[review]`: the web review desk.
    pub review: RawReview,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: RawMetrics,
    /// `[notices.KIND]`: the texts of the notices senders get, by kind (`held`,
    /// `confirm`, ...); a kind left out keeps its default.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub notices: BTreeMap<String, RawNotice>,
}

/// `[notices.KIND]`: one kind of notice's texts; a key left out keeps its default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNotice {
    /// The subject, one line with `{placeholders}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The plain-text body with `{placeholders}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// `[metrics]`: the Prometheus endpoint, apart from the review desk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// `inet:HOST:PORT` or `unix:PATH`; empty = no endpoint.
    pub listen: String,
    /// Allows a `listen` address other hosts can reach.
    pub allow_remote: bool,
    /// A file whose first line is the bearer token scrapes must bring; empty = none.
    pub token_file: PathBuf,
}

/// `[review]`: the web review desk served by the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReview {
    /// `inet:HOST:PORT` or `unix:PATH`; empty = no desk.
    pub listen: String,
    /// Allows a `listen` address other hosts can reach.
    pub allow_remote: bool,
    /// The desk's address as browsers reach it (`https://review.example.org`): every
    /// absolute link uses it, and `https` makes the session cookie `Secure`.
    pub public_url: String,
    /// Reviewers and their roles: `NAME:ROLE:PHC-HASH` per line.
    pub users_file: PathBuf,
    /// A session unused this long ends.
    pub session_idle: String,
    /// A session ends this long after the login, used or not.
    pub session_lifetime: String,
    /// How long a link in an admin digest stays valid.
    pub link_lifetime: String,
    /// Signed one-click release and discard links in the admin digest.
    pub digest_actions: bool,
    /// Reverse proxies whose `user_header` names the user (IP addresses).
    pub trusted_proxies: Vec<String>,
    /// Request header naming the user a trusted proxy signed in; empty = no SSO.
    pub user_header: String,
}

impl Default for RawReview {
    fn default() -> Self {
        RawReview {
            listen: String::new(),
            allow_remote: false,
            public_url: String::new(),
            users_file: PathBuf::from("/etc/fanout-milter/review-users"),
            session_idle: "30m".into(),
            session_lifetime: "12h".into(),
            link_lifetime: "24h".into(),
            digest_actions: false,
            trusted_proxies: Vec::new(),
            user_header: String::new(),
        }
    }
}

/// `[storm]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorm {
    /// Replies count from this audience on; 0 = off.
    pub min_audience: u64,
    /// Messages in one thread within `window` that trip a storm ...
    pub min_messages: u64,
    /// ... from at least this many distinct senders.
    pub min_senders: u64,
    /// The window.
    pub window: String,
    /// How long further replies are stopped.
    pub block_for: String,
    /// `reject`, `tempfail`, `quarantine` or `tag`.
    pub action: Action,
    /// Only tag.
    pub monitor: bool,
    /// SMTP reply to a stopped reply.
    pub reply: String,
}

impl Default for RawStorm {
    fn default() -> Self {
        RawStorm {
            min_audience: 500,
            min_messages: 3,
            min_senders: 2,
            window: "10m".into(),
            block_for: "6h".into(),
            action: Action::Reject,
            monitor: false,
            reply: "A reply-all storm is in progress on \"{subject}\" to {list} ({audience} \
                    recipients). Your message was not sent. Reply to the sender only, or contact \
                    {contact}."
                .into(),
        }
    }
}

/// `[rate]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRate {
    /// Recipients (audience) per sender per rolling hour; 0 = off.
    pub recipients_per_hour: u64,
    /// ... per rolling day; 0 = off.
    pub recipients_per_day: u64,
    /// External recipients per rolling hour; 0 = off.
    pub external_per_hour: u64,
    /// External recipients per rolling day; 0 = off.
    pub external_per_day: u64,
    /// `tempfail` or `quarantine`.
    pub action: Action,
    /// Only tag.
    pub monitor: bool,
    /// SMTP reply to a sender over a limit.
    pub reply: String,
    /// `false`: the sender of a message this rule holds is not told at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_sender: Option<bool>,
}

impl Default for RawRate {
    fn default() -> Self {
        RawRate {
            recipients_per_hour: 0,
            recipients_per_day: 0,
            external_per_hour: 0,
            external_per_day: 0,
            action: Action::Tempfail,
            monitor: false,
            reply: "Sending limit reached ({reason}). Your message was not sent yet; it is \
                    retried automatically, or send it again later. Questions: {contact}."
                .into(),
            notify_sender: None,
        }
    }
}

/// `[breaker]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBreaker {
    /// Recipients per minute leaving the relay that trip it; 0 = off.
    pub max_per_minute: u64,
    /// While tripped, mail from this audience on is held.
    pub min_audience: u64,
    /// Only tag.
    pub monitor: bool,
    /// `false`: the sender of a message this rule holds is not told at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_sender: Option<bool>,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            max_per_minute: 200_000,
            min_audience: 500,
            monitor: false,
            notify_sender: None,
        }
    }
}

/// Kinds of state backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendKind {
    /// In this process.
    #[default]
    Memory,
    /// Shared through Redis.
    Redis,
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// `memory` or `redis`.
    pub backend: StateBackendKind,
    /// Redis URL (may carry a password: printed redacted).
    pub url: SecretUrl,
    /// File whose first line is the Redis password (instead of one in `url`); empty:
    /// none.
    pub password_file: String,
    /// Prefix of every Redis key (relays of one fleet share it).
    pub prefix: String,
    /// How long one message's state operations may take before Redis counts as down.
    pub timeout: String,
    /// `local` or `tempfail` when Redis fails.
    pub on_failure: String,
    /// The daemon's admin socket (`storms list`, `storms clear`); empty:
    /// `state_dir/admin.sock`.
    pub admin_socket: String,
    /// PEM CA certificates for a `rediss://` server; empty: the system's roots.
    pub ca_file: String,
    /// PEM client certificate for a server that asks for one; empty: none.
    pub cert_file: String,
    /// Its private key (PEM, not readable by others); empty: none.
    pub key_file: String,
    /// `[state.sentinel]`: find the master through Redis Sentinel.
    pub sentinel: RawSentinel,
}

/// `[state.sentinel]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSentinel {
    /// The name the sentinels monitor the master under; empty: no Sentinel.
    pub master: String,
    /// The sentinels' URLs (`redis://host:26379`, `rediss://` for TLS; a password in
    /// one is printed redacted).
    pub urls: Vec<SecretUrl>,
    /// File whose first line is the sentinels' password; empty: none.
    pub password_file: String,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            backend: StateBackendKind::Memory,
            url: "redis://127.0.0.1:6379/".into(),
            password_file: String::new(),
            prefix: "fanout:".into(),
            timeout: "200ms".into(),
            on_failure: "local".into(),
            admin_socket: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            sentinel: RawSentinel::default(),
        }
    }
}

/// Kinds of directory source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectoryKind {
    /// A Postfix virtual(5) source file.
    PostfixVirtual,
    /// An aliases(5) file.
    Aliases,
    /// An LDAP directory (OpenLDAP, Active Directory), read as periodic snapshots.
    Ldap,
}

/// `[[directory]]`. Files need `path`; LDAP needs `url` and `base_dns`, and its other
/// keys have defaults that `check-config` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    /// `postfix-virtual`, `aliases` or `ldap`.
    #[serde(rename = "type")]
    pub kind: DirectoryKind,
    /// The text file (not the compiled .db/.lmdb).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Domains for bare names: aliases apply to them; virtual(5) bare keys too. For
    /// LDAP: the mail domains whose lists the directory holds (mail to them is
    /// tempfailed while no snapshot exists).
    #[serde(default)]
    pub domains: Vec<String>,
    /// LDAP: a name for logs and the snapshot file (default `ldap`, `ldap2`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// LDAP: `ldap://host[:port]`, `ldaps://host[:port]` or `ldapi://%2Fpath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// LDAP: upgrade an `ldap://` connection with StartTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_tls: Option<bool>,
    /// LDAP: bind DN; anonymous when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_dn: Option<String>,
    /// LDAP: file holding the bind password (not readable by others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_password_file: Option<PathBuf>,
    /// LDAP: PEM file of the CAs that sign the server's certificate (default: the
    /// system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// LDAP: subtrees to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dns: Option<Vec<String>>,
    /// LDAP: how an address is found, Postfix's `query_filter` (`%s` is the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_filter: Option<String>,
    /// LDAP: attributes holding an entry's addresses (`proxyAddresses` values are
    /// read as `SMTP:` primary, `smtp:` secondary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_mail_attributes: Option<Vec<String>>,
    /// LDAP: attributes holding member DNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_dn_attributes: Option<Vec<String>>,
    /// LDAP: attributes holding member LDAP URLs (RFC 2255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_url_attributes: Option<Vec<String>>,
    /// LDAP: attributes holding literal member addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal_member_attributes: Option<Vec<String>>,
    /// LDAP: Exchange-style dynamic lists (a filter and a base stored on the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_list: Option<RawFilterList>,
    /// LDAP: object classes that make an entry a list even with no member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_object_classes: Option<Vec<String>>,
    /// LDAP: how often the snapshot is refreshed (a tenth of jitter is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// LDAP: limit of one connection attempt, bind or search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// LDAP: entries per page of a paged search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// LDAP: how old the last good snapshot may grow before `on_stale` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness: Option<String>,
    /// LDAP: `use_stale`, `tempfail` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_stale: Option<String>,
    /// LDAP: the largest share (0 to 1) of its lists, or of their members, that a
    /// refresh may lose before it is refused until an admin accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shrink: Option<f64>,
}

impl RawDirectory {
    /// The first LDAP-only key set on this entry, if any.
    pub fn ldap_only_key(&self) -> Option<&'static str> {
        [
            ("name", self.name.is_some()),
            ("url", self.url.is_some()),
            ("start_tls", self.start_tls.is_some()),
            ("bind_dn", self.bind_dn.is_some()),
            ("bind_password_file", self.bind_password_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("base_dns", self.base_dns.is_some()),
            ("lookup_filter", self.lookup_filter.is_some()),
            ("leaf_mail_attributes", self.leaf_mail_attributes.is_some()),
            ("member_dn_attributes", self.member_dn_attributes.is_some()),
            (
                "member_url_attributes",
                self.member_url_attributes.is_some(),
            ),
            (
                "literal_member_attributes",
                self.literal_member_attributes.is_some(),
            ),
            ("filter_list", self.filter_list.is_some()),
            ("group_object_classes", self.group_object_classes.is_some()),
            ("refresh", self.refresh.is_some()),
            ("timeout", self.timeout.is_some()),
            ("page_size", self.page_size.is_some()),
            ("max_staleness", self.max_staleness.is_some()),
            ("on_stale", self.on_stale.is_some()),
            ("max_shrink", self.max_shrink.is_some()),
        ]
        .into_iter()
        .find_map(|(k, set)| set.then_some(k))
    }
}

/// `filter_list = { filter_attribute = ..., base_attribute = ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilterList {
    /// The attribute holding the list's LDAP filter.
    pub filter_attribute: String,
    /// The attribute holding its search base (default: each of `base_dns`).
    #[serde(default)]
    pub base_attribute: String,
}

/// `[[list]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    /// The list address.
    pub address: String,
    /// Its members, when the list is defined here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// Its size, for a list held where fanout-milter cannot read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<u64>,
    /// SASL logins (globs) that may send to it; others get the `[restricted]` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_senders: Option<Vec<String>>,
    /// Envelope senders (globs) that may send to it in mail without a SASL login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_envelope_senders: Option<Vec<String>>,
}

/// `[expansion]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawExpansion {
    /// Nested lists deeper than this are not followed (the count becomes a lower bound).
    pub max_depth: usize,
    /// A list's mailboxes are counted up to this many; beyond, it is "at least" this
    /// many (0: no cap).
    pub max_audience: u64,
    /// What happens to a message part of whose audience cannot be counted (dangling
    /// members, empty groups, dynamic lists that failed).
    pub on_unknown: Action,
}

impl Default for RawExpansion {
    fn default() -> Self {
        RawExpansion {
            max_depth: 100,
            max_audience: 2_000_000,
            on_unknown: Action::Quarantine,
        }
    }
}

/// `[restricted]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRestricted {
    /// Lists at least this large are restricted even without `allowed_senders`; 0 = off.
    pub min_audience: u64,
    /// SASL logins (globs) allowed to post to every restricted list.
    pub allowed_senders: Vec<String>,
    /// Envelope senders (globs) allowed to, in mail without a SASL login.
    pub allowed_envelope_senders: Vec<String>,
    /// `confirm`, `quarantine`, `reject`, `tempfail` or `tag`.
    pub action: Action,
    /// With `action = "confirm"`: lists larger than this are held for an admin.
    pub confirm_max_audience: u64,
    /// Only tag.
    pub monitor: bool,
    /// `false`: the sender of a message this rule holds is not told at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_sender: Option<bool>,
}

impl Default for RawRestricted {
    fn default() -> Self {
        RawRestricted {
            min_audience: 0,
            allowed_senders: Vec::new(),
            allowed_envelope_senders: Vec::new(),
            action: Action::Quarantine,
            confirm_max_audience: DEFAULT_CONFIRM_MAX_AUDIENCE,
            monitor: false,
            notify_sender: None,
        }
    }
}

/// `[hidden]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHidden {
    /// The rule applies from this audience on; 0 = off.
    pub min_audience: u64,
    /// ... when the audience is at least this many times the visible To/Cc count.
    pub ratio: f64,
    /// `confirm`, `quarantine`, `reject`, `tempfail` or `tag`.
    pub action: Action,
    /// With `action = "confirm"`: a hidden audience larger than this is held for an
    /// admin.
    pub confirm_max_audience: u64,
    /// Only tag.
    pub monitor: bool,
    /// `false`: the sender of a message this rule holds is not told at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_sender: Option<bool>,
}

impl Default for RawHidden {
    fn default() -> Self {
        RawHidden {
            min_audience: 100,
            ratio: 10.0,
            action: Action::Quarantine,
            confirm_max_audience: DEFAULT_CONFIRM_MAX_AUDIENCE,
            monitor: false,
            notify_sender: None,
        }
    }
}

/// `[drift]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDrift {
    /// A list whose size exceeds this many times its last accepted size ...
    pub factor: f64,
    /// ... and this absolute size has its mail held until an admin accepts it; 0 = off.
    pub min_audience: u64,
    /// `quarantine`, `reject`, `tempfail` or `tag`.
    pub action: Action,
    /// Only tag.
    pub monitor: bool,
    /// `false`: the sender of a message this rule holds is not told at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_sender: Option<bool>,
}

impl Default for RawDrift {
    fn default() -> Self {
        RawDrift {
            factor: 5.0,
            min_audience: 1000,
            action: Action::Quarantine,
            monitor: false,
            notify_sender: None,
        }
    }
}

/// `[[scope]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    /// Senders (globs): the SASL login, else the envelope sender.
    pub senders: Vec<String>,
    /// Domains their mail may reach through lists (exact or `*.`).
    pub may_reach: Vec<String>,
    /// `quarantine`, `reject`, `tempfail` or `tag`.
    #[serde(default = "quarantine")]
    pub action: Action,
    /// Only tag.
    #[serde(default)]
    pub monitor: bool,
}

fn quarantine() -> Action {
    Action::Quarantine
}

/// What the sweep does with a message held longer than `expire_after`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExpiry {
    /// Discard it and tell the sender it was not sent.
    #[default]
    NotifySender,
    /// Release it for delivery.
    Release,
    /// Keep it held (escalations continue).
    Keep,
}

/// `[quarantine]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQuarantine {
    /// The daemon's state: the quarantine store and the accepted list sizes.
    pub state_dir: PathBuf,
    /// The account the daemon runs as; root commands refuse a `state_dir` owned by
    /// anyone but root or this account.
    pub state_owner: String,
    /// A message held longer than this triggers an escalation alert.
    pub review_within: String,
    /// A message held longer than this gets `on_expiry`.
    pub expire_after: String,
    /// `notify-sender`, `release` or `keep`.
    pub on_expiry: OnExpiry,
    /// A message waiting for its sender's confirmation (`confirm`) is discarded, with a
    /// notice, when the sender has not answered within this.
    pub confirm_within: String,
    /// How long a sender's confirmation to a list is remembered, so that the next post
    /// to it passes; `"0s"`: not remembered.
    pub confirm_remember: String,
    /// Where the records live: `sqlite` (this relay's file in `state_dir`, the
    /// default) or `postgres` (one database for a fleet of relays).
    pub store: String,
    /// `store = "postgres"`: `postgresql://USER@HOST:PORT/DB`, without a password.
    pub url: String,
    /// `store = "postgres"`: a file whose first line is the password.
    pub password_file: String,
    /// `store = "postgres"`: an environment variable holding the password.
    pub password_env: String,
    /// `store = "postgres"`: this relay's name on its records (required there: no default).
    pub relay: String,
    /// `store = "postgres"`: a PEM file of the CA certificates the server's certificate
    /// must chain to; TLS is used (and verified) when set or when `url` says
    /// `sslmode=require`, which needs it.
    pub ca_file: String,
}

impl Default for RawQuarantine {
    fn default() -> Self {
        RawQuarantine {
            state_dir: PathBuf::from("/var/lib/fanout-milter"),
            state_owner: "fanout-milter".into(),
            review_within: "4h".into(),
            expire_after: "3d".into(),
            on_expiry: OnExpiry::NotifySender,
            confirm_within: "24h".into(),
            confirm_remember: "30d".into(),
            store: "sqlite".into(),
            url: String::new(),
            password_file: String::new(),
            password_env: String::new(),
            relay: String::new(),
            ca_file: String::new(),
        }
    }
}

/// `[postfix]`: the Postfix instance the admin commands act on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPostfix {
    /// Passed as `-c` to postqueue, postsuper and postcat (and `-C` to sendmail).
    pub config_directory: PathBuf,
    /// Where postqueue, postsuper and postcat are.
    pub command_directory: PathBuf,
    /// The sendmail binary used for notices and alert mail.
    pub sendmail: PathBuf,
    /// Postfix's `recipient_delimiter` (`"+"`, `"+-"`; `""`: none). Unset: read once
    /// at load with `postconf -c config_directory -h recipient_delimiter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_delimiter: Option<String>,
    /// Postfix's `myorigin`, the domain a bare recipient name gets. Unset: read once at
    /// load with `postconf -c config_directory -x -h myorigin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub myorigin: Option<String>,
}

impl Default for RawPostfix {
    fn default() -> Self {
        RawPostfix {
            config_directory: PathBuf::from("/etc/postfix"),
            command_directory: PathBuf::from("/usr/sbin"),
            sendmail: PathBuf::from("/usr/sbin/sendmail"),
            recipient_delimiter: None,
            myorigin: None,
        }
    }
}

/// `[notify]`: admin alerts and sender notices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNotify {
    /// Admin addresses that get alert digests by mail.
    pub admins: Vec<String>,
    /// URL that gets each digest as an HTTP POST of JSON; empty = none.
    pub webhook: SecretUrl,
    /// At most one digest per interval.
    pub interval: String,
    /// Timeout of one webhook attempt.
    pub webhook_timeout: String,
    /// Header From: of alerts and sender notices.
    pub from: String,
    /// `HOST:PORT` of the SMTP server the daemon hands its digests to. The daemon runs
    /// sandboxed without the setgid rights sendmail needs; admin commands use sendmail.
    pub relay: String,
    /// At most one notice to a sender per this; later holds go in one summary after it.
    pub sender_interval: String,
    /// At most this many sender notices leave per minute, relay-wide; the rest wait.
    pub sender_notices_per_minute: u32,
}

impl Default for RawNotify {
    fn default() -> Self {
        RawNotify {
            admins: Vec::new(),
            webhook: SecretUrl::default(),
            interval: "1m".into(),
            webhook_timeout: "5s".into(),
            from: "postmaster".into(),
            relay: "127.0.0.1:25".into(),
            sender_interval: "10m".into(),
            sender_notices_per_minute: 60,
        }
    }
}

/// `[milter]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMilter {
    /// `inet:HOST:PORT` or `unix:PATH`.
    pub listen: String,
    /// `enforce` or `monitor`.
    pub mode: Mode,
    /// Octal permissions of a unix socket.
    pub socket_mode: String,
    /// Concurrent milter connections (one per Postfix smtpd/cleanup process).
    pub max_connections: usize,
    /// Threads serving milter connections: 1 runs everything on one thread.
    pub threads: usize,
    /// Idle time after which a milter connection is closed.
    pub connection_timeout: String,
    /// How long a shutdown waits for messages in flight.
    pub shutdown_timeout: String,
    /// Header bytes kept per message; the rest is not parsed.
    pub max_header_bytes: usize,
}

impl Default for RawMilter {
    fn default() -> Self {
        RawMilter {
            listen: "inet:127.0.0.1:7785".into(),
            mode: Mode::Enforce,
            socket_mode: "0660".into(),
            max_connections: 200,
            threads: 1,
            connection_timeout: "10m".into(),
            shutdown_timeout: "30s".into(),
            max_header_bytes: 1024 * 1024,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogging {
    /// A tracing filter: `info`, `debug`, or directives like `info,fanout_milter=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[domains]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDomains {
    /// Internal domains: exact names and `*.` globs.
    pub internal: Vec<String>,
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// `[limits.envelope]`.
    pub envelope: RawLevels,
    /// `[limits.external]`.
    pub external: RawLevels,
    /// `[limits.audience]`.
    pub audience: RawLevels,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            envelope: RawLevels::new(50, 200, 2000),
            external: RawLevels::new(0, 100, 0),
            audience: RawLevels::new(0, 1000, 50000),
        }
    }
}

impl RawLimits {
    /// Fills levels a written table leaves out with their defaults, so that
    /// `[limits.envelope]` with only `tag = 30` keeps quarantine 200 and reject 2000.
    pub fn fill_defaults(&mut self) {
        let d = RawLimits::default();
        self.envelope.fill_from(&d.envelope);
        self.external.fill_from(&d.external);
        self.audience.fill_from(&d.audience);
    }
}

/// Levels of one counting rule; 0 switches a level off, a missing level takes the
/// rule's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLevels {
    /// Tag at or above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<u64>,
    /// Quarantine at or above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<u64>,
    /// Reject at or above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject: Option<u64>,
    /// Only tag, whatever level is reached.
    pub monitor: bool,
    /// `false`: the sender of a message this rule holds is not told at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_sender: Option<bool>,
}

impl RawLevels {
    /// Levels with every value set.
    pub fn new(tag: u64, quarantine: u64, reject: u64) -> Self {
        RawLevels {
            tag: Some(tag),
            quarantine: Some(quarantine),
            reject: Some(reject),
            monitor: false,
            notify_sender: None,
        }
    }

    fn fill_from(&mut self, defaults: &RawLevels) {
        self.tag = self.tag.or(defaults.tag);
        self.quarantine = self.quarantine.or(defaults.quarantine);
        self.reject = self.reject.or(defaults.reject);
    }
}

/// `[exempt]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawExempt {
    /// SASL logins (globs) no rule applies to.
    pub senders: Vec<String>,
    /// Envelope senders (globs) no rule applies to, in mail without a SASL login.
    pub envelope_senders: Vec<String>,
}

/// `[reply]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReply {
    /// Whom a refused sender should contact, used as `{contact}`.
    pub contact: String,
    /// Text of the 550 5.7.1 reply; `{reason}`, `{contact}` and `{queue_id}` are filled in.
    pub reject: String,
    /// Text of the 451 4.7.1 reply.
    pub tempfail: String,
}

impl Default for RawReply {
    fn default() -> Self {
        RawReply {
            contact: "your IT service desk".into(),
            reject: "Your message was NOT sent: it breaks this mail system's rules against \
                     mail to too many people ({reason}). Please check the recipients or ask \
                     {contact}."
                .into(),
            tempfail: "Your message could not be checked and was not sent yet; \
                       it will be retried. If this persists, contact {contact}."
                .into(),
        }
    }
}
