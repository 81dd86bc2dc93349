// SPDX-License-Identifier: GPL-3.0-or-later
//! `[review]`: the web review desk: where it listens, who may use it, how long sessions
//! and digest links last, and which reverse proxies may name the user.

use super::{DAY, WEEK, YEAR, duration};
use crate::config::raw::{RawMetrics, RawReview};
use crate::config::{ListenAddr, MetricsSettings, ReviewSettings};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// `session_idle`, `session_lifetime` and `link_lifetime`, read with the other durations.
pub(super) struct Times {
    session_idle: Duration,
    session_lifetime: Duration,
    link_lifetime: Duration,
}

/// Reads the durations of `[review]`.
pub(super) fn durations(raw: &RawReview, report: &mut impl FnMut(&str, String)) -> Times {
    Times {
        session_idle: duration("review.session_idle", &raw.session_idle, DAY, report),
        session_lifetime: duration(
            "review.session_lifetime",
            &raw.session_lifetime,
            WEEK,
            report,
        ),
        link_lifetime: duration("review.link_lifetime", &raw.link_lifetime, YEAR, report),
    }
}

/// Checks the rest of `[review]`.
pub(super) fn check(
    raw: &RawReview,
    times: Times,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> ReviewSettings {
    let listen = listen_addr(
        "review.listen",
        &raw.listen,
        raw.allow_remote,
        (
            "desk socket",
            "8025",
            " behind a TLS proxy, or set allow_remote = true",
        ),
        report,
    );
    let public_url = raw.public_url.trim().trim_end_matches('/').to_owned();
    if !public_url.is_empty()
        && let Err(e) = check_public_url(&public_url)
    {
        report("review.public_url", e);
    }
    if raw.digest_actions {
        if listen.is_none() {
            report(
                "review.digest_actions",
                "needs listen: the links lead to the review desk".into(),
            );
        }
        if public_url.is_empty() {
            report(
                "review.digest_actions",
                "needs public_url: a link in a mail must name the desk as browsers reach it".into(),
            );
        }
    }
    let users_file = base.join(&raw.users_file);
    if raw.users_file.as_os_str().is_empty() {
        report(
            "review.users_file",
            "must name a file such as \"/etc/fanout-milter/review-users\"".into(),
        );
    }
    if !times.session_idle.is_zero()
        && !times.session_lifetime.is_zero()
        && times.session_idle > times.session_lifetime
    {
        report(
            "review.session_idle",
            format!(
                "\"{}\" is longer than session_lifetime \"{}\"",
                raw.session_idle.trim(),
                raw.session_lifetime.trim()
            ),
        );
    }
    let mut trusted_proxies = Vec::new();
    for (i, proxy) in raw.trusted_proxies.iter().enumerate() {
        match proxy.trim().parse::<IpAddr>() {
            Ok(ip) => trusted_proxies.push(ip),
            Err(_) => report(
                &format!("review.trusted_proxies[{i}]"),
                format!("\"{proxy}\" is not an IP address such as \"192.0.2.10\""),
            ),
        }
    }
    let user_header = match raw.user_header.trim() {
        "" => None,
        name if !is_header_name(name) => {
            report(
                "review.user_header",
                format!("\"{name}\" is not a header name such as \"X-Remote-User\""),
            );
            None
        }
        name => {
            if raw.trusted_proxies.is_empty() {
                report(
                    "review.user_header",
                    "needs trusted_proxies: the header is believed only from those addresses"
                        .into(),
                );
            }
            Some(name.to_ascii_lowercase())
        }
    };
    ReviewSettings {
        listen,
        allow_remote: raw.allow_remote,
        public_url,
        users_file,
        session_idle: times.session_idle,
        session_lifetime: times.session_lifetime,
        link_lifetime: times.link_lifetime,
        digest_actions: raw.digest_actions,
        trusted_proxies,
        user_header,
    }
}

/// `public_url`: `http://` or `https://`, a host, maybe a port and a path; no query,
/// fragment, user info or spaces.
fn check_public_url(url: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "\"{url}\" must be an http:// or https:// address such as \
             \"https://review.example.org\" (no query, fragment or user name)"
        )
    };
    let parsed = url::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none_or(str::is_empty)
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || url.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(())
}

/// An HTTP header name (RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks `[metrics]`: a local address unless `allow_remote`, and a token file path.
pub(super) fn metrics(
    raw: &RawMetrics,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> MetricsSettings {
    let listen = listen_addr(
        "metrics.listen",
        &raw.listen,
        raw.allow_remote,
        (
            "metrics socket",
            "9785",
            ", or set allow_remote = true (and a token_file)",
        ),
        report,
    );
    let token_file = (!raw.token_file.as_os_str().is_empty()).then(|| base.join(&raw.token_file));
    if token_file.is_some() && listen.is_none() {
        report(
            "metrics.token_file",
            "has no effect without listen: set listen = \"inet:127.0.0.1:9785\"".into(),
        );
    }
    MetricsSettings { listen, token_file }
}

/// A web endpoint's `listen` (`key`): empty for none; an address other hosts can reach
/// only with `allow_remote`. `(what, port, otherwise)` word the errors: the socket's
/// name, its usual port, and what else the admin may do.
fn listen_addr(
    key: &str,
    text: &str,
    allow_remote: bool,
    (what, port, otherwise): (&str, &str, &str),
    report: &mut impl FnMut(&str, String),
) -> Option<ListenAddr> {
    let addr = match text.trim() {
        "" => return None,
        text => match text.parse::<ListenAddr>() {
            Ok(addr) => addr,
            Err(e) => {
                report(
                    key,
                    e.to_string().replace("milter socket", what).replace(
                        "e.g. inet:127.0.0.1:7785",
                        &format!("e.g. inet:127.0.0.1:{port}"),
                    ),
                );
                return None;
            }
        },
    };
    if !addr.is_local() && !allow_remote {
        report(
            key,
            format!(
                "\"{addr}\" can be reached from other hosts; listen on 127.0.0.1 or a unix \
                 socket{otherwise}"
            ),
        );
    }
    Some(addr)
}
