// SPDX-License-Identifier: GPL-3.0-or-later
//! Prometheus metrics: one registry per daemon ([`Metrics`]), recorded with a few
//! atomic adds on the mail path and read at scrape time for what lives elsewhere (the
//! quarantine store, storms, the brake).
//!
//! Labels are bounded by construction: verdicts and rules are the policy's own names,
//! causes, actions and origins are fixed lists, directory sources are the configured
//! ones. No address, queue id, subject or list name ever becomes a label. Every
//! labelled series that can be known at start exists from start at 0, so that
//! `rate()` and `increase()` see the first event.
//!
//! The exposition is OpenMetrics text (prometheus-client); counters are registered
//! without `_total`, which the encoder adds.

pub mod serve;

use crate::policy::{Action, Evaluation};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Every rule name a verdict can carry ([`crate::policy::Reason::rule`]), in the
/// order the README lists them.
pub const RULES: [&str; 14] = [
    "limits.envelope",
    "limits.external",
    "limits.audience",
    "hidden",
    "restricted",
    "drift",
    "scope",
    "expansion.on_unknown",
    "directory.unavailable",
    "storm",
    "rate",
    "brake",
    "breaker",
    "copy",
];

/// No rule fired.
pub const RULE_NONE: &str = "none";
/// An `[exempt]` sender: no rule applied.
pub const RULE_EXEMPT: &str = "exempt";
/// The milter could not decide and tempfailed the message.
pub const RULE_FAULT: &str = "fault";
/// A hold another tool made, adopted by `reconcile`.
pub const RULE_FOREIGN: &str = "foreign";

/// The verdicts, as `explain --json` names them.
pub const VERDICTS: [Action; 6] = Action::ALL;

/// Review actions the store counts (`expire` is the sweep's own).
pub const REVIEW_ACTIONS: [&str; 5] = ["release", "release-to", "discard", "extend", "expire"];

/// Where review actions come from.
pub const REVIEW_VIA: [&str; 5] = ["desk", "cli", "digest", "sender", "sweep"];

/// Why a message was tempfailed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tempfail {
    /// A rule chose tempfail (storm, rate).
    Rule,
    /// A directory source could not answer (`[directory] on_unavailable`).
    DirectoryUnavailable,
    /// The storm and rate state could not be read or written.
    StateBackend,
    /// A message to hold came without a usable queue id (macro `i`).
    QueueIdMissing,
    /// Anything else: the store, an action the MTA refused, a panic.
    Internal,
}

impl Tempfail {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tempfail::Rule => "rule",
            Tempfail::DirectoryUnavailable => "directory_unavailable",
            Tempfail::StateBackend => "state_backend",
            Tempfail::QueueIdMissing => "queue_id_missing",
            Tempfail::Internal => "internal",
        }
    }

    /// Every cause.
    pub const ALL: [Tempfail; 5] = [
        Tempfail::Rule,
        Tempfail::DirectoryUnavailable,
        Tempfail::StateBackend,
        Tempfail::QueueIdMissing,
        Tempfail::Internal,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: &'static str,
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    action: &'static str,
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

const ENVELOPE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];
const AUDIENCE_BUCKETS: [f64; 11] = [
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0, 100000.0, 1000000.0,
];
const DECISION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const STATE_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const REFRESH_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

fn refresh_histogram() -> Histogram {
    Histogram::new(REFRESH_BUCKETS)
}

/// What the scrape reads from the quarantine store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldReading {
    /// Held now, with the oldest hold's time (seconds since the epoch), by the rule
    /// that held them ([`RULES`], [`RULE_FOREIGN`] or [`RULE_NONE`]).
    pub by_rule: Vec<(&'static str, u64, u64)>,
    /// Held longer than `[quarantine] review_within`, waiting for an admin.
    pub overdue: u64,
    /// When the oldest of those was held (seconds since the epoch); 0: none.
    pub overdue_oldest: u64,
    /// Review actions carried out, by action and origin.
    pub actions: Vec<(&'static str, &'static str, u64)>,
    /// Review actions the worker could not carry out, by action.
    pub failures: Vec<(&'static str, u64)>,
}

/// The daemon's metrics. Cheap to share ([`Arc`]); every method is a few atomic adds.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    /// The decision counters by verdict and rule ([`decision_index`]), made at start,
    /// so that counting a decision takes no lock.
    by_decision: Vec<Counter>,
    tempfails: Family<CauseLabels, Counter>,
    envelope: Histogram,
    audience: Histogram,
    decision_seconds: Histogram,
    connections_active: Gauge,
    connections: Counter,
    protocol_errors: Family<KindLabels, Counter>,
    held: Family<RuleLabels, Gauge>,
    held_oldest: Family<RuleLabels, Gauge>,
    held_overdue: Gauge,
    held_overdue_oldest: Gauge,
    review_actions: Family<ReviewLabels, Counter>,
    review_failures: Family<ActionLabels, Counter>,
    storms_active: Gauge,
    storms_tripped: Counter,
    brake_engaged: Gauge,
    breaker_open: Gauge,
    state_errors: Counter,
    failover_active: Gauge,
    state_seconds: Histogram,
    directory_success: Family<SourceLabels, Gauge>,
    directory_interval: Family<SourceLabels, Gauge>,
    directory_entries: Family<SourceLabels, Gauge>,
    directory_lists: Family<SourceLabels, Gauge>,
    directory_unknown: Family<SourceLabels, Gauge>,
    directory_seconds: HistogramFamily<SourceLabels>,
    directory_failures: Family<SourceLabels, Counter>,
    /// The directory sources in force, whose series exist.
    directory_names: std::sync::Mutex<std::collections::BTreeSet<String>>,
    reload_ok: Gauge,
    reload_ok_at: Gauge,
    build_info: Family<BuildLabels, Gauge>,
}

/// Counts a milter connection as active while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every series that can be known at start set to 0, and
    /// `fanout_build_info` set.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fanout");
        let m = Metrics {
            decisions: Family::default(),
            by_decision: Vec::new(),
            tempfails: Family::default(),
            envelope: Histogram::new(ENVELOPE_BUCKETS),
            audience: Histogram::new(AUDIENCE_BUCKETS),
            decision_seconds: Histogram::new(DECISION_BUCKETS),
            connections_active: Gauge::default(),
            connections: Counter::default(),
            protocol_errors: Family::default(),
            held: Family::default(),
            held_oldest: Family::default(),
            held_overdue: Gauge::default(),
            held_overdue_oldest: Gauge::default(),
            review_actions: Family::default(),
            review_failures: Family::default(),
            storms_active: Gauge::default(),
            storms_tripped: Counter::default(),
            brake_engaged: Gauge::default(),
            breaker_open: Gauge::default(),
            state_errors: Counter::default(),
            failover_active: Gauge::default(),
            state_seconds: Histogram::new(STATE_BUCKETS),
            directory_success: Family::default(),
            directory_interval: Family::default(),
            directory_entries: Family::default(),
            directory_lists: Family::default(),
            directory_unknown: Family::default(),
            directory_seconds: Family::new_with_constructor(refresh_histogram),
            directory_failures: Family::default(),
            directory_names: Default::default(),
            reload_ok: Gauge::default(),
            reload_ok_at: Gauge::default(),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "decisions",
            "Messages decided, by verdict and the rule that decided it",
            m.decisions.clone(),
        );
        r.register(
            "tempfails",
            "Messages tempfailed, by cause",
            m.tempfails.clone(),
        );
        r.register(
            "message_envelope_recipients",
            "Envelope recipients per decided message",
            m.envelope.clone(),
        );
        r.register(
            "message_audience_recipients",
            "Final mailboxes per decided message, after list and alias expansion",
            m.audience.clone(),
        );
        r.register(
            "decision_duration_seconds",
            "Time from end of message to the verdict applied",
            m.decision_seconds.clone(),
        );
        r.register(
            "milter_connections_active",
            "Milter connections open now",
            m.connections_active.clone(),
        );
        r.register(
            "milter_connections",
            "Milter connections accepted",
            m.connections.clone(),
        );
        r.register(
            "milter_protocol_errors",
            "Milter conversations out of order, by kind",
            m.protocol_errors.clone(),
        );
        r.register(
            "held_messages",
            "Messages held now, by the rule that held them",
            m.held.clone(),
        );
        r.register(
            "held_oldest_timestamp_seconds",
            "When the oldest message still held was held, by rule (0: none held)",
            m.held_oldest.clone(),
        );
        r.register(
            "held_overdue_messages",
            "Messages held longer than [quarantine] review_within, waiting for an admin",
            m.held_overdue.clone(),
        );
        r.register(
            "held_overdue_oldest_timestamp_seconds",
            "When the oldest message overdue for review was held (0: none overdue)",
            m.held_overdue_oldest.clone(),
        );
        r.register(
            "review_actions",
            "Review actions carried out, by action and origin",
            m.review_actions.clone(),
        );
        r.register(
            "review_action_failures",
            "Review actions that could not be carried out, by action",
            m.review_failures.clone(),
        );
        r.register(
            "storms_active",
            "Reply-all storms being stopped now",
            m.storms_active.clone(),
        );
        r.register(
            "storms_tripped",
            "Reply-all storms detected",
            m.storms_tripped.clone(),
        );
        r.register(
            "brake_engaged",
            "1 while the emergency brake is pulled",
            m.brake_engaged.clone(),
        );
        r.register(
            "breaker_open",
            "1 while the relay-wide breaker is tripped (read at scrape)",
            m.breaker_open.clone(),
        );
        r.register(
            "state_backend_errors",
            "Failed operations on the shared storm and rate state (Redis)",
            m.state_errors.clone(),
        );
        r.register(
            "state_failover_active",
            "1 while the shared state (Redis) is down: this relay runs on local state or tempfails, as [state] on_failure says",
            m.failover_active.clone(),
        );
        r.register(
            "state_backend_request_duration_seconds",
            "Round trips to the shared storm and rate state",
            m.state_seconds.clone(),
        );
        r.register(
            "directory_last_refresh_success_timestamp_seconds",
            "When each directory source was last loaded or refreshed",
            m.directory_success.clone(),
        );
        r.register(
            "directory_refresh_interval_seconds",
            "How often each directory source is refreshed (0: at start and reload only)",
            m.directory_interval.clone(),
        );
        r.register(
            "directory_entries",
            "Entries each directory source gave at its last load",
            m.directory_entries.clone(),
        );
        r.register(
            "directory_lists",
            "Lists each directory source gave at its last load",
            m.directory_lists.clone(),
        );
        r.register(
            "directory_unknown_members",
            "List members each directory source could not resolve at its last load",
            m.directory_unknown.clone(),
        );
        r.register(
            "directory_refresh_duration_seconds",
            "Time each directory refresh took",
            m.directory_seconds.clone(),
        );
        r.register(
            "directory_refresh_failures",
            "Directory refreshes that failed (the last good data stays in use)",
            m.directory_failures.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last configuration reload succeeded (or none was tried)",
            m.reload_ok.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded",
            m.reload_ok_at.clone(),
        );
        r.register(
            "build_info",
            "The running version (always 1)",
            m.build_info.clone(),
        );
        let mut by_decision = Vec::with_capacity(VERDICTS.len() * DECISION_RULES.len());
        for verdict in VERDICTS {
            for rule in DECISION_RULES {
                by_decision.push(
                    m.decisions
                        .get_or_create(&DecisionLabels {
                            verdict: verdict.as_str(),
                            rule,
                        })
                        .clone(),
                );
            }
        }
        for cause in Tempfail::ALL {
            let _ = m.tempfails.get_or_create(&CauseLabels {
                cause: cause.as_str(),
            });
        }
        let _ = m
            .protocol_errors
            .get_or_create(&KindLabels { kind: "sequence" });
        for rule in held_rules() {
            let _ = m.held.get_or_create(&RuleLabels { rule });
            let _ = m.held_oldest.get_or_create(&RuleLabels { rule });
        }
        for action in REVIEW_ACTIONS {
            for via in REVIEW_VIA {
                let _ = m
                    .review_actions
                    .get_or_create(&ReviewLabels { action, via });
            }
            let _ = m.review_failures.get_or_create(&ActionLabels { action });
        }
        m.reload_ok.set(1);
        m.build_info
            .get_or_create(&BuildLabels {
                version: crate::VERSION,
            })
            .set(1);
        Metrics {
            registry,
            by_decision,
            ..m
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same values in the Prometheus text format 0.0.4, for clients that do not ask
    /// for OpenMetrics (curl, `promtool check metrics`): counter families are named
    /// with their `_total` suffix there, and there is no `# EOF`.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// Counts a decided message: its verdict and deciding rule (the first enforced
    /// rule whose action is the verdict, else the first rule), its envelope and
    /// audience, and the time it took.
    pub fn decided(&self, evaluation: &Evaluation, took: Duration) {
        let verdict = &evaluation.verdict;
        // The rule whose action is the verdict, not a monitored one that asked more.
        let deciding = verdict
            .reasons
            .iter()
            .find(|r| !r.monitor && r.action == verdict.action)
            .or(verdict.reasons.first());
        let rule = match deciding {
            Some(reason) => rule_label(reason.rule),
            None if verdict.exempt_by.is_some() => RULE_EXEMPT,
            None => RULE_NONE,
        };
        self.count_decision(verdict.action, rule);
        if verdict.action == Action::Tempfail {
            let cause = if rule == "directory.unavailable" {
                Tempfail::DirectoryUnavailable
            } else {
                Tempfail::Rule
            };
            self.count_tempfail(cause);
        }
        self.envelope.observe(evaluation.counts.envelope as f64);
        self.audience.observe(evaluation.counts.audience as f64);
        self.decision_seconds.observe(took.as_secs_f64());
    }

    /// Counts a message the milter tempfailed because it could not decide.
    pub fn faulted(&self, cause: Tempfail, took: Duration) {
        self.count_decision(Action::Tempfail, RULE_FAULT);
        self.count_tempfail(cause);
        self.decision_seconds.observe(took.as_secs_f64());
    }

    fn count_decision(&self, verdict: Action, rule: &'static str) {
        match decision_index(verdict, rule).and_then(|i| self.by_decision.get(i)) {
            Some(counter) => {
                counter.inc();
            }
            None => {
                self.decisions
                    .get_or_create(&DecisionLabels {
                        verdict: verdict.as_str(),
                        rule,
                    })
                    .inc();
            }
        }
    }

    fn count_tempfail(&self, cause: Tempfail) {
        self.tempfails
            .get_or_create(&CauseLabels {
                cause: cause.as_str(),
            })
            .inc();
    }

    /// Counts a new milter connection, active until the guard drops.
    pub fn connected(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.inc();
        self.connections_active.inc();
        ConnectionGuard(self.clone())
    }

    /// Counts a milter conversation out of order (end of message without a message).
    pub fn protocol_error(&self) {
        self.protocol_errors
            .get_or_create(&KindLabels { kind: "sequence" })
            .inc();
    }

    /// Sets what the quarantine store holds now.
    pub fn set_held(&self, reading: &HeldReading) {
        for rule in held_rules() {
            let (count, oldest) = reading
                .by_rule
                .iter()
                .find(|(r, ..)| *r == rule)
                .map_or((0, 0), |&(_, n, at)| (n, at));
            self.held
                .get_or_create(&RuleLabels { rule })
                .set(gauge(count));
            self.held_oldest
                .get_or_create(&RuleLabels { rule })
                .set(gauge(oldest));
        }
        self.held_overdue.set(gauge(reading.overdue));
        self.held_overdue_oldest.set(gauge(reading.overdue_oldest));
        for &(action, via, n) in &reading.actions {
            set_counter(
                &self
                    .review_actions
                    .get_or_create(&ReviewLabels { action, via }),
                n,
            );
        }
        for &(action, n) in &reading.failures {
            set_counter(
                &self.review_failures.get_or_create(&ActionLabels { action }),
                n,
            );
        }
    }

    /// Sets the storms being stopped now.
    pub fn set_storms_active(&self, n: usize) {
        self.storms_active.set(gauge(n as u64));
    }

    /// Counts a storm detected.
    pub fn storm_tripped(&self) {
        self.storms_tripped.inc();
    }

    /// Sets whether the emergency brake is pulled.
    pub fn set_brake(&self, engaged: bool) {
        self.brake_engaged.set(i64::from(engaged));
    }

    /// Sets whether the relay-wide breaker is tripped now.
    pub fn set_breaker(&self, open: bool) {
        self.breaker_open.set(i64::from(open));
    }

    /// Counts a failed operation on the shared state.
    pub fn state_error(&self) {
        self.state_errors.inc();
    }

    /// Sets whether the shared state is down (this relay runs on local state or
    /// tempfails, as `[state] on_failure` says).
    pub fn set_failover(&self, active: bool) {
        self.failover_active.set(i64::from(active));
    }

    /// Records one round trip to the shared state.
    pub fn state_round_trip(&self, took: Duration) {
        self.state_seconds.observe(took.as_secs_f64());
    }

    /// Makes `sources` the directory sources in force: the series of a source no
    /// longer configured go (a removed LDAP source would otherwise look stale for
    /// ever).
    pub fn directory_sources(&self, sources: &[&str]) {
        let keep: std::collections::BTreeSet<String> =
            sources.iter().map(|s| source_labels(s).source).collect();
        let mut names = self
            .directory_names
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for gone in names.difference(&keep) {
            let labels = SourceLabels {
                source: gone.clone(),
            };
            self.directory_success.remove(&labels);
            self.directory_interval.remove(&labels);
            self.directory_entries.remove(&labels);
            self.directory_lists.remove(&labels);
            self.directory_unknown.remove(&labels);
            self.directory_seconds.remove(&labels);
            self.directory_failures.remove(&labels);
        }
        *names = keep;
    }

    /// Declares a directory source: its series start at 0, with its refresh interval
    /// (zero: loaded at start and reload only).
    pub fn directory_source(&self, source: &str, interval: Duration) {
        let labels = source_labels(source);
        self.directory_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(labels.source.clone());
        let _ = self.directory_success.get_or_create(&labels);
        let _ = self.directory_entries.get_or_create(&labels);
        let _ = self.directory_lists.get_or_create(&labels);
        let _ = self.directory_unknown.get_or_create(&labels);
        let _ = self.directory_seconds.get_or_create(&labels);
        let _ = self.directory_failures.get_or_create(&labels);
        self.directory_interval
            .get_or_create(&labels)
            .set(gauge(interval.as_secs()));
    }

    /// Records a directory source loaded or refreshed at `at`.
    pub fn directory_loaded(
        &self,
        source: &str,
        at: SystemTime,
        entries: u64,
        lists: u64,
        unknown: u64,
    ) {
        let labels = source_labels(source);
        self.directory_success
            .get_or_create(&labels)
            .set(gauge(crate::clock::epoch_secs(at)));
        self.directory_entries
            .get_or_create(&labels)
            .set(gauge(entries));
        self.directory_lists
            .get_or_create(&labels)
            .set(gauge(lists));
        self.directory_unknown
            .get_or_create(&labels)
            .set(gauge(unknown));
    }

    /// Whether the source of `labels` is configured now.
    fn in_force(&self, labels: &SourceLabels) -> bool {
        self.directory_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&labels.source)
    }

    /// Records how long a directory refresh took, failed or not (of a source in
    /// force: a refresh that ends after a reload removed its source leaves no series).
    pub fn directory_refresh_took(&self, source: &str, took: Duration) {
        let labels = source_labels(source);
        if self.in_force(&labels) {
            self.directory_seconds
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        }
    }

    /// Counts a failed directory refresh (of a source in force).
    pub fn directory_failed(&self, source: &str) {
        let labels = source_labels(source);
        if self.in_force(&labels) {
            self.directory_failures.get_or_create(&labels).inc();
        }
    }

    /// Records a configuration reload: on success, the time the new one came in force.
    pub fn reloaded(&self, ok: bool, at: SystemTime) {
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_ok_at.set(gauge(crate::clock::epoch_secs(at)));
        }
    }
}

/// OpenMetrics text as Prometheus text 0.0.4: a counter family `x` (samples
/// `x_total`) is described as `x_total`; `# EOF` and `# UNIT` lines go.
fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(described.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The `rule` values of `fanout_decisions_total`.
const DECISION_RULES: [&str; RULES.len() + 3] = {
    let mut all = [RULE_NONE; RULES.len() + 3];
    let mut i = 0;
    while i < RULES.len() {
        all[i] = RULES[i];
        i += 1;
    }
    all[RULES.len() + 1] = RULE_EXEMPT;
    all[RULES.len() + 2] = RULE_FAULT;
    all
};

/// Where the counter of `verdict` and `rule` is in `Metrics::by_decision`.
fn decision_index(verdict: Action, rule: &str) -> Option<usize> {
    let v = VERDICTS.iter().position(|&a| a == verdict)?;
    let r = DECISION_RULES.iter().position(|&n| n == rule)?;
    Some(v * DECISION_RULES.len() + r)
}

/// The rule labels of the held gauges.
fn held_rules() -> impl Iterator<Item = &'static str> {
    RULES.into_iter().chain([RULE_FOREIGN, RULE_NONE])
}

/// `rule` as one of [`RULES`]; a name the list lacks would be a bug (a test checks the
/// policy's names) and is counted as `none` rather than growing the label set.
pub fn rule_label(rule: &str) -> &'static str {
    RULES.into_iter().find(|r| *r == rule).unwrap_or(RULE_NONE)
}

fn source_labels(source: &str) -> SourceLabels {
    SourceLabels {
        source: crate::text::neutralize(source).into_owned(),
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Raises a counter to a total read from the store, never lowers it: a reading that
/// lost a race with a newer one, or a sweep's expiry undone because Postfix refused
/// it, must not look like a counter reset.
fn set_counter(counter: &Counter, n: u64) {
    counter
        .inner()
        .fetch_max(n, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
