// SPDX-License-Identifier: GPL-3.0-or-later
//! Turns a verdict into milter actions and an SMTP reply. The only place that calls
//! `ContextActions`.

use super::session::VERDICT_HEADER;
use crate::config::Replies;
use crate::policy::{Action, Verdict};
use indymilter::{ActionError, ContextActions, EomContext, SetErrorReply, SmtpReply, Status};
use tracing::warn;

/// Longest header value and quarantine reason we write.
const MAX_TEXT: usize = 900;

/// Why a verdict could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The MTA did not grant an action the verdict needs.
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
}

/// The `X-Fanout-Verdict` value for a verdict, e.g.
/// `quarantine; limits.envelope: 240 envelope recipients >= quarantine level 200`.
pub fn header_value(verdict: &Verdict) -> String {
    let head = if verdict.is_monitored() {
        format!("{} (monitor: would {})", verdict.action, verdict.intended)
    } else {
        verdict.action.to_string()
    };
    bounded(format!("{head}; {}", verdict.summary()))
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut cut = MAX_TEXT - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Sets a 451 4.7.1 reply and returns the matching status.
pub fn tempfail(
    reply: &mut SmtpReply,
    replies: Option<&Replies>,
    reason: &str,
    queue_id: &str,
) -> Status {
    let text = match replies {
        Some(r) => r.tempfail_text(reason, queue_id),
        None => "Message could not be checked; try again later".to_owned(),
    };
    match reply.set_error_reply("451", Some("4.7.1"), [text.as_str()]) {
        Ok(()) => {}
        Err(e) => warn!(queue_id, "cannot set tempfail text: {e}"),
    }
    Status::Tempfail
}

/// Carries out a verdict at end of message.
pub async fn apply(
    cx: &mut EomContext<super::Session>,
    verdict: &Verdict,
    replies: &Replies,
    queue_id: &str,
    foreign_verdict_headers: i32,
) -> Result<Status, ApplyError> {
    let act = |what| move |source| ApplyError::Action { what, source };
    if verdict.action <= Action::Quarantine {
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
    match verdict.action {
        Action::Accept => Ok(Status::Continue),
        Action::Tag => {
            if let Err(e) = cx
                .actions
                .add_header(VERDICT_HEADER, header_value(verdict))
                .await
            {
                warn!(
                    queue_id,
                    "cannot add {VERDICT_HEADER}; message passes untagged: {e}"
                );
            }
            Ok(Status::Continue)
        }
        Action::Quarantine => {
            if let Err(e) = cx
                .actions
                .add_header(VERDICT_HEADER, header_value(verdict))
                .await
            {
                warn!(
                    queue_id,
                    "cannot add {VERDICT_HEADER} to a held message: {e}"
                );
            }
            cx.actions
                .quarantine(bounded(verdict.summary()))
                .await
                .map_err(act("quarantine"))?;
            Ok(Status::Continue)
        }
        Action::Tempfail => match verdict.own_reply() {
            Some(own) => {
                let text = replies.own_text(own, &verdict.summary(), queue_id);
                cx.reply
                    .set_error_reply("451", Some("4.7.1"), [text.as_str()])
                    .map_err(|e| ApplyError::Reply(e.to_string()))?;
                Ok(Status::Tempfail)
            }
            None => Ok(tempfail(
                &mut cx.reply,
                Some(replies),
                &verdict.summary(),
                queue_id,
            )),
        },
        Action::Reject => {
            let text = match verdict.own_reply() {
                Some(own) => replies.own_text(own, &verdict.summary(), queue_id),
                None => replies.reject_text(&verdict.summary(), queue_id),
            };
            cx.reply
                .set_error_reply("550", Some("5.7.1"), [text.as_str()])
                .map_err(|e| ApplyError::Reply(e.to_string()))?;
            Ok(Status::Reject)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;

    #[test]
    fn header_value_names_action_and_reasons() {
        let mut v = Verdict::accept();
        v.action = Action::Tag;
        v.intended = Action::Quarantine;
        v.reasons.push(Reason {
            reply: None,
            rule: "limits.envelope",
            action: Action::Quarantine,
            message: "240 envelope recipients >= quarantine level 200".into(),
            monitor: true,
        });
        assert_eq!(
            header_value(&v),
            "tag (monitor: would quarantine); limits.envelope: 240 envelope recipients >= quarantine level 200"
        );
        v.intended = Action::Tag;
        v.reasons[0].message = "é".repeat(1000);
        let h = header_value(&v);
        assert!(h.len() <= MAX_TEXT && h.ends_with("..."));
    }
}
