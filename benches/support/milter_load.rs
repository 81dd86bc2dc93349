// SPDX-License-Identifier: GPL-3.0-or-later
//! A daemon binary driven by indymilter-test's milter client, for the benchmarks that
//! measure it (benches/protocol.rs, benches/desk.rs): start it with a policy that
//! accepts everything, wait for it to listen, send messages on many connections at
//! once, and read its CPU time from /proc.
// Each benchmark uses part of this.
#![allow(dead_code)]

#[path = "proc_status.rs"]
mod proc_status;

use indymilter_test::{MacroStage, Status, TestConnection};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to listen, and a milter reply to come.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A daemon binary started by a benchmark, stopped (SIGTERM) and its directory removed
/// when dropped.
pub struct Daemon {
    /// The running daemon.
    pub child: Child,
    /// Its scratch directory (configuration, state, `daemon.log`).
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts the daemon; `extra` is appended to its configuration.
    pub fn start(dir: &Path, listen: &str, threads: usize, extra: &str) -> Daemon {
        Self::start_bin(
            Path::new(env!("CARGO_BIN_EXE_fanout-milter")),
            dir,
            listen,
            threads,
            extra,
        )
    }

    /// [`Daemon::start`] with another build of the daemon (`--before-bin`: an earlier
    /// version, measured in the same run).
    pub fn start_bin(bin: &Path, dir: &Path, listen: &str, threads: usize, extra: &str) -> Daemon {
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
        let child = Command::new(bin)
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
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// A `kB` field of its /proc status (`VmRSS:`, `VmHWM:`).
    pub fn rss_kib(&self, field: &str) -> u64 {
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

/// Where a daemon listens for milter connections.
#[derive(Clone)]
pub enum Target {
    /// `inet:` on loopback.
    Tcp(SocketAddr),
    /// `unix:` at this path.
    Unix(PathBuf),
}

impl Target {
    /// Whether a connection is accepted.
    pub fn ready(&self) -> bool {
        match self {
            Target::Tcp(a) => TcpStream::connect(a).is_ok(),
            Target::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
        }
    }

    /// A milter connection through CONNECT.
    pub async fn open(&self) -> TestConnection {
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
pub fn nodelay_everywhere() {
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
pub fn cpu_seconds(pid: u32) -> f64 {
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

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (bounded by [`DEADLINE`]) until `target` accepts connections.
pub fn wait_ready(target: &Target) {
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
pub async fn one_message(
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

/// What one load measured.
pub struct Load {
    /// Messages sent.
    pub messages: usize,
    /// The daemon's CPU seconds (user + system) during the load.
    pub daemon_cpu_s: f64,
    /// Wall-clock seconds of the load.
    pub seconds: f64,
    /// End-of-message decision latency, microseconds.
    pub decision_p50_us: f64,
    /// End-of-message decision latency, microseconds.
    pub decision_p99_us: f64,
    /// Whole-transaction latency, microseconds.
    pub transaction_p50_us: f64,
    /// Whole-transaction latency, microseconds.
    pub transaction_p99_us: f64,
}

/// Percentile `p` of `sorted`, in microseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Sends `per_connection` messages of `rcpts_per_message` recipients on each of
/// `connections` connections at once; the daemon's CPU is read around the load.
pub async fn load(
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
