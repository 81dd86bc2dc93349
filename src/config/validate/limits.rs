// SPDX-License-Identifier: GPL-3.0-or-later
//! The policy's sections: `[domains]`, `[exempt]`, `[limits.*]`, the rules
//! (`[restricted]`, `[hidden]`, `[drift]`, `[expansion]`, `[[scope]]`, `[storm]`,
//! `[rate]`, `[breaker]`) and their `[reply]` texts.

use super::postfix::{check_origin, origin_key};
use super::{WEEK, duration, globs};
use crate::config::Replies;
use crate::config::raw::{RawBreaker, RawConfig, RawLevels, RawRate, RawReply, RawStorm};
use crate::config::reply::{STORM_PLACEHOLDERS, check_template, check_template_with};
use crate::policy::{
    Action, AddressGlobs, BreakerPolicy, DomainSet, Hidden, Levels, RatePolicy, Restricted, Scope,
    StormPolicy, TrustedSenders,
};
use std::collections::HashMap;
use std::time::Duration;

/// What a message's audience is measured against.
pub(super) struct Audience {
    /// `[domains] internal`, with `myorigin` when the file sets it.
    pub internal: DomainSet,
    /// `[exempt]`.
    pub exempt: TrustedSenders,
    /// `[limits.envelope]`.
    pub envelope: Levels,
    /// `[limits.external]`.
    pub external: Levels,
    /// `[limits.audience]`.
    pub audience: Levels,
}

/// Checks `[domains]`, `[exempt]` and `[limits.*]`.
pub(super) fn audience(raw: &RawConfig, report: &mut impl FnMut(&str, String)) -> Audience {
    let mut internal = DomainSet::new(&raw.domains.internal).unwrap_or_else(|(i, e)| {
        report(&format!("domains.internal[{i}]"), e.to_string());
        DomainSet::default()
    });
    if let Some(origin) = &raw.postfix.myorigin
        && check_origin(origin).is_ok()
    {
        internal.add_exact(&origin_key(origin));
    }
    let exempt = TrustedSenders {
        logins: globs("exempt.senders", &raw.exempt.senders, report),
        envelope: globs(
            "exempt.envelope_senders",
            &raw.exempt.envelope_senders,
            report,
        ),
    };
    Audience {
        internal,
        exempt,
        envelope: levels("limits.envelope", &raw.limits.envelope, report),
        external: levels("limits.external", &raw.limits.external, report),
        audience: levels("limits.audience", &raw.limits.audience, report),
    }
}

/// `[domains] internal` may only be empty when nothing counts external recipients.
pub(super) fn check_internal(
    raw: &RawConfig,
    audience: &Audience,
    report: &mut impl FnMut(&str, String),
) {
    let external = &audience.external;
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

/// Why `confirm` is refused for a rule other than `[hidden]` and `[restricted]`.
const NO_CONFIRM: &str = "\"confirm\" is only for [hidden] and [restricted], where the only \
     question is whether the sender meant it: use quarantine, tempfail, reject or tag";

/// The checked rules that are built from more than one key.
pub(super) struct Rules {
    /// `[restricted]`.
    pub restricted: Restricted,
    /// `[hidden]`.
    pub hidden: Hidden,
    /// `[[scope]]`.
    pub scopes: Vec<Scope>,
}

/// Checks `[restricted]`, `[hidden]`, `[drift]`, `[expansion]` and `[[scope]]`.
/// `lists` are the restricted `[[list]]`s with the senders each allows.
pub(super) fn rules(
    raw: &RawConfig,
    lists: HashMap<String, TrustedSenders>,
    report: &mut impl FnMut(&str, String),
) -> Rules {
    let mut check_action = |key: &str, action: Action, may_confirm: bool| {
        if action == Action::Accept {
            report(
                key,
                "\"accept\" is not an action for a rule: use tag, quarantine, tempfail or reject"
                    .into(),
            );
        }
        if action == Action::Confirm && !may_confirm {
            report(key, NO_CONFIRM.into());
        }
    };
    check_action("restricted.action", raw.restricted.action, true);
    check_action("hidden.action", raw.hidden.action, true);
    check_action("drift.action", raw.drift.action, false);
    for (i, sc) in raw.scope.iter().enumerate() {
        check_action(&format!("scope[{i}].action"), sc.action, false);
    }
    let restricted_senders = TrustedSenders {
        logins: globs(
            "restricted.allowed_senders",
            &raw.restricted.allowed_senders,
            report,
        ),
        envelope: globs(
            "restricted.allowed_envelope_senders",
            &raw.restricted.allowed_envelope_senders,
            report,
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
    if raw.expansion.on_unknown == Action::Confirm {
        report("expansion.on_unknown", NO_CONFIRM.into());
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
    Rules {
        restricted: Restricted {
            min_audience: raw.restricted.min_audience,
            allowed_senders: restricted_senders,
            lists,
            action: raw.restricted.action,
            confirm_max_audience: raw.restricted.confirm_max_audience,
            monitor: raw.restricted.monitor,
        },
        hidden: Hidden {
            min_audience: raw.hidden.min_audience,
            ratio: raw.hidden.ratio,
            action: raw.hidden.action,
            confirm_max_audience: raw.hidden.confirm_max_audience,
            monitor: raw.hidden.monitor,
        },
        scopes,
    }
}

/// Checks the templates of `[reply]` and `[rate] reply`.
pub(super) fn replies(raw: &RawConfig, report: &mut impl FnMut(&str, String)) {
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
}

/// The reply texts of a checked `[reply]`.
pub(super) fn reply_texts(raw: &RawReply) -> Replies {
    Replies {
        contact: raw.contact.clone(),
        reject: raw.reject.clone(),
        tempfail: raw.tempfail.clone(),
    }
}

/// `[storm] window` and `block_for`, read with the other durations.
pub(super) struct StormTimes {
    window: Duration,
    block_for: Duration,
}

/// Reads the durations of `[storm]`.
pub(super) fn storm_durations(raw: &RawStorm, report: &mut impl FnMut(&str, String)) -> StormTimes {
    StormTimes {
        window: duration("storm.window", &raw.window, WEEK, report),
        block_for: duration("storm.block_for", &raw.block_for, 4 * WEEK, report),
    }
}

/// Checks the rest of `[storm]`, and `[rate] action`.
pub(super) fn storm_and_rate(raw: &RawConfig, report: &mut impl FnMut(&str, String)) {
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
    if storm.action == Action::Confirm {
        report("storm.action", NO_CONFIRM.into());
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
}

/// The storm rule of a checked `[storm]`.
pub(super) fn storm_policy(raw: &RawStorm, times: StormTimes) -> StormPolicy {
    StormPolicy {
        min_audience: raw.min_audience,
        min_messages: raw.min_messages,
        min_senders: raw.min_senders,
        window: times.window,
        block_for: times.block_for,
        action: raw.action,
        monitor: raw.monitor,
        reply: raw.reply.clone(),
    }
}

/// The rate rule of a checked `[rate]`.
pub(super) fn rate_policy(raw: &RawRate) -> RatePolicy {
    RatePolicy {
        recipients_per_hour: raw.recipients_per_hour,
        recipients_per_day: raw.recipients_per_day,
        external_per_hour: raw.external_per_hour,
        external_per_day: raw.external_per_day,
        action: raw.action,
        monitor: raw.monitor,
        reply: raw.reply.clone(),
    }
}

/// The breaker of a `[breaker]` (every value is valid).
pub(super) fn breaker_policy(raw: &RawBreaker) -> BreakerPolicy {
    BreakerPolicy {
        max_per_minute: raw.max_per_minute,
        min_audience: raw.min_audience,
        monitor: raw.monitor,
    }
}
