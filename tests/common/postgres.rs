// SPDX-License-Identifier: GPL-3.0-or-later
//! A private PostgreSQL for the fleet quarantine tests: Debian's server binaries
//! (`/usr/lib/postgresql/*/bin`), a cluster made by `initdb` in a scratch directory,
//! listening on a loopback port only (no Unix socket), password authentication
//! (scram-sha-256) for the user `fanout`. Run as the `postgres` account when the tests
//! run as root (the server refuses root). Stopped (fast shutdown) when dropped, also
//! when a test fails.

use super::process::{ChildGuard, DEADLINE, free_port, scratch_dir, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The database user the tests connect as.
pub const PG_USER: &str = "fanout";
/// Its password (in a file the relay's configuration names).
pub const PG_PASSWORD: &str = "correct-horse-battery-staple";
/// The database the quarantine lives in.
pub const PG_DATABASE: &str = "quarantine";
/// On a server started with [`Postgres::start_tls`], the database that takes TLS
/// connections only (`hostssl`; a plain one is rejected by `pg_hba.conf`).
pub const PG_TLS_DATABASE: &str = "tls_only";

/// The directory of Debian's PostgreSQL server binaries (the newest version
/// installed); fails loudly when none is: scripts/test installs `postgresql`.
pub fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect(
        "no /usr/lib/postgresql/*/bin/initdb: run scripts/test, which installs postgresql (apt-get)",
    )
}

/// The account the server runs as: `postgres` when we are root, else ourselves.
fn server_account() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up the postgres account")
        .expect("the postgres account exists (Debian's postgresql package makes it)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn command(bin: &Path, name: &str, account: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin.join(name));
    if let Some((uid, gid)) = account {
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C");
    c
}

/// A private PostgreSQL server on a loopback port.
pub struct Postgres {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    account: Option<(u32, u32)>,
    /// TLS on (`server.crt` and `server.key` in the data directory).
    tls: bool,
    child: ChildGuard,
}

impl Postgres {
    /// Makes a cluster, starts the server and creates the quarantine database.
    pub fn start() -> Postgres {
        Self::start_with(None)
    }

    /// As [`Postgres::start`], with TLS on: `cert` and `key` are the server's
    /// certificate and key (PEM); [`PG_TLS_DATABASE`] takes TLS connections only, the
    /// other databases both kinds.
    pub fn start_tls(cert: &Path, key: &Path) -> Postgres {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Postgres {
        let bin = pg_bin();
        let account = server_account();
        let dir = scratch_dir("postgres");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir data");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let pwfile = dir.path().join("superuser.pw");
        std::fs::write(&pwfile, format!("{PG_PASSWORD}\n")).expect("write pwfile");
        if let Some((uid, gid)) = account {
            for p in [&data, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let out = command(&bin, "initdb", account)
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_USER, "--auth=scram-sha-256", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "--locale=C"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        if let Some((cert, key)) = tls {
            Self::install_tls(&data, cert, key, account);
        }
        let port = free_port();
        let child = Self::spawn(&bin, &data, port, account, tls.is_some());
        let mut pg = Postgres {
            port,
            dir,
            bin,
            account,
            tls: tls.is_some(),
            child,
        };
        pg.wait_ready();
        let mut admin = pg.client("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {PG_DATABASE}"))
            .expect("create the quarantine database");
        if pg.tls {
            admin
                .batch_execute(&format!("CREATE DATABASE {PG_TLS_DATABASE}"))
                .expect("create the TLS-only database");
        }
        pg
    }

    /// Copies the server's certificate and key into `data` (the key readable by the
    /// server's account only, as the server demands), and makes [`PG_TLS_DATABASE`]
    /// TLS-only in `pg_hba.conf` (its first lines win).
    fn install_tls(data: &Path, cert: &Path, key: &Path, account: Option<(u32, u32)>) {
        Self::copy_certificate(data, cert, key, account);
        let hba = data.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl {PG_TLS_DATABASE} all 127.0.0.1/32 scram-sha-256\n\
                 host {PG_TLS_DATABASE} all 127.0.0.1/32 reject\n{rest}"
            ),
        )
        .expect("write pg_hba.conf");
    }

    fn copy_certificate(data: &Path, cert: &Path, key: &Path, account: Option<(u32, u32)>) {
        for (from, to, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let to = data.join(to);
            std::fs::copy(from, &to).expect("copy the server's certificate or key");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some((uid, gid)) = account {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
    }

    /// On a server started with [`Postgres::start_tls`]: replaces its certificate and
    /// key and asks it to reload them (new connections get them once it has: the
    /// caller waits for that).
    pub fn install_certificate(&self, cert: &Path, key: &Path) {
        assert!(self.tls, "a server started with start_tls");
        Self::copy_certificate(&self.dir.path().join("data"), cert, key, self.account);
        self.client("postgres")
            .batch_execute("SELECT pg_reload_conf()")
            .expect("reload the configuration");
    }

    fn spawn(
        bin: &Path,
        data: &Path,
        port: u16,
        account: Option<(u32, u32)>,
        tls: bool,
    ) -> ChildGuard {
        let ssl: &[&str] = if tls {
            &[
                "-c",
                "ssl=on",
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
            ]
        } else {
            &[]
        };
        let log = std::fs::File::create(data.parent().expect("dir").join("server.log"))
            .expect("server log");
        if let Some((uid, gid)) = account {
            let _ = std::os::unix::fs::chown(
                data.parent().expect("dir").join("server.log"),
                Some(uid),
                Some(gid),
            );
        }
        let child = command(bin, "postgres", account)
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k", ""])
            // A test cluster: no fsync (the tests never pull the plug on the host).
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
            .args(ssl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        ChildGuard(Some(child))
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        let log = self.log_path();
        wait_for("postgres to accept connections", || {
            if let Some(status) = self
                .child
                .0
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "postgres on port {port} exited early ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            self.try_client("postgres").map(|_| ())
        });
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The URL of the quarantine database, without the password.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{PG_USER}@127.0.0.1:{}/{PG_DATABASE}",
            self.port
        )
    }

    fn try_client(&self, db: &str) -> Option<::postgres::Client> {
        ::postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(PG_USER)
            .password(PG_PASSWORD)
            .dbname(db)
            .connect_timeout(Duration::from_secs(2))
            .connect(::postgres::NoTls)
            .ok()
    }

    /// A connection to database `db` as [`PG_USER`].
    pub fn client(&self, db: &str) -> ::postgres::Client {
        self.try_client(db)
            .unwrap_or_else(|| panic!("connect to postgres: {}", self.log()))
    }

    /// A fresh database named `name` (one per test that shares a server).
    pub fn create_database(&self, name: &str) -> String {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        format!("postgresql://{PG_USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server (fast shutdown) and waits until it is gone.
    pub fn stop(&mut self) {
        // Best effort and never a panic: this runs in `Drop`, also while a failed test
        // unwinds, and a panic there would abort and leave the server running. A server
        // a test stopped (SIGSTOP) is woken first, so that it can shut down.
        self.signal_all(nix::sys::signal::Signal::SIGCONT);
        let Some(mut child) = self.child.0.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() <= DEADLINE => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }

    /// Sends `signal` to the server and each of its processes (the backends): SIGSTOP
    /// makes a server that keeps its connections open but never answers.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        let Some(pid) = self.child.0.as_ref().map(|c| c.id()) else {
            return;
        };
        let mut pids = vec![pid];
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "PID (COMM) STATE PPID ...": COMM may hold anything, so after its last ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let child = stat.split_whitespace().next().and_then(|p| p.parse().ok());
            if let (Some(child), true) = (child, parent == Some(pid)) {
                pids.push(child);
            }
        }
        for p in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), signal);
        }
    }

    /// Starts it again on the same port and data, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(
            &self.bin,
            &self.dir.path().join("data"),
            self.port,
            self.account,
            self.tls,
        );
        self.wait_ready();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
