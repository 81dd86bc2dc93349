// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter explain`: runs the policy core offline on one message.

use crate::config::Config;
use crate::decide::{Envelope, NoState, Offline, decide, gather};
use crate::directory::Directory;
use crate::message::extract;
use crate::policy::{Evaluation, MessageFacts, NO_QUEUE_ID};
use futures_util::FutureExt;
use std::sync::Arc;

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
    /// The lists among the facts that a `[[list]]` restricts by name (the policy's
    /// [`Restricted::lists`](crate::policy::Restricted::lists)).
    pub restricted: Vec<Arc<str>>,
}

/// Decides one message with the same code the milter runs ([`decide`]), without the
/// shared state: storms, rate budgets and the breaker are taken as quiet.
pub fn explain(config: &Config, directory: &Directory, input: ExplainInput) -> Explanation {
    let mut envelope = Envelope::new(config.postfix.address_form(), &input.from, input.sasl_login);
    envelope.client = input.client;
    for r in &input.rcpts {
        envelope.add_recipient(r);
    }
    let headers = input.message.as_deref().map(extract).unwrap_or_default();
    let facts = gather(directory, envelope, headers);
    // Offline: no daemon, so no shared state (no storm in progress, every rate budget
    // with room, the breaker not tripped), no record and nothing applied.
    let decision = decide(
        &config.policy,
        &config.replies,
        &facts,
        NO_QUEUE_ID,
        &mut NoState,
        &mut Offline::new(),
    )
    .now_or_never()
    .expect("offline ports never wait");
    let Ok(decision) = decision;
    let restricted = facts
        .audience
        .iter()
        .flat_map(|a| &a.lists)
        .filter(|l| config.policy.restricted.by_name(&l.address).is_some())
        .map(|l| l.address.clone())
        .collect();
    Explanation {
        facts,
        evaluation: decision.evaluation,
        effect: decision.effect.describe(),
        restricted,
    }
}
