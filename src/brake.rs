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

use crate::clock::epoch_secs;
use crate::quarantine::{AuditEntry, QuarantineIndex};
use crate::state::{Brake, Guard, StateError};
use crate::text;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

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

/// Pulls the brake at `min_audience` for `hold_for` (until released when `None`), by
/// `by` because of `comment`; records the event in `events` when given.
pub async fn pull(
    guard: &Guard,
    events: Option<Arc<dyn QuarantineIndex>>,
    min_audience: u64,
    hold_for: Option<Duration>,
    by: &str,
    comment: &str,
) -> Result<Brake, BrakeError> {
    if min_audience == 0 {
        return Err(BrakeError::Invalid(
            "the brake's minimum audience must be at least 1".into(),
        ));
    }
    if comment.trim().is_empty() {
        return Err(BrakeError::Invalid("a comment is required".into()));
    }
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
    record(
        events,
        now,
        by,
        "brake on",
        format!("{what}: {}", brake.comment),
    )
    .await;
    Ok(brake)
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

/// Reads the brake into `guard` every [`REFRESH_EVERY`], for ever (the daemon's task).
/// A failed read keeps the brake last read and is logged once until reads work again.
pub async fn keep_fresh(guard: Guard) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match guard.refresh_brake().await {
            Ok(_) => failing = false,
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
        let b = pull(
            &guard,
            Some(store.clone()),
            100,
            Some(Duration::from_secs(7200)),
            "carol",
            "list bug",
        )
        .await
        .unwrap();
        assert_eq!(b.until, Some(1_800_007_200));
        assert_eq!(other_relay.brake().map(|b| b.min_audience), Some(100));
        clock.advance(Duration::from_secs(7199));
        assert!(guard.brake().is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(guard.brake(), None, "it ends by itself");
        assert_eq!(guard.refresh_brake().await.unwrap(), None);
        pull(&guard, Some(store.clone()), 5, None, "dave", "again")
            .await
            .unwrap();
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
}
