// SPDX-License-Identifier: GPL-3.0-or-later
//! Actions and verdicts: what the policy core decides for one message.

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// What happens to a message, ordered from mildest to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pass unchanged.
    Accept,
    /// Pass, with an `X-Fanout-Verdict` header and a log line.
    Tag,
    /// Hold until the sender confirms they meant it (send) or withdraws it; an admin
    /// may still act. Only for rules where that is the whole question (`[hidden]`,
    /// `[restricted]`), and only up to their `confirm_max_audience`.
    Confirm,
    /// Put on Postfix's hold queue for an admin to review.
    Quarantine,
    /// Refuse for now with a 4xx reply; the client retries.
    Tempfail,
    /// Refuse with a 5xx reply that tells the sender what happened.
    Reject,
}

impl Action {
    /// Every action, least severe first.
    pub const ALL: [Action; 6] = [
        Action::Accept,
        Action::Tag,
        Action::Confirm,
        Action::Quarantine,
        Action::Tempfail,
        Action::Reject,
    ];

    /// The lowercase name used in logs, headers and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Tag => "tag",
            Action::Confirm => "confirm",
            Action::Quarantine => "quarantine",
            Action::Tempfail => "tempfail",
            Action::Reject => "reject",
        }
    }

    /// True for actions that stop or delay the message (confirm, quarantine, tempfail,
    /// reject).
    pub fn is_enforcement(self) -> bool {
        self > Action::Tag
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule that fired, with the numbers that made it fire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Config key of the rule, e.g. `limits.envelope`.
    pub rule: &'static str,
    /// What this rule asks for (before monitor mode).
    pub action: Action,
    /// Human-readable detail, e.g. "240 envelope recipients >= quarantine level 200".
    pub message: String,
    /// True when this rule is in monitor mode and its action was downgraded to a tag.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub monitor: bool,
    /// A whole SMTP reply text for this rule instead of the `[reply]` template, when the
    /// rule decides the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<OwnReply>,
}

/// A rule's own SMTP reply: its template (`[storm] reply`, `[rate] reply`) and the facts
/// the rule fills in (`{subject}`, `{list}`, `{audience}`). The milter adds `{contact}`,
/// `{queue_id}` and `{reason}` and renders the whole template once
/// ([`crate::text::render`]), so no text taken from a message is ever scanned for
/// placeholders. Serialised as the template filled with the rule's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnReply {
    /// The template, as configured.
    pub template: String,
    /// The rule's facts by placeholder name.
    pub values: Vec<(&'static str, String)>,
}

impl OwnReply {
    /// The template filled with the rule's facts and `more`, in one pass.
    pub fn render(&self, more: &[(&str, &str)]) -> String {
        let mut values: Vec<(&str, &str)> =
            self.values.iter().map(|(n, v)| (*n, v.as_str())).collect();
        values.extend_from_slice(more);
        crate::text::render(&self.template, &values)
    }
}

impl Serialize for OwnReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.render(&[]))
    }
}

/// The outcome of evaluating one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The action to apply.
    pub action: Action,
    /// The action the rules asked for before any monitor mode downgraded it.
    pub intended: Action,
    /// Every rule that fired, most severe first.
    pub reasons: Vec<Reason>,
    /// The `[exempt] senders` pattern that exempted this message, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exempt_by: Option<String>,
    /// A held message's sender is told at once ([`super::tell_sender`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub notify_sender: bool,
}

impl Verdict {
    /// A verdict with no rule fired.
    pub fn accept() -> Self {
        Verdict {
            action: Action::Accept,
            intended: Action::Accept,
            reasons: Vec::new(),
            exempt_by: None,
            notify_sender: false,
        }
    }

    /// True when monitor mode turned an enforcement into a tag.
    pub fn is_monitored(&self) -> bool {
        self.intended != self.action
    }

    /// The rule names that fired, comma separated (for log lines).
    pub fn rules(&self) -> String {
        let names: Vec<&str> = self.reasons.iter().map(|r| r.rule).collect();
        names.join(",")
    }

    /// The reply text of the rule that decided the verdict, if it brings its own.
    pub fn own_reply(&self) -> Option<&OwnReply> {
        self.reasons
            .iter()
            .find(|r| r.action == self.intended)
            .and_then(|r| r.reply.as_ref())
    }

    /// All reason messages joined with "; " (for headers, replies and logs).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .reasons
            .iter()
            .map(|r| format!("{}: {}", r.rule, r.message))
            .collect();
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_ordered_by_severity() {
        assert!(Action::Accept < Action::Tag);
        assert!(Action::Tag < Action::Confirm);
        assert!(Action::Confirm < Action::Quarantine);
        assert!(Action::Confirm.is_enforcement());
        assert_eq!(Action::Confirm.as_str(), "confirm");
        assert!(Action::Quarantine < Action::Tempfail);
        assert!(Action::Tempfail < Action::Reject);
        assert!(!Action::Tag.is_enforcement());
        assert!(
            Action::ALL.windows(2).all(|w| w[0] < w[1]),
            "least severe first"
        );
        assert!(Action::Quarantine.is_enforcement());
    }

    #[test]
    fn summary_joins_rules() {
        let v = Verdict {
            action: Action::Reject,
            intended: Action::Reject,
            reasons: vec![
                Reason {
                    reply: None,
                    rule: "limits.envelope",
                    action: Action::Reject,
                    message: "3 envelope recipients >= reject level 2".into(),
                    monitor: false,
                },
                Reason {
                    reply: None,
                    rule: "limits.external",
                    action: Action::Tag,
                    message: "1 external recipient >= tag level 1".into(),
                    monitor: false,
                },
            ],
            exempt_by: None,
            notify_sender: false,
        };
        assert_eq!(v.rules(), "limits.envelope,limits.external");
        assert_eq!(
            v.summary(),
            "limits.envelope: 3 envelope recipients >= reject level 2; \
             limits.external: 1 external recipient >= tag level 1"
        );
        assert!(!v.is_monitored());
    }
}
