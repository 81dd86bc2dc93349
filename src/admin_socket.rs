// SPDX-License-Identifier: GPL-3.0-or-later
//! The daemon's local admin socket: `fanout-milter storms list|clear` talk to the
//! running daemon through it, since the in-memory state lives there. A unix socket of
//! mode 0600 (the daemon's user, and root); one JSON request line, one JSON answer line.

use crate::refresher::{RefreshOutcome, RefreshRequest};
use crate::state::{Guard, Storm};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tracing::{info, warn};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// Deadline for one request and its answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for a directory refresh, which reads a whole directory.
pub const REFRESH_DEADLINE: Duration = Duration::from_secs(35 * 60);

/// What the socket's requests act on.
#[derive(Clone)]
pub struct Handlers {
    /// Storm state.
    pub guard: Guard,
    /// The LDAP refresher's request queue, when the daemon has one.
    pub refresh: Option<tokio::sync::mpsc::Sender<RefreshRequest>>,
}

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

/// Binds the socket at `path` (replacing a stale one, refusing one in use), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, handlers: Handlers) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("admin socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(REFRESH_DEADLINE, answer(stream, &handlers))
                .await
                .is_err()
            {
                warn!(
                    "admin socket: a request took longer than {}s",
                    REFRESH_DEADLINE.as_secs()
                );
            }
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, handlers: &Handlers) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    match tokio::time::timeout(DEADLINE, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => handle(request, handlers).await,
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&response).unwrap_or_default();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

async fn handle(request: Request, handlers: &Handlers) -> Response {
    let guard = &handlers.guard;
    let backend = guard.backend();
    let result = match &request {
        Request::DirectoryRefresh { source } => {
            return refresh(handlers, source.clone(), false).await;
        }
        Request::DirectoryAccept { source } => {
            return refresh(handlers, Some(source.clone()), true).await;
        }
        Request::StormsList => backend
            .storm_list(guard.now())
            .await
            .map(|storms| Response::Storms { storms }),
        Request::StormsClear { id } => backend.storm_clear(id).await.map(|found| {
            if found {
                info!(storm = %id, "storm cleared by an admin");
            }
            Response::Cleared { found }
        }),
    };
    result.unwrap_or_else(|e| Response::Error {
        message: e.to_string(),
    })
}

async fn refresh(handlers: &Handlers, source: Option<String>, accept: bool) -> Response {
    let Some(queue) = &handlers.refresh else {
        return Response::Error {
            message: "this daemon has no LDAP refresher".into(),
        };
    };
    let (reply, outcomes) = tokio::sync::oneshot::channel();
    let request = RefreshRequest {
        source,
        accept,
        reply,
    };
    if queue.send(request).await.is_err() {
        return Response::Error {
            message: "the LDAP refresher has stopped".into(),
        };
    }
    match outcomes.await {
        Ok(outcomes) => Response::Refreshed { outcomes },
        Err(_) => Response::Error {
            message: "the LDAP refresher stopped before answering".into(),
        },
    }
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
    use crate::clock::{Clock, ManualClock};
    use crate::state::{MemoryBackend, StateBackend};
    use std::sync::Arc;
    use std::time::SystemTime;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_and_clear_storms_through_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let backend = Arc::new(MemoryBackend::new());
        let thread = "mid:root@corp.example";
        let storm = Storm {
            id: Storm::id_of(thread),
            thread: thread.into(),
            subject: "Re: x".into(),
            list: "all@corp.example".into(),
            audience: 5000,
            messages: 3,
            senders: 2,
            since: 1_800_000_000,
            until: 1_800_021_600,
            blocked: 4,
        };
        backend.storm_start(&storm, clock.now()).await.unwrap();
        let guard = Guard::new(backend.clone(), Arc::new(clock), None);
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(bind(&path).is_err(), "a socket in use is not taken over");
        let server = tokio::spawn(serve(
            listener,
            Handlers {
                guard,
                refresh: None,
            },
        ));

        let p = path.clone();
        let listed = tokio::task::spawn_blocking(move || request(&p, &Request::StormsList))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            listed,
            Response::Storms {
                storms: vec![storm.clone()]
            }
        );
        let p = path.clone();
        let id = storm.id.clone();
        let cleared =
            tokio::task::spawn_blocking(move || request(&p, &Request::StormsClear { id }))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(cleared, Response::Cleared { found: true });
        let p = path.clone();
        let listed = tokio::task::spawn_blocking(move || request(&p, &Request::StormsList))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(listed, Response::Storms { storms: vec![] });
        server.abort();
        let _ = server.await;
    }
}
