// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, one quarantine for a fleet: two relays (each a private Postfix with its
//! own fanout-milter and root worker) share one private PostgreSQL
//! (tests/common/postgres.rs). A message held on relay A appears on relay B's desk
//! (over real HTTP, with its relay), is released there, and is carried out by relay
//! A's worker alone: it reaches the sink, and the audit trail names the reviewer and
//! both relays. Then PostgreSQL stops: a message to hold is tempfailed, never lost;
//! sent again once the server is back, it is held once and every desk shows it. A
//! relay started while the server is down passes mail that needs no hold, tempfails
//! a hold, and records holds again on its own once the server is back.

mod common;

use common::http::*;
use common::postgres::{PG_PASSWORD, Postgres};
use common::*;
use fanout_milter::config::PgSettings;
use fanout_milter::quarantine::{
    Address, HeldMessage, QuarantineIndex, QueueId, RequestState, State, Store,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DESK_PASSWORD: &str = "correct horse battery";

struct Relay {
    name: &'static str,
    desk: u16,
    postfix: Postfix,
    milter: Milter,
    worker: Worker,
}

impl Relay {
    fn start(root: &Path, name: &'static str, sink: &Sink, pg: &Postgres) -> Relay {
        let root = root.join(name);
        std::fs::create_dir_all(&root).expect("relay dir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let listen = format!("inet:127.0.0.1:{}", free_port());
        let postfix = Postfix::start(&root, sink, &listen);
        let secret = root.join("pg.secret");
        std::fs::write(&secret, format!("{PG_PASSWORD}\n")).expect("password file");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let desk = free_port();
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
store = "postgres"
url = "{url}"
password_file = "{secret}"
relay = "{name}"

[review]
listen = "inet:127.0.0.1:{desk}"
users_file = "{users}"
"#,
            etc = postfix.etc.display(),
            state = root.join("state").display(),
            url = pg.url(),
            secret = secret.display(),
            users = root.join("review-users").display(),
        );
        let config = root.join("fanout-milter.toml");
        std::fs::write(&config, with_listen(&listen, &body)).expect("config");
        let typed = root.join("desk-password");
        std::fs::write(&typed, format!("{DESK_PASSWORD}\n")).expect("desk password");
        for (user, role) in [("rita", "reviewer"), ("ada", "admin")] {
            let out = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
                .arg("-c")
                .arg(&config)
                .args(["review", "passwd", user, "--role", role, "--password-file"])
                .arg(&typed)
                .output()
                .expect("review passwd");
            assert!(out.status.success(), "{out:?}");
        }
        let milter = Milter::start_file(&root, &listen, config.clone());
        wait_for("the desk to listen", || listening(desk).then_some(()));
        let worker = Worker::start(&root, &config, &[]);
        Relay {
            name,
            desk,
            postfix,
            milter,
            worker,
        }
    }

    fn send(&self, subject: &str) -> Result<String, Refused> {
        self.send_to(6, subject)
    }

    fn send_to(&self, n: usize, subject: &str) -> Result<String, Refused> {
        let to = rcpts(n, "corp.example");
        smtp_send(
            self.postfix.smtp_port,
            "ann@corp.example",
            &to,
            &message(subject, &to.join(", ")),
        )
    }

    fn held(&self, subject: &str) -> String {
        wait_for(&format!("{subject} in {}'s hold queue", self.name), || {
            self.postfix
                .held()
                .into_iter()
                .find(|id| self.postfix.postcat_headers(id).contains(subject))
        })
    }
}

/// The desk key a relay's daemon made (`state_dir/desk.key`).
fn desk_key(root: &Path, relay: &str) -> Vec<u8> {
    std::fs::read(root.join(relay).join("state").join("desk.key")).expect("the desk key")
}

/// A sender link for `m` as `src/link.rs` signs it (base64url JSON payload,
/// HMAC-SHA256 under the sender label), signed with `key`, naming `relay` when given:
/// the desk path `/s/TOKEN`.
fn sender_link(key: &[u8], relay: Option<&str>, m: &HeldMessage, action: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("randomness");
    let mut payload = serde_json::json!({
        "q": m.queue_id.as_str(),
        "h": m.held_at,
        "a": action,
        "to": m.sender,
        "exp": m.held_at + 86_400,
        "n": nonce.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    if let Some(relay) = relay {
        payload["r"] = relay.into();
    }
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("a key");
    mac.update(b"fanout-milter sender link v1\0");
    mac.update(payload.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("/s/{payload}.{tag}")
}

/// The form field `name` of a page.
fn field(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = page.find(&marker).expect("the field") + marker.len();
    page[at..at + page[at..].find('"').expect("its end")].to_owned()
}

/// Postfix reuses queue ids across hosts: relay B also holds `id` (recorded here as
/// B's milter would). Every link names its relay and reaches that relay's record, a
/// desk address with a bad relay name is refused, and a signed link acts on the
/// record of the relay it was signed for: only where its key verifies it (each relay
/// has its own key unless the admins share one), and never on the other relay's.
fn same_queue_id_on_both_relays(
    pg: &Postgres,
    root: &Path,
    a: &Relay,
    b: &Relay,
    observer: &Store,
    id: &str,
) {
    let qid = QueueId::parse(id).unwrap();
    let theirs = observer
        .record(&Address::on(Some("relay-a"), qid.clone()))
        .expect("relay A's record");
    let as_b = Store::open_postgres(
        &PgSettings {
            url: pg.url(),
            password: Some(PG_PASSWORD.into()),
            relay: "relay-b".into(),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        },
        root,
    )
    .expect("the fleet's store as relay B");
    let mut twin = theirs.message.clone();
    twin.subject = Some("fleet-desk-twin".into());
    twin.message_id = Some("twin@corp.example".into());
    twin.headers.clear();
    twin.sender = "bob@corp.example".into();
    twin.held_at += 7;
    twin.notify_sender = false;
    let twin_id = as_b
        .record_held(&twin, "milter", Some("the same queue id on relay B"))
        .expect("relay B's record");

    let rita = login(b.desk, "rita", DESK_PASSWORD);
    let list = get(b.desk, "/", &rita);
    for relay in ["relay-a", "relay-b"] {
        assert!(
            list.contains(&format!("href=\"/message/{relay}:{id}\"")),
            "{list}"
        );
    }
    for (relay, subject, other) in [
        ("relay-a", "fleet-desk-1", "fleet-desk-twin"),
        ("relay-b", "fleet-desk-twin", "fleet-desk-1"),
    ] {
        let seen = get(b.desk, &format!("/message/{relay}:{id}"), &rita);
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        assert!(seen.contains(subject) && !seen.contains(other), "{seen}");
        assert!(
            seen.contains(&format!("action=\"/message/{relay}:{id}\" id=\"act\"")),
            "the form acts on this relay's record: {seen}"
        );
    }
    // A queue id alone: this desk's relay's record, on either desk.
    assert!(get(b.desk, &format!("/message/{id}"), &rita).contains("fleet-desk-twin"));
    let rita_a = login(a.desk, "rita", DESK_PASSWORD);
    let on_a = get(a.desk, &format!("/message/{id}"), &rita_a);
    assert!(
        on_a.contains("fleet-desk-1") && !on_a.contains("fleet-desk-twin"),
        "{on_a}"
    );
    // Bulk: ticked by address, each checked against its own relay's record (the
    // confirmation page files nothing).
    let both = [format!("relay-a:{id}"), format!("relay-b:{id}")];
    let confirm = post(
        b.desk,
        "/bulk",
        Some(&rita),
        &form(&[
            ("token", &token(&list)),
            ("action", "release"),
            ("scope", "selected"),
            ("id", &both[0]),
            ("id", &both[1]),
        ]),
    );
    assert!(
        confirm.contains("2 can be released by you; 0 will be refused."),
        "{confirm}"
    );
    for address in &both {
        assert!(
            confirm.contains(&format!("name=\"id\" value=\"{address}\""))
                && confirm.contains(&format!("href=\"/message/{address}\"")),
            "{confirm}"
        );
    }
    // Each relay keeps its own accepted list sizes: an admin accepts a size on the
    // desk of the relay that holds the message (no form for another's; a post refused).
    let ada = login(b.desk, "ada", DESK_PASSWORD);
    const ACCEPT_NOTE: &str = "Accepting a list's new size";
    let own = get(b.desk, &format!("/message/relay-b:{id}"), &ada);
    assert!(own.contains(ACCEPT_NOTE), "{own}");
    let other = get(b.desk, &format!("/message/relay-a:{id}"), &ada);
    assert!(!other.contains(ACCEPT_NOTE), "{other}");
    let refused = post(
        b.desk,
        &format!("/message/relay-a:{id}/accept-size"),
        Some(&ada),
        &form(&[("token", &token(&other)), ("list", "0"), ("comment", "ok")]),
    );
    assert!(
        refused.starts_with("HTTP/1.1 409") && refused.contains("held on relay relay-a"),
        "{refused}"
    );
    for bad in ["relay%20a", "relay%2Fa", "", "%E2%80%AErelay-a", "relay-c"] {
        let refused = get(b.desk, &format!("/message/{bad}:{id}"), &rita);
        assert!(refused.starts_with("HTTP/1.1 404"), "{bad}: {refused}");
    }

    // A link relay A signed for its record: B's key does not verify it.
    let key_a = desk_key(root, "relay-a");
    let key_b = desk_key(root, "relay-b");
    assert_ne!(key_a, key_b, "each relay made its own desk key");
    let ask = sender_link(&key_a, Some("relay-a"), &theirs.message, "ask");
    let on_b = get(b.desk, &ask, "");
    assert!(on_b.starts_with("HTTP/1.1 403"), "{on_b}");
    let on_a = get(a.desk, &ask, "");
    assert!(
        on_a.starts_with("HTTP/1.1 200") && on_a.contains("fleet-desk-1"),
        "{on_a}"
    );
    // With one key for the fleet, a link naming relay A acts on A's record from B's
    // desk, not on B's record of the same queue id.
    let ask = sender_link(&key_b, Some("relay-a"), &theirs.message, "ask");
    let shown = get(b.desk, &ask, "");
    assert!(
        shown.contains("fleet-desk-1") && !shown.contains("fleet-desk-twin"),
        "{shown}"
    );
    let asked = post(
        b.desk,
        &ask,
        None,
        &form(&[("form", &field(&shown, "form")), ("why", "the board asked")]),
    );
    assert!(asked.starts_with("HTTP/1.1 200"), "{asked}");
    assert_eq!(
        observer.plea(theirs.id).expect("store").map(|p| p.words),
        Some("the board asked".to_owned())
    );
    assert_eq!(observer.plea(twin_id).expect("store"), None);
    // A link without a relay (mailed before links named theirs) names the record of
    // the relay that verifies it: for A's hold it finds B's record, held at another
    // time and sent by someone else, and does nothing.
    let legacy = sender_link(&key_b, None, &theirs.message, "ask");
    let refused = get(b.desk, &legacy, "");
    assert!(
        refused.starts_with("HTTP/1.1 410") && !refused.contains("fleet-desk"),
        "{refused}"
    );
    assert!(observer.requests(twin_id).expect("store").is_empty());
    assert_eq!(observer.plea(twin_id).expect("store"), None);
}

#[test]
fn a_message_held_on_one_relay_is_released_from_the_other_relays_desk() {
    let mut pg = Postgres::start();
    let dir = scratch_dir("fleet-desk");
    let sink = Sink::start(dir.path());
    let a = Relay::start(dir.path(), "relay-a", &sink, &pg);
    let mut b = Relay::start(dir.path(), "relay-b", &sink, &pg);
    let observer = Store::open_postgres(
        &PgSettings {
            url: pg.url(),
            password: Some(PG_PASSWORD.into()),
            relay: "observer".into(),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        },
        dir.path(),
    )
    .expect("the fleet's store");

    a.send("fleet-desk-1").expect("accepted for the hold queue");
    let id = a.held("fleet-desk-1");

    // Relay B's desk lists it with its relay, filters by relay, and shows its page.
    let rita = login(b.desk, "rita", DESK_PASSWORD);
    let list = get(b.desk, "/", &rita);
    assert!(list.starts_with("HTTP/1.1 200"), "{list}");
    assert!(list.contains(&format!("data-queue-id=\"{id}\"")), "{list}");
    assert!(list.contains("<th>Relay</th>"), "a relay column: {list}");
    assert!(list.contains("relay-a"), "{list}");
    let only_b = get(b.desk, "/?relay=relay-b", &rita);
    assert!(
        !only_b.contains(&format!("data-queue-id=\"{id}\"")),
        "{only_b}"
    );
    let only_a = get(b.desk, "/?relay=relay-a", &rita);
    assert!(
        only_a.contains(&format!("data-queue-id=\"{id}\"")),
        "{only_a}"
    );
    // Its links name its relay; B's desk says it is relay B's.
    let page = format!("/message/relay-a:{id}");
    assert!(list.contains(&format!("href=\"{page}\"")), "{list}");
    assert!(
        list.contains("id=\"on-relay\">this relay: <bdi>relay-b</bdi></span>"),
        "{list}"
    );
    let seen = get(b.desk, &page, &rita);
    assert!(seen.contains("fleet-desk-1"), "{seen}");
    assert!(
        seen.contains("<dd id=\"relay\"><bdi>relay-a</bdi></dd>"),
        "{seen}"
    );
    // A queue id alone names this relay's record: B has none.
    let plain = get(b.desk, &format!("/message/{id}"), &rita);
    assert!(plain.starts_with("HTTP/1.1 404"), "{plain}");
    same_queue_id_on_both_relays(&pg, dir.path(), &a, &b, &observer, &id);

    // Released on B's desk; carried out by A's worker; delivered from A.
    let released = post(
        b.desk,
        &page,
        Some(&rita),
        &form(&[
            ("token", &token(&seen)),
            ("action", "release"),
            ("comment", "checked with Ann"),
        ]),
    );
    assert!(released.starts_with("HTTP/1.1 303"), "{released}");
    let delivered = sink.wait_for("fleet-desk-1");
    assert_eq!(delivered.rcpts.len(), 6);
    let queue_id = Address::on(Some("relay-a"), QueueId::parse(&id).unwrap());
    let record = observer.record(&queue_id).expect("record");
    wait_for("the request to be done", || {
        let requests = observer.requests(record.id).expect("requests");
        (requests.len() == 1 && requests[0].state == RequestState::Done).then_some(())
    });
    let request = observer.requests(record.id).unwrap().remove(0);
    assert!(
        a.worker.line(request.id).contains("state=\"done\""),
        "{}",
        a.worker.log()
    );
    assert!(
        !b.worker.log().contains(&format!("request={} ", request.id)),
        "relay B's worker never touched it: {}",
        b.worker.log()
    );
    assert!(!a.postfix.held().contains(&id), "released from A's queue");

    // The audit trail: who, and on which relay each step happened.
    let record = observer.record(&queue_id).expect("record");
    assert_eq!(record.state, State::Released);
    assert_eq!(record.relay.as_deref(), Some("relay-a"));
    let asked = record
        .audit
        .iter()
        .find(|e| e.action == "request release")
        .expect("the request in the audit trail");
    assert_eq!(asked.who, "rita");
    assert_eq!(
        asked.comment.as_deref(),
        Some("on relay-b: via desk from 127.0.0.1, for relay-a: checked with Ann")
    );
    let done = record
        .audit
        .iter()
        .find(|e| e.action == "release")
        .expect("the release in the audit trail");
    assert!(done.who.contains("rita"), "{done:?}");
    assert!(
        done.comment
            .as_deref()
            .unwrap_or("")
            .starts_with("on relay-a"),
        "{done:?}"
    );
    let shown = get(b.desk, &page, &rita);
    assert!(shown.contains("class=\"req done\""), "{shown}");

    // PostgreSQL stops: a message to hold is tempfailed, never accepted unrecorded.
    pg.stop();
    let refused = a
        .send("fleet-desk-2")
        .expect_err("no record, no hold: tempfail");
    assert_eq!(refused.code / 100, 4, "{refused:?}");
    assert!(
        !a.postfix
            .held()
            .iter()
            .any(|q| a.postfix.postcat_headers(q).contains("fleet-desk-2")),
        "nothing held without a record"
    );
    let down = get(b.desk, "/", &rita);
    assert!(
        !down.starts_with("HTTP/1.1 200"),
        "the desk says the store failed: {down}"
    );

    // Relay B restarts during the outage: it starts, passes what needs no hold and
    // tempfails a hold.
    b.milter.stop();
    let root = b.milter.config.parent().expect("relay dir").to_owned();
    b.milter = Milter::start_file(&root, &b.milter.listen.clone(), b.milter.config.clone());
    b.send_to(2, "fleet-desk-small")
        .expect("a message that needs no hold flows during the outage");
    assert_eq!(sink.wait_for("fleet-desk-small").rcpts.len(), 2);
    let refused = b
        .send("fleet-desk-3")
        .expect_err("started without the store: a hold tempfails");
    assert_eq!(refused.code / 100, 4, "{refused:?}");

    // Back: the client sends again, the message is held once, and every desk has it.
    pg.restart();
    a.send("fleet-desk-2").expect("held once the store is back");
    let id2 = a.held("fleet-desk-2");
    for desk in [a.desk, b.desk] {
        let cookie = login(desk, "rita", DESK_PASSWORD);
        let list = wait_for("the desk to show the new hold", || {
            let list = get(desk, "/", &cookie);
            list.contains(&format!("data-queue-id=\"{id2}\""))
                .then_some(list)
        });
        assert!(list.contains("relay-a"), "{list}");
    }
    // B, started during the outage, records holds again on its own; A's desk has it.
    b.send("fleet-desk-3").expect("held once the store is back");
    let id3 = b.held("fleet-desk-3");
    let cookie = login(a.desk, "rita", DESK_PASSWORD);
    wait_for("relay A's desk to show B's hold", || {
        get(a.desk, "/", &cookie)
            .contains(&format!("data-queue-id=\"{id3}\""))
            .then_some(())
    });
    let log = b.milter.log();
    assert_eq!(
        log.matches("quarantine store unreachable").count(),
        1,
        "the outage is logged once: {log}"
    );
    assert_eq!(
        log.matches("quarantine store reachable again").count(),
        1,
        "and its end once: {log}"
    );
    assert!(!log.contains(PG_PASSWORD), "no secret in the log: {log}");
    wait_for("relay A's worker to read the store again", || {
        a.worker
            .log()
            .contains("the open requests can be read again")
            .then_some(())
    });
    let query = fanout_milter::quarantine::Query {
        limit: 50,
        ..Default::default()
    };
    // The observer's connection broke with the server: its next call connects again.
    let all = wait_for("the observer to read the store again", || {
        observer.page(&query).ok()
    });
    assert_eq!(
        all.rows
            .iter()
            .filter(|r| r.record.message.subject.as_deref() == Some("fleet-desk-2"))
            .count(),
        1,
        "held once"
    );
}
