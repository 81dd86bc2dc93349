// SPDX-License-Identifier: GPL-3.0-or-later
//! `/message/{address}/accept-size`: an admin accepts the new size of a list that the
//! drift rule held this message for, as `fanout-milter directory accept` does at a
//! shell; the running daemon judges the next message against it at once. Accepting
//! releases nothing: the message page then offers release as usual.

use super::Fields;
use crate::desk::users::Role;
use crate::desk::{Desk, ListSizeError, Peer};
use crate::quarantine::{AuditEntry, StoreError};
use crate::text;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;
use tracing::{info, warn};

/// The action recorded in the events and the record's audit trail.
pub const ACCEPTED: &str = "accept list size";

/// The start of the audit comment of an acceptance of `list`, which the message page
/// looks for to show it as accepted.
pub(super) fn accepted_prefix(list: &str) -> String {
    format!("{list}: ")
}

/// `POST /message/{address}/accept-size` with `list` (the list's position on the
/// message page) and `comment`: admins only; then back to the message page.
pub async fn accept(
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
            Role::Admin,
            "Only an admin may accept a list's new size.",
        )
        .await
    {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(sizes) = desk.list_sizes.clone() else {
        return desk.refuse(
            Some(&who),
            StatusCode::NOT_FOUND,
            "This desk cannot accept list sizes.",
        );
    };
    let Some(at) = desk.address(&address) else {
        return desk.no_such_message(&who);
    };
    let Some(comment) = fields.get("comment").map(str::to_owned) else {
        return desk.refuse(
            Some(&who),
            StatusCode::BAD_REQUEST,
            "A comment is required.",
        );
    };
    let record = match desk.store(move |i| i.record(&at)).await {
        Ok(Ok(r)) => r,
        Ok(Err(StoreError::NotFound(_))) => {
            return desk.refuse(
                Some(&who),
                StatusCode::NOT_FOUND,
                "No record for this queue id.",
            );
        }
        Ok(Err(e)) => return desk.store_failed(Some(&who), e),
        Err(r) => return r,
    };
    if record.relay.as_deref() != desk.index.relay() {
        return desk.refuse(
            Some(&who),
            StatusCode::CONFLICT,
            &format!(
                "This message is held on relay {}: accept the list's new size on that \
                 relay's desk (each relay keeps its own accepted sizes).",
                crate::text::neutralize(record.relay.as_deref().unwrap_or("?"))
            ),
        );
    }
    let list = fields
        .get("list")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| record.message.lists.get(n))
        .filter(|l| l.drift_from.is_some());
    let Some(list) = list else {
        return desk.refuse(
            Some(&who),
            StatusCode::BAD_REQUEST,
            "Choose a list this message was held for because its size drifted.",
        );
    };
    let address = list.address.clone();
    let accepted = match sizes.accept(&address).await {
        Ok(a) => a,
        Err(ListSizeError::NotAList(_)) => {
            return desk.refuse(
                Some(&who),
                StatusCode::CONFLICT,
                "This address is no longer a list of the directory in force.",
            );
        }
        Err(ListSizeError::Failed(e)) => {
            warn!(
                user = %text::neutralize(&who.user),
                "review desk: a list size was not accepted: {}",
                text::neutralize(&e)
            );
            return desk.refuse(
                Some(&who),
                StatusCode::SERVICE_UNAVAILABLE,
                "The list size was not accepted; see the daemon's log.",
            );
        }
    };
    let client = desk.client(&headers, peer);
    let was = match accepted.previous {
        Some(p) => format!("was {p}"),
        None => "none before".to_owned(),
    };
    let entry = AuditEntry {
        at: desk.now(),
        who: text::cap(&who.user, 100).into_owned(),
        action: ACCEPTED.to_owned(),
        comment: Some(
            text::cap(
                &format!(
                    "{}accepted size {} ({was}) (via desk from {client}): {comment}",
                    accepted_prefix(&address),
                    accepted.size
                ),
                1000,
            )
            .into_owned(),
        ),
    };
    info!(
        user = %text::neutralize(&who.user),
        list = %text::neutralize(&accepted.address),
        size = accepted.size,
        previous = ?accepted.previous,
        client = %text::neutralize(&client),
        "review desk: list size accepted"
    );
    let held_id = record.id;
    match desk
        .store(move |i| i.record_event_on(held_id, &entry))
        .await
    {
        Ok(Ok(())) => {}
        // The size is accepted already, which is what matters; the log has it.
        Ok(Err(e)) => warn!(
            "review desk: the accepted list size was not recorded in the quarantine store: {}",
            text::neutralize(&e.to_string())
        ),
        Err(r) => return r,
    }
    Redirect::to(&format!(
        "{}/message/{}",
        desk.base(),
        record.address().path_segment()
    ))
    .into_response()
}
