// SPDX-License-Identifier: GPL-3.0-or-later
//! The desk's handlers and the views their templates render: the parts every page
//! shares here (who is asking, the form fields, the refusal page), one file per page.
//!
//! Every string from mail, the directory or a user reaches a template as a [`Shown`]:
//! neutralised by [`crate::text`] (control and bidi characters as visible `\u{202E}`
//! escapes, flagged) and HTML-escaped by askama. Store calls run on the blocking pool.

pub(super) mod brake;
pub(super) mod bulk;
pub(super) mod drift;
pub(super) mod held;
pub(super) mod link;
pub(super) mod login;
pub(super) mod message;
pub(super) mod sender;

use super::auth;
use super::users::{Role, User};
use super::{Desk, Peer};
use crate::quarantine::{Address, Record, State};
use crate::state::Brake;
use crate::text;
use askama::Template;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::sync::Arc;
use std::time::Duration;
use tracing::error;

/// A string from mail, the directory or a user, ready for a page: neutralised, and
/// flagged when that escaped anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// The neutralised text (askama HTML-escapes it).
    pub text: String,
    /// Whether control or bidi characters were escaped.
    pub flagged: bool,
}

impl Shown {
    /// `raw` shown whole.
    pub fn new(raw: &str) -> Shown {
        let (text, flagged) = text::neutralize_flagged(raw);
        Shown {
            text: text.into_owned(),
            flagged,
        }
    }

    /// `raw` shown, at most `max` characters.
    fn capped(raw: &str, max: usize) -> Shown {
        let (_, flagged) = text::neutralize_flagged(raw);
        Shown {
            text: text::neutralize_capped(raw, max),
            flagged,
        }
    }
}

/// Form or query fields in order, repeated names kept (ticked boxes).
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(bytes: &[u8]) -> Fields {
        Fields(
            url::form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn of_uri(uri: &Uri) -> Fields {
        Fields::parse(uri.query().unwrap_or("").as_bytes())
    }

    /// The first non-empty value of `name`, trimmed.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The signed-in user of a request.
struct Who {
    user: String,
    role: Role,
    /// The form token of this session (or SSO user).
    token: String,
    /// The session id, when signed in by the login form.
    session: Option<String>,
    /// The emergency brake as the request found it: `None` when the desk has no
    /// brake, `Some(None)` when it is off.
    brake: Option<Option<Brake>>,
    /// The relay this desk is on, with a fleet-wide store.
    relay: Option<String>,
}

/// The user a trusted proxy names in `header`: only when the header is there exactly
/// once (a proxy that appends rather than replaces would otherwise let its client's
/// own copy win).
fn sso_user<'h>(headers: &'h HeaderMap, header: &str) -> Option<&'h str> {
    let mut all = headers.get_all(header).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// The page header's view of the user, and the brake banner.
pub struct Head {
    user: Shown,
    role: &'static str,
    /// The relay this desk is on, with a fleet-wide store (every desk of the fleet
    /// shows the whole fleet: the header says which relay's desk this is).
    relay: Option<Shown>,
    token: String,
    /// The brake, when it is on.
    brake: Option<BrakeBanner>,
    /// Whether an admin may pull the brake here (the desk has one and it is off).
    brake_off: bool,
}

/// The emergency brake, as the banner on every page shows it.
pub struct BrakeBanner {
    min_audience: String,
    since: String,
    until: String,
    by: Shown,
    comment: Shown,
}

impl Who {
    fn head(&self) -> Option<Head> {
        let on = self.brake.as_ref().and_then(Option::as_ref);
        Some(Head {
            user: Shown::new(&self.user),
            role: self.role.as_str(),
            relay: self.relay.as_deref().map(Shown::new),
            token: self.token.clone(),
            brake: on.map(|b| BrakeBanner {
                min_audience: group(b.min_audience),
                since: crate::text::utc_seconds(b.since),
                until: match b.until {
                    Some(u) => format!("until {}", crate::text::utc_seconds(u)),
                    None => "until released".to_owned(),
                },
                by: Shown::new(&b.by),
                comment: Shown::new(&b.comment),
            }),
            brake_off: matches!(self.brake, Some(None)),
        })
    }
}

#[derive(Template)]
#[template(path = "refusal.html", config = "src/desk/askama.toml")]
struct RefusalPage {
    head: Option<Head>,
    base: String,
    status: u16,
    message: String,
}

impl Default for Shown {
    fn default() -> Self {
        Shown::new("")
    }
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            error!("desk page failed to render: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A page saying why a request was refused, with `status`.
pub fn refusal(status: StatusCode, message: &str) -> Response {
    refusal_for(None, String::new(), status, message)
}

fn refusal_for(head: Option<Head>, base: String, status: StatusCode, message: &str) -> Response {
    let mut r = render(&RefusalPage {
        head,
        base,
        status: status.as_u16(),
        message: message.to_owned(),
    });
    *r.status_mut() = status;
    r
}

impl Desk {
    /// The path prefix of `public_url` (empty: the desk is at `/`).
    fn base(&self) -> String {
        url::Url::parse(&self.review.public_url)
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default()
    }

    fn refuse(&self, who: Option<&Who>, status: StatusCode, message: &str) -> Response {
        refusal_for(who.and_then(Who::head), self.base(), status, message)
    }

    /// The held message a desk URL names: `QUEUEID` (this relay's record), or on a
    /// fleet's desk `RELAY:QUEUEID` (that relay's); `None` for anything else.
    fn address(&self, raw: &str) -> Option<Address> {
        Address::parse(raw)
            .ok()
            .filter(|a| a.relay.is_none() || self.index.fleet())
    }

    /// The 404 page for a desk URL that names no message ([`Desk::address`]).
    fn no_such_message(&self, who: &Who) -> Response {
        self.refuse(
            Some(who),
            StatusCode::NOT_FOUND,
            "No such message: a desk address is a queue id, or RELAY:QUEUEID on the desk \
             of a fleet.",
        )
    }

    /// Whether `ip` is a configured proxy.
    fn trusted(&self, ip: Option<std::net::IpAddr>) -> bool {
        ip.is_some_and(|ip| self.review.trusted_proxies.contains(&ip))
    }

    /// The client's address for limits and the audit trail: the last hop of
    /// `X-Forwarded-For` when a trusted proxy sent the request, else the peer;
    /// `local` on a unix socket.
    fn client(&self, headers: &HeaderMap, peer: Peer) -> String {
        match peer.0 {
            Some(ip) if self.trusted(Some(ip)) => headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
                .unwrap_or(ip)
                .to_string(),
            Some(ip) => ip.to_string(),
            None => "local".to_owned(),
        }
    }

    /// A user of the users file (blocking read on the pool).
    async fn user(self: &Arc<Self>, name: &str) -> Result<Option<User>, Response> {
        let desk = self.clone();
        let name = name.to_owned();
        match tokio::task::spawn_blocking(move || desk.users.get(&name)).await {
            Ok(Ok(user)) => Ok(user),
            Ok(Err(e)) => {
                error!("review desk: {}", text::neutralize(&e.to_string()));
                Err(refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The users file cannot be used; see the daemon's log.",
                ))
            }
            Err(e) => {
                error!("review desk: users lookup failed: {e}");
                Err(refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
            }
        }
    }

    /// The emergency brake now: `None` when this desk has none.
    fn brake(&self) -> Option<Option<Brake>> {
        self.guard.as_ref().map(|g| g.brake())
    }

    /// Who sent the request: the user a trusted proxy names, or the session of the
    /// cookie; `None` when nobody is signed in.
    async fn who(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: Peer,
    ) -> Result<Option<Who>, Response> {
        if let Some(name) = self.review.user_header.as_deref()
            && self.trusted(peer.0)
            && let Some(user) = sso_user(headers, name)
        {
            let user = user.trim();
            return Ok(self.user(user).await?.map(|u| Who {
                token: auth::sign(&self.key, &["sso", &u.name]),
                user: u.name,
                role: u.role,
                session: None,
                brake: self.brake(),
                relay: self.index.relay().map(str::to_owned),
            }));
        }
        let Some(id) = cookie(headers, self.cookie_name()) else {
            return Ok(None);
        };
        let Some(session) = self.sessions.touch(&id, self.now()) else {
            return Ok(None);
        };
        match self.user(&session.user).await? {
            Some(u) => Ok(Some(Who {
                token: auth::sign(&self.key, &["csrf", &id]),
                user: u.name,
                role: u.role,
                session: Some(id),
                brake: self.brake(),
                relay: self.index.relay().map(str::to_owned),
            })),
            None => {
                self.sessions.end(&id);
                Ok(None)
            }
        }
    }

    /// The user of a page: signed in, or a redirect to the login form.
    async fn reader(self: &Arc<Self>, headers: &HeaderMap, peer: Peer) -> Result<Who, Response> {
        match self.who(headers, peer).await? {
            Some(who) => Ok(who),
            None => Err(Redirect::to(&format!("{}/login", self.base())).into_response()),
        }
    }

    /// The user of a state-changing request: signed in (else 401) and with the form's
    /// token (else 403).
    async fn writer(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: Peer,
        fields: &Fields,
    ) -> Result<Who, Response> {
        let Some(who) = self.who(headers, peer).await? else {
            return Err(self.refuse(None, StatusCode::UNAUTHORIZED, "Please log in first."));
        };
        let sent = fields.get("token").unwrap_or("");
        if !auth::same_secret(sent, &who.token) {
            return Err(self.refuse(
                Some(&who),
                StatusCode::FORBIDDEN,
                "The form is missing its token or it is stale; reload the page and try again.",
            ));
        }
        Ok(who)
    }

    /// [`Desk::writer`] whose role is at least `least`; else 403 with `refused`.
    async fn writer_as(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: Peer,
        fields: &Fields,
        least: Role,
        refused: &str,
    ) -> Result<Who, Response> {
        let who = self.writer(headers, peer, fields).await?;
        if who.role < least {
            return Err(self.refuse(Some(&who), StatusCode::FORBIDDEN, refused));
        }
        Ok(who)
    }

    /// A store call on the blocking pool; a store failure is a 500 page.
    async fn store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn crate::quarantine::QuarantineIndex) -> T + Send + 'static,
    ) -> Result<T, Response> {
        let desk = self.clone();
        tokio::task::spawn_blocking(move || f(desk.index.as_ref()))
            .await
            .map_err(|e| {
                error!("review desk: store task failed: {e}");
                refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            })
    }

    fn store_failed(&self, who: Option<&Who>, e: impl std::fmt::Display) -> Response {
        error!(
            "review desk: quarantine store: {}",
            text::neutralize(&e.to_string())
        );
        self.refuse(
            who,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The quarantine store failed; see the daemon's log.",
        )
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Time until `deadline`, or how long ago it passed.
fn left(deadline: u64, now: u64) -> String {
    if deadline > now {
        crate::quarantine::age(Duration::from_secs(deadline - now))
    } else {
        format!(
            "overdue {}",
            crate::quarantine::age(Duration::from_secs(now - deadline))
        )
    }
}

impl Desk {
    /// Time left to review and to expiry, for a held record.
    fn deadlines(&self, r: &Record, now: u64) -> (String, String) {
        if r.state != State::Held {
            return ("-".into(), "-".into());
        }
        let held = r.message.held_at;
        let review = held.saturating_add(self.quarantine.review_within.as_secs());
        let expiry = r
            .hold_until
            .unwrap_or_else(|| held.saturating_add(self.quarantine.expire_after.as_secs()));
        let expiry = if r.foreign {
            "never (foreign)".into()
        } else {
            left(expiry, now)
        };
        (left(review, now), expiry)
    }
}

/// A sender's words as lines to show: each line neutralised and flagged on its own,
/// so that ordinary line breaks are not flagged but a stray control character is.
fn shown_lines(words: &str) -> Vec<Shown> {
    words
        .split('\n')
        .map(|l| Shown::capped(l.strip_suffix('\r').unwrap_or(l), sender::MAX_PLEA_CHARS))
        .collect()
}

/// The rules of a record as the pages show them: name, action, reason.
fn shown_rules(rules: &[crate::quarantine::record::RuleHit]) -> Vec<(Shown, Shown, Shown)> {
    rules
        .iter()
        .map(|h| {
            (
                Shown::new(&h.rule),
                Shown::new(&h.action),
                Shown::new(&h.message),
            )
        })
        .collect()
}

/// 840000 as "840,000".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `GET /static/desk.css`.
pub async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../desk.css"),
    )
        .into_response()
}

/// Anything else: 404.
pub async fn not_found() -> Response {
    refusal(StatusCode::NOT_FOUND, "Not found.")
}
