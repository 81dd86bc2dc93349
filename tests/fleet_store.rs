// SPDX-License-Identifier: GPL-3.0-or-later
//! The quarantine store on both backends: the same checks against a relay's SQLite
//! file and a private PostgreSQL (tests/common/postgres.rs); then what only a
//! fleet-wide store does: two relays share one database, each record tagged with its
//! relay, requests filed on any relay taken only by the owning relay's worker, and a
//! server that goes away and comes back.

mod common;

use common::postgres::{PG_PASSWORD, PG_TLS_DATABASE, Postgres};
use common::wait_for;
use fanout_milter::config::ldap::CaCertificates;
use fanout_milter::config::{PgSettings, PgTls};
use fanout_milter::quarantine::{
    Address, AuditEntry, Filter, HeldMessage, NewRequest, QuarantineIndex, Query, QueueId,
    RequestAction, RequestState, State, Store, StoreError, SubmitError, Via,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn held(queue_id: &str, at: u64, sender: &str, audience: u64, rule: &str) -> HeldMessage {
    serde_json::from_value(serde_json::json!({
        "queue_id": queue_id,
        "held_at": at,
        "sender": sender,
        "sasl_login": sender.split('@').next(),
        "client": "192.0.2.1",
        "recipients": ["all@example.org", "bob@example.org"],
        "audience": audience,
        "external": 0,
        "lists": [{"address": "All@Example.org", "size": audience, "external": 0, "drift_from": null}],
        "top_domains": [["example.org", audience]],
        "visible": ["all@example.org"],
        "subject": "Test",
        "message_id": "<1@example.org>",
        "thread_key": "mid:1@example.org",
        "rules": [{"rule": rule, "action": "quarantine", "message": "why"}],
        "recorded_by": "milter",
    }))
    .expect("a held message")
}

fn qid(s: &str) -> QueueId {
    QueueId::parse(s).unwrap()
}

/// `queue_id` on `relay`.
fn on(relay: &str, queue_id: &str) -> Address {
    Address::on(Some(relay), qid(queue_id))
}

fn entry(who: &str, action: &str) -> AuditEntry {
    AuditEntry {
        at: 300,
        who: who.into(),
        action: action.into(),
        comment: None,
    }
}

fn request(queue_id: &str, action: RequestAction) -> NewRequest {
    NewRequest {
        queue_id: qid(queue_id),
        action,
        who: "carol".into(),
        via: Via::Desk,
        remote: Some("192.0.2.7".into()),
        comment: "checked with the sender".into(),
        at: 500,
    }
}

fn settings(url: &str, relay: &str) -> PgSettings {
    PgSettings {
        url: url.to_owned(),
        password: Some(PG_PASSWORD.to_owned()),
        relay: relay.to_owned(),
        connect_timeout: Duration::from_secs(2),
        tls: None,
    }
}

fn ids(store: &Store, q: &Query) -> Vec<String> {
    store
        .page(q)
        .unwrap()
        .rows
        .iter()
        .map(|r| r.record.message.queue_id.as_str().to_owned())
        .collect()
}

/// What every store does, whichever backend: records, state changes that only one of
/// two racers wins, pages filtered and sorted on the server, one open request per held
/// message, claims and results, link nonces spent once, events.
fn the_same_checks(store: &Store) {
    let a = store
        .record_held(
            &held("AAAAAA1", 100, "ann@example.org", 840_000, "drift"),
            "milter",
            None,
        )
        .unwrap();
    store
        .record_held(
            &held("BBBBBB2", 200, "Bob@Example.org", 40, "hidden"),
            "milter",
            None,
        )
        .unwrap();
    store
        .record_held(
            &held("CCCCCC3", 300, "cid@example.org", 5000, "storm"),
            "milter",
            None,
        )
        .unwrap();
    let r = store.get(&qid("AAAAAA1")).unwrap();
    assert_eq!(
        (r.id, r.state, r.message.audience),
        (a, State::Held, 840_000)
    );
    assert_eq!(r.audit.len(), 1);
    assert_eq!(r.audit[0].action, "held");
    assert!(matches!(
        store.get(&qid("DDDDDD4")),
        Err(StoreError::NotFound(_))
    ));

    store
        .set_state(a, State::Held, State::Released, &entry("root", "release"))
        .unwrap();
    let lost = store
        .set_state(a, State::Held, State::Discarded, &entry("root", "discard"))
        .unwrap_err();
    assert!(
        lost.to_string().contains("is released now, not held"),
        "{lost}"
    );
    assert_eq!(
        store
            .list(&Filter {
                state: Some(State::Held),
                since: None
            })
            .unwrap()
            .len(),
        2
    );

    let all = Query {
        limit: 50,
        ..Query::default()
    };
    assert_eq!(ids(store, &all), ["AAAAAA1", "BBBBBB2", "CCCCCC3"]);
    let page = store.page(&all).unwrap();
    assert_eq!(page.total, 3);
    assert!(
        page.by_state.contains(&(State::Held, 2)),
        "{:?}",
        page.by_state
    );
    assert!(
        page.by_rule.contains(&("hidden".to_owned(), 1)),
        "{:?}",
        page.by_rule
    );
    let held_only = Query {
        state: Some(State::Held),
        ..all.clone()
    };
    let by_sender = Query {
        sender: Some("BOB@".into()),
        ..held_only.clone()
    };
    assert_eq!(ids(store, &by_sender), ["BBBBBB2"], "case is ignored");
    let no_wildcards = Query {
        sender: Some("%".into()),
        ..held_only.clone()
    };
    assert!(ids(store, &no_wildcards).is_empty(), "no LIKE wildcards");
    let by_rule = Query {
        rule: Some("storm".into()),
        ..held_only.clone()
    };
    assert_eq!(ids(store, &by_rule), ["CCCCCC3"]);
    let by_list = Query {
        list: Some("all@EXAMPLE".into()),
        ..held_only.clone()
    };
    assert_eq!(ids(store, &by_list), ["BBBBBB2", "CCCCCC3"]);
    let biggest = Query {
        sort: fanout_milter::quarantine::Sort::Audience,
        descending: true,
        ..held_only.clone()
    };
    assert_eq!(ids(store, &biggest), ["CCCCCC3", "BBBBBB2"]);
    let second = Query {
        offset: 1,
        limit: 1,
        ..held_only.clone()
    };
    let p = store.page(&second).unwrap();
    assert_eq!((p.rows.len(), p.total), (1, 2));

    let filed = store
        .submit(None, &request("BBBBBB2", RequestAction::Release))
        .unwrap();
    assert_eq!(filed.state, RequestState::Pending);
    let again = store.submit(
        None,
        &request(
            "BBBBBB2",
            RequestAction::Discard {
                notify_sender: false,
            },
        ),
    );
    assert!(matches!(again, Err(SubmitError::Conflict(_))), "{again:?}");
    let released = store.submit(None, &request("AAAAAA1", RequestAction::Release));
    assert!(
        matches!(released, Err(SubmitError::Conflict(m)) if m == "AAAAAA1 is released already")
    );
    let stranger = store.submit(
        None,
        &request(
            "CCCCCC3",
            RequestAction::ReleaseTo {
                recipients: vec!["mallory@example.net".into()],
            },
        ),
    );
    assert!(
        matches!(stranger, Err(SubmitError::Invalid(_))),
        "{stranger:?}"
    );
    assert_eq!(
        store
            .open_requests()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [filed.id]
    );
    let sweep = entry("sweep", "expire");
    assert!(matches!(
        store.set_state_unrequested(filed.held_id, State::Held, State::Expired, &sweep),
        Err(StoreError::RequestOpen { .. })
    ));
    assert!(store.claim(filed.id, 501).unwrap());
    assert!(!store.claim(filed.id, 502).unwrap(), "a second claim fails");
    store.finish(filed.id, true, "released", 503).unwrap();
    assert!(store.finish(filed.id, true, "again", 504).is_err());
    let done = &store.requests(filed.held_id).unwrap()[0];
    assert_eq!(
        (
            done.state,
            done.started_at,
            done.finished_at,
            done.result.as_deref()
        ),
        (RequestState::Done, Some(501), Some(503), Some("released"))
    );
    assert!(store.open_requests().unwrap().is_empty());

    let nonce = "0123456789abcdef0123456789abcdef";
    let link = request("CCCCCC3", RequestAction::Extend { until: 9_000 });
    store
        .submit_link(None, &link, nonce, 10_000)
        .expect("filed once");
    let spent = store.submit_link(None, &link, nonce, 10_000);
    assert!(
        matches!(&spent, Err(SubmitError::Conflict(m)) if m.contains("used already")),
        "{spent:?}"
    );

    for (at, action) in [(1, "brake on"), (2, "brake off")] {
        store
            .record_event(&AuditEntry {
                at,
                who: "carol".into(),
                action: action.into(),
                comment: None,
            })
            .unwrap();
    }
    let events = store.events(5).unwrap();
    assert_eq!(
        events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["brake off", "brake on"]
    );
    let reading = store.tally(10_000, Duration::from_secs(60)).unwrap();
    assert_eq!(
        reading.by_rule.iter().map(|(_, n, _)| n).sum::<u64>(),
        2,
        "{:?}",
        reading.by_rule
    );
}

#[test]
fn the_sqlite_store_passes_the_shared_checks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.relay(), None);
    assert!(!store.fleet());
    the_same_checks(&store);
    let no_relays = Query {
        relay: Some("relay-a".into()),
        limit: 50,
        ..Query::default()
    };
    assert!(ids(&store, &no_relays).is_empty());
}

/// One private server for every PostgreSQL check (each in its own database), so that
/// the file costs one `initdb`.
#[test]
fn the_postgres_store_serves_a_fleet() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let mut pg = Postgres::start_tls(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let state = tempfile::tempdir().unwrap();

    // The same checks as SQLite.
    let url = pg.create_database("shared_checks");
    let store = Store::open_postgres(&settings(&url, "relay-a"), state.path()).unwrap();
    assert_eq!(store.relay(), Some("relay-a"));
    assert_eq!(store.state_dir(), Some(state.path()));
    the_same_checks(&store);
    drop(store);
    let reopened = Store::open_postgres(&settings(&url, "relay-a"), state.path())
        .expect("the schema is there already");
    assert_eq!(reopened.list(&Filter::default()).unwrap().len(), 3);
    drop(reopened);

    two_relays_share_one_quarantine(&pg);
    a_late_hold_writes_nothing(&pg);
    nul_in_text_is_stored_as_a_replacement_character(&pg);
    a_database_not_in_utf8_is_refused(&pg, state.path());
    case_folds_ascii_only_as_in_sqlite(&pg, state.path());
    a_wrong_password_is_refused_without_showing_it(&pg, state.path());
    tls_is_verified_against_the_ca_file(&pg, certs.path(), state.path());
    a_server_that_stops_answering_is_given_up_by_the_deadline(&pg, state.path());
    a_relay_user_without_create_uses_the_owners_schema(&pg, state.path());
    an_unreachable_server_fails_each_call_and_the_store_reconnects(&mut pg, state.path());
}

/// Runs an `openssl` command in `dir`, failing the test with its message.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In `dir`: a CA (`ca.pem`), the server's certificate for 127.0.0.1 only, signed by
/// it (`server.pem`, `server.key`), and another CA (`other-ca.pem`) with a certificate
/// for 127.0.0.1 too (`other.pem`, `other.key`).
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subject) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN={ca}"),
        );
        let mut args = vec!["req", "-x509", "-days", "2", "-keyout", &key, "-out", &pem];
        args.extend(ec);
        args.extend(["-subj", &subject]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir, &args);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for (name, ca) in [("server", "ca"), ("other", "other-ca")] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut args = vec!["req", "-keyout", &key, "-out", &csr];
        args.extend(ec);
        args.extend(["-subj", "/CN=127.0.0.1"]);
        openssl(dir, &args);
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        let mut args = vec!["x509", "-req", "-in", &csr, "-days", "2", "-out", &pem];
        args.extend(["-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial"]);
        args.extend(["-extfile", "server.ext"]);
        openssl(dir, &args);
    }
}

/// TLS to a database that takes TLS connections only: with the CA file the store
/// connects over TLS; a certificate from another CA, a host name the certificate does
/// not name, and plain TCP are each refused with a clear error (no panic: a hold
/// would tempfail).
fn tls_is_verified_against_the_ca_file(pg: &Postgres, certs: &Path, state: &Path) {
    let tls = |ca: &str| {
        let ca_file = certs.join(ca);
        Some(PgTls {
            ca_certificates: CaCertificates::read(&ca_file).expect("a CA file"),
            ca_file,
        })
    };
    // The address is always 127.0.0.1; the host name is what the certificate must name.
    let url = |host: &str, mode: &str| {
        format!(
            "postgresql://fanout@{host}:{}/{PG_TLS_DATABASE}?hostaddr=127.0.0.1&sslmode={mode}",
            pg.port
        )
    };

    let mut good = settings(&url("127.0.0.1", "require"), "relay-a");
    good.tls = tls("ca.pem");
    let store = Store::open_postgres(&good, state).expect("TLS verified with the CA file");
    store
        .record_held(
            &held("DDDDDD4", 100, "alice@example.org", 80, "big"),
            "milter",
            None,
        )
        .expect("a hold over TLS");
    assert_eq!(store.list(&Filter::default()).unwrap().len(), 1);
    // The store's connection (it keeps one open) is a TLS one.
    let ssl: bool = pg
        .client("postgres")
        .query_one(
            "SELECT bool_and(s.ssl) AND count(*) = 1 FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
            &[&PG_TLS_DATABASE],
        )
        .unwrap()
        .get(0);
    assert!(
        ssl,
        "the store's one connection to {PG_TLS_DATABASE} uses TLS"
    );
    drop(store);

    let mut wrong_ca = good.clone();
    wrong_ca.tls = tls("other-ca.pem");
    let e = Store::open_postgres(&wrong_ca, state)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TLS") && e.contains("invalid peer certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );

    let mut wrong_name = settings(&url("localhost", "require"), "relay-a");
    wrong_name.tls = tls("ca.pem");
    let e = Store::open_postgres(&wrong_name, state)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid peer certificate") && e.contains("localhost"),
        "{e}"
    );

    let plain = settings(&url("127.0.0.1", "disable"), "relay-a");
    let e = Store::open_postgres(&plain, state).unwrap_err().to_string();
    assert!(
        e.contains("pg_hba.conf rejects connection") && e.contains("no encryption"),
        "{e}"
    );

    // The server's certificate changes to one the CA file does not sign while a relay
    // runs: its next connection is refused, and holds fail (the milter tempfails them).
    let store = Store::open_postgres(&good, state).expect("TLS verified with the CA file");
    pg.install_certificate(&certs.join("other.pem"), &certs.join("other.key"));
    wait_for("the server to present the other certificate", || {
        Store::open_postgres(&wrong_ca, state).ok()
    });
    let mut admin = pg.client("postgres");
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&PG_TLS_DATABASE],
        )
        .unwrap();
    wait_for("the relay's connection to end", || {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&PG_TLS_DATABASE],
            )
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    });
    let hold = || {
        store
            .record_held(
                &held("EEEEEE5", 200, "bob@example.org", 80, "big"),
                "milter",
                None,
            )
            .map(|_| ())
            .expect_err("no hold over TLS to a server the CA file does not vouch for")
            .to_string()
    };
    // The first call may find the ended connection; the next connects again.
    let first = hold();
    let e = hold();
    assert!(e.contains("invalid peer certificate"), "{first} / {e}");
    assert!(
        store.list(&Filter::default()).is_err(),
        "nor a read on the desk"
    );
}

fn two_relays_share_one_quarantine(pg: &Postgres) {
    let url = pg.create_database("fleet");
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open_postgres(&settings(&url, "relay-a"), dir.path()).unwrap();
    let b = Store::open_postgres(&settings(&url, "relay-b"), dir.path()).unwrap();
    a.record_held(
        &held("AAAAAA1", 100, "ann@example.org", 840_000, "drift"),
        "milter",
        None,
    )
    .unwrap();
    b.record_held(
        &held("BBBBBB2", 200, "bob@example.org", 40, "hidden"),
        "milter",
        None,
    )
    .unwrap();

    // Each desk shows the fleet, with the relay of each record, and filters by relay.
    let all = Query {
        limit: 50,
        ..Query::default()
    };
    for desk in [&a, &b] {
        let page = desk.page(&all).unwrap();
        let rows: Vec<(&str, Option<&str>)> = page
            .rows
            .iter()
            .map(|r| {
                (
                    r.record.message.queue_id.as_str(),
                    r.record.relay.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [("AAAAAA1", Some("relay-a")), ("BBBBBB2", Some("relay-b"))]
        );
    }
    let only_b = Query {
        relay: Some("relay-b".into()),
        ..all.clone()
    };
    assert_eq!(ids(&a, &only_b), ["BBBBBB2"]);
    // The counts above the list follow the relay filter too.
    let page = a.page(&only_b).unwrap();
    let held_count = |p: &fanout_milter::quarantine::Page| {
        p.by_state
            .iter()
            .find(|(s, _)| *s == State::Held)
            .map(|(_, n)| *n)
    };
    assert_eq!(held_count(&page), Some(1));
    assert_eq!(page.by_rule, [("hidden".to_owned(), 1)]);
    let page = a.page(&all).unwrap();
    assert_eq!(held_count(&page), Some(2));
    assert_eq!(page.by_rule.len(), 2);
    // The desk knows the store is a fleet's even when the page has no rows.
    assert!(a.fleet());
    // What a relay does on its own Postfix reads only its own records.
    assert!(matches!(
        b.get(&qid("AAAAAA1")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(b.list(&Filter::default()).unwrap().len(), 1);
    // The desk names another relay's record with its relay: a queue id alone is this
    // relay's record, never another relay's.
    assert!(matches!(
        b.record(&qid("AAAAAA1").into()),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        b.submit(None, &request("AAAAAA1", RequestAction::Release)),
        Err(SubmitError::NotFound(_))
    ));
    assert_eq!(
        b.record(&on("relay-a", "AAAAAA1"))
            .unwrap()
            .relay
            .as_deref(),
        Some("relay-a")
    );
    // The held list and "all matching" name each record with its relay.
    let everything = Query {
        limit: 50,
        ..Default::default()
    };
    assert!(
        b.matching(&everything, 50)
            .unwrap()
            .contains(&on("relay-a", "AAAAAA1"))
    );

    // A release asked for on relay B's desk for relay A's message: only A's worker
    // sees and claims it; while A is away it stays pending on every desk.
    let filed = b
        .submit(Some("relay-a"), &request("AAAAAA1", RequestAction::Release))
        .unwrap();
    assert!(
        b.open_requests().unwrap().is_empty(),
        "not relay B's to run"
    );
    assert!(!b.claim(filed.id, 510).unwrap(), "relay B cannot claim it");
    assert_eq!(
        a.requests(filed.held_id).unwrap()[0].state,
        RequestState::Pending
    );
    let open = a.open_requests().unwrap();
    assert_eq!(open.iter().map(|r| r.id).collect::<Vec<_>>(), [filed.id]);
    assert!(a.claim(filed.id, 520).unwrap());
    let record = a.get(&qid("AAAAAA1")).unwrap();
    a.set_state(
        record.id,
        State::Held,
        State::Released,
        &AuditEntry {
            at: 521,
            who: "carol".into(),
            action: "release".into(),
            comment: Some("request 1".into()),
        },
    )
    .unwrap();
    a.finish(
        filed.id,
        true,
        "postsuper: Released from hold: 1 message",
        522,
    )
    .unwrap();

    // The result and the audit trail are the same on both desks, and name the user
    // and both relays.
    let seen_on_b = b.record(&on("relay-a", "AAAAAA1")).unwrap();
    assert_eq!(seen_on_b.state, State::Released);
    let trail: Vec<String> = seen_on_b
        .audit
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e.who,
                e.action,
                e.comment.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(trail.len(), 3, "{trail:?}");
    assert!(trail[0].starts_with("milter held on relay-a"), "{trail:?}");
    assert!(
        trail[1]
            .starts_with("carol request release on relay-b: via desk from 192.0.2.7, for relay-a"),
        "{trail:?}"
    );
    assert!(
        trail[2].starts_with("carol release on relay-a"),
        "{trail:?}"
    );
    assert_eq!(
        b.requests(filed.held_id).unwrap()[0].state,
        RequestState::Done
    );
    // The metrics of each relay count its own records.
    let held_on = |s: &Store| {
        s.tally(1_000, Duration::from_secs(60))
            .unwrap()
            .by_rule
            .iter()
            .map(|(_, n, _)| n)
            .sum::<u64>()
    };
    assert_eq!((held_on(&a), held_on(&b)), (0, 1));
    one_queue_id_on_two_relays(&a, &b);
}

/// Queue ids repeat across relays: each relay's commands and desk default to its own
/// record, and another relay's is named with its relay.
fn one_queue_id_on_two_relays(a: &Store, b: &Store) {
    a.record_held(
        &held("SAME001", 300, "ann@example.org", 5_000, "drift"),
        "milter",
        None,
    )
    .unwrap();
    b.record_held(
        &held("SAME001", 310, "bob@example.org", 5_000, "drift"),
        "milter",
        None,
    )
    .unwrap();
    let same = qid("SAME001");
    let relay_of =
        |r: Result<fanout_milter::quarantine::Record, StoreError>| r.unwrap().relay.unwrap();
    // A's desk and commands: A's record, though B's is newer; each relay's record
    // by its address on any desk.
    assert_eq!(relay_of(a.record(&same.clone().into())), "relay-a");
    assert_eq!(relay_of(a.get(&same)), "relay-a");
    assert_eq!(relay_of(b.record(&same.clone().into())), "relay-b");
    for relay in ["relay-a", "relay-b"] {
        for desk in [a, b] {
            let r = desk.record(&on(relay, "SAME001")).unwrap();
            assert_eq!(r.relay.as_deref(), Some(relay));
            assert_eq!(r.address(), on(relay, "SAME001"));
        }
    }
    assert!(matches!(
        a.record(&on("relay-c", "SAME001")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(relay_of(a.get_on(Some("relay-b"), &same)), "relay-b");
    assert!(matches!(
        a.get_on(Some("relay-c"), &same),
        Err(StoreError::NotFound(_))
    ));
    // A request filed on A is for A's record unless B's is named.
    let own = a
        .submit(None, &request("SAME001", RequestAction::Release))
        .unwrap();
    assert_eq!(
        a.record_by_id(own.held_id).unwrap().relay.as_deref(),
        Some("relay-a")
    );
    let theirs = a
        .submit_on(Some("relay-b"), &request("SAME001", RequestAction::Release))
        .unwrap();
    assert_eq!(
        a.record_by_id(theirs.held_id).unwrap().relay.as_deref(),
        Some("relay-b")
    );
    assert!(
        !a.claim(theirs.id, 600).unwrap(),
        "B's record is B's worker's"
    );
    assert!(
        b.open_requests().unwrap().iter().any(|r| r.id == theirs.id),
        "relay B's worker sees it"
    );
}

/// The milter tempfails a message whose hold is not recorded in time: the store must
/// not commit the hold afterwards (a phantom hold, and a notice to its sender).
fn a_late_hold_writes_nothing(pg: &Postgres) {
    let url = pg.create_database("late");
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open_postgres(&settings(&url, "relay-a"), dir.path()).unwrap();
    let mut late = held("LATE001", 100, "ann@example.org", 5_000, "drift");
    late.notify_sender = true;

    // The deadline has passed: rolled back, not committed.
    let e = a
        .record_held_by(&late, "milter", None, Instant::now())
        .unwrap_err();
    assert!(matches!(e, StoreError::TooLate { .. }), "{e}");
    assert!(a.list(&Filter::default()).unwrap().is_empty());

    // Another session locks the table: the INSERT waits until the deadline's
    // statement_timeout ends it, and the store's connection is busy meanwhile, so a
    // second hold cannot even take it before its own deadline.
    let mut locker = pg.client("late");
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE held IN EXCLUSIVE MODE")
        .unwrap();
    let mut watcher = pg.client("late");
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_millis(1_500);
            a.record_held_by(&late, "milter", None, deadline)
        });
        // The first hold holds the connection while it waits on the table lock.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO held%'",
                    &[],
                )
                .unwrap()
                .get(0);
            if waiting == 1 {
                break;
            }
            assert!(
                Instant::now() < until,
                "the first hold never waited on the lock"
            );
            std::thread::yield_now();
        }
        let second = held("LATE002", 101, "bob@example.org", 5_000, "drift");
        let started = Instant::now();
        let e = a
            .record_held_by(
                &second,
                "milter",
                None,
                started + Duration::from_millis(200),
            )
            .unwrap_err();
        assert!(e.to_string().contains("waiting for the connection"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let e = first.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("statement timeout"), "{e}");
    });
    tx.rollback().unwrap();
    assert!(a.list(&Filter::default()).unwrap().is_empty());
    assert!(a.due_notices(10).unwrap().is_empty());
    // The store works on afterwards.
    a.record_held_by(
        &late,
        "milter",
        None,
        Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(a.list(&Filter::default()).unwrap().len(), 1);
}

/// PostgreSQL refuses NUL in text; mail may carry one (an encoded subject, a sender).
fn nul_in_text_is_stored_as_a_replacement_character(pg: &Postgres) {
    let url = pg.create_database("nul");
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open_postgres(&settings(&url, "relay-a"), dir.path()).unwrap();
    let mut m = held("NUL0001", 100, "ann\0x@example.org", 5_000, "drift");
    m.subject = Some("pay\0now".into());
    a.record_held(&m, "milter", Some("seen\0here")).unwrap();
    let r = a.get(&qid("NUL0001")).unwrap();
    assert_eq!(
        r.message.subject.as_deref(),
        Some("pay\0now"),
        "JSON escapes it"
    );
    assert_eq!(
        r.audit[0].comment.as_deref(),
        Some("on relay-a: seen\u{FFFD}here")
    );
    let row = pg
        .client("nul")
        .query_one("SELECT subject, sender FROM held", &[])
        .unwrap();
    let (subject, sender): (String, String) = (row.get(0), row.get(1));
    assert_eq!(subject, "pay\u{FFFD}now");
    assert_eq!(sender, "ann\u{FFFD}x@example.org");
    let found = Query {
        sender: Some("ann\0x".into()),
        limit: 50,
        ..Query::default()
    };
    assert_eq!(ids(&a, &found), ["NUL0001"]);
}

/// In a database whose locale folds `Ü`, search and sort still fold ASCII only, as
/// the SQLite store's `lower()` does.
fn case_folds_ascii_only_as_in_sqlite(pg: &Postgres, state: &std::path::Path) {
    pg.client("postgres")
        .batch_execute(
            "CREATE DATABASE folding ENCODING 'UTF8' LC_COLLATE 'C.utf8' LC_CTYPE 'C.utf8' \
             TEMPLATE template0",
        )
        .unwrap();
    let folds: String = pg
        .client("folding")
        .query_one("SELECT lower('Ü')", &[])
        .unwrap()
        .get(0);
    let url = format!("postgresql://fanout@127.0.0.1:{}/folding", pg.port);
    let a = Store::open_postgres(&settings(&url, "relay-a"), state).unwrap();
    for (id, sender) in [
        ("FOLD001", "Ünal@example.org"),
        ("FOLD002", "zed@example.org"),
        ("FOLD003", "Bob@example.org"),
    ] {
        a.record_held(&held(id, 100, sender, 5_000, "drift"), "milter", None)
            .unwrap();
    }
    let search = |s: &str| {
        ids(
            &a,
            &Query {
                sender: Some(s.into()),
                limit: 50,
                ..Query::default()
            },
        )
    };
    assert_eq!(search("ÜNAL"), ["FOLD001"]);
    assert!(search("ünal").is_empty(), "ASCII folding only");
    assert_eq!(search("BOB"), ["FOLD003"]);
    let by_sender = Query {
        sort: fanout_milter::quarantine::Sort::Sender,
        limit: 50,
        ..Query::default()
    };
    // Bytes: ASCII letters before `Ü`, as SQLite sorts.
    assert_eq!(ids(&a, &by_sender), ["FOLD003", "FOLD002", "FOLD001"]);
    assert_eq!(
        folds, "ü",
        "the database's own lower() folds Ü: the check means something"
    );
}

fn a_database_not_in_utf8_is_refused(pg: &Postgres, state: &std::path::Path) {
    pg.client("postgres")
        .batch_execute(
            "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' \
             TEMPLATE template0",
        )
        .unwrap();
    let url = format!("postgresql://fanout@127.0.0.1:{}/latin", pg.port);
    let e = Store::open_postgres(&settings(&url, "relay-a"), state)
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoding is LATIN1, not UTF8"), "{e}");
}

fn a_wrong_password_is_refused_without_showing_it(pg: &Postgres, state: &std::path::Path) {
    let mut wrong = settings(&pg.url(), "relay-a");
    wrong.password = Some("not-the-password-4711".into());
    let e = Store::open_postgres(&wrong, state).unwrap_err().to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password-4711"), "{e}");
    assert!(
        e.starts_with(&format!(
            "quarantine store postgresql://***@127.0.0.1:{}/",
            pg.port
        )),
        "the URL without its user and database: {e}"
    );
}

/// The schema made once by the database's owner: the relays' own user, which may not
/// create anything, opens the store and records holds (no DDL runs for it).
fn a_relay_user_without_create_uses_the_owners_schema(pg: &Postgres, state: &std::path::Path) {
    let url = pg.create_database("owned");
    drop(Store::open_postgres(&settings(&url, "relay-a"), state).expect("the owner makes it"));
    let mut admin = pg.client("owned");
    admin
        .batch_execute(&format!(
            "CREATE ROLE relay_user LOGIN PASSWORD '{PG_PASSWORD}';
             GRANT USAGE ON SCHEMA public TO relay_user;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO relay_user;
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO relay_user;"
        ))
        .unwrap();
    let relay_url = format!("postgresql://relay_user@127.0.0.1:{}/owned", pg.port);
    let mut as_relay = postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port)
        .user("relay_user")
        .password(PG_PASSWORD)
        .dbname("owned")
        .connect(postgres::NoTls)
        .unwrap();
    let refused = as_relay
        .batch_execute("CREATE TABLE relay_made (id BIGINT)")
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "the relay's user may not create: {refused}"
    );
    let store = Store::open_postgres(&settings(&relay_url, "relay-a"), state)
        .expect("no DDL for a schema made already");
    store
        .record_held(
            &held("OWNED01", 100, "ann@example.org", 5_000, "drift"),
            "milter",
            None,
        )
        .unwrap();
    assert_eq!(store.list(&Filter::default()).unwrap().len(), 1);
}

/// Wakes a stopped server even when the test fails.
struct Wake<'a>(&'a Postgres);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.signal_all(nix::sys::signal::Signal::SIGCONT);
    }
}

/// A server that keeps its connections open but never answers (stopped: its kernel
/// still acknowledges every packet) holds neither a hold nor the connection past the
/// hold's deadline; woken, it serves again, and the holds given up wrote nothing.
fn a_server_that_stops_answering_is_given_up_by_the_deadline(
    pg: &Postgres,
    state: &std::path::Path,
) {
    let url = pg.create_database("hung");
    let store = Store::open_postgres(&settings(&url, "relay-a"), state).unwrap();
    let hold = |id: &str| held(id, 100, "hal@example.org", 5000, "drift");
    store.record_held(&hold("HUNG001"), "milter", None).unwrap();
    pg.signal_all(nix::sys::signal::Signal::SIGSTOP);
    let wake = Wake(pg);
    let started = Instant::now();
    let deadline = started + Duration::from_millis(1500);
    // Two holds at once: one waits for the server, the other for the connection.
    let errors: Vec<StoreError> = std::thread::scope(|s| {
        let writers: Vec<_> = ["HUNG002", "HUNG003"]
            .into_iter()
            .map(|id| {
                let (store, m) = (&store, hold(id));
                s.spawn(move || store.record_held_by(&m, "milter", None, deadline))
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().unwrap().unwrap_err())
            .collect()
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "both holds given up at the deadline (1.5 s), not when the server wakes: {took:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, StoreError::NoAnswer { .. })),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|e| matches!(e, StoreError::NoAnswer { .. } | StoreError::TooLate { .. })),
        "{errors:?}"
    );
    drop(wake);
    store
        .record_held(&hold("HUNG004"), "milter", None)
        .expect("the store connects again once the server answers");
    let ids: Vec<String> = store
        .list(&Filter::default())
        .unwrap()
        .iter()
        .map(|r| r.message.queue_id.as_str().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["HUNG001", "HUNG004"],
        "the holds given up wrote nothing"
    );
}

fn an_unreachable_server_fails_each_call_and_the_store_reconnects(
    pg: &mut Postgres,
    state: &std::path::Path,
) {
    let store = Store::open_postgres(&settings(&pg.url(), "relay-a"), state).unwrap();
    store
        .record_held(
            &held("EEEEEE5", 100, "eve@example.org", 5000, "drift"),
            "milter",
            None,
        )
        .unwrap();
    let fresh = pg.create_database("lazy");
    pg.stop();
    // A relay starts while the server is down: its store opens, and each call fails
    // at once until the server is back; its schema is made at the first connection.
    let started = Instant::now();
    let late = Store::open_postgres(&settings(&fresh, "relay-b"), state)
        .expect("a relay starts while PostgreSQL is down");
    let e = late
        .record_held(
            &held("GGGGGG7", 110, "gil@example.org", 5000, "drift"),
            "milter",
            None,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::Postgres { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "opening and a hold wait at most about connect_timeout each: {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let e = store
        .record_held(
            &held("FFFFFF6", 110, "fay@example.org", 5000, "drift"),
            "milter",
            None,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::Postgres { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a hold waits at most about connect_timeout: {:?}",
        started.elapsed()
    );
    assert!(store.open_requests().is_err());
    pg.restart();
    store
        .record_held(
            &held("FFFFFF6", 120, "fay@example.org", 5000, "drift"),
            "milter",
            None,
        )
        .expect("the store connects again once the server is back");
    late.record_held(
        &held("GGGGGG7", 130, "gil@example.org", 5000, "drift"),
        "milter",
        None,
    )
    .expect("the store opened during the outage connects and makes its schema");
    assert_eq!(late.list(&Filter::default()).unwrap().len(), 1);
    let all = Query {
        limit: 50,
        ..Query::default()
    };
    assert_eq!(
        ids(&store, &all),
        ["EEEEEE5", "FFFFFF6"],
        "nothing recorded twice"
    );
}
