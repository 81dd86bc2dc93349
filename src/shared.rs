// SPDX-License-Identifier: GPL-3.0-or-later
//! What the parts of the running daemon share: the generation in force (configuration
//! and directory), messages in flight, the quarantine store, the alert queue and the
//! storm and rate state. The milter reads it; only the generation owner
//! (`daemon::generation`) replaces the generation. This module sits below the daemon,
//! the milter, the LDAP refresher and the control socket, and imports none of them.

use crate::config::Config;
use crate::directory::ldap::Snapshots;
use crate::directory::{Directory, DirectoryError, DriftMode};
use crate::metrics::Metrics;
use crate::notify::AlertSender;
use crate::quarantine::Store;
use crate::state::Guard;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;
use tokio::sync::Notify;

/// A configuration with the directory loaded for it: one generation replaces the
/// previous one as a whole (reload, LDAP refresh), and each message keeps the one it
/// started under. Named so to be told apart from tokio's `Runtime`.
#[derive(Debug)]
pub struct Generation {
    /// The configuration.
    pub config: Config,
    /// Lists and aliases, expanded.
    pub directory: Directory,
}

impl Generation {
    /// Loads the directory of a configuration with the given LDAP snapshots (blocking)
    /// and logs what it found.
    pub fn load(config: Config, ldap: &Snapshots) -> Result<Generation, DirectoryError> {
        let directory = Directory::load(&config, DriftMode::Record, ldap)?.record_drift();
        directory.log_report();
        Ok(Generation { config, directory })
    }
}

/// State shared by all milter connections and the daemon's tasks.
pub struct Shared {
    /// The generation in force; each message takes it at MAIL. Written only through
    /// [`Shared::replace`], by the generation owner.
    live: ArcSwap<Generation>,
    /// Messages between MAIL and their reply.
    pub inflight: Arc<Inflight>,
    /// Where held messages are recorded.
    pub store: Arc<Store>,
    /// Admin alerts, sent as digests off the mail path.
    pub alerts: AlertSender,
    /// Storm, rate and breaker state, with the daemon's clock.
    pub guard: Guard,
    /// What `/metrics` and `fanout-milter stats` show.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// Shared state starting with `generation`; `guard`'s clock is the daemon's clock.
    pub fn new(
        generation: Generation,
        store: Arc<Store>,
        alerts: AlertSender,
        guard: Guard,
    ) -> Shared {
        let shared = Shared {
            live: ArcSwap::from_pointee(generation),
            inflight: Arc::new(Inflight::default()),
            store,
            alerts,
            guard,
            metrics: Arc::new(Metrics::new()),
        };
        shared.record_directory(&shared.current());
        shared
    }

    /// Records into `metrics` (the daemon's, shared with the state backend) instead of
    /// a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Shared {
        self.metrics = metrics;
        self.record_directory(&self.current());
        self
    }

    /// Tells the metrics what each directory source of `generation` gave.
    fn record_directory(&self, generation: &Generation) {
        let now = self.now();
        let tallies = &generation.directory.report.tallies;
        let names: Vec<&str> = tallies.iter().map(|t| t.name.as_str()).collect();
        self.metrics.directory_sources(&names);
        for t in tallies {
            self.metrics.directory_source(&t.name, t.interval);
            let at = t.taken_at.map_or(now, |secs| {
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
            });
            self.metrics
                .directory_loaded(&t.name, at, t.entries, t.lists, t.unknown);
        }
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.live.load_full()
    }

    /// The time now, on the daemon's clock (a manual one in tests).
    pub fn now(&self) -> SystemTime {
        self.guard.now()
    }

    /// Puts `generation` in force; for the generation owner alone.
    pub(crate) fn replace(&self, generation: Generation) {
        self.record_directory(&generation);
        self.live.store(Arc::new(generation));
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
