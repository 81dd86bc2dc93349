// SPDX-License-Identifier: GPL-3.0-or-later
//! Second stage of loading: checks the meaning of every value and builds [`Config`].
//! All problems are collected, each with the dotted key it belongs to.
//!
//! One file per part of the configuration; [`validate`] calls them in a fixed order,
//! which is the order of the problems a file has on the same line or on no line
//! (defaults): `parse` sorts by line only, and stably.

mod directory;
mod fleet_store;
mod ldap;
mod limits;
mod lists;
mod milter;
mod notices;
mod notify;
mod postfix;
mod review;
mod state;

pub(super) use postfix::{check_delimiter, check_origin, origin_key};

use super::raw::RawConfig;
use super::{Config, QuarantineSettings};
use crate::policy::{AddressGlobs, Policy};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

// Upper bounds of durations: long enough for any sane setting, short enough that
// adding one to a clock reading or a Redis expiry can never overflow.
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration for a message: whole days as `7d`, anything else as humantime writes it.
fn duration_text(d: Duration) -> String {
    match d.as_secs() {
        s if s >= DAY.as_secs() && s % DAY.as_secs() == 0 && d.subsec_nanos() == 0 => {
            format!("{}d", s / DAY.as_secs())
        }
        _ => humantime::format_duration(d).to_string(),
    }
}

type Problems = Vec<(String, String)>;

/// A duration key of the main sections: above 0 and at most `max` (problems give back
/// `max` or zero, so validation goes on).
fn duration(
    key: &str,
    value: &str,
    max: Duration,
    report: &mut impl FnMut(&str, String),
) -> Duration {
    match humantime::parse_duration(value.trim()) {
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
    }
}

/// Address patterns of a list key (`key[i]` names a bad one).
fn globs(key: &str, patterns: &[String], report: &mut impl FnMut(&str, String)) -> AddressGlobs {
    AddressGlobs::new(patterns).unwrap_or_else(|(i, e)| {
        report(&format!("{key}[{i}]"), format!("invalid pattern: {e}"));
        AddressGlobs::default()
    })
}

/// A password file must exist, hold something and not be readable by others.
fn check_secret_file(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "\"{}\" is readable by every user; chmod 600 (or 640 with a group) it",
            path.display()
        ));
    }
    super::ldap::read_secret(path).map(|_| ())
}

pub(super) fn validate(mut raw: RawConfig, file: &Path) -> Result<Config, Problems> {
    let mut problems = Problems::new();
    let mut report = |key: &str, msg: String| problems.push((key.to_owned(), msg));
    let report = &mut report;

    // The durations of every section are read first, right after the other [milter]
    // keys, as they always were: that is their place in the order of problems.
    let milter = milter::check(&raw.milter, report);
    let review_within = duration(
        "quarantine.review_within",
        &raw.quarantine.review_within,
        YEAR,
        report,
    );
    let expire_after = duration(
        "quarantine.expire_after",
        &raw.quarantine.expire_after,
        YEAR,
        report,
    );
    let confirm_within = duration(
        "quarantine.confirm_within",
        &raw.quarantine.confirm_within,
        WEEK,
        report,
    );
    let confirm_remember = match humantime::parse_duration(raw.quarantine.confirm_remember.trim()) {
        Ok(d) if d.is_zero() => d,
        _ => duration(
            "quarantine.confirm_remember",
            &raw.quarantine.confirm_remember,
            YEAR,
            report,
        ),
    };
    let notify_times = notify::durations(&raw.notify, report);
    let storm_times = limits::storm_durations(&raw.storm, report);
    let state_timeout = duration("state.timeout", &raw.state.timeout, HOUR, report);
    let review_times = review::durations(&raw.review, report);
    milter::check_logging(&raw.logging, report);

    let audience = limits::audience(&raw, report);
    let base = file.parent().unwrap_or(Path::new("/"));
    let directories = directory::sources(&mut raw.directory, base, report);
    let (lists, restricted_lists) = lists::lists(&raw.list, report);
    let rules = limits::rules(&raw, restricted_lists, report);
    quarantine(&raw, review_within, expire_after, report);
    postfix::check(&raw.postfix, report);
    let notify = notify::check(&raw.notify, notify_times, report);
    limits::check_internal(&raw, &audience, report);
    limits::replies(&raw, report);
    limits::storm_and_rate(&raw, report);
    let (state, admin_socket) = state::check(&raw, state_timeout, base, report);
    let quarantine_store = fleet_store::check(&raw, base, report);
    let review = review::check(&raw.review, review_times, base, report);
    let metrics = review::metrics(&raw.metrics, base, report);
    let notices = notices::check(&raw.notices, report);
    confirm_needs(&raw, &notices, report);

    if !problems.is_empty() {
        return Err(problems);
    }
    let storm = limits::storm_policy(&raw.storm, storm_times);
    let rate = limits::rate_policy(&raw.rate);
    let breaker = limits::breaker_policy(&raw.breaker);
    Ok(Config {
        file: file.to_owned(),
        listen: milter
            .listen
            .expect("listen is set when there is no problem"),
        socket_mode: milter.socket_mode,
        max_connections: raw.milter.max_connections,
        threads: raw.milter.threads,
        connection_timeout: milter.connection_timeout,
        shutdown_timeout: milter.shutdown_timeout,
        max_header_bytes: raw.milter.max_header_bytes,
        policy: Policy {
            mode: raw.milter.mode,
            internal: audience.internal,
            envelope: audience.envelope,
            external: audience.external,
            audience: audience.audience,
            restricted: rules.restricted,
            hidden: rules.hidden,
            drift_action: raw.drift.action,
            on_unknown: raw.expansion.on_unknown,
            drift_monitor: raw.drift.monitor,
            scopes: rules.scopes,
            exempt: audience.exempt,
            storm,
            rate,
            breaker,
            quiet_rules: quiet_rules(&raw),
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
        quarantine_store,
        quarantine: QuarantineSettings {
            review_within,
            expire_after,
            on_expiry: raw.quarantine.on_expiry,
            confirm_within,
            confirm_remember,
        },
        postfix: postfix::settings(&raw.postfix),
        notify,
        replies: limits::reply_texts(&raw.reply),
        review,
        metrics,
        notices,
        raw,
    })
}

/// `action = "confirm"` asks the sender on the review desk, through the links of the
/// confirm notice: it needs the desk (`[review] listen` and `public_url`) and a notice
/// that carries both links; else nobody could ever confirm, and every such message
/// would be discarded after `confirm_within`.
fn confirm_needs(
    raw: &RawConfig,
    notices: &crate::config::notices::NoticeTemplates,
    report: &mut impl FnMut(&str, String),
) {
    use crate::config::notices::NoticeKind;
    use crate::policy::Action;
    for (key, action) in [
        ("hidden.action", raw.hidden.action),
        ("restricted.action", raw.restricted.action),
    ] {
        if action != Action::Confirm {
            continue;
        }
        if raw.review.listen.trim().is_empty() || raw.review.public_url.trim().is_empty() {
            report(
                key,
                "\"confirm\" needs the review desk: senders confirm there through signed \
                 links, so set [review] listen and public_url (or use \"quarantine\")"
                    .into(),
            );
        }
        let body = &notices.get(NoticeKind::Confirm).body;
        for link in ["{link_send}", "{link_withdraw}"] {
            if !body.contains(link) {
                report(
                    key,
                    format!(
                        "\"confirm\" needs {link} in [notices.confirm] body: without it the \
                         sender cannot answer"
                    ),
                );
            }
        }
    }
}

/// The rules whose table says `notify_sender = false`.
fn quiet_rules(raw: &RawConfig) -> Vec<&'static str> {
    [
        ("limits.envelope", raw.limits.envelope.notify_sender),
        ("limits.external", raw.limits.external.notify_sender),
        ("limits.audience", raw.limits.audience.notify_sender),
        ("hidden", raw.hidden.notify_sender),
        ("restricted", raw.restricted.notify_sender),
        ("drift", raw.drift.notify_sender),
        ("breaker", raw.breaker.notify_sender),
        ("rate", raw.rate.notify_sender),
    ]
    .into_iter()
    .filter(|(_, on)| *on == Some(false))
    .map(|(rule, _)| rule)
    .collect()
}

/// `[quarantine]`: where held messages are recorded and how long they wait.
fn quarantine(
    raw: &RawConfig,
    review_within: Duration,
    expire_after: Duration,
    report: &mut impl FnMut(&str, String),
) {
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
}
