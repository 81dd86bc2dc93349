// SPDX-License-Identifier: GPL-3.0-or-later
//! The quarantine store the rest of the program uses: one relay's SQLite file (the
//! default, [`SqliteStore`]) or the fleet's PostgreSQL database ([`PgStore`],
//! `[quarantine] store = "postgres"`). Both have the same methods; [`Store`] hands each
//! call to the one in use.

use super::index::{
    CopyCheck, CopyMark, NewRequest, Page, Plea, QuarantineIndex, Query, Request, RequestAction,
    SubmitError,
};
use super::pg::PgStore;
use super::record::{Address, AuditEntry, HeldMessage, QueueId, Record, State};
use super::senders::DueNotice;
use super::store::{Filter, SqliteStore, StoreError};
use crate::config::PgSettings;
use crate::metrics::HeldReading;
use crate::policy::ConfirmedList;
use std::path::Path;
use std::time::{Duration, Instant};

/// The quarantine store: SQLite or PostgreSQL.
#[derive(Debug)]
pub enum Store {
    /// One relay's database in its state directory.
    Sqlite(SqliteStore),
    /// The fleet's database, shared by every relay.
    Postgres(Box<PgStore>),
}

/// Calls the same method on whichever store is in use.
macro_rules! each {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => {
                let $s: &PgStore = $s;
                $call
            }
        }
    };
}

impl Store {
    /// Opens (creating when needed) the SQLite store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        SqliteStore::open(state_dir).map(Store::Sqlite)
    }

    /// Connects to the fleet's PostgreSQL store as the relay of `settings`;
    /// `state_dir` is this relay's own state directory.
    pub fn open_postgres(settings: &PgSettings, state_dir: &Path) -> Result<Store, StoreError> {
        PgStore::open(settings, state_dir).map(|s| Store::Postgres(Box::new(s)))
    }

    /// Opens the store the configuration names (`[quarantine] store`).
    pub fn open_configured(config: &crate::config::Config) -> Result<Store, StoreError> {
        match &config.quarantine_store {
            Some(pg) => Store::open_postgres(pg, &config.state_dir),
            None => Store::open(&config.state_dir),
        }
    }

    /// The SQLite file, or the PostgreSQL URL without secrets: for messages.
    pub fn path(&self) -> &Path {
        each!(self, s => s.path())
    }

    /// The relay's state directory (the SQLite file's directory).
    pub fn state_dir(&self) -> Option<&Path> {
        match self {
            Store::Sqlite(s) => s.path().parent(),
            Store::Postgres(s) => Some(s.state_dir()),
        }
    }

    /// This relay's name in a fleet-wide store; `None` for a relay's own store.
    pub fn relay(&self) -> Option<&str> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.relay()),
        }
    }

    /// The SQLite connection, for tests that look inside the file.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        match self {
            Store::Sqlite(s) => s.conn(),
            Store::Postgres(_) => panic!("a PostgreSQL store has no SQLite connection"),
        }
    }

    /// Records a message the milter holds, with a first audit entry; durable on return.
    pub fn record_held(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
    ) -> Result<i64, StoreError> {
        each!(self, s => s.record_held(msg, who, comment))
    }

    /// As [`Store::record_held`], for the milter, which tempfails the message when the
    /// write takes too long: the PostgreSQL store writes nothing unless it commits by
    /// `deadline` ([`PgStore::record_held_by`]); the SQLite store has its own bounded
    /// waits and ignores it.
    pub fn record_held_by(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
        deadline: Instant,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.record_held(msg, who, comment),
            Store::Postgres(s) => s.record_held_by(msg, who, comment, deadline),
        }
    }

    /// Records a message found in the hold queue that fanout-milter did not hold
    /// (see [`Record::foreign`]).
    pub fn record_foreign(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
    ) -> Result<i64, StoreError> {
        each!(self, s => s.record_foreign(msg, who, comment))
    }

    /// This relay's newest record for a queue id (Postfix reuses short ids over time).
    pub fn get(&self, queue_id: &QueueId) -> Result<Record, StoreError> {
        each!(self, s => s.get(queue_id))
    }

    /// The newest record for a queue id on `relay` (this relay when `None`; a relay's
    /// own SQLite store has no other relays, and takes `None` only).
    pub fn get_on(&self, relay: Option<&str>, queue_id: &QueueId) -> Result<Record, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(queue_id),
            Store::Postgres(s) => s.get_on(relay, queue_id),
        }
    }

    /// Files a request for the newest record of its queue id on `relay` (see
    /// [`PgStore::file_request`]); [`QuarantineIndex::submit`] with `None`.
    pub fn submit_on(
        &self,
        relay: Option<&str>,
        request: &NewRequest,
    ) -> Result<Request, SubmitError> {
        valid_request(request)?;
        match self {
            Store::Sqlite(s) => s.submit(request),
            Store::Postgres(s) => s.file_request(request, None, relay),
        }
    }

    /// This relay's records matching `filter`, oldest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        each!(self, s => s.list(filter))
    }

    /// Moves a record from state `from` to `to` and appends to its audit trail, in one
    /// transaction (see [`SqliteStore::set_state`]).
    pub fn set_state(
        &self,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        each!(self, s => s.set_state(id, from, to, entry))
    }

    /// [`Store::set_state`], unless a request for the record is open.
    pub fn set_state_unrequested(
        &self,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        each!(self, s => s.set_state_unrequested(id, from, to, entry))
    }

    /// Appends to a record's audit trail without changing its state.
    pub fn audit(&self, id: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        each!(self, s => s.audit(id, entry))
    }

    /// Notes that an escalation alert went out for a record that is still held.
    pub fn mark_escalated(&self, id: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        each!(self, s => s.mark_escalated(id, entry))
    }

    /// Keeps a held record out of the sweep's reach until `until`.
    pub fn set_hold_until(
        &self,
        id: i64,
        until: u64,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        each!(self, s => s.set_hold_until(id, until, entry))
    }

    /// The record with row id `id`.
    pub fn record_by_id(&self, id: i64) -> Result<Record, StoreError> {
        each!(self, s => s.record_by_id(id))
    }

    /// Notices due and not sent yet, oldest first, at most `limit`.
    pub fn due_notices(&self, limit: u64) -> Result<Vec<DueNotice>, StoreError> {
        each!(self, s => s.due_notices(limit))
    }

    /// Settles the notices of `held_ids` (see [`SqliteStore::notices_done`]).
    pub fn notices_done(
        &self,
        held_ids: &[i64],
        sender: &str,
        told: bool,
        at: u64,
        result: &str,
    ) -> Result<(), StoreError> {
        each!(self, s => s.notices_done(held_ids, sender, told, at, result))
    }

    /// When `sender` was last sent a notice at hold.
    pub fn last_told(&self, sender: &str) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.last_told(sender))
    }

    /// The lists `who` confirmed that are remembered at `now`.
    pub fn confirmed_lists(&self, who: &str, now: u64) -> Result<Vec<ConfirmedList>, StoreError> {
        each!(self, s => s.confirmed_lists(who, now))
    }

    /// Remembers that `who` confirmed posting to `lists` until `until`.
    pub fn remember_confirmed(
        &self,
        who: &str,
        lists: &[ConfirmedList],
        until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        each!(self, s => s.remember_confirmed(who, lists, until, now))
    }

    /// Records a sender's plea for release (see [`SqliteStore::sender_asks`]).
    pub fn sender_asks(
        &self,
        held_id: i64,
        words: &str,
        who: &str,
        nonce: &str,
        expires: u64,
        at: u64,
    ) -> Result<(), SubmitError> {
        if words.trim().is_empty() {
            return Err(SubmitError::Invalid(
                "please say why the message should go out".into(),
            ));
        }
        each!(self, s => s.sender_asks(held_id, words, who, nonce, expires, at))
    }

    /// The sender's plea for release of the record `held_id`, if they made one.
    pub fn plea(&self, held_id: i64) -> Result<Option<Plea>, StoreError> {
        each!(self, s => s.plea(held_id))
    }

    /// The addresses of held messages whose sender asked for release.
    pub fn pleading(&self, limit: u64) -> Result<Vec<Address>, StoreError> {
        each!(self, s => s.pleading(limit))
    }

    /// The counts `/metrics` shows, at `now`.
    pub fn tally(&self, now: u64, review_within: Duration) -> Result<HeldReading, StoreError> {
        each!(self, s => s.tally(now, review_within))
    }
}

impl QuarantineIndex for Store {
    fn relay(&self) -> Option<&str> {
        Store::relay(self)
    }

    fn page(&self, query: &Query) -> Result<Page, StoreError> {
        each!(self, s => s.page(query))
    }

    fn matching(&self, query: &Query, limit: u64) -> Result<Vec<Address>, StoreError> {
        each!(self, s => s.matching(query, limit))
    }

    fn record(&self, at: &Address) -> Result<Record, StoreError> {
        match (self, at.relay.as_deref()) {
            (Store::Sqlite(_), Some(_)) => Err(StoreError::NotFound(at.queue_id.clone())),
            (Store::Sqlite(s), None) => s.get(&at.queue_id),
            (Store::Postgres(s), relay) => s.get_on(relay, &at.queue_id),
        }
    }

    fn requests(&self, held_id: i64) -> Result<Vec<Request>, StoreError> {
        each!(self, s => s.requests(held_id))
    }

    fn submit(&self, relay: Option<&str>, request: &NewRequest) -> Result<Request, SubmitError> {
        valid_request(request)?;
        match (self, relay) {
            (Store::Sqlite(_), Some(_)) => Err(SubmitError::NotFound(request.queue_id.clone())),
            (Store::Sqlite(s), None) => s.submit(request),
            (Store::Postgres(s), relay) => s.file_request(request, None, relay),
        }
    }

    fn submit_link(
        &self,
        relay: Option<&str>,
        request: &NewRequest,
        nonce: &str,
        expires: u64,
    ) -> Result<Request, SubmitError> {
        valid_request(request)?;
        match (self, relay) {
            (Store::Sqlite(_), Some(_)) => Err(SubmitError::NotFound(request.queue_id.clone())),
            (Store::Sqlite(s), None) => s.submit_link(request, nonce, expires),
            (Store::Postgres(s), relay) => s.file_request(request, Some((nonce, expires)), relay),
        }
    }

    fn open_requests(&self) -> Result<Vec<Request>, StoreError> {
        each!(self, s => s.open_requests())
    }

    fn claim(&self, id: i64, now: u64) -> Result<bool, StoreError> {
        each!(self, s => s.claim(id, now))
    }

    fn finish(&self, id: i64, ok: bool, result: &str, now: u64) -> Result<(), StoreError> {
        each!(self, s => s.finish(id, ok, result, now))
    }

    fn copy_token(&self, id: i64, token: &str) -> Result<String, StoreError> {
        each!(self, s => s.copy_token(id, token))
    }

    fn copy_sent(&self, id: i64, now: u64) -> Result<(), StoreError> {
        each!(self, s => s.copy_sent(id, now))
    }

    fn accept_copy(
        &self,
        mark: &CopyMark,
        queue_id: &str,
        now: u64,
    ) -> Result<CopyCheck, StoreError> {
        each!(self, s => s.accept_copy(mark, queue_id, now))
    }

    fn copies(&self, request: i64) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.copies(request))
    }

    fn copy_released(&self, id: i64, queue_id: &str) -> Result<(), StoreError> {
        each!(self, s => s.copy_released(id, queue_id))
    }

    fn lease(&self, id: i64, claimant: Option<&str>) -> Result<bool, StoreError> {
        each!(self, s => s.lease(id, claimant))
    }

    fn record_event(&self, event: &AuditEntry) -> Result<(), StoreError> {
        each!(self, s => s.record_event(event))
    }

    fn record_event_on(&self, held_id: i64, event: &AuditEntry) -> Result<(), StoreError> {
        each!(self, s => s.record_event_on(held_id, event))
    }

    fn events(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        each!(self, s => s.events(limit))
    }

    fn sender_asks(
        &self,
        held_id: i64,
        words: &str,
        who: &str,
        nonce: &str,
        expires: u64,
        at: u64,
    ) -> Result<(), SubmitError> {
        Store::sender_asks(self, held_id, words, who, nonce, expires, at)
    }

    fn plea(&self, held_id: i64) -> Result<Option<Plea>, StoreError> {
        Store::plea(self, held_id)
    }

    fn pleading(&self, limit: u64) -> Result<Vec<Address>, StoreError> {
        Store::pleading(self, limit)
    }

    fn remember_confirmed(
        &self,
        who: &str,
        lists: &[ConfirmedList],
        until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        Store::remember_confirmed(self, who, lists, until, now)
    }
}

/// What a request must have whatever the store: a comment, and for a release to
/// chosen recipients at least one (that each is an envelope recipient of the record
/// is checked by the store, in the transaction that files it:
/// [`super::index::release_to_recipients`]).
fn valid_request(request: &NewRequest) -> Result<(), SubmitError> {
    if request.comment.trim().is_empty() {
        return Err(SubmitError::Invalid("a comment is required".into()));
    }
    if let RequestAction::ReleaseTo { recipients } = &request.action
        && recipients.is_empty()
    {
        return Err(SubmitError::Invalid("choose at least one recipient".into()));
    }
    Ok(())
}
