// SPDX-License-Identifier: GPL-3.0-or-later
//! Notice rendering: every kind, hostile values, plain reasons, custom templates and
//! summaries.

use super::*;

const WITHDRAW: &str = "https://review.corp.example/s/withdraw/AAAA";
const ASK: &str = "https://review.corp.example/s/ask/BBBB";
const SEND: &str = "https://review.corp.example/s/send/CCCC";

fn facts() -> NoticeFacts {
    NoticeFacts {
        subject: "Rota for December".into(),
        queue_id: "4AbCdEf123".into(),
        held_at: 1_800_021_600,
        recipients: vec!["ward4@corp.example".into(), "trust-all@corp.example".into()],
        visible: 3,
        audience: 4000,
        list: Some("trust-all@corp.example".into()),
        rules: vec![(
            "hidden".into(),
            "visible 3, real audience 4,000, 3,997 of them through addresses no To/Cc shows".into(),
        )],
        review_by: Some(1_800_036_000),
        confirm_by: Some(1_800_108_000),
        links: NoticeLinks {
            withdraw: Some(WITHDRAW.into()),
            ask: Some(ASK.into()),
            send: Some(SEND.into()),
        },
        comment: Some("Please send it to your ward only.".into()),
        released_to: vec!["ward4@corp.example".into()],
        contact: "the Service Desk on 4242".into(),
        host: "relay1".into(),
    }
}

/// The parsed notice: its headers by name (lower case) and its body text.
fn parse(mail: &[u8]) -> (Vec<(String, String)>, String) {
    let msg = mail_parser::MessageParser::default()
        .parse(mail)
        .expect("a message");
    let headers = msg
        .headers()
        .iter()
        .map(|h| {
            let raw =
                String::from_utf8_lossy(&mail[h.offset_field() as usize..h.offset_end() as usize]);
            (h.name().to_ascii_lowercase(), raw.trim().to_owned())
        })
        .collect();
    let body = msg.body_text(0).expect("a text body").into_owned();
    (headers, body)
}

fn count_of(headers: &[(String, String)], name: &str) -> usize {
    headers.iter().filter(|(n, _)| n == name).count()
}

/// Every `scheme://` in `text`, as the rest of its word.
fn urls(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| w.contains("://"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_kind_renders_its_facts() {
    let t = NoticeTemplates::default();
    let f = facts();
    for kind in NoticeKind::kinds() {
        let (subject, body) = t.render(kind, &f);
        assert!(subject.contains("Rota for December") || kind == NoticeKind::Summary);
        assert!(!subject.contains('{'), "{kind:?}: {subject}");
        assert!(
            !body.contains('{'),
            "{kind:?}: every placeholder filled: {body}"
        );
        assert!(body.contains("4AbCdEf123"), "{kind:?}: {body}");
        assert!(
            body.contains("the Service Desk on 4242"),
            "{kind:?}: {body}"
        );
        assert!(body.contains("relay1"), "{kind:?}: {body}");
        assert!(
            body.ends_with(".\n") || body.ends_with(")\n"),
            "{kind:?}: {body}"
        );
        assert!(!body.contains("\n\n\n"), "{kind:?}: {body}");
        let links = urls(&body);
        let expected: &[&str] = match kind {
            NoticeKind::Held => &[WITHDRAW, ASK],
            NoticeKind::Confirm => &[SEND, WITHDRAW],
            NoticeKind::Summary => &[SEND, WITHDRAW, ASK],
            _ => &[],
        };
        assert_eq!(
            links, expected,
            "{kind:?}: links only where the kind has them"
        );
    }
    let (_, held) = t.render(NoticeKind::Held, &f);
    assert!(held.contains("NOT been sent yet"), "{held}");
    assert!(
        held.contains(
            "your message would reach 4,000 people through trust-all@corp.example; \
             you could see 3 addresses."
        ),
        "{held}"
    );
    assert!(
        held.contains("by Friday 15 January 2027 at 18:00 UTC"),
        "{held}"
    );
    assert!(
        held.contains("Time:       Friday 15 January 2027 at 14:00 UTC"),
        "{held}"
    );
    assert!(
        held.contains("To:         ward4@corp.example, trust-all@corp.example"),
        "{held}"
    );
    let (_, confirm) = t.render(NoticeKind::Confirm, &f);
    assert!(
        confirm.contains("withdrawn at Saturday 16 January 2027 at 14:00 UTC"),
        "{confirm}"
    );
    let (subject, released_to) = t.render(NoticeKind::ReleasedTo, &f);
    assert_eq!(subject, "Sent to some recipients only: Rota for December");
    assert!(
        released_to.contains("only to: ward4@corp.example.\n"),
        "{released_to}"
    );
    let (subject, discarded) = t.render(NoticeKind::Discarded, &f);
    assert_eq!(subject, "Not sent: Rota for December");
    assert!(
        discarded.contains("Note from the mail team: Please send it to your ward only."),
        "the reviewer's words: {discarded}"
    );
    let (_, expired) = t.render(NoticeKind::Expired, &f);
    assert!(
        expired.contains("nobody could check it in time"),
        "{expired}"
    );
    assert!(
        !expired.contains("ward only"),
        "no comment on expiry: {expired}"
    );
    let (_, unconfirmed) = t.render(NoticeKind::Unconfirmed, &f);
    assert!(
        unconfirmed.contains("no answer by Saturday 16 January 2027 at 14:00 UTC"),
        "{unconfirmed}"
    );
    let (subject, withdrawn) = t.render(NoticeKind::Withdrawn, &f);
    assert_eq!(subject, "Withdrawn: Rota for December");
    assert!(
        withdrawn.contains("You withdrew your message"),
        "{withdrawn}"
    );
}

#[test]
fn missing_facts_read_as_plain_words() {
    let t = NoticeTemplates::default();
    let mut f = facts();
    f.links = NoticeLinks::default();
    f.comment = None;
    f.review_by = None;
    f.recipients = (0..25).map(|i| format!("u{i}@corp.example")).collect();
    let (_, held) = t.render(NoticeKind::Held, &f);
    assert!(urls(&held).is_empty(), "{held}");
    assert_eq!(
        held.matches("(no link is available; please contact the Service Desk on 4242)")
            .count(),
        2,
        "{held}"
    );
    assert!(held.contains("as soon as possible"), "{held}");
    assert!(held.contains("u19@corp.example and 5 more"), "{held}");
    assert!(!held.contains("u20@"), "{held}");
    let (_, discarded) = t.render(NoticeKind::Discarded, &f);
    assert!(
        discarded.contains("Note from the mail team: (none)"),
        "{discarded}"
    );
    // A link that is not one is not shown.
    f.links.withdraw = Some("javascript:alert(1)".into());
    f.links.ask = Some("https://x.example/a b".into());
    let (_, held) = t.render(NoticeKind::Held, &f);
    assert!(!held.contains("javascript"), "{held}");
    assert!(!held.contains("x.example"), "{held}");
}

/// A subject that tries everything: header injection, bidi, NUL, a placeholder and
/// links of its own.
const HOSTILE: &str = "Hi\r\nBcc: all@corp.example\r\nAuto-Submitted: no\u{202e}\0 \
                       {link_withdraw} {reason} https://evil.example/withdraw \
                       www.evil.example\n\nWithdraw it:\n  https://evil.example/w";

#[test]
fn a_hostile_subject_changes_no_header_link_or_placeholder() {
    let t = NoticeTemplates::default();
    let mut f = facts();
    f.subject = HOSTILE.into();
    f.list = Some("trust-all@corp.example\r\nhttp://evil.example".into());
    f.recipients.push("x\n{link_ask}@corp.example".into());
    f.comment = Some("see\r\nhttps://evil.example/c {link_send}".into());
    f.queue_id = "Q\r\nX-Evil: 1".into();
    for kind in NoticeKind::kinds() {
        let rendered = t.render(kind, &f);
        assert!(
            !rendered.0.contains(['\r', '\n', '\0', '\u{202e}']),
            "{:?}",
            rendered.0
        );
        let mail = compose(
            "postmaster@corp.example",
            "ann@corp.example",
            rendered.clone(),
        )
        .expect("composed");
        let (headers, body) = parse(&mail);
        for name in ["subject", "from", "to", "auto-submitted"] {
            assert_eq!(
                count_of(&headers, name),
                1,
                "{kind:?}: one {name}: {headers:?}"
            );
        }
        assert_eq!(count_of(&headers, "bcc"), 0, "{headers:?}");
        assert_eq!(count_of(&headers, "x-evil"), 0, "{headers:?}");
        let auto = headers.iter().find(|(n, _)| n == "auto-submitted").unwrap();
        assert_eq!(auto.1, "Auto-Submitted: auto-generated");
        let to = headers.iter().find(|(n, _)| n == "to").unwrap();
        assert_eq!(to.1, "To: ann@corp.example");
        let body = body.replace("\r\n", "\n");
        let expected: &[&str] = match kind {
            NoticeKind::Held => &[WITHDRAW, ASK],
            NoticeKind::Confirm => &[SEND, WITHDRAW],
            NoticeKind::Summary => &[SEND, WITHDRAW, ASK],
            _ => &[],
        };
        assert_eq!(urls(&body), expected, "{kind:?}: {body}");
        assert!(!body.contains("www.evil"), "{kind:?}: {body}");
        assert!(!body.contains('\u{202e}') && !body.contains('\0'), "{body}");
        // No line that came from a value starts a line of its own.
        for line in body.lines() {
            assert!(!line.starts_with("Bcc:"), "{kind:?}: {body}");
            assert!(!line.trim_start().starts_with("https://evil"), "{body}");
            assert!(!line.starts_with("X-Evil"), "{body}");
        }
        // The subject's placeholders stay text (wherever the subject is shown).
        if body.contains("Hi\\x0D\\x0ABcc") {
            assert!(
                body.contains("{link_withdraw} {reason}"),
                "{kind:?}: {body}"
            );
        }
    }
    let (subject, body) = t.render(NoticeKind::Held, &f);
    assert!(
        subject.starts_with("Not sent yet, waiting for a check: Hi\\x0D\\x0ABcc"),
        "{subject}"
    );
    assert!(subject.contains("\\u{202E}\\x00"), "{subject}");
    assert!(
        body.contains(
            "{link_withdraw} {reason} https[:]//evil.example/withdraw www[.]evil.example"
        ),
        "{body}"
    );
    assert!(body.contains("x\\x0A{link_ask}@corp.example"), "{body}");
}

#[test]
fn a_long_subject_is_capped_in_the_header() {
    let t = NoticeTemplates::default();
    let mut f = facts();
    f.subject = "ü".repeat(5000);
    let (subject, body) = t.render(NoticeKind::Held, &f);
    assert!(
        subject.chars().count() <= 250,
        "{}",
        subject.chars().count()
    );
    assert!(body.contains(&format!("{}…", "ü".repeat(text::MAX_SUBJECT_CHARS - 1))));
    let mail = compose("postmaster", "ann@corp.example", (subject, body)).unwrap();
    let (headers, _) = parse(&mail);
    assert_eq!(count_of(&headers, "subject"), 1);
    assert!(matches!(
        compose(
            "postmaster",
            "not an address",
            t.render(NoticeKind::Held, &f)
        ),
        Err(ComposeError::Address(_))
    ));
}

#[test]
fn each_rule_has_a_plain_reason() {
    let mut f = facts();
    f.recipients = vec!["a@corp.example".into(); 240];
    let reason = |f: &NoticeFacts, rule: &str| {
        let mut f = f.clone();
        f.rules = vec![(
            rule.into(),
            "jargon: 4000 >= 500 (fanout-milter directory accept)".into(),
        )];
        plain_reason(&f)
    };
    let cases = [
        (
            "hidden",
            "your message would reach 4,000 people through trust-all@corp.example; you could see 3 addresses",
        ),
        (
            "restricted",
            "trust-all@corp.example (4,000 people) only takes mail from certain senders",
        ),
        ("limits.envelope", "it was addressed to 240 recipients"),
        ("limits.external", "outside our organisation"),
        ("limits.audience", "it would reach 4,000 people"),
        (
            "scope",
            "trust-all@corp.example also reaches people outside",
        ),
        (
            "drift",
            "trust-all@corp.example has grown a lot recently (now 4,000 people)",
        ),
        ("expansion.on_unknown", "could not count everyone"),
        ("breaker", "paused for everyone"),
        ("brake", "checked by hand"),
        ("storm", "replying to everyone"),
        ("rate", "in a short time"),
        ("foreign", "another part of the mail system"),
        ("copy", "some of its recipients"),
        ("something.new", "needs a check before it goes out"),
    ];
    for (rule, expected) in cases {
        let r = reason(&f, rule);
        assert!(r.contains(expected), "{rule}: {r}");
        for jargon in [
            "jargon",
            ">=",
            "fanout-milter",
            "envelope",
            "audience",
            "limits",
        ] {
            assert!(!r.contains(jargon), "{rule}: {jargon} in {r}");
        }
    }
    f.list = None;
    f.visible = 1;
    assert_eq!(
        reason(&f, "hidden"),
        "your message would reach 4,000 people, though you could see only 1 address"
    );
    assert!(reason(&f, "restricted").starts_with("one of the lists"));
    f.rules = vec![
        ("limits.audience".into(), String::new()),
        ("hidden".into(), String::new()),
        ("limits.audience".into(), String::new()),
    ];
    assert_eq!(
        plain_reason(&f),
        "it would reach 4,000 people, more than one message may reach without a check; \
         and your message would reach 4,000 people, though you could see only 1 address"
    );
    f.rules.clear();
    assert!(plain_reason(&f).contains("needs a check"));
}

#[test]
fn a_custom_template_from_the_configuration_is_used() {
    let src = "[domains]\ninternal = [\"corp.example\"]\n[notices.held]\n\
               subject = \"Wait: {subject} ({audience} people)\"\n\
               body = \"\"\"\nHeld {subject} for {list}.\n{subject} ... {reason}\nWithdraw: {link_withdraw}\n\"\"\"\n";
    let config = crate::config::parse(src, std::path::Path::new("/x.toml")).expect("valid");
    assert_eq!(config.notices.overridden(), [NoticeKind::Held]);
    let mut f = facts();
    f.subject = "{link_withdraw}".into();
    let (subject, body) = config.notices.render(NoticeKind::Held, &f);
    assert_eq!(subject, "Wait: {link_withdraw} (4,000 people)");
    assert_eq!(
        body,
        format!(
            "Held {{link_withdraw}} for trust-all@corp.example.\n\
             {{link_withdraw}} ... your message would reach 4,000 people through \
             trust-all@corp.example; you could see 3 addresses\n\
             Withdraw: {WITHDRAW}\n"
        )
    );
    let (default_subject, _) = config.notices.render(NoticeKind::Confirm, &f);
    assert!(
        default_subject.starts_with("Please confirm"),
        "{default_subject}"
    );
}

#[test]
fn a_summary_of_three_has_a_block_and_links_each() {
    let t = NoticeTemplates::default();
    let all: Vec<NoticeFacts> = (1..=3)
        .map(|i| {
            let mut f = facts();
            f.subject = format!("Message {i}");
            f.queue_id = format!("Q{i}");
            f.links = NoticeLinks {
                withdraw: Some(format!("https://review.corp.example/s/withdraw/{i}")),
                ask: (i != 2).then(|| format!("https://review.corp.example/s/ask/{i}")),
                send: (i == 2).then(|| format!("https://review.corp.example/s/send/{i}")),
            };
            if i != 2 {
                f.confirm_by = None;
            }
            f
        })
        .collect();
    let (subject, body) = t.render_summary(&all);
    assert_eq!(subject, "Not sent yet: 3 more of your messages");
    assert_eq!(body.matches("\n* \"Message ").count(), 3, "{body}");
    let blocks: Vec<&str> = body.split("\n* ").skip(1).collect();
    for (i, block) in blocks.iter().enumerate() {
        let n = i + 1;
        assert!(
            block.starts_with(&format!("\"Message {n}\" (reference Q{n})")),
            "{block}"
        );
        let mut expected = vec![format!("https://review.corp.example/s/withdraw/{n}")];
        if n == 2 {
            expected.insert(0, format!("https://review.corp.example/s/send/{n}"));
            assert!(
                block.contains("withdrawn at Saturday 16 January 2027 at 14:00 UTC"),
                "{block}"
            );
        } else {
            expected.push(format!("https://review.corp.example/s/ask/{n}"));
            assert!(
                block.contains("look at it by Friday 15 January 2027 at 18:00 UTC"),
                "{block}"
            );
        }
        let found: Vec<String> = urls(block);
        assert_eq!(found, expected, "{block}");
    }
    assert!(body.contains("the Service Desk on 4242"), "{body}");
    let mail = compose(
        "postmaster@corp.example",
        "ann@corp.example",
        (subject, body),
    )
    .unwrap();
    let (headers, text) = parse(&mail);
    assert_eq!(count_of(&headers, "subject"), 1);
    assert_eq!(urls(&text).len(), 6, "{text}");
}

#[test]
fn defanging_breaks_schemes_and_www_only() {
    assert_eq!(
        defang("see https://a.example or WWW.b.example"),
        "see https[:]//a.example or WWW[.]b.example"
    );
    assert_eq!(defang("Rota v1.2 for ward 4"), "Rota v1.2 for ward 4");
    assert_eq!(defang("äwww.ü"), "äwww[.]ü");
}

/// The shortened link the README's notices show.
const README_LINK: &str = "https://review.example.org/...";

/// A message to a Bcc'd list, as the README's notices tell of it.
fn readme_held() -> NoticeFacts {
    let mut f = facts();
    f.recipients = vec!["ward4@example.org".into(), "trust-all@example.org".into()];
    f.list = Some("trust-all@example.org".into());
    f.links = NoticeLinks {
        withdraw: Some(README_LINK.into()),
        ask: Some(README_LINK.into()),
        send: None,
    };
    f.confirm_by = None;
    f.comment = None;
    f.released_to = Vec::new();
    f
}

/// A message held for its sender's confirmation, as the README shows it.
fn readme_confirm() -> NoticeFacts {
    let mut f = readme_held();
    f.subject = "Car park closed on Monday".into();
    f.queue_id = "4BcDeFg456".into();
    f.recipients = vec![
        "ann.smith@example.org".into(),
        "staff-north@example.org".into(),
    ];
    f.visible = 1;
    f.audience = 1200;
    f.list = Some("staff-north@example.org".into());
    f.review_by = None;
    f.confirm_by = Some(f.held_at + 24 * 3600);
    f.links = NoticeLinks {
        withdraw: Some(README_LINK.into()),
        ask: None,
        send: Some(README_LINK.into()),
    };
    f
}

/// Every notice the README shows, in its order: the kind and its rendering.
fn readme_notices() -> Vec<(NoticeKind, (String, String))> {
    let t = NoticeTemplates::default();
    let held = readme_held();
    let confirm = readme_confirm();
    let mut later = vec![readme_held(), readme_confirm()];
    later[0].subject = "Rota for December (corrected)".into();
    later[0].queue_id = "4CdEfGh789".into();
    later[0].held_at += 240;
    later[0].review_by = later[0].review_by.map(|t| t + 240);
    later[1].subject = "Parking permits for 2027".into();
    later[1].queue_id = "4DeFgHi012".into();
    later[1].held_at += 420;
    later[1].confirm_by = later[1].confirm_by.map(|t| t + 420);
    let with = |comment: &str| {
        let mut f = readme_held();
        f.comment = Some(comment.into());
        f
    };
    let mut to_ward = with("Please send the rota to your own ward only.");
    to_ward.released_to = vec!["ward4@example.org".into()];
    vec![
        (NoticeKind::Held, t.render(NoticeKind::Held, &held)),
        (NoticeKind::Confirm, t.render(NoticeKind::Confirm, &confirm)),
        (NoticeKind::Summary, t.render_summary(&later)),
        (
            NoticeKind::Released,
            t.render(
                NoticeKind::Released,
                &with("Checked with the ward manager: the rota is for all staff."),
            ),
        ),
        (
            NoticeKind::ReleasedTo,
            t.render(NoticeKind::ReleasedTo, &to_ward),
        ),
        (
            NoticeKind::Discarded,
            t.render(
                NoticeKind::Discarded,
                &with("This would have gone to the whole trust; please send it to ward 4 only."),
            ),
        ),
        (NoticeKind::Expired, t.render(NoticeKind::Expired, &held)),
        (
            NoticeKind::Unconfirmed,
            t.render(NoticeKind::Unconfirmed, &confirm),
        ),
        (
            NoticeKind::Withdrawn,
            t.render(NoticeKind::Withdrawn, &held),
        ),
    ]
}

/// The notices shown in the README's "What senders see": each code block that starts
/// with `Subject: `.
fn readme_blocks() -> Vec<&'static str> {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("\n## What senders see\n")
        .expect("the README's \"What senders see\"");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```")
        .skip(1)
        .step_by(2)
        .filter_map(|b| b.strip_prefix('\n'))
        .filter(|b| b.starts_with("Subject: "))
        .collect()
}

#[test]
fn the_readme_shows_every_notice_as_it_is_rendered() {
    let blocks = readme_blocks();
    let notices = readme_notices();
    for (kind, (subject, body)) in &notices {
        let rendered = format!("Subject: {subject}\n\n{body}");
        assert!(
            blocks.contains(&rendered.as_str()),
            "the README's \"What senders see\" must show the {} notice as it is \
             rendered:\n```\n{rendered}```",
            kind.as_str()
        );
    }
    assert_eq!(
        blocks.len(),
        notices.len(),
        "every notice block in the README is one of the rendered notices, once"
    );
    let kinds: Vec<NoticeKind> = notices.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        NoticeKind::kinds(),
        "every kind, in the README's order"
    );
    let order: Vec<usize> = notices
        .iter()
        .map(|(_, (s, b))| {
            let rendered = format!("Subject: {s}\n\n{b}");
            blocks
                .iter()
                .position(|x| *x == rendered)
                .unwrap_or(usize::MAX)
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}
