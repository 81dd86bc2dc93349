// SPDX-License-Identifier: GPL-3.0-or-later
//! Process and waiting helpers shared by the test harness and the benchmarks that
//! start real servers: bounded waits, free ports, scratch directories, child guards.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long any single wait in the harness may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Some`, failing the test with `what` after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// A scratch directory every Postfix daemon (user `postfix`) can traverse.
pub fn scratch_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("fanout-{name}."))
        .tempdir_in("/tmp")
        .expect("create a scratch dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 755");
    dir
}

/// A child process that is killed when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Its process id (0 once reaped).
    pub fn pid(&self) -> i32 {
        self.0.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits for exit with the harness deadline.
    pub fn wait(&mut self) -> ExitStatus {
        let child = self.0.as_mut().expect("process still owned");
        let status = wait_for("process exit", || child.try_wait().expect("try_wait"));
        self.0 = None;
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
