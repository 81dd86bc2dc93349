// SPDX-License-Identifier: GPL-3.0-or-later
//! Shared state for the stateful rules (reply-all storms, sender rates, the relay-wide
//! breaker): a backend trait whose every operation is atomic per key, so that a Redis
//! backend shared by a fleet of relays can stand in for the in-memory one.
//!
//! The arithmetic (GCRA, sliding windows) is in [`algo`], pure and shared by backends.

pub(crate) mod algo;
pub mod failover;
pub(crate) mod guard;
pub(crate) mod memory;
pub mod plan;
pub(crate) mod redis;
pub(crate) mod redis_conn;

pub use crate::config::OnFailure;
pub use algo::{Limit, Take};
pub use failover::Failover;
pub use guard::Guard;
pub use memory::MemoryBackend;
pub use plan::{Outcome, Plan, TakeStep, ThreadOutcome, ThreadStep};
pub use redis::RedisBackend;

use crate::clock::epoch_secs;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// A state operation that failed (a remote backend unreachable, say).
#[derive(Debug, thiserror::Error)]
#[error("state backend: {0}")]
pub struct StateError(pub String);

/// Messages and distinct senders seen in a thread within a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    /// Counted messages.
    pub messages: u64,
    /// Distinct senders among them.
    pub senders: u64,
}

/// A reply-all storm in progress on one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storm {
    /// Short id admins type (`storms clear ID`).
    pub id: String,
    /// The thread key.
    pub thread: String,
    /// Subject of the message that tripped it, at most
    /// [`crate::text::MAX_SUBJECT_CHARS`] characters where a backend keeps it.
    pub subject: String,
    /// The largest list, or "a large audience".
    pub list: String,
    /// Audience of the message that tripped it.
    pub audience: u64,
    /// Messages and senders in the window when it tripped.
    pub messages: u64,
    /// Distinct senders when it tripped.
    pub senders: u64,
    /// When it tripped (seconds since the epoch).
    pub since: u64,
    /// Until when further messages are stopped (seconds since the epoch).
    pub until: u64,
    /// Messages stopped so far.
    pub blocked: u64,
}

impl Storm {
    /// The short id of a thread key: 10 hex digits of its SHA-256.
    pub fn id_of(thread: &str) -> String {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(thread.as_bytes());
        d[..5].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The storm as a backend keeps it: the subject capped at
    /// [`crate::text::MAX_SUBJECT_CHARS`], so that no message can make a storm record
    /// (kept for `block_for`, shared by a fleet, listed to admins) large.
    pub fn kept(&self) -> Storm {
        let mut s = self.clone();
        if let std::borrow::Cow::Owned(capped) =
            crate::text::cap(&s.subject, crate::text::MAX_SUBJECT_CHARS)
        {
            s.subject = capped;
        }
        s
    }

    /// True while it blocks at `now`.
    pub fn active(&self, now: SystemTime) -> bool {
        epoch_secs(now) < self.until
    }
}

/// The longest comment a brake keeps.
pub const MAX_BRAKE_COMMENT_CHARS: usize = 500;

/// The emergency brake an admin pulled (`fanout-milter brake on`, the review desk):
/// while it is on, every message whose real audience is at least `min_audience` is
/// held, on every relay that shares the state backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brake {
    /// The smallest audience it holds.
    pub min_audience: u64,
    /// When it was pulled (seconds since the epoch).
    pub since: u64,
    /// When it lets go by itself (seconds since the epoch); never when absent.
    pub until: Option<u64>,
    /// Who pulled it.
    pub by: String,
    /// Why, at most [`MAX_BRAKE_COMMENT_CHARS`] characters where a backend keeps it.
    pub comment: String,
}

impl Brake {
    /// True while it holds at `now` (seconds since the epoch).
    pub fn active(&self, now: u64) -> bool {
        self.until.is_none_or(|until| now < until)
    }

    /// The brake as a backend keeps it: the comment and the name capped.
    pub fn kept(&self) -> Brake {
        let mut b = self.clone();
        b.comment = crate::text::cap(&b.comment, MAX_BRAKE_COMMENT_CHARS).into_owned();
        b.by = crate::text::cap(&b.by, 100).into_owned();
        b
    }
}

/// Where storm, rate and breaker state lives. Every operation is atomic per key.
#[async_trait]
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    /// GCRA: takes `cost` from `key`'s budget of `limit` if it fits, else takes nothing.
    async fn take(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<Take, StateError>;

    /// Gives back `cost` taken earlier from `key` (the message did not leave after all).
    async fn give_back(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<(), StateError>;

    /// Sliding window counter: adds `amount` to `key` and returns the estimated total
    /// over the last `width`.
    async fn window_add(
        &self,
        key: &str,
        amount: u64,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError>;

    /// The estimated total of `key` over the last `width`.
    async fn window_total(
        &self,
        key: &str,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError>;

    /// Notes one counted message from `sender` in thread `key`; returns the messages and
    /// distinct senders within the last `window`, this one included.
    async fn thread_note(
        &self,
        key: &str,
        sender: &str,
        window: Duration,
        now: SystemTime,
    ) -> Result<ThreadCounts, StateError>;

    /// Starts `storm` unless one is active on its thread; true when this call started it.
    /// The storm is kept as [`Storm::kept`].
    async fn storm_start(&self, storm: &Storm, now: SystemTime) -> Result<bool, StateError>;

    /// The storm active on `thread` at `now`, counting one more stopped message.
    async fn storm_hit(&self, thread: &str, now: SystemTime) -> Result<Option<Storm>, StateError>;

    /// Storms active at `now`.
    async fn storm_list(&self, now: SystemTime) -> Result<Vec<Storm>, StateError>;

    /// Ends the storm with this id and forgets its thread's window, so replies flow
    /// again; true when there was one.
    async fn storm_clear(&self, id: &str) -> Result<bool, StateError>;

    /// Sets `key` for `ttl` unless it is set; true when this call set it.
    async fn flag(&self, key: &str, ttl: Duration, now: SystemTime) -> Result<bool, StateError>;

    /// The emergency brake, when one is on at `now`.
    async fn brake_get(&self, now: SystemTime) -> Result<Option<Brake>, StateError>;

    /// Pulls (`Some`, kept as [`Brake::kept`]) or releases (`None`) the emergency brake.
    async fn brake_set(&self, brake: Option<&Brake>, now: SystemTime) -> Result<(), StateError>;

    /// Everything one message asks of the state at once: the storm on its thread, else
    /// its count in the thread and the storm that count trips, then its budgets. The
    /// default runs the separate operations in that order ([`plan::one_by_one`]); a
    /// backend that talks to another service answers in one round trip, each step
    /// still atomic per key.
    async fn observe(&self, plan: &Plan, now: SystemTime) -> Result<Outcome, StateError> {
        plan::one_by_one(self, plan, now).await
    }

    /// Gives back every budget in `taken` (a message that did not leave). The default
    /// gives them back one by one; a remote backend in one round trip.
    async fn give_back_all(&self, taken: &[TakeStep], now: SystemTime) -> Result<(), StateError> {
        for t in taken {
            self.give_back(&t.key, t.cost, t.limit, now).await?;
        }
        Ok(())
    }

    /// Drops what has expired at `now`; returns the number of entries still held (for
    /// a store that expires keys itself, what it cheaply knows: Redis, its storms).
    async fn expire(&self, now: SystemTime) -> Result<usize, StateError>;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// The time one message's state operations may take together, for a backend
    /// that talks to another service (`None`: in process, no limit needed).
    fn budget(&self) -> Option<Duration> {
        None
    }
}
