// SPDX-License-Identifier: GPL-3.0-or-later
//! The daemon's side of the control socket ([`crate::control`] has the protocol): storm
//! state, the emergency brake and LDAP refreshes answered for `storms`, `brake` and
//! `directory` commands.

use super::ldap_refresh::RefreshRequest;
use crate::brake;
use crate::control::{DEADLINE, MAX_REQUEST, REFRESH_DEADLINE, Request, Response};
use crate::quarantine::QuarantineIndex;
use crate::state::Guard;
use crate::unix_socket::{self, SocketFile};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tracing::{info, warn};

/// What the socket's requests act on.
#[derive(Clone)]
pub struct Handlers {
    /// Storm state.
    pub guard: Guard,
    /// The LDAP refresher's request queue, when the daemon has one.
    pub refresh: Option<tokio::sync::mpsc::Sender<RefreshRequest>>,
    /// Where brake events are recorded.
    pub events: Option<Arc<dyn QuarantineIndex>>,
    /// The metrics, for `stats`.
    pub stats: Option<crate::metrics::serve::Exporter>,
}

/// Binds the socket at `path`, mode 0600 (see [`unix_socket::bind`]).
pub async fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketFile)> {
    unix_socket::bind(path, 0o600).await
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
        Request::Stats => {
            return match &handlers.stats {
                Some(exporter) => Response::Stats {
                    text: exporter.render(false).await,
                },
                None => Response::Error {
                    message: "this daemon keeps no metrics".into(),
                },
            };
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
        Request::BrakeStatus => Ok(Response::Brake {
            replaced: None,
            brake: guard.brake(),
        }),
        Request::BrakeOn {
            min_audience,
            for_secs,
            by,
            comment,
        } => {
            let hold_for = for_secs.map(Duration::from_secs);
            return match brake::pull(
                guard,
                handlers.events.clone(),
                *min_audience,
                hold_for,
                by,
                comment,
            )
            .await
            {
                Ok(pulled) => Response::Brake {
                    brake: Some(pulled.brake),
                    replaced: pulled.replaced,
                },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            };
        }
        Request::BrakeOff { by, comment } => {
            return match brake::release(guard, handlers.events.clone(), by, comment).await {
                Ok(()) => Response::Brake {
                    brake: None,
                    replaced: None,
                },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            };
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::control::request;
    use crate::state::{MemoryBackend, StateBackend, Storm};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::time::SystemTime;

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
        let (listener, _file) = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            bind(&path).await.is_err(),
            "a socket in use is not taken over"
        );
        let server = tokio::spawn(serve(
            listener,
            Handlers {
                guard,
                refresh: None,
                events: None,
                stats: None,
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
