// SPDX-License-Identifier: GPL-3.0-or-later
//! Configuration: TOML file → validated, immutable [`Config`].
//!
//! Loading has two stages: serde reads the syntax (unknown keys are errors), then
//! [`validate`] checks meanings and collects every problem at once. Each error names the
//! file, the line and the dotted key.

/// `[quarantine] store = "postgres"`.
pub mod fleet_store;
pub mod ldap;
pub(crate) mod listen;
pub mod notices;
pub(crate) mod raw;
pub(crate) mod reply;
pub(crate) mod secret;
pub(crate) mod span;
mod validate;

pub use fleet_store::{PgSettings, PgTls};
pub use listen::ListenAddr;
pub use raw::{DirectoryKind, LogFormat, OnExpiry, RawConfig};
pub use reply::Replies;
pub use secret::{SecretUrl, redact_url};

use crate::policy::Policy;
use crate::policy::address::RecipientDelimiter;
use span::{SpanIndex, line_col};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fanout-milter/fanout-milter.toml";

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The effective settings, defaults filled in (printed by `check-config`).
    pub raw: RawConfig,
    /// `[milter] listen`.
    pub listen: ListenAddr,
    /// `[milter] socket_mode`, for unix sockets.
    pub socket_mode: u32,
    /// `[milter] max_connections`.
    pub max_connections: usize,
    /// `[milter] threads`: worker threads of the async runtime (1: a single thread).
    pub threads: usize,
    /// `[milter] connection_timeout`.
    pub connection_timeout: Duration,
    /// `[milter] shutdown_timeout`.
    pub shutdown_timeout: Duration,
    /// `[milter] max_header_bytes`.
    pub max_header_bytes: usize,
    /// The rules.
    pub policy: Policy,
    /// Reply texts.
    pub replies: Replies,
    /// `[[directory]]` sources, paths resolved against the configuration's directory.
    pub directories: Vec<DirectorySpec>,
    /// `[[list]]` entries.
    pub lists: Vec<ListSpec>,
    /// `[expansion] max_depth`.
    pub max_depth: usize,
    /// `[expansion] max_audience` (0: no cap).
    pub max_audience: u64,
    /// `[drift] factor`.
    pub drift_factor: f64,
    /// `[drift] min_audience` (0 = off).
    pub drift_min_audience: u64,
    /// `[quarantine] state_dir`.
    pub state_dir: PathBuf,
    /// `[quarantine] state_owner`: the daemon's account, the only one besides root
    /// that may own `state_dir` when root commands use it.
    pub state_owner: String,
    /// `[state] admin_socket`, defaulting to `state_dir/admin.sock`.
    pub admin_socket: PathBuf,
    /// `[state]`: where storm and rate state lives.
    pub state: StateSettings,
    /// `[quarantine]` deadlines.
    pub quarantine: QuarantineSettings,
    /// `[quarantine] store = "postgres"`: the fleet's database; `None`: SQLite.
    pub quarantine_store: Option<PgSettings>,
    /// `[postfix]`.
    pub postfix: PostfixSettings,
    /// `[notify]`.
    pub notify: NotifySettings,
    /// `[review]`: the web review desk.
    pub review: ReviewSettings,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsSettings,
    /// `[notices.*]`: the texts of the notices senders get.
    pub notices: notices::NoticeTemplates,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Where `/metrics` is served; `None`: nowhere.
    pub listen: Option<ListenAddr>,
    /// `token_file`, resolved against the configuration's directory; `None`: scrapes
    /// need no token.
    pub token_file: Option<PathBuf>,
}

/// `[review]`: the web review desk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewSettings {
    /// Where the desk listens; `None`: no desk.
    pub listen: Option<ListenAddr>,
    /// `allow_remote`: a `listen` address other hosts can reach was asked for.
    pub allow_remote: bool,
    /// `public_url` without a trailing `/`; empty: links are relative to the page.
    pub public_url: String,
    /// `users_file`, resolved against the configuration's directory.
    pub users_file: PathBuf,
    /// `session_idle`.
    pub session_idle: Duration,
    /// `session_lifetime`.
    pub session_lifetime: Duration,
    /// `link_lifetime`.
    pub link_lifetime: Duration,
    /// `digest_actions`: the admin digest carries signed one-click release and discard
    /// links (only with `listen` and `public_url` set).
    pub digest_actions: bool,
    /// `trusted_proxies`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `user_header`, lower-cased; `None`: no SSO.
    pub user_header: Option<String>,
}

impl ReviewSettings {
    /// True when browsers reach the desk over HTTPS (`public_url` says so): the session
    /// cookie is then `Secure` and named with the `__Host-` prefix.
    pub fn https(&self) -> bool {
        self.public_url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }
}

/// `[quarantine]` deadlines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineSettings {
    /// Held longer than this: escalation alert.
    pub review_within: Duration,
    /// Held longer than this: `on_expiry`.
    pub expire_after: Duration,
    /// What expiry does.
    pub on_expiry: OnExpiry,
    /// A message waiting for its sender (`confirm`) is discarded after this.
    pub confirm_within: Duration,
    /// How long a confirmation to a list is remembered (zero: not at all).
    pub confirm_remember: Duration,
}

/// What to do while the shared state backend is unreachable (`[state] on_failure`).
/// A configuration word, so it lives here, below the state module that acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Carry on with this relay's own state.
    Local,
    /// Tempfail messages that need state.
    Tempfail,
}

impl OnFailure {
    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Local => "local",
            OnFailure::Tempfail => "tempfail",
        }
    }
}

/// `[state]`: where storm and rate state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateSettings {
    /// In this process.
    Memory,
    /// Shared by a fleet through Redis.
    Redis {
        /// The server's URL (may carry a password; prints redacted).
        url: SecretUrl,
        /// `password_file`: the password, read at start, when not in `url`.
        password_file: Option<PathBuf>,
        /// Prefix of every key.
        prefix: String,
        /// How long one message's state operations may take.
        timeout: Duration,
        /// What to do while Redis does not answer.
        on_failure: OnFailure,
        /// TLS files and Sentinel: how to reach the server.
        conn: Box<RedisConnSettings>,
    },
}

/// `[state]` TLS (`ca_file`, `cert_file`, `key_file`) and `[state.sentinel]`: how a
/// Redis backend reaches its server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisConnSettings {
    /// PEM CA certificates the server's certificate must chain to; `None`: the
    /// system's roots. Used with `rediss://` URLs.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate and its private key, for servers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Find the master through Redis Sentinel.
    pub sentinel: Option<SentinelSettings>,
}

/// `[state.sentinel]`: the master is the one these sentinels name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// The sentinels (may carry a password; print redacted).
    pub urls: Vec<SecretUrl>,
    /// `password_file`: the sentinels' password, read at start.
    pub password_file: Option<PathBuf>,
}

/// `[postfix]`: the instance the admin commands act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostfixSettings {
    /// `-c` of postqueue, postsuper and postcat.
    pub config_directory: PathBuf,
    /// Where those commands are.
    pub command_directory: PathBuf,
    /// The sendmail binary.
    pub sendmail: PathBuf,
    /// `recipient_delimiter`: how Postfix splits `list+tag@domain`.
    pub recipient_delimiter: RecipientDelimiter,
    /// Where that value came from, for `check-config` and the start log.
    pub delimiter_origin: DelimiterOrigin,
    /// `myorigin`, expanded and lower-cased: the domain Postfix gives a bare name.
    pub myorigin: String,
    /// Where that value came from, for `check-config` and the start log.
    pub myorigin_origin: MyoriginOrigin,
}

impl PostfixSettings {
    /// Logs the effective `recipient_delimiter` and `myorigin` and where they came from
    /// (a warning when `postconf` could not be read); at start and on reload.
    pub fn log_delimiter(&self) {
        let value = crate::text::neutralize(self.recipient_delimiter.as_str()).into_owned();
        match &self.delimiter_origin {
            DelimiterOrigin::Fallback(_) => tracing::warn!(
                recipient_delimiter = %value,
                "recipient_delimiter {}; set [postfix] recipient_delimiter to Postfix's value",
                self.delimiter_origin
            ),
            origin => tracing::info!(
                recipient_delimiter = %value,
                "recipient_delimiter {origin}"
            ),
        }
        let myorigin = crate::text::neutralize(&self.myorigin).into_owned();
        match &self.myorigin_origin {
            MyoriginOrigin::Fallback(_) => tracing::warn!(
                myorigin = %myorigin,
                "myorigin {}; set [postfix] myorigin to Postfix's value",
                self.myorigin_origin
            ),
            origin => tracing::info!(myorigin = %myorigin, "myorigin {origin}"),
        }
    }

    /// How Postfix completes and compares addresses: `myorigin` and
    /// `recipient_delimiter`.
    pub fn address_form(&self) -> crate::policy::address::AddressForm {
        crate::policy::address::AddressForm {
            myorigin: self.myorigin.clone(),
            delimiter: self.recipient_delimiter.clone(),
        }
    }
}

/// Where the effective `myorigin` came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MyoriginOrigin {
    /// `[postfix] myorigin` in the configuration file.
    Config,
    /// `postconf -x` of `[postfix] config_directory`.
    Postconf,
    /// `postconf` could not be read (why): the host name is used, as Postfix's default
    /// `myorigin = $myhostname` would.
    Fallback(String),
}

impl fmt::Display for MyoriginOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MyoriginOrigin::Config => f.write_str("from [postfix] myorigin"),
            MyoriginOrigin::Postconf => f.write_str("from postconf"),
            MyoriginOrigin::Fallback(why) => write!(
                f,
                "fallback: the host name: postconf could not be read ({})",
                crate::text::neutralize(why)
            ),
        }
    }
}

/// Where the effective `recipient_delimiter` came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DelimiterOrigin {
    /// `[postfix] recipient_delimiter` in the configuration file.
    Config,
    /// `postconf` of `[postfix] config_directory`.
    Postconf,
    /// `postconf` could not be read (why): the fallback [`FALLBACK_DELIMITER`] is used.
    Fallback(String),
}

impl fmt::Display for DelimiterOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelimiterOrigin::Config => f.write_str("from [postfix] recipient_delimiter"),
            DelimiterOrigin::Postconf => f.write_str("from postconf"),
            DelimiterOrigin::Fallback(why) => write!(
                f,
                "fallback \"{FALLBACK_DELIMITER}\": postconf could not be read ({})",
                crate::text::neutralize(why)
            ),
        }
    }
}

/// The delimiter used when `postconf` cannot be read: Debian's `+`. A delimiter
/// fanout-milter does not know about lets `list+x@` pass as one mailbox, while a
/// delimiter Postfix does not use only makes `list+x@` count as `list@`: the safe
/// error is the second.
pub const FALLBACK_DELIMITER: &str = "+";

/// How long `postconf` may take at load.
const POSTCONF_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `postconf -c config_directory -x -h recipient_delimiter myorigin` once: its
/// lines, in that order.
fn postconf_lines(settings: &PostfixSettings) -> Result<Vec<String>, String> {
    let mut cmd = std::process::Command::new(settings.command_directory.join("postconf"));
    cmd.arg("-c")
        .arg(&settings.config_directory)
        .arg("-x")
        .arg("-h")
        .arg("recipient_delimiter")
        .arg("myorigin");
    let out = crate::process::run(cmd, None, POSTCONF_TIMEOUT).map_err(|e| e.to_string())?;
    let text = String::from_utf8(out.stdout)
        .map_err(|_| "postconf printed a value that is not UTF-8".to_owned())?;
    Ok(text.lines().map(|l| l.trim().to_owned()).collect())
}

/// The delimiter in `postconf`'s answer (its first line).
fn delimiter_line(lines: &[String]) -> Result<String, String> {
    let value = lines.first().map_or("", String::as_str);
    validate::check_delimiter(value)?;
    Ok(value.to_owned())
}

/// `myorigin` in `postconf`'s answer (its second line).
fn myorigin_line(lines: &[String]) -> Result<String, String> {
    let value = lines
        .get(1)
        .ok_or_else(|| "postconf printed no myorigin".to_owned())?;
    validate::check_origin(value)?;
    Ok(value.to_owned())
}

/// This host's name, for the `myorigin` fallback.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| validate::check_origin(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Fills in `myorigin` when the file does not set it: from `postconf`, or the host
/// name when that fails. Runs once per load, with [`resolve_delimiter`].
fn resolve_myorigin(
    config: &mut Config,
    postconf: impl FnOnce(&PostfixSettings) -> Result<String, String>,
    host: impl FnOnce() -> String,
) {
    if config.raw.postfix.myorigin.is_some() {
        return;
    }
    let (value, origin) = match postconf(&config.postfix) {
        Ok(v) => (v, MyoriginOrigin::Postconf),
        Err(why) => (host(), MyoriginOrigin::Fallback(why)),
    };
    config.postfix.myorigin = validate::origin_key(&value);
    config.postfix.myorigin_origin = origin;
    config.policy.internal.add_exact(&config.postfix.myorigin);
}

/// Fills in `recipient_delimiter` when the file does not set it: from `postconf`, or
/// the fallback when that fails. Runs once per load (start, reload, admin command).
fn resolve_delimiter(
    config: &mut Config,
    postconf: impl FnOnce(&PostfixSettings) -> Result<String, String>,
) {
    if config.raw.postfix.recipient_delimiter.is_some() {
        return;
    }
    let (value, origin) = match postconf(&config.postfix) {
        Ok(v) => (v, DelimiterOrigin::Postconf),
        Err(why) => (
            FALLBACK_DELIMITER.to_owned(),
            DelimiterOrigin::Fallback(why),
        ),
    };
    config.postfix.recipient_delimiter = RecipientDelimiter::new(&value);
    config.postfix.delimiter_origin = origin;
}

/// `[notify]`: where alerts go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifySettings {
    /// Admin addresses for digests by mail.
    pub admins: Vec<String>,
    /// Webhook URL (its path and query may be a token; prints redacted).
    pub webhook: Option<SecretUrl>,
    /// At most one digest per interval.
    pub interval: Duration,
    /// Timeout of one webhook attempt.
    pub webhook_timeout: Duration,
    /// Header From: of alerts and notices.
    pub from: String,
    /// SMTP relay (host, port) for the daemon's digests and notices.
    pub relay: (String, u16),
    /// At most one notice to a sender per this; later holds are summarised.
    pub sender_interval: Duration,
    /// Sender notices per minute, relay-wide.
    pub sender_notices_per_minute: u32,
}

/// One `[[directory]]` source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectorySpec {
    /// Its kind.
    pub kind: DirectoryKind,
    /// The file (empty for LDAP).
    pub path: PathBuf,
    /// Domains for bare names, lower-cased; an LDAP source's mail domains.
    pub domains: Vec<String>,
    /// The settings of an LDAP source.
    pub ldap: Option<ldap::LdapSettings>,
}

/// One `[[list]]` entry.
#[derive(Clone, Debug)]
pub struct ListSpec {
    /// The list address, lower-cased.
    pub address: String,
    /// Members, when defined here.
    pub members: Option<Vec<String>>,
    /// Size, for a list fanout-milter cannot read. (Who may send to it, when
    /// restricted by name, is the policy's: [`Restricted::lists`](crate::policy::Restricted::lists).)
    pub member_count: Option<u64>,
}

/// Copies `old` over `new` when they differ; true when they did.
fn keep<T: Clone + PartialEq>(old: &T, new: &mut T) -> bool {
    let changed = old != new;
    if changed {
        new.clone_from(old);
    }
    changed
}

/// Keeps the running value of one restart-only setting in a reloaded configuration;
/// true when the file changed it.
type KeepRunning = fn(&Config, &mut Config) -> bool;

/// The settings read once at start (sockets, runtime, logging, state directory,
/// storm and rate state backend): a reload keeps their running values until a restart.
/// The one list of them.
const RESTART_ONLY: &[(&str, KeepRunning)] = &[
    ("milter.listen", |old, new| {
        keep(&old.raw.milter.listen, &mut new.raw.milter.listen)
            | keep(&old.listen, &mut new.listen)
    }),
    ("milter.socket_mode", |old, new| {
        keep(&old.raw.milter.socket_mode, &mut new.raw.milter.socket_mode)
            | keep(&old.socket_mode, &mut new.socket_mode)
    }),
    ("milter.max_connections", |old, new| {
        keep(
            &old.raw.milter.max_connections,
            &mut new.raw.milter.max_connections,
        ) | keep(&old.max_connections, &mut new.max_connections)
    }),
    ("milter.threads", |old, new| {
        keep(&old.raw.milter.threads, &mut new.raw.milter.threads)
            | keep(&old.threads, &mut new.threads)
    }),
    ("milter.connection_timeout", |old, new| {
        keep(
            &old.raw.milter.connection_timeout,
            &mut new.raw.milter.connection_timeout,
        ) | keep(&old.connection_timeout, &mut new.connection_timeout)
    }),
    ("logging", |old, new| {
        keep(&old.raw.logging, &mut new.raw.logging)
    }),
    ("quarantine.state_dir", |old, new| {
        keep(
            &old.raw.quarantine.state_dir,
            &mut new.raw.quarantine.state_dir,
        ) | keep(&old.state_dir, &mut new.state_dir)
    }),
    ("quarantine.store", |old, new| {
        let (o, n) = (&old.raw.quarantine, &mut new.raw.quarantine);
        keep(&o.store, &mut n.store)
            | keep(&o.url, &mut n.url)
            | keep(&o.password_file, &mut n.password_file)
            | keep(&o.password_env, &mut n.password_env)
            | keep(&o.relay, &mut n.relay)
            | keep(&o.ca_file, &mut n.ca_file)
            | keep(&old.quarantine_store, &mut new.quarantine_store)
    }),
    ("state.admin_socket", |old, new| {
        keep(&old.raw.state.admin_socket, &mut new.raw.state.admin_socket)
    }),
    ("state.backend", |old, new| {
        keep(&old.raw.state.backend, &mut new.raw.state.backend)
    }),
    ("state.url", |old, new| {
        keep(&old.raw.state.url, &mut new.raw.state.url)
    }),
    ("state.password_file", |old, new| {
        keep(
            &old.raw.state.password_file,
            &mut new.raw.state.password_file,
        )
    }),
    ("state.prefix", |old, new| {
        keep(&old.raw.state.prefix, &mut new.raw.state.prefix)
    }),
    ("state.timeout", |old, new| {
        keep(&old.raw.state.timeout, &mut new.raw.state.timeout)
    }),
    ("state.on_failure", |old, new| {
        keep(&old.raw.state.on_failure, &mut new.raw.state.on_failure)
    }),
    ("state.ca_file", |old, new| {
        keep(&old.raw.state.ca_file, &mut new.raw.state.ca_file)
    }),
    ("state.cert_file", |old, new| {
        keep(&old.raw.state.cert_file, &mut new.raw.state.cert_file)
    }),
    ("state.key_file", |old, new| {
        keep(&old.raw.state.key_file, &mut new.raw.state.key_file)
    }),
    ("state.sentinel", |old, new| {
        keep(&old.raw.state.sentinel, &mut new.raw.state.sentinel)
    }),
    // The desk is built once at start with its settings (listener, cookie, proxies,
    // session times); its users file is re-read whenever it changes.
    ("review", |old, new| {
        keep(&old.raw.review, &mut new.raw.review) | keep(&old.review, &mut new.review)
    }),
    // The endpoint is bound once at start; its token file is read at each scrape.
    ("metrics", |old, new| {
        keep(&old.raw.metrics, &mut new.raw.metrics) | keep(&old.metrics, &mut new.metrics)
    }),
];

impl Config {
    /// Gives `new`, a reloaded configuration, the running (`self`) values of every
    /// setting that needs a restart, so that nothing runs half on the old value and half
    /// on the new one; returns the keys the file changed.
    pub fn keep_restart_only(&self, new: &mut Config) -> Vec<&'static str> {
        let changed = RESTART_ONLY
            .iter()
            .filter(|(_, keep_running)| keep_running(self, new))
            .map(|(key, _)| *key)
            .collect();
        // Built from restart-only keys alone (`state.*`; `state_dir`, `admin_socket`).
        new.state.clone_from(&self.state);
        new.admin_socket.clone_from(&self.admin_socket);
        changed
    }

    /// The effective settings as TOML, every URL through [`redact_url`] (Redis
    /// password, webhook token, LDAP user info).
    pub fn effective_toml(&self) -> String {
        let mut raw = self.raw.clone();
        raw.state.url = raw.state.url.redacted().into();
        for u in &mut raw.state.sentinel.urls {
            *u = u.redacted().into();
        }
        raw.notify.webhook = raw.notify.webhook.redacted().into();
        for d in &mut raw.directory {
            d.url = d.url.as_deref().map(redact_url);
        }
        toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the key is written in the file.
    pub line: Option<usize>,
    /// 1-based column, for syntax errors.
    pub column: Option<usize>,
    /// Dotted key, e.g. `limits.envelope.reject` (empty when unknown).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// What went wrong with a configuration file.
#[derive(Debug)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Read(std::io::Error),
    /// The file was read but is not a valid configuration.
    Invalid(Vec<Problem>),
}

/// A configuration file that cannot be used.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub kind: ConfigErrorKind,
}

impl ConfigError {
    /// The problems found (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match &self.kind {
            ConfigErrorKind::Read(_) => &[],
            ConfigErrorKind::Invalid(p) => p,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match &self.kind {
            ConfigErrorKind::Read(e) => write!(f, "{file}: cannot read configuration: {e}"),
            ConfigErrorKind::Invalid(problems) => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{file}")?;
                    if let Some(line) = p.line {
                        write!(f, ":{line}")?;
                    }
                    if let Some(col) = p.column {
                        write!(f, ":{col}")?;
                    }
                    if p.key.is_empty() {
                        write!(f, ": {}", p.message)?;
                    } else {
                        write!(f, ": {}: {}", p.key, p.message)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ConfigErrorKind::Read(e) => Some(e),
            ConfigErrorKind::Invalid(_) => None,
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_owned(),
        kind: ConfigErrorKind::Read(e),
    })?;
    let mut config = parse(&src, file)?;
    let answer = std::cell::OnceCell::new();
    let ask = |s: &PostfixSettings| answer.get_or_init(|| postconf_lines(s)).clone();
    resolve_delimiter(&mut config, |s| ask(s).and_then(|l| delimiter_line(&l)));
    resolve_myorigin(
        &mut config,
        |s| ask(s).and_then(|l| myorigin_line(&l)),
        host_name,
    );
    Ok(config)
}

/// Validates configuration text; `file` is only used in messages and in [`Config::file`].
/// Runs nothing: a `recipient_delimiter` the text does not set is the fallback here
/// ([`load`] asks `postconf`).
pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError {
        file: file.to_owned(),
        kind: ConfigErrorKind::Invalid(problems),
    };
    let index = match SpanIndex::build(src) {
        Ok(index) => index,
        Err(e) => return Err(invalid(vec![toml_problem(src, &SpanIndex::default(), &e)])),
    };
    let mut raw: RawConfig =
        toml::from_str(src).map_err(|e| invalid(vec![toml_problem(src, &index, &e)]))?;
    raw.limits.fill_defaults();
    validate::validate(raw, file).map_err(|problems| {
        let mut problems: Vec<Problem> = problems
            .into_iter()
            .map(|(key, message)| Problem {
                line: index.offset_of(&key).map(|o| line_col(src, o).0),
                column: None,
                key,
                message,
            })
            .collect();
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        invalid(problems)
    })
}

fn toml_problem(src: &str, index: &SpanIndex, e: &toml::de::Error) -> Problem {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let (line, col) = line_col(src, span.start);
            let key = index.path_at(span.start).unwrap_or_default().to_owned();
            (Some(line), Some(col), key)
        }
        None => (None, None, String::new()),
    };
    Problem {
        line,
        column,
        key,
        message: e.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests;
