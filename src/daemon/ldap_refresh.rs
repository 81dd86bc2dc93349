// SPDX-License-Identifier: GPL-3.0-or-later
//! Keeps the LDAP snapshots of the running daemon fresh: each source is refreshed on
//! its interval (with jitter) or on an admin's request, off the mail path; a good
//! snapshot is saved to disk and the directory rebuilt and swapped in whole; a failed
//! one changes nothing but the log, and past `max_staleness` an alert. A refresh that
//! loses more than `max_shrink` of the lists or their members is refused like a failed
//! one (admins get a `directory-shrunk` alert) and kept as pending until an admin
//! accepts it (`directory accept --source NAME`, through the admin socket).

use super::generation::{Owner, RebuildError};
use crate::clock::Clock;
use crate::config::ldap::{LdapSettings, OnStale};
use crate::control::RefreshOutcome;
use crate::directory::ldap::guard::{self, Measure, Shrink};
use crate::directory::ldap::{self, Snapshot, Snapshots};
use crate::notify::{Alert, AlertKind};
use crate::shared::Shared;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, info, warn};

/// Longest wait before retrying a failed refresh.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest a whole refresh may take.
const MAX_REFRESH_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// A request to refresh one source (`None`: all) now, or to accept its pending one.
pub struct RefreshRequest {
    /// The source's name.
    pub source: Option<String>,
    /// Accept the source's refused snapshot (and forget its vanished lists) instead.
    pub accept: bool,
    /// Where the outcomes go.
    pub reply: oneshot::Sender<Vec<RefreshOutcome>>,
}

/// The daemon's LDAP snapshots and the task that refreshes them.
pub struct Refresher {
    snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
    /// The measure of each source's snapshot in force, by its `taken_at`.
    measures: Mutex<HashMap<String, (u64, Arc<Measure>)>>,
    /// Refused snapshots waiting for an admin's accept.
    pending: Mutex<HashMap<String, Arc<Snapshot>>>,
    stale_alerted: Mutex<HashSet<String>>,
    shrink_alerted: Mutex<HashSet<String>>,
    requests: mpsc::Sender<RefreshRequest>,
    receiver: Mutex<Option<mpsc::Receiver<RefreshRequest>>>,
    /// Notified after a reload (sources may have come or gone).
    changed: Arc<Notify>,
    /// The generation in force (read), alerts and the clock.
    shared: Arc<Shared>,
    /// Where rebuilt snapshots go to be put in force.
    owner: Owner,
}

impl Refresher {
    /// A refresher of `shared`'s LDAP sources starting from `initial` (saved or first
    /// snapshots), which hands new snapshots to `owner`.
    pub fn new(initial: &Snapshots, shared: Arc<Shared>, owner: Owner) -> Arc<Refresher> {
        let (requests, receiver) = mpsc::channel(8);
        Arc::new(Refresher {
            snapshots: Mutex::new(initial.by_source.clone()),
            measures: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            stale_alerted: Mutex::new(HashSet::new()),
            shrink_alerted: Mutex::new(HashSet::new()),
            requests,
            receiver: Mutex::new(Some(receiver)),
            changed: owner.reloaded(),
            shared,
            owner,
        })
    }

    /// The snapshots in force, judged at the current time.
    pub fn snapshots(&self) -> Snapshots {
        Snapshots {
            by_source: self.lock().clone(),
            now: self.shared.now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Snapshot>>> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where admin requests go.
    pub fn requests(&self) -> mpsc::Sender<RefreshRequest> {
        self.requests.clone()
    }

    /// Refreshes sources until the daemon stops. Runs once; later calls return at once.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut settings_seen: HashMap<String, String> = HashMap::new();
        loop {
            let sources = ldap_sources(&self.shared);
            due.retain(|name, _| sources.iter().any(|s| &s.name == name));
            let now = Instant::now();
            for s in &sources {
                // A new source, or one whose settings a reload changed: schedule anew.
                let fingerprint = ldap::fingerprint(s);
                if settings_seen.get(&s.name) != Some(&fingerprint) {
                    settings_seen.insert(s.name.clone(), fingerprint);
                    due.insert(s.name.clone(), self.first_due(s, now));
                }
            }
            let next = due.values().min().copied();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {
                    let now = Instant::now();
                    for s in &sources {
                        if due.get(&s.name).is_some_and(|t| *t <= now) {
                            let outcome = self.refresh_one(s).await;
                            due.insert(s.name.clone(), next_due(s, outcome.ok || outcome.refused));
                        }
                    }
                }
                () = self.changed.notified() => {}
                request = rx.recv() => {
                    let Some(request) = request else { return };
                    let mut outcomes = Vec::new();
                    for s in &sources {
                        if request.accept && request.source.as_deref() == Some(&s.name) {
                            outcomes.push(self.accept_one(s).await);
                        } else if !request.accept
                            && request.source.as_deref().is_none_or(|n| n == s.name)
                        {
                            let outcome = self.refresh_one(s).await;
                            due.insert(s.name.clone(), next_due(s, outcome.ok || outcome.refused));
                            outcomes.push(outcome);
                        }
                    }
                    if outcomes.is_empty() {
                        outcomes.push(RefreshOutcome {
                            source: request.source.unwrap_or_default(),
                            ok: false,
                            refused: false,
                            message: "no such LDAP source in the configuration".into(),
                        });
                    }
                    let _ = request.reply.send(outcomes);
                }
            }
        }
    }

    /// When a source is first due (see [`first_due`]).
    fn first_due(&self, s: &LdapSettings, now: Instant) -> Instant {
        let snap = self.lock().get(&s.name).cloned();
        first_due(snap.as_deref(), s, now, self.shared.now())
    }

    /// Refreshes one source and, when it worked, swaps the rebuilt directory in.
    pub async fn refresh_one(&self, s: &LdapSettings) -> RefreshOutcome {
        let deadline = s
            .refresh
            .clamp(s.timeout, MAX_REFRESH_DEADLINE.max(s.timeout));
        let settings = s.clone();
        info!(source = %s.name, url = %crate::config::redact_url(&s.url), "ldap refresh started");
        let started = Instant::now();
        let result = tokio::spawn(async move { ldap::refresh(&settings, deadline).await })
            .await
            .map_err(|e| format!("refresh task failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        self.shared
            .metrics
            .directory_refresh_took(&s.name, started.elapsed());
        let outcome = |ok, message| RefreshOutcome {
            source: s.name.clone(),
            ok,
            refused: false,
            message,
        };
        match result {
            Ok(snap) => self.apply(s, snap).await,
            Err(e) => {
                let message = self.keep_old(s, &format!("ldap refresh failed: {e}")).await;
                outcome(false, message)
            }
        }
    }

    /// Judges a fresh snapshot of `s` against the one in force: takes it (saved, the
    /// directory rebuilt) or, when it loses more than `max_shrink`, refuses it.
    pub async fn apply(&self, s: &LdapSettings, snap: Snapshot) -> RefreshOutcome {
        let outcome = |ok, message| RefreshOutcome {
            source: s.name.clone(),
            ok,
            refused: false,
            message,
        };
        let config = self.shared.current().config.clone();
        let previous = self.lock().get(&s.name).cloned();
        let before = previous
            .as_deref()
            .and_then(|p| self.measure_of(&s.name, p));
        let max_shrink = s.max_shrink;
        let first = previous.is_none();
        let judged = tokio::task::spawn_blocking(move || {
            judge(
                previous.as_deref(),
                before,
                snap,
                config.max_depth,
                config.max_audience,
                list_floor(&config),
                max_shrink,
            )
        })
        .await;
        let judged = match judged {
            Ok(j) => j,
            Err(e) => {
                let why = format!("ldap refresh failed: judging the snapshot failed: {e}");
                return outcome(false, self.keep_old(s, &why).await);
            }
        };
        if judged.refused {
            return self.refuse(s, judged.snapshot, &judged.shrink).await;
        }
        if first {
            let why = format!(
                "first snapshot of LDAP source {} taken with no earlier one to compare it \
                 with: the shrink guard could not judge it ({} lists, {} list members); \
                 check that it is complete",
                s.name, judged.shrink.lists_after, judged.shrink.members_after
            );
            warn!(source = %s.name, "{why}");
            self.shared.alerts.send(Alert {
                kind: AlertKind::DirectoryBaseline,
                at: self.shared.now(),
                queue_id: None,
                sender: String::new(),
                subject: String::new(),
                audience: 0,
                reason: why,
                held_for: None,
            });
        }
        let snap = Arc::new(judged.snapshot);
        self.measures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.name.clone(), (snap.taken_at, Arc::new(judged.after)));
        let state_dir = self.shared.current().config.state_dir.clone();
        let saving = snap.clone();
        let name = s.name.clone();
        let saved = tokio::task::spawn_blocking(move || {
            ldap::save(&state_dir, &saving)?;
            ldap::remove_pending(&state_dir, &name)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(
                source = %s.name,
                "{e}; the new snapshot is used, but a restart will read the older file"
            ),
            Err(e) => error!(source = %s.name, "saving the snapshot failed: {e}"),
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.name);
        let st = &snap.stats;
        let mut summary = format!(
            "{} entries, {} lists ({} dynamic), {} dangling members, {} empty lists, \
             {} dynamic queries unknown, {} searches, {} ms",
            st.entries,
            st.lists,
            st.dynamic_lists,
            st.dangling,
            st.empty,
            st.dynamic_unknown,
            snap.searches,
            snap.millis
        );
        if judged.shrink.lists_lost > 0 || judged.shrink.members_lost > 0 {
            summary.push_str(&format!(
                "; within max_shrink {}: {}",
                s.max_shrink.get(),
                judged.shrink.summary()
            ));
        }
        if !snap.vanished.is_empty() {
            summary.push_str(&format!(
                "; {} vanished list addresses count as unknown",
                snap.vanished.len()
            ));
            warn!(
                source = %s.name,
                vanished = snap.vanished.len(),
                "lists vanished from the directory count as unknown until they come back or \
                 `directory accept --source {}`: {}",
                s.name,
                judged.shrink.summary()
            );
        }
        self.lock().insert(s.name.clone(), snap.clone());
        self.stale_alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.name);
        self.shrink_alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.name);
        match self.rebuild().await {
            Ok(()) => {
                info!(
                    source = %s.name,
                    entries = st.entries,
                    lists = st.lists,
                    dynamic_lists = st.dynamic_lists,
                    dangling = st.dangling,
                    empty = st.empty,
                    dynamic_unknown = st.dynamic_unknown,
                    searches = snap.searches,
                    active_directory = snap.active_directory,
                    millis = snap.millis,
                    guard_millis = judged.millis,
                    "ldap snapshot refreshed"
                );
                outcome(true, summary)
            }
            Err(e) => {
                error!(source = %s.name, "directory not rebuilt after the refresh, the old one stays: {e}");
                outcome(false, format!("snapshot taken ({summary}), but {e}"))
            }
        }
    }

    /// The measure of `snap`, the snapshot in force of `name`, when it is known.
    fn measure_of(&self, name: &str, snap: &Snapshot) -> Option<Arc<Measure>> {
        let measures = self.measures.lock().unwrap_or_else(|p| p.into_inner());
        match measures.get(name) {
            Some((taken_at, m)) if *taken_at == snap.taken_at => Some(m.clone()),
            _ => None,
        }
    }

    /// A refresh that did not change the snapshot in force: says what stays, and past
    /// `max_staleness` alerts and applies `on_stale`. Returns the outcome's message.
    async fn keep_old(&self, s: &LdapSettings, why: &str) -> String {
        self.shared.metrics.directory_failed(&s.name);
        let age = self
            .lock()
            .get(&s.name)
            .map(|snap| snap.age(self.shared.now()));
        let kept = match age {
            Some(a) => format!(
                "keeping the snapshot taken {} ago",
                humantime::format_duration(Duration::from_secs(a.as_secs()))
            ),
            None => "there is no snapshot: mail to its domains is tempfailed".into(),
        };
        error!(source = %s.name, "{why}; {kept}");
        let stale = age.is_none_or(|a| a > s.max_staleness);
        if stale {
            self.stale(s, why, &kept).await;
        }
        format!("{why}; {kept}")
    }

    /// A refresh that lost too much: kept as pending (memory and disk) for an admin's
    /// accept, admins alerted once, and otherwise handled as a failed one.
    async fn refuse(&self, s: &LdapSettings, snap: Snapshot, shrink: &Shrink) -> RefreshOutcome {
        let snap = Arc::new(snap);
        let state_dir = self.shared.current().config.state_dir.clone();
        let saving = snap.clone();
        match tokio::task::spawn_blocking(move || ldap::save_pending(&state_dir, &saving)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(source = %s.name, "{e}; the refused snapshot is kept in memory"),
            Err(e) => error!(source = %s.name, "saving the refused snapshot failed: {e}"),
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.name.clone(), snap);
        let why = format!(
            "ldap refresh refused: it loses more than max_shrink {} of the lists, of their \
             members or of one list's members ({}); if that is right: fanout-milter directory \
             accept --source {}",
            s.max_shrink.get(),
            shrink.summary(),
            s.name
        );
        error!(
            source = %s.name,
            lists_before = shrink.lists_before,
            lists_after = shrink.lists_after,
            members_before = shrink.members_before,
            members_after = shrink.members_after,
            "ldap snapshot shrank too much"
        );
        let first = self
            .shrink_alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.name.clone());
        let message = self.keep_old(s, &why).await;
        if first {
            self.shared.alerts.send(Alert {
                kind: AlertKind::DirectoryShrunk,
                at: self.shared.now(),
                queue_id: None,
                sender: String::new(),
                subject: String::new(),
                audience: 0,
                reason: format!("LDAP source {}: {message}", s.name),
                held_for: None,
            });
        }
        RefreshOutcome {
            source: s.name.clone(),
            ok: false,
            refused: true,
            message,
        }
    }

    /// `directory accept --source NAME`: puts the refused snapshot in force (from
    /// memory, or the pending file after a restart) and forgets the lists that
    /// vanished: the admin says they are gone. Without a refused snapshot, only
    /// forgets the vanished lists of the one in force.
    pub async fn accept_one(&self, s: &LdapSettings) -> RefreshOutcome {
        let outcome = |ok, message: String| RefreshOutcome {
            source: s.name.clone(),
            ok,
            refused: false,
            message,
        };
        let state_dir = self.shared.current().config.state_dir.clone();
        let remembered = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.name);
        let pending = match remembered {
            Some(p) => Some((*p).clone()),
            None => {
                let (dir, settings) = (state_dir.clone(), s.clone());
                match tokio::task::spawn_blocking(move || ldap::load_pending(&dir, &settings)).await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => return outcome(false, e),
                    Err(e) => return outcome(false, format!("reading the pending snapshot: {e}")),
                }
            }
        };
        let current = self.lock().get(&s.name).cloned();
        let (mut snap, what) = match (pending, current) {
            (Some(p), _) if p.fingerprint != ldap::fingerprint(s) => {
                return outcome(
                    false,
                    "the refused snapshot was taken with other settings: refresh again".into(),
                );
            }
            (Some(p), current) => {
                let what = format!(
                    "accepted the refused snapshot taken {} ago ({} lists, was {}); \
                     lists it lacks are gone",
                    humantime::format_duration(Duration::from_secs(
                        p.age(self.shared.now()).as_secs()
                    )),
                    p.lists.len(),
                    current.map_or(0, |c| c.lists.len())
                );
                (p, what)
            }
            (None, Some(c)) if !c.vanished.is_empty() => {
                let what = format!(
                    "no refused snapshot; {} vanished list addresses are forgotten (now \
                     ordinary addresses)",
                    c.vanished.len()
                );
                ((*c).clone(), what)
            }
            _ => {
                return outcome(
                    false,
                    "nothing to accept: no refused snapshot and no vanished list".into(),
                );
            }
        };
        snap.vanished.clear();
        let snap = Arc::new(snap);
        let saving = snap.clone();
        let name = s.name.clone();
        let saved = tokio::task::spawn_blocking(move || {
            ldap::save(&state_dir, &saving)?;
            ldap::remove_pending(&state_dir, &name)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(source = %s.name, "{e}; accepted, but a restart will read the older file")
            }
            Err(e) => error!(source = %s.name, "saving the accepted snapshot failed: {e}"),
        }
        self.lock().insert(s.name.clone(), snap.clone());
        self.shrink_alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.name);
        if snap.age(self.shared.now()) <= s.max_staleness {
            self.stale_alerted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&s.name);
        }
        match self.rebuild().await {
            Ok(()) => {
                warn!(source = %s.name, "accepted by an admin: {what}");
                outcome(true, what)
            }
            Err(e) => {
                error!(source = %s.name, "directory not rebuilt after the accept: {e}");
                outcome(false, format!("{what}, but {e}"))
            }
        }
    }

    /// Hands the snapshots in force to the generation owner, which rebuilds the
    /// directory of the configuration in force with them and swaps it in.
    async fn rebuild(&self) -> Result<(), RebuildError> {
        self.owner.rebuild(self.snapshots()).await
    }

    async fn stale(&self, s: &LdapSettings, error: &str, kept: &str) {
        let first = self
            .stale_alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.name.clone());
        if first {
            warn!(
                source = %s.name,
                on_stale = s.on_stale.as_str(),
                "ldap snapshot older than max_staleness {}",
                humantime::format_duration(s.max_staleness)
            );
            self.shared.alerts.send(Alert {
                kind: AlertKind::DirectoryStale,
                at: self.shared.now(),
                queue_id: None,
                sender: String::new(),
                subject: String::new(),
                audience: 0,
                reason: format!(
                    "LDAP source {} cannot be refreshed ({error}); {kept}; on_stale = {}",
                    s.name,
                    s.on_stale.as_str()
                ),
                held_for: None,
            });
        }
        if s.on_stale != OnStale::UseStale
            && let Err(e) = self.rebuild().await
        {
            error!(source = %s.name, "directory not rebuilt for on_stale: {e}");
        }
    }
}

/// When a source is first due: one interval after `snap`, its snapshot, was taken
/// (its age judged at `wall`), or `now` when it has none, or one taken with other
/// settings (a reload changed them).
fn first_due(snap: Option<&Snapshot>, s: &LdapSettings, now: Instant, wall: SystemTime) -> Instant {
    match snap {
        Some(snap) if snap.fingerprint == ldap::fingerprint(s) => {
            now + s.refresh.saturating_sub(snap.age(wall))
        }
        _ => now,
    }
}

fn ldap_sources(shared: &Shared) -> Vec<LdapSettings> {
    shared
        .current()
        .config
        .directories
        .iter()
        .filter_map(|d| d.ldap.clone())
        .collect()
}

/// A fresh snapshot judged against the one in force.
struct Judged {
    /// The new snapshot, with the lists that vanished when it is taken.
    snapshot: Snapshot,
    /// Its measure.
    after: Measure,
    /// What it loses.
    shrink: Shrink,
    /// True when it loses more than `max_shrink`.
    refused: bool,
    /// How long measuring and comparing took.
    millis: u64,
}

/// The per-list shrink guard's floor when `[drift] min_audience` is 0 (off).
const LIST_FLOOR_WITHOUT_DRIFT: u64 = 1000;

/// Lists with at least this many members before a refresh are refused when they lose
/// more than `max_shrink` of them: `[drift] min_audience`, the size from which a list
/// is big enough to matter, or [`LIST_FLOOR_WITHOUT_DRIFT`] when drift is off.
fn list_floor(config: &crate::config::Config) -> u64 {
    match config.drift_min_audience {
        0 => LIST_FLOOR_WITHOUT_DRIFT,
        n => n,
    }
}

/// Measures `new` (and `previous`, unless `before` is its measure), compares them and,
/// when `new` is taken, carries the vanished lists over. CPU work: a blocking task.
fn judge(
    previous: Option<&Snapshot>,
    before: Option<Arc<Measure>>,
    mut new: Snapshot,
    max_depth: usize,
    max_audience: u64,
    floor: u64,
    max_shrink: crate::config::ldap::Share,
) -> Judged {
    let started = Instant::now();
    let before = previous.map(|p| {
        before.unwrap_or_else(|| Arc::new(Measure::of(&p.lists, max_depth, max_audience)))
    });
    let after = Measure::of(&new.lists, max_depth, max_audience);
    let shrink = Shrink::between(before.as_deref(), &after, floor, max_shrink);
    let refused = shrink.exceeds(max_shrink);
    if !refused && let (Some(p), Some(b)) = (previous, &before) {
        new.vanished = guard::vanished(p, &new, b);
    }
    Judged {
        snapshot: new,
        after,
        shrink,
        refused,
        millis: started.elapsed().as_millis() as u64,
    }
}

/// The next refresh: the interval plus up to a tenth of jitter after a success, a
/// minute (or the interval, if shorter) after a failure.
fn next_due(s: &LdapSettings, ok: bool) -> Instant {
    let wait = if ok {
        let jitter = RandomState::new().hash_one(Instant::now()) % 1000;
        s.refresh + s.refresh / 10 * jitter as u32 / 1000
    } else {
        s.refresh.min(RETRY_AFTER)
    };
    Instant::now() + wait
}

/// The snapshots to start with: the saved ones, and for a source without one, a
/// first refresh (bounded by its `timeout`) so mail to its domains need not wait.
pub async fn initial_snapshots(config: &crate::config::Config, clock: &dyn Clock) -> Snapshots {
    let (mut snapshots, errors) = Snapshots::load_saved(config);
    for e in errors {
        error!("ldap snapshot not used: {e}");
    }
    for s in config.directories.iter().filter_map(|d| d.ldap.as_ref()) {
        if let Some(snap) = snapshots.by_source.get(&s.name) {
            info!(
                source = %s.name,
                age = %humantime::format_duration(Duration::from_secs(snap.age(clock.now()).as_secs())),
                lists = snap.stats.lists,
                "ldap snapshot read from disk"
            );
            continue;
        }
        // A snapshot taken with other settings is not used as it is, but a first
        // refresh that loses too much against it is refused all the same.
        let baseline = match ldap::load_baseline(&config.state_dir, s) {
            Ok(b) => b,
            Err(e) => {
                error!(source = %s.name, "{e}");
                None
            }
        };
        let unjudged = baseline.is_none();
        match ldap::refresh(s, s.timeout).await {
            Ok(snap) => {
                let judged = judge(
                    baseline.as_ref(),
                    None,
                    snap,
                    config.max_depth,
                    config.max_audience,
                    list_floor(config),
                    s.max_shrink,
                );
                if judged.refused {
                    if let Err(e) = ldap::save_pending(&config.state_dir, &judged.snapshot) {
                        error!(source = %s.name, "{e}");
                    }
                    let kept = match baseline {
                        Some(b) => {
                            let kept = "keeping the snapshot taken with the former settings";
                            snapshots.by_source.insert(s.name.clone(), Arc::new(b));
                            kept
                        }
                        None => "mail to its domains is tempfailed",
                    };
                    error!(
                        source = %s.name,
                        "first ldap refresh refused: it loses more than max_shrink {} of the \
                         lists or of their members ({}); {kept}; if that is right: \
                         fanout-milter directory accept --source {}",
                        s.max_shrink.get(),
                        judged.shrink.summary(),
                        s.name
                    );
                    continue;
                }
                let snap = judged.snapshot;
                if let Err(e) = ldap::save(&config.state_dir, &snap) {
                    error!(source = %s.name, "{e}");
                }
                if unjudged {
                    warn!(
                        source = %s.name,
                        lists = snap.stats.lists,
                        millis = snap.millis,
                        "first ldap snapshot taken with no earlier one to compare it with: the \
                         shrink guard could not judge it; check that it is complete"
                    );
                } else {
                    info!(source = %s.name, lists = snap.stats.lists, millis = snap.millis, "first ldap snapshot taken");
                }
                snapshots.by_source.insert(s.name.clone(), Arc::new(snap));
            }
            Err(e) => error!(
                source = %s.name,
                "no ldap snapshot yet ({e}): mail to {} is tempfailed until a refresh succeeds",
                s.domains.join(", ")
            ),
        }
    }
    snapshots.now = clock.now();
    snapshots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base: &str) -> LdapSettings {
        let text = format!(
            "[domains]\ninternal = [\"corp.example\"]\n[quarantine]\nstate_dir = \"/nonexistent\"\n\
             [[directory]]\ntype = \"ldap\"\nurl = \"ldap://dc1.corp.example\"\n\
             base_dns = [\"{base}\"]\ndomains = [\"corp.example\"]\nrefresh = \"15m\"\n"
        );
        let config = crate::config::parse(&text, std::path::Path::new("/etc/f.toml"))
            .expect("configuration");
        config.directories[0].ldap.clone().expect("ldap")
    }

    #[test]
    fn a_source_is_due_an_interval_after_its_snapshot_unless_its_settings_changed() {
        let s = settings("dc=corp,dc=example");
        let taken = SystemTime::now() - Duration::from_secs(5 * 60);
        let snapshot = Snapshot {
            format: 1,
            source: s.name.clone(),
            fingerprint: ldap::fingerprint(&s),
            taken_at: taken
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs(),
            millis: 1,
            searches: 1,
            active_directory: false,
            stats: Default::default(),
            lists: Vec::new(),
            vanished: Vec::new(),
        };
        let wall = SystemTime::now();
        let now = Instant::now();
        let due = first_due(Some(&snapshot), &s, now, wall) - now;
        assert!(
            due > Duration::from_secs(9 * 60) && due <= Duration::from_secs(10 * 60),
            "15 minutes after a snapshot 5 minutes old: {due:?}"
        );
        let moved = settings("ou=elsewhere,dc=corp,dc=example");
        assert_eq!(
            first_due(Some(&snapshot), &moved, now, wall),
            now,
            "other base_dns: the snapshot is not theirs"
        );
        assert_eq!(first_due(None, &s, now, wall), now, "no snapshot yet");
    }

    mod shrink {
        use super::*;
        use crate::config::Config;
        use crate::directory::ldap::fake::FakeDirectory;
        use crate::policy::{Action, MessageFacts, evaluate};
        use crate::shared::Generation;
        use crate::state::{Guard, MemoryBackend};

        const STAFF: &str = "ou=staff,dc=corp,dc=example";
        const PEOPLE: usize = 20_000;

        fn config(dir: &std::path::Path, base: &str) -> Config {
            let text = format!(
                "[domains]\ninternal = [\"corp.example\"]\n[quarantine]\nstate_dir = \"{}\"\n\
                 [[directory]]\ntype = \"ldap\"\nname = \"corp\"\nurl = \"ldap://dc1.corp.example\"\n\
                 base_dns = [\"{base}\"]\ndomains = [\"corp.example\"]\n",
                dir.display()
            );
            crate::config::parse(&text, &dir.join("fanout-milter.toml")).expect("configuration")
        }

        fn ldap_settings(c: &Config) -> &LdapSettings {
            c.directories[0].ldap.as_ref().expect("ldap")
        }

        /// 20,000 people; all@ has them all, dept0@..dept19@ 50 each, small@ three.
        async fn snapshot(c: &Config) -> Snapshot {
            let mut fake = FakeDirectory::active_directory();
            let people: Vec<String> = (0..PEOPLE)
                .map(|i| {
                    let dn = format!("cn=User {i},{STAFF}");
                    fake.person(&dn, &format!("u{i}@corp.example"));
                    dn
                })
                .collect();
            let mut groups = vec![("all".to_owned(), people.clone())];
            for d in 0..20 {
                groups.push((format!("dept{d}"), people[d * 50..d * 50 + 50].to_vec()));
            }
            groups.push(("small".to_owned(), people[..3].to_vec()));
            for (cn, members) in groups {
                let dn = format!("cn={cn},ou=groups,dc=corp,dc=example");
                fake.group(&dn, Some(&format!("{cn}@corp.example")), &members);
            }
            ldap::take(&mut fake, ldap_settings(c))
                .await
                .expect("snapshot")
        }

        /// `full` as a later refresh that no longer finds the groups `without`.
        fn without(full: &Snapshot, without: &[&str]) -> Snapshot {
            let mut s = full.clone();
            s.lists.retain(|l| {
                !without
                    .iter()
                    .any(|cn| l.address == format!("{cn}@corp.example"))
            });
            s.taken_at += 60;
            s
        }

        fn shared(
            c: &Config,
            first: Snapshot,
        ) -> (Arc<Refresher>, Arc<Shared>, crate::notify::AlertReceiver) {
            shared_from(c, Some(first))
        }

        /// A refresher of `c`'s source starting from `first`, with the generation
        /// owner it hands its snapshots to.
        fn shared_from(
            c: &Config,
            first: Option<Snapshot>,
        ) -> (Arc<Refresher>, Arc<Shared>, crate::notify::AlertReceiver) {
            let snapshots = Snapshots {
                by_source: first
                    .into_iter()
                    .map(|f| (f.source.clone(), Arc::new(f)))
                    .collect(),
                now: SystemTime::now(),
            };
            let generation = Generation::load(c.clone(), &snapshots).expect("directory");
            let (alerts, receiver) = crate::notify::channel(16);
            let shared = Arc::new(Shared::new(
                generation,
                Arc::new(crate::quarantine::Store::open(&c.state_dir).expect("store")),
                alerts,
                Guard::new(
                    Arc::new(MemoryBackend::new()),
                    Arc::new(crate::clock::SystemClock),
                    None,
                ),
            ));
            let (_, no_reloads) = tokio::sync::mpsc::channel(1);
            let (owner, _owning) = Owner::spawn(shared.clone(), snapshots.clone(), no_reloads);
            let refresher = Refresher::new(&snapshots, shared.clone(), owner);
            (refresher, shared, receiver)
        }

        /// The audience of `rcpt` in the directory in force, and the action taken on
        /// a message to it.
        fn judged(shared: &Shared, rcpt: &str) -> (u64, u64, Action) {
            let runtime = shared.current();
            let audience = runtime
                .directory
                .audience_facts([rcpt])
                .expect("configured");
            let facts = MessageFacts {
                sender: "ann@corp.example".into(),
                recipients: [rcpt].into_iter().collect(),
                audience: Some(audience.clone()),
                ..MessageFacts::default()
            };
            let verdict = evaluate(&runtime.config.policy, &facts, &Default::default()).verdict;
            (audience.total, audience.unknown, verdict.action)
        }

        /// 30 copies of all@ keep the total high: all@ falling from 20,000 to 3 is 3%
        /// of every list member, but it is refused by the per-list guard.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn one_big_list_that_empties_is_refused_though_the_total_barely_moves() {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = config(dir.path(), "dc=corp,dc=example");
            let s = ldap_settings(&c).clone();
            let mut big = snapshot(&c).await;
            let all = big
                .lists
                .iter()
                .find(|l| l.address == "all@corp.example")
                .cloned()
                .expect("all@");
            for i in 0..30 {
                let mut copy = all.clone();
                copy.address = format!("copy{i}@corp.example");
                copy.aliases.clear();
                big.lists.push(copy);
            }
            let (refresher, shared, mut alerts) = shared(&c, big.clone());
            let mut shrunk = big.clone();
            shrunk.taken_at += 60;
            let l = shrunk
                .lists
                .iter_mut()
                .find(|l| l.address == "all@corp.example")
                .expect("all@");
            l.members.truncate(3);
            let o = refresher.apply(&s, shrunk).await;
            assert!(o.refused && !o.ok, "{o:?}");
            assert!(
                o.message.contains(
                    "1 list(s) lost more than max_shrink of their members: \
                     all@corp.example (20000 -> 3)"
                ),
                "{}",
                o.message
            );
            assert_eq!(
                judged(&shared, "all@corp.example").0,
                20_000,
                "the old one serves"
            );
            let alert = tokio::time::timeout(Duration::from_secs(5), alerts.recv())
                .await
                .expect("an alert within 5 s")
                .expect("an alert");
            assert_eq!(alert.kind, AlertKind::DirectoryShrunk);
            assert!(
                alert.reason.contains("all@corp.example (20000 -> 3)"),
                "{}",
                alert.reason
            );
        }

        /// A source's first snapshot has nothing to be compared with: taken, with a
        /// warning and a `directory-baseline` alert.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_first_snapshot_with_no_baseline_is_alerted() {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = config(dir.path(), "dc=corp,dc=example");
            let s = ldap_settings(&c).clone();
            let full = snapshot(&c).await;
            let (refresher, _shared, mut alerts) = shared_from(&c, None);
            let o = refresher.apply(&s, full.clone()).await;
            assert!(o.ok, "{o:?}");
            let alert = tokio::time::timeout(Duration::from_secs(5), alerts.recv())
                .await
                .expect("an alert within 5 s")
                .expect("an alert");
            assert_eq!(alert.kind, AlertKind::DirectoryBaseline);
            assert!(
                alert.reason.contains("first snapshot of LDAP source corp")
                    && alert.reason.contains("22 lists"),
                "{}",
                alert.reason
            );
            let mut later = full;
            later.taken_at += 60;
            let o = refresher.apply(&s, later).await;
            assert!(o.ok, "{o:?}");
            let again = tokio::time::timeout(Duration::from_millis(50), alerts.recv()).await;
            assert!(again.is_err(), "a later refresh has a baseline: {again:?}");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_refresh_that_loses_lists_is_refused_until_an_admin_accepts_it() {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = config(dir.path(), "dc=corp,dc=example");
            let s = ldap_settings(&c).clone();
            let full = snapshot(&c).await;
            let (refresher, shared, mut alerts) = shared(&c, full.clone());
            assert_eq!(judged(&shared, "all@corp.example").0, 20_000);
            let pending = ldap::pending_path(&c.state_dir, "corp");
            let metric = |name: &str| {
                let text = shared.metrics.encode();
                let series = format!("{name}{{source=\"corp\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&series))
                    .unwrap_or_else(|| panic!("no {series} in {text}"))
                    .parse::<f64>()
                    .unwrap()
            };
            assert_eq!(
                metric("fanout_directory_last_refresh_success_timestamp_seconds"),
                full.taken_at as f64
            );
            assert_eq!(metric("fanout_directory_lists"), full.stats.lists as f64);
            assert_eq!(
                metric("fanout_directory_entries"),
                full.stats.entries as f64
            );
            assert_eq!(metric("fanout_directory_refresh_failures_total"), 0.0);

            // A wrong base: people but no group at all.
            let wrong = config(dir.path(), STAFF);
            let mut fake = FakeDirectory::active_directory();
            fake.person(&format!("cn=Ann,{STAFF}"), "ann@corp.example");
            let empty = ldap::take(&mut fake, ldap_settings(&wrong))
                .await
                .expect("snapshot");
            assert!(empty.lists.is_empty());
            let o = refresher.apply(ldap_settings(&wrong), empty).await;
            assert!(o.refused && !o.ok, "{o:?}");
            assert!(
                o.message.contains("lists 22 -> 0 (22 lost, 100.0%)"),
                "{}",
                o.message
            );
            assert_eq!(
                judged(&shared, "all@corp.example").0,
                20_000,
                "the old snapshot serves"
            );
            assert_eq!(metric("fanout_directory_refresh_failures_total"), 1.0);
            assert_eq!(
                metric("fanout_directory_last_refresh_success_timestamp_seconds"),
                full.taken_at as f64,
                "a refused refresh is no success"
            );
            let alert = tokio::time::timeout(Duration::from_secs(5), alerts.recv())
                .await
                .expect("an alert within 5 s")
                .expect("an alert");
            assert_eq!(alert.kind, AlertKind::DirectoryShrunk);
            assert!(
                alert.reason.contains("directory accept --source corp"),
                "{}",
                alert.reason
            );

            // The 20,000 group alone is 1 list of 22, but most of the members.
            let o = refresher.apply(&s, without(&full, &["all"])).await;
            assert!(o.refused, "{o:?}");
            assert!(
                o.message.contains("largest lost: all@corp.example (20000)"),
                "{}",
                o.message
            );
            assert!(pending.exists(), "kept for the accept");
            let (total, unknown, action) = judged(&shared, "all@corp.example");
            assert_eq!((total, unknown), (20_000, 0), "still 20,000, never 1");
            assert_eq!(
                action,
                Action::Quarantine,
                "over limits.audience quarantine"
            );
            let again = tokio::time::timeout(Duration::from_millis(50), alerts.recv()).await;
            assert!(again.is_err(), "one alert until it is resolved: {again:?}");

            // Accepted: the daemon takes it without asking the directory again.
            let o = refresher.accept_one(&s).await;
            assert!(o.ok, "{o:?}");
            assert!(!pending.exists());
            assert_eq!(
                judged(&shared, "all@corp.example"),
                (1, 0, Action::Accept),
                "gone"
            );
            assert_eq!(
                ldap::load_saved(&c.state_dir, &s)
                    .expect("saved")
                    .expect("a snapshot")
                    .lists
                    .len(),
                21,
                "a restart reads the accepted snapshot"
            );
            let o = refresher.accept_one(&s).await;
            assert!(!o.ok && o.message.contains("nothing to accept"), "{o:?}");

            // A small list gone is taken, and counts as unknown, never as 1.
            let o = refresher.apply(&s, without(&full, &["all", "small"])).await;
            assert!(o.ok && !o.refused, "{o:?}");
            assert!(
                o.message
                    .contains("1 vanished list addresses count as unknown"),
                "{}",
                o.message
            );
            let (total, unknown, action) = judged(&shared, "small@corp.example");
            assert_eq!((total, unknown), (0, 1));
            assert_eq!(action, Action::Quarantine, "[expansion] on_unknown");
            assert_eq!(judged(&shared, "dept3@corp.example").0, 50);
            let o = refresher.apply(&s, without(&full, &["all", "small"])).await;
            assert!(o.ok, "{o:?}");
            assert_eq!(judged(&shared, "small@corp.example").1, 1, "still unknown");
            let saved = ldap::load_saved(&c.state_dir, &s)
                .expect("saved")
                .expect("a snapshot");
            assert_eq!(saved.vanished.len(), 1, "remembered across a restart");

            // Until the admin says it is gone.
            let o = refresher.accept_one(&s).await;
            assert!(
                o.ok && o
                    .message
                    .contains("1 vanished list addresses are forgotten"),
                "{o:?}"
            );
            assert_eq!(
                judged(&shared, "small@corp.example"),
                (1, 0, Action::Accept)
            );
        }
    }
}
