// SPDX-License-Identifier: GPL-3.0-or-later
//! The sender's side of the store: notices due at hold and when each sender was last
//! told, a sender's plea for release, and the lists a sender confirmed.
//!
//! A notice due at hold is written in the transaction that records the hold
//! ([`Store::record_held`]), so that a crash between the hold and the notice loses
//! nothing: the daemon's notifier finds it in `sender_notices` after a restart.

use super::index::{Plea, SubmitError};
use super::record::{Address, AuditEntry, QueueId, State};
use super::store::{SqliteStore, StoreError, insert_audit};
use crate::policy::ConfirmedList;
use rusqlite::{ErrorCode, OptionalExtension, params};

/// A notice due to a sender and not sent yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueNotice {
    /// The record it is about.
    pub held_id: i64,
    /// Whom it goes to (the record's envelope sender).
    pub sender: String,
    /// Since when it is due (the hold).
    pub due_at: u64,
    /// Where that record stands now: a message no longer held needs no notice.
    pub state: State,
    /// When this sender was last sent a notice at hold.
    pub last_told: Option<u64>,
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Notices due and not sent yet, oldest first, at most `limit`.
    pub fn due_notices(&self, limit: u64) -> Result<Vec<DueNotice>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT n.held_id, n.sender, n.due_at, h.state, s.last_at
                 FROM sender_notices n JOIN held h ON h.id = n.held_id
                 LEFT JOIN notice_senders s ON s.sender = n.sender
                 WHERE n.sent_at IS NULL ORDER BY n.due_at, n.held_id LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![clamp(limit)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (held_id, sender, due_at, state, last_told) = row.map_err(|e| self.err(e))?;
            let state = state.parse().map_err(|message| StoreError::Corrupt {
                path: self.path().to_owned(),
                id: held_id,
                message,
            })?;
            out.push(DueNotice {
                held_id,
                sender,
                due_at: due_at.max(0) as u64,
                state,
                last_told: last_told.map(|t| t.max(0) as u64),
            });
        }
        Ok(out)
    }

    /// Settles the notices of `held_ids` at `at` with `result` (what happened, for the
    /// audit trail of each record): when `told`, `sender` was sent one notice about
    /// them, and that is when they were last told.
    pub fn notices_done(
        &self,
        held_ids: &[i64],
        sender: &str,
        told: bool,
        at: u64,
        result: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for id in held_ids {
            tx.execute(
                "UPDATE sender_notices SET sent_at = ?2, result = ?3
                 WHERE held_id = ?1 AND sent_at IS NULL",
                params![id, clamp(at), result],
            )
            .map_err(|e| self.err(e))?;
            let entry = AuditEntry {
                at,
                who: "notifier".into(),
                action: "notify-sender".into(),
                comment: Some(result.to_owned()),
            };
            insert_audit(&tx, *id, &entry).map_err(|e| self.err(e))?;
        }
        if told {
            tx.execute(
                "INSERT INTO notice_senders (sender, last_at) VALUES (?1, ?2)
                 ON CONFLICT (sender) DO UPDATE SET last_at = max(last_at, excluded.last_at)",
                params![sender, clamp(at)],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// When `sender` was last sent a notice at hold.
    pub fn last_told(&self, sender: &str) -> Result<Option<u64>, StoreError> {
        self.conn()
            .query_row(
                "SELECT last_at FROM notice_senders WHERE sender = ?1",
                params![sender],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|t| t.map(|t| t.max(0) as u64))
            .map_err(|e| self.err(e))
    }

    /// The lists `who` (a `policy::confirm_key`) confirmed, with their sizes then,
    /// that are remembered at `now`, in the order of their addresses.
    pub fn confirmed_lists(&self, who: &str, now: u64) -> Result<Vec<ConfirmedList>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT list, size FROM confirmations WHERE who = ?1 AND until > ?2 ORDER BY list",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![who, clamp(now)], |r| {
                Ok(ConfirmedList {
                    address: r.get(0)?,
                    size: r.get::<_, i64>(1)?.max(0) as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Remembers that `who` confirmed posting to `lists` (at their sizes then), until
    /// `until`; forgets the confirmations that ended before `now`. A list confirmed
    /// again is remembered at its new size.
    pub fn remember_confirmed(
        &self,
        who: &str,
        lists: &[ConfirmedList],
        until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "DELETE FROM confirmations WHERE until <= ?1",
            params![clamp(now)],
        )
        .map_err(|e| self.err(e))?;
        for list in lists {
            tx.execute(
                "INSERT INTO confirmations (who, list, size, until) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (who, list) DO UPDATE SET size = excluded.size,
                     until = max(until, excluded.until)",
                params![
                    who,
                    list.address.to_ascii_lowercase(),
                    clamp(list.size),
                    clamp(until)
                ],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Records a sender's plea for release of the record `held_id` (still held, never
    /// asked before), spending the link's `nonce` (valid until `expires`) in the same
    /// transaction, with an audit entry by `who`. A plea files no request: it asks the
    /// admins, who see it first on the desk.
    pub fn sender_asks(
        &self,
        held_id: i64,
        words: &str,
        who: &str,
        nonce: &str,
        expires: u64,
        at: u64,
    ) -> Result<(), SubmitError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM held WHERE id = ?1",
                params![held_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match state.as_deref() {
            None => return Err(SubmitError::Invalid("no such held message".into())),
            Some(s) if s != State::Held.as_str() => {
                return Err(SubmitError::Conflict(format!("the message is {s} already")));
            }
            Some(_) => {}
        }
        self.spend_nonce(&tx, nonce, expires, at)?;
        let conflict = |e: &rusqlite::Error| matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation);
        match tx.execute(
            "INSERT INTO sender_asks (held_id, at, words) VALUES (?1, ?2, ?3)",
            params![held_id, clamp(at), words],
        ) {
            Ok(_) => {}
            Err(e) if conflict(&e) => {
                return Err(SubmitError::Conflict(
                    "release of this message was asked for already".into(),
                ));
            }
            Err(e) => return Err(self.err(e).into()),
        }
        let entry = AuditEntry {
            at,
            who: who.to_owned(),
            action: "sender-asks".into(),
            comment: Some(words.to_owned()),
        };
        insert_audit(&tx, held_id, &entry).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The sender's plea for release of the record `held_id`, if they made one.
    pub fn plea(&self, held_id: i64) -> Result<Option<Plea>, StoreError> {
        self.conn()
            .query_row(
                "SELECT at, words FROM sender_asks WHERE held_id = ?1",
                params![held_id],
                |r| {
                    Ok(Plea {
                        at: r.get::<_, i64>(0)?.max(0) as u64,
                        words: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The queue ids of held messages whose sender asked for release, oldest plea
    /// first, at most `limit`: the desk shows them first.
    pub fn pleading(&self, limit: u64) -> Result<Vec<Address>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT h.queue_id FROM sender_asks a JOIN held h ON h.id = a.held_id
                 WHERE h.state = 'held' ORDER BY a.at, a.held_id LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![clamp(limit)], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let id = row.map_err(|e| self.err(e))?;
            if let Ok(q) = QueueId::parse(&id) {
                out.push(q.into());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::Store;
    use crate::quarantine::store::tests::held;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_notice_is_due_with_the_hold_and_settled_once() {
        let (_d, store) = store();
        let mut told = held("AAAAAA1", 100);
        told.notify_sender = true;
        let id = store.record_held(&told, "milter", None).unwrap();
        store
            .record_held(&held("AAAAAA2", 101), "milter", None)
            .unwrap();
        let mut foreign = held("AAAAAA3", 102);
        foreign.notify_sender = true;
        store.record_foreign(&foreign, "reconcile", None).unwrap();
        let mut nobody = held("AAAAAA4", 103);
        nobody.notify_sender = true;
        nobody.sender.clear();
        store.record_held(&nobody, "milter", None).unwrap();
        let due = store.due_notices(10).unwrap();
        assert_eq!(
            due,
            [DueNotice {
                held_id: id,
                sender: told.sender.clone(),
                due_at: 100,
                state: State::Held,
                last_told: None,
            }]
        );
        assert_eq!(store.last_told(&told.sender).unwrap(), None);
        store
            .notices_done(&[id], &told.sender, true, 130, "notice sent")
            .unwrap();
        assert!(store.due_notices(10).unwrap().is_empty());
        assert_eq!(store.last_told(&told.sender).unwrap(), Some(130));
        let mut again = held("AAAAAA5", 140);
        again.notify_sender = true;
        store.record_held(&again, "milter", None).unwrap();
        assert_eq!(
            store.due_notices(10).unwrap()[0].last_told,
            Some(130),
            "read with the notice, in one query"
        );
        store
            .notices_done(&[id], &told.sender, true, 120, "again")
            .unwrap();
        assert_eq!(
            store.last_told(&told.sender).unwrap(),
            Some(130),
            "never back"
        );
        let audit = store.record_by_id(id).unwrap().audit;
        assert!(
            audit
                .iter()
                .any(|e| e.action == "notify-sender" && e.comment.as_deref() == Some("notice sent"))
        );
    }

    #[test]
    fn confirmations_are_remembered_per_key_until_they_end() {
        let (_d, store) = store();
        let list = |address: &str, size| ConfirmedList {
            address: address.into(),
            size,
        };
        let lists = vec![list("Board@example.org", 12), list("ward@example.org", 300)];
        store
            .remember_confirmed("sasl:ann", &lists, 500, 100)
            .unwrap();
        assert_eq!(
            store.confirmed_lists("sasl:ann", 499).unwrap(),
            [list("board@example.org", 12), list("ward@example.org", 300)]
        );
        assert!(store.confirmed_lists("sasl:ann", 500).unwrap().is_empty());
        assert!(store.confirmed_lists("sasl:bob", 100).unwrap().is_empty());
        store
            .remember_confirmed("sasl:ann", &[list("board@example.org", 15)], 400, 100)
            .unwrap();
        assert_eq!(
            store.confirmed_lists("sasl:ann", 450).unwrap(),
            [list("board@example.org", 15), list("ward@example.org", 300)],
            "kept longer, at the size confirmed last"
        );
        store.remember_confirmed("sasl:bob", &[], 0, 600).unwrap();
        assert_eq!(
            store
                .conn()
                .query_row("SELECT count(*) FROM confirmations", [], |r| r
                    .get::<_, i64>(0))
                .unwrap(),
            0,
            "ended ones are forgotten"
        );
    }

    #[test]
    fn a_plea_is_made_once_while_held_and_spends_its_link() {
        let (_d, store) = store();
        let id = store
            .record_held(&held("BBBBBB1", 100), "milter", None)
            .unwrap();
        let n1 = "1".repeat(32);
        assert!(matches!(
            store.sender_asks(id, "  ", "ann", &n1, 900, 110),
            Err(SubmitError::Invalid(_))
        ));
        store
            .sender_asks(id, "The board asked for it", "ann", &n1, 900, 110)
            .unwrap();
        assert_eq!(
            store.plea(id).unwrap(),
            Some(Plea {
                at: 110,
                words: "The board asked for it".into()
            })
        );
        assert_eq!(
            store.pleading(10).unwrap(),
            [QueueId::parse("BBBBBB1").unwrap().into()]
        );
        assert!(matches!(
            store.sender_asks(id, "again", "ann", &n1, 900, 111),
            Err(SubmitError::Conflict(_))
        ));
        let n2 = "2".repeat(32);
        assert!(matches!(
            store.sender_asks(id, "again", "ann", &n2, 900, 111),
            Err(SubmitError::Conflict(_))
        ));
        assert_eq!(
            store.plea(id).unwrap().unwrap().words,
            "The board asked for it"
        );
        // The second nonce was not spent: its transaction rolled back.
        let other = store
            .record_held(&held("BBBBBB2", 100), "milter", None)
            .unwrap();
        store
            .sender_asks(other, "please", "bob", &n2, 900, 112)
            .unwrap();
        let entry = AuditEntry {
            at: 120,
            who: "x".into(),
            action: "discard".into(),
            comment: None,
        };
        store
            .set_state(other, State::Held, State::Discarded, &entry)
            .unwrap();
        assert_eq!(
            store.pleading(10).unwrap(),
            [QueueId::parse("BBBBBB1").unwrap().into()],
            "only held messages"
        );
        let third = store
            .record_held(&held("BBBBBB3", 100), "milter", None)
            .unwrap();
        store
            .set_state(third, State::Held, State::Released, &entry)
            .unwrap();
        assert!(matches!(
            store.sender_asks(third, "late", "c", &"3".repeat(32), 900, 130),
            Err(SubmitError::Conflict(_))
        ));
    }
}
