// SPDX-License-Identifier: GPL-3.0-or-later
//! The rules of the policy core. Each takes counts or facts and returns the reason it
//! fired, with the rule's own monitor flag, or nothing.

use super::address::{AddressGlobs, DomainSet};
use super::facts::{AudienceFacts, ConfirmedList, ListFacts, MessageFacts, ReleasedCopy};
use super::sender::{TrustedSenders, first_restriction, identity};
use super::verdict::{Action, Reason};
use super::{Counts, fmt_count};
use serde::Serialize;
use std::collections::HashMap;

/// Tag, quarantine and reject levels of one counting rule; 0 switches a level off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Levels {
    /// Add the verdict header at or above this count.
    pub tag: u64,
    /// Hold at or above this count.
    pub quarantine: u64,
    /// Refuse at or above this count.
    pub reject: u64,
    /// Only tag, whatever level is reached.
    pub monitor: bool,
}

impl Levels {
    /// The most severe level that `count` reaches, with that level's value.
    pub fn reached(&self, count: usize) -> Option<(Action, u64)> {
        let count = count as u64;
        [
            (Action::Reject, self.reject),
            (Action::Quarantine, self.quarantine),
            (Action::Tag, self.tag),
        ]
        .into_iter()
        .find(|&(_, level)| level > 0 && count >= level)
    }

    fn check(&self, rule: &'static str, count: usize, what: &str) -> Option<(Reason, bool)> {
        let (action, level) = self.reached(count)?;
        let reason = Reason {
            reply: None,
            rule,
            action,
            message: format!("{what} >= {action} level {}", fmt_count(level as usize)),
            monitor: false,
        };
        Some((reason, self.monitor))
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", fmt_count(n), if n == 1 { one } else { many })
}

/// `[restricted]`: lists only some senders may post to.
#[derive(Clone, Debug)]
pub struct Restricted {
    /// Lists whose audience is at least this are restricted even without
    /// `allowed_senders` of their own; 0 = only lists with `allowed_senders`.
    pub min_audience: u64,
    /// Senders allowed to post to every restricted list (`allowed_senders`: SASL
    /// logins; `allowed_envelope_senders`: trusted envelope senders).
    pub allowed_senders: TrustedSenders,
    /// Lists restricted by name (`[[list]] allowed_senders`,
    /// `allowed_envelope_senders`): who may send to each, by list address, case folded
    /// as the directory names its lists.
    pub lists: HashMap<String, TrustedSenders>,
    /// What happens to other senders' mail.
    pub action: Action,
    /// With `action = confirm`: lists larger than this are held for an admin instead.
    pub confirm_max_audience: u64,
    /// Only tag.
    pub monitor: bool,
}

impl Restricted {
    /// Who may send to the list at `address`, when a `[[list]]` restricts it by name.
    pub fn by_name(&self, address: &str) -> Option<&TrustedSenders> {
        self.lists.get(address)
    }
}

impl Default for Restricted {
    fn default() -> Self {
        Restricted {
            min_audience: 0,
            allowed_senders: TrustedSenders::default(),
            lists: HashMap::new(),
            action: Action::Quarantine,
            confirm_max_audience: DEFAULT_CONFIRM_MAX_AUDIENCE,
            monitor: false,
        }
    }
}

/// `[hidden]`: audience far larger than what the sender sees in To/Cc.
#[derive(Clone, Debug)]
pub struct Hidden {
    /// The rule applies from this audience on; 0 switches it off.
    pub min_audience: u64,
    /// ... and when the audience is at least this many times the visible count.
    pub ratio: f64,
    /// What happens then.
    pub action: Action,
    /// With `action = confirm`: a hidden audience larger than this is held for an admin
    /// instead.
    pub confirm_max_audience: u64,
    /// Only tag.
    pub monitor: bool,
}

/// `confirm_max_audience` when the configuration names none: above it, "did you mean
/// it" is no longer the sender's question alone.
pub const DEFAULT_CONFIRM_MAX_AUDIENCE: u64 = 5000;

/// What a rule whose action is `action` asks for an audience of `size`: `confirm` only
/// up to `max`, a hold for an admin above it.
fn confirm_up_to(action: Action, size: u64, max: u64) -> Action {
    if action == Action::Confirm && size > max {
        Action::Quarantine
    } else {
        action
    }
}

impl Default for Hidden {
    fn default() -> Self {
        Hidden {
            min_audience: 0,
            ratio: 10.0,
            action: Action::Quarantine,
            confirm_max_audience: DEFAULT_CONFIRM_MAX_AUDIENCE,
            monitor: false,
        }
    }
}

/// `[[scope]]`: how far a group of senders may reach through lists.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Senders this scope applies to, matched against the SASL login, and against the
    /// envelope sender only for mail without a login ([`first_restriction`]).
    pub senders: AddressGlobs,
    /// Domains their mail may reach through lists.
    pub may_reach: DomainSet,
    /// The `may_reach` patterns as written, for messages.
    pub may_reach_text: String,
    /// What happens to an expansion beyond it.
    pub action: Action,
    /// Only tag.
    pub monitor: bool,
}

/// Whether `facts`' sender may post to `list`: its own allowed senders, else the
/// global `[restricted]` ones.
fn allowed_on(rule: &Restricted, facts: &MessageFacts, list: &ListFacts) -> bool {
    rule.by_name(&list.address)
        .and_then(|t| t.grants(facts))
        .or_else(|| rule.allowed_senders.grants(facts))
        .is_some()
}

/// `[limits.envelope]`: distinct envelope recipients.
pub fn envelope(levels: &Levels, counts: &Counts) -> Option<(Reason, bool)> {
    let what = plural(counts.envelope, "envelope recipient", "envelope recipients");
    levels.check("limits.envelope", counts.envelope, &what)
}

/// `[limits.external]`: final mailboxes outside the internal domains.
pub fn external(levels: &Levels, counts: &Counts) -> Option<(Reason, bool)> {
    let what = plural(counts.external, "external recipient", "external recipients");
    levels.check("limits.external", counts.external, &what)
}

/// `[limits.audience]`: final mailboxes after list and alias expansion.
pub fn audience(levels: &Levels, counts: &Counts, lower_bound: bool) -> Option<(Reason, bool)> {
    let at_least = if lower_bound { "at least " } else { "" };
    let what = format!(
        "{at_least}{} after list expansion",
        plural(counts.audience, "recipient", "recipients")
    );
    levels.check("limits.audience", counts.audience, &what)
}

/// `[expansion] on_unknown`: part of the audience could not be counted (a dangling
/// member, an empty group, a dynamic list whose search failed), so the count above is
/// not the message's real reach.
pub fn unknown(action: Action, audience: &AudienceFacts) -> Option<(Reason, bool)> {
    if audience.unknown == 0 {
        return None;
    }
    let list = audience.lists.iter().find(|l| l.unknown > 0);
    let message = match list {
        Some(l) => format!(
            "audience not fully known: {} of {} cannot be counted{}",
            plural(audience.unknown as usize, "member", "members"),
            l.address,
            l.unknown_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        None => format!(
            "audience not fully known: {} cannot be counted",
            plural(audience.unknown as usize, "member", "members")
        ),
    };
    Some((
        Reason {
            reply: None,
            rule: "expansion.on_unknown",
            action,
            message,
            monitor: false,
        },
        false,
    ))
}

/// A directory source that cannot be used now (no snapshot yet, or too old with
/// `on_stale = "tempfail"`): the audience cannot be known, so the message waits.
pub fn unavailable(audience: &AudienceFacts) -> Option<(Reason, bool)> {
    let why = audience.unavailable.as_deref()?;
    Some((
        Reason {
            reply: None,
            rule: "directory.unavailable",
            action: Action::Tempfail,
            message: format!("lists cannot be counted now: {why}"),
            monitor: false,
        },
        false,
    ))
}

/// A copy made for a release to chosen recipients: held (never refused, which would
/// return it to the sender), for the worker to release, or for an admin when its request
/// is over.
pub fn released_copy(facts: &MessageFacts) -> Option<Reason> {
    let message = match facts.released.as_ref()? {
        ReleasedCopy::Accepted { request } => format!(
            "the copy made for release request {request}, held until the worker releases \
             it to the chosen recipients"
        ),
        ReleasedCopy::Late { why } => format!(
            "a copy made for a release to chosen recipients that is over ({why}): held for \
             an admin"
        ),
    };
    Some(Reason {
        reply: None,
        rule: "copy",
        action: Action::Quarantine,
        message,
        monitor: false,
    })
}

/// The mailboxes of lists the sender is explicitly allowed to post to (a list's own
/// `allowed_senders` or `[restricted] allowed_senders`): an announcement sent on
/// purpose, often by Bcc to prevent reply-all, is not a hidden expansion. An upper
/// bound, since lists may overlap.
pub fn authorized_audience(rule: &Restricted, facts: &MessageFacts, lists: &[ListFacts]) -> u64 {
    lists
        .iter()
        .filter(|list| allowed_on(rule, facts, list))
        .map(|list| list.size)
        .sum()
}

/// Of [`authorized_audience`], the lists that no To or Cc header names: the part of
/// the unseen audience the sender is allowed to reach by Bcc.
pub fn authorized_unseen(rule: &Restricted, facts: &MessageFacts, lists: &[ListFacts]) -> u64 {
    lists
        .iter()
        .filter(|list| !list.named && allowed_on(rule, facts, list))
        .map(|list| list.size)
        .sum()
}

/// `[hidden]`: the part of the audience that no header shows (reached through
/// recipients no To or Cc names: a Bcc'd list, an envelope-only address), less the
/// lists the sender may Bcc, is at least `min_audience` and at least `ratio` times the
/// number of addresses in To/Cc. A list named in To or Cc is visible with all its
/// members: each of them sees the list address. With `action = confirm`, the unseen
/// lists the sender confirmed lately (`confirmed`, their sizes) no longer count; a
/// message that passes only thanks to them gets an `accept` reason saying so.
pub fn hidden(
    rule: &Hidden,
    counts: &Counts,
    authorized: u64,
    confirmed: u64,
) -> Option<(Reason, bool)> {
    let unseen = (counts.unseen as u64).saturating_sub(authorized);
    let fires = |unseen: u64| {
        rule.min_audience > 0
            && unseen >= rule.min_audience
            && (unseen as f64) >= rule.ratio * counts.visible as f64
            && counts.audience > counts.visible
    };
    if !fires(unseen) {
        return None;
    }
    let action = confirm_up_to(rule.action, unseen, rule.confirm_max_audience);
    let described = format!(
        "visible {}, real audience {}, {} of them through addresses no To/Cc shows \
         (>= {}x visible and >= {})",
        fmt_count(counts.visible),
        fmt_count(counts.audience),
        fmt_count(unseen as usize),
        rule.ratio,
        fmt_count(rule.min_audience as usize)
    );
    let (action, message) = if action == Action::Confirm && !fires(unseen.saturating_sub(confirmed))
    {
        (
            Action::Accept,
            format!("{described}; the sender confirmed these lists lately"),
        )
    } else {
        (action, described)
    };
    let reason = Reason {
        reply: None,
        rule: "hidden",
        action,
        message,
        monitor: false,
    };
    Some((reason, rule.monitor))
}

/// The mailboxes of the lists no To or Cc header names and the sender is not allowed
/// to Bcc, when the sender confirmed every one of them lately (`confirmed`); else 0.
/// All or nothing: lists overlap, so subtracting some of them would let members of the
/// others through unasked.
pub fn confirmed_unseen(
    rule: &Restricted,
    facts: &MessageFacts,
    lists: &[ListFacts],
    confirmed: &[ConfirmedList],
) -> u64 {
    let mut unseen = lists
        .iter()
        .filter(|list| !list.named && !allowed_on(rule, facts, list))
        .peekable();
    if unseen.peek().is_none() {
        return 0;
    }
    let mut sum = 0;
    for list in unseen {
        if !confirmed.iter().any(|c| c.covers(list)) {
            return 0;
        }
        sum += list.size;
    }
    sum
}

/// `[restricted]`: a list with `allowed_senders`, or at least `min_audience` large, takes
/// mail only from its allowed senders and the global ones. With `action = confirm`, a
/// list the sender confirmed lately (`confirmed`) passes, with an `accept` reason.
pub fn restricted(
    rule: &Restricted,
    facts: &MessageFacts,
    lists: &[ListFacts],
    confirmed: &[ConfirmedList],
) -> Vec<(Reason, bool)> {
    let mut out = Vec::new();
    for list in lists {
        let by_size = rule.min_audience > 0 && list.size >= rule.min_audience;
        if rule.by_name(&list.address).is_none() && !by_size {
            continue;
        }
        if allowed_on(rule, facts, list) {
            continue;
        }
        let described = format!(
            "list {} ({}) is restricted and {} may not send to it",
            list.address,
            plural(list.size as usize, "recipient", "recipients"),
            identity(facts).name()
        );
        let action = confirm_up_to(rule.action, list.size, rule.confirm_max_audience);
        let (action, message) =
            if action == Action::Confirm && confirmed.iter().any(|c| c.covers(list)) {
                (
                    Action::Accept,
                    format!("{described} without confirming; the sender confirmed it lately"),
                )
            } else {
                (action, described)
            };
        out.push((
            Reason {
                reply: None,
                rule: "restricted",
                action,
                message,
                monitor: false,
            },
            rule.monitor,
        ));
    }
    out
}

/// `[drift]`: a list that grew past the drift limits since its size was last accepted.
pub fn drift(action: Action, monitor: bool, lists: &[ListFacts]) -> Vec<(Reason, bool)> {
    lists
        .iter()
        .filter_map(|list| {
            let from = list.drift_from?;
            Some((
                Reason {
                    reply: None,
                    rule: "drift",
                    action,
                    message: format!(
                        "list {} grew from {} to {} recipients since its size was last accepted \
                         (fanout-milter directory accept {})",
                        list.address,
                        fmt_count(from as usize),
                        fmt_count(list.size as usize),
                        list.address
                    ),
                    monitor: false,
                },
                monitor,
            ))
        })
        .collect()
}

/// `[[scope]]`: the first scope whose senders match decides how far lists may reach.
pub fn scope(scopes: &[Scope], facts: &MessageFacts, lists: &[ListFacts]) -> Vec<(Reason, bool)> {
    let Some(scope) = first_restriction(scopes, |s| &s.senders, facts) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for list in lists {
        let outside: u64 = list
            .domains
            .iter()
            .filter(|(d, _)| !scope.may_reach.contains(d))
            .map(|(_, n)| n)
            .sum();
        if outside == 0 {
            continue;
        }
        let share = 100.0 * outside as f64 / list.size.max(1) as f64;
        out.push((
            Reason {
                reply: None,
                rule: "scope",
                action: scope.action,
                message: format!(
                    "list {} reaches {} of {} mailboxes ({share:.1}%) outside {}",
                    list.address,
                    fmt_count(outside as usize),
                    fmt_count(list.size as usize),
                    scope.may_reach_text
                ),
                monitor: false,
            },
            scope.monitor,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reached_picks_the_highest_level() {
        let l = Levels {
            tag: 5,
            quarantine: 10,
            reject: 20,
            monitor: false,
        };
        assert_eq!(l.reached(4), None);
        assert_eq!(l.reached(5), Some((Action::Tag, 5)));
        assert_eq!(l.reached(10), Some((Action::Quarantine, 10)));
        assert_eq!(l.reached(19), Some((Action::Quarantine, 10)));
        assert_eq!(l.reached(20), Some((Action::Reject, 20)));
        assert_eq!(Levels::default().reached(usize::MAX), None);
    }

    #[test]
    fn singular_and_separators_in_messages() {
        let l = Levels {
            tag: 1,
            quarantine: 0,
            reject: 1000,
            monitor: true,
        };
        let counts = Counts {
            external: 1,
            envelope: 2500,
            ..Default::default()
        };
        let (r, monitor) = external(&l, &counts).unwrap();
        assert_eq!(r.message, "1 external recipient >= tag level 1");
        assert!(monitor);
        let (r, _) = envelope(&l, &counts).unwrap();
        assert_eq!(r.message, "2,500 envelope recipients >= reject level 1,000");
    }

    /// `unknown` names the first list that has uncounted members, with its reason,
    /// not the first list of the message.
    #[test]
    fn unknown_names_the_list_with_the_uncounted_members() {
        let list = |address: &str, unknown: u64, why: Option<&str>| ListFacts {
            address: address.into(),
            unknown,
            unknown_reason: why.map(str::to_owned),
            ..Default::default()
        };
        let audience = AudienceFacts {
            unknown: 3,
            lists: vec![
                list("big@corp.example", 0, None),
                list("dyn@corp.example", 3, Some("dynamic list failed")),
            ],
            ..Default::default()
        };
        let (reason, monitor) = unknown(Action::Quarantine, &audience).expect("fires");
        assert!(!monitor);
        assert_eq!(reason.rule, "expansion.on_unknown");
        assert_eq!(reason.action, Action::Quarantine);
        assert_eq!(
            reason.message,
            "audience not fully known: 3 members of dyn@corp.example cannot be counted (dynamic list failed)"
        );
        assert!(unknown(Action::Quarantine, &AudienceFacts::default()).is_none());
    }

    /// A source that cannot be used now tempfails the message, whatever else it is.
    #[test]
    fn an_unavailable_directory_tempfails() {
        let audience = AudienceFacts {
            unavailable: Some("corp: no snapshot yet".into()),
            ..Default::default()
        };
        let (reason, monitor) = unavailable(&audience).expect("fires");
        assert!(!monitor);
        assert_eq!(reason.rule, "directory.unavailable");
        assert_eq!(reason.action, Action::Tempfail);
        assert_eq!(
            reason.message,
            "lists cannot be counted now: corp: no snapshot yet"
        );
        assert!(unavailable(&AudienceFacts::default()).is_none());
    }
}
