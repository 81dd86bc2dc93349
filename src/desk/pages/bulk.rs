// SPDX-License-Identifier: GPL-3.0-or-later
//! `/bulk`: ticked messages or all matching a filter, confirmed, then filed one by one.
//! Each message is named by its address (`RELAY:QUEUEID` on the desk of a fleet), as
//! on the message page.

use super::held::query_of;
use super::message::{Outcome, action_of, submit};
use super::{Fields, Head, Shown, render};
use crate::desk::users::Role;
use crate::desk::{Desk, Peer};
use crate::quarantine::{Address, RequestAction, State, index::MAX_PAGE, needs_admin};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One message of a bulk confirmation or result.
struct BulkLine {
    queue_id: String,
    /// Its address, as shown and as a URL path segment.
    address: String,
    /// Its relay (the desk of a fleet).
    relay: Option<String>,
    outcome: String,
    ok: bool,
}

impl BulkLine {
    fn new(at: &Address, outcome: String, ok: bool) -> BulkLine {
        BulkLine {
            queue_id: at.queue_id.to_string(),
            address: at.path_segment(),
            relay: at
                .relay
                .as_deref()
                .map(|r| text::neutralize(r).into_owned()),
            outcome,
            ok,
        }
    }
}

#[derive(Template)]
#[template(path = "bulk.html", config = "src/desk/askama.toml")]
struct BulkPage {
    head: Option<Head>,
    base: String,
    confirm: bool,
    action: &'static str,
    /// The action as a participle ("released").
    acted: &'static str,
    notify_sender: bool,
    extend: u64,
    comment: Shown,
    ids: Vec<String>,
    lines: Vec<BulkLine>,
    actionable: usize,
    refused: usize,
    done: usize,
}

/// `POST /bulk`: ticked messages, or all matching the filter, then a confirmation
/// page with counts; with `confirm=yes` the requests are filed, each with its outcome.
pub async fn bulk(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
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
    let now = desk.now();
    let action = match action_of(&fields, now) {
        Ok(
            a @ (RequestAction::Release
            | RequestAction::Discard { .. }
            | RequestAction::Extend { .. }),
        ) => a,
        Ok(_) => {
            return desk.refuse(
                Some(&who),
                StatusCode::BAD_REQUEST,
                "Release to chosen recipients works one message at a time.",
            );
        }
        Err(e) => return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, &e),
    };
    let ids: Vec<String> = if fields.get("scope") == Some("all") {
        let (q, _) = match query_of(&fields, now) {
            Ok(x) => x,
            Err(e) => return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, &e),
        };
        match desk.store(move |i| i.matching(&q, MAX_PAGE + 1)).await {
            Ok(Ok(ids)) if ids.len() as u64 > MAX_PAGE => {
                return desk.refuse(
                    Some(&who),
                    StatusCode::BAD_REQUEST,
                    &format!("More than {MAX_PAGE} messages match: narrow the filter."),
                );
            }
            Ok(Ok(ids)) => ids.into_iter().map(|a| a.to_string()).collect(),
            Ok(Err(e)) => return desk.store_failed(Some(&who), e),
            Err(r) => return r,
        }
    } else {
        fields.all("id").into_iter().map(str::to_owned).collect()
    };
    if ids.len() as u64 > MAX_PAGE {
        return desk.refuse(
            Some(&who),
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("At most {MAX_PAGE} messages per request."),
        );
    }
    let mut unique = BTreeMap::new();
    for raw in &ids {
        match Address::parse(raw) {
            Ok(at) if at.relay.is_some() && !desk.index.fleet() => {
                return desk.refuse(
                    Some(&who),
                    StatusCode::BAD_REQUEST,
                    "This desk has no relays: name each message by its queue id.",
                );
            }
            Ok(mut at) => {
                // A queue id alone is this relay's record: one key for both spellings.
                if at.relay.is_none() {
                    at.relay = desk.index.relay().map(str::to_owned);
                }
                unique.insert(at.to_string(), at);
            }
            Err(e) => {
                return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, &e);
            }
        }
    }
    if unique.is_empty() {
        return desk.refuse(
            Some(&who),
            StatusCode::BAD_REQUEST,
            "Tick at least one message.",
        );
    }
    let comment = fields.get("comment").map(str::to_owned);
    let confirmed = fields.get("confirm") == Some("yes");
    if confirmed && comment.is_none() {
        return desk.refuse(
            Some(&who),
            StatusCode::BAD_REQUEST,
            "A comment is required.",
        );
    }
    let (notify_sender, extend) = match &action {
        RequestAction::Discard { notify_sender } => (*notify_sender, 0),
        RequestAction::Extend { until } => (false, until.saturating_sub(now) / 3600),
        _ => (false, 0),
    };
    let mut lines = Vec::with_capacity(unique.len());
    if confirmed {
        let comment = comment.clone().unwrap_or_default();
        let client = desk.client(&headers, peer);
        for at in unique.values() {
            let outcome = submit(
                &desk,
                &who,
                at.clone(),
                action.clone(),
                comment.clone(),
                client.clone(),
                now,
            )
            .await;
            let (outcome, ok) = match outcome {
                Outcome::Filed => ("requested".into(), true),
                Outcome::Refused(status, why) => (format!("{}: {why}", status.as_u16()), false),
            };
            lines.push(BulkLine::new(at, outcome, ok));
        }
    } else {
        let role = who.role;
        let ids: Vec<Address> = unique.values().cloned().collect();
        let checked = desk
            .store(move |i| {
                ids.into_iter()
                    .map(|at| {
                        let outcome = match i.record(&at) {
                            Ok(r) if r.state != State::Held => {
                                Err(format!("not held ({})", r.state))
                            }
                            Ok(r) if needs_admin(&r) && role < Role::Admin => {
                                Err("admin only".to_owned())
                            }
                            Ok(_) => Ok("will be requested".to_owned()),
                            Err(e) => Err(e.to_string()),
                        };
                        (at, outcome)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let checked = match checked {
            Ok(c) => c,
            Err(r) => return r,
        };
        for (at, outcome) in checked {
            let ok = outcome.is_ok();
            let outcome = text::neutralize(&outcome.unwrap_or_else(|e| e)).into_owned();
            lines.push(BulkLine::new(&at, outcome, ok));
        }
    }
    let actionable = lines.iter().filter(|l| l.ok).count();
    render(&BulkPage {
        confirm: !confirmed,
        action: action.name(),
        acted: match action {
            RequestAction::Release => "released",
            RequestAction::Discard { .. } => "discarded",
            _ => "extended",
        },
        notify_sender,
        extend,
        comment: Shown::new(comment.as_deref().unwrap_or("")),
        ids: unique.keys().cloned().collect(),
        refused: lines.len() - actionable,
        done: if confirmed { actionable } else { 0 },
        actionable,
        lines,
        head: who.head(),
        base: desk.base(),
    })
}
