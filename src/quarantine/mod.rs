// SPDX-License-Identifier: GPL-3.0-or-later
//! The quarantine: a durable record of every held message, the review actions that
//! act on them through Postfix's own tools, and the sweep that makes sure none is
//! forgotten.

pub(crate) mod backend;
pub mod claimant;
pub(crate) mod index;
pub(crate) mod pg;
mod pg_conn;
pub(crate) mod plan;
pub(crate) mod postfix;
pub(crate) mod record;
mod release_to;
pub(crate) mod review;
pub(crate) mod running;
pub(crate) mod senders;
mod sqlite;
pub(crate) mod store;
mod sweep;
mod tally;
pub(crate) mod worker;

pub use backend::Store;
pub use index::{
    COPY_HEADER, CopyCheck, CopyMark, NewRequest, Page, Plea, QuarantineIndex, Query, Request,
    RequestAction, RequestState, Row, Sort, SubmitError, Via, needs_admin,
};
pub use record::{Address, AuditEntry, HeldMessage, QueueId, Record, State};
pub use senders::DueNotice;
pub use store::{Filter, StoreError};
pub use worker::{CLI_COMMENT, Executed, Executor};

use crate::notify::{Alert, AlertKind};
use crate::policy::{Action, Evaluation, MessageFacts, thread_key};
use record::{ListHit, RuleHit};
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

/// "3d 4h", "2h 05m", "12m", "40s".
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// What `list` and the sweep say about held foreign records.
pub const FOREIGN_NOTE: &str = "held by another tool, not by fanout-milter (state \"foreign\"): \
    the sweep leaves them alone; release or discard one with --foreign";

/// An admin alert about a held message at `now` (seconds since the epoch).
pub fn alert(kind: AlertKind, m: &HeldMessage, now: u64) -> Alert {
    Alert {
        kind,
        at: UNIX_EPOCH + Duration::from_secs(now),
        queue_id: Some(m.queue_id.to_string()),
        sender: m.sender.clone(),
        subject: m.subject.clone().unwrap_or_default(),
        audience: m.audience,
        reason: m.reasons(),
        held_for: (kind != AlertKind::Quarantined)
            .then(|| Duration::from_secs(now.saturating_sub(m.held_at))),
    }
}

/// Where the signed links of a notice to a sender point, and what signs them: the
/// review desk's `public_url` and key.
#[derive(Clone, PartialEq, Eq)]
pub struct SenderLinks {
    /// `[review] public_url`, without a trailing `/`.
    pub public_url: String,
    /// The desk key.
    pub key: [u8; crate::link::KEY_BYTES],
}

impl std::fmt::Debug for SenderLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderLinks")
            .field("public_url", &self.public_url)
            .field("key", &"(secret)")
            .finish()
    }
}

impl SenderLinks {
    /// The signed link for `action` on the held record `r` (on its relay, in a
    /// fleet-wide store), mailed to its sender, valid until `expires`; none when it
    /// cannot be made (no randomness).
    pub fn link(
        &self,
        r: &Record,
        action: crate::link::LinkAction,
        expires: u64,
    ) -> Option<String> {
        let m = &r.message;
        let link = crate::link::Link::new(
            r.relay.as_deref(),
            m.queue_id.as_str(),
            m.held_at,
            action,
            &m.sender,
            expires,
        )
        .ok()?;
        Some(format!("{}/s/{}", self.public_url, link.token(&self.key)))
    }
}

/// What a notice to the sender says about the held record `r`: its facts, the review
/// or confirmation deadline under `q`, and, with `links`, the signed links its kind
/// offers (withdraw always; send for a `confirm` hold, ask for release otherwise), each
/// valid until the hold would end.
pub fn notice_facts(
    r: &Record,
    q: &crate::config::QuarantineSettings,
    contact: &str,
    links: Option<&SenderLinks>,
) -> crate::notify::notices::NoticeFacts {
    use crate::link::LinkAction;
    use crate::notify::notices::{NoticeFacts, NoticeLinks};
    let m = &r.message;
    let ends = m.held_at.saturating_add(if m.confirm {
        q.confirm_within.as_secs()
    } else {
        q.expire_after.as_secs()
    });
    let link = |action| links.and_then(|l| l.link(r, action, ends));
    NoticeFacts {
        subject: m.subject.clone().unwrap_or_default(),
        queue_id: m.queue_id.to_string(),
        held_at: m.held_at,
        recipients: m.recipients.clone(),
        visible: m.visible.len() as u64,
        audience: m.audience,
        list: notice_list(m),
        rules: m
            .rules
            .iter()
            .map(|h| (h.rule.clone(), h.message.clone()))
            .collect(),
        review_by: (!m.confirm).then(|| m.held_at.saturating_add(q.review_within.as_secs())),
        confirm_by: m.confirm.then_some(ends),
        links: NoticeLinks {
            withdraw: link(LinkAction::Withdraw),
            ask: if m.confirm {
                None
            } else {
                link(LinkAction::Ask)
            },
            send: if m.confirm {
                link(LinkAction::Send)
            } else {
                None
            },
        },
        comment: None,
        released_to: Vec::new(),
        contact: contact.to_owned(),
        host: crate::notify::hostname(),
    }
}

/// The list a notice names as the way the message would reach so many people: the
/// largest one no To or Cc address shows (the sender could not see it), else the
/// largest.
fn notice_list(m: &HeldMessage) -> Option<String> {
    let shown = |l: &ListHit| m.visible.iter().any(|v| v.eq_ignore_ascii_case(&l.address));
    m.lists
        .iter()
        .filter(|l| !shown(l))
        .max_by_key(|l| l.size)
        .or_else(|| m.lists.iter().max_by_key(|l| l.size))
        .map(|l| l.address.clone())
}

/// How many recipient domains a record keeps.
const TOP_DOMAINS: usize = 20;

/// The record of a message the milter is about to hold, with its header fields as
/// received (the store caps them, see [`record::MAX_STORED_HEADER_BYTES`]).
pub fn held_message(
    queue_id: QueueId,
    held_at: u64,
    facts: &MessageFacts,
    evaluation: &Evaluation,
    headers: Vec<(String, String)>,
) -> HeldMessage {
    let lists: Vec<ListHit> = facts
        .audience
        .as_ref()
        .map(|a| {
            a.lists
                .iter()
                .map(|l| ListHit {
                    address: l.address.to_string(),
                    size: l.size,
                    external: l.external,
                    drift_from: l.drift_from,
                })
                .collect()
        })
        .unwrap_or_default();
    HeldMessage {
        queue_id,
        held_at,
        sender: facts.sender.clone(),
        sasl_login: facts.sasl_login.clone(),
        client: facts.client.clone(),
        recipients: facts.recipients.iter().map(str::to_owned).collect(),
        audience: evaluation.counts.audience as u64,
        external: evaluation.counts.external as u64,
        lists,
        top_domains: top_domains(facts),
        visible: facts.headers.visible.iter().map(str::to_owned).collect(),
        subject: facts.headers.subject.clone(),
        message_id: facts.headers.message_id.clone(),
        thread_key: thread_key(facts),
        rules: evaluation
            .verdict
            .reasons
            .iter()
            .map(|r| RuleHit {
                rule: r.rule.to_owned(),
                action: r.action.as_str().to_owned(),
                message: r.message.clone(),
            })
            .collect(),
        recorded_by: "milter".to_owned(),
        headers,
        confirm: evaluation.verdict.action == Action::Confirm,
        notify_sender: evaluation.verdict.notify_sender,
        confirm_key: (evaluation.verdict.action == Action::Confirm)
            .then(|| crate::policy::confirm_key(facts.sasl_login.as_deref()))
            .flatten(),
    }
}

/// Recipient domains, largest first: those of each list's mailboxes plus those of the
/// envelope recipients that are not lists. Lists that overlap count their common
/// mailboxes once per list.
fn top_domains(facts: &MessageFacts) -> Vec<(String, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    let lists = facts
        .audience
        .as_ref()
        .map(|a| a.lists.as_slice())
        .unwrap_or_default();
    for l in lists {
        for (d, n) in l.domains.iter() {
            *counts.entry(d).or_default() += n;
        }
    }
    for r in facts.recipients.iter() {
        if lists.iter().any(|l| &*l.address == r) {
            continue;
        }
        if let Some((_, d)) = r.rsplit_once('@') {
            *counts.entry(d).or_default() += 1;
        }
    }
    let mut v: Vec<(String, u64)> = counts.into_iter().map(|(d, n)| (d.to_owned(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(TOP_DOMAINS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AudienceFacts, ListFacts, Policy, evaluate};
    use std::sync::Arc;

    #[test]
    fn a_notice_names_the_list_the_sender_could_not_see() {
        let mut m = crate::quarantine::store::tests::held("AAAAAA1", 100);
        let hit = |address: &str, size| ListHit {
            address: address.into(),
            size,
            external: 0,
            drift_from: None,
        };
        m.lists = vec![hit("ward@example.org", 5000), hit("board@example.org", 200)];
        m.visible = vec!["WARD@example.org".into()];
        assert_eq!(notice_list(&m).as_deref(), Some("board@example.org"));
        m.visible.push("board@example.org".into());
        assert_eq!(notice_list(&m).as_deref(), Some("ward@example.org"));
        m.lists.clear();
        assert_eq!(notice_list(&m), None);
    }

    #[test]
    fn a_sender_link_names_the_relay_of_its_record() {
        let key = [9; crate::link::KEY_BYTES];
        let links = SenderLinks {
            public_url: "https://review.example.org".into(),
            key,
        };
        let mut r = Record {
            relay: Some("relay-b".into()),
            id: 1,
            message: crate::quarantine::store::tests::held("AAAAAA1", 100),
            state: State::Held,
            state_at: 100,
            escalated_at: None,
            foreign: false,
            hold_until: None,
            audit: Vec::new(),
        };
        let verified = |r: &Record| {
            let url = links
                .link(r, crate::link::LinkAction::Withdraw, 10_000)
                .unwrap();
            let token = url.strip_prefix("https://review.example.org/s/").unwrap();
            crate::link::verify(&key, crate::link::Audience::Sender, token, 200).unwrap()
        };
        let l = verified(&r);
        assert_eq!(
            (l.relay.as_deref(), l.queue_id.as_str(), l.held_at),
            (Some("relay-b"), "AAAAAA1", 100)
        );
        r.relay = None;
        assert_eq!(verified(&r).relay, None, "a relay's own store");
    }

    #[test]
    fn a_decision_becomes_a_record() {
        let mut f = MessageFacts {
            sender: "ann@example.org".into(),
            sasl_login: Some("ann".into()),
            ..Default::default()
        };
        f.recipients.add("all@example.org");
        f.recipients.add("bob@partner.example");
        f.headers.visible.add("all@example.org");
        f.headers.subject = Some("Hello".into());
        f.headers.message_id = Some("<m1@example.org>".into());
        f.audience = Some(AudienceFacts {
            total: 3001,
            external: 1,
            lists: vec![ListFacts {
                address: Arc::from("all@example.org"),
                size: 3000,
                external: 0,
                nested_lists: 2,
                cycles: 0,
                domains: vec![
                    (Arc::from("example.org"), 2000),
                    (Arc::from("trust.example.org"), 1000),
                ]
                .into(),
                drift_from: None,
                ..Default::default()
            }],
            ..Default::default()
        });
        let e = evaluate(&Policy::default(), &f, &Default::default());
        let fields = vec![("Subject".to_owned(), "Hello".to_owned())];
        let h = held_message(QueueId::parse("ABCDEF12").unwrap(), 42, &f, &e, fields);
        assert_eq!(h.headers, [("Subject".to_owned(), "Hello".to_owned())]);
        assert_eq!(h.audience, 3001);
        assert_eq!(h.lists[0].address, "all@example.org");
        assert_eq!(
            h.top_domains,
            [
                ("example.org".to_owned(), 2000),
                ("trust.example.org".to_owned(), 1000),
                ("partner.example".to_owned(), 1)
            ]
        );
        assert_eq!(h.thread_key, "mid:m1@example.org");
        assert_eq!(h.rules.len(), e.verdict.reasons.len());
        assert_eq!(h.recipients, ["all@example.org", "bob@partner.example"]);
    }
}
