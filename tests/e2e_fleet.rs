// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, a fleet: two relays (each a private Postfix with its own fanout-milter)
//! share one private redis-server. Reply-alls spread over both relays trip the storm at
//! the same count as on one relay (tests/e2e_storm.rs); with Redis killed, relay A
//! (`on_failure = "local"`) carries on counting alone and relay B (`"tempfail"`)
//! tempfails what needs state, and every message sent is delivered or refused with a
//! reply; with Redis back, shared counting resumes.

mod common;

use common::*;
use std::path::Path;

fn relay_config(redis: &Redis, on_failure: &str) -> String {
    // A generous timeout: a loaded test machine must not look like a Redis outage.
    format!(
        "{STORM_POLICY}\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"fleet-test:\"\ntimeout = \"2s\"\non_failure = \"{on_failure}\"\n",
        redis.url()
    )
}

struct Relay {
    name: &'static str,
    milter: Milter,
    postfix: Postfix,
}

impl Relay {
    fn start(root: &Path, name: &'static str, sink: &Sink, config: &str) -> Relay {
        let root = root.join(name);
        std::fs::create_dir_all(&root).expect("relay dir");
        let listen = format!("inet:127.0.0.1:{}", free_port());
        let milter = Milter::start(&root, &listen, config);
        let postfix = Postfix::start(&root, sink, &listen);
        Relay {
            name,
            milter,
            postfix,
        }
    }
}

/// What became of the messages sent.
#[derive(Default)]
struct Tally {
    sent: usize,
    accepted: Vec<String>,
    refused: Vec<(String, Refused)>,
}

impl Tally {
    fn reply(&mut self, relay: &Relay, thread: &str, n: usize, to: &[String]) -> Result<(), u16> {
        let subject = format!("{thread}-reply-{n}");
        let text = reply_all(&format!("staff{n}@corp.example"), &subject, thread, to);
        self.send(
            relay,
            &format!("staff{n}@corp.example"),
            &subject,
            &text,
            to,
        )
    }

    fn plain(&mut self, relay: &Relay, subject: &str, to: &[String]) {
        let text = format!(
            "From: ann@corp.example\r\nTo: {}\r\nSubject: {subject}\r\n\r\nHello.\r\nEND-OF-TEST-BODY\r\n",
            to.join(", ")
        );
        assert_eq!(
            self.send(relay, "ann@corp.example", subject, text.as_bytes(), to),
            Ok(()),
            "mail that needs no shared state flows through relay {}",
            relay.name
        );
    }

    fn send(
        &mut self,
        relay: &Relay,
        from: &str,
        subject: &str,
        text: &[u8],
        to: &[String],
    ) -> Result<(), u16> {
        self.sent += 1;
        match smtp_send(relay.postfix.smtp_port, from, to, text) {
            Ok(_) => {
                self.accepted.push(subject.to_owned());
                Ok(())
            }
            Err(r) => {
                let code = r.code;
                self.refused.push((subject.to_owned(), r));
                Err(code)
            }
        }
    }
}

/// Asserts the storm text of a refusal.
fn storm_refusal(tally: &Tally, subject: &str) {
    let (_, r) = tally
        .refused
        .iter()
        .find(|(s, _)| s == subject)
        .expect("refused");
    assert!(
        r.text.contains("A reply-all storm is in progress")
            && r.text.contains("Reply to the sender only"),
        "{subject}: the sender reads why: {}",
        r.text
    );
}

#[test]
fn a_storm_spread_over_two_relays_trips_as_on_one_and_mail_flows_through_a_redis_outage() {
    require_postfix();
    let dir = scratch_dir("fleet");
    let mut redis = Redis::start();
    let sink = Sink::start(dir.path());
    let a = Relay::start(dir.path(), "a", &sink, &relay_config(&redis, "local"));
    let b = Relay::start(dir.path(), "b", &sink, &relay_config(&redis, "tempfail"));
    for r in [&a, &b] {
        wait_for(&format!("relay {} to reach redis", r.name), || {
            r.milter.log().contains("redis answers").then_some(())
        });
    }
    let to = rcpts(8, "corp.example");
    let mut tally = Tally::default();

    // 1. Shared: the third reply (on A) trips the storm; B stops the fourth.
    assert_eq!(tally.reply(&a, "one", 0, &to), Ok(()));
    assert_eq!(tally.reply(&b, "one", 1, &to), Ok(()));
    assert_eq!(tally.reply(&a, "one", 2, &to), Ok(()), "the third trips it");
    assert_eq!(
        tally.reply(&b, "one", 3, &to),
        Err(550),
        "relay B sees A's storm"
    );
    assert_eq!(tally.reply(&a, "one", 4, &to), Err(550));
    storm_refusal(&tally, "one-reply-3");
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(&b.milter.config)
        .args(["storms", "list", "--json"])
        .output()
        .expect("storms list");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("JSON");
    assert_eq!(list[0]["thread"], "mid:one@corp.example", "{list}");
    assert_eq!(
        list[0]["blocked"], 2,
        "relay B lists the storm and what both relays stopped"
    );

    // 2. Redis killed: A counts alone (its own third reply trips), B tempfails replies;
    //    mail that needs no shared state flows on both.
    redis.kill();
    assert_eq!(tally.reply(&a, "two", 0, &to), Ok(()));
    assert_eq!(
        tally.reply(&b, "two", 1, &to),
        Err(451),
        "B: on_failure = tempfail"
    );
    assert_eq!(tally.reply(&a, "two", 2, &to), Ok(()));
    assert_eq!(tally.reply(&b, "two", 3, &to), Err(451));
    assert_eq!(
        tally.reply(&a, "two", 4, &to),
        Ok(()),
        "A's own third reply trips"
    );
    assert_eq!(
        tally.reply(&a, "two", 6, &to),
        Err(550),
        "A alone stops the fourth"
    );
    storm_refusal(&tally, "two-reply-6");
    let (_, tempfailed) = tally
        .refused
        .iter()
        .find(|(s, _)| s == "two-reply-3")
        .expect("refused");
    assert!(
        tempfailed
            .text
            .contains("was not sent yet; it will be retried"),
        "the sender reads it will be retried: {}",
        tempfailed.text
    );
    assert!(
        b.milter
            .log()
            .contains("storm and rate state unavailable, message tempfailed"),
        "{}",
        b.milter.log()
    );
    tally.plain(&a, "outage-plain-a", &to);
    tally.plain(&b, "outage-plain-b", &to);
    assert_eq!(
        tally.reply(&a, "one", 5, &to),
        Err(550),
        "A still stops the storm it knew before the outage"
    );
    assert!(a.milter.log().contains("shared state unreachable"));
    assert!(b.milter.log().contains("tempfailed until it is back"));

    // 3. Redis back (empty): shared counting resumes on both relays.
    let _redis = Redis::start_on(redis.port);
    for r in [&a, &b] {
        wait_for(&format!("relay {} to use redis again", r.name), || {
            r.milter
                .log()
                .contains("shared state reachable again")
                .then_some(())
        });
    }
    assert_eq!(tally.reply(&a, "three", 0, &to), Ok(()));
    assert_eq!(tally.reply(&b, "three", 1, &to), Ok(()));
    assert_eq!(tally.reply(&a, "three", 2, &to), Ok(()));
    assert_eq!(tally.reply(&b, "three", 3, &to), Err(550), "shared again");
    assert_eq!(
        tally.reply(&b, "two", 9, &to),
        Err(550),
        "the storm A tripped alone was copied to redis when it came back"
    );

    // Nothing lost: every message sent is at the sink or was refused with a reply.
    for subject in &tally.accepted {
        let m = sink.wait_for(subject);
        assert_eq!(m.rcpts.len(), 8);
    }
    let held = a.postfix.held().len() + b.postfix.held().len();
    let delivered = sink.messages().len();
    assert_eq!(
        delivered,
        tally.accepted.len(),
        "each accepted message once"
    );
    assert_eq!(held, 0);
    assert_eq!(tally.sent, delivered + held + tally.refused.len());
    for (subject, _) in &tally.refused {
        assert!(
            sink.find(subject).is_empty(),
            "{subject} was refused and not delivered"
        );
    }
}

/// `fanout-milter -c CONFIG brake ARGS...`: stdout, or a panic with stderr.
fn brake(relay: &Relay, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(&relay.milter.config)
        .arg("brake")
        .args(args)
        .output()
        .expect("fanout-milter brake");
    assert!(
        out.status.success(),
        "brake {args:?} on relay {}: {}",
        relay.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_emergency_brake_pulled_on_one_relay_holds_large_mail_on_both_and_small_mail_flows() {
    require_postfix();
    let dir = scratch_dir("fleet-brake");
    let redis = Redis::start();
    let sink = Sink::start(dir.path());
    let config = format!(
        "{}\n[[list]]\naddress = \"all@corp.example\"\nmember_count = 500\n",
        relay_config(&redis, "local")
    );
    let a = Relay::start(dir.path(), "a", &sink, &config);
    let b = Relay::start(dir.path(), "b", &sink, &config);
    let list = vec!["all@corp.example".to_owned()];
    let few = rcpts(3, "corp.example");
    let mut tally = Tally::default();

    tally.plain(&a, "before-brake", &list);
    sink.wait_for("before-brake");

    let on = brake(
        &a,
        &[
            "on",
            "--min-audience",
            "100",
            "--for",
            "2h",
            "--comment",
            "list bug",
        ],
    );
    assert!(
        on.contains("emergency brake ON: messages to 100 or more"),
        "{on}"
    );
    for r in [&a, &b] {
        wait_for(&format!("relay {} to see the brake", r.name), || {
            brake(r, &["status"])
                .contains("emergency brake ON")
                .then_some(())
        });
    }
    let status: serde_json::Value =
        serde_json::from_str(&brake(&b, &["status", "--json"])).expect("JSON");
    assert_eq!(status["min_audience"], 100);
    assert_eq!(status["comment"], "list bug");
    let replaced = brake(
        &b,
        &[
            "on",
            "--min-audience",
            "200",
            "--for",
            "2h",
            "--comment",
            "tighter",
        ],
    );
    assert!(
        replaced.contains("replaced the emergency brake that was on: min audience 100 by ")
            && replaced.contains("emergency brake ON: messages to 200 or more"),
        "pulled over another, the admin is told: {replaced}"
    );

    for r in [&a, &b] {
        let subject = format!("braked-list-{}", r.name);
        tally.plain(r, &subject, &list);
        let held = wait_for(&format!("relay {} to hold {subject}", r.name), || {
            let held = r.postfix.held();
            (held.len() == 1).then_some(held)
        });
        let decision = r.milter.decision(&held[0]);
        assert!(decision.contains("brake"), "{decision}");
        let small = format!("small-{}", r.name);
        tally.plain(r, &small, &few);
        assert_eq!(sink.wait_for(&small).rcpts.len(), 3, "small mail flows");
    }
    assert!(sink.find("braked-list").is_empty(), "nothing braked left");

    let off = brake(&b, &["off", "--comment", "list fixed"]);
    assert!(off.contains("emergency brake released"), "{off}");
    wait_for("relay a to see the brake released", || {
        brake(&a, &["status"])
            .contains("emergency brake off")
            .then_some(())
    });
    tally.plain(&a, "after-brake", &list);
    sink.wait_for("after-brake");
    assert_eq!(a.postfix.held().len(), 1, "only the braked message is held");
    assert!(
        a.milter.log().contains("emergency brake pulled")
            && b.milter.log().contains("emergency brake released"),
        "both changes are logged where they were made"
    );
}
