// SPDX-License-Identifier: GPL-3.0-or-later
//! The rules that need memory across messages: the reply-all storm breaker, sender rate
//! limits and the relay-wide breaker.
//!
//! They stay pure: [`state_plan`] says what a message asks of the shared state (which
//! thread to count it in, which budgets to charge, how much it adds to the relay's
//! rate), an adapter (the state guard, outside the core) asks the state backend, and the answers
//! come back as [`StateFacts`] for [`super::evaluate`] to turn into reasons.

use super::facts::{AudienceFacts, ConfirmedList, MessageFacts};
use super::rules::authorized_audience;
use super::sender::identity;
use super::thread::{is_reply, thread_key};
use super::verdict::{Action, OwnReply, Reason};
use super::{Policy, fmt_count};
use crate::text::{self, MAX_SUBJECT_CHARS};
use std::time::Duration;

/// `[storm]`: the reply-all storm breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StormPolicy {
    /// Replies count from this audience on; 0 = off.
    pub min_audience: u64,
    /// Counted messages in one thread within `window` that trip a storm ...
    pub min_messages: u64,
    /// ... from at least this many distinct senders.
    pub min_senders: u64,
    /// The window.
    pub window: Duration,
    /// How long a storm stops further replies.
    pub block_for: Duration,
    /// What happens to a reply during a storm.
    pub action: Action,
    /// Only tag.
    pub monitor: bool,
    /// SMTP reply text: `{subject}`, `{list}`, `{audience}`, `{contact}`, `{queue_id}`.
    pub reply: String,
}

impl Default for StormPolicy {
    fn default() -> Self {
        StormPolicy {
            min_audience: 0,
            min_messages: 3,
            min_senders: 2,
            window: Duration::from_secs(600),
            block_for: Duration::from_secs(6 * 3600),
            action: Action::Reject,
            monitor: false,
            reply: String::new(),
        }
    }
}

/// `[rate]`: recipients per sender, counted on the audience.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatePolicy {
    /// Recipients per rolling hour; 0 = off.
    pub recipients_per_hour: u64,
    /// Recipients per rolling day; 0 = off.
    pub recipients_per_day: u64,
    /// External recipients per rolling hour; 0 = off.
    pub external_per_hour: u64,
    /// External recipients per rolling day; 0 = off.
    pub external_per_day: u64,
    /// `tempfail` or `quarantine`.
    pub action: Action,
    /// Only tag.
    pub monitor: bool,
    /// SMTP reply text: `{reason}`, `{contact}`, `{queue_id}`.
    pub reply: String,
}

impl Default for RatePolicy {
    fn default() -> Self {
        RatePolicy {
            recipients_per_hour: 0,
            recipients_per_day: 0,
            external_per_hour: 0,
            external_per_day: 0,
            action: Action::Tempfail,
            monitor: false,
            reply: String::new(),
        }
    }
}

/// `[breaker]`: the relay-wide breaker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Recipients per minute leaving the relay (audience-counted) that trip it; 0 = off.
    pub max_per_minute: u64,
    /// While tripped, messages from this audience on are held.
    pub min_audience: u64,
    /// Only tag.
    pub monitor: bool,
}

/// One rate budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Budget {
    /// `recipients_per_hour`.
    RecipientsPerHour,
    /// `recipients_per_day`.
    RecipientsPerDay,
    /// `external_per_hour`.
    ExternalPerHour,
    /// `external_per_day`.
    ExternalPerDay,
}

impl Budget {
    /// The config key.
    pub fn key(self) -> &'static str {
        match self {
            Budget::RecipientsPerHour => "recipients_per_hour",
            Budget::RecipientsPerDay => "recipients_per_day",
            Budget::ExternalPerHour => "external_per_hour",
            Budget::ExternalPerDay => "external_per_day",
        }
    }

    /// The rolling period.
    pub fn period(self) -> Duration {
        match self {
            Budget::RecipientsPerHour | Budget::ExternalPerHour => Duration::from_secs(3600),
            Budget::RecipientsPerDay | Budget::ExternalPerDay => Duration::from_secs(86_400),
        }
    }

    fn words(self) -> (&'static str, &'static str) {
        match self {
            Budget::RecipientsPerHour => ("recipients", "hour"),
            Budget::RecipientsPerDay => ("recipients", "day"),
            Budget::ExternalPerHour => ("external recipients", "hour"),
            Budget::ExternalPerDay => ("external recipients", "day"),
        }
    }
}

/// A message's charge against one budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The state key: budget and sender.
    pub key: String,
    /// The sender charged: its [`Identity::key`](super::Identity::key), as in `key`.
    pub sender: String,
    /// Which budget.
    pub budget: Budget,
    /// Recipients charged.
    pub cost: u64,
    /// The budget per period.
    pub limit: u64,
}

/// A message counted in a thread for the storm breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadAsk {
    /// The thread key.
    pub thread: String,
    /// Who sent it (SASL login, else envelope sender).
    pub sender: String,
    /// Its subject, for the storm record, capped at [`MAX_SUBJECT_CHARS`].
    pub subject: String,
    /// Its largest list, or "a large audience".
    pub list: String,
    /// Its audience.
    pub audience: u64,
}

/// What a message asks of the shared state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatePlan {
    /// Count it in its thread (a reply to a large audience, storm breaker on).
    pub thread: Option<ThreadAsk>,
    /// Charge these budgets.
    pub charges: Vec<Charge>,
    /// Recipients it adds to the relay's rate when it leaves (breaker on).
    pub relay_recipients: Option<u64>,
    /// Check the breaker for it (audience >= `[breaker] min_audience`).
    pub breaker_applies: bool,
}

impl StatePlan {
    /// True when nothing is asked.
    pub fn is_empty(&self) -> bool {
        self.thread.is_none() && self.charges.is_empty() && self.relay_recipients.is_none()
    }
}

/// The storm on a message's thread, as the state answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StormFact {
    /// Subject of the message that tripped it.
    pub subject: String,
    /// Its list.
    pub list: String,
    /// Its audience.
    pub audience: u64,
    /// Messages within the window when it tripped.
    pub messages: u64,
    /// Distinct senders then.
    pub senders: u64,
    /// When it ends (seconds since the epoch).
    pub until: u64,
    /// True when a storm was already in progress: this message is stopped. False when
    /// this message tripped it (and passes).
    pub blocked: bool,
}

/// A budget the message does not fit in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateFact {
    /// Which budget.
    pub budget: Budget,
    /// Who.
    pub sender: String,
    /// The limit per period.
    pub limit: u64,
    /// What the message would charge.
    pub cost: u64,
    /// Already used in the rolling period.
    pub used: u64,
    /// When it would fit (seconds since the epoch); `None` when it never can, being
    /// larger than the whole budget.
    pub retry_at: Option<u64>,
}

/// The relay-wide rate when the breaker is tripped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerFact {
    /// Recipients that left in the last minute.
    pub per_minute: u64,
}

/// The emergency brake an admin pulled: every message whose real audience is at least
/// `min_audience` is held, whatever else the policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrakeFact {
    /// The smallest audience it holds.
    pub min_audience: u64,
}

/// What the shared state said about a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateFacts {
    /// The storm on its thread, if one.
    pub storm: Option<StormFact>,
    /// Budgets it does not fit in.
    pub rate: Vec<RateFact>,
    /// The breaker, if tripped and the message is large enough to be held by it.
    pub breaker: Option<BreakerFact>,
    /// The emergency brake, when it is on.
    pub brake: Option<BrakeFact>,
    /// The lists this sender confirmed lately (`confirm`: "send it to all of them"):
    /// asked only of a message whose verdict is `confirm` ([`super::confirm_key`]).
    pub confirmed: Vec<ConfirmedList>,
}

/// What `facts` asks of the shared state under `policy`. Exempt senders and the copies
/// made for a release to chosen recipients ask nothing.
pub fn state_plan(policy: &Policy, facts: &MessageFacts) -> StatePlan {
    if facts.released.is_some() || policy.exempt.grants(facts).is_some() {
        return StatePlan::default();
    }
    let counts = super::count(policy, facts);
    let audience = counts.audience as u64;
    let sender = identity(facts);
    let who = super::address::fold_case(sender.name());
    let sender_key = sender.key();
    let mut plan = StatePlan::default();

    let storm = &policy.storm;
    if storm.min_audience > 0 && audience >= storm.min_audience && is_reply(facts) {
        let list = facts
            .audience
            .as_ref()
            .and_then(|a| a.lists.first())
            .map(|l| l.address.to_string())
            .unwrap_or_else(|| "a large audience".to_owned());
        plan.thread = Some(ThreadAsk {
            thread: thread_key(facts),
            sender: who.clone(),
            subject: text::cap(
                facts.headers.subject.as_deref().unwrap_or_default(),
                MAX_SUBJECT_CHARS,
            )
            .into_owned(),
            list,
            audience,
        });
    }

    let lists = facts
        .audience
        .as_ref()
        .map(|a| a.lists.as_slice())
        .unwrap_or_default();
    let charged = audience.saturating_sub(authorized_audience(&policy.restricted, facts, lists));
    let external = counts.external as u64;
    let rate = &policy.rate;
    for (budget, limit, cost) in [
        (Budget::RecipientsPerHour, rate.recipients_per_hour, charged),
        (Budget::RecipientsPerDay, rate.recipients_per_day, charged),
        (Budget::ExternalPerHour, rate.external_per_hour, external),
        (Budget::ExternalPerDay, rate.external_per_day, external),
    ] {
        if limit > 0 && cost > 0 {
            plan.charges.push(Charge {
                key: format!("rate:{}:{sender_key}", budget.key()),
                sender: sender_key.clone(),
                budget,
                cost,
                limit,
            });
        }
    }

    if policy.breaker.max_per_minute > 0 {
        plan.relay_recipients = Some(audience);
        plan.breaker_applies = audience >= policy.breaker.min_audience;
    }
    plan
}

/// True when a thread's counts within the window trip a storm.
pub fn storm_trips(storm: &StormPolicy, messages: u64, senders: u64) -> bool {
    messages >= storm.min_messages && senders >= storm.min_senders
}

/// `HH:MM UTC` of a time in seconds since the epoch, for reply texts.
/// A time no date can write (a corrupt stored value) is given as `@SECS`.
fn clock_time(secs: u64) -> String {
    let s = crate::text::utc_seconds(secs);
    match s.get(11..16) {
        Some(hh_mm) if !s.starts_with('@') => format!("{hh_mm} UTC"),
        _ => s,
    }
}

/// `[storm]`: a reply while a storm is in progress on its thread. The subject and the
/// list go into the reason and the reply neutralised, the subject capped at
/// [`MAX_SUBJECT_CHARS`]; the reply template is rendered once, by the milter.
pub fn storm(rule: &StormPolicy, state: &StateFacts) -> Option<(Reason, bool)> {
    let s = state.storm.as_ref().filter(|s| s.blocked)?;
    let audience = fmt_count(s.audience as usize);
    let subject = text::neutralize_capped(&s.subject, MAX_SUBJECT_CHARS);
    let list = text::neutralize(&s.list);
    let message = format!(
        "reply-all storm on \"{subject}\" to {list} ({audience} recipients): {} messages from {} senders within {}; replies stopped until {}",
        s.messages,
        s.senders,
        humantime::format_duration(rule.window),
        clock_time(s.until)
    );
    let reply = (!rule.reply.is_empty()).then(|| OwnReply {
        template: rule.reply.clone(),
        values: vec![
            ("subject", subject),
            ("list", list.into_owned()),
            ("audience", audience),
        ],
    });
    let reason = Reason {
        rule: "storm",
        action: rule.action,
        message,
        monitor: false,
        reply,
    };
    Some((reason, rule.monitor))
}

/// `[rate]`: budgets the message does not fit in.
pub fn rate(rule: &RatePolicy, state: &StateFacts) -> Vec<(Reason, bool)> {
    state
        .rate
        .iter()
        .map(|r| {
            let (what, per) = r.budget.words();
            let (action, message) = match r.retry_at {
                Some(at) => (
                    rule.action,
                    format!(
                        "{}: {} more {what} would exceed the limit of {} per {per} ({} used); retry after {}",
                        r.sender,
                        fmt_count(r.cost as usize),
                        fmt_count(r.limit as usize),
                        fmt_count(r.used as usize),
                        clock_time(at)
                    ),
                ),
                None => (
                    Action::Quarantine,
                    format!(
                        "{}: {} {what} in one message exceed the limit of {} per {per} on their own; held for an admin",
                        r.sender,
                        fmt_count(r.cost as usize),
                        fmt_count(r.limit as usize)
                    ),
                ),
            };
            let reason = Reason {
                rule: "rate",
                action,
                message,
                monitor: false,
                reply: (!rule.reply.is_empty()).then(|| OwnReply {
                    template: rule.reply.clone(),
                    values: Vec::new(),
                }),
            };
            (reason, rule.monitor)
        })
        .collect()
}

/// The emergency brake is on and the message's real audience may reach its level.
/// The brake is an admin's explicit act during an incident: neither monitor mode nor
/// an exemption softens it (see [`super::evaluate`]).
///
/// It holds every message it cannot show to stay below its level. `audience` is the
/// counted audience; `facts` says how sure that count is:
/// - counted exactly and at least `min_audience`: held;
/// - a lower bound ("at least N": nesting deeper than `[expansion] max_depth`, or the
///   audience cap reached): held when the bound reaches the level, and also below it,
///   since the real audience is not known;
/// - members that could not be counted (a dangling member, a dynamic list whose search
///   failed), or a directory source that cannot count now: held whatever the count. An
///   unknown real audience during an incident is exactly the risk the brake is for (a
///   broken dynamic list counts as one uncounted member and may reach 840,000).
///
/// Without a directory (`facts` is `None`) the envelope recipients are the audience,
/// counted exactly.
pub fn brake(state: &StateFacts, audience: u64, facts: Option<&AudienceFacts>) -> Option<Reason> {
    let b = state.brake?;
    let level = fmt_count(b.min_audience as usize);
    let count = fmt_count(audience as usize);
    let lower_bound = facts.is_some_and(|a| a.lower_bound);
    let uncounted = facts.map_or(0, |a| a.unknown);
    let unavailable = facts.is_some_and(|a| a.unavailable.is_some());
    let what = if audience >= b.min_audience {
        let at_least = if lower_bound { "at least " } else { "" };
        format!("audience {at_least}{count} >= {level}")
    } else if uncounted > 0 {
        format!(
            "audience not fully known ({count} counted, {} uncounted) while it holds {level}+",
            if uncounted == 1 {
                "1 member".to_owned()
            } else {
                format!("{} members", fmt_count(uncounted as usize))
            }
        )
    } else if unavailable {
        format!("audience cannot be counted now ({count} counted) while it holds {level}+")
    } else if lower_bound {
        format!("audience only known as at least {count} while it holds {level}+")
    } else {
        return None;
    };
    Some(Reason {
        rule: "brake",
        action: Action::Quarantine,
        message: format!("emergency brake: {what}; held until an admin reviews it"),
        monitor: false,
        reply: None,
    })
}

/// `[breaker]`: the relay-wide breaker is tripped and the message is large.
pub fn breaker(rule: &BreakerPolicy, state: &StateFacts) -> Option<(Reason, bool)> {
    let b = state.breaker?;
    let reason = Reason {
        rule: "breaker",
        action: Action::Quarantine,
        message: format!(
            "relay-wide breaker: {} recipients left in the last minute > {}; mail to {}+ recipients is held until the rate falls back",
            fmt_count(b.per_minute as usize),
            fmt_count(rule.max_per_minute as usize),
            fmt_count(rule.min_audience as usize)
        ),
        monitor: false,
        reply: None,
    };
    Some((reason, rule.monitor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AddressGlobs, ListFacts, TrustedSenders, evaluate};

    #[test]
    fn a_corrupt_stored_time_is_written_not_a_panic() {
        assert_eq!(clock_time(1_800_021_600), "14:00 UTC");
        assert_eq!(clock_time(u64::MAX), "@18446744073709551615");
        assert_eq!(clock_time(253_402_300_800), "@253402300800");
    }

    fn trusted(p: &str) -> TrustedSenders {
        let g = AddressGlobs::new([p]).unwrap();
        TrustedSenders {
            logins: g.clone(),
            envelope: g,
        }
    }
    use std::sync::Arc;

    fn policy() -> Policy {
        Policy {
            storm: StormPolicy {
                min_audience: 500,
                reply: "storm on {subject} to {list} ({audience})".into(),
                ..StormPolicy::default()
            },
            rate: RatePolicy {
                recipients_per_hour: 1000,
                external_per_day: 50,
                ..RatePolicy::default()
            },
            breaker: BreakerPolicy {
                max_per_minute: 100_000,
                min_audience: 500,
                monitor: false,
            },
            ..Policy::default()
        }
    }

    fn to_list(size: u64) -> MessageFacts {
        let mut f = MessageFacts {
            sender: "Ann@Corp.Example".into(),
            ..MessageFacts::default()
        };
        f.recipients.add("all@corp.example");
        f.headers.subject = Some("Re: hello".into());
        f.headers.in_reply_to = vec!["root@corp.example".into()];
        f.audience = Some(crate::policy::AudienceFacts {
            total: size,
            external: 0,
            lists: vec![ListFacts {
                address: "all@corp.example".into(),
                size,
                external: 0,
                nested_lists: 0,
                cycles: 0,
                domains: Arc::from(Vec::new()),
                drift_from: None,
                ..Default::default()
            }],
            non_mailbox: 0,
            lower_bound: false,
            ..Default::default()
        });
        f
    }

    #[test]
    fn a_large_reply_is_counted_in_its_thread_and_charged() {
        let plan = state_plan(&policy(), &to_list(5_000));
        let t = plan.thread.expect("counted");
        assert_eq!(t.thread, "mid:root@corp.example");
        assert_eq!(t.sender, "ann@corp.example");
        assert_eq!(t.list, "all@corp.example");
        assert_eq!(
            plan.charges.len(),
            1,
            "no external recipients, no external charge"
        );
        assert_eq!(
            plan.charges[0].key,
            "rate:recipients_per_hour:env:ann@corp.example"
        );
        assert_eq!(plan.charges[0].cost, 5_000);
        assert_eq!(plan.relay_recipients, Some(5_000));
        assert!(plan.breaker_applies);
    }

    #[test]
    fn small_mail_originals_exempt_and_allowed_senders_ask_less() {
        let p = policy();
        let small = state_plan(&p, &to_list(499));
        assert!(small.thread.is_none());
        assert!(!small.breaker_applies);
        let mut original = to_list(5_000);
        original.headers.in_reply_to.clear();
        original.headers.subject = Some("hello".into());
        assert!(
            state_plan(&p, &original).thread.is_none(),
            "only replies count"
        );
        let mut restricted = p.clone();
        restricted
            .restricted
            .lists
            .insert("all@corp.example".into(), trusted("ann@corp.example"));
        let allowed = state_plan(&restricted, &to_list(5_000));
        assert!(
            allowed.charges.is_empty(),
            "a list the sender may post to is not charged"
        );
        let mut exempt = p.clone();
        exempt.exempt = trusted("ann@*");
        assert!(state_plan(&exempt, &to_list(5_000)).is_empty());
        let mut sasl = to_list(5_000);
        sasl.sasl_login = Some("ANN".into());
        assert_eq!(
            state_plan(&p, &sasl).charges[0].key,
            "rate:recipients_per_hour:sasl:ann"
        );
    }

    /// The guard names the sender of a budget it refuses by `Charge::sender`, so that
    /// must be the identity key the budget is counted under, login or envelope.
    #[test]
    fn every_charge_names_the_identity_it_is_counted_under() {
        let p = policy();
        let envelope = state_plan(&p, &to_list(5_000));
        assert!(!envelope.charges.is_empty());
        for c in &envelope.charges {
            assert_eq!(c.sender, "env:ann@corp.example");
            assert!(c.key.ends_with(":env:ann@corp.example"), "{}", c.key);
        }
        let mut sasl = to_list(5_000);
        sasl.sasl_login = Some("ANN".into());
        for c in &state_plan(&p, &sasl).charges {
            assert_eq!(c.sender, "sasl:ann");
        }
    }

    #[test]
    fn storm_trips_on_messages_and_senders_together() {
        let s = StormPolicy::default();
        assert!(!storm_trips(&s, 2, 2));
        assert!(!storm_trips(&s, 5, 1));
        assert!(storm_trips(&s, 3, 2));
    }

    #[test]
    fn the_brake_holds_from_its_level_on_whatever_the_exemptions_and_mode_say() {
        let braked = |min_audience| StateFacts {
            brake: Some(BrakeFact { min_audience }),
            ..StateFacts::default()
        };
        let p = Policy::default();
        let f = to_list(500);
        assert_eq!(
            evaluate(&p, &f, &StateFacts::default()).verdict.action,
            Action::Accept
        );
        assert_eq!(
            evaluate(&p, &f, &braked(501)).verdict.action,
            Action::Accept
        );
        let v = evaluate(&p, &f, &braked(500)).verdict;
        assert_eq!(v.action, Action::Quarantine);
        assert_eq!(v.intended, Action::Quarantine);
        assert_eq!(v.reasons.len(), 1);
        assert_eq!(v.reasons[0].rule, "brake");
        assert_eq!(
            v.reasons[0].message,
            "emergency brake: audience 500 >= 500; held until an admin reviews it"
        );
        let mut exempt = p.clone();
        exempt.exempt = trusted("ann@*");
        let v = evaluate(&exempt, &f, &braked(100)).verdict;
        assert!(v.exempt_by.is_some());
        assert_eq!(
            v.action,
            Action::Quarantine,
            "an exemption does not lift the brake"
        );
        let mut monitor = p.clone();
        monitor.mode = crate::policy::Mode::Monitor;
        monitor.audience.quarantine = 100;
        let v = evaluate(&monitor, &f, &braked(100)).verdict;
        assert_eq!(
            v.action,
            Action::Quarantine,
            "monitor mode does not lift the brake"
        );
        assert!(
            !v.reasons
                .iter()
                .find(|r| r.rule == "brake")
                .unwrap()
                .monitor
        );
        let mut rejecting = p.clone();
        rejecting.audience.reject = 100;
        let v = evaluate(&rejecting, &f, &braked(100)).verdict;
        assert_eq!(
            v.action,
            Action::Reject,
            "the brake never softens a verdict"
        );
        assert_eq!(
            v.reasons[0].action,
            Action::Reject,
            "strongest reason first"
        );
        assert_eq!(v.reasons[1].rule, "brake");
    }

    /// The brake holds what it cannot show to stay below its level: a lower bound
    /// (at or below the level), uncounted members, a directory that cannot count; an
    /// exact count below the level passes, with or without a directory.
    #[test]
    fn the_brake_holds_an_audience_it_does_not_know() {
        let braked = StateFacts {
            brake: Some(BrakeFact { min_audience: 500 }),
            ..StateFacts::default()
        };
        let p = Policy::default();
        let brake_of = |f: &MessageFacts| {
            let v = evaluate(&p, f, &braked).verdict;
            let reason = v.reasons.iter().find(|r| r.rule == "brake").cloned();
            assert_eq!(
                v.action >= Action::Quarantine,
                reason.is_some(),
                "{reason:?}"
            );
            reason.map(|r| r.message)
        };
        let with = |size: u64, change: &dyn Fn(&mut AudienceFacts)| {
            let mut f = to_list(size);
            change(f.audience.as_mut().unwrap());
            f
        };
        let bound = |a: &mut AudienceFacts| a.lower_bound = true;
        assert_eq!(brake_of(&to_list(499)), None, "counted exactly, below");
        assert_eq!(
            brake_of(&with(500, &bound)).as_deref(),
            Some("emergency brake: audience at least 500 >= 500; held until an admin reviews it")
        );
        assert_eq!(
            brake_of(&with(499, &bound)).as_deref(),
            Some(
                "emergency brake: audience only known as at least 499 while it holds 500+; \
                 held until an admin reviews it"
            )
        );
        assert_eq!(
            brake_of(&with(3, &|a| a.unknown = 1)).as_deref(),
            Some(
                "emergency brake: audience not fully known (3 counted, 1 member uncounted) \
                 while it holds 500+; held until an admin reviews it"
            )
        );
        assert_eq!(
            brake_of(&with(3, &|a| a.unknown = 2)).as_deref(),
            Some(
                "emergency brake: audience not fully known (3 counted, 2 members uncounted) \
                 while it holds 500+; held until an admin reviews it"
            )
        );
        assert_eq!(
            brake_of(&with(600, &|a| a.unknown = 2)).as_deref(),
            Some("emergency brake: audience 600 >= 500; held until an admin reviews it"),
            "a count at the level says so"
        );
        let v = evaluate(
            &p,
            &with(3, &|a| a.unavailable = Some("corp: no snapshot".into())),
            &braked,
        )
        .verdict;
        assert_eq!(v.action, Action::Tempfail, "the directory's tempfail stays");
        assert_eq!(
            v.reasons
                .iter()
                .find(|r| r.rule == "brake")
                .map(|r| r.message.as_str()),
            Some(
                "emergency brake: audience cannot be counted now (3 counted) while it holds \
                 500+; held until an admin reviews it"
            )
        );
        let mut envelope_only = to_list(0);
        envelope_only.audience = None;
        assert_eq!(
            brake_of(&envelope_only),
            None,
            "no directory: the envelope, exactly"
        );
        // With all@corp.example: 500 envelope recipients.
        for n in 0..499 {
            envelope_only.recipients.add(&format!("u{n}@corp.example"));
        }
        assert_eq!(
            brake_of(&envelope_only).as_deref(),
            Some("emergency brake: audience 500 >= 500; held until an admin reviews it")
        );
        assert_eq!(
            evaluate(&p, &with(3, &|a| a.unknown = 1), &StateFacts::default())
                .verdict
                .reasons
                .iter()
                .filter(|r| r.rule == "brake")
                .count(),
            0,
            "no brake, no brake reason"
        );
    }

    #[test]
    fn stateful_reasons_carry_their_numbers_and_texts() {
        let p = policy();
        let f = to_list(5_000);
        let state = StateFacts {
            storm: Some(StormFact {
                subject: "Re: hello".into(),
                list: "all@corp.example".into(),
                audience: 5_000,
                messages: 3,
                senders: 2,
                until: 1_800_021_600,
                blocked: true,
            }),
            rate: vec![
                RateFact {
                    budget: Budget::RecipientsPerHour,
                    sender: "ann@corp.example".into(),
                    limit: 1000,
                    cost: 400,
                    used: 800,
                    retry_at: Some(1_800_000_720),
                },
                RateFact {
                    budget: Budget::ExternalPerDay,
                    sender: "ann@corp.example".into(),
                    limit: 50,
                    cost: 60,
                    used: 0,
                    retry_at: None,
                },
            ],
            breaker: Some(BreakerFact {
                per_minute: 250_000,
            }),
            brake: None,
            ..Default::default()
        };
        let v = evaluate(&p, &f, &state).verdict;
        assert_eq!(v.action, Action::Reject);
        assert_eq!(
            v.own_reply().map(|r| r.render(&[])).as_deref(),
            Some("storm on Re: hello to all@corp.example (5,000)")
        );
        let msgs: Vec<String> = v
            .reasons
            .iter()
            .map(|r| format!("{}: {}", r.rule, r.message))
            .collect();
        assert!(msgs.contains(&"storm: reply-all storm on \"Re: hello\" to all@corp.example (5,000 recipients): 3 messages from 2 senders within 10m; replies stopped until 14:00 UTC".to_owned()), "{msgs:?}");
        assert!(msgs.contains(&"rate: ann@corp.example: 400 more recipients would exceed the limit of 1,000 per hour (800 used); retry after 08:12 UTC".to_owned()), "{msgs:?}");
        assert!(msgs.contains(&"rate: ann@corp.example: 60 external recipients in one message exceed the limit of 50 per day on their own; held for an admin".to_owned()), "{msgs:?}");
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "breaker: relay-wide breaker: 250,000 recipients left in the last minute > 100,000"
            )),
            "{msgs:?}"
        );
        let rate_actions: Vec<Action> = v
            .reasons
            .iter()
            .filter(|r| r.rule == "rate")
            .map(|r| r.action)
            .collect();
        assert_eq!(rate_actions, [Action::Tempfail, Action::Quarantine]);
    }

    #[test]
    fn a_subject_full_of_placeholders_gives_a_small_reason_and_reply() {
        let subject = format!("Re: {}\u{1b}]0;x\u{7}", "{reason}".repeat(8_000));
        let mut f = to_list(5_000);
        f.headers.subject = Some(subject.clone());
        let plan = state_plan(&policy(), &f);
        assert_eq!(
            plan.thread.expect("counted").subject.chars().count(),
            MAX_SUBJECT_CHARS,
            "the subject kept for the storm record is capped"
        );
        let state = StateFacts {
            storm: Some(StormFact {
                subject,
                list: "all@corp.example".into(),
                audience: 5_000,
                messages: 3,
                senders: 2,
                until: 0,
                blocked: true,
            }),
            ..StateFacts::default()
        };
        let v = evaluate(&policy(), &f, &state).verdict;
        let summary = v.summary();
        assert!(summary.len() < 2048, "reason of {} bytes", summary.len());
        let reply = v.own_reply().expect("own reply").render(&[
            ("reason", &summary),
            ("contact", "x"),
            ("queue_id", "Q"),
        ]);
        assert!(reply.len() < 2048, "reply of {} bytes", reply.len());
        assert!(
            reply.starts_with("storm on Re: {reason}{reason}"),
            "placeholders in the subject stay text: {reply}"
        );
    }

    #[test]
    fn a_storm_this_message_tripped_does_not_stop_it() {
        let f = to_list(5_000);
        let state = StateFacts {
            storm: Some(StormFact {
                subject: "x".into(),
                list: "l".into(),
                audience: 1,
                messages: 3,
                senders: 2,
                until: 0,
                blocked: false,
            }),
            ..StateFacts::default()
        };
        assert_eq!(
            evaluate(&policy(), &f, &state).verdict.action,
            Action::Accept
        );
    }

    /// Breaker off, storm on: the plan still asks for the thread, so a storm is counted
    /// (a plan is empty only when none of its three parts asks anything).
    #[test]
    fn a_plan_with_only_a_thread_only_charges_or_only_the_relay_is_not_empty() {
        let storm_only = Policy {
            breaker: BreakerPolicy::default(),
            rate: RatePolicy::default(),
            ..policy()
        };
        let plan = state_plan(&storm_only, &to_list(5000));
        assert!(plan.thread.is_some() && plan.charges.is_empty());
        assert_eq!(plan.relay_recipients, None);
        assert!(!plan.is_empty(), "{plan:?}");

        let rate_only = Policy {
            storm: StormPolicy::default(),
            breaker: BreakerPolicy::default(),
            ..policy()
        };
        let plan = state_plan(&rate_only, &to_list(5000));
        assert!(plan.thread.is_none() && !plan.charges.is_empty());
        assert!(!plan.is_empty(), "{plan:?}");

        let breaker_only = Policy {
            storm: StormPolicy::default(),
            rate: RatePolicy::default(),
            ..policy()
        };
        let plan = state_plan(&breaker_only, &to_list(5000));
        assert_eq!(plan.relay_recipients, Some(5000));
        assert!(!plan.is_empty(), "{plan:?}");

        let none = Policy {
            storm: StormPolicy::default(),
            rate: RatePolicy::default(),
            breaker: BreakerPolicy::default(),
            ..policy()
        };
        assert!(state_plan(&none, &to_list(5000)).is_empty());
    }

    /// `min_audience = 0` switches the storm breaker off and `max_per_minute = 0` the
    /// relay breaker, even for a message whose audience is 0; 1 switches them on.
    #[test]
    fn zero_switches_the_storm_and_the_breaker_off() {
        let mut p = policy();
        p.storm.min_audience = 0;
        p.breaker.max_per_minute = 0;
        let empty = to_list(0);
        let plan = state_plan(&p, &empty);
        assert_eq!(plan.thread, None);
        assert_eq!(plan.relay_recipients, None);
        assert!(!plan.breaker_applies);

        p.storm.min_audience = 1;
        p.breaker.max_per_minute = 1;
        p.breaker.min_audience = 0;
        let plan = state_plan(&p, &to_list(1));
        assert!(plan.thread.is_some());
        assert_eq!(plan.relay_recipients, Some(1));
        assert!(plan.breaker_applies);
    }

    #[test]
    fn budgets_roll_over_an_hour_or_a_day() {
        assert_eq!(
            Budget::RecipientsPerHour.period(),
            Duration::from_secs(3600)
        );
        assert_eq!(Budget::ExternalPerHour.period(), Duration::from_secs(3600));
        assert_eq!(
            Budget::RecipientsPerDay.period(),
            Duration::from_secs(86_400)
        );
        assert_eq!(Budget::ExternalPerDay.period(), Duration::from_secs(86_400));
    }

    /// The rate rule keeps the site's own reply text for the SMTP answer.
    #[test]
    fn the_rate_rule_carries_its_reply_text() {
        let rule = RatePolicy {
            recipients_per_hour: 10,
            reply: "slow down: {reason}".into(),
            ..RatePolicy::default()
        };
        let state = StateFacts {
            rate: vec![RateFact {
                budget: Budget::RecipientsPerHour,
                sender: "ann".into(),
                limit: 10,
                cost: 5,
                used: 8,
                retry_at: Some(1_800_000_000),
            }],
            ..StateFacts::default()
        };
        let reasons = rate(&rule, &state);
        assert_eq!(reasons.len(), 1);
        let reply = reasons[0].0.reply.as_ref().expect("own reply");
        assert_eq!(reply.template, "slow down: {reason}");
        let without = rate(
            &RatePolicy {
                reply: String::new(),
                ..rule
            },
            &state,
        );
        assert_eq!(without[0].0.reply, None);
    }
}
