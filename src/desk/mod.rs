// SPDX-License-Identifier: GPL-3.0-or-later
//! The review desk: a web page, served by the unprivileged daemon, where the people on
//! duty see held messages and ask for them to be released or discarded.
//!
//! The desk never acts on the Postfix queue itself: every action is a request filed in
//! the quarantine store ([`QuarantineIndex::submit`]), which the root worker executes;
//! the pages show where each request stands. Everything a page shows comes from the
//! store.
//!
//! Parts: [`users`] (the accounts file), [`auth`] (sessions, failed-login limits, form
//! tokens, the desk key), [`guard`] (response headers, cross-origin check), `pages`
//! (the handlers and their templates, among them `/link/{token}`, where a signed link
//! of the admin digest is confirmed and acts once without a login, and `/s/{token}`,
//! where the sender of a held message withdraws it, asks for its release or confirms
//! it through the signed link of the notice they got).

pub(crate) mod auth;
pub(crate) mod guard;
mod pages;
pub(crate) mod users;

use crate::clock::{Clock, epoch_secs};
use crate::config::{ListenAddr, QuarantineSettings, ReviewSettings};
use crate::directory::drift::Accepted;
use crate::http_listener::HttpListener;
use crate::quarantine::QuarantineIndex;
use auth::{KEY_BYTES, Limiter, Sessions};
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use users::Users;

/// Password checks (argon2) running at once; see `Desk::verifying`.
pub const MAX_VERIFYING: usize = 2;

/// The largest request body the desk reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Mode of the desk's unix socket: the daemon's account and its group (the proxy).
pub const SOCKET_MODE: u32 = 0o660;

/// The name of the desk's key file in the state directory.
pub const KEY_FILE: &str = crate::link::KEY_FILE;

/// Everything the desk's handlers share.
pub struct Desk {
    index: Arc<dyn QuarantineIndex>,
    users: Users,
    sessions: Sessions,
    limiter: Limiter,
    /// Password checks running at once: argon2 takes ~20 MiB and tens of milliseconds
    /// each, on the blocking pool the milter's store writes also use, so a flood of
    /// logins must not queue there (a login beyond this answers 503).
    verifying: tokio::sync::Semaphore,
    key: [u8; KEY_BYTES],
    review: ReviewSettings,
    quarantine: QuarantineSettings,
    clock: Arc<dyn Clock>,
    public_origin: Option<String>,
    /// The state guard, for the emergency brake (none: the desk shows no brake).
    guard: Option<crate::state::Guard>,
    /// The daemon's directory, where admins accept drifted list sizes (none: the desk
    /// offers no acceptance).
    list_sizes: Option<Arc<dyn ListSizes>>,
}

/// The directory in force, as the desk changes it: an admin accepts a drifted list's
/// size, and the running daemon judges the next message against it (the daemon's
/// generation owner implements it; no reload needed).
#[async_trait::async_trait]
pub trait ListSizes: Send + Sync {
    /// Accepts the current size of `list` in the directory in force, records it in the
    /// list-size file and puts it in force.
    async fn accept(&self, list: &str) -> Result<Accepted, ListSizeError>;
}

/// Why a list's size was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ListSizeError {
    /// The address is no list of the directory in force.
    #[error("{0} is not a list of the directory in force")]
    NotAList(String),
    /// The list-size file or the rebuild failed.
    #[error("{0}")]
    Failed(String),
}

impl Desk {
    /// A desk over `index`, with `[review]` and `[quarantine]` settings, the desk `key`
    /// and `clock`.
    pub fn new(
        index: Arc<dyn QuarantineIndex>,
        review: ReviewSettings,
        quarantine: QuarantineSettings,
        key: [u8; KEY_BYTES],
        clock: Arc<dyn Clock>,
    ) -> Desk {
        Desk {
            index,
            users: Users::new(review.users_file.clone()),
            sessions: Sessions::new(review.session_idle, review.session_lifetime),
            limiter: Limiter::default(),
            verifying: tokio::sync::Semaphore::new(MAX_VERIFYING),
            key,
            public_origin: guard::origin_of(&review.public_url),
            review,
            quarantine,
            clock,
            guard: None,
            list_sizes: None,
        }
    }

    /// The desk where admins accept a drifted list's size in `list_sizes`.
    pub fn with_list_sizes(mut self, list_sizes: Arc<dyn ListSizes>) -> Desk {
        self.list_sizes = Some(list_sizes);
        self
    }

    /// The desk with the emergency brake of `guard`: a banner on every page while it
    /// is on, and admins pull and release it here.
    pub fn with_guard(mut self, guard: crate::state::Guard) -> Desk {
        self.guard = Some(guard);
        self
    }

    /// The links of an admin digest composed now: each held message's page, and the
    /// one-click links signed with the desk key when `digest_actions` is on; `None`
    /// without `public_url` (a mail needs absolute links).
    pub fn digest_links(&self) -> Option<crate::notify::DeskLinks> {
        if self.review.public_url.is_empty() {
            return None;
        }
        Some(crate::notify::DeskLinks {
            public_url: self.review.public_url.clone(),
            relay: self.index.relay().map(str::to_owned),
            actions: self
                .review
                .digest_actions
                .then(|| crate::notify::ActionLinks {
                    key: self.key,
                    expires: self
                        .now()
                        .saturating_add(self.review.link_lifetime.as_secs()),
                }),
        })
    }

    /// Where the links of notices to senders point and what signs them: none without
    /// a `public_url` (the notice then tells the sender whom to ask).
    pub fn sender_links(&self) -> Option<crate::quarantine::SenderLinks> {
        (!self.review.public_url.is_empty()).then(|| crate::quarantine::SenderLinks {
            public_url: self.review.public_url.clone(),
            key: self.key,
        })
    }

    /// Seconds since the epoch on the desk's clock.
    fn now(&self) -> u64 {
        epoch_secs(self.clock.now())
    }

    /// The session cookie's name: `__Host-` prefixed when browsers use HTTPS.
    fn cookie_name(&self) -> &'static str {
        if self.review.https() {
            "__Host-fanout-desk"
        } else {
            "fanout-desk"
        }
    }
}

/// The connection's peer, set by [`peer_layer`]: its IP address, `None` on a unix
/// socket (or in tests without one).
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer(pub Option<IpAddr>);

/// The desk's routes with every safety layer.
pub fn router(desk: Arc<Desk>) -> Router {
    let mut router = Router::new()
        .route("/", get(pages::held::list))
        .route(
            "/login",
            get(pages::login::login_form).post(pages::login::login),
        )
        .route("/logout", post(pages::login::logout))
        .route(
            "/message/{address}",
            get(pages::message::message).post(pages::message::act),
        )
        .route(
            "/link/{token}",
            get(pages::link::confirm).post(pages::link::act),
        )
        .route(
            "/s/{token}",
            get(pages::sender::show).post(pages::sender::act),
        )
        .route("/bulk", post(pages::bulk::bulk))
        .route("/brake", post(pages::brake::brake))
        .route("/message/{address}/accept-size", post(pages::drift::accept))
        .route("/static/desk.css", get(pages::css))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(
            desk.clone(),
            cross_origin_layer,
        ))
        .layer(middleware::from_fn(peer_layer))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES));
    for (name, value) in guard::security_headers() {
        router = router.layer(SetResponseHeaderLayer::overriding(name, value));
    }
    router.with_state(desk)
}

/// Records the connection's peer address for the handlers.
async fn peer_layer(mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    request.extensions_mut().insert(Peer(peer));
    next.run(request).await
}

/// Refuses a cross-origin state-changing request (403) before any handler runs.
async fn cross_origin_layer(
    State(desk): State<Arc<Desk>>,
    request: Request,
    next: Next,
) -> Response {
    if guard::same_origin(
        request.method(),
        request.headers(),
        desk.public_origin.as_deref(),
    ) {
        next.run(request).await
    } else {
        let mut response = pages::refusal(
            axum::http::StatusCode::FORBIDDEN,
            "Cross-origin request refused.",
        )
        .into_response();
        response
            .headers_mut()
            .insert("x-desk-refused", HeaderValue::from_static("cross-origin"));
        response
    }
}

/// A bound desk listener.
pub struct DeskListener(HttpListener);

impl DeskListener {
    /// Binds `[review] listen`.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<DeskListener> {
        HttpListener::bind(addr, SOCKET_MODE)
            .await
            .map(DeskListener)
    }

    /// The bound TCP address (tests bind port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local_addr()
    }

    /// Serves `desk` until `shutdown` completes.
    pub async fn serve(
        self,
        desk: Arc<Desk>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.0.serve(router(desk), shutdown).await
    }
}

/// The desk key in the state directory, created when missing (blocking).
pub fn key(state_dir: &Path) -> std::io::Result<[u8; KEY_BYTES]> {
    auth::load_or_create_key(&state_dir.join(KEY_FILE))
}

#[cfg(test)]
mod tests;
