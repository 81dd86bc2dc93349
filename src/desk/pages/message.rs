// SPDX-License-Identifier: GPL-3.0-or-later
//! `/message/{address}`: every fact of one record, and the actions on it. The address
//! is the queue id (this relay's record), or on the desk of a fleet `RELAY:QUEUEID`
//! (that relay's record: queue ids repeat across relays); every link and form of the
//! fleet's desk names the relay.

use super::{Fields, Head, Shown, Who, group, render, shown_rules};
use crate::desk::users::Role;
use crate::desk::{Desk, Peer};
use crate::quarantine::{
    Address, NewRequest, Record, Request as ActionRequest, RequestAction, State, SubmitError, Via,
    needs_admin,
};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;
use tracing::{error, info};

/// How far a hold may be extended, in hours, as the form offers.
const EXTEND_HOURS: [u64; 3] = [4, 24, 72];

struct ListView {
    address: Shown,
    size: String,
    external: String,
    internal: String,
    drift_from: Option<String>,
    /// Its position in the record, which the acceptance form sends.
    index: usize,
    /// Who accepted its new size here, and when, if anyone did.
    accepted: Option<Shown>,
}

struct AuditView {
    at: String,
    who: Shown,
    action: Shown,
    comment: Option<Shown>,
}

struct RequestView {
    at: String,
    action: &'static str,
    detail: Option<Shown>,
    who: Shown,
    via: &'static str,
    remote: Option<Shown>,
    comment: Shown,
    state: &'static str,
    result: Option<Shown>,
}

#[derive(Template)]
#[template(path = "message.html", config = "src/desk/askama.toml")]
struct MessagePage {
    head: Option<Head>,
    base: String,
    queue_id: String,
    /// The record's address as a URL path segment (the forms post to it).
    address: String,
    state: &'static str,
    foreign: bool,
    admin_only: bool,
    held_at: String,
    age: String,
    review_left: String,
    expiry_left: String,
    blast: String,
    sender: Shown,
    sasl: Option<Shown>,
    /// The relay that holds it (a fleet-wide store).
    relay: Option<Shown>,
    client: Option<Shown>,
    subject: Shown,
    message_id: Option<Shown>,
    recipients: Vec<Shown>,
    visible: Vec<Shown>,
    audience: String,
    external: String,
    internal: String,
    lists: Vec<ListView>,
    domains: Vec<(Shown, String)>,
    rules: Vec<(Shown, Shown, Shown)>,
    headers: Vec<(Shown, Shown)>,
    audit: Vec<AuditView>,
    requests: Vec<RequestView>,
    can_act: bool,
    /// Whether the user may accept a drifted list's size here (an admin, on a desk
    /// that can).
    can_accept: bool,
    open_request: bool,
    why_not: Option<&'static str>,
    extend_hours: [u64; 3],
    /// Held for the sender's confirmation, and still held.
    waiting: bool,
    /// The sender's plea for release: when, and their words as lines.
    plea: Option<(String, Vec<Shown>)>,
}

pub(super) fn blast_radius(r: &Record) -> String {
    let m = &r.message;
    let domains = match m.top_domains.len() {
        0 => String::new(),
        n if n >= 20 => " in at least 20 domains".to_owned(),
        1 => " in 1 domain".to_owned(),
        n => format!(" in {n} domains"),
    };
    let external = if m.external > 0 {
        format!(" ({} outside the organisation)", group(m.external))
    } else {
        String::new()
    };
    let visible = m.visible.len();
    format!(
        "Would reach {} mailbox{}{domains}{external}; the sender could see {visible} recipient{} in To/Cc.",
        group(m.audience),
        if m.audience == 1 { "" } else { "es" },
        if visible == 1 { "" } else { "s" },
    )
}

fn request_view(r: &ActionRequest) -> RequestView {
    let detail = match &r.action {
        RequestAction::ReleaseTo { recipients } => Some(Shown::new(&recipients.join(", "))),
        RequestAction::Discard {
            notify_sender: true,
        } => Some(Shown::new("the sender is told")),
        RequestAction::Extend { until } => {
            Some(Shown::new(&format!("until {}", text::utc_seconds(*until))))
        }
        _ => None,
    };
    RequestView {
        at: text::utc_seconds(r.requested_at),
        action: r.action.name(),
        detail,
        who: Shown::new(&r.who),
        via: if r.via == Via::Sender {
            "the sender"
        } else {
            r.via.as_str()
        },
        remote: r.remote.as_deref().map(Shown::new),
        comment: Shown::new(&r.comment),
        state: r.state.as_str(),
        result: r
            .result
            .as_deref()
            .map(Shown::new)
            .or_else(|| copy_progress(r).as_deref().map(Shown::new)),
    }
}

/// How far the copy of a running release to chosen recipients got.
fn copy_progress(r: &ActionRequest) -> Option<String> {
    match (&r.copy_queue_id, r.copy_sent_at) {
        (Some(copy), _) => Some(format!(
            "the copy went out as {copy}; the original is being deleted"
        )),
        (None, Some(at)) => Some(format!(
            "a copy was handed to Postfix at {}; waiting for the milter to hold it, then \
             the worker releases it",
            text::utc_seconds(at)
        )),
        (None, None) => None,
    }
}

/// Why `who` may not act on `r`, if so.
fn why_not(who: &Who, r: &Record) -> Option<&'static str> {
    if who.role < Role::Reviewer {
        Some("Your role (viewer) may only read.")
    } else if needs_admin(r) && who.role < Role::Admin {
        Some(
            "Only an admin may act on this hold (reject-level, storm, drift, scope, breaker or foreign).",
        )
    } else if r.state != State::Held {
        Some("The message is no longer held.")
    } else {
        None
    }
}

/// Whether an audit entry is the sender's own, through their link: a plea, or a
/// request filed via a sender link.
fn by_sender(r: &Record, a: &crate::quarantine::AuditEntry) -> bool {
    a.who == text::neutralize(&r.message.sender)
        && (a.action == "sender-asks"
            || a.comment.as_deref().is_some_and(|c| {
                c.starts_with(&format!("via {}:", Via::Sender.as_str()))
                    || c.starts_with(&format!("via {} from ", Via::Sender.as_str()))
            }))
}

/// Who accepted the new size of `list` from this record's page, and when (the latest).
fn accepted_by(r: &Record, list: &str) -> Option<Shown> {
    let prefix = super::drift::accepted_prefix(list);
    r.audit
        .iter()
        .rev()
        .find(|a| {
            a.action == super::drift::ACCEPTED
                && a.comment.as_deref().is_some_and(|c| c.starts_with(&prefix))
        })
        .map(|a| {
            Shown::new(&format!(
                "accepted by {} at {}",
                a.who,
                text::utc_seconds(a.at)
            ))
        })
}

/// `GET /message/{address}`: every fact of one record.
pub async fn message(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(address): UrlPath<String>,
) -> Response {
    let who = match desk.reader(&headers, peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(at) = desk.address(&address) else {
        return desk.no_such_message(&who);
    };
    let found = desk
        .store(move |i| {
            let record = i.record(&at)?;
            let requests = i.requests(record.id)?;
            let plea = i.plea(record.id)?;
            Ok::<_, crate::quarantine::StoreError>((record, requests, plea))
        })
        .await;
    let (r, requests, plea) = match found {
        Ok(Ok(x)) => x,
        Ok(Err(crate::quarantine::StoreError::NotFound(_))) => {
            return desk.refuse(
                Some(&who),
                StatusCode::NOT_FOUND,
                "No record for this queue id.",
            );
        }
        Ok(Err(e)) => return desk.store_failed(Some(&who), e),
        Err(resp) => return resp,
    };
    let now = desk.now();
    let m = &r.message;
    let (review_left, expiry_left) = desk.deadlines(&r, now);
    let open_request = requests.iter().any(|q| q.state.is_open());
    let why = why_not(&who, &r);
    render(&MessagePage {
        queue_id: m.queue_id.as_str().to_owned(),
        address: r.address().path_segment(),
        state: r.state.as_str(),
        foreign: r.foreign,
        admin_only: needs_admin(&r),
        held_at: text::utc_seconds(m.held_at),
        age: crate::quarantine::age(r.held_for(now)),
        review_left,
        expiry_left,
        blast: blast_radius(&r),
        sender: Shown::new(if m.sender.is_empty() { "<>" } else { &m.sender }),
        sasl: m.sasl_login.as_deref().map(Shown::new),
        relay: r.relay.as_deref().map(Shown::new),
        client: m.client.as_deref().map(Shown::new),
        subject: Shown::new(m.subject.as_deref().unwrap_or("")),
        message_id: m.message_id.as_deref().map(Shown::new),
        recipients: m.recipients.iter().map(|a| Shown::new(a)).collect(),
        visible: m.visible.iter().map(|a| Shown::new(a)).collect(),
        audience: group(m.audience),
        external: group(m.external),
        internal: group(m.audience.saturating_sub(m.external)),
        lists: m
            .lists
            .iter()
            .enumerate()
            .map(|(index, l)| ListView {
                address: Shown::new(&l.address),
                size: group(l.size),
                external: group(l.external),
                internal: group(l.size.saturating_sub(l.external)),
                drift_from: l.drift_from.map(group),
                index,
                accepted: accepted_by(&r, &l.address),
            })
            .collect(),
        domains: m
            .top_domains
            .iter()
            .map(|(d, n)| (Shown::new(d), group(*n)))
            .collect(),
        rules: shown_rules(&m.rules),
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (Shown::new(k), Shown::new(v)))
            .collect(),
        audit: r
            .audit
            .iter()
            .map(|a| AuditView {
                at: text::utc_seconds(a.at),
                who: Shown::new(&if by_sender(&r, a) {
                    format!("the sender ({})", a.who)
                } else {
                    a.who.clone()
                }),
                action: Shown::new(&a.action),
                comment: a.comment.as_deref().map(Shown::new),
            })
            .collect(),
        requests: requests.iter().map(request_view).collect(),
        can_act: why.is_none() && !open_request,
        // A relay's accepted list sizes are its own: another relay's hold is accepted
        // on that relay's desk.
        can_accept: who.role >= Role::Admin
            && desk.list_sizes.is_some()
            && r.relay.as_deref() == desk.index.relay(),
        open_request,
        why_not: why,
        extend_hours: EXTEND_HOURS,
        waiting: r.state == State::Held && m.confirm,
        plea: plea.map(|p| (text::utc_seconds(p.at), super::shown_lines(&p.words))),
        head: who.head(),
        base: desk.base(),
    })
}

/// The action a form asks for; a message for a 400 when it is not one.
pub(super) fn action_of(f: &Fields, now: u64) -> Result<RequestAction, String> {
    match f.get("action").unwrap_or("") {
        "release" => Ok(RequestAction::Release),
        "release-to" => Ok(RequestAction::ReleaseTo {
            recipients: f.all("rcpt").into_iter().map(str::to_owned).collect(),
        }),
        "discard" => Ok(RequestAction::Discard {
            notify_sender: f.get("notify_sender").is_some(),
        }),
        "extend" => {
            let hours = f
                .get("extend")
                .and_then(|h| h.parse::<u64>().ok())
                .filter(|h| EXTEND_HOURS.contains(h))
                .ok_or_else(|| "choose how long to extend the hold".to_owned())?;
            Ok(RequestAction::Extend {
                until: now.saturating_add(hours * 3600),
            })
        }
        _ => Err("unknown action".into()),
    }
}

/// `POST /message/{address}`: files one request.
pub async fn act(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(address): UrlPath<String>,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let who = match desk
        .writer_as(
            &headers,
            peer,
            &fields,
            Role::Reviewer,
            "Your role (viewer) may only read.",
        )
        .await
    {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(at) = desk.address(&address) else {
        return desk.no_such_message(&who);
    };
    let now = desk.now();
    let action = match action_of(&fields, now) {
        Ok(a) => a,
        Err(e) => return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, &e),
    };
    let Some(comment) = fields.get("comment").map(str::to_owned) else {
        return desk.refuse(
            Some(&who),
            StatusCode::BAD_REQUEST,
            "A comment is required.",
        );
    };
    let client = desk.client(&headers, peer);
    let outcome = submit(&desk, &who, at.clone(), action, comment, client, now).await;
    match outcome {
        Outcome::Filed => {
            Redirect::to(&format!("{}/message/{}", desk.base(), at.path_segment())).into_response()
        }
        Outcome::Refused(status, message) => desk.refuse(Some(&who), status, &message),
    }
}

/// What became of one request.
pub(super) enum Outcome {
    Filed,
    Refused(StatusCode, String),
}

/// Files a request for the record at `at` when `who` may act on it; a Conflict is a
/// 409 and changes nothing.
pub(super) async fn submit(
    desk: &Arc<Desk>,
    who: &Who,
    at: Address,
    action: RequestAction,
    comment: String,
    client: String,
    now: u64,
) -> Outcome {
    let request = NewRequest {
        queue_id: at.queue_id.clone(),
        action,
        who: who.user.clone(),
        via: Via::Desk,
        remote: Some(client),
        comment,
        at: now,
    };
    let role = who.role;
    let done = desk
        .store(move |i| {
            let record = i.record(&at).map_err(SubmitError::from)?;
            if needs_admin(&record) && role < Role::Admin {
                return Ok(None);
            }
            i.submit(at.relay.as_deref(), &request)
                .map(|r| Some((r, record.relay)))
        })
        .await;
    match done {
        Ok(Ok(Some((r, relay)))) => {
            info!(
                queue_id = %r.queue_id,
                relay = %text::neutralize(relay.as_deref().unwrap_or("-")),
                user = %text::neutralize(&r.who),
                action = r.action.name(),
                request = r.id,
                "review desk: request filed"
            );
            Outcome::Filed
        }
        Ok(Ok(None)) => Outcome::Refused(
            StatusCode::FORBIDDEN,
            "Only an admin may act on this hold.".into(),
        ),
        Ok(Err(SubmitError::Conflict(why))) => Outcome::Refused(StatusCode::CONFLICT, why),
        Ok(Err(SubmitError::NotFound(_)))
        | Ok(Err(SubmitError::Store(crate::quarantine::StoreError::NotFound(_)))) => {
            Outcome::Refused(StatusCode::NOT_FOUND, "No record for this queue id.".into())
        }
        Ok(Err(SubmitError::Invalid(why))) => Outcome::Refused(StatusCode::BAD_REQUEST, why),
        Ok(Err(SubmitError::Store(e))) => {
            error!(
                "review desk: quarantine store: {}",
                text::neutralize(&e.to_string())
            );
            Outcome::Refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The quarantine store failed; see the daemon's log.".into(),
            )
        }
        Err(_) => Outcome::Refused(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
    }
}
