// SPDX-License-Identifier: GPL-3.0-or-later
//! `/bulk`: ticked messages or all matching a filter, confirmed, then filed one by one.

use super::held::query_of;
use super::message::{Outcome, action_of, submit};
use super::{Fields, Head, Shown, render};
use crate::desk::users::Role;
use crate::desk::{Desk, Peer};
use crate::quarantine::{QueueId, RequestAction, State, index::MAX_PAGE, needs_admin};
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
    outcome: String,
    ok: bool,
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
            Ok(Ok(ids)) => ids.into_iter().map(|i| i.as_str().to_owned()).collect(),
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
        match QueueId::parse(raw) {
            Ok(id) => {
                unique.insert(id.as_str().to_owned(), id);
            }
            Err(e) => {
                return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, &e.to_string());
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
        for id in unique.values() {
            let outcome = submit(
                &desk,
                &who,
                id.clone(),
                action.clone(),
                comment.clone(),
                client.clone(),
                now,
            )
            .await;
            lines.push(match outcome {
                Outcome::Filed => BulkLine {
                    queue_id: id.to_string(),
                    outcome: "requested".into(),
                    ok: true,
                },
                Outcome::Refused(status, why) => BulkLine {
                    queue_id: id.to_string(),
                    outcome: format!("{}: {why}", status.as_u16()),
                    ok: false,
                },
            });
        }
    } else {
        let role = who.role;
        let ids: Vec<QueueId> = unique.values().cloned().collect();
        let checked = desk
            .store(move |i| {
                ids.into_iter()
                    .map(|id| {
                        let outcome = match i.record(&id) {
                            Ok(r) if r.state != State::Held => {
                                Err(format!("not held ({})", r.state))
                            }
                            Ok(r) if needs_admin(&r) && role < Role::Admin => {
                                Err("admin only".to_owned())
                            }
                            Ok(_) => Ok("will be requested".to_owned()),
                            Err(e) => Err(e.to_string()),
                        };
                        (id, outcome)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let checked = match checked {
            Ok(c) => c,
            Err(r) => return r,
        };
        for (id, outcome) in checked {
            let ok = outcome.is_ok();
            lines.push(BulkLine {
                queue_id: id.to_string(),
                outcome: text::neutralize(&outcome.unwrap_or_else(|e| e)).into_owned(),
                ok,
            });
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
