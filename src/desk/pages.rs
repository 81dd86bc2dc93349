// SPDX-License-Identifier: GPL-3.0-or-later
//! The desk's handlers and the views their templates render.
//!
//! Every string from mail, the directory or a user reaches a template as a [`Shown`]:
//! neutralised by [`crate::text`] (control and bidi characters as visible `\u{202E}`
//! escapes, flagged) and HTML-escaped by askama. Store calls run on the blocking pool.

use super::auth::{self, MAX_FAILURES};
use super::users::{self, Role, User};
use super::{Desk, Peer};
use crate::quarantine::{
    NewRequest, Page, Query, QueueId, Record, Request as ActionRequest, RequestAction, Row, Sort,
    State, SubmitError, Via, index::MAX_PAGE, needs_admin,
};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Rows per page of the held list.
const PER_PAGE: u64 = 50;
/// How far a hold may be extended, in hours, as the form offers.
const EXTEND_HOURS: [u64; 3] = [4, 24, 72];

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
}

/// The page header's view of the user.
pub struct Head {
    user: Shown,
    role: &'static str,
    token: String,
}

impl Who {
    fn head(&self) -> Option<Head> {
        Some(Head {
            user: Shown::new(&self.user),
            role: self.role.as_str(),
            token: self.token.clone(),
        })
    }
}

// ---------------------------------------------------------------- templates

#[derive(Template)]
#[template(path = "login.html", config = "src/desk/askama.toml")]
struct LoginPage {
    head: Option<Head>,
    base: String,
    error: Option<String>,
    user: Shown,
}

#[derive(Template)]
#[template(path = "refusal.html", config = "src/desk/askama.toml")]
struct RefusalPage {
    head: Option<Head>,
    base: String,
    status: u16,
    message: String,
}

/// One row of the held list.
struct ListRow {
    queue_id: String,
    state: &'static str,
    foreign: bool,
    admin_only: bool,
    age: String,
    review_left: String,
    expiry_left: String,
    sender: Shown,
    sasl: Option<Shown>,
    audience: String,
    counted: &'static str,
    largest: Option<(Shown, String)>,
    rule: Shown,
    subject: Shown,
    request: Option<(&'static str, &'static str)>,
}

#[derive(Template)]
#[template(path = "list.html", config = "src/desk/askama.toml")]
struct ListPage {
    head: Option<Head>,
    base: String,
    filter: Filter,
    rows: Vec<ListRow>,
    total: u64,
    by_state: Vec<(&'static str, u64, String)>,
    by_rule: Vec<(Shown, u64, String)>,
    page: u64,
    pages: u64,
    prev: Option<String>,
    next: Option<String>,
    can_act: bool,
}

/// The list's filters as the form shows them back.
#[derive(Clone, Debug, Default)]
struct Filter {
    state: String,
    rule: Shown,
    sender: Shown,
    list: Shown,
    min_audience: String,
    older_than: String,
    sort: &'static str,
    desc: bool,
    state_options: Vec<Opt>,
    sort_options: Vec<Opt>,
    /// The filter as query-string fields (for links and the bulk form).
    fields: Vec<(&'static str, String)>,
}

/// One option of a select.
#[derive(Clone, Debug, Default)]
struct Opt {
    value: &'static str,
    selected: bool,
}

fn options(values: &[&'static str], chosen: &str) -> Vec<Opt> {
    values
        .iter()
        .map(|v| Opt {
            value: v,
            selected: *v == chosen,
        })
        .collect()
}

impl Default for Shown {
    fn default() -> Self {
        Shown::new("")
    }
}

struct ListView {
    address: Shown,
    size: String,
    external: String,
    internal: String,
    drift_from: Option<String>,
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
    open_request: bool,
    why_not: Option<&'static str>,
    extend_hours: [u64; 3],
}

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

// ---------------------------------------------------------------- identity

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

    /// Who sent the request: the user a trusted proxy names, or the session of the
    /// cookie; `None` when nobody is signed in.
    async fn who(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: Peer,
    ) -> Result<Option<Who>, Response> {
        if let Some(name) = self.review.user_header.as_deref()
            && self.trusted(peer.0)
            && let Some(user) = headers.get(name).and_then(|v| v.to_str().ok())
        {
            let user = user.trim();
            return Ok(self.user(user).await?.map(|u| Who {
                token: auth::sign(&self.key, &["sso", &u.name]),
                user: u.name,
                role: u.role,
                session: None,
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

// ---------------------------------------------------------------- login

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

// ---------------------------------------------------------------- the held list

/// The query of the list's filter fields; an unusable value is a message for a 400.
fn query_of(f: &Fields, now: u64) -> Result<(Query, Filter), String> {
    let mut q = Query::default();
    let mut filter = Filter::default();
    let mut fields: Vec<(&'static str, String)> = Vec::new();
    let state = f.get("state").unwrap_or("held");
    q.state =
        match state {
            "any" => None,
            s => Some(s.parse::<State>().map_err(|_| {
                "state must be held, released, discarded, expired or any".to_owned()
            })?),
        };
    filter.state = state.to_owned();
    fields.push(("state", state.to_owned()));
    if let Some(rule) = f.get("rule") {
        q.rule = Some(rule.to_owned());
        filter.rule = Shown::new(rule);
        fields.push(("rule", rule.to_owned()));
    }
    if let Some(sender) = f.get("sender") {
        q.sender = Some(sender.to_owned());
        filter.sender = Shown::new(sender);
        fields.push(("sender", sender.to_owned()));
    }
    if let Some(list) = f.get("list") {
        q.list = Some(list.to_owned());
        filter.list = Shown::new(list);
        fields.push(("list", list.to_owned()));
    }
    if let Some(min) = f.get("min_audience") {
        q.min_audience = Some(
            min.parse()
                .map_err(|_| "min_audience must be a whole number".to_owned())?,
        );
        filter.min_audience = min.to_owned();
        fields.push(("min_audience", min.to_owned()));
    }
    if let Some(older) = f.get("older_than") {
        let d = humantime::parse_duration(older)
            .map_err(|_| "older_than must be a duration such as 30m or 2h".to_owned())?;
        q.held_before = Some(now.saturating_sub(d.as_secs()));
        filter.older_than = older.to_owned();
        fields.push(("older_than", older.to_owned()));
    }
    (q.sort, filter.sort) = match f.get("sort").unwrap_or("held-at") {
        "held-at" => (Sort::HeldAt, "held-at"),
        "audience" => (Sort::Audience, "audience"),
        "sender" => (Sort::Sender, "sender"),
        _ => return Err("sort must be held-at, audience or sender".into()),
    };
    fields.push(("sort", filter.sort.to_owned()));
    q.descending = f.get("desc").is_some_and(|v| v == "1" || v == "on");
    filter.desc = q.descending;
    if q.descending {
        fields.push(("desc", "1".into()));
    }
    filter.fields = fields;
    filter.state_options = options(&["held", "released", "discarded", "expired", "any"], state);
    filter.sort_options = options(&["held-at", "audience", "sender"], filter.sort);
    Ok((q, filter))
}

fn query_string(fields: &[(&'static str, String)], extra: &[(&str, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    for (k, v) in extra {
        s.append_pair(k, v);
    }
    s.finish()
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

fn request_summary(r: &ActionRequest) -> (&'static str, &'static str) {
    (r.action.name(), r.state.as_str())
}

fn list_row(desk: &Desk, row: &Row, now: u64) -> ListRow {
    let r = &row.record;
    let m = &r.message;
    let (review_left, expiry_left) = desk.deadlines(r, now);
    ListRow {
        queue_id: m.queue_id.as_str().to_owned(),
        state: r.state.as_str(),
        foreign: r.foreign,
        admin_only: needs_admin(r),
        age: crate::quarantine::age(r.held_for(now)),
        review_left,
        expiry_left,
        sender: Shown::capped(if m.sender.is_empty() { "<>" } else { &m.sender }, 120),
        sasl: m.sasl_login.as_deref().map(|s| Shown::capped(s, 120)),
        audience: group(m.audience),
        counted: if m.lists.is_empty() {
            "envelope"
        } else {
            "lists"
        },
        largest: m
            .lists
            .iter()
            .max_by_key(|l| l.size)
            .map(|l| (Shown::capped(&l.address, 120), group(l.size))),
        rule: Shown::new(m.rules.first().map(|r| r.rule.as_str()).unwrap_or("-")),
        subject: Shown::capped(m.subject.as_deref().unwrap_or(""), text::MAX_SUBJECT_CHARS),
        request: row.request.as_ref().map(request_summary),
    }
}

/// `GET /`: the held list.
pub async fn list(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let who = match desk.reader(&headers, peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let now = desk.now();
    let fields = Fields::of_uri(&uri);
    let (mut q, filter) = match query_of(&fields, now) {
        Ok(x) => x,
        Err(e) => return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, &e),
    };
    let page_no = fields
        .get("page")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    q.limit = PER_PAGE;
    q.offset = (page_no - 1).saturating_mul(PER_PAGE);
    let page: Page = match desk.store(move |i| i.page(&q)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return desk.store_failed(Some(&who), e),
        Err(r) => return r,
    };
    let pages = page.total.div_ceil(PER_PAGE).max(1);
    let link = |n: u64| {
        format!(
            "?{}",
            query_string(&filter.fields, &[("page", n.to_string())])
        )
    };
    let base_fields: Vec<(&'static str, String)> = filter
        .fields
        .iter()
        .filter(|(k, _)| *k != "state" && *k != "rule")
        .cloned()
        .collect();
    let by_state = page
        .by_state
        .iter()
        .map(|(s, n)| {
            (
                s.as_str(),
                *n,
                format!(
                    "?{}",
                    query_string(&base_fields, &[("state", s.as_str().to_owned())])
                ),
            )
        })
        .collect();
    let by_rule = page
        .by_rule
        .iter()
        .map(|(rule, n)| {
            (
                Shown::new(rule),
                *n,
                format!(
                    "?{}",
                    query_string(
                        &base_fields,
                        &[("state", "held".to_owned()), ("rule", rule.clone())]
                    )
                ),
            )
        })
        .collect();
    render(&ListPage {
        rows: page.rows.iter().map(|r| list_row(&desk, r, now)).collect(),
        total: page.total,
        by_state,
        by_rule,
        page: page_no,
        pages,
        prev: (page_no > 1).then(|| link(page_no - 1)),
        next: (page_no < pages).then(|| link(page_no + 1)),
        can_act: who.role >= Role::Reviewer,
        head: who.head(),
        base: desk.base(),
        filter,
    })
}

// ---------------------------------------------------------------- one message

fn blast_radius(r: &Record) -> String {
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
        via: r.via.as_str(),
        remote: r.remote.as_deref().map(Shown::new),
        comment: Shown::new(&r.comment),
        state: r.state.as_str(),
        result: r.result.as_deref().map(Shown::new),
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

/// `GET /message/{queue_id}`: every fact of one record.
pub async fn message(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(queue_id): UrlPath<String>,
) -> Response {
    let who = match desk.reader(&headers, peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Ok(id) = QueueId::parse(&queue_id) else {
        return desk.refuse(Some(&who), StatusCode::NOT_FOUND, "No such queue id.");
    };
    let found = desk
        .store(move |i| {
            let record = i.record(&id)?;
            let requests = i.requests(record.id)?;
            Ok::<_, crate::quarantine::StoreError>((record, requests))
        })
        .await;
    let (r, requests) = match found {
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
            .map(|l| ListView {
                address: Shown::new(&l.address),
                size: group(l.size),
                external: group(l.external),
                internal: group(l.size.saturating_sub(l.external)),
                drift_from: l.drift_from.map(group),
            })
            .collect(),
        domains: m
            .top_domains
            .iter()
            .map(|(d, n)| (Shown::new(d), group(*n)))
            .collect(),
        rules: m
            .rules
            .iter()
            .map(|h| {
                (
                    Shown::new(&h.rule),
                    Shown::new(&h.action),
                    Shown::new(&h.message),
                )
            })
            .collect(),
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
                who: Shown::new(&a.who),
                action: Shown::new(&a.action),
                comment: a.comment.as_deref().map(Shown::new),
            })
            .collect(),
        requests: requests.iter().map(request_view).collect(),
        can_act: why.is_none() && !open_request,
        open_request,
        why_not: why,
        extend_hours: EXTEND_HOURS,
        head: who.head(),
        base: desk.base(),
    })
}

/// The action a form asks for; a message for a 400 when it is not one.
fn action_of(f: &Fields, now: u64) -> Result<RequestAction, String> {
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

/// `POST /message/{queue_id}`: files one request.
pub async fn act(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(queue_id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let who = match desk.writer(&headers, peer, &fields).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if who.role < Role::Reviewer {
        return desk.refuse(
            Some(&who),
            StatusCode::FORBIDDEN,
            "Your role (viewer) may only read.",
        );
    }
    let Ok(id) = QueueId::parse(&queue_id) else {
        return desk.refuse(Some(&who), StatusCode::NOT_FOUND, "No such queue id.");
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
    let outcome = submit(&desk, &who, id.clone(), action, comment, client, now).await;
    match outcome {
        Outcome::Filed => Redirect::to(&format!("{}/message/{}", desk.base(), id)).into_response(),
        Outcome::Refused(status, message) => desk.refuse(Some(&who), status, &message),
    }
}

/// What became of one request.
enum Outcome {
    Filed,
    Refused(StatusCode, String),
}

/// Files a request for `id` when `who` may act on it; a Conflict is a 409 and changes
/// nothing.
async fn submit(
    desk: &Arc<Desk>,
    who: &Who,
    id: QueueId,
    action: RequestAction,
    comment: String,
    client: String,
    now: u64,
) -> Outcome {
    let request = NewRequest {
        queue_id: id,
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
            let record = i.record(&request.queue_id).map_err(SubmitError::from)?;
            if needs_admin(&record) && role < Role::Admin {
                return Ok(None);
            }
            i.submit(&request).map(Some)
        })
        .await;
    match done {
        Ok(Ok(Some(r))) => {
            info!(
                queue_id = %r.queue_id,
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

// ---------------------------------------------------------------- bulk

/// `POST /bulk`: ticked messages, or all matching the filter, then a confirmation
/// page with counts; with `confirm=yes` the requests are filed, each with its outcome.
pub async fn bulk(
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
    if who.role < Role::Reviewer {
        return desk.refuse(
            Some(&who),
            StatusCode::FORBIDDEN,
            "Your role (viewer) may only read.",
        );
    }
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

// ---------------------------------------------------------------- the rest

/// `GET /static/desk.css`.
pub async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("desk.css"),
    )
        .into_response()
}

/// Anything else: 404.
pub async fn not_found() -> Response {
    refusal(StatusCode::NOT_FOUND, "Not found.")
}
