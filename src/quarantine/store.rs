// SPDX-License-Identifier: GPL-3.0-or-later
//! The quarantine store: one SQLite database in the state directory.
//!
//! SQLite because the daemon (which records) and the admin commands and sweep (which
//! change states, as root) use the store at the same time from different processes;
//! SQLite's locking and WAL journal are made for that, and admins can read the file
//! with the `sqlite3` shell. Every write is a transaction with `synchronous = FULL`:
//! when [`Store::record_held`] returns, the record survives a crash or power loss.

use super::record::{AuditEntry, HeldMessage, QueueId, Record, State, capped};
use crate::state_dir::{StateDir, StateDirError};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The database file name inside the state directory.
pub const DB_FILE: &str = "quarantine.sqlite";

/// 2: `held.foreign_hold`, set for messages another tool held (see [`Record::foreign`]).
/// 3: searchable `held.sasl_login`, `rules`, `lists`; `held.hold_until`; the `requests`
/// table of the review desk's action requests (see [`super::index`]); the `events`
/// table of relay-wide actions (the emergency brake).
/// 4: the `link_nonces` table: the nonces of the admin digest's one-click links that
/// were used (see [`crate::link`]), so that each link acts at most once; which process
/// claimed a request, and how far a release to chosen recipients got (the request
/// columns `claimed_by` and `copy_*`, the `copies` table).
/// 5: the sender in the loop: `sender_notices` (notices due at hold and when each went),
/// `notice_senders` (when each sender was last told), `sender_asks` (a sender's plea
/// for release), `confirmations` (lists a sender confirmed, until when). Tables only:
/// created with the rest of [`SCHEMA`].
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS held (
    id           INTEGER PRIMARY KEY,
    queue_id     TEXT NOT NULL,
    held_at      INTEGER NOT NULL,
    state        TEXT NOT NULL,
    state_at     INTEGER NOT NULL,
    escalated_at INTEGER,
    sender       TEXT NOT NULL,
    audience     INTEGER NOT NULL,
    subject      TEXT,
    facts        TEXT NOT NULL,
    foreign_hold INTEGER NOT NULL DEFAULT 0,
    sasl_login   TEXT,
    rules        TEXT NOT NULL DEFAULT '',
    lists        TEXT NOT NULL DEFAULT '',
    hold_until   INTEGER
);
CREATE INDEX IF NOT EXISTS held_queue_id ON held(queue_id);
CREATE INDEX IF NOT EXISTS held_state ON held(state, held_at);
CREATE INDEX IF NOT EXISTS held_audience ON held(audience);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    held_id INTEGER NOT NULL REFERENCES held(id),
    at      INTEGER NOT NULL,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS audit_held ON audit(held_id);
CREATE TABLE IF NOT EXISTS requests (
    id           INTEGER PRIMARY KEY,
    held_id      INTEGER NOT NULL REFERENCES held(id),
    action       TEXT NOT NULL,
    args         TEXT NOT NULL,
    who          TEXT NOT NULL,
    via          TEXT NOT NULL,
    remote       TEXT,
    comment      TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    state        TEXT NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    result       TEXT,
    claimed_by   TEXT,
    copy_token   TEXT,
    copy_sent_at INTEGER,
    copy_attempts INTEGER NOT NULL DEFAULT 0,
    copy_queue_id TEXT
);
CREATE INDEX IF NOT EXISTS requests_held ON requests(held_id);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state, id);
CREATE UNIQUE INDEX IF NOT EXISTS requests_one_open ON requests(held_id)
    WHERE state IN ('pending', 'running');
CREATE TABLE IF NOT EXISTS copies (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    queue_id   TEXT NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (request_id, queue_id)
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL,
    comment TEXT
);
CREATE TABLE IF NOT EXISTS link_nonces (
    nonce   TEXT PRIMARY KEY,
    expires INTEGER NOT NULL,
    used_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sender_notices (
    held_id INTEGER PRIMARY KEY REFERENCES held(id),
    sender  TEXT NOT NULL,
    due_at  INTEGER NOT NULL,
    sent_at INTEGER,
    result  TEXT
);
CREATE INDEX IF NOT EXISTS sender_notices_due ON sender_notices(sent_at, due_at);
CREATE TABLE IF NOT EXISTS notice_senders (
    sender  TEXT PRIMARY KEY,
    last_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sender_asks (
    held_id INTEGER PRIMARY KEY REFERENCES held(id),
    at      INTEGER NOT NULL,
    words   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmations (
    who   TEXT NOT NULL,
    list  TEXT NOT NULL,
    size  INTEGER NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (who, list)
);
-- The counts by rule above the held list read this, not every record (at 10,000 held
-- about 0.3 MB instead of 14 MB). Created on open like the others: no migration.
CREATE INDEX IF NOT EXISTS held_state_rules ON held(state, rules);
-- The metrics count finished requests by action and origin from this index alone (at
-- 100,000 requests about 0.06 s instead of 0.3 s).
CREATE INDEX IF NOT EXISTS requests_tally ON requests(state, action, via);
";

/// Brings a version 2 store to version 3: the columns the review desk filters on,
/// filled from each record's facts (rule names between spaces, list addresses in
/// lower case between newlines, as [`search_columns`] writes them).
const MIGRATE_2_TO_3: &str = "
ALTER TABLE held ADD COLUMN sasl_login TEXT;
ALTER TABLE held ADD COLUMN rules TEXT NOT NULL DEFAULT '';
ALTER TABLE held ADD COLUMN lists TEXT NOT NULL DEFAULT '';
ALTER TABLE held ADD COLUMN hold_until INTEGER;
UPDATE held SET
    sasl_login = json_extract(facts, '$.sasl_login'),
    rules = coalesce((SELECT ' ' || group_concat(json_extract(value, '$.rule'), ' ') || ' '
                      FROM json_each(facts, '$.rules')), ''),
    lists = coalesce((SELECT char(10) || group_concat(lower(json_extract(value, '$.address')),
                                                      char(10)) || char(10)
                      FROM json_each(facts, '$.lists')), '');
";

/// Brings a version 3 store to version 4: the columns added to `requests`, each added
/// when missing: which process claimed a request, and how far a release to chosen
/// recipients got (the copies' secret token, when and how often the worker handed a copy
/// to Postfix, the copy it released). The `copies` table comes with [`SCHEMA`].
const REQUEST_COLUMNS_4: [(&str, &str); 5] = [
    ("claimed_by", "TEXT"),
    ("copy_token", "TEXT"),
    ("copy_sent_at", "INTEGER"),
    ("copy_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("copy_queue_id", "TEXT"),
];

/// The searchable columns of a record: its rules as ` a b ` (each once) and its list
/// addresses in ASCII lower case as `\na\nb\n`, so that a filter matches a whole
/// rule name or part of an address.
pub(super) fn search_columns(msg: &HeldMessage) -> (String, String) {
    let mut rules = String::from(" ");
    for r in &msg.rules {
        if !rules.contains(&format!(" {} ", r.rule)) {
            rules.push_str(&r.rule);
            rules.push(' ');
        }
    }
    let mut lists = String::from("\n");
    for l in &msg.lists {
        lists.push_str(&l.address.to_ascii_lowercase());
        lists.push('\n');
    }
    (
        if rules.len() > 1 {
            rules
        } else {
            String::new()
        },
        if lists.len() > 1 {
            lists
        } else {
            String::new()
        },
    )
}

/// Brings a version 1 store to version 2: records that `reconcile` adopted from the
/// hold queue were held by another tool (or their record was lost); they become
/// foreign, so that the sweep never expires them.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE held ADD COLUMN foreign_hold INTEGER NOT NULL DEFAULT 0;
UPDATE held SET foreign_hold = 1 WHERE json_extract(facts, '$.recorded_by') = 'reconcile';
";

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or written.
    #[error("quarantine store {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored record could not be read back.
    #[error("quarantine store {}: record {id} is unreadable: {message}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Row id.
        id: i64,
        /// What is wrong.
        message: String,
    },
    /// No record for this queue id.
    #[error("no quarantine record for queue id {0}")]
    NotFound(QueueId),
    /// The state directory could not be created.
    #[error("cannot create state directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state directory or a file in it is unsafe to use as root, or could not be
    /// handed back to the directory's owner.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// A state change found the record in another state than expected: another
    /// command changed it first.
    #[error(
        "quarantine record {id} is {found} now, not {expected}: another command changed it first"
    )]
    StateChanged {
        /// Row id.
        id: i64,
        /// The state the change expected.
        expected: State,
        /// The state found (or `missing`).
        found: String,
    },
    /// A request for the record is open: the sweep leaves it to the worker.
    #[error("quarantine record {id} has an open request: the worker acts on it, not the sweep")]
    RequestOpen {
        /// Row id.
        id: i64,
    },
    /// Opening the database did not finish in time (see [`Store::open`]).
    #[error(
        "quarantine store {}: opening it did not finish within {after:?}: is a FIFO or \
         another special file at its name or a side file's in the state directory, or \
         does another process hold it locked?",
        path.display()
    )]
    Stuck {
        /// The database file.
        path: PathBuf,
        /// The deadline.
        after: Duration,
    },
    /// The fleet's PostgreSQL database could not be reached or written.
    #[error("quarantine store {url}: {}", pg_message(source))]
    Postgres {
        /// The database's URL, without secrets.
        url: String,
        /// The client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The fleet's PostgreSQL database's TLS settings could not be used.
    #[error("quarantine store {url}: TLS: {message}")]
    Tls {
        /// The database's URL, without secrets.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The fleet's PostgreSQL server did not answer a call in time: the connection was
    /// dropped (a transaction not committed is rolled back), and the next call connects
    /// again.
    #[error(
        "quarantine store {url}: no answer from the server in time; the connection was dropped"
    )]
    NoAnswer {
        /// The database's URL, without secrets.
        url: String,
    },
    /// The database was written by a newer fanout-milter.
    #[error("quarantine store {}: schema version {found} is newer than this program's {SCHEMA_VERSION}", path.display())]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
    },
    /// The fleet's database does not store text as UTF-8.
    #[error(
        "quarantine store {url}: the database's encoding is {found}, not UTF8: create it \
         with ENCODING 'UTF8'"
    )]
    Encoding {
        /// The database's URL, without secrets.
        url: String,
        /// The server's encoding.
        found: String,
    },
    /// A write with a deadline (the milter's hold) could not finish in time: nothing
    /// was written.
    #[error("quarantine store {url}: {what} did not finish in time; nothing was written")]
    TooLate {
        /// The database's URL, without secrets.
        url: String,
        /// What was late.
        what: &'static str,
    },
}

/// A PostgreSQL error with the server's message, when it sent one, else with its
/// causes (the client names only the kind: "error performing TLS handshake").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !message.ends_with(&text) {
                    message = format!("{message}: {text}");
                }
                cause = c.source();
            }
            message
        }
    }
}

/// Which records [`Store::list`] returns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this state.
    pub state: Option<State>,
    /// Only records held at or after this time (seconds since the epoch).
    pub since: Option<u64>,
}

/// The quarantine database.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// The database and the side files SQLite keeps next to it.
const DB_FILES: [&str; 4] = [
    DB_FILE,
    "quarantine.sqlite-journal",
    "quarantine.sqlite-wal",
    "quarantine.sqlite-shm",
];

/// The state directory, checked when root opens it (see [`crate::state_dir`]): the
/// database and its side files must be regular files with one link owned by root or the
/// directory's owner, never links. The daemon uses its own directory as it is.
fn state_dir_for(state_dir: &Path) -> Result<PathBuf, StoreError> {
    let dir = StateDir::open(state_dir, None)?;
    for name in DB_FILES {
        dir.check_entry(name)?;
    }
    Ok(dir.path().to_owned())
}

/// Run as root (admin commands, the sweep), hands the database and its WAL files to
/// the owner of the state directory, so that the unprivileged daemon can still write
/// them; by descriptor, never by path.
fn give_to_dir_owner(state_dir: &Path) -> Result<(), StoreError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dir = StateDir::open(state_dir, None)?;
    for name in DB_FILES {
        dir.give_to_owner(name)?;
    }
    Ok(())
}

/// How long opening the store may take: SQLite's busy timeout (10 s) and a migration,
/// with a wide margin.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);

/// Opens the database and brings its schema up to date, in a helper thread given
/// `deadline`. The state directory belongs to the daemon's account, which can swap a
/// FIFO in at the name of the database or its `-journal` between the checks of
/// [`state_dir_for`] and SQLite's open (by path; SQLite has no open-by-descriptor).
/// SQLite opens the database and its `-wal` and `-shm` files read-write, which never
/// blocks on a FIFO and fails on the first read, but it opens a `-journal` it finds
/// read-only to see whether it is hot, and that blocks until a writer comes, which for
/// root's hourly sweep would be forever (systemd starts no new sweep while one runs).
/// The deadline turns that into an error; the stuck thread ends with the command.
fn connect_within(path: &Path, deadline: Duration) -> Result<Connection, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = path.to_owned();
    std::thread::Builder::new()
        .name("store-open".into())
        .spawn(move || {
            let _ = tx.send(connect(&owned));
        })
        .map_err(|source| StoreError::Dir {
            path: path.to_owned(),
            source,
        })?;
    rx.recv_timeout(deadline).unwrap_or_else(|_| {
        Err(StoreError::Stuck {
            path: path.to_owned(),
            after: deadline,
        })
    })
}

/// Opens the database at `path` and brings its schema up to date.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    // SQLITE_OPEN_NOFOLLOW: a symlink at the database's name is refused; SQLite
    // opens its -journal, -wal and -shm files with O_NOFOLLOW itself.
    let flags = OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
    // The daemon's account controls the file, so its schema too: nothing in it
    // (triggers, views, defaults) may call functions with side effects, and it
    // cannot be made to corrupt itself (no writable_schema).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(sql)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
        .map_err(sql)?;
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sql)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
        });
    }
    let count = |q: &str| conn.query_row(q, [], |r| r.get::<_, i64>(0));
    let has_held =
        count("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'held'")
            .map_err(sql)?
            > 0;
    let has_foreign =
        count("SELECT count(*) FROM pragma_table_info('held') WHERE name = 'foreign_hold'")
            .map_err(sql)?
            > 0;
    if has_held && !has_foreign {
        conn.execute_batch(&format!("BEGIN; {MIGRATE_1_TO_2} COMMIT;"))
            .map_err(sql)?;
    }
    let has_rules = count("SELECT count(*) FROM pragma_table_info('held') WHERE name = 'rules'")
        .map_err(sql)?
        > 0;
    if has_held && !has_rules {
        conn.execute_batch(&format!("BEGIN; {MIGRATE_2_TO_3} COMMIT;"))
            .map_err(sql)?;
    }
    let has_requests =
        count("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'")
            .map_err(sql)?
            > 0;
    if has_requests {
        for (column, kind) in REQUEST_COLUMNS_4 {
            let present = count(&format!(
                "SELECT count(*) FROM pragma_table_info('requests') WHERE name = '{column}'"
            ))
            .map_err(sql)?
                > 0;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE requests ADD COLUMN {column} {kind};"))
                    .map_err(sql)?;
            }
        }
    }
    conn.execute_batch(SCHEMA).map_err(sql)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating when needed) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        let state_dir = state_dir_for(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let conn = connect_within(&path, OPEN_DEADLINE)?;
        give_to_dir_owner(&state_dir)?;
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// A read-only connection of its own, for long reads that must not hold up the
    /// writers (with WAL, readers do not block the writer).
    pub(super) fn reader(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| self.err(e))?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .map_err(|e| self.err(e))?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
            .map_err(|e| self.err(e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| self.err(e))?;
        Ok(conn)
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a message the milter holds, with a first audit entry; durable on return.
    pub fn record_held(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
    ) -> Result<i64, StoreError> {
        self.insert(msg, false, who, comment)
    }

    /// Records a message found in the hold queue that fanout-milter did not hold
    /// (see [`Record::foreign`]).
    pub fn record_foreign(
        &self,
        msg: &HeldMessage,
        who: &str,
        comment: Option<&str>,
    ) -> Result<i64, StoreError> {
        self.insert(msg, true, who, comment)
    }

    fn insert(
        &self,
        msg: &HeldMessage,
        foreign: bool,
        who: &str,
        comment: Option<&str>,
    ) -> Result<i64, StoreError> {
        let msg = &*capped(msg);
        let facts = serde_json::to_string(msg).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            id: 0,
            message: e.to_string(),
        })?;
        let (rules, lists) = search_columns(msg);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO held (queue_id, held_at, state, state_at, sender, audience, subject, facts,
                               foreign_hold, sasl_login, rules, lists)
             VALUES (?1, ?2, 'held', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                msg.queue_id.as_str(),
                msg.held_at as i64,
                msg.sender,
                msg.audience as i64,
                msg.subject,
                facts,
                foreign,
                msg.sasl_login,
                rules,
                lists
            ],
        )
        .map_err(|e| self.err(e))?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO audit (held_id, at, who, action, comment) VALUES (?1, ?2, ?3, 'held', ?4)",
            params![id, msg.held_at as i64, who, comment],
        )
        .map_err(|e| self.err(e))?;
        if msg.notify_sender && !foreign && !msg.sender.is_empty() {
            tx.execute(
                "INSERT INTO sender_notices (held_id, sender, due_at) VALUES (?1, ?2, ?3)",
                params![id, msg.sender, msg.held_at as i64],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// The newest record for a queue id (Postfix reuses short ids over time).
    pub fn get(&self, queue_id: &QueueId) -> Result<Record, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT id FROM held WHERE queue_id = ?1 ORDER BY id DESC LIMIT 1",
                params![queue_id.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match row {
            Some(id) => self.load(&conn, id),
            None => Err(StoreError::NotFound(queue_id.clone())),
        }
    }

    /// Records matching `filter`, oldest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        let conn = self.conn();
        let ids: Vec<i64> = {
            let mut stmt = conn
                .prepare(
                    "SELECT id FROM held WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR held_at >= ?2)
                     ORDER BY held_at, id",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(
                    params![
                        filter.state.map(State::as_str),
                        filter.since.map(|s| s as i64)
                    ],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        ids.into_iter().map(|id| self.load(&conn, id)).collect()
    }

    pub(super) fn load(&self, conn: &Connection, id: i64) -> Result<Record, StoreError> {
        type Row = (String, String, i64, Option<i64>, bool, Option<i64>);
        let (facts, state, state_at, escalated_at, foreign, hold_until): Row = conn
            .query_row(
                "SELECT facts, state, state_at, escalated_at, foreign_hold, hold_until
                 FROM held WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .map_err(|e| self.err(e))?;
        let corrupt = |message: String| StoreError::Corrupt {
            path: self.path.clone(),
            id,
            message,
        };
        let message: HeldMessage =
            serde_json::from_str(&facts).map_err(|e| corrupt(e.to_string()))?;
        let state: State = state.parse().map_err(corrupt)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT at, who, action, comment FROM audit WHERE held_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let audit = stmt
            .query_map(params![id], |r| {
                Ok(AuditEntry {
                    at: r.get::<_, i64>(0)? as u64,
                    who: r.get(1)?,
                    action: r.get(2)?,
                    comment: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(Record {
            id,
            relay: None,
            message,
            state,
            state_at: state_at as u64,
            escalated_at: escalated_at.map(|e| e as u64),
            foreign,
            hold_until: hold_until.map(|h| h as u64),
            audit,
        })
    }

    /// Moves a record from state `from` to `to` and appends to its audit trail, in one
    /// transaction. When the record is no longer in `from` (another command changed it
    /// first) nothing changes and the error says what it is now: of two commands racing
    /// for one record, exactly one succeeds.
    pub fn set_state(
        &self,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        self.transition(tx, id, from, to, entry)
    }

    /// Moves record `id` from `from` to `to` with an audit entry, and commits.
    fn transition(
        &self,
        tx: rusqlite::Transaction<'_>,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        let changed = tx
            .execute(
                "UPDATE held SET state = ?3, state_at = ?4 WHERE id = ?1 AND state = ?2",
                params![id, from.as_str(), to.as_str(), entry.at as i64],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(self.state_changed(&tx, id, from));
        }
        insert_audit(&tx, id, entry).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// [`Store::set_state`], unless a request for the record is open (pending or
    /// running): the sweep's expiry must not overtake a reviewer's decision filed while
    /// it ran. Then nothing changes and the error says so.
    pub fn set_state_unrequested(
        &self,
        id: i64,
        from: State,
        to: State,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let open: i64 = tx
            .query_row(
                "SELECT count(*) FROM requests WHERE held_id = ?1 AND state IN ('pending', 'running')",
                params![id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if open > 0 {
            return Err(StoreError::RequestOpen { id });
        }
        self.transition(tx, id, from, to, entry)
    }

    /// The error for a transition that found record `id` not in state `expected`.
    pub(super) fn state_changed(&self, conn: &Connection, id: i64, expected: State) -> StoreError {
        let found = conn
            .query_row("SELECT state FROM held WHERE id = ?1", params![id], |r| {
                r.get::<_, String>(0)
            })
            .optional();
        match found {
            Ok(found) => StoreError::StateChanged {
                id,
                expected,
                found: found.unwrap_or_else(|| "missing".to_owned()),
            },
            Err(e) => self.err(e),
        }
    }

    /// Appends to a record's audit trail without changing its state.
    pub fn audit(&self, id: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        let conn = self.conn();
        insert_audit(&conn, id, entry).map_err(|e| self.err(e))
    }

    /// Notes that an escalation alert went out for a record that is still held.
    pub fn mark_escalated(&self, id: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let changed = tx
            .execute(
                "UPDATE held SET escalated_at = ?2 WHERE id = ?1 AND state = 'held'",
                params![id, entry.at as i64],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(self.state_changed(&tx, id, State::Held));
        }
        insert_audit(&tx, id, entry).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Keeps a held record out of the sweep's reach until `until` (seconds since the
    /// epoch; see [`Record::hold_until`]), with an audit entry, in one transaction.
    pub fn set_hold_until(
        &self,
        id: i64,
        until: u64,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let changed = tx
            .execute(
                "UPDATE held SET hold_until = ?2 WHERE id = ?1 AND state = 'held'",
                params![id, i64::try_from(until).unwrap_or(i64::MAX)],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(self.state_changed(&tx, id, State::Held));
        }
        insert_audit(&tx, id, entry).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// The record with row id `id` (a request names its record so).
    pub fn record_by_id(&self, id: i64) -> Result<Record, StoreError> {
        let conn = self.conn();
        self.load(&conn, id)
    }
}

pub(super) fn insert_audit(conn: &Connection, id: i64, e: &AuditEntry) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit (held_id, at, who, action, comment) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, e.at as i64, e.who, e.action, e.comment],
    )
    .map(|_| ())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quarantine::Store;
    use crate::quarantine::record::{ListHit, RuleHit};
    use crate::text::MAX_SUBJECT_CHARS;
    use std::os::unix::fs::OpenOptionsExt;

    pub(crate) fn held(queue_id: &str, at: u64) -> HeldMessage {
        HeldMessage {
            queue_id: QueueId::parse(queue_id).unwrap(),
            held_at: at,
            sender: "ann@example.org".into(),
            sasl_login: Some("ann".into()),
            client: Some("192.0.2.1".into()),
            recipients: vec!["all@example.org".into()],
            audience: 840_000,
            external: 0,
            lists: vec![ListHit {
                address: "all@example.org".into(),
                size: 840_000,
                external: 0,
                drift_from: Some(40),
            }],
            top_domains: vec![("example.org".into(), 840_000)],
            visible: vec!["all@example.org".into()],
            subject: Some("Test".into()),
            message_id: Some("<1@example.org>".into()),
            thread_key: "mid:1@example.org".into(),
            rules: vec![RuleHit {
                rule: "drift".into(),
                action: "quarantine".into(),
                message: "list all@example.org grew from 40 to 840,000".into(),
            }],
            recorded_by: "milter".into(),
            headers: vec![("Subject".into(), "Hello".into())],
            confirm: false,
            notify_sender: false,
            confirm_key: None,
        }
    }

    #[test]
    fn record_get_list_and_change_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .record_held(&held("AAAAAA1", 100), "milter", None)
            .unwrap();
        store
            .record_held(&held("BBBBBB2", 200), "milter", None)
            .unwrap();

        let r = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
        assert_eq!(r.id, id);
        assert_eq!(r.state, State::Held);
        assert_eq!(r.message, held("AAAAAA1", 100));
        assert_eq!(r.audit.len(), 1);
        assert_eq!(r.audit[0].action, "held");

        let entry = AuditEntry {
            at: 300,
            who: "root".into(),
            action: "release".into(),
            comment: Some("checked with sender".into()),
        };
        store
            .set_state(id, State::Held, State::Released, &entry)
            .unwrap();
        let held_only = store
            .list(&Filter {
                state: Some(State::Held),
                since: None,
            })
            .unwrap();
        assert_eq!(held_only.len(), 1);
        assert_eq!(held_only[0].message.queue_id.as_str(), "BBBBBB2");
        let since = store
            .list(&Filter {
                state: None,
                since: Some(150),
            })
            .unwrap();
        assert_eq!(since.len(), 1);
        let r = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
        assert_eq!((r.state, r.state_at), (State::Released, 300));
        assert_eq!(r.audit[1], entry);

        let missing = store.get(&QueueId::parse("CCCCCC3").unwrap()).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "no quarantine record for queue id CCCCCC3"
        );
    }

    #[test]
    fn a_record_keeps_a_capped_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut long = held("AAAAAA1", 100);
        long.subject = Some("{reason}".repeat(8_000));
        store.record_held(&long, "milter", None).unwrap();
        let r = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
        let subject = r.message.subject.expect("subject");
        assert_eq!(subject.chars().count(), MAX_SUBJECT_CHARS);
        assert!(subject.starts_with("{reason}") && subject.ends_with('…'));
        assert_eq!(r.message.headers, [("Subject".into(), "Hello".into())]);
        let mut many = held("BBBBBB2", 100);
        many.headers = vec![("Received".into(), "x".repeat(1000)); 100];
        store.record_held(&many, "milter", None).unwrap();
        let r = store.get(&QueueId::parse("BBBBBB2").unwrap()).unwrap();
        let bytes: usize = r
            .message
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        assert_eq!(bytes, crate::quarantine::record::MAX_STORED_HEADER_BYTES);
    }

    #[test]
    fn records_survive_reopening_and_reused_ids_show_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .record_held(&held("AAAAAA1", 100), "milter", None)
                .unwrap();
            let mut again = held("AAAAAA1", 900);
            again.subject = Some("later".into());
            store.record_held(&again, "milter", None).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let r = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
        assert_eq!(r.message.subject.as_deref(), Some("later"));
        assert_eq!(store.list(&Filter::default()).unwrap().len(), 2);
    }

    #[test]
    fn a_transition_applies_only_from_the_expected_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .record_held(&held("AAAAAA1", 100), "milter", None)
            .unwrap();
        let entry = |action: &str| AuditEntry {
            at: 200,
            who: "root".into(),
            action: action.into(),
            comment: None,
        };
        store
            .set_state(id, State::Held, State::Released, &entry("release"))
            .unwrap();
        // A discard that read the record as held before the release committed.
        let e = store
            .set_state(id, State::Held, State::Discarded, &entry("discard"))
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::StateChanged { expected: State::Held, found, .. } if found == "released"),
            "{e}"
        );
        assert!(e.to_string().contains("is released now, not held"), "{e}");
        let e = store.mark_escalated(id, &entry("escalate")).unwrap_err();
        assert!(matches!(e, StoreError::StateChanged { .. }), "{e}");
        let r = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
        assert_eq!(r.state, State::Released);
        assert_eq!(r.escalated_at, None);
        let actions: Vec<&str> = r.audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            ["held", "release"],
            "the refused changes left no trace"
        );
        let e = store
            .set_state(999, State::Held, State::Released, &entry("release"))
            .unwrap_err();
        assert!(e.to_string().contains("is missing now"), "{e}");
    }

    #[test]
    fn an_extension_is_recorded_and_only_for_a_held_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .record_held(&held("AAAAAA1", 100), "milter", None)
            .unwrap();
        let e = AuditEntry {
            at: 200,
            who: "carol".into(),
            action: "extend".into(),
            comment: Some("waiting for the sender".into()),
        };
        store.set_hold_until(id, 90_000, &e).unwrap();
        let r = store.record_by_id(id).unwrap();
        assert_eq!(r.hold_until, Some(90_000));
        assert_eq!(r.audit.last(), Some(&e));
        let release = AuditEntry {
            action: "release".into(),
            ..e.clone()
        };
        store
            .set_state(id, State::Held, State::Released, &release)
            .unwrap();
        let refused = store.set_hold_until(id, 99_000, &e).unwrap_err();
        assert!(
            matches!(refused, StoreError::StateChanged { .. }),
            "{refused}"
        );
        assert_eq!(store.record_by_id(id).unwrap().hold_until, Some(90_000));
    }

    #[test]
    fn escalation_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .record_held(&held("AAAAAA1", 100), "milter", None)
            .unwrap();
        let e = AuditEntry {
            at: 5000,
            who: "sweep".into(),
            action: "escalate".into(),
            comment: None,
        };
        store.mark_escalated(id, &e).unwrap();
        let r = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
        assert_eq!(r.escalated_at, Some(5000));
        assert_eq!(r.state, State::Held);
    }

    #[test]
    fn foreign_records_are_marked_and_a_version_1_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .record_held(&held("AAAAAA1", 100), "milter", None)
                .unwrap();
            store
                .record_foreign(&held("BBBBBB2", 100), "root", None)
                .unwrap();
            let ours = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
            let theirs = store.get(&QueueId::parse("BBBBBB2").unwrap()).unwrap();
            assert!(!ours.foreign);
            assert!(theirs.foreign);
        }
        // A store as version 1 wrote it: no foreign_hold column, adopted records known
        // only by recorded_by = "reconcile".
        let v1 = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(v1.path().join(DB_FILE)).unwrap();
            let v3_columns = "facts        TEXT NOT NULL,
    foreign_hold INTEGER NOT NULL DEFAULT 0,
    sasl_login   TEXT,
    rules        TEXT NOT NULL DEFAULT '',
    lists        TEXT NOT NULL DEFAULT '',
    hold_until   INTEGER";
            let (before_requests, _) = SCHEMA
                .split_once("CREATE TABLE IF NOT EXISTS requests")
                .unwrap();
            let schema_v1 = before_requests
                .replace(v3_columns, "facts        TEXT NOT NULL")
                .replace(
                    "CREATE INDEX IF NOT EXISTS held_audience ON held(audience);",
                    "",
                );
            for v2_or_later in ["foreign_hold", "rules", "requests", "held_audience"] {
                assert!(!schema_v1.contains(v2_or_later), "{v2_or_later}");
            }
            conn.execute_batch(&schema_v1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            let mut adopted = held("CCCCCC3", 100);
            adopted.recorded_by = "reconcile".into();
            for m in [held("AAAAAA1", 100), adopted] {
                conn.execute(
                    "INSERT INTO held (queue_id, held_at, state, state_at, sender, audience, facts)
                     VALUES (?1, 100, 'held', 100, '', 1, ?2)",
                    params![m.queue_id.as_str(), serde_json::to_string(&m).unwrap()],
                )
                .unwrap();
            }
        }
        let store = Store::open(v1.path()).unwrap();
        let ours = store.get(&QueueId::parse("AAAAAA1").unwrap()).unwrap();
        let adopted = store.get(&QueueId::parse("CCCCCC3").unwrap()).unwrap();
        assert!(!ours.foreign);
        assert!(adopted.foreign, "adopted by a version 1 reconcile");
        let version: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        use crate::quarantine::index::{QuarantineIndex, Query};
        let by_rule = Query {
            rule: Some("drift".into()),
            list: Some("ALL@".into()),
            sender: Some("ANN".into()),
            limit: 10,
            ..Query::default()
        };
        let found = store.page(&by_rule).unwrap();
        assert_eq!(found.total, 2, "version 3's search columns are filled in");
        drop(store);
        Store::open(v1.path()).expect("reopening a migrated store");
    }

    #[test]
    fn a_version_3_store_gets_the_link_nonces_table() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch("DROP TABLE link_nonces").unwrap();
        conn.pragma_update(None, "user_version", 3).unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        let conn = store.conn();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('link_nonces', 'sender_notices', 'notice_senders', 'sender_asks', 'confirmations')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 5);
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = Store::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("schema version 99 is newer"), "{e}");
    }

    #[test]
    fn an_unwritable_directory_is_a_clear_error() {
        let e = Store::open(Path::new("/proc/fanout-milter-test")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot create state directory /proc/fanout-milter-test"),
            "{e}"
        );
    }

    #[test]
    fn planted_links_to_the_database_or_its_side_files_are_refused() {
        use std::os::unix::fs::{MetadataExt, symlink};
        for name in DB_FILES {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            std::fs::create_dir(&state).unwrap();
            let target = dir.path().join("ld.so.preload");
            std::fs::write(&target, "precious").unwrap();
            if name != DB_FILE {
                drop(Store::open(&state).unwrap());
                for f in DB_FILES.iter().skip(1) {
                    let _ = std::fs::remove_file(state.join(f));
                }
            }
            let before = std::fs::metadata(&target).unwrap();
            symlink(&target, state.join(name)).unwrap();
            let e = Store::open(&state).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{name}: {e}");
            let after = std::fs::metadata(&target).unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"precious", "{name}");
            assert_eq!(
                (after.uid(), after.mode(), after.mtime()),
                (before.uid(), before.mode(), before.mtime()),
                "{name}"
            );
        }
    }

    #[test]
    fn root_never_chowns_through_a_planted_link() {
        use std::os::unix::fs::{MetadataExt, symlink};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root, as the admin commands run");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        drop(Store::open(&state).unwrap());
        let target = dir.path().join("shadow");
        std::fs::write(&target, "root's").unwrap();
        let _ = std::fs::remove_file(state.join("quarantine.sqlite-shm"));
        symlink(&target, state.join("quarantine.sqlite-shm")).unwrap();
        assert!(Store::open(&state).is_err());
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0, "not chowned");
    }

    #[test]
    fn root_hands_the_database_to_the_state_directory_owner() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root, as the admin commands run");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let store = Store::open(&state).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let meta = std::fs::metadata(format!("{}{suffix}", store.path().display())).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{suffix}");
        }
    }

    #[test]
    fn the_store_never_trusts_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conn = store.conn();
        let trusted: bool = conn
            .pragma_query_value(None, "trusted_schema", |r| r.get(0))
            .unwrap();
        assert!(
            !trusted,
            "functions with side effects are refused in the schema"
        );
        assert!(
            conn.db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE).unwrap(),
            "defensive"
        );
        let e = conn
            .execute_batch(
                "PRAGMA writable_schema = ON;
                 UPDATE sqlite_master SET sql = 'CREATE TABLE held (x)' WHERE name = 'held';",
            )
            .unwrap_err();
        assert!(e.to_string().contains("may not be modified"), "{e}");
    }

    #[test]
    fn a_fifo_swapped_in_as_the_journal_cannot_hang_the_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let db = dir.path().join(DB_FILE);
        for side in ["quarantine.sqlite-wal", "quarantine.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(side));
        }
        // As if swapped in after state_dir_for checked the directory.
        let journal = dir.path().join("quarantine.sqlite-journal");
        nix::unistd::mkfifo(&journal, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = std::time::Instant::now();
        let e = connect_within(&db, Duration::from_secs(1)).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, StoreError::Stuck { .. }), "{e}");
        assert!(e.to_string().contains("did not finish within 1s"), "{e}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Unblocks the stuck opener: a writer arrives and leaves at once.
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&journal),
        );
        // And the store's own open refuses the FIFO outright when it is there first.
        let e = Store::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
