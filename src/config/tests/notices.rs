// SPDX-License-Identifier: GPL-3.0-or-later
//! Loader tests for `[notices.*]`.

use crate::config::notices::{NoticeKind, NoticeTemplates, check_body};

use super::{EXAMPLE, load_after_domains as load_str, refused_after_domains as refused};

#[test]
fn every_notice_has_its_default_unless_overridden() {
    let c = load_str("").expect("defaults");
    assert_eq!(c.notices, NoticeTemplates::default());
    assert_eq!(c.notices.describe(), "all defaults");
    assert!(!c.effective_toml().contains("[notices"));
}

#[test]
fn an_override_replaces_only_what_it_sets() {
    let c = load_str(
        "[notices.held]\nsubject = \"Waiting: {subject}\"\n\
         [notices.released-to]\nbody = \"\"\"\nSent to {released_to} only.\r\n{comment}\n\"\"\"\n",
    )
    .expect("valid");
    let d = NoticeTemplates::default();
    let held = c.notices.get(NoticeKind::Held);
    assert_eq!(held.subject, "Waiting: {subject}");
    assert_eq!(held.body, d.get(NoticeKind::Held).body, "body kept");
    let to = c.notices.get(NoticeKind::ReleasedTo);
    assert_eq!(
        to.body, "Sent to {released_to} only.\n{comment}\n",
        "CRLF read as LF"
    );
    assert_eq!(to.subject, d.get(NoticeKind::ReleasedTo).subject);
    assert_eq!(
        c.notices.get(NoticeKind::Confirm),
        d.get(NoticeKind::Confirm)
    );
    assert_eq!(
        c.notices.describe(),
        "overridden: held, released-to (the others are the defaults)"
    );
    let printed = c.effective_toml();
    assert!(printed.contains("[notices.held]"), "{printed}");
    assert!(printed.contains("Waiting: {subject}"), "{printed}");
}

#[test]
fn the_shipped_example_loads_when_uncommented() {
    let start = EXAMPLE.find("# [notices.held]").expect("an example");
    let uncommented: String = EXAMPLE[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = load_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(c.notices.overridden(), [NoticeKind::Held]);
    let body = &c.notices.get(NoticeKind::Held).body;
    assert!(body.starts_with("Your message \"{subject}\""), "{body}");
    check_body(NoticeKind::Held, body).unwrap();
}

#[test]
fn unknown_kinds_are_refused_naming_the_known_ones() {
    refused(
        "[notices.hold]\nsubject = \"x\"\n",
        3,
        "notices.hold",
        "unknown notice \"hold\": use held, confirm, summary, released, released-to, \
         discarded, expired, unconfirmed, withdrawn",
    );
    refused(
        "[notices.held]\n",
        3,
        "notices.held",
        "set subject, body or both",
    );
    refused(
        "[notices.held]\ntext = \"x\"\n",
        4,
        "notices.held.text",
        "unknown field",
    );
}

#[test]
fn placeholders_are_checked_for_their_kind() {
    refused(
        "[notices.released]\nsubject = \"ok {subject}\"\nbody = \"Withdraw: {link_withdraw}\"\n",
        5,
        "notices.released.body",
        "unknown placeholder \"{link_withdraw}\" for the body of this notice; it may use \
         {subject} {queue_id}",
    );
    refused(
        "[notices.held]\nsubject = \"{link_ask}\"\n",
        4,
        "notices.held.subject",
        "unknown placeholder \"{link_ask}\" for a subject",
    );
    refused(
        "[notices.summary]\nbody = \"{count}: {subject}\"\n",
        4,
        "notices.summary.body",
        "it may use {count} {messages} {contact} {host}",
    );
    refused(
        "[notices.held]\nbody = \"open {subject\"\n",
        4,
        "notices.held.body",
        "without a closing",
    );
    refused(
        "[notices.held]\nbody = \"a } b\"\n",
        4,
        "notices.held.body",
        "without an opening",
    );
}

#[test]
fn subjects_are_one_line_and_bodies_bounded() {
    refused(
        "[notices.held]\nsubject = \"a\\nBcc: x\"\n",
        4,
        "notices.held.subject",
        "must be one line",
    );
    refused(
        "[notices.held]\nsubject = \"a\\u202Eb\"\n",
        4,
        "notices.held.subject",
        "\\u{202E}",
    );
    refused(
        "[notices.withdrawn]\nbody = \"\"\n",
        4,
        "notices.withdrawn.body",
        "must not be empty",
    );
    refused(
        &format!(
            "[notices.withdrawn]\nbody = \"{}\"\n",
            "x".repeat(16 * 1024 + 1)
        ),
        4,
        "notices.withdrawn.body",
        "16 KiB",
    );
    refused(
        "[notices.withdrawn]\nbody = \"ok\\u0007\"\n",
        4,
        "notices.withdrawn.body",
        "control or invisible character",
    );
}

#[test]
fn every_bad_notice_is_reported_at_once() {
    let err = load_str(
        "[notices.held]\nsubject = \"\"\nbody = \"{nope}\"\n[notices.nope]\nbody = \"x\"\n",
    )
    .expect_err("refused");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["notices.held.subject", "notices.held.body", "notices.nope"],
        "{err}"
    );
}
