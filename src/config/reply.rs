// SPDX-License-Identifier: GPL-3.0-or-later
//! SMTP reply texts with `{reason}`, `{contact}` and `{queue_id}` placeholders.

use crate::policy::verdict::OwnReply;
use crate::text;

/// Longest reply line we send; RFC 5321 allows 512 octets per line including the code,
/// and Postfix and indymilter accept up to 980 bytes per line.
const MAX_LINE: usize = 900;

/// The placeholders a reply template may use.
pub const PLACEHOLDERS: [&str; 3] = ["reason", "contact", "queue_id"];

/// The placeholders of `[storm] reply`.
pub const STORM_PLACEHOLDERS: [&str; 5] = ["subject", "list", "audience", "contact", "queue_id"];

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
        line(&own.render(&self.values(reason, queue_id)))
    }

    fn render(&self, template: &str, reason: &str, queue_id: &str) -> String {
        line(&text::render(template, &self.values(reason, queue_id)))
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
    let mut line: String = text::neutralize(text)
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if line.len() > MAX_LINE {
        line.truncate(MAX_LINE - 3);
        line.push_str("...");
    }
    line
}

/// Checks a template: one line of printable ASCII, known placeholders only.
pub fn check_template(template: &str) -> Result<(), String> {
    check_template_with(template, &PLACEHOLDERS)
}

/// [`check_template`] with another set of placeholder names.
pub fn check_template_with(template: &str, names: &[&str]) -> Result<(), String> {
    if template.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = template
        .chars()
        .find(|&c| !(c == ' ' || c.is_ascii_graphic()))
    {
        return Err(format!(
            "must be one line of printable ASCII (found {:?}); SMTP replies cannot carry it",
            c
        ));
    }
    if template.len() > MAX_LINE / 2 {
        return Err(format!(
            "is {} bytes long; keep it under {} so the reason fits in one SMTP reply line",
            template.len(),
            MAX_LINE / 2
        ));
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "has a \"{\" without a closing \"}\"".to_owned())?;
        let name = &after[..close];
        if !names.contains(&name) {
            let known: Vec<String> = names.iter().map(|n| format!("{{{n}}}")).collect();
            let (last, first) = known.split_last().expect("placeholder names");
            return Err(format!(
                "unknown placeholder \"{{{name}}}\": use {} or {last}",
                first.join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
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
        assert!(r.ends_with("..."));
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

    #[test]
    fn templates_are_checked() {
        assert!(check_template("Ask {contact} about {reason} ({queue_id})").is_ok());
        assert!(check_template("").unwrap_err().contains("empty"));
        assert!(
            check_template("two\nlines")
                .unwrap_err()
                .contains("one line")
        );
        assert!(
            check_template("{nope}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(
            check_template("open {reason")
                .unwrap_err()
                .contains("closing")
        );
        assert!(
            check_template(&"x".repeat(600))
                .unwrap_err()
                .contains("bytes long")
        );
    }
}
