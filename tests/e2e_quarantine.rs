// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, quarantine review: a private Postfix holds what the milter quarantines,
//! and the admin commands list, show, release, discard, reconcile and sweep it through
//! Postfix's own tools. Alerts reach a webhook listener started by the test.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A tiny HTTP server that answers 200 to every POST and keeps the bodies.
struct Webhook {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook listener");
        let port = listener.local_addr().expect("addr").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let keep = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    keep.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&body).into_owned());
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Webhook { port, bodies }
    }

    fn wait_for(&self, needle: &str) -> String {
        wait_for(&format!("a webhook post with {needle:?}"), || {
            self.bodies
                .lock()
                .expect("lock")
                .iter()
                .find(|b| b.contains(needle))
                .cloned()
        })
    }
}

struct Setup {
    dir: tempfile::TempDir,
    sink: Sink,
    milter: Milter,
    postfix: Postfix,
    config: std::path::PathBuf,
    webhook: Webhook,
}

fn setup(name: &str, extra_main_cf: &str) -> Setup {
    require_postfix();
    let dir = scratch_dir(name);
    let sink = Sink::start(dir.path());
    let webhook = Webhook::start();
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let postfix = Postfix::start_with(dir.path(), &sink, &listen, extra_main_cf);
    let body = format!(
        r#"
[domains]
internal = ["corp.example"]

[limits.envelope]
tag = 0
quarantine = 5
reject = 0

[reply]
contact = "the Service Desk on 4242"

[postfix]
config_directory = "{etc}"

[notify]
admins = ["admins@corp.example"]
webhook = "http://127.0.0.1:{hook}/hook"
interval = "1s"
from = "postmaster@corp.example"
relay = "127.0.0.1:{smtp}"

[quarantine]
state_dir = "{state}"
review_within = "4h"
expire_after = "3d"
"#,
        etc = postfix.etc.display(),
        hook = webhook.port,
        smtp = postfix.smtp_port,
        state = dir.path().join("state").display(),
    );
    let milter = Milter::start(dir.path(), &listen, &body);
    let config = dir.path().join("fanout-milter.toml");
    Setup {
        dir,
        sink,
        milter,
        postfix,
        config,
        webhook,
    }
}

impl Setup {
    /// Runs `fanout-milter -c CONF quarantine ARGS...`.
    fn admin(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
            .arg("-c")
            .arg(&self.config)
            .arg("quarantine")
            .args(args)
            .output()
            .expect("run fanout-milter quarantine")
    }

    fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "quarantine {args:?} failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Sends a message to `n` recipients (quarantined from 5) and returns its queue id
    /// once Postfix holds it.
    fn send_held(&self, subject: &str, n: usize) -> String {
        let before = self.postfix.held();
        let rcpts: Vec<String> = (0..n).map(|i| format!("r{i}@corp.example")).collect();
        smtp_send(
            self.postfix.smtp_port,
            "ann@corp.example",
            &rcpts,
            &message(subject, &rcpts.join(", ")),
        )
        .expect("a held message is accepted");
        wait_for(&format!("{subject} in the hold queue"), || {
            self.postfix
                .held()
                .into_iter()
                .find(|q| !before.contains(q))
        })
    }
}

/// A subject and how the relay answered it.
type Sent = (String, Result<String, Refused>);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn held_listed_shown_released_and_discarded_with_a_notice() {
    let s = setup("quarantine-review", "");
    let a = s.send_held("q-release-me", 6);

    let list = s.admin_ok(&["list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with(&a))
        .unwrap_or_else(|| panic!("{a} not listed:\n{list}"));
    assert!(line.contains("held"), "{line}");
    assert!(line.contains("ann@corp.example"), "{line}");
    assert!(line.contains("limits.envelope: 6 envelope"), "{line}");
    assert!(line.contains("q-release-me"), "{line}");

    let json: serde_json::Value =
        serde_json::from_str(&s.admin_ok(&["list", "--json", "--state", "held", "--since", "1h"]))
            .expect("JSON");
    assert_eq!(json[0]["queue_id"], a.as_str());
    assert_eq!(json[0]["audience"], 6);

    let show = s.admin_ok(&["show", &a]);
    assert!(
        show.contains("6 envelope recipients >= quarantine level 5"),
        "{show}"
    );
    assert!(show.contains("Blast radius:"), "{show}");
    assert!(
        show.contains("top recipient domains: corp.example 6"),
        "{show}"
    );
    assert!(
        show.contains("Subject: q-release-me"),
        "postcat headers: {show}"
    );

    // The daemon alerted by webhook and by mail.
    let hook = s.webhook.wait_for(&a);
    let hook: serde_json::Value = serde_json::from_str(&hook).expect("webhook JSON");
    assert_eq!(hook["alerts"][0]["kind"], "quarantined");
    let digest = s
        .sink
        .wait_until(&a, |m| m.rcpts == ["admins@corp.example"]);
    assert!(
        digest.text.contains("fanout-milter quarantine show"),
        "{}",
        digest.text
    );

    let out = s.admin_ok(&["release", &a, "--comment", "checked with Ann"]);
    assert!(out.contains("released"), "{out}");
    let m = s.sink.wait_for("q-release-me");
    assert_eq!(
        m.rcpts.len(),
        6,
        "delivered to every recipient after release"
    );
    assert!(!s.postfix.held().contains(&a));
    let again = s.admin(&["release", &a]);
    assert!(!again.status.success(), "a second release is refused");
    assert!(String::from_utf8_lossy(&again.stdout).contains("released already"));
    let show = s.admin_ok(&["show", &a]);
    assert!(
        show.contains("release: checked with Ann"),
        "audit trail: {show}"
    );

    let b = s.send_held("q-discard-me", 7);
    let out = s.admin_ok(&["discard", &b, "--notify-sender"]);
    assert!(out.contains("discarded"), "{out}");
    assert!(out.contains("notice sent to ann@corp.example"), "{out}");
    assert!(
        s.postfix
            .queue()
            .iter()
            .all(|m| m["queue_id"] != b.as_str()),
        "gone from Postfix"
    );
    let notice = s.sink.wait_until("q-discard-me", |m| {
        m.rcpts == ["ann@corp.example"] && m.has_header("Subject", "Not sent: q-discard-me")
    });
    assert!(notice.text.contains("NOT sent"), "{}", notice.text);
    assert!(
        notice.text.contains("the Service Desk on 4242"),
        "{}",
        notice.text
    );
    assert_eq!(
        notice.from, "",
        "notices use the null sender: {}",
        notice.text
    );
    assert!(
        s.sink
            .find("q-discard-me")
            .iter()
            .all(|m| m.rcpts == ["ann@corp.example"] || m.rcpts == ["admins@corp.example"]),
        "the discarded message itself never left"
    );

    let bad = s.admin(&["release", "-d", "ALL"]);
    assert!(!bad.status.success());
    let bad = s.admin(&["release", "ALL;rm"]);
    assert!(String::from_utf8_lossy(&bad.stdout).contains("is not a Postfix queue id"));
    let _ = &s.dir;
}

#[test]
fn reconcile_and_sweep_keep_store_and_queue_in_step() {
    let dir_hint = "/^Subject: q-hold-by-postfix/ HOLD held by a header check";
    let s = setup("quarantine-reconcile", "");
    let checks = s.postfix.etc.join("header_checks");
    std::fs::write(&checks, format!("{dir_hint}\n")).expect("header_checks");
    let out = Command::new("/usr/sbin/postconf")
        .arg("-c")
        .arg(&s.postfix.etc)
        .arg(format!("header_checks = regexp:{}", checks.display()))
        .output()
        .expect("postconf");
    assert!(out.status.success());
    let out = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(&s.postfix.etc)
        .arg("reload")
        .output()
        .expect("reload");
    assert!(out.status.success());

    // Deleted by hand: reconcile marks it discarded (once past the grace period).
    let c = s.send_held("q-deleted-by-hand", 6);
    let out = Command::new("/usr/sbin/postsuper")
        .arg("-c")
        .arg(&s.postfix.etc)
        .args(["-d", &c, "hold"])
        .output()
        .expect("postsuper");
    assert!(out.status.success());
    let soon = now().to_string();
    let out = s.admin_ok(&["reconcile", "--now", &soon]);
    assert!(
        out.contains("agree"),
        "within the grace period nothing changes: {out}"
    );
    let later = (now() + 600).to_string();
    let out = s.admin_ok(&["reconcile", "--now", &later]);
    assert!(
        out.contains(&format!("{c}: gone from Postfix: marked discarded")),
        "{out}"
    );

    // Held by Postfix itself, unknown to the milter: reconcile records it.
    let d = s.send_held("q-hold-by-postfix", 1);
    let out = s.admin_ok(&["reconcile"]);
    assert!(
        out.contains(&format!("{d}: in the hold queue without a record")),
        "{out}"
    );
    let show = s.admin_ok(&["show", &d]);
    assert!(show.contains("Subject:      q-hold-by-postfix"), "{show}");
    assert!(s.admin_ok(&["reconcile"]).contains("agree"), "idempotent");

    // Sweep with an injected clock: escalate after review_within, once; expire after
    // expire_after with a notice to the sender.
    let e = s.send_held("q-left-alone", 6);
    let t5h = (now() + 5 * 3600).to_string();
    let out = s.admin_ok(&["sweep", "--now", &t5h]);
    assert!(out.contains(&format!("{e}: escalated")), "{out}");
    assert!(s.webhook.wait_for("escalation").contains(&e));
    let out = s.admin_ok(&["sweep", "--now", &t5h]);
    assert!(
        !out.contains(&format!("{e}: escalated")),
        "not twice: {out}"
    );
    let t4d = (now() + 4 * 86400).to_string();
    let out = s.admin_ok(&["sweep", "--now", &t4d]);
    assert!(out.contains(&format!("{e}: not reviewed within")), "{out}");
    assert!(!s.postfix.held().contains(&e));
    // The expiry notice, not the notice at hold that went to the same sender.
    let notice = s.sink.wait_until("q-left-alone", |m| {
        m.rcpts == ["ann@corp.example"] && m.has_header("Subject", "Not sent: q-left-alone")
    });
    assert!(notice.text.contains("NOT sent"), "{}", notice.text);
    let listed = s.admin_ok(&["list", "--state", "expired"]);
    assert!(listed.contains(&e), "{listed}");
    assert!(
        s.postfix.held().contains(&d),
        "the header_checks HOLD is not ours to expire: {out}"
    );
    let _ = &s.dir;
}

#[test]
fn a_message_held_by_hand_survives_the_sweep_and_ours_still_expires() {
    // Mail to slow.example waits in the deferred queue, where an admin can hold it.
    let s = setup(
        "quarantine-foreign",
        "transport_maps = inline:{slow.example=retry:deferred}",
    );
    // Submitted with sendmail(1): smtpd would refuse a recipient whose transport is
    // retry at RCPT time.
    s.postfix.sendmail(
        "bob@corp.example",
        &["x@slow.example".to_owned()],
        &message("q-held-by-hand", "x@slow.example"),
    );
    let f = wait_for("q-held-by-hand in the deferred queue", || {
        s.postfix
            .queue()
            .into_iter()
            .find(|m| m["queue_name"] == "deferred")
            .and_then(|m| m["queue_id"].as_str().map(str::to_owned))
    });
    let out = Command::new("/usr/sbin/postsuper")
        .arg("-c")
        .arg(&s.postfix.etc)
        .args(["-h", &f])
        .output()
        .expect("postsuper");
    assert!(out.status.success(), "{out:?}");
    wait_for("the message held by hand", || {
        s.postfix.held().contains(&f).then_some(())
    });
    let g = s.send_held("q-ours-expires", 6);

    // 30 days later, with on_expiry = "notify-sender".
    let t30d = (now() + 30 * 86400).to_string();
    let out = s.admin_ok(&["sweep", "--now", &t30d]);
    assert!(
        out.contains(&format!("{f}: in the hold queue without a record")),
        "{out}"
    );
    assert!(out.contains("recorded as foreign"), "{out}");
    assert!(
        out.contains(&format!("{g}: not reviewed within")),
        "ours expires as before: {out}"
    );
    assert!(
        !out.contains(&format!("{f}: not reviewed")),
        "the foreign hold is not expired: {out}"
    );
    assert!(!out.contains(&format!("{f}: escalated")), "{out}");
    let held = s.postfix.held();
    assert!(held.contains(&f), "still in the hold queue: {held:?}");
    assert!(!held.contains(&g), "ours was discarded");
    // Our sender's notice arrives; the foreign sender (perhaps forged) gets none.
    s.sink.wait_until("q-ours-expires", |m| {
        m.rcpts == ["ann@corp.example"] && m.has_header("Subject", "Not sent: q-ours-expires")
    });
    let hook = s.webhook.wait_for("foreign-hold");
    assert!(hook.contains(&f), "the digest names it: {hook}");
    assert!(
        s.sink
            .messages()
            .iter()
            .all(|m| m.rcpts != ["bob@corp.example"]),
        "no notice to the sender of the message held by hand"
    );

    let list = s.admin_ok(&["list", "--now", &t30d]);
    let line = list
        .lines()
        .find(|l| l.starts_with(&f))
        .unwrap_or_else(|| panic!("{f} not listed:\n{list}"));
    assert!(line.contains("foreign"), "{line}");
    assert!(list.contains("held by another tool"), "{list}");
    let show = s.admin_ok(&["show", &f]);
    assert!(show.contains("ANOTHER TOOL (foreign)"), "{show}");
    assert!(!show.contains("notify-sender"), "{show}");

    // Idempotent: a second sweep leaves it alone too.
    let out = s.admin_ok(&["sweep", "--now", &t30d]);
    assert!(!out.contains(&f), "{out}");
    assert!(s.postfix.held().contains(&f));

    // An admin acts on it explicitly, by queue id, with --foreign.
    let refused = s.admin(&["release", &f]);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(text.contains("add --foreign"), "{text}");
    assert!(s.postfix.held().contains(&f));
    let out = s.admin_ok(&["release", "--foreign", &f]);
    assert!(out.contains("released"), "{out}");
    assert!(!s.postfix.held().contains(&f));
    let _ = &s.dir;
}

#[test]
fn after_a_reload_that_moves_state_dir_the_admin_commands_wait_for_the_restart() {
    let mut s = setup("quarantine-moved", "");
    let g = s.send_held("q-moved", 6);
    let old_state = s.dir.path().join("state");
    let new_state = s.dir.path().join("state-new");
    let config = std::fs::read_to_string(&s.config).expect("read config");
    let moved = config.replace(
        &format!("state_dir = \"{}\"", old_state.display()),
        &format!("state_dir = \"{}\"", new_state.display()),
    );
    assert_ne!(moved, config);
    std::fs::write(&s.config, moved).expect("write config");
    s.milter.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the reload", || {
        s.milter
            .log()
            .contains("configuration reloaded")
            .then_some(())
    });

    // The daemon keeps recording in the old store until it restarts; the sweep must not
    // open the new, empty one, where our held message would look foreign.
    let t30d = (now() + 30 * 86400).to_string();
    for args in [
        vec!["sweep", "--now", &t30d],
        vec!["list"],
        vec!["reconcile"],
    ] {
        let out = s.admin(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran: {err}");
        assert!(err.contains("restart the daemon first"), "{args:?}: {err}");
        assert!(
            err.contains(&old_state.display().to_string()),
            "names the running store: {err}"
        );
    }
    // Also within the sweep unit's capabilities (no CAP_SYS_PTRACE).
    let out = Command::new("setpriv")
        .arg("--no-new-privs")
        .arg(format!("--bounding-set=-all,{}", sweep_unit_caps()))
        .arg("--inh-caps=-all")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(&s.config)
        .args(["quarantine", "sweep"])
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "confined sweep ran: {err}");
    assert!(err.contains("restart the daemon first"), "{err}");
    assert!(
        !new_state.join("quarantine.sqlite").exists(),
        "the new store was not even created"
    );
    assert!(s.postfix.held().contains(&g));

    // Stopped (the restart's first half), the daemon no longer uses the old store: the
    // sweep runs on the new one, and still knows our message by its X-Fanout-Verdict.
    assert!(s.milter.stop().success());
    let out = s.admin_ok(&["sweep"]);
    assert!(
        out.contains(&format!(
            "{g}: in the hold queue without a record, but carrying"
        )),
        "{out}"
    );
    assert!(!out.contains("recorded as foreign"), "{out}");
    let list = s.admin_ok(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&list).expect("json");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["queue_id"] == g.as_str()))
        .unwrap_or_else(|| panic!("{g} not listed: {list}"));
    assert_eq!(row["state"], "held", "{row}");
    assert_eq!(row["foreign"], false, "ours, reviewed and expired: {row}");
    let out = s.admin_ok(&["sweep", "--now", &t30d]);
    assert!(out.contains(&format!("{g}: not reviewed within")), "{out}");
    assert!(!s.postfix.held().contains(&g), "expired like any of ours");
}

#[test]
fn kill_9_while_holding_loses_nothing() {
    let mut s = setup("quarantine-kill", "");
    let port = s.postfix.smtp_port;
    let results: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for t in 0..4 {
        let results = results.clone();
        senders.push(std::thread::spawn(move || {
            for i in 0..8 {
                let subject = format!("q-kill-{t}-{i}");
                let rcpts: Vec<String> = (0..6).map(|r| format!("k{r}@corp.example")).collect();
                let r = smtp_send(
                    port,
                    "ann@corp.example",
                    &rcpts,
                    &message(&subject, "k0@corp.example"),
                );
                results.lock().expect("lock").push((subject, r));
            }
        }));
    }
    wait_for("three decisions before the kill", || {
        (s.milter.log().matches("decision").count() >= 3).then_some(())
    });
    s.milter.stop_with(nix::sys::signal::Signal::SIGKILL);
    for h in senders {
        h.join().expect("sender thread");
    }
    let results = results.lock().expect("lock");
    let accepted: Vec<&String> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| s)
        .collect();
    for (subject, r) in results.iter() {
        if let Err(e) = r {
            assert!(
                (400..500).contains(&e.code),
                "{subject}: refused for good: {e:?}"
            );
        }
    }
    assert!(
        !accepted.is_empty(),
        "some messages were held before the kill"
    );
    assert!(
        accepted.len() < results.len(),
        "the kill tempfailed the rest"
    );

    // Every accepted message is held, none delivered.
    let held = wait_for("every accepted message in the hold queue", || {
        let h = s.postfix.held();
        (h.len() == accepted.len()).then_some(h)
    });
    // The admins' digest lists the held subjects too; only mail to the real
    // recipients would mean a leak.
    let leaked: Vec<_> = s
        .sink
        .find("q-kill-")
        .into_iter()
        .filter(|m| m.rcpts.iter().any(|r| r.starts_with('k')))
        .collect();
    assert!(leaked.is_empty(), "nothing was released by the crash");

    // Every held message has its record; reconcile finds nothing to adopt, and the
    // records of messages Postfix never queued are closed after the grace period.
    let later = (now() + 600).to_string();
    let out = s.admin_ok(&["reconcile", "--now", &later]);
    assert!(
        !out.contains("without a record"),
        "the milter recorded before answering: {out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.admin_ok(&["list", "--json", "--state", "held"])).expect("JSON");
    let mut recorded: Vec<String> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["queue_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    recorded.sort();
    let mut held = held;
    held.sort();
    assert_eq!(recorded, held, "store and hold queue agree after the crash");
    let _ = &s.dir;
}

/// The sweep unit's capability bounding set, as setpriv(1) names them.
fn sweep_unit_caps() -> String {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/fanout-milter-sweep.service"
    ))
    .expect("sweep unit");
    assert!(unit.contains("\nNoNewPrivileges=yes\n"), "{unit}");
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    caps.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_admin_commands_work_within_the_sweep_units_capabilities() {
    // The unit's CapabilityBoundingSet and NoNewPrivileges, applied with setpriv(1):
    // postsuper, postcat and sendmail's postdrop (whose setgid bit no_new_privs ignores)
    // must still work.
    let s = setup("quarantine-caps", "");
    let caps = sweep_unit_caps();
    let confined = |args: &[&str]| {
        let out = Command::new("setpriv")
            .arg("--no-new-privs")
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg("--inh-caps=-all")
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_fanout-milter"))
            .arg("-c")
            .arg(&s.config)
            .arg("quarantine")
            .args(args)
            .output()
            .expect("run setpriv");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "quarantine {args:?} with {caps}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let a = s.send_held("q-caps-show-release", 6);
    let show = confined(&["show", &a]);
    assert!(
        show.contains("Subject: q-caps-show-release"),
        "postcat: {show}"
    );
    confined(&["release", &a]);
    assert_eq!(s.sink.wait_for("q-caps-show-release").rcpts.len(), 6);
    let b = s.send_held("q-caps-discard", 6);
    let out = confined(&["discard", "--notify-sender", &b]);
    assert!(out.contains("notice sent"), "{out}");
    s.sink.wait_until("q-caps-discard", |m| {
        m.rcpts == ["ann@corp.example"] && m.has_header("Subject", "Not sent: q-caps-discard")
    });
    let c = s.send_held("q-caps-expire", 6);
    let t4d = (now() + 4 * 86400).to_string();
    let out = confined(&["sweep", "--now", &t4d]);
    assert!(out.contains(&format!("{c}: not reviewed within")), "{out}");
    assert!(!s.postfix.held().contains(&c));
    s.sink.wait_until("q-caps-expire", |m| {
        m.rcpts == ["ann@corp.example"] && m.has_header("Subject", "Not sent: q-caps-expire")
    });
    let _ = &s.dir;
}
