// SPDX-License-Identifier: GPL-3.0-or-later
//! The texts of the notices senders get (`[notices.*]`): their kinds, the placeholders
//! each kind may use, the defaults, and the checks made when the configuration is
//! loaded. Pure: no I/O.
//!
//! Rendering is [`crate::notify::notices`]'s; the templates live here, below both the
//! loader and the notifier, so that the configuration can hold them.

/// The longest body template, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The longest subject template, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;

/// What a notice to a sender is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoticeKind {
    /// Held for an admin; the sender may withdraw it or ask for its release.
    Held,
    /// Waiting for the sender to send it after all, or to withdraw it.
    Confirm,
    /// Several later holds of one sender in one notice.
    Summary,
    /// Released to every recipient.
    Released,
    /// Released to some of its recipients only.
    ReleasedTo,
    /// Discarded by an admin, with the reviewer's words when there are any.
    Discarded,
    /// Not reviewed in time, so discarded.
    Expired,
    /// The sender did not answer within `confirm_within`, so discarded.
    Unconfirmed,
    /// The sender withdrew it: a short receipt.
    Withdrawn,
}

/// Placeholders every notice about one message may use.
const COMMON: [&str; 10] = [
    "subject",
    "queue_id",
    "held_at",
    "recipients",
    "visible",
    "audience",
    "list",
    "reason",
    "contact",
    "host",
];

/// Placeholders that only a body may use: links, lists of addresses, the reviewer's
/// words and the summary's messages.
const BODY_ONLY: [&str; 7] = [
    "link_withdraw",
    "link_ask",
    "link_send",
    "recipients",
    "released_to",
    "comment",
    "messages",
];

impl NoticeKind {
    /// Every kind, in the order of the configuration's documentation.
    pub fn kinds() -> [NoticeKind; 9] {
        [
            NoticeKind::Held,
            NoticeKind::Confirm,
            NoticeKind::Summary,
            NoticeKind::Released,
            NoticeKind::ReleasedTo,
            NoticeKind::Discarded,
            NoticeKind::Expired,
            NoticeKind::Unconfirmed,
            NoticeKind::Withdrawn,
        ]
    }

    /// The configuration name (`held`, `released-to`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Held => "held",
            NoticeKind::Confirm => "confirm",
            NoticeKind::Summary => "summary",
            NoticeKind::Released => "released",
            NoticeKind::ReleasedTo => "released-to",
            NoticeKind::Discarded => "discarded",
            NoticeKind::Expired => "expired",
            NoticeKind::Unconfirmed => "unconfirmed",
            NoticeKind::Withdrawn => "withdrawn",
        }
    }

    /// The kind a configuration name stands for.
    pub fn from_name(name: &str) -> Option<NoticeKind> {
        NoticeKind::kinds().into_iter().find(|k| k.as_str() == name)
    }

    /// The placeholders this kind's body may use.
    pub fn placeholders(self) -> Vec<&'static str> {
        let extra: &[&str] = match self {
            NoticeKind::Held => &["review_by", "link_withdraw", "link_ask"],
            NoticeKind::Confirm => &["confirm_by", "link_send", "link_withdraw"],
            NoticeKind::Summary => return vec!["count", "messages", "contact", "host"],
            NoticeKind::Released | NoticeKind::Discarded => &["comment"],
            NoticeKind::ReleasedTo => &["released_to", "comment"],
            NoticeKind::Unconfirmed => &["confirm_by"],
            NoticeKind::Expired | NoticeKind::Withdrawn => &[],
        };
        COMMON.iter().chain(extra).copied().collect()
    }

    /// The placeholders this kind's subject may use: the body's, less links, lists of
    /// addresses, the reviewer's words and the summary's messages.
    pub fn subject_placeholders(self) -> Vec<&'static str> {
        self.placeholders()
            .into_iter()
            .filter(|p| !BODY_ONLY.contains(p))
            .collect()
    }
}

/// The subject and body of one kind of notice, with `{placeholder}`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// One line.
    pub subject: String,
    /// Plain text, lines separated by `\n`.
    pub body: String,
}

/// One template per kind of notice: the defaults, with the configuration's overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticeTemplates {
    templates: [Template; 9],
    overridden: Vec<NoticeKind>,
}

impl NoticeTemplates {
    /// The template of `kind`.
    pub fn get(&self, kind: NoticeKind) -> &Template {
        &self.templates[kind as usize]
    }

    /// Replaces the template of `kind` (checked by the caller: see [`check_subject`]
    /// and [`check_body`]) and marks it overridden.
    pub fn set(&mut self, kind: NoticeKind, template: Template) {
        self.templates[kind as usize] = template;
        if !self.overridden.contains(&kind) {
            self.overridden.push(kind);
            self.overridden.sort();
        }
    }

    /// The kinds whose template is not the default, in [`NoticeKind::kinds`] order.
    pub fn overridden(&self) -> &[NoticeKind] {
        &self.overridden
    }

    /// Which templates the configuration overrides, for `check-config`: `all defaults`
    /// or `overridden: held, withdrawn (the others are the defaults)`.
    pub fn describe(&self) -> String {
        if self.overridden.is_empty() {
            return "all defaults".to_owned();
        }
        let names: Vec<&str> = self.overridden.iter().map(|k| k.as_str()).collect();
        format!(
            "overridden: {} (the others are the defaults)",
            names.join(", ")
        )
    }
}

impl Default for NoticeTemplates {
    fn default() -> Self {
        NoticeTemplates {
            templates: NoticeKind::kinds().map(default_template),
            overridden: Vec::new(),
        }
    }
}

/// The lines that say which message a notice is about.
const DETAILS: &str = "  Subject:    {subject}\n\
                       \x20 To:         {recipients}\n\
                       \x20 Time:       {held_at}\n\
                       \x20 Reference:  {queue_id}\n";

/// The last lines of every notice.
const FOOTER: &str = "If you have a question, please contact {contact} and quote the \
                      reference above.\n\n\
                      This notice was sent automatically by the mail system ({host}).\n";

/// The default template of `kind`: plain words for the staff who get it.
fn default_template(kind: NoticeKind) -> Template {
    let (subject, body) = match kind {
        NoticeKind::Held => (
            "Not sent yet, waiting for a check: {subject}",
            format!(
                "Your message has NOT been sent yet. It is waiting for a check by the mail \
                 team, and nobody has received it.\n\n\
                 {DETAILS}\n\
                 Why it is waiting: {{reason}}.\n\n\
                 The mail team will look at it by {{review_by}}.\n\n\
                 What you can do:\n\n\
                 - If you did not mean to send it that widely, withdraw it. Nobody will \
                 receive it:\n  {{link_withdraw}}\n\n\
                 - If it really must reach all of these people, ask for it to be sent and \
                 say why:\n  {{link_ask}}\n\n\
                 {FOOTER}"
            ),
        ),
        NoticeKind::Confirm => (
            "Please confirm before it is sent: {subject}",
            format!(
                "Your message has NOT been sent yet. Please check that you meant to send it \
                 that widely.\n\n\
                 {DETAILS}\n\
                 Why we ask: {{reason}}.\n\n\
                 Send it to all of them:\n  {{link_send}}\n\n\
                 Withdraw it, so that nobody receives it:\n  {{link_withdraw}}\n\n\
                 If you do neither, it will be withdrawn at {{confirm_by}} and nobody will \
                 receive it.\n\n\
                 {FOOTER}"
            ),
        ),
        NoticeKind::Summary => (
            "Not sent yet: {count} more of your messages",
            "Since our last notice, more of your messages were held before anyone \
             received them ({count} in all). Each one is listed below with what you \
             can do.\n\n\
             {messages}\n\
             If you have a question, please contact {contact} and quote the reference \
             of the message.\n\n\
             This notice was sent automatically by the mail system ({host}).\n"
                .to_owned(),
        ),
        NoticeKind::Released => (
            "Sent after a check: {subject}",
            format!(
                "Your message was checked by the mail team and has now been sent to \
                 everyone you addressed.\n\n\
                 {DETAILS}\n\
                 Note from the mail team: {{comment}}\n\n\
                 {FOOTER}"
            ),
        ),
        NoticeKind::ReleasedTo => (
            "Sent to some recipients only: {subject}",
            format!(
                "Your message was checked by the mail team and has been sent, but only \
                 to: {{released_to}}.\n\
                 The other recipients did NOT receive it.\n\n\
                 {DETAILS}\n\
                 Note from the mail team: {{comment}}\n\n\
                 {FOOTER}"
            ),
        ),
        NoticeKind::Discarded => (
            "Not sent: {subject}",
            format!(
                "Your message was NOT sent to anyone. The mail team checked it and stopped \
                 it.\n\n\
                 {DETAILS}\n\
                 Why it was held: {{reason}}.\n\n\
                 Note from the mail team: {{comment}}\n\n\
                 If it still needs to go out, please contact {{contact}}, or send it again \
                 to fewer people.\n\n\
                 This notice was sent automatically by the mail system ({{host}}).\n"
            ),
        ),
        NoticeKind::Expired => (
            "Not sent: {subject}",
            format!(
                "Your message was NOT sent to anyone. It was waiting for a check, and \
                 nobody could check it in time.\n\n\
                 {DETAILS}\n\
                 Why it was held: {{reason}}.\n\n\
                 If it still needs to go out, please contact {{contact}}, or send it again \
                 to fewer people.\n\n\
                 This notice was sent automatically by the mail system ({{host}}).\n"
            ),
        ),
        NoticeKind::Unconfirmed => (
            "Not sent: {subject}",
            format!(
                "Your message was NOT sent to anyone. We asked you to confirm it and had \
                 no answer by {{confirm_by}}.\n\n\
                 {DETAILS}\n\
                 Why we asked: {{reason}}.\n\n\
                 If it still needs to go out, please send it again.\n\n\
                 {FOOTER}"
            ),
        ),
        NoticeKind::Withdrawn => (
            "Withdrawn: {subject}",
            format!(
                "You withdrew your message. It was NOT sent to anyone, and there is \
                 nothing more to do.\n\n\
                 {DETAILS}\n\
                 {FOOTER}"
            ),
        ),
    };
    Template {
        subject: subject.to_owned(),
        body,
    }
}

/// Checks a subject template of `kind`: one line without control characters, at most
/// [`MAX_SUBJECT_CHARS`], the kind's subject placeholders only.
pub fn check_subject(kind: NoticeKind, subject: &str) -> Result<(), String> {
    if subject.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = subject.chars().find(|&c| unsafe_char(c) || c == '\t') {
        return Err(format!(
            "must be one line without control or invisible characters (found {})",
            crate::text::neutralize(&c.to_string())
        ));
    }
    let chars = subject.chars().count();
    if chars > MAX_SUBJECT_CHARS {
        return Err(format!(
            "is {chars} characters long; keep it to {MAX_SUBJECT_CHARS}"
        ));
    }
    check_placeholders(subject, &kind.subject_placeholders(), "a subject")
}

/// Checks a body template of `kind`: not empty, at most [`MAX_BODY_BYTES`], lines
/// without control or invisible characters, the kind's placeholders only.
pub fn check_body(kind: NoticeKind, body: &str) -> Result<(), String> {
    if body.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "is {} bytes long; keep it to {MAX_BODY_BYTES} (16 KiB)",
            body.len()
        ));
    }
    if let Some((n, line)) = body
        .split('\n')
        .enumerate()
        .find(|(_, l)| l.chars().any(unsafe_char))
    {
        return Err(format!(
            "line {} of the text has a control or invisible character: \"{}\"",
            n + 1,
            crate::text::neutralize(line)
        ));
    }
    check_placeholders(body, &kind.placeholders(), "the body")
}

/// A character a template must not hold: what [`crate::text::neutralize`] escapes,
/// except that a body may hold tabs.
fn unsafe_char(c: char) -> bool {
    c != '\t' && crate::text::neutralize(c.encode_utf8(&mut [0; 4])) != c.to_string()
}

/// Braces come in pairs around a placeholder `names` holds.
fn check_placeholders(template: &str, names: &[&str], what: &str) -> Result<(), String> {
    let allowed = || {
        let known: Vec<String> = names.iter().map(|n| format!("{{{n}}}")).collect();
        known.join(" ")
    };
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        if rest[i..].starts_with('}') {
            return Err("has a \"}\" without an opening \"{\"".into());
        }
        let after = &rest[i + 1..];
        let end = after
            .find(['{', '}'])
            .filter(|&e| after[e..].starts_with('}'))
            .ok_or_else(|| "has a \"{\" without a closing \"}\"".to_owned())?;
        let name = &after[..end];
        if !names.contains(&name) {
            return Err(format!(
                "unknown placeholder \"{{{}}}\" for {what} of this notice; it may use {}",
                crate::text::neutralize(name),
                allowed()
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_name_and_a_valid_default() {
        let t = NoticeTemplates::default();
        for (i, kind) in NoticeKind::kinds().into_iter().enumerate() {
            assert_eq!(kind as usize, i, "kinds() is in declaration order");
            assert_eq!(NoticeKind::from_name(kind.as_str()), Some(kind));
            check_subject(kind, &t.get(kind).subject).unwrap();
            check_body(kind, &t.get(kind).body).unwrap();
        }
        assert_eq!(NoticeKind::from_name("Held"), None);
        assert!(t.overridden().is_empty());
    }

    #[test]
    fn links_are_allowed_only_where_the_kind_carries_them() {
        check_body(NoticeKind::Held, "{link_withdraw} {link_ask}").unwrap();
        check_body(NoticeKind::Confirm, "{link_send} {link_withdraw}").unwrap();
        for kind in [NoticeKind::Released, NoticeKind::Withdrawn] {
            let e = check_body(kind, "go to {link_withdraw}").unwrap_err();
            assert!(e.contains("unknown placeholder \"{link_withdraw}\""), "{e}");
            assert!(e.contains("{subject}"), "says which are allowed: {e}");
        }
        let e = check_subject(NoticeKind::Held, "{link_ask}").unwrap_err();
        assert!(e.contains("unknown placeholder"), "{e}");
        assert!(!e.contains("{link_withdraw}"), "not offered: {e}");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        let k = NoticeKind::Held;
        assert!(check_body(k, " \n").unwrap_err().contains("empty"));
        assert!(check_body(k, "a {subject").unwrap_err().contains("closing"));
        assert!(check_body(k, "a } b").unwrap_err().contains("opening"));
        assert!(
            check_body(k, "{a{subject}")
                .unwrap_err()
                .contains("closing")
        );
        assert!(
            check_body(k, &"x".repeat(MAX_BODY_BYTES + 1))
                .unwrap_err()
                .contains("16 KiB")
        );
        assert!(check_body(k, "ok\nbad\r\n").unwrap_err().contains("line 2"));
        check_body(k, "tab\tok\n").unwrap();
        assert!(check_subject(k, "a\nb").unwrap_err().contains("one line"));
        assert!(
            check_subject(k, "a\u{202e}b")
                .unwrap_err()
                .contains("\\u{202E}")
        );
        assert!(check_subject(k, "").unwrap_err().contains("empty"));
        assert!(
            check_subject(k, &"s".repeat(MAX_SUBJECT_CHARS + 1))
                .unwrap_err()
                .contains("characters long")
        );
    }

    #[test]
    fn set_marks_a_kind_overridden_once() {
        let mut t = NoticeTemplates::default();
        let mine = Template {
            subject: "S".into(),
            body: "B".into(),
        };
        t.set(NoticeKind::Withdrawn, mine.clone());
        t.set(NoticeKind::Held, mine.clone());
        t.set(NoticeKind::Held, mine.clone());
        assert_eq!(t.overridden(), [NoticeKind::Held, NoticeKind::Withdrawn]);
        assert_eq!(t.get(NoticeKind::Held), &mine);
        assert_ne!(t.get(NoticeKind::Confirm), &mine);
    }
}
