// SPDX-License-Identifier: GPL-3.0-or-later
//! `/link/{token}`: a signed one-click link of the admin digest (see `crate::link`).
//!
//! The signed link names one message, one action and the admin it was mailed to; it is
//! not a credential by itself. A GET only shows what the link would do (link scanners
//! follow GETs), and to a signed-in user whose role may take that action on that hold,
//! a form to confirm it. The POST is a desk form like any other (cross-origin check,
//! session and form token, role checked on the server: an admin-only hold needs an
//! admin), and files the request as that user through the store's one request path,
//! spending the link's nonce in the same transaction. A leaked or forwarded link, or
//! one a mail scanner opens, does nothing without a desk login.

use super::message::blast_radius;
use super::{Fields, Head, Shown, group, render, shown_rules};
use crate::desk::users::Role;
use crate::desk::{Desk, Peer};
use crate::link::{self, Link, LinkAction, LinkError};
use crate::quarantine::{
    Address, NewRequest, QueueId, Record, RequestAction, State, StoreError, SubmitError, Via,
    needs_admin,
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
    /// The record's address as a URL path segment (its page on the desk).
    address: String,
    /// The relay that holds it (a fleet-wide store).
    relay: Option<Shown>,
    state: &'static str,
    admin_only: bool,
    blast: String,
    sender: Shown,
    subject: Shown,
    audience: String,
    rules: Vec<(Shown, Shown, Shown)>,
    why_not: Option<&'static str>,
    /// The signed-in user's form token, when they may act.
    form_token: Option<String>,
    /// The signed-in user.
    user: Option<Shown>,
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
            admin: Shown::new(&link.to),
            expires: text::utc_seconds(link.expires),
            queue_id: m.queue_id.as_str().to_owned(),
            address: r.address().path_segment(),
            relay: r.relay.as_deref().map(Shown::new),
            state: r.state.as_str(),
            admin_only: needs_admin(r),
            blast: blast_radius(r),
            sender: Shown::new(if m.sender.is_empty() { "<>" } else { &m.sender }),
            subject: Shown::new(m.subject.as_deref().unwrap_or("")),
            audience: group(m.audience),
            rules: shown_rules(&m.rules),
            why_not: None,
            form_token: None,
            user: None,
        }
    }
}

impl Desk {
    /// A refused link: logged (with the client address and the reason, never the
    /// link), then the page saying why.
    fn refuse_link(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: Peer,
        status: StatusCode,
        why: &str,
    ) -> Response {
        tracing::warn!(
            client = %self.client(headers, peer),
            status = status.as_u16(),
            "review desk: a digest link refused: {}",
            text::neutralize(why)
        );
        self.refuse(None, status, why)
    }

    /// The link `token` stands for and the address of its record (the relay it was
    /// signed for; none: this relay), or the status and words of the page refusing
    /// it: links turned off (403), not a link or a wrong signature (403), expired
    /// (410).
    fn link(&self, token: &str) -> Result<(Link, Address), (StatusCode, String)> {
        if !self.review.digest_actions {
            return Err((
                StatusCode::FORBIDDEN,
                "One-click digest links are turned off ([review] digest_actions): nothing \
                 was done. Log in to the desk to act on the message."
                    .into(),
            ));
        }
        let link = match link::verify(&self.key, link::Audience::Admin, token, self.now()) {
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
            Ok(id) => {
                let at = Address::on(link.relay.as_deref(), id);
                Ok((link, at))
            }
            Err(_) => Err((
                StatusCode::FORBIDDEN,
                "This link names no queue id: nothing was done.".into(),
            )),
        }
    }

    /// The record a link is about (of the relay it names, else of this relay), or
    /// the page saying why not.
    async fn link_record(self: &Arc<Self>, at: Address) -> Result<(Record, bool), Response> {
        let found = self
            .store(move |i| {
                let record = i.record(&at)?;
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

/// A link for an earlier hold of a queue id Postfix has since given another message.
const EARLIER_HOLD: &str = "This link was mailed for an earlier message with the same queue \
     id (Postfix reuses them): nothing was done. Log in to the desk to act on this one.";

/// Why a signed-in user may not take a link's action on `r`, if so.
fn role_refuses(role: Role, r: &Record) -> Option<&'static str> {
    if role < Role::Reviewer {
        Some("Your role (viewer) may only read: this link can do nothing for you.")
    } else if needs_admin(r) && role < Role::Admin {
        Some("Only an admin may act on this hold: this link can do nothing for you.")
    } else {
        None
    }
}

/// `GET /link/{token}`: what the link would do, and (to a signed-in user who may) a
/// form to confirm it. Changes nothing.
pub async fn confirm(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(token): UrlPath<String>,
) -> Response {
    let (link, at) = match desk.link(&token) {
        Ok(x) => x,
        Err((status, why)) => return desk.refuse_link(&headers, peer, status, &why),
    };
    let who = match desk.who(&headers, peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let (record, open) = match desk.link_record(at).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if record.message.held_at != link.held_at {
        return desk.refuse_link(&headers, peer, StatusCode::GONE, EARLIER_HOLD);
    }
    let mut page = LinkPage::new(&desk, &token, &link, &record, false);
    page.user = who.as_ref().map(|w| Shown::new(&w.user));
    page.why_not = if record.state != State::Held {
        Some("The message is no longer held: this link can do nothing.")
    } else if open {
        Some("A request for this message is open already; the message page shows its result.")
    } else if let Some(w) = &who {
        role_refuses(w.role, &record)
    } else {
        Some("Log in to the desk first, then open this link again: a link alone acts on nothing.")
    };
    if page.why_not.is_none() {
        page.form_token = who.map(|w| w.token);
    }
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
    let fields = Fields::parse(&body);
    let who = match desk.writer(&headers, peer, &fields).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let (link, at) = match desk.link(&token) {
        Ok(x) => x,
        Err((status, why)) => return desk.refuse_link(&headers, peer, status, &why),
    };
    let Some(comment) = fields.get("comment").map(str::to_owned) else {
        return desk.refuse(
            Some(&who),
            StatusCode::BAD_REQUEST,
            "A comment is required.",
        );
    };
    let (record, _) = match desk.link_record(at.clone()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if record.message.held_at != link.held_at {
        return desk.refuse_link(&headers, peer, StatusCode::GONE, EARLIER_HOLD);
    }
    if let Some(why) = role_refuses(who.role, &record) {
        return desk.refuse(Some(&who), StatusCode::FORBIDDEN, why);
    }
    let action = match link.action {
        LinkAction::Release => RequestAction::Release,
        LinkAction::Discard => RequestAction::Discard {
            notify_sender: false,
        },
        LinkAction::Withdraw | LinkAction::Ask | LinkAction::Send => {
            return desk.refuse(Some(&who), StatusCode::FORBIDDEN, "not a digest link");
        }
    };
    let request = NewRequest {
        queue_id: at.queue_id.clone(),
        action,
        who: who.user.clone(),
        via: Via::Digest,
        remote: Some(desk.client(&headers, peer)),
        comment: format!(
            "{comment} (digest link mailed to {})",
            text::neutralize(&link.to)
        ),
        at: desk.now(),
    };
    let nonce = link.nonce.clone();
    let expires = link.expires;
    let done = desk
        .store(move |i| {
            let filed = i.submit_link(at.relay.as_deref(), &request, &nonce, expires)?;
            let record = i.record(&at)?;
            Ok::<_, SubmitError>((filed, record))
        })
        .await;
    let refused = |status, message: &str| desk.refuse(Some(&who), status, message);
    match done {
        Ok(Ok((filed, record))) => {
            info!(
                queue_id = %filed.queue_id,
                relay = %text::neutralize(record.relay.as_deref().unwrap_or("-")),
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
