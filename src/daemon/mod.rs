// SPDX-License-Identifier: GPL-3.0-or-later
//! The daemon: its services are built in one place ([`Builder`], used by `run`, the
//! tests and, through the binary, the benchmarks), then [`Daemon::run`] serves the milter
//! with reloads, LDAP refreshes, the control socket, state expiry, digests and the
//! review desk around it, and shuts down gracefully.
//!
//! Module graph: `crate::shared` (the generation in force, messages in flight) sits
//! below the daemon and the milter and imports neither; [`generation`] owns the swaps;
//! the milter reads `shared`; [`ldap_refresh`] sends new snapshots to the owner;
//! [`control`] serves the control socket; this module ties them together.

pub(crate) mod control;
pub(crate) mod generation;
pub(crate) mod ldap_refresh;
pub mod notifier;
pub(crate) mod scrape;

pub use crate::shared::{Generation, Shared};
pub use generation::{ReloadError, ReloadRequest, Reloaded};

use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, StateSettings};
use crate::desk::{self, Desk, DeskListener};
use crate::directory::DirectoryError;
use crate::directory::ldap::Snapshots;
use crate::metrics::Metrics;
use crate::metrics::serve::MetricsListener;
use crate::milter::{
    self,
    listener::{BindError, MilterListener, StoppableListener},
};
use crate::notify::{self, AlertReceiver, AlertSender};
use crate::quarantine::{QuarantineIndex, Store, StoreError};
use crate::state::{Failover, Guard, MemoryBackend, RedisBackend, StateError};
use generation::{Inbox, Owner};
use ldap_refresh::Refresher;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How often idle storm, rate and breaker state is dropped.
const STATE_EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A directory source could not be loaded.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The quarantine store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The storm and rate state could not be set up.
    #[error(transparent)]
    State(#[from] StateError),
    /// The milter socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A loader task failed.
    #[error("{0}")]
    Task(String),
    /// The metrics endpoint could not be bound.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The review desk could not be set up (its key or its socket).
    #[error("review desk: {0}")]
    Desk(String),
}

/// Builds the daemon from a configuration: LDAP snapshots (saved or first taken), the
/// directory, the quarantine store, storm and rate state as `[state]` says, the alert
/// queue, and the milter socket. The defaults are the production ones; tests change
/// the clock, the store, the control socket and who reads the alerts.
pub struct Builder {
    config: Config,
    clock: Arc<dyn Clock>,
    store: Option<Arc<Store>>,
    admin_socket: Option<PathBuf>,
    keep_alerts: bool,
}

impl Builder {
    /// The production daemon for `config`: the system clock, the store in `state_dir`,
    /// the control socket at `[state] admin_socket`, and digests sent as `[notify]` says.
    pub fn new(config: Config) -> Builder {
        Builder {
            admin_socket: Some(config.admin_socket.clone()),
            config,
            clock: Arc::new(SystemClock),
            store: None,
            keep_alerts: false,
        }
    }

    /// Reads time from `clock` (a manual clock moves storm and rate windows in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Builder {
        self.clock = clock;
        self
    }

    /// Uses `store` instead of opening the one in `state_dir` (tests keep one store
    /// each, apart from the default `state_dir` their configurations share).
    pub fn store(mut self, store: Arc<Store>) -> Builder {
        self.store = Some(store);
        self
    }

    /// Serves the control socket at `path`, or nowhere.
    pub fn admin_socket(mut self, path: Option<PathBuf>) -> Builder {
        self.admin_socket = path;
        self
    }

    /// Sends no digests: the caller reads the alerts ([`Daemon::take_alerts`]).
    pub fn keep_alerts(mut self) -> Builder {
        self.keep_alerts = true;
        self
    }

    /// Builds the services and binds the milter socket. Redis is connected lazily: an
    /// unreachable server is not an error here (see [`Failover`]).
    pub async fn start(self) -> Result<Daemon, StartError> {
        let Builder {
            config,
            clock,
            store,
            admin_socket,
            keep_alerts,
        } = self;
        config.postfix.log_delimiter();
        let snapshots = ldap_refresh::initial_snapshots(&config, clock.as_ref()).await;
        let ldap = snapshots.clone();
        let generation =
            match tokio::task::spawn_blocking(move || Generation::load(config, &ldap)).await {
                Ok(loaded) => loaded?,
                Err(e) => return Err(StartError::Task(format!("cannot load the directory: {e}"))),
            };
        let config = &generation.config;
        let store = match store {
            Some(store) => store,
            None => {
                let opening = config.clone();
                let store =
                    match tokio::task::spawn_blocking(move || Store::open_configured(&opening))
                        .await
                    {
                        Ok(opened) => Arc::new(opened?),
                        Err(e) => {
                            return Err(StartError::Task(format!(
                                "cannot open the quarantine store: {e}"
                            )));
                        }
                    };
                info!(
                    store = %store.path().display(),
                    relay = store.relay().unwrap_or("-"),
                    "quarantine store open"
                );
                store
            }
        };
        let metrics = Arc::new(Metrics::new());
        metrics.reloaded(true, clock.now());
        let (alerts, receiver) = notify::channel(notify::queue::QUEUE_CAPACITY);
        let (guard, local) = guard(&config.state, clock.clone(), &alerts, &metrics)?;
        // The brake is kept next to the store: in `state_dir`, or in the directory of
        // a store a test gave.
        if let Some(dir) = store.state_dir() {
            crate::brake::restore(&guard, &local, dir).await;
        }
        let listener = MilterListener::bind(&config.listen, config.socket_mode).await?;
        let metrics_listener = match &config.metrics.listen {
            Some(addr) => Some(
                MetricsListener::bind(addr)
                    .await
                    .map_err(|e| StartError::Metrics(format!("cannot listen on {addr}: {e}")))?,
            ),
            None => None,
        };
        let (owner, inbox) = Owner::new();
        let desk = start_desk(config, &store, &guard, &owner, clock.clone()).await?;
        let (digests, kept) = if keep_alerts {
            (None, Some(receiver))
        } else {
            (Some(receiver), None)
        };
        Ok(Daemon {
            listener,
            shared: Arc::new(
                Shared::new(generation, store, alerts, guard).with_metrics(metrics.clone()),
            ),
            metrics_listener,
            snapshots,
            digests,
            alerts: kept,
            admin_socket,
            desk,
            owner,
            inbox,
        })
    }
}

/// The review desk when `[review] listen` is set: its key (created in `state_dir` when
/// missing) and its bound socket.
async fn start_desk(
    config: &Config,
    store: &Arc<Store>,
    guard: &Guard,
    owner: &Owner,
    clock: Arc<dyn Clock>,
) -> Result<Option<(DeskListener, Arc<Desk>)>, StartError> {
    let Some(addr) = &config.review.listen else {
        return Ok(None);
    };
    if !addr.is_local() {
        warn!(
            listen = %addr,
            "the review desk can be reached from other hosts (allow_remote = true): keep it \
             behind a TLS proxy and a firewall"
        );
    }
    if config.review.digest_actions && !config.review.public_url.starts_with("https://") {
        warn!(
            public_url = %config.review.public_url,
            "digest links (digest_actions = true) point to a desk without https: links and \
             sessions cross the network in clear text"
        );
    }
    let state_dir = config.state_dir.clone();
    let key = match tokio::task::spawn_blocking(move || desk::key(&state_dir)).await {
        Ok(Ok(key)) => key,
        Ok(Err(e)) => return Err(StartError::Desk(format!("cannot use its key: {e}"))),
        Err(e) => return Err(StartError::Task(format!("cannot read the desk key: {e}"))),
    };
    let listener = DeskListener::bind(addr)
        .await
        .map_err(|e| StartError::Desk(format!("cannot listen on {addr}: {e}")))?;
    let index: Arc<dyn QuarantineIndex> = store.clone();
    let desk = Desk::new(
        index,
        config.review.clone(),
        config.quarantine.clone(),
        key,
        clock,
    )
    .with_guard(guard.clone())
    .with_list_sizes(Arc::new(owner.clone()));
    info!(listen = %addr, users = %config.review.users_file.display(), "review desk listening");
    let users = config.review.users_file.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || desk::users::read(&users)).await {
        warn!(
            "review desk: nobody can log in until the users file is usable: {}; create users \
             with `fanout-milter review passwd USER --role ROLE`",
            crate::text::neutralize(&e.to_string())
        );
    }
    Ok(Some((listener, Arc::new(desk))))
}

/// Storm, rate and breaker state as `[state]` says, on `clock`, and the state in
/// memory: all of it, or what the daemon falls back to when Redis is down.
fn guard(
    state: &StateSettings,
    clock: Arc<dyn Clock>,
    alerts: &AlertSender,
    metrics: &Arc<Metrics>,
) -> Result<(Guard, Arc<MemoryBackend>), StateError> {
    Ok(match state {
        StateSettings::Memory => {
            let memory = Arc::new(MemoryBackend::new());
            (
                Guard::new(memory.clone(), clock, Some(alerts.clone()))
                    .with_metrics(metrics.clone()),
                memory,
            )
        }
        StateSettings::Redis {
            url,
            password_file,
            prefix,
            timeout,
            on_failure,
            conn,
        } => {
            let password = match password_file {
                Some(file) => Some(config::ldap::read_secret(file).map_err(StateError)?),
                None => None,
            };
            let remote = Arc::new(RedisBackend::connect(
                url.expose(),
                password.as_deref(),
                conn,
                prefix,
                *timeout,
            )?);
            let local = Arc::new(MemoryBackend::new());
            let name = match &conn.sentinel {
                Some(s) => format!(
                    "Redis Sentinel master {} via {}",
                    crate::text::neutralize(&s.master),
                    s.urls
                        .iter()
                        .map(|u| u.redacted())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => url.redacted(),
            };
            let failover = Failover::new(
                remote,
                local.clone(),
                &name,
                *on_failure,
                *timeout,
                Some(alerts.clone()),
                clock.clone(),
            )
            .with_metrics(metrics.clone());
            (
                Guard::new(Arc::new(failover), clock, Some(alerts.clone()))
                    .with_relay_state(local.clone())
                    .with_metrics(metrics.clone()),
                local,
            )
        }
    })
}

/// A daemon whose services are built and whose milter socket is bound.
pub struct Daemon {
    listener: MilterListener,
    shared: Arc<Shared>,
    /// The snapshots the first generation was built with.
    snapshots: Snapshots,
    /// Alerts to send as digests.
    digests: Option<AlertReceiver>,
    /// Alerts the caller reads.
    alerts: Option<AlertReceiver>,
    admin_socket: Option<PathBuf>,
    /// The review desk, when `[review] listen` is set.
    desk: Option<(DeskListener, Arc<Desk>)>,
    /// The metrics endpoint, when `[metrics] listen` is set.
    metrics_listener: Option<MetricsListener>,
    /// The generation owner's handle (the desk has one) and its queue, served from
    /// [`Daemon::run`].
    owner: Owner,
    inbox: Inbox,
}

impl Daemon {
    /// The review desk's bound TCP address (for tests that bind port 0).
    pub fn desk_addr(&self) -> Option<SocketAddr> {
        self.desk.as_ref().and_then(|(l, _)| l.local_addr())
    }

    /// The metrics endpoint's bound TCP address (for tests that bind port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr())
    }

    /// The bound TCP address (for tests that bind port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr()
    }

    /// The generation in force.
    pub fn generation(&self) -> Arc<Generation> {
        self.shared.current()
    }

    /// The quarantine store.
    pub fn store(&self) -> Arc<Store> {
        self.shared.store.clone()
    }

    /// The alerts, when [`Builder::keep_alerts`] asked for them (once).
    pub fn take_alerts(&mut self) -> Option<AlertReceiver> {
        self.alerts.take()
    }

    /// Serves the milter until `shutdown` completes, then stops accepting connections,
    /// waits up to `[milter] shutdown_timeout` for messages in flight, and returns.
    ///
    /// Reload requests re-read `config.file`; an invalid file is logged and the old
    /// configuration stays in force.
    pub async fn run(
        self,
        reloads: mpsc::Receiver<ReloadRequest>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let Daemon {
            listener,
            shared,
            snapshots,
            digests,
            alerts: _,
            admin_socket,
            desk,
            metrics_listener,
            owner,
            inbox,
        } = self;
        let config = shared.current().config.clone();
        let milter_config = indymilter::Config {
            max_connections: config.max_connections,
            actions: milter::ACTIONS,
            connection_timeout: config.connection_timeout,
        };
        let exporter = scrape::exporter(&shared, config.metrics.token_file.clone());
        let owning = inbox.spawn(shared.clone(), snapshots.clone(), reloads);
        let refresher = Refresher::new(&snapshots, shared.clone(), owner);
        let admin = match &admin_socket {
            Some(path) => match control::bind(path).await {
                Ok((listener, file)) => {
                    info!(socket = %path.display(), "admin socket ready");
                    Some((
                        file,
                        tokio::spawn(control::serve(
                            listener,
                            control::Handlers {
                                guard: shared.guard.clone(),
                                refresh: Some(refresher.requests()),
                                events: Some(shared.store.clone()),
                                stats: Some(exporter.clone()),
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
        } = &config.state
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
        tokio::spawn(crate::brake::keep_fresh(
            shared.guard.clone(),
            shared.store.state_dir().map(Path::to_owned),
        ));
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
        if let Some(digests) = digests {
            let weak = Arc::downgrade(&shared);
            let desk_links = desk.as_ref().map(|(_, d)| Arc::downgrade(d));
            tokio::spawn(notify::run_digests(
                digests,
                move || weak.upgrade().map(|s| s.current().config.notify.clone()),
                move || {
                    desk_links
                        .as_ref()
                        .and_then(|d| d.upgrade())
                        .and_then(|d| d.digest_links())
                },
            ));
        }
        let sender_links = desk.as_ref().map(|(_, d)| Arc::downgrade(d));
        tokio::spawn(notifier::run(Arc::downgrade(&shared), move || {
            sender_links
                .as_ref()
                .and_then(|d| d.upgrade())
                .and_then(|d| d.sender_links())
        }));
        let refreshing = tokio::spawn(refresher.run());

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut stop_listen = stop_rx.clone();
        let listener = StoppableListener::new(listener, async move {
            let _ = stop_listen.wait_for(|s| *s).await;
        });
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });

        let desk = desk.map(|(listener, desk)| {
            let mut stop_desk = stop_rx.clone();
            tokio::spawn(listener.serve(desk, async move {
                let _ = stop_desk.wait_for(|s| *s).await;
            }))
        });

        if let Some(listener) = metrics_listener {
            info!(
                listen = %config.metrics.listen.as_ref().map_or_else(String::new, ToString::to_string),
                token = config.metrics.token_file.is_some(),
                "metrics endpoint listening"
            );
            if let Some(file) = &config.metrics.token_file {
                let path = file.clone();
                let read = tokio::task::spawn_blocking(move || config::ldap::read_secret(&path))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match read {
                    Ok(token) if !token.trim().is_empty() => {}
                    Ok(_) => warn!(
                        "metrics: [metrics] token_file holds no token: every scrape is refused"
                    ),
                    Err(e) => warn!(
                        "metrics: [metrics] token_file cannot be read, every scrape is refused \
                         until it can: {}",
                        crate::text::neutralize(&e)
                    ),
                }
            }
            let mut stop_metrics = stop_rx.clone();
            tokio::spawn(async move {
                // The first scrape then shows the store's totals, not 0 (which
                // Prometheus would read as a counter reset, then the whole history as
                // one increase). Connections wait in the backlog meanwhile; the milter
                // does not wait for it.
                exporter.refresh().await;
                let served = listener
                    .serve(exporter, async move {
                        let _ = stop_metrics.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = served {
                    error!("metrics endpoint stopped: {e}");
                }
            });
        }

        let drain_shared = shared.clone();
        let mut stop_drain = stop_rx;
        let drained = async move {
            let _ = stop_drain.wait_for(|s| *s).await;
            let inflight = &drain_shared.inflight;
            let timeout = drain_shared.current().config.shutdown_timeout;
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
        owning.abort();
        refreshing.abort();
        if let Some((file, task)) = admin {
            task.abort();
            drop(file);
        }
        if let Some(mut task) = desk {
            match tokio::time::timeout(config.shutdown_timeout, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => error!("review desk stopped: {e}"),
                Ok(Err(e)) => error!("review desk task failed: {e}"),
                Err(_) => {
                    warn!("review desk connections still open at the shutdown timeout; closed");
                    task.abort();
                }
            }
        }
        result
    }
}
