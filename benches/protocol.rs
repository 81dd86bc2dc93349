// SPDX-License-Identifier: GPL-3.0-or-later
//! Milter protocol benchmark, without Postfix: the daemon binary is started on loopback
//! (TCP and a unix socket) and driven by indymilter-test's client with 50 concurrent
//! connections. Reports decisions per second, the latency of the end-of-message
//! decision (p50, p99) and of whole transactions, and the daemon's resident memory:
//! idle, after 100,000 messages, and after one 1,000,000-recipient envelope. Then the
//! cost of shared state: replies to a large audience (storm counting) from a sender
//! with rate limits, at 20 connections, with state in memory and in a private
//! redis-server on loopback (skipped when redis-server is not installed). Last, what
//! `[metrics] listen` costs the milter: two daemons, one without the endpoint and one
//! scraped every 100 ms during the load (Prometheus scrapes every 15 s or more), take the
//! same load in alternating rounds, and their CPU per message is compared.
//!
//! `cargo bench --bench protocol` (scripts/bench runs it) prints one JSON object;
//! under `cargo test` it runs a small smoke load.

#[path = "support/milter_load.rs"]
mod milter_load;

use milter_load::{Daemon, Load, Target, cpu_seconds, free_port, load, wait_ready};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 50;
/// Connections of the state rows.
const STATE_CONNECTIONS: usize = 20;
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// How often the metrics row scrapes `/metrics` during its load.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// Makes every message need state: each is a reply (its own thread) counted for storms,
/// and charged to two rate budgets that never run out.
const STATEFUL: &str = "[storm]\nmin_audience = 1\n\
     [rate]\nrecipients_per_hour = 1000000000\nrecipients_per_day = 1000000000\n";

/// A private redis-server on loopback, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one, or `None` when redis-server is not installed.
    fn start() -> Option<RedisServer> {
        if !Path::new(REDIS_SERVER).exists() {
            eprintln!("{REDIS_SERVER} is not installed: the Redis state row is skipped");
            return None;
        }
        let port = free_port();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", "/tmp", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer { child, port };
        wait_ready(&Target::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        Some(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `redis-cli` against the bench's server and returns what it printed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The microseconds Redis spent inside scripts (`EVAL`, `EVALSHA`; `scripts`) or inside
/// the other commands (`!scripts`), from `INFO commandstats`
/// (`cmdstat_NAME:calls=N,usec=U,...`). Commands a script calls are counted in both.
/// Redis's CPU per message minus the time inside is its network and event loop.
fn command_usec(info: &str, scripts: bool) -> f64 {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .filter(|(name, _)| *name != "info" && *name != "config")
        .filter(|(name, _)| name.starts_with("eval") == scripts)
        .filter_map(|(_, v)| {
            v.split("usec=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// Adds a load's JSON to `rows` and shows it on stderr.
fn push_row(
    rows: &mut Vec<String>,
    name: &str,
    transport: &str,
    threads: usize,
    connections: usize,
    rcpts: usize,
    l: &Load,
) {
    let row = format!(
        "{{\"name\": \"{name}\", \"transport\": \"{transport}\", \"threads\": {threads}, \"connections\": {connections}, \"rcpts\": {rcpts}, \
         \"messages\": {}, \"seconds\": {:.3}, \"decisions_per_s\": {:.0}, \"decision_p50_us\": {:.1}, \
         \"decision_p99_us\": {:.1}, \"transaction_p50_us\": {:.1}, \"transaction_p99_us\": {:.1}, \
         \"daemon_cpu_s\": {:.2}, \"decisions_per_daemon_cpu_s\": {:.0}}}",
        l.messages,
        l.seconds,
        l.messages as f64 / l.seconds,
        l.decision_p50_us,
        l.decision_p99_us,
        l.transaction_p50_us,
        l.transaction_p99_us,
        l.daemon_cpu_s,
        l.messages as f64 / l.daemon_cpu_s.max(0.001)
    );
    eprintln!("{row}");
    rows.push(row);
}

/// One scrape of `/metrics` at `addr`: its time to the last byte and its size; the
/// answer must be 200.
fn scrape_once(addr: SocketAddr) -> (Duration, usize) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(milter_load::DEADLINE))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("the scrape");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    (started.elapsed(), answer.len())
}

/// Scrapes `addr` every [`SCRAPE_EVERY`] until `stop` is dropped; the scrapes' times.
fn scraper(addr: SocketAddr, stop: mpsc::Receiver<()>) -> Vec<Duration> {
    let mut times = Vec::new();
    loop {
        times.push(scrape_once(addr).0);
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(SCRAPE_EVERY) {
            return times;
        }
    }
}

/// Daemon CPU per message of one side of the metrics comparison, summed over rounds.
#[derive(Default)]
struct CpuRow {
    messages: usize,
    cpu_s: f64,
    per_round_us: Vec<f64>,
}

impl CpuRow {
    fn add(&mut self, l: &Load) {
        self.messages += l.messages;
        self.cpu_s += l.daemon_cpu_s;
        self.per_round_us
            .push(l.daemon_cpu_s / l.messages.max(1) as f64 * 1e6);
    }

    fn us_per_message(&self) -> f64 {
        self.cpu_s / self.messages.max(1) as f64 * 1e6
    }

    fn json(&self, name: &str) -> String {
        let rounds: Vec<String> = self
            .per_round_us
            .iter()
            .map(|u| format!("{u:.1}"))
            .collect();
        format!(
            "{{\"name\": \"{name}\", \"messages\": {}, \"daemon_cpu_s\": {:.3}, \"us_per_message\": {:.2}, \"rounds_us_per_message\": [{}]}}",
            self.messages,
            self.cpu_s,
            self.us_per_message(),
            rounds.join(", ")
        )
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().collect();
    // `--state-only`: only the shared-state rows. `--before-bin PATH`: the state rows
    // also with another build of the daemon (the version before a change), in this run.
    let state_only = args.iter().any(|a| a == "--state-only");
    let before_bin = args
        .iter()
        .position(|a| a == "--before-bin")
        .map(|i| PathBuf::from(args.get(i + 1).expect("--before-bin needs a path")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::temp_dir().join(format!("fanout-bench-protocol-{}", std::process::id()));
    let this_bin = PathBuf::from(env!("CARGO_BIN_EXE_fanout-milter"));
    let start_bin = |bin: &Path, name: &str, threads: usize, tcp: bool, extra: &str| {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let (target, listen) = if tcp {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            (Target::Tcp(addr), format!("inet:{addr}"))
        } else {
            let socket = dir.join("milter.sock");
            let listen = format!("unix:{}", socket.display());
            (Target::Unix(socket), listen)
        };
        let daemon = Daemon::start_bin(bin, &dir, &listen, threads, extra);
        wait_ready(&target);
        (target, daemon)
    };
    let start = |name: &str, threads: usize, tcp: bool, extra: &str| {
        start_bin(&this_bin, name, threads, tcp, extra)
    };
    let per_state = if full { 1_000 } else { 4 };
    let redis = RedisServer::start();
    // Shared state: every message a reply counted for storms and charged to two rate
    // budgets, in memory and in Redis; with `--before-bin`, the earlier build first.
    let state_loads = |bin: PathBuf, label: &'static str| {
        let redis = redis.as_ref().map(|r| (r.port, r.child.id()));
        let start_bin = &start_bin;
        async move {
            let mut state_rows = Vec::new();
            let (mem, mem_daemon) =
                start_bin(&bin, &format!("state-memory{label}"), 1, true, STATEFUL);
            load(&mem, &mem_daemon, STATE_CONNECTIONS, 2, 1, true).await;
            let m = load(&mem, &mem_daemon, STATE_CONNECTIONS, per_state, 1, true).await;
            drop(mem_daemon);
            push_row(
                &mut state_rows,
                &format!("state in memory{label}"),
                "tcp",
                1,
                STATE_CONNECTIONS,
                1,
                &m,
            );
            let mut redis_cpu_us = 0.0;
            let mut redis_command_us = 0.0;
            let mut redis_script_us = 0.0;
            let mut ratio = 0.0;
            if let Some((port, pid)) = redis {
                let extra = format!(
                    "{STATEFUL}[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}/\"\nprefix = \"{prefix}\"\n",
                    prefix = if label.is_empty() {
                        "bench:"
                    } else {
                        "bench-before:"
                    }
                );
                let (rt, rd) = start_bin(&bin, &format!("state-redis{label}"), 1, true, &extra);
                load(&rt, &rd, STATE_CONNECTIONS, 2, 1, true).await;
                redis_cli(port, &["CONFIG", "RESETSTAT"]);
                let cpu_before = cpu_seconds(pid);
                let r = load(&rt, &rd, STATE_CONNECTIONS, per_state, 1, true).await;
                redis_cpu_us = (cpu_seconds(pid) - cpu_before) / r.messages as f64 * 1e6;
                let stats = redis_cli(port, &["INFO", "commandstats"]);
                redis_script_us = command_usec(&stats, true) / r.messages as f64;
                redis_command_us = command_usec(&stats, false) / r.messages as f64;
                let log = std::fs::read_to_string(rd.dir.join("daemon.log")).unwrap_or_default();
                assert!(
                    log.contains("redis answers") && !log.contains("shared state unreachable"),
                    "the Redis row must have used Redis throughout:\n{log}"
                );
                ratio = r.decision_p50_us / m.decision_p50_us.max(f64::MIN_POSITIVE);
                push_row(
                    &mut state_rows,
                    &format!("state in redis{label}"),
                    "tcp",
                    1,
                    STATE_CONNECTIONS,
                    1,
                    &r,
                );
            }
            format!(
                "{{\"loads\": [{}], \"redis_cpu_us_per_message\": {redis_cpu_us:.1}, \"redis_script_us_per_message\": {redis_script_us:.1}, \"redis_command_us_per_message\": {redis_command_us:.1}, \"redis_memory_p50_ratio\": {ratio:.2}}}",
                state_rows.join(", ")
            )
        }
    };
    if state_only {
        runtime.block_on(async {
            let before = match &before_bin {
                Some(bin) => state_loads(bin.clone(), " (before)").await,
                None => "null".to_owned(),
            };
            let after = state_loads(this_bin.clone(), "").await;
            println!(
                "{{\"protocol_state\": {{\"full\": {full}, \"connections\": {STATE_CONNECTIONS}, \"before\": {before}, \"state\": {after}}}}}"
            );
        });
        drop(redis);
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    // The default (one thread) on both transports, and two threads for comparison.
    let (tcp, tcp_daemon) = start("tcp", 1, true, "");
    let (unix, unix_daemon) = start("unix", 1, false, "");
    let (tcp2, tcp2_daemon) = start("tcp2", 2, true, "");
    let (unix2, unix2_daemon) = start("unix2", 2, false, "");
    let idle_kib = tcp_daemon.rss_kib("VmRSS:");

    let per_conn = if full { 2_000 } else { 4 };
    let mut rows = Vec::new();
    runtime.block_on(async {
        // Warm up the daemons (allocator, thread pools) before measuring.
        for (t, d) in [(&tcp, &tcp_daemon), (&unix, &unix_daemon), (&tcp2, &tcp2_daemon), (&unix2, &unix2_daemon)] {
            load(t, d, CONNECTIONS, 2, 1, false).await;
        }
        let l = load(&tcp, &tcp_daemon, CONNECTIONS, per_conn, 1, false).await;
        push_row(&mut rows, "1 recipient", "tcp", 1, CONNECTIONS, 1, &l);
        let after_kib = tcp_daemon.rss_kib("VmRSS:");
        let l = load(&unix, &unix_daemon, CONNECTIONS, per_conn, 1, false).await;
        push_row(&mut rows, "1 recipient", "unix", 1, CONNECTIONS, 1, &l);
        let l = load(&tcp2, &tcp2_daemon, CONNECTIONS, per_conn, 1, false).await;
        push_row(&mut rows, "1 recipient", "tcp", 2, CONNECTIONS, 1, &l);
        let l = load(&unix2, &unix2_daemon, CONNECTIONS, per_conn, 1, false).await;
        push_row(&mut rows, "1 recipient", "unix", 2, CONNECTIONS, 1, &l);
        // Decision latency of a message on its own, then of a 1,000-recipient message on
        // its own and under load.
        let l = load(&tcp, &tcp_daemon, 1, if full { 2_000 } else { 2 }, 1, false).await;
        push_row(&mut rows, "1 recipient", "tcp", 1, 1, 1, &l);
        let l = load(&tcp, &tcp_daemon, 1, if full { 300 } else { 2 }, 1_000, false).await;
        push_row(&mut rows, "1,000 recipients", "tcp", 1, 1, 1_000, &l);
        let big_conns = if full { CONNECTIONS } else { 2 };
        let l = load(&tcp, &tcp_daemon, big_conns, if full { 20 } else { 1 }, 1_000, false).await;
        push_row(&mut rows, "1,000 recipients", "tcp", 1, big_conns, 1_000, &l);

        // Memory for one huge envelope, at a tenth of the size first: the peaks of the
        // two show whether memory grows linearly with recipients.
        let tenth = if full { 100_000 } else { 200 };
        let before_tenth = tcp_daemon.rss_kib("VmHWM:");
        load(&tcp, &tcp_daemon, 1, 1, tenth, false).await;
        let peak_tenth = tcp_daemon.rss_kib("VmHWM:");
        let big = if full { 1_000_000 } else { 2_000 };
        let before_big = tcp_daemon.rss_kib("VmRSS:");
        let l = load(&tcp, &tcp_daemon, 1, 1, big, false).await;
        let after_big = tcp_daemon.rss_kib("VmRSS:");
        let peak = tcp_daemon.rss_kib("VmHWM:");
        let before_state = match &before_bin {
            Some(bin) => state_loads(bin.clone(), " (before)").await,
            None => "null".to_owned(),
        };
        let state_json = state_loads(this_bin.clone(), "").await;

        // Metrics: the same load, in alternating rounds, on a daemon without the
        // endpoint and on one scraped every SCRAPE_EVERY meanwhile.
        let (rounds, per_round) = if full { (5, 400) } else { (1, 4) };
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (moff, moff_daemon) = start("metrics-off", 1, true, "");
        let (mon, mon_daemon) = start(
            "metrics-on",
            1,
            true,
            &format!("[metrics]\nlisten = \"inet:{metrics_addr}\"\n"),
        );
        wait_ready(&Target::Tcp(metrics_addr));
        let scrape_bytes = scrape_once(metrics_addr).1;
        load(&moff, &moff_daemon, CONNECTIONS, 2, 1, false).await;
        load(&mon, &mon_daemon, CONNECTIONS, 2, 1, false).await;
        let (mut off_row, mut on_row) = (CpuRow::default(), CpuRow::default());
        let mut scrapes = Vec::new();
        for _ in 0..rounds {
            off_row.add(&load(&moff, &moff_daemon, CONNECTIONS, per_round, 1, false).await);
            let (tell, stop) = mpsc::channel::<()>();
            let fetcher = std::thread::spawn(move || scraper(metrics_addr, stop));
            on_row.add(&load(&mon, &mon_daemon, CONNECTIONS, per_round, 1, false).await);
            drop(tell);
            scrapes.extend(fetcher.join().expect("every scrape answered"));
        }
        drop((moff_daemon, mon_daemon));
        scrapes.sort();
        let metrics_json = format!(
            "{{\"connections\": {CONNECTIONS}, \"messages_per_round\": {}, \"rounds\": {rounds}, \
             \"scrape_every_ms\": {}, \"scrapes\": {}, \"scrape_p50_us\": {:.0}, \"scrape_max_us\": {:.0}, \
             \"scrape_bytes\": {scrape_bytes}, \"rows\": [{}, {}], \"on_off_ratio\": {:.3}}}",
            CONNECTIONS * per_round,
            SCRAPE_EVERY.as_millis(),
            scrapes.len(),
            milter_load::pct(&scrapes, 0.5),
            milter_load::pct(&scrapes, 1.0),
            off_row.json("metrics off"),
            on_row.json("metrics on, scraped every 100 ms"),
            on_row.us_per_message() / off_row.us_per_message().max(f64::MIN_POSITIVE)
        );
        println!(
            "{{\"protocol\": {{\"full\": {full}, \"metrics\": {metrics_json}, \"state\": {state_json}, \"state_before\": {before_state}, \"loads\": [{}], \"memory\": {{\"idle_kib\": {idle_kib}, \
             \"after_messages\": {}, \"after_messages_kib\": {after_kib}, \"big_envelope_rcpts\": {big}, \
             \"big_envelope_seconds\": {:.3}, \"before_big_kib\": {before_big}, \"after_big_kib\": {after_big}, \
             \"peak_kib\": {peak}, \"tenth_envelope_rcpts\": {tenth}, \"peak_before_tenth_kib\": {before_tenth}, \
             \"peak_after_tenth_kib\": {peak_tenth}}}}}}}",
            rows.join(", "),
            CONNECTIONS * (per_conn + 2),
            l.seconds
        );
    });
    drop((tcp_daemon, unix_daemon, tcp2_daemon, unix2_daemon));
    let _ = std::fs::remove_dir_all(&base);
}
