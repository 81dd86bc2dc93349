// SPDX-License-Identifier: GPL-3.0-or-later
//! The `[reply]` settings and how a reply text is rendered: `{reason}`, `{contact}` and
//! `{queue_id}` filled in, one bounded line of printable ASCII. The templates are
//! checked when the configuration is loaded (`config::reply`).

use super::verdict::OwnReply;
use crate::text;

/// Longest reply text we send: RFC 5321 allows 512 octets per reply line, including
/// the code (`550 `), the enhanced code (`5.7.1 `) and CRLF. (Postfix and indymilter
/// would pass up to 980 bytes, but a client may cut or refuse a longer line.)
pub const MAX_LINE: usize = 512 - 4 - 6 - 2;

/// Longest reply template the configuration takes; a reason that does not fit beside
/// it is shortened when the reply is rendered.
pub const MAX_TEMPLATE: usize = 450;

/// Validated reply templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replies {
    /// `[reply] contact`.
    pub contact: String,
    /// `[reply] reject` template.
    pub reject: String,
    /// `[reply] tempfail` template.
    pub tempfail: String,
}

impl Replies {
    /// The reject text for a message, one line of printable ASCII.
    pub fn reject_text(&self, reason: &str, queue_id: &str) -> String {
        self.render(&self.reject, reason, queue_id)
    }

    /// The tempfail text for a message, one line of printable ASCII.
    pub fn tempfail_text(&self, reason: &str, queue_id: &str) -> String {
        self.render(&self.tempfail, reason, queue_id)
    }

    /// A rule's own reply text (`[storm] reply`, `[rate] reply`) with the rule's facts,
    /// `{contact}`, `{queue_id}` and `{reason}` filled in one pass; one line of
    /// printable ASCII.
    pub fn own_text(&self, own: &OwnReply, reason: &str, queue_id: &str) -> String {
        fitted(reason, |reason| own.render(&self.values(reason, queue_id)))
    }

    fn render(&self, template: &str, reason: &str, queue_id: &str) -> String {
        fitted(reason, |reason| {
            text::render(template, &self.values(reason, queue_id))
        })
    }

    fn values<'a>(&'a self, reason: &'a str, queue_id: &'a str) -> [(&'static str, &'a str); 3] {
        [
            ("contact", &self.contact),
            ("queue_id", queue_id),
            ("reason", reason),
        ]
    }
}

/// One reply line: neutralised ([`text::neutralize`]: line breaks and controls become
/// visible escapes), anything else outside printable ASCII a `?`, at most [`MAX_LINE`]
/// bytes.
fn line(text: &str) -> String {
    let mut line = ascii(text);
    if line.len() > MAX_LINE {
        line.truncate(MAX_LINE - 3);
        line.push_str("...");
    }
    line
}

/// [`text::neutralize`]d, anything else outside printable ASCII a `?`; not bounded.
fn ascii(text: &str) -> String {
    text::neutralize(text)
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The reply line `render` makes with `reason`, where a reason too long for the line is
/// shortened (ending in `...`) so that the template's own words, the contact and the
/// queue id among them, still reach the sender; only a line too long without the
/// reason is cut at its end.
fn fitted(reason: &str, render: impl Fn(&str) -> String) -> String {
    let full = ascii(&render(reason));
    if full.len() <= MAX_LINE {
        return full;
    }
    let reason = ascii(reason);
    let keep = reason.len().saturating_sub(full.len() - MAX_LINE + 3);
    line(&render(&format!("{}...", &reason[..keep])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies() -> Replies {
        Replies {
            contact: "the service desk on 1234".into(),
            reject: "Not sent ({reason}); ask {contact}, quoting {queue_id}.".into(),
            tempfail: "Try later.".into(),
        }
    }

    #[test]
    fn a_line_is_cut_only_beyond_its_limit() {
        let exact = "a".repeat(MAX_LINE);
        assert_eq!(line(&exact), exact, "exactly the limit is kept whole");
        let long = line(&"b".repeat(MAX_LINE + 1));
        assert_eq!(long.len(), MAX_LINE);
        assert!(long.ends_with("b..."), "{long}");
    }

    /// Found by the templates fuzz target: texts up to 900 bytes made reply lines
    /// longer than RFC 5321's 512 octets.
    #[test]
    fn a_reply_line_with_its_codes_fits_rfc_5321() {
        let r = replies().reject_text(&"x".repeat(2000), "Q");
        assert_eq!(format!("550 5.7.1 {r}\r\n").len(), 512);
    }

    #[test]
    fn a_reply_line_fits_rfc_5321() {
        assert_eq!("550 5.7.1 ".len() + MAX_LINE + "\r\n".len(), 512);
    }

    /// Found by fuzzing: a message to several large lists had a reason so long that
    /// the reply passed 512 octets; now the reason is shortened and the contact and the
    /// queue id after it are kept.
    #[test]
    fn a_long_reason_is_shortened_and_the_words_after_it_kept() {
        let reason = format!("lists: {}", "ward-\u{202e}@example.org, ".repeat(60));
        let r = replies().reject_text(&reason, "4AbCdEf123");
        assert_eq!(r.len(), MAX_LINE, "{r}");
        assert!(
            r.ends_with("...); ask the service desk on 1234, quoting 4AbCdEf123."),
            "{r}"
        );
        assert!(
            r.starts_with("Not sent (lists: ward-\\u{202E}@example.org, "),
            "{r}"
        );
        let fits = "x".repeat(MAX_LINE - r.len() + 400);
        assert!(replies().reject_text(&fits, "Q").len() <= MAX_LINE);
        let short = replies().reject_text("200 >= 100", "Q");
        assert!(!short.contains("..."), "{short}");
    }

    #[test]
    fn placeholders_are_filled() {
        assert_eq!(
            replies().reject_text("200 >= 100", "ABC123"),
            "Not sent (200 >= 100); ask the service desk on 1234, quoting ABC123."
        );
        assert_eq!(replies().tempfail_text("x", "Q"), "Try later.");
    }

    #[test]
    fn rendered_text_is_one_bounded_ascii_line() {
        let r = replies().reject_text(&"é\r\n".repeat(1000), "Q");
        assert!(r.len() <= MAX_LINE);
        assert!(
            r.ends_with("...); ask the service desk on 1234, quoting Q."),
            "{r}"
        );
        assert!(r.chars().all(|c| c == ' ' || c.is_ascii_graphic()));
    }

    #[test]
    fn line_breaks_and_escapes_in_a_reason_become_visible() {
        let r = replies().reject_text("list x\r\nBcc: y \u{1b}[2J \u{202e}", "Q");
        assert_eq!(
            r,
            "Not sent (list x\\x0D\\x0ABcc: y \\x1B[2J \\u{202E}); ask the service desk on 1234, quoting Q."
        );
    }

    #[test]
    fn own_replies_are_rendered_once() {
        let subject = "{reason}".repeat(8_000);
        let own = OwnReply {
            template: "Storm on {subject} ({list}); ask {contact} ({queue_id}): {reason}".into(),
            values: vec![("subject", subject.clone()), ("list", "{contact}".into())],
        };
        let reason = format!("storm on \"{subject}\"");
        let r = replies().own_text(&own, &reason, "Q");
        assert!(r.len() <= MAX_LINE, "{}", r.len());
        assert!(
            r.starts_with("Storm on {reason}{reason}"),
            "the subject's placeholders stay text: {r}"
        );
    }
}
