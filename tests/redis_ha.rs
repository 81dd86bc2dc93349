// SPDX-License-Identifier: GPL-3.0-or-later
//! Redis as large sites run it, against real servers on loopback: TLS (`rediss://`
//! with a CA file and a client certificate, certificates made here with the openssl
//! CLI), and Sentinel (a master, a replica and a sentinel; the master is killed, the
//! sentinel promotes the replica, and shared counting resumes on it; also with TLS
//! everywhere), at the backend and end to end through Postfix.

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
    /// The CA file of a server that speaks TLS only.
    ca: Option<std::path::PathBuf>,
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
            ca: None,
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

    /// A server that speaks TLS only (no plain port), with the certificate
    /// `server.pem` of the CA `ca.pem` in `dir`, not asking clients for one;
    /// replication and sentinels use TLS too. `extra` appended.
    fn tls(port: u16, dir: &Path, extra: &[&str]) -> Server {
        let p = port.to_string();
        let file = |name: &str| dir.join(name).display().to_string();
        let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
        let mut args = vec!["--port", "0", "--tls-port", &p, "--bind", "127.0.0.1"];
        args.extend([
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/tmp",
            "--logfile",
            "",
        ]);
        args.extend(["--tls-cert-file", &cert, "--tls-key-file", &key]);
        args.extend(["--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"]);
        args.extend(["--tls-replication", "yes"]);
        args.extend(extra);
        let mut server = Server::start(port, &args);
        server.ca = Some(dir.join("ca.pem"));
        server
    }

    /// A synchronous connection for checks (with `PASSWORD` when `auth`).
    fn client(&self, auth: bool) -> redis::Connection {
        let pass = if auth {
            format!(":{PASSWORD}@")
        } else {
            String::new()
        };
        sync_client(
            &format!("127.0.0.1:{}/", self.port),
            &pass,
            self.ca.as_deref(),
        )
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect")
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.pid()), sig)
            .expect("signal redis-server");
    }

    fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait();
    }
}

/// A synchronous client of `host_port` (with `pass@` before it), over TLS trusting
/// `ca` when given.
fn sync_client(host_port: &str, pass: &str, ca: Option<&Path>) -> redis::Client {
    match ca {
        Some(ca) => redis::Client::build_with_tls(
            format!("rediss://{pass}{host_port}"),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca).expect("read the CA file")),
            },
        ),
        None => redis::Client::open(format!("redis://{pass}{host_port}")),
    }
    .expect("a URL")
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
    // A server that asks for client certificates (the later option wins).
    let _server = Server::tls(port, d, &["--tls-auth-clients", "yes"]);
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

/// The password of the servers of a [`Trio`] that has one.
const PASSWORD: &str = "s3cret-master";
/// The password of its sentinel.
const SENTINEL_PASSWORD: &str = "s3cret-sentinel";

/// A master, its replica and one sentinel watching them, on loopback; with `auth`,
/// the servers need [`PASSWORD`] and the sentinel [`SENTINEL_PASSWORD`].
struct Trio {
    master: Server,
    replica: Server,
    sentinel: Server,
    auth: bool,
    /// TLS everywhere (servers, replication, sentinel), certificates of `ca.pem` here.
    tls: bool,
    dir: tempfile::TempDir,
}

impl Trio {
    /// Starts them and waits until the sentinel knows the replica, in sync; with
    /// `tls`, every server and the sentinel speak TLS only.
    fn start(auth: bool, tls: bool) -> Trio {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        if tls {
            make_ca(d, "ca");
            make_cert(d, "server", "ca", "serverAuth");
        }
        let server = |port: u16, extra: &[&str]| {
            if tls {
                Server::tls(port, d, extra)
            } else {
                Server::plain(port, extra)
            }
        };
        let (mp, rp, sp) = (free_port(), free_port(), free_port());
        let mp_s = mp.to_string();
        let mut auth_args = vec![];
        if auth {
            auth_args = vec!["--requirepass", PASSWORD, "--masterauth", PASSWORD];
        }
        let master = server(mp, &auth_args);
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &mp_s];
        replica_args.extend(&auth_args);
        let replica = server(rp, &replica_args);
        let conf = d.join("sentinel.conf");
        let auth_conf = if auth {
            format!("sentinel auth-pass mymaster {PASSWORD}\nrequirepass {SENTINEL_PASSWORD}\n")
        } else {
            String::new()
        };
        let listen = if tls {
            let f = |name: &str| d.join(name).display().to_string();
            format!(
                "port 0\ntls-port {sp}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                f("server.pem"),
                f("server.key"),
                f("ca.pem")
            )
        } else {
            format!("port {sp}\n")
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {mp} 1\n\
                 sentinel down-after-milliseconds mymaster 500\n\
                 sentinel failover-timeout mymaster 3000\n\
                 sentinel parallel-syncs mymaster 1\n{auth_conf}",
                d.display()
            ),
        )
        .expect("write sentinel.conf");
        let conf_s = conf.display().to_string();
        let mut sentinel = Server::start(sp, &[&conf_s, "--sentinel"]);
        sentinel.ca = master.ca.clone();
        let trio = Trio {
            master,
            replica,
            sentinel,
            auth,
            tls,
            dir,
        };
        wait_for("the sentinel to know the replica", || {
            trio.sentinel_knows_replica().then_some(())
        });
        assert_eq!(trio.master_port(), Some(mp));
        trio
    }

    /// The sentinel's password before `@`, or nothing.
    fn sentinel_pass(&self) -> String {
        if self.auth {
            format!(":{SENTINEL_PASSWORD}@")
        } else {
            String::new()
        }
    }

    /// The sentinel's URL (with its password when it has one).
    fn sentinel_url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!(
            "{scheme}://{}127.0.0.1:{}",
            self.sentinel_pass(),
            self.sentinel.port
        )
    }

    fn sentinel_client(&self) -> Option<redis::Connection> {
        sync_client(
            &format!("127.0.0.1:{}", self.sentinel.port),
            &self.sentinel_pass(),
            self.sentinel.ca.as_deref(),
        )
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()
    }

    /// The port of the master the sentinel names.
    fn master_port(&self) -> Option<u16> {
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut self.sentinel_client()?)
            .ok()?;
        addr.and_then(|(_, port)| port.parse().ok())
    }

    /// True once the sentinel knows the replica as healthy and in sync.
    fn sentinel_knows_replica(&self) -> bool {
        let Some(mut c) = self.sentinel_client() else {
            return false;
        };
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("mymaster")
            .query(&mut c)
            .unwrap_or_default();
        let port = self.replica.port.to_string();
        replicas.iter().any(|r| {
            r.get("port") == Some(&port)
                && r.get("flags")
                    .is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
                && r.get("master-link-status").map(String::as_str) == Some("ok")
        })
    }

    /// True when `key` exists on `server`.
    fn exists(&self, server: &Server, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query(&mut server.client(self.auth))
            .expect("EXISTS")
    }
}

/// A relay's state: the Sentinel-found master with local state behind it.
fn relay(trio: &Trio, on_failure: OnFailure) -> (Failover, AlertReceiver) {
    let scheme = if trio.tls { "rediss" } else { "redis" };
    let settings = RedisConnSettings {
        ca_file: trio.tls.then(|| trio.dir.path().join("ca.pem")),
        client_cert: None,
        sentinel: Some(SentinelSettings {
            master: "mymaster".into(),
            urls: vec![
                // A sentinel that is down first: the next one answers.
                format!("{scheme}://127.0.0.1:{}", free_port()).into(),
                trio.sentinel_url().into(),
            ],
            password_file: None,
        }),
    };
    let master = format!("{scheme}://mymaster/");
    let remote =
        RedisBackend::connect(&master, None, &settings, "ha:", TIMEOUT).expect("valid settings");
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
    failover_scenario(false, false).await;
}

#[tokio::test]
async fn a_master_that_hangs_is_left_for_the_promoted_replica_too() {
    failover_scenario(true, false).await;
}

#[tokio::test]
async fn with_tls_everywhere_a_sentinel_failover_resumes_on_the_promoted_replica() {
    failover_scenario(false, true).await;
}

/// Two relays on the master a sentinel names; the master is killed (or, with `hang`,
/// stopped with SIGSTOP, as a network cut looks); the replica is promoted. With `tls`,
/// the servers, replication and the sentinel speak TLS only, checked against the CA
/// file the relays are given.
async fn failover_scenario(hang: bool, tls: bool) {
    let mut trio = Trio::start(false, tls);
    let (a, mut alerts) = relay(&trio, OnFailure::Local);
    let (b, _) = relay(&trio, OnFailure::Tempfail);
    assert_eq!(
        a.thread_note("t", "x", WINDOW, t(0)).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.thread_note("t", "y", WINDOW, t(1)).await.unwrap(),
        counts(2, 2),
        "both relays count on the master the sentinel names"
    );
    assert!(
        trio.exists(&trio.master, "ha:thr:t:e"),
        "the counts are on the master"
    );

    if hang {
        trio.master.signal(nix::sys::signal::Signal::SIGSTOP);
    } else {
        trio.master.kill();
    }
    let killed = Instant::now();
    let during = a.thread_note("t", "z", WINDOW, t(2)).await;
    assert!(
        killed.elapsed() < TIMEOUT * 2,
        "a dead or hung master costs at most the timeout: {:?}",
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
        (trio.master_port() == Some(trio.replica.port)).then_some(killed.elapsed())
    });
    let a_back = until_up(&a, killed).await;
    let b_back = until_up(&b, killed).await;
    eprintln!(
        "failover ({}): replica promoted {} ms after; relays back on it after {} ms and {} ms",
        if hang { "master hung" } else { "master killed" },
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
    assert!(
        trio.exists(&trio.replica, "ha:thr:v:e"),
        "the counts are on the promoted replica"
    );
    assert!(
        trio.exists(&trio.replica, "ha:thr:t:e"),
        "what was counted before the failover was kept"
    );
}

/// The kind of the next alert, within a deadline.
async fn next_kind(alerts: &mut AlertReceiver) -> AlertKind {
    tokio::time::timeout(Duration::from_secs(40), alerts.recv())
        .await
        .expect("an alert within 40 s")
        .expect("the alert queue is open")
        .kind
}

/// Sends reply `n` to `thread` through Postfix on `port`: `Ok` or the refusal's code.
fn reply(port: u16, thread: &str, n: usize, to: &[String]) -> Result<(), u16> {
    let from = format!("staff{n}@corp.example");
    let text = common::reply_all(&from, &format!("{thread}-reply-{n}"), thread, to);
    common::smtp_send(port, &from, to, &text)
        .map(|_| ())
        .map_err(|r| r.code)
}

/// The Redis key of the storm on `thread` (see src/state/redis.rs).
fn storm_key(thread: &str) -> String {
    format!(
        "ha-e2e:storm:{}",
        fanout_milter::state::Storm::id_of(&format!("mid:{thread}@corp.example"))
    )
}

#[test]
fn through_postfix_a_sentinel_failover_keeps_mail_flowing_and_storms_shared() {
    common::require_postfix();
    let mut trio = Trio::start(true, false);
    let dir = common::scratch_dir("redis-ha");
    let sink = common::Sink::start(dir.path());
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let config = format!(
        "{}\n[state]\nbackend = \"redis\"\nurl = \"redis://:{PASSWORD}@mymaster/\"\n\
         prefix = \"ha-e2e:\"\ntimeout = \"2s\"\non_failure = \"local\"\n\
         [state.sentinel]\nmaster = \"mymaster\"\nurls = [\"{}\"]\n",
        common::STORM_POLICY,
        trio.sentinel_url()
    );
    let milter = common::Milter::start(dir.path(), &listen, &config);
    let postfix = common::Postfix::start(dir.path(), &sink, &listen);
    wait_for("the milter to reach the master", || {
        milter.log().contains("redis answers").then_some(())
    });
    let port = postfix.smtp_port;
    let to = common::rcpts(8, "corp.example");

    for n in 0..3 {
        assert_eq!(reply(port, "one", n, &to), Ok(()));
    }
    assert_eq!(
        reply(port, "one", 3, &to),
        Err(550),
        "the storm stops the fourth"
    );
    assert!(
        trio.exists(&trio.master, &storm_key("one")),
        "the storm is on the master"
    );

    trio.master.kill();
    assert_eq!(
        reply(port, "two", 0, &to),
        Ok(()),
        "mail flows while the master is gone (on_failure = local)"
    );
    wait_for("the sentinel to promote the replica", || {
        (trio.master_port() == Some(trio.replica.port)).then_some(())
    });
    wait_for("the milter to share state again", || {
        milter
            .log()
            .contains("shared counting resumes")
            .then_some(())
    });
    for n in 0..3 {
        assert_eq!(reply(port, "three", n, &to), Ok(()));
    }
    assert_eq!(reply(port, "three", 3, &to), Err(550));
    assert!(
        trio.exists(&trio.replica, &storm_key("three")),
        "the storm after the failover is on the promoted replica"
    );
    assert!(
        trio.exists(&trio.replica, &storm_key("one")),
        "the storm from before the failover is still shared"
    );

    let log = milter.log();
    assert!(log.contains("Redis master moved from"), "{log}");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .args(["check-config", "--config"])
        .arg(&milter.config)
        .output()
        .expect("check-config");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for secret in [PASSWORD, SENTINEL_PASSWORD] {
        assert!(!log.contains(secret), "{secret} logged: {log}");
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
}
