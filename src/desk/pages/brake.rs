// SPDX-License-Identifier: GPL-3.0-or-later
//! `/brake`: an admin pulls or releases the emergency brake (see `crate::brake`); every
//! page shows it while it is on.

use super::{Fields, Head, Shown, Who, render};
use crate::desk::users::Role;
use crate::desk::{Desk, Peer};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How long a brake pulled here may hold, in hours (0: until released).
pub const BRAKE_HOURS: [u64; 6] = [1, 2, 4, 8, 24, 0];

/// A page that says what was done, when a redirect would hide something the user
/// must know (the brake they pulled replaced another).
#[derive(Template)]
#[template(path = "notice.html", config = "src/desk/askama.toml")]
struct NoticePage {
    head: Option<Head>,
    base: String,
    title: &'static str,
    message: Shown,
}

/// `POST /brake`: `action=on` with `min_audience`, `hours` and `comment`, or
/// `action=off` with `comment`. Admins only; then back to the held list.
pub async fn brake(
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
            Role::Admin,
            "Only an admin may pull or release the emergency brake.",
        )
        .await
    {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(guard) = desk.guard.clone() else {
        return desk.refuse(
            Some(&who),
            StatusCode::NOT_FOUND,
            "This desk has no emergency brake.",
        );
    };
    let Some(comment) = fields.get("comment").filter(|c| !c.trim().is_empty()) else {
        return desk.refuse(
            Some(&who),
            StatusCode::BAD_REQUEST,
            "A comment is required.",
        );
    };
    let client = desk.client(&headers, peer);
    let comment = format!("{comment} (via desk from {client})");
    let events = Some(desk.index.clone());
    let done = match fields.get("action") {
        Some("on") => {
            let Some(min_audience) = fields
                .get("min_audience")
                .and_then(|n| n.trim().replace(',', "").parse::<u64>().ok())
                .filter(|&n| n > 0)
            else {
                return desk.refuse(
                    Some(&who),
                    StatusCode::BAD_REQUEST,
                    "Give the smallest audience to hold, a number of at least 1.",
                );
            };
            let Some(hours) = fields
                .get("hours")
                .and_then(|h| h.parse::<u64>().ok())
                .filter(|h| BRAKE_HOURS.contains(h))
            else {
                return desk.refuse(
                    Some(&who),
                    StatusCode::BAD_REQUEST,
                    "Choose how long the brake holds.",
                );
            };
            let hold_for = (hours > 0).then(|| Duration::from_secs(hours * 3600));
            crate::brake::pull(&guard, events, min_audience, hold_for, &who.user, &comment)
                .await
                .map(|pulled| pulled.replaced)
        }
        Some("off") => crate::brake::release(&guard, events, &who.user, &comment)
            .await
            .map(|()| None),
        _ => {
            return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, "Unknown action.");
        }
    };
    match done {
        Ok(None) => Redirect::to(&format!("{}/", desk.base())).into_response(),
        // Shown, not redirected: the admin must learn that another brake was on.
        Ok(Some(old)) => {
            let who = Who {
                brake: desk.brake(),
                ..who
            };
            render(&NoticePage {
                head: who.head(),
                base: desk.base(),
                title: "Emergency brake replaced",
                message: Shown::new(&format!(
                    "The brake you pulled replaced the one that was on: {}.",
                    crate::brake::replaced_text(&old)
                )),
            })
        }
        Err(e) => {
            warn!(
                user = %text::neutralize(&who.user),
                "review desk: the brake was not changed: {e}"
            );
            desk.refuse(
                Some(&who),
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("The brake was not changed: {e}"),
            )
        }
    }
}
