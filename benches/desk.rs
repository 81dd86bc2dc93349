// SPDX-License-Identifier: GPL-3.0-or-later
//! Review desk benchmark: the held list served by the daemon over real HTTP with 10,000
//! held records in the store (an incident's worth). Measures the time from request to
//! the last byte of the page, unfiltered and filtered, p50 and p99. Prints one JSON
//! object.
//!
//! Run with `cargo bench --bench desk` (scripts/bench does).

use fanout_milter::Builder;
use fanout_milter::config;
use fanout_milter::quarantine::{HeldMessage, Store};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const RECORDS: usize = 10_000;
const ROUNDS: usize = 200;
const PASSWORD: &str = "correct horse battery";

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
    {
        let store = Store::open(&state).expect("store");
        for i in 0..records {
            store
                .record_held(&held(i, now), "milter", None)
                .expect("record");
        }
    }
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

    let body = format!("user=rita&password={}", PASSWORD.replace(' ', "+"));
    let (_, answer) = http(
        addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();

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
    let out = serde_json::json!({"desk": {
        "records": records,
        "rounds": rounds,
        "fill_s": fill_s,
        "pages": results,
    }});
    println!("{out}");
}
