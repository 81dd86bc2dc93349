// SPDX-License-Identifier: GPL-3.0-or-later
//! The [`QuarantineIndex`] of one relay's SQLite store: pages found with SQL on the
//! searchable columns, requests in the `requests` table (one open request per record,
//! enforced by a unique index, so two reviewers racing cannot both file one).

use super::index::{
    CopyCheck, CopyMark, MAX_PAGE, NewRequest, Page, Query, Request, RequestAction, RequestState,
    Row, Sort, SubmitError, Via, release_to_recipients,
};
use super::record::{Address, AuditEntry, QueueId, State};
use super::store::{SqliteStore, StoreError, insert_audit};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params, params_from_iter, types::Value};
use std::collections::HashMap;

/// The WHERE clause of a query and its parameters. Only fixed SQL text is built here;
/// every value the user typed is a parameter.
fn where_clause(q: &Query) -> (String, Vec<Value>) {
    // A relay's own store has no relay names: a relay filter matches nothing.
    let mut sql = String::from(if q.relay.is_some() {
        "WHERE 0"
    } else {
        "WHERE 1"
    });
    let mut args: Vec<Value> = Vec::new();
    let mut add = |clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(s) = q.state {
        add(" AND state = ?", Value::Text(s.as_str().to_owned()));
    }
    if let Some(r) = &q.rule {
        add(
            " AND instr(rules, ' ' || ? || ' ') > 0",
            Value::Text(r.clone()),
        );
    }
    if let Some(s) = q.sender.as_deref().filter(|s| !s.is_empty()) {
        add(
            " AND (instr(lower(sender), ?) > 0 OR instr(lower(coalesce(sasl_login, '')), ?) > 0)",
            Value::Text(s.to_ascii_lowercase()),
        );
    }
    if let Some(l) = q.list.as_deref().filter(|s| !s.is_empty()) {
        add(
            " AND instr(lists, ?) > 0",
            Value::Text(l.to_ascii_lowercase()),
        );
    }
    if let Some(n) = q.min_audience {
        add(" AND audience >= ?", Value::Integer(clamp(n)));
    }
    if let Some(t) = q.held_before {
        add(" AND held_at <= ?", Value::Integer(clamp(t)));
    }
    (sql, args)
}

/// How long past its expiry a spent link nonce is kept (the desk's clock and the
/// link's expiry are compared elsewhere; a day covers any step of the clock).
const LINK_NONCE_MARGIN: u64 = 86_400;

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn order_by(q: &Query) -> &'static str {
    match (q.sort, q.descending) {
        (Sort::HeldAt, false) => "ORDER BY held_at, id",
        (Sort::HeldAt, true) => "ORDER BY held_at DESC, id DESC",
        (Sort::Audience, false) => "ORDER BY audience, held_at, id",
        (Sort::Audience, true) => "ORDER BY audience DESC, held_at, id",
        (Sort::Sender, false) => "ORDER BY lower(sender), held_at, id",
        (Sort::Sender, true) => "ORDER BY lower(sender) DESC, held_at, id",
    }
}

/// The rules of every held record, for the counts by rule (read from the index
/// `held_state_rules`, not the records).
const RULES_OF_HELD: &str = "SELECT rules FROM held WHERE state = 'held'";

const REQUEST_COLUMNS: &str = "r.id, r.held_id, h.queue_id, r.args, r.who, r.via, r.remote, \
     r.comment, r.requested_at, r.state, r.started_at, r.finished_at, r.result, \
     r.copy_sent_at, r.copy_queue_id, r.claimed_by, r.copy_attempts";

impl SqliteStore {
    fn ids(
        &self,
        conn: &Connection,
        q: &Query,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<i64>, StoreError> {
        let (clause, mut args) = where_clause(q);
        let sql = format!(
            "SELECT id FROM held {clause} {} LIMIT ?{} OFFSET ?{}",
            order_by(q),
            args.len() + 1,
            args.len() + 2
        );
        args.push(Value::Integer(clamp(limit)));
        args.push(Value::Integer(clamp(offset)));
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn request_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Request, String>> {
        let queue_id: String = r.get(2)?;
        let args: String = r.get(3)?;
        let via: String = r.get(5)?;
        let state: String = r.get(9)?;
        let parsed = (|| {
            Ok(Request {
                id: r.get(0).map_err(|e: rusqlite::Error| e.to_string())?,
                held_id: r.get(1).map_err(|e: rusqlite::Error| e.to_string())?,
                queue_id: QueueId::parse(&queue_id).map_err(|e| e.to_string())?,
                action: serde_json::from_str::<RequestAction>(&args).map_err(|e| e.to_string())?,
                who: r.get(4).map_err(|e: rusqlite::Error| e.to_string())?,
                via: via.parse::<Via>()?,
                remote: r.get(6).map_err(|e: rusqlite::Error| e.to_string())?,
                comment: r.get(7).map_err(|e: rusqlite::Error| e.to_string())?,
                requested_at: r.get::<_, i64>(8).map_err(|e| e.to_string())? as u64,
                state: state.parse::<RequestState>()?,
                started_at: r
                    .get::<_, Option<i64>>(10)
                    .map_err(|e| e.to_string())?
                    .map(|t| t as u64),
                finished_at: r
                    .get::<_, Option<i64>>(11)
                    .map_err(|e| e.to_string())?
                    .map(|t| t as u64),
                result: r.get(12).map_err(|e: rusqlite::Error| e.to_string())?,
                copy_sent_at: r
                    .get::<_, Option<i64>>(13)
                    .map_err(|e| e.to_string())?
                    .map(|t| t as u64),
                copy_queue_id: r.get(14).map_err(|e: rusqlite::Error| e.to_string())?,
                claimed_by: r.get(15).map_err(|e: rusqlite::Error| e.to_string())?,
                copy_attempts: r.get(16).map_err(|e: rusqlite::Error| e.to_string())?,
            })
        })();
        Ok(parsed)
    }

    fn query_requests(
        &self,
        conn: &Connection,
        tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Request>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests r JOIN held h ON h.id = r.held_id {tail}"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(args, |r| self.request_row(r))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|r| {
                r.map_err(|message| StoreError::Corrupt {
                    path: self.path().to_owned(),
                    id: 0,
                    message: format!("a request is unreadable: {message}"),
                })
            })
            .collect()
    }

    fn by_state(&self, conn: &Connection) -> Result<Vec<(State, u64)>, StoreError> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut stmt = conn
            .prepare_cached("SELECT state, count(*) FROM held GROUP BY state")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (s, n) = row.map_err(|e| self.err(e))?;
            counts.insert(s, n as u64);
        }
        Ok(State::ALL
            .into_iter()
            .map(|s| (s, counts.get(s.as_str()).copied().unwrap_or(0)))
            .collect())
    }

    fn by_rule(&self, conn: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut stmt = conn
            .prepare_cached(RULES_OF_HELD)
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        for row in rows {
            for rule in row.map_err(|e| self.err(e))?.split_whitespace() {
                *counts.entry(rule.to_owned()).or_default() += 1;
            }
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(v)
    }
}

impl SqliteStore {
    pub(super) fn page(&self, q: &Query) -> Result<Page, StoreError> {
        let conn = self.conn();
        let ids = self.ids(&conn, q, q.limit.min(MAX_PAGE), q.offset)?;
        let (clause, args) = where_clause(q);
        let total: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM held {clause}"),
                params_from_iter(args),
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let record = self.load(&conn, id)?;
            let request = self
                .query_requests(
                    &conn,
                    "WHERE r.held_id = ?1 ORDER BY r.id DESC LIMIT 1",
                    params![id],
                )?
                .pop();
            rows.push(Row { record, request });
        }
        Ok(Page {
            rows,
            total: total as u64,
            by_state: self.by_state(&conn)?,
            by_rule: self.by_rule(&conn)?,
        })
    }

    pub(super) fn matching(&self, q: &Query, limit: u64) -> Result<Vec<Address>, StoreError> {
        let conn = self.conn();
        let ids = self.ids(&conn, q, limit, 0)?;
        ids.into_iter()
            .map(|id| self.load(&conn, id).map(|r| r.message.queue_id.into()))
            .collect()
    }

    pub(super) fn requests(&self, held_id: i64) -> Result<Vec<Request>, StoreError> {
        let conn = self.conn();
        self.query_requests(
            &conn,
            "WHERE r.held_id = ?1 ORDER BY r.id",
            params![held_id],
        )
    }

    pub(super) fn submit(&self, n: &NewRequest) -> Result<Request, SubmitError> {
        self.file_request(n, None)
    }

    pub(super) fn submit_link(
        &self,
        n: &NewRequest,
        nonce: &str,
        expires: u64,
    ) -> Result<Request, SubmitError> {
        self.file_request(n, Some((nonce, expires)))
    }

    pub(super) fn open_requests(&self) -> Result<Vec<Request>, StoreError> {
        let conn = self.conn();
        self.query_requests(
            &conn,
            "WHERE r.state IN ('pending', 'running') ORDER BY r.id",
            [],
        )
    }

    pub(super) fn claim(&self, id: i64, now: u64) -> Result<bool, StoreError> {
        let conn = self.conn();
        let changed = conn
            .execute(
                "UPDATE requests SET state = 'running', started_at = ?2, claimed_by = ?3
                 WHERE id = ?1 AND state = 'pending'",
                params![id, clamp(now), super::claimant::this_process()],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    pub(super) fn copy_token(&self, id: i64, token: &str) -> Result<String, StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE requests SET copy_token = ?2
             WHERE id = ?1 AND state = 'running' AND copy_token IS NULL",
            params![id, token],
        )
        .map_err(|e| self.err(e))?;
        let given: Option<String> = conn
            .query_row(
                "SELECT copy_token FROM requests WHERE id = ?1 AND state = 'running'",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .flatten();
        given.ok_or_else(|| StoreError::Corrupt {
            path: self.path().to_owned(),
            id,
            message: "the request is not running: only a claimed request gets a copy".into(),
        })
    }

    pub(super) fn copy_sent(&self, id: i64, now: u64) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE requests SET copy_sent_at = ?2, copy_attempts = copy_attempts + 1
             WHERE id = ?1 AND state = 'running'",
            params![id, clamp(now)],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) fn accept_copy(
        &self,
        mark: &CopyMark,
        queue_id: &str,
        now: u64,
    ) -> Result<CopyCheck, StoreError> {
        let n = mark.request;
        type Found = (String, Option<String>, String, i64, String);
        let lookup = |conn: &Connection| -> Result<Option<Found>, StoreError> {
            conn.query_row(
                "SELECT r.state, r.copy_token, h.queue_id, r.held_id, r.args
                 FROM requests r JOIN held h ON h.id = r.held_id WHERE r.id = ?1",
                params![n],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
        };
        // A read first: a mark that matches nothing takes no write lock.
        let genuine = |found: &Option<Found>| -> Result<(), CopyCheck> {
            let Some((_, token, original, _, args)) = found else {
                return Err(CopyCheck::Unknown(format!("there is no request {n}")));
            };
            if !token
                .as_deref()
                .is_some_and(|t| crate::token::same_secret(t, &mark.token))
            {
                return Err(CopyCheck::Unknown(format!(
                    "the token is not request {n}'s"
                )));
            }
            if *original != mark.original {
                return Err(CopyCheck::Unknown(format!(
                    "request {n} is for another message"
                )));
            }
            match serde_json::from_str::<RequestAction>(args) {
                Ok(RequestAction::ReleaseTo { .. }) => Ok(()),
                _ => Err(CopyCheck::Unknown(format!(
                    "request {n} is no release to chosen recipients"
                ))),
            }
        };
        if let Err(check) = genuine(&lookup(&self.conn())?) {
            return Ok(check);
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let found = lookup(&tx)?;
        if let Err(check) = genuine(&found) {
            return Ok(check);
        }
        let Some((state, _, _, held_id, _)) = found else {
            return Ok(CopyCheck::Unknown(format!("there is no request {n}")));
        };
        if state != RequestState::Running.as_str() {
            return Ok(CopyCheck::Late(format!("request {n} is {state}")));
        }
        tx.execute(
            "INSERT OR IGNORE INTO copies (request_id, queue_id, seen_at) VALUES (?1, ?2, ?3)",
            params![n, queue_id, clamp(now)],
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
        insert_audit(&tx, held_id, &entry).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(CopyCheck::Accepted)
    }

    pub(super) fn copies(&self, request: i64) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT queue_id FROM copies WHERE request_id = ?1 ORDER BY seen_at, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![request], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub(super) fn copy_released(&self, id: i64, queue_id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE requests SET copy_queue_id = ?2 WHERE id = ?1",
            params![id, queue_id],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) fn lease(&self, id: i64, claimant: Option<&str>) -> Result<bool, StoreError> {
        let conn = self.conn();
        let changed = conn
            .execute(
                "UPDATE requests SET claimed_by = ?3
                 WHERE id = ?1 AND state = 'running' AND claimed_by IS ?2",
                params![id, claimant, super::claimant::this_process()],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    pub(super) fn record_event(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO events (at, who, action, comment) VALUES (?1, ?2, ?3, ?4)",
            params![clamp(e.at), e.who, e.action, e.comment],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) fn record_event_on(&self, held_id: i64, e: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO events (at, who, action, comment) VALUES (?1, ?2, ?3, ?4)",
            params![clamp(e.at), e.who, e.action, e.comment],
        )
        .map_err(|e| self.err(e))?;
        insert_audit(&tx, held_id, e).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    pub(super) fn events(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT at, who, action, comment FROM events ORDER BY id DESC LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![clamp(limit)], |r| {
                Ok(AuditEntry {
                    at: r.get::<_, i64>(0)? as u64,
                    who: r.get(1)?,
                    action: r.get(2)?,
                    comment: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub(super) fn finish(
        &self,
        id: i64,
        ok: bool,
        result: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let state = RequestState::finished(ok);
        let conn = self.conn();
        let changed = conn
            .execute(
                "UPDATE requests SET state = ?2, result = ?3, finished_at = ?4
                 WHERE id = ?1 AND state = 'running'",
                params![id, state.as_str(), result, clamp(now)],
            )
            .map_err(|e| self.err(e))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                path: self.path().to_owned(),
                id,
                message: "the request is not running: only a claimed request can finish".into(),
            })
        }
    }
}

impl SqliteStore {
    /// Spends a link's `nonce` (valid until `expires`) at `at` in the transaction
    /// `tx`: a conflict when it was spent already. Forgets the nonces of links long
    /// expired (such a link is refused anyway).
    pub(super) fn spend_nonce(
        &self,
        tx: &Connection,
        nonce: &str,
        expires: u64,
        at: u64,
    ) -> Result<(), SubmitError> {
        tx.execute(
            "DELETE FROM link_nonces WHERE expires < ?1",
            params![clamp(at.saturating_sub(LINK_NONCE_MARGIN))],
        )
        .map_err(|e| self.err(e))?;
        let spent = tx.execute(
            "INSERT INTO link_nonces (nonce, expires, used_at) VALUES (?1, ?2, ?3)",
            params![nonce, clamp(expires), clamp(at)],
        );
        match spent {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                Err(SubmitError::Conflict(
                    "this link was used already: each link acts once".into(),
                ))
            }
            Err(e) => Err(self.err(e).into()),
        }
    }

    /// Files a request (see [`QuarantineIndex::submit`]); with `link` (a digest link's
    /// nonce and expiry), spends the nonce in the same transaction: a nonce spent
    /// already is a conflict, and a request that is not filed spends nothing.
    fn file_request(
        &self,
        n: &NewRequest,
        link: Option<(&str, u64)>,
    ) -> Result<Request, SubmitError> {
        let mut conn = self.conn();
        // IMMEDIATE: the write lock from the start, so a worker writing between this
        // read and the insert makes SQLite wait (busy_timeout), not fail the snapshot.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        if let Some((nonce, expires)) = link {
            self.spend_nonce(&tx, nonce, expires, n.at)?;
        }
        let found: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, state FROM held WHERE queue_id = ?1 ORDER BY id DESC LIMIT 1",
                params![n.queue_id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((held_id, state)) = found else {
            return Err(SubmitError::NotFound(n.queue_id.clone()));
        };
        if state != State::Held.as_str() {
            return Err(SubmitError::Conflict(format!(
                "{} is {state} already",
                n.queue_id
            )));
        }
        if let RequestAction::ReleaseTo { .. } = &n.action {
            release_to_recipients(&self.load(&tx, held_id)?, n)?;
        }
        let args = serde_json::to_string(&n.action).map_err(|e| StoreError::Corrupt {
            path: self.path().to_owned(),
            id: held_id,
            message: e.to_string(),
        })?;
        let inserted = tx.execute(
            "INSERT INTO requests (held_id, action, args, who, via, remote, comment, requested_at,
                                   state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')",
            params![
                held_id,
                n.action.name(),
                args,
                n.who,
                n.via.as_str(),
                n.remote,
                n.comment,
                clamp(n.at)
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                return Err(SubmitError::Conflict(format!(
                    "a request for {} is already open",
                    n.queue_id
                )));
            }
            Err(e) => return Err(self.err(e).into()),
        }
        let id = tx.last_insert_rowid();
        let entry = AuditEntry {
            at: n.at,
            who: n.who.clone(),
            action: format!("request {}", n.action.name()),
            comment: Some(format!(
                "via {}{}: {}",
                n.via.as_str(),
                n.remote
                    .as_deref()
                    .map(|r| format!(" from {r}"))
                    .unwrap_or_default(),
                n.comment
            )),
        };
        insert_audit(&tx, held_id, &entry).map_err(|e| self.err(e))?;
        let request = self
            .query_requests(&tx, "WHERE r.id = ?1", params![id])?
            .pop()
            .ok_or_else(|| self.err(rusqlite::Error::QueryReturnedNoRows))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::Store;
    use crate::quarantine::index::QuarantineIndex;
    use crate::quarantine::record::{ListHit, RuleHit};
    use crate::quarantine::store::tests::held;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn request(queue_id: &str, action: RequestAction) -> NewRequest {
        NewRequest {
            queue_id: QueueId::parse(queue_id).unwrap(),
            action,
            who: "carol".into(),
            via: Via::Desk,
            remote: Some("192.0.2.7".into()),
            comment: "checked with the sender".into(),
            at: 500,
        }
    }

    /// Three held records and a released one: ann to all@ (840,000, rule
    /// limits.audience), bob to small@ (40, rule hidden) and so on.
    fn fill(store: &Store) {
        let mut a = held("AAAAAA1", 100);
        a.rules = vec![RuleHit {
            rule: "limits.audience".into(),
            action: "quarantine".into(),
            message: "840000 >= 1000".into(),
        }];
        store.record_held(&a, "milter", None).unwrap();
        let mut b = held("BBBBBB2", 200);
        b.sender = "Bob@Example.org".into();
        b.sasl_login = Some("bobby".into());
        b.audience = 40;
        b.lists = vec![ListHit {
            address: "Small-Team@example.org".into(),
            size: 40,
            external: 0,
            drift_from: None,
        }];
        b.rules = vec![
            RuleHit {
                rule: "hidden".into(),
                action: "quarantine".into(),
                message: "40 vs 1".into(),
            },
            RuleHit {
                rule: "hidden".into(),
                action: "quarantine".into(),
                message: "again".into(),
            },
        ];
        store.record_held(&b, "milter", None).unwrap();
        let mut c = held("CCCCCC3", 300);
        c.audience = 5000;
        c.rules = vec![RuleHit {
            rule: "storm".into(),
            action: "quarantine".into(),
            message: "reply-all".into(),
        }];
        store.record_held(&c, "milter", None).unwrap();
        let d = held("DDDDDD4", 50);
        let id = store.record_held(&d, "milter", None).unwrap();
        let entry = AuditEntry {
            at: 60,
            who: "root".into(),
            action: "release".into(),
            comment: None,
        };
        store
            .set_state(id, State::Held, State::Released, &entry)
            .unwrap();
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.rows
            .iter()
            .map(|r| r.record.message.queue_id.as_str())
            .collect()
    }

    fn q() -> Query {
        Query {
            limit: 50,
            ..Query::default()
        }
    }

    #[test]
    fn pages_filter_sort_and_count_on_the_server() {
        let (_d, store) = store();
        fill(&store);
        let all = store.page(&q()).unwrap();
        assert_eq!(ids(&all), ["DDDDDD4", "AAAAAA1", "BBBBBB2", "CCCCCC3"]);
        assert_eq!(all.total, 4);
        assert_eq!(
            all.by_state,
            [
                (State::Held, 3),
                (State::Released, 1),
                (State::Discarded, 0),
                (State::Expired, 0)
            ]
        );
        assert_eq!(
            all.by_rule,
            [
                ("hidden".to_owned(), 1),
                ("limits.audience".to_owned(), 1),
                ("storm".to_owned(), 1)
            ]
        );
        let page = |query: Query| ids(&store.page(&query).unwrap()).join(" ");
        let held = Query {
            state: Some(State::Held),
            ..q()
        };
        assert_eq!(page(held.clone()), "AAAAAA1 BBBBBB2 CCCCCC3");
        let by_rule = |rule: &str| Query {
            rule: Some(rule.into()),
            ..held.clone()
        };
        assert_eq!(page(by_rule("hidden")), "BBBBBB2");
        assert_eq!(
            page(by_rule("limits")),
            "",
            "a rule matches as a whole name"
        );
        let by_sender = |s: &str| Query {
            sender: Some(s.into()),
            ..held.clone()
        };
        assert_eq!(page(by_sender("BOB@")), "BBBBBB2", "case is ignored");
        assert_eq!(
            page(by_sender("bobby")),
            "BBBBBB2",
            "the SASL login matches"
        );
        assert_eq!(page(by_sender("%")), "", "no LIKE wildcards");
        let by_list = Query {
            list: Some("small-TEAM".into()),
            ..held.clone()
        };
        assert_eq!(page(by_list), "BBBBBB2");
        let big = Query {
            min_audience: Some(5000),
            ..held.clone()
        };
        assert_eq!(page(big), "AAAAAA1 CCCCCC3");
        let old = Query {
            held_before: Some(200),
            ..held.clone()
        };
        assert_eq!(page(old), "AAAAAA1 BBBBBB2");
        let by_audience = Query {
            sort: Sort::Audience,
            descending: true,
            ..held.clone()
        };
        assert_eq!(page(by_audience), "AAAAAA1 CCCCCC3 BBBBBB2");
        let newest = Query {
            descending: true,
            ..held.clone()
        };
        assert_eq!(page(newest), "CCCCCC3 BBBBBB2 AAAAAA1");
        let by_sender_sort = Query {
            sort: Sort::Sender,
            ..held.clone()
        };
        assert_eq!(page(by_sender_sort), "AAAAAA1 CCCCCC3 BBBBBB2");
        let second = Query {
            offset: 1,
            limit: 1,
            ..held.clone()
        };
        let p = store.page(&second).unwrap();
        assert_eq!(ids(&p), ["BBBBBB2"]);
        assert_eq!(p.total, 3, "the total counts every page");
        assert_eq!(
            store.matching(&held, 2).unwrap(),
            [
                QueueId::parse("AAAAAA1").unwrap().into(),
                QueueId::parse("BBBBBB2").unwrap().into()
            ]
        );
    }

    #[test]
    fn one_open_request_per_held_message_and_only_while_held() {
        let (_d, store) = store();
        fill(&store);
        let r = store
            .submit(None, &request("AAAAAA1", RequestAction::Release))
            .unwrap();
        assert_eq!(r.state, RequestState::Pending);
        assert_eq!(r.queue_id.as_str(), "AAAAAA1");
        assert_eq!(r.via, Via::Desk);
        let again = store.submit(
            None,
            &request(
                "AAAAAA1",
                RequestAction::Discard {
                    notify_sender: false,
                },
            ),
        );
        assert!(matches!(again, Err(SubmitError::Conflict(_))), "{again:?}");
        let released = store.submit(None, &request("DDDDDD4", RequestAction::Release));
        match released {
            Err(SubmitError::Conflict(m)) => assert_eq!(m, "DDDDDD4 is released already"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.submit(None, &request("EEEEEE5", RequestAction::Release)),
            Err(SubmitError::NotFound(_))
        ));
        let mut blank = request("BBBBBB2", RequestAction::Release);
        blank.comment = "  ".into();
        assert!(matches!(
            store.submit(None, &blank),
            Err(SubmitError::Invalid(_))
        ));
        let stranger = request(
            "BBBBBB2",
            RequestAction::ReleaseTo {
                recipients: vec!["mallory@example.net".into()],
            },
        );
        assert!(matches!(
            store.submit(None, &stranger),
            Err(SubmitError::Invalid(_))
        ));
        let none = request("BBBBBB2", RequestAction::ReleaseTo { recipients: vec![] });
        assert!(matches!(
            store.submit(None, &none),
            Err(SubmitError::Invalid(_))
        ));
        let rec = store
            .record(&QueueId::parse("AAAAAA1").unwrap().into())
            .unwrap();
        let last = rec.audit.last().unwrap();
        assert_eq!(last.who, "carol");
        assert_eq!(last.action, "request release");
        assert_eq!(
            last.comment.as_deref(),
            Some("via desk from 192.0.2.7: checked with the sender")
        );
        let page = store.page(&q()).unwrap();
        let row = page
            .rows
            .iter()
            .find(|r| r.record.message.queue_id.as_str() == "AAAAAA1")
            .unwrap();
        assert_eq!(row.request.as_ref().map(|r| r.id), Some(r.id));
    }

    #[test]
    fn the_worker_claims_once_and_a_failed_request_leaves_room_for_another() {
        let (_d, store) = store();
        fill(&store);
        let r = store
            .submit(None, &request("AAAAAA1", RequestAction::Release))
            .unwrap();
        let b = store
            .submit(
                None,
                &request(
                    "BBBBBB2",
                    RequestAction::ReleaseTo {
                        recipients: vec!["all@example.org".into()],
                    },
                ),
            )
            .unwrap();
        assert_eq!(
            store
                .open_requests()
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [r.id, b.id]
        );
        assert!(
            store.finish(r.id, true, "released", 501).is_err(),
            "only a claimed request finishes"
        );
        assert!(store.claim(r.id, 501).unwrap());
        assert!(!store.claim(r.id, 502).unwrap(), "a second claim fails");
        store
            .finish(r.id, false, "postsuper: fatal: no such message", 503)
            .unwrap();
        assert!(store.finish(r.id, true, "again", 504).is_err());
        let done = &store.requests(r.held_id).unwrap()[0];
        assert_eq!(done.state, RequestState::Failed);
        assert_eq!(done.started_at, Some(501));
        assert_eq!(done.finished_at, Some(503));
        assert_eq!(
            done.result.as_deref(),
            Some("postsuper: fatal: no such message")
        );
        assert_eq!(store.open_requests().unwrap().len(), 1);
        let retry = store.submit(None, &request("AAAAAA1", RequestAction::Release));
        assert!(retry.is_ok(), "{retry:?}");
        assert_eq!(store.requests(r.held_id).unwrap().len(), 2);
    }

    #[test]
    fn the_sweep_cannot_expire_a_message_with_an_open_request() {
        let (_d, store) = store();
        fill(&store);
        let r = store
            .submit(None, &request("AAAAAA1", RequestAction::Release))
            .unwrap();
        let entry = AuditEntry {
            at: 600,
            who: "sweep".into(),
            action: "expire".into(),
            comment: None,
        };
        let refused = store.set_state_unrequested(r.held_id, State::Held, State::Expired, &entry);
        assert!(
            matches!(refused, Err(StoreError::RequestOpen { .. })),
            "{refused:?}"
        );
        let id = QueueId::parse("AAAAAA1").unwrap();
        assert_eq!(store.record(&id.clone().into()).unwrap().state, State::Held);
        assert!(store.claim(r.id, 601).unwrap());
        store.finish(r.id, false, "postsuper failed", 602).unwrap();
        store
            .set_state_unrequested(r.held_id, State::Held, State::Expired, &entry)
            .unwrap();
        assert_eq!(
            store.record(&id.clone().into()).unwrap().state,
            State::Expired
        );
    }

    #[test]
    fn the_counts_by_rule_read_an_index_not_the_records() {
        let (_dir, store) = store();
        fill(&store);
        let conn = store.conn();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {RULES_OF_HELD}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            plan,
            ["SEARCH held USING COVERING INDEX held_state_rules (state=?)"]
        );
        drop(conn);
        let page = store.page(&q()).unwrap();
        assert!(
            page.by_rule.contains(&("limits.audience".to_owned(), 1)),
            "{:?}",
            page.by_rule
        );
    }

    #[test]
    fn events_are_kept_newest_first() {
        let (_d, store) = store();
        for (at, action) in [(1, "brake on"), (2, "brake off"), (3, "brake on")] {
            store
                .record_event(&AuditEntry {
                    at,
                    who: "carol".into(),
                    action: action.into(),
                    comment: Some(format!("incident {at}")),
                })
                .unwrap();
        }
        let events = store.events(2).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].at, events[0].action.as_str()), (3, "brake on"));
        assert_eq!(events[1].comment.as_deref(), Some("incident 2"));
    }

    #[test]
    fn search_columns_hold_each_rule_once_and_lists_in_lower_case() {
        let mut m = held("AAAAAA1", 1);
        m.rules = vec![
            RuleHit {
                rule: "hidden".into(),
                action: "quarantine".into(),
                message: String::new(),
            },
            RuleHit {
                rule: "hidden".into(),
                action: "quarantine".into(),
                message: String::new(),
            },
            RuleHit {
                rule: "drift".into(),
                action: "quarantine".into(),
                message: String::new(),
            },
        ];
        m.lists[0].address = "All@Example.org".into();
        assert_eq!(
            crate::quarantine::store::search_columns(&m),
            (
                " hidden drift ".to_owned(),
                "\nall@example.org\n".to_owned()
            )
        );
        m.rules.clear();
        m.lists.clear();
        assert_eq!(
            crate::quarantine::store::search_columns(&m),
            (String::new(), String::new())
        );
    }

    #[test]
    fn genuine_copies_of_a_running_request_are_recorded_and_late_ones_told_apart() {
        let (dir, store) = store();
        let mut m = held("AAAAAA1", 100);
        m.recipients = vec!["all@example.org".into(), "Bob@example.org".into()];
        store.record_held(&m, "milter", None).unwrap();
        store
            .record_held(&held("EEEEEE5", 100), "milter", None)
            .unwrap();
        let filed = store
            .submit(
                None,
                &request(
                    "AAAAAA1",
                    RequestAction::ReleaseTo {
                        recipients: vec!["Bob@example.org".into()],
                    },
                ),
            )
            .unwrap();
        let mark = |original: &str, request: i64, token: &str| CopyMark {
            original: original.into(),
            request,
            token: token.into(),
        };
        // No token given yet: a pending request has no copy.
        assert!(matches!(
            store
                .accept_copy(&mark("AAAAAA1", filed.id, "t1"), "CCCCCC1", 600)
                .unwrap(),
            CopyCheck::Unknown(_)
        ));
        assert!(
            store.copy_token(filed.id, "t1").is_err(),
            "only a running request"
        );
        assert!(store.claim(filed.id, 550).unwrap());
        let me = crate::quarantine::claimant::this_process();
        assert_eq!(
            store.requests(filed.held_id).unwrap()[0].claimed_by,
            Some(me.clone()),
            "the claimant is recorded"
        );
        assert_eq!(store.copy_token(filed.id, "t1").unwrap(), "t1");
        assert_eq!(
            store.copy_token(filed.id, "t9").unwrap(),
            "t1",
            "given once"
        );
        for (m, why) in [
            (
                mark("AAAAAA1", filed.id, "t2"),
                "the token is not request 1's",
            ),
            (mark("AAAAAA1", 99, "t1"), "there is no request 99"),
            (
                mark("EEEEEE5", filed.id, "t1"),
                "request 1 is for another message",
            ),
        ] {
            assert_eq!(
                store.accept_copy(&m, "CCCCCC1", 600).unwrap(),
                CopyCheck::Unknown(why.into())
            );
        }
        assert!(store.copies(filed.id).unwrap().is_empty());
        let good = mark("AAAAAA1", filed.id, "t1");
        for (copy, at) in [("CCCCCC1", 600), ("DDDDDD1", 601), ("CCCCCC1", 602)] {
            assert_eq!(
                store.accept_copy(&good, copy, at).unwrap(),
                CopyCheck::Accepted
            );
        }
        assert_eq!(store.copies(filed.id).unwrap(), ["CCCCCC1", "DDDDDD1"]);
        let record = store
            .record(&QueueId::parse("AAAAAA1").unwrap().into())
            .unwrap();
        let copies: Vec<_> = record.audit.iter().filter(|a| a.action == "copy").collect();
        assert_eq!(copies.len(), 3);
        assert_eq!(
            copies[0].comment.as_deref(),
            Some("request 1: a copy held as CCCCCC1, for the worker to release")
        );
        store.copy_sent(filed.id, 610).unwrap();
        store.copy_sent(filed.id, 620).unwrap();
        store.copy_released(filed.id, "CCCCCC1").unwrap();
        let r = store.requests(filed.held_id).unwrap().pop().unwrap();
        assert_eq!(
            (r.copy_sent_at, r.copy_attempts, r.copy_queue_id.as_deref()),
            (Some(620), 2, Some("CCCCCC1"))
        );
        // Taking over: only from the claimant named, and only one of two.
        assert!(!store.lease(filed.id, Some("1 1 other")).unwrap());
        assert!(store.lease(filed.id, Some(&me)).unwrap());
        store.finish(filed.id, true, "done", 700).unwrap();
        assert!(
            !store.lease(filed.id, Some(&me)).unwrap(),
            "only a running request"
        );
        assert_eq!(
            store.accept_copy(&good, "EEEEEE1", 800).unwrap(),
            CopyCheck::Late("request 1 is done".into())
        );
        assert_eq!(
            store.copies(filed.id).unwrap().len(),
            2,
            "a late copy is no copy"
        );
        // A store of version 3 gains the columns, its requests kept.
        drop(store);
        {
            let conn = Connection::open(dir.path().join("quarantine.sqlite")).unwrap();
            for c in [
                "claimed_by",
                "copy_token",
                "copy_sent_at",
                "copy_attempts",
                "copy_queue_id",
            ] {
                conn.execute_batch(&format!("ALTER TABLE requests DROP COLUMN {c}"))
                    .unwrap();
            }
            conn.execute_batch("DROP TABLE copies").unwrap();
            conn.pragma_update(None, "user_version", 3).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let r = store.requests(filed.held_id).unwrap().pop().unwrap();
        assert_eq!(
            (r.id, r.state, r.copy_queue_id, r.copy_attempts),
            (filed.id, RequestState::Done, None, 0)
        );
        assert!(store.copies(filed.id).unwrap().is_empty());
    }

    #[test]
    fn a_link_nonce_files_one_request_and_is_spent_only_with_it() {
        let (_dir, store) = store();
        fill(&store);
        let nonce = "0123456789abcdef0123456789abcdef";
        let mut n = request("AAAAAA1", RequestAction::Release);
        n.via = Via::Digest;
        n.who = "digest:admin@example.org".into();
        // A request that is not filed (no longer held) spends nothing.
        let released = request("DDDDDD4", RequestAction::Release);
        assert!(matches!(
            store.submit_link(None, &released, nonce, 10_000),
            Err(SubmitError::Conflict(_))
        ));
        let filed = store.submit_link(None, &n, nonce, 10_000).expect("filed");
        assert_eq!(filed.via, Via::Digest);
        let held_id = filed.held_id;
        store.claim(filed.id, 501).unwrap();
        store
            .finish(filed.id, false, "postsuper failed", 502)
            .unwrap();
        // The message is held again with no open request, yet the link is spent.
        match store.submit_link(None, &n, nonce, 10_000) {
            Err(SubmitError::Conflict(why)) => assert!(why.contains("used already"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.requests(held_id).unwrap().len(), 1, "nothing changed");
        // Another link still works; nonces long expired are pruned when one is spent.
        let mut later = n.clone();
        later.at = 10_000 + LINK_NONCE_MARGIN + 1;
        store
            .submit_link(
                None,
                &later,
                "fedcba9876543210fedcba9876543210",
                later.at + 60,
            )
            .expect("a fresh nonce");
        let left: Vec<String> = store
            .conn()
            .prepare("SELECT nonce FROM link_nonces")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["fedcba9876543210fedcba9876543210"]);
    }
}
