// SPDX-License-Identifier: GPL-3.0-or-later
//! Milter protocol benchmark, without Postfix: the daemon binary is started on loopback
//! (TCP and a unix socket) and driven by indymilter-test's client with 50 concurrent
//! connections. Reports decisions per second, the latency of the end-of-message
//! decision (p50, p99) and of whole transactions, and the daemon's resident memory:
//! idle, after 100,000 messages, and after one 1,000,000-recipient envelope. Then the
//! cost of shared state: replies to a large audience (storm counting) from a sender
//! with rate limits, at 20 connections, with state in memory and in a private
//! redis-server on loopback (skipped when redis-server is not installed).
//!
//! `cargo bench --bench protocol` (scripts/bench runs it) prints one JSON object;
//! under `cargo test` it runs a small smoke load.

#[path = "support/proc_status.rs"]
mod proc_status;

use indymilter_test::{MacroStage, Status, TestConnection};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 50;
/// Connections of the state rows.
const STATE_CONNECTIONS: usize = 20;
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Makes every message need state: each is a reply (its own thread) counted for storms,
/// and charged to two rate budgets that never run out.
const STATEFUL: &str = "[storm]\nmin_audience = 1\n\
     [rate]\nrecipients_per_hour = 1000000000\nrecipients_per_day = 1000000000\n";
const DEADLINE: Duration = Duration::from_secs(120);

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts the daemon; `extra` is appended to its configuration.
    fn start(dir: &Path, listen: &str, threads: usize, extra: &str) -> Daemon {
        let config = dir.join("fanout-milter.toml");
        std::fs::write(
            &config,
            format!(
                "[milter]\nlisten = \"{listen}\"\nmax_connections = 200\nthreads = {threads}\n\
                 [logging]\nlevel = \"info\"\n\
                 [domains]\ninternal = [\"corp.example\"]\n\
                 [limits.envelope]\ntag = 0\nquarantine = 0\nreject = 0\n\
                 [limits.external]\ntag = 0\nquarantine = 0\nreject = 0\n\
                 [limits.audience]\ntag = 0\nquarantine = 0\nreject = 0\n\
                 [hidden]\nmin_audience = 0\n\
                 [breaker]\nmax_per_minute = 0\n\
                 [quarantine]\nstate_dir = \"{}\"\n{extra}",
                dir.join("state").display()
            ),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            // One log line per message, as deployed; kept in the scratch directory.
            .stderr(std::fs::File::create(dir.join("daemon.log")).expect("daemon log"))
            .spawn()
            .expect("start fanout-milter");
        Daemon {
            child,
            dir: dir.to_owned(),
        }
    }

    /// CPU seconds (user + system) the daemon has used so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    fn rss_kib(&self, field: &str) -> u64 {
        proc_status::status_kib(&self.child.id().to_string(), field)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    fn ready(&self) -> bool {
        match self {
            Target::Tcp(a) => TcpStream::connect(a).is_ok(),
            Target::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
        }
    }

    async fn open(&self) -> TestConnection {
        let b = TestConnection::configure()
            .read_timeout(DEADLINE)
            .write_timeout(DEADLINE);
        let mut conn = match self {
            Target::Tcp(a) => b.open_tcp(*a).await,
            Target::Unix(p) => b.open_unix(p).await,
        }
        .expect("open a milter connection");
        let status = conn
            .connect("client.corp.example", ([127, 0, 0, 1], 40000))
            .await
            .expect("connect");
        assert_eq!(status, Status::Noreply, "CONNECT's reply is waived");
        conn
    }
}

/// Sets TCP_NODELAY on every TCP socket of this process. indymilter-test writes the EOM
/// macros and the EOM command as two small writes and offers no way to set the option,
/// so without this the load generator itself would stall ~40 ms per message on Nagle
/// and delayed ACKs (Postfix sends them in one write, and never stalls there).
fn nodelay_everywhere() {
    use std::os::fd::BorrowedFd;
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for fd in fds
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        // SAFETY: the descriptor is open (listed just now) and only borrowed for one call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::TcpNoDelay, &true);
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_ready(target: &Target) {
    let started = Instant::now();
    while !target.ready() {
        assert!(
            started.elapsed() < DEADLINE,
            "the daemon did not start listening"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One message (a reply in a thread of its own when `reply`); returns (whole
/// transaction, end-of-message decision) durations.
async fn one_message(
    conn: &mut TestConnection,
    rcpts: &[String],
    n: u64,
    reply: bool,
) -> (Duration, Duration) {
    let started = Instant::now();
    assert_eq!(
        conn.mail(["<ann@corp.example>"]).await.expect("mail"),
        Status::Noreply
    );
    for r in rcpts {
        assert_eq!(
            conn.rcpt([r.as_str()]).await.expect("rcpt"),
            Status::Noreply
        );
    }
    assert_eq!(conn.data().await.expect("data"), Status::Continue);
    let parent = format!("<thread-{n}@corp.example>");
    let mut headers = vec![
        ("From", "Ann <ann@corp.example>"),
        ("To", "team@corp.example"),
        ("Subject", "Benchmark"),
        ("Message-ID", "<bench@corp.example>"),
    ];
    if reply {
        headers.push(("In-Reply-To", parent.as_str()));
    }
    for (name, value) in headers {
        assert_eq!(
            conn.header(name, value).await.expect("header"),
            Status::Noreply
        );
    }
    let id = format!("B{n:011X}");
    conn.macros(MacroStage::Eom, [("i", id.as_str())])
        .await
        .expect("macros");
    assert_eq!(conn.eoh().await.expect("eoh"), Status::Noreply);
    let decide = Instant::now();
    let (_, status) = conn.eom().await.expect("eom");
    let decided = decide.elapsed();
    assert_eq!(status, Status::Continue, "accepted");
    (started.elapsed(), decided)
}

struct Load {
    messages: usize,
    daemon_cpu_s: f64,
    seconds: f64,
    decision_p50_us: f64,
    decision_p99_us: f64,
    transaction_p50_us: f64,
    transaction_p99_us: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn load(
    target: &Target,
    daemon: &Daemon,
    connections: usize,
    per_connection: usize,
    rcpts_per_message: usize,
    reply: bool,
) -> Load {
    let rcpts: Vec<String> = (0..rcpts_per_message)
        .map(|i| format!("<user{i}@corp.example>"))
        .collect();
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(target.open().await);
    }
    nodelay_everywhere();
    let cpu_before = daemon.cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let rcpts = rcpts.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_connection);
            for m in 0..per_connection {
                let n = (c * per_connection + m) as u64;
                times.push(one_message(&mut conn, &rcpts, n, reply).await);
            }
            conn.close().await.expect("close");
            times
        }));
    }
    let mut transactions = Vec::new();
    let mut decisions = Vec::new();
    for t in tasks {
        for (whole, decision) in t.await.expect("load task") {
            transactions.push(whole);
            decisions.push(decision);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let daemon_cpu_s = daemon.cpu_seconds() - cpu_before;
    transactions.sort();
    decisions.sort();
    Load {
        messages: decisions.len(),
        daemon_cpu_s,
        seconds,
        decision_p50_us: pct(&decisions, 0.5),
        decision_p99_us: pct(&decisions, 0.99),
        transaction_p50_us: pct(&transactions, 0.5),
        transaction_p99_us: pct(&transactions, 0.99),
    }
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::temp_dir().join(format!("fanout-bench-protocol-{}", std::process::id()));
    let start = |name: &str, threads: usize, tcp: bool, extra: &str| {
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
        let daemon = Daemon::start(&dir, &listen, threads, extra);
        wait_ready(&target);
        (target, daemon)
    };
    // The default (one thread) on both transports, and two threads for comparison.
    let (tcp, tcp_daemon) = start("tcp", 1, true, "");
    let (unix, unix_daemon) = start("unix", 1, false, "");
    let (tcp2, tcp2_daemon) = start("tcp2", 2, true, "");
    let (unix2, unix2_daemon) = start("unix2", 2, false, "");
    let idle_kib = tcp_daemon.rss_kib("VmRSS:");
    let redis = RedisServer::start();

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
        // Shared state: every message a reply counted for storms and charged to two
        // rate budgets (four state operations), in memory and in Redis.
        let per_state = if full { 1_000 } else { 4 };
        let mut state_rows = Vec::new();
        let (mem, mem_daemon) = start("state-memory", 1, true, STATEFUL);
        load(&mem, &mem_daemon, STATE_CONNECTIONS, 2, 1, true).await;
        let m = load(&mem, &mem_daemon, STATE_CONNECTIONS, per_state, 1, true).await;
        push_row(&mut state_rows, "state in memory", "tcp", 1, STATE_CONNECTIONS, 1, &m);
        let mut redis_cpu_us = 0.0;
        if let Some(redis) = &redis {
            let extra = format!(
                "{STATEFUL}[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}/\"\n",
                redis.port
            );
            let (rt, rd) = start("state-redis", 1, true, &extra);
            load(&rt, &rd, STATE_CONNECTIONS, 2, 1, true).await;
            let cpu_before = cpu_seconds(redis.child.id());
            let r = load(&rt, &rd, STATE_CONNECTIONS, per_state, 1, true).await;
            redis_cpu_us = (cpu_seconds(redis.child.id()) - cpu_before) / r.messages as f64 * 1e6;
            let log = std::fs::read_to_string(rd.dir.join("daemon.log")).unwrap_or_default();
            assert!(
                log.contains("redis answers") && !log.contains("shared state unreachable"),
                "the Redis row must have used Redis throughout:\n{log}"
            );
            push_row(&mut state_rows, "state in redis", "tcp", 1, STATE_CONNECTIONS, 1, &r);
        }
        drop(mem_daemon);
        println!(
            "{{\"protocol\": {{\"full\": {full}, \"state\": {{\"loads\": [{}], \"redis_cpu_us_per_message\": {redis_cpu_us:.1}}}, \"loads\": [{}], \"memory\": {{\"idle_kib\": {idle_kib}, \
             \"after_messages\": {}, \"after_messages_kib\": {after_kib}, \"big_envelope_rcpts\": {big}, \
             \"big_envelope_seconds\": {:.3}, \"before_big_kib\": {before_big}, \"after_big_kib\": {after_big}, \
             \"peak_kib\": {peak}, \"tenth_envelope_rcpts\": {tenth}, \"peak_before_tenth_kib\": {before_tenth}, \
             \"peak_after_tenth_kib\": {peak_tenth}}}}}}}",
            state_rows.join(", "),
            rows.join(", "),
            CONNECTIONS * (per_conn + 2),
            l.seconds
        );
    });
    drop((tcp_daemon, unix_daemon, tcp2_daemon, unix2_daemon));
    let _ = std::fs::remove_dir_all(&base);
}
