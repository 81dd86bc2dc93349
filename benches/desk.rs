// SPDX-License-Identifier: GPL-3.0-or-later
//! Review desk benchmark: the held list served by the daemon over real HTTP with 10,000
//! held records in the store (an incident's worth). Measures the time from request to
//! the last byte of the page, unfiltered and filtered, p50 and p99. Then what the desk
//! costs the milter: two daemon binaries with the same policy and the same 10,000 held
//! records, one serving the desk and one not, take the same milter load (indymilter-test's
//! client) in alternating rounds, and their CPU per message is compared; a third row
//! is the desk daemon while a browser on duty fetches the held list once a second.
//! Prints one JSON object.
//!
//! Run with `cargo bench --bench desk` (scripts/bench does); under `cargo test` it
//! runs a small smoke load.

#[path = "support/milter_load.rs"]
mod milter_load;

use fanout_milter::Builder;
use fanout_milter::config;
use fanout_milter::quarantine::{HeldMessage, QuarantineIndex, Query, Sort, State, Store};
use milter_load::{Daemon, Target, free_port, load, wait_ready};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RECORDS: usize = 10_000;
const ROUNDS: usize = 200;
const PASSWORD: &str = "correct horse battery";

/// Milter connections of the CPU rows.
const CPU_CONNECTIONS: usize = 10;
/// Messages per connection in one round of a CPU row.
const CPU_PER_CONNECTION: usize = 2_000;
/// Rounds of each CPU row, taken in turn (off, on, on with a browser, off, ...) so that
/// drift of the machine (the other jobs on its cores) falls on every row alike.
const CPU_ROUNDS: usize = 4;
/// How often the browser on duty fetches the held list.
const FETCH_EVERY: Duration = Duration::from_secs(1);

/// A held message like the milter records, `i` varying sender, audience and rule.
fn held(i: usize, now: u64) -> HeldMessage {
    let rule = ["limits.audience", "hidden", "limits.envelope", "drift"][i % 4];
    let json = serde_json::json!({
        "queue_id": format!("B{i:09X}"),
        "held_at": now - (i as u64 % 86_400),
        "sender": format!("user{}@corp.example", i % 500),
        "sasl_login": format!("user{}", i % 500),
        "client": "192.0.2.1",
        "recipients": [format!("list{}@corp.example", i % 50), "boss@corp.example"],
        "audience": 100 + (i * 37 % 900_000),
        "external": i % 40,
        "lists": [{"address": format!("list{}@corp.example", i % 50), "size": 100 + (i * 37 % 900_000), "external": i % 40}],
        "top_domains": [["corp.example", 100], ["partner.example", i % 40]],
        "visible": [format!("list{}@corp.example", i % 50)],
        "subject": format!("Re: quarterly update {i}"),
        "message_id": format!("<m{i}@corp.example>"),
        "thread_key": format!("mid:m{i}@corp.example"),
        "rules": [{"rule": rule, "action": "quarantine", "message": "too many recipients"}],
        "recorded_by": "milter",
        "headers": [["From", format!("user{}@corp.example", i % 500)], ["Subject", format!("Re: quarterly update {i}")]],
    });
    serde_json::from_value(json).expect("a held message")
}

fn http(addr: SocketAddr, request: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    (started.elapsed(), out)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Fills the store in `state` with `records` held messages.
fn fill_store(state: &Path, records: usize, now: u64) {
    let store = Store::open(state).expect("store");
    for i in 0..records {
        store
            .record_held(&held(i, now), "milter", None)
            .expect("record");
    }
}

/// Signs in as the reviewer at the desk on `addr`; the session cookie (`name=value`).
fn login(addr: SocketAddr) -> String {
    let body = format!("user=rita&password={}", PASSWORD.replace(' ', "+"));
    let (_, answer) = http(
        addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("a session cookie: {answer:.300}"))
        .to_owned()
}

/// The store's share of the list pages: `QuarantineIndex::page` in this process, the
/// unfiltered first page and the filtered one of the HTTP rows (50 rows each), p50 and
/// p99 of `rounds` calls.
fn store_times(state: &Path, rounds: usize) -> serde_json::Value {
    let store = Store::open(state).expect("store");
    let list = Query {
        state: Some(State::Held),
        limit: 50,
        ..Query::default()
    };
    let filtered = Query {
        sender: Some("user7@".into()),
        min_audience: Some(100_000),
        sort: Sort::Audience,
        descending: true,
        ..list.clone()
    };
    let rows: Vec<_> = [("list", list), ("filtered", filtered)]
        .into_iter()
        .map(|(name, q)| {
            let mut times: Vec<Duration> = (0..rounds)
                .map(|_| {
                    let started = Instant::now();
                    std::hint::black_box(store.page(&q).expect("a page"));
                    started.elapsed()
                })
                .collect();
            times.sort();
            serde_json::json!({
                "name": name,
                "p50_ms": percentile(&times, 0.5),
                "p99_ms": percentile(&times, 0.99),
            })
        })
        .collect();
    serde_json::json!(rows)
}

/// A browser on duty: fetches the held list every [`FETCH_EVERY`] (the first after
/// one wait, inside the measured load) until `stop` is dropped; the time of each fetch.
fn on_duty(addr: SocketAddr, cookie: &str, stop: &mpsc::Receiver<()>) -> Vec<Duration> {
    let request =
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
    let mut times = Vec::new();
    while stop.recv_timeout(FETCH_EVERY) == Err(mpsc::RecvTimeoutError::Timeout) {
        let (took, page) = http(addr, &request);
        assert!(
            page.starts_with("HTTP/1.1 200"),
            "the held list: {page:.300}"
        );
        times.push(took);
    }
    times
}

/// One row of the CPU comparison, summed over its rounds.
#[derive(Default)]
struct CpuRow {
    messages: usize,
    cpu_s: f64,
    seconds: f64,
    /// Daemon CPU microseconds per message of each round.
    per_round_us: Vec<f64>,
    /// The browser's fetches of the held list (the third row only).
    fetches: Vec<Duration>,
}

impl CpuRow {
    fn us_per_message(&self) -> f64 {
        self.cpu_s / self.messages.max(1) as f64 * 1e6
    }

    fn json(&self, name: &str) -> serde_json::Value {
        let mut row = serde_json::json!({
            "name": name,
            "messages": self.messages,
            "daemon_cpu_s": self.cpu_s,
            "us_per_message": self.us_per_message(),
            "rounds_us_per_message": self.per_round_us,
            "decisions_per_s": self.messages as f64 / self.seconds.max(0.001),
        });
        let mut fetches = self.fetches.clone();
        fetches.sort();
        if !fetches.is_empty() {
            row["list_fetches"] = fetches.len().into();
            row["list_fetch_p50_ms"] = percentile(&fetches, 0.5).into();
            row["list_fetch_max_ms"] = percentile(&fetches, 1.0).into();
        }
        row
    }
}

/// The daemon's milter CPU per message with the desk off, on, and on with a browser on
/// duty: two daemon binaries (same policy, same `records` held records; `users` is the
/// desk's users file), loaded in turn.
fn milter_cpu(users: &Path, records: usize, quick: bool, now: u64) -> serde_json::Value {
    let (connections, per_connection, rounds) = if quick {
        (2, 5, 1)
    } else {
        (CPU_CONNECTIONS, CPU_PER_CONNECTION, CPU_ROUNDS)
    };
    let base = tempfile::tempdir().expect("bench dir");
    let start = |name: &str, desk: bool| {
        let dir = base.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        fill_store(&dir.join("state"), records, now);
        let milter = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let desk_addr = desk.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let extra = match desk_addr {
            Some(a) => format!(
                "[review]\nlisten = \"inet:{a}\"\nusers_file = \"{}\"\n",
                users.display()
            ),
            None => String::new(),
        };
        let daemon = Daemon::start(&dir, &format!("inet:{milter}"), 1, &extra);
        let target = Target::Tcp(milter);
        wait_ready(&target);
        if let Some(a) = desk_addr {
            wait_ready(&Target::Tcp(a));
        }
        (target, daemon, desk_addr)
    };
    let (off, off_daemon, _) = start("desk-off", false);
    let (on, on_daemon, desk) = start("desk-on", true);
    let desk = desk.expect("the desk's address");
    let cookie = login(desk);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows: [CpuRow; 3] = Default::default();
    runtime.block_on(async {
        // Warm up both daemons (allocator, thread pools, the desk's first page).
        load(&off, &off_daemon, connections, 2, 1, false).await;
        load(&on, &on_daemon, connections, 2, 1, false).await;
        let (_, page) = http(
            desk,
            &format!(
                "GET / HTTP/1.1\r\nHost: {desk}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(
            page.starts_with("HTTP/1.1 200"),
            "the held list: {page:.300}"
        );
        for _ in 0..rounds {
            for (i, row) in rows.iter_mut().enumerate() {
                let (target, daemon) = if i == 0 {
                    (&off, &off_daemon)
                } else {
                    (&on, &on_daemon)
                };
                let browser = (i == 2).then(|| {
                    let (tell, stop) = mpsc::channel::<()>();
                    let cookie = cookie.clone();
                    (
                        tell,
                        std::thread::spawn(move || on_duty(desk, &cookie, &stop)),
                    )
                });
                let l = load(target, daemon, connections, per_connection, 1, false).await;
                if let Some((tell, fetcher)) = browser {
                    drop(tell);
                    row.fetches.extend(fetcher.join().expect("the browser"));
                }
                row.messages += l.messages;
                row.cpu_s += l.daemon_cpu_s;
                row.seconds += l.seconds;
                row.per_round_us
                    .push(l.daemon_cpu_s / l.messages.max(1) as f64 * 1e6);
            }
        }
    });
    drop((off_daemon, on_daemon));
    let [off, on, duty] = &rows;
    serde_json::json!({
        "records": records,
        "connections": connections,
        "messages_per_round": connections * per_connection,
        "rounds": rounds,
        "rows": [off.json("desk off"), on.json("desk on"), duty.json("desk on, held list fetched every second")],
        "desk_on_ratio": on.us_per_message() / off.us_per_message().max(f64::MIN_POSITIVE),
        "on_duty_ratio": duty.us_per_message() / off.us_per_message().max(f64::MIN_POSITIVE),
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::args().all(|a| a != "--bench");
    let (records, rounds) = if quick { (200, 5) } else { (RECORDS, ROUNDS) };
    let dir = tempfile::tempdir().expect("bench dir");
    let state = dir.path().join("state");
    let users = dir.path().join("review-users");
    let conf = dir.path().join("fanout-milter.toml");
    std::fs::write(
        &conf,
        format!(
            "[milter]\nlisten = \"inet:127.0.0.1:0\"\n[domains]\ninternal = [\"corp.example\"]\n\
             [quarantine]\nstate_dir = \"{}\"\n[postfix]\nrecipient_delimiter = \"+\"\n\
             myorigin = \"corp.example\"\n[review]\nlisten = \"inet:127.0.0.1:0\"\n\
             users_file = \"{}\"\n",
            state.display(),
            users.display()
        ),
    )
    .expect("config");
    let secret = dir.path().join("password");
    std::fs::write(&secret, format!("{PASSWORD}\n")).expect("password");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(&conf)
        .args([
            "review",
            "passwd",
            "rita",
            "--role",
            "reviewer",
            "--password-file",
        ])
        .arg(&secret)
        .output()
        .expect("review passwd");
    assert!(made.status.success(), "{made:?}");

    let now = fanout_milter::clock::epoch_secs(std::time::SystemTime::now());
    let fill = Instant::now();
    fill_store(&state, records, now);
    let fill_s = fill.elapsed().as_secs_f64();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = config::load(&conf).expect("configuration");
    let daemon = runtime
        .block_on(Builder::new(config).admin_socket(None).start())
        .expect("start");
    let addr = daemon.desk_addr().expect("the desk listens");
    let (_reloads, reload_rx) = tokio::sync::mpsc::channel(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = runtime.spawn(daemon.run(reload_rx, async move {
        let _ = stopped.await;
    }));

    let cookie = login(addr);

    let mut results = Vec::new();
    for (name, path) in [
        ("list", "/"),
        ("list_page_100", "/?page=100"),
        (
            "filtered",
            "/?sender=user7%40&min_audience=100000&sort=audience&desc=1",
        ),
        ("message", "/message/B000000007"),
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        let (_, first) = http(addr, &request);
        assert!(first.starts_with("HTTP/1.1 200"), "{name}: {first:.300}");
        let mut times: Vec<Duration> = (0..rounds).map(|_| http(addr, &request).0).collect();
        times.sort();
        results.push(serde_json::json!({
            "name": name,
            "path": path,
            "bytes": first.len(),
            "p50_ms": percentile(&times, 0.5),
            "p99_ms": percentile(&times, 0.99),
        }));
    }
    let _ = stop.send(());
    runtime
        .block_on(running)
        .expect("task")
        .expect("the daemon stops");
    drop(runtime);
    let store = store_times(&state, rounds);
    let milter = milter_cpu(&users, records, quick, now);
    let out = serde_json::json!({"desk": {
        "records": records,
        "rounds": rounds,
        "fill_s": fill_s,
        "pages": results,
        "store": store,
        "milter_cpu": milter,
    }});
    println!("{out}");
}
