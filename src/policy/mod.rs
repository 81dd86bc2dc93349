// SPDX-License-Identifier: GPL-3.0-or-later
//! The pure policy core: message facts and configuration in, verdict out.
//!
//! Nothing in this module does I/O, reads a clock or touches the milter protocol, so
//! every rule is unit-tested with plain values and `explain` runs the very same code
//! offline.

pub mod address;
pub mod facts;
pub mod rules;
pub mod verdict;

pub use address::{AddressGlobs, DomainSet};
pub use facts::{HeaderFacts, MessageFacts, RecipientSet};
pub use rules::Levels;
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
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Global enforcement mode.
    pub mode: Mode,
    /// `[domains] internal`.
    pub internal: DomainSet,
    /// `[limits.envelope]`: distinct envelope recipients.
    pub envelope: Levels,
    /// `[limits.external]`: envelope recipients outside the internal domains.
    pub external: Levels,
    /// `[exempt] senders`: envelope senders or SASL logins no rule applies to.
    pub exempt: AddressGlobs,
}

/// The numbers a verdict was based on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Distinct envelope recipients.
    pub envelope: usize,
    /// Distinct To/Cc addresses in the headers.
    pub visible: usize,
    /// Final mailboxes the message reaches. Without directory sources this equals the
    /// envelope count.
    pub audience: usize,
    /// Envelope recipients outside `[domains] internal`.
    pub external: usize,
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
    let external = facts
        .recipients
        .iter()
        .filter(|r| !policy.internal.is_internal(r))
        .count();
    Counts {
        envelope,
        visible: facts.headers.visible.len(),
        audience: envelope,
        external,
    }
}

/// Decides one message.
pub fn evaluate(policy: &Policy, facts: &MessageFacts) -> Evaluation {
    let counts = count(policy, facts);
    if let Some(pattern) = exemption(policy, facts) {
        let mut verdict = Verdict::accept();
        verdict.exempt_by = Some(pattern.to_owned());
        return Evaluation { verdict, counts };
    }

    let fired: Vec<(Reason, bool)> = [
        rules::envelope(&policy.envelope, &counts),
        rules::external(&policy.external, &counts),
    ]
    .into_iter()
    .flatten()
    .collect();

    Evaluation {
        verdict: combine(policy.mode, fired),
        counts,
    }
}

fn exemption<'p>(policy: &'p Policy, facts: &MessageFacts) -> Option<&'p str> {
    policy.exempt.first_match(&facts.sender).or_else(|| {
        facts
            .sasl_login
            .as_deref()
            .and_then(|login| policy.exempt.first_match(login))
    })
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

    fn levels(tag: u64, quarantine: u64, reject: u64) -> Levels {
        Levels {
            tag,
            quarantine,
            reject,
            monitor: false,
        }
    }

    fn policy() -> Policy {
        Policy {
            mode: Mode::Enforce,
            internal: DomainSet::new(["example.org", "*.example.org"]).unwrap(),
            envelope: levels(50, 200, 2000),
            external: levels(0, 100, 0),
            exempt: AddressGlobs::new(["bulk@example.org", "svc-*@example.org"]).unwrap(),
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
    fn exempt_sender_or_login_bypasses_rules() {
        let p = policy();
        let mut f = facts(5000, 0);
        f.sender = "BULK@example.org".into();
        let e = evaluate(&p, &f);
        assert_eq!(e.verdict.action, Action::Accept);
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
    fn null_sender_is_never_exempt_by_glob() {
        let mut p = policy();
        p.exempt = AddressGlobs::new(["*"]).unwrap();
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
}
