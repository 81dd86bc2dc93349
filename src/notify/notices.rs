// SPDX-License-Identifier: GPL-3.0-or-later
//! Notices to senders from their templates: the facts of a held message, the "why" in
//! plain words, rendering and the RFC 5322 message. Pure: no I/O, no clock (the
//! deadlines and links come in the facts).
//!
//! Every value from mail or a user is neutralised (one line, controls and bidi shown as
//! escapes) and defanged (`://` and `www.` broken, so that a subject cannot put a link
//! in the body), and the template is filled in one pass: a value is never scanned for
//! placeholders.

pub use crate::config::notices::{NoticeKind, NoticeTemplates, Template};

use super::{ComposeError, auto_message, mailbox};
use crate::policy::fmt_count;
use crate::text;
use lettre::message::header::ContentType;

/// Recipients listed one by one in a notice; the rest are counted.
pub const MAX_LISTED: usize = 20;

/// The longest rendered subject, in characters.
const MAX_RENDERED_SUBJECT: usize = 250;

/// The longest address, list name or queue id shown, in characters.
const MAX_ADDRESS_CHARS: usize = 254;

/// The longest reviewer's comment shown, in characters.
const MAX_COMMENT_CHARS: usize = 2000;

/// The signed links a notice offers (full URLs), each only where its kind carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoticeLinks {
    /// Withdraw the message (discard it now).
    pub withdraw: Option<String>,
    /// Ask for its release, with a justification.
    pub ask: Option<String>,
    /// Send it after all (a `confirm` hold).
    pub send: Option<String>,
}

/// What a notice says about one held message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoticeFacts {
    /// The message's Subject.
    pub subject: String,
    /// Its Postfix queue id.
    pub queue_id: String,
    /// When it was held (seconds since the epoch).
    pub held_at: u64,
    /// The envelope recipients the sender named.
    pub recipients: Vec<String>,
    /// How many addresses its To and Cc show.
    pub visible: u64,
    /// How many mailboxes it would reach.
    pub audience: u64,
    /// The largest list it reaches, when it reaches one.
    pub list: Option<String>,
    /// The rules that held it: (rule name such as `hidden`, the policy's message).
    /// Notices use only the names (see [`plain_reason`]): the messages are for admins.
    pub rules: Vec<(String, String)>,
    /// When admins should have reviewed it (seconds since the epoch).
    pub review_by: Option<u64>,
    /// When an unconfirmed `confirm` hold is discarded (seconds since the epoch).
    pub confirm_by: Option<u64>,
    /// The sender's links.
    pub links: NoticeLinks,
    /// The reviewer's words to the sender.
    pub comment: Option<String>,
    /// The recipients a partial release went to.
    pub released_to: Vec<String>,
    /// Whom to ask (`[reply] contact`).
    pub contact: String,
    /// This host's name.
    pub host: String,
}

/// Text from mail or a user, for one line of a notice: neutralised, capped, defanged.
fn value(raw: &str, max: usize) -> String {
    defang(&text::neutralize_capped(raw, max))
}

/// Breaks what a mail client would turn into a link (`scheme://`, `www.`), so that only
/// the notice's own links are links.
fn defang(s: &str) -> String {
    let s = s.replace("://", "[:]//");
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest
        .char_indices()
        .find(|&(i, _)| {
            rest[i..]
                .get(..4)
                .is_some_and(|w| w.eq_ignore_ascii_case("www."))
        })
        .map(|(i, _)| i)
    {
        out.push_str(&rest[..i + 3]);
        out.push_str("[.]");
        rest = &rest[i + 4..];
    }
    out.push_str(rest);
    out
}

/// `n` grouped by thousands (`4,000`).
fn count(n: u64) -> String {
    fmt_count(usize::try_from(n).unwrap_or(usize::MAX))
}

/// "1 person", "4,000 people".
fn people(n: u64) -> String {
    match n {
        1 => "1 person".to_owned(),
        n => format!("{} people", count(n)),
    }
}

/// "1 address", "3 addresses".
fn addresses(n: u64) -> String {
    match n {
        1 => "1 address".to_owned(),
        n => format!("{} addresses", count(n)),
    }
}

/// Addresses on one line: the first [`MAX_LISTED`], then how many more.
fn address_list(all: &[String]) -> String {
    if all.is_empty() {
        return "(none)".to_owned();
    }
    let shown: Vec<String> = all
        .iter()
        .take(MAX_LISTED)
        .map(|a| value(a, MAX_ADDRESS_CHARS))
        .collect();
    let mut out = shown.join(", ");
    if all.len() > MAX_LISTED {
        out.push_str(&format!(
            " and {} more",
            count((all.len() - MAX_LISTED) as u64)
        ));
    }
    out
}

/// A link if it is one (`http(s)://` and no spaces), else a line saying whom to ask.
fn link(url: Option<&str>, contact: &str) -> String {
    match url {
        Some(u)
            if (u.starts_with("https://") || u.starts_with("http://"))
                && !u.chars().any(|c| c.is_whitespace())
                && text::neutralize(u) == u =>
        {
            u.to_owned()
        }
        _ => format!(
            "(no link is available; please contact {})",
            text::neutralize(contact)
        ),
    }
}

/// The largest list as a notice names it.
fn list_name(facts: &NoticeFacts) -> Option<String> {
    facts
        .list
        .as_deref()
        .filter(|l| !l.trim().is_empty())
        .map(|l| value(l, MAX_ADDRESS_CHARS))
}

/// Why a message was held, in plain words for the staff who sent it (no rule names,
/// no mail jargon): one phrase per rule that held it, without a final full stop.
pub fn plain_reason(facts: &NoticeFacts) -> String {
    let list = list_name(facts);
    let audience = people(facts.audience);
    let mut phrases: Vec<String> = Vec::new();
    for (rule, _) in &facts.rules {
        let phrase = match (rule.as_str(), &list) {
            ("hidden", Some(l)) => format!(
                "your message would reach {audience} through {l}; you could see {}",
                addresses(facts.visible)
            ),
            ("hidden", None) => format!(
                "your message would reach {audience}, though you could see only {}",
                addresses(facts.visible)
            ),
            ("restricted", Some(l)) => {
                format!("{l} ({audience}) only takes mail from certain senders")
            }
            ("restricted", None) => {
                "one of the lists you wrote to only takes mail from certain senders".to_owned()
            }
            ("limits.envelope", _) => format!(
                "it was addressed to {} recipients, more than a message may have \
                 without a check",
                count(facts.recipients.len() as u64)
            ),
            ("limits.external", _) => {
                "it would go to more people outside our organisation than one message may \
                 reach without a check"
                    .to_owned()
            }
            ("limits.audience", _) => format!(
                "it would reach {audience}, more than one message may reach without a check"
            ),
            ("scope", Some(l)) => format!(
                "{l} also reaches people outside the part of the organisation you may \
                 write to"
            ),
            ("scope", None) => "it would reach people outside the part of the organisation \
                                you may write to"
                .to_owned(),
            ("drift", Some(l)) => format!(
                "{l} has grown a lot recently (now {audience}), so mail to it is checked \
                 first"
            ),
            ("drift", None) => {
                "a list you wrote to has grown a lot recently, so mail to it is checked first"
                    .to_owned()
            }
            ("expansion.on_unknown" | "directory.unavailable", _) => {
                "we could not count everyone it would reach".to_owned()
            }
            ("breaker", _) => {
                "mail to large groups is paused for everyone at the moment".to_owned()
            }
            ("brake", _) => {
                "mail to large groups is being checked by hand at the moment".to_owned()
            }
            ("storm", _) => {
                "many people are replying to everyone on this conversation at once, so \
                 replies to it are paused"
                    .to_owned()
            }
            ("rate", _) => "you have written to a very large number of people in a short \
                            time"
                .to_owned(),
            ("foreign", _) => "another part of the mail system stopped it".to_owned(),
            ("copy", _) => {
                "it is the copy made to send your message to some of its recipients".to_owned()
            }
            _ => format!("it would reach {audience} and needs a check before it goes out"),
        };
        if !phrases.contains(&phrase) {
            phrases.push(phrase);
        }
    }
    if phrases.is_empty() {
        phrases.push(format!(
            "it would reach {audience} and needs a check before it goes out"
        ));
    }
    phrases.join("; and ")
}

/// The value of every placeholder a notice about one message may use.
fn values(facts: &NoticeFacts) -> Vec<(&'static str, String)> {
    let contact = text::neutralize(&facts.contact).into_owned();
    vec![
        ("subject", defang(&super::subject(&facts.subject))),
        ("queue_id", value(&facts.queue_id, MAX_ADDRESS_CHARS)),
        ("held_at", text::plain_utc(facts.held_at)),
        ("recipients", address_list(&facts.recipients)),
        ("visible", count(facts.visible)),
        ("audience", count(facts.audience)),
        (
            "list",
            list_name(facts).unwrap_or_else(|| "the addresses you wrote to".to_owned()),
        ),
        ("reason", plain_reason(facts)),
        (
            "review_by",
            facts
                .review_by
                .map_or_else(|| "as soon as possible".to_owned(), text::plain_utc),
        ),
        (
            "confirm_by",
            facts
                .confirm_by
                .map_or_else(|| "soon".to_owned(), text::plain_utc),
        ),
        (
            "link_withdraw",
            link(facts.links.withdraw.as_deref(), &facts.contact),
        ),
        ("link_ask", link(facts.links.ask.as_deref(), &facts.contact)),
        (
            "link_send",
            link(facts.links.send.as_deref(), &facts.contact),
        ),
        (
            "comment",
            facts
                .comment
                .as_deref()
                .filter(|c| !c.trim().is_empty())
                .map_or_else(|| "(none)".to_owned(), |c| value(c, MAX_COMMENT_CHARS)),
        ),
        ("released_to", address_list(&facts.released_to)),
        ("contact", contact),
        ("host", text::neutralize(&facts.host).into_owned()),
    ]
}

/// Fills `template` with the values `allowed` names, in one pass.
fn fill(template: &str, values: &[(&'static str, String)], allowed: &[&str]) -> String {
    let pairs: Vec<(&str, &str)> = values
        .iter()
        .filter(|(n, _)| allowed.contains(n))
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    text::render(template, &pairs)
}

/// A rendered subject: one line, capped.
fn finish_subject(s: &str) -> String {
    text::neutralize_capped(s.trim(), MAX_RENDERED_SUBJECT)
}

/// A rendered body: every line neutralised (a template set in code is not checked at
/// load), trailing spaces gone, runs of blank lines made one.
fn finish_body(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in text::neutralize_lines(s).split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    let trimmed = out.trim_end_matches('\n').len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

impl NoticeTemplates {
    /// The subject and body of a notice of `kind` about one message. [`NoticeKind::Summary`]
    /// renders that one message as a summary of one (see [`Self::render_summary`]).
    pub fn render(&self, kind: NoticeKind, facts: &NoticeFacts) -> (String, String) {
        if kind == NoticeKind::Summary {
            return self.render_summary(std::slice::from_ref(facts));
        }
        let t = self.get(kind);
        let values = values(facts);
        (
            finish_subject(&fill(&t.subject, &values, &kind.subject_placeholders())),
            finish_body(&fill(&t.body, &values, &kind.placeholders())),
        )
    }

    /// One notice about several held messages of one sender: each message its own
    /// block with its links. Contact and host are the first message's.
    pub fn render_summary(&self, all: &[NoticeFacts]) -> (String, String) {
        let kind = NoticeKind::Summary;
        let t = self.get(kind);
        let messages: String = all.iter().map(summary_block).collect();
        let first = all.first();
        let values = vec![
            ("count", count(all.len() as u64)),
            ("messages", messages),
            (
                "contact",
                first.map_or_else(String::new, |f| text::neutralize(&f.contact).into_owned()),
            ),
            (
                "host",
                first.map_or_else(String::new, |f| text::neutralize(&f.host).into_owned()),
            ),
        ];
        (
            finish_subject(&fill(&t.subject, &values, &kind.subject_placeholders())),
            finish_body(&fill(&t.body, &values, &kind.placeholders())),
        )
    }
}

/// One message of a summary: what, why, until when, and its links.
fn summary_block(facts: &NoticeFacts) -> String {
    let v = values(facts);
    let get = |name: &str| {
        v.iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, s)| s.as_str())
    };
    let mut out = format!(
        "* \"{}\" (reference {})\n  To:   {}\n  Time: {}\n  Why:  {}.\n",
        get("subject"),
        get("queue_id"),
        get("recipients"),
        get("held_at"),
        get("reason"),
    );
    if facts.confirm_by.is_some() || facts.links.send.is_some() {
        out.push_str(&format!(
            "  Waiting for you: if you do nothing, it is withdrawn at {}.\n",
            get("confirm_by")
        ));
    } else {
        out.push_str(&format!(
            "  The mail team will look at it by {}.\n",
            get("review_by")
        ));
    }
    for (url, label, name) in [
        (&facts.links.send, "Send it to all of them", "link_send"),
        (&facts.links.withdraw, "Withdraw it", "link_withdraw"),
        (&facts.links.ask, "Ask for it to be sent", "link_ask"),
    ] {
        if url.is_some() {
            out.push_str(&format!("  {label}:\n    {}\n", get(name)));
        }
    }
    out.push('\n');
    out
}

/// The RFC 5322 message of a rendered notice from `from` to `to`: `Auto-Submitted:
/// auto-generated`, plain UTF-8 text.
pub fn compose(from: &str, to: &str, rendered: (String, String)) -> Result<Vec<u8>, ComposeError> {
    let (subject, body) = rendered;
    Ok(auto_message(from)?
        .to(mailbox(to)?)
        .subject(finish_subject(&subject))
        .header(ContentType::TEXT_PLAIN)
        .body(finish_body(&body))?
        .formatted())
}

#[cfg(test)]
mod tests;
