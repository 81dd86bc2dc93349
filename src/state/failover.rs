// SPDX-License-Identifier: GPL-3.0-or-later
//! A shared backend (Redis) with this relay's own in-memory state behind it.
//!
//! While the shared backend answers, every change is also written to the local state,
//! so that this relay knows its own recent history (and every storm it has seen) if
//! the shared one fails. When an operation fails or overruns its time, the backend is
//! marked down, admins are told (log and alert), and from then on operations go
//! straight to the local state (`on_failure = "local"`) or fail at once, so that the
//! message is tempfailed (`"tempfail"`); no message waits on a dead server more than
//! once. A probe task pings the shared backend with backoff (0.1 s doubling to 5 s);
//! when it answers, the storms this relay tripped meanwhile are copied to it and shared
//! counting resumes.
//!
//! A message's state operations share one deadline (`[state] timeout` from the first
//! one, see [`with_deadline`]), so a slow server cannot hold a message longer than that.

use super::algo::{Limit, Take};
use super::plan::{Outcome, Plan, TakeStep, ThreadOutcome};
use super::{Brake, MemoryBackend, StateBackend, StateError, Storm, ThreadCounts};
use crate::clock::Clock;
use crate::config::OnFailure;
use crate::notify::{Alert, AlertKind, AlertSender};
use async_trait::async_trait;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::{error, warn};

/// First wait of the probe after a failure.
const PROBE_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two probes.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// How often a lasting outage is logged again.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(60);

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with every state operation in it bounded by `deadline` (and by each
/// backend's own timeout).
pub async fn with_deadline<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// The shared backend with local state behind it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Failover {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    remote: Arc<dyn StateBackend>,
    local: Arc<MemoryBackend>,
    /// Where the shared state lives, for logs (no password).
    name: String,
    on_failure: OnFailure,
    timeout: Duration,
    up: AtomicBool,
    down_since: Mutex<Option<(SystemTime, String)>>,
    alerts: Option<AlertSender>,
    /// The daemon's clock: outages are timed and storms judged on it.
    clock: Arc<dyn Clock>,
    /// Where round trips, errors and outages are counted.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Failover {
    /// `remote` (named `name` in logs), falling back to `local`, each operation
    /// bounded by `timeout`; outages and recoveries are alerted through `alerts`, and
    /// timed on `clock`.
    pub fn new(
        remote: Arc<dyn StateBackend>,
        local: Arc<MemoryBackend>,
        name: &str,
        on_failure: OnFailure,
        timeout: Duration,
        alerts: Option<AlertSender>,
        clock: Arc<dyn Clock>,
    ) -> Failover {
        Failover {
            inner: Arc::new(Inner {
                remote,
                local,
                name: name.to_owned(),
                on_failure,
                timeout,
                up: AtomicBool::new(true),
                down_since: Mutex::new(None),
                alerts,
                clock,
                metrics: None,
            }),
        }
    }

    /// Counts round trips, failed operations and outages in `metrics` (before the
    /// failover is first cloned; later it changes nothing).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Failover {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(metrics);
        }
        self
    }

    /// True while the shared backend is in use.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::SeqCst)
    }

    /// The local state behind it.
    pub fn local(&self) -> &Arc<MemoryBackend> {
        &self.inner.local
    }

    /// Runs `remote` if the shared backend is up, within the deadline; `None` when it
    /// is down or has just failed (and is now marked down).
    async fn shared<T>(
        &self,
        op: &'static str,
        remote: impl Future<Output = Result<T, StateError>>,
    ) -> Option<T> {
        if !self.is_up() {
            return None;
        }
        let limit = DEADLINE
            .try_with(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(self.inner.timeout)
            .min(self.inner.timeout);
        let started = Instant::now();
        let answer = tokio::time::timeout(limit, remote).await;
        if let Some(m) = &self.inner.metrics {
            match &answer {
                Ok(Ok(_)) => m.state_round_trip(started.elapsed()),
                _ => m.state_error(),
            }
        }
        match answer {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.inner.went_down(op, e.0);
                None
            }
            Err(_) => {
                self.inner
                    .went_down(op, format!("no answer within {}", fmt_ms(limit)));
                None
            }
        }
    }

    /// The answer when the shared backend cannot give one.
    async fn fallback<T>(
        &self,
        local: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        match self.inner.on_failure {
            OnFailure::Local => local.await,
            OnFailure::Tempfail => Err(StateError(format!(
                "shared state ({}) unreachable and [state] on_failure = \"tempfail\"",
                self.inner.name
            ))),
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

impl Inner {
    fn went_down(self: &Arc<Inner>, op: &str, why: String) {
        if !self.up.swap(false, Ordering::SeqCst) {
            return;
        }
        if let Some(m) = &self.metrics {
            m.set_failover(true);
        }
        let now = self.clock.now();
        *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, why.clone()));
        let consequence = match self.on_failure {
            OnFailure::Local => {
                "carrying on with this relay's own state: storms and rates are counted per relay until it is back"
            }
            OnFailure::Tempfail => {
                "messages that need storm or rate state are tempfailed until it is back"
            }
        };
        error!(
            backend = %self.name,
            op,
            on_failure = self.on_failure.as_str(),
            "shared state unreachable ({why}): {consequence}"
        );
        self.alert(
            AlertKind::StateDown,
            now,
            format!(
                "shared state {} unreachable ({why}); {consequence}",
                self.name
            ),
        );
        let inner = self.clone();
        tokio::spawn(async move { inner.probe().await });
    }

    async fn probe(self: Arc<Inner>) {
        let mut delay = PROBE_FIRST;
        let mut logged = Instant::now();
        loop {
            tokio::time::sleep(delay).await;
            let answer = tokio::time::timeout(self.timeout, self.remote.ping()).await;
            let why = match answer {
                Ok(Ok(())) => break,
                Ok(Err(e)) => e.0,
                Err(_) => format!("no answer within {}", fmt_ms(self.timeout)),
            };
            delay = (delay * 2).min(PROBE_MAX);
            if logged.elapsed() >= STILL_DOWN_EVERY {
                logged = Instant::now();
                error!(
                    backend = %self.name,
                    on_failure = self.on_failure.as_str(),
                    "shared state still unreachable ({why})"
                );
            }
        }
        let copied = self.resync().await;
        let since = self
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let now = self.clock.now();
        let outage = since
            .and_then(|(t, _)| now.duration_since(t).ok())
            .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
            .unwrap_or_default();
        warn!(
            backend = %self.name,
            outage = %outage,
            storms_copied = copied,
            "shared state reachable again: shared counting resumes"
        );
        self.alert(
            AlertKind::StateBack,
            now,
            format!(
                "shared state {} reachable again after {outage}; {copied} storm(s) tripped meanwhile copied to it",
                self.name
            ),
        );
        self.up.store(true, Ordering::SeqCst);
        if let Some(m) = &self.metrics {
            m.set_failover(false);
        }
    }

    /// Copies the storms active on this relay to the shared backend (those tripped
    /// while it was down); returns how many it did not have.
    async fn resync(&self) -> usize {
        let now = self.clock.now();
        let storms = self.local.storm_list(now).await.unwrap_or_default();
        let mut copied = 0;
        for s in storms {
            match tokio::time::timeout(self.timeout, self.remote.storm_start(&s, now)).await {
                Ok(Ok(true)) => copied += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(storm = %s.id, "storm not copied to the shared state: {e}"),
                Err(_) => warn!(storm = %s.id, "storm not copied to the shared state: no answer"),
            }
        }
        copied
    }

    fn alert(&self, kind: AlertKind, at: SystemTime, reason: String) {
        if let Some(a) = &self.alerts {
            a.send(Alert {
                kind,
                at,
                queue_id: None,
                sender: String::new(),
                subject: String::new(),
                audience: 0,
                reason,
                held_for: None,
            });
        }
    }
}

#[async_trait]
impl StateBackend for Failover {
    async fn take(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<Take, StateError> {
        let local = &self.inner.local;
        match self
            .shared("take", self.inner.remote.take(key, cost, limit, now))
            .await
        {
            Some(take) => {
                if take.allowed {
                    local.take(key, cost, limit, now).await?;
                }
                Ok(take)
            }
            None => self.fallback(local.take(key, cost, limit, now)).await,
        }
    }

    async fn give_back(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<(), StateError> {
        let local = &self.inner.local;
        let shared = self
            .shared(
                "give_back",
                self.inner.remote.give_back(key, cost, limit, now),
            )
            .await;
        let mine = local.give_back(key, cost, limit, now).await;
        match shared {
            Some(()) => mine,
            None => self.fallback(async { mine }).await,
        }
    }

    async fn window_add(
        &self,
        key: &str,
        amount: u64,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError> {
        let local = &self.inner.local;
        let shared = self
            .shared(
                "window_add",
                self.inner.remote.window_add(key, amount, width, now),
            )
            .await;
        let mine = local.window_add(key, amount, width, now).await;
        match shared {
            Some(total) => Ok(total),
            None => self.fallback(async { mine }).await,
        }
    }

    async fn window_total(
        &self,
        key: &str,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError> {
        match self
            .shared(
                "window_total",
                self.inner.remote.window_total(key, width, now),
            )
            .await
        {
            Some(total) => Ok(total),
            None => {
                self.fallback(self.inner.local.window_total(key, width, now))
                    .await
            }
        }
    }

    async fn thread_note(
        &self,
        key: &str,
        sender: &str,
        window: Duration,
        now: SystemTime,
    ) -> Result<ThreadCounts, StateError> {
        let local = &self.inner.local;
        let shared = self
            .shared(
                "thread_note",
                self.inner.remote.thread_note(key, sender, window, now),
            )
            .await;
        let mine = local.thread_note(key, sender, window, now).await;
        match shared {
            Some(counts) => Ok(counts),
            None => self.fallback(async { mine }).await,
        }
    }

    async fn storm_start(&self, storm: &Storm, now: SystemTime) -> Result<bool, StateError> {
        let local = &self.inner.local;
        let shared = self
            .shared("storm_start", self.inner.remote.storm_start(storm, now))
            .await;
        let mine = local.storm_start(storm, now).await;
        match shared {
            Some(started) => Ok(started),
            None => self.fallback(async { mine }).await,
        }
    }

    async fn storm_hit(&self, thread: &str, now: SystemTime) -> Result<Option<Storm>, StateError> {
        let local = &self.inner.local;
        match self
            .shared("storm_hit", self.inner.remote.storm_hit(thread, now))
            .await
        {
            Some(Some(storm)) => {
                local.storm_start(&storm, now).await?;
                Ok(Some(storm))
            }
            Some(None) => Ok(None),
            None => self.fallback(local.storm_hit(thread, now)).await,
        }
    }

    async fn storm_list(&self, now: SystemTime) -> Result<Vec<Storm>, StateError> {
        match self
            .shared("storm_list", self.inner.remote.storm_list(now))
            .await
        {
            Some(list) => Ok(list),
            None => self.fallback(self.inner.local.storm_list(now)).await,
        }
    }

    async fn storm_clear(&self, id: &str) -> Result<bool, StateError> {
        let shared = self
            .shared("storm_clear", self.inner.remote.storm_clear(id))
            .await;
        let mine = self.inner.local.storm_clear(id).await;
        match shared {
            Some(cleared) => Ok(cleared || mine.unwrap_or(false)),
            None => self.fallback(async { mine }).await,
        }
    }

    /// The shared brake, mirrored locally; while the shared backend is down, the last
    /// brake seen (whatever `on_failure` says: a brake must not let go because Redis
    /// went away).
    async fn brake_get(&self, now: SystemTime) -> Result<Option<Brake>, StateError> {
        let local = &self.inner.local;
        match self
            .shared("brake_get", self.inner.remote.brake_get(now))
            .await
        {
            Some(brake) => {
                local.brake_set(brake.as_ref(), now).await?;
                Ok(brake)
            }
            None => local.brake_get(now).await,
        }
    }

    /// Pulled or released on the shared backend, which must answer: a brake that only
    /// this relay knows of would leave the rest of the fleet unbraked.
    async fn brake_set(&self, brake: Option<&Brake>, now: SystemTime) -> Result<(), StateError> {
        match self
            .shared("brake_set", self.inner.remote.brake_set(brake, now))
            .await
        {
            Some(()) => self.inner.local.brake_set(brake, now).await,
            None => Err(StateError(format!(
                "shared state ({}) unreachable: the brake was not changed on the fleet",
                self.inner.name
            ))),
        }
    }

    async fn flag(&self, key: &str, ttl: Duration, now: SystemTime) -> Result<bool, StateError> {
        let local = &self.inner.local;
        let shared = self
            .shared("flag", self.inner.remote.flag(key, ttl, now))
            .await;
        let mine = local.flag(key, ttl, now).await;
        match shared {
            Some(set) => Ok(set),
            None => self.fallback(async { mine }).await,
        }
    }

    /// The shared backend's answer to the whole plan (one round trip), written through
    /// to the local state as the separate operations would be: a storm that stops the
    /// message, the count in its thread and the storm it trips, the budgets taken.
    async fn observe(&self, plan: &Plan, now: SystemTime) -> Result<Outcome, StateError> {
        let local = &self.inner.local;
        let Some(outcome) = self
            .shared("observe", self.inner.remote.observe(plan, now))
            .await
        else {
            return self.fallback(local.observe(plan, now)).await;
        };
        match (&plan.thread, &outcome.thread) {
            (_, Some(ThreadOutcome::Stopped(storm))) => {
                local.storm_start(storm, now).await?;
            }
            (Some(step), Some(ThreadOutcome::Counted { counts, .. })) => {
                local
                    .thread_note(step.thread(), &step.sender, step.window, now)
                    .await?;
                if step.trips(*counts) {
                    local.storm_start(&step.storm_with(*counts), now).await?;
                }
            }
            _ => {}
        }
        for (t, take) in plan.takes.iter().zip(&outcome.takes) {
            if take.allowed {
                local.take(&t.key, t.cost, t.limit, now).await?;
            }
        }
        Ok(outcome)
    }

    async fn give_back_all(&self, taken: &[TakeStep], now: SystemTime) -> Result<(), StateError> {
        let shared = self
            .shared("give_back", self.inner.remote.give_back_all(taken, now))
            .await;
        let mine = self.inner.local.give_back_all(taken, now).await;
        match shared {
            Some(()) => mine,
            None => self.fallback(async { mine }).await,
        }
    }

    /// Expires the local state, and prunes the shared one's index when it is up;
    /// returns the entries held locally.
    async fn expire(&self, now: SystemTime) -> Result<usize, StateError> {
        self.shared("expire", self.inner.remote.expire(now)).await;
        self.inner.local.expire(now).await
    }

    /// Pings the shared backend, marking it down when it does not answer.
    async fn ping(&self) -> Result<(), StateError> {
        match self.shared("ping", self.inner.remote.ping()).await {
            Some(()) => Ok(()),
            None => Err(StateError(format!(
                "shared state ({}) unreachable",
                self.inner.name
            ))),
        }
    }

    fn budget(&self) -> Option<Duration> {
        Some(self.inner.timeout)
    }
}
