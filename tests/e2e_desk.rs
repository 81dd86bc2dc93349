// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, the review desk: a private Postfix holds what the milter quarantines;
//! people log in to the desk the daemon serves, over real HTTP, and ask for a release;
//! the root worker carries it out with postsuper; the message reaches the sink, and the
//! record and its audit trail say who asked, from where, and why. A viewer cannot.

mod common;

use common::http::*;
use common::*;
use fanout_milter::quarantine::{QuarantineIndex, QueueId, RequestState, State, Store};
use std::path::PathBuf;
use std::process::Command;

struct Desk {
    dir: tempfile::TempDir,
    sink: Sink,
    _milter: Milter,
    postfix: Postfix,
    config: PathBuf,
    port: u16,
    store: Store,
}

impl Desk {
    fn start(name: &str) -> Desk {
        Desk::start_with(name, false)
    }

    /// With `digest_links`, the admin digest goes to `admins@corp.example` through
    /// the private Postfix, with one-click links to this desk.
    fn start_with(name: &str, digest_links: bool) -> Desk {
        require_postfix();
        let dir = scratch_dir(name);
        let sink = Sink::start(dir.path());
        let listen = format!("inet:127.0.0.1:{}", free_port());
        let postfix = Postfix::start(dir.path(), &sink, &listen);
        let state = dir.path().join("state");
        let users = dir.path().join("review-users");
        let port = free_port();
        let body = format!(
            r#"
[domains]
internal = ["corp.example"]

[limits.envelope]
tag = 0
quarantine = 5
reject = 0

[postfix]
config_directory = "{etc}"

[quarantine]
state_dir = "{state}"

[review]
listen = "inet:127.0.0.1:{port}"
users_file = "{users}"
{links}"#,
            etc = postfix.etc.display(),
            state = state.display(),
            users = users.display(),
            links = if digest_links {
                format!(
                    "public_url = \"http://127.0.0.1:{port}\"\ndigest_actions = true\n\n\
                     [notify]\nadmins = [\"admins@corp.example\"]\ninterval = \"1s\"\n\
                     from = \"postmaster@corp.example\"\nrelay = \"127.0.0.1:{}\"\n",
                    postfix.smtp_port
                )
            } else {
                String::new()
            },
        );
        let config = dir.path().join("fanout-milter.toml");
        std::fs::write(&config, with_listen(&listen, &body)).expect("config");
        let secret = dir.path().join("password");
        std::fs::write(&secret, "correct horse battery\n").expect("password file");
        for (user, role) in [("rita", "reviewer"), ("vic", "viewer")] {
            let out = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
                .arg("-c")
                .arg(&config)
                .args(["review", "passwd", user, "--role", role, "--password-file"])
                .arg(&secret)
                .output()
                .expect("review passwd");
            assert!(out.status.success(), "{out:?}");
        }
        let milter = Milter::start_file(dir.path(), &listen, config.clone());
        wait_for("the desk to listen", || listening(port).then_some(()));
        let store = Store::open(&state).expect("the daemon's store");
        Desk {
            dir,
            sink,
            _milter: milter,
            postfix,
            config,
            port,
            store,
        }
    }

    /// Sends a message to `n` recipients (held from 5 on); its queue id.
    fn send_held(&self, subject: &str, n: usize) -> String {
        let to = rcpts(n, "corp.example");
        smtp_send(
            self.postfix.smtp_port,
            "ann@corp.example",
            &to,
            &message(subject, &to.join(", ")),
        )
        .expect("accepted for the hold queue");
        wait_for(&format!("{subject} in the hold queue"), || {
            self.postfix
                .held()
                .into_iter()
                .find(|id| self.postfix.postcat_headers(id).contains(subject))
        })
    }

    fn state(&self, queue_id: &str) -> State {
        self.store
            .record(&QueueId::parse(queue_id).expect("queue id").into())
            .expect("record")
            .state
    }
}

#[test]
fn a_reviewer_releases_through_the_desk_and_a_viewer_cannot() {
    let d = Desk::start("desk-release");
    let _worker = Worker::start(d.dir.path(), &d.config, &[]);
    let id = d.send_held("desk-release-1", 6);
    let page = format!("/message/{id}");

    // A viewer sees the message but has no buttons, and a crafted POST is refused.
    let vic = login(d.port, "vic", "correct horse battery");
    let seen = get(d.port, &page, &vic);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("desk-release-1"), "{seen}");
    assert!(
        !seen.contains("value=\"release\""),
        "no release button: {seen}"
    );
    let refused = post(
        d.port,
        &page,
        Some(&vic),
        &form(&[
            ("token", &token(&seen)),
            ("action", "release"),
            ("comment", "let me"),
        ]),
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert_eq!(d.state(&id), State::Held);
    assert!(d.postfix.held().contains(&id));

    // A reviewer asks for a release; the worker carries it out; the message arrives.
    let rita = login(d.port, "rita", "correct horse battery");
    let seen = get(d.port, &page, &rita);
    let released = post(
        d.port,
        &page,
        Some(&rita),
        &form(&[
            ("token", &token(&seen)),
            ("action", "release"),
            ("comment", "checked with Ann: the board's minutes"),
        ]),
    );
    assert!(released.starts_with("HTTP/1.1 303"), "{released}");
    let delivered = d.sink.wait_for("desk-release-1");
    assert_eq!(delivered.rcpts.len(), 6);
    let record = d
        .store
        .record(&QueueId::parse(&id).unwrap().into())
        .expect("record");
    wait_for("the request to be done", || {
        let requests = d.store.requests(record.id).expect("requests");
        (requests.len() == 1 && requests[0].state == RequestState::Done).then_some(())
    });
    let record = d
        .store
        .record(&QueueId::parse(&id).unwrap().into())
        .expect("record");
    assert_eq!(record.state, State::Released);
    let request = record
        .audit
        .iter()
        .find(|a| a.action == "request release")
        .expect("the request is in the audit trail");
    assert_eq!(request.who, "rita");
    assert_eq!(
        request.comment.as_deref(),
        Some("via desk from 127.0.0.1: checked with Ann: the board's minutes")
    );
    assert!(
        record
            .audit
            .iter()
            .any(|a| a.action == "release" && a.who.contains("rita")),
        "the release itself names the reviewer: {:?}",
        record.audit
    );

    // The desk shows the result; a second release is a conflict and changes nothing.
    let shown = get(d.port, &page, &rita);
    assert!(shown.contains("class=\"req done\""), "{shown}");
    let again = post(
        d.port,
        &page,
        Some(&rita),
        &form(&[
            ("token", &token(&shown)),
            ("action", "release"),
            ("comment", "again"),
        ]),
    );
    assert!(again.starts_with("HTTP/1.1 409"), "{again}");
    assert_eq!(
        d.sink
            .find("desk-release-1")
            .iter()
            .filter(|m| m.rcpts.len() == 6)
            .count(),
        1,
        "delivered once (the other mail naming it is the sender's notice)"
    );
}

#[test]
fn a_reviewer_releases_from_a_signed_digest_link_once() {
    let d = Desk::start_with("desk-digest-link", true);
    let _worker = Worker::start(d.dir.path(), &d.config, &[]);
    let id = d.send_held("digest-link-1", 6);

    // The digest reaches the admin with the message's page and its one-click links.
    let digest = d.sink.wait_until(&id, |m| {
        m.rcpts == ["admins@corp.example"]
            && unquoted(&m.text).contains("Do not forward this mail.")
    });
    let text = unquoted(&digest.text);
    let base = format!("http://127.0.0.1:{}", d.port);
    assert!(
        text.contains(&format!("desk:     {base}/message/{id}")),
        "{text}"
    );
    let link = |action: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{action}:")))
            .map(|l| {
                l.trim()
                    .strip_prefix(&base)
                    .expect("an absolute link")
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("a {action} link in {text}"))
    };
    let release = link("release");
    assert!(release.starts_with("/link/"), "{release}");
    assert_ne!(release, link("discard"));

    // Opening it changes nothing, and without a login it offers nothing; signed in,
    // the confirm form acts once.
    let seen = get(d.port, &release, "");
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("digest-link-1"), "{seen}");
    assert!(seen.contains("admins@corp.example"), "{seen}");
    assert!(!seen.contains("id=\"link-act\""), "{seen}");
    assert_eq!(d.state(&id), State::Held);
    let anonymous = post(d.port, &release, None, &form(&[("comment", "x")]));
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    let rita = login(d.port, "rita", "correct horse battery");
    let page = get(d.port, &release, &rita);
    let t = token(&page);
    let done = post(
        d.port,
        &release,
        Some(&rita),
        &form(&[("token", &t), ("comment", "from the digest link")]),
    );
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert!(done.contains("pending"), "{done}");
    let delivered = d.sink.wait_for("digest-link-1");
    assert_eq!(delivered.rcpts.len(), 6);
    let record = d
        .store
        .record(&QueueId::parse(&id).unwrap().into())
        .expect("record");
    wait_for("the request to be done", || {
        let requests = d.store.requests(record.id).expect("requests");
        (requests.len() == 1 && requests[0].state == RequestState::Done).then_some(())
    });
    let request = &d.store.requests(record.id).expect("requests")[0];
    assert_eq!(request.who, "rita");
    assert_eq!(
        request.comment,
        "from the digest link (digest link mailed to admins@corp.example)"
    );
    assert_eq!(request.remote.as_deref(), Some("127.0.0.1"));
    assert_eq!(d.state(&id), State::Released);

    let again = post(
        d.port,
        &release,
        Some(&rita),
        &form(&[("token", &t), ("comment", "again")]),
    );
    assert!(again.starts_with("HTTP/1.1 409"), "{again}");
    assert_eq!(
        d.sink
            .find("digest-link-1")
            .iter()
            .filter(|m| m.rcpts.len() == 6)
            .count(),
        1
    );
}
