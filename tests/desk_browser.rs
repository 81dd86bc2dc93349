// SPDX-License-Identifier: GPL-3.0-or-later
//! The review desk in a real browser: the daemon binary serves `[review] listen` on a
//! free loopback port over a store seeded with held records, `review passwd` makes a
//! reviewer, a viewer and an admin, and `tests/browser/desk.mjs` drives Debian's chromium
//! headless with playwright-core (login, filters, a hostile subject shown as text, a
//! release, a second release refused, a forged cross-site form refused, a viewer who
//! cannot act, the admin pulling the emergency brake and releasing it). Then
//! `tests/browser/sender.mjs` opens signed sender links (signed here with the desk key
//! the test gives the daemon, by the link format of `src/link.rs`) and withdraws one
//! held message, asks for another's release and confirms a third, and a reviewer sees
//! the plea first on the held list. A second test runs the fleet's desk: a private
//! PostgreSQL (tests/common/postgres.rs) that two relays' holds are written to, seen on
//! relay B's desk by `tests/browser/fleet.mjs`. Screenshots land in
//! `target/desk-screenshots/`.
//!
//! Needs `/usr/bin/chromium` (or `FANOUT_CHROMIUM`), `node`, and `npm ci` run in
//! `tests/browser/`; `scripts/test` installs them. Without them the test is skipped with
//! its reason, unless `FANOUT_REQUIRE_BROWSER=1`, which makes it fail.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::postgres::{PG_PASSWORD, Postgres};
use common::{ChildGuard, Milter, free_port, listening, wait_for};
use fanout_milter::config::PgSettings;
use fanout_milter::quarantine::{
    Address, HeldMessage, QuarantineIndex, QueueId, RequestAction, RequestState, Store, Via,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_fanout-milter");

/// How long the browser script may run in all.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);

/// The seeded held messages (queue ids the script is told).
const BIG: &str = "4A1B2C3D4E";
const HOSTILE: &str = "5B2C3D4E5F";
const SMALL: &str = "6C3D4E5F60";
const STORM: &str = "7D4E5F6071";

/// The screenshots the script saves (full pages).
const SCREENSHOTS: [&str; 5] = [
    "list.png",
    "message.png",
    "list-after-release.png",
    "message-after-release.png",
    "brake.png",
];

/// The held messages the sender script acts on (seeded after desk.mjs ran).
const WITHDRAWN: &str = "8E5F607182";
const ASKED: &str = "9F60718293";
const CONFIRMED: &str = "A071829304";

/// The screenshots the sender script saves.
const SENDER_SCREENSHOTS: [&str; 7] = [
    "sender-withdraw.png",
    "sender-withdrawn.png",
    "sender-ask.png",
    "sender-asked.png",
    "sender-send.png",
    "sender-sent.png",
    "sender-list.png",
];

/// The screenshots the fleet script saves.
const FLEET_SCREENSHOTS: [&str; 4] = [
    "fleet-list.png",
    "fleet-filtered.png",
    "fleet-message.png",
    "fleet-same-id.png",
];

/// The desk key the test gives the daemon (`state_dir/desk.key`).
const DESK_KEY: [u8; 32] = [42; 32];

const HOSTILE_SUBJECT: &str = "Invoice <script>alert(1)</script> \u{202E}fdp.exe";

/// Where the browser test's tools are, or why it cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("FANOUT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!("{} is missing", chromium.display()));
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        return Err("node is missing".into());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Err(format!(
            "{}/node_modules lacks playwright-core (run npm ci there)",
            dir.display()
        ));
    }
    Ok((chromium, dir))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn rule(rule: &str, action: &str, message: &str) -> Value {
    json!({"rule": rule, "action": action, "message": message})
}

fn list(address: &str, size: u64, external: u64) -> Value {
    json!({"address": address, "size": size, "external": external})
}

/// A held message as the milter records it (built from its serialised form: the
/// list and rule types are the record's own).
#[allow(clippy::too_many_arguments)]
fn held(
    queue_id: &str,
    age: u64,
    sender: &str,
    sasl: Option<&str>,
    recipients: &[&str],
    audience: u64,
    external: u64,
    lists: Vec<Value>,
    subject: &str,
    rules: Vec<Value>,
) -> HeldMessage {
    let message_id = format!("<{queue_id}@example.org>");
    serde_json::from_value(json!({
        "queue_id": queue_id,
        "held_at": now() - age,
        "sender": sender,
        "sasl_login": sasl,
        "client": "192.0.2.10",
        "recipients": recipients,
        "audience": audience,
        "external": external,
        "lists": lists,
        "top_domains": if external > 0 {
            json!([["example.org", audience - external], ["partner.example", external]])
        } else {
            json!([["example.org", audience]])
        },
        "visible": recipients,
        "subject": subject,
        "message_id": message_id,
        "thread_key": format!("t-{queue_id}"),
        "rules": rules,
        "recorded_by": "milter",
        "headers": [
            ["From", sender],
            ["To", recipients.join(", ")],
            ["Subject", subject],
            ["Message-ID", message_id],
        ],
    }))
    .expect("a held message")
}

/// Four held messages: a huge list mail, a hostile one (markup and bidi in subject,
/// sender and list name), a small one, and a storm hold only an admin may act on.
fn seed(state: &Path) {
    let store = Store::open(state).expect("open the store");
    let records = [
        held(
            BIG,
            3 * 3600,
            "comms@example.org",
            Some("comms"),
            &["all-staff@example.org", "board@example.org"],
            840_000,
            12_000,
            vec![
                list("all-staff@example.org", 839_990, 12_000),
                list("board@example.org", 10, 0),
            ],
            "Quarterly update",
            vec![rule(
                "limits.audience",
                "quarantine",
                "840,000 recipients >= quarantine level 500",
            )],
        ),
        held(
            HOSTILE,
            40 * 60,
            "mallory<b>x</b>\u{202E}@example.org",
            None,
            &["<b>team</b>\u{202E}@example.org"],
            250,
            40,
            vec![list("<b>team</b>\u{202E}@example.org", 250, 40)],
            HOSTILE_SUBJECT,
            vec![rule(
                "hidden.envelope",
                "quarantine",
                "250 recipients, none of them visible",
            )],
        ),
        held(
            SMALL,
            10 * 60,
            "carol@example.org",
            Some("carol"),
            &["project-x@example.org"],
            30,
            0,
            vec![list("project-x@example.org", 30, 0)],
            "Minutes of Monday",
            vec![rule(
                "restricted",
                "quarantine",
                "project-x@example.org is restricted",
            )],
        ),
        held(
            STORM,
            5 * 60,
            "bot@example.org",
            None,
            &["support@example.org"],
            1_200,
            0,
            vec![list("support@example.org", 1_200, 0)],
            "Re: Re: Re: out of office",
            vec![rule("storm", "quarantine", "42 replies in 5 minutes")],
        ),
    ];
    for r in &records {
        store
            .record_held(r, "milter", Some("held by the seed"))
            .expect("record a held message");
    }
}

/// The three held messages of the sender script: one to withdraw, one to ask for, one
/// held for its sender's confirmation.
fn seed_sender(state: &Path) -> Vec<HeldMessage> {
    let store = Store::open(state).expect("open the store");
    let mut confirm = held(
        CONFIRMED,
        2 * 60,
        "erin@example.org",
        Some("erin"),
        &["nurses@example.org"],
        1_200,
        0,
        vec![list("nurses@example.org", 1_200, 0)],
        "Rota for December",
        vec![rule(
            "hidden",
            "confirm",
            "1,200 recipients, 1 of them visible",
        )],
    );
    confirm.confirm = true;
    confirm.notify_sender = true;
    confirm.confirm_key = Some("sasl:erin".into());
    let records = vec![
        held(
            WITHDRAWN,
            3 * 60,
            "carol@example.org",
            Some("carol"),
            &["project-x@example.org"],
            30,
            0,
            vec![list("project-x@example.org", 30, 0)],
            "Draft, do not send",
            vec![rule(
                "restricted",
                "quarantine",
                "project-x@example.org is restricted",
            )],
        ),
        held(
            ASKED,
            4 * 60,
            "dave@example.org",
            Some("dave"),
            &["wards@example.org"],
            500,
            0,
            vec![list("wards@example.org", 500, 0)],
            "Ward 3 moves today",
            vec![rule(
                "limits.audience",
                "quarantine",
                "500 recipients >= quarantine level 500",
            )],
        ),
        confirm,
    ];
    for r in &records {
        store
            .record_held(r, "milter", Some("held by the seed"))
            .expect("record a held message");
    }
    records
}

/// A sender link for `m`, as the notice to its sender carries it: the link format of
/// `src/link.rs` (base64url JSON payload, HMAC-SHA256 under the sender label), signed
/// here with [`DESK_KEY`].
fn sender_link(desk: &str, m: &HeldMessage, action: &str) -> String {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("randomness");
    let payload = json!({
        "q": m.queue_id.as_str(),
        "h": m.held_at,
        "a": action,
        "to": m.sender,
        "exp": now() + 3600,
        "n": nonce.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&DESK_KEY).expect("a key");
    mac.update(b"fanout-milter sender link v1\0");
    mac.update(payload.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{desk}/s/{payload}.{tag}")
}

fn passwd(conf: &Path, dir: &Path, user: &str, role: &str, password: &str) {
    let file = dir.join(format!("{user}.password"));
    std::fs::write(&file, format!("{password}\n")).expect("write the password");
    let out = Command::new(BIN)
        .arg("-c")
        .arg(conf)
        .args(["review", "passwd", user, "--role", role, "--password-file"])
        .arg(&file)
        .output()
        .expect("run review passwd");
    assert!(out.status.success(), "review passwd {user}: {out:?}");
    std::fs::remove_file(&file).expect("remove the password file");
}

/// Waits up to `limit` for `child` to exit; its status, or `None` while it runs.
fn exited(child: &mut ChildGuard, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        let c = child.0.as_mut()?;
        if let Some(status) = c.try_wait().expect("try_wait") {
            child.0 = None;
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `node {script}` with `env`; after [`SCRIPT_DEADLINE`] it gets SIGTERM (on
/// which playwright closes chromium), then SIGKILL. Its success and output.
fn run_script(dir: &Path, script: &str, log: &Path, env: &[(&str, String)]) -> (bool, String) {
    let out = std::fs::File::create(log).expect("script log");
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = ChildGuard(Some(cmd.spawn().expect("start node")));
    let status = exited(&mut child, SCRIPT_DEADLINE).or_else(|| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        exited(&mut child, Duration::from_secs(10));
        None
    });
    drop(child);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => (
            false,
            format!("{text}\n(stopped after {SCRIPT_DEADLINE:?})"),
        ),
    }
}

/// The browser's tools, or `None` (the test is skipped with its reason) when they are
/// missing, unless `FANOUT_REQUIRE_BROWSER=1`, which makes it fail.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    match browser() {
        Ok(found) => Some(found),
        Err(why) if std::env::var("FANOUT_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("the browser test cannot run: {why}; scripts/test installs it")
        }
        Err(why) => {
            eprintln!("skipped: the browser test cannot run: {why} (scripts/test installs it)");
            None
        }
    }
}

/// Starts the daemon with its desk on a free loopback port, `[quarantine]` as
/// `quarantine` says, the reviewer rita and `others` (name, role, password) as its
/// users; returns it, listening, and the desk's port.
fn desk_daemon(root: &Path, quarantine: &str, others: &[(&str, &str, &str)]) -> (Milter, u16) {
    let port = free_port();
    let body = format!(
        "[domains]\ninternal = [\"example.org\"]\n\
         [quarantine]\n{quarantine}\
         [postfix]\nrecipient_delimiter = \"+\"\nmyorigin = \"example.org\"\n\
         [review]\nlisten = \"inet:127.0.0.1:{port}\"\nusers_file = \"{}\"\n",
        root.join("review-users").display()
    );
    let conf = root.join("fanout-milter.toml");
    let milter_listen = format!("inet:127.0.0.1:{}", free_port());
    std::fs::write(&conf, common::with_listen(&milter_listen, &body))
        .expect("write the configuration");
    for (user, role, password) in [("rita", "reviewer", "rita-reviews-at-3am")]
        .iter()
        .chain(others)
    {
        passwd(&conf, root, user, role, password);
    }
    let milter = Milter::start_file(root, &milter_listen, conf);
    wait_for("the desk to listen", || listening(port).then_some(()));
    (milter, port)
}

/// Runs browser script `script` in `dir` (see [`run_script`]) against `milter`'s desk,
/// fails with the script's output and the daemon's log unless it passed, and checks
/// that it saved each of `shots.1` in `shots.0`, larger than `shots.2` bytes.
fn browse(
    milter: &Milter,
    (dir, script): (&Path, &str),
    log: &Path,
    env: &[(&str, String)],
    shots: (&Path, &[&str], u64),
) {
    let (ok, output) = run_script(dir, script, log, env);
    assert!(
        ok,
        "the browser script {script} failed:\n{output}\ndaemon log:\n{}",
        milter.log()
    );
    eprintln!("{output}");
    let (shots, names, min) = shots;
    for shot in names {
        let len = std::fs::metadata(shots.join(shot))
            .unwrap_or_else(|e| panic!("screenshot {shot}: {e}"))
            .len();
        assert!(len > min, "{shot} is only {len} bytes");
    }
}

#[test]
fn the_desk_in_headless_chromium() {
    let Some((chromium, script_dir)) = browser_or_skip() else {
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state");
    seed(&state);
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(state.join("desk.key"))
        .expect("create the desk key");
    std::io::Write::write_all(&mut key, &DESK_KEY).expect("write the desk key");
    drop(key);

    let (mut milter, port) = desk_daemon(
        root.path(),
        &format!("state_dir = \"{}\"\n", state.display()),
        &[
            ("victor", "viewer", "victor-only-looks"),
            ("alice", "admin", "alice-pulls-the-brake"),
        ],
    );
    let desk = format!("http://127.0.0.1:{port}");

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/desk-screenshots");
    for shot in SCREENSHOTS
        .iter()
        .chain(&SENDER_SCREENSHOTS)
        .chain(&["failure.png", "sender-failure.png"])
    {
        let _ = std::fs::remove_file(shots.join(shot));
    }
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let fixture = format!(
        "{{\"big\":\"{BIG}\",\"hostile\":\"{HOSTILE}\",\"small\":\"{SMALL}\",\"storm\":\"{STORM}\"}}"
    );
    browse(
        &milter,
        (&script_dir, "desk.mjs"),
        &root.path().join("browser.log"),
        &[
            ("DESK_URL", desk.clone()),
            ("DESK_REVIEWER", "rita".into()),
            ("DESK_REVIEWER_PASSWORD", "rita-reviews-at-3am".into()),
            ("DESK_VIEWER", "victor".into()),
            ("DESK_VIEWER_PASSWORD", "victor-only-looks".into()),
            ("DESK_ADMIN", "alice".into()),
            ("DESK_ADMIN_PASSWORD", "alice-pulls-the-brake".into()),
            ("DESK_FIXTURE", fixture),
            ("DESK_SCREENSHOTS", shots.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
        ],
        (&shots, &SCREENSHOTS, 10_000),
    );

    // What the browser did, as the store saw it: one release by the reviewer, pending
    // (no worker runs here); the forged form and the viewer changed nothing.
    let store = Store::open(&state).expect("reopen the store");
    let requests = |id: &str| {
        let record = store
            .record(&QueueId::parse(id).unwrap().into())
            .expect("a record");
        store.requests(record.id).expect("its requests")
    };
    let filed = requests(HOSTILE);
    assert_eq!(filed.len(), 1, "{filed:?}");
    assert_eq!(filed[0].who, "rita");
    assert_eq!(filed[0].action, RequestAction::Release);
    assert_eq!(filed[0].state, RequestState::Pending);
    assert_eq!(filed[0].remote.as_deref(), Some("127.0.0.1"));
    assert!(
        filed[0].comment.contains("checked with the sender"),
        "{filed:?}"
    );
    for id in [BIG, SMALL, STORM] {
        assert!(requests(id).is_empty(), "{id}: {:?}", requests(id));
    }
    // The brake the admin pulled and released, in the store's events, newest first.
    let events = store.events(10).expect("the store's events");
    let brake: Vec<_> = events
        .iter()
        .filter(|e| e.action.starts_with("brake"))
        .collect();
    assert_eq!(brake.len(), 2, "{events:?}");
    assert_eq!(brake[0].action, "brake off");
    assert_eq!(brake[1].action, "brake on");
    let comment = |i: usize| brake[i].comment.clone().unwrap_or_default();
    assert!(brake.iter().all(|e| e.who == "alice"), "{brake:?}");
    assert!(
        comment(1).contains("audiences of 1000+ for 4h")
            && comment(1).contains("incident 4711: list storm (via desk from 127.0.0.1)"),
        "{brake:?}"
    );
    assert!(comment(0).contains("storm over, list fixed"), "{brake:?}");

    // The sender's pages: three more holds, a signed link for each, no login.
    let sent = seed_sender(&state);
    let links = json!({
        "withdraw": sender_link(&desk, &sent[0], "withdraw"),
        "ask": sender_link(&desk, &sent[1], "ask"),
        "send": sender_link(&desk, &sent[2], "send"),
        "asked": ASKED,
        "audience": "1,200",
    });
    browse(
        &milter,
        (&script_dir, "sender.mjs"),
        &root.path().join("sender.log"),
        &[
            ("DESK_URL", desk.clone()),
            ("DESK_REVIEWER", "rita".into()),
            ("DESK_REVIEWER_PASSWORD", "rita-reviews-at-3am".into()),
            ("SENDER_LINKS", links.to_string()),
            ("DESK_SCREENSHOTS", shots.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
        ],
        (&shots, &SENDER_SCREENSHOTS, 2_000),
    );
    let withdrawn = requests(WITHDRAWN);
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    assert_eq!(
        withdrawn[0].action,
        RequestAction::Discard {
            notify_sender: false
        }
    );
    assert_eq!(withdrawn[0].via, Via::Sender);
    assert_eq!(withdrawn[0].who, "carol@example.org");
    assert_eq!(withdrawn[0].comment, "withdrawn by the sender");
    assert_eq!(withdrawn[0].state, RequestState::Pending);
    assert!(requests(ASKED).is_empty(), "a plea files no request");
    let asked = store
        .record(&QueueId::parse(ASKED).unwrap().into())
        .expect("the asked record");
    let plea = store.plea(asked.id).expect("the store").expect("the plea");
    assert_eq!(
        plea.words,
        "The night shift must know the ward moves <today>.\r\nPlease send it."
    );
    let confirmed = requests(CONFIRMED);
    assert_eq!(confirmed.len(), 1, "{confirmed:?}");
    assert_eq!(confirmed[0].action, RequestAction::Release);
    assert_eq!(confirmed[0].via, Via::Sender);
    assert_eq!(
        confirmed[0].comment,
        "the sender confirmed: send to all 1,200"
    );
    assert_eq!(
        store
            .confirmed_lists("sasl:erin", now())
            .expect("the store")
            .into_iter()
            .map(|c| c.address)
            .collect::<Vec<_>>(),
        vec!["nurses@example.org".to_owned()]
    );

    // A forged sender link: refused, and logged with the client's address, never the
    // link.
    let withdraw = links["withdraw"].as_str().expect("the withdraw link");
    let (_, token) = withdraw.split_once("/s/").expect("a sender link");
    let (payload, _) = token.split_once('.').expect("payload.mac");
    let forged = format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    std::io::Write::write_all(
        &mut conn,
        format!("GET /s/{forged} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .expect("send");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("nothing was done"), "{answer}");
    let line = wait_for("the refusal in the daemon's log", || {
        milter
            .log()
            .lines()
            .find(|l| l.contains("a sender link refused"))
            .map(str::to_owned)
    });
    assert!(line.contains("127.0.0.1"), "{line}");
    assert!(line.contains("403"), "{line}");
    assert!(!milter.log().contains(payload), "the link is never logged");

    assert!(milter.stop().success(), "{}", milter.log());
}

/// The fleet's desk: one PostgreSQL quarantine written by two relays, seen in the
/// browser on relay B's desk (the daemon runs as relay B): both holds listed with their
/// relay, the relay filter, and a release of relay A's message asked on relay B, which
/// stays pending for relay A's worker (none runs here).
#[test]
fn the_fleet_desk_in_headless_chromium() {
    let Some((chromium, script_dir)) = browser_or_skip() else {
        return;
    };
    let pg = Postgres::start();
    let root = tempfile::tempdir().expect("tempdir");
    let (a_id, b_id) = ("B1A2C3D4E5", "C2B3D4E5F6");
    // Relay B also holds a message with relay A's queue id (Postfix reuses them).
    for (relay, id, subject) in [
        ("relay-a", a_id, "Quarterly update"),
        ("relay-b", b_id, "Minutes of Monday"),
        ("relay-b", a_id, "Same id on relay B"),
    ] {
        let dir = root.path().join(relay);
        std::fs::create_dir_all(&dir).expect("state dir");
        let settings = PgSettings {
            url: pg.url(),
            password: Some(PG_PASSWORD.into()),
            relay: relay.into(),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        };
        let store = Store::open_postgres(&settings, &dir).expect("the fleet's store");
        let record = held(
            id,
            30 * 60,
            "comms@example.org",
            Some("comms"),
            &["all-staff@example.org"],
            840_000,
            0,
            vec![list("all-staff@example.org", 840_000, 0)],
            subject,
            vec![rule(
                "limits.audience",
                "quarantine",
                "840,000 recipients >= quarantine level 500",
            )],
        );
        store
            .record_held(&record, "milter", Some("held by the seed"))
            .expect("record a held message");
    }

    let state = root.path().join("relay-b");
    let secret = root.path().join("pg.secret");
    std::fs::write(&secret, format!("{PG_PASSWORD}\n")).expect("password file");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let (mut milter, port) = desk_daemon(
        root.path(),
        &format!(
            "state_dir = \"{}\"\nstore = \"postgres\"\nurl = \"{}\"\n\
             password_file = \"{}\"\nrelay = \"relay-b\"\n",
            state.display(),
            pg.url(),
            secret.display()
        ),
        &[],
    );

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/desk-screenshots");
    for shot in FLEET_SCREENSHOTS.iter().chain(&["fleet-failure.png"]) {
        let _ = std::fs::remove_file(shots.join(shot));
    }
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let fixture = json!({
        "a": {"id": a_id, "relay": "relay-a", "subject": "Quarterly update"},
        "b": {"id": b_id, "relay": "relay-b", "subject": "Minutes of Monday"},
        "same": {"id": a_id, "relay": "relay-b", "subject": "Same id on relay B"},
    });
    browse(
        &milter,
        (&script_dir, "fleet.mjs"),
        &root.path().join("fleet.log"),
        &[
            ("DESK_URL", format!("http://127.0.0.1:{port}")),
            ("DESK_REVIEWER", "rita".into()),
            ("DESK_REVIEWER_PASSWORD", "rita-reviews-at-3am".into()),
            ("FLEET_FIXTURE", fixture.to_string()),
            ("DESK_SCREENSHOTS", shots.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
        ],
        (&shots, &FLEET_SCREENSHOTS, 10_000),
    );
    assert!(milter.stop().success(), "{}", milter.log());

    // As the fleet's store saw it: one pending release of relay A's message, by the
    // reviewer; nothing for relay B's, the one with the same queue id included.
    let observer = PgSettings {
        url: pg.url(),
        password: Some(PG_PASSWORD.into()),
        relay: "observer".into(),
        connect_timeout: Duration::from_secs(5),
        tls: None,
    };
    let store = Store::open_postgres(&observer, root.path()).expect("the fleet's store");
    let requests = |relay: &str, id: &str| {
        let record = store
            .record(&Address::on(Some(relay), QueueId::parse(id).unwrap()))
            .expect("a record");
        assert_eq!(record.relay.as_deref(), Some(relay));
        store.requests(record.id).expect("its requests")
    };
    let filed = requests("relay-a", a_id);
    assert_eq!(filed.len(), 1, "{filed:?}");
    assert_eq!(filed[0].who, "rita");
    assert_eq!(filed[0].action, RequestAction::Release);
    assert_eq!(filed[0].state, RequestState::Pending);
    assert!(requests("relay-b", b_id).is_empty());
    assert!(requests("relay-b", a_id).is_empty());
}
