// SPDX-License-Identifier: GPL-3.0-or-later
//! Web safety that holds for every request: the response headers (CSP, nosniff,
//! no-referrer, no-store) and the cross-origin check on every state-changing request.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};

/// The Content-Security-Policy of every page: nothing but our own stylesheet and
/// images, forms posting only to us, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every response carries.
pub fn security_headers() -> [(HeaderName, HeaderValue); 4] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

/// Whether a request may change state, by the algorithm of Go's
/// `http.CrossOriginProtection`: safe methods always may; otherwise a browser's
/// `Sec-Fetch-Site` must say `same-origin` or `none`; without it, an `Origin` must be
/// absent (not a browser) or name this host (the `Host` header) or `public_url`'s
/// origin.
pub fn same_origin(method: &Method, headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if public_origin.is_some_and(|p| p.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (
        host,
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) {
        (Some(o), Some(h)) => !o.is_empty() && o.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// The origin (`scheme://host[:port]`) of `public_url`.
pub fn origin_of(public_url: &str) -> Option<String> {
    let url = url::Url::parse(public_url).ok()?;
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_go_cross_origin_algorithm() {
        let post = Method::POST;
        assert!(same_origin(
            &Method::GET,
            &headers(&[("sec-fetch-site", "cross-site")]),
            None
        ));
        assert!(same_origin(
            &post,
            &headers(&[("sec-fetch-site", "same-origin")]),
            None
        ));
        assert!(same_origin(
            &post,
            &headers(&[("sec-fetch-site", "none")]),
            None
        ));
        for site in ["same-site", "cross-site", "bogus"] {
            let h = headers(&[
                ("sec-fetch-site", site),
                ("origin", "http://desk:1"),
                ("host", "desk:1"),
            ]);
            assert!(!same_origin(&post, &h, None), "{site}");
        }
        assert!(
            same_origin(&post, &headers(&[("host", "desk:8025")]), None),
            "no browser"
        );
        assert!(same_origin(
            &post,
            &headers(&[("origin", "http://desk:8025"), ("host", "desk:8025")]),
            None
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("origin", "http://evil:8025"), ("host", "desk:8025")]),
            None
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("origin", "null"), ("host", "desk:8025")]),
            None
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("origin", "http://desk:8026"), ("host", "desk:8025")]),
            None
        ));
        let public = origin_of("https://review.corp.example/desk").unwrap();
        assert_eq!(public, "https://review.corp.example");
        assert!(same_origin(
            &post,
            &headers(&[
                ("origin", "https://review.corp.example"),
                ("host", "127.0.0.1:8025")
            ]),
            Some(&public)
        ));
    }
}
