// SPDX-License-Identifier: GPL-3.0-or-later
//! Release to chosen recipients: how the [`Executor`] carries it out.
//!
//! Postfix cannot release a held message to some of its recipients, so the worker makes
//! a copy for the chosen ones and deletes the original, with Postfix's queue as the
//! judge of every step:
//!
//! 1. [`Executor::release_to`]: the original must be in Postfix's hold queue with the
//!    chosen recipients among its own, and the copy must pass fanout-milter
//!    (`non_smtpd_milters` names it, `milter_default_action` is not `accept`, pickup
//!    does not turn milters off). The request gets a secret token; the held message
//!    (`postcat -bh`) goes to sendmail for the chosen recipients, marked with a
//!    [`COPY_HEADER`] naming the original, the request and the token.
//! 2. The milter checks the mark in the store, records the copy's queue id as one of the
//!    request's copies, removes the header and **holds** the copy (rule `copy`).
//! 3. [`Executor::advance`], on each look: a held copy whose recipients (as Postfix has
//!    them) are exactly the chosen ones is released (`postsuper -H`); any other held
//!    copy of the request is deleted; then the original is deleted (`postsuper -d`).
//!
//! Nothing is delivered but by the worker's release of one copy, checked in the queue,
//! while the original is still held; every step can run again after a crash. A copy
//! made twice (the worker died around sendmail and made it again) is held and deleted;
//! a copy that arrives after its request is over is held for an admin.

use super::index::{COPY_HEADER, CopyMark, QuarantineIndex, Request, RequestState};
use super::postfix::QueuedMessage;
use super::record::{QueueId, Record, State};
use super::worker::{Executed, Executor, Step};
use crate::text;
use std::time::Duration;

/// How long after a copy was handed to Postfix the request fails if the milter never
/// held it (the original stays held; a copy that turns up later is held for an admin).
pub const COPY_GIVE_UP: Duration = Duration::from_secs(600);
/// How many copies the worker makes for one request at most (one, and one again after
/// each crash around sendmail).
pub const MAX_COPY_ATTEMPTS: u32 = 3;

impl Executor<'_> {
    /// Starts a release to chosen recipients: the checks, then the first copy.
    pub(super) fn release_to(
        &self,
        request: &Request,
        r: &Record,
        chosen: &[String],
        now: u64,
    ) -> Step {
        let id = &r.message.queue_id;
        let original = match self.held_in_queue(r) {
            Ok(q) => q,
            Err(e) => return Step::Over(Err(format!("{e}: nothing done"))),
        };
        if let Some(other) = chosen.iter().find(|c| {
            !original
                .recipients
                .iter()
                .any(|q| q.address.eq_ignore_ascii_case(c))
        }) {
            return Step::Over(Err(format!(
                "{id}: {} is not a recipient of the held message as Postfix has it: nothing done",
                text::neutralize(other)
            )));
        }
        if let Err(e) = self.copies_pass_the_milter() {
            return Step::Over(Err(format!("{id}: {e}: nothing done")));
        }
        self.send_copy(request, r, &original.sender, chosen, now)
    }

    /// The original as Postfix's queue has it, if it is in the hold queue.
    fn held_in_queue(&self, r: &Record) -> Result<QueuedMessage, String> {
        let id = &r.message.queue_id;
        let queue = self
            .postfix
            .queue()
            .map_err(|e| format!("{id}: cannot read Postfix's queue: {e}"))?;
        match queue.into_iter().find(|q| q.queue_id == id.as_str()) {
            Some(q) if q.queue_name == "hold" => Ok(q),
            Some(q) => Err(format!(
                "{id}: not in Postfix's hold queue (in its {} queue)",
                q.queue_name
            )),
            None => Err(format!("{id}: no longer in Postfix's queue")),
        }
    }

    /// Whether a copy handed to sendmail surely passes fanout-milter: Postfix's
    /// `non_smtpd_milters` names its socket, `milter_default_action` does not let mail
    /// pass when the milter is down, and master.cf does not turn milters off for
    /// pickup. Otherwise the copy could reach the chosen recipients unchecked, and the
    /// worker would never learn of it.
    fn copies_pass_the_milter(&self) -> Result<(), String> {
        let values = self
            .postfix
            .postconf(&["non_smtpd_milters", "milter_default_action"])
            .map_err(|e| format!("cannot read Postfix's settings: {e}"))?;
        let milters = values.first().map(String::as_str).unwrap_or_default();
        let listen = &self.config.raw.milter.listen;
        if milters.trim().is_empty() {
            return Err(
                "Postfix's non_smtpd_milters is empty, so the milter would never see the copy"
                    .into(),
            );
        }
        if !names_socket(milters, listen) {
            return Err(format!(
                "Postfix's non_smtpd_milters ({}) does not name fanout-milter's socket ({})",
                text::neutralize(milters),
                text::neutralize(listen)
            ));
        }
        if values.get(1).is_some_and(|a| a.trim() == "accept") {
            return Err(
                "Postfix's milter_default_action is accept: a copy would pass \
                        unchecked whenever the milter is down"
                    .into(),
            );
        }
        let services = self
            .postfix
            .service_settings()
            .map_err(|e| format!("cannot read master.cf's settings: {e}"))?;
        if let Some(line) = services.lines().find(|l| {
            l.starts_with("pickup/")
                && ((l.contains("receive_override_options") && l.contains("no_milters"))
                    || l.contains("non_smtpd_milters"))
        }) {
            return Err(format!(
                "master.cf changes the milters of pickup ({})",
                text::neutralize(line.trim())
            ));
        }
        Ok(())
    }

    /// Hands Postfix a copy of the held message for `chosen`, marked for the milter.
    fn send_copy(
        &self,
        request: &Request,
        r: &Record,
        sender: &str,
        chosen: &[String],
        now: u64,
    ) -> Step {
        let id = &r.message.queue_id;
        let sent = (|| {
            let fresh = crate::token::random_id()?;
            let token = self
                .store
                .copy_token(request.id, &fresh)
                .map_err(|e| e.to_string())?;
            let content = self
                .postfix
                .content(id)
                .map_err(|e| format!("cannot read the held message: {e}"))?;
            let mark = CopyMark {
                original: id.as_str().to_owned(),
                request: request.id,
                token,
            };
            crate::notify::send_mail(
                &self.config.postfix,
                sender,
                chosen,
                &marked(&content, &mark),
            )
            .map_err(|e| format!("Postfix refused the copy: {e}"))?;
            self.store
                .copy_sent(request.id, now)
                .map_err(|e| format!("a copy was handed to Postfix, but not recorded: {e}"))
        })();
        match sent {
            Ok(()) => Step::Waiting(format!(
                "{id}: a copy to {} was handed to Postfix; the milter holds it, then the \
                 worker releases it and deletes the original",
                chosen.join(", ")
            )),
            Err(e) => Step::Over(Err(format!("{id}: {e}; the original is still held"))),
        }
    }

    /// One look at a running release to chosen recipients: what Postfix's queue and
    /// the store say decides the next step; each step may run again.
    pub(super) fn advance(&self, request: &Request, chosen: &[String], now: u64) -> Step {
        let fresh = self
            .store
            .requests(request.held_id)
            .map(|all| all.into_iter().find(|q| q.id == request.id));
        let request = match fresh {
            Ok(Some(q)) if q.state == RequestState::Running => q,
            Ok(Some(q)) => {
                return Step::Settled(Executed {
                    ok: q.state == RequestState::Done,
                    open: false,
                    result: q.result.unwrap_or_default(),
                });
            }
            Ok(None) => return Step::Over(Err(format!("request {} is gone", request.id))),
            Err(e) => return Step::Waiting(format!("cannot read the request: {e}")),
        };
        let r = match self.store.record_by_id(request.held_id) {
            Ok(r) => r,
            Err(e) => return Step::Waiting(format!("cannot read the record: {e}")),
        };
        let id = r.message.queue_id.clone();
        let (queue, copies) = match (self.postfix.queue(), self.store.copies(request.id)) {
            (Ok(q), Ok(c)) => (q, c),
            (Err(e), _) => {
                return Step::Waiting(format!("{id}: cannot read Postfix's queue: {e}"));
            }
            (_, Err(e)) => return Step::Waiting(format!("{id}: cannot read the copies: {e}")),
        };
        let find = |qid: &str| queue.iter().find(|q| q.queue_id == qid);
        let to = chosen.join(", ");
        let review = self.review(&request, now);
        let n = request.id;
        let released = match request.copy_queue_id.clone().or_else(|| {
            // A copy whose record this request claimed as released before a crash.
            copies
                .iter()
                .find(|c| self.record_state(c) == Some(State::Released))
                .cloned()
        }) {
            Some(copy) => copy,
            None => {
                let held: Vec<&QueuedMessage> = copies
                    .iter()
                    .filter_map(|c| find(c))
                    .filter(|q| q.queue_name == "hold")
                    .collect();
                let Some(first) = held.first() else {
                    return self.no_copy_yet(&request, &r, chosen, find(id.as_str()), now);
                };
                let Some(good) = held.iter().find(|q| {
                    same_addresses(q.recipients.iter().map(|a| a.address.as_str()), chosen)
                }) else {
                    let theirs: Vec<&str> = first
                        .recipients
                        .iter()
                        .map(|a| a.address.as_str())
                        .collect();
                    return Step::Over(Err(format!(
                        "{id}: the copy {} is held with the recipients {} as Postfix has them, \
                         not the chosen {to} (address rewriting?): it stays held for an admin, \
                         and so does the original",
                        first.queue_id,
                        text::neutralize(&theirs.join(", "))
                    )));
                };
                match find(id.as_str()) {
                    Some(q) if q.queue_name == "hold" => {}
                    Some(q) => {
                        return Step::Over(Err(format!(
                            "{id}: the original left the hold queue (it is in Postfix's {} \
                             queue: released outside fanout-milter) before its copy was \
                             released; the copy {} stays held",
                            q.queue_name, good.queue_id
                        )));
                    }
                    None => {
                        return Step::Over(Err(format!(
                            "{id}: the original is no longer in Postfix's queue (deleted \
                             outside fanout-milter); the copy {} stays held",
                            good.queue_id
                        )));
                    }
                }
                let copy = match QueueId::parse(&good.queue_id).map(|q| self.store.get(&q)) {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Step::Waiting(format!("{id}: the copy's record: {e}")),
                    Err(e) => return Step::Over(Err(format!("{id}: the copy: {e}"))),
                };
                let why = format!(
                    "the copy for release request {n} to {to}: {}",
                    Self::comment(&request)
                );
                if let Err(e) = review.release_record(&copy, Some(why)) {
                    return Step::Over(Err(format!(
                        "{id}: the copy {} could not be released ({e}); it and the original \
                         stay held",
                        good.queue_id
                    )));
                }
                if let Err(e) = self.store.copy_released(n, &good.queue_id) {
                    tracing::warn!(request = n, "the released copy is not noted: {e}");
                }
                for extra in held.iter().filter(|q| q.queue_id != good.queue_id) {
                    let gone = QueueId::parse(&extra.queue_id)
                        .map_err(|e| e.to_string())
                        .and_then(|q| self.store.get(&q).map_err(|e| e.to_string()))
                        .and_then(|c| {
                            review.discard_record(
                                &c,
                                Some(format!("a second copy for release request {n}")),
                            )
                        });
                    if let Err(e) = gone {
                        tracing::warn!(request = n, copy = %extra.queue_id, "a second copy not deleted: {e}");
                    }
                }
                good.queue_id.clone()
            }
        };
        let comment = format!("to {to} as {released}: {}", Self::comment(&request));
        match find(id.as_str()) {
            Some(q) if q.queue_name == "hold" => {
                if r.state == State::Held
                    && let Err(e) =
                        review.claim_record(&r, State::Released, "release-to", Some(comment))
                {
                    return Step::Waiting(format!(
                        "{e}; the copy went out as {released}; deleting the original is tried again"
                    ));
                }
                match review.deleted(&r, State::Released) {
                    Ok(words) => Step::Over(Ok(self.notified(
                        &review,
                        &r,
                        &request,
                        format!(
                            "{id}: released to {to} as a copy ({released}); the original was \
                             deleted ({words})"
                        ),
                    ))),
                    Err(e) => Step::Waiting(format!(
                        "{e}; the copy went out as {released}; deleting the original is tried \
                         again"
                    )),
                }
            }
            Some(q) => Step::Over(Err(format!(
                "{id}: the copy went out as {released}, but the original is in Postfix's {} \
                 queue (released outside fanout-milter): it goes to all its recipients",
                q.queue_name
            ))),
            None => {
                if r.state == State::Held {
                    let _ = review.claim_record(&r, State::Released, "release-to", Some(comment));
                }
                Step::Over(Ok(self.notified(
                    &review,
                    &r,
                    &request,
                    format!(
                        "{id}: released to {to} as a copy ({released}); the original had left \
                         the hold queue"
                    ),
                )))
            }
        }
    }

    fn record_state(&self, queue_id: &str) -> Option<State> {
        let q = QueueId::parse(queue_id).ok()?;
        self.store.get(&q).ok().map(|r| r.state)
    }

    /// No copy is held yet: wait for it, make it (again) when none was recorded as
    /// made (the worker died around sendmail), or give up.
    fn no_copy_yet(
        &self,
        request: &Request,
        r: &Record,
        chosen: &[String],
        original: Option<&QueuedMessage>,
        now: u64,
    ) -> Step {
        let id = &r.message.queue_id;
        match request.copy_sent_at {
            None if request.copy_attempts >= MAX_COPY_ATTEMPTS => Step::Over(Err(format!(
                "{id}: no copy after {} attempts: the original is still held",
                request.copy_attempts
            ))),
            None => match original {
                Some(q) if q.queue_name == "hold" => {
                    let sender = q.sender.clone();
                    self.send_copy(request, r, &sender, chosen, now)
                }
                _ => Step::Over(Err(format!(
                    "{id}: no longer in Postfix's hold queue, and no copy was made: nothing done"
                ))),
            },
            Some(at) if now.saturating_sub(at) >= COPY_GIVE_UP.as_secs() => {
                Step::Over(Err(format!(
                    "{id}: the milter held no copy within {} of handing it to Postfix at {}: \
                     is fanout-milter's socket in non_smtpd_milters, and is pickup running? \
                     The copy may have gone out without passing the milter (see the mail \
                     log). The original is still held; a copy that turns up later is held \
                     for an admin",
                    humantime::format_duration(COPY_GIVE_UP),
                    text::utc_seconds(at)
                )))
            }
            Some(_) => Step::Waiting(format!(
                "{id}: a copy to {} was handed to Postfix; waiting for the milter to hold it",
                chosen.join(", ")
            )),
        }
    }
}

/// Whether Postfix's milter list `milters` names the socket fanout-milter listens on
/// (`[milter] listen`): the same TCP port, or the same unix socket file name (Postfix
/// may name it relative to its chroot).
fn names_socket(milters: &str, listen: &str) -> bool {
    let items = milters
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty());
    if let Some(addr) = listen.strip_prefix("inet:") {
        let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or(addr);
        items
            .filter_map(|m| m.strip_prefix("inet:"))
            .any(|m| m.rsplit_once(':').is_some_and(|(_, p)| p == port))
    } else if let Some(path) = listen.strip_prefix("unix:") {
        let name = std::path::Path::new(path).file_name();
        items
            .filter_map(|m| m.strip_prefix("unix:").or(Some(m)))
            .any(|m| std::path::Path::new(m).file_name() == name)
    } else {
        true
    }
}

/// The same envelope addresses, without regard to ASCII case, order or repeats.
fn same_addresses<'a>(a: impl Iterator<Item = &'a str>, b: &[String]) -> bool {
    let set = |v: &mut dyn Iterator<Item = &str>| {
        v.map(|s| s.to_ascii_lowercase())
            .collect::<std::collections::BTreeSet<_>>()
    };
    set(&mut { a }) == set(&mut b.iter().map(String::as_str))
}

/// The held message as a copy: any [`COPY_HEADER`] field it had is dropped, and the
/// mark goes first. `content` is `postcat -bh` output: header lines, an empty line,
/// the body.
pub(super) fn marked(content: &[u8], mark: &CopyMark) -> Vec<u8> {
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
    fn the_milter_list_must_name_our_socket() {
        assert!(names_socket("inet:127.0.0.1:7785", "inet:127.0.0.1:7785"));
        assert!(names_socket(
            "inet:localhost:8891, inet:127.0.0.1:7785",
            "inet:127.0.0.1:7785"
        ));
        assert!(!names_socket("inet:127.0.0.1:8891", "inet:127.0.0.1:7785"));
        assert!(!names_socket(
            "unix:/run/opendkim.sock",
            "inet:127.0.0.1:7785"
        ));
        assert!(names_socket(
            "unix:/fanout-milter/milter.sock",
            "unix:/var/spool/postfix/fanout-milter/milter.sock"
        ));
        assert!(!names_socket(
            "unix:/run/opendkim.sock",
            "unix:/run/fanout-milter/milter.sock"
        ));
    }

    #[test]
    fn addresses_compare_as_sets_without_ascii_case() {
        let chosen = ["Bob@example.org".to_owned(), "cy@example.org".to_owned()];
        assert!(same_addresses(
            ["cy@example.org", "bob@EXAMPLE.org"].into_iter(),
            &chosen
        ));
        assert!(!same_addresses(["cy@example.org"].into_iter(), &chosen));
        assert!(!same_addresses(
            ["cy@example.org", "bob@example.org", "all@example.org"].into_iter(),
            &chosen
        ));
    }
}
