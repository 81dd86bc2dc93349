// SPDX-License-Identifier: GPL-3.0-or-later
//! Acting on held messages through Postfix's tools: release, discard (with a notice to
//! the sender) and reconcile, each recorded in the store's audit trail. Each returns a
//! [`Report`] of what it did; Postfix is reached only through [`PostfixTools`] and mail
//! only through Postfix's sendmail. The sweep that runs these unattended is in
//! `super::sweep`, what the commands print in `cli::quarantine`.

use super::backend::Store;
use super::index::QuarantineIndex as _;
use super::plan::plan_reconcile;
use super::postfix::{PostfixTools, QueuedMessage};
use super::record::{Address, AuditEntry, HeldMessage, QueueId, Record, RuleHit, State};
use super::store::{Filter, StoreError};
use crate::config::Config;
use crate::notify;
use crate::notify::notices::{NoticeKind, compose};
use crate::policy::VERDICT_HEADER;
use crate::policy::normalize_subject;
use crate::text;
use std::collections::HashSet;

/// What became of a held message, as its sender is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Released to every recipient, with the reviewer's words if any.
    Released {
        /// The reviewer's words.
        words: Option<&'a str>,
    },
    /// Released to some recipients only.
    ReleasedTo {
        /// The recipients it went to.
        to: &'a [String],
        /// The reviewer's words.
        words: Option<&'a str>,
    },
    /// Discarded by an admin, with their words if any.
    Discarded {
        /// The reviewer's words.
        words: Option<&'a str>,
    },
    /// Not reviewed in time: discarded.
    Expired,
    /// The sender did not confirm in time: discarded.
    Unconfirmed,
    /// The sender withdrew it.
    Withdrawn,
}
/// What a command did: lines to print and how many items failed.
#[derive(Debug, Default)]
pub struct Report {
    /// Human-readable lines.
    pub text: String,
    /// Items that could not be handled.
    pub failed: usize,
}

impl Report {
    /// Adds a line.
    pub fn line(&mut self, s: impl AsRef<str>) {
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    /// Adds an `error:` line and counts a failed item.
    pub fn fail(&mut self, s: impl AsRef<str>) {
        self.failed += 1;
        self.line(format!("error: {}", s.as_ref()));
    }
}

/// What one action on one record came to: the Postfix tool's words when it was done,
/// why not (ready to print) when it was not.
pub type Acted = Result<String, String>;

/// The context of one review command (release, discard, reconcile, sweep).
pub struct Review<'a> {
    /// The configuration (`[postfix]`, `[notify]`, `[quarantine]`, `[reply] contact`).
    pub config: &'a Config,
    /// The quarantine store.
    pub store: &'a Store,
    /// Postfix's tools for `[postfix] config_directory`.
    pub postfix: PostfixTools,
    /// Who runs the command, for the audit trail.
    pub who: String,
    /// The current time (seconds since the epoch); injected by tests.
    pub now: u64,
}

/// The person running a command: `SUDO_USER`, else `USER`, else the uid.
pub fn invoking_user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

/// The value of the `X-Fanout-Verdict` header fanout-milter adds to a message it holds
/// (`quarantine; ...`), when `headers` (as `postcat -h` prints them) carry one. The
/// milter removes every such header a message came with before it adds its own (see
/// `milter::apply`), so a held message that carries one was held by fanout-milter; a
/// `tag` or monitored (`accept (monitor: ...)`) value is not a hold of ours.
fn held_by_us(headers: &str) -> Option<String> {
    let mut lines = headers.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim_end().eq_ignore_ascii_case(VERDICT_HEADER) {
            continue;
        }
        let mut value = value.trim().to_owned();
        while let Some(more) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
            value.push(' ');
            value.push_str(more.trim());
        }
        let action = value.split([';', ' ']).next().unwrap_or("");
        if action == "quarantine" {
            return Some(value);
        }
    }
    None
}

impl Review<'_> {
    pub(super) fn entry(&self, action: &str, comment: Option<String>) -> AuditEntry {
        AuditEntry {
            at: self.now,
            who: self.who.clone(),
            action: action.to_owned(),
            comment,
        }
    }

    /// The held record of the queue id `raw`, or why it cannot be acted on: not a
    /// queue id, no record, no longer held, or held by another tool (`foreign_ok`
    /// not given).
    pub fn held_record(&self, raw: &str, foreign_ok: bool) -> Result<Record, String> {
        let address = self.address(raw)?;
        let id = address.queue_id;
        let r = self.store.get_on(address.relay.as_deref(), &id).map_err(|e| {
            format!(
                "{e}; `fanout-milter quarantine reconcile` records messages held without a record"
            )
        })?;
        if r.state != State::Held {
            return Err(format!(
                "{id} is {} already (since {})",
                r.state,
                text::utc_seconds(r.state_at)
            ));
        }
        if r.foreign && !foreign_ok {
            return Err(format!(
                "{id} was held by another tool (a content filter, header_checks HOLD or \
                 postsuper -h), not by fanout-milter; add --foreign to act on it anyway"
            ));
        }
        Ok(r)
    }

    /// A message named `QUEUEID` (this relay's record) or, in a fleet-wide store,
    /// `RELAY:QUEUEID` (see [`Address`]).
    pub fn address(&self, raw: &str) -> Result<Address, String> {
        let address = Address::parse(raw)?;
        if address.relay.is_some() && self.store.relay().is_none() {
            return Err(format!(
                "{}: RELAY:QUEUEID names a relay, which only a fleet-wide store has \
                 ([quarantine] store = \"postgres\")",
                text::neutralize(raw)
            ));
        }
        Ok(address)
    }

    /// Releases one held record: the one path of the admin commands and the worker
    /// (the sweep's expiry claims its own state, then shares [`Review::released`]).
    /// The record is claimed first (held -> released, audit entry `release`), so
    /// that of a release and a discard racing for one message only the one whose
    /// state change applies acts on Postfix; then `postsuper -H`. Returns postsuper's
    /// words, or why not (the record back to held when Postfix refused).
    pub(super) fn release_record(&self, r: &Record, comment: Option<String>) -> Acted {
        self.claim_record(r, State::Released, "release", comment)?;
        self.released(r, State::Released)
    }

    /// `postsuper -H` for a record already claimed as `claimed`; back to held when
    /// Postfix refuses.
    pub(super) fn released(&self, r: &Record, claimed: State) -> Acted {
        self.postfix
            .release(&r.message.queue_id)
            .map_err(|e| self.unclaim(r, claimed, &e.to_string()))
    }

    /// Discards one held record (the one path, as [`Review::release_record`]):
    /// claimed as discarded, then `postsuper -d ID hold`. Returns postsuper's words.
    pub(super) fn discard_record(&self, r: &Record, comment: Option<String>) -> Acted {
        self.claim_record(r, State::Discarded, "discard", comment)?;
        self.deleted(r, State::Discarded)
    }

    /// `postsuper -d ID hold` for a record already claimed as `claimed`; back to held
    /// when Postfix refuses.
    pub(super) fn deleted(&self, r: &Record, claimed: State) -> Acted {
        self.postfix
            .delete_held(&r.message.queue_id)
            .map_err(|e| self.unclaim(r, claimed, &e.to_string()))
    }

    /// Moves a held record to `to` with an audit entry: the claim before Postfix acts.
    pub(super) fn claim_record(
        &self,
        r: &Record,
        to: State,
        action: &str,
        comment: Option<String>,
    ) -> Result<(), String> {
        self.store
            .set_state(r.id, State::Held, to, &self.entry(action, comment))
            .map_err(|e| format!("{}: {e}", r.message.queue_id))
    }

    /// Puts a claimed record back to held after Postfix refused the action; returns
    /// the error to report.
    pub(super) fn unclaim(&self, r: &Record, claimed: State, error: &str) -> String {
        let id = &r.message.queue_id;
        let entry = self.entry("undo", Some(format!("Postfix refused: {error}")));
        match self.store.set_state(r.id, claimed, State::Held, &entry) {
            Ok(()) => format!("{id}: {error}"),
            Err(e) => format!("{id}: {error}; and the record stays {claimed}: {e}"),
        }
    }

    /// Tells the sender what became of their message (`outcome`, with the reviewer's
    /// words when given), from the `[notices]` templates; recorded in the audit trail.
    pub(super) fn notify_sender(&self, r: &Record, outcome: Outcome<'_>, report: &mut Report) {
        let m = &r.message;
        let id = &m.queue_id;
        if m.sender.is_empty() {
            report.line(format!("{id}: null sender, nobody to notify"));
            return;
        }
        let mut facts = super::notice_facts(
            r,
            &self.config.quarantine,
            &self.config.replies.contact,
            None,
        );
        let kind = match outcome {
            Outcome::Released { words } => {
                facts.comment = words.map(str::to_owned);
                NoticeKind::Released
            }
            Outcome::ReleasedTo { to, words } => {
                facts.comment = words.map(str::to_owned);
                facts.released_to = to.to_vec();
                NoticeKind::ReleasedTo
            }
            Outcome::Discarded { words } => {
                facts.comment = words.map(str::to_owned);
                NoticeKind::Discarded
            }
            Outcome::Expired => NoticeKind::Expired,
            Outcome::Unconfirmed => NoticeKind::Unconfirmed,
            Outcome::Withdrawn => NoticeKind::Withdrawn,
        };
        let rendered = self.config.notices.render(kind, &facts);
        let result = compose(&self.config.notify.from, &m.sender, rendered)
            .map_err(|e| e.to_string())
            .and_then(|n| {
                notify::send_mail(
                    &self.config.postfix,
                    "",
                    std::slice::from_ref(&m.sender),
                    &n,
                )
                .map_err(|e| e.to_string())
            });
        let shown = text::neutralize(&m.sender);
        let (comment, ok) = match &result {
            Ok(()) => (format!("{} notice sent to {shown}", kind.as_str()), true),
            Err(e) => (
                format!("{} notice to {shown} failed: {e}", kind.as_str()),
                false,
            ),
        };
        let _ = self
            .store
            .audit(r.id, &self.entry("notify-sender", Some(comment.clone())));
        if ok {
            report.line(format!("{id}: {comment}"));
        } else {
            report.fail(format!("{id}: {comment}"));
        }
    }

    /// `quarantine reconcile`: compares the store with the hold queue both ways.
    /// Messages found held without a record are recorded as foreign.
    pub fn reconcile(&self) -> Report {
        self.reconcile_adopting().0
    }

    /// [`Review::reconcile`], also returning the queue ids it recorded as foreign.
    pub(super) fn reconcile_adopting(&self) -> (Report, Vec<QueueId>) {
        let mut report = Report::default();
        let mut adopted = Vec::new();
        let queue = match self.postfix.queue() {
            Ok(q) => q,
            Err(e) => {
                report.fail(format!("cannot read Postfix's queue: {e}"));
                return (report, adopted);
            }
        };
        let held = match self.held_records() {
            Ok(h) => h,
            Err(e) => {
                report.fail(e.to_string());
                return (report, adopted);
            }
        };
        let mut records = held;
        if let Err(e) = self.add_earlier_records(&queue, &mut records) {
            report.fail(e.to_string());
            return (report, adopted);
        }
        // Read after the records: a request filed since is seen here, and one claimed
        // after this is still refused by the store (`set_state_unrequested`).
        let busy: HashSet<i64> = match self.store.open_requests() {
            Ok(open) => open.into_iter().map(|r| r.held_id).collect(),
            Err(e) => {
                report.fail(e.to_string());
                return (report, adopted);
            }
        };
        let held = records.iter().filter(|r| r.state == State::Held).count();
        let plan = plan_reconcile(&records, &queue, &busy, self.now);
        let waiting = records
            .iter()
            .filter(|r| busy.contains(&r.id))
            .map(|r| r.message.queue_id.to_string())
            .collect::<Vec<_>>();
        if !waiting.is_empty() {
            report.line(format!(
                "left alone while a request for them is open (the worker's to settle): {}",
                waiting.join(", ")
            ));
        }
        for q in &plan.adopt {
            match self.adopt(q) {
                Ok((id, false)) => {
                    report.line(format!(
                        "{id}: in the hold queue without a record: held by another tool, \
                         recorded as foreign (the sweep leaves it alone)"
                    ));
                    adopted.push(id);
                }
                Ok((id, true)) => report.line(format!(
                    "{id}: in the hold queue without a record, but carrying fanout-milter's \
                     {VERDICT_HEADER}: recorded as held by fanout-milter (reviewed and \
                     expired like the others)"
                )),
                Err(e) => report.fail(format!("{}: {e}", q.queue_id)),
            }
        }
        for (row, id, was) in &plan.restore {
            let comment = format!(
                "back in the hold queue after reconcile marked it {was}: held by fanout-milter"
            );
            match self.store.set_state_unrequested(
                *row,
                *was,
                State::Held,
                &self.entry("reconcile", Some(comment)),
            ) {
                Ok(()) => report.line(format!(
                    "{id}: back in the hold queue: its record is held again (was {was})"
                )),
                Err(StoreError::RequestOpen { .. }) => report.line(format!(
                    "{id}: a request was filed meanwhile: left to the worker"
                )),
                Err(e) => report.fail(format!("{id}: {e}")),
            }
        }
        for (row, id, queue_name) in &plan.released {
            let comment = format!(
                "left the hold queue outside fanout-milter; now in Postfix's {queue_name} queue"
            );
            match self.store.set_state_unrequested(
                *row,
                State::Held,
                State::Released,
                &self.entry("reconcile", Some(comment)),
            ) {
                Ok(()) => report.line(format!(
                    "{id}: released outside fanout-milter: marked released"
                )),
                Err(StoreError::RequestOpen { .. }) => report.line(format!(
                    "{id}: a request was filed meanwhile: left to the worker"
                )),
                Err(e) => report.fail(format!("{id}: {e}")),
            }
        }
        for (row, id) in &plan.gone {
            let comment =
                "gone from Postfix's queue: deleted outside fanout-milter, or never queued"
                    .to_owned();
            match self.store.set_state_unrequested(
                *row,
                State::Held,
                State::Discarded,
                &self.entry("reconcile", Some(comment)),
            ) {
                Ok(()) => report.line(format!("{id}: gone from Postfix: marked discarded")),
                Err(StoreError::RequestOpen { .. }) => report.line(format!(
                    "{id}: a request was filed meanwhile: left to the worker"
                )),
                Err(e) => report.fail(format!("{id}: {e}")),
            }
        }
        if plan.is_empty() {
            report.line(format!("store and hold queue agree ({held} held)"));
        }
        (report, adopted)
    }

    /// Adds to `records` the newest record of each message in the hold queue that has
    /// no held record, so that reconcile can tell our own message back in the hold
    /// queue from another tool's.
    fn add_earlier_records(
        &self,
        queue: &[QueuedMessage],
        records: &mut Vec<Record>,
    ) -> Result<(), crate::quarantine::StoreError> {
        for q in queue.iter().filter(|q| q.queue_name == "hold") {
            if records
                .iter()
                .any(|r| r.message.queue_id.as_str() == q.queue_id)
            {
                continue;
            }
            let Ok(id) = QueueId::parse(&q.queue_id) else {
                continue;
            };
            match self.store.get(&id) {
                Ok(r) => records.push(r),
                Err(crate::quarantine::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records a message found in the hold queue, with what Postfix knows of it. One
    /// that carries fanout-milter's own quarantine header ([`held_by_us`]) is recorded
    /// as held by fanout-milter (true), any other as foreign (false).
    fn adopt(&self, q: &QueuedMessage) -> Result<(QueueId, bool), String> {
        let id = QueueId::parse(&q.queue_id).map_err(|e| e.to_string())?;
        let headers = self.postfix.headers(&id).unwrap_or_default();
        let verdict = held_by_us(&headers);
        let parsed = mail_parser::MessageParser::new().parse_headers(headers.as_bytes());
        let subject = parsed.as_ref().and_then(|p| p.subject()).map(str::to_owned);
        let message_id = parsed
            .as_ref()
            .and_then(|p| p.message_id())
            .map(|m| format!("<{m}>"));
        let recipients: Vec<String> = q
            .recipients
            .iter()
            .map(|r| r.address.to_lowercase())
            .collect();
        let held_at = if q.arrival_time > 0 {
            q.arrival_time
        } else {
            self.now
        };
        let msg = HeldMessage {
            queue_id: id.clone(),
            held_at,
            sender: q.sender.clone(),
            sasl_login: None,
            client: None,
            audience: recipients.len() as u64,
            external: 0,
            lists: Vec::new(),
            top_domains: Vec::new(),
            visible: Vec::new(),
            thread_key: match &message_id {
                Some(m) => format!("mid:{}", m.trim_matches(['<', '>']).to_lowercase()),
                None => format!(
                    "subj:{}",
                    normalize_subject(subject.as_deref().unwrap_or(""))
                ),
            },
            subject,
            message_id,
            recipients,
            rules: vec![match &verdict {
                Some(value) => RuleHit {
                    rule: "reconcile".into(),
                    action: "quarantine".into(),
                    message: format!(
                        "found in Postfix's hold queue without a record in this store, \
                         held by fanout-milter ({VERDICT_HEADER}: {})",
                        text::neutralize_capped(value, 300)
                    ),
                },
                None => RuleHit {
                    rule: "reconcile".into(),
                    action: "quarantine".into(),
                    message: "found in Postfix's hold queue without a fanout-milter record: \
                              held by another tool (a content filter, header_checks HOLD or \
                              postsuper -h); fanout-milter leaves it alone"
                        .into(),
                },
            }],
            recorded_by: "reconcile".into(),
            headers: Vec::new(),
            confirm: false,
            notify_sender: false,
            confirm_key: None,
        };
        let recorded = if verdict.is_some() {
            self.store.record_held(
                &msg,
                &self.who,
                Some(
                    "found in the hold queue by reconcile, with fanout-milter's quarantine header",
                ),
            )
        } else {
            self.store.record_foreign(
                &msg,
                &self.who,
                Some("found in the hold queue by reconcile"),
            )
        };
        recorded.map_err(|e| e.to_string())?;
        Ok((id, verdict.is_some()))
    }

    pub(super) fn held_records(&self) -> Result<Vec<Record>, crate::quarantine::StoreError> {
        self.store.list(&Filter {
            state: Some(State::Held),
            since: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::plan::plan_sweep;

    /// Stub postqueue and postcat in a bin directory: `queue` is `postqueue -j`'s output,
    /// postcat prints `headers` for AAAAAA1 and a plain Subject for the others.
    fn stub_postfix(dir: &std::path::Path, queue: &str, headers: &str) -> Config {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, body) in [
            ("postqueue", format!("cat <<'END'\n{queue}\nEND\n")),
            (
                "postcat",
                format!(
                    "case \"$*\" in *AAAAAA1) cat <<'END'\n{headers}\nEND\n;; *) echo 'Subject: x';; esac\n"
                ),
            ),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut config = crate::config::parse(
            "[domains]\ninternal = [\"example.org\"]\n",
            std::path::Path::new("/test.toml"),
        )
        .unwrap();
        config.postfix.command_directory = bin;
        config
    }

    #[test]
    fn a_held_message_with_our_quarantine_header_is_adopted_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let queue = [
            r#"{"queue_name":"hold","queue_id":"AAAAAA1","arrival_time":1000,"sender":"ann@example.org","recipients":[{"address":"all@example.org"}]}"#,
            r#"{"queue_name":"hold","queue_id":"BBBBBB2","arrival_time":1000,"sender":"bob@example.org","recipients":[]}"#,
            r#"{"queue_name":"hold","queue_id":"CCCCCC3","arrival_time":1000,"sender":"cy@example.org","recipients":[]}"#,
        ]
        .join("\n");
        let headers = "Subject: all hands\nX-Fanout-Verdict: quarantine; audience 840,000\n\tvia all@example.org\nMessage-ID: <1@example.org>";
        let config = stub_postfix(dir.path(), &queue, headers);
        let store = Store::open(dir.path()).unwrap();
        let mut tagged = crate::quarantine::store::tests::held("CCCCCC3", 1002);
        tagged.recorded_by = "milter".into();
        let row = store.record_held(&tagged, "milter", None).unwrap();
        let released = AuditEntry {
            at: 1003,
            who: "reconcile".into(),
            action: "reconcile".into(),
            comment: None,
        };
        store
            .set_state(row, State::Held, State::Released, &released)
            .unwrap();
        let review = Review {
            config: &config,
            store: &store,
            postfix: PostfixTools::new(config.postfix.clone()),
            who: "root".into(),
            now: 2000,
        };
        let report = review.reconcile();
        assert_eq!(report.failed, 0, "{}", report.text);
        let get = |id: &str| store.get(&QueueId::parse(id).unwrap()).unwrap();
        let ours = get("AAAAAA1");
        assert_eq!(
            (ours.state, ours.foreign),
            (State::Held, false),
            "{}",
            report.text
        );
        assert_eq!(ours.message.held_at, 1000, "reviewed from its arrival");
        assert!(
            ours.message.rules[0]
                .message
                .contains("quarantine; audience 840,000 via all@example.org"),
            "{:?}",
            ours.message.rules
        );
        let theirs = get("BBBBBB2");
        assert_eq!((theirs.state, theirs.foreign), (State::Held, true));
        let restored = get("CCCCCC3");
        assert_eq!(
            (restored.id, restored.state, restored.foreign),
            (row, State::Held, false)
        );
        assert_eq!(
            store.list(&Filter::default()).unwrap().len(),
            3,
            "no second record for CCCCCC3"
        );
        assert_eq!(restored.audit.last().unwrap().action, "reconcile");
        assert!(
            report.text.contains("CCCCCC3: back in the hold queue"),
            "{}",
            report.text
        );
        let steps = plan_sweep(
            &store.list(&Filter::default()).unwrap(),
            1002 + 4 * 3600,
            &config.quarantine,
        );
        assert_eq!(
            steps.len(),
            2,
            "ours escalate, the foreign one does not: {steps:?}"
        );
    }

    /// Reconcile leaves a record alone while a request for it is open: the worker's
    /// release has moved the message out of the hold queue (not "released outside
    /// fanout-milter"), its discard has deleted it (not "gone"), its release-to has
    /// marked the original while it is still held (not "back in the hold queue"). A
    /// record without a request is reconciled as before.
    #[test]
    fn reconcile_leaves_records_with_an_open_request_to_the_worker() {
        use crate::quarantine::{NewRequest, QuarantineIndex, RequestAction, Via};
        let dir = tempfile::tempdir().unwrap();
        let queue = [
            r#"{"queue_name":"active","queue_id":"AAAAAA1","arrival_time":1000,"sender":"ann@example.org","recipients":[]}"#,
            r#"{"queue_name":"hold","queue_id":"CCCCCC3","arrival_time":1000,"sender":"ann@example.org","recipients":[]}"#,
        ]
        .join("\n");
        let config = stub_postfix(dir.path(), &queue, "Subject: x");
        let store = Store::open(dir.path()).unwrap();
        let mut rows = Vec::new();
        for id in ["AAAAAA1", "BBBBBB2", "CCCCCC3", "DDDDDD4"] {
            let mut m = crate::quarantine::store::tests::held(id, 1000);
            m.recorded_by = "milter".into();
            rows.push(store.record_held(&m, "milter", None).unwrap());
        }
        let file = |id: &str, action: RequestAction| {
            store
                .submit(
                    None,
                    &NewRequest {
                        queue_id: QueueId::parse(id).unwrap(),
                        action,
                        who: "rita".into(),
                        via: Via::Desk,
                        remote: None,
                        comment: "ok".into(),
                        at: 1500,
                    },
                )
                .unwrap()
        };
        let running = file("AAAAAA1", RequestAction::Release);
        assert!(store.claim(running.id, 1501).unwrap());
        file(
            "BBBBBB2",
            RequestAction::Discard {
                notify_sender: false,
            },
        );
        let copying = file(
            "CCCCCC3",
            RequestAction::ReleaseTo {
                recipients: vec!["all@example.org".into()],
            },
        );
        assert!(store.claim(copying.id, 1501).unwrap());
        let worker = AuditEntry {
            at: 1502,
            who: "worker".into(),
            action: "release-to".into(),
            comment: None,
        };
        store
            .set_state(rows[2], State::Held, State::Released, &worker)
            .unwrap();
        let review = Review {
            config: &config,
            store: &store,
            postfix: PostfixTools::new(config.postfix.clone()),
            who: "root".into(),
            now: 2000,
        };
        let report = review.reconcile();
        assert_eq!(report.failed, 0, "{}", report.text);
        let state = |id: &str| store.get(&QueueId::parse(id).unwrap()).unwrap().state;
        assert_eq!(state("AAAAAA1"), State::Held, "{}", report.text);
        assert_eq!(state("BBBBBB2"), State::Held);
        assert_eq!(state("CCCCCC3"), State::Released, "not put back to held");
        assert_eq!(
            store.list(&Filter::default()).unwrap().len(),
            4,
            "none adopted"
        );
        assert_eq!(state("DDDDDD4"), State::Discarded, "no request: gone");
        assert!(
            report.text.contains(
                "left alone while a request for them is open (the worker's to settle): \
                 AAAAAA1, BBBBBB2, CCCCCC3"
            ),
            "{}",
            report.text
        );
        // A request filed after reconcile planned is still respected by the store.
        let mut late = crate::quarantine::store::tests::held("EEEEEE5", 1000);
        late.recorded_by = "milter".into();
        let row = store.record_held(&late, "milter", None).unwrap();
        file("EEEEEE5", RequestAction::Release);
        let refused = store.set_state_unrequested(row, State::Held, State::Discarded, &worker);
        assert!(matches!(refused, Err(StoreError::RequestOpen { .. })));
    }

    #[test]
    fn only_our_quarantine_header_makes_a_hold_ours() {
        assert!(held_by_us("Subject: x\nx-fanout-verdict: quarantine; a").is_some());
        for other in [
            "X-Fanout-Verdict: tag; audience 300",
            "X-Fanout-Verdict: accept (monitor: would quarantine); a",
            "X-Other: X-Fanout-Verdict: quarantine",
            "Subject: X-Fanout-Verdict: quarantine",
            "",
        ] {
            assert_eq!(held_by_us(other), None, "{other}");
        }
    }
}
