// SPDX-License-Identifier: GPL-3.0-or-later
//! SMTP reply templates with `{reason}`, `{contact}` and `{queue_id}` placeholders: the
//! checks made when the configuration is loaded. The validated templates are the
//! policy's [`Replies`], which renders them.

pub use crate::policy::reply::Replies;

/// Longest template: room is left for the reason in a reply line (which is cut at
/// `policy::reply::MAX_LINE` when it is longer).
pub const MAX_TEMPLATE: usize = 450;

/// The placeholders a reply template may use.
pub const PLACEHOLDERS: [&str; 3] = ["reason", "contact", "queue_id"];

/// The placeholders of `[storm] reply`.
pub const STORM_PLACEHOLDERS: [&str; 5] = ["subject", "list", "audience", "contact", "queue_id"];

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
    if template.len() > MAX_TEMPLATE {
        return Err(format!(
            "is {} bytes long; keep it under {} so the reason fits in one SMTP reply line",
            template.len(),
            MAX_TEMPLATE
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
