// SPDX-License-Identifier: GPL-3.0-or-later
//! The pure policy core: message facts and configuration in, verdict out.
//!
//! Nothing in this module does I/O, reads a clock or touches the milter protocol, so
//! every rule is unit-tested with plain values and `explain` runs the very same code
//! offline.

pub mod address;
pub(crate) mod effect;
pub(crate) mod facts;
pub(crate) mod reply;
pub(crate) mod rules;
pub(crate) mod sender;
pub(crate) mod stateful;
pub(crate) mod thread;
pub(crate) mod verdict;

pub use address::{AddressGlobs, DomainSet};
pub use effect::{Effect, NO_QUEUE_ID, Reply, VERDICT_HEADER, effect};
pub use facts::{
    AudienceFacts, ConfirmedList, HeaderFacts, ListFacts, MessageFacts, RecipientSet, ReleasedCopy,
};
pub use reply::Replies;
pub use rules::{DEFAULT_CONFIRM_MAX_AUDIENCE, Hidden, Levels, Restricted, Scope};
pub use sender::{Identity, TrustedSenders, confirm_key, identity};
pub use stateful::{
    BrakeFact, BreakerPolicy, RatePolicy, StateFacts, StatePlan, StormPolicy, state_plan,
    storm_trips,
};
pub use thread::{is_reply, normalize_subject, thread_key};
pub use verdict::{Action, Reason, Verdict};

use serde::{Deserialize, Serialize};

/// Global enforcement mode (`[milter] mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Apply verdicts as decided.
    #[default]
    Enforce,
    /// Turn every quarantine, tempfail and reject into a tag.
    Monitor,
}

impl Mode {
    /// The configuration name: `enforce` or `monitor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// The validated rules the core applies.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Global enforcement mode.
    pub mode: Mode,
    /// `[domains] internal`.
    pub internal: DomainSet,
    /// `[limits.envelope]`: distinct envelope recipients.
    pub envelope: Levels,
    /// `[limits.external]`: envelope recipients outside the internal domains.
    pub external: Levels,
    /// `[limits.audience]`: final mailboxes after list and alias expansion.
    pub audience: Levels,
    /// `[restricted]`: who may send to large or named lists.
    pub restricted: Restricted,
    /// `[hidden]`: audience far larger than the visible To/Cc.
    pub hidden: Hidden,
    /// `[drift] action`: what happens to mail to a list whose size jumped.
    pub drift_action: Action,
    /// `[drift] monitor`.
    pub drift_monitor: bool,
    /// `[expansion] on_unknown`: what happens to mail part of whose audience cannot be
    /// counted.
    pub on_unknown: Action,
    /// `[[scope]]`: how far senders may reach through lists.
    pub scopes: Vec<Scope>,
    /// `[exempt] senders` (SASL logins) and `envelope_senders` (trusted envelope
    /// senders of mail without a login) no rule applies to.
    pub exempt: TrustedSenders,
    /// `[storm]`: reply-all storm breaker.
    pub storm: StormPolicy,
    /// `[rate]`: per-sender recipient budgets.
    pub rate: RatePolicy,
    /// `[breaker]`: relay-wide breaker.
    pub breaker: BreakerPolicy,
    /// Rules whose holds the sender is not told about (`notify_sender = false`).
    pub quiet_rules: Vec<&'static str>,
}

impl Default for Policy {
    /// No rule switched on.
    fn default() -> Self {
        Policy {
            mode: Mode::Enforce,
            internal: DomainSet::default(),
            envelope: Levels::default(),
            external: Levels::default(),
            audience: Levels::default(),
            restricted: Restricted::default(),
            hidden: Hidden::default(),
            drift_action: Action::Quarantine,
            drift_monitor: false,
            on_unknown: Action::Quarantine,
            scopes: Vec::new(),
            exempt: TrustedSenders::default(),
            storm: StormPolicy::default(),
            rate: RatePolicy::default(),
            breaker: BreakerPolicy::default(),
            quiet_rules: Vec::new(),
        }
    }
}

/// The numbers a verdict was based on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Distinct envelope recipients.
    pub envelope: usize,
    /// Distinct To/Cc addresses in the headers.
    pub visible: usize,
    /// Final mailboxes the message reaches after list and alias expansion; without
    /// a directory, the envelope count.
    pub audience: usize,
    /// Final mailboxes outside `[domains] internal`.
    pub external: usize,
    /// Lists among the recipients.
    pub lists: usize,
    /// Of `audience`, the mailboxes reached only through envelope recipients that no To
    /// or Cc header names (a Bcc'd list, an envelope-only address).
    pub unseen: usize,
}

/// A verdict together with the counts it was based on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// What to do with the message.
    pub verdict: Verdict,
    /// The numbers behind it.
    pub counts: Counts,
}

/// Counts what the rules look at.
pub fn count(policy: &Policy, facts: &MessageFacts) -> Counts {
    let envelope = facts.recipients.len();
    let (audience, external, lists, unseen) = match &facts.audience {
        Some(a) => (
            a.total as usize,
            a.external as usize,
            a.lists.len(),
            a.total.saturating_sub(a.seen) as usize,
        ),
        None => (
            envelope,
            facts
                .recipients
                .iter()
                .filter(|r| !policy.internal.is_internal(r))
                .count(),
            0,
            envelope - facts.headers.named(&facts.recipients).len(),
        ),
    };
    Counts {
        envelope,
        visible: facts.headers.visible.len(),
        audience,
        external,
        lists,
        unseen,
    }
}

/// Decides one message on its facts and on what the shared state said about it
/// (storms, rates, the breaker, the emergency brake; empty where no state is kept, as
/// in `explain`). The brake holds a large message even from an exempt sender or in
/// monitor mode. A copy made for a release to chosen recipients ([`ReleasedCopy`]) is
/// held, whatever the mode, the exemptions and the rules say: the root worker releases
/// it after checking it in Postfix's queue.
pub fn evaluate(policy: &Policy, facts: &MessageFacts, state: &StateFacts) -> Evaluation {
    let counts = count(policy, facts);
    if let Some(reason) = rules::released_copy(facts) {
        let mut verdict = Verdict::accept();
        verdict.action = reason.action;
        verdict.intended = reason.action;
        verdict.reasons.push(reason);
        return Evaluation { verdict, counts };
    }
    let mut evaluation = evaluate_rules(policy, facts, state, counts);
    if let Some(reason) = stateful::brake(state, counts.audience as u64, facts.audience.as_ref()) {
        let v = &mut evaluation.verdict;
        v.intended = v.intended.max(reason.action);
        v.action = v.action.max(reason.action);
        v.reasons.push(reason);
        v.reasons.sort_by_key(|r| std::cmp::Reverse(r.action));
    }
    if evaluation.verdict.action == Action::Confirm
        && !only_the_sender_asked(policy, facts, &evaluation)
    {
        let v = &mut evaluation.verdict;
        v.action = Action::Quarantine;
        v.intended = v.intended.max(Action::Quarantine);
        for r in v.reasons.iter_mut().filter(|r| r.action == Action::Confirm) {
            r.action = Action::Quarantine;
        }
    }
    evaluation.verdict.notify_sender = tell_sender(policy, facts, &evaluation.verdict);
    evaluation
}

/// Whether a `confirm` verdict may stay one, the sender alone deciding: only when they
/// can be asked and the answer is theirs. Else the message is held for an admin:
/// - the sender must be reachable and real: not the null sender, not mail a program or
///   a list sent, and either logged in (SASL) or in an internal domain, so that the
///   link to send goes to the mailbox of the person named, never to an outside address
///   a forger chose;
/// - every rule that asked for more than a tag (monitored or not) is `[hidden]` or
///   `[restricted]` asking to confirm: a drift, a scope, the breaker, a storm or a
///   reject level fired alongside is an admin's to judge;
/// - the whole audience is within the larger `confirm_max_audience`.
fn only_the_sender_asked(policy: &Policy, facts: &MessageFacts, evaluation: &Evaluation) -> bool {
    let sender = address::fold_case(&facts.sender);
    let reachable = !facts.sender.is_empty()
        && !facts.headers.automated
        && (facts.sasl_login.as_deref().is_some_and(|l| !l.is_empty())
            || policy.internal.is_internal(&sender));
    // Only `[hidden]` and `[restricted]` may ask to confirm (the configuration refuses
    // it elsewhere), so no reason above `confirm`, monitored or not, is the whole test.
    let only_confirm = evaluation
        .verdict
        .reasons
        .iter()
        .all(|r| r.action <= Action::Confirm);
    let max = policy
        .hidden
        .confirm_max_audience
        .max(policy.restricted.confirm_max_audience);
    reachable && only_confirm && evaluation.counts.audience as u64 <= max
}

/// Whether the sender of a message held under `verdict` is told at once: always when
/// the sender is asked to confirm; for a hold, unless every rule that decided it has
/// `notify_sender = false`. Never the null sender, mail a program sent or a list
/// distributes ([`HeaderFacts::automated`]), a reply-all storm (its other replies were
/// refused with a reply that explains), nor a copy made for a release.
pub fn tell_sender(policy: &Policy, facts: &MessageFacts, verdict: &Verdict) -> bool {
    let held = matches!(verdict.action, Action::Confirm | Action::Quarantine);
    if !held || facts.sender.is_empty() || facts.headers.automated || facts.released.is_some() {
        return false;
    }
    let deciding = verdict
        .reasons
        .iter()
        .filter(|r| !r.monitor && r.action == verdict.action);
    let mut loud = false;
    for r in deciding {
        if r.rule == "storm" {
            return false;
        }
        loud |= verdict.action == Action::Confirm || !policy.quiet_rules.contains(&r.rule);
    }
    loud
}

/// [`evaluate`] without the emergency brake and the released copies.
fn evaluate_rules(
    policy: &Policy,
    facts: &MessageFacts,
    state: &StateFacts,
    counts: Counts,
) -> Evaluation {
    if let Some(pattern) = policy.exempt.grants(facts) {
        let mut verdict = Verdict::accept();
        verdict.exempt_by = Some(pattern.to_owned());
        return Evaluation { verdict, counts };
    }

    let no_lists = AudienceFacts::default();
    let audience = facts.audience.as_ref().unwrap_or(&no_lists);
    let authorized = rules::authorized_unseen(&policy.restricted, facts, &audience.lists);
    let confirmed =
        rules::confirmed_unseen(&policy.restricted, facts, &audience.lists, &state.confirmed);
    let mut fired: Vec<(Reason, bool)> = [
        rules::envelope(&policy.envelope, &counts),
        rules::external(&policy.external, &counts),
        rules::audience(&policy.audience, &counts, audience.lower_bound),
        rules::hidden(&policy.hidden, &counts, authorized, confirmed),
    ]
    .into_iter()
    .flatten()
    .collect();
    fired.extend(rules::restricted(
        &policy.restricted,
        facts,
        &audience.lists,
        &state.confirmed,
    ));
    fired.extend(rules::drift(
        policy.drift_action,
        policy.drift_monitor,
        &audience.lists,
    ));
    fired.extend(rules::scope(&policy.scopes, facts, &audience.lists));
    fired.extend(rules::unknown(policy.on_unknown, audience));
    fired.extend(rules::unavailable(audience));
    fired.extend(stateful::storm(&policy.storm, state));
    fired.extend(stateful::rate(&policy.rate, state));
    fired.extend(stateful::breaker(&policy.breaker, state));

    Evaluation {
        verdict: combine(policy.mode, fired),
        counts,
    }
}

/// Folds the fired rules (each with its own monitor flag) into one verdict.
fn combine(mode: Mode, fired: Vec<(Reason, bool)>) -> Verdict {
    let mut verdict = Verdict::accept();
    for (mut reason, rule_monitor) in fired {
        verdict.intended = verdict.intended.max(reason.action);
        let monitored = mode == Mode::Monitor || rule_monitor;
        let effective = if monitored && reason.action.is_enforcement() {
            reason.monitor = true;
            Action::Tag
        } else {
            reason.action
        };
        verdict.action = verdict.action.max(effective);
        verdict.reasons.push(reason);
    }
    verdict.reasons.sort_by_key(|r| std::cmp::Reverse(r.action));
    verdict
}

/// Formats a count with thousands separators ("840,000").
pub fn fmt_count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::evaluate`] with no shared state, as these rules need none.
    fn evaluate(p: &Policy, f: &MessageFacts) -> Evaluation {
        super::evaluate(p, f, &StateFacts::default())
    }

    fn levels(tag: u64, quarantine: u64, reject: u64) -> Levels {
        Levels {
            tag,
            quarantine,
            reject,
            monitor: false,
        }
    }

    /// `logins` match SASL logins, `envelope` envelope senders of mail without one.
    fn trusted(logins: &[&str], envelope: &[&str]) -> TrustedSenders {
        TrustedSenders {
            logins: AddressGlobs::new(logins).unwrap(),
            envelope: AddressGlobs::new(envelope).unwrap(),
        }
    }

    fn policy() -> Policy {
        Policy {
            mode: Mode::Enforce,
            internal: DomainSet::new(["example.org", "*.example.org"]).unwrap(),
            envelope: levels(50, 200, 2000),
            external: levels(0, 100, 0),
            exempt: trusted(&["svc-*@example.org"], &["bulk@example.org"]),
            ..Policy::default()
        }
    }

    fn facts(internal: usize, external: usize) -> MessageFacts {
        let mut f = MessageFacts {
            sender: "ann@example.org".into(),
            ..Default::default()
        };
        for i in 0..internal {
            f.recipients.add(&format!("<user{i}@dept.example.org>"));
        }
        for i in 0..external {
            f.recipients.add(&format!("<user{i}@gmail.example>"));
        }
        f
    }

    fn action(p: &Policy, f: &MessageFacts) -> Action {
        evaluate(p, f).verdict.action
    }

    #[test]
    fn envelope_levels_below_at_and_above() {
        let p = policy();
        assert_eq!(action(&p, &facts(49, 0)), Action::Accept);
        assert_eq!(action(&p, &facts(50, 0)), Action::Tag);
        assert_eq!(action(&p, &facts(51, 0)), Action::Tag);
        assert_eq!(action(&p, &facts(199, 0)), Action::Tag);
        assert_eq!(action(&p, &facts(200, 0)), Action::Quarantine);
        assert_eq!(action(&p, &facts(201, 0)), Action::Quarantine);
        assert_eq!(action(&p, &facts(1999, 0)), Action::Quarantine);
        assert_eq!(action(&p, &facts(2000, 0)), Action::Reject);
        assert_eq!(action(&p, &facts(2001, 0)), Action::Reject);
    }

    #[test]
    fn reason_carries_the_numbers() {
        let e = evaluate(&policy(), &facts(240, 0));
        assert_eq!(e.verdict.reasons.len(), 1);
        let r = &e.verdict.reasons[0];
        assert_eq!(r.rule, "limits.envelope");
        assert_eq!(r.action, Action::Quarantine);
        assert_eq!(r.message, "240 envelope recipients >= quarantine level 200");
        assert_eq!(e.counts.envelope, 240);
        assert_eq!(e.counts.audience, 240);
    }

    #[test]
    fn external_levels_below_at_and_above() {
        let p = policy();
        assert_eq!(action(&p, &facts(0, 49)), Action::Accept);
        let e = evaluate(&p, &facts(0, 99));
        assert_eq!(
            e.verdict.action,
            Action::Tag,
            "envelope tag level still applies"
        );
        assert_eq!(e.counts.external, 99);
        let e = evaluate(&p, &facts(0, 100));
        assert_eq!(e.verdict.action, Action::Quarantine);
        assert_eq!(e.verdict.reasons[0].rule, "limits.external");
        assert_eq!(
            e.verdict.reasons[0].message,
            "100 external recipients >= quarantine level 100"
        );
        assert_eq!(action(&p, &facts(0, 101)), Action::Quarantine);
    }

    #[test]
    fn external_counts_only_outside_internal_domains() {
        let p = policy();
        let mut f = facts(10, 0);
        f.recipients.add("x@example.org");
        f.recipients.add("x@a.b.example.org");
        f.recipients.add("x@notexample.org");
        f.recipients.add("x@example.org.evil.example");
        f.recipients.add("localuser");
        let c = count(&p, &f);
        assert_eq!(c.envelope, 15);
        assert_eq!(c.external, 2);
    }

    #[test]
    fn every_fired_rule_is_reported_most_severe_first() {
        let p = policy();
        let e = evaluate(&p, &facts(0, 120));
        assert_eq!(e.verdict.action, Action::Quarantine);
        let rules: Vec<_> = e.verdict.reasons.iter().map(|r| r.rule).collect();
        assert_eq!(rules, ["limits.external", "limits.envelope"]);
        assert_eq!(e.verdict.reasons[1].action, Action::Tag);
    }

    #[test]
    fn duplicates_do_not_count_twice() {
        let p = policy();
        let mut f = facts(0, 0);
        for _ in 0..300 {
            f.recipients.add("<same@Example.ORG>");
        }
        assert_eq!(count(&p, &f).envelope, 1);
        assert_eq!(action(&p, &f), Action::Accept);
    }

    #[test]
    fn monitor_mode_turns_enforcement_into_tag() {
        let mut p = policy();
        p.mode = Mode::Monitor;
        let e = evaluate(&p, &facts(2500, 0));
        assert_eq!(e.verdict.action, Action::Tag);
        assert_eq!(e.verdict.intended, Action::Reject);
        assert!(e.verdict.is_monitored());
        assert!(e.verdict.reasons[0].monitor);
        assert_eq!(action(&p, &facts(60, 0)), Action::Tag);
        assert_eq!(action(&p, &facts(10, 0)), Action::Accept);
    }

    #[test]
    fn per_rule_monitor_only_downgrades_that_rule() {
        let mut p = policy();
        p.external.monitor = true;
        let e = evaluate(&p, &facts(0, 150));
        assert_eq!(e.verdict.action, Action::Tag);
        assert_eq!(e.verdict.intended, Action::Quarantine);
        let e = evaluate(&p, &facts(0, 2500));
        assert_eq!(
            e.verdict.action,
            Action::Reject,
            "envelope rule still enforces"
        );
    }

    #[test]
    fn exempt_login_or_trusted_envelope_sender_bypasses_rules() {
        let p = policy();
        let mut f = facts(5000, 0);
        f.sender = "BULK@example.org".into();
        let e = evaluate(&p, &f);
        assert_eq!(
            e.verdict.action,
            Action::Accept,
            "a trusted envelope sender"
        );
        assert_eq!(e.verdict.exempt_by.as_deref(), Some("bulk@example.org"));
        assert_eq!(e.counts.envelope, 5000, "counts are still reported");

        let mut f = facts(5000, 0);
        f.sasl_login = Some("svc-payroll@example.org".into());
        assert_eq!(
            evaluate(&p, &f).verdict.exempt_by.as_deref(),
            Some("svc-*@example.org")
        );

        let mut f = facts(5000, 0);
        f.sasl_login = Some("ann@example.org".into());
        assert_eq!(action(&p, &f), Action::Reject);
    }

    #[test]
    fn a_forged_envelope_sender_is_never_exempt() {
        let p = Policy {
            exempt: trusted(&["bulk-notices@example.org"], &["bulk-notices@example.org"]),
            ..policy()
        };
        let mut f = facts(5000, 0);
        f.sender = "bulk-notices@example.org".into();
        f.sasl_login = Some("mallory".into());
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Reject, "the login is who sent it");
        assert_eq!(e.verdict.exempt_by, None);

        let logins_only = Policy {
            exempt: trusted(&["bulk-notices@example.org"], &[]),
            ..policy()
        };
        let mut f = facts(5000, 0);
        f.sender = "bulk-notices@example.org".into();
        assert_eq!(
            action(&logins_only, &f),
            Action::Reject,
            "[exempt] senders match the SASL login, never the envelope sender alone"
        );
        f.sasl_login = Some("bulk-notices@example.org".into());
        assert_eq!(action(&logins_only, &f), Action::Accept);
    }

    #[test]
    fn null_sender_is_never_exempt_by_glob() {
        let mut p = policy();
        p.exempt = trusted(&["*"], &["*"]);
        let mut f = facts(5000, 0);
        f.sender = String::new();
        assert_eq!(action(&p, &f), Action::Reject);
    }

    #[test]
    fn disabled_levels_never_fire() {
        let mut p = policy();
        p.envelope = levels(0, 0, 0);
        p.external = levels(0, 0, 0);
        assert_eq!(action(&p, &facts(100_000, 100_000)), Action::Accept);
    }

    #[test]
    fn counts_are_formatted_with_separators() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(840_000), "840,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
    }

    fn list(address: &str, size: u64, domains: &[(&str, u64)]) -> ListFacts {
        ListFacts {
            address: address.into(),
            size,
            external: 0,
            nested_lists: 0,
            cycles: 0,
            domains: domains
                .iter()
                .map(|&(d, n)| (std::sync::Arc::from(d), n))
                .collect(),
            drift_from: None,
            ..Default::default()
        }
    }

    fn with_audience(mut f: MessageFacts, total: u64, lists: Vec<ListFacts>) -> MessageFacts {
        f.audience = Some(AudienceFacts {
            total,
            external: 0,
            lists,
            non_mailbox: 0,
            lower_bound: false,
            ..Default::default()
        });
        f
    }

    fn audience_policy() -> Policy {
        Policy {
            audience: levels(0, 1000, 50_000),
            ..policy()
        }
    }

    #[test]
    fn audience_levels_count_final_mailboxes() {
        let p = audience_policy();
        let one_list = |total| {
            with_audience(
                facts(1, 0),
                total,
                vec![list("all@example.org", total, &[])],
            )
        };
        assert_eq!(action(&p, &one_list(999)), Action::Accept);
        let e = evaluate(&p, &one_list(1000));
        assert_eq!(e.verdict.action, Action::Quarantine);
        assert_eq!(e.counts.audience, 1000);
        assert_eq!(e.counts.envelope, 1);
        assert_eq!(
            e.verdict.reasons[0].message,
            "1,000 recipients after list expansion >= quarantine level 1,000"
        );
        assert_eq!(action(&p, &one_list(49_999)), Action::Quarantine);
        assert_eq!(action(&p, &one_list(50_000)), Action::Reject);
        let mut lower = one_list(60_000);
        lower.audience.as_mut().unwrap().lower_bound = true;
        assert!(
            evaluate(&p, &lower).verdict.reasons[0]
                .message
                .starts_with("at least 60,000")
        );
    }

    #[test]
    fn external_counts_after_expansion() {
        let p = audience_policy();
        let mut f = with_audience(facts(1, 0), 300, vec![list("all@example.org", 300, &[])]);
        f.audience.as_mut().unwrap().external = 150;
        let e = evaluate(&p, &f);
        assert_eq!(e.counts.external, 150);
        assert_eq!(e.verdict.action, Action::Quarantine);
        assert_eq!(e.verdict.reasons[0].rule, "limits.external");
    }

    fn hidden_policy() -> Policy {
        Policy {
            hidden: Hidden {
                min_audience: 100,
                ratio: 10.0,
                action: Action::Reject,
                confirm_max_audience: 5000,
                monitor: false,
            },
            ..Policy::default()
        }
    }

    fn visible(mut f: MessageFacts, n: usize) -> MessageFacts {
        for i in 0..n {
            f.headers.visible.add(&format!("v{i}@example.org"));
        }
        f
    }

    #[test]
    fn hidden_expansion_needs_both_minimum_and_ratio() {
        let p = hidden_policy();
        let f = visible(with_audience(facts(3, 0), 840_000, vec![]), 3);
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Reject);
        assert_eq!(e.verdict.reasons[0].rule, "hidden");
        assert!(
            e.verdict.reasons[0]
                .message
                .starts_with("visible 3, real audience 840,000")
        );
        assert_eq!(
            action(&p, &visible(with_audience(facts(3, 0), 99, vec![]), 3)),
            Action::Accept
        );
        assert_eq!(
            action(&p, &visible(with_audience(facts(3, 0), 100, vec![]), 10)),
            Action::Reject
        );
        assert_eq!(
            action(&p, &visible(with_audience(facts(3, 0), 100, vec![]), 11)),
            Action::Accept
        );
        assert_eq!(
            action(&p, &visible(with_audience(facts(3, 0), 150, vec![]), 0)),
            Action::Reject
        );
        let off = Policy {
            hidden: Hidden {
                min_audience: 0,
                ..hidden_policy().hidden
            },
            ..Policy::default()
        };
        assert_eq!(
            action(
                &off,
                &visible(with_audience(facts(3, 0), 840_000, vec![]), 1)
            ),
            Action::Accept
        );
        let mon = Policy {
            hidden: Hidden {
                monitor: true,
                ..hidden_policy().hidden
            },
            ..Policy::default()
        };
        assert_eq!(
            action(
                &mon,
                &visible(with_audience(facts(3, 0), 840_000, vec![]), 1)
            ),
            Action::Tag
        );
    }

    #[test]
    fn hidden_without_a_directory_uses_the_envelope() {
        let p = hidden_policy();
        let f = visible(facts(150, 0), 2);
        assert_eq!(
            action(&p, &f),
            Action::Reject,
            "150 Bcc'd envelope recipients, 2 visible"
        );
    }

    /// `rcpts` are the envelope; `shown` the To/Cc addresses; `lists` the lists among
    /// the envelope with whether a header names them; `seen` the mailboxes reached
    /// through named recipients, as the directory computes them.
    fn shown(
        rcpts: &[&str],
        shown: &[&str],
        total: u64,
        seen: u64,
        lists: Vec<(ListFacts, bool)>,
    ) -> MessageFacts {
        let mut f = MessageFacts {
            sender: "ann@example.org".into(),
            recipients: rcpts.iter().collect(),
            ..Default::default()
        };
        for a in shown {
            f.headers.visible.add(a);
        }
        f.audience = Some(AudienceFacts {
            total,
            seen,
            lists: lists
                .into_iter()
                .map(|(mut l, named)| {
                    l.named = named;
                    l
                })
                .collect(),
            ..Default::default()
        });
        f
    }

    #[test]
    fn a_list_named_in_to_or_cc_is_visible_with_its_members() {
        let p = hidden_policy();
        let dept = || list("dept@example.org", 300, &[]);
        let f = shown(
            &["dept@example.org"],
            &["dept@example.org"],
            300,
            300,
            vec![(dept(), true)],
        );
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Accept, "{:?}", e.verdict);
        assert_eq!(e.counts.unseen, 0);
        assert_eq!(e.counts.visible, 1);

        let cc = shown(
            &["boss@example.org", "dept@example.org"],
            &["boss@example.org", "dept@example.org"],
            300,
            300,
            vec![(dept(), true)],
        );
        assert_eq!(action(&p, &cc), Action::Accept, "the list in Cc");
    }

    #[test]
    fn a_bcc_list_nobody_sees_is_hidden() {
        let p = hidden_policy();
        let f = shown(
            &["ann@example.org", "dept@example.org"],
            &["ann@example.org"],
            301,
            1,
            vec![(list("dept@example.org", 300, &[]), false)],
        );
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Reject);
        assert_eq!(e.counts.unseen, 300);
        assert_eq!(
            e.verdict.reasons[0].message,
            "visible 1, real audience 301, 300 of them through addresses no To/Cc shows \
             (>= 10x visible and >= 100)"
        );

        let small = shown(
            &["ann@example.org", "team@example.org"],
            &["ann@example.org"],
            41,
            1,
            vec![(list("team@example.org", 40, &[]), false)],
        );
        assert_eq!(
            action(&p, &small),
            Action::Accept,
            "below min_audience: a few Bcc'd colleagues"
        );
    }

    /// `[hidden]` and `[restricted]` asking the sender to confirm, up to 5,000.
    fn confirm_policy() -> Policy {
        let mut p = hidden_policy();
        p.internal = DomainSet::new(["example.org"]).unwrap();
        p.hidden.action = Action::Confirm;
        p.restricted = restricted_policy(0).restricted;
        p.restricted.action = Action::Confirm;
        p
    }

    fn with_confirmed(p: &Policy, f: &MessageFacts, lists: &[&str]) -> Verdict {
        let state = StateFacts {
            confirmed: lists
                .iter()
                .map(|l| ConfirmedList {
                    address: l.to_string(),
                    size: 10_000,
                })
                .collect(),
            ..Default::default()
        };
        super::evaluate(p, f, &state).verdict
    }

    /// Ann Bccs `size` people through `trust@example.org`, showing 1 address.
    fn bcc(size: u64) -> MessageFacts {
        shown(
            &["ann@example.org", "trust@example.org"],
            &["ann@example.org"],
            size + 1,
            1,
            vec![(list("trust@example.org", size, &[]), false)],
        )
    }

    #[test]
    fn confirm_asks_the_sender_up_to_its_maximum_then_an_admin() {
        let p = confirm_policy();
        let v = with_confirmed(&p, &bcc(4000), &[]);
        assert_eq!(v.action, Action::Confirm, "{v:?}");
        assert_eq!(v.reasons[0].rule, "hidden");
        assert_eq!(v.reasons[0].action, Action::Confirm);
        // The rule's own maximum counts what no header shows (the message's, the whole
        // audience, is tested below): with room for the whole message, 5,000 unseen.
        let mut p = confirm_policy();
        p.restricted.confirm_max_audience = 6000;
        let v = with_confirmed(&p, &bcc(5000), &[]);
        assert_eq!(v.action, Action::Confirm, "at the maximum");
        let v = with_confirmed(&p, &bcc(5001), &[]);
        assert_eq!(v.action, Action::Quarantine, "above it");
        let v = with_confirmed(&p, &bcc(5001), &["trust@example.org"]);
        assert_eq!(v.action, Action::Quarantine, "a confirmation lifts no hold");
        let mut mon = confirm_policy();
        mon.mode = Mode::Monitor;
        assert_eq!(with_confirmed(&mon, &bcc(4000), &[]).action, Action::Tag);
        // Another rule that holds for an admin wins over confirm.
        let mut strict = confirm_policy();
        strict.audience = levels(0, 1000, 0);
        assert_eq!(
            with_confirmed(&strict, &bcc(4000), &["trust@example.org"]).action,
            Action::Quarantine
        );
    }

    #[test]
    fn the_sender_of_a_hold_is_told_unless_a_program_a_list_or_a_storm_sent_it() {
        let p = confirm_policy();
        let told = |p: &Policy, f: &MessageFacts| evaluate(p, f).verdict.notify_sender;
        assert!(told(&p, &bcc(4000)), "confirm");
        assert!(told(&p, &bcc(6000)), "held above confirm_max_audience");
        assert!(!told(&p, &bcc(10)), "accepted");
        let confirmed = with_confirmed(&p, &bcc(4000), &["trust@example.org"]);
        assert_eq!(confirmed.action, Action::Accept);
        assert!(!confirmed.notify_sender, "accepted, with a reason");
        let mut outside = bcc(4000);
        outside.sender = "x@partner.example".into();
        let v = evaluate(&p, &outside).verdict;
        assert_eq!(v.action, Action::Quarantine);
        assert_eq!(
            v.reasons[0].action,
            Action::Quarantine,
            "the rule holds it now"
        );
        assert!(
            v.notify_sender,
            "held for the mail team, and the sender is told"
        );
        let mut null = bcc(4000);
        null.sender.clear();
        assert!(!told(&p, &null), "the null sender");
        let mut auto = bcc(4000);
        auto.headers.automated = true;
        assert!(!told(&p, &auto), "auto-submitted or list mail");
        let mut copy = bcc(4000);
        copy.released = Some(ReleasedCopy::Accepted { request: 7 });
        assert!(!told(&p, &copy), "a released copy");
        let mut mon = confirm_policy();
        mon.mode = Mode::Monitor;
        assert!(!told(&mon, &bcc(4000)), "monitor: nothing held");
        let mut quiet = confirm_policy();
        quiet.quiet_rules = vec!["hidden"];
        assert!(told(&quiet, &bcc(4000)), "confirm asks the sender whatever");
        assert!(!told(&quiet, &bcc(6000)), "a hold by a quiet rule");
        quiet.envelope = levels(0, 2, 0);
        assert!(
            told(&quiet, &bcc(6000)),
            "another deciding rule is not quiet"
        );
        let storm = Verdict {
            action: Action::Quarantine,
            intended: Action::Quarantine,
            reasons: vec![Reason {
                rule: "storm",
                action: Action::Quarantine,
                message: "storm".into(),
                monitor: false,
                reply: None,
            }],
            ..Verdict::accept()
        };
        assert!(!tell_sender(&p, &bcc(4000), &storm), "a storm reply");
        let mut tagged_reject = storm.clone();
        tagged_reject.reasons[0].rule = "hidden";
        assert!(tell_sender(&p, &bcc(4000), &tagged_reject));
        tagged_reject.reasons[0].monitor = true;
        assert!(
            !tell_sender(&p, &bcc(4000), &tagged_reject),
            "a monitored rule decides nothing"
        );
    }

    #[test]
    fn confirm_is_for_a_sender_who_can_be_asked_and_only_for_their_question() {
        let p = confirm_policy();
        assert_eq!(evaluate(&p, &bcc(4000)).verdict.action, Action::Confirm);
        let held = |f: &MessageFacts, p: &Policy| {
            let v = evaluate(p, f).verdict;
            assert!(
                v.action == Action::Quarantine && v.intended == Action::Quarantine,
                "{v:?}"
            );
        };
        let mut outside = bcc(4000);
        outside.sender = "x@gmail.example".into();
        held(&outside, &p);
        outside.sasl_login = Some("ann".into());
        assert_eq!(
            evaluate(&p, &outside).verdict.action,
            Action::Confirm,
            "logged in"
        );
        outside.sasl_login = Some(String::new());
        held(&outside, &p);
        let mut shouting = bcc(4000);
        shouting.sender = "ANN@EXAMPLE.ORG".into();
        assert_eq!(evaluate(&p, &shouting).verdict.action, Action::Confirm);
        let mut null = bcc(4000);
        null.sender.clear();
        held(&null, &p);
        let mut auto = bcc(4000);
        auto.headers.automated = true;
        held(&auto, &p);
        // Another rule asking for more than a tag, monitored or not: an admin's.
        let mut monitored = confirm_policy();
        monitored.envelope = Levels {
            tag: 0,
            quarantine: 2,
            reject: 0,
            monitor: true,
        };
        held(&bcc(4000), &monitored);
        let mut tagged = confirm_policy();
        tagged.envelope = levels(2, 0, 0);
        let v = evaluate(&tagged, &bcc(4000)).verdict;
        assert_eq!(v.action, Action::Confirm, "a tag is no question: {v:?}");
        // The whole audience within the larger maximum.
        let mut small = confirm_policy();
        small.hidden.confirm_max_audience = 3000;
        small.restricted.confirm_max_audience = 3999;
        held(&bcc(4000), &small);
        small.restricted.confirm_max_audience = 4001;
        assert_eq!(evaluate(&small, &bcc(3000)).verdict.action, Action::Confirm);
        // Two restricted lists named in To, each within the maximum, together above it.
        let mut p = confirm_policy();
        p.hidden.min_audience = 0;
        p.restricted.min_audience = 1000;
        let named = |sizes: &[u64]| {
            let lists: Vec<(ListFacts, bool)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (list(&format!("l{i}@example.org"), n, &[]), true))
                .collect();
            let rcpts: Vec<String> = (0..sizes.len())
                .map(|i| format!("l{i}@example.org"))
                .collect();
            let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
            let total = sizes.iter().sum();
            shown(&rcpts, &rcpts, total, total, lists)
        };
        assert_eq!(
            evaluate(&p, &named(&[2500, 2500])).verdict.action,
            Action::Confirm
        );
        held(&named(&[2500, 2501]), &p);
    }

    #[test]
    fn a_confirmed_bcc_list_passes_with_a_reason_saying_so() {
        let p = confirm_policy();
        let v = with_confirmed(&p, &bcc(4000), &["trust@example.org"]);
        assert_eq!(v.action, Action::Accept, "{v:?}");
        assert_eq!(v.reasons.len(), 1);
        assert_eq!(v.reasons[0].rule, "hidden");
        assert_eq!(v.reasons[0].action, Action::Accept);
        assert!(
            v.reasons[0]
                .message
                .ends_with("confirmed these lists lately")
        );
        // Another list confirmed does not count; nor does one the headers name.
        let v = with_confirmed(&p, &bcc(4000), &["other@example.org"]);
        assert_eq!(v.action, Action::Confirm);
        // Two Bcc'd lists, one confirmed: the other alone still fires.
        let two = shown(
            &["ann@example.org", "trust@example.org", "ward@example.org"],
            &["ann@example.org"],
            4301,
            1,
            vec![
                (list("trust@example.org", 4000, &[]), false),
                (list("ward@example.org", 300, &[]), false),
            ],
        );
        assert_eq!(
            with_confirmed(&p, &two, &["trust@example.org"]).action,
            Action::Confirm
        );
        assert_eq!(
            with_confirmed(&p, &two, &["trust@example.org", "ward@example.org"]).action,
            Action::Accept
        );
        // All or nothing: lists overlap, so a small list not confirmed asks again,
        // though 3,990 - 3,950 = 40 would be below min_audience.
        let few = shown(
            &["ann@example.org", "trust@example.org", "team@example.org"],
            &["ann@example.org"],
            3991,
            1,
            vec![
                (list("trust@example.org", 3950, &[]), false),
                (list("team@example.org", 40, &[]), false),
            ],
        );
        assert_eq!(
            with_confirmed(&p, &few, &["trust@example.org"]).action,
            Action::Confirm
        );
        assert_eq!(
            with_confirmed(&p, &few, &["trust@example.org", "team@example.org"]).action,
            Action::Accept
        );
        // Bcc'd people who are no list still count: 4,000 confirmed, 150 more unseen.
        let mut more = bcc(4000);
        for i in 0..150 {
            more.recipients.add(&format!("p{i}@example.org"));
        }
        more.audience.as_mut().unwrap().total += 150;
        assert_eq!(
            with_confirmed(&p, &more, &["trust@example.org"]).action,
            Action::Confirm
        );
        // With action = quarantine, a confirmation means nothing.
        let mut held = confirm_policy();
        held.hidden.action = Action::Quarantine;
        assert_eq!(
            with_confirmed(&held, &bcc(4000), &["trust@example.org"]).action,
            Action::Quarantine
        );
    }

    #[test]
    fn a_list_that_grew_by_more_than_a_quarter_since_it_was_confirmed_is_asked_again() {
        let p = confirm_policy();
        let at = |size: u64| StateFacts {
            confirmed: vec![ConfirmedList {
                address: "trust@example.org".into(),
                size,
            }],
            ..Default::default()
        };
        let action = |confirmed: u64, now: u64| {
            super::evaluate(&p, &bcc(now), &at(confirmed))
                .verdict
                .action
        };
        assert_eq!(action(3200, 4000), Action::Accept, "3,200 + 800");
        assert_eq!(action(3200, 4001), Action::Confirm);
        assert_eq!(action(4000, 3000), Action::Accept, "shrunk");
        let mut named = confirm_policy();
        named.hidden.min_audience = 0;
        named.restricted.min_audience = 1000;
        let to = shown(
            &["trust@example.org"],
            &["trust@example.org"],
            4001,
            4001,
            vec![(list("trust@example.org", 4001, &[]), true)],
        );
        let v = |c| super::evaluate(&named, &to, &at(c)).verdict.action;
        assert_eq!(v(3200), Action::Confirm, "restricted too");
        assert_eq!(v(3201), Action::Accept);
    }

    #[test]
    fn a_list_named_in_to_never_counts_as_unseen_for_the_confirmations() {
        // Named in To and not confirmed: visible, so the Bcc'd list confirmed is enough.
        let p = confirm_policy();
        let f = shown(
            &["ward@example.org", "trust@example.org"],
            &["ward@example.org"],
            4300,
            300,
            vec![
                (list("ward@example.org", 300, &[]), true),
                (list("trust@example.org", 4000, &[]), false),
            ],
        );
        assert_eq!(with_confirmed(&p, &f, &[]).action, Action::Confirm);
        assert_eq!(
            with_confirmed(&p, &f, &["trust@example.org"]).action,
            Action::Accept
        );
    }

    #[test]
    fn no_hidden_audience_when_nobody_is_reached_beyond_those_shown() {
        // 200 addresses in To that are not envelope recipients, a Bcc'd list of 200:
        // as many people as shown, so nothing is hidden even at ratio 1.
        let mut p = hidden_policy();
        p.hidden.ratio = 1.0;
        let shown_only: Vec<String> = (0..200).map(|i| format!("s{i}@example.org")).collect();
        let shown_only: Vec<&str> = shown_only.iter().map(String::as_str).collect();
        let f = shown(
            &["team@example.org"],
            &shown_only,
            200,
            0,
            vec![(list("team@example.org", 200, &[]), false)],
        );
        let e = evaluate(&p, &f);
        assert_eq!((e.counts.audience, e.counts.visible), (200, 200));
        assert_eq!(e.verdict.action, Action::Accept, "{:?}", e.verdict);
        let more = shown(
            &["team@example.org"],
            &shown_only,
            201,
            0,
            vec![(list("team@example.org", 201, &[]), false)],
        );
        assert_eq!(action(&p, &more), Action::Reject, "one more than shown");
    }

    #[test]
    fn restricted_confirm_remembers_each_list_up_to_its_maximum() {
        let mut p = confirm_policy();
        p.hidden.min_audience = 0;
        p.restricted.min_audience = 1000;
        let to = |size: u64| {
            shown(
                &["board@example.org"],
                &["board@example.org"],
                size,
                size,
                vec![(list("board@example.org", size, &[]), true)],
            )
        };
        let v = with_confirmed(&p, &to(1200), &[]);
        assert_eq!(v.action, Action::Confirm);
        assert_eq!(v.reasons[0].rule, "restricted");
        let v = with_confirmed(&p, &to(1200), &["board@example.org"]);
        assert_eq!(v.action, Action::Accept, "{v:?}");
        assert_eq!(v.reasons[0].rule, "restricted");
        assert!(
            v.reasons[0]
                .message
                .ends_with("the sender confirmed it lately")
        );
        assert_eq!(
            with_confirmed(&p, &to(1200), &["staff@example.org"]).action,
            Action::Confirm
        );
        assert_eq!(with_confirmed(&p, &to(5000), &[]).action, Action::Confirm);
        assert_eq!(
            with_confirmed(&p, &to(5001), &[]).action,
            Action::Quarantine
        );
        assert_eq!(
            with_confirmed(&p, &to(5001), &["board@example.org"]).action,
            Action::Quarantine
        );
        p.restricted.action = Action::Reject;
        assert_eq!(
            with_confirmed(&p, &to(1200), &["board@example.org"]).action,
            Action::Reject
        );
    }

    #[test]
    fn a_named_list_does_not_hide_a_bcc_list_next_to_it() {
        let p = hidden_policy();
        let f = shown(
            &["dept@example.org", "all@example.org"],
            &["dept@example.org"],
            5_300,
            300,
            vec![
                (list("all@example.org", 5_000, &[]), false),
                (list("dept@example.org", 300, &[]), true),
            ],
        );
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Reject);
        assert_eq!(e.counts.unseen, 5_000);
    }

    #[test]
    fn without_a_directory_named_envelope_recipients_are_seen() {
        let p = hidden_policy();
        let mut f = facts(150, 0);
        for r in f.recipients.clone().iter() {
            f.headers.visible.add(&r.to_uppercase());
        }
        let e = evaluate(&p, &f);
        assert_eq!(e.counts.unseen, 0, "named in To, whatever the case");
        assert_eq!(e.verdict.action, Action::Accept);
        let bcc = visible(facts(150, 0), 2);
        assert_eq!(evaluate(&p, &bcc).counts.unseen, 150);
    }

    #[test]
    fn an_allowed_sender_may_bcc_only_the_lists_it_is_allowed() {
        let mut p = hidden_policy();
        let all = list("all@example.org", 5_000, &[]);
        p.restricted
            .lists
            .insert("all@example.org".into(), trusted(&["ceo@example.org"], &[]));
        let other = list("other@example.org", 3_000, &[]);
        // The allowed list in To, another list by Bcc: the Bcc'd one is still hidden.
        let mut f = shown(
            &["all@example.org", "other@example.org"],
            &["all@example.org"],
            8_000,
            5_000,
            vec![(all.clone(), true), (other, false)],
        );
        f.sasl_login = Some("ceo@example.org".into());
        p.restricted.allowed_senders = TrustedSenders::default();
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Reject, "{:?}", e.verdict);
        assert_eq!(e.counts.unseen, 3_000);
        // The allowed list by Bcc alone: an announcement, not a hidden expansion.
        let mut bcc = shown(
            &["ceo@example.org", "all@example.org"],
            &["ceo@example.org"],
            5_001,
            1,
            vec![(all, false)],
        );
        bcc.sasl_login = Some("ceo@example.org".into());
        assert_eq!(action(&p, &bcc), Action::Accept);
    }

    fn restricted_policy(min_audience: u64) -> Policy {
        Policy {
            restricted: Restricted {
                min_audience,
                allowed_senders: trusted(&["comms@example.org"], &["cron@example.org"]),
                lists: Default::default(),
                action: Action::Reject,
                confirm_max_audience: 5000,
                monitor: false,
            },
            ..Policy::default()
        }
    }

    #[test]
    fn restricted_lists_take_only_allowed_senders() {
        let named = list("board@example.org", 12, &[]);
        let mut p = restricted_policy(0);
        p.restricted.lists.insert(
            "board@example.org".into(),
            trusted(&["ceo@example.org"], &[]),
        );
        let f = with_audience(facts(1, 0), 12, vec![named.clone()]);
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Reject);
        assert_eq!(
            e.verdict.reasons[0].message,
            "list board@example.org (12 recipients) is restricted and ann@example.org may not send to it"
        );
        let mut ceo = f.clone();
        ceo.sasl_login = Some("CEO@example.org".into());
        assert_eq!(action(&p, &ceo), Action::Accept);
        let mut forged = f.clone();
        forged.sender = "ceo@example.org".into();
        assert_eq!(
            action(&p, &forged),
            Action::Reject,
            "the envelope sender alone is not the CEO"
        );
        forged.sasl_login = Some("mallory".into());
        assert_eq!(
            action(&p, &forged),
            Action::Reject,
            "nor with another login"
        );
        let mut comms = f.clone();
        comms.sasl_login = Some("comms@example.org".into());
        assert_eq!(
            action(&p, &comms),
            Action::Accept,
            "global allowed senders, by SASL login"
        );

        let p = restricted_policy(5000);
        let big = |n| with_audience(facts(1, 0), n, vec![list("all@example.org", n, &[])]);
        assert_eq!(action(&p, &big(4999)), Action::Accept);
        assert_eq!(action(&p, &big(5000)), Action::Reject);
        let mut from_comms = big(840_000);
        from_comms.sasl_login = Some("comms@example.org".into());
        assert_eq!(action(&p, &from_comms), Action::Accept);
        let mut from_cron = big(840_000);
        from_cron.sender = "cron@example.org".into();
        assert_eq!(
            action(&p, &from_cron),
            Action::Accept,
            "a trusted envelope sender, without a login"
        );
        from_cron.sasl_login = Some("mallory".into());
        assert_eq!(action(&p, &from_cron), Action::Reject, "with another login");
    }

    #[test]
    fn allowed_senders_bccing_their_list_are_not_a_hidden_expansion() {
        let mut p = hidden_policy();
        p.restricted.allowed_senders = trusted(&["comms@example.org"], &[]);
        let announce = list("all@example.org", 5_000, &[]);
        p.restricted
            .lists
            .insert("all@example.org".into(), trusted(&["ceo@example.org"], &[]));
        let f = visible(with_audience(facts(2, 0), 5_002, vec![announce]), 1);
        assert_eq!(action(&p, &f), Action::Reject, "ann may not: hidden");
        let mut ceo = f.clone();
        ceo.sasl_login = Some("ceo@example.org".into());
        assert_eq!(
            action(&p, &ceo),
            Action::Accept,
            "the list's own allowed sender"
        );
        let mut comms = f.clone();
        comms.sasl_login = Some("comms@example.org".into());
        assert_eq!(
            action(&p, &comms),
            Action::Accept,
            "a global allowed sender"
        );

        let extra = list("other@example.org", 3_000, &[]);
        let mut both = visible(
            with_audience(
                facts(3, 0),
                8_002,
                vec![ceo.audience.unwrap().lists[0].clone(), extra],
            ),
            1,
        );
        both.sasl_login = Some("ceo@example.org".into());
        let e = evaluate(&p, &both);
        assert_eq!(
            e.verdict.action,
            Action::Reject,
            "a second, unallowed list still counts"
        );
        assert!(
            e.verdict.reasons[0]
                .message
                .starts_with("visible 1, real audience 8,002")
        );
    }

    #[test]
    fn drifted_lists_are_held() {
        let p = Policy::default();
        let mut l = list("dyn@example.org", 840_000, &[]);
        l.drift_from = Some(40);
        let e = evaluate(&p, &with_audience(facts(1, 0), 840_000, vec![l.clone()]));
        assert_eq!(e.verdict.action, Action::Quarantine);
        assert_eq!(e.verdict.reasons[0].rule, "drift");
        assert!(
            e.verdict.reasons[0]
                .message
                .contains("grew from 40 to 840,000")
        );
        l.drift_from = None;
        assert_eq!(
            action(&p, &with_audience(facts(1, 0), 840_000, vec![l])),
            Action::Accept
        );
    }

    #[test]
    fn scope_holds_expansions_beyond_the_senders_organisation() {
        let p = Policy {
            scopes: vec![Scope {
                senders: AddressGlobs::new(["*@trust-a.example"]).unwrap(),
                may_reach: DomainSet::new(["trust-a.example"]).unwrap(),
                may_reach_text: "trust-a.example".into(),
                action: Action::Quarantine,
                monitor: false,
            }],
            ..Policy::default()
        };
        let national = list(
            "all@nhs.example",
            1000,
            &[("trust-b.example", 990), ("trust-a.example", 10)],
        );
        let local = list("staff@trust-a.example", 10, &[("trust-a.example", 10)]);
        let mut f = with_audience(facts(1, 0), 1000, vec![national.clone(), local.clone()]);
        f.sender = "ann@trust-a.example".into();
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Quarantine);
        assert_eq!(e.verdict.reasons.len(), 1);
        assert_eq!(
            e.verdict.reasons[0].message,
            "list all@nhs.example reaches 990 of 1,000 mailboxes (99.0%) outside trust-a.example"
        );
        let mut only_local = with_audience(facts(1, 0), 10, vec![local]);
        only_local.sender = "ann@trust-a.example".into();
        assert_eq!(action(&p, &only_local), Action::Accept);
        let mut other = with_audience(facts(1, 0), 1000, vec![national.clone()]);
        other.sender = "bob@trust-b.example".into();
        assert_eq!(
            action(&p, &other),
            Action::Accept,
            "no scope for this sender"
        );
        let mut forged = with_audience(facts(1, 0), 1000, vec![national.clone()]);
        forged.sender = "bob@trust-b.example".into();
        forged.sasl_login = Some("ann@trust-a.example".into());
        assert_eq!(
            action(&p, &forged),
            Action::Quarantine,
            "a forged MAIL FROM does not move a login out of its scope"
        );
        let mut uid = with_audience(facts(1, 0), 1000, vec![national]);
        uid.sender = "ann@trust-a.example".into();
        uid.sasl_login = Some("uid-7".into());
        assert_eq!(
            action(&p, &uid),
            Action::Quarantine,
            "a login no scope names is scoped by its envelope sender (that only restricts)"
        );
        uid.sender = "x@outside.example".into();
        assert_eq!(action(&p, &uid), Action::Accept);
        let mut by_login = p.clone();
        by_login.scopes[0].senders = AddressGlobs::new(["*@trust-a.example", "uid-*"]).unwrap();
        assert_eq!(
            action(&by_login, &uid),
            Action::Quarantine,
            "sites with bare logins name them in the scope's senders"
        );
    }

    /// The names `check-config` and the decision log print are the configuration's.
    #[test]
    fn modes_are_named_as_in_the_configuration() {
        for mode in [Mode::Enforce, Mode::Monitor] {
            let toml = serde_json::to_string(&mode).unwrap();
            assert_eq!(toml, format!("\"{}\"", mode.as_str()));
        }
        assert_eq!(Mode::Monitor.as_str(), "monitor");
    }

    #[test]
    fn a_released_copy_is_held_whatever_the_mode_the_exemptions_and_the_rules_say() {
        let mut monitor = policy();
        monitor.mode = Mode::Monitor;
        let braked = StateFacts {
            brake: Some(BrakeFact { min_audience: 1 }),
            ..StateFacts::default()
        };
        let mut storms = policy();
        storms.storm.min_audience = 1;
        for (released, message) in [
            (
                ReleasedCopy::Accepted { request: 7 },
                "the copy made for release request 7, held until the worker releases it to \
                 the chosen recipients",
            ),
            (
                ReleasedCopy::Late {
                    why: "request 7 is done".into(),
                },
                "a copy made for a release to chosen recipients that is over (request 7 is \
                 done): held for an admin",
            ),
        ] {
            // Reject level (2,000 envelope recipients), an exempt sender, monitor mode.
            for (p, mut f) in [
                (policy(), facts(3000, 0)),
                (policy(), facts(1, 0)),
                (monitor.clone(), facts(1, 0)),
            ] {
                f.sender = "bulk@example.org".into();
                f.released = Some(released.clone());
                let e = super::evaluate(&p, &f, &braked);
                let v = &e.verdict;
                assert_eq!(v.action, Action::Quarantine, "never refused: {f:?}");
                assert_eq!(v.intended, Action::Quarantine);
                assert_eq!(v.exempt_by, None);
                assert_eq!(v.reasons.len(), 1);
                assert_eq!(v.reasons[0].rule, "copy");
                assert!(!v.reasons[0].monitor);
                assert_eq!(v.reasons[0].message, message);
                assert_eq!(e.counts.envelope, f.recipients.len(), "counted for the log");
            }
            let mut reply = facts(3, 0);
            reply.headers.in_reply_to = vec!["<1@example.org>".into()];
            reply.headers.subject = Some("Re: x".into());
            assert!(!state_plan(&storms, &reply).is_empty());
            reply.released = Some(released);
            assert!(
                state_plan(&storms, &reply).is_empty(),
                "asks the state nothing"
            );
        }
        let plain = facts(1, 0);
        assert_eq!(evaluate(&policy(), &plain).verdict.action, Action::Accept);
    }
}
