// SPDX-License-Identifier: GPL-3.0-or-later
//! SMTP reply texts with `{reason}`, `{contact}` and `{queue_id}` placeholders.

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

    /// A rule's own reply text (`[storm] reply`, already filled with its facts), with
    /// `{contact}`, `{queue_id}` and `{reason}` filled in; one line of printable ASCII.
    pub fn own_text(&self, text: &str, reason: &str, queue_id: &str) -> String {
        self.render(text, reason, queue_id)
    }

    fn render(&self, template: &str, reason: &str, queue_id: &str) -> String {
        let text = template
            .replace("{contact}", &self.contact)
            .replace("{queue_id}", queue_id)
            .replace("{reason}", reason);
        let mut line: String = text
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
