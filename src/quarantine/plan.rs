// SPDX-License-Identifier: GPL-3.0-or-later
//! Pure decisions of the quarantine's maintenance: what `reconcile` fixes and what the
//! `sweep` escalates or expires. The callers do the I/O; these functions only compare
//! records, queue listings and times.

use super::postfix::QueuedMessage;
use super::record::{QueueId, Record, State};
use crate::config::{OnExpiry, QuarantineSettings};

/// Records younger than this are not judged missing from Postfix: between the milter's
/// record and the queue file reaching the hold queue there is a moment where it is in
/// neither place, and a message tempfailed after recording never reaches a queue.
pub const RECONCILE_GRACE_SECS: u64 = 300;

/// What reconcile changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcilePlan {
    /// In the hold queue without a held record: record them.
    pub adopt: Vec<QueuedMessage>,
    /// Held records whose message left the hold queue but is still queued (released
    /// with postsuper by hand): mark released. Row id, queue id, Postfix queue name.
    pub released: Vec<(i64, QueueId, String)>,
    /// Held records whose message is gone from Postfix altogether (deleted by hand, or
    /// never queued because the reply did not reach Postfix): mark discarded.
    pub gone: Vec<(i64, QueueId)>,
}

impl ReconcilePlan {
    /// True when store and queue agree.
    pub fn is_empty(&self) -> bool {
        self.adopt.is_empty() && self.released.is_empty() && self.gone.is_empty()
    }
}

/// Compares the held records with Postfix's queue, both ways.
pub fn plan_reconcile(held: &[Record], queue: &[QueuedMessage], now: u64) -> ReconcilePlan {
    let mut plan = ReconcilePlan::default();
    for r in held.iter().filter(|r| r.state == State::Held) {
        let id = &r.message.queue_id;
        match queue.iter().find(|q| q.queue_id == id.as_str()) {
            Some(q) if q.queue_name == "hold" => {}
            Some(q) => plan.released.push((r.id, id.clone(), q.queue_name.clone())),
            None if now.saturating_sub(r.message.held_at) >= RECONCILE_GRACE_SECS => {
                plan.gone.push((r.id, id.clone()))
            }
            None => {}
        }
    }
    for q in queue.iter().filter(|q| q.queue_name == "hold") {
        let known = held
            .iter()
            .any(|r| r.state == State::Held && r.message.queue_id.as_str() == q.queue_id);
        if !known && QueueId::parse(&q.queue_id).is_ok() {
            plan.adopt.push(q.clone());
        }
    }
    plan
}

/// One step of the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SweepStep {
    /// Held past `review_within` and not escalated within the last `review_within`:
    /// alert the admins (again).
    Escalate {
        /// Row id.
        id: i64,
        /// Queue id.
        queue_id: QueueId,
    },
    /// Held past `expire_after`: apply `on_expiry`.
    Expire {
        /// Row id.
        id: i64,
        /// Queue id.
        queue_id: QueueId,
        /// What to do.
        action: OnExpiry,
    },
}

/// What the sweep does at `now` with the records. Only held records fanout-milter held
/// itself are looked at: a foreign one (held by another tool) is that tool's or an
/// admin's to decide, never expired, released or discarded by the sweep.
pub fn plan_sweep(records: &[Record], now: u64, settings: &QuarantineSettings) -> Vec<SweepStep> {
    let review = settings.review_within.as_secs();
    let expire = settings.expire_after.as_secs();
    let mut steps = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.state == State::Held && !r.foreign)
    {
        let age = now.saturating_sub(r.message.held_at);
        let queue_id = r.message.queue_id.clone();
        if age >= expire && settings.on_expiry != OnExpiry::Keep {
            steps.push(SweepStep::Expire {
                id: r.id,
                queue_id,
                action: settings.on_expiry,
            });
        } else if age >= review
            && r.escalated_at
                .is_none_or(|at| now.saturating_sub(at) >= review)
        {
            steps.push(SweepStep::Escalate { id: r.id, queue_id });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::record::HeldMessage;
    use std::time::Duration;

    fn record(id: i64, queue_id: &str, held_at: u64, state: State) -> Record {
        Record {
            id,
            message: HeldMessage {
                queue_id: QueueId::parse(queue_id).unwrap(),
                held_at,
                sender: "ann@example.org".into(),
                sasl_login: None,
                client: None,
                recipients: vec![],
                audience: 1000,
                external: 0,
                lists: vec![],
                top_domains: vec![],
                visible: vec![],
                subject: None,
                message_id: None,
                thread_key: String::new(),
                rules: vec![],
                recorded_by: "milter".into(),
            },
            state,
            state_at: held_at,
            escalated_at: None,
            foreign: false,
            audit: vec![],
        }
    }

    fn queued(queue_name: &str, queue_id: &str) -> QueuedMessage {
        QueuedMessage {
            queue_name: queue_name.into(),
            queue_id: queue_id.into(),
            arrival_time: 0,
            sender: "ann@example.org".into(),
            recipients: vec![],
        }
    }

    #[test]
    fn reconcile_compares_both_ways() {
        let held = [
            record(1, "AAAAAA1", 0, State::Held),
            record(2, "BBBBBB2", 0, State::Held),
            record(3, "CCCCCC3", 0, State::Held),
            record(4, "DDDDDD4", 1000, State::Held),
            record(5, "EEEEEE5", 0, State::Released),
        ];
        let queue = [
            queued("hold", "AAAAAA1"),
            queued("deferred", "BBBBBB2"),
            queued("hold", "FFFFFF6"),
            queued("hold", "EEEEEE5"),
            queued("active", "GGGGGG7"),
        ];
        let plan = plan_reconcile(&held, &queue, 1100);
        let adopted: Vec<&str> = plan.adopt.iter().map(|q| q.queue_id.as_str()).collect();
        assert_eq!(
            adopted,
            ["FFFFFF6", "EEEEEE5"],
            "unknown, and re-held after release"
        );
        assert_eq!(
            plan.released,
            [(2, QueueId::parse("BBBBBB2").unwrap(), "deferred".to_owned())]
        );
        assert_eq!(
            plan.gone,
            [(3, QueueId::parse("CCCCCC3").unwrap())],
            "DDDDDD4 is within the grace period"
        );
        assert!(plan_reconcile(&held[..1], &queue[..1], 1100).is_empty());
    }

    fn settings(on_expiry: OnExpiry) -> QuarantineSettings {
        QuarantineSettings {
            review_within: Duration::from_secs(4 * 3600),
            expire_after: Duration::from_secs(3 * 86400),
            on_expiry,
        }
    }

    #[test]
    fn sweep_escalates_then_expires() {
        let h = 3600;
        let s = settings(OnExpiry::NotifySender);
        let fresh = record(1, "AAAAAA1", 0, State::Held);
        assert!(plan_sweep(std::slice::from_ref(&fresh), 4 * h - 1, &s).is_empty());
        assert_eq!(
            plan_sweep(std::slice::from_ref(&fresh), 4 * h, &s),
            [SweepStep::Escalate {
                id: 1,
                queue_id: fresh.message.queue_id.clone()
            }]
        );
        let mut escalated = fresh.clone();
        escalated.escalated_at = Some(4 * h);
        assert!(
            plan_sweep(std::slice::from_ref(&escalated), 5 * h, &s).is_empty(),
            "not twice in a row"
        );
        assert_eq!(
            plan_sweep(std::slice::from_ref(&escalated), 8 * h, &s).len(),
            1,
            "a reminder later"
        );
        assert_eq!(
            plan_sweep(std::slice::from_ref(&escalated), 72 * h, &s),
            [SweepStep::Expire {
                id: 1,
                queue_id: fresh.message.queue_id.clone(),
                action: OnExpiry::NotifySender
            }]
        );
        let done = record(2, "BBBBBB2", 0, State::Discarded);
        assert!(
            plan_sweep(&[done], 100 * h, &s).is_empty(),
            "only held records"
        );
    }

    #[test]
    fn foreign_records_are_never_escalated_or_expired() {
        let mut theirs = record(1, "AAAAAA1", 0, State::Held);
        theirs.foreign = true;
        let ours = record(2, "BBBBBB2", 0, State::Held);
        for on_expiry in [OnExpiry::NotifySender, OnExpiry::Release] {
            let steps = plan_sweep(
                &[theirs.clone(), ours.clone()],
                30 * 86400,
                &settings(on_expiry),
            );
            assert_eq!(
                steps,
                [SweepStep::Expire {
                    id: 2,
                    queue_id: ours.message.queue_id.clone(),
                    action: on_expiry
                }],
                "only our own record expires"
            );
        }
    }

    #[test]
    fn keep_never_expires_but_keeps_reminding() {
        let s = settings(OnExpiry::Keep);
        let r = record(1, "AAAAAA1", 0, State::Held);
        let steps = plan_sweep(&[r], 30 * 86400, &s);
        assert!(
            matches!(steps[..], [SweepStep::Escalate { .. }]),
            "{steps:?}"
        );
        let s = settings(OnExpiry::Release);
        let steps = plan_sweep(&[record(1, "AAAAAA1", 0, State::Held)], 3 * 86400, &s);
        assert!(matches!(
            steps[..],
            [SweepStep::Expire {
                action: OnExpiry::Release,
                ..
            }]
        ));
    }
}
