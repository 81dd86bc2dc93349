// SPDX-License-Identifier: GPL-3.0-or-later
//! The emergency brake: during an incident an admin pulls it (`fanout-milter brake on`
//! through the control socket, or the review desk) and every message whose real
//! audience is at least a given size is held, on every relay that shares the state
//! backend, within a second; small mail keeps flowing. The first minutes of an incident
//! count: the service in the incident needed most of an hour to stop its list.
//!
//! The brake lives in the state backend ([`crate::state::Brake`]); each daemon reads it
//! twice a second ([`REFRESH_EVERY`]) into its [`Guard`], so a message pays no round trip
//! for it. Pulling and releasing it are recorded in the quarantine store's events.
//!
//! Each daemon keeps the last brake it read in its state directory ([`FILE_NAME`]), and
//! starts with it ([`restore`]): a relay that starts while Redis is down holds what the
//! fleet's brake holds until Redis answers, and a relay with state in memory keeps its
//! brake across a restart.

use crate::clock::epoch_secs;
use crate::quarantine::{AuditEntry, QuarantineIndex};
use crate::state::{Brake, Guard, MemoryBackend, StateBackend as _, StateError};
use crate::state_dir::{StateDir, StateDirError};
use crate::text;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// The file in the state directory with the last brake the daemon read (JSON; `null`
/// when it was off).
pub const FILE_NAME: &str = "brake.json";

/// How often a daemon reads the brake from the state backend.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// Why the brake was not changed.
#[derive(Debug, thiserror::Error)]
pub enum BrakeError {
    /// The request makes no sense.
    #[error("{0}")]
    Invalid(String),
    /// The state backend did not take it.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A brake just pulled, and the one it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The brake now on.
    pub brake: Brake,
    /// The brake that was on before, which this one replaced (there is one brake).
    pub replaced: Option<Brake>,
}

/// "min audience 100 by carol since 2027-01-15T08:00:00Z": a replaced brake, for the
/// audit trail, the command line and the desk (not neutralised: callers do that).
pub fn replaced_text(b: &Brake) -> String {
    format!(
        "min audience {} by {} since {}",
        b.min_audience,
        b.by,
        text::utc_seconds(b.since)
    )
}

/// Pulls the brake at `min_audience` for `hold_for` (until released when `None`), by
/// `by` because of `comment`; records the event in `events` when given. A brake that
/// is on already is replaced (there is one brake), and the answer says which: the
/// backend is read just before (another relay may have pulled it within the last
/// half second); two admins pulling at the same instant on two relays may still
/// each be told of the brake before, not of each other's.
pub async fn pull(
    guard: &Guard,
    events: Option<Arc<dyn QuarantineIndex>>,
    min_audience: u64,
    hold_for: Option<Duration>,
    by: &str,
    comment: &str,
) -> Result<Pulled, BrakeError> {
    if min_audience == 0 {
        return Err(BrakeError::Invalid(
            "the brake's minimum audience must be at least 1".into(),
        ));
    }
    if comment.trim().is_empty() {
        return Err(BrakeError::Invalid("a comment is required".into()));
    }
    let replaced = match guard.refresh_brake().await {
        Ok(on) => on,
        Err(_) => guard.brake(),
    };
    let now = epoch_secs(guard.now());
    let brake = Brake {
        min_audience,
        since: now,
        until: hold_for.map(|d| now.saturating_add(d.as_secs().max(1))),
        by: by.to_owned(),
        comment: comment.to_owned(),
    }
    .kept();
    guard.set_brake(Some(brake.clone())).await?;
    let what = match hold_for {
        Some(d) => format!(
            "holds audiences of {min_audience}+ for {}",
            humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
        ),
        None => format!("holds audiences of {min_audience}+ until released"),
    };
    let (action, what) = match &replaced {
        Some(old) => (
            "brake replaced",
            format!("replaced {}; {what}", replaced_text(old)),
        ),
        None => ("brake on", what),
    };
    if let Some(old) = &replaced {
        warn!(
            replaced = %text::neutralize(&replaced_text(old)),
            "emergency brake replaced by a new one"
        );
    }
    record(
        events,
        now,
        by,
        action,
        format!("{what}: {}", brake.comment),
    )
    .await;
    Ok(Pulled { brake, replaced })
}

/// Releases the brake, by `by` because of `comment`; records the event.
pub async fn release(
    guard: &Guard,
    events: Option<Arc<dyn QuarantineIndex>>,
    by: &str,
    comment: &str,
) -> Result<(), BrakeError> {
    if comment.trim().is_empty() {
        return Err(BrakeError::Invalid("a comment is required".into()));
    }
    guard.set_brake(None).await?;
    let now = epoch_secs(guard.now());
    record(events, now, by, "brake off", comment.to_owned()).await;
    Ok(())
}

/// Writes an event; a store failure is logged, not returned: the brake itself is
/// already changed, which is what matters in an incident.
async fn record(
    events: Option<Arc<dyn QuarantineIndex>>,
    at: u64,
    by: &str,
    action: &str,
    comment: String,
) {
    let Some(events) = events else {
        return;
    };
    let entry = AuditEntry {
        at,
        who: text::cap(by, 100).into_owned(),
        action: action.to_owned(),
        comment: Some(text::cap(&comment, 1000).into_owned()),
    };
    let written = tokio::task::spawn_blocking(move || events.record_event(&entry)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("{action} not recorded in the quarantine store: {e}"),
        Err(e) => warn!("{action} not recorded in the quarantine store: {e}"),
    }
}

/// Reads the brake into `guard` every [`REFRESH_EVERY`], for ever (the daemon's task),
/// and keeps the last one read in `state_dir` (see [`restore`]). A failed read keeps
/// the brake last read and is logged once until reads work again.
pub async fn keep_fresh(guard: Guard, state_dir: Option<PathBuf>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut kept = Kept {
        state_dir,
        last: Some(guard.brake()),
    };
    loop {
        tick.tick().await;
        match guard.refresh_brake().await {
            Ok(brake) => {
                failing = false;
                kept.note(brake).await;
            }
            Err(e) if !failing => {
                failing = true;
                warn!(
                    "emergency brake not read from the state backend (the last one read stays in force): {e}"
                );
            }
            Err(_) => {}
        }
    }
}

/// The brake last written to the state directory.
struct Kept {
    state_dir: Option<PathBuf>,
    /// What the file says (`None`: not known, written at the next read).
    last: Option<Option<Brake>>,
}

impl Kept {
    /// Writes `brake` when it differs from what the file says; a failure is logged
    /// and tried again at the next read.
    async fn note(&mut self, brake: Option<Brake>) {
        let Some(dir) = self.state_dir.clone() else {
            return;
        };
        if self.last.as_ref() == Some(&brake) {
            return;
        }
        let saving = brake.clone();
        match tokio::task::spawn_blocking(move || save(&dir, saving.as_ref())).await {
            Ok(Ok(())) => self.last = Some(brake),
            Ok(Err(e)) => {
                self.last = None;
                warn!("the emergency brake was not kept in the state directory: {e}");
            }
            Err(e) => {
                self.last = None;
                warn!("the emergency brake was not kept in the state directory: {e}");
            }
        }
    }
}

/// Writes the brake (or `null`) to [`FILE_NAME`] in `state_dir`, atomically, never
/// through a link (blocking).
fn save(state_dir: &Path, brake: Option<&Brake>) -> Result<(), StateDirError> {
    let json = serde_json::to_vec(&brake).expect("a brake serialises");
    StateDir::open(state_dir, None)?.write_atomic(FILE_NAME, &json)
}

/// The brake kept in `state_dir`, when it is still on at `now` (seconds since the
/// epoch); a missing file is none, an unreadable one is none with a warning
/// (blocking).
fn load(state_dir: &Path, now: u64) -> Option<Brake> {
    let read = StateDir::open(state_dir, None).and_then(|d| d.read(FILE_NAME));
    let bytes = match read {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(StateDirError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return None;
        }
        Err(e) => {
            warn!("the emergency brake kept in the state directory is not used: {e}");
            return None;
        }
    };
    match serde_json::from_slice::<Option<Brake>>(&bytes) {
        Ok(brake) => brake.map(|b| b.kept()).filter(|b| b.active(now)),
        Err(e) => {
            warn!(
                "{}: not a brake, not used: {e}",
                state_dir.join(FILE_NAME).display()
            );
            None
        }
    }
}

/// At start: puts the brake kept in `state_dir`, if it is still on, into `guard` and
/// into `local` (the state the daemon falls back to, or its only state), so that it
/// holds from the first message until the shared backend answers (which then says
/// whether it is still on). Returns it.
pub async fn restore(guard: &Guard, local: &MemoryBackend, state_dir: &Path) -> Option<Brake> {
    let dir = state_dir.to_owned();
    let now = guard.now();
    let at = epoch_secs(now);
    let brake = tokio::task::spawn_blocking(move || load(&dir, at))
        .await
        .ok()
        .flatten()?;
    if let Err(e) = local.brake_set(Some(&brake), now).await {
        warn!("the emergency brake kept in the state directory is not used: {e}");
        return None;
    }
    guard.assume_brake(Some(brake.clone()));
    warn!(
        min_audience = brake.min_audience,
        until = brake.until,
        by = %text::neutralize(&brake.by),
        "emergency brake restored from the state directory (the last one this relay read); \
         the shared state decides when it answers"
    );
    Some(brake)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::quarantine::Store;
    use crate::state::MemoryBackend;
    use std::time::SystemTime;

    #[tokio::test]
    async fn pulled_for_a_while_it_lets_go_by_itself_and_every_change_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn QuarantineIndex> = Arc::new(Store::open(dir.path()).unwrap());
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let guard = Guard::new(Arc::new(MemoryBackend::new()), clock.clone(), None);
        let other_relay = guard.clone();
        assert!(matches!(
            pull(&guard, None, 0, None, "carol", "x").await,
            Err(BrakeError::Invalid(_))
        ));
        assert!(matches!(
            pull(&guard, None, 100, None, "carol", " ").await,
            Err(BrakeError::Invalid(_))
        ));
        assert_eq!(guard.brake(), None);
        let Pulled { brake: b, replaced } = pull(
            &guard,
            Some(store.clone()),
            100,
            Some(Duration::from_secs(7200)),
            "carol",
            "list bug",
        )
        .await
        .unwrap();
        assert_eq!(replaced, None);
        assert_eq!(b.until, Some(1_800_007_200));
        assert_eq!(other_relay.brake().map(|b| b.min_audience), Some(100));
        clock.advance(Duration::from_secs(7199));
        assert!(guard.brake().is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(guard.brake(), None, "it ends by itself");
        assert_eq!(guard.refresh_brake().await.unwrap(), None);
        let again = pull(&guard, Some(store.clone()), 5, None, "dave", "again")
            .await
            .unwrap();
        assert_eq!(again.replaced, None, "the first one ended by itself");
        clock.advance(Duration::from_secs(60));
        let third = pull(
            &other_relay,
            Some(store.clone()),
            50,
            None,
            "fred",
            "tighter",
        )
        .await
        .unwrap();
        assert_eq!(
            third.replaced,
            Some(again.brake.clone()),
            "told what it replaced"
        );
        assert_eq!(
            replaced_text(&again.brake),
            "min audience 5 by dave since 2027-01-15T10:00:00Z"
        );
        clock.advance(Duration::from_secs(86400 * 30));
        assert!(guard.brake().is_some(), "without an end it stays");
        release(&guard, Some(store.clone()), "erin", "over")
            .await
            .unwrap();
        assert_eq!(guard.brake(), None);
        let events = store.events(10).unwrap();
        let summary: Vec<(String, String, String)> = events
            .iter()
            .map(|e| {
                (
                    e.who.clone(),
                    e.action.clone(),
                    e.comment.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("erin".into(), "brake off".into(), "over".into()),
                (
                    "fred".into(),
                    "brake replaced".into(),
                    "replaced min audience 5 by dave since 2027-01-15T10:00:00Z; holds \
                     audiences of 50+ until released: tighter"
                        .into()
                ),
                (
                    "dave".into(),
                    "brake on".into(),
                    "holds audiences of 5+ until released: again".into()
                ),
                (
                    "carol".into(),
                    "brake on".into(),
                    "holds audiences of 100+ for 2h: list bug".into()
                ),
            ]
        );
    }

    /// The brake read is kept in the state directory; a relay that starts while Redis
    /// is down (nothing listens on its port) starts with it and keeps it; a brake over
    /// by now, a planted link and garbage are not used.
    #[tokio::test]
    async fn a_relay_starting_while_redis_is_down_knows_the_last_brake() {
        use crate::config::OnFailure;
        use crate::state::{Failover, RedisBackend};
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        // The first run: the brake pulled, read and kept.
        let running = Guard::new(Arc::new(MemoryBackend::new()), clock.clone(), None);
        let mut kept = Kept {
            state_dir: Some(state.clone()),
            last: Some(None),
        };
        let pulled = pull(
            &running,
            None,
            200,
            Some(Duration::from_secs(3600)),
            "carol",
            "loop",
        )
        .await
        .unwrap()
        .brake;
        kept.note(running.refresh_brake().await.unwrap()).await;
        assert_eq!(load(&state, 1_800_000_000), Some(pulled.clone()));

        // A restart with Redis down: a closed port on loopback.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let remote = Arc::new(
            RedisBackend::new(
                &format!("redis://127.0.0.1:{port}"),
                "fanout:",
                Duration::from_millis(200),
            )
            .unwrap(),
        );
        let local = Arc::new(MemoryBackend::new());
        let failover = Failover::new(
            remote,
            local.clone(),
            "redis://127.0.0.1",
            OnFailure::Local,
            Duration::from_millis(200),
            None,
            clock.clone(),
        );
        let restarted = Guard::new(Arc::new(failover.clone()), clock.clone(), None);
        assert_eq!(restarted.brake(), None, "nothing known before the restore");
        assert_eq!(
            restore(&restarted, &local, &state).await,
            Some(pulled.clone())
        );
        assert_eq!(
            restarted.brake(),
            Some(pulled.clone()),
            "from the first message"
        );
        assert_eq!(
            restarted.refresh_brake().await.unwrap(),
            Some(pulled.clone()),
            "Redis does not answer: the kept brake holds"
        );
        assert!(!failover.is_up());

        // Over by now: not used.
        clock.advance(Duration::from_secs(3600));
        let later = Guard::new(Arc::new(MemoryBackend::new()), clock.clone(), None);
        assert_eq!(restore(&later, &MemoryBackend::new(), &state).await, None);
        // Released: `null` kept, nothing restored.
        kept.note(None).await;
        assert_eq!(std::fs::read(state.join(FILE_NAME)).unwrap(), b"null");
        // Garbage, and a link planted in its place, are not used.
        std::fs::write(state.join(FILE_NAME), b"{not json").unwrap();
        assert_eq!(load(&state, 1_800_000_000), None);
        let target = dir.path().join("elsewhere.json");
        std::fs::write(&target, serde_json::to_vec(&Some(&pulled)).unwrap()).unwrap();
        std::fs::remove_file(state.join(FILE_NAME)).unwrap();
        std::os::unix::fs::symlink(&target, state.join(FILE_NAME)).unwrap();
        assert_eq!(load(&state, 1_800_000_000), None, "not read through a link");
        assert_eq!(load(&dir.path().join("missing"), 1_800_000_000), None);
    }
}
