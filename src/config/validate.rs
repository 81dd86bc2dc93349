// SPDX-License-Identifier: GPL-3.0-or-later
//! Second stage of loading: checks the meaning of every value and builds [`Config`].
//! All problems are collected, each with the dotted key it belongs to.

use super::raw::{DirectoryKind, RawConfig, RawLevels, StateBackendKind};
use super::reply::{Replies, STORM_PLACEHOLDERS, check_template, check_template_with};
use super::secret::{SecretUrl, redact_url, redact_url_in};
use super::{
    Config, DelimiterOrigin, DirectorySpec, FALLBACK_DELIMITER, ListSpec, ListenAddr,
    MyoriginOrigin, NotifySettings, PostfixSettings, QuarantineSettings, StateSettings,
};
use crate::policy::address::{RecipientDelimiter, fold_case};
use crate::policy::{
    Action, AddressGlobs, BreakerPolicy, DomainSet, Hidden, Levels, Policy, RatePolicy, Restricted,
    Scope, StormPolicy, TrustedSenders,
};
use crate::state::OnFailure;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Upper bound of `[state] timeout`: Postfix's own milter timeouts are 30 s and more,
/// but a relay that waits seconds per message on a hung Redis is an outage.
const MAX_STATE_TIMEOUT: Duration = Duration::from_secs(10);

// Upper bounds of durations: long enough for any sane setting, short enough that
// adding one to a clock reading or a Redis expiry can never overflow.
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration for a message: whole days as `7d`, anything else as humantime writes it.
pub(super) fn duration_text(d: Duration) -> String {
    match d.as_secs() {
        s if s >= DAY.as_secs() && s % DAY.as_secs() == 0 && d.subsec_nanos() == 0 => {
            format!("{}d", s / DAY.as_secs())
        }
        _ => humantime::format_duration(d).to_string(),
    }
}

/// Upper bound of `[milter] threads`.
const MAX_THREADS: usize = 256;

type Problems = Vec<(String, String)>;

pub(super) fn validate(mut raw: RawConfig, file: &Path) -> Result<Config, Problems> {
    let mut problems = Problems::new();
    let mut report = |key: &str, msg: String| problems.push((key.to_owned(), msg));

    let listen = match raw.milter.listen.parse::<ListenAddr>() {
        Ok(l) => Some(l),
        Err(e) => {
            report("milter.listen", e.to_string());
            None
        }
    };
    let socket_mode = match u32::from_str_radix(raw.milter.socket_mode.trim(), 8) {
        Ok(m) if m <= 0o777 => m,
        _ => {
            report(
                "milter.socket_mode",
                format!(
                    "\"{}\" is not an octal file mode such as \"0660\"",
                    raw.milter.socket_mode
                ),
            );
            0
        }
    };
    if raw.milter.max_connections == 0 {
        report("milter.max_connections", "must be at least 1".into());
    }
    if raw.milter.threads == 0 || raw.milter.threads > MAX_THREADS {
        report(
            "milter.threads",
            format!("must be between 1 and {MAX_THREADS}"),
        );
    }
    if raw.milter.max_header_bytes < 1024 {
        report(
            "milter.max_header_bytes",
            format!(
                "{} is too small; use at least 1024",
                raw.milter.max_header_bytes
            ),
        );
    }
    let mut duration =
        |key: &str, value: &str, max: Duration| match humantime::parse_duration(value.trim()) {
            Ok(d) if d > max => {
                report(
                    key,
                    format!(
                        "\"{}\" is too long; use at most {}",
                        value.trim(),
                        duration_text(max)
                    ),
                );
                max
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                report(key, "must be longer than 0".into());
                Duration::ZERO
            }
            Err(e) => {
                report(
                    key,
                    format!("\"{value}\" is not a duration such as \"30s\" or \"10m\": {e}"),
                );
                Duration::ZERO
            }
        };
    let connection_timeout = duration(
        "milter.connection_timeout",
        &raw.milter.connection_timeout,
        DAY,
    );
    let shutdown_timeout = duration(
        "milter.shutdown_timeout",
        &raw.milter.shutdown_timeout,
        HOUR,
    );
    let review_within = duration(
        "quarantine.review_within",
        &raw.quarantine.review_within,
        YEAR,
    );
    let expire_after = duration(
        "quarantine.expire_after",
        &raw.quarantine.expire_after,
        YEAR,
    );
    let interval = duration("notify.interval", &raw.notify.interval, WEEK);
    let webhook_timeout = duration("notify.webhook_timeout", &raw.notify.webhook_timeout, HOUR);
    let storm_window = duration("storm.window", &raw.storm.window, WEEK);
    let storm_block_for = duration("storm.block_for", &raw.storm.block_for, 4 * WEEK);
    let state_timeout = duration("state.timeout", &raw.state.timeout, HOUR);

    if let Err(e) = check_log_level(&raw.logging.level) {
        report("logging.level", e);
    }

    let mut internal = DomainSet::new(&raw.domains.internal).unwrap_or_else(|(i, e)| {
        report(&format!("domains.internal[{i}]"), e.to_string());
        DomainSet::default()
    });
    if let Some(origin) = &raw.postfix.myorigin
        && check_origin(origin).is_ok()
    {
        internal.add_exact(&origin_key(origin));
    }
    let mut globs = |key: &str, patterns: &[String]| {
        AddressGlobs::new(patterns).unwrap_or_else(|(i, e)| {
            report(&format!("{key}[{i}]"), format!("invalid pattern: {e}"));
            AddressGlobs::default()
        })
    };
    let exempt = TrustedSenders {
        logins: globs("exempt.senders", &raw.exempt.senders),
        envelope: globs("exempt.envelope_senders", &raw.exempt.envelope_senders),
    };
    let envelope = levels("limits.envelope", &raw.limits.envelope, &mut report);
    let external = levels("limits.external", &raw.limits.external, &mut report);
    let audience = levels("limits.audience", &raw.limits.audience, &mut report);

    let base = file.parent().unwrap_or(Path::new("/"));
    let mut directories = Vec::new();
    let mut ldap_sources = 0;
    for (i, d) in raw.directory.iter_mut().enumerate() {
        let key = format!("directory[{i}]");
        let domains = domain_names(&key, &d.domains, &mut report);
        if d.kind == DirectoryKind::Ldap {
            let settings =
                super::ldap::validate(&key, ldap_sources, d, domains.clone(), base, &mut report);
            ldap_sources += 1;
            if directories
                .iter()
                .any(|x: &DirectorySpec| x.ldap.as_ref().is_some_and(|l| l.name == settings.name))
            {
                report(
                    &format!("{key}.name"),
                    format!("\"{}\" names another LDAP source too", settings.name),
                );
            }
            directories.push(DirectorySpec {
                kind: d.kind,
                path: PathBuf::new(),
                domains,
                ldap: Some(settings),
            });
            continue;
        }
        let path = match &d.path {
            Some(p) => base.join(p),
            None => {
                report(
                    &format!("{key}.path"),
                    "a file source needs path, e.g. \"/etc/postfix/virtual\"".into(),
                );
                PathBuf::new()
            }
        };
        if d.path.is_some() && !path.is_file() {
            report(
                &format!("{key}.path"),
                format!("cannot read \"{}\": no such file", path.display()),
            );
        }
        if let Some(field) = d.ldap_only_key() {
            report(
                &format!("{key}.{field}"),
                "is a setting of LDAP sources (type = \"ldap\")".into(),
            );
        }
        if d.kind == DirectoryKind::Aliases && domains.is_empty() {
            report(
                &format!("{key}.domains"),
                "an aliases source needs the local domains its names apply to \
                 (Postfix's mydestination), e.g. [\"lists.example.org\"]"
                    .into(),
            );
        }
        directories.push(DirectorySpec {
            kind: d.kind,
            path,
            domains,
            ldap: None,
        });
    }

    let mut lists = Vec::new();
    let mut restricted_lists = HashMap::new();
    for (i, l) in raw.list.iter().enumerate() {
        let key = format!("list[{i}]");
        let address = fold_case(&crate::policy::address::normalize(&l.address));
        if !address.contains('@') || address.starts_with('@') {
            report(
                &format!("{key}.address"),
                format!("\"{}\" is not a list address (user@domain)", l.address),
            );
        }
        let restricted_by_name =
            l.allowed_senders.is_some() || l.allowed_envelope_senders.is_some();
        match (&l.members, l.member_count, restricted_by_name) {
            (Some(_), Some(_), _) => report(
                &format!("{key}.member_count"),
                "give members or member_count, not both".into(),
            ),
            (None, None, false) => report(
                &key,
                "needs members, member_count, allowed_senders or allowed_envelope_senders".into(),
            ),
            _ => {}
        }
        let mut globs = |name: &str, patterns: &Option<Vec<String>>| {
            let patterns = patterns.as_deref().unwrap_or_default();
            AddressGlobs::new(patterns).unwrap_or_else(|(j, e)| {
                report(
                    &format!("{key}.{name}[{j}]"),
                    format!("invalid pattern: {e}"),
                );
                AddressGlobs::default()
            })
        };
        if restricted_by_name {
            let allowed = TrustedSenders {
                logins: globs("allowed_senders", &l.allowed_senders),
                envelope: globs("allowed_envelope_senders", &l.allowed_envelope_senders),
            };
            restricted_lists.insert(address.clone(), allowed);
        }
        lists.push(ListSpec {
            address,
            members: l.members.as_ref().map(|m| {
                m.iter()
                    .map(|a| fold_case(&crate::policy::address::normalize(a)))
                    .collect()
            }),
            member_count: l.member_count,
        });
    }

    let mut check_action = |key: &str, action: Action| {
        if action == Action::Accept {
            report(
                key,
                "\"accept\" is not an action for a rule: use tag, quarantine, tempfail or reject"
                    .into(),
            );
        }
    };
    check_action("restricted.action", raw.restricted.action);
    check_action("hidden.action", raw.hidden.action);
    check_action("drift.action", raw.drift.action);
    for (i, sc) in raw.scope.iter().enumerate() {
        check_action(&format!("scope[{i}].action"), sc.action);
    }
    let mut globs = |key: &str, patterns: &[String]| {
        AddressGlobs::new(patterns).unwrap_or_else(|(i, e)| {
            report(&format!("{key}[{i}]"), format!("invalid pattern: {e}"));
            AddressGlobs::default()
        })
    };
    let restricted_senders = TrustedSenders {
        logins: globs(
            "restricted.allowed_senders",
            &raw.restricted.allowed_senders,
        ),
        envelope: globs(
            "restricted.allowed_envelope_senders",
            &raw.restricted.allowed_envelope_senders,
        ),
    };
    if !(raw.hidden.ratio.is_finite() && raw.hidden.ratio >= 1.0) {
        report(
            "hidden.ratio",
            format!("{} must be a number of at least 1", raw.hidden.ratio),
        );
    }
    if !(raw.drift.factor.is_finite() && raw.drift.factor > 1.0) {
        report(
            "drift.factor",
            format!("{} must be a number above 1", raw.drift.factor),
        );
    }
    if raw.expansion.max_depth == 0 {
        report("expansion.max_depth", "must be at least 1".into());
    }
    if raw.expansion.on_unknown == Action::Accept {
        report(
            "expansion.on_unknown",
            "\"accept\" would let a list of unknown size through unseen: use tag, \
             quarantine, tempfail or reject"
                .into(),
        );
    }
    let mut scopes = Vec::new();
    for (i, sc) in raw.scope.iter().enumerate() {
        let key = format!("scope[{i}]");
        if sc.senders.is_empty() {
            report(
                &format!("{key}.senders"),
                "must name at least one sender pattern".into(),
            );
        }
        if sc.may_reach.is_empty() {
            report(
                &format!("{key}.may_reach"),
                "must name at least one domain".into(),
            );
        }
        let senders = AddressGlobs::new(&sc.senders).unwrap_or_else(|(j, e)| {
            report(
                &format!("{key}.senders[{j}]"),
                format!("invalid pattern: {e}"),
            );
            AddressGlobs::default()
        });
        let may_reach = DomainSet::new(&sc.may_reach).unwrap_or_else(|(j, e)| {
            report(&format!("{key}.may_reach[{j}]"), e.to_string());
            DomainSet::default()
        });
        scopes.push(Scope {
            senders,
            may_reach,
            may_reach_text: sc.may_reach.join(", "),
            action: sc.action,
            monitor: sc.monitor,
        });
    }
    if raw.quarantine.state_dir.is_relative() {
        report(
            "quarantine.state_dir",
            format!(
                "\"{}\" must be an absolute path",
                raw.quarantine.state_dir.display()
            ),
        );
    }
    if !review_within.is_zero() && !expire_after.is_zero() && expire_after < review_within {
        report(
            "quarantine.expire_after",
            format!(
                "\"{}\" is shorter than review_within \"{}\": admins would never be warned \
                 before a held message expires",
                raw.quarantine.expire_after, raw.quarantine.review_within
            ),
        );
    }
    for (key, dir) in [
        ("postfix.config_directory", &raw.postfix.config_directory),
        ("postfix.command_directory", &raw.postfix.command_directory),
        ("postfix.sendmail", &raw.postfix.sendmail),
    ] {
        if dir.is_relative() {
            report(
                key,
                format!("\"{}\" must be an absolute path", dir.display()),
            );
        }
    }
    if let Some(d) = &raw.postfix.recipient_delimiter
        && let Err(e) = check_delimiter(d)
    {
        report("postfix.recipient_delimiter", e);
    }
    if let Some(o) = &raw.postfix.myorigin
        && let Err(e) = check_origin(o)
    {
        report("postfix.myorigin", e);
    }
    for (i, admin) in raw.notify.admins.iter().enumerate() {
        if let Err(e) = check_mailbox(admin) {
            report(&format!("notify.admins[{i}]"), e);
        }
    }
    let webhook = raw.notify.webhook.expose().trim().to_owned();
    if !(webhook.is_empty() || webhook.starts_with("http://") || webhook.starts_with("https://")) {
        report(
            "notify.webhook",
            format!(
                "\"{}\" must be an http:// or https:// URL",
                redact_url(&webhook)
            ),
        );
    }
    if raw.notify.from.trim().is_empty() || raw.notify.from.contains(['<', '>', '\r', '\n', ' ']) {
        report(
            "notify.from",
            format!(
                "\"{}\" must be a plain address such as postmaster@example.org",
                raw.notify.from
            ),
        );
    }
    let relay = match raw.notify.relay.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => (
            host.trim_matches(['[', ']']).to_owned(),
            port.parse().unwrap_or(25),
        ),
        _ => {
            report(
                "notify.relay",
                format!(
                    "\"{}\" is not HOST:PORT such as 127.0.0.1:25",
                    raw.notify.relay
                ),
            );
            (String::new(), 0)
        }
    };
    if raw.domains.internal.is_empty()
        && external.quarantine.max(external.reject).max(external.tag) > 0
    {
        report(
            "domains.internal",
            "is empty, so every recipient counts as external for [limits.external]; \
             list your own domains, or set the [limits.external] levels to 0"
                .into(),
        );
    }

    for (key, value) in [
        ("reply.reject", &raw.reply.reject),
        ("reply.tempfail", &raw.reply.tempfail),
        ("rate.reply", &raw.rate.reply),
    ] {
        if let Err(e) = check_template(value) {
            report(key, e);
        }
    }
    if raw.reply.contact.contains(['{', '}']) {
        report("reply.contact", "must not contain placeholders".into());
    } else if let Err(e) = check_template(&raw.reply.contact) {
        report("reply.contact", e);
    }

    let storm = &raw.storm;
    if storm.min_messages < 2 {
        report(
            "storm.min_messages",
            format!("{} must be at least 2", storm.min_messages),
        );
    }
    if storm.min_senders == 0 || storm.min_senders > storm.min_messages {
        report(
            "storm.min_senders",
            format!(
                "{} must be between 1 and storm.min_messages ({})",
                storm.min_senders, storm.min_messages
            ),
        );
    }
    if storm.action == Action::Accept {
        report(
            "storm.action",
            "\"accept\" is not an action for a rule: use tag, quarantine, tempfail or reject"
                .into(),
        );
    }
    if let Err(e) = check_template_with(&storm.reply, &STORM_PLACEHOLDERS) {
        report("storm.reply", e);
    }
    if !matches!(raw.rate.action, Action::Tempfail | Action::Quarantine) {
        report(
            "rate.action",
            format!(
                "\"{}\" is not allowed here: use \"tempfail\" or \"quarantine\"",
                raw.rate.action
            ),
        );
    }
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
                    if let Err(e) = super::ldap::check_secret_file(&path) {
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

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        file: file.to_owned(),
        listen: listen.expect("listen is set when there is no problem"),
        socket_mode,
        max_connections: raw.milter.max_connections,
        threads: raw.milter.threads,
        connection_timeout,
        shutdown_timeout,
        max_header_bytes: raw.milter.max_header_bytes,
        policy: Policy {
            mode: raw.milter.mode,
            internal,
            envelope,
            external,
            audience,
            restricted: Restricted {
                min_audience: raw.restricted.min_audience,
                allowed_senders: restricted_senders,
                lists: restricted_lists,
                action: raw.restricted.action,
                monitor: raw.restricted.monitor,
            },
            hidden: Hidden {
                min_audience: raw.hidden.min_audience,
                ratio: raw.hidden.ratio,
                action: raw.hidden.action,
                monitor: raw.hidden.monitor,
            },
            drift_action: raw.drift.action,
            on_unknown: raw.expansion.on_unknown,
            drift_monitor: raw.drift.monitor,
            scopes,
            exempt,
            storm: StormPolicy {
                min_audience: storm.min_audience,
                min_messages: storm.min_messages,
                min_senders: storm.min_senders,
                window: storm_window,
                block_for: storm_block_for,
                action: storm.action,
                monitor: storm.monitor,
                reply: storm.reply.clone(),
            },
            rate: RatePolicy {
                recipients_per_hour: raw.rate.recipients_per_hour,
                recipients_per_day: raw.rate.recipients_per_day,
                external_per_hour: raw.rate.external_per_hour,
                external_per_day: raw.rate.external_per_day,
                action: raw.rate.action,
                monitor: raw.rate.monitor,
                reply: raw.rate.reply.clone(),
            },
            breaker: BreakerPolicy {
                max_per_minute: raw.breaker.max_per_minute,
                min_audience: raw.breaker.min_audience,
                monitor: raw.breaker.monitor,
            },
        },
        admin_socket,
        state,
        directories,
        lists,
        max_depth: raw.expansion.max_depth,
        max_audience: raw.expansion.max_audience,
        drift_factor: raw.drift.factor,
        drift_min_audience: raw.drift.min_audience,
        state_dir: raw.quarantine.state_dir.clone(),
        state_owner: raw.quarantine.state_owner.clone(),
        quarantine: QuarantineSettings {
            review_within,
            expire_after,
            on_expiry: raw.quarantine.on_expiry,
        },
        postfix: PostfixSettings {
            config_directory: raw.postfix.config_directory.clone(),
            command_directory: raw.postfix.command_directory.clone(),
            sendmail: raw.postfix.sendmail.clone(),
            recipient_delimiter: RecipientDelimiter::new(
                raw.postfix
                    .recipient_delimiter
                    .as_deref()
                    .unwrap_or(FALLBACK_DELIMITER),
            ),
            delimiter_origin: match raw.postfix.recipient_delimiter {
                Some(_) => DelimiterOrigin::Config,
                None => DelimiterOrigin::Fallback("not asked: configuration parsed only".into()),
            },
            myorigin: raw
                .postfix
                .myorigin
                .as_deref()
                .map(origin_key)
                .unwrap_or_default(),
            myorigin_origin: match raw.postfix.myorigin {
                Some(_) => MyoriginOrigin::Config,
                None => MyoriginOrigin::Fallback("not asked: configuration parsed only".into()),
            },
        },
        notify: NotifySettings {
            admins: raw
                .notify
                .admins
                .iter()
                .map(|a| a.trim().to_owned())
                .collect(),
            webhook: (!webhook.is_empty()).then(|| SecretUrl::from(webhook)),
            interval,
            webhook_timeout,
            from: raw.notify.from.trim().to_owned(),
            relay,
        },
        replies: Replies {
            contact: raw.reply.contact.clone(),
            reject: raw.reply.reject.clone(),
            tempfail: raw.reply.tempfail.clone(),
        },
        raw,
    })
}

/// Lower-cased domain names (no wildcards) of a directory source.
fn domain_names(
    key: &str,
    domains: &[String],
    report: &mut impl FnMut(&str, String),
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.contains('*') || DomainSet::new([&d]).is_err() {
            report(
                &format!("{key}.domains[{i}]"),
                format!("\"{d}\" is not a domain name"),
            );
        } else {
            out.push(d);
        }
    }
    out
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

fn levels(key: &str, raw: &RawLevels, report: &mut impl FnMut(&str, String)) -> Levels {
    let (tag, quarantine, reject) = (
        raw.tag.unwrap_or(0),
        raw.quarantine.unwrap_or(0),
        raw.reject.unwrap_or(0),
    );
    let set: Vec<(&str, u64)> = [("tag", tag), ("quarantine", quarantine), ("reject", reject)]
        .into_iter()
        .filter(|&(_, v)| v > 0)
        .collect();
    for pair in set.windows(2) {
        let ((lo_name, lo), (hi_name, hi)) = (pair[0], pair[1]);
        if lo >= hi {
            report(
                &format!("{key}.{hi_name}"),
                format!(
                    "{hi_name} ({hi}) must be above {lo_name} ({lo}); use 0 to switch a level off"
                ),
            );
        }
    }
    Levels {
        tag,
        quarantine,
        reject,
        monitor: raw.monitor,
    }
}

/// A `recipient_delimiter` must be characters that can sit in a local part: no space,
/// control character, `@`, quote or comma.
pub(super) fn check_delimiter(set: &str) -> Result<(), String> {
    match set
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '"' | ','))
    {
        Some(c) => Err(format!(
            "{} cannot separate an address extension; use characters such as \"+\" or \"+-\", or \"\" for none",
            crate::text::neutralize(&format!("{c:?}"))
        )),
        None => Ok(()),
    }
}

/// A `myorigin`: a domain name (`example.org`) or an address literal (`[192.0.2.1]`).
pub(super) fn check_origin(value: &str) -> Result<(), String> {
    let v = value.trim().trim_end_matches('.');
    let literal = v.starts_with('[') && v.ends_with(']');
    let ok = !v.is_empty()
        && (literal
            || v.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{}\" is not a domain such as example.org",
            crate::text::neutralize(value)
        ))
    }
}

/// A checked `myorigin` as addresses carry it: trimmed, without a trailing dot,
/// lower case.
pub(super) fn origin_key(value: &str) -> String {
    value.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// An admin address: `local@domain`, no spaces, brackets or line breaks.
fn check_mailbox(address: &str) -> Result<(), String> {
    let a = address.trim();
    match a.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !a.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || "<>,;\"".contains(c)
                }) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "\"{address}\" is not an address such as postmaster@example.org"
        )),
    }
}
