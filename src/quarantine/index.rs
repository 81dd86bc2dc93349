// SPDX-License-Identifier: GPL-3.0-or-later
//! The quarantine as the review desk, the root worker and the admin commands see it:
//! records found by filters a page at a time, and action requests.
//!
//! Postfix's tools need root and the daemon that serves the desk has none, so nobody
//! acts on a held message directly: an action is a [`Request`] filed in the store
//! ([`QuarantineIndex::submit`]); the root worker claims it, runs the Postfix tool and
//! records what the tool said ([`QuarantineIndex::finish`]). A request is `done` only
//! after the tool confirmed it. One open (pending or running) request per message, and
//! only for a message still held: a second action on the same message is a
//! [`SubmitError::Conflict`] (HTTP 409), and changes nothing.
//!
//! The SQLite store of one relay implements it in `super::sqlite`, the fleet's
//! PostgreSQL store in `super::pg`.

use super::record::{Address, AuditEntry, QueueId, Record, State};
use super::store::StoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest page and the most messages one bulk request may act on.
pub const MAX_PAGE: u64 = 500;

/// How the held list is sorted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sort {
    /// By the time it was held (the default: the oldest first, the most urgent).
    #[default]
    HeldAt,
    /// By its real audience.
    Audience,
    /// By envelope sender.
    Sender,
}

/// Which records a page shows: every filter set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this state.
    pub state: Option<State>,
    /// Only records held on this relay (a fleet-wide store; a relay's own store has no
    /// relay names, and nothing matches).
    pub relay: Option<String>,
    /// Only records where this rule fired (its config key, e.g. `limits.audience`).
    pub rule: Option<String>,
    /// Envelope sender or SASL login containing this text (ASCII case ignored).
    pub sender: Option<String>,
    /// A list address containing this text (ASCII case ignored).
    pub list: Option<String>,
    /// Only records whose real audience is at least this.
    pub min_audience: Option<u64>,
    /// Only records held at or before this time (seconds since the epoch): "older
    /// than" an age, as of a given moment.
    pub held_before: Option<u64>,
    /// The order.
    pub sort: Sort,
    /// Largest (or latest) first.
    pub descending: bool,
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return, at most [`MAX_PAGE`].
    pub limit: u64,
}

/// One row of a page: a record and its latest request.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The record, with its audit trail.
    pub record: Record,
    /// The newest request filed for it.
    pub request: Option<Request>,
}

/// One page of records and the counts shown above it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The rows, in the query's order.
    pub rows: Vec<Row>,
    /// How many records match the query, over all pages.
    pub total: u64,
    /// Records in each state, whatever the filters (every state, zero included).
    pub by_state: Vec<(State, u64)>,
    /// Held records per rule that fired, whatever the filters, most first.
    pub by_rule: Vec<(String, u64)>,
}

/// What a request asks the worker to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum RequestAction {
    /// `postsuper -H`: deliver to every recipient.
    Release,
    /// Deliver a copy to these envelope recipients only, then delete the original.
    ReleaseTo {
        /// The chosen envelope recipients (a subset of the record's).
        recipients: Vec<String>,
    },
    /// `postsuper -d`: delete it.
    Discard {
        /// Tell the sender, with the request's comment.
        notify_sender: bool,
    },
    /// Keep it held, and out of the sweep's reach, until this time.
    Extend {
        /// Seconds since the epoch.
        until: u64,
    },
}

impl RequestAction {
    /// The action's name, as stored and shown: `release`, `release-to`, `discard`,
    /// `extend`.
    pub fn name(&self) -> &'static str {
        match self {
            RequestAction::Release => "release",
            RequestAction::ReleaseTo { .. } => "release-to",
            RequestAction::Discard { .. } => "discard",
            RequestAction::Extend { .. } => "extend",
        }
    }
}

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// The review desk.
    Desk,
    /// `fanout-milter quarantine ...` at a shell.
    Cli,
    /// A signed link in an admin digest.
    Digest,
    /// A signed link in a notice to the sender.
    Sender,
    /// The sweep.
    Sweep,
}

impl Via {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Desk => "desk",
            Via::Cli => "cli",
            Via::Digest => "digest",
            Via::Sender => "sender",
            Via::Sweep => "sweep",
        }
    }

    /// Every origin.
    pub const ALL: [Via; 5] = [Via::Desk, Via::Cli, Via::Digest, Via::Sender, Via::Sweep];
}

impl std::str::FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Via, String> {
        Via::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown request origin \"{s}\""))
    }
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Filed, waiting for the worker.
    Pending,
    /// Claimed by the worker, the Postfix tool running (or the worker stopped here:
    /// it looks at such requests again when it starts).
    Running,
    /// The Postfix tool confirmed it.
    Done,
    /// It could not be done; `result` says why. The message is still held.
    Failed,
}

impl RequestState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Running => "running",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
        }
    }

    /// The state a request ends in: done when `ok`, else failed.
    pub fn finished(ok: bool) -> RequestState {
        if ok {
            RequestState::Done
        } else {
            RequestState::Failed
        }
    }

    /// Every state.
    pub const ALL: [RequestState; 4] = [
        RequestState::Pending,
        RequestState::Running,
        RequestState::Done,
        RequestState::Failed,
    ];

    /// Pending or running.
    pub fn is_open(self) -> bool {
        matches!(self, RequestState::Pending | RequestState::Running)
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RequestState {
    type Err = String;
    fn from_str(s: &str) -> Result<RequestState, String> {
        RequestState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown request state \"{s}\""))
    }
}

/// A request to file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRequest {
    /// The held message (its newest record).
    pub queue_id: QueueId,
    /// What to do.
    pub action: RequestAction,
    /// Who asks: a desk login, or the user at the shell.
    pub who: String,
    /// Where from.
    pub via: Via,
    /// The client address (desk) or terminal, for the audit trail.
    pub remote: Option<String>,
    /// Why: required, never empty.
    pub comment: String,
    /// When (seconds since the epoch).
    pub at: u64,
}

/// Checks that each recipient chosen for a release to chosen recipients is an envelope
/// recipient of `record` (both stores, in the transaction that files the request).
pub(super) fn release_to_recipients(record: &Record, n: &NewRequest) -> Result<(), SubmitError> {
    let RequestAction::ReleaseTo { recipients } = &n.action else {
        return Ok(());
    };
    match recipients
        .iter()
        .find(|r| !record.message.recipients.contains(r))
    {
        Some(r) => Err(SubmitError::Invalid(format!(
            "{} is not an envelope recipient of {}",
            crate::text::neutralize(r),
            n.queue_id
        ))),
        None => Ok(()),
    }
}

/// A filed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its id in the store.
    pub id: i64,
    /// The record it acts on ([`Record::id`]).
    pub held_id: i64,
    /// That record's queue id.
    pub queue_id: QueueId,
    /// What it asks.
    pub action: RequestAction,
    /// Who asked.
    pub who: String,
    /// Where from.
    pub via: Via,
    /// Client address or terminal.
    pub remote: Option<String>,
    /// Why.
    pub comment: String,
    /// When it was filed.
    pub requested_at: u64,
    /// Where it stands.
    pub state: RequestState,
    /// When the worker claimed it.
    pub started_at: Option<u64>,
    /// When it ended.
    pub finished_at: Option<u64>,
    /// What the Postfix tool said (done), or why it failed.
    pub result: Option<String>,
    /// A release to chosen recipients: when the worker last handed a copy to Postfix.
    pub copy_sent_at: Option<u64>,
    /// A release to chosen recipients: how many copies the worker handed to Postfix.
    pub copy_attempts: u32,
    /// A release to chosen recipients: the queue id of the copy the worker released.
    pub copy_queue_id: Option<String>,
    /// The process that claimed it (`PID BOOT-ID`, see [`super::claimant`]).
    pub claimed_by: Option<String>,
}

/// What the milter learnt from the store about a copy that names a release request
/// (see [`QuarantineIndex::accept_copy`]). Either way a genuine copy is held: only the
/// worker releases one, after it checked it in Postfix's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyCheck {
    /// A copy for a running request: recorded as one of its copies.
    Accepted,
    /// A genuine copy (its token matched) of a request that is over. Why.
    Late(String),
    /// No request matches (unknown, wrong token, wrong message): the mark is not ours
    /// to honour. Why.
    Unknown(String),
}

/// The copy a worker re-submits for a release to chosen recipients carries this
/// header; the milter checks it with [`QuarantineIndex::accept_copy`] and removes it.
pub const COPY_HEADER: &str = "X-Fanout-Released";

/// A parsed [`COPY_HEADER`] value: `v1; q=ORIGINAL; r=REQUEST; t=TOKEN`.
#[derive(Clone, PartialEq, Eq)]
pub struct CopyMark {
    /// The held original's queue id.
    pub original: String,
    /// The request's id.
    pub request: i64,
    /// The request's secret token.
    pub token: String,
}

impl fmt::Debug for CopyMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyMark")
            .field("original", &self.original)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl CopyMark {
    /// The header value.
    pub fn value(&self) -> String {
        format!(
            "v1; q={}; r={}; t={}",
            self.original, self.request, self.token
        )
    }

    /// Reads a header value; `None` unless it is exactly this form.
    pub fn parse(value: &str) -> Option<CopyMark> {
        let blank = |c: char| c == ' ' || c == '\t';
        let mut parts = value
            .trim_matches(blank)
            .split(';')
            .map(|p| p.trim_matches(blank));
        if parts.next()? != "v1" {
            return None;
        }
        let original = parts.next()?.strip_prefix("q=")?;
        let request = parts.next()?.strip_prefix("r=")?.parse().ok()?;
        let token = parts.next()?.strip_prefix("t=")?;
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        (parts.next().is_none() && plain(original) && plain(token)).then(|| CopyMark {
            original: original.to_owned(),
            request,
            token: token.to_owned(),
        })
    }
}

/// A sender's plea for release of a held message, with their words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plea {
    /// When (seconds since the epoch).
    pub at: u64,
    /// What the sender wrote.
    pub words: String,
}

/// Why a request was not filed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No record for the queue id.
    #[error("no quarantine record for queue id {0}")]
    NotFound(QueueId),
    /// The message is no longer held, or a request for it is already open: nothing
    /// was changed (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (an empty comment, recipients the message does not
    /// have).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The quarantine index: what the review desk, the worker and the admin commands need.
pub trait QuarantineIndex: Send + Sync {
    /// This relay's name in a fleet-wide store; `None` in a relay's own store.
    fn relay(&self) -> Option<&str> {
        None
    }

    /// Whether the store is a fleet's (records of several relays): the desk shows the
    /// relay column and filter, and names each record by its [`Address`].
    fn fleet(&self) -> bool {
        self.relay().is_some()
    }

    /// One page of the records matching `query`, with the counts shown above it.
    fn page(&self, query: &Query) -> Result<Page, StoreError>;

    /// The addresses of the records matching `query`, in its order, at most `limit`
    /// (paging ignored): "all N matching this filter".
    fn matching(&self, query: &Query, limit: u64) -> Result<Vec<Address>, StoreError>;

    /// The newest record at an address, with its audit trail: of the relay it names,
    /// or of this relay when it names none (never another relay's). A relay's own
    /// store has no relay names: an address naming one finds nothing.
    fn record(&self, at: &Address) -> Result<Record, StoreError>;

    /// Every request filed for a record, oldest first.
    fn requests(&self, held_id: i64) -> Result<Vec<Request>, StoreError>;

    /// Files a request for a held message with no open request, and notes it in the
    /// record's audit trail: the newest record of its queue id on `relay` (this relay
    /// when `None`, as [`Self::record`]).
    fn submit(&self, relay: Option<&str>, request: &NewRequest) -> Result<Request, SubmitError>;

    /// [`Self::submit`] for a signed digest link: spends the link's `nonce` (valid
    /// until `expires`) in the same transaction, so that a link files at most one
    /// request; a nonce spent already is a [`SubmitError::Conflict`] and changes
    /// nothing, and a request that is not filed leaves the nonce unspent.
    fn submit_link(
        &self,
        relay: Option<&str>,
        request: &NewRequest,
        nonce: &str,
        expires: u64,
    ) -> Result<Request, SubmitError>;

    /// Requests still open (pending or running), oldest first: what a worker starting
    /// up must look at.
    fn open_requests(&self) -> Result<Vec<Request>, StoreError>;

    /// Claims a pending request for this process at `now`; false when it is no longer
    /// pending (another worker or command took it).
    fn claim(&self, id: i64, now: u64) -> Result<bool, StoreError>;

    /// Records a running request's end: done (`ok`) or failed, with what the tool
    /// said.
    fn finish(&self, id: i64, ok: bool, result: &str, now: u64) -> Result<(), StoreError>;

    /// Gives a running release to chosen recipients the token its copies carry, before
    /// the first is made; returns the token already given when there is one.
    fn copy_token(&self, id: i64, token: &str) -> Result<String, StoreError>;

    /// Records that the worker handed a copy to Postfix at `now` (one more attempt).
    fn copy_sent(&self, id: i64, now: u64) -> Result<(), StoreError>;

    /// The milter's check of a message that carries a [`CopyMark`] (`queue_id` is the
    /// copy's): a copy for a running request is recorded as one of its copies
    /// ([`QuarantineIndex::copies`]) and noted in the original's audit trail.
    fn accept_copy(
        &self,
        mark: &CopyMark,
        queue_id: &str,
        now: u64,
    ) -> Result<CopyCheck, StoreError>;

    /// The queue ids of the copies the milter held for a request, in the order seen.
    fn copies(&self, request: i64) -> Result<Vec<String>, StoreError>;

    /// Records the copy the worker released for a request.
    fn copy_released(&self, id: i64, queue_id: &str) -> Result<(), StoreError>;

    /// Takes over a running request for this process when its claimant is still
    /// `claimant` (a compare-and-set: of two processes taking over, one wins).
    fn lease(&self, id: i64, claimant: Option<&str>) -> Result<bool, StoreError>;

    /// Records a relay-wide action that concerns no one message (the emergency brake
    /// pulled or released), for the desk's audit trail.
    fn record_event(&self, event: &AuditEntry) -> Result<(), StoreError>;

    /// Records a relay-wide action taken from one record's page (a drifted list's size
    /// accepted) both as an event and in that record's audit trail, in one
    /// transaction.
    fn record_event_on(&self, held_id: i64, event: &AuditEntry) -> Result<(), StoreError>;

    /// The newest relay-wide events, newest first, at most `limit`.
    fn events(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError>;

    /// Records a sender's plea for release of the held record `held_id`, spending a
    /// sender link's `nonce` in the same transaction (see [`crate::quarantine::Store::sender_asks`]).
    #[allow(clippy::too_many_arguments)]
    fn sender_asks(
        &self,
        held_id: i64,
        words: &str,
        who: &str,
        nonce: &str,
        expires: u64,
        at: u64,
    ) -> Result<(), SubmitError>;

    /// The sender's plea for release of a record, if any.
    fn plea(&self, held_id: i64) -> Result<Option<Plea>, StoreError>;

    /// Held messages whose sender asked for release, oldest plea first.
    fn pleading(&self, limit: u64) -> Result<Vec<Address>, StoreError>;

    /// Remembers the lists a sender confirmed (see [`crate::quarantine::Store::remember_confirmed`]).
    fn remember_confirmed(
        &self,
        who: &str,
        lists: &[crate::policy::ConfirmedList],
        until: u64,
        now: u64,
    ) -> Result<(), StoreError>;
}

/// Rules whose holds only an admin may act on: a reply-all storm, a list that
/// suddenly grew (a broken dynamic list, the incident's cause), a sender reaching
/// beyond their scope, the relay-wide breaker, and the emergency brake (an admin
/// pulled it during an incident; releasing what it holds is an admin's call too), and
/// a repeated copy of a release to chosen recipients (someone may get it twice).
const ADMIN_RULES: [&str; 6] = ["storm", "drift", "scope", "breaker", "brake", "copy"];

/// Whether acting on this record needs the admin role: a rule at reject level fired,
/// the hold is one of [`ADMIN_RULES`], or another tool held it (a content filter's
/// hold is not ours to judge).
pub fn needs_admin(record: &Record) -> bool {
    record.foreign
        || record
            .message
            .rules
            .iter()
            .any(|r| r.action == "reject" || ADMIN_RULES.contains(&r.rule.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::record::RuleHit;
    use crate::quarantine::store::tests::held;

    fn record(rules: &[(&str, &str)], foreign: bool) -> Record {
        let mut message = held("ABCDEF123", 1);
        message.rules = rules
            .iter()
            .map(|(rule, action)| RuleHit {
                rule: (*rule).into(),
                action: (*action).into(),
                message: String::new(),
            })
            .collect();
        Record {
            relay: None,
            id: 1,
            message,
            state: State::Held,
            state_at: 1,
            escalated_at: None,
            foreign,
            hold_until: None,
            audit: Vec::new(),
        }
    }

    #[test]
    fn admin_holds_are_reject_level_storm_drift_scope_breaker_and_foreign() {
        assert!(!needs_admin(&record(
            &[("limits.audience", "quarantine")],
            false
        )));
        assert!(!needs_admin(&record(&[("hidden", "quarantine")], false)));
        assert!(needs_admin(&record(
            &[("limits.audience", "reject")],
            false
        )));
        for rule in ADMIN_RULES {
            assert!(needs_admin(&record(
                &[("hidden", "quarantine"), (rule, "quarantine")],
                false
            )));
        }
        assert!(needs_admin(&record(&[], true)));
    }

    #[test]
    fn names_round_trip() {
        for v in Via::ALL {
            assert_eq!(v.as_str().parse::<Via>(), Ok(v));
        }
        for s in RequestState::ALL {
            assert_eq!(s.as_str().parse::<RequestState>(), Ok(s));
            assert_eq!(
                s.is_open(),
                s.as_str() == "pending" || s.as_str() == "running"
            );
        }
        assert!("web".parse::<Via>().is_err());
        let a = RequestAction::ReleaseTo {
            recipients: vec!["a@example.org".into()],
        };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"action":"release-to","recipients":["a@example.org"]}"#
        );
        assert_eq!(serde_json::from_str::<RequestAction>(&json).unwrap(), a);
        assert_eq!(a.name(), "release-to");
    }
}
