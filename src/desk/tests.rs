// SPDX-License-Identifier: GPL-3.0-or-later
//! The desk over HTTP, in process (`oneshot` on the router, a manual clock, a real
//! SQLite store in a temporary directory), plus one smoke test on a real socket.

use super::*;
use crate::clock::ManualClock;
use crate::quarantine::record::RuleHit;
use crate::quarantine::store::tests::held;
use crate::quarantine::{HeldMessage, RequestAction, RequestState, Store, Via};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request as HttpRequest, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};
use tower::ServiceExt;
use users::{Role, User};

const PASSWORD: &str = "correct horse battery";
const T0: u64 = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    desk: Arc<Desk>,
    clock: ManualClock,
}

/// A desk with users alice (admin), rita (reviewer), vic (viewer) and sam (SSO
/// only), over an empty store; `extra` is more `[review]` TOML.
fn fixture_with(extra: &str) -> Fixture {
    fixture_sized(extra, None)
}

/// [`fixture_with`], the desk accepting list sizes in `sizes`.
fn fixture_sized(extra: &str, sizes: Option<Arc<dyn ListSizes>>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let hash = users::hash_with(PASSWORD, users::tests::cheap()).unwrap();
    let mut table = BTreeMap::new();
    for (name, role, hash) in [
        ("alice", Role::Admin, Some(hash.clone())),
        ("rita", Role::Reviewer, Some(hash.clone())),
        ("vic", Role::Viewer, Some(hash)),
        ("sam", Role::Reviewer, None),
    ] {
        table.insert(
            name.to_owned(),
            User {
                name: name.into(),
                role,
                hash,
            },
        );
    }
    let users_file = dir.path().join("review-users");
    users::write(&users_file, &table, None).unwrap();
    let config = crate::config::parse(
        &format!(
            "[domains]\ninternal = [\"example.org\"]\n[review]\nusers_file = \"{}\"\n{extra}",
            users_file.display()
        ),
        Path::new("/etc/fanout-milter/fanout-milter.toml"),
    )
    .unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
    let index: Arc<dyn QuarantineIndex> = store.clone();
    let guard = crate::state::Guard::new(
        Arc::new(crate::state::MemoryBackend::new()),
        Arc::new(clock.clone()),
        None,
    );
    let mut desk = Desk::new(
        index,
        config.review,
        config.quarantine,
        [7; KEY_BYTES],
        Arc::new(clock.clone()),
    )
    .with_guard(guard);
    if let Some(sizes) = sizes {
        desk = desk.with_list_sizes(sizes);
    }
    let desk = Arc::new(desk);
    Fixture {
        _dir: dir,
        store,
        desk,
        clock,
    }
}

fn fixture() -> Fixture {
    fixture_with("")
}

/// An ordinary hold (a reviewer may act on it).
fn ordinary(queue_id: &str) -> HeldMessage {
    let mut m = held(queue_id, T0 - 600);
    m.recipients = vec!["all@example.org".into(), "boss@example.org".into()];
    m.lists[0].drift_from = None;
    m.rules = vec![RuleHit {
        rule: "limits.audience".into(),
        action: "quarantine".into(),
        message: "840,000 recipients >= quarantine level 500".into(),
    }];
    m
}

impl Fixture {
    fn hold(&self, m: &HeldMessage) {
        self.store.record_held(m, "milter", None).unwrap();
    }

    fn requests(&self, queue_id: &str) -> Vec<crate::quarantine::Request> {
        let r = self
            .index()
            .record(&crate::quarantine::QueueId::parse(queue_id).unwrap().into())
            .unwrap();
        self.index().requests(r.id).unwrap()
    }

    fn index(&self) -> &dyn QuarantineIndex {
        self.store.as_ref()
    }

    async fn send(&self, req: HttpRequest<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = router(self.desk.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = HttpRequest::get(path);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    /// A same-origin form POST (a browser's `Sec-Fetch-Site`).
    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        self.post_with(path, cookie, form, &[("sec-fetch-site", "same-origin")])
            .await
    }

    async fn post_with(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        let mut req = HttpRequest::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("host", "desk.test:8025");
        let mut peer = SocketAddr::from(([198, 51, 100, 9], 40000));
        for (k, v) in headers {
            match *k {
                // The connection's peer, which only a socket would give.
                "peer" => peer = v.parse().unwrap(),
                _ => req = req.header(*k, *v),
            }
        }
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let mut req = req.body(Body::from(body.finish())).unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        self.send(req).await
    }

    /// Logs `user` in: the cookie to send back.
    async fn login(&self, user: &str) -> String {
        let (status, headers, body) = self
            .post("/login", None, &[("user", user), ("password", PASSWORD)])
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let set = headers["set-cookie"].to_str().unwrap().to_owned();
        set.split(';').next().unwrap().to_owned()
    }

    /// The form token on the held list of the session `cookie`.
    async fn token(&self, cookie: &str) -> String {
        let (status, _, body) = self.get("/", Some(cookie)).await;
        assert_eq!(status, StatusCode::OK);
        token_in(&body)
    }
}

fn token_in(body: &str) -> String {
    let at = body.find("name=\"token\" value=\"").expect("a token field") + 20;
    body[at..at + 64].to_owned()
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_login_and_posts_are_refused() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    for path in ["/", "/message/AAAAAA1", "/?state=any"] {
        let (status, headers, _) = f.get(path, None).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers["location"], "/login", "{path}");
    }
    let (status, _, body) = f.get("/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("id=\"login\"") && body.contains("name=\"user\""));
    assert!(body.contains("name=\"password\""));
    for path in ["/message/AAAAAA1", "/bulk", "/logout"] {
        let (status, _, _) = f
            .post(path, None, &[("action", "release"), ("comment", "x")])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _, _) = f
        .post(
            "/message/AAAAAA1",
            Some("fanout-desk=0123"),
            &[("action", "release")],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an unknown cookie is nobody"
    );
    assert!(f.requests("AAAAAA1").is_empty());
}

#[tokio::test]
async fn a_wrong_password_gets_no_session_a_right_one_a_strict_cookie() {
    let f = fixture();
    for (user, password) in [
        ("alice", "wrong password!"),
        ("nobody", PASSWORD),
        ("sam", ""),
    ] {
        let (status, headers, body) = f
            .post("/login", None, &[("user", user), ("password", password)])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user}");
        assert!(headers.get("set-cookie").is_none(), "{user}");
        assert!(body.contains("Wrong user name or password"), "{user}");
    }
    let (status, headers, _) = f
        .post("/login", None, &[("user", "alice"), ("password", PASSWORD)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/");
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("fanout-desk="), "{cookie}");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let id = &cookie["fanout-desk=".len()..cookie.find(';').unwrap()];
    assert_eq!(id.len(), 64);
}

#[tokio::test]
async fn over_https_the_cookie_is_secure_and_host_prefixed() {
    let f = fixture_with("public_url = \"https://review.corp.example\"\n");
    let (_, headers, _) = f
        .post("/login", None, &[("user", "alice"), ("password", PASSWORD)])
        .await;
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-fanout-desk="), "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let f = fixture();
    let cookie = f.login("alice").await;
    let responses = [
        f.get("/login", None).await,
        f.get("/", None).await,
        f.get("/", Some(&cookie)).await,
        f.get("/nowhere", Some(&cookie)).await,
        f.get("/static/desk.css", None).await,
        f.post_with(
            "/bulk",
            Some(&cookie),
            &[],
            &[("sec-fetch-site", "cross-site")],
        )
        .await,
    ];
    for (status, headers, _) in &responses {
        assert_eq!(headers["content-security-policy"], guard::CSP, "{status}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-store");
    }
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    let (status, headers, _) = f
        .post("/login", None, &[("user", "alice"), ("password", &big)])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "body limit");
    assert_eq!(headers["content-security-policy"], guard::CSP);
    assert_eq!(responses[3].0, StatusCode::NOT_FOUND);
    assert_eq!(responses[4].1["content-type"], "text/css; charset=utf-8");
    assert!(!responses[2].2.contains("<script"), "no scripts at all");
    assert!(!responses[2].2.contains("style="), "no inline style");
}

#[tokio::test]
async fn a_cross_site_post_is_refused_even_with_a_valid_session_and_token() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let cookie = f.login("alice").await;
    let token = f.token(&cookie).await;
    let form = [
        ("token", token.as_str()),
        ("action", "release"),
        ("comment", "ok"),
    ];
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")][..],
        &[("origin", "http://evil.test")][..],
    ] {
        let (status, _, _) = f
            .post_with("/message/AAAAAA1", Some(&cookie), &form, headers)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    let (status, _, _) = f
        .post_with(
            "/login",
            None,
            &[("user", "alice"), ("password", PASSWORD)],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "login CSRF");
    assert!(f.requests("AAAAAA1").is_empty(), "nothing filed");
    let (status, _, _) = f
        .post_with(
            "/message/AAAAAA1",
            Some(&cookie),
            &form,
            &[("origin", "http://desk.test:8025")],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "same origin by Origin and Host"
    );
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let cookie = f.login("alice").await;
    let other = f.login("rita").await;
    let others_token = f.token(&other).await;
    for form in [
        vec![("action", "release"), ("comment", "ok")],
        vec![("token", ""), ("action", "release"), ("comment", "ok")],
        vec![("token", "00"), ("action", "release"), ("comment", "ok")],
        vec![
            ("token", others_token.as_str()),
            ("action", "release"),
            ("comment", "ok"),
        ],
    ] {
        let (status, _, _) = f.post("/message/AAAAAA1", Some(&cookie), &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form:?}");
        let (status, _, _) = f.post("/logout", Some(&cookie), &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form:?}");
    }
    assert!(f.requests("AAAAAA1").is_empty());
}

#[tokio::test]
async fn roles_are_enforced_on_the_server() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    f.hold(&held("DRIFT01", T0 - 60)); // a drift hold: admin only
    let viewer = f.login("vic").await;
    let reviewer = f.login("rita").await;
    let admin = f.login("alice").await;

    let (_, _, page) = f.get("/", Some(&viewer)).await;
    assert!(page.contains("data-queue-id=\"AAAAAA1\""));
    assert!(!page.contains("name=\"id\""), "no checkboxes for a viewer");
    let (_, _, page) = f.get("/message/AAAAAA1", Some(&viewer)).await;
    assert!(!page.contains("id=\"act\""), "no action form for a viewer");
    let t = f.token(&viewer).await;
    for action in ["release", "discard", "extend"] {
        let (status, _, _) = f
            .post(
                "/message/AAAAAA1",
                Some(&viewer),
                &[
                    ("token", &t),
                    ("action", action),
                    ("comment", "x"),
                    ("extend", "4"),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "viewer {action}");
    }
    let (status, _, _) = f
        .post(
            "/bulk",
            Some(&viewer),
            &[("token", &t), ("action", "release"), ("id", "AAAAAA1")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewer bulk");
    assert!(f.requests("AAAAAA1").is_empty());

    let t = f.token(&reviewer).await;
    let (status, _, _) = f
        .post(
            "/message/DRIFT01",
            Some(&reviewer),
            &[("token", &t), ("action", "release"), ("comment", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a drift hold is admin only");
    let (_, _, page) = f.get("/message/AAAAAA1", Some(&reviewer)).await;
    for stable in [
        "form method=\"post\" action=\"/message/AAAAAA1\" id=\"act\"",
        "name=\"action\" value=\"release\"",
        "name=\"action\" value=\"release-to\"",
        "name=\"action\" value=\"discard\"",
        "name=\"action\" value=\"extend\"",
        "<input type=\"text\" name=\"comment\" required",
        "name=\"rcpt\" value=\"boss@example.org\"",
    ] {
        assert!(page.contains(stable), "{stable} in {page}");
    }
    let (_, _, page) = f.get("/message/DRIFT01", Some(&reviewer)).await;
    assert!(page.contains("Only an admin may act"), "{page}");
    let (status, _, _) = f
        .post(
            "/message/AAAAAA1",
            Some(&reviewer),
            &[("token", &t), ("action", "release"), ("comment", "")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a comment is required");
    let (status, headers, _) = f
        .post(
            "/message/AAAAAA1",
            Some(&reviewer),
            &[
                ("token", &t),
                ("action", "release-to"),
                ("rcpt", "boss@example.org"),
                ("comment", "only the boss"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/message/AAAAAA1");
    let filed = f.requests("AAAAAA1");
    assert_eq!(filed.len(), 1);
    assert_eq!(
        filed[0].action,
        RequestAction::ReleaseTo {
            recipients: vec!["boss@example.org".into()]
        }
    );
    assert_eq!(filed[0].who, "rita");
    assert_eq!(filed[0].via, Via::Desk);
    assert_eq!(filed[0].state, RequestState::Pending);
    assert_eq!(filed[0].comment, "only the boss");
    let (_, _, page) = f.get("/message/AAAAAA1", Some(&reviewer)).await;
    assert!(
        page.contains("release-to") && page.contains("pending"),
        "{page}"
    );

    let t = f.token(&admin).await;
    let (status, _, _) = f
        .post(
            "/message/DRIFT01",
            Some(&admin),
            &[
                ("token", &t),
                ("action", "discard"),
                ("notify_sender", "1"),
                ("comment", "broken list"),
            ],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "an admin acts on a drift hold"
    );
    assert_eq!(
        f.requests("DRIFT01")[0].action,
        RequestAction::Discard {
            notify_sender: true
        }
    );
}

#[tokio::test]
async fn a_second_action_on_the_same_message_is_a_conflict() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let cookie = f.login("rita").await;
    let t = f.token(&cookie).await;
    let form = [
        ("token", t.as_str()),
        ("action", "release"),
        ("comment", "fine"),
    ];
    let (status, _, _) = f.post("/message/AAAAAA1", Some(&cookie), &form).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = f.post("/message/AAAAAA1", Some(&cookie), &form).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, _) = f
        .post(
            "/message/AAAAAA1",
            Some(&cookie),
            &[("token", &t), ("action", "discard"), ("comment", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(f.requests("AAAAAA1").len(), 1, "nothing changed");
    let (status, _, _) = f.post("/message/ZZZZZZ9", Some(&cookie), &form).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_release_to_the_ticked_recipients_shows_how_far_its_copy_got() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let cookie = f.login("rita").await;
    let t = f.token(&cookie).await;
    let (status, _, _) = f
        .post(
            "/message/AAAAAA1",
            Some(&cookie),
            &[
                ("token", t.as_str()),
                ("action", "release-to"),
                ("rcpt", "boss@example.org"),
                ("comment", "the boss only"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let filed = f.requests("AAAAAA1").pop().unwrap();
    assert_eq!(
        filed.action,
        crate::quarantine::RequestAction::ReleaseTo {
            recipients: vec!["boss@example.org".into()]
        }
    );
    assert!(f.store.claim(filed.id, T0).unwrap());
    f.store.copy_token(filed.id, "abc").unwrap();
    f.store.copy_sent(filed.id, T0).unwrap();
    let (_, _, page) = f.get("/message/AAAAAA1", Some(&cookie)).await;
    assert!(
        page.contains("a copy was handed to Postfix at") && page.contains("waiting for the milter"),
        "{page}"
    );
    f.store.copy_released(filed.id, "BBBBBB2").unwrap();
    let mark = crate::quarantine::CopyMark {
        original: "AAAAAA1".into(),
        request: filed.id,
        token: "abc".into(),
    };
    f.store.accept_copy(&mark, "BBBBBB2", T0).unwrap();
    let (_, _, page) = f.get("/message/AAAAAA1", Some(&cookie)).await;
    assert!(page.contains("the copy went out as BBBBBB2"), "{page}");
}

#[tokio::test]
async fn mail_derived_text_is_escaped_and_bidi_flagged() {
    let f = fixture();
    let mut m = ordinary("EVIL001");
    m.subject = Some("<script>alert(1)</script> invoice\u{202E}fdp.exe".into());
    m.sender = "ceo\u{202E}@example.org".into();
    m.lists[0].address = "<b>all</b>\u{202E}@example.org".into();
    m.headers = vec![("X-Evil".into(), "<img src=x onerror=alert(1)>".into())];
    f.hold(&m);
    let cookie = f.login("alice").await;
    for path in ["/", "/message/EVIL001"] {
        let (status, _, page) = f.get(path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!page.contains("<script>"), "{path}");
        assert!(!page.contains("<b>all"), "{path}");
        assert!(!page.contains('\u{202E}'), "{path}: the raw override");
        assert!(
            page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{path}: {page}"
        );
        assert!(page.contains("invoice\\u{202E}fdp.exe"), "{path}");
        assert!(page.contains("ceo\\u{202E}@example.org"), "{path}");
        assert!(
            page.contains("&#60;b&#62;all&#60;/b&#62;\\u{202E}@example.org"),
            "{path}"
        );
        assert!(page.contains("class=\"flag\""), "{path}");
    }
    let (_, _, page) = f.get("/message/EVIL001", Some(&cookie)).await;
    assert!(!page.contains("<img"));
    assert!(
        page.contains(
            "Would reach 840,000 mailboxes in 1 domain; the sender could see 1 recipient"
        ),
        "{page}"
    );
}

#[tokio::test]
async fn bulk_confirms_with_counts_then_acts_at_most_500_at_a_time() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    f.hold(&ordinary("BBBBBB2"));
    f.hold(&held("DRIFT01", T0 - 60));
    let cookie = f.login("rita").await;
    let t = f.token(&cookie).await;

    let many: Vec<String> = (0..501).map(|i| format!("Q{i:06}")).collect();
    let mut form = vec![
        ("token", t.as_str()),
        ("action", "release"),
        ("scope", "selected"),
    ];
    form.extend(many.iter().map(|id| ("id", id.as_str())));
    let (status, _, _) = f.post("/bulk", Some(&cookie), &form).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, _, page) = f
        .post(
            "/bulk",
            Some(&cookie),
            &[
                ("token", &t),
                ("action", "release"),
                ("scope", "all"),
                ("state", "held"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"confirm\""), "{page}");
    assert!(
        page.contains("2 can be released by you; 1 will be refused"),
        "{page}"
    );
    assert!(
        f.requests("AAAAAA1").is_empty(),
        "the confirm page changes nothing"
    );

    let (status, _, page) = f
        .post(
            "/bulk",
            Some(&cookie),
            &[
                ("token", &t),
                ("action", "release"),
                ("confirm", "yes"),
                ("comment", "incident 42 over"),
                ("id", "AAAAAA1"),
                ("id", "BBBBBB2"),
                ("id", "DRIFT01"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("release: 2 requested, 1 refused"), "{page}");
    assert!(page.contains("403: Only an admin"), "{page}");
    assert_eq!(f.requests("AAAAAA1").len(), 1);
    assert_eq!(f.requests("BBBBBB2").len(), 1);
    assert!(f.requests("DRIFT01").is_empty());

    let (status, _, _) = f
        .post(
            "/bulk",
            Some(&cookie),
            &[
                ("token", &t),
                ("action", "release"),
                ("confirm", "yes"),
                ("id", "AAAAAA1"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a comment is required");
}

#[tokio::test]
async fn failed_logins_are_limited_per_user_and_address() {
    let f = fixture();
    let wrong = [("user", "alice"), ("password", "wrong password")];
    for _ in 0..auth::MAX_FAILURES {
        let (status, _, _) = f.post("/login", None, &wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let right = |user| [("user", user), ("password", PASSWORD)];
    let (status, headers, _) = f.post("/login", None, &right("alice")).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password"
    );
    assert_eq!(headers["retry-after"], "60");
    assert!(headers.get("set-cookie").is_none());
    let (status, _, _) = f.post("/login", None, &right("rita")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "same client address");
    let elsewhere = [
        ("sec-fetch-site", "same-origin"),
        ("peer", "203.0.113.5:1234"),
    ];
    let (status, _, _) = f
        .post_with("/login", None, &right("rita"), &elsewhere)
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "another address, another user"
    );
    let (status, _, _) = f
        .post_with("/login", None, &right("alice"), &elsewhere)
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the same user elsewhere"
    );
    f.clock.advance(Duration::from_secs(61));
    f.login("alice").await;

    // On a unix socket (no peer address) only the user counts: one client cannot lock
    // every other client of the proxy out.
    let f = fixture();
    let local = |form: &[(&str, &str)]| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        HttpRequest::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    for _ in 0..auth::MAX_FAILURES {
        assert_eq!(f.send(local(&wrong)).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        f.send(local(&right("alice"))).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(f.send(local(&right("rita"))).await.0, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_idle_session_ends() {
    let f = fixture();
    let cookie = f.login("alice").await;
    f.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(
        f.get("/", Some(&cookie)).await.0,
        StatusCode::OK,
        "still alive"
    );
    f.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(
        f.get("/", Some(&cookie)).await.0,
        StatusCode::OK,
        "touched, so alive"
    );
    f.clock.advance(Duration::from_secs(30 * 60));
    let (status, headers, _) = f.get("/", Some(&cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "idle for 30 minutes");
    assert_eq!(headers["location"], "/login");

    let cookie = f.login("alice").await;
    let t = f.token(&cookie).await;
    let (status, _, _) = f.post("/logout", Some(&cookie), &[("token", &t)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        f.get("/", Some(&cookie)).await.0,
        StatusCode::SEE_OTHER,
        "logged out"
    );
}

#[tokio::test]
async fn sso_header_is_believed_only_from_a_trusted_proxy() {
    let f = fixture_with("trusted_proxies = [\"192.0.2.7\"]\nuser_header = \"X-Remote-User\"\n");
    let from = |ip: [u8; 4], user: &str| {
        let mut req = HttpRequest::get("/")
            .header("x-remote-user", user)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        req
    };
    let (status, _, page) = f.send(from([192, 0, 2, 7], "sam")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("sam") && page.contains("(reviewer)"),
        "{page}"
    );
    for (ip, user) in [([127, 0, 0, 1], "sam"), ([192, 0, 2, 8], "alice")] {
        let (status, _, _) = f.send(from(ip, user)).await;
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "{ip:?}: loopback and others are not trusted"
        );
    }
    let (status, _, _) = f.send(from([192, 0, 2, 7], "mallory")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "an unknown user is nobody");
    let mut twice = from([192, 0, 2, 7], "alice");
    twice
        .headers_mut()
        .append("x-remote-user", HeaderValue::from_static("sam"));
    let (status, _, _) = f.send(twice).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "a header given twice names nobody (a proxy that appends)"
    );
}

#[tokio::test]
async fn logins_never_queue_password_checks_and_bad_names_cost_no_hash() {
    let f = fixture();
    let long = "a".repeat(70);
    for name in ["bad name", "<b>", long.as_str()] {
        let (status, _, _) = f
            .post("/login", None, &[("user", name), ("password", "x")])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
    }
    let held: Vec<_> = (0..MAX_VERIFYING)
        .map(|_| f.desk.verifying.try_acquire().unwrap())
        .collect();
    let (status, headers, body) = f
        .post("/login", None, &[("user", "alice"), ("password", PASSWORD)])
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["retry-after"], "1");
    drop(held);
    f.login("alice").await;
}

#[tokio::test]
async fn an_admin_pulls_the_brake_every_page_shows_it_and_only_an_admin_releases_it() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let alice = f.login("alice").await;
    let rita = f.login("rita").await;
    let vic = f.login("vic").await;
    let (_, _, page) = f.get("/", Some(&alice)).await;
    assert!(
        page.contains("id=\"brake-on\""),
        "an admin may pull it: {page}"
    );
    assert!(!page.contains("id=\"brake\""));
    let (_, _, page) = f.get("/", Some(&rita)).await;
    assert!(!page.contains("id=\"brake-on\""), "a reviewer may not");
    let rita_token = token_in(&page);
    let pull = [
        ("action", "on"),
        ("min_audience", "500"),
        ("hours", "2"),
        ("comment", "all-staff <b>loop</b>"),
    ];
    let mut as_rita = pull.to_vec();
    as_rita.push(("token", &rita_token));
    let (status, _, _) = f.post("/brake", Some(&rita), &as_rita).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(f.desk.guard.as_ref().unwrap().brake().is_none());
    let (status, _, _) = f.post("/brake", Some(&alice), &pull).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no token, no brake");
    let alice_token = f.token(&alice).await;
    let mut no_comment = pull.to_vec();
    no_comment[3] = ("comment", " ");
    no_comment.push(("token", &alice_token));
    let (status, _, _) = f.post("/brake", Some(&alice), &no_comment).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut as_alice = pull.to_vec();
    as_alice.push(("token", &alice_token));
    let (status, headers, _) = f.post("/brake", Some(&alice), &as_alice).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/");
    let brake = f.desk.guard.as_ref().unwrap().brake().expect("pulled");
    assert_eq!(brake.min_audience, 500);
    assert_eq!(brake.until, Some(T0 + 7200));
    assert_eq!(brake.by, "alice");
    for (who, cookie) in [("rita", &rita), ("vic", &vic)] {
        for path in ["/", "/message/AAAAAA1"] {
            let (_, _, page) = f.get(path, Some(cookie)).await;
            assert!(page.contains("id=\"brake\""), "{who} {path}: {page}");
            assert!(page.contains("every message to 500 or more recipients is held"));
            assert!(
                page.contains("all-staff &#60;b&#62;loop&#60;/b&#62;"),
                "{page}"
            );
            assert!(!page.contains("<b>loop"), "escaped");
            assert!(
                !page.contains("id=\"brake-off\""),
                "{who} may not release it"
            );
        }
    }
    let events = f.index().events(5).unwrap();
    assert_eq!(events[0].who, "alice");
    assert!(
        events[0]
            .comment
            .as_deref()
            .unwrap()
            .ends_with("(via desk from 198.51.100.9)"),
        "{events:?}"
    );
    let (status, _, _) = f
        .post(
            "/brake",
            Some(&rita),
            &[
                ("action", "off"),
                ("comment", "done"),
                ("token", &rita_token),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, page) = f.get("/", Some(&alice)).await;
    assert!(page.contains("id=\"brake-off\""));
    let (status, _, _) = f
        .post(
            "/brake",
            Some(&alice),
            &[
                ("action", "off"),
                ("comment", "list fixed"),
                ("token", &alice_token),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(f.desk.guard.as_ref().unwrap().brake().is_none());
    let (_, _, page) = f.get("/", Some(&rita)).await;
    assert!(!page.contains("id=\"brake\""), "released: no banner");
}

#[tokio::test]
async fn the_list_filters_sorts_and_counts() {
    let f = fixture();
    let mut small = ordinary("SMALL01");
    small.audience = 600;
    small.sender = "bob@example.org".into();
    f.hold(&small);
    f.hold(&ordinary("BIG0001"));
    f.hold(&held("DRIFT01", T0 - 60));
    let cookie = f.login("vic").await;
    let (_, _, page) = f.get("/?min_audience=1000", Some(&cookie)).await;
    assert!(!page.contains("data-queue-id=\"SMALL01\""));
    assert!(page.contains("data-queue-id=\"BIG0001\""));
    assert!(page.contains("2 matching"), "{page}");
    let (_, _, page) = f.get("/?sender=bob", Some(&cookie)).await;
    assert!(page.contains("data-queue-id=\"SMALL01\"") && page.contains("1 matching"));
    let (_, _, page) = f.get("/?rule=drift", Some(&cookie)).await;
    assert!(page.contains("data-queue-id=\"DRIFT01\"") && page.contains("1 matching"));
    let (_, _, page) = f.get("/?sort=audience&desc=1", Some(&cookie)).await;
    let big = page.find("data-queue-id=\"BIG0001\"").unwrap();
    let small = page.find("data-queue-id=\"SMALL01\"").unwrap();
    assert!(big < small, "largest audience first");
    assert!(page.contains("held: 3"), "counts per state");
    assert!(
        page.contains("limits.audience</bdi>: 2"),
        "counts per rule: {page}"
    );
    assert_eq!(
        f.get("/?min_audience=many", Some(&cookie)).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_desk_serves_a_real_socket_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture();
    let addr: ListenAddr = "inet:127.0.0.1:0".parse().unwrap();
    let listener = DeskListener::bind(&addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(f.desk.clone(), async move {
        let _ = stopped.await;
    }));
    let deadline = Duration::from_secs(10);
    let answer = tokio::time::timeout(deadline, async {
        let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
        s.write_all(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    })
    .await
    .expect("an answer in time");
    let _ = stop.send(());
    tokio::time::timeout(deadline, server)
        .await
        .expect("stopped in time")
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );
    assert!(answer.contains("id=\"login\""));
}

#[tokio::test]
async fn the_desk_serves_a_unix_socket_for_a_local_proxy() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture();
    let path = f._dir.path().join("review.sock");
    let addr = ListenAddr::Unix(path.clone());
    let listener = DeskListener::bind(&addr).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, SOCKET_MODE);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(f.desk.clone(), async move {
        let _ = stopped.await;
    }));
    let deadline = Duration::from_secs(10);
    let answer = tokio::time::timeout(deadline, async {
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: review\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    })
    .await
    .expect("an answer in time");
    let _ = stop.send(());
    tokio::time::timeout(deadline, server)
        .await
        .expect("stopped in time")
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(!path.exists(), "the socket file is removed");
}

// ------------------------------------------------------------ signed digest links

const LINKS_ON: &str = "listen = \"inet:127.0.0.1:8025\"\npublic_url = \"https://review.corp.example\"\n\
                        digest_actions = true\nlink_lifetime = \"1h\"\n";

/// A digest link signed with the fixture's desk key.
fn digest_link(queue_id: &str, action: crate::link::LinkAction, expires: u64) -> String {
    crate::link::Link::new(
        None,
        queue_id,
        T0 - 600,
        action,
        "ann@corp.example",
        expires,
    )
    .unwrap()
    .token(&[7; KEY_BYTES])
}

#[tokio::test]
async fn a_digest_link_shows_anyone_what_it_does_but_acts_only_for_a_signed_in_reviewer() {
    let f = fixture_with(LINKS_ON);
    let mut m = ordinary("AAAAAA1");
    m.subject = Some("<script>alert(1)</script> pay \u{202e}fdp.exe".into());
    f.hold(&m);
    let token = digest_link("AAAAAA1", crate::link::LinkAction::Release, T0 + 3600);
    let path = format!("/link/{token}");

    // A mail scanner or anyone holding the link: sees it, cannot act.
    let (status, headers, body) = f.get(&path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-security-policy"], guard::CSP);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        body.contains("Confirm: release held message AAAAAA1"),
        "{body}"
    );
    assert!(body.contains("ann@corp.example"), "mailed to: {body}");
    assert!(
        body.contains(&crate::text::utc_seconds(T0 + 3600)),
        "{body}"
    );
    assert!(!body.contains("<script>alert"), "escaped: {body}");
    assert!(body.contains("&#60;script&#62;alert(1)"), "{body}");
    assert!(body.contains("\\u{202E}fdp.exe"), "bidi shown: {body}");
    assert!(body.contains("class=\"flag\""), "and flagged: {body}");
    assert!(body.contains("Log in to the desk first"), "{body}");
    assert!(!body.contains("id=\"link-act\""), "no form: {body}");
    let (status, _, _) = f.post(&path, None, &[("comment", "x")]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a link alone acts on nothing"
    );
    assert!(f.requests("AAAAAA1").is_empty(), "a GET changes nothing");

    // A signed-in reviewer gets the form, with an empty comment to fill in.
    let cookie = f.login("rita").await;
    let t = f.token(&cookie).await;
    let (_, _, body) = f.get(&path, Some(&cookie)).await;
    assert!(
        body.contains(&format!("action=\"/link/{token}\"")),
        "{body}"
    );
    assert!(
        body.contains(&format!("name=\"token\" value=\"{t}\"")),
        "{body}"
    );
    assert!(
        body.contains("name=\"comment\" required size=\"70\" maxlength=\"2000\">"),
        "{body}"
    );
    assert!(body.contains("rita"), "acting as: {body}");
    let (status, _, _) = f.post(&path, Some(&cookie), &[("comment", "x")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the form token is required");
    let (status, _, body) = f
        .post(&path, Some(&cookie), &[("token", &t), ("comment", "")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a comment is required");
    assert!(body.contains("A comment is required"), "{body}");
    assert!(f.requests("AAAAAA1").is_empty());

    let (status, _, body) = f
        .post(
            &path,
            Some(&cookie),
            &[("token", &t), ("comment", "checked"), ("action", "discard")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Requested: release AAAAAA1"), "{body}");
    assert!(body.contains("pending"), "{body}");
    assert!(body.contains("href=\"/message/AAAAAA1\""), "{body}");
    let requests = f.requests("AAAAAA1");
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        r.action,
        RequestAction::Release,
        "the signed action, not the form's"
    );
    assert_eq!(r.via, Via::Digest);
    assert_eq!(r.who, "rita");
    assert_eq!(r.remote.as_deref(), Some("198.51.100.9"));
    assert_eq!(
        r.comment,
        "checked (digest link mailed to ann@corp.example)"
    );
    assert_eq!(r.state, RequestState::Pending);

    let form = [("token", t.as_str()), ("comment", "again")];
    let (status, _, body) = f.post(&path, Some(&cookie), &form).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(f.requests("AAAAAA1").len(), 1, "a replay changes nothing");

    // The request fails: the message is held again with nothing open, and still the
    // used link does nothing; a fresh link does.
    f.index().claim(r.id, T0 + 1).unwrap();
    f.index()
        .finish(r.id, false, "postsuper: no", T0 + 2)
        .unwrap();
    let (status, _, body) = f.post(&path, Some(&cookie), &form).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("used already"), "{body}");
    assert_eq!(f.requests("AAAAAA1").len(), 1);
    let discard = digest_link("AAAAAA1", crate::link::LinkAction::Discard, T0 + 3600);
    let (status, _, body) = f
        .post(&format!("/link/{discard}"), Some(&cookie), &form)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let requests = f.requests("AAAAAA1");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].action,
        RequestAction::Discard {
            notify_sender: false
        }
    );
    // While that request is open, the confirm page offers nothing.
    let again = digest_link("AAAAAA1", crate::link::LinkAction::Release, T0 + 3600);
    let (status, _, body) = f.get(&format!("/link/{again}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("id=\"link-act\""), "{body}");
    assert!(body.contains("is open already"), "{body}");
}

#[tokio::test]
async fn a_digest_link_to_an_admin_only_hold_acts_only_for_an_admin() {
    let f = fixture_with(LINKS_ON);
    let mut m = ordinary("CCCCCC3");
    m.rules[0].rule = "storm".into();
    f.hold(&m);
    let path = format!(
        "/link/{}",
        digest_link("CCCCCC3", crate::link::LinkAction::Release, T0 + 60)
    );
    for user in ["vic", "rita"] {
        let cookie = f.login(user).await;
        let t = f.token(&cookie).await;
        let (_, _, body) = f.get(&path, Some(&cookie)).await;
        assert!(!body.contains("id=\"link-act\""), "{user}: {body}");
        let (status, _, _) = f
            .post(&path, Some(&cookie), &[("token", &t), ("comment", "ok")])
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{user}");
    }
    assert!(f.requests("CCCCCC3").is_empty());
    let cookie = f.login("alice").await;
    let t = f.token(&cookie).await;
    let (status, _, body) = f
        .post(&path, Some(&cookie), &[("token", &t), ("comment", "ok")])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(f.requests("CCCCCC3")[0].who, "alice");
}

#[tokio::test]
async fn expired_forged_cross_site_or_disabled_digest_links_do_nothing() {
    let f = fixture_with(LINKS_ON);
    f.hold(&ordinary("AAAAAA1"));
    let release = crate::link::LinkAction::Release;
    let cookie = f.login("alice").await;
    let t = f.token(&cookie).await;
    let form = [("token", t.as_str()), ("comment", "x")];

    let short = digest_link("AAAAAA1", release, T0 + 60);
    f.clock.advance(Duration::from_secs(61));
    let (status, _, body) = f.get(&format!("/link/{short}"), None).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(body.contains("This link expired at"), "{body}");
    let (status, _, _) = f
        .post(&format!("/link/{short}"), Some(&cookie), &form)
        .await;
    assert_eq!(status, StatusCode::GONE);

    let token = digest_link("AAAAAA1", release, T0 + 3600);
    let (payload, mac) = token.split_once('.').unwrap();
    let other_key = crate::link::Link::new(
        None,
        "AAAAAA1",
        T0 - 600,
        release,
        "ann@corp.example",
        T0 + 3600,
    )
    .unwrap()
    .token(&[8; KEY_BYTES]);
    let mut flipped = mac.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{payload}.{}", String::from_utf8(flipped).unwrap());
    for bad in [other_key.as_str(), flipped.as_str(), payload, "x.y"] {
        let path = format!("/link/{bad}");
        let (status, _, body) = f.get(&path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{bad}: {body}");
        assert!(body.contains("nothing was done"), "{body}");
        let (status, _, _) = f.post(&path, Some(&cookie), &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{bad}");
    }

    // A link for an earlier message that had the same queue id.
    let earlier = crate::link::Link::new(
        None,
        "AAAAAA1",
        T0 - 9000,
        release,
        "ann@corp.example",
        T0 + 3600,
    )
    .unwrap()
    .token(&[7; KEY_BYTES]);
    let (status, _, body) = f.get(&format!("/link/{earlier}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(
        body.contains("an earlier message with the same queue"),
        "{body}"
    );
    let (status, _, _) = f
        .post(&format!("/link/{earlier}"), Some(&cookie), &form)
        .await;
    assert_eq!(status, StatusCode::GONE);

    let path = format!("/link/{token}");
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("origin", "http://evil.test")][..],
    ] {
        let (status, resp, _) = f.post_with(&path, Some(&cookie), &form, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(resp["x-desk-refused"], "cross-origin");
    }
    assert!(f.requests("AAAAAA1").is_empty(), "nothing was filed");
    let (status, _, _) = f
        .post_with(
            &path,
            Some(&cookie),
            &form,
            &[("origin", "https://review.corp.example")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "public_url's origin is the desk's");
    assert_eq!(f.requests("AAAAAA1").len(), 1);

    // With digest_actions off, a genuine link is refused.
    let off = fixture_with(
        "listen = \"inet:127.0.0.1:8025\"\npublic_url = \"https://review.corp.example\"\n",
    );
    off.hold(&ordinary("AAAAAA1"));
    let token = digest_link("AAAAAA1", release, T0 + 3600);
    let (status, _, body) = off.get(&format!("/link/{token}"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("turned off"), "{body}");
    let cookie = off.login("alice").await;
    let t = off.token(&cookie).await;
    let (status, _, _) = off
        .post(
            &format!("/link/{token}"),
            Some(&cookie),
            &[("token", &t), ("comment", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(off.requests("AAAAAA1").is_empty());
}

#[tokio::test]
async fn the_digest_gets_links_from_the_desk_only_with_a_public_url() {
    assert_eq!(fixture().desk.digest_links(), None, "no public_url");
    let plain = fixture_with("public_url = \"https://review.corp.example\"\n");
    let links = plain.desk.digest_links().unwrap();
    assert_eq!(links.public_url, "https://review.corp.example");
    assert_eq!(links.actions, None, "digest_actions is off");
    let f = fixture_with(LINKS_ON);
    let actions = f.desk.digest_links().unwrap().actions.unwrap();
    assert_eq!(actions.key, [7; KEY_BYTES], "signed with the desk key");
    assert_eq!(actions.expires, T0 + 3600, "now + link_lifetime");
}

/// List sizes accepted in a map, the calls counted.
#[derive(Default)]
struct FakeSizes {
    accepted: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ListSizes for FakeSizes {
    async fn accept(&self, list: &str) -> Result<Accepted, ListSizeError> {
        if !list.starts_with("all@") {
            return Err(ListSizeError::NotAList(list.to_owned()));
        }
        self.accepted.lock().unwrap().push(list.to_owned());
        Ok(Accepted {
            address: list.into(),
            size: 840_000,
            previous: Some(40),
        })
    }
}

#[tokio::test]
async fn only_an_admin_accepts_a_drifted_lists_size_and_only_from_the_same_site() {
    let fake = Arc::new(FakeSizes::default());
    let f = fixture_sized("", Some(fake.clone()));
    // held(): held by the drift rule, all@example.org drifted from 40.
    f.hold(&held("DDDDDD1", T0 - 60));
    f.hold(&ordinary("OOOOOO1"));
    for user in ["vic", "rita"] {
        let cookie = f.login(user).await;
        let (_, _, page) = f.get("/message/DDDDDD1", Some(&cookie)).await;
        assert!(!page.contains("accept-size"), "{user}: no form");
        let token = f.token(&cookie).await;
        let (status, _, _) = f
            .post(
                "/message/DDDDDD1/accept-size",
                Some(&cookie),
                &[("token", &token), ("list", "0"), ("comment", "fine")],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{user}");
    }
    let cookie = f.login("alice").await;
    let (_, _, page) = f.get("/message/DDDDDD1", Some(&cookie)).await;
    assert!(
        page.contains("/message/DDDDDD1/accept-size")
            && page.contains("Accept the new size of <bdi>all@example.org</bdi>"),
        "{page}"
    );
    let token = f.token(&cookie).await;
    let good = [
        ("token", token.as_str()),
        ("list", "0"),
        ("comment", "the ward merged"),
    ];
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("origin", "http://evil.test")][..],
    ] {
        let (status, _, _) = f
            .post_with(
                "/message/DDDDDD1/accept-size",
                Some(&cookie),
                &good,
                headers,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    for (form, want) in [
        (
            &[("list", "0"), ("comment", "x")][..],
            StatusCode::FORBIDDEN,
        ),
        (
            &[("token", token.as_str()), ("list", "0")][..],
            StatusCode::BAD_REQUEST,
        ),
        (
            &[("token", token.as_str()), ("list", "1"), ("comment", "x")][..],
            StatusCode::BAD_REQUEST,
        ),
        (
            &[
                ("token", token.as_str()),
                ("list", "zero"),
                ("comment", "x"),
            ][..],
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, _, _) = f
            .post("/message/DDDDDD1/accept-size", Some(&cookie), form)
            .await;
        assert_eq!(status, want, "{form:?}");
    }
    // A list that did not drift (an ordinary hold) is not accepted here.
    let (status, _, _) = f
        .post("/message/OOOOOO1/accept-size", Some(&cookie), &good)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = f
        .post("/message/ZZZZZZ9/accept-size", Some(&cookie), &good)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        fake.accepted.lock().unwrap().is_empty(),
        "nothing accepted yet"
    );
    assert!(f.index().events(5).unwrap().is_empty());

    f.clock.advance(Duration::from_secs(5));
    let (status, headers, _) = f
        .post("/message/DDDDDD1/accept-size", Some(&cookie), &good)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/message/DDDDDD1");
    assert_eq!(*fake.accepted.lock().unwrap(), ["all@example.org"]);
    let events = f.index().events(5).unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.at, e.who.as_str(), e.action.as_str()),
        (T0 + 5, "alice", "accept list size")
    );
    assert_eq!(
        e.comment.as_deref(),
        Some(
            "all@example.org: accepted size 840000 (was 40) (via desk from 198.51.100.9): \
             the ward merged"
        )
    );
    let record = f
        .index()
        .record(&crate::quarantine::QueueId::parse("DDDDDD1").unwrap().into())
        .unwrap();
    assert_eq!(record.audit.last(), Some(e), "on the record too");
    assert_eq!(record.state, crate::quarantine::State::Held, "still held");
    assert!(f.requests("DDDDDD1").is_empty(), "nothing released");
    let (_, _, page) = f.get("/message/DDDDDD1", Some(&cookie)).await;
    assert!(page.contains("accepted by alice at"), "{page}");
    assert!(
        page.contains("value=\"release\""),
        "release is offered as usual"
    );
}

#[tokio::test]
async fn a_list_the_directory_no_longer_has_is_a_conflict() {
    let fake = Arc::new(FakeSizes::default());
    let f = fixture_sized("", Some(fake.clone()));
    let mut m = held("DDDDDD2", T0 - 60);
    m.lists[0].address = "gone@example.org".into();
    f.hold(&m);
    let cookie = f.login("alice").await;
    let token = f.token(&cookie).await;
    let (status, _, _) = f
        .post(
            "/message/DDDDDD2/accept-size",
            Some(&cookie),
            &[("token", &token), ("list", "0"), ("comment", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(f.index().events(5).unwrap().is_empty());
    // A desk without the daemon's directory offers nothing and takes nothing.
    let f = fixture();
    f.hold(&held("DDDDDD3", T0 - 60));
    let cookie = f.login("alice").await;
    let (_, _, page) = f.get("/message/DDDDDD3", Some(&cookie)).await;
    assert!(!page.contains("accept-size"));
    let token = f.token(&cookie).await;
    let (status, _, _) = f
        .post(
            "/message/DDDDDD3/accept-size",
            Some(&cookie),
            &[("token", &token), ("list", "0"), ("comment", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Through the daemon's generation owner: the size an admin accepts on the desk is
/// the one the next message to the list is judged against, with no reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_message_is_judged_against_the_size_accepted_on_the_desk() {
    use crate::daemon::generation::Owner;
    use crate::directory::drift::KnownSizes;
    use crate::shared::{Generation, Shared};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("daemon-state");
    let mut known = KnownSizes::default();
    known.accept("all@example.org", 1);
    known.save(&state).unwrap();
    let config = crate::config::parse(
        &format!(
            "[domains]\ninternal = [\"example.org\"]\n[quarantine]\nstate_dir = \"{}\"\n\
             [drift]\nfactor = 2.0\nmin_audience = 3\n[[list]]\naddress = \"all@example.org\"\n\
             members = [\"a@example.org\", \"b@example.org\", \"c@example.org\"]\n",
            state.display()
        ),
        Path::new("/etc/fanout-milter/fanout-milter.toml"),
    )
    .unwrap();
    let none = crate::directory::ldap::Snapshots::default();
    let shared = Arc::new(Shared::new(
        Generation::load(config, &none).unwrap(),
        Arc::new(Store::open(&state).unwrap()),
        crate::notify::channel(4).0,
        crate::state::Guard::new(
            Arc::new(crate::state::MemoryBackend::new()),
            Arc::new(crate::clock::SystemClock),
            None,
        ),
    ));
    let drift = || {
        shared
            .current()
            .directory
            .audience_facts(["all@example.org"])
            .unwrap()
            .lists[0]
            .drift_from
    };
    assert_eq!(drift(), Some(1));
    let (_reload, reloads) = tokio::sync::mpsc::channel(1);
    let (owner, _owning) = Owner::spawn(shared.clone(), none, reloads);
    let f = fixture_sized("", Some(Arc::new(owner)));
    f.hold(&held("DDDDDD4", T0 - 60));
    let cookie = f.login("alice").await;
    let token = f.token(&cookie).await;
    let (status, _, body) = f
        .post(
            "/message/DDDDDD4/accept-size",
            Some(&cookie),
            &[("token", &token), ("list", "0"), ("comment", "merged")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(drift(), None, "no drift for the next message");
    let comment = f.index().events(1).unwrap()[0].comment.clone().unwrap();
    assert!(
        comment.starts_with("all@example.org: accepted size 3 (was 1)"),
        "{comment}"
    );
}

/// Pulling the brake while one is on (pulled meanwhile at a shell, or by another
/// admin) replaces it: the admin is shown which one, and the event says replaced.
#[tokio::test]
async fn pulling_the_brake_over_another_shows_the_one_it_replaced() {
    let f = fixture();
    let alice = f.login("alice").await;
    let token = f.token(&alice).await;
    let guard = f.desk.guard.clone().unwrap();
    crate::brake::pull(&guard, None, 500, None, "carol\u{202e}", "from a shell")
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(60));
    let (status, _, page) = f
        .post(
            "/brake",
            Some(&alice),
            &[
                ("action", "on"),
                ("min_audience", "100"),
                ("hours", "1"),
                ("comment", "tighter"),
                ("token", &token),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(
            "The brake you pulled replaced the one that was on: min audience 500 by \
             carol\\u{202E} since 2027-01-15T08:00:00Z."
        ),
        "{page}"
    );
    assert!(page.contains("class=\"flag\""), "flagged: {page}");
    assert!(
        page.contains("every message to 100 or more recipients is held"),
        "the banner shows the new brake: {page}"
    );
    assert_eq!(guard.brake().unwrap().min_audience, 100);
    let events = f.index().events(1).unwrap();
    assert_eq!(events[0].action, "brake replaced");
    assert!(
        events[0]
            .comment
            .as_deref()
            .unwrap()
            .starts_with("replaced min audience 500 by carol\u{202e} since"),
        "{events:?}"
    );
}

/// A sender link for a hold of `queue_id` at `held_at`, mailed `to`, signed with the
/// fixture's desk key.
fn sender_link_for(
    queue_id: &str,
    held_at: u64,
    action: crate::link::LinkAction,
    to: &str,
    expires: u64,
) -> String {
    crate::link::Link::new(None, queue_id, held_at, action, to, expires)
        .unwrap()
        .token(&[7; KEY_BYTES])
}

/// A sender link for [`ordinary`]'s hold, mailed to its sender.
fn sender_link(queue_id: &str, action: crate::link::LinkAction) -> String {
    sender_link_for(queue_id, T0 - 600, action, "Ann@Example.org", T0 + 86_400)
}

/// The form token on a sender page.
fn sender_form_in(body: &str) -> String {
    let at = body.find("name=\"form\" value=\"").expect("a form token") + 19;
    body[at..at + 64].to_owned()
}

/// A hold waiting for its sender's confirmation.
fn waiting(queue_id: &str) -> HeldMessage {
    let mut m = ordinary(queue_id);
    m.confirm = true;
    m.notify_sender = true;
    m.confirm_key = Some("sasl:ann".into());
    m.rules = vec![RuleHit {
        rule: "hidden".into(),
        action: "confirm".into(),
        message: "840,000 recipients, 1 of them visible".into(),
    }];
    m
}

impl Fixture {
    fn record(&self, queue_id: &str) -> crate::quarantine::Record {
        self.index()
            .record(&crate::quarantine::QueueId::parse(queue_id).unwrap().into())
            .unwrap()
    }

    fn plea(&self, queue_id: &str) -> Option<crate::quarantine::Plea> {
        self.index().plea(self.record(queue_id).id).unwrap()
    }

    /// GETs the sender page of `token`, then presses its button (with `extra` fields).
    async fn press(&self, token: &str, extra: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let path = format!("/s/{token}");
        let (status, _, body) = self.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let form = sender_form_in(&body);
        let mut fields = vec![("form", form.as_str())];
        fields.extend_from_slice(extra);
        self.post(&path, None, &fields).await
    }
}

#[tokio::test]
async fn a_sender_link_shows_the_message_and_one_button_and_a_get_changes_nothing() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let withdraw = sender_link("AAAAAA1", crate::link::LinkAction::Withdraw);
    let (status, headers, body) = f.get(&format!("/s/{withdraw}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-security-policy"], guard::CSP);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!body.contains("<script"), "no script: {body}");
    assert!(body.contains("Withdraw your message?"), "{body}");
    assert!(
        body.contains("Your message would reach 840,000 people through all@example.org, though you could see 1 address in To and Cc."),
        "{body}"
    );
    assert!(body.contains("all@example.org</bdi> (840,000)"), "{body}");
    assert!(
        body.contains("boss@example.org"),
        "their recipients: {body}"
    );
    assert!(body.contains(&crate::text::plain_utc(T0 - 600)), "{body}");
    assert!(body.contains("An administrator reviews it by"), "{body}");
    assert_eq!(body.matches("<button").count(), 1, "one button: {body}");
    assert!(body.contains(">Withdraw my message</button>"), "{body}");
    assert!(
        body.contains(&format!("action=\"/s/{withdraw}\"")),
        "{body}"
    );
    assert!(
        !body.contains("fanout-milter review desk"),
        "no desk chrome: {body}"
    );

    let ask = sender_link("AAAAAA1", crate::link::LinkAction::Ask);
    let (status, _, body) = f.get(&format!("/s/{ask}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("<textarea id=\"why\" name=\"why\" required maxlength=\"2000\""),
        "{body}"
    );
    assert!(body.contains(">Ask for release</button>"), "{body}");

    // A send link for a message an admin reviews: nothing to confirm.
    let send = sender_link("AAAAAA1", crate::link::LinkAction::Send);
    let (status, _, body) = f.get(&format!("/s/{send}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains("<button"), "{body}");
    assert!(body.contains("there is nothing for you"), "{body}");

    assert!(f.requests("AAAAAA1").is_empty(), "a GET changes nothing");
    assert_eq!(f.plea("AAAAAA1"), None);
    assert_eq!(f.record("AAAAAA1").state, crate::quarantine::State::Held);
}

#[tokio::test]
async fn withdraw_files_a_discard_by_the_sender_once() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let token = sender_link("AAAAAA1", crate::link::LinkAction::Withdraw);
    let (status, _, body) = f.press(&token, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("Your message was withdrawn; nobody will receive it."),
        "{body}"
    );
    let requests = f.requests("AAAAAA1");
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        r.action,
        RequestAction::Discard {
            notify_sender: false
        }
    );
    assert_eq!(r.via, Via::Sender);
    assert_eq!(r.who, "ann@example.org");
    assert_eq!(r.comment, "withdrawn by the sender");
    assert_eq!(r.remote.as_deref(), Some("198.51.100.9"));
    assert_eq!(r.state, RequestState::Pending);
    assert_eq!(
        f.record("AAAAAA1").state,
        crate::quarantine::State::Held,
        "the worker acts, not the page"
    );

    // The page now says so, with nothing to press; a replay changes nothing.
    let path = format!("/s/{token}");
    let (_, _, body) = f.get(&path, None).await;
    assert!(body.contains("You withdrew this message"), "{body}");
    assert!(!body.contains("<button"), "{body}");
    let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &token]);
    let (status, _, body) = f.post(&path, None, &[("form", &form)]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("Nothing was changed"), "{body}");
    assert_eq!(f.requests("AAAAAA1").len(), 1);

    // The request fails: held again with nothing open, yet the used link stays used.
    f.index().claim(r.id, T0 + 1).unwrap();
    f.index()
        .finish(r.id, false, "postsuper: no", T0 + 2)
        .unwrap();
    let (status, _, body) = f.post(&path, None, &[("form", &form)]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("used already"), "{body}");
    assert_eq!(f.requests("AAAAAA1").len(), 1);

    // Admins see who filed it.
    let cookie = f.login("rita").await;
    let (_, _, body) = f.get("/message/AAAAAA1", Some(&cookie)).await;
    assert!(body.contains("<td>the sender</td>"), "{body}");
    assert!(body.contains("the sender (ann@example.org)"), "{body}");
}

#[tokio::test]
async fn ask_records_the_plea_and_the_held_list_shows_it_first() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    f.hold(&ordinary("BBBBBB2"));
    let token = sender_link("BBBBBB2", crate::link::LinkAction::Ask);
    let (status, _, body) = f.press(&token, &[("why", "   ")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(f.plea("BBBBBB2"), None);

    let words = "The ward <b>closes</b> tonight\r\nall staff must know \u{202e}now";
    let (status, _, body) = f.press(&token, &[("why", words)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("Your request was passed to the administrators; you will be told"),
        "{body}"
    );
    let plea = f.plea("BBBBBB2").expect("the plea");
    assert_eq!(plea.words, words, "stored as typed");
    assert_eq!(plea.at, T0);
    assert!(f.requests("BBBBBB2").is_empty(), "a plea files no request");
    assert_eq!(f.record("BBBBBB2").state, crate::quarantine::State::Held);

    // Asked once: the page says so, a second link does nothing.
    let again = sender_link("BBBBBB2", crate::link::LinkAction::Ask);
    let (_, _, body) = f.get(&format!("/s/{again}"), None).await;
    assert!(body.contains("You asked for release at"), "{body}");
    assert!(!body.contains("<button"), "{body}");
    let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &again]);
    let (status, _, _) = f
        .post(
            &format!("/s/{again}"),
            None,
            &[("form", &form), ("why", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(f.plea("BBBBBB2").unwrap().words, words);

    // A long plea is cut.
    f.hold(&ordinary("CCCCCC3"));
    let long = "x".repeat(5000);
    let token = sender_link("CCCCCC3", crate::link::LinkAction::Ask);
    let (status, _, _) = f.press(&token, &[("why", &long)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.plea("CCCCCC3").unwrap().words.chars().count(), 2000);

    // The reviewer sees the pleas first, escaped and flagged, the line break kept.
    let cookie = f.login("rita").await;
    let (_, _, body) = f.get("/", Some(&cookie)).await;
    let box_at = body.find("id=\"pleas\"").expect("the pleas box");
    assert!(
        box_at < body.find("id=\"held\"").unwrap(),
        "above the table"
    );
    assert!(box_at < body.find("id=\"counts\"").unwrap(), "first");
    assert!(
        body.find("data-queue-id=\"BBBBBB2\"").unwrap()
            < body.find("data-queue-id=\"CCCCCC3\"").unwrap()
    );
    assert!(body.contains("href=\"/message/BBBBBB2\""), "{body}");
    assert!(!body.contains("<b>closes"), "escaped: {body}");
    assert!(
        body.contains("The ward &#60;b&#62;closes&#60;/b&#62; tonight</bdi><br>"),
        "{body}"
    );
    assert!(
        body.contains("<bdi class=\"flag\" title=\"contains control or bidi characters, shown as \\u{...} escapes\">all staff must know \\u{202E}now</bdi>"),
        "{body}"
    );
    let (_, _, body) = f.get("/message/BBBBBB2", Some(&cookie)).await;
    assert!(body.contains("id=\"plea\""), "{body}");
    assert!(body.contains("The sender asks for release"), "{body}");
    assert!(body.contains("the sender (ann@example.org)"), "{body}");
}

#[tokio::test]
async fn send_releases_only_what_waits_for_its_sender_and_remembers_the_lists() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let send = sender_link("AAAAAA1", crate::link::LinkAction::Send);
    let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &send]);
    let (status, _, body) = f
        .post(&format!("/s/{send}"), None, &[("form", &form)])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        f.requests("AAAAAA1").is_empty(),
        "not held for confirmation"
    );

    f.hold(&waiting("DDDDDD4"));
    let cookie = f.login("rita").await;
    let (_, _, body) = f.get("/", Some(&cookie)).await;
    let row = &body[body.find("<tr data-queue-id=\"DDDDDD4\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("waiting for sender"), "{row}");
    let other = &body[body.find("<tr data-queue-id=\"AAAAAA1\"").unwrap()..];
    assert!(!other[..other.find("</tr>").unwrap()].contains("waiting for sender"));
    let (_, _, body) = f.get("/message/DDDDDD4", Some(&cookie)).await;
    assert!(body.contains("id=\"waiting\""), "{body}");
    assert!(body.contains("id=\"act\""), "admins can still act: {body}");

    let token = sender_link("DDDDDD4", crate::link::LinkAction::Send);
    let (_, _, body) = f.get(&format!("/s/{token}"), None).await;
    assert!(
        body.contains("Send your message to all 840,000 people?"),
        "{body}"
    );
    assert!(
        body.contains(">Send it to all 840,000 people</button>"),
        "{body}"
    );
    assert!(body.contains("Nothing goes out until you decide"), "{body}");
    let (status, _, body) = f.press(&token, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("Your message is on its way to 840,000 people."),
        "{body}"
    );
    let requests = f.requests("DDDDDD4");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].action, RequestAction::Release);
    assert_eq!(requests[0].via, Via::Sender);
    assert_eq!(requests[0].who, "ann@example.org");
    assert_eq!(
        requests[0].comment,
        "the sender confirmed: send to all 840,000"
    );
    assert_eq!(
        f.store.confirmed_lists("sasl:ann", T0).unwrap(),
        vec![crate::policy::ConfirmedList {
            address: "all@example.org".to_owned(),
            size: 840_000
        }]
    );
    let remember = f.desk.quarantine.confirm_remember.as_secs();
    assert!(remember > 0);
    assert!(
        f.store
            .confirmed_lists("sasl:ann", T0 + remember)
            .unwrap()
            .is_empty(),
        "remembered for confirm_remember"
    );
    let (_, _, body) = f.get("/", Some(&cookie)).await;
    assert!(body.contains("release: pending (the sender)"), "{body}");

    // Nothing remembered when the relay does not remember confirmations.
    let f = fixture_with("[quarantine]\nconfirm_remember = \"0s\"\n");
    f.hold(&waiting("DDDDDD4"));
    let token = sender_link("DDDDDD4", crate::link::LinkAction::Send);
    let (status, _, _) = f.press(&token, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.requests("DDDDDD4").len(), 1);
    assert!(f.store.confirmed_lists("sasl:ann", T0).unwrap().is_empty());
}

#[tokio::test]
async fn send_never_releases_a_hold_an_admin_must_judge_or_has_extended() {
    let f = fixture();
    let mut drifted = waiting("DDDDDD5");
    drifted.rules.push(RuleHit {
        rule: "drift".into(),
        action: "tag".into(),
        message: "all@example.org grew from 40 to 840,000".into(),
    });
    f.hold(&drifted);
    let token = sender_link("DDDDDD5", crate::link::LinkAction::Send);
    let (_, _, body) = f.get(&format!("/s/{token}"), None).await;
    assert!(!body.contains("</button>"), "nothing to press: {body}");
    let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &token]);
    let (status, _, body) = f
        .post(&format!("/s/{token}"), None, &[("form", &form)])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(f.requests("DDDDDD5").is_empty());

    f.hold(&waiting("DDDDDD6"));
    let id = f.record("DDDDDD6").id;
    let entry = crate::quarantine::AuditEntry {
        at: T0,
        who: "rita".into(),
        action: "extend".into(),
        comment: None,
    };
    f.store.set_hold_until(id, T0 + 86_400, &entry).unwrap();
    let token = sender_link("DDDDDD6", crate::link::LinkAction::Send);
    let (_, _, body) = f.get(&format!("/s/{token}"), None).await;
    assert!(!body.contains("</button>"), "nothing to press: {body}");
    let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &token]);
    let (status, _, body) = f
        .post(&format!("/s/{token}"), None, &[("form", &form)])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(f.requests("DDDDDD6").is_empty());
}

#[tokio::test]
async fn a_message_no_longer_held_says_what_became_of_it() {
    let f = fixture();
    f.hold(&ordinary("AAAAAA1"));
    let withdraw = sender_link("AAAAAA1", crate::link::LinkAction::Withdraw);
    let (status, _, _) = f.press(&withdraw, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let r = f.requests("AAAAAA1")[0].clone();
    f.index().claim(r.id, T0 + 1).unwrap();
    f.index().finish(r.id, true, "deleted", T0 + 2).unwrap();
    let entry = crate::quarantine::AuditEntry {
        at: T0 + 2,
        who: "worker".into(),
        action: "discarded".into(),
        comment: None,
    };
    f.store
        .set_state(
            r.held_id,
            crate::quarantine::State::Held,
            crate::quarantine::State::Discarded,
            &entry,
        )
        .unwrap();
    assert_eq!(
        f.record("AAAAAA1").state,
        crate::quarantine::State::Discarded
    );
    let ask = sender_link("AAAAAA1", crate::link::LinkAction::Ask);
    let (status, _, body) = f.get(&format!("/s/{ask}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("You withdrew your message at"), "{body}");
    assert!(!body.contains("<button"), "nothing to press: {body}");
    let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &ask]);
    let (status, _, body) = f
        .post(
            &format!("/s/{ask}"),
            None,
            &[("form", &form), ("why", "please")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(f.plea("AAAAAA1"), None);
}

#[tokio::test]
async fn refused_sender_links_change_nothing() {
    let f = fixture_with(LINKS_ON);
    f.hold(&ordinary("AAAAAA1"));
    f.hold(&waiting("BBBBBB2"));
    use crate::link::LinkAction::{Ask, Send, Withdraw};
    let nothing_changed = |f: &Fixture| {
        for q in ["AAAAAA1", "BBBBBB2"] {
            assert!(f.requests(q).is_empty(), "{q}: {:?}", f.requests(q));
            assert_eq!(f.plea(q), None, "{q}");
        }
    };
    let good = sender_link("AAAAAA1", Withdraw);
    let (payload, mac) = good.split_once('.').unwrap();
    let other_key = crate::link::Link::new(
        None,
        "AAAAAA1",
        T0 - 600,
        Withdraw,
        "ann@example.org",
        T0 + 60,
    )
    .unwrap()
    .token(&[8; KEY_BYTES]);
    let mut flipped = mac.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{payload}.{}", String::from_utf8(flipped).unwrap());
    // The link for AAAAAA1 with its payload changed to name BBBBBB2: the MAC fails.
    let mut moved: crate::link::Link = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    moved.queue_id = "BBBBBB2".into();
    let moved = format!(
        "{}.{mac}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&moved).unwrap()
        )
    );
    let admin = digest_link("AAAAAA1", crate::link::LinkAction::Discard, T0 + 3600);
    for (bad, status) in [
        (other_key.as_str(), StatusCode::FORBIDDEN),
        (flipped.as_str(), StatusCode::FORBIDDEN),
        (moved.as_str(), StatusCode::FORBIDDEN),
        (admin.as_str(), StatusCode::FORBIDDEN),
        ("x.y", StatusCode::FORBIDDEN),
    ] {
        let path = format!("/s/{bad}");
        let (got, _, body) = f.get(&path, None).await;
        assert_eq!(got, status, "{bad}: {body}");
        assert!(body.contains("nothing was done"), "{body}");
        assert!(!body.contains("<button"), "{body}");
        let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", bad]);
        let (got, _, _) = f.post(&path, None, &[("form", &form)]).await;
        assert_eq!(got, status, "{bad}");
    }
    // A sender link is no admin link.
    let cookie = f.login("alice").await;
    let t = f.token(&cookie).await;
    let (status, _, _) = f.get(&format!("/link/{good}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = f
        .post(
            &format!("/link/{good}"),
            Some(&cookie),
            &[("token", &t), ("comment", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let cases = [
        // Expired.
        (
            sender_link_for("AAAAAA1", T0 - 600, Withdraw, "ann@example.org", T0),
            StatusCode::GONE,
            "This link expired at",
        ),
        // For an earlier hold of the same queue id.
        (
            sender_link_for("AAAAAA1", T0 - 9000, Withdraw, "ann@example.org", T0 + 60),
            StatusCode::GONE,
            "for an earlier message",
        ),
        // Mailed to someone other than the sender.
        (
            sender_link_for(
                "AAAAAA1",
                T0 - 600,
                Withdraw,
                "mallory@example.org",
                T0 + 60,
            ),
            StatusCode::FORBIDDEN,
            "not for this message",
        ),
        // A queue id with no record.
        (
            sender_link_for("EEEEEE5", T0 - 600, Withdraw, "ann@example.org", T0 + 60),
            StatusCode::NOT_FOUND,
            "no record",
        ),
    ];
    for (token, status, words) in &cases {
        let path = format!("/s/{token}");
        let (got, _, body) = f.get(&path, None).await;
        assert_eq!(got, *status, "{body}");
        assert!(body.contains(words), "{words}: {body}");
        let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", token]);
        let (got, _, _) = f.post(&path, None, &[("form", &form)]).await;
        assert_eq!(got, *status, "{words}");
    }
    nothing_changed(&f);

    // The POST needs the form token of this very link, from the same site.
    let send = sender_link("BBBBBB2", Send);
    let path = format!("/s/{send}");
    let form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &send]);
    let ask = sender_link("AAAAAA1", Ask);
    let ask_form = crate::desk::auth::sign(&[7; KEY_BYTES], &["sender-form", &ask]);
    for fields in [
        &[][..],
        &[("form", "")][..],
        &[("form", ask_form.as_str())][..],
        &[("token", form.as_str())][..],
    ] {
        let (status, _, body) = f.post(&path, None, fields).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{fields:?}");
        assert!(
            body.contains("did not come from the page of your link"),
            "{body}"
        );
    }
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("origin", "http://evil.test")][..],
    ] {
        let (status, resp, _) = f.post_with(&path, None, &[("form", &form)], headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(resp["x-desk-refused"], "cross-origin");
    }
    nothing_changed(&f);
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    let (status, _, _) = f.post(&path, None, &[("form", &form), ("why", &big)]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    nothing_changed(&f);
    // The genuine form acts.
    let (status, _, body) = f.post(&path, None, &[("form", &form)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(f.requests("BBBBBB2").len(), 1);
    assert!(f.requests("AAAAAA1").is_empty());
}

#[tokio::test]
async fn a_hostile_subject_on_the_sender_page_is_escaped_and_flagged() {
    let f = fixture();
    let mut m = ordinary("AAAAAA1");
    m.subject = Some("Pay\r\nBcc: all@x {link_withdraw} <a href=x>\u{202e}fdp.exe".into());
    f.hold(&m);
    let token = sender_link("AAAAAA1", crate::link::LinkAction::Withdraw);
    let (status, _, body) = f.get(&format!("/s/{token}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("<bdi class=\"flag\" title=\"contains control or bidi characters, shown as \\u{...} escapes\">Pay\\x0D\\x0ABcc: all@x {link_withdraw} &#60;a href=x&#62;\\u{202E}fdp.exe</bdi>"),
        "{body}"
    );
    assert!(!body.contains("<a href=x>"), "{body}");
    assert_eq!(body.matches("action=\"/s/").count(), 1, "one form: {body}");
}

/// A relay's own desk (SQLite) keeps its queue-id addresses and knows no relays: an
/// address or a signed link naming a relay reaches nothing and changes nothing.
#[tokio::test]
async fn a_single_relay_desk_refuses_relay_qualified_addresses_and_links() {
    let f = fixture_with(LINKS_ON);
    f.hold(&ordinary("AAAAAA1"));
    let cookie = f.login("rita").await;
    let (status, _, page) = f.get("/message/AAAAAA1", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("action=\"/message/AAAAAA1\" id=\"act\""),
        "{page}"
    );
    assert!(!page.contains("on-relay"), "no relay in the header: {page}");
    let (_, _, list) = f.get("/", Some(&cookie)).await;
    assert!(list.contains("href=\"/message/AAAAAA1\""), "{list}");
    assert!(list.contains("name=\"id\" value=\"AAAAAA1\""), "{list}");
    let t = f.token(&cookie).await;
    let form = [
        ("token", t.as_str()),
        ("action", "release"),
        ("comment", "fine"),
    ];
    for address in [
        "relay-a:AAAAAA1",
        "relay%20a:AAAAAA1",
        ":AAAAAA1",
        "%E2%80%AEx:AAAAAA1",
        "relay-a:AAA",
    ] {
        let path = format!("/message/{address}");
        let (status, _, body) = f.get(&path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{address}: {body}");
        assert!(body.contains("No such message"), "{body}");
        let (status, _, _) = f.post(&path, Some(&cookie), &form).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{address}");
    }
    let (status, _, body) = f
        .post(
            "/bulk",
            Some(&cookie),
            &[
                ("token", &t),
                ("action", "release"),
                ("scope", "selected"),
                ("id", "relay-a:AAAAAA1"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("This desk has no relays"), "{body}");
    // A digest link signed by this desk's key but naming a relay: no record.
    let named = crate::link::Link::new(
        Some("relay-a"),
        "AAAAAA1",
        T0 - 600,
        crate::link::LinkAction::Release,
        "ann@corp.example",
        T0 + 3600,
    )
    .unwrap()
    .token(&[7; KEY_BYTES]);
    let (status, _, body) = f.get(&format!("/link/{named}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, _) = f
        .post(
            &format!("/link/{named}"),
            Some(&cookie),
            &[("token", &t), ("comment", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let sender = crate::link::Link::new(
        Some("relay-a"),
        "AAAAAA1",
        T0 - 600,
        crate::link::LinkAction::Withdraw,
        "Ann@Example.org",
        T0 + 3600,
    )
    .unwrap()
    .token(&[7; KEY_BYTES]);
    let (status, _, body) = f.get(&format!("/s/{sender}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(f.requests("AAAAAA1").is_empty(), "nothing was filed");
    // The same actions without a relay: this relay's record, as always.
    let (status, _, _) = f.post("/message/AAAAAA1", Some(&cookie), &form).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(f.requests("AAAAAA1").len(), 1);
}
