// SPDX-License-Identifier: GPL-3.0-or-later
//! Reply and notice rendering: SMTP replies, the verdict header and the hold reason of
//! arbitrary verdicts (rule messages, own reply templates and their facts), and every
//! kind of sender notice with arbitrary subjects, addresses, list names, counts, links
//! and templates, through [`compose`] to the RFC 5322 message.

use super::assert_one_line;
use crate::config::notices::{NoticeKind, NoticeTemplates, Template, check_body, check_subject};
use crate::config::reply::{STORM_PLACEHOLDERS, check_template, check_template_with};
use crate::notify::notices::{NoticeFacts, NoticeLinks, compose};
use crate::policy::Replies;
use crate::policy::effect::{
    self, NO_QUEUE_ID, VERDICT_HEADER, fault_reply, header_value, hold_reason, smtp_reply,
};
use crate::policy::verdict::{Action, OwnReply, Reason, Verdict};
use arbitrary::{Result, Unstructured};

/// RFC 5321 4.5.3.1.5: a reply line, code and CRLF included, is at most 512 octets.
const MAX_REPLY_LINE: usize = 512;

/// RFC 5322 2.1.1: a line is at most 998 characters, CRLF excluded.
const MAX_LINE: usize = 998;

/// The longest rendered notice subject, in characters (it goes out RFC 2047 encoded,
/// in lines the composed-message check measures).
const MAX_SUBJECT_CHARS: usize = 250;

/// The rule names the policy fires (notices word some of them specially).
const RULES: [&str; 16] = [
    "hidden",
    "restricted",
    "limits.envelope",
    "limits.external",
    "limits.audience",
    "scope",
    "drift",
    "expansion.on_unknown",
    "directory.unavailable",
    "breaker",
    "brake",
    "storm",
    "rate",
    "foreign",
    "copy",
    "something.else",
];

/// Fragments that make text interesting: line breaks, controls, bidi and invisible
/// characters, placeholders, links, long runs.
const SPICE: [&str; 16] = [
    "\r\n",
    "\n",
    "\r",
    "\0",
    "\u{1b}[2J",
    "\u{202e}",
    "\u{2028}",
    "\u{feff}",
    "\u{200b}",
    "\t",
    "{reason}",
    "{subject}",
    "https://evil.example/",
    "www.x",
    "\u{fffd}",
    "é",
];

/// Renders replies, the verdict header, the hold reason and every notice from `data`,
/// and panics when one is not clean: a reply, header value, hold reason or notice
/// subject that is not one line of safe characters within its length, a reply line
/// over 512 octets, a notice body with a control or invisible character other than
/// line feeds, a composed notice with a line over 998 octets or a bare CR or LF, or an
/// effect that does not carry out its action.
pub fn templates(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let replies = replies(u)?;
    let verdict = verdict(u)?;
    let queue_id = if u.arbitrary()? {
        NO_QUEUE_ID.to_owned()
    } else {
        text(u)?
    };
    check_effect(&verdict, &replies, &queue_id);
    let reason = text(u)?;
    check_reply(&fault_reply(Some(&replies), &reason, &queue_id));
    check_reply(&fault_reply(None, &reason, &queue_id));

    let mut notices = NoticeTemplates::default();
    for kind in NoticeKind::kinds() {
        if u.arbitrary()? {
            let subject = text(u)?;
            let body = text(u)?;
            let configurable =
                check_subject(kind, &subject).is_ok() && check_body(kind, &body).is_ok();
            // Templates set in code are not checked at load: rendering must cope with
            // any text, so unchecked ones are tried too.
            if configurable || u.arbitrary()? {
                notices.set(kind, Template { subject, body });
            }
        }
    }
    let mut all = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        all.push(facts(u)?);
    }
    let to = text(u)?;
    for kind in NoticeKind::kinds() {
        check_notice(kind.as_str(), notices.render(kind, &all[0]), &to);
    }
    check_notice("summary", notices.render_summary(&all), &to);
    Ok(())
}

/// Text built from arbitrary strings and the [`SPICE`] fragments, sometimes long.
fn text(u: &mut Unstructured<'_>) -> Result<String> {
    let mut out = String::new();
    for _ in 0..u.int_in_range(0..=6)? {
        match u.int_in_range(0..=3)? {
            0 => out.push_str(u.choose(&SPICE)?),
            1 => out.push_str(&String::from_utf8_lossy(u.arbitrary::<&[u8]>()?)),
            2 => {
                let c: char = u.arbitrary()?;
                let n = u.int_in_range(1..=400)?;
                out.extend(std::iter::repeat_n(c, n));
            }
            _ => out.push_str(u.arbitrary()?),
        }
    }
    Ok(out)
}

/// `[reply]` as the configuration may set it (templates that fail the load-time
/// checks are replaced by the defaults).
fn replies(u: &mut Unstructured<'_>) -> Result<Replies> {
    let mut checked = |fallback: &str| -> Result<String> {
        let t = text(u)?;
        Ok(if check_template(&t).is_ok() {
            t
        } else {
            fallback.to_owned()
        })
    };
    let reject = checked("Message refused: {reason}. Contact {contact} ({queue_id})")?;
    let tempfail = checked("Try again later: {reason} ({queue_id})")?;
    let contact = checked("postmaster@corp.example")?;
    let contact = if contact.contains(['{', '}']) {
        "postmaster@corp.example".to_owned()
    } else {
        contact
    };
    Ok(Replies {
        contact,
        reject,
        tempfail,
    })
}

/// A verdict with arbitrary reasons, monitor mode and own replies.
fn verdict(u: &mut Unstructured<'_>) -> Result<Verdict> {
    let action = *u.choose(&Action::ALL)?;
    let intended = if u.arbitrary()? {
        action
    } else {
        *u.choose(&Action::ALL)?
    };
    let mut reasons = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let reply = if u.arbitrary()? {
            let template = text(u)?;
            let template = if check_template_with(&template, &STORM_PLACEHOLDERS).is_ok() {
                template
            } else {
                "Storm on \"{subject}\" to {list} ({audience}); ask {contact} [{queue_id}]: {reason}"
                    .to_owned()
            };
            Some(OwnReply {
                template,
                values: vec![
                    ("subject", text(u)?),
                    ("list", text(u)?),
                    ("audience", u.arbitrary::<u64>()?.to_string()),
                ],
            })
        } else {
            None
        };
        reasons.push(Reason {
            rule: u.choose(&RULES)?,
            action: *u.choose(&Action::ALL)?,
            message: text(u)?,
            monitor: u.arbitrary()?,
            reply,
        });
    }
    Ok(Verdict {
        action,
        intended,
        reasons,
        exempt_by: None,
        notify_sender: u.arbitrary()?,
    })
}

/// The facts of one held message, every field arbitrary.
fn facts(u: &mut Unstructured<'_>) -> Result<NoticeFacts> {
    let list = |u: &mut Unstructured<'_>| -> Result<Vec<String>> {
        let n = u.int_in_range(0..=24)?;
        (0..n).map(|_| text(u)).collect()
    };
    let link = |u: &mut Unstructured<'_>| -> Result<Option<String>> {
        Ok(match u.int_in_range(0..=2)? {
            0 => None,
            1 => Some(format!("https://desk.corp.example/r/{}", text(u)?)),
            _ => Some(text(u)?),
        })
    };
    let mut rules = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        rules.push((u.choose(&RULES)?.to_string(), text(u)?));
    }
    Ok(NoticeFacts {
        subject: text(u)?,
        queue_id: text(u)?,
        held_at: u.arbitrary()?,
        recipients: list(u)?,
        visible: u.arbitrary()?,
        audience: u.arbitrary()?,
        list: if u.arbitrary()? { Some(text(u)?) } else { None },
        rules,
        review_by: u.arbitrary()?,
        confirm_by: u.arbitrary()?,
        links: NoticeLinks {
            withdraw: link(u)?,
            ask: link(u)?,
            send: link(u)?,
        },
        comment: if u.arbitrary()? { Some(text(u)?) } else { None },
        released_to: list(u)?,
        contact: text(u)?,
        host: text(u)?,
    })
}

/// The effect of a verdict, and each of its texts on its own.
fn check_effect(verdict: &Verdict, replies: &Replies, queue_id: &str) {
    let header_max = MAX_LINE - VERDICT_HEADER.len() - ": ".len();
    let e = effect::effect(verdict, replies, queue_id);
    assert!(e.is_complete(), "incomplete effect {e:?} of {verdict:?}");
    assert_eq!(e.action, verdict.action);
    if let Some(h) = &e.header {
        assert_one_line("header value", h, header_max);
    }
    if let Some(h) = &e.hold {
        assert_one_line("hold reason", h, MAX_LINE);
    }
    if let Some(r) = &e.reply {
        check_reply(r);
    }
    assert_one_line("header value", &header_value(verdict), header_max);
    assert_one_line("hold reason", &hold_reason(verdict), MAX_LINE);
    if let Some(r) = smtp_reply(verdict, replies, queue_id) {
        check_reply(&r);
    }
    assert_one_line("effect description", &e.describe(), usize::MAX);
}

/// One SMTP reply line of printable ASCII within RFC 5321's limit.
fn check_reply(r: &effect::Reply) {
    let line = format!("{} {} {}", r.code, r.enhanced, r.text);
    assert_one_line("SMTP reply", &line, MAX_REPLY_LINE - "\r\n".len());
    assert!(
        r.text.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
        "SMTP reply is not printable ASCII: {:?}",
        r.text
    );
}

/// A rendered notice, and the message composed from it.
fn check_notice(kind: &str, (subject, body): (String, String), to: &str) {
    assert_one_line(&format!("{kind} notice subject"), &subject, usize::MAX);
    assert!(
        subject.chars().count() <= MAX_SUBJECT_CHARS,
        "{kind} notice subject is longer than {MAX_SUBJECT_CHARS} characters: {subject:?}"
    );
    if let Some(c) = body
        .chars()
        .find(|&c| c != '\n' && crate::text::is_unsafe(c))
    {
        panic!("{kind} notice body carries {c:?}: {body:?}");
    }
    let from = "fanout-milter <postmaster@relay.corp.example>";
    let message = compose(from, to, (subject.clone(), body.clone()))
        .or_else(|_| compose(from, "ann@corp.example", (subject, body)))
        .unwrap_or_else(|e| panic!("{kind} notice to a plain address not composed: {e}"));
    let mut lines = message.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = match line.strip_suffix(b"\r") {
            Some(l) => l,
            None if lines.peek().is_none() => line,
            None => panic!(
                "{kind} notice has a bare LF after {:?}",
                String::from_utf8_lossy(line)
            ),
        };
        assert!(
            !line.contains(&b'\r'),
            "{kind} notice has a bare CR: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            line.len() <= MAX_LINE,
            "{kind} notice has a line of {} octets",
            line.len()
        );
    }
}

/// Seeds: the shipped configuration's reply templates, the unit tests' subjects.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![Vec::new(), vec![0; 64], vec![0xff; 256]];
    let config = include_str!("../../conf/fanout-milter.toml");
    for line in config.lines() {
        if let Some((key, value)) = line.split_once(" = \"")
            && ["reply", "reject", "tempfail", "contact"].contains(&key.trim())
        {
            let mut seed = vec![1u8, 3, 1];
            seed.extend_from_slice(value.trim_end_matches('"').as_bytes());
            out.push(seed);
        }
    }
    for subject in [
        "Re: all staff party \u{202e}gnp.exe",
        "Quarterly report\r\nBcc: everyone@corp.example",
        "{reason} {contact} {queue_id}",
        "visit www.evil.example or https://evil.example/x",
    ] {
        let mut seed = vec![0u8, 5, 2, 3];
        seed.extend_from_slice(subject.as_bytes());
        out.push(seed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    #[test]
    fn every_seed_renders_cleanly() {
        let seeds = seeds();
        assert!(
            seeds.len() > 5,
            "seeds from the configuration and the tests"
        );
        for seed in seeds {
            templates(&seed);
        }
    }

    fn config() -> Config {
        crate::fuzz::proptest_config(64, 0x7e3a_11c0)
    }

    /// Bytes that favour the [`SPICE`] choices and long runs.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                1 => Just(0u8),
                1 => Just(0xffu8),
                1 => prop::sample::select(vec![b'\r', b'\n', b'{', b'}', 0x1b, 0xe2, 0x80, 0xae]),
            ],
            0..2048,
        )
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_bytes_render_cleanly(data in bytes()) {
            templates(&data);
        }
    }
}
