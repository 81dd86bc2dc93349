// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end with a directory: a private slapd holds the lists, the daemon snapshots
//! it, a private Postfix sends real SMTP through the milter. The 20,000-member group is
//! held and a 10-member one passes; slapd killed in the middle of a refresh leaves the
//! old snapshot serving, and a restart of the daemon without slapd reads the snapshot
//! it saved, so mail does not wait for the directory.

mod common;

use common::slapd::*;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

const PEOPLE: usize = 20_000;

fn config_body(dir: &Path, url: &str) -> String {
    ldap_config(dir, url, "refresh = \"1h\"\ntimeout = \"30s\"")
}

/// `fanout-milter directory refresh` against the running daemon: exit success and output.
fn directory_refresh(milter: &Milter) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("--config")
        .arg(&milter.config)
        .args(["directory", "refresh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run directory refresh")
}

fn finish(child: std::process::Child) -> (bool, String) {
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.take().expect("child");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sends to `list`; true when delivered, false when held (and never delivered).
fn send(postfix: &Postfix, sink: &Sink, tag: &str, list: &str) -> bool {
    let held_before = postfix.held().len();
    smtp_send(
        postfix.smtp_port,
        &person_mail(1),
        &[group_mail(list)],
        &message(tag, &group_mail(list)),
    )
    .unwrap_or_else(|e| panic!("{tag}: accepted by SMTP: {e:?}"));
    wait_for(&format!("{tag} delivered or held"), || {
        if !sink.find(tag).is_empty() {
            Some(true)
        } else if postfix.held().len() > held_before {
            Some(false)
        } else {
            None
        }
    })
}

#[test]
fn directory_lists_are_counted_and_survive_a_dead_directory() {
    require_postfix();
    require_slapd();
    let dir = scratch_dir("e2e-ldap");
    let mut slapd = Slapd::start(dir.path(), &fixture_ldif(PEOPLE));
    let sink = Sink::start(dir.path());
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let mut milter = Milter::start(dir.path(), &listen, &config_body(dir.path(), &slapd.url()));
    let postfix = Postfix::start(dir.path(), &sink, &listen);
    // Taken before the daemon listens, or (on a slow machine) by the refresher right
    // after; until then mail to example.org is tempfailed.
    wait_for("the first snapshot", || {
        let log = milter.log();
        (log.contains("first ldap snapshot taken") || log.contains("ldap snapshot refreshed"))
            .then_some(())
    });

    assert!(
        !send(&postfix, &sink, "ldap-big-1", "all-staff"),
        "20,000 members: held"
    );
    let held = postfix.held();
    let line = milter.decision(&held[0]);
    assert!(line.contains("audience=20000"), "{line}");
    assert!(
        send(&postfix, &sink, "ldap-small-1", "small-10"),
        "10 members pass"
    );

    // slapd hangs, a refresh starts and waits on it, then slapd dies under it.
    slapd.signal(nix::sys::signal::Signal::SIGSTOP);
    let refreshing = directory_refresh(&milter);
    wait_for("the refresh to start", || {
        milter.log().contains("ldap refresh started").then_some(())
    });
    slapd.kill();
    let (ok, out) = finish(refreshing);
    assert!(!ok, "the refresh failed: {out}");
    assert!(
        out.contains("FAILED") && out.contains("keeping the snapshot"),
        "{out}"
    );
    assert!(
        milter.log().contains("ldap refresh failed"),
        "{}",
        milter.log()
    );

    // The old snapshot keeps serving.
    assert!(!send(&postfix, &sink, "ldap-big-2", "all-staff"));
    assert!(send(&postfix, &sink, "ldap-small-2", "small-10"));

    // A restart without the directory reads the saved snapshot: mail does not wait.
    milter.stop();
    let mut milter = Milter::start_file(dir.path(), &listen, milter.config.clone());
    assert!(
        milter.log().contains("ldap snapshot read from disk"),
        "{}",
        milter.log()
    );
    assert!(send(&postfix, &sink, "ldap-small-3", "small-10"));
    assert!(!send(&postfix, &sink, "ldap-big-3", "all-staff"));

    // The admin commands read the same saved snapshot.
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("--config")
        .arg(&milter.config)
        .args(["directory", "lookup", &group_mail("team-a")])
        .output()
        .expect("directory lookup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("snapshot taken"), "{text}");
    assert!(
        text.contains(&format!("audience: {} mailboxes", 25 + PEOPLE / 100)),
        "{text}"
    );
    assert!(text.contains("cycle:"), "{text}");

    // The directory is back: the next refresh works and reports its counts.
    slapd.restart();
    let (ok, out) = finish(directory_refresh(&milter));
    assert!(ok, "{out}");
    assert!(
        out.contains("refreshed") && out.contains("entries"),
        "{out}"
    );
    assert!(send(&postfix, &sink, "ldap-small-4", "small-10"));
    milter.stop();
}

/// `fanout-milter ARGS...` with the daemon's configuration, started now.
fn fanout(milter: &Milter, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("--config")
        .arg(&milter.config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fanout-milter")
}

/// `explain --json` for a message from a colleague to `list`.
fn explain(milter: &Milter, list: &str) -> serde_json::Value {
    let (ok, out) = finish(fanout(
        milter,
        &[
            "explain",
            "--json",
            "--from",
            &person_mail(1),
            "--rcpt",
            &group_mail(list),
        ],
    ));
    assert!(ok, "{out}");
    let start = out.find('{').unwrap_or_else(|| panic!("no JSON: {out}"));
    serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no JSON: {out}"))
}

#[test]
fn a_refresh_that_loses_the_big_group_is_refused_until_an_admin_accepts_it() {
    require_slapd();
    let dir = scratch_dir("e2e-ldap-shrink");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(PEOPLE));
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let mut milter = Milter::start(dir.path(), &listen, &config_body(dir.path(), &slapd.url()));
    wait_for("the first snapshot", || {
        let log = milter.log();
        (log.contains("first ldap snapshot taken") || log.contains("ldap snapshot refreshed"))
            .then_some(())
    });
    assert_eq!(explain(&milter, "all-staff")["audience"], PEOPLE);
    let pending = dir.path().join("state/ldap-ldap.pending.json");

    // Someone deletes the 20,000 group (or an ACL hides it): one list of a dozen, but
    // most of the members.
    let out = slapd.ldapmodify(&format!(
        "dn: {}\nchangetype: delete\n",
        group_dn("all-staff")
    ));
    assert_eq!(out.rc, 0, "{out:?}");
    let (ok, out) = finish(fanout(&milter, &["directory", "refresh"]));
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("REFUSED") && out.contains(&format!("{} (20000)", group_mail("all-staff"))),
        "{out}"
    );
    assert!(
        milter.log().contains("ldap snapshot shrank too much"),
        "{}",
        milter.log()
    );
    assert!(pending.exists(), "kept for the accept");
    let v = explain(&milter, "all-staff");
    assert_eq!(v["audience"], PEOPLE, "still 20,000, never 1: {v}");
    assert_eq!(v["verdict"], "quarantine", "{v}");

    // The admin says it is right: the daemon takes the refused snapshot.
    let (ok, out) = finish(fanout(
        &milter,
        &["directory", "accept", "--source", "ldap"],
    ));
    assert!(ok && out.contains("ldap: accepted: "), "{out}");
    assert!(!pending.exists());
    let v = explain(&milter, "all-staff");
    assert_eq!(
        (&v["audience"], &v["verdict"]),
        (&1.into(), &"accept".into()),
        "accepted as gone: {v}"
    );

    // A small list gone is taken, and counts as unknown, never as one mailbox.
    let out = slapd.ldapmodify(&format!(
        "dn: {}\nchangetype: delete\n",
        group_dn("small-10")
    ));
    assert_eq!(out.rc, 0, "{out:?}");
    let (ok, out) = finish(fanout(&milter, &["directory", "refresh"]));
    assert!(ok && out.contains("1 vanished list addresses"), "{out}");
    let v = explain(&milter, "small-10");
    assert_eq!(v["verdict"], "quarantine", "{v}");
    assert_eq!(v["audience_unknown_members"], 1, "{v}");
    assert!(
        v["reasons"].to_string().contains("expansion.on_unknown"),
        "{v}"
    );

    // A restart with a wrong base (people, no group): the first refresh against the
    // saved snapshot is refused too, and that snapshot stays in force.
    milter.stop();
    let wrong = std::fs::read_to_string(&milter.config)
        .expect("config")
        .replace(
            &format!("base_dns = [\"{BASE_DN}\"]"),
            &format!("base_dns = [\"{PEOPLE_DN}\"]"),
        );
    std::fs::write(&milter.config, wrong).expect("config");
    let mut milter = Milter::start_file(dir.path(), &listen, milter.config.clone());
    let log = milter.log();
    assert!(log.contains("first ldap refresh refused"), "{log}");
    assert!(
        log.contains("keeping the snapshot taken with the former settings"),
        "{log}"
    );
    assert!(pending.exists());
    milter.stop();
}
