// SPDX-License-Identifier: GPL-3.0-or-later
//! Carries an [`Effect`] out at end of message: the only place that calls
//! `ContextActions`. What the effect is was decided by the policy
//! ([`crate::policy::effect`](mod@crate::policy::effect)); here it only meets indymilter.

use super::session::Session;
use crate::policy::{Action, Effect, Reply, VERDICT_HEADER};
use indymilter::{ActionError, ContextActions, EomContext, SetErrorReply, SmtpReply, Status};
use tracing::warn;

/// Why an effect could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The MTA did not grant an action the effect needs.
    #[error("cannot {what}: {source}")]
    Action {
        /// What we tried.
        what: &'static str,
        /// indymilter's error.
        #[source]
        source: ActionError,
    },
    /// The reply text was refused by the milter library.
    #[error("cannot set the SMTP reply: {0}")]
    Reply(String),
    /// The effect lacks what its action needs (a hold reason, a reply).
    #[error("incomplete effect for {0}: nothing applied")]
    Incomplete(Action),
}

/// Sets the reply of a message that could not be decided (a 451
/// [`fault_reply`](crate::policy::effect::fault_reply)) and returns the matching status.
pub fn tempfail(reply: &mut SmtpReply, fault: &Reply, queue_id: &str) -> Status {
    match reply.set_error_reply(fault.code, Some(fault.enhanced), [fault.text.as_str()]) {
        Ok(()) => {}
        Err(e) => warn!(queue_id, "cannot set tempfail text: {e}"),
    }
    Status::Tempfail
}

/// Removes the `count` copies of header `name` that came with the message; a failure
/// is logged, and the caller decides what it means.
pub async fn remove_headers(
    cx: &mut EomContext<Session>,
    name: &str,
    count: i32,
) -> Result<(), ActionError> {
    for index in (1..=count).rev() {
        cx.actions.change_header(name, index, None::<&str>).await?;
    }
    Ok(())
}

/// Carries out an effect at end of message: removes the `foreign_verdict_headers`
/// copies of our header that came with the message, adds ours, holds, or sets the
/// refusal reply.
pub async fn apply(
    cx: &mut EomContext<Session>,
    effect: &Effect,
    queue_id: &str,
    foreign_verdict_headers: i32,
) -> Result<Status, ApplyError> {
    if !effect.is_complete() {
        return Err(ApplyError::Incomplete(effect.action));
    }
    if effect.strip_foreign {
        for index in (1..=foreign_verdict_headers).rev() {
            if let Err(e) = cx
                .actions
                .change_header(VERDICT_HEADER, index, None::<&str>)
                .await
            {
                warn!(
                    queue_id,
                    "cannot remove an {VERDICT_HEADER} header that came with the message: {e}"
                );
                break;
            }
        }
    }
    if let Some(value) = &effect.header
        && let Err(e) = cx.actions.add_header(VERDICT_HEADER, value.as_str()).await
    {
        if effect.hold.is_some() {
            warn!(
                queue_id,
                "cannot add {VERDICT_HEADER} to a held message: {e}"
            );
        } else {
            warn!(
                queue_id,
                "cannot add {VERDICT_HEADER}; message passes untagged: {e}"
            );
        }
    }
    if let Some(reason) = &effect.hold {
        cx.actions
            .quarantine(reason.as_str())
            .await
            .map_err(|source| ApplyError::Action {
                what: "quarantine",
                source,
            })?;
    }
    let Some(reply) = &effect.reply else {
        return Ok(Status::Continue);
    };
    cx.reply
        .set_error_reply(reply.code, Some(reply.enhanced), [reply.text.as_str()])
        .map_err(|e| ApplyError::Reply(e.to_string()))?;
    Ok(if effect.action == Action::Reject {
        Status::Reject
    } else {
        Status::Tempfail
    })
}
