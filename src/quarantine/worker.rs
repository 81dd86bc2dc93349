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
//!
//! A release to chosen recipients is a copy and a deletion. The worker gives the
//! request a secret token, hands Postfix's sendmail a copy of the held message
//! (`postcat -bh`) for the chosen recipients only, marked with a [`COPY_HEADER`] that
//! names the original, the request and the token, and waits for the milter to see it:
//! the milter checks the mark in the store, records the copy's queue id in the request
//! (only the first copy ever: a second one is held for an admin, never delivered
//! unseen) and removes the header. Only then is the original deleted. A crash in
//! between is finished from the request: a copy seen means delete the original; no
//! copy seen means wait for one, and make it again if none comes.

use super::index::{
    COPY_HEADER, CopyMark, NewRequest, QuarantineIndex, Request, RequestAction, RequestState,
    SubmitError, Via,
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

/// How long the worker waits for the milter to see the copy of a release to chosen
/// recipients before it leaves the request running and looks again on later polls.
pub const COPY_WAIT: Duration = Duration::from_secs(30);
/// How long after the copy was handed to Postfix the request fails if the milter never
/// saw it (the original stays held; a late copy is held as repeated).
pub const COPY_GIVE_UP: Duration = Duration::from_secs(600);
/// How long a worker resuming a release whose copy may have been made waits for it
/// before it makes the copy again.
const COPY_RESUME_WAIT: Duration = Duration::from_secs(10);

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
enum Step {
    /// Finished: done or failed.
    Over(Acted),
    /// A copy is on its way; the request stays running. What happened so far.
    Waiting(String),
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
        let step = match &request.action {
            RequestAction::ReleaseTo { recipients } => match self.held_record(request) {
                Ok(r) => self.release_to(request, &r, recipients, now),
                Err(e) => Step::Over(Err(e)),
            },
            _ => Step::Over(self.act(request, now)),
        };
        self.settle(request, step, now).map(Some)
    }

    /// Finishes a request found running at start (the worker stopped while carrying
    /// it out), deciding from the facts what is left to do.
    pub fn resume(&self, request: &Request, now: u64) -> Result<Executed, StoreError> {
        let step = match &request.action {
            RequestAction::ReleaseTo { recipients } => {
                self.resume_copy(request, recipients, now, true)
            }
            _ => Step::Over(self.resumed(request, now)),
        };
        self.settle(request, step, now)
    }

    /// Looks once more at a running release to chosen recipients whose copy was handed
    /// to Postfix more than [`COPY_WAIT`] ago (the one who made it stopped waiting):
    /// finished when the milter has seen the copy, failed after [`COPY_GIVE_UP`].
    /// `None` for any other request.
    pub fn check_copy(&self, request: &Request, now: u64) -> Result<Option<Executed>, StoreError> {
        let (RequestState::Running, RequestAction::ReleaseTo { recipients }, Some(sent)) =
            (request.state, &request.action, request.copy_sent_at)
        else {
            return Ok(None);
        };
        if now.saturating_sub(sent) < COPY_WAIT.as_secs() + 5 {
            return Ok(None);
        }
        let step = self.resume_copy(request, recipients, now, false);
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
        }
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
                    open: false,
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
        Ok(Executed {
            ok,
            open: false,
            result,
        })
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
                "{id}: a release to chosen recipients is carried out as a copy: nothing done"
            )),
        }
    }

    /// Starts a release to chosen recipients: the token, the copy, then the wait for
    /// the milter to see it.
    fn release_to(&self, request: &Request, r: &Record, chosen: &[String], now: u64) -> Step {
        let id = &r.message.queue_id;
        match self.postfix.submissions_filtered() {
            Ok(true) => {}
            Ok(false) => {
                return Step::Over(Err(format!(
                    "{id}: Postfix's non_smtpd_milters is empty, so the milter would never \
                     see the copy: set it to fanout-milter's socket first; nothing done"
                )));
            }
            Err(e) => {
                return Step::Over(Err(format!(
                    "{id}: cannot read non_smtpd_milters: {e}; nothing done"
                )));
            }
        }
        if let Err(e) = self.send_copy(request, r, chosen, now) {
            return Step::Over(Err(format!("{id}: {e}; the original is still held")));
        }
        self.await_copy(request, r, chosen, now, COPY_WAIT)
    }

    /// Hands Postfix a copy of the held message for `chosen`, marked for the milter.
    fn send_copy(
        &self,
        request: &Request,
        r: &Record,
        chosen: &[String],
        now: u64,
    ) -> Result<(), String> {
        let fresh = crate::token::random_id()?;
        let token = self
            .store
            .copy_token(request.id, &fresh)
            .map_err(|e| e.to_string())?;
        let content = self
            .postfix
            .content(&r.message.queue_id)
            .map_err(|e| format!("cannot read the held message: {e}"))?;
        let mark = CopyMark {
            original: r.message.queue_id.as_str().to_owned(),
            request: request.id,
            token,
        };
        crate::notify::send_mail(
            &self.config.postfix,
            &r.message.sender,
            chosen,
            &marked(&content, &mark),
        )
        .map_err(|e| format!("Postfix refused the copy: {e}"))?;
        self.store
            .copy_sent(request.id, now)
            .map_err(|e| format!("the copy was handed to Postfix, but not recorded: {e}"))
    }

    /// Waits at most `wait` for the milter to record the copy; then deletes the
    /// original.
    fn await_copy(
        &self,
        request: &Request,
        r: &Record,
        chosen: &[String],
        now: u64,
        wait: Duration,
    ) -> Step {
        let deadline = Instant::now() + wait;
        loop {
            match self.copy_seen(request) {
                Ok(Some(copy)) => return Step::Over(self.copy_out(request, r, chosen, &copy, now)),
                Ok(None) => {}
                Err(e) => return Step::Waiting(format!("{}: {e}", r.message.queue_id)),
            }
            if Instant::now() >= deadline {
                return Step::Waiting(format!(
                    "{}: a copy to {} was handed to Postfix; waiting for the milter to see \
                     it before the original is deleted",
                    r.message.queue_id,
                    chosen.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The queue id the milter accepted the request's copy under, if it has.
    fn copy_seen(&self, request: &Request) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .requests(request.held_id)?
            .into_iter()
            .find(|q| q.id == request.id)
            .and_then(|q| q.copy_queue_id))
    }

    /// The copy went out as `copy`: the original is claimed as released (to the chosen
    /// recipients) and deleted from the hold queue.
    fn copy_out(
        &self,
        request: &Request,
        r: &Record,
        chosen: &[String],
        copy: &str,
        now: u64,
    ) -> Acted {
        let id = &r.message.queue_id;
        let to = chosen.join(", ");
        let review = self.review(request, now);
        let comment = format!("to {to} as {copy}: {}", Self::comment(request));
        match r.state {
            State::Held => review.claim_record(r, State::Released, "release-to", Some(comment))?,
            State::Released => {}
            _ => return Err(Self::not_held(r)),
        }
        match self.in_queue(r)? {
            InQueue::Held => review
                .deleted(r, State::Released)
                .map(|words| {
                    format!(
                        "{id}: released to {to} as a copy ({copy}); the original was deleted ({words})"
                    )
                })
                .map_err(|e| {
                    format!("{e}; the copy to {to} went out as {copy}: discard the original by hand")
                }),
            _ => Ok(format!(
                "{id}: released to {to} as a copy ({copy}); the original had left the hold queue"
            )),
        }
    }

    /// Where a release to chosen recipients stands after the worker stopped in it (or
    /// the one who made the copy stopped waiting): `patient` waits for a copy that may
    /// be on its way, and makes it again when none comes.
    fn resume_copy(&self, request: &Request, chosen: &[String], now: u64, patient: bool) -> Step {
        let r = match self.store.record_by_id(request.held_id) {
            Ok(r) => r,
            Err(e) => return Step::Over(Err(e.to_string())),
        };
        let id = r.message.queue_id.clone();
        if let Some(copy) = &request.copy_queue_id {
            return Step::Over(self.copy_out(request, &r, chosen, copy, now));
        }
        if r.state != State::Held {
            return Step::Over(Err(Self::not_held(&r)));
        }
        match (request.copy_sent_at, patient) {
            (None, true) => match self.await_copy(request, &r, chosen, now, COPY_RESUME_WAIT) {
                Step::Waiting(_) => match self.in_queue(&r) {
                    Ok(InQueue::Held) => {
                        if let Err(e) = self.send_copy(request, &r, chosen, now) {
                            return Step::Over(Err(format!(
                                "{id}: {e}; the original is still held"
                            )));
                        }
                        self.await_copy(request, &r, chosen, now, COPY_WAIT)
                    }
                    Ok(_) => Step::Over(Err(format!(
                        "{id}: no longer in Postfix's hold queue, and no copy was seen: \
                         nothing done"
                    ))),
                    Err(e) => Step::Over(Err(e)),
                },
                over => over,
            },
            (Some(sent), _) if now.saturating_sub(sent) >= COPY_GIVE_UP.as_secs() => {
                Step::Over(Err(format!(
                    "{id}: the copy handed to Postfix at {} was never seen by the milter \
                     (is pickup running, and fanout-milter in non_smtpd_milters?); the \
                     original is still held, and a copy that turns up late is held too",
                    text::utc_seconds(sent)
                )))
            }
            (Some(_), true) => self.await_copy(request, &r, chosen, now, COPY_WAIT),
            _ => self.await_copy(request, &r, chosen, now, Duration::ZERO),
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

/// The held message as a copy: any [`COPY_HEADER`] field it had is dropped, and the
/// mark goes first. `content` is `postcat -bh` output: header lines, an empty line,
/// the body.
fn marked(content: &[u8], mark: &CopyMark) -> Vec<u8> {
    let mut out = format!("{COPY_HEADER}: {}\n", mark.value()).into_bytes();
    let mut in_header = true;
    let mut dropping = false;
    for line in content.split_inclusive(|&b| b == b'\n') {
        if in_header {
            let bare = line.strip_suffix(b"\n").unwrap_or(line);
            let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
            if bare.is_empty() {
                in_header = false;
            } else if line[0] == b' ' || line[0] == b'\t' {
                if dropping {
                    continue;
                }
            } else {
                dropping = line.split(|&b| b == b':').next().is_some_and(|name| {
                    name.trim_ascii()
                        .eq_ignore_ascii_case(COPY_HEADER.as_bytes())
                });
                if dropping {
                    continue;
                }
            }
        }
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::index::CopyCheck;
    use crate::quarantine::record::QueueId;
    use crate::quarantine::store::tests::held;
    use std::path::Path;

    /// Stub postsuper, postqueue, postcat, postconf and sendmail in `dir/bin`.
    /// postsuper logs its arguments to `dir/postsuper.log` and acts on a message only
    /// while `dir/held` names it (as Postfix's hold queue would); postqueue -j lists it
    /// as held then; sendmail keeps the last message in `dir/sent` and logs its
    /// arguments to `dir/sendmail.log`; postcat prints a message that carries an old
    /// mark; postconf names a milter in non_smtpd_milters unless `dir/no-milters`
    /// exists.
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
                format!("[ -e {d}/no-milters ] || echo 'inet:127.0.0.1:8891'\n"),
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

        /// A held record for `id` with these envelope recipients.
        fn hold_to(&self, id: &str, recipients: &[&str]) {
            let mut m = held(id, 100);
            m.recipients = recipients.iter().map(|r| r.to_string()).collect();
            self.store.record_held(&m, "milter", None).unwrap();
            std::fs::write(self.dir.path().join("held"), format!("{id}\n")).unwrap();
        }

        /// The milter's part, in a thread: waits for the copy sendmail got, reads its
        /// mark and recipients, and asks the store as the milter does, with `queue_id`
        /// for the copy.
        fn milter(&self, queue_id: &'static str) -> std::thread::JoinHandle<CopyCheck> {
            let dir = self.dir.path().to_owned();
            std::thread::spawn(move || {
                let sent = dir.join("sent");
                let deadline = Instant::now() + Duration::from_secs(20);
                while !sent.exists() {
                    assert!(Instant::now() < deadline, "no copy was sent");
                    std::thread::sleep(Duration::from_millis(20));
                }
                let (mark, recipients) = sent_copy(&dir);
                let store = Store::open(&dir.join("state")).unwrap();
                store
                    .accept_copy(&mark, queue_id, &recipients, 310)
                    .unwrap()
            })
        }

        fn sendmail_calls(&self) -> usize {
            std::fs::read_to_string(self.dir.path().join("sendmail.log"))
                .unwrap_or_default()
                .lines()
                .count()
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

    #[test]
    fn a_copy_carries_the_mark_first_and_no_other() {
        let mark = CopyMark {
            original: "AAAAAA1".into(),
            request: 7,
            token: "ab12".into(),
        };
        let copy = marked(
            b"Received: by x\n\tid 1\nx-fanout-released : v1; q=B; r=1; t=x\n\tmore\nSubject: s\n\nX-Fanout-Released: in the body\n",
            &mark,
        );
        assert_eq!(
            String::from_utf8(copy).unwrap(),
            "X-Fanout-Released: v1; q=AAAAAA1; r=7; t=ab12\nReceived: by x\n\tid 1\n\
             Subject: s\n\nX-Fanout-Released: in the body\n"
        );
        assert_eq!(CopyMark::parse(&mark.value()), Some(mark));
        for bad in [
            "v2; q=A; r=1; t=x",
            "v1; q=A; r=x; t=x",
            "v1; q=A; r=1",
            "v1; q=A; r=1; t=x; extra",
            "v1; q=A\r\n; r=1; t=x",
            "v1; q=; r=1; t=x",
            "v1; q=A; r=1; t=x y",
        ] {
            assert_eq!(CopyMark::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_release_to_chosen_recipients_deletes_the_original_once_the_milter_saw_the_copy() {
        let f = Fixture::new();
        f.hold_to(
            "AAAAAA1",
            &["all@example.org", "bob@example.org", "cy@example.org"],
        );
        let rq = f.file(
            "AAAAAA1",
            release_to(&["bob@example.org", "cy@example.org"]),
        );
        let milter = f.milter("BBBBBB9");
        let done = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert_eq!(milter.join().unwrap(), CopyCheck::Accepted);
        assert!(done.ok && !done.open, "{done:?}");
        assert!(
            done.result.starts_with(
                "AAAAAA1: released to bob@example.org, cy@example.org as a copy (BBBBBB9); \
                 the original was deleted"
            ) && done.result.contains("Deleted: 1 message"),
            "{done:?}"
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
        let stored = f.request(&rq);
        assert_eq!(stored.state, RequestState::Done);
        assert_eq!(stored.copy_queue_id.as_deref(), Some("BBBBBB9"));
        assert_eq!(stored.copy_sent_at, Some(300));
        let r = f.record("AAAAAA1");
        assert_eq!(r.state, State::Released);
        let actions: Vec<(&str, &str)> = r
            .audit
            .iter()
            .map(|a| (a.who.as_str(), a.action.as_str()))
            .collect();
        assert_eq!(
            &actions[actions.len() - 2..],
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
        let log = std::fs::read_to_string(f.dir.path().join("postsuper.log")).unwrap();
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            [format!(
                "-c {} -d AAAAAA1 hold",
                f.config.postfix.config_directory.display()
            )]
        );
        let (mark, rcpts) = sent_copy(f.dir.path());
        assert!(
            matches!(f.store.accept_copy(&mark, "CCCCCC9", &rcpts, 400).unwrap(),
                     CopyCheck::Repeated(why) if why.contains("already had its copy, accepted as BBBBBB9")),
            "a second copy is not the request's"
        );
    }

    #[test]
    fn no_copy_is_made_when_the_milter_would_not_see_it() {
        let f = Fixture::new();
        f.hold_to("AAAAAA1", &["all@example.org", "bob@example.org"]);
        std::fs::write(f.dir.path().join("no-milters"), "").unwrap();
        let rq = f.file("AAAAAA1", release_to(&["bob@example.org"]));
        let failed = f.executor().execute(&rq, 300).unwrap().unwrap();
        assert!(!failed.ok && !failed.open);
        assert!(
            failed.result.contains("non_smtpd_milters is empty"),
            "{failed:?}"
        );
        assert_eq!(f.sendmail_calls(), 0);
        assert_eq!(f.postsuper_calls(), 0);
        assert_eq!(f.record("AAAAAA1").state, State::Held);
        assert_eq!(f.request(&rq).state, RequestState::Failed);
    }

    #[test]
    fn a_release_to_cut_short_after_the_copy_went_out_only_deletes_the_original() {
        let f = Fixture::new();
        let e = f.executor();
        f.hold_to("AAAAAA1", &["all@example.org", "bob@example.org"]);
        let rq = f.file("AAAAAA1", release_to(&["bob@example.org"]));
        assert!(f.store.claim(rq.id, 250).unwrap());
        let token = f.store.copy_token(rq.id, "fffe").unwrap();
        assert_eq!(token, "fffe");
        assert_eq!(
            f.store.copy_token(rq.id, "other").unwrap(),
            "fffe",
            "the token once given stays"
        );
        let mark = CopyMark {
            original: "AAAAAA1".into(),
            request: rq.id,
            token,
        };
        let bob = vec!["bob@example.org".to_owned()];
        assert_eq!(
            f.store.accept_copy(&mark, "BBBBBB9", &bob, 260).unwrap(),
            CopyCheck::Accepted
        );
        // The worker stopped before it recorded that sendmail took the copy.
        let done = e.resume(&f.request(&rq), 300).unwrap();
        assert!(done.ok, "{done:?}");
        assert!(done.result.contains("as a copy (BBBBBB9)"), "{done:?}");
        assert_eq!(f.sendmail_calls(), 0, "no second copy");
        assert_eq!(f.postsuper_calls(), 1);
        assert_eq!(f.record("AAAAAA1").state, State::Released);
        // Stopped after the original was deleted and claimed, before the request ended.
        f.hold_to("CCCCCC3", &["all@example.org", "bob@example.org"]);
        let rq = f.file("CCCCCC3", release_to(&["bob@example.org"]));
        assert!(f.store.claim(rq.id, 250).unwrap());
        let token = f.store.copy_token(rq.id, "abcd").unwrap();
        let mark = CopyMark {
            original: "CCCCCC3".into(),
            request: rq.id,
            token,
        };
        f.store.accept_copy(&mark, "DDDDDD9", &bob, 260).unwrap();
        let r = f.record("CCCCCC3");
        e.review(&rq, 270)
            .claim_record(&r, State::Released, "release-to", None)
            .unwrap();
        std::fs::write(f.dir.path().join("held"), "").unwrap();
        let done = e.resume(&f.request(&rq), 300).unwrap();
        assert!(
            done.ok && done.result.contains("had left the hold queue"),
            "{done:?}"
        );
        assert_eq!(f.postsuper_calls(), 1, "nothing deleted twice");
        assert_eq!(f.sendmail_calls(), 0);
    }

    #[test]
    fn a_copy_never_seen_fails_the_request_after_a_while_and_a_late_one_is_held() {
        let f = Fixture::new();
        let e = f.executor();
        f.hold_to("AAAAAA1", &["all@example.org", "bob@example.org"]);
        let rq = f.file("AAAAAA1", release_to(&["bob@example.org"]));
        assert!(f.store.claim(rq.id, 250).unwrap());
        let token = f.store.copy_token(rq.id, "abcd").unwrap();
        f.store.copy_sent(rq.id, 1000).unwrap();
        let running = f.request(&rq);
        assert_eq!(
            e.check_copy(&running, 1000 + COPY_WAIT.as_secs()).unwrap(),
            None
        );
        let still = e.check_copy(&running, 1000 + 60).unwrap().unwrap();
        assert!(still.open && !still.ok, "{still:?}");
        assert_eq!(f.request(&rq).state, RequestState::Running);
        let failed = e
            .check_copy(&running, 1000 + COPY_GIVE_UP.as_secs())
            .unwrap()
            .unwrap();
        assert!(!failed.ok && !failed.open, "{failed:?}");
        assert!(
            failed.result.contains("never seen by the milter"),
            "{failed:?}"
        );
        assert_eq!(f.request(&rq).state, RequestState::Failed);
        assert_eq!(f.record("AAAAAA1").state, State::Held);
        assert_eq!(f.postsuper_calls(), 0);
        let mark = CopyMark {
            original: "AAAAAA1".into(),
            request: rq.id,
            token,
        };
        assert_eq!(
            f.store
                .accept_copy(&mark, "BBBBBB9", &["bob@example.org".to_owned()], 2000)
                .unwrap(),
            CopyCheck::Repeated(format!("request {} is failed", rq.id))
        );
        let other = f.store.requests(rq.held_id).unwrap();
        assert_eq!(other[0].copy_queue_id, None);
        assert_eq!(
            e.check_copy(
                &Request {
                    action: RequestAction::Release,
                    ..running.clone()
                },
                5000
            )
            .unwrap(),
            None,
            "only a release to chosen recipients has a copy"
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
