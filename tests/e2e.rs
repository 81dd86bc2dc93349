// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end: real SMTP into a private Postfix with fanout-milter attached, relaying to
//! smtp-sink. Needs root and Postfix (scripts/test installs it).

mod common;

use common::*;
use nix::sys::signal::Signal;

const POLICY: &str = r#"
[domains]
internal = ["corp.example"]

[limits.envelope]
tag = 10
quarantine = 20
reject = 40

[limits.external]
quarantine = 0

[reply]
contact = "the Corp service desk on 01234 567890"
"#;

struct Setup {
    _dir: tempfile::TempDir,
    sink: Sink,
    milter: Milter,
    postfix: Postfix,
}

fn setup(name: &str, config: &str) -> Setup {
    require_postfix();
    let dir = scratch_dir(name);
    let sink = Sink::start(dir.path());
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let milter = Milter::start(dir.path(), &listen, config);
    let postfix = Postfix::start(dir.path(), &sink, &listen);
    Setup {
        _dir: dir,
        sink,
        milter,
        postfix,
    }
}

#[test]
fn smtp_messages_get_their_verdicts() {
    let s = setup("smtp", POLICY);
    let port = s.postfix.smtp_port;

    // a. 5 recipients: delivered unchanged.
    smtp_send(
        port,
        "ann@corp.example",
        &rcpts(5, "corp.example"),
        &message("e2e-accept", "team@corp.example"),
    )
    .expect("5 recipients are accepted");
    let m = s.sink.wait_for("e2e-accept");
    assert_eq!(m.rcpts.len(), 5);
    assert!(
        !m.text.contains("X-Fanout-Verdict"),
        "an accepted message is not tagged"
    );

    // b. tag level: delivered with the verdict header.
    smtp_send(
        port,
        "ann@corp.example",
        &rcpts(12, "corp.example"),
        &message("e2e-tag", "team@corp.example"),
    )
    .expect("12 recipients are accepted with a tag");
    let m = s.sink.wait_for("e2e-tag");
    assert_eq!(m.rcpts.len(), 12);
    assert!(
        m.has_header(
            "X-Fanout-Verdict",
            "tag; limits.envelope: 12 envelope recipients >= tag level 10"
        ),
        "tagged message carries the verdict header:\n{}",
        m.text
    );

    // c. quarantine level: accepted into the hold queue, never relayed.
    smtp_send(
        port,
        "ann@corp.example",
        &rcpts(25, "corp.example"),
        &message("e2e-hold", "team@corp.example"),
    )
    .expect("a quarantined message is accepted by SMTP");
    let held = s.postfix.held();
    assert_eq!(
        held.len(),
        1,
        "one message on hold: {:?}",
        s.postfix.queue()
    );
    let qid = &held[0];
    let reason = "limits.envelope: 25 envelope recipients >= quarantine level 20";
    let line = s.milter.decision(qid);
    assert!(
        line.contains("verdict=quarantine") && line.contains(reason),
        "log line: {line}"
    );
    let headers = s.postfix.postcat_headers(qid);
    assert!(
        headers.contains(&format!("X-Fanout-Verdict: quarantine; {reason}")),
        "held message carries the reason:\n{headers}"
    );
    assert!(s.postfix.maillog().contains(&format!("{qid}: milter-hold")));

    // d. reject level: 550 5.7.1 with the configured text; nothing queued.
    let err = smtp_send(
        port,
        "ann@corp.example",
        &rcpts(45, "corp.example"),
        &message("e2e-reject", "team@corp.example"),
    )
    .expect_err("45 recipients are refused");
    assert_eq!(err.code, 550, "{err:?}");
    assert!(err.text.contains("5.7.1"), "{err:?}");
    assert!(
        err.text.contains("the Corp service desk on 01234 567890"),
        "{err:?}"
    );
    assert!(
        err.text
            .contains("45 envelope recipients >= reject level 40"),
        "{err:?}"
    );
    assert_eq!(
        s.postfix.queue().len(),
        1,
        "only the held message is queued"
    );

    // Held and refused messages never reach the sink.
    assert!(s.sink.find("e2e-hold").is_empty());
    assert!(s.sink.find("e2e-reject").is_empty());

    // The SASL login arrives, although the milter asks Postfix for few macros.
    smtp_send_as(
        port,
        "alice@corp.example",
        "alice@corp.example",
        &rcpts(2, "corp.example"),
        &message("e2e-login", "team@corp.example"),
    );
    s.sink.wait_for("e2e-login");
    let log = s.milter.log();
    let line = log
        .lines()
        .find(|l| l.contains("decision") && l.contains("sender=\"alice@corp.example\""))
        .unwrap_or_else(|| panic!("no decision for alice's message: {log}"));
    assert!(line.contains("sasl_login=\"alice@corp.example\""), "{line}");
}

#[test]
fn sendmail_messages_get_the_same_verdicts() {
    let s = setup("sendmail", POLICY);

    s.postfix.sendmail(
        "ann@corp.example",
        &rcpts(5, "corp.example"),
        &message("sm-accept", "team@corp.example"),
    );
    let m = s.sink.wait_for("sm-accept");
    assert_eq!(m.rcpts.len(), 5);
    assert!(!m.text.contains("X-Fanout-Verdict"));

    s.postfix.sendmail(
        "ann@corp.example",
        &rcpts(12, "corp.example"),
        &message("sm-tag", "team@corp.example"),
    );
    let m = s.sink.wait_for("sm-tag");
    assert!(
        m.has_header(
            "X-Fanout-Verdict",
            "tag; limits.envelope: 12 envelope recipients"
        ),
        "{}",
        m.text
    );

    s.postfix.sendmail(
        "ann@corp.example",
        &rcpts(25, "corp.example"),
        &message("sm-hold", "team@corp.example"),
    );
    let qid = wait_for("the sendmail message on hold", || {
        s.postfix.held().into_iter().next()
    });
    let headers = s.postfix.postcat_headers(&qid);
    assert!(
        headers.contains("X-Fanout-Verdict: quarantine; limits.envelope: 25 envelope recipients"),
        "{headers}"
    );
    assert!(s.milter.decision(&qid).contains("verdict=quarantine"));

    // A refused non-SMTP message cannot get an SMTP reply: Postfix bounces it to the
    // sender with the milter's text, so the sender still learns what happened.
    s.postfix.sendmail(
        "ann@corp.example",
        &rcpts(45, "corp.example"),
        &message("sm-reject", "team@corp.example"),
    );
    let bounce = s
        .sink
        .wait_until("Undelivered Mail Returned to Sender", |m| {
            m.text.trim_end().ends_with("--")
        });
    assert_eq!(bounce.rcpts, ["ann@corp.example"]);
    assert!(bounce.text.contains("5.7.1"), "{}", bounce.text);
    assert!(
        bounce.text.contains("the Corp service desk"),
        "{}",
        bounce.text
    );
    assert!(
        bounce.text.contains("sm-reject"),
        "the bounce names the refused message"
    );
    assert!(
        s.sink
            .messages()
            .iter()
            .all(|m| m.from.is_empty() || !m.text.contains("Subject: sm-reject")),
        "the refused message itself was not delivered"
    );
    assert!(s.sink.find("sm-hold").is_empty());
}

#[test]
fn milter_down_means_tempfail_and_nothing_lost() {
    let mut s = setup("down", POLICY);
    let port = s.postfix.smtp_port;
    assert!(
        s.milter.stop().success(),
        "SIGTERM exits 0:\n{}",
        s.milter.log()
    );
    assert!(s.milter.log().contains("shut down"));

    let err = smtp_send(
        port,
        "ann@corp.example",
        &rcpts(2, "corp.example"),
        &message("e2e-down", "team@corp.example"),
    )
    .expect_err("no milter: Postfix must not accept the message");
    assert!(
        (400..500).contains(&err.code),
        "a temporary failure, got {err:?}"
    );
    assert!(s.postfix.queue().is_empty(), "nothing queued unchecked");
    assert!(
        s.sink.find("e2e-down").is_empty(),
        "nothing delivered unchecked"
    );

    // The client retries once the milter is back, and the message goes through.
    s.milter = Milter::start_file(
        s._dir.path(),
        &s.milter.listen.clone(),
        s.milter.config.clone(),
    );
    smtp_send(
        port,
        "ann@corp.example",
        &rcpts(2, "corp.example"),
        &message("e2e-down", "team@corp.example"),
    )
    .expect("accepted once the milter is back");
    assert_eq!(s.sink.wait_for("e2e-down").rcpts.len(), 2);
}

#[test]
fn hostile_headers_get_a_verdict_and_never_crash_the_milter() {
    let mut s = setup("hostile", POLICY);
    let port = s.postfix.smtp_port;
    let to = rcpts(2, "corp.example");

    let mut invalid_utf8 = b"From: \xff\xfe <ann@corp.example>\r\nTo: \xc3\x28 <x@corp.example>\r\nSubject: hostile-utf8 \xf0\x28\x8c\x28\r\n\r\nEND-OF-TEST-BODY\r\n".to_vec();
    invalid_utf8.extend_from_slice(b"");
    let long_line = format!(
        "Subject: hostile-long\r\nX-Long: {}\r\n\r\nEND-OF-TEST-BODY\r\n",
        "a".repeat(200 * 1024)
    );
    let mut many_to = String::from("Subject: hostile-many-to\r\n");
    for h in 0..400 {
        let list: Vec<String> = (0..50)
            .map(|i| format!("v{}@corp.example", h * 50 + i))
            .collect();
        many_to.push_str(&format!("To: {}\r\n", list.join(", ")));
    }
    many_to.push_str("\r\nEND-OF-TEST-BODY\r\n");
    let no_headers = b"\r\nhostile-no-headers\r\nEND-OF-TEST-BODY\r\n".to_vec();

    for (needle, msg) in [
        ("hostile-utf8", invalid_utf8),
        ("hostile-long", long_line.into_bytes()),
        ("hostile-many-to", many_to.into_bytes()),
        ("hostile-no-headers", no_headers),
    ] {
        smtp_send(port, "ann@corp.example", &to, &msg)
            .unwrap_or_else(|e| panic!("{needle}: refused {e:?}\nmilter log:\n{}", s.milter.log()));
        s.sink.wait_for(needle);
        assert!(
            s.milter.is_running(),
            "milter died on {needle}:\n{}",
            s.milter.log()
        );
    }
    let decisions: Vec<String> = s
        .milter
        .log()
        .lines()
        .filter(|l| l.contains("decision"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        decisions.len(),
        4,
        "one decision per message:\n{}",
        s.milter.log()
    );
    assert!(
        decisions.iter().any(|l| l.contains("visible=20000")),
        "all 20,000 To addresses were seen:\n{decisions:#?}"
    );
    assert!(!s.milter.log().contains("panic"));
    assert!(s.milter.stop().success());
}

#[test]
fn sighup_reloads_and_keeps_old_config_when_invalid() {
    let s = setup("reload", POLICY);
    let port = s.postfix.smtp_port;
    let config = std::fs::read_to_string(&s.milter.config).expect("config");

    let lowered = config
        .replace("tag = 10", "tag = 3")
        .replace("quarantine = 20", "quarantine = 4")
        .replace("reject = 40", "reject = 5");
    assert_ne!(lowered, config);
    std::fs::write(&s.milter.config, lowered).expect("write");
    s.milter.signal(Signal::SIGHUP);
    wait_for("the reload", || {
        let log = s.milter.log();
        assert!(
            !log.contains("configuration not reloaded"),
            "valid config refused:\n{log}"
        );
        log.contains("configuration reloaded").then_some(())
    });
    let err = smtp_send(
        port,
        "ann@corp.example",
        &rcpts(6, "corp.example"),
        &message("reload-1", "t@corp.example"),
    )
    .expect_err("the new reject level applies");
    assert_eq!(err.code, 550);

    std::fs::write(&s.milter.config, "[milter]\nbogus = 1\n").expect("write");
    s.milter.signal(Signal::SIGHUP);
    let log = wait_for("the refused reload", || {
        let log = s.milter.log();
        log.contains("configuration not reloaded").then_some(log)
    });
    assert!(
        log.contains("fanout-milter.toml:2"),
        "the error names file and line:\n{log}"
    );
    assert!(
        log.contains("milter.bogus"),
        "the error names the key:\n{log}"
    );
    let err = smtp_send(
        port,
        "ann@corp.example",
        &rcpts(6, "corp.example"),
        &message("reload-2", "t@corp.example"),
    )
    .expect_err("the previous config still applies");
    assert_eq!(err.code, 550);
}

#[test]
fn unix_socket_with_postfix() {
    require_postfix();
    let dir = scratch_dir("unix");
    let sink = Sink::start(dir.path());
    let sock = dir.path().join("milter.sock");
    let listen = format!("unix:{}", sock.display());
    let mut milter = Milter::start(
        dir.path(),
        &listen,
        &POLICY.replace("[domains]", "[milter]\nsocket_mode = \"0666\"\n\n[domains]"),
    );
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let postfix = Postfix::start(dir.path(), &sink, &listen);

    smtp_send(
        postfix.smtp_port,
        "ann@corp.example",
        &rcpts(12, "corp.example"),
        &message("unix-tag", "t@corp.example"),
    )
    .expect("accepted");
    assert!(
        sink.wait_for("unix-tag")
            .has_header("X-Fanout-Verdict", "tag;")
    );
    assert!(milter.stop().success());
    assert!(!sock.exists(), "the socket file is removed at shutdown");
}
