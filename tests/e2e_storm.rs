// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, reply-all storm: reply-alls sent by SMTP through a private Postfix are
//! cut after `min_messages`, every stopped sender reads why in the SMTP reply, and
//! `storms list` / `storms clear` reach the running daemon through its admin socket.

mod common;

use common::*;
use std::process::{Command, Output};

fn storms(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(config)
        .arg("storms")
        .args(args)
        .output()
        .expect("run fanout-milter storms")
}

/// `fanout-milter stats ARGS`: its output, after checking that it succeeded.
fn stats_of(config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(config)
        .arg("stats")
        .args(args)
        .output()
        .expect("run fanout-milter stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn reply_alls_are_cut_after_min_messages_and_each_stopped_sender_told_why() {
    require_postfix();
    let dir = scratch_dir("storm");
    let sink = Sink::start(dir.path());
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let mut milter = Milter::start(dir.path(), &listen, STORM_POLICY);
    let postfix = Postfix::start(dir.path(), &sink, &listen);
    let config = dir.path().join("fanout-milter.toml");
    let port = postfix.smtp_port;
    let to = rcpts(8, "corp.example");

    let original = format!(
        "From: ceo@corp.example\r\nTo: {}\r\nSubject: Winter rota\r\nMessage-ID: <storm-root@corp.example>\r\n\r\nHello.\r\nEND-OF-TEST-BODY\r\n",
        to.join(", ")
    );
    smtp_send(port, "ceo@corp.example", &to, original.as_bytes()).expect("the original is sent");
    for i in 0..3 {
        let from = format!("staff{i}@corp.example");
        smtp_send(
            port,
            &from,
            &to,
            &reply_all(&from, &format!("storm-reply-{i}"), "storm-root", &to),
        )
        .unwrap_or_else(|e| panic!("reply {i} is within min_messages: {e:?}"));
    }
    for i in 3..6 {
        let from = format!("staff{i}@corp.example");
        let refused = smtp_send(
            port,
            &from,
            &to,
            &reply_all(&from, &format!("storm-reply-{i}"), "storm-root", &to),
        )
        .expect_err("a reply-all during the storm is refused");
        assert_eq!(refused.code, 550, "{refused:?}");
        assert!(
            refused.text.contains(
                "A reply-all storm is in progress on \"storm-reply-"
            ) && refused.text.contains("(8 recipients). Your message was not sent. Reply to the sender only, or contact the Service Desk on 4242."),
            "the sender reads why: {}",
            refused.text
        );
    }
    for i in 0..3 {
        let m = sink.wait_for(&format!("storm-reply-{i}"));
        assert_eq!(m.rcpts.len(), 8);
    }
    assert!(
        sink.find("storm-reply-3").is_empty(),
        "nothing stopped was delivered"
    );
    assert!(
        milter.log().contains("reply-all storm tripped"),
        "{}",
        milter.log()
    );

    let out = storms(&config, &["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["thread"], "mid:storm-root@corp.example");
    assert_eq!(list[0]["blocked"], 3);
    let id = list[0]["id"].as_str().expect("id").to_owned();
    let table = storms(&config, &["list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&id));

    // `stats` shows the same storm and the stopped replies, from the running daemon.
    let stats = stats_of(&config, &["--raw"]);
    for (series, value) in [
        ("fanout_storms_active", "1"),
        ("fanout_storms_tripped_total", "1"),
        (
            "fanout_decisions_total{verdict=\"reject\",rule=\"storm\"}",
            "3",
        ),
        (
            "fanout_decisions_total{verdict=\"accept\",rule=\"none\"}",
            "4",
        ),
        ("fanout_tempfails_total{cause=\"rule\"}", "0"),
    ] {
        assert!(
            stats.lines().any(|l| l == format!("{series} {value}")),
            "{series} {value} in:\n{stats}"
        );
    }
    let short = stats_of(&config, &[]);
    assert!(
        short.contains("fanout_storms_active: Reply-all storms"),
        "{short}"
    );
    assert!(
        !short.contains("rule=\"drift\""),
        "series at 0 are left out: {short}"
    );

    let out = storms(&config, &["clear", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cleared"));
    let from = "staff9@corp.example";
    smtp_send(
        port,
        from,
        &to,
        &reply_all(from, "storm-after-clear", "storm-root", &to),
    )
    .expect("cleared: replies flow again");
    sink.wait_for("storm-after-clear");
    let again = storms(&config, &["clear", &id]);
    assert!(!again.status.success(), "clearing twice says there is none");
    let stats = stats_of(&config, &["--raw"]);
    assert!(
        stats.lines().any(|l| l == "fanout_storms_active 0"),
        "{stats}"
    );
    assert!(milter.stop().success());
}
