// SPDX-License-Identifier: GPL-3.0-or-later
//! `/login` and `/logout`: sessions after a password, failed logins limited.

use super::{Fields, Head, Shown, refusal, render};
use crate::desk::auth::MAX_FAILURES;
use crate::desk::users;
use crate::desk::{Desk, Peer};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;
use tracing::{error, info, warn};

#[derive(Template)]
#[template(path = "login.html", config = "src/desk/askama.toml")]
struct LoginPage {
    head: Option<Head>,
    base: String,
    error: Option<String>,
    user: Shown,
}

/// `GET /login`.
pub async fn login_form(AxState(desk): AxState<Arc<Desk>>) -> Response {
    render(&LoginPage {
        head: None,
        base: desk.base(),
        error: None,
        user: Shown::default(),
    })
}

/// `POST /login`: a session cookie for a right password; failures are limited per
/// user and per client address.
pub async fn login(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let name = fields.get("user").unwrap_or("").to_owned();
    let password = fields
        .0
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let client = desk.client(&headers, peer);
    // Per user, and per client address when there is one: on a unix socket every
    // client is "local", and counting them together would let anyone lock everyone out.
    let user_key = format!("user:{name}");
    let addr_key = format!("addr:{client}");
    let mut keys = vec![user_key.as_str()];
    if peer.0.is_some() {
        keys.push(addr_key.as_str());
    }
    let now = desk.now();
    let again = |error: &str, status: StatusCode| {
        let mut r = render(&LoginPage {
            head: None,
            base: desk.base(),
            error: Some(error.to_owned()),
            user: Shown::capped(&name, 64),
        });
        *r.status_mut() = status;
        r
    };
    if let Some(wait) = desk.limiter.blocked(&keys, now) {
        warn!(
            user = %text::neutralize(&name),
            client = %client,
            "review desk: login refused, {MAX_FAILURES} failures within a minute"
        );
        let mut r = again(
            "Too many failed logins; wait a minute and try again.",
            StatusCode::TOO_MANY_REQUESTS,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.max(1)));
        return r;
    }
    // A name no account can have costs no hash, and never becomes a limiter key.
    if users::check_name(&name).is_err() {
        info!(client = %client, "review desk: failed login with a malformed user name");
        return again("Wrong user name or password.", StatusCode::UNAUTHORIZED);
    }
    let Ok(_permit) = desk.verifying.try_acquire() else {
        let mut r = again(
            "The desk is busy checking other logins; try again in a moment.",
            StatusCode::SERVICE_UNAVAILABLE,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
        return r;
    };
    let user = match desk.user(&name).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let hash = user.as_ref().and_then(|u| u.hash.clone());
    let verified = tokio::task::spawn_blocking(move || match hash {
        Some(h) => users::verify(&h, &password),
        // The same work for an unknown user or one without a password.
        None => {
            let _ = users::verify(dummy_hash(), &password);
            false
        }
    })
    .await
    .unwrap_or(false);
    let Some(user) = user.filter(|_| verified) else {
        desk.limiter.failed(&keys, now);
        info!(
            user = %text::neutralize(&name),
            client = %client,
            "review desk: failed login"
        );
        return again("Wrong user name or password.", StatusCode::UNAUTHORIZED);
    };
    desk.limiter.clear(&user_key);
    let id = match desk.sessions.start(&user.name, now) {
        Ok(id) => id,
        Err(e) => {
            error!("review desk: {e}");
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    info!(user = %text::neutralize(&user.name), role = user.role.as_str(), client = %client, "review desk: login");
    let mut r = Redirect::to(&format!("{}/", desk.base())).into_response();
    let secure = if desk.review.https() { "; Secure" } else { "" };
    let cookie = format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/{secure}",
        desk.cookie_name()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A valid argon2id hash of nothing in particular, verified for unknown users so that
/// a login takes as long whether the user exists or not.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| users::hash_password("unknown user").unwrap_or_default())
}

/// `POST /logout`.
pub async fn logout(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let who = match desk.writer(&headers, peer, &fields).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Some(id) = &who.session {
        desk.sessions.end(id);
    }
    let mut r = Redirect::to(&format!("{}/login", desk.base())).into_response();
    let expired = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        desk.cookie_name(),
        if desk.review.https() { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&expired) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
