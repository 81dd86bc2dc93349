// SPDX-License-Identifier: GPL-3.0-or-later
//! `/link/{token}`: a signed one-click link of the admin digest (see `crate::link`).
//!
//! No login: the signed link is the credential, and it acts with an admin's authority,
//! bound to one message, one action and the admin it was mailed to. A GET only shows
//! what the link would do, with a form to confirm (link scanners follow GETs); the
//! POST passes the same cross-origin check as every desk form, carries the link itself
//! instead of a session token, and files the request as `digest:<admin>` through the
//! store's one request path, spending the link's nonce in the same transaction.

use super::message::blast_radius;
use super::{Fields, Head, Shown, group, render, shown_rules};
use crate::desk::{Desk, Peer};
use crate::link::{self, Link, LinkAction, LinkError};
use crate::quarantine::{
    NewRequest, QueueId, Record, RequestAction, State, StoreError, SubmitError, Via, needs_admin,
};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::Arc;
use tracing::info;

#[derive(Template)]
#[template(path = "link.html", config = "src/desk/askama.toml")]
struct LinkPage {
    head: Option<Head>,
    base: String,
    token: String,
    filed: bool,
    action: &'static str,
    admin: Shown,
    expires: String,
    queue_id: String,
    state: &'static str,
    admin_only: bool,
    blast: String,
    sender: Shown,
    subject: Shown,
    audience: String,
    rules: Vec<(Shown, Shown, Shown)>,
    why_not: Option<&'static str>,
}

impl LinkPage {
    fn new(desk: &Desk, token: &str, link: &Link, r: &Record, filed: bool) -> LinkPage {
        let m = &r.message;
        LinkPage {
            head: None,
            base: desk.base(),
            token: token.to_owned(),
            filed,
            action: link.action.as_str(),
            admin: Shown::new(&link.admin),
            expires: text::utc_seconds(link.expires),
            queue_id: m.queue_id.as_str().to_owned(),
            state: r.state.as_str(),
            admin_only: needs_admin(r),
            blast: blast_radius(r),
            sender: Shown::new(if m.sender.is_empty() { "<>" } else { &m.sender }),
            subject: Shown::new(m.subject.as_deref().unwrap_or("")),
            audience: group(m.audience),
            rules: shown_rules(&m.rules),
            why_not: None,
        }
    }
}

impl Desk {
    /// The link `token` stands for and its queue id, or the status and words of the
    /// page refusing it: links turned off (403), not a link or a wrong signature (403),
    /// expired (410).
    fn link(&self, token: &str) -> Result<(Link, QueueId), (StatusCode, String)> {
        if !self.review.digest_actions {
            return Err((
                StatusCode::FORBIDDEN,
                "One-click digest links are turned off ([review] digest_actions): nothing \
                 was done. Log in to the desk to act on the message."
                    .into(),
            ));
        }
        let link = match link::verify(&self.key, token, self.now()) {
            Ok(link) => link,
            Err(LinkError::Expired(link)) => {
                return Err((
                    StatusCode::GONE,
                    format!(
                        "This link expired at {}: nothing was done. Log in to the desk to \
                         act on the message.",
                        text::utc_seconds(link.expires)
                    ),
                ));
            }
            Err(e) => {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("{}: nothing was done.", capitalised(&e.to_string())),
                ));
            }
        };
        match QueueId::parse(&link.queue_id) {
            Ok(id) => Ok((link, id)),
            Err(_) => Err((
                StatusCode::FORBIDDEN,
                "This link names no queue id: nothing was done.".into(),
            )),
        }
    }

    /// The record a link is about, or the page saying why not.
    async fn link_record(self: &Arc<Self>, id: QueueId) -> Result<(Record, bool), Response> {
        let found = self
            .store(move |i| {
                let record = i.record(&id)?;
                let open = i.requests(record.id)?.iter().any(|q| q.state.is_open());
                Ok::<_, StoreError>((record, open))
            })
            .await?;
        match found {
            Ok(x) => Ok(x),
            Err(StoreError::NotFound(_)) => {
                Err(self.refuse(None, StatusCode::NOT_FOUND, "No record for this queue id."))
            }
            Err(e) => Err(self.store_failed(None, e)),
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `GET /link/{token}`: what the link would do, and a form to confirm it. Changes
/// nothing.
pub async fn confirm(
    AxState(desk): AxState<Arc<Desk>>,
    UrlPath(token): UrlPath<String>,
) -> Response {
    let (link, id) = match desk.link(&token) {
        Ok(x) => x,
        Err((status, why)) => return desk.refuse(None, status, &why),
    };
    let (record, open) = match desk.link_record(id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut page = LinkPage::new(&desk, &token, &link, &record, false);
    page.why_not = if record.state != State::Held {
        Some("The message is no longer held: this link can do nothing.")
    } else if open {
        Some("A request for this message is open already; the message page shows its result.")
    } else {
        None
    };
    render(&page)
}

/// `POST /link/{token}`: files the link's request (once), then shows that it is
/// pending.
pub async fn act(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(token): UrlPath<String>,
    body: Bytes,
) -> Response {
    let (link, id) = match desk.link(&token) {
        Ok(x) => x,
        Err((status, why)) => return desk.refuse(None, status, &why),
    };
    let fields = Fields::parse(&body);
    let Some(comment) = fields.get("comment").map(str::to_owned) else {
        return desk.refuse(None, StatusCode::BAD_REQUEST, "A comment is required.");
    };
    let request = NewRequest {
        queue_id: id,
        action: match link.action {
            LinkAction::Release => RequestAction::Release,
            LinkAction::Discard => RequestAction::Discard {
                notify_sender: false,
            },
        },
        who: format!("digest:{}", text::neutralize(&link.admin)),
        via: Via::Digest,
        remote: Some(desk.client(&headers, peer)),
        comment,
        at: desk.now(),
    };
    let nonce = link.nonce.clone();
    let expires = link.expires;
    let done = desk
        .store(move |i| {
            let filed = i.submit_link(&request, &nonce, expires)?;
            let record = i.record(&request.queue_id)?;
            Ok::<_, SubmitError>((filed, record))
        })
        .await;
    let refused = |status, message: &str| desk.refuse(None, status, message);
    match done {
        Ok(Ok((filed, record))) => {
            info!(
                queue_id = %filed.queue_id,
                user = %text::neutralize(&filed.who),
                action = filed.action.name(),
                request = filed.id,
                "review desk: request filed through a digest link"
            );
            render(&LinkPage::new(&desk, &token, &link, &record, true))
        }
        Ok(Err(SubmitError::Conflict(why))) => refused(
            StatusCode::CONFLICT,
            &format!("{}: nothing was done.", text::neutralize(&why)),
        ),
        Ok(Err(SubmitError::NotFound(_) | SubmitError::Store(StoreError::NotFound(_)))) => {
            refused(StatusCode::NOT_FOUND, "No record for this queue id.")
        }
        Ok(Err(SubmitError::Invalid(why))) => refused(StatusCode::BAD_REQUEST, &why),
        Ok(Err(SubmitError::Store(e))) => desk.store_failed(None, e),
        Err(resp) => resp,
    }
}
