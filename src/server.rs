// SPDX-License-Identifier: GPL-3.0-or-later
//! The daemon's serving loop: shared configuration, reloads, in-flight accounting and
//! graceful shutdown around indymilter.

use crate::admin_socket;
use crate::clock::SystemClock;
use crate::config::StateSettings;
use crate::config::{self, Config, ConfigError};
use crate::directory::ldap::Snapshots;
use crate::directory::{Directory, DirectoryError, DriftMode};
use crate::milter::{self, listener::MilterListener, listener::StoppableListener};
use crate::notify::{self, AlertReceiver, AlertSender};
use crate::quarantine::Store;
use crate::refresher::Refresher;
use crate::state::{Failover, Guard, MemoryBackend, RedisBackend, StateError};
use arc_swap::ArcSwap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, info, warn};

/// How often idle storm, rate and breaker state is dropped.
const STATE_EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A reload request; the answer says whether the new configuration was taken.
pub type ReloadRequest = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// A reload that was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings the file changed that need a restart: their running values stay in
    /// force (see [`Config::keep_restart_only`]).
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload was refused; the previous configuration and directory stay in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A directory source could not be loaded.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The loader task failed.
    #[error("reload task failed: {0}")]
    Task(String),
}

/// A configuration with the directory loaded for it; swapped as one on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration.
    pub config: Config,
    /// Lists and aliases, expanded.
    pub directory: Directory,
}

impl Runtime {
    /// Loads the directory of a configuration with the given LDAP snapshots (blocking)
    /// and logs what it found.
    pub fn load(config: Config, ldap: &Snapshots) -> Result<Runtime, DirectoryError> {
        let directory = Directory::load(&config, DriftMode::Record, ldap)?;
        directory.log_report();
        Ok(Runtime { config, directory })
    }
}

/// State shared by all milter connections.
pub struct Shared {
    /// Configuration and directory in force; each message takes a snapshot at MAIL.
    pub runtime: ArcSwap<Runtime>,
    /// Messages between MAIL and their reply.
    pub inflight: Arc<Inflight>,
    /// Where held messages are recorded.
    pub store: Arc<Store>,
    /// Admin alerts, sent as digests off the mail path.
    pub alerts: AlertSender,
    /// Storm, rate and breaker state.
    pub guard: Guard,
    /// LDAP snapshots and their refreshes.
    pub refresher: Arc<Refresher>,
    /// Held while a directory is rebuilt and swapped (reload, LDAP refresh), so that
    /// one never overwrites the other's newer result.
    pub rebuild: tokio::sync::Mutex<()>,
}

/// Long-lived services the daemon opens once at start.
pub struct Services {
    /// The quarantine store.
    pub store: Arc<Store>,
    /// Where the mail path drops admin alerts.
    pub alerts: AlertSender,
    /// The other end of `alerts`: when given, `run` sends digests from it as
    /// `[notify]` says (tests keep it to read the alerts themselves).
    pub digests: Option<AlertReceiver>,
    /// Storm, rate and breaker state, with its clock.
    pub guard: Guard,
    /// Where to serve the admin socket (`storms list|clear`), if anywhere.
    pub admin_socket: Option<PathBuf>,
    /// LDAP snapshots (none by default; the daemon starts with the saved ones).
    pub refresher: Arc<Refresher>,
}

impl Services {
    /// The daemon's services: `store`, storm and rate state as `[state]` says on the
    /// system clock, and an alert queue whose digests `run` sends. Redis is connected
    /// lazily: an unreachable server is not an error here (see [`Failover`]).
    pub fn new(store: Arc<Store>, state: &StateSettings) -> Result<Services, StateError> {
        let (alerts, digests) = notify::channel(notify::queue::QUEUE_CAPACITY);
        let clock = Arc::new(SystemClock);
        let guard = match state {
            StateSettings::Memory => {
                Guard::new(Arc::new(MemoryBackend::new()), clock, Some(alerts.clone()))
            }
            StateSettings::Redis {
                url,
                password_file,
                prefix,
                timeout,
                on_failure,
            } => {
                let password = match password_file {
                    Some(file) => Some(config::ldap::read_secret(file).map_err(StateError)?),
                    None => None,
                };
                let remote = Arc::new(RedisBackend::with_password(
                    url.expose(),
                    password.as_deref(),
                    prefix,
                    *timeout,
                )?);
                let local = Arc::new(MemoryBackend::new());
                let failover = Failover::new(
                    remote,
                    local.clone(),
                    &url.redacted(),
                    *on_failure,
                    *timeout,
                    Some(alerts.clone()),
                );
                Guard::new(Arc::new(failover), clock, Some(alerts.clone())).with_relay_state(local)
            }
        };
        Ok(Services {
            store,
            alerts,
            digests: Some(digests),
            guard,
            admin_socket: None,
            refresher: Refresher::new(&Snapshots::default()),
        })
    }
}

/// Counts messages in flight, so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one message as in flight while it lives.
#[derive(Debug)]
pub struct InflightGuard(Arc<Inflight>);

impl Inflight {
    /// Counts a new message.
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InflightGuard(self.clone())
    }

    /// Messages in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until no message is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Serves the milter until `shutdown` completes, then stops accepting connections,
/// waits up to `[milter] shutdown_timeout` for messages in flight, and returns.
///
/// Reload requests re-read `config.file`; an invalid file is logged and the old
/// configuration stays in force.
pub async fn run(
    listener: MilterListener,
    runtime: Runtime,
    services: Services,
    mut reloads: mpsc::Receiver<ReloadRequest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = &runtime.config;
    let milter_config = indymilter::Config {
        max_connections: config.max_connections,
        actions: milter::ACTIONS,
        connection_timeout: config.connection_timeout,
    };
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        inflight: Arc::new(Inflight::default()),
        store: services.store,
        alerts: services.alerts,
        guard: services.guard,
        refresher: services.refresher,
        rebuild: tokio::sync::Mutex::new(()),
    });
    let admin = match &services.admin_socket {
        Some(path) => match admin_socket::bind(path).await {
            Ok((listener, file)) => {
                info!(socket = %path.display(), "admin socket ready");
                Some((
                    file,
                    tokio::spawn(admin_socket::serve(
                        listener,
                        admin_socket::Handlers {
                            guard: shared.guard.clone(),
                            refresh: Some(shared.refresher.requests()),
                        },
                    )),
                ))
            }
            Err(e) => {
                error!(
                    "cannot serve the admin socket {}: {e}; mail flows, but `storms` commands will not reach this daemon",
                    path.display()
                );
                None
            }
        },
        None => None,
    };
    if let StateSettings::Redis {
        url,
        prefix,
        timeout,
        on_failure,
        ..
    } = &shared.runtime.load().config.state
    {
        info!(
            url = %url,
            prefix,
            timeout = %humantime::format_duration(*timeout),
            on_failure = on_failure.as_str(),
            "storm and rate state shared through redis"
        );
        if shared.guard.backend().ping().await.is_ok() {
            info!("redis answers");
        }
    }
    let expiring = shared.guard.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATE_EXPIRY_EVERY);
        loop {
            tick.tick().await;
            match expiring.backend().expire(expiring.now()).await {
                Ok(keys) => tracing::debug!(keys, "state expired"),
                Err(e) => warn!("state expiry failed: {e}"),
            }
        }
    });
    if let Some(digests) = services.digests {
        let weak = Arc::downgrade(&shared);
        tokio::spawn(notify::run_digests(digests, move || {
            weak.upgrade()
                .map(|s| s.runtime.load().config.notify.clone())
        }));
    }

    let refresher = tokio::spawn(shared.refresher.clone().run(shared.clone()));
    let reload_shared = shared.clone();
    let reloader = tokio::spawn(async move {
        while let Some(ack) = reloads.recv().await {
            let rebuilding = reload_shared.rebuild.lock().await;
            let current = reload_shared.runtime.load_full();
            let running = current.clone();
            let snapshots = reload_shared.refresher.snapshots();
            let result = match tokio::task::spawn_blocking(move || {
                load_runtime(&running.config, &snapshots)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => Err(ReloadError::Task(e.to_string())),
            };
            let answer = match result {
                Ok((new, restart_needed)) => {
                    for key in &restart_needed {
                        warn!(
                            "parameter \"{key}\" changed, restart needed for it to take effect; the running value stays in force"
                        );
                    }
                    reload_shared.runtime.store(Arc::new(new));
                    reload_shared.refresher.config_changed();
                    info!(file = %current.config.file.display(), "configuration reloaded");
                    Ok(Reloaded { restart_needed })
                }
                Err(e) => {
                    error!("configuration not reloaded, keeping the old one: {e}");
                    Err(e)
                }
            };
            drop(rebuilding);
            let _ = ack.send(answer);
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_listen = stop_rx.clone();
    let listener = StoppableListener::new(listener, async move {
        let _ = stop_listen.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let drain_shared = shared.clone();
    let mut stop_drain = stop_rx;
    let drained = async move {
        let _ = stop_drain.wait_for(|s| *s).await;
        let inflight = &drain_shared.inflight;
        let timeout = drain_shared.runtime.load().config.shutdown_timeout;
        info!(
            in_flight = inflight.count(),
            "shutting down: no new connections, finishing messages in flight"
        );
        if tokio::time::timeout(timeout, inflight.wait_idle())
            .await
            .is_err()
        {
            warn!(
                in_flight = inflight.count(),
                "shutdown timeout reached; Postfix tempfails the messages still in flight"
            );
        }
    };

    let callbacks = milter::make_callbacks(shared.clone());
    let result = indymilter::run(listener, callbacks, milter_config, drained).await;
    reloader.abort();
    refresher.abort();
    if let Some((file, task)) = admin {
        task.abort();
        drop(file);
    }
    result
}

/// Reads the running configuration's file again, keeps the running values of the
/// restart-only settings (before the directory records list sizes in the state
/// directory), and loads the directory for it.
fn load_runtime(
    running: &Config,
    ldap: &Snapshots,
) -> Result<(Runtime, Vec<&'static str>), ReloadError> {
    let mut config = config::load(&running.file)?;
    let restart_needed = running.keep_restart_only(&mut config);
    config.postfix.log_delimiter();
    Ok((Runtime::load(config, ldap)?, restart_needed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wait_idle_returns_when_last_guard_drops() {
        let inflight = Arc::new(Inflight::default());
        let a = inflight.enter();
        let b = inflight.enter();
        assert_eq!(inflight.count(), 2);
        let waiter = tokio::spawn({
            let inflight = inflight.clone();
            async move { inflight.wait_idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("wait_idle returns once idle")
            .unwrap();
        assert_eq!(inflight.count(), 0);
    }
}
