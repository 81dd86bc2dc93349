// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, the request worker: a private Postfix holds what the milter quarantines,
//! requests are filed in the quarantine store as the review desk files them, and
//! `fanout-milter quarantine worker` (run within its systemd unit's capabilities)
//! carries them out with postsuper and sendmail and records what the tool said.

mod common;

use common::*;
use fanout_milter::quarantine::{
    NewRequest, QuarantineIndex, QueueId, Request, RequestAction, RequestState, State, Store, Via,
};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

struct Setup {
    dir: tempfile::TempDir,
    sink: Sink,
    _milter: Milter,
    postfix: Postfix,
    config: PathBuf,
    store: Store,
}

fn setup(name: &str) -> Setup {
    setup_with(name, |_| String::new(), "")
}

/// A setup whose `[postfix]` table gets the lines `extra` writes for the scratch
/// directory, and whose Postfix gets the lines `main_cf`.
fn setup_with(name: &str, extra: impl Fn(&std::path::Path) -> String, main_cf: &str) -> Setup {
    require_postfix();
    let dir = scratch_dir(name);
    let postfix_extra = extra(dir.path());
    let sink = Sink::start(dir.path());
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let postfix = Postfix::start_with(dir.path(), &sink, &listen, main_cf);
    let state = dir.path().join("state");
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
{postfix_extra}

[notify]
from = "postmaster@corp.example"

[quarantine]
state_dir = "{state}"
review_within = "4h"
expire_after = "3d"
"#,
        etc = postfix.etc.display(),
        state = state.display(),
    );
    let milter = Milter::start(dir.path(), &listen, &body);
    let config = dir.path().join("fanout-milter.toml");
    let store = Store::open(&state).expect("open the store as the desk does");
    Setup {
        dir,
        sink,
        _milter: milter,
        postfix,
        config,
        store,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

impl Setup {
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

    /// Files a request as the review desk does: reviewer carol at 192.0.2.7.
    fn file(&self, queue_id: &str, action: RequestAction, comment: &str) -> Request {
        self.store
            .submit(
                None,
                &NewRequest {
                    queue_id: QueueId::parse(queue_id).expect("queue id"),
                    action,
                    who: "carol".into(),
                    via: Via::Desk,
                    remote: Some("192.0.2.7".into()),
                    comment: comment.into(),
                    at: now(),
                },
            )
            .expect("request filed")
    }

    /// The request as the store has it now.
    fn request(&self, r: &Request) -> Request {
        self.store
            .requests(r.held_id)
            .expect("requests")
            .into_iter()
            .find(|x| x.id == r.id)
            .expect("the request is stored")
    }

    /// Waits until the worker finished `r`.
    fn finished(&self, r: &Request) -> Request {
        wait_for(&format!("request {} to finish", r.id), || {
            Some(self.request(r)).filter(|x| !x.state.is_open())
        })
    }

    fn state(&self, queue_id: &str) -> State {
        self.store
            .record(&QueueId::parse(queue_id).expect("queue id").into())
            .expect("record")
            .state
    }

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

    /// Deletes a message with Postfix's own postsuper, behind fanout-milter's back.
    fn postsuper_delete(&self, queue_id: &str) {
        let out = Command::new("/usr/sbin/postsuper")
            .arg("-c")
            .arg(&self.postfix.etc)
            .arg("-d")
            .arg(queue_id)
            .output()
            .expect("run postsuper");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Deleted: 1 message"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The envelope recipients of `send_held(_, n)`, by number.
fn rcpt(i: usize) -> String {
    format!("r{i}@corp.example")
}

/// The sink's messages with `subject`, by their recipients (not the notices to its sender).
fn deliveries(s: &Setup, subject: &str) -> Vec<Vec<String>> {
    s.sink
        .find(subject)
        .into_iter()
        .filter(|m| !m.has_header("Auto-Submitted", "auto-generated"))
        .map(|mut m| {
            m.rcpts.sort();
            m.rcpts
        })
        .collect()
}

/// The capability bounding set of the worker's unit, as setpriv(1) names them.
fn worker_unit_caps() -> String {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/fanout-milter-worker.service"
    ))
    .expect("worker unit");
    assert!(unit.contains("\nNoNewPrivileges=yes\n"), "{unit}");
    assert!(
        unit.contains("\nRestrictAddressFamilies=AF_UNIX\n"),
        "{unit}"
    );
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    caps.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `fanout-milter quarantine worker` under its unit's NoNewPrivileges and capability
/// bounding set (setpriv).
fn start_worker(s: &Setup) -> Worker {
    let wrapper = [
        "setpriv".to_owned(),
        "--no-new-privs".to_owned(),
        format!("--bounding-set=-all,{}", worker_unit_caps()),
        "--inh-caps=-all".to_owned(),
        "--".to_owned(),
    ];
    Worker::start(s.dir.path(), &s.config, &wrapper)
}

#[test]
fn the_worker_carries_out_desk_requests_and_records_the_tools_words() {
    let s = setup("worker-desk");
    let a = s.send_held("w-release-me", 6);
    let b = s.send_held("w-discard-me", 6);
    let c = s.send_held("w-deleted-by-hand", 6);
    let worker = start_worker(&s);

    let release = s.file(&a, RequestAction::Release, "checked with Ann");
    let done = s.finished(&release);
    assert_eq!(done.state, RequestState::Done, "{done:?}");
    let result = done.result.clone().unwrap_or_default();
    assert!(result.contains("Released from hold: 1 message"), "{result}");
    let claimed = done.started_at.expect("claimed");
    assert!(
        claimed <= done.requested_at + 2,
        "acted within a second or so: {done:?}"
    );
    let m = s.sink.wait_for("w-release-me");
    assert_eq!(m.rcpts.len(), 6, "delivered to every recipient");
    assert_eq!(s.state(&a), State::Released);
    let record = s
        .store
        .record(&QueueId::parse(&a).unwrap().into())
        .expect("record");
    let entry = record
        .audit
        .iter()
        .find(|e| e.action == "release")
        .expect("a release entry");
    assert_eq!(entry.who, "carol");
    assert_eq!(
        entry.comment.as_deref(),
        Some(
            format!(
                "checked with Ann (request {} via desk from 192.0.2.7)",
                release.id
            )
            .as_str()
        )
    );
    let line = worker.line(release.id);
    assert!(
        line.contains(&a) && line.contains("state=\"done\"") && line.contains("who=carol"),
        "{line}"
    );

    let discard = s.file(
        &b,
        RequestAction::Discard {
            notify_sender: true,
        },
        "Please send it to your team only.",
    );
    let done = s.finished(&discard);
    assert_eq!(done.state, RequestState::Done, "{done:?}");
    let result = done.result.unwrap_or_default();
    assert!(result.contains("Deleted: 1 message"), "{result}");
    assert!(
        result.contains("notice sent to ann@corp.example"),
        "{result}"
    );
    let notice = s.sink.wait_until("w-discard-me", |m| {
        m.rcpts == ["ann@corp.example"] && m.has_header("Subject", "Not sent: w-discard-me")
    });
    assert!(
        notice.text.contains("Please send it to your team only."),
        "the reviewer's words: {}",
        notice.text
    );
    assert!(!s.postfix.held().contains(&b));
    assert_eq!(s.state(&b), State::Discarded);

    s.postsuper_delete(&c);
    let failed = s.finished(&s.file(&c, RequestAction::Release, "checked"));
    assert_eq!(failed.state, RequestState::Failed, "{failed:?}");
    let result = failed.result.unwrap_or_default();
    assert!(result.contains("not in Postfix's hold queue"), "{result}");
    assert_eq!(s.state(&c), State::Held, "the record stays held");

    assert!(worker.stop().success(), "SIGTERM: exit 0");
    assert!(
        s.sink
            .find("w-discard-me")
            .iter()
            .all(|m| m.rcpts == ["ann@corp.example"]),
        "the discarded message itself never left"
    );
}

#[test]
fn requests_filed_before_the_worker_started_or_cut_short_are_carried_out_once() {
    let s = setup("worker-restart");
    let a = s.send_held("w-pending-before-start", 6);
    let b = s.send_held("w-running-at-crash", 6);
    let e = s.send_held("w-extend-me", 6);
    let pending = s.file(&a, RequestAction::Release, "before the worker ran");
    // A request the worker claimed and then died in, before it changed anything: its
    // claimant is a process of an earlier boot.
    let running = s.file(&b, RequestAction::Release, "cut short");
    assert!(s.store.claim(running.id, now()).expect("claim"));
    let db = rusqlite::Connection::open(s.dir.path().join("state/quarantine.sqlite")).expect("db");
    db.execute(
        "UPDATE requests SET claimed_by = '4242 an-earlier-boot' WHERE id = ?1",
        [running.id],
    )
    .expect("an old claimant");
    // A request a live process (this test) is carrying out is left to it.
    let c = s.send_held("w-claimed-by-the-living", 6);
    let live = s.file(&c, RequestAction::Release, "mine");
    assert!(s.store.claim(live.id, now()).expect("claim"));

    // The command line files through the same path: an open request is a conflict.
    let out = s.admin(&["release", &a, "--comment", "me too"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("already open"), "{text}");
    assert!(s.postfix.held().contains(&a), "nothing done");

    let out = s.admin(&["extend", &e, "--for", "5d", "--comment", "waiting for HR"]);
    assert!(out.status.success(), "{out:?}");
    let extended = s
        .store
        .record(&QueueId::parse(&e).unwrap().into())
        .expect("record");
    assert!(
        extended
            .hold_until
            .is_some_and(|t| t >= now() + 5 * 86400 - 60),
        "{extended:?}"
    );
    let t4d = (now() + 4 * 86400).to_string();
    let out = s.admin(&["sweep", "--now", &t4d]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&e),
        "an extended hold is not expired: {out:?}"
    );
    assert!(s.postfix.held().contains(&e));
    let out = s.admin(&["show", &e]);
    let show = String::from_utf8_lossy(&out.stdout);
    assert!(show.contains("Held until:"), "{show}");
    assert!(
        show.contains("extend by ") && show.contains("via cli: done"),
        "{show}"
    );

    let worker = start_worker(&s);
    for r in [&pending, &running] {
        let done = s.finished(r);
        assert_eq!(done.state, RequestState::Done, "{done:?}");
    }
    for subject in ["w-pending-before-start", "w-running-at-crash"] {
        assert_eq!(s.sink.wait_for(subject).rcpts.len(), 6);
    }
    assert!(worker.line(running.id).contains("resumed=true"));
    assert_eq!(
        s.request(&live).state,
        RequestState::Running,
        "left to its claimant"
    );
    assert!(s.postfix.held().contains(&c));
    assert!(worker.stop().success());
    for subject in ["w-pending-before-start", "w-running-at-crash"] {
        let copies: Vec<_> = s
            .sink
            .find(subject)
            .into_iter()
            .filter(|m| m.rcpts.len() == 6)
            .collect();
        assert_eq!(copies.len(), 1, "delivered once: {subject}");
    }
    let _ = &s.dir;
}

/// SIGTERM while postsuper runs: the worker lets the request finish, records it done
/// and exits 0. Postfix's tools are stubs here: postsuper waits (at most a minute) for
/// the test to let it answer, so the signal surely comes mid-request.
#[test]
fn sigterm_mid_request_lets_it_finish_then_exits_0() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("worker-sigterm");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let d = dir.path().display();
    for (name, body) in [
        (
            "postsuper",
            format!(
                "echo \"$*\" >> {d}/calls\n\
                 i=0\n\
                 while [ ! -e {d}/go ]; do sleep 0.05; i=$((i+1)); [ $i -gt 1200 ] && exit 1; done\n\
                 echo 'postsuper: Released from hold: 1 message' >&2\n"
            ),
        ),
        ("postqueue", "exit 0\n".to_owned()),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let state = dir.path().join("state");
    let config = dir.path().join("fanout-milter.toml");
    std::fs::write(
        &config,
        format!(
            "[domains]\ninternal = [\"corp.example\"]\n\
             [postfix]\nconfig_directory = \"{d}\"\ncommand_directory = \"{}\"\n\
             recipient_delimiter = \"\"\nmyorigin = \"corp.example\"\n\
             [quarantine]\nstate_dir = \"{}\"\n",
            bin.display(),
            state.display()
        ),
    )
    .expect("config");
    let store = Store::open(&state).expect("store");
    let held = fanout_milter::quarantine::HeldMessage {
        queue_id: QueueId::parse("ABCDEF1234").expect("queue id"),
        held_at: now(),
        sender: "ann@corp.example".into(),
        sasl_login: None,
        client: None,
        recipients: vec!["all@corp.example".into()],
        audience: 1000,
        external: 0,
        lists: vec![],
        top_domains: vec![],
        visible: vec![],
        subject: Some("w-sigterm".into()),
        message_id: None,
        thread_key: String::new(),
        rules: vec![],
        recorded_by: "milter".into(),
        headers: vec![],
        confirm: false,
        notify_sender: false,
        confirm_key: None,
    };
    store.record_held(&held, "milter", None).expect("record");

    let log = dir.path().join("worker.log");
    let child = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(&config)
        .arg("quarantine")
        .arg("worker")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the worker");
    let mut worker = Worker {
        child: ChildGuard(Some(child)),
        log,
    };
    wait_for("the worker to start", || {
        worker.log().contains("worker starting").then_some(())
    });
    let request = store
        .submit(
            None,
            &NewRequest {
                queue_id: held.queue_id.clone(),
                action: RequestAction::Release,
                who: "carol".into(),
                via: Via::Desk,
                remote: None,
                comment: "checked".into(),
                at: now(),
            },
        )
        .expect("filed");
    wait_for("postsuper to be running", || {
        dir.path().join("calls").exists().then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.child.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    wait_for("the worker to note the signal", || {
        worker.log().contains("SIGTERM received").then_some(())
    });
    let running = store.requests(request.held_id).expect("requests");
    assert_eq!(running[0].state, RequestState::Running, "still at work");
    std::fs::write(dir.path().join("go"), "").expect("let postsuper answer");
    let status = worker.child.wait();
    assert!(status.success(), "{status}: {}", worker.log());
    let done = store.requests(request.held_id).expect("requests");
    assert_eq!(done[0].state, RequestState::Done, "{:?}", done[0]);
    assert!(worker.log().contains("worker stopped"), "{}", worker.log());
}

/// Release to chosen recipients with a real Postfix and the milter on both its smtpd
/// and non_smtpd paths: the copy goes to exactly the ticked recipients, once, without
/// its mark; the held original is deleted only after the milter saw the copy. The
/// worker killed (SIGKILL) right after sendmail took the copy finishes on restart
/// without a second copy. The command line does the same without the worker. A mark
/// nobody signed is removed and changes nothing.
#[test]
fn a_release_to_chosen_recipients_delivers_once_to_exactly_them_even_across_a_crash() {
    let s = setup_with(
        "worker-release-to",
        |dir| {
            let wrapper = dir.join("sendmail-then-die");
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\n\
                 if [ -e {d}/kill-first ]; then rm -f {d}/kill-first; kill -9 $PPID; fi\n\
                 /usr/sbin/sendmail \"$@\"\nrc=$?\n\
                 if [ -e {d}/kill-next ]; then rm -f {d}/kill-next; kill -9 $PPID; fi\n\
                 exit $rc\n",
                    d = dir.display()
                ),
            )
            .expect("wrapper");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            format!("sendmail = \"{}\"", wrapper.display())
        },
        // As many relays write it: the worker must expand it to find its socket.
        "non_smtpd_milters = $smtpd_milters\n",
    );
    let a = s.send_held("w-copy-plain", 6);
    let b = s.send_held("w-copy-crash", 6);
    let b2 = s.send_held("w-copy-early-crash", 6);
    let c = s.send_held("w-copy-cli", 6);

    let worker = start_worker(&s);
    let chosen = vec![rcpt(1), rcpt(4)];
    let r = s.file(
        &a,
        RequestAction::ReleaseTo {
            recipients: chosen.clone(),
        },
        "only the two who need it",
    );
    let done = s.finished(&r);
    assert_eq!(done.state, RequestState::Done, "{done:?}");
    let copy = done
        .copy_queue_id
        .clone()
        .expect("the worker released a copy");
    let result = done.result.clone().unwrap_or_default();
    assert!(
        result.contains(&format!("as a copy ({copy})")) && result.contains("Deleted: 1 message"),
        "{result}"
    );
    let mut m = s.sink.wait_for("w-copy-plain");
    m.rcpts.sort();
    assert_eq!(m.rcpts, chosen);
    assert!(
        !m.text.to_ascii_lowercase().contains("x-fanout-released"),
        "the mark is removed before delivery: {}",
        m.text
    );
    assert!(!s.postfix.held().contains(&a), "the original is gone");
    assert_eq!(s.state(&a), State::Released);
    let record = s
        .store
        .record(&QueueId::parse(&a).unwrap().into())
        .expect("record");
    // Notices to the sender (at hold, and of the release) come in between.
    let trail: Vec<(&str, &str)> = record
        .audit
        .iter()
        .filter(|e| e.action != "notify-sender")
        .map(|e| (e.who.as_str(), e.action.as_str()))
        .collect();
    assert!(
        trail.ends_with(&[("milter", "copy"), ("carol", "release-to")]),
        "{trail:?}"
    );
    assert!(
        s._milter
            .log()
            .contains("the copy of a message released to chosen recipients, held for the worker"),
        "{}",
        s._milter.log()
    );
    let copy_record = s
        .store
        .record(&QueueId::parse(&copy).unwrap().into())
        .expect("the copy's record");
    assert_eq!(copy_record.state, State::Released);
    assert_eq!(copy_record.message.rules[0].rule, "copy");
    assert!(worker.stop().success());

    // SIGKILL right after sendmail took the copy, before anything else was recorded;
    // then SIGKILL just before sendmail would run (so the copy may be made twice).
    for (marker, queue_id, subject, to) in [
        ("kill-next", &b, "w-copy-crash", rcpt(2)),
        ("kill-first", &b2, "w-copy-early-crash", rcpt(3)),
    ] {
        std::fs::write(s.dir.path().join(marker), "").expect("marker");
        let mut worker = start_worker(&s);
        let r = s.file(
            queue_id,
            RequestAction::ReleaseTo {
                recipients: vec![to],
            },
            "cut short",
        );
        let status = worker.child.wait();
        assert!(!status.success(), "killed: {status}");
        assert_eq!(s.request(&r).state, RequestState::Running);
        assert!(
            s.postfix.held().contains(queue_id),
            "the original is still held"
        );
        let worker = start_worker(&s);
        let done = s.finished(&r);
        assert_eq!(done.state, RequestState::Done, "{subject}: {done:?}");
        assert!(!s.postfix.held().contains(queue_id));
        s.sink.wait_for(subject);
        assert!(worker.stop().success());
        let extra: Vec<String> = s
            .store
            .copies(r.id)
            .expect("copies")
            .into_iter()
            .filter(|c| Some(c) != done.copy_queue_id.as_ref())
            .collect();
        for c in extra {
            assert_eq!(s.state(&c), State::Discarded, "a second copy is deleted");
        }
    }

    // The command line, with no worker running.
    let out = s.admin(&[
        "release",
        &c,
        "--to",
        &rcpt(5),
        "--comment",
        "from the shell",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("released to r5@corp.example as a copy"),
        "{text}"
    );
    assert_eq!(s.sink.wait_for("w-copy-cli").rcpts, [rcpt(5)]);
    assert!(!s.postfix.held().contains(&c));

    // A mark nobody made: removed, and the message is decided as any other (delivered).
    let forged = format!(
        "From: ann@corp.example\r\nTo: r0@corp.example\r\nSubject: w-forged-mark\r\n\
         X-Fanout-Released: v1; q={a}; r=1; t=0000\r\n\r\nhello\r\nEND-OF-TEST-BODY\r\n"
    );
    smtp_send(
        s.postfix.smtp_port,
        "ann@corp.example",
        &[rcpt(0)],
        forged.as_bytes(),
    )
    .expect("accepted");
    let m = s.sink.wait_for("w-forged-mark");
    assert!(
        !m.text.to_ascii_lowercase().contains("x-fanout-released"),
        "{}",
        m.text
    );
    assert!(s._milter.log().contains("fanout-milter did not write"));

    // Every message went out once, to exactly the chosen recipients.
    for (subject, to) in [
        ("w-copy-plain", vec![rcpt(1), rcpt(4)]),
        ("w-copy-crash", vec![rcpt(2)]),
        ("w-copy-early-crash", vec![rcpt(3)]),
        ("w-copy-cli", vec![rcpt(5)]),
    ] {
        assert_eq!(deliveries(&s, subject), [to], "{subject}");
    }
}
