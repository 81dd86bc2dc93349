// SPDX-License-Identifier: GPL-3.0-or-later
//! Running Postfix's tools: argument vectors only (never a shell), input on stdin, a
//! deadline after which the child is killed.

use nix::sys::wait::{Id, WaitPidFlag, waitid};
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a Postfix command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A command that could not be run to success.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its deadline and was killed.
    #[error("{program} did not finish within {}s and was killed", timeout.as_secs())]
    Timeout {
        /// The program.
        program: String,
        /// The deadline.
        timeout: Duration,
    },
    /// It exited with an error.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
}

/// Runs `cmd` with `input` on stdin and waits at most `timeout`; a non-zero exit is an
/// error carrying stderr.
pub fn run(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, RunError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    // The child stays ours (unreaped) until `child.wait()` below: the watcher only
    // observes its exit (WNOWAIT), so its pid cannot be reused by another process
    // while we may still kill it.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(pid), flags) {}
        let _ = tx.send(());
    });
    if rx.recv_timeout(timeout).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(RunError::Timeout { program, timeout });
    }
    let status = child.wait().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    let output = Output {
        status,
        stdout: stdout.map(|r| collect(r, deadline)).unwrap_or_default(),
        stderr: stderr.map(|r| collect(r, deadline)).unwrap_or_default(),
    };
    if !output.status.success() {
        return Err(RunError::Failed {
            program,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// Reads a child's pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// What a pipe carried, waiting no later than `deadline` (a grandchild may hold the
/// pipe open after the child exited).
fn collect(reader: mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Vec<u8> {
    reader
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn output_stdin_and_no_shell() {
        let mut cmd = Command::new("/bin/cat");
        cmd.arg("-");
        let out = run(cmd, Some(b"$(echo hi)"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"$(echo hi)");
    }

    #[test]
    fn failure_carries_stderr() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo bad thing >&2; exit 3"]);
        let e = run(cmd, None, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("bad thing"), "{e}");
    }

    #[test]
    fn a_hung_command_is_killed_at_the_deadline() {
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("30");
        let started = std::time::Instant::now();
        let e = run(cmd, None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_killed_command_is_reaped_before_run_returns() {
        // A child killed at the deadline must be ours until it is reaped: killing by a
        // pid some other thread may already have reaped can hit a reused pid.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("echo $$ > {}; exec sleep 30", pidfile.display()));
        let e = run(cmd, None, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let proc_dir = format!("/proc/{}", pid.trim());
        assert!(
            !Path::new(&proc_dir).exists(),
            "{proc_dir} still exists: killed but not reaped by run()"
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let e = run(
            Command::new("/nonexistent/postsuper"),
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot run /nonexistent/postsuper"),
            "{e}"
        );
    }
}
