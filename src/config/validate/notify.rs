// SPDX-License-Identifier: GPL-3.0-or-later
//! `[notify]`: who hears about held messages, and how.

use super::{HOUR, WEEK, duration};
use crate::config::NotifySettings;
use crate::config::raw::RawNotify;
use crate::config::secret::{SecretUrl, redact_url};
use std::time::Duration;

/// `interval` and `webhook_timeout`, read with the other durations.
pub(super) struct Times {
    interval: Duration,
    webhook_timeout: Duration,
    sender_interval: Duration,
}

/// Reads the durations of `[notify]`.
pub(super) fn durations(raw: &RawNotify, report: &mut impl FnMut(&str, String)) -> Times {
    Times {
        interval: duration("notify.interval", &raw.interval, WEEK, report),
        webhook_timeout: duration("notify.webhook_timeout", &raw.webhook_timeout, HOUR, report),
        sender_interval: duration("notify.sender_interval", &raw.sender_interval, WEEK, report),
    }
}

/// Checks the rest of `[notify]`.
pub(super) fn check(
    raw: &RawNotify,
    times: Times,
    report: &mut impl FnMut(&str, String),
) -> NotifySettings {
    for (i, admin) in raw.admins.iter().enumerate() {
        if let Err(e) = check_mailbox(admin) {
            report(&format!("notify.admins[{i}]"), e);
        }
    }
    let webhook = raw.webhook.expose().trim().to_owned();
    if !(webhook.is_empty() || webhook.starts_with("http://") || webhook.starts_with("https://")) {
        report(
            "notify.webhook",
            format!(
                "\"{}\" must be an http:// or https:// URL",
                redact_url(&webhook)
            ),
        );
    }
    if raw.from.trim().is_empty() || raw.from.contains(['<', '>', '\r', '\n', ' ']) {
        report(
            "notify.from",
            format!(
                "\"{}\" must be a plain address such as postmaster@example.org",
                raw.from
            ),
        );
    }
    let relay = match raw.relay.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => (
            host.trim_matches(['[', ']']).to_owned(),
            port.parse().unwrap_or(25),
        ),
        _ => {
            report(
                "notify.relay",
                format!("\"{}\" is not HOST:PORT such as 127.0.0.1:25", raw.relay),
            );
            (String::new(), 0)
        }
    };
    if raw.sender_notices_per_minute == 0 {
        report(
            "notify.sender_notices_per_minute",
            "must be at least 1: senders of held mail must hear of it".into(),
        );
    }
    NotifySettings {
        sender_interval: times.sender_interval,
        sender_notices_per_minute: raw.sender_notices_per_minute.max(1),
        admins: raw.admins.iter().map(|a| a.trim().to_owned()).collect(),
        webhook: (!webhook.is_empty()).then(|| SecretUrl::from(webhook)),
        interval: times.interval,
        webhook_timeout: times.webhook_timeout,
        from: raw.from.trim().to_owned(),
        relay,
    }
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
