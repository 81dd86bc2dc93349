// SPDX-License-Identifier: GPL-3.0-or-later
//! Running Postfix's tools: argument vectors only (never a shell), input on stdin, a
//! deadline after which the child is killed.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(timeout) {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(RunError::Spawn { program, source }),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(RunError::Timeout { program, timeout });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
