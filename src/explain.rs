// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter explain`: runs the policy core offline on one message.

use crate::config::Config;
use crate::message::extract;
use crate::milter::apply::header_value;
use crate::policy::{self, Action, Evaluation, MessageFacts, RecipientSet, address::normalize};
use serde_json::json;
use std::fmt::Write as _;

/// What `explain` evaluates.
#[derive(Clone, Debug, Default)]
pub struct ExplainInput {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
    /// SASL login.
    pub sasl_login: Option<String>,
    /// Client address.
    pub client: Option<String>,
    /// The message (headers at least), if given.
    pub message: Option<Vec<u8>>,
}

/// The facts and evaluation of one message, ready to print.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The facts evaluated.
    pub facts: MessageFacts,
    /// The result.
    pub evaluation: Evaluation,
    /// What the milter would do at end of message, in words.
    pub effect: String,
}

/// Evaluates one message with the same code the milter runs.
pub fn explain(config: &Config, input: ExplainInput) -> Explanation {
    let facts = MessageFacts {
        queue_id: None,
        sender: normalize(&input.from),
        sasl_login: input.sasl_login,
        client: input.client,
        recipients: input.rcpts.iter().collect::<RecipientSet>(),
        headers: input.message.as_deref().map(extract).unwrap_or_default(),
    };
    let evaluation = policy::evaluate(&config.policy, &facts);
    let v = &evaluation.verdict;
    let summary = v.summary();
    let effect = match v.action {
        Action::Accept => "passed unchanged".to_owned(),
        Action::Tag => format!(
            "passed with header \"X-Fanout-Verdict: {}\"",
            header_value(v)
        ),
        Action::Quarantine => format!(
            "held in the Postfix hold queue, with header \"X-Fanout-Verdict: {}\"",
            header_value(v)
        ),
        Action::Tempfail => format!(
            "refused for now: 451 4.7.1 {}",
            config.replies.tempfail_text(&summary, "NOQUEUE")
        ),
        Action::Reject => format!(
            "refused: 550 5.7.1 {}",
            config.replies.reject_text(&summary, "NOQUEUE")
        ),
    };
    Explanation {
        facts,
        evaluation,
        effect,
    }
}

impl Explanation {
    /// The JSON document of the `explain --json` contract.
    pub fn to_json(&self) -> serde_json::Value {
        let v = &self.evaluation.verdict;
        let c = &self.evaluation.counts;
        json!({
            "verdict": v.action,
            "intended": v.intended,
            "monitor": v.is_monitored(),
            "reasons": v.reasons,
            "exempt_by": v.exempt_by,
            "envelope_recipients": c.envelope,
            "visible_recipients": c.visible,
            "audience": c.audience,
            "external_recipients": c.external,
            "effect": self.effect,
            "sender": self.facts.sender,
            "subject": self.facts.headers.subject,
            "message_id": self.facts.headers.message_id,
        })
    }

    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let v = &self.evaluation.verdict;
        let c = &self.evaluation.counts;
        let mut out = String::new();
        let _ = writeln!(out, "verdict: {}", v.action);
        if v.is_monitored() {
            let _ = writeln!(out, "  (monitor mode: would {})", v.intended);
        }
        if let Some(p) = &v.exempt_by {
            let _ = writeln!(out, "  exempt: sender matches [exempt] senders \"{p}\"");
        }
        for r in &v.reasons {
            let monitor = if r.monitor { " [monitor]" } else { "" };
            let _ = writeln!(out, "  {} ({}{monitor}): {}", r.rule, r.action, r.message);
        }
        let _ = writeln!(out, "effect: {}", self.effect);
        let _ = writeln!(out, "envelope recipients: {}", c.envelope);
        let _ = writeln!(out, "external recipients: {}", c.external);
        let _ = writeln!(out, "visible recipients (To/Cc): {}", c.visible);
        let _ = writeln!(out, "audience: {}", c.audience);
        if let Some(s) = &self.facts.headers.subject {
            let _ = writeln!(out, "subject: {s}");
        }
        out
    }
}
