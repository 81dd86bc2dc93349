// SPDX-License-Identifier: GPL-3.0-or-later
//! Notices at hold: the daemon tells the sender of each held message at once, what was
//! held, why, who reviews it and by when, and what they can do.
//!
//! The notices due are rows the store wrote in the transaction that recorded each hold,
//! so that none is lost to a crash or restart; the notifier polls them, paces them
//! ([`pace::plan`]: one per sender per `sender_interval`, the holds in between
//! summarised in the next, at most `sender_notices_per_minute` relay-wide), sends each
//! by SMTP to `[notify] relay` with the null sender, and marks them done with what
//! happened in each record's audit trail. A message released or discarded before its
//! notice went gets none. A sender whose notice could not be sent is tried again a
//! minute later.

use crate::config::Config;
use crate::notify::deliver::{DeliverError, send_smtp};
use crate::notify::notices::{NoticeKind, compose};
use crate::notify::pace::{self, Due, Window};
use crate::quarantine::{DueNotice, Record, SenderLinks, State, Store, notice_facts};
use crate::shared::Shared;
use crate::text;
use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;
use tracing::{info, warn};

/// How often the notifier looks for notices due.
pub const POLL: Duration = Duration::from_secs(1);

/// Notices read per poll.
const MAX_DUE: u64 = 5000;

/// How long a sender whose notice failed waits before the next try.
const RETRY_AFTER: u64 = 60;

/// How long one SMTP hand-over may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the notifier remembers between polls.
#[derive(Debug, Default)]
pub struct Notifier {
    window: Window,
    retry_at: HashMap<String, u64>,
}

/// Hands one notice (recipient, message) to the relay.
pub type Deliver<'a> = dyn Fn(&str, &[u8]) -> Result<(), DeliverError> + 'a;

impl Notifier {
    /// One poll at `now`: settles the notices due in `store` under `config`, sending
    /// through `send`, with links from `links`. Blocking (SQLite and SMTP).
    pub fn poll(
        &mut self,
        store: &Store,
        config: &Config,
        links: Option<&SenderLinks>,
        send: &Deliver<'_>,
        now: u64,
    ) {
        let due = match store.due_notices(MAX_DUE) {
            Ok(due) => due,
            Err(e) => {
                warn!("sender notices: cannot read the store: {e}");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let (held, over): (Vec<DueNotice>, Vec<DueNotice>) =
            due.into_iter().partition(|d| d.state == State::Held);
        for d in over {
            let why = format!(
                "no notice sent: the message was {} before its notice went",
                d.state
            );
            if let Err(e) = store.notices_done(&[d.held_id], &d.sender, false, now, &why) {
                warn!("sender notices: cannot settle a notice: {e}");
            }
        }
        self.retry_at.retain(|_, at| *at > now);
        let told: HashMap<String, Option<u64>> = held
            .iter()
            .map(|d| (d.sender.clone(), d.last_told))
            .collect();
        let due: Vec<Due> = held
            .into_iter()
            .filter(|d| !self.retry_at.contains_key(&d.sender))
            .map(|d| Due {
                held_id: d.held_id,
                sender: d.sender,
                due_at: d.due_at,
            })
            .collect();
        let last_told = |sender: &str| told.get(sender).copied().flatten();
        let n = &config.notify;
        let batches = pace::plan(
            &due,
            last_told,
            n.sender_interval.as_secs(),
            self.window.count(now),
            n.sender_notices_per_minute,
            now,
        );
        for batch in batches {
            self.send_batch(store, config, links, send, &batch, now);
        }
    }

    fn send_batch(
        &mut self,
        store: &Store,
        config: &Config,
        links: Option<&SenderLinks>,
        send: &Deliver<'_>,
        batch: &pace::Batch,
        now: u64,
    ) {
        let records: Vec<Record> = batch
            .held_ids
            .iter()
            .filter_map(|id| match store.record_by_id(*id) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!("sender notices: cannot read record {id}: {e}");
                    None
                }
            })
            .collect();
        let Some(first) = records.first() else {
            return;
        };
        let contact = &config.replies.contact;
        let facts: Vec<_> = records
            .iter()
            .map(|r| notice_facts(r, &config.quarantine, contact, links))
            .collect();
        let rendered = if let [one] = facts.as_slice() {
            let kind = if first.message.confirm {
                NoticeKind::Confirm
            } else {
                NoticeKind::Held
            };
            config.notices.render(kind, one)
        } else {
            config.notices.render_summary(&facts)
        };
        let sender = &batch.sender;
        let shown = text::neutralize(sender);
        let sent = match compose(&config.notify.from, sender, rendered) {
            Ok(m) => send(sender, &m).map_err(|e| (e.is_permanent(), e.to_string())),
            Err(e) => Err((true, e.to_string())),
        };
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        match sent {
            Ok(()) => {
                self.window.add(now);
                let what = if ids.len() == 1 {
                    format!("notice sent to {shown}")
                } else {
                    format!(
                        "one notice about {} held messages sent to {shown}",
                        ids.len()
                    )
                };
                info!(
                    sender = %shown,
                    messages = ids.len(),
                    queue_id = %first.message.queue_id,
                    "sender told of the hold"
                );
                if let Err(e) = store.notices_done(&ids, sender, true, now, &what) {
                    warn!("sender notices: sent, but cannot record it: {e}");
                }
            }
            Err((true, e)) => {
                let e = text::neutralize(&e);
                warn!(sender = %shown, "sender notice refused for good, not tried again: {e}");
                let what = format!("notice to {shown} refused for good: {e}");
                if let Err(e) = store.notices_done(&ids, sender, false, now, &what) {
                    warn!("sender notices: cannot record a refused notice: {e}");
                }
            }
            Err((false, e)) => {
                self.retry_at
                    .insert(sender.clone(), now.saturating_add(RETRY_AFTER));
                warn!(
                    sender = %shown,
                    "sender notice not sent, tried again in {RETRY_AFTER}s: {}",
                    text::neutralize(&e)
                );
            }
        }
    }
}

/// Polls for notices due every [`POLL`] while the daemon runs; `links` gives the desk's
/// link settings in force (none without a desk or `public_url`).
pub async fn run(shared: Weak<Shared>, links: impl Fn() -> Option<SenderLinks> + Send + 'static) {
    let mut notifier = Some(Notifier::default());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(mut n) = notifier.take() else {
            return;
        };
        let generation = shared.current();
        let store = shared.store.clone();
        let now = crate::clock::epoch_secs(shared.now());
        let links = links();
        drop(shared);
        let polled = tokio::task::spawn_blocking(move || {
            let config = &generation.config;
            let relay = config.notify.relay.clone();
            let send = move |to: &str, message: &[u8]| {
                send_smtp(&relay, SMTP_TIMEOUT, "", &[to.to_owned()], message)
            };
            n.poll(&store, config, links.as_ref(), &send, now);
            n
        })
        .await;
        match polled {
            Ok(n) => notifier = Some(n),
            Err(e) => {
                warn!("sender notices: the notifier task failed: {e}; starting afresh");
                notifier = Some(Notifier::default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{self, Audience, LinkAction};
    use crate::quarantine::AuditEntry;
    use crate::quarantine::store::tests::held;
    use std::cell::RefCell;
    use std::path::Path;

    const T0: u64 = 1_800_000_000;

    fn config() -> Config {
        crate::config::parse(
            "[domains]\ninternal = [\"example.org\"]\n[notify]\nfrom = \"postmaster@example.org\"\n\
             sender_notices_per_minute = 3\n",
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn hold(store: &Store, queue_id: &str, sender: &str, at: u64, confirm: bool) -> i64 {
        let mut m = held(queue_id, at);
        m.sender = sender.into();
        m.notify_sender = true;
        m.confirm = confirm;
        store.record_held(&m, "milter", None).unwrap()
    }

    /// Runs one poll at `now`; returns (recipient, message text) of what was sent.
    fn poll(
        n: &mut Notifier,
        store: &Store,
        links: Option<&SenderLinks>,
        now: u64,
        fail: bool,
    ) -> Vec<(String, String)> {
        let sent = RefCell::new(Vec::new());
        let send = |to: &str, m: &[u8]| {
            if fail {
                return Err(DeliverError::Smtp {
                    relay: "127.0.0.1:25".into(),
                    message: "connection refused".into(),
                });
            }
            sent.borrow_mut()
                .push((to.to_owned(), String::from_utf8_lossy(m).into_owned()));
            Ok(())
        };
        n.poll(store, &config(), links, &send, now);
        sent.into_inner()
    }

    #[test]
    fn one_notice_per_sender_then_one_summary_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut n = Notifier::default();
        hold(&store, "AAAAAA01", "ann@example.org", T0, false);
        let sent = poll(&mut n, &store, None, T0 + 1, false);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "ann@example.org");
        assert!(
            sent[0].1.contains("Auto-Submitted: auto-generated"),
            "{}",
            sent[0].1
        );
        for i in 2..=50 {
            hold(
                &store,
                &format!("AAAAAA{i:02}"),
                "ann@example.org",
                T0 + 2,
                false,
            );
        }
        assert!(
            poll(&mut n, &store, None, T0 + 60, false).is_empty(),
            "within the interval"
        );
        let summary = poll(&mut n, &store, None, T0 + 601, false);
        assert_eq!(summary.len(), 1, "one summary");
        assert!(summary[0].1.contains("AAAAAA50"), "{}", summary[0].1);
        assert!(summary[0].1.contains("AAAAAA02"));
        assert!(
            poll(&mut n, &store, None, T0 + 2000, false).is_empty(),
            "all settled"
        );
        assert!(store.due_notices(100).unwrap().is_empty());
    }

    #[test]
    fn a_message_no_longer_held_gets_none_and_a_failed_notice_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut n = Notifier::default();
        let gone = hold(&store, "BBBBBB01", "bob@example.org", T0, false);
        let entry = AuditEntry {
            at: T0,
            who: "x".into(),
            action: "release".into(),
            comment: None,
        };
        store
            .set_state(gone, State::Held, State::Released, &entry)
            .unwrap();
        hold(&store, "BBBBBB02", "cy@example.org", T0, false);
        assert!(poll(&mut n, &store, None, T0 + 1, true).is_empty());
        let audit = store.record_by_id(gone).unwrap().audit;
        assert!(audit.iter().any(|e| {
            e.action == "notify-sender"
                && e.comment
                    .as_deref()
                    .is_some_and(|c| c.contains("was released"))
        }));
        assert_eq!(store.due_notices(10).unwrap().len(), 1, "cy's waits");
        assert!(
            poll(&mut n, &store, None, T0 + 30, false).is_empty(),
            "not before a minute"
        );
        assert_eq!(poll(&mut n, &store, None, T0 + 61, false).len(), 1);
    }

    #[test]
    fn a_notice_refused_for_good_is_settled_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut n = Notifier::default();
        let id = hold(&store, "EEEEEE01", "gone@example.org", T0, false);
        let refuse = |_: &str, _: &[u8]| -> Result<(), DeliverError> {
            Err(DeliverError::Refused {
                relay: "127.0.0.1:25".into(),
                message: "550 no such user".into(),
            })
        };
        n.poll(&store, &config(), None, &refuse, T0 + 1);
        assert!(store.due_notices(10).unwrap().is_empty(), "settled");
        assert_eq!(store.last_told("gone@example.org").unwrap(), None);
        let audit = store.record_by_id(id).unwrap().audit;
        assert!(audit.iter().any(|e| {
            e.comment
                .as_deref()
                .is_some_and(|c| c.contains("refused for good"))
        }));
    }

    #[test]
    fn the_relay_wide_cap_spreads_notices_over_minutes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut n = Notifier::default();
        for i in 0..7 {
            hold(
                &store,
                &format!("CCCCCC{i:02}"),
                &format!("s{i}@example.org"),
                T0,
                false,
            );
        }
        assert_eq!(poll(&mut n, &store, None, T0, false).len(), 3);
        assert!(poll(&mut n, &store, None, T0 + 59, false).is_empty());
        assert_eq!(poll(&mut n, &store, None, T0 + 60, false).len(), 3);
        assert_eq!(poll(&mut n, &store, None, T0 + 120, false).len(), 1);
    }

    #[test]
    fn links_are_signed_for_the_sender_and_the_kind_of_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let links = SenderLinks {
            public_url: "https://desk.example.org".into(),
            key: [5; link::KEY_BYTES],
        };
        let mut n = Notifier::default();
        hold(&store, "DDDDDD01", "dee@example.org", T0, true);
        hold(&store, "DDDDDD02", "eve@example.org", T0, false);
        let sent = poll(&mut n, &store, Some(&links), T0 + 1, false);
        assert_eq!(sent.len(), 2);
        let tokens = |text: &str| -> Vec<link::Link> {
            let flat = text.replace("=\r\n", "").replace("=3D", "=");
            flat.split("https://desk.example.org/s/")
                .skip(1)
                .map(|rest| {
                    let token: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                        .collect();
                    let token = token.trim_end_matches('.');
                    link::verify(&links.key, Audience::Sender, token, T0 + 2).expect("a valid link")
                })
                .collect()
        };
        let confirm = tokens(&sent[0].1);
        let mut actions: Vec<_> = confirm.iter().map(|l| l.action).collect();
        actions.sort_by_key(|a| a.as_str());
        assert_eq!(actions, [LinkAction::Send, LinkAction::Withdraw]);
        assert!(
            confirm
                .iter()
                .all(|l| l.to == "dee@example.org" && l.queue_id == "DDDDDD01")
        );
        assert_eq!(confirm[0].expires, T0 + 86_400, "until confirm_within");
        let held_links = tokens(&sent[1].1);
        let mut actions: Vec<_> = held_links.iter().map(|l| l.action).collect();
        actions.sort_by_key(|a| a.as_str());
        assert_eq!(actions, [LinkAction::Ask, LinkAction::Withdraw]);
        assert_eq!(held_links[0].expires, T0 + 3 * 86_400, "until expire_after");
    }
}
