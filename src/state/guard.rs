// SPDX-License-Identifier: GPL-3.0-or-later
//! The adapter between the pure stateful rules and the state backend: it asks the
//! backend what a message's [`StatePlan`] needs before the verdict, and settles the
//! books after it (budgets given back for mail that did not leave, the relay's rate
//! counted for mail that did). Storm and breaker trips are logged and alerted here.

use super::failover::with_deadline;
use super::plan::{Outcome, Plan, TakeStep, ThreadOutcome, ThreadStep};
use super::{Brake, Limit, StateBackend, StateError, Storm};
use crate::clock::Clock;
use crate::clock::epoch_secs;
use crate::notify::{Alert, AlertKind, AlertSender};
use crate::policy::stateful::{BreakerFact, RateFact, StormFact, StormPolicy, ThreadAsk};
use crate::policy::{Policy, StateFacts, StatePlan, storm_trips};
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::warn;

/// The relay-wide rate's state key.
const RELAY_KEY: &str = "relay:recipients";
/// The breaker's alert flag; one alert per this long while it stays tripped.
const BREAKER_FLAG: &str = "breaker:alerted";
/// How often a tripped breaker is alerted again.
const BREAKER_ALERT_EVERY: Duration = Duration::from_secs(15 * 60);
/// The breaker's window.
const MINUTE: Duration = Duration::from_secs(60);

/// Asks the state backend for the stateful rules.
#[derive(Clone, Debug)]
pub struct Guard {
    backend: Arc<dyn StateBackend>,
    /// The relay-wide breaker's state: always this relay's own (the breaker guards
    /// what leaves this relay, also in a fleet).
    relay: Arc<dyn StateBackend>,
    clock: Arc<dyn Clock>,
    alerts: Option<AlertSender>,
    /// The emergency brake as last read from the backend ([`Guard::refresh_brake`]),
    /// shared by every clone: each message reads it without a round trip.
    brake: Arc<ArcSwapOption<Brake>>,
    /// Where storm trips are counted.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What [`Guard::observe`] found, to settle after the verdict.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// For the policy core.
    pub facts: StateFacts,
    plan: StatePlan,
    /// Budgets charged, given back when the message does not leave.
    taken: Vec<TakeStep>,
    at: Option<SystemTime>,
}

impl Guard {
    /// A guard over `backend`, reading `clock`, alerting through `alerts`.
    pub fn new(
        backend: Arc<dyn StateBackend>,
        clock: Arc<dyn Clock>,
        alerts: Option<AlertSender>,
    ) -> Guard {
        Guard {
            relay: backend.clone(),
            backend,
            clock,
            alerts,
            brake: Arc::default(),
            metrics: None,
        }
    }

    /// Counts storm trips in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Guard {
        self.metrics = Some(metrics);
        self
    }

    /// True when the relay-wide breaker (`max_per_minute`; 0 = off) is tripped now:
    /// more recipients left this relay in the last minute.
    pub async fn breaker_open(&self, max_per_minute: u64) -> Result<bool, StateError> {
        if max_per_minute == 0 {
            return Ok(false);
        }
        let now = self.clock.now();
        Ok(self.relay.window_total(RELAY_KEY, MINUTE, now).await? > max_per_minute)
    }

    /// Keeps the relay-wide breaker's state in `relay` (this relay's memory) when
    /// the backend is shared by a fleet.
    pub fn with_relay_state(mut self, relay: Arc<dyn StateBackend>) -> Guard {
        self.relay = relay;
        self
    }

    /// The backend (for the admin socket and the expiry task).
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.backend
    }

    /// The clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The emergency brake, when it is on now (as last read from the backend).
    pub fn brake(&self) -> Option<Brake> {
        let now = epoch_secs(self.clock.now());
        self.brake
            .load_full()
            .filter(|b| b.active(now))
            .map(|b| (*b).clone())
    }

    /// Reads the brake from the backend (the daemon does this twice a second, so that a
    /// brake pulled on one relay holds on all within a second). When the backend does
    /// not answer, the brake last read stays as it is.
    pub async fn refresh_brake(&self) -> Result<Option<Brake>, StateError> {
        let read = self.backend.brake_get(self.clock.now());
        let brake = match self.backend.budget() {
            Some(budget) => with_deadline(Instant::now() + budget, read).await?,
            None => read.await?,
        };
        self.brake.store(brake.clone().map(Arc::new));
        Ok(brake)
    }

    /// Takes `brake` as the one last read, without asking the backend (at start, the
    /// brake kept in the state directory: see `crate::brake::restore`).
    pub fn assume_brake(&self, brake: Option<Brake>) {
        self.brake.store(brake.map(|b| Arc::new(b.kept())));
    }

    /// Pulls (`Some`) or releases (`None`) the brake on the backend, then here.
    pub async fn set_brake(&self, brake: Option<Brake>) -> Result<(), StateError> {
        let brake = brake.map(|b| b.kept());
        let write = self.backend.brake_set(brake.as_ref(), self.clock.now());
        match self.backend.budget() {
            Some(budget) => with_deadline(Instant::now() + budget, write).await?,
            None => write.await?,
        }
        match &brake {
            Some(b) => warn!(
                min_audience = b.min_audience,
                until = b.until,
                by = %crate::text::neutralize(&b.by),
                comment = %crate::text::neutralize(&b.comment),
                "emergency brake pulled: messages to this many recipients or more are held"
            ),
            None => warn!("emergency brake released"),
        }
        self.brake.store(brake.map(Arc::new));
        Ok(())
    }

    /// Asks the backend what `plan` needs: the storm on the thread (or counts this reply
    /// in it and trips a storm), charges the budgets, reads the relay's rate. A remote
    /// backend's operations share one deadline ([`StateBackend::budget`]).
    pub async fn observe(
        &self,
        policy: &Policy,
        plan: StatePlan,
        queue_id: &str,
    ) -> Result<Observed, StateError> {
        match self.backend.budget() {
            Some(budget) => {
                with_deadline(
                    Instant::now() + budget,
                    self.observe_now(policy, plan, queue_id),
                )
                .await
            }
            None => self.observe_now(policy, plan, queue_id).await,
        }
    }

    async fn observe_now(
        &self,
        policy: &Policy,
        plan: StatePlan,
        queue_id: &str,
    ) -> Result<Observed, StateError> {
        let now = self.clock.now();
        let mut out = Observed {
            at: Some(now),
            ..Observed::default()
        };
        let s = &policy.storm;
        // What the backend is asked, in one request: the thread, and each budget the
        // message could fit in (one larger than the whole budget is not charged).
        let mut ask = Plan {
            thread: plan.thread.as_ref().map(|t| ThreadStep {
                storm: Storm {
                    id: Storm::id_of(&t.thread),
                    thread: t.thread.clone(),
                    subject: t.subject.clone(),
                    list: t.list.clone(),
                    audience: t.audience,
                    messages: 0,
                    senders: 0,
                    since: epoch_secs(now),
                    until: epoch_secs(now + s.block_for),
                    blocked: 0,
                },
                sender: t.sender.clone(),
                window: s.window,
                min_messages: s.min_messages,
                min_senders: s.min_senders,
            }),
            takes: Vec::new(),
        };
        for c in plan.charges.iter().filter(|c| c.cost <= c.limit) {
            ask.takes.push(TakeStep {
                key: c.key.clone(),
                cost: c.cost,
                limit: Limit {
                    limit: c.limit,
                    period: c.budget.period(),
                },
            });
        }
        let answer = if ask.is_empty() {
            Outcome::default()
        } else {
            self.backend.observe(&ask, now).await?
        };

        match (&plan.thread, &ask.thread, &answer.thread) {
            (_, _, Some(ThreadOutcome::Stopped(storm))) => {
                out.facts.storm = Some(fact(storm, true));
            }
            (Some(t), Some(step), Some(ThreadOutcome::Counted { counts, started }))
                if storm_trips(s, counts.messages, counts.senders) =>
            {
                let storm = step.storm_with(*counts);
                if *started {
                    self.storm_started(s, t, &storm, now, queue_id);
                }
                out.facts.storm = Some(fact(&storm, false));
            }
            _ => {}
        }

        let mut takes = ask.takes.iter().zip(&answer.takes);
        for c in &plan.charges {
            let sender = c.sender.clone();
            if c.cost > c.limit {
                out.facts.rate.push(RateFact {
                    budget: c.budget,
                    sender,
                    limit: c.limit,
                    cost: c.cost,
                    used: 0,
                    retry_at: None,
                });
                continue;
            }
            let Some((step, take)) = takes.next() else {
                return Err(StateError(
                    "the state answered fewer budgets than asked".into(),
                ));
            };
            if take.allowed {
                out.taken.push(step.clone());
            } else {
                out.facts.rate.push(RateFact {
                    budget: c.budget,
                    sender,
                    limit: c.limit,
                    cost: c.cost,
                    used: take.used,
                    retry_at: Some(epoch_secs(take.retry_at).max(epoch_secs(now) + 1)),
                });
            }
        }

        if plan.breaker_applies {
            let per_minute = self.relay.window_total(RELAY_KEY, MINUTE, now).await?;
            if per_minute > policy.breaker.max_per_minute {
                out.facts.breaker = Some(BreakerFact { per_minute });
                if self
                    .relay
                    .flag(BREAKER_FLAG, BREAKER_ALERT_EVERY, now)
                    .await?
                {
                    warn!(
                        per_minute,
                        max_per_minute = policy.breaker.max_per_minute,
                        "relay-wide breaker tripped: large mail is held until the rate falls back"
                    );
                    self.alert(Alert {
                        kind: AlertKind::Breaker,
                        at: now,
                        queue_id: Some(queue_id.to_owned()),
                        sender: String::new(),
                        subject: String::new(),
                        audience: per_minute,
                        reason: format!(
                            "{per_minute} recipients left the relay in the last minute (max {}); messages to {}+ recipients are held",
                            policy.breaker.max_per_minute, policy.breaker.min_audience
                        ),
                        held_for: None,
                    });
                }
            }
        }
        out.plan = plan;
        Ok(out)
    }

    /// Logs, counts and alerts a storm this message started.
    fn storm_started(
        &self,
        s: &StormPolicy,
        ask: &ThreadAsk,
        storm: &Storm,
        now: SystemTime,
        queue_id: &str,
    ) {
        if let Some(m) = &self.metrics {
            m.storm_tripped();
        }
        warn!(
            queue_id,
            storm = %storm.id,
            thread = %storm.thread,
            list = %storm.list,
            audience = storm.audience,
            messages = storm.messages,
            senders = storm.senders,
            block_for = %humantime::format_duration(s.block_for),
            "reply-all storm tripped: further replies in this thread are stopped"
        );
        self.alert(Alert {
            kind: AlertKind::Storm,
            at: now,
            queue_id: Some(queue_id.to_owned()),
            sender: ask.sender.clone(),
            subject: ask.subject.clone(),
            audience: ask.audience,
            reason: format!(
                "storm {}: {} replies from {} senders within {} to {}; further replies get \"{}\" for {} (fanout-milter storms clear {} ends it)",
                storm.id,
                storm.messages,
                storm.senders,
                humantime::format_duration(s.window),
                storm.list,
                s.action,
                humantime::format_duration(s.block_for),
                storm.id
            ),
            held_for: None,
        });
    }

    /// Settles after the verdict: a message that leaves (accepted or tagged, and the
    /// answer delivered to Postfix) adds to the relay's rate; one that does not gets
    /// its budgets back. With a remote backend the budgets are given back in the
    /// background, so the message's answer does not wait for it.
    pub async fn settle(&self, observed: &Observed, leaves: bool) -> Result<(), StateError> {
        let now = observed.at.unwrap_or_else(|| self.clock.now());
        if leaves {
            if let Some(n) = observed.plan.relay_recipients.filter(|&n| n > 0) {
                self.relay.window_add(RELAY_KEY, n, MINUTE, now).await?;
            }
            return Ok(());
        }
        if observed.taken.is_empty() {
            return Ok(());
        }
        let backend = self.backend.clone();
        let taken = observed.taken.clone();
        let give_back = async move { backend.give_back_all(&taken, now).await };
        match self.backend.budget() {
            Some(budget) => {
                tokio::spawn(with_deadline(Instant::now() + budget, async move {
                    if let Err(e) = give_back.await {
                        warn!("budgets not given back: {e}");
                    }
                }));
                Ok(())
            }
            None => give_back.await,
        }
    }

    fn alert(&self, alert: Alert) {
        if let Some(a) = &self.alerts {
            a.send(alert);
        }
    }
}

fn fact(s: &Storm, blocked: bool) -> StormFact {
    StormFact {
        subject: s.subject.clone(),
        list: s.list.clone(),
        audience: s.audience,
        messages: s.messages,
        senders: s.senders,
        until: s.until,
        blocked,
    }
}
