// SPDX-License-Identifier: GPL-3.0-or-later
//! What a verdict does to a message: the header it gets, whether Postfix holds it and
//! why, the SMTP reply it is refused with. The one mapping from verdict to effect: the
//! milter carries an [`Effect`] out, `explain` prints the same one.

use super::reply::Replies;
use super::verdict::{Action, Verdict};
use crate::text;

/// The header this milter adds; copies of it arriving from outside are removed.
pub const VERDICT_HEADER: &str = "X-Fanout-Verdict";

/// Queue id shown when Postfix did not send macro `i` (and by `explain`, which has no
/// queue id).
pub const NO_QUEUE_ID: &str = "NOQUEUE";

/// Longest header value and hold reason we write.
const MAX_TEXT: usize = 900;

/// An SMTP reply: code, enhanced code and one line of text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// `451` or `550`.
    pub code: &'static str,
    /// `4.7.1` or `5.7.1`.
    pub enhanced: &'static str,
    /// The rendered text.
    pub text: String,
}

/// What the milter does with one message at end of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The verdict's action.
    pub action: Action,
    /// Remove the [`VERDICT_HEADER`] copies that came with the message: for every
    /// message that may leave (accepted, tagged or held), so that only ours is trusted.
    pub strip_foreign: bool,
    /// The [`VERDICT_HEADER`] value to add (tagged and held mail), neutralised.
    pub header: Option<String>,
    /// Put the message on hold with this reason, neutralised.
    pub hold: Option<String>,
    /// Refuse the message with this reply (tempfail and reject).
    pub reply: Option<Reply>,
}

/// The effect of `verdict`, with replies rendered from `replies` for `queue_id`.
pub fn effect(verdict: &Verdict, replies: &Replies, queue_id: &str) -> Effect {
    let action = verdict.action;
    let header = matches!(action, Action::Tag | Action::Confirm | Action::Quarantine)
        .then(|| header_value(verdict));
    let hold = matches!(action, Action::Confirm | Action::Quarantine).then(|| hold_reason(verdict));
    Effect {
        action,
        strip_foreign: action <= Action::Quarantine,
        header,
        hold,
        reply: smtp_reply(verdict, replies, queue_id),
    }
}

impl Effect {
    /// True when the effect carries out its action: a hold has its reason, a refusal
    /// its reply. An incomplete effect must never be applied (a refusal without a
    /// reply would let the message through): the milter tempfails it instead.
    pub fn is_complete(&self) -> bool {
        match self.action {
            Action::Accept | Action::Tag => true,
            Action::Confirm | Action::Quarantine => self.hold.is_some(),
            Action::Tempfail | Action::Reject => self.reply.is_some(),
        }
    }

    /// True when the message leaves the relay once the effect is carried out (accepted
    /// or tagged): the rate and breaker books count it as sent.
    pub fn leaves(&self) -> bool {
        self.action <= Action::Tag
    }

    /// What happens to the message, in words (the `effect` of `explain`).
    pub fn describe(&self) -> String {
        if let Some(reply) = &self.reply {
            let how = if self.action == Action::Reject {
                "refused"
            } else {
                "refused for now"
            };
            return format!("{how}: {} {} {}", reply.code, reply.enhanced, reply.text);
        }
        match (&self.hold, &self.header) {
            (Some(_), Some(h)) if self.action == Action::Confirm => format!(
                "held in the Postfix hold queue until the sender confirms or withdraws it, \
                 with header \"{VERDICT_HEADER}: {h}\""
            ),
            (Some(_), Some(h)) => {
                format!("held in the Postfix hold queue, with header \"{VERDICT_HEADER}: {h}\"")
            }
            (Some(_), None) => "held in the Postfix hold queue".to_owned(),
            (None, Some(h)) => format!("passed with header \"{VERDICT_HEADER}: {h}\""),
            (None, None) => "passed unchanged".to_owned(),
        }
    }
}

/// The [`VERDICT_HEADER`] value for a verdict, e.g.
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

/// The reason given to Postfix with a hold (shown by `postqueue`), neutralised.
pub fn hold_reason(verdict: &Verdict) -> String {
    bounded(&verdict.summary())
}

/// The SMTP reply of a tempfail or reject verdict: code, enhanced code and text (the
/// deciding rule's own reply, else the `[reply]` template); none for other verdicts.
pub fn smtp_reply(verdict: &Verdict, replies: &Replies, queue_id: &str) -> Option<Reply> {
    let summary = verdict.summary();
    let text = |fallback: fn(&Replies, &str, &str) -> String| match verdict.own_reply() {
        Some(own) => replies.own_text(own, &summary, queue_id),
        None => fallback(replies, &summary, queue_id),
    };
    let (code, enhanced, text) = match verdict.action {
        Action::Tempfail => ("451", "4.7.1", text(Replies::tempfail_text)),
        Action::Reject => ("550", "5.7.1", text(Replies::reject_text)),
        Action::Accept | Action::Tag | Action::Confirm | Action::Quarantine => return None,
    };
    Some(Reply {
        code,
        enhanced,
        text,
    })
}

/// The 451 reply of a message that could not be decided (a fault, not a verdict):
/// the `[reply] tempfail` template with `reason`, or a fixed text when no configuration
/// was in force yet.
pub fn fault_reply(replies: Option<&Replies>, reason: &str, queue_id: &str) -> Reply {
    let text = match replies {
        Some(r) => r.tempfail_text(reason, queue_id),
        None => "Message could not be checked; try again later".to_owned(),
    };
    Reply {
        code: "451",
        enhanced: "4.7.1",
        text,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;
    use crate::policy::verdict::OwnReply;

    /// Header and hold texts are cut at [`MAX_TEXT`] bytes, on a character boundary,
    /// with "..." at the end; a text of exactly that size is kept whole.
    #[test]
    fn long_texts_are_cut_to_max_text_bytes_on_a_char_boundary() {
        let exact = "a".repeat(MAX_TEXT);
        assert_eq!(bounded(&exact), exact);
        let cut = bounded(&"a".repeat(MAX_TEXT + 1));
        assert_eq!(cut.len(), MAX_TEXT);
        assert!(cut.ends_with("a..."), "{cut}");
        let wide = bounded(&"\u{e9}".repeat(MAX_TEXT));
        assert!(wide.ends_with("..."));
        assert!(
            (MAX_TEXT - 1..=MAX_TEXT).contains(&wide.len()),
            "{}",
            wide.len()
        );
    }

    #[test]
    fn every_effect_is_complete_and_one_without_its_reply_or_hold_is_not() {
        for action in Action::ALL {
            let mut v = Verdict::accept();
            v.action = action;
            let mut e = effect(&v, &replies(), "Q1");
            assert_eq!(
                e.hold.is_some(),
                matches!(action, Action::Confirm | Action::Quarantine),
                "{action:?} holds"
            );
            assert_eq!(
                e.header.is_some(),
                matches!(action, Action::Tag | Action::Confirm | Action::Quarantine),
                "{action:?} is tagged"
            );
            assert_eq!(e.reply.is_some(), action >= Action::Tempfail, "{action:?}");
            assert_eq!(e.strip_foreign, action <= Action::Quarantine, "{action:?}");
            assert_eq!(e.leaves(), action <= Action::Tag, "{action:?}");
            assert!(e.is_complete(), "{action:?}");
            e.hold = None;
            e.reply = None;
            assert_eq!(
                e.is_complete(),
                matches!(action, Action::Accept | Action::Tag),
                "{action:?} without hold and reply"
            );
        }
    }

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

    fn replies() -> Replies {
        Replies {
            contact: "the service desk".into(),
            reject: "Not sent: {reason} ({queue_id})".into(),
            tempfail: "Later: {reason}".into(),
        }
    }

    /// A group whose DN or memberURL filter (from LDAP, editable by whoever may edit the
    /// group) carries CR/LF cannot add a header to held mail, nor a line to a reply.
    #[test]
    fn directory_text_with_line_breaks_cannot_add_a_header() {
        let ldap = "list cn=staff\r\nBcc: all@corp.example\r\nX-Evil: 1,ou=groups (memberURL \
                    ldap:///ou=people??sub?(x=1)\nReply-To: evil@example.org) \u{1b}[2J \u{202e}";
        let v = verdict_with(Action::Quarantine, ldap);
        for text in [header_value(&v), hold_reason(&v)] {
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
        let replies = replies();
        for action in [Action::Reject, Action::Tempfail] {
            let reply = smtp_reply(&verdict_with(action, ldap), &replies, "Q").expect("a reply");
            assert!(reply.code == "550" || reply.code == "451");
            assert!(!reply.text.contains(['\r', '\n', '\u{1b}']), "{reply:?}");
            assert!(reply.text.contains("cn=staff\\x0D\\x0ABcc:"), "{reply:?}");
        }
    }

    #[test]
    fn each_action_has_its_own_effect() {
        let r = replies();
        let accept = effect(&Verdict::accept(), &r, "Q");
        assert_eq!(
            accept,
            Effect {
                action: Action::Accept,
                strip_foreign: true,
                header: None,
                hold: None,
                reply: None,
            }
        );
        assert!(accept.leaves());
        assert_eq!(accept.describe(), "passed unchanged");

        let tag = effect(&verdict_with(Action::Tag, "big"), &r, "Q");
        assert!(tag.strip_foreign && tag.leaves());
        assert_eq!(tag.header.as_deref(), Some("tag; restricted: big"));
        assert_eq!((tag.hold.as_deref(), tag.reply.as_ref()), (None, None));
        assert_eq!(
            tag.describe(),
            "passed with header \"X-Fanout-Verdict: tag; restricted: big\""
        );

        let held = effect(&verdict_with(Action::Quarantine, "big"), &r, "Q");
        assert!(held.strip_foreign && !held.leaves());
        assert_eq!(held.header.as_deref(), Some("quarantine; restricted: big"));
        assert_eq!(held.hold.as_deref(), Some("restricted: big"));
        assert_eq!(held.reply, None);
        assert_eq!(
            held.describe(),
            "held in the Postfix hold queue, with header \"X-Fanout-Verdict: quarantine; restricted: big\""
        );
        let asked = effect(&verdict_with(Action::Confirm, "big"), &r, "Q");
        assert_eq!(asked.hold.as_deref(), Some("restricted: big"));
        assert_eq!(
            asked.describe(),
            "held in the Postfix hold queue until the sender confirms or withdraws it, with \
             header \"X-Fanout-Verdict: confirm; restricted: big\""
        );

        let later = effect(&verdict_with(Action::Tempfail, "big"), &r, "Q");
        assert!(!later.strip_foreign && !later.leaves());
        assert_eq!(
            (later.header.as_deref(), later.hold.as_deref()),
            (None, None)
        );
        assert_eq!(
            later.reply,
            Some(Reply {
                code: "451",
                enhanced: "4.7.1",
                text: "Later: restricted: big".into()
            })
        );
        assert_eq!(
            later.describe(),
            "refused for now: 451 4.7.1 Later: restricted: big"
        );

        let never = effect(&verdict_with(Action::Reject, "big"), &r, "Q1");
        assert!(!never.strip_foreign && !never.leaves());
        assert_eq!(
            (never.header.as_deref(), never.hold.as_deref()),
            (None, None)
        );
        assert_eq!(
            never.describe(),
            "refused: 550 5.7.1 Not sent: restricted: big (Q1)"
        );
    }

    /// A held effect without a header is not one [`effect`] makes, but its words must
    /// still say that the message is held.
    #[test]
    fn a_hold_is_described_as_a_hold_with_or_without_a_header() {
        let held = Effect {
            action: Action::Quarantine,
            strip_foreign: true,
            header: None,
            hold: Some("x".into()),
            reply: None,
        };
        assert_eq!(held.describe(), "held in the Postfix hold queue");
    }

    /// The deciding rule's own reply (`[storm] reply`, `[rate] reply`) replaces the
    /// `[reply]` template, in the milter and in `explain` alike.
    #[test]
    fn the_deciding_rules_own_reply_wins() {
        let mut v = verdict_with(Action::Reject, "storm on x");
        v.reasons[0].rule = "storm";
        v.reasons[0].reply = Some(OwnReply {
            template: "Storm on {subject}; ask {contact} ({queue_id})".into(),
            values: vec![("subject", "Re: rota".into())],
        });
        let e = effect(&v, &replies(), "Q7");
        assert_eq!(
            e.reply.expect("a reply").text,
            "Storm on Re: rota; ask the service desk (Q7)"
        );
    }

    #[test]
    fn a_fault_is_a_451_with_the_template_or_a_fixed_text() {
        let r = replies();
        assert_eq!(
            fault_reply(Some(&r), "internal error", "Q"),
            Reply {
                code: "451",
                enhanced: "4.7.1",
                text: "Later: internal error".into()
            }
        );
        assert_eq!(
            fault_reply(None, "internal error", "Q").text,
            "Message could not be checked; try again later"
        );
    }
}
