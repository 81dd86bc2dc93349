// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter explain`: runs the policy core offline on one message.

use crate::config::Config;
use crate::directory::Directory;
use crate::message::extract;
use crate::milter::apply::{header_value, smtp_reply};
use crate::policy::{self, Action, Evaluation, MessageFacts, RecipientSet};

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
pub fn explain(config: &Config, directory: &Directory, input: ExplainInput) -> Explanation {
    let form = config.postfix.address_form();
    let sender = form.canonical(&input.from);
    let mut recipients = RecipientSet::with_form(form);
    for r in &input.rcpts {
        recipients.add(r);
    }
    let headers = input.message.as_deref().map(extract).unwrap_or_default();
    let audience = directory.message_audience(&recipients, &headers);
    let facts = MessageFacts {
        state: Default::default(),
        queue_id: None,
        sender,
        sasl_login: input.sasl_login,
        client: input.client,
        recipients,
        headers,
        audience,
    };
    let evaluation = policy::evaluate(&config.policy, &facts);
    let v = &evaluation.verdict;
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
        Action::Tempfail | Action::Reject => {
            let (code, enhanced, text) =
                smtp_reply(v, &config.replies, "NOQUEUE").unwrap_or_default();
            let how = if v.action == Action::Reject {
                "refused"
            } else {
                "refused for now"
            };
            format!("{how}: {code} {enhanced} {text}")
        }
    };
    Explanation {
        facts,
        evaluation,
        effect,
    }
}
