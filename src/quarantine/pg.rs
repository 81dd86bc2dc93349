// SPDX-License-Identifier: GPL-3.0-or-later
//! The quarantine store of a fleet: one PostgreSQL database that every relay writes its
//! records to, each tagged with the relay's name (`[quarantine] relay`).
//!
//! What a relay does on its own Postfix reads only its own rows: [`PgStore::get`] and
//! [`PgStore::list`] (the admin commands and the sweep), the open requests
//! ([`QuarantineIndex::open_requests`], the worker), the notices due, the metrics and
//! the relay-wide events (the brake). What the review desk shows reads the whole fleet:
//! pages, records by queue id, requests, pleas. A request filed on any relay's desk is
//! stored with the relay of its record, so only that relay's worker claims it; the
//! result and the audit entries are rows every desk reads.
//!
//! The connection ([`super::pg_conn`]) runs the asynchronous client on its own small
//! runtime: every call here blocks, so the daemon calls it from `spawn_blocking`
//! threads (as it does SQLite), and every call ends by a deadline (the hold's, else
//! [`CALL_TIMEOUT`]), also when the server hangs. The connection is made again on the
//! next call after it broke; while the server is unreachable every call fails after
//! at most `connect_timeout`, so a hold tempfails (see README, "One quarantine for
//! the fleet"). A relay starts while the server is unreachable.

use super::index::{
    CopyCheck, CopyMark, MAX_PAGE, NewRequest, Page, Plea, Query, Request, RequestAction,
    RequestState, Row, Sort, SubmitError, Via, release_to_recipients,
};
use super::pg_conn::{Conn, Db, PgError, Tls, Tx};
use super::record::{Address, AuditEntry, HeldMessage, QueueId, Record, State, capped};
use super::senders::DueNotice;
use super::store::{Filter, StoreError, search_columns};
use crate::config::PgSettings;
use crate::config::redact_url;
use crate::metrics::{self, HeldReading, REVIEW_ACTIONS, REVIEW_VIA, RULE_FOREIGN, RULE_NONE};
use crate::policy::ConfirmedList;
use crate::text;
use parking_lot::{Mutex, MutexGuard};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tracing::{info, warn};

/// The schema this program writes; a database of a newer one is refused.
pub const PG_SCHEMA_VERSION: i32 = 1;

/// Taken around schema creation, so that relays starting together do not race.
const SCHEMA_LOCK: i64 = 0x66616e_6f7574;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fanout_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    id           BIGSERIAL PRIMARY KEY,
    relay        TEXT NOT NULL,
    queue_id     TEXT NOT NULL,
    held_at      BIGINT NOT NULL,
    state        TEXT NOT NULL,
    state_at     BIGINT NOT NULL,
    escalated_at BIGINT,
    sender       TEXT NOT NULL,
    audience     BIGINT NOT NULL,
    subject      TEXT,
    facts        TEXT NOT NULL,
    foreign_hold BOOLEAN NOT NULL DEFAULT FALSE,
    sasl_login   TEXT,
    rules        TEXT NOT NULL DEFAULT '',
    lists        TEXT NOT NULL DEFAULT '',
    hold_until   BIGINT,
    confirm      BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS held_relay_queue_id ON held(relay, queue_id);
CREATE INDEX IF NOT EXISTS held_queue_id ON held(queue_id);
CREATE INDEX IF NOT EXISTS held_state ON held(state, held_at);
CREATE INDEX IF NOT EXISTS held_relay_state ON held(relay, state, held_at);
CREATE INDEX IF NOT EXISTS held_audience ON held(audience);
CREATE INDEX IF NOT EXISTS held_state_rules ON held(state, rules);
CREATE TABLE IF NOT EXISTS audit (
    id      BIGSERIAL PRIMARY KEY,
    held_id BIGINT NOT NULL REFERENCES held(id),
    relay   TEXT NOT NULL,
    at      BIGINT NOT NULL,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS audit_held ON audit(held_id);
CREATE TABLE IF NOT EXISTS requests (
    id            BIGSERIAL PRIMARY KEY,
    held_id       BIGINT NOT NULL REFERENCES held(id),
    relay         TEXT NOT NULL,
    filed_on      TEXT NOT NULL,
    action        TEXT NOT NULL,
    args          TEXT NOT NULL,
    who           TEXT NOT NULL,
    via           TEXT NOT NULL,
    remote        TEXT,
    comment       TEXT NOT NULL,
    requested_at  BIGINT NOT NULL,
    state         TEXT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    result        TEXT,
    claimed_by    TEXT,
    copy_token    TEXT,
    copy_sent_at  BIGINT,
    copy_attempts BIGINT NOT NULL DEFAULT 0,
    copy_queue_id TEXT
);
CREATE INDEX IF NOT EXISTS requests_held ON requests(held_id);
CREATE INDEX IF NOT EXISTS requests_open ON requests(relay, id)
    WHERE state IN ('pending', 'running');
CREATE UNIQUE INDEX IF NOT EXISTS requests_one_open ON requests(held_id)
    WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS requests_tally ON requests(relay, state, action, via);
CREATE TABLE IF NOT EXISTS copies (
    request_id BIGINT NOT NULL REFERENCES requests(id),
    queue_id   TEXT NOT NULL,
    seen_at    BIGINT NOT NULL,
    seq        BIGSERIAL,
    PRIMARY KEY (request_id, queue_id)
);
CREATE TABLE IF NOT EXISTS events (
    id      BIGSERIAL PRIMARY KEY,
    relay   TEXT NOT NULL,
    at      BIGINT NOT NULL,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL,
    comment TEXT
);
CREATE TABLE IF NOT EXISTS link_nonces (
    nonce   TEXT PRIMARY KEY,
    expires BIGINT NOT NULL,
    used_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sender_notices (
    held_id BIGINT PRIMARY KEY REFERENCES held(id),
    sender  TEXT NOT NULL,
    due_at  BIGINT NOT NULL,
    sent_at BIGINT,
    result  TEXT
);
CREATE TABLE IF NOT EXISTS notice_senders (
    sender  TEXT PRIMARY KEY,
    last_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sender_asks (
    held_id BIGINT PRIMARY KEY REFERENCES held(id),
    at      BIGINT NOT NULL,
    words   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmations (
    who   TEXT NOT NULL,
    list  TEXT NOT NULL,
    size  BIGINT NOT NULL,
    until BIGINT NOT NULL,
    PRIMARY KEY (who, list)
);
";

/// How long a call to the store may take in all (waiting for the connection,
/// connecting, its statements) when the caller gave no deadline: past the server's
/// own `statement_timeout` (15 s), so that a slow statement is ended by the server,
/// and a server that does not answer at all by the client.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// How much longer than a hold's deadline its COMMIT may take: the milter gives the
/// store 15 s and waits 20 s for it (`RECORD_DEADLINE`, `RECORD_TIMEOUT`), so a commit
/// answered within 19 s still counts as held.
const COMMIT_GRACE: Duration = Duration::from_secs(4);

/// How long past its expiry a spent link nonce is kept (as the SQLite store).
const LINK_NONCE_MARGIN: u64 = 86_400;

/// The fleet's quarantine database, as one relay uses it.
pub struct PgStore {
    /// The URL without secrets, for messages.
    label: PathBuf,
    relay: String,
    state_dir: PathBuf,
    config: tokio_postgres::Config,
    /// Plain, or TLS verified against `ca_file`.
    tls: Tls,
    client: Mutex<Slot>,
    /// The server was found unreachable and has not answered since: the outage is
    /// logged once when it begins and once when it ends.
    down: AtomicBool,
}

/// The connection, when there is one, and whether the database was checked (encoding,
/// schema) since the store was opened.
#[derive(Default)]
struct Slot {
    client: Option<Conn>,
    ready: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.label)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    /// The client owns a small runtime, which must not be dropped on an async worker
    /// thread (the daemon's last reference may go there at shutdown): it is closed on
    /// a thread of its own.
    fn drop(&mut self) {
        let client = self.client.get_mut().client.take();
        if let Some(client) = client {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(client))
                .map(|t| t.join());
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unclamp(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A text value for a TEXT column: PostgreSQL refuses NUL in text, so it becomes
/// U+FFFD (every value from mail or a user is bound through this or [`opt_txt`]).
fn txt(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// [`txt`] for a value that may be NULL.
fn opt_txt(s: Option<&str>) -> Option<Cow<'_, str>> {
    s.map(txt)
}

/// True for an error that says the server could not be reached or went away (the
/// network, a server starting up, shutting down or full), not that it refused us.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        }
        None => {
            e.is_closed()
                || std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| !tls_refusal(io))
        }
    }
}

/// True for a TLS handshake that failed on its merits (a certificate that does not
/// chain to the CA file or does not name the host, no common protocol): the server
/// answered, and the answer is refused, as a wrong password is. The TLS client
/// reports these as an I/O error around rustls's own.
fn tls_refusal(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

fn is_unique_violation(e: &PgError) -> bool {
    matches!(e, PgError::Db(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
}

impl PgStore {
    /// Connects to the database of `settings` and brings its schema up to date;
    /// `state_dir` is this relay's own state directory (the brake's file).
    ///
    /// A server that cannot be reached is no error here (the relay starts, and only
    /// holds tempfail until it is back: each call connects again, and the database is
    /// checked at the first connection); one that answers and refuses (a wrong
    /// password, a database not in UTF-8, a schema too new, a certificate that TLS
    /// does not verify, no TLS where `ca_file` asks for it) is.
    pub fn open(settings: &PgSettings, state_dir: &Path) -> Result<PgStore, StoreError> {
        // The relay's own files (the desk's key, the brake, the admin socket) stay there.
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        let label = PathBuf::from(redact_url(&settings.url));
        let mut config =
            tokio_postgres::Config::from_str(&settings.url).map_err(|e| StoreError::Postgres {
                url: label.display().to_string(),
                source: e,
            })?;
        if let Some(p) = &settings.password {
            config.password(p.as_bytes());
        }
        // A server that stops answering is given up on: the kernel drops a connection
        // whose sent data stays unacknowledged for 15 s, keepalives find a silent one,
        // and the server ends a statement that waits longer than 15 s (on a lock).
        config
            .connect_timeout(settings.connect_timeout)
            .application_name("fanout-milter")
            .options("-c statement_timeout=15000")
            .tcp_user_timeout(Duration::from_secs(15))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        // TLS only when configured, then required and verified; never the client's
        // default `prefer`, which goes on in plain text when TLS fails. A URL that says
        // `require` with no CA file keeps it, and fails to connect (no TLS connector).
        let tls = Tls::new(settings.tls.as_ref()).map_err(|message| StoreError::Tls {
            url: label.display().to_string(),
            message,
        })?;
        match tls {
            Tls::Verified(_) => config.ssl_mode(SslMode::Require),
            Tls::Off if config.get_ssl_mode() == SslMode::Require => &mut config,
            Tls::Off => config.ssl_mode(SslMode::Disable),
        };
        let store = PgStore {
            label,
            relay: settings.relay.clone(),
            state_dir: state_dir.to_owned(),
            config,
            tls,
            client: Mutex::new(Slot::default()),
            down: AtomicBool::new(false),
        };
        match store.with(|_| Ok::<_, StoreError>(())) {
            Ok(()) => Ok(store),
            Err(StoreError::Postgres { source, .. }) if unreachable(&source) => Ok(store),
            Err(StoreError::NoAnswer { .. }) => Ok(store),
            Err(e) => Err(e),
        }
    }

    /// The database's URL without secrets.
    pub fn path(&self) -> &Path {
        &self.label
    }

    /// This relay's name.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// This relay's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn err(&self, e: impl Into<PgError>) -> StoreError {
        let url = self.label.display().to_string();
        match e.into() {
            PgError::Db(source) => StoreError::Postgres { url, source },
            PgError::NoAnswer => StoreError::NoAnswer { url },
        }
    }

    fn corrupt(&self, id: i64, message: String) -> StoreError {
        StoreError::Corrupt {
            path: self.label.clone(),
            id,
            message,
        }
    }

    fn too_late(&self, what: &'static str) -> StoreError {
        StoreError::TooLate {
            url: self.label.display().to_string(),
            what,
        }
    }

    /// Runs `f` on the connection, connecting first when there is none or it broke.
    fn with<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        self.with_by(Instant::now() + CALL_TIMEOUT, f)
    }

    /// As [`PgStore::with`], but everything ends by `deadline`: the wait for the
    /// connection, connecting, and every call (a call past it drops the connection:
    /// see [`super::pg_conn`]).
    fn with_by<T, E: From<StoreError>>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&mut Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let guard = self
            .client
            .try_lock_for(wait)
            .ok_or_else(|| self.too_late("waiting for the connection"))?;
        self.with_guard(guard, deadline, f)
    }

    fn with_guard<T, E: From<StoreError>>(
        &self,
        mut guard: MutexGuard<'_, Slot>,
        deadline: Instant,
        f: impl FnOnce(&mut Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        let slot = &mut *guard;
        if slot.client.as_ref().is_none_or(Conn::is_closed) {
            slot.client = None;
            let mut client = match Conn::connect(&self.config, &self.tls, deadline) {
                Ok(client) => client,
                Err(e) => {
                    let e = self.err(e);
                    self.outage(&e.to_string());
                    return Err(e.into());
                }
            };
            if !slot.ready {
                self.check_encoding(&mut client)?;
                self.create_schema(&mut client)?;
                slot.ready = true;
            }
            slot.client = Some(client);
            if self.down.swap(false, Ordering::Relaxed) {
                info!(store = %self.label.display(), relay = %self.relay,
                    "quarantine store reachable again: holds are recorded again");
            }
        }
        let client = slot.client.as_mut().expect("connected above");
        client.set_deadline(deadline);
        let out = f(client);
        if client.is_closed() {
            slot.client = None;
            self.outage("the connection was lost");
        }
        out
    }

    /// Logs the start of an outage, once (`why` carries no secret: the URL is
    /// redacted, and the client's errors never quote the password).
    fn outage(&self, why: &str) {
        if !self.down.swap(true, Ordering::Relaxed) {
            warn!(store = %self.label.display(), relay = %self.relay,
                "quarantine store unreachable: messages that need a hold are tempfailed \
                 until it is back, the rest flow: {}", text::neutralize(why));
        }
    }

    /// Text is stored as it is written only in a UTF-8 database.
    fn check_encoding(&self, c: &mut Conn) -> Result<(), StoreError> {
        let found: String = c
            .query_one("SHOW server_encoding", &[])
            .map_err(|e| self.err(e))?
            .get(0);
        if found == "UTF8" {
            Ok(())
        } else {
            Err(StoreError::Encoding {
                url: self.label.display().to_string(),
                found,
            })
        }
    }

    /// Makes the schema when it is missing (or older); a schema of this version made
    /// already, by this program or by the database's owner, is used as it is, with no
    /// DDL: so the relays' user needs no `CREATE` once the owner made it.
    fn create_schema(&self, c: &mut Conn) -> Result<(), StoreError> {
        let made: bool = c
            .query_one("SELECT to_regclass('fanout_schema') IS NOT NULL", &[])
            .map_err(|e| self.err(e))?
            .get(0);
        if made {
            let found: Option<i32> = c
                .query_one("SELECT max(version) FROM fanout_schema", &[])
                .map_err(|e| self.err(e))?
                .get(0);
            match found {
                Some(v) if v == PG_SCHEMA_VERSION => return Ok(()),
                Some(v) if v > PG_SCHEMA_VERSION => {
                    return Err(StoreError::TooNew {
                        path: self.label.clone(),
                        found: i64::from(v),
                    });
                }
                _ => {}
            }
        }
        let mut tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(|e| self.err(e))?;
        tx.batch_execute(SCHEMA).map_err(|e| self.err(e))?;
        let found: Option<i32> = tx
            .query_opt("SELECT max(version) FROM fanout_schema", &[])
            .map_err(|e| self.err(e))?
            .and_then(|r| r.get(0));
        match found {
            Some(v) if v > PG_SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    path: self.label.clone(),
                    found: i64::from(v),
                });
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO fanout_schema (version) VALUES ($1)",
                    &[&PG_SCHEMA_VERSION],
                )
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn insert_audit(&self, c: &mut impl Db, id: i64, e: &AuditEntry) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO audit (held_id, relay, at, who, action, comment)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &self.relay,
                &clamp(e.at),
                &txt(&e.who),
                &txt(&e.action),
                &opt_txt(e.comment.as_deref()),
            ],
        )
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    /// Records a message the milter holds, with a first audit entry; durable on return
    /// (committed on the server).
    pub fn record_held(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
    ) -> Result<i64, StoreError> {
        self.insert(msg, false, who, comment, None)
    }

    /// As [`PgStore::record_held`], but nothing is written unless the record is
    /// committed by `deadline`: when the connection is not free in time, a statement
    /// runs past it or it has passed before COMMIT, the transaction is rolled back and
    /// [`StoreError::TooLate`] returned (the milter has tempfailed the message by then).
    pub fn record_held_by(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
        deadline: Instant,
    ) -> Result<i64, StoreError> {
        self.insert(msg, false, who, comment, Some(deadline))
    }

    /// Records a message found in the hold queue that fanout-milter did not hold.
    pub fn record_foreign(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
    ) -> Result<i64, StoreError> {
        self.insert(msg, true, who, comment, None)
    }

    fn insert(
        &self,
        msg: &HeldMessage,
        foreign: bool,
        who: &str,
        comment: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<i64, StoreError> {
        let msg = &*capped(msg);
        let facts = serde_json::to_string(msg).map_err(|e| self.corrupt(0, e.to_string()))?;
        let (rules, lists) = search_columns(msg);
        let late = || deadline.is_some_and(|d| Instant::now() >= d);
        let write = |c: &mut Conn| {
            if late() {
                return Err(self.too_late("recording the hold"));
            }
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            if let Some(deadline) = deadline {
                // At least 1 ms: 0 would mean no limit. A little before the deadline,
                // so that a server that is alive ends the statement itself before the
                // client drops the connection (see `pg_conn`).
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = left.as_millis().saturating_sub(100).clamp(1, 15_000);
                tx.batch_execute(&format!("SET LOCAL statement_timeout = {ms}"))
                    .map_err(|e| self.err(e))?;
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO held (relay, queue_id, held_at, state, state_at, sender, audience,
                                       subject, facts, foreign_hold, sasl_login, rules, lists,
                                       confirm)
                     VALUES ($1, $2, $3, 'held', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     RETURNING id",
                    &[
                        &self.relay,
                        &msg.queue_id.as_str(),
                        &clamp(msg.held_at),
                        &txt(&msg.sender),
                        &clamp(msg.audience),
                        &opt_txt(msg.subject.as_deref()),
                        &txt(&facts),
                        &foreign,
                        &opt_txt(msg.sasl_login.as_deref()),
                        &txt(&rules),
                        &txt(&lists),
                        &msg.confirm,
                    ],
                )
                .map_err(|e| self.err(e))?
                .get(0);
            let entry = AuditEntry {
                at: msg.held_at,
                who: who.to_owned(),
                action: "held".into(),
                comment: comment.map(str::to_owned),
            };
            self.insert_audit(&mut tx, id, &entry)?;
            if msg.notify_sender && !foreign && !msg.sender.is_empty() {
                tx.execute(
                    "INSERT INTO sender_notices (held_id, sender, due_at) VALUES ($1, $2, $3)",
                    &[&id, &txt(&msg.sender), &clamp(msg.held_at)],
                )
                .map_err(|e| self.err(e))?;
            }
            if late() {
                // Past the deadline the ROLLBACK may itself be cut short, dropping the
                // connection: the server rolls back then too. Late either way.
                let _ = tx.rollback();
                return Err(self.too_late("recording the hold"));
            }
            // In time so far: the COMMIT may take a little longer (a synchronous
            // replica), still within the milter's wait, so that a commit the server
            // made is not reported as failed (the message would be tempfailed but
            // recorded held).
            if let Some(deadline) = deadline {
                tx.set_deadline(deadline + COMMIT_GRACE);
            }
            tx.commit().map_err(|e| self.err(e))?;
            Ok(id)
        };
        match deadline {
            Some(deadline) => self.with_by(deadline, write),
            None => self.with(write),
        }
    }

    /// This relay's newest record for a queue id (the admin commands act on this
    /// relay's Postfix).
    pub fn get(&self, queue_id: &QueueId) -> Result<Record, StoreError> {
        self.get_on(None, queue_id)
    }

    /// The newest record for a queue id on `relay` (this relay when `None`).
    pub fn get_on(&self, relay: Option<&str>, queue_id: &QueueId) -> Result<Record, StoreError> {
        let relay = relay.unwrap_or(&self.relay);
        self.with(|c| {
            let row = c
                .query_opt(
                    "SELECT id FROM held WHERE relay = $1 AND queue_id = $2
                     ORDER BY id DESC LIMIT 1",
                    &[&txt(relay), &queue_id.as_str()],
                )
                .map_err(|e| self.err(e))?;
            match row {
                Some(r) => self.load(c, r.get(0)),
                None => Err(StoreError::NotFound(queue_id.clone())),
            }
        })
    }

    /// This relay's records matching `filter`, oldest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        self.with(|c| {
            let rows = c
                .query(
                    "SELECT id FROM held WHERE relay = $1
                     AND ($2::TEXT IS NULL OR state = $2) AND ($3::BIGINT IS NULL OR held_at >= $3)
                     ORDER BY held_at, id",
                    &[
                        &self.relay,
                        &filter.state.map(State::as_str),
                        &filter.since.map(clamp),
                    ],
                )
                .map_err(|e| self.err(e))?;
            rows.iter().map(|r| self.load(c, r.get(0))).collect()
        })
    }

    fn load(&self, c: &mut impl Db, id: i64) -> Result<Record, StoreError> {
        let row = c
            .query_opt(
                "SELECT facts, state, state_at, escalated_at, foreign_hold, hold_until, relay
                 FROM held WHERE id = $1",
                &[&id],
            )
            .map_err(|e| self.err(e))?
            .ok_or_else(|| self.corrupt(id, "the record is missing".into()))?;
        let facts: String = row.get(0);
        let state: String = row.get(1);
        let message: HeldMessage =
            serde_json::from_str(&facts).map_err(|e| self.corrupt(id, e.to_string()))?;
        let state: State = state.parse().map_err(|m| self.corrupt(id, m))?;
        let audit = c
            .query(
                "SELECT at, who, action, comment, relay FROM audit WHERE held_id = $1 ORDER BY id",
                &[&id],
            )
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| {
                let relay: String = r.get(4);
                let comment: Option<String> = r.get(3);
                AuditEntry {
                    at: unclamp(r.get(0)),
                    who: r.get(1),
                    action: r.get(2),
                    comment: Some(match comment {
                        Some(c) => format!("on {relay}: {c}"),
                        None => format!("on {relay}"),
                    }),
                }
            })
            .collect();
        Ok(Record {
            id,
            message,
            state,
            state_at: unclamp(row.get(2)),
            escalated_at: row.get::<_, Option<i64>>(3).map(unclamp),
            foreign: row.get(4),
            hold_until: row.get::<_, Option<i64>>(5).map(unclamp),
            relay: Some(row.get(6)),
            audit,
        })
    }

    fn state_changed(&self, c: &mut impl Db, id: i64, expected: State) -> StoreError {
        match c.query_opt("SELECT state FROM held WHERE id = $1", &[&id]) {
            Ok(found) => StoreError::StateChanged {
                id,
                expected,
                found: found
                    .map(|r| r.get::<_, String>(0))
                    .unwrap_or_else(|| "missing".to_owned()),
            },
            Err(e) => self.err(e),
        }
    }

    /// Moves a record from state `from` to `to` with an audit entry, in one
    /// transaction; of two commands racing for one record, exactly one succeeds.
    pub fn set_state(
        &self,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            self.transition(&mut tx, id, from, to, entry)?;
            tx.commit().map_err(|e| self.err(e))
        })
    }

    fn transition(
        &self,
        tx: &mut Tx<'_>,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        let changed = tx
            .execute(
                "UPDATE held SET state = $3, state_at = $4 WHERE id = $1 AND state = $2",
                &[&id, &from.as_str(), &to.as_str(), &clamp(entry.at)],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(self.state_changed(tx, id, from));
        }
        self.insert_audit(tx, id, entry)
    }

    /// [`PgStore::set_state`], unless a request for the record is open.
    pub fn set_state_unrequested(
        &self,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            // Filing a request locks the record too: the two are one after the other.
            tx.query_opt("SELECT id FROM held WHERE id = $1 FOR UPDATE", &[&id])
                .map_err(|e| self.err(e))?;
            let open: i64 = tx
                .query_one(
                    "SELECT count(*) FROM requests WHERE held_id = $1
                     AND state IN ('pending', 'running')",
                    &[&id],
                )
                .map_err(|e| self.err(e))?
                .get(0);
            if open > 0 {
                return Err(StoreError::RequestOpen { id });
            }
            self.transition(&mut tx, id, from, to, entry)?;
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Appends to a record's audit trail without changing its state.
    pub fn audit(&self, id: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        self.with(|c| self.insert_audit(c, id, entry))
    }

    /// Runs `update` (with `$1` the id, `$2` the value) on a held record and appends
    /// `entry`, in one transaction.
    fn update_held(
        &self,
        id: i64,
        update: &str,
        value: i64,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            let changed = tx
                .execute(update, &[&id, &value])
                .map_err(|e| self.err(e))?;
            if changed == 0 {
                return Err(self.state_changed(&mut tx, id, State::Held));
            }
            self.insert_audit(&mut tx, id, entry)?;
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Notes that an escalation alert went out for a record that is still held.
    pub fn mark_escalated(&self, id: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        self.update_held(
            id,
            "UPDATE held SET escalated_at = $2 WHERE id = $1 AND state = 'held'",
            clamp(entry.at),
            entry,
        )
    }

    /// Keeps a held record out of the sweep's reach until `until`.
    pub fn set_hold_until(
        &self,
        id: i64,
        until: u64,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.update_held(
            id,
            "UPDATE held SET hold_until = $2 WHERE id = $1 AND state = 'held'",
            clamp(until),
            entry,
        )
    }

    /// The record with row id `id`.
    pub fn record_by_id(&self, id: i64) -> Result<Record, StoreError> {
        self.with(|c| self.load(c, id))
    }

    /// This relay's notices due and not sent yet, oldest first, at most `limit`.
    pub fn due_notices(&self, limit: u64) -> Result<Vec<DueNotice>, StoreError> {
        self.with(|c| {
            let rows = c
                .query(
                    "SELECT n.held_id, n.sender, n.due_at, h.state, s.last_at
                     FROM sender_notices n JOIN held h ON h.id = n.held_id
                     LEFT JOIN notice_senders s ON s.sender = n.sender
                     WHERE n.sent_at IS NULL AND h.relay = $1
                     ORDER BY n.due_at, n.held_id LIMIT $2",
                    &[&self.relay, &clamp(limit)],
                )
                .map_err(|e| self.err(e))?;
            rows.iter()
                .map(|r| {
                    let held_id: i64 = r.get(0);
                    let state: String = r.get(3);
                    Ok(DueNotice {
                        held_id,
                        sender: r.get(1),
                        due_at: unclamp(r.get(2)),
                        state: state.parse().map_err(|m| self.corrupt(held_id, m))?,
                        last_told: r.get::<_, Option<i64>>(4).map(unclamp),
                    })
                })
                .collect()
        })
    }

    /// Settles the notices of `held_ids` at `at` with `result`.
    pub fn notices_done(
        &self,
        held_ids: &[i64],
        sender: &str,
        told: bool,
        at: u64,
        result: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            for id in held_ids {
                tx.execute(
                    "UPDATE sender_notices SET sent_at = $2, result = $3
                     WHERE held_id = $1 AND sent_at IS NULL",
                    &[id, &clamp(at), &txt(result)],
                )
                .map_err(|e| self.err(e))?;
                let entry = AuditEntry {
                    at,
                    who: "notifier".into(),
                    action: "notify-sender".into(),
                    comment: Some(result.to_owned()),
                };
                self.insert_audit(&mut tx, *id, &entry)?;
            }
            if told {
                tx.execute(
                    "INSERT INTO notice_senders (sender, last_at) VALUES ($1, $2)
                     ON CONFLICT (sender) DO UPDATE
                     SET last_at = greatest(notice_senders.last_at, excluded.last_at)",
                    &[&txt(sender), &clamp(at)],
                )
                .map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// When `sender` was last sent a notice at hold (by any relay).
    pub fn last_told(&self, sender: &str) -> Result<Option<u64>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT last_at FROM notice_senders WHERE sender = $1",
                &[&txt(sender)],
            )
            .map(|r| r.map(|r| unclamp(r.get(0))))
            .map_err(|e| self.err(e))
        })
    }

    /// The lists `who` confirmed that are remembered at `now` (fleet-wide).
    pub fn confirmed_lists(&self, who: &str, now: u64) -> Result<Vec<ConfirmedList>, StoreError> {
        self.with(|c| {
            let rows = c
                .query(
                    "SELECT list, size FROM confirmations WHERE who = $1 AND until > $2
                     ORDER BY list",
                    &[&txt(who), &clamp(now)],
                )
                .map_err(|e| self.err(e))?;
            Ok(rows
                .iter()
                .map(|r| ConfirmedList {
                    address: r.get(0),
                    size: unclamp(r.get(1)),
                })
                .collect())
        })
    }

    /// Remembers that `who` confirmed posting to `lists` until `until`.
    pub fn remember_confirmed(
        &self,
        who: &str,
        lists: &[ConfirmedList],
        until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            tx.execute(
                "DELETE FROM confirmations WHERE until <= $1",
                &[&clamp(now)],
            )
            .map_err(|e| self.err(e))?;
            for list in lists {
                tx.execute(
                    "INSERT INTO confirmations (who, list, size, until) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (who, list) DO UPDATE SET size = excluded.size,
                         until = greatest(confirmations.until, excluded.until)",
                    &[
                        &txt(who),
                        &txt(&list.address.to_ascii_lowercase()),
                        &clamp(list.size),
                        &clamp(until),
                    ],
                )
                .map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    fn spend_nonce(
        &self,
        tx: &mut Tx<'_>,
        nonce: &str,
        expires: u64,
        at: u64,
    ) -> Result<(), SubmitError> {
        // Expired nonces another transaction holds are left for a later call: waiting on
        // them here could deadlock with it, since a plea locks the held row before its
        // nonce and a request files its nonce before the held row.
        tx.execute(
            "DELETE FROM link_nonces WHERE nonce IN (
                 SELECT nonce FROM link_nonces WHERE expires < $1 FOR UPDATE SKIP LOCKED)",
            &[&clamp(at.saturating_sub(LINK_NONCE_MARGIN))],
        )
        .map_err(|e| self.err(e))?;
        let spent = tx
            .execute(
                "INSERT INTO link_nonces (nonce, expires, used_at) VALUES ($1, $2, $3)
                 ON CONFLICT (nonce) DO NOTHING",
                &[&txt(nonce), &clamp(expires), &clamp(at)],
            )
            .map_err(|e| self.err(e))?;
        if spent == 0 {
            return Err(SubmitError::Conflict(
                "this link was used already: each link acts once".into(),
            ));
        }
        Ok(())
    }

    /// Records a sender's plea for release of the record `held_id`.
    pub fn sender_asks(
        &self,
        held_id: i64,
        words: &str,
        who: &str,
        nonce: &str,
        expires: u64,
        at: u64,
    ) -> Result<(), SubmitError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            let state: Option<String> = tx
                .query_opt(
                    "SELECT state FROM held WHERE id = $1 FOR UPDATE",
                    &[&held_id],
                )
                .map_err(|e| self.err(e))?
                .map(|r| r.get(0));
            match state.as_deref() {
                None => return Err(SubmitError::Invalid("no such held message".into())),
                Some(s) if s != State::Held.as_str() => {
                    return Err(SubmitError::Conflict(format!("the message is {s} already")));
                }
                Some(_) => {}
            }
            self.spend_nonce(&mut tx, nonce, expires, at)?;
            let asked = tx
                .execute(
                    "INSERT INTO sender_asks (held_id, at, words) VALUES ($1, $2, $3)
                     ON CONFLICT (held_id) DO NOTHING",
                    &[&held_id, &clamp(at), &txt(words)],
                )
                .map_err(|e| self.err(e))?;
            if asked == 0 {
                return Err(SubmitError::Conflict(
                    "release of this message was asked for already".into(),
                ));
            }
            let entry = AuditEntry {
                at,
                who: who.to_owned(),
                action: "sender-asks".into(),
                comment: Some(words.to_owned()),
            };
            self.insert_audit(&mut tx, held_id, &entry)?;
            tx.commit().map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// The sender's plea for release of the record `held_id`, if they made one.
    pub fn plea(&self, held_id: i64) -> Result<Option<Plea>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT at, words FROM sender_asks WHERE held_id = $1",
                &[&held_id],
            )
            .map(|r| {
                r.map(|r| Plea {
                    at: unclamp(r.get(0)),
                    words: r.get(1),
                })
            })
            .map_err(|e| self.err(e))
        })
    }

    /// The addresses of held messages (fleet-wide) whose sender asked for release.
    pub fn pleading(&self, limit: u64) -> Result<Vec<Address>, StoreError> {
        self.with(|c| {
            let rows = c
                .query(
                    "SELECT h.relay, h.queue_id FROM sender_asks a JOIN held h ON h.id = a.held_id
                     WHERE h.state = 'held' ORDER BY a.at, a.held_id LIMIT $1",
                    &[&clamp(limit)],
                )
                .map_err(|e| self.err(e))?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let id = QueueId::parse(r.get::<_, &str>(1)).ok()?;
                    Some(Address::on(Some(r.get::<_, &str>(0)), id))
                })
                .collect())
        })
    }

    /// The counts `/metrics` shows for this relay, at `now`.
    pub fn tally(&self, now: u64, review_within: Duration) -> Result<HeldReading, StoreError> {
        self.with(|c| {
            let mut by_rule: HashMap<&'static str, (u64, u64)> = HashMap::new();
            for r in c
                .query(
                    "SELECT rules, foreign_hold, held_at FROM held
                     WHERE relay = $1 AND state = 'held'",
                    &[&self.relay],
                )
                .map_err(|e| self.err(e))?
            {
                let rules: &str = r.get(0);
                let rule = if r.get::<_, bool>(1) {
                    RULE_FOREIGN
                } else {
                    rules
                        .split_whitespace()
                        .next()
                        .map_or(RULE_NONE, metrics::rule_label)
                };
                let held_at = unclamp(r.get(2));
                let entry = by_rule.entry(rule).or_insert((0, held_at));
                entry.0 += 1;
                entry.1 = entry.1.min(held_at);
            }
            let due = clamp(now.saturating_sub(review_within.as_secs()));
            let row = c
                .query_one(
                    "SELECT count(*), min(held_at) FROM held
                     WHERE relay = $1 AND state = 'held' AND NOT foreign_hold
                     AND held_at <= $2
                     AND (hold_until IS NULL OR hold_until <= $3)
                     AND NOT (hold_until IS NULL AND confirm)",
                    &[&self.relay, &due, &clamp(now)],
                )
                .map_err(|e| self.err(e))?;
            let (overdue, overdue_oldest): (i64, Option<i64>) = (row.get(0), row.get(1));
            let mut actions = Vec::new();
            let mut failures: HashMap<&'static str, u64> = HashMap::new();
            for r in c
                .query(
                    "SELECT action, via, state, count(*) FROM requests
                     WHERE relay = $1 AND state IN ('done', 'failed')
                     GROUP BY action, via, state",
                    &[&self.relay],
                )
                .map_err(|e| self.err(e))?
            {
                let (action, via, state): (&str, &str, &str) = (r.get(0), r.get(1), r.get(2));
                let n = unclamp(r.get(3));
                let Some(action) = REVIEW_ACTIONS.into_iter().find(|a| *a == action) else {
                    continue;
                };
                if state == "failed" {
                    *failures.entry(action).or_default() += n;
                } else if let Some(via) = REVIEW_VIA.into_iter().find(|v| *v == via) {
                    actions.push((action, via, n));
                }
            }
            let expired: i64 = c
                .query_one(
                    "SELECT count(*) FROM held WHERE relay = $1 AND state = 'expired'",
                    &[&self.relay],
                )
                .map_err(|e| self.err(e))?
                .get(0);
            actions.push(("expire", "sweep", unclamp(expired)));
            let unconfirmed: i64 = c
                .query_one(
                    "SELECT count(*) FROM held h WHERE h.relay = $1 AND h.state = 'discarded'
                     AND EXISTS (SELECT 1 FROM audit a WHERE a.held_id = h.id
                         AND a.action = 'unconfirmed'
                         AND NOT EXISTS (SELECT 1 FROM audit b WHERE b.held_id = h.id
                             AND b.id > a.id AND b.action = 'discard'))",
                    &[&self.relay],
                )
                .map_err(|e| self.err(e))?
                .get(0);
            actions.push(("discard", "sweep", unclamp(unconfirmed)));
            let mut by_rule: Vec<(&'static str, u64, u64)> = by_rule
                .into_iter()
                .map(|(rule, (n, oldest))| (rule, n, oldest))
                .collect();
            by_rule.sort_unstable();
            let mut failures: Vec<(&'static str, u64)> = failures.into_iter().collect();
            failures.sort_unstable();
            Ok(HeldReading {
                by_rule,
                overdue: unclamp(overdue),
                overdue_oldest: overdue_oldest.map(unclamp).unwrap_or(0),
                actions,
                failures,
            })
        })
    }

    fn query_requests(
        &self,
        c: &mut impl Db,
        tail: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Request>, StoreError> {
        let sql = format!(
            "SELECT r.id, r.held_id, h.queue_id, r.args, r.who, r.via, r.remote, r.comment,
                    r.requested_at, r.state, r.started_at, r.finished_at, r.result,
                    r.copy_sent_at, r.copy_queue_id, r.claimed_by, r.copy_attempts
             FROM requests r JOIN held h ON h.id = r.held_id {tail}"
        );
        let rows = c.query(&sql, args).map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let bad = |m: String| self.corrupt(id, format!("a request is unreadable: {m}"));
                Ok(Request {
                    id,
                    held_id: r.get(1),
                    queue_id: QueueId::parse(r.get::<_, &str>(2))
                        .map_err(|e| bad(e.to_string()))?,
                    action: serde_json::from_str::<RequestAction>(r.get(3))
                        .map_err(|e| bad(e.to_string()))?,
                    who: r.get(4),
                    via: r.get::<_, &str>(5).parse::<Via>().map_err(bad)?,
                    remote: r.get(6),
                    comment: r.get(7),
                    requested_at: unclamp(r.get(8)),
                    state: r.get::<_, &str>(9).parse::<RequestState>().map_err(bad)?,
                    started_at: r.get::<_, Option<i64>>(10).map(unclamp),
                    finished_at: r.get::<_, Option<i64>>(11).map(unclamp),
                    result: r.get(12),
                    copy_sent_at: r.get::<_, Option<i64>>(13).map(unclamp),
                    copy_queue_id: r.get(14),
                    claimed_by: r.get(15),
                    copy_attempts: u32::try_from(r.get::<_, i64>(16)).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Files a request for the newest record of its queue id on `relay` (this relay
    /// when `None`: never another relay's record with the same queue id); stored with
    /// that record's relay so that only its worker claims it.
    pub fn file_request(
        &self,
        n: &NewRequest,
        link: Option<(&str, u64)>,
        relay: Option<&str>,
    ) -> Result<Request, SubmitError> {
        let args = serde_json::to_string(&n.action).map_err(|e| self.corrupt(0, e.to_string()))?;
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            if let Some((nonce, expires)) = link {
                self.spend_nonce(&mut tx, nonce, expires, n.at)?;
            }
            let found = tx
                .query_opt(
                    "SELECT id, state, relay FROM held
                     WHERE queue_id = $1 AND relay = $2
                     ORDER BY id DESC LIMIT 1 FOR UPDATE",
                    &[&n.queue_id.as_str(), &txt(relay.unwrap_or(&self.relay))],
                )
                .map_err(|e| self.err(e))?;
            let Some(found) = found else {
                return Err(SubmitError::NotFound(n.queue_id.clone()));
            };
            let (held_id, state, owner): (i64, String, String) =
                (found.get(0), found.get(1), found.get(2));
            if state != State::Held.as_str() {
                return Err(SubmitError::Conflict(format!(
                    "{} is {state} already",
                    n.queue_id
                )));
            }
            if let RequestAction::ReleaseTo { .. } = &n.action {
                release_to_recipients(&self.load(&mut tx, held_id)?, n)?;
            }
            let inserted = tx.query_one(
                "INSERT INTO requests (held_id, relay, filed_on, action, args, who, via, remote,
                                       comment, requested_at, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending') RETURNING id",
                &[
                    &held_id,
                    &owner,
                    &self.relay,
                    &n.action.name(),
                    &txt(&args),
                    &txt(&n.who),
                    &n.via.as_str(),
                    &opt_txt(n.remote.as_deref()),
                    &txt(&n.comment),
                    &clamp(n.at),
                ],
            );
            let id: i64 = match inserted {
                Ok(row) => row.get(0),
                Err(e) if is_unique_violation(&e) => {
                    return Err(SubmitError::Conflict(format!(
                        "a request for {} is already open",
                        n.queue_id
                    )));
                }
                Err(e) => return Err(self.err(e).into()),
            };
            let entry = AuditEntry {
                at: n.at,
                who: n.who.clone(),
                action: format!("request {}", n.action.name()),
                comment: Some(format!(
                    "via {}{}, for {owner}: {}",
                    n.via.as_str(),
                    n.remote
                        .as_deref()
                        .map(|r| format!(" from {r}"))
                        .unwrap_or_default(),
                    n.comment
                )),
            };
            self.insert_audit(&mut tx, held_id, &entry)?;
            let request = self
                .query_requests(&mut tx, "WHERE r.id = $1", &[&id])?
                .pop()
                .ok_or_else(|| self.corrupt(id, "the request just filed is missing".into()))?;
            tx.commit().map_err(|e| self.err(e))?;
            Ok(request)
        })
    }
}

/// The WHERE clause of a desk query and its parameters (`$1`...). Only fixed SQL text
/// is built here; every value the user typed is a parameter.
fn where_clause(q: &Query) -> (String, Vec<Box<dyn ToSql + Sync>>) {
    let mut sql = String::from("WHERE TRUE");
    let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let mut add = |clause: &str, v: Box<dyn ToSql + Sync>| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(s) = q.state {
        add(" AND state = ?", Box::new(s.as_str().to_owned()));
    }
    if let Some(r) = &q.relay {
        add(" AND relay = ?", Box::new(txt(r).into_owned()));
    }
    if let Some(r) = &q.rule {
        add(
            " AND strpos(rules, ' ' || ? || ' ') > 0",
            Box::new(txt(r).into_owned()),
        );
    }
    if let Some(s) = q.sender.as_deref().filter(|s| !s.is_empty()) {
        add(
            " AND (strpos(lower(sender COLLATE \"C\"), ?) > 0 \
             OR strpos(lower(coalesce(sasl_login, '') COLLATE \"C\"), ?) > 0)",
            Box::new(txt(&s.to_ascii_lowercase()).into_owned()),
        );
    }
    if let Some(l) = q.list.as_deref().filter(|s| !s.is_empty()) {
        add(
            " AND strpos(lists, ?) > 0",
            Box::new(txt(&l.to_ascii_lowercase()).into_owned()),
        );
    }
    if let Some(n) = q.min_audience {
        add(" AND audience >= ?", Box::new(clamp(n)));
    }
    if let Some(t) = q.held_before {
        add(" AND held_at <= ?", Box::new(clamp(t)));
    }
    (sql, args)
}

/// `lower()` would follow the database's collation (folding `Ü` in most locales);
/// under `COLLATE "C"` it folds ASCII only and sorts by bytes, as the SQLite store
/// does, and as the sender search folds (see [`where_clause`]).
fn order_by(q: &Query) -> &'static str {
    match (q.sort, q.descending) {
        (Sort::HeldAt, false) => "ORDER BY held_at, id",
        (Sort::HeldAt, true) => "ORDER BY held_at DESC, id DESC",
        (Sort::Audience, false) => "ORDER BY audience, held_at, id",
        (Sort::Audience, true) => "ORDER BY audience DESC, held_at, id",
        (Sort::Sender, false) => "ORDER BY lower(sender COLLATE \"C\"), held_at, id",
        (Sort::Sender, true) => "ORDER BY lower(sender COLLATE \"C\") DESC, held_at, id",
    }
}

fn refs(args: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl PgStore {
    fn ids(
        &self,
        c: &mut Conn,
        q: &Query,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<i64>, StoreError> {
        let (clause, mut args) = where_clause(q);
        let sql = format!(
            "SELECT id FROM held {clause} {} LIMIT ${} OFFSET ${}",
            order_by(q),
            args.len() + 1,
            args.len() + 2
        );
        args.push(Box::new(clamp(limit)));
        args.push(Box::new(clamp(offset)));
        let rows = c.query(&sql, &refs(&args)).map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl PgStore {
    pub(super) fn page(&self, q: &Query) -> Result<Page, StoreError> {
        self.with(|c| {
            let ids = self.ids(c, q, q.limit.min(MAX_PAGE), q.offset)?;
            let (clause, args) = where_clause(q);
            let total: i64 = c
                .query_one(&format!("SELECT count(*) FROM held {clause}"), &refs(&args))
                .map_err(|e| self.err(e))?
                .get(0);
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                let record = self.load(c, id)?;
                let request = self
                    .query_requests(c, "WHERE r.held_id = $1 ORDER BY r.id DESC LIMIT 1", &[&id])?
                    .pop();
                rows.push(Row { record, request });
            }
            // The counts above the list: of the relay chosen, or of the fleet.
            let relay = q.relay.as_deref().map(txt);
            let mut counts: HashMap<String, u64> = HashMap::new();
            for r in c
                .query(
                    "SELECT state, count(*) FROM held
                     WHERE $1::TEXT IS NULL OR relay = $1 GROUP BY state",
                    &[&relay],
                )
                .map_err(|e| self.err(e))?
            {
                counts.insert(r.get(0), unclamp(r.get(1)));
            }
            let by_state = State::ALL
                .into_iter()
                .map(|s| (s, counts.get(s.as_str()).copied().unwrap_or(0)))
                .collect();
            let mut rules: HashMap<String, u64> = HashMap::new();
            for r in c
                .query(
                    "SELECT rules FROM held
                     WHERE state = 'held' AND ($1::TEXT IS NULL OR relay = $1)",
                    &[&relay],
                )
                .map_err(|e| self.err(e))?
            {
                for rule in r.get::<_, &str>(0).split_whitespace() {
                    *rules.entry(rule.to_owned()).or_default() += 1;
                }
            }
            let mut by_rule: Vec<(String, u64)> = rules.into_iter().collect();
            by_rule.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            Ok(Page {
                rows,
                total: unclamp(total),
                by_state,
                by_rule,
            })
        })
    }

    pub(super) fn matching(&self, q: &Query, limit: u64) -> Result<Vec<Address>, StoreError> {
        self.with(|c| {
            let ids = self.ids(c, q, limit, 0)?;
            ids.into_iter()
                .map(|id| self.load(c, id).map(|r| r.address()))
                .collect()
        })
    }

    pub(super) fn requests(&self, held_id: i64) -> Result<Vec<Request>, StoreError> {
        self.with(|c| self.query_requests(c, "WHERE r.held_id = $1 ORDER BY r.id", &[&held_id]))
    }

    pub(super) fn open_requests(&self) -> Result<Vec<Request>, StoreError> {
        self.with(|c| {
            self.query_requests(
                c,
                "WHERE r.relay = $1 AND r.state IN ('pending', 'running') ORDER BY r.id",
                &[&self.relay],
            )
        })
    }

    pub(super) fn claim(&self, id: i64, now: u64) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE requests SET state = 'running', started_at = $2, claimed_by = $3
                 WHERE id = $1 AND state = 'pending' AND relay = $4",
                &[
                    &id,
                    &clamp(now),
                    &super::claimant::this_process(),
                    &self.relay,
                ],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
        })
    }

    pub(super) fn finish(
        &self,
        id: i64,
        ok: bool,
        result: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let state = RequestState::finished(ok);
        let changed = self.with(|c| {
            c.execute(
                "UPDATE requests SET state = $2, result = $3, finished_at = $4
                 WHERE id = $1 AND state = 'running'",
                &[&id, &state.as_str(), &txt(result), &clamp(now)],
            )
            .map_err(|e| self.err(e))
        })?;
        if changed == 1 {
            Ok(())
        } else {
            Err(self.corrupt(
                id,
                "the request is not running: only a claimed request can finish".into(),
            ))
        }
    }

    pub(super) fn copy_token(&self, id: i64, token: &str) -> Result<String, StoreError> {
        let given: Option<String> = self.with(|c| {
            c.execute(
                "UPDATE requests SET copy_token = $2
                 WHERE id = $1 AND state = 'running' AND copy_token IS NULL",
                &[&id, &txt(token)],
            )
            .map_err(|e| self.err(e))?;
            Ok::<_, StoreError>(
                c.query_opt(
                    "SELECT copy_token FROM requests WHERE id = $1 AND state = 'running'",
                    &[&id],
                )
                .map_err(|e| self.err(e))?
                .and_then(|r| r.get(0)),
            )
        })?;
        given.ok_or_else(|| {
            self.corrupt(
                id,
                "the request is not running: only a claimed request gets a copy".into(),
            )
        })
    }

    pub(super) fn copy_sent(&self, id: i64, now: u64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE requests SET copy_sent_at = $2, copy_attempts = copy_attempts + 1
                 WHERE id = $1 AND state = 'running'",
                &[&id, &clamp(now)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
        })
    }

    pub(super) fn accept_copy(
        &self,
        mark: &CopyMark,
        queue_id: &str,
        now: u64,
    ) -> Result<CopyCheck, StoreError> {
        let n = mark.request;
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            let found = tx
                .query_opt(
                    "SELECT r.state, r.copy_token, h.queue_id, r.held_id, r.args
                     FROM requests r JOIN held h ON h.id = r.held_id WHERE r.id = $1
                     FOR UPDATE OF r",
                    &[&n],
                )
                .map_err(|e| self.err(e))?;
            let Some(found) = found else {
                return Ok(CopyCheck::Unknown(format!("there is no request {n}")));
            };
            let (state, token, original, held_id, args): (
                String,
                Option<String>,
                String,
                i64,
                String,
            ) = (
                found.get(0),
                found.get(1),
                found.get(2),
                found.get(3),
                found.get(4),
            );
            if !token
                .as_deref()
                .is_some_and(|t| crate::token::same_secret(t, &mark.token))
            {
                return Ok(CopyCheck::Unknown(format!(
                    "the token is not request {n}'s"
                )));
            }
            if original != mark.original {
                return Ok(CopyCheck::Unknown(format!(
                    "request {n} is for another message"
                )));
            }
            if !matches!(
                serde_json::from_str::<RequestAction>(&args),
                Ok(RequestAction::ReleaseTo { .. })
            ) {
                return Ok(CopyCheck::Unknown(format!(
                    "request {n} is no release to chosen recipients"
                )));
            }
            if state != RequestState::Running.as_str() {
                return Ok(CopyCheck::Late(format!("request {n} is {state}")));
            }
            tx.execute(
                "INSERT INTO copies (request_id, queue_id, seen_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&n, &txt(queue_id), &clamp(now)],
            )
            .map_err(|e| self.err(e))?;
            let entry = AuditEntry {
                at: now,
                who: "milter".into(),
                action: "copy".into(),
                comment: Some(format!(
                    "request {n}: a copy held as {queue_id}, for the worker to release"
                )),
            };
            self.insert_audit(&mut tx, held_id, &entry)?;
            tx.commit().map_err(|e| self.err(e))?;
            Ok(CopyCheck::Accepted)
        })
    }

    pub(super) fn copies(&self, request: i64) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT queue_id FROM copies WHERE request_id = $1 ORDER BY seen_at, seq",
                &[&request],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .map_err(|e| self.err(e))
        })
    }

    pub(super) fn copy_released(&self, id: i64, queue_id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE requests SET copy_queue_id = $2 WHERE id = $1",
                &[&id, &txt(queue_id)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
        })
    }

    pub(super) fn lease(&self, id: i64, claimant: Option<&str>) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE requests SET claimed_by = $3
                 WHERE id = $1 AND state = 'running' AND relay = $4
                 AND claimed_by IS NOT DISTINCT FROM $2",
                &[
                    &id,
                    &opt_txt(claimant),
                    &super::claimant::this_process(),
                    &self.relay,
                ],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
        })
    }

    pub(super) fn record_event(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO events (relay, at, who, action, comment) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &self.relay,
                    &clamp(e.at),
                    &txt(&e.who),
                    &txt(&e.action),
                    &opt_txt(e.comment.as_deref()),
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
        })
    }

    pub(super) fn record_event_on(&self, held_id: i64, e: &AuditEntry) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO events (relay, at, who, action, comment) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &self.relay,
                    &clamp(e.at),
                    &txt(&e.who),
                    &txt(&e.action),
                    &opt_txt(e.comment.as_deref()),
                ],
            )
            .map_err(|e| self.err(e))?;
            self.insert_audit(&mut tx, held_id, e)?;
            tx.commit().map_err(|e| self.err(e))
        })
    }

    pub(super) fn events(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT at, who, action, comment FROM events WHERE relay = $1
                 ORDER BY id DESC LIMIT $2",
                &[&self.relay, &clamp(limit)],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| AuditEntry {
                        at: unclamp(r.get(0)),
                        who: r.get(1),
                        action: r.get(2),
                        comment: r.get(3),
                    })
                    .collect()
            })
            .map_err(|e| self.err(e))
        })
    }
}
