// SPDX-License-Identifier: GPL-3.0-or-later
//! Keeps the LDAP snapshots of the running daemon fresh: each source is refreshed on
//! its interval (with jitter) or on an admin's request, off the mail path; a good
//! snapshot is saved to disk and the directory rebuilt and swapped in whole; a failed
//! one changes nothing but the log, and past `max_staleness` an alert.

use crate::config::ldap::{LdapSettings, OnStale};
use crate::directory::ldap::{self, Snapshot, Snapshots};
use crate::notify::{Alert, AlertKind};
use crate::server::{Runtime, Shared};
use serde::{Deserialize, Serialize};
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

/// What one refresh did, for `fanout-milter directory refresh`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshOutcome {
    /// The source.
    pub source: String,
    /// True when a new snapshot is in force.
    pub ok: bool,
    /// Counts and duration, or the error.
    pub message: String,
}

/// A request to refresh one source (`None`: all) now.
pub struct RefreshRequest {
    /// The source's name.
    pub source: Option<String>,
    /// Where the outcomes go.
    pub reply: oneshot::Sender<Vec<RefreshOutcome>>,
}

/// The daemon's LDAP snapshots and the task that refreshes them.
pub struct Refresher {
    snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
    stale_alerted: Mutex<HashSet<String>>,
    requests: mpsc::Sender<RefreshRequest>,
    receiver: Mutex<Option<mpsc::Receiver<RefreshRequest>>>,
    changed: Notify,
}

impl Refresher {
    /// A refresher starting from `initial` (saved or first snapshots).
    pub fn new(initial: &Snapshots) -> Arc<Refresher> {
        let (requests, receiver) = mpsc::channel(8);
        Arc::new(Refresher {
            snapshots: Mutex::new(initial.by_source.clone()),
            stale_alerted: Mutex::new(HashSet::new()),
            requests,
            receiver: Mutex::new(Some(receiver)),
            changed: Notify::new(),
        })
    }

    /// The snapshots in force, judged at the current time.
    pub fn snapshots(&self) -> Snapshots {
        Snapshots {
            by_source: self.lock().clone(),
            now: SystemTime::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Snapshot>>> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where admin requests go.
    pub fn requests(&self) -> mpsc::Sender<RefreshRequest> {
        self.requests.clone()
    }

    /// Tells the task the configuration changed (sources may have come or gone).
    pub fn config_changed(&self) {
        self.changed.notify_one();
    }

    /// Refreshes sources until the daemon stops. Runs once; later calls return at once.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let Some(mut rx) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut settings_seen: HashMap<String, String> = HashMap::new();
        loop {
            let sources = ldap_sources(&shared);
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
                            let outcome = self.refresh_one(&shared, s).await;
                            due.insert(s.name.clone(), next_due(s, outcome.ok));
                        }
                    }
                }
                () = self.changed.notified() => {}
                request = rx.recv() => {
                    let Some(request) = request else { return };
                    let mut outcomes = Vec::new();
                    for s in &sources {
                        if request.source.as_deref().is_none_or(|n| n == s.name) {
                            let outcome = self.refresh_one(&shared, s).await;
                            due.insert(s.name.clone(), next_due(s, outcome.ok));
                            outcomes.push(outcome);
                        }
                    }
                    if outcomes.is_empty() {
                        outcomes.push(RefreshOutcome {
                            source: request.source.unwrap_or_default(),
                            ok: false,
                            message: "no such LDAP source in the configuration".into(),
                        });
                    }
                    let _ = request.reply.send(outcomes);
                }
            }
        }
    }

    /// When a source is first due: one interval after its snapshot was taken, or now
    /// when it has none, or one taken with other settings (a reload changed them).
    fn first_due(&self, s: &LdapSettings, now: Instant) -> Instant {
        match self.lock().get(&s.name) {
            Some(snap) if snap.fingerprint == ldap::fingerprint(s) => {
                now + s.refresh.saturating_sub(snap.age(SystemTime::now()))
            }
            _ => now,
        }
    }

    /// Refreshes one source and, when it worked, swaps the rebuilt directory in.
    pub async fn refresh_one(&self, shared: &Arc<Shared>, s: &LdapSettings) -> RefreshOutcome {
        let deadline = s
            .refresh
            .clamp(s.timeout, MAX_REFRESH_DEADLINE.max(s.timeout));
        let settings = s.clone();
        info!(source = %s.name, url = %crate::config::redact_url(&s.url), "ldap refresh started");
        let result = tokio::spawn(async move { ldap::refresh(&settings, deadline).await })
            .await
            .map_err(|e| format!("refresh task failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let outcome = |ok, message| RefreshOutcome {
            source: s.name.clone(),
            ok,
            message,
        };
        match result {
            Ok(snap) => {
                let state_dir = shared.runtime.load().config.state_dir.clone();
                let snap = Arc::new(snap);
                let saving = snap.clone();
                match tokio::task::spawn_blocking(move || ldap::save(&state_dir, &saving)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(
                        source = %s.name,
                        "{e}; the new snapshot is used, but a restart will read the older file"
                    ),
                    Err(e) => error!(source = %s.name, "saving the snapshot failed: {e}"),
                }
                let st = &snap.stats;
                let summary = format!(
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
                self.lock().insert(s.name.clone(), snap.clone());
                self.stale_alerted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&s.name);
                match rebuild(shared, self).await {
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
            Err(e) => {
                let age = self
                    .lock()
                    .get(&s.name)
                    .map(|snap| snap.age(SystemTime::now()));
                let kept = match age {
                    Some(a) => format!(
                        "keeping the snapshot taken {} ago",
                        humantime::format_duration(Duration::from_secs(a.as_secs()))
                    ),
                    None => "there is no snapshot: mail to its domains is tempfailed".into(),
                };
                error!(source = %s.name, "ldap refresh failed: {e}; {kept}");
                let stale = age.is_none_or(|a| a > s.max_staleness);
                if stale {
                    self.stale(shared, s, &e, &kept).await;
                }
                outcome(false, format!("refresh failed: {e}; {kept}"))
            }
        }
    }

    async fn stale(&self, shared: &Arc<Shared>, s: &LdapSettings, error: &str, kept: &str) {
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
            shared.alerts.send(Alert {
                kind: AlertKind::DirectoryStale,
                at: SystemTime::now(),
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
            && let Err(e) = rebuild(shared, self).await
        {
            error!(source = %s.name, "directory not rebuilt for on_stale: {e}");
        }
    }
}

fn ldap_sources(shared: &Shared) -> Vec<LdapSettings> {
    shared
        .runtime
        .load()
        .config
        .directories
        .iter()
        .filter_map(|d| d.ldap.clone())
        .collect()
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

/// Rebuilds the directory from the configuration in force and the current snapshots,
/// and swaps it in; a reload does the same under the same lock.
pub async fn rebuild(
    shared: &Shared,
    refresher: &Refresher,
) -> Result<(), crate::directory::DirectoryError> {
    let _one_at_a_time = shared.rebuild.lock().await;
    let config = shared.runtime.load().config.clone();
    let snapshots = refresher.snapshots();
    let loaded = tokio::task::spawn_blocking(move || Runtime::load(config, &snapshots)).await;
    match loaded {
        Ok(Ok(runtime)) => {
            shared.runtime.store(Arc::new(runtime));
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(e) => {
            error!("directory rebuild task failed: {e}");
            Ok(())
        }
    }
}

/// The snapshots to start with: the saved ones, and for a source without one, a
/// first refresh (bounded by its `timeout`) so mail to its domains need not wait.
pub async fn initial_snapshots(config: &crate::config::Config) -> Snapshots {
    let (mut snapshots, errors) = Snapshots::load_saved(config);
    for e in errors {
        error!("ldap snapshot not used: {e}");
    }
    for s in config.directories.iter().filter_map(|d| d.ldap.as_ref()) {
        if let Some(snap) = snapshots.by_source.get(&s.name) {
            info!(
                source = %s.name,
                age = %humantime::format_duration(Duration::from_secs(snap.age(SystemTime::now()).as_secs())),
                lists = snap.stats.lists,
                "ldap snapshot read from disk"
            );
            continue;
        }
        match ldap::refresh(s, s.timeout).await {
            Ok(snap) => {
                if let Err(e) = ldap::save(&config.state_dir, &snap) {
                    error!(source = %s.name, "{e}");
                }
                info!(source = %s.name, lists = snap.stats.lists, millis = snap.millis, "first ldap snapshot taken");
                snapshots.by_source.insert(s.name.clone(), Arc::new(snap));
            }
            Err(e) => error!(
                source = %s.name,
                "no ldap snapshot yet ({e}): mail to {} is tempfailed until a refresh succeeds",
                s.domains.join(", ")
            ),
        }
    }
    snapshots.now = SystemTime::now();
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
        };
        let refresher = Refresher::new(&Snapshots {
            by_source: HashMap::from([(s.name.clone(), Arc::new(snapshot))]),
            now: SystemTime::now(),
        });
        let now = Instant::now();
        let due = refresher.first_due(&s, now) - now;
        assert!(
            due > Duration::from_secs(9 * 60) && due <= Duration::from_secs(10 * 60),
            "15 minutes after a snapshot 5 minutes old: {due:?}"
        );
        let moved = settings("ou=elsewhere,dc=corp,dc=example");
        assert_eq!(
            refresher.first_due(&moved, now),
            now,
            "other base_dns: the snapshot is not theirs"
        );
        let fresh = Refresher::new(&Snapshots::default());
        assert_eq!(fresh.first_due(&s, now), now, "no snapshot yet");
    }
}
