// SPDX-License-Identifier: GPL-3.0-or-later
//! The protocol of the daemon's local control socket, and its client: `fanout-milter
//! storms list|clear`, `brake on|off|status` and `directory refresh|accept` talk to the
//! running daemon through it, since the in-memory state and the LDAP snapshots live there. A unix socket of
//! mode 0600 (the daemon's user, and root); one JSON request line, one JSON answer line.
//! The daemon serves it in `daemon::control`; this module needs nothing of the daemon,
//! so the command line uses it alone.

use crate::state::{Brake, Storm};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest request line accepted.
pub const MAX_REQUEST: u64 = 4096;
/// Deadline for one request and its answer.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for a directory refresh, which reads a whole directory.
pub const REFRESH_DEADLINE: Duration = Duration::from_secs(35 * 60);

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The storms in progress.
    StormsList,
    /// End one storm.
    StormsClear {
        /// Its id.
        id: String,
    },
    /// Refresh LDAP sources now.
    DirectoryRefresh {
        /// One source by name; all when absent.
        source: Option<String>,
    },
    /// Put an LDAP source's refused (shrunk) snapshot in force and forget its
    /// vanished lists.
    DirectoryAccept {
        /// The source's name.
        source: String,
    },
    /// The emergency brake, if it is on.
    BrakeStatus,
    /// Pull the emergency brake: hold every message whose real audience is at least
    /// `min_audience`, on every relay sharing the state backend.
    BrakeOn {
        /// The smallest audience held.
        min_audience: u64,
        /// How long it holds (seconds); until released when absent.
        for_secs: Option<u64>,
        /// Who pulls it.
        by: String,
        /// Why.
        comment: String,
    },
    /// The metrics, as `/metrics` serves them (Prometheus text).
    Stats,
    /// Release the emergency brake.
    BrakeOff {
        /// Who releases it.
        by: String,
        /// Why.
        comment: String,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Response {
    /// Storms in progress.
    Storms {
        /// Oldest first.
        storms: Vec<Storm>,
    },
    /// Whether a storm was cleared.
    Cleared {
        /// True when there was one with that id.
        found: bool,
    },
    /// What each refresh did.
    Refreshed {
        /// One per source.
        outcomes: Vec<RefreshOutcome>,
    },
    /// The emergency brake after the request.
    Brake {
        /// The brake, when it is on.
        brake: Option<Brake>,
        /// The brake that was on before and that this request replaced (`brake on`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced: Option<Brake>,
    },
    /// The metrics in the Prometheus text format.
    Stats {
        /// The exposition.
        text: String,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Why the admin socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Connecting, reading or writing failed.
    #[error("admin socket {}: {source} (is the daemon running, and are you its user or root?)", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not understood.
    #[error("admin socket {}: unexpected answer: {message}", path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// What one refresh did, for `fanout-milter directory refresh`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshOutcome {
    /// The source.
    pub source: String,
    /// True when a new snapshot is in force.
    pub ok: bool,
    /// True when the refresh worked but lost too much and waits for an admin's accept.
    #[serde(default)]
    pub refused: bool,
    /// Counts and duration, or the error.
    pub message: String,
}

/// Connects to the socket at `path` without following a link at its name: the socket
/// lives in the daemon's state directory, and root must not be redirected to another
/// program's socket. The name is opened with `O_PATH | O_NOFOLLOW`, checked to be a
/// socket, and connected to through `/proc/self/fd`, so nothing can be swapped between
/// the check and the connect.
fn connect_nofollow(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    let kind = handle.metadata()?.file_type();
    if !kind.is_socket() {
        return Err(std::io::Error::other(if kind.is_symlink() {
            "a symbolic link, not the daemon's socket"
        } else {
            "not a socket"
        }));
    }
    std::os::unix::net::UnixStream::connect(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

/// Sends one request to the daemon at `path` and returns its answer (blocking).
pub fn request(path: &Path, request: &Request) -> Result<Response, AdminError> {
    let io = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = connect_nofollow(path).map_err(io)?;
    let deadline = match request {
        Request::DirectoryRefresh { .. } | Request::DirectoryAccept { .. } => REFRESH_DEADLINE,
        _ => DEADLINE,
    };
    stream.set_read_timeout(Some(deadline)).map_err(io)?;
    stream.set_write_timeout(Some(DEADLINE)).map_err(io)?;
    let mut line = serde_json::to_string(request).unwrap_or_default();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(answer.trim()).map_err(|e| AdminError::Protocol {
        path: path.to_owned(),
        message: format!("{e}: {answer:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_never_follows_a_link_to_another_socket() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.sock");
        let listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
        listener.set_nonblocking(true).unwrap();
        let link = dir.path().join("admin.sock");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let e = request(&link, &Request::StormsList).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(
            listener.accept().is_err(),
            "nothing connected to the other socket"
        );
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let e = request(&plain, &Request::StormsList).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
    }
}
