// SPDX-License-Identifier: GPL-3.0-or-later
//! Redis as large sites run it, against real servers on loopback: TLS (`rediss://`
//! with a CA file and a client certificate, certificates made here with the openssl
//! CLI), and Sentinel (a master, a replica and a sentinel; the master is killed, the
//! sentinel promotes the replica, and shared counting resumes on it).

mod common;

use common::{ChildGuard, free_port, listening, require_redis, wait_for};
use fanout_milter::clock::SystemClock;
use fanout_milter::config::{RedisConnSettings, SentinelSettings};
use fanout_milter::notify::{AlertKind, AlertReceiver, channel};
use fanout_milter::state::{
    Failover, MemoryBackend, OnFailure, RedisBackend, StateBackend, ThreadCounts,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Per-operation timeout: generous, as TLS handshakes on a loaded 2-core machine are slow.
const TIMEOUT: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(600);

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn counts(messages: u64, senders: u64) -> ThreadCounts {
    ThreadCounts { messages, senders }
}

/// Runs a command that must succeed.
fn run(cmd: &mut Command) {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem`, `NAME.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
}

/// A certificate (`NAME.pem`, `NAME.key`) for 127.0.0.1 signed by CA `ca`, for a
/// server or a client (`usage`: serverAuth, clientAuth).
fn make_cert(dir: &Path, name: &str, ca: &str, usage: &str) {
    run(Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-keyout", &format!("{name}.key")])
        .args([
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
        ),
    )
    .expect("write the extensions");
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["x509", "-req", "-in", &format!("{name}.csr"), "-days", "2"])
        .args(["-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key")])
        .args(["-CAcreateserial", "-out", &format!("{name}.pem")])
        .args(["-extfile", &ext.display().to_string()]));
}

/// A redis-server (or sentinel) started with `args`, killed when dropped.
struct Server {
    port: u16,
    child: ChildGuard,
}

impl Server {
    fn start(port: u16, args: &[&str]) -> Server {
        require_redis();
        let child = Command::new(REDIS_SERVER)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut s = Server {
            port,
            child: ChildGuard(Some(child)),
        };
        wait_for("redis-server to listen", || {
            if let Some(status) = s.child.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("redis-server on port {port} exited early ({status}): {args:?}");
            }
            listening(port).then_some(())
        });
        s
    }

    /// A plain server: nothing saved, no TLS; `extra` appended.
    fn plain(port: u16, extra: &[&str]) -> Server {
        let p = port.to_string();
        let mut args = vec!["--port", &p, "--bind", "127.0.0.1", "--save", ""];
        args.extend(["--appendonly", "no", "--dir", "/tmp", "--logfile", ""]);
        args.extend(extra);
        Server::start(port, &args)
    }

    /// A synchronous connection for checks.
    fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .expect("a URL")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect")
    }

    fn kill(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill redis-server");
        self.child.wait();
    }
}

fn tls_settings(dir: &Path, ca: &str, client: bool) -> RedisConnSettings {
    RedisConnSettings {
        ca_file: Some(dir.join(format!("{ca}.pem"))),
        client_cert: client.then(|| (dir.join("client.pem"), dir.join("client.key"))),
        sentinel: None,
    }
}

#[tokio::test]
async fn a_rediss_backend_checks_the_server_against_the_ca_file_and_shares_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_cert(d, "server", "ca", "serverAuth");
    make_cert(d, "client", "ca", "clientAuth");
    let port = free_port();
    let file = |name: &str| d.join(name).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let p = port.to_string();
    let _server = Server::start(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &p,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/tmp",
            "--logfile",
            "",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
        ],
    );
    let url = format!("rediss://127.0.0.1:{port}/");
    let backend = |settings: &RedisConnSettings, prefix: &str| {
        RedisBackend::connect(&url, None, settings, prefix, TIMEOUT).expect("a valid URL")
    };

    let a = backend(&tls_settings(d, "ca", true), "tls:");
    let b = backend(&tls_settings(d, "ca", true), "tls:");
    a.ping()
        .await
        .expect("TLS with the CA file and a client certificate");
    assert_eq!(
        a.thread_note("t", "x", WINDOW, t(0)).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.thread_note("t", "y", WINDOW, t(1)).await.unwrap(),
        counts(2, 2),
        "two relays share counts over TLS"
    );

    let wrong = backend(&tls_settings(d, "other-ca", true), "tls:")
        .ping()
        .await
        .expect_err("a server the CA file does not vouch for is refused")
        .to_string();
    eprintln!("with the wrong CA file: {wrong}");
    assert!(
        wrong.contains("certificate") || wrong.contains("UnknownIssuer"),
        "the error says why: {wrong}"
    );
    let anonymous = backend(&tls_settings(d, "ca", false), "tls:").ping().await;
    assert!(
        anonymous.is_err(),
        "a server that asks for a client certificate refuses a client without one"
    );
    let plain = RedisBackend::new(&format!("redis://127.0.0.1:{port}/"), "tls:", TIMEOUT)
        .expect("a valid URL")
        .ping()
        .await;
    assert!(plain.is_err(), "plain text to a TLS port does not work");
}

/// The sentinel's view of `master`: its address, from `SENTINEL get-master-addr-by-name`.
fn master_port(sentinel: &Server) -> Option<u16> {
    let mut c = sentinel.client();
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("mymaster")
        .query(&mut c)
        .ok()?;
    addr.and_then(|(_, port)| port.parse().ok())
}

/// True once the sentinel knows `replica` as a healthy replica of the master.
fn sentinel_knows_replica(sentinel: &Server, replica: u16) -> bool {
    let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{}/", sentinel.port))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
    else {
        return false;
    };
    let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
        .arg("replicas")
        .arg("mymaster")
        .query(&mut c)
        .unwrap_or_default();
    replicas.iter().any(|r| {
        r.get("port").map(String::as_str) == Some(&replica.to_string())
            && r.get("flags")
                .is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
            && r.get("master-link-status").map(String::as_str) == Some("ok")
    })
}

/// A relay's state: the Sentinel-found master with local state behind it.
fn relay(sentinel: &Server, on_failure: OnFailure) -> (Failover, AlertReceiver) {
    let settings = RedisConnSettings {
        ca_file: None,
        client_cert: None,
        sentinel: Some(SentinelSettings {
            master: "mymaster".into(),
            urls: vec![
                // A sentinel that is down first: the next one answers.
                format!("redis://127.0.0.1:{}", free_port()).into(),
                format!("redis://127.0.0.1:{}", sentinel.port).into(),
            ],
            password_file: None,
        }),
    };
    let remote = RedisBackend::connect("redis://mymaster/", None, &settings, "ha:", TIMEOUT)
        .expect("valid settings");
    let (tx, rx) = channel(100);
    let f = Failover::new(
        Arc::new(remote),
        Arc::new(MemoryBackend::new()),
        "sentinel mymaster",
        on_failure,
        TIMEOUT,
        Some(tx),
        Arc::new(SystemClock),
    );
    (f, rx)
}

/// Waits (bounded) until the failover uses Redis again; how long that took.
async fn until_up(f: &Failover, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(40);
    while !f.is_up() {
        assert!(
            Instant::now() < deadline,
            "Redis not used again within 40 s of the master's death"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

#[tokio::test]
async fn after_a_sentinel_failover_shared_counting_resumes_on_the_promoted_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mp, rp, sp) = (free_port(), free_port(), free_port());
    let mut master = Server::plain(mp, &[]);
    let mp_s = mp.to_string();
    let replica = Server::plain(rp, &["--replicaof", "127.0.0.1", &mp_s]);
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sp}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {}\n\
             sentinel monitor mymaster 127.0.0.1 {mp} 1\n\
             sentinel down-after-milliseconds mymaster 500\n\
             sentinel failover-timeout mymaster 3000\n\
             sentinel parallel-syncs mymaster 1\n",
            dir.path().display()
        ),
    )
    .expect("write sentinel.conf");
    let conf_s = conf.display().to_string();
    let sentinel = Server::start(sp, &[&conf_s, "--sentinel"]);
    wait_for("the sentinel to know the replica", || {
        sentinel_knows_replica(&sentinel, rp).then_some(())
    });
    assert_eq!(master_port(&sentinel), Some(mp));

    let (a, mut alerts) = relay(&sentinel, OnFailure::Local);
    let (b, _) = relay(&sentinel, OnFailure::Tempfail);
    assert_eq!(
        a.thread_note("t", "x", WINDOW, t(0)).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.thread_note("t", "y", WINDOW, t(1)).await.unwrap(),
        counts(2, 2),
        "both relays count on the master the sentinel names"
    );
    let on_master: bool = redis::cmd("EXISTS")
        .arg("ha:thr:t:e")
        .query(&mut master.client())
        .expect("EXISTS");
    assert!(on_master, "the counts are on the master");

    master.kill();
    let killed = Instant::now();
    let during = a.thread_note("t", "z", WINDOW, t(2)).await;
    assert!(
        killed.elapsed() < TIMEOUT * 2,
        "a dead master costs at most the timeout: {:?}",
        killed.elapsed()
    );
    assert_eq!(
        during.expect("on_failure = local carries on"),
        counts(2, 2),
        "relay a counts alone meanwhile (its own x, and z)"
    );
    assert!(
        b.thread_note("t", "w", WINDOW, t(2)).await.is_err(),
        "on_failure = tempfail refuses meanwhile"
    );
    assert_eq!(next_kind(&mut alerts).await, AlertKind::StateDown);

    let promoted = wait_for("the sentinel to promote the replica", || {
        (master_port(&sentinel) == Some(rp)).then_some(killed.elapsed())
    });
    let a_back = until_up(&a, killed).await;
    let b_back = until_up(&b, killed).await;
    eprintln!(
        "failover: replica promoted {} ms after the master's death; relays back on it after {} ms and {} ms",
        promoted.as_millis(),
        a_back.as_millis(),
        b_back.as_millis()
    );
    assert_eq!(next_kind(&mut alerts).await, AlertKind::StateBack);
    assert_eq!(
        a.thread_note("v", "x", WINDOW, t(3)).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.thread_note("v", "y", WINDOW, t(4)).await.unwrap(),
        counts(2, 2),
        "shared counting resumed"
    );
    let mut new_master = replica.client();
    let on_new: bool = redis::cmd("EXISTS")
        .arg("ha:thr:v:e")
        .query(&mut new_master)
        .expect("EXISTS");
    assert!(on_new, "the counts are on the promoted replica");
    let replicated: bool = redis::cmd("EXISTS")
        .arg("ha:thr:t:e")
        .query(&mut new_master)
        .expect("EXISTS");
    assert!(replicated, "what was counted before the failover was kept");
}

/// The kind of the next alert, within a deadline.
async fn next_kind(alerts: &mut AlertReceiver) -> AlertKind {
    tokio::time::timeout(Duration::from_secs(40), alerts.recv())
        .await
        .expect("an alert within 40 s")
        .expect("the alert queue is open")
        .kind
}
