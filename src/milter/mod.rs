// SPDX-License-Identifier: GPL-3.0-or-later
//! The milter adapter: indymilter callbacks that collect facts, ask the policy core and
//! apply its verdict. Every fault ends in a 451 tempfail, never in a silent accept.

pub(crate) mod apply;
pub(crate) mod listener;
pub(crate) mod session;

pub use session::Session;

use crate::decide::{GuardState, Outlet, decide};
use crate::notify::AlertKind;
use crate::policy::effect::fault_reply;
use crate::policy::{self, Evaluation, NO_QUEUE_ID, ReleasedCopy};
use crate::quarantine::{self, COPY_HEADER, CopyCheck, CopyMark, QuarantineIndex, QueueId};
use crate::shared::Shared;
use crate::text;
use futures_util::FutureExt;
use indymilter::{
    Actions, Callbacks, Context, EomContext, MacroStage, NegotiateContext, ProtoOpts, SocketInfo,
    Status,
};
use std::ffi::{CStr, CString};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// The milter actions fanout-milter uses.
pub const ACTIONS: Actions = Actions::ADD_HEADER
    .union(Actions::CHANGE_HEADER)
    .union(Actions::QUARANTINE);

/// Builds the callbacks for one milter server.
pub fn make_callbacks(shared: Arc<Shared>) -> Callbacks<Session> {
    let mail_shared = shared.clone();
    let metrics = shared.metrics.clone();
    let eom_shared = shared;
    Callbacks::new()
        .on_negotiate(move |cx, actions, opts| {
            let connection = metrics.connected();
            Box::pin(handle_negotiate(cx, actions, opts, connection))
        })
        .on_connect(|cx, host, socket| Box::pin(handle_connect(cx, host, socket)))
        .on_mail(move |cx, args| Box::pin(handle_mail(cx, args, mail_shared.clone())))
        .on_rcpt(|cx, args| Box::pin(handle_rcpt(cx, args)))
        .on_data(|_cx| Box::pin(handle_data()))
        .on_header(|cx, name, value| Box::pin(handle_header(cx, name, value)))
        .on_eoh(|cx| Box::pin(handle_eoh(cx)))
        .on_eom(move |cx| Box::pin(handle_eom(cx, eom_shared.clone())))
        .on_abort(|cx| Box::pin(handle_abort(cx)))
        .on_close(|cx| Box::pin(handle_close(cx)))
}

/// Stages whose reply the milter waives when the MTA offers it: fanout-milter decides
/// only at end of message, so these replies say nothing, and without them Postfix
/// streams MAIL, every RCPT and every header without waiting (one round trip per
/// message instead of one per recipient and header). DATA stays answered: see
/// [`handle_data`]. If the milter dies mid-message, Postfix's next write or the read of
/// the end-of-message reply fails and `milter_default_action` applies, as before.
pub const NOREPLY: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH);

/// The macros the decision reads, asked for per stage at negotiation (SETSYMLIST): the
/// SASL login at MAIL and the queue id at end of message. Without a list Postfix sends its
/// default lists, among them four macros with every RCPT (two of them the recipient's
/// transport and next hop, looked up for the purpose) and the queue id with every
/// header; with this one it evaluates and sends nothing else. Every stage is named, because Postfix replaces an empty or
/// missing list by its own default list (measured with Postfix 3.7); the stages whose
/// macros are not read get [`NO_MACRO`].
pub const REQUESTED_MACROS: [(MacroStage, &CStr); 7] = [
    (MacroStage::Connect, NO_MACRO),
    (MacroStage::Helo, NO_MACRO),
    (MacroStage::Mail, c"{auth_authen}"),
    (MacroStage::Rcpt, NO_MACRO),
    (MacroStage::Data, NO_MACRO),
    (MacroStage::Eoh, NO_MACRO),
    (MacroStage::Eom, c"i"),
];

/// A macro name no MTA defines, the list of a stage whose macros the milter does not
/// read: it has no value, so the MTA sends an empty macro packet for that stage.
pub const NO_MACRO: &CStr = c"{fanout_none}";

async fn handle_negotiate(
    cx: &mut NegotiateContext<Session>,
    offered: Actions,
    offered_opts: ProtoOpts,
    connection: crate::metrics::ConnectionGuard,
) -> Status {
    let missing = ACTIONS.difference(offered);
    if !missing.is_empty() {
        warn!(
            "the MTA does not offer milter actions {missing:?}; messages that need them will be tempfailed"
        );
    }
    cx.requested_actions = ACTIONS.intersection(offered);
    // An MTA that cannot take a macro list sends its defaults, which include these.
    if offered.contains(Actions::REQUEST_MACROS) {
        cx.requested_actions |= Actions::REQUEST_MACROS;
        cx.requested_macros = REQUESTED_MACROS
            .iter()
            .map(|(stage, names)| (*stage, CString::from(*names)))
            .collect();
    }
    let noreply = NOREPLY.intersection(offered_opts);
    cx.requested_opts |= noreply;
    let mut session = Session::new(noreply);
    session.connection = Some(connection);
    cx.data = Some(session);
    Status::Continue
}

/// The reply to a stage: none when its reply was waived at negotiation.
fn ack(cx: &Context<Session>, stage: ProtoOpts) -> Status {
    match &cx.data {
        Some(session) if session.noreply.contains(stage) => Status::Noreply,
        _ => Status::Continue,
    }
}

async fn handle_connect(cx: &mut Context<Session>, _host: CString, socket: SocketInfo) -> Status {
    let local_submission = matches!(&socket, SocketInfo::Inet(addr) if addr.port() == 0);
    let client = match socket {
        SocketInfo::Inet(addr) => Some(addr.ip().to_string()),
        SocketInfo::Unix(path) => Some(path.to_string_lossy().into_owned()),
        SocketInfo::Unknown => None,
    };
    let session = cx.data.get_or_insert_with(Session::default);
    session.conn.client = client;
    session.conn.local_submission = local_submission;
    session.abort_message();
    ack(cx, ProtoOpts::NOREPLY_CONNECT)
}

async fn handle_mail(cx: &mut Context<Session>, args: Vec<CString>, shared: Arc<Shared>) -> Status {
    let sender = args
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    let login = cx
        .macros
        .get(c"{auth_authen}")
        .map(|v| v.to_string_lossy().into_owned());
    let runtime = shared.current();
    let inflight = shared.inflight.enter();
    let session = cx.data.get_or_insert_with(Session::default);
    session.init_message(runtime, &sender, login, inflight);
    ack(cx, ProtoOpts::NOREPLY_MAIL)
}

async fn handle_rcpt(cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    if let (Some(msg), Some(rcpt)) = (cx.data.as_mut().and_then(|s| s.msg.as_mut()), args.first()) {
        msg.add_envelope_recipient(&rcpt.to_string_lossy());
    }
    ack(cx, ProtoOpts::NOREPLY_RCPT)
}

/// DATA is answered although the milter has nothing to check there. Measured with
/// SMFIP_NODATA instead: Postfix stalled about 40 ms per message on TCP (22 instead of
/// 281 messages per second on one SMTP session, scripts/bench-pipeline; libmilter and
/// OpenDKIM do the same), because Postfix writes its macro and command packets
/// separately with Nagle on, and without the DATA round trip one of those writes waits
/// for the milter's delayed ACK. The extra round trip costs far less.
async fn handle_data() -> Status {
    Status::Continue
}

async fn handle_header(cx: &mut Context<Session>, name: CString, value: CString) -> Status {
    if let Some(msg) = cx.data.as_mut().and_then(|s| s.msg.as_mut()) {
        msg.add_header(name.as_bytes(), value.as_bytes());
    }
    ack(cx, ProtoOpts::NOREPLY_HEADER)
}

/// End of headers is taken (with its reply waived) only so that the MTA sends it: the
/// milter library accepts end of message after DATA only by way of a header or end of
/// headers, and a message may come without headers.
async fn handle_eoh(cx: &mut Context<Session>) -> Status {
    ack(cx, ProtoOpts::NOREPLY_EOH)
}

async fn handle_abort(cx: &mut Context<Session>) -> Status {
    if let Some(session) = cx.data.as_mut() {
        session.abort_message();
    }
    Status::Continue
}

async fn handle_close(cx: &mut Context<Session>) -> Status {
    cx.data = None;
    Status::Continue
}

async fn handle_eom(cx: &mut EomContext<Session>, shared: Arc<Shared>) -> Status {
    let started = std::time::Instant::now();
    let queue_id = cx
        .macros
        .get(c"i")
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|q| !q.is_empty());
    let shown = queue_id.clone().unwrap_or_else(|| NO_QUEUE_ID.to_owned());
    let runtime = cx
        .data
        .as_ref()
        .and_then(|s| s.msg.as_ref())
        .map(|m| m.runtime.clone());
    let replies = runtime.as_ref().map(|r| &r.config.replies);
    let result = AssertUnwindSafe(decide_and_apply(cx, &shared, queue_id, &shown))
        .catch_unwind()
        .await;
    if let Some(session) = cx.data.as_mut() {
        session.abort_message();
    }
    match &result {
        Ok(Ok((_, evaluation))) => shared.metrics.decided(evaluation, started.elapsed()),
        Ok(Err(EomError::NoMessage)) => shared.metrics.protocol_error(),
        _ => {}
    }
    if let Some(cause) = fault_cause(&result) {
        shared.metrics.faulted(cause, started.elapsed());
    }
    match result {
        Ok(Ok((status, _))) => status,
        Ok(Err(EomError::State(e))) => {
            error!(queue_id = %shown, verdict = "tempfail", "storm and rate state unavailable, message tempfailed: {}", crate::text::neutralize(&e.to_string()));
            let fault = fault_reply(replies, "storm and rate state unavailable", &shown);
            apply::tempfail(&mut cx.reply, &fault, &shown)
        }
        Ok(Err(e)) => {
            error!(queue_id = %shown, verdict = "tempfail", "internal error, message tempfailed: {}", crate::text::neutralize(&format!("{e:#}")));
            apply::tempfail(
                &mut cx.reply,
                &fault_reply(replies, "internal error", &shown),
                &shown,
            )
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error!(queue_id = %shown, verdict = "tempfail", "internal fault (panic: {}), message tempfailed", crate::text::neutralize(&what));
            apply::tempfail(
                &mut cx.reply,
                &fault_reply(replies, "internal error", &shown),
                &shown,
            )
        }
    }
}

/// Why the milter tempfailed a message it could not decide; `None` when it decided
/// (the decision is counted where it is made, with its verdict).
fn fault_cause<T, P>(result: &Result<Result<T, EomError>, P>) -> Option<crate::metrics::Tempfail> {
    use crate::metrics::Tempfail;
    match result {
        Ok(Ok(_)) => None,
        Ok(Err(EomError::State(_))) => Some(Tempfail::StateBackend),
        Ok(Err(EomError::NoQueueId(_))) => Some(Tempfail::QueueIdMissing),
        Ok(Err(_)) | Err(_) => Some(Tempfail::Internal),
    }
}

/// Why a message could not be decided.
#[derive(Debug, thiserror::Error)]
enum EomError {
    #[error("end of message without MAIL FROM (no message data)")]
    NoMessage,
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error("cannot quarantine without a valid queue id (macro i): {0}")]
    NoQueueId(String),
    #[error("quarantine record not written: {0}")]
    Record(String),
    #[error("cannot check a released copy in the quarantine store: {0}")]
    Copy(String),
    #[error("cannot remove the {COPY_HEADER} header: {0}")]
    CopyHeader(indymilter::ActionError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// How long recording a held message may take before the message is tempfailed.
const RECORD_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the store may take to commit a hold: shorter than [`RECORD_TIMEOUT`], so
/// that a hold committed at all is committed before the message is tempfailed (a
/// write past it is rolled back, not left to commit for a tempfailed message).
const RECORD_DEADLINE: Duration = Duration::from_secs(RECORD_TIMEOUT.as_secs() - 5);

/// Writes the quarantine record, durably, before Postfix is told to hold the message.
async fn record_held(
    shared: &Shared,
    queue_id: Option<&str>,
    facts: &policy::MessageFacts,
    evaluation: &Evaluation,
    headers: Vec<(String, String)>,
) -> Result<(), EomError> {
    let id = QueueId::parse(queue_id.unwrap_or_default())
        .map_err(|e| EomError::NoQueueId(e.to_string()))?;
    let now = crate::clock::epoch_secs(shared.now());
    let held = quarantine::held_message(id, now, facts, evaluation, headers);
    // A copy held for the worker is part of a reviewer's action, not news for admins;
    // nor is a message waiting for its sender to confirm it (the desk shows it).
    let alert = !(matches!(facts.released, Some(ReleasedCopy::Accepted { .. })) || held.confirm);
    let alert = alert.then(|| quarantine::alert(AlertKind::Quarantined, &held, now));
    let store = shared.store.clone();
    let deadline = std::time::Instant::now() + RECORD_DEADLINE;
    let write =
        tokio::task::spawn_blocking(move || store.record_held_by(&held, "milter", None, deadline));
    match tokio::time::timeout(RECORD_TIMEOUT, write).await {
        Ok(Ok(Ok(_))) => {
            if let Some(alert) = alert {
                shared.alerts.send(alert);
            }
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(EomError::Record(e.to_string())),
        Ok(Err(e)) => Err(EomError::Record(format!("writer task failed: {e}"))),
        Err(_) => Err(EomError::Record(format!(
            "no answer from the store within {}s",
            RECORD_TIMEOUT.as_secs()
        ))),
    }
}

/// The milter's outlet for a decision: the quarantine record in the store, the effect
/// through the end-of-message context.
struct EomOutlet<'a> {
    cx: &'a mut EomContext<Session>,
    shared: &'a Shared,
    queue_id: Option<&'a str>,
    shown: &'a str,
    foreign_verdict_headers: i32,
    /// How many [`COPY_HEADER`] fields to remove.
    copy_headers: i32,
    /// The message's header fields, moved into the record when it is held.
    header_fields: Vec<(String, String)>,
}

impl Outlet for EomOutlet<'_> {
    type Error = EomError;
    type Applied = Status;

    async fn record_held(
        &mut self,
        facts: &policy::MessageFacts,
        evaluation: &Evaluation,
    ) -> Result<(), EomError> {
        let headers = std::mem::take(&mut self.header_fields);
        record_held(self.shared, self.queue_id, facts, evaluation, headers).await
    }

    async fn confirmed(&mut self, key: &str) -> Vec<policy::ConfirmedList> {
        let store = self.shared.store.clone();
        let now = crate::clock::epoch_secs(self.shared.now());
        let owned = key.to_owned();
        let read = tokio::task::spawn_blocking(move || store.confirmed_lists(&owned, now));
        match tokio::time::timeout(RECORD_TIMEOUT, read).await {
            Ok(Ok(Ok(lists))) => lists,
            failed => {
                let why = match failed {
                    Ok(Ok(Err(e))) => e.to_string(),
                    Ok(Err(e)) => format!("reader task failed: {e}"),
                    _ => "no answer from the store in time".to_owned(),
                };
                warn!(
                    queue_id = self.shown,
                    "the sender's confirmations could not be read, so the message waits for \
                     the sender: {}",
                    text::neutralize(&why)
                );
                Vec::new()
            }
        }
    }

    async fn apply(&mut self, effect: &policy::Effect) -> Result<Status, EomError> {
        apply::remove_headers(self.cx, COPY_HEADER, self.copy_headers)
            .await
            .map_err(EomError::CopyHeader)?;
        Ok(apply::apply(self.cx, effect, self.shown, self.foreign_verdict_headers).await?)
    }
}

async fn decide_and_apply(
    cx: &mut EomContext<Session>,
    shared: &Shared,
    queue_id: Option<String>,
    shown: &str,
) -> Result<(Status, Evaluation), EomError> {
    let session = cx.data.as_mut().ok_or(EomError::NoMessage)?;
    let msg = session.msg.take().ok_or(EomError::NoMessage)?;
    let local_submission = session.conn.local_submission;
    let finished = msg.finish(queue_id.clone(), &session.conn);
    let runtime = finished.runtime.clone();
    let config = &runtime.config;
    let mut facts = finished.facts;
    if finished.copy_headers > 0 {
        facts.released = released_copy(
            shared,
            queue_id.as_deref(),
            &finished.copy_marks,
            finished.copy_headers,
            local_submission,
            shown,
        )
        .await?;
    }
    let mut outlet = EomOutlet {
        cx,
        shared,
        queue_id: queue_id.as_deref(),
        shown,
        foreign_verdict_headers: finished.foreign_verdict_headers,
        copy_headers: finished.copy_headers,
        header_fields: finished.header_fields,
    };
    let decision = decide(
        &config.policy,
        &config.replies,
        &facts,
        shown,
        &mut GuardState::new(&shared.guard),
        &mut outlet,
    )
    .await?;
    log_decision(shown, &facts, &decision.evaluation, config.policy.mode);
    Ok((decision.applied, decision.evaluation))
}

/// What a message that carries [`COPY_HEADER`] is: a copy the root worker made for a
/// release to chosen recipients (checked against the request in the store, which records
/// it), a copy of a request that is over, or neither (a header fanout-milter did not
/// write, or one that came by SMTP: the message is decided as any other). The header is
/// removed in every case; a copy is held either way.
async fn released_copy(
    shared: &Shared,
    queue_id: Option<&str>,
    marks: &[String],
    count: i32,
    local_submission: bool,
    shown: &str,
) -> Result<Option<ReleasedCopy>, EomError> {
    let mark = match (count, marks.first().and_then(|m| CopyMark::parse(m))) {
        (1, Some(mark)) if local_submission => mark,
        _ => {
            warn!(
                queue_id = shown,
                local_submission,
                "{count} {COPY_HEADER} header(s) fanout-milter did not write (the worker's \
                 copies come by sendmail, one mark each): removed, the message is decided as \
                 any other"
            );
            return Ok(None);
        }
    };
    let Some(id) = queue_id.map(str::to_owned) else {
        warn!("a copy marked {COPY_HEADER} came without a queue id: decided as any other");
        return Ok(None);
    };
    let request = mark.request;
    let original = mark.original.clone();
    let store = shared.store.clone();
    let now = crate::clock::epoch_secs(shared.now());
    let check = tokio::task::spawn_blocking(move || store.accept_copy(&mark, &id, now));
    let check = match tokio::time::timeout(RECORD_TIMEOUT, check).await {
        Ok(Ok(Ok(check))) => check,
        Ok(Ok(Err(e))) => return Err(EomError::Copy(e.to_string())),
        Ok(Err(e)) => return Err(EomError::Copy(format!("checker task failed: {e}"))),
        Err(_) => {
            return Err(EomError::Copy(format!(
                "no answer from the store within {}s",
                RECORD_TIMEOUT.as_secs()
            )));
        }
    };
    Ok(match check {
        CopyCheck::Accepted => {
            info!(
                queue_id = shown,
                request,
                original = %original,
                "the copy of a message released to chosen recipients, held for the worker"
            );
            Some(ReleasedCopy::Accepted { request })
        }
        CopyCheck::Late(why) => {
            let why = text::neutralize(&why).into_owned();
            warn!(queue_id = shown, request, original = %original, "a late copy, held for an admin: {why}");
            Some(ReleasedCopy::Late { why })
        }
        CopyCheck::Unknown(why) => {
            warn!(
                queue_id = shown,
                "a {COPY_HEADER} header fanout-milter did not write ({}): removed, the \
                 message is decided as any other",
                text::neutralize(&why)
            );
            None
        }
    })
}

fn log_decision(queue_id: &str, facts: &policy::MessageFacts, e: &Evaluation, mode: policy::Mode) {
    let v = &e.verdict;
    let sender = if facts.sender.is_empty() {
        "<>"
    } else {
        &facts.sender
    };
    info!(
        queue_id,
        verdict = %v.action,
        intended = %v.intended,
        rules = %v.rules(),
        sender,
        sasl_login = facts.sasl_login.as_deref().unwrap_or("-"),
        client = facts.client.as_deref().unwrap_or("-"),
        envelope = e.counts.envelope,
        external = e.counts.external,
        visible = e.counts.visible,
        audience = e.counts.audience,
        lists = e.counts.lists,
        largest_list = facts
            .audience
            .as_ref()
            .and_then(|a| a.lists.first())
            .map_or("-", |l| &*l.address),
        mode = mode.as_str(),
        exempt_by = v.exempt_by.as_deref().unwrap_or("-"),
        headers_truncated = facts.headers.truncated,
        reason = %v.summary(),
        "decision"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use crate::policy::{Action, AudienceFacts, ListFacts, Reason};
    use std::sync::Mutex;

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_decision_log_line_shows_controls_and_bidi_as_escapes() {
        let mut facts = policy::MessageFacts {
            sender: "ann\u{202e}gpj.exe@corp.example".into(),
            sasl_login: Some("ann\u{1b}]0;x\u{7}".into()),
            ..Default::default()
        };
        facts.audience = Some(AudienceFacts {
            lists: vec![ListFacts {
                address: "all\r\nBcc: x@corp.example".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut e = Evaluation {
            verdict: policy::Verdict::accept(),
            counts: Default::default(),
        };
        e.verdict.action = Action::Reject;
        e.verdict.reasons.push(Reason {
            rule: "limits.audience",
            action: Action::Reject,
            message: "list cn=x\r\nBcc: y \u{1b}[2J \u{202e} reaches 5,000".into(),
            monitor: false,
            reply: None,
        });
        for format in [LogFormat::Text, LogFormat::Json] {
            let sink = Sink::default();
            let writer = sink.clone();
            let subscriber = crate::logging::subscriber(
                tracing_subscriber::EnvFilter::new("info"),
                format,
                true,
                move || writer.clone(),
            );
            tracing::subscriber::with_default(subscriber, || {
                log_decision("4AbCdEf123", &facts, &e, policy::Mode::Enforce)
            });
            let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
            assert!(out.ends_with('\n'), "{out:?}");
            assert!(
                !out.contains(['\r', '\u{1b}', '\u{7}', '\u{202e}']),
                "{format:?}: {out:?}"
            );
            if format == LogFormat::Json {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["largest_list"], "all\r\nBcc: x@corp.example");
            } else {
                assert!(
                    out.contains("list cn=x\\x0D\\x0ABcc: y \\x1B[2J \\u{202E}"),
                    "{out}"
                );
            }
        }
    }
}
