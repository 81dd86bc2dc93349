// SPDX-License-Identifier: GPL-3.0-or-later
//! Pure decisions of the quarantine's maintenance: what `reconcile` fixes and what the
//! `sweep` escalates or expires. The callers do the I/O; these functions only compare
//! records, queue listings and times.

use super::postfix::QueuedMessage;
use super::record::{QueueId, Record, State};
use crate::config::{OnExpiry, QuarantineSettings};
use std::collections::HashSet;

/// Records younger than this are not judged missing from Postfix: between the milter's
/// record and the queue file reaching the hold queue there is a moment where it is in
/// neither place, and a message tempfailed after recording never reaches a queue.
pub const RECONCILE_GRACE_SECS: u64 = 300;

/// What reconcile changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcilePlan {
    /// In the hold queue without a held record, and no earlier record of fanout-milter's
    /// for the same message: record them.
    pub adopt: Vec<QueuedMessage>,
    /// In the hold queue again, with a record fanout-milter wrote for this very message
    /// (same queue id, held when it arrived) that is no longer in state held: our own
    /// message, back to held with its review deadline. Row id, queue id, the state it
    /// had.
    pub restore: Vec<(i64, QueueId, State)>,
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
        self.adopt.is_empty()
            && self.restore.is_empty()
            && self.released.is_empty()
            && self.gone.is_empty()
    }
}

/// True when record `r` was written by the milter for the message `q` in the queue: same
/// queue id, and held when the message arrived (Postfix reuses short queue ids over
/// time; a record of an earlier message with the same id is not this one's).
fn ours_for(r: &Record, q: &QueuedMessage) -> bool {
    !r.foreign
        && r.message.recorded_by == "milter"
        && r.message.queue_id.as_str() == q.queue_id
        && r.message.held_at.abs_diff(q.arrival_time) <= RECONCILE_GRACE_SECS
}

/// Compares the records with Postfix's queue, both ways. `records` holds every record
/// in state held, and may hold records in other states for queue ids in the hold queue
/// (the newest record of each): those are restored rather than adopted as foreign.
///
/// A held record whose message is seen outside the hold queue, or not at all, is judged
/// only after [`RECONCILE_GRACE_SECS`]: Postfix's cleanup finishes the queue file before
/// it moves to the hold queue, and an admin may release and hold a message again.
///
/// Records in `busy` (ids of records with an open request: pending, or running in the
/// worker) are left alone: the worker is moving their message (out of the hold queue,
/// or a copy in), and their record's state is the worker's to set.
pub fn plan_reconcile(
    records: &[Record],
    queue: &[QueuedMessage],
    busy: &HashSet<i64>,
    now: u64,
) -> ReconcilePlan {
    let mut plan = ReconcilePlan::default();
    for r in records
        .iter()
        .filter(|r| r.state == State::Held && !busy.contains(&r.id))
    {
        let id = &r.message.queue_id;
        let settled = now.saturating_sub(r.message.held_at) >= RECONCILE_GRACE_SECS;
        match queue.iter().find(|q| q.queue_id == id.as_str()) {
            Some(q) if q.queue_name == "hold" => {}
            Some(q) if settled => plan.released.push((r.id, id.clone(), q.queue_name.clone())),
            None if settled => plan.gone.push((r.id, id.clone())),
            Some(_) | None => {}
        }
    }
    for q in queue.iter().filter(|q| q.queue_name == "hold") {
        let known = records
            .iter()
            .any(|r| r.state == State::Held && r.message.queue_id.as_str() == q.queue_id);
        let worked_on = records
            .iter()
            .any(|r| busy.contains(&r.id) && r.message.queue_id.as_str() == q.queue_id);
        if known || worked_on || QueueId::parse(&q.queue_id).is_err() {
            continue;
        }
        let earlier = records
            .iter()
            .filter(|r| ours_for(r, q))
            .max_by_key(|r| r.id);
        match earlier {
            Some(r) => plan
                .restore
                .push((r.id, r.message.queue_id.clone(), r.state)),
            None => plan.adopt.push(q.clone()),
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
    /// Waiting for its sender's confirmation past `confirm_within`: discard it and
    /// tell the sender.
    Unconfirmed {
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
/// admin's to decide, never expired, released or discarded by the sweep. A hold a
/// reviewer extended ([`Record::hold_until`]) is neither escalated nor expired before
/// its time. A message waiting for its sender's confirmation is not the reviewers' to
/// look at, so it is never escalated: after `confirm_within` it is discarded; one an
/// admin extended is the admins' from then on, as any other hold.
pub fn plan_sweep(records: &[Record], now: u64, settings: &QuarantineSettings) -> Vec<SweepStep> {
    let review = settings.review_within.as_secs();
    let expire = settings.expire_after.as_secs();
    let mut steps = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.state == State::Held && !r.foreign)
        .filter(|r| r.hold_until.is_none_or(|until| now >= until))
    {
        let age = now.saturating_sub(r.message.held_at);
        let queue_id = r.message.queue_id.clone();
        if r.message.confirm && r.hold_until.is_none() {
            if age >= settings.confirm_within.as_secs() {
                steps.push(SweepStep::Unconfirmed { id: r.id, queue_id });
            }
        } else if age >= expire && settings.on_expiry != OnExpiry::Keep {
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
            relay: None,
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
                headers: Vec::new(),
                confirm: false,
                notify_sender: false,
                confirm_key: None,
            },
            state,
            state_at: held_at,
            escalated_at: None,
            hold_until: None,
            foreign: false,
            audit: vec![],
        }
    }

    fn queued(queue_name: &str, queue_id: &str) -> QueuedMessage {
        QueuedMessage {
            queue_name: queue_name.into(),
            queue_id: queue_id.into(),
            arrival_time: 1_000_000,
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
        let plan = plan_reconcile(&held, &queue, &HashSet::new(), 1100);
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
        assert!(plan_reconcile(&held[..1], &queue[..1], &HashSet::new(), 1100).is_empty());
    }

    /// A record whose request is open (pending, or running in the worker) is the
    /// worker's: reconcile neither marks it released or gone while its message moves,
    /// nor puts it back to held, nor adopts its message as foreign.
    #[test]
    fn reconcile_leaves_a_record_with_an_open_request_alone() {
        let arrival = 1_000_000;
        let held = [
            record(1, "AAAAAA1", 0, State::Held),
            record(2, "BBBBBB2", 0, State::Held),
            record(3, "CCCCCC3", arrival, State::Released),
            record(4, "DDDDDD4", arrival, State::Discarded),
        ];
        let mut queue = vec![queued("active", "AAAAAA1"), queued("hold", "DDDDDD4")];
        let mut copy = queued("hold", "CCCCCC3");
        copy.arrival_time = arrival;
        queue.push(copy);
        let idle = plan_reconcile(&held, &queue, &HashSet::new(), arrival + 10);
        assert_eq!(idle.released.len(), 1);
        assert_eq!(idle.gone.len(), 1);
        assert_eq!(idle.restore.len(), 2, "{idle:?}");
        let busy: HashSet<i64> = [1, 2, 3, 4].into();
        let plan = plan_reconcile(&held, &queue, &busy, arrival + 10);
        assert!(plan.is_empty(), "{plan:?}");
        let busy: HashSet<i64> = [1, 3].into();
        let plan = plan_reconcile(&held, &queue, &busy, arrival + 10);
        assert!(plan.released.is_empty());
        assert_eq!(plan.gone, [(2, QueueId::parse("BBBBBB2").unwrap())]);
        assert_eq!(
            plan.restore,
            [(4, QueueId::parse("DDDDDD4").unwrap(), State::Discarded)]
        );
        assert!(plan.adopt.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_held_message_briefly_outside_the_hold_queue_is_not_marked_released() {
        let held = [record(1, "AAAAAA1", 1000, State::Held)];
        for queue_name in ["incoming", "active", "deferred"] {
            let queue = [queued(queue_name, "AAAAAA1")];
            assert!(
                plan_reconcile(
                    &held,
                    &queue,
                    &HashSet::new(),
                    1000 + RECONCILE_GRACE_SECS - 1
                )
                .is_empty(),
                "{queue_name}: within the grace period"
            );
            assert_eq!(
                plan_reconcile(&held, &queue, &HashSet::new(), 1000 + RECONCILE_GRACE_SECS)
                    .released,
                [(1, QueueId::parse("AAAAAA1").unwrap(), queue_name.to_owned())],
                "{queue_name}: after it"
            );
        }
    }

    #[test]
    fn our_message_back_in_the_hold_queue_is_restored_not_adopted_as_foreign() {
        let arrival = 1_000_000;
        let mut reheld = queued("hold", "AAAAAA1");
        reheld.arrival_time = arrival;
        for state in [State::Released, State::Discarded, State::Expired] {
            let ours = record(7, "AAAAAA1", arrival + 2, state);
            let plan = plan_reconcile(
                std::slice::from_ref(&ours),
                &[reheld.clone()],
                &HashSet::new(),
                arrival + 10,
            );
            assert_eq!(
                plan.restore,
                [(7, QueueId::parse("AAAAAA1").unwrap(), state)],
                "{state}"
            );
            assert!(plan.adopt.is_empty(), "{state}: {plan:?}");
        }
        // Another message that reuses the short queue id long after ours.
        let old = record(7, "AAAAAA1", arrival - 86400, State::Released);
        let plan = plan_reconcile(&[old], &[reheld.clone()], &HashSet::new(), arrival + 10);
        assert!(plan.restore.is_empty());
        assert_eq!(plan.adopt, [reheld.clone()]);
        // A foreign record stays foreign: adopted again, never made ours.
        let mut theirs = record(7, "AAAAAA1", arrival, State::Released);
        theirs.foreign = true;
        let plan = plan_reconcile(&[theirs], &[reheld.clone()], &HashSet::new(), arrival + 10);
        assert!(plan.restore.is_empty());
        assert_eq!(plan.adopt.len(), 1);
        // The newest of several records of ours wins.
        let plan = plan_reconcile(
            &[
                record(3, "AAAAAA1", arrival, State::Discarded),
                record(9, "AAAAAA1", arrival, State::Released),
            ],
            &[reheld],
            &HashSet::new(),
            arrival + 10,
        );
        assert_eq!(
            plan.restore,
            [(9, QueueId::parse("AAAAAA1").unwrap(), State::Released)]
        );
    }

    fn settings(on_expiry: OnExpiry) -> QuarantineSettings {
        QuarantineSettings {
            confirm_within: Duration::from_secs(86_400),
            confirm_remember: Duration::from_secs(30 * 86_400),
            review_within: Duration::from_secs(4 * 3600),
            expire_after: Duration::from_secs(3 * 86400),
            on_expiry,
        }
    }

    #[test]
    fn a_message_waiting_for_its_sender_is_never_escalated_and_goes_after_confirm_within() {
        let h = 3600;
        let s = settings(OnExpiry::Keep);
        let mut waiting = record(1, "AAAAAA1", 0, State::Held);
        waiting.message.confirm = true;
        let one = std::slice::from_ref(&waiting);
        assert!(plan_sweep(one, 24 * h - 1, &s).is_empty(), "no escalation");
        let gone = [SweepStep::Unconfirmed {
            id: 1,
            queue_id: waiting.message.queue_id.clone(),
        }];
        assert_eq!(plan_sweep(one, 24 * h, &s), gone, "whatever on_expiry says");
        assert_eq!(plan_sweep(one, 100 * h, &s), gone);
        waiting.hold_until = Some(30 * h);
        let one = std::slice::from_ref(&waiting);
        assert!(plan_sweep(one, 29 * h, &s).is_empty(), "an admin kept it");
        assert_eq!(
            plan_sweep(one, 30 * h, &s),
            [SweepStep::Escalate {
                id: 1,
                queue_id: waiting.message.queue_id.clone()
            }],
            "the admins' from then on"
        );
        waiting.state = State::Released;
        assert!(plan_sweep(std::slice::from_ref(&waiting), 100 * h, &s).is_empty());
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
    fn an_extended_hold_is_neither_escalated_nor_expired_before_its_time() {
        let h = 3600;
        let s = settings(OnExpiry::NotifySender);
        let mut extended = record(1, "AAAAAA1", 0, State::Held);
        extended.hold_until = Some(100 * h);
        assert!(plan_sweep(std::slice::from_ref(&extended), 4 * h, &s).is_empty());
        assert!(plan_sweep(std::slice::from_ref(&extended), 100 * h - 1, &s).is_empty());
        assert!(
            matches!(
                plan_sweep(std::slice::from_ref(&extended), 100 * h, &s)[..],
                [SweepStep::Expire { id: 1, .. }]
            ),
            "expired once the extension ends"
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
