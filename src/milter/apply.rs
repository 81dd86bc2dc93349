// SPDX-License-Identifier: GPL-3.0-or-later
//! Turns a verdict into milter actions and an SMTP reply. The only place that calls
//! `ContextActions`.

use super::session::VERDICT_HEADER;
use crate::config::Replies;
use crate::policy::{Action, Verdict};
use crate::text;
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
/// Neutralised ([`text::neutralize`]): reasons carry list names, DNs and filters from
/// the directory and subjects from mail, and none of them may break the header line.
pub fn header_value(verdict: &Verdict) -> String {
    let head = if verdict.is_monitored() {
        format!("{} (monitor: would {})", verdict.action, verdict.intended)
    } else {
        verdict.action.to_string()
    };
    bounded(&format!("{head}; {}", verdict.summary()))
}

/// The reason given to Postfix with a quarantine (shown by `postqueue`), neutralised.
pub fn quarantine_reason(verdict: &Verdict) -> String {
    bounded(&verdict.summary())
}

/// The SMTP reply of a tempfail or reject verdict: code, enhanced code and text (the
/// deciding rule's own reply, else the `[reply]` template), as the milter sends it.
pub fn smtp_reply(
    verdict: &Verdict,
    replies: &Replies,
    queue_id: &str,
) -> Option<(&'static str, &'static str, String)> {
    let summary = verdict.summary();
    let text = |fallback: fn(&Replies, &str, &str) -> String| match verdict.own_reply() {
        Some(own) => replies.own_text(own, &summary, queue_id),
        None => fallback(replies, &summary, queue_id),
    };
    match verdict.action {
        Action::Tempfail => Some(("451", "4.7.1", text(Replies::tempfail_text))),
        Action::Reject => Some(("550", "5.7.1", text(Replies::reject_text))),
        Action::Accept | Action::Tag | Action::Quarantine => None,
    }
}

/// Neutralised, at most [`MAX_TEXT`] bytes.
fn bounded(text: &str) -> String {
    let mut text = text::neutralize(text).into_owned();
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
                .quarantine(quarantine_reason(verdict))
                .await
                .map_err(act("quarantine"))?;
            Ok(Status::Continue)
        }
        Action::Tempfail | Action::Reject => {
            let Some((code, enhanced, text)) = smtp_reply(verdict, replies, queue_id) else {
                return Err(ApplyError::Reply(format!(
                    "no reply for {}",
                    verdict.action
                )));
            };
            cx.reply
                .set_error_reply(code, Some(enhanced), [text.as_str()])
                .map_err(|e| ApplyError::Reply(e.to_string()))?;
            Ok(if verdict.action == Action::Reject {
                Status::Reject
            } else {
                Status::Tempfail
            })
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

    fn verdict_with(action: Action, message: &str) -> Verdict {
        let mut v = Verdict::accept();
        v.action = action;
        v.intended = action;
        v.reasons.push(Reason {
            reply: None,
            rule: "restricted",
            action,
            message: message.into(),
            monitor: false,
        });
        v
    }

    /// A group whose DN or memberURL filter (from LDAP, editable by whoever may edit the
    /// group) carries CR/LF cannot add a header to held mail, nor a line to a reply.
    #[test]
    fn directory_text_with_line_breaks_cannot_add_a_header() {
        let ldap = "list cn=staff\r\nBcc: all@corp.example\r\nX-Evil: 1,ou=groups (memberURL \
                    ldap:///ou=people??sub?(x=1)\nReply-To: evil@example.org) \u{1b}[2J \u{202e}";
        let v = verdict_with(Action::Quarantine, ldap);
        for text in [header_value(&v), quarantine_reason(&v)] {
            assert!(
                !text.contains(['\r', '\n', '\u{1b}', '\u{202e}']),
                "{text:?}"
            );
            assert!(
                text.contains("cn=staff\\x0D\\x0ABcc: all@corp.example\\x0D\\x0AX-Evil: 1"),
                "{text}"
            );
            assert!(text.contains("\\x1B[2J \\u{202E}"), "{text}");
        }
        let replies = Replies {
            contact: "the service desk".into(),
            reject: "Not sent: {reason} ({queue_id})".into(),
            tempfail: "Later: {reason}".into(),
        };
        for action in [Action::Reject, Action::Tempfail] {
            let (code, _, text) =
                smtp_reply(&verdict_with(action, ldap), &replies, "Q").expect("a reply");
            assert!(code == "550" || code == "451");
            assert!(!text.contains(['\r', '\n', '\u{1b}']), "{text:?}");
            assert!(text.contains("cn=staff\\x0D\\x0ABcc:"), "{text}");
        }
    }
}
