// SPDX-License-Identifier: GPL-3.0-or-later
//! The executor of action requests (see [`super::index`]): what the root worker and the
//! admin commands run for each request. A request is claimed, carried out through the
//! same path as the admin commands and the sweep ([`Review`]), and finished with what
//! the Postfix tool said: `done` only after the tool confirmed it.
//!
//! A request found `running` when the worker starts was cut short by a crash; it is
//! finished from the facts ([`Executor::resume`]): whether the message is still in
//! Postfix's hold queue, and what its record says. postsuper acts on a message in the
//! hold queue at most once (a released or deleted message is no longer there), so
//! running a step again can never deliver a message twice.

use super::index::{
    NewRequest, QuarantineIndex, Request, RequestAction, RequestState, SubmitError, Via,
};
use super::postfix::{PostfixTools, QueuedMessage};
use super::record::{Record, State};
use super::review::{Acted, Report, Review};
use super::store::{Store, StoreError};
use crate::config::Config;
use crate::notify::NoticeReason;
use crate::text;
use std::time::{Duration, Instant};

/// The comment of a request filed at the shell without `--comment`: it is not the
/// reviewer's words, so a notice to the sender leaves it out.
pub const CLI_COMMENT: &str = "from the command line";

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Done (the tool confirmed it) or failed.
    pub ok: bool,
    /// What the tool said, or why it failed.
    pub result: String,
}

/// Carries out requests on one relay's store and Postfix.
pub struct Executor<'a> {
    /// The configuration (`[postfix]`, `[notify]`, `[reply] contact`).
    pub config: &'a Config,
    /// The quarantine store.
    pub store: &'a Store,
    /// Postfix's tools.
    pub postfix: PostfixTools,
}

/// Where a message stands in Postfix's queue.
enum InQueue {
    /// In the hold queue.
    Held,
    /// In another queue (`active`, `deferred`, ...).
    Elsewhere(String),
    /// Not in the queue at all.
    Gone,
}

impl Executor<'_> {
    /// The review context acting for `request`'s requester at `now`.
    fn review(&self, request: &Request, now: u64) -> Review<'_> {
        Review {
            config: self.config,
            store: self.store,
            postfix: self.postfix.clone(),
            who: request.who.clone(),
            now,
        }
    }

    /// Claims a pending request, carries it out and records the outcome. `None` when
    /// it was no longer pending (another worker or command took it).
    pub fn execute(&self, request: &Request, now: u64) -> Result<Option<Executed>, StoreError> {
        if !self.store.claim(request.id, now)? {
            return Ok(None);
        }
        let outcome = self.act(request, now);
        self.finished(request, outcome, now).map(Some)
    }

    /// Finishes a request found running at start (the worker stopped while carrying
    /// it out), deciding from the facts what is left to do.
    pub fn resume(&self, request: &Request, now: u64) -> Result<Executed, StoreError> {
        let outcome = self.resumed(request, now);
        self.finished(request, outcome, now)
    }

    /// Files `request` and carries it out at once: how the admin commands act, so that
    /// they work as root without the worker running. When the worker claimed it
    /// first, waits for the worker's outcome (at most `wait`). Err when it could not
    /// be filed (another request is open, the message is not held) or its outcome
    /// not learnt.
    pub fn file_and_execute(
        &self,
        request: &NewRequest,
        wait: Duration,
    ) -> Result<Executed, String> {
        let filed = self.store.submit(request).map_err(|e| match e {
            SubmitError::Conflict(m) => format!("{m}: nothing done"),
            e => e.to_string(),
        })?;
        if let Some(done) = self
            .execute(&filed, request.at)
            .map_err(|e| e.to_string())?
        {
            return Ok(done);
        }
        let deadline = Instant::now() + wait;
        loop {
            let now = self
                .store
                .requests(filed.held_id)
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|r| r.id == filed.id);
            if let Some(r) = now.filter(|r| !r.state.is_open()) {
                return Ok(Executed {
                    ok: r.state == RequestState::Done,
                    result: r.result.unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: request {} is being carried out by the worker; see `quarantine show {}`",
                    filed.queue_id, filed.id, filed.queue_id
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn finished(
        &self,
        request: &Request,
        outcome: Acted,
        now: u64,
    ) -> Result<Executed, StoreError> {
        let (ok, result) = match outcome {
            Ok(r) => (true, r),
            Err(r) => (false, r),
        };
        self.store.finish(request.id, ok, &result, now)?;
        Ok(Executed { ok, result })
    }

    /// The audit comment of an action taken for `request`: the requester's comment,
    /// the request and where it came from.
    fn comment(request: &Request) -> String {
        format!(
            "{} (request {} via {}{})",
            request.comment,
            request.id,
            request.via.as_str(),
            request
                .remote
                .as_deref()
                .map(|r| format!(" from {r}"))
                .unwrap_or_default()
        )
    }

    /// The reviewer's words for a notice to the sender: the request's comment, unless
    /// it is the command line's default.
    fn words(request: &Request) -> Option<&str> {
        (request.via != Via::Cli || request.comment != CLI_COMMENT)
            .then_some(request.comment.as_str())
    }

    /// The request's record, held.
    fn held_record(&self, request: &Request) -> Result<Record, String> {
        let r = self
            .store
            .record_by_id(request.held_id)
            .map_err(|e| e.to_string())?;
        if r.state != State::Held {
            return Err(Self::not_held(&r));
        }
        Ok(r)
    }

    fn not_held(r: &Record) -> String {
        format!(
            "{} is {} already (since {}): nothing done",
            r.message.queue_id,
            r.state,
            text::utc_seconds(r.state_at)
        )
    }

    /// Carries out a claimed request on a held record.
    fn act(&self, request: &Request, now: u64) -> Acted {
        let r = self.held_record(request)?;
        let review = self.review(request, now);
        let comment = Self::comment(request);
        let id = &r.message.queue_id;
        match &request.action {
            RequestAction::Release => review
                .release_record(&r, Some(comment))
                .map(|words| format!("{id}: released for delivery ({words})")),
            RequestAction::Discard { notify_sender } => {
                let words = review.discard_record(&r, Some(comment))?;
                let done = format!("{id}: discarded ({words})");
                Ok(self.notified(&review, &r, request, *notify_sender, done))
            }
            RequestAction::Extend { until } => {
                let entry = review.entry(
                    "extend",
                    Some(format!(
                        "held until {}: {}",
                        text::utc_seconds(*until),
                        comment
                    )),
                );
                self.store
                    .set_hold_until(r.id, *until, &entry)
                    .map(|()| format!("{id}: held until {}", text::utc_seconds(*until)))
                    .map_err(|e| format!("{id}: {e}"))
            }
            RequestAction::ReleaseTo { .. } => Err(format!(
                "{id}: release to chosen recipients is not available yet: nothing done"
            )),
        }
    }

    /// `done`, followed by the notice to the sender when asked for.
    fn notified(
        &self,
        review: &Review<'_>,
        r: &Record,
        request: &Request,
        notify_sender: bool,
        done: String,
    ) -> String {
        if !notify_sender {
            return done;
        }
        let mut report = Report::default();
        let why = NoticeReason::Discarded {
            words: Self::words(request),
        };
        review.notify_sender(r, why, &mut report);
        let said = report.text.trim().replace('\n', "; ");
        format!("{done}; {said}")
    }

    fn in_queue(&self, r: &Record) -> Result<InQueue, String> {
        let queue: Vec<QueuedMessage> = self
            .postfix
            .queue()
            .map_err(|e| format!("cannot read Postfix's queue: {e}"))?;
        Ok(
            match queue
                .into_iter()
                .find(|q| q.queue_id == r.message.queue_id.as_str())
            {
                Some(q) if q.queue_name == "hold" => InQueue::Held,
                Some(q) => InQueue::Elsewhere(q.queue_name),
                None => InQueue::Gone,
            },
        )
    }

    /// What is left of a request the worker stopped in: its record and the queue say
    /// how far it got.
    fn resumed(&self, request: &Request, now: u64) -> Acted {
        let r = self
            .store
            .record_by_id(request.held_id)
            .map_err(|e| e.to_string())?;
        let id = r.message.queue_id.clone();
        let queue = self.in_queue(&r)?;
        let review = self.review(request, now);
        let again = "after the worker stopped";
        match (&request.action, r.state, queue) {
            // Not begun: the record was never claimed, the message is still held.
            (_, State::Held, InQueue::Held) => self.act(request, now),
            (_, State::Held, InQueue::Elsewhere(q)) => Err(format!(
                "{id}: left the hold queue outside fanout-milter (now in Postfix's {q} \
                 queue): nothing done"
            )),
            (_, State::Held, InQueue::Gone) => Err(format!(
                "{id}: no longer in Postfix's queue (deleted outside fanout-milter): \
                 nothing done"
            )),
            // Claimed, postsuper not run yet: the message is still held, so this is
            // its first and only release or deletion.
            (RequestAction::Release, State::Released, InQueue::Held) => review
                .released(&r, State::Released)
                .map(|w| format!("{id}: released for delivery {again} ({w})")),
            (RequestAction::Discard { notify_sender }, State::Discarded, InQueue::Held) => {
                let words = review.deleted(&r, State::Discarded)?;
                let done = format!("{id}: discarded {again} ({words})");
                Ok(self.notified(&review, &r, request, *notify_sender, done))
            }
            // postsuper had done it.
            (RequestAction::Release, State::Released, _) => Ok(format!(
                "{id}: released before the worker stopped (no longer in the hold queue)"
            )),
            (RequestAction::Discard { notify_sender }, State::Discarded, InQueue::Gone) => {
                let since = request.started_at.unwrap_or(request.requested_at);
                let noticed = r
                    .audit
                    .iter()
                    .any(|a| a.action == "notify-sender" && a.at >= since);
                let done = format!("{id}: discarded before the worker stopped");
                Ok(self.notified(&review, &r, request, *notify_sender && !noticed, done))
            }
            (RequestAction::Discard { .. }, State::Discarded, InQueue::Elsewhere(q)) => {
                Err(format!(
                    "{id}: recorded as discarded, but in Postfix's {q} queue: released \
                     outside fanout-milter?"
                ))
            }
            _ => Err(Self::not_held(&r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::record::QueueId;
    use crate::quarantine::store::tests::held;
    use std::path::Path;

    /// Stub postsuper, postqueue and sendmail in `dir/bin`. postsuper logs its
    /// arguments to `dir/postsuper.log` and acts on a message only while `dir/held`
    /// names it (as Postfix's hold queue would); postqueue -j lists it as held then;
    /// sendmail keeps the last message in `dir/sent`.
    fn stub(dir: &Path) -> Config {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let d = dir.display();
        for (name, body) in [
            (
                "postsuper",
                format!(
                    "echo \"$*\" >> {d}/postsuper.log\n\
                     id=$4\n\
                     if grep -qx \"$id\" {d}/held 2>/dev/null; then\n\
                       grep -vx \"$id\" {d}/held > {d}/held.new; mv {d}/held.new {d}/held\n\
                       case \"$3\" in -H) echo 'postsuper: Released from hold: 1 message' >&2;;\n\
                       *) echo \"postsuper: $id: removed\" >&2; echo 'postsuper: Deleted: 1 message' >&2;; esac\n\
                     fi\n"
                ),
            ),
            (
                "postqueue",
                format!(
                    "[ \"$3\" = -j ] || exit 0\n\
                     for id in $(cat {d}/held 2>/dev/null); do\n\
                       echo \"{{\\\"queue_name\\\": \\\"hold\\\", \\\"queue_id\\\": \\\"$id\\\"}}\"\n\
                     done\n"
                ),
            ),
            ("sendmail", format!("cat > {d}/sent\n")),
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
        config.postfix.command_directory = bin.clone();
        config.postfix.sendmail = bin.join("sendmail");
        config
    }

    struct Fixture {
        dir: tempfile::TempDir,
        config: Config,
        store: Store,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let config = stub(dir.path());
            let store = Store::open(&dir.path().join("state")).unwrap();
            Fixture { dir, config, store }
        }

        fn executor(&self) -> Executor<'_> {
            Executor {
                config: &self.config,
                store: &self.store,
                postfix: PostfixTools::new(self.config.postfix.clone()),
            }
        }

        /// A held record for `id`, in the stub's hold queue.
        fn hold(&self, id: &str) {
            self.store
                .record_held(&held(id, 100), "milter", None)
                .unwrap();
            let list = self.dir.path().join("held");
            let mut ids = std::fs::read_to_string(&list).unwrap_or_default();
            ids.push_str(id);
            ids.push('\n');
            std::fs::write(list, ids).unwrap();
        }

        fn file(&self, id: &str, action: RequestAction) -> Request {
            self.store
                .submit(&NewRequest {
                    queue_id: QueueId::parse(id).unwrap(),
                    action,
                    who: "carol".into(),
                    via: Via::Desk,
                    remote: Some("192.0.2.7".into()),
                    comment: "wrong list, resend to the team".into(),
                    at: 200,
                })
                .unwrap()
        }

        fn postsuper_calls(&self) -> usize {
            std::fs::read_to_string(self.dir.path().join("postsuper.log"))
                .unwrap_or_default()
                .lines()
                .count()
        }

        fn record(&self, id: &str) -> Record {
            self.store.get(&QueueId::parse(id).unwrap()).unwrap()
        }

        fn request(&self, r: &Request) -> Request {
            self.store.requests(r.held_id).unwrap().pop().unwrap()
        }
    }

    #[test]
    fn a_release_is_done_with_postsupers_words_and_names_the_requester() {
        let f = Fixture::new();
        f.hold("AAAAAA1");
        let rq = f.file("AAAAAA1", RequestAction::Release);
        let done = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.ok, "{done:?}");
        assert!(
            done.result.contains("Released from hold: 1 message"),
            "{done:?}"
        );
        let stored = f.request(&rq);
        assert_eq!(stored.state, RequestState::Done);
        assert_eq!(stored.result.as_deref(), Some(done.result.as_str()));
        let r = f.record("AAAAAA1");
        assert_eq!(r.state, State::Released);
        let last = r.audit.last().unwrap();
        assert_eq!(
            (last.who.as_str(), last.action.as_str()),
            ("carol", "release")
        );
        assert_eq!(
            last.comment.as_deref(),
            Some("wrong list, resend to the team (request 1 via desk from 192.0.2.7)")
        );
        assert_eq!(
            f.executor().execute(&rq, 301).unwrap(),
            None,
            "a request is carried out once"
        );
        assert_eq!(f.postsuper_calls(), 1);
    }

    #[test]
    fn a_message_deleted_behind_our_back_fails_with_postsupers_words_and_stays_held() {
        let f = Fixture::new();
        f.hold("AAAAAA1");
        let rq = f.file("AAAAAA1", RequestAction::Release);
        std::fs::write(f.dir.path().join("held"), "").unwrap();
        let failed = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(!failed.ok);
        assert!(
            failed.result.contains("not in Postfix's hold queue"),
            "{failed:?}"
        );
        assert_eq!(f.request(&rq).state, RequestState::Failed);
        let r = f.record("AAAAAA1");
        assert_eq!(r.state, State::Held, "the record stays held");
        assert_eq!(r.audit.last().unwrap().action, "undo");
    }

    #[test]
    fn a_discard_tells_the_sender_the_reviewers_words() {
        let f = Fixture::new();
        f.hold("AAAAAA1");
        let rq = f.file(
            "AAAAAA1",
            RequestAction::Discard {
                notify_sender: true,
            },
        );
        let done = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.ok, "{done:?}");
        assert!(done.result.contains("Deleted: 1 message"), "{done:?}");
        assert!(
            done.result.contains("notice sent to ann@example.org"),
            "{done:?}"
        );
        let sent = std::fs::read_to_string(f.dir.path().join("sent")).unwrap();
        assert!(
            sent.contains("saying:") && sent.contains("wrong list, resend to the team"),
            "{sent}"
        );
        assert_eq!(f.record("AAAAAA1").state, State::Discarded);
    }

    #[test]
    fn an_extension_keeps_the_message_held_until_then() {
        let f = Fixture::new();
        f.hold("AAAAAA1");
        let rq = f.file("AAAAAA1", RequestAction::Extend { until: 86_400 });
        let done = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.ok, "{done:?}");
        let r = f.record("AAAAAA1");
        assert_eq!((r.state, r.hold_until), (State::Held, Some(86_400)));
        assert_eq!(r.audit.last().unwrap().action, "extend");
        assert_eq!(f.postsuper_calls(), 0);
    }

    #[test]
    fn a_record_no_longer_held_fails_clearly() {
        let f = Fixture::new();
        f.hold("AAAAAA1");
        let rq = f.file("AAAAAA1", RequestAction::Release);
        let r = f.record("AAAAAA1");
        let executor = f.executor();
        executor
            .review(&rq, 250)
            .discard_record(&r, Some("by hand".into()))
            .expect("discarded meanwhile");
        let failed = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(!failed.ok);
        assert!(
            failed.result.starts_with("AAAAAA1 is discarded already"),
            "{failed:?}"
        );
    }

    #[test]
    fn a_request_cut_short_is_finished_from_the_facts_never_twice() {
        let f = Fixture::new();
        let e = f.executor();
        // Claimed, the record not yet changed: carried out now.
        f.hold("AAAAAA1");
        let a = f.file("AAAAAA1", RequestAction::Release);
        assert!(f.store.claim(a.id, 250).unwrap());
        let done = e.resume(&f.request(&a), 300).unwrap();
        assert!(done.ok, "{done:?}");
        assert_eq!(f.postsuper_calls(), 1);
        // The record claimed as released, postsuper not run: run once.
        f.hold("BBBBBB2");
        let b = f.file("BBBBBB2", RequestAction::Release);
        assert!(f.store.claim(b.id, 250).unwrap());
        let r = f.record("BBBBBB2");
        e.review(&b, 250)
            .claim_record(&r, State::Released, "release", None)
            .unwrap();
        let done = e.resume(&f.request(&b), 300).unwrap();
        assert!(
            done.ok && done.result.contains("after the worker stopped"),
            "{done:?}"
        );
        assert_eq!(f.postsuper_calls(), 2);
        // postsuper had released it: done without running it again.
        f.hold("CCCCCC3");
        let c = f.file("CCCCCC3", RequestAction::Release);
        assert!(f.store.claim(c.id, 250).unwrap());
        let r = f.record("CCCCCC3");
        e.review(&c, 250).release_record(&r, None).unwrap();
        let done = e.resume(&f.request(&c), 300).unwrap();
        assert!(
            done.ok && done.result.contains("released before"),
            "{done:?}"
        );
        assert_eq!(f.postsuper_calls(), 3, "not released a second time");
        // A discard that had deleted it but not told the sender yet.
        f.hold("DDDDDD4");
        let d = f.file(
            "DDDDDD4",
            RequestAction::Discard {
                notify_sender: true,
            },
        );
        assert!(f.store.claim(d.id, 250).unwrap());
        let r = f.record("DDDDDD4");
        e.review(&d, 250).discard_record(&r, None).unwrap();
        let done = e.resume(&f.request(&d), 300).unwrap();
        assert!(done.ok && done.result.contains("notice sent"), "{done:?}");
        assert_eq!(f.postsuper_calls(), 4);
        // Held but gone from the queue: failed, the record stays held.
        f.hold("EEEEEE5");
        let g = f.file("EEEEEE5", RequestAction::Release);
        assert!(f.store.claim(g.id, 250).unwrap());
        std::fs::write(f.dir.path().join("held"), "").unwrap();
        let failed = e.resume(&f.request(&g), 300).unwrap();
        assert!(!failed.ok && failed.result.contains("no longer in Postfix's queue"));
        assert_eq!(f.record("EEEEEE5").state, State::Held);
        assert!(f.store.open_requests().unwrap().is_empty());
    }
}
