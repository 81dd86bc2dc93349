// SPDX-License-Identifier: GPL-3.0-or-later
//! What a scrape reads outside the registry before it is served: the quarantine store
//! (held now, overdue, review actions), the storms being stopped, the brake and the
//! relay-wide breaker. A part that cannot be read keeps its last value; the log says
//! why.

use crate::metrics::serve::{Exporter, Refresh};
use crate::shared::Shared;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use tracing::warn;

/// The exporter of `shared`'s metrics, reading the rest at each scrape.
pub fn exporter(shared: &Arc<Shared>, token_file: Option<PathBuf>) -> Exporter {
    let weak = Arc::downgrade(shared);
    let refresh: Refresh = Arc::new(move || {
        let weak: Weak<Shared> = weak.clone();
        Box::pin(async move {
            if let Some(shared) = weak.upgrade() {
                read(&shared).await;
            }
        })
    });
    Exporter::new(shared.metrics.clone(), refresh, token_file)
}

/// Reads the store, the storms, the brake and the breaker into the metrics.
pub async fn read(shared: &Shared) {
    let now = shared.now();
    let store = shared.store.clone();
    let review_within = shared.current().config.quarantine.review_within;
    let secs = crate::clock::epoch_secs(now);
    match tokio::task::spawn_blocking(move || store.tally(secs, review_within)).await {
        Ok(Ok(reading)) => shared.metrics.set_held(&reading),
        Ok(Err(e)) => warn!(
            "metrics: cannot read the quarantine store: {}",
            crate::text::neutralize(&e.to_string())
        ),
        Err(e) => warn!("metrics: the store reader failed: {e}"),
    }
    match shared.guard.backend().storm_list(now).await {
        Ok(storms) => shared
            .metrics
            .set_storms_active(storms.iter().filter(|s| s.active(now)).count()),
        Err(e) => warn!(
            "metrics: cannot list storms: {}",
            crate::text::neutralize(&e.to_string())
        ),
    }
    shared.metrics.set_brake(shared.guard.brake().is_some());
    let max_per_minute = shared.current().config.policy.breaker.max_per_minute;
    match shared.guard.breaker_open(max_per_minute).await {
        Ok(open) => shared.metrics.set_breaker(open),
        Err(e) => warn!(
            "metrics: cannot read the relay-wide breaker: {}",
            crate::text::neutralize(&e.to_string())
        ),
    }
}
