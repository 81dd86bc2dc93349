// SPDX-License-Identifier: GPL-3.0-or-later
//! One message's state operations as one request ([`StateBackend::observe`]): the
//! storm lookup, the thread count (and the storm it trips) and the rate budgets. The
//! default runs them one by one, as separate operations; a remote backend answers the
//! whole plan in one round trip, atomically (see [`super::redis`]).

use super::algo::{Limit, Take};
use super::{StateBackend, StateError, Storm, ThreadCounts};
use std::time::{Duration, SystemTime};

/// A message counted in its thread for the storm breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadStep {
    /// The storm the message would trip: its id, thread, subject, list, audience,
    /// `since` and `until` as the message gives them; `messages` and `senders` are
    /// filled in from the count ([`ThreadStep::storm_with`]).
    pub storm: Storm,
    /// Who sent it.
    pub sender: String,
    /// The counting window.
    pub window: Duration,
    /// Messages within the window that trip a storm ...
    pub min_messages: u64,
    /// ... from at least this many distinct senders.
    pub min_senders: u64,
}

impl ThreadStep {
    /// The thread key.
    pub fn thread(&self) -> &str {
        &self.storm.thread
    }

    /// True when `counts` trip a storm (`crate::policy::storm_trips`).
    pub fn trips(&self, counts: ThreadCounts) -> bool {
        counts.messages >= self.min_messages && counts.senders >= self.min_senders
    }

    /// The storm tripped with `counts`.
    pub fn storm_with(&self, counts: ThreadCounts) -> Storm {
        Storm {
            messages: counts.messages,
            senders: counts.senders,
            ..self.storm.clone()
        }
    }
}

/// A budget charged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeStep {
    /// The state key.
    pub key: String,
    /// Units charged.
    pub cost: u64,
    /// The budget.
    pub limit: Limit,
}

/// What one message asks of the state at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Its thread, when it is counted for storms.
    pub thread: Option<ThreadStep>,
    /// The budgets it is charged, in order; each key at most once (Redis reads them
    /// all before it charges any).
    pub takes: Vec<TakeStep>,
}

impl Plan {
    /// True when it asks nothing.
    pub fn is_empty(&self) -> bool {
        self.thread.is_none() && self.takes.is_empty()
    }
}

/// What the thread step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadOutcome {
    /// A storm is active on the thread: the message is stopped, and counted in the
    /// storm's `blocked`.
    Stopped(Storm),
    /// The message was counted. `started`: its counts tripped a storm
    /// ([`ThreadStep::trips`]) and this call started it (false when one was active
    /// already).
    Counted {
        /// Messages and distinct senders within the window, this one included.
        counts: ThreadCounts,
        /// True when this call started the storm.
        started: bool,
    },
}

/// The answers to a [`Plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The thread step's, when it had one.
    pub thread: Option<ThreadOutcome>,
    /// One per [`Plan::takes`], in order.
    pub takes: Vec<Take>,
}

/// Runs `plan` as separate operations, in order: the storm on the thread, else the
/// count and the storm it trips; then each budget. [`StateBackend::observe`]'s default.
pub async fn one_by_one<B: StateBackend + ?Sized>(
    backend: &B,
    plan: &Plan,
    now: SystemTime,
) -> Result<Outcome, StateError> {
    let thread = match &plan.thread {
        None => None,
        Some(step) => Some(match backend.storm_hit(step.thread(), now).await? {
            Some(storm) => ThreadOutcome::Stopped(storm),
            None => {
                let counts = backend
                    .thread_note(step.thread(), &step.sender, step.window, now)
                    .await?;
                let started = step.trips(counts)
                    && backend.storm_start(&step.storm_with(counts), now).await?;
                ThreadOutcome::Counted { counts, started }
            }
        }),
    };
    let mut takes = Vec::with_capacity(plan.takes.len());
    for t in &plan.takes {
        takes.push(backend.take(&t.key, t.cost, t.limit, now).await?);
    }
    Ok(Outcome { thread, takes })
}
