// SPDX-License-Identifier: GPL-3.0-or-later
//! What the store tells the metrics at each scrape: what is held now and since when,
//! by the rule that held it; what is overdue for review; review actions carried out
//! and failed. Records, requests and audit entries are never deleted, so the action
//! counts only grow. Read on a connection of its own, so a scrape never holds up the
//! milter's writes.

use super::store::{SqliteStore, StoreError};
use crate::metrics::{self, HeldReading, REVIEW_ACTIONS, REVIEW_VIA, RULE_FOREIGN, RULE_NONE};
use rusqlite::params;
use std::collections::HashMap;
use std::time::Duration;

/// Held records, their deciding rule (the first in `rules`), foreign or not, and when
/// they were held.
const HELD: &str = "SELECT rules, foreign_hold, held_at FROM held WHERE state = 'held'";

/// Held past `review_within` and waiting for an admin: not foreign, not extended into
/// the future, not waiting for its sender (a confirm hold nobody extended).
const OVERDUE: &str = "SELECT count(*), min(held_at) FROM held
     WHERE state = 'held' AND foreign_hold = 0
     AND held_at <= ?1
     AND (hold_until IS NULL OR hold_until <= ?2)
     AND NOT (hold_until IS NULL AND coalesce(json_extract(facts, '$.confirm'), 0))";

const REQUESTS: &str = "SELECT action, via, state, count(*) FROM requests
     WHERE state IN ('done', 'failed') GROUP BY action, via, state";

/// Expired by the sweep (a state no record leaves).
const EXPIRED: &str = "SELECT count(*) FROM held WHERE state = 'expired'";

/// Discarded by the sweep because the sender did not confirm in time (not one the
/// sweep failed to discard and a reviewer discarded later: that is the reviewer's).
const UNCONFIRMED: &str = "SELECT count(*) FROM held h WHERE h.state = 'discarded'
     AND EXISTS (SELECT 1 FROM audit a WHERE a.held_id = h.id AND a.action = 'unconfirmed'
         AND NOT EXISTS (SELECT 1 FROM audit b WHERE b.held_id = h.id AND b.id > a.id
             AND b.action = 'discard'))";

impl SqliteStore {
    /// The counts `/metrics` shows, at `now` (seconds since the epoch).
    pub fn tally(&self, now: u64, review_within: Duration) -> Result<HeldReading, StoreError> {
        let conn = self.reader()?;
        let mut by_rule: HashMap<&'static str, (u64, u64)> = HashMap::new();
        let mut stmt = conn.prepare_cached(HELD).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (rules, foreign, held_at) = row.map_err(|e| self.err(e))?;
            let rule = if foreign {
                RULE_FOREIGN
            } else {
                rules
                    .split_whitespace()
                    .next()
                    .map_or(RULE_NONE, metrics::rule_label)
            };
            let held_at = u64::try_from(held_at).unwrap_or(0);
            let entry = by_rule.entry(rule).or_insert((0, held_at));
            entry.0 += 1;
            entry.1 = entry.1.min(held_at);
        }
        drop(stmt);
        let due = i64::try_from(now.saturating_sub(review_within.as_secs())).unwrap_or(i64::MAX);
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let (overdue, overdue_oldest): (i64, Option<i64>) = conn
            .query_row(OVERDUE, params![due, now_i], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        let mut actions = Vec::new();
        let mut failures: HashMap<&'static str, u64> = HashMap::new();
        let mut stmt = conn.prepare_cached(REQUESTS).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (action, via, state, n) = row.map_err(|e| self.err(e))?;
            let n = u64::try_from(n).unwrap_or(0);
            let Some(action) = REVIEW_ACTIONS.into_iter().find(|a| *a == action) else {
                continue;
            };
            if state == "failed" {
                *failures.entry(action).or_default() += n;
            } else if let Some(via) = REVIEW_VIA.into_iter().find(|v| *v == via) {
                actions.push((action, via, n));
            }
        }
        drop(stmt);
        let expired: i64 = conn
            .query_row(EXPIRED, [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        actions.push(("expire", "sweep", u64::try_from(expired).unwrap_or(0)));
        let unconfirmed: i64 = conn
            .query_row(UNCONFIRMED, [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        actions.push(("discard", "sweep", u64::try_from(unconfirmed).unwrap_or(0)));
        let mut by_rule: Vec<(&'static str, u64, u64)> = by_rule
            .into_iter()
            .map(|(rule, (n, oldest))| (rule, n, oldest))
            .collect();
        by_rule.sort_unstable();
        let mut failures: Vec<(&'static str, u64)> = failures.into_iter().collect();
        failures.sort_unstable();
        Ok(HeldReading {
            by_rule,
            overdue: u64::try_from(overdue).unwrap_or(0),
            overdue_oldest: overdue_oldest
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(0),
            actions,
            failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::Store;
    use crate::quarantine::index::{NewRequest, QuarantineIndex, RequestAction, Via};
    use crate::quarantine::record::{AuditEntry, QueueId, RuleHit, State};
    use crate::quarantine::store::tests::held;

    fn rule(name: &str) -> Vec<RuleHit> {
        vec![RuleHit {
            rule: name.into(),
            action: "quarantine".into(),
            message: String::new(),
        }]
    }

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            at: 0,
            who: "sweep".into(),
            action: action.into(),
            comment: None,
        }
    }

    #[test]
    fn the_tally_counts_holds_by_deciding_rule_overdue_holds_and_finished_actions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hour = 3600;
        let now = 100 * hour;
        // Held by hidden (two, the older one first), by limits.audience then hidden
        // (counted under its deciding rule), and a foreign hold.
        let mut a = held("AAAAAA1", now - 10 * hour);
        a.rules = rule("hidden");
        let mut b = held("BBBBBB2", now - hour);
        b.rules = rule("hidden");
        let mut c = held("CCCCCC3", now - 9 * hour);
        c.rules = [rule("limits.audience"), rule("hidden")].concat();
        let mut waiting = held("DDDDDD4", now - 20 * hour);
        waiting.rules = rule("restricted");
        waiting.confirm = true;
        let extended = held("EEEEEE5", now - 30 * hour);
        let expired = held("FFFFFF6", now - 50 * hour);
        let mut unconfirmed = held("HHHHHH8", now - 30 * hour);
        unconfirmed.confirm = true;
        let mut undone = held("IIIIII9", now - 30 * hour);
        undone.confirm = true;
        for m in [
            &a,
            &b,
            &c,
            &waiting,
            &extended,
            &expired,
            &unconfirmed,
            &undone,
        ] {
            store.record_held(m, "milter", None).unwrap();
        }
        store
            .record_foreign(&held("GGGGGG7", now - 40 * hour), "reconcile", None)
            .unwrap();
        let id_of = |q: &str| store.get(&QueueId::parse(q).unwrap()).unwrap().id;
        store
            .set_hold_until(id_of("EEEEEE5"), now + hour, &entry("extend"))
            .unwrap();
        store
            .set_state_unrequested(
                id_of("FFFFFF6"),
                State::Held,
                State::Expired,
                &entry("expire"),
            )
            .unwrap();
        store
            .set_state_unrequested(
                id_of("HHHHHH8"),
                State::Held,
                State::Discarded,
                &entry("unconfirmed"),
            )
            .unwrap();
        // The sweep's discard of this one failed and a reviewer discarded it later:
        // the reviewer's action, not the sweep's.
        store
            .set_state_unrequested(
                id_of("IIIIII9"),
                State::Held,
                State::Discarded,
                &entry("unconfirmed"),
            )
            .unwrap();
        store.audit(id_of("IIIIII9"), &entry("discard")).unwrap();
        for (queue_id, via, ok) in [("AAAAAA1", Via::Desk, true), ("BBBBBB2", Via::Cli, false)] {
            let r = store
                .submit(
                    None,
                    &NewRequest {
                        queue_id: QueueId::parse(queue_id).unwrap(),
                        action: RequestAction::Release,
                        who: "carol".into(),
                        via,
                        remote: None,
                        comment: "checked".into(),
                        at: now,
                    },
                )
                .unwrap();
            assert!(store.claim(r.id, now).unwrap());
            store.finish(r.id, ok, "", now).unwrap();
        }
        // The done release is still held in the store until the worker settles it;
        // the tally reads the records as they are.
        let t = store.tally(now, Duration::from_secs(4 * hour)).unwrap();
        let by_rule = |r: &str| {
            t.by_rule
                .iter()
                .find(|(n, ..)| *n == r)
                .map(|&(_, n, at)| (n, at))
        };
        assert_eq!(by_rule("hidden"), Some((2, now - 10 * hour)));
        assert_eq!(by_rule("limits.audience"), Some((1, now - 9 * hour)));
        assert_eq!(by_rule("restricted"), Some((1, now - 20 * hour)));
        assert_eq!(
            by_rule("drift"),
            Some((1, now - 30 * hour)),
            "the extended one"
        );
        assert_eq!(by_rule("foreign"), Some((1, now - 40 * hour)));
        assert_eq!(t.by_rule.iter().map(|&(_, n, _)| n).sum::<u64>(), 6);
        // Overdue (past 4h, waiting for an admin): a and c; not b (1h), not the one
        // waiting for its sender, not the extended one, not the foreign one.
        assert_eq!(t.overdue, 2);
        assert_eq!(
            t.overdue_oldest,
            now - 10 * hour,
            "a, not the older foreign one"
        );
        assert!(
            t.actions.contains(&("release", "desk", 1)),
            "{:?}",
            t.actions
        );
        assert!(
            t.actions.contains(&("expire", "sweep", 1)),
            "{:?}",
            t.actions
        );
        assert!(
            t.actions.contains(&("discard", "sweep", 1)),
            "{:?}",
            t.actions
        );
        assert!(!t.actions.iter().any(|a| a.1 == "cli"), "{:?}", t.actions);
        assert_eq!(t.failures, vec![("release", 1)]);
        // Once the extension ends it is overdue too.
        let later = store
            .tally(now + 2 * hour, Duration::from_secs(4 * hour))
            .unwrap();
        assert_eq!(later.overdue, 3, "a, c and the extended one; b is 3h old");
    }
}
