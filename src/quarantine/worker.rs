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
//! running a step again can never deliver a message twice. The same is done for a
//! request the worker itself carried out but could not finish (the database went away
//! before the outcome was written): see [`Executor::left_over`].
//!
//! A release to chosen recipients is a copy and a deletion, carried out step by step
//! (see [`super::release_to`]).

use super::backend::Store;
use super::claimant;
use super::index::{
    NewRequest, QuarantineIndex, Request, RequestAction, RequestState, SubmitError, Via,
};
use super::postfix::{PostfixTools, QueuedMessage};
use super::record::{Record, State};
use super::review::{Acted, Outcome, Report, Review};
use super::store::StoreError;
use crate::config::Config;
use crate::text;
use std::time::{Duration, Instant};

/// The comment of a request filed at the shell without `--comment`: it is not the
/// reviewer's words, so a notice to the sender leaves it out.
pub const CLI_COMMENT: &str = "from the command line";

/// How long an admin command waits for a release to chosen recipients to finish before
/// it leaves the rest to the worker.
pub const COPY_WAIT: Duration = Duration::from_secs(60);

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Done (the tool confirmed it) or failed.
    pub ok: bool,
    /// Still running: the copy of a release to chosen recipients is on its way, and a
    /// later look finishes it.
    pub open: bool,
    /// What the tool said, or why it failed.
    pub result: String,
}

/// How far carrying out a request got.
pub(super) enum Step {
    /// Finished now: done or failed.
    Over(Acted),
    /// A release to chosen recipients is under way; the request stays running. What
    /// happened so far.
    Waiting(String),
    /// Finished already, by another process.
    Settled(Executed),
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
    pub(super) fn review(&self, request: &Request, now: u64) -> Review<'_> {
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
        let step = match &request.action {
            RequestAction::ReleaseTo { recipients } => match self.held_record(request) {
                Ok(r) => self.release_to(request, &r, recipients, now),
                Err(e) => Step::Over(Err(e)),
            },
            // Held when claimed: a release or discard that fails after this may
            // have left its record claimed anyway.
            _ => match self.held_record(request) {
                Err(e) => Step::Over(Err(e)),
                Ok(_) => match self.act(request, now) {
                    Err(e) if self.claimed_anyway(request) => Step::Waiting(format!(
                        "{e}; the record says the {} was begun: finished from the facts at \
                         the next look",
                        request.action.name()
                    )),
                    outcome => Step::Over(outcome),
                },
            },
        };
        self.settle(request, step, now).map(Some)
    }

    /// Whether a release or discard that failed left its record claimed anyway (the
    /// store committed the claim but its answer was lost, or putting the record back
    /// failed), or the record cannot be read to tell. Then the request is not finished
    /// as failed (the message would sit in the hold queue with a record that says it
    /// left) but left running for [`Executor::resume`], which decides from the facts
    /// and runs postsuper at most once.
    fn claimed_anyway(&self, request: &Request) -> bool {
        let claimed = match request.action {
            RequestAction::Release => State::Released,
            RequestAction::Discard { .. } => State::Discarded,
            _ => return false,
        };
        !self
            .store
            .record_by_id(request.held_id)
            .is_ok_and(|r| r.state != claimed)
    }

    /// Whether a running request is left over, for a worker to finish from the facts
    /// ([`Executor::resume`]): its claimant is gone (a crash), or it is this process
    /// itself, which carries out one request at a time and so is not carrying it out
    /// any more (the action ran, but writing its outcome failed: the database went away
    /// in between). A release to chosen recipients is not: it stays running while its
    /// copy is on its way ([`Executor::check_copy`]).
    ///
    /// Finishing from the facts, not writing the lost outcome again, is what never
    /// runs an action twice: postsuper acts only on a message still in the hold queue,
    /// and the record says whether the release or deletion was begun, so a release that
    /// happened is found done, never repeated; a failed finish whose COMMIT did reach
    /// the server leaves the request finished, and it is not seen again.
    pub fn left_over(request: &Request) -> bool {
        request.state == RequestState::Running
            && !matches!(request.action, RequestAction::ReleaseTo { .. })
            && (claimant::gone(request.claimed_by.as_deref())
                || request.claimed_by.as_deref() == Some(claimant::this_process().as_str()))
    }

    /// Finishes a request found running whose claimant is gone (the worker stopped
    /// while carrying it out), deciding from the facts what is left to do; it is taken
    /// over first, so that of two processes only one does it.
    pub fn resume(&self, request: &Request, now: u64) -> Result<Option<Executed>, StoreError> {
        if let RequestAction::ReleaseTo { .. } = request.action {
            return self.check_copy(request, now);
        }
        if !self
            .store
            .lease(request.id, request.claimed_by.as_deref())?
        {
            return Ok(None);
        }
        let step = Step::Over(self.resumed(request, now));
        self.settle(request, step, now).map(Some)
    }

    /// Takes the next step of a running release to chosen recipients that this process
    /// claimed, or whose claimant is gone (taken over first). `None` for any other
    /// request, or one a live process is carrying out.
    pub fn check_copy(&self, request: &Request, now: u64) -> Result<Option<Executed>, StoreError> {
        let (RequestState::Running, RequestAction::ReleaseTo { recipients }) =
            (request.state, &request.action)
        else {
            return Ok(None);
        };
        let mine = request.claimed_by.as_deref() == Some(claimant::this_process().as_str());
        let taken = mine
            || (claimant::gone(request.claimed_by.as_deref())
                && self
                    .store
                    .lease(request.id, request.claimed_by.as_deref())?);
        if !taken {
            return Ok(None);
        }
        let step = self.advance(request, recipients, now);
        self.settle(request, step, now).map(Some)
    }

    fn settle(&self, request: &Request, step: Step, now: u64) -> Result<Executed, StoreError> {
        match step {
            Step::Over(outcome) => self.finished(request, outcome, now),
            Step::Waiting(result) => Ok(Executed {
                ok: false,
                open: true,
                result,
            }),
            Step::Settled(done) => Ok(done),
        }
    }

    /// Files `request` and carries it out at once: how the admin commands act, so that
    /// they work as root without the worker running. When the worker claimed it
    /// first, waits for the worker's outcome (at most `wait`). Err when it could not
    /// be filed (another request is open, the message is not held) or its outcome
    /// not learnt.
    ///
    /// In a fleet-wide store the request is for the newest record of its queue id on
    /// `relay` (this relay when `None`); another relay's is carried out by that relay's
    /// worker, and waited for.
    pub fn file_and_execute(
        &self,
        request: &NewRequest,
        relay: Option<&str>,
        wait: Duration,
    ) -> Result<Executed, String> {
        let filed = self.store.submit_on(relay, request).map_err(|e| match e {
            SubmitError::Conflict(m) => format!("{m}: nothing done"),
            e => e.to_string(),
        })?;
        if let Some(done) = self
            .execute(&filed, request.at)
            .map_err(|e| e.to_string())?
        {
            return if done.open {
                self.follow(&filed, done, wait.max(COPY_WAIT))
            } else {
                Ok(done)
            };
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
                    open: false,
                    result: r.result.unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                let shown = match relay {
                    Some(r) => format!("{r}:{}", filed.queue_id),
                    None => filed.queue_id.to_string(),
                };
                return Err(format!(
                    "{shown}: request {} is being carried out by the worker; see `quarantine \
                     show {shown}`",
                    filed.id
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Takes the next steps of a release to chosen recipients this process started,
    /// four times a second, until it is over or `wait` has passed.
    fn follow(
        &self,
        filed: &Request,
        mut last: Executed,
        wait: Duration,
    ) -> Result<Executed, String> {
        let deadline = Instant::now() + wait;
        while last.open && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            let now = crate::clock::epoch_secs(std::time::SystemTime::now());
            let request = self
                .store
                .requests(filed.held_id)
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|r| r.id == filed.id)
                .ok_or_else(|| format!("request {} is gone", filed.id))?;
            match self.check_copy(&request, now).map_err(|e| e.to_string())? {
                Some(done) => last = done,
                None => break,
            }
        }
        Ok(last)
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
        Ok(Executed {
            ok,
            open: false,
            result,
        })
    }

    /// The audit comment of an action taken for `request`: the requester's comment,
    /// the request and where it came from.
    pub(super) fn comment(request: &Request) -> String {
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
            RequestAction::Release => {
                let words = review.release_record(&r, Some(comment))?;
                let done = format!("{id}: released for delivery ({words})");
                Ok(self.notified(&review, &r, request, done))
            }
            RequestAction::Discard { .. } => {
                let words = review.discard_record(&r, Some(comment))?;
                let done = format!("{id}: discarded ({words})");
                Ok(self.notified(&review, &r, request, done))
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
                "{id}: a release to chosen recipients is carried out as a copy: nothing done"
            )),
        }
    }

    /// What the sender is told once `request` is carried out: a release or a discard
    /// when the sender was told of the hold, a discard also when the reviewer asked for
    /// it; the reviewer's words go with a release, and with a discard only when the
    /// reviewer chose to tell the sender. A withdrawal by the sender gets a receipt, a
    /// release the sender confirmed nothing (the mail itself is on its way).
    fn outcome<'r>(r: &Record, request: &'r Request) -> Option<Outcome<'r>> {
        let words = Self::words(request);
        match (&request.action, request.via) {
            (RequestAction::Discard { .. }, Via::Sender) => Some(Outcome::Withdrawn),
            (RequestAction::Discard { notify_sender }, _) => {
                (*notify_sender || r.message.notify_sender).then_some(Outcome::Discarded {
                    words: words.filter(|_| *notify_sender),
                })
            }
            (RequestAction::Release, Via::Sender) => None,
            (RequestAction::Release, _) => r
                .message
                .notify_sender
                .then_some(Outcome::Released { words }),
            (RequestAction::ReleaseTo { recipients }, _) => {
                r.message.notify_sender.then_some(Outcome::ReleasedTo {
                    to: recipients,
                    words,
                })
            }
            (RequestAction::Extend { .. }, _) => None,
        }
    }

    /// `done`, followed by what the sender was told, if anything.
    pub(super) fn notified(
        &self,
        review: &Review<'_>,
        r: &Record,
        request: &Request,
        done: String,
    ) -> String {
        let Some(outcome) = Self::outcome(r, request) else {
            return done;
        };
        let mut report = Report::default();
        review.notify_sender(r, outcome, &mut report);
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
            (RequestAction::Release, State::Released, InQueue::Held) => {
                let w = review.released(&r, State::Released)?;
                let done = format!("{id}: released for delivery {again} ({w})");
                Ok(self.notified(&review, &r, request, done))
            }
            (RequestAction::Discard { .. }, State::Discarded, InQueue::Held) => {
                let words = review.deleted(&r, State::Discarded)?;
                let done = format!("{id}: discarded {again} ({words})");
                Ok(self.notified(&review, &r, request, done))
            }
            // postsuper had done it.
            (RequestAction::Release, State::Released, _) => Ok(format!(
                "{id}: released before the worker stopped (no longer in the hold queue)"
            )),
            (RequestAction::Discard { .. }, State::Discarded, InQueue::Gone) => {
                let since = request.started_at.unwrap_or(request.requested_at);
                let noticed = r
                    .audit
                    .iter()
                    .any(|a| a.action == "notify-sender" && a.at >= since);
                let done = format!("{id}: discarded before the worker stopped");
                Ok(if noticed {
                    done
                } else {
                    self.notified(&review, &r, request, done)
                })
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
    use crate::quarantine::index::{CopyCheck, CopyMark};
    use crate::quarantine::record::QueueId;
    use crate::quarantine::store::tests::held;
    use std::path::Path;

    /// Stub postsuper, postqueue, postcat, postconf and sendmail in `dir/bin`.
    /// postsuper logs its arguments to `dir/postsuper.log` and acts on a message only
    /// while `dir/held` names it (as Postfix's hold queue would; `-d` does nothing while
    /// `dir/fail-delete` exists); postqueue -j lists those as held and `dir/active`'s
    /// as active, each with the recipients in `dir/rcpts-ID` (default all@example.org);
    /// sendmail keeps the last message in `dir/sent` and logs its arguments to
    /// `dir/sendmail.log`; postcat prints a message that carries an old mark; postconf
    /// answers non_smtpd_milters (fanout-milter's default socket, `dir/milters`, or
    /// empty when `dir/no-milters` exists), milter_default_action (`dir/default-action`
    /// or tempfail) and -P (`dir/services`).
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
                     [ \"$3\" = -d ] && [ -e {d}/fail-delete ] && exit 0\n\
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
                     list() {{ for id in $(cat {d}/$1 2>/dev/null); do\n\
                       rc=''; for a in $(cat {d}/rcpts-$id 2>/dev/null || echo all@example.org); do\n\
                         rc=\"$rc{{\\\"address\\\": \\\"$a\\\"}},\"; done\n\
                       echo \"{{\\\"queue_name\\\": \\\"$1\\\", \\\"queue_id\\\": \\\"$id\\\", \\\"sender\\\": \\\"ann@example.org\\\", \\\"recipients\\\": [${{rc%,}}]}}\"\n\
                     done; }}\n\
                     list held | sed 's/\"queue_name\": \"held\"/\"queue_name\": \"hold\"/'\n\
                     list active\n"
                ),
            ),
            (
                "sendmail",
                format!("cat > {d}/sent.tmp\necho \"$*\" >> {d}/sendmail.log\nmv {d}/sent.tmp {d}/sent\n"),
            ),
            (
                "postcat",
                "printf 'From: ann@example.org\\nX-Fanout-Released: v1; q=OLD; r=9; t=old\\n\\tfolded\\nSubject: Hello\\n\\nX-Fanout-Released: body text stays\\n'\n".to_owned(),
            ),
            (
                "postconf",
                format!(
                    "case \"$*\" in *' -P'*) cat {d}/services 2>/dev/null; exit 0;; esac\n\
                     if [ -e {d}/no-milters ]; then echo; else cat {d}/milters 2>/dev/null || echo 'inet:127.0.0.1:7785'; fi\n\
                     cat {d}/default-action 2>/dev/null || echo tempfail\n"
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

        /// A held record for `id` with these envelope recipients, in the stub's hold
        /// queue with them.
        fn hold_to(&self, id: &str, recipients: &[&str]) {
            let mut m = held(id, 100);
            m.recipients = recipients.iter().map(|r| r.to_string()).collect();
            self.store.record_held(&m, "milter", None).unwrap();
            self.queue(id, recipients);
        }

        /// `id` in the stub's hold queue, with these recipients.
        fn queue(&self, id: &str, recipients: &[&str]) {
            let list = self.dir.path().join("held");
            let mut ids = std::fs::read_to_string(&list).unwrap_or_default();
            ids.push_str(id);
            ids.push('\n');
            std::fs::write(list, ids).unwrap();
            std::fs::write(
                self.dir.path().join(format!("rcpts-{id}")),
                recipients.join(" "),
            )
            .unwrap();
        }

        /// What the milter and Postfix do with the last copy sendmail got: the mark
        /// checked in the store, the copy recorded and held as `copy` with the
        /// recipients sendmail was given.
        fn milter_holds(&self, copy: &str) -> CopyCheck {
            let (mark, recipients) = sent_copy(self.dir.path());
            let check = self.store.accept_copy(&mark, copy, 310).unwrap();
            let mut m = held(copy, 310);
            m.recipients = recipients.clone();
            m.rules[0].rule = "copy".into();
            self.store.record_held(&m, "milter", None).unwrap();
            let r: Vec<&str> = recipients.iter().map(String::as_str).collect();
            self.queue(copy, &r);
            check
        }

        /// A release of held message `id` (to all@ and bob@) to bob@ started, and its
        /// copy held by the milter as `copy`.
        fn copy_held(&self, id: &str, copy: &str, now: u64) -> Request {
            self.hold_to(id, &["all@example.org", "bob@example.org"]);
            let rq = self.file(id, release_to(&["bob@example.org"]));
            assert!(self.executor().execute(&rq, now).unwrap().unwrap().open);
            assert_eq!(self.milter_holds(copy), CopyCheck::Accepted);
            rq
        }

        fn sendmail_calls(&self) -> usize {
            std::fs::read_to_string(self.dir.path().join("sendmail.log"))
                .unwrap_or_default()
                .lines()
                .count()
        }

        fn postsuper_log(&self) -> Vec<String> {
            let c = self.config.postfix.config_directory.display().to_string();
            std::fs::read_to_string(self.dir.path().join("postsuper.log"))
                .unwrap_or_default()
                .lines()
                .map(|l| l.replace(&format!("-c {c} "), ""))
                .collect()
        }

        fn file(&self, id: &str, action: RequestAction) -> Request {
            self.file_via(id, action, Via::Desk)
        }

        fn file_via(&self, id: &str, action: RequestAction, via: Via) -> Request {
            self.store
                .submit(
                    None,
                    &NewRequest {
                        queue_id: QueueId::parse(id).unwrap(),
                        action,
                        who: "carol".into(),
                        via,
                        remote: Some("192.0.2.7".into()),
                        comment: "wrong list, resend to the team".into(),
                        at: 200,
                    },
                )
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

    /// The mark and the recipients of the last copy the sendmail stub got.
    fn sent_copy(dir: &Path) -> (CopyMark, Vec<String>) {
        let sent = std::fs::read_to_string(dir.join("sent")).unwrap();
        let first = sent.lines().next().unwrap();
        let value = first.strip_prefix("X-Fanout-Released: ").unwrap();
        let mark = CopyMark::parse(value).unwrap();
        let log = std::fs::read_to_string(dir.join("sendmail.log")).unwrap();
        let args = log.lines().last().unwrap();
        let recipients = args.split_once(" -- ").unwrap().1;
        (mark, recipients.split(' ').map(str::to_owned).collect())
    }

    fn release_to(recipients: &[&str]) -> RequestAction {
        RequestAction::ReleaseTo {
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// `r` as a process that died left it: claimed by a claimant of an earlier boot.
    fn orphan(f: &Fixture, r: &Request) -> Request {
        let conn =
            rusqlite::Connection::open(f.dir.path().join("state/quarantine.sqlite")).unwrap();
        conn.execute(
            "UPDATE requests SET claimed_by = '4242 1 an-earlier-boot' WHERE id = ?1",
            [r.id],
        )
        .unwrap();
        f.request(r)
    }

    #[test]
    fn a_release_to_chosen_recipients_releases_the_held_copy_then_deletes_the_original() {
        let f = Fixture::new();
        let e = f.executor();
        f.hold_to(
            "AAAAAA1",
            &["all@example.org", "bob@example.org", "cy@example.org"],
        );
        let rq = f.file(
            "AAAAAA1",
            release_to(&["bob@example.org", "cy@example.org"]),
        );
        let started = e.execute(&rq, 300).unwrap().unwrap();
        assert!(started.open && !started.ok, "{started:?}");
        assert!(
            started.result.contains("was handed to Postfix"),
            "{started:?}"
        );
        let sent = std::fs::read_to_string(f.dir.path().join("sent")).unwrap();
        assert!(
            sent.starts_with("X-Fanout-Released: v1; q=AAAAAA1; r=1; t="),
            "{sent}"
        );
        assert_eq!(sent.matches("X-Fanout-Released: v1").count(), 1, "{sent}");
        assert!(!sent.contains("folded"), "the old mark is gone: {sent}");
        assert!(
            sent.ends_with("\n\nX-Fanout-Released: body text stays\n"),
            "{sent}"
        );
        let log = std::fs::read_to_string(f.dir.path().join("sendmail.log")).unwrap();
        assert!(
            log.trim_end()
                .ends_with("-i -f ann@example.org -- bob@example.org cy@example.org"),
            "{log}"
        );
        // Nothing happens until the milter has held the copy.
        let running = f.request(&rq);
        let waiting = e.check_copy(&running, 301).unwrap().unwrap();
        assert!(
            waiting.open && waiting.result.contains("waiting for the milter"),
            "{waiting:?}"
        );
        assert!(f.postsuper_log().is_empty());
        assert_eq!(f.milter_holds("BBBBBB9"), CopyCheck::Accepted);
        let done = e.check_copy(&f.request(&rq), 320).unwrap().unwrap();
        assert!(done.ok && !done.open, "{done:?}");
        assert!(
            done.result.starts_with(
                "AAAAAA1: released to bob@example.org, cy@example.org as a copy (BBBBBB9); \
                 the original was deleted"
            ),
            "{done:?}"
        );
        assert_eq!(
            f.postsuper_log(),
            ["-H BBBBBB9", "-d AAAAAA1 hold"],
            "the copy first"
        );
        let stored = f.request(&rq);
        assert_eq!(stored.state, RequestState::Done);
        assert_eq!(stored.copy_queue_id.as_deref(), Some("BBBBBB9"));
        assert_eq!((stored.copy_sent_at, stored.copy_attempts), (Some(300), 1));
        let r = f.record("AAAAAA1");
        assert_eq!(r.state, State::Released);
        let trail: Vec<(&str, &str)> = r
            .audit
            .iter()
            .map(|a| (a.who.as_str(), a.action.as_str()))
            .collect();
        assert_eq!(
            &trail[trail.len() - 2..],
            [("milter", "copy"), ("carol", "release-to")]
        );
        assert!(
            r.audit
                .last()
                .unwrap()
                .comment
                .as_deref()
                .unwrap()
                .starts_with(
                    "to bob@example.org, cy@example.org as BBBBBB9: wrong list, resend to the team"
                )
        );
        let copy = f.record("BBBBBB9");
        assert_eq!(copy.state, State::Released);
        assert_eq!(copy.audit.last().unwrap().who, "carol");
        // A copy that turns up now is late: held for an admin.
        let (mark, _) = sent_copy(f.dir.path());
        assert_eq!(
            f.store.accept_copy(&mark, "CCCCCC9", 400).unwrap(),
            CopyCheck::Late("request 1 is done".into())
        );
        assert_eq!(e.check_copy(&f.request(&rq), 401).unwrap(), None, "over");
    }

    #[test]
    fn no_copy_is_made_unless_it_surely_passes_the_milter_from_a_held_original() {
        let cases = [
            ("no-milters", "", "non_smtpd_milters is empty"),
            (
                "milters",
                "inet:127.0.0.1:8891\n",
                "does not name fanout-milter's socket (inet:127.0.0.1:7785)",
            ),
            (
                "default-action",
                "accept\n",
                "milter_default_action is accept",
            ),
            (
                "services",
                "pickup/unix/receive_override_options = no_milters\n",
                "master.cf changes the milters of pickup",
            ),
            (
                "held",
                "",
                "AAAAAA1: no longer in Postfix's queue: nothing done",
            ),
            (
                "rcpts-AAAAAA1",
                "all@example.org",
                "bob@example.org is not a recipient of the held message as Postfix has it",
            ),
        ];
        for (file, text, why) in cases {
            let f = Fixture::new();
            f.hold_to("AAAAAA1", &["all@example.org", "bob@example.org"]);
            std::fs::write(f.dir.path().join(file), text).unwrap();
            let rq = f.file("AAAAAA1", release_to(&["bob@example.org"]));
            let failed = f.executor().execute(&rq, 300).unwrap().unwrap();
            assert!(!failed.ok && !failed.open, "{failed:?}");
            assert!(failed.result.contains(why), "{why}: {failed:?}");
            assert!(failed.result.ends_with("nothing done"), "{failed:?}");
            assert_eq!(f.sendmail_calls(), 0, "{why}");
            assert!(f.postsuper_log().is_empty());
            assert_eq!(f.record("AAAAAA1").state, State::Held);
            assert_eq!(f.request(&rq).state, RequestState::Failed);
        }
    }

    #[test]
    fn a_release_to_whose_worker_died_makes_the_copy_again_and_releases_only_one() {
        let f = Fixture::new();
        let e = f.executor();
        f.hold_to("AAAAAA1", &["all@example.org", "bob@example.org"]);
        let rq = f.file("AAAAAA1", release_to(&["bob@example.org"]));
        assert!(e.execute(&rq, 300).unwrap().unwrap().open);
        // The worker made the copy, then died before it could note that it had.
        let conn =
            rusqlite::Connection::open(f.dir.path().join("state/quarantine.sqlite")).unwrap();
        conn.execute("UPDATE requests SET copy_sent_at = NULL", [])
            .unwrap();
        assert_eq!(f.milter_holds("BBBBBB8"), CopyCheck::Accepted);
        std::fs::remove_file(f.dir.path().join("sent")).unwrap();
        // A live claimant is left alone; a dead one's request is taken over.
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let conn2 = &conn;
        conn2
            .execute(
                "UPDATE requests SET claimed_by = ?2 WHERE id = ?1",
                rusqlite::params![rq.id, crate::quarantine::claimant::of_process(live.id())],
            )
            .unwrap();
        assert_eq!(
            e.check_copy(&f.request(&rq), 310).unwrap(),
            None,
            "left to its claimant"
        );
        live.kill().unwrap();
        live.wait().unwrap();
        let orphaned = orphan(&f, &rq);
        let again = e.check_copy(&orphaned, 320).unwrap().unwrap();
        assert_eq!(
            f.request(&rq).claimed_by,
            Some(crate::quarantine::claimant::this_process()),
            "taken over"
        );
        // It saw a held copy, so it released it; no second copy was needed.
        assert!(
            again.ok && again.result.contains("as a copy (BBBBBB8)"),
            "{again:?}"
        );
        assert_eq!(f.sendmail_calls(), 1);
        // Had it died before the copy was held, it makes one again; both get held,
        // one is released and the other deleted.
        f.hold_to("CCCCCC1", &["all@example.org", "bob@example.org"]);
        let rq = f.file("CCCCCC1", release_to(&["bob@example.org"]));
        assert!(e.execute(&rq, 400).unwrap().unwrap().open);
        conn.execute(
            "UPDATE requests SET copy_sent_at = NULL WHERE id = ?1",
            [rq.id],
        )
        .unwrap();
        let orphaned = orphan(&f, &rq);
        let resent = e.check_copy(&orphaned, 410).unwrap().unwrap();
        assert!(resent.open, "{resent:?}");
        assert_eq!(f.sendmail_calls(), 3, "made again");
        assert_eq!(f.request(&rq).copy_attempts, 2);
        assert_eq!(f.milter_holds("DDDDDD1"), CopyCheck::Accepted);
        assert_eq!(f.milter_holds("DDDDDD2"), CopyCheck::Accepted);
        let done = e.check_copy(&f.request(&rq), 420).unwrap().unwrap();
        assert!(
            done.ok && done.result.contains("as a copy (DDDDDD1)"),
            "{done:?}"
        );
        let log = f.postsuper_log();
        assert_eq!(
            &log[log.len() - 3..],
            ["-H DDDDDD1", "-d DDDDDD2 hold", "-d CCCCCC1 hold"]
        );
        assert_eq!(f.record("DDDDDD2").state, State::Discarded);
    }

    #[test]
    fn a_copy_is_released_only_to_exactly_the_chosen_and_only_while_the_original_is_held() {
        let f = Fixture::new();
        let e = f.executor();
        // Postfix rewrote the address: the copy stays held, the request fails.
        let rq = f.copy_held("AAAAAA1", "BBBBBB1", 300);
        std::fs::write(f.dir.path().join("rcpts-BBBBBB1"), "robert@example.org").unwrap();
        let failed = e.check_copy(&f.request(&rq), 310).unwrap().unwrap();
        assert!(!failed.ok && !failed.open, "{failed:?}");
        assert!(
            failed
                .result
                .contains("robert@example.org as Postfix has them"),
            "{failed:?}"
        );
        assert!(
            f.postsuper_log().is_empty(),
            "nothing released, nothing deleted"
        );
        // The original was released by hand meanwhile: the copy is not released.
        let rq = f.copy_held("CCCCCC1", "DDDDDD1", 400);
        let held = std::fs::read_to_string(f.dir.path().join("held")).unwrap();
        std::fs::write(f.dir.path().join("held"), held.replace("CCCCCC1\n", "")).unwrap();
        std::fs::write(f.dir.path().join("active"), "CCCCCC1\n").unwrap();
        let failed = e.check_copy(&f.request(&rq), 410).unwrap().unwrap();
        assert!(
            !failed.ok && failed.result.contains("released outside fanout-milter"),
            "{failed:?}"
        );
        assert!(f.postsuper_log().is_empty());
        assert_eq!(
            f.record("DDDDDD1").state,
            State::Held,
            "the copy stays held"
        );
    }

    #[test]
    fn a_failed_deletion_of_the_original_is_tried_again_never_undone() {
        let f = Fixture::new();
        let e = f.executor();
        let rq = f.copy_held("AAAAAA1", "BBBBBB1", 300);
        std::fs::write(f.dir.path().join("fail-delete"), "").unwrap();
        let again = e.check_copy(&f.request(&rq), 310).unwrap().unwrap();
        assert!(again.open, "{again:?}");
        assert!(
            again
                .result
                .contains("deleting the original is tried again"),
            "{again:?}"
        );
        assert_eq!(f.request(&rq).state, RequestState::Running, "still open");
        assert_eq!(f.request(&rq).copy_queue_id.as_deref(), Some("BBBBBB1"));
        std::fs::remove_file(f.dir.path().join("fail-delete")).unwrap();
        let done = e.check_copy(&f.request(&rq), 320).unwrap().unwrap();
        assert!(done.ok, "{done:?}");
        assert_eq!(
            f.postsuper_log(),
            ["-H BBBBBB1", "-d AAAAAA1 hold", "-d AAAAAA1 hold"],
            "the copy released once"
        );
    }

    #[test]
    fn a_copy_never_held_fails_the_request_after_a_while_and_a_late_one_is_held() {
        let f = Fixture::new();
        let e = f.executor();
        f.hold_to("AAAAAA1", &["all@example.org", "bob@example.org"]);
        let rq = f.file("AAAAAA1", release_to(&["bob@example.org"]));
        e.execute(&rq, 1000).unwrap();
        let still = e.check_copy(&f.request(&rq), 1000 + 599).unwrap().unwrap();
        assert!(still.open, "{still:?}");
        let failed = e
            .check_copy(
                &f.request(&rq),
                1000 + super::super::release_to::COPY_GIVE_UP.as_secs(),
            )
            .unwrap()
            .unwrap();
        assert!(!failed.ok && !failed.open, "{failed:?}");
        assert!(
            failed.result.contains("held no copy within 10m"),
            "{failed:?}"
        );
        assert_eq!(f.request(&rq).state, RequestState::Failed);
        assert_eq!(f.record("AAAAAA1").state, State::Held);
        assert!(f.postsuper_log().is_empty());
        assert_eq!(
            f.milter_holds("BBBBBB9"),
            CopyCheck::Late(format!("request {} is failed", rq.id))
        );
        let running = f.request(&rq);
        assert_eq!(
            e.check_copy(
                &Request {
                    action: RequestAction::Release,
                    ..running
                },
                5000
            )
            .unwrap(),
            None,
            "only a release to chosen recipients has copies"
        );
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
            sent.contains("Note from the mail team:")
                && sent.contains("wrong list, resend to the team"),
            "{sent}"
        );
        assert_eq!(f.record("AAAAAA1").state, State::Discarded);
    }

    /// Holds `id` with the sender told of the hold, in the stub's hold queue.
    fn hold_told(f: &Fixture, id: &str) {
        let mut m = held(id, 100);
        m.notify_sender = true;
        f.store.record_held(&m, "milter", None).unwrap();
        f.queue(id, &["all@example.org"]);
    }

    fn sent(f: &Fixture) -> String {
        std::fs::read_to_string(f.dir.path().join("sent")).unwrap_or_default()
    }

    #[test]
    fn a_sender_told_of_the_hold_hears_of_the_release_but_not_of_their_own_send() {
        let f = Fixture::new();
        hold_told(&f, "AAAAAA1");
        let rq = f.file("AAAAAA1", RequestAction::Release);
        let done = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.ok, "{done:?}");
        assert!(
            done.result
                .contains("released notice sent to ann@example.org"),
            "{done:?}"
        );
        assert!(
            sent(&f).contains("Note from the mail team: wrong list"),
            "{}",
            sent(&f)
        );

        let g = Fixture::new();
        hold_told(&g, "BBBBBB1");
        let rq = g.file_via("BBBBBB1", RequestAction::Release, Via::Sender);
        let done = g.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.ok && !done.result.contains("notice"), "{done:?}");
        assert_eq!(sent(&g), "", "the sender sent it themselves");

        let h = Fixture::new();
        h.hold("CCCCCC1");
        let rq = h.file("CCCCCC1", RequestAction::Release);
        let done = h.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.ok && !done.result.contains("notice"), "{done:?}");
        assert_eq!(sent(&h), "", "never told of the hold, not told of its end");
    }

    #[test]
    fn a_sender_told_of_the_hold_hears_of_a_discard_without_the_reviewers_notes() {
        let f = Fixture::new();
        hold_told(&f, "AAAAAA1");
        let rq = f.file(
            "AAAAAA1",
            RequestAction::Discard {
                notify_sender: false,
            },
        );
        let done = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.result.contains("discarded notice sent"), "{done:?}");
        let text = sent(&f);
        assert!(text.contains("NOT sent"), "{text}");
        assert!(
            !text.contains("wrong list"),
            "internal words stay internal: {text}"
        );
    }

    #[test]
    fn a_withdrawal_by_the_sender_gets_a_receipt() {
        let f = Fixture::new();
        hold_told(&f, "AAAAAA1");
        let rq = f.file_via(
            "AAAAAA1",
            RequestAction::Discard {
                notify_sender: false,
            },
            Via::Sender,
        );
        let done = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(done.ok, "{done:?}");
        assert!(done.result.contains("withdrawn notice sent"), "{done:?}");
        assert_eq!(f.record("AAAAAA1").state, State::Discarded);
        assert!(!sent(&f).is_empty());
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
        let done = e.resume(&f.request(&a), 300).unwrap().unwrap();
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
        let done = e.resume(&f.request(&b), 300).unwrap().unwrap();
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
        let done = e.resume(&f.request(&c), 300).unwrap().unwrap();
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
        let done = e.resume(&f.request(&d), 300).unwrap().unwrap();
        assert!(done.ok && done.result.contains("notice sent"), "{done:?}");
        assert_eq!(f.postsuper_calls(), 4);
        // Held but gone from the queue: failed, the record stays held.
        f.hold("EEEEEE5");
        let g = f.file("EEEEEE5", RequestAction::Release);
        assert!(f.store.claim(g.id, 250).unwrap());
        std::fs::write(f.dir.path().join("held"), "").unwrap();
        let failed = e.resume(&f.request(&g), 300).unwrap().unwrap();
        assert!(!failed.ok && failed.result.contains("no longer in Postfix's queue"));
        assert_eq!(f.record("EEEEEE5").state, State::Held);
        assert!(f.store.open_requests().unwrap().is_empty());
    }

    #[test]
    fn a_failed_release_whose_record_was_claimed_anyway_is_left_for_resume() {
        let f = Fixture::new();
        let e = f.executor();
        f.hold("AAAAAA1");
        let mut a = f.file("AAAAAA1", RequestAction::Release);
        assert!(!e.claimed_anyway(&a), "the record is still held");
        assert!(f.store.claim(a.id, 250).unwrap());
        let r = f.record("AAAAAA1");
        e.review(&a, 250).release_record(&r, None).unwrap();
        assert!(e.claimed_anyway(&a), "the record says released");
        a.action = RequestAction::Discard {
            notify_sender: false,
        };
        assert!(!e.claimed_anyway(&a), "released is not a discard's claim");
        a.action = RequestAction::Extend { until: 999 };
        assert!(!e.claimed_anyway(&a), "an extension claims nothing");
        a.action = RequestAction::Release;
        a.held_id = 4242;
        assert!(
            e.claimed_anyway(&a),
            "an unreadable record may have been claimed"
        );
    }

    #[test]
    fn a_request_whose_outcome_was_not_written_is_finished_by_its_worker_never_twice() {
        let f = Fixture::new();
        let e = f.executor();
        // Claimed and released by this process, the outcome not written (the database
        // went away): left over, and finished without releasing again.
        f.hold("AAAAAA1");
        let a = f.file("AAAAAA1", RequestAction::Release);
        assert!(f.store.claim(a.id, 250).unwrap());
        let r = f.record("AAAAAA1");
        e.review(&a, 250).release_record(&r, None).unwrap();
        assert_eq!(f.postsuper_calls(), 1);
        let a = f.request(&a);
        assert_eq!(a.state, RequestState::Running);
        assert!(
            Executor::left_over(&a),
            "this process is not carrying it out"
        );
        let done = e.resume(&a, 300).unwrap().unwrap();
        assert!(
            done.ok && done.result.contains("released before"),
            "{done:?}"
        );
        assert_eq!(f.postsuper_calls(), 1, "not released a second time");
        assert!(f.store.open_requests().unwrap().is_empty());
        assert!(!Executor::left_over(&f.request(&a)), "finished");
        // Another live process's request is not left over; a release to chosen
        // recipients waits for its copy instead.
        f.hold("BBBBBB2");
        let b = f.file("BBBBBB2", RequestAction::Release);
        assert!(f.store.claim(b.id, 250).unwrap());
        let mut b = f.request(&b);
        b.claimed_by = claimant::of_process(1);
        assert!(b.claimed_by.is_some() && !Executor::left_over(&b));
        b.action = release_to(&["all@corp.example"]);
        b.claimed_by = Some(claimant::this_process());
        assert!(!Executor::left_over(&b));
    }
}
