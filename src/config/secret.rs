// SPDX-License-Identifier: GPL-3.0-or-later
//! URLs that may carry credentials: [`redact_url`], the one function that removes
//! them before a URL is printed or logged, and [`SecretUrl`], a URL whose `Debug` and
//! `Display` are redacted.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What replaces a secret.
const HIDDEN: &str = "***";

/// Schemes whose path names a database or socket, not a credential: their path is kept.
const PATH_IS_NOT_SECRET: &[&str] = &[
    "redis",
    "rediss",
    "redis+unix",
    "unix",
    "ldap",
    "ldaps",
    "ldapi",
];

/// `url` without the credentials a URL can carry: the password of the user info (all
/// of a user info without one, which is often a token), every query value (keys
/// stay), the fragment, and the path (webhooks keep their secret there, as
/// `https://hooks.slack.com/services/T0/B0/SECRET`) except for Redis and LDAP URLs,
/// whose path is a database number, a socket or a DN. The user info runs to the last
/// `@` before any `?`, so a password holding `/`, `#` or `@` is hidden whole. A URL
/// that does not parse is shown as `scheme://***`; text that is not a URL is hidden
/// whole unless it is a bare name (no `@ : ? # /`, no whitespace).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = split_scheme(url) else {
        return if url.contains(['@', ':', '?', '#', '/']) || url.contains(char::is_whitespace) {
            HIDDEN.to_owned()
        } else {
            url.to_owned()
        };
    };
    if url::Url::parse(url).is_err() {
        return format!("{scheme}://{HIDDEN}");
    }
    let parts = Parts::split(rest);
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:{HIDDEN}@")),
            None => out.push_str(&format!("{HIDDEN}@")),
        }
    }
    out.push_str(parts.host);
    let keep_path = PATH_IS_NOT_SECRET.contains(&scheme.to_ascii_lowercase().as_str());
    if keep_path || parts.path.is_empty() || parts.path == "/" {
        out.push_str(parts.path);
    } else {
        out.push('/');
        out.push_str(HIDDEN);
    }
    if let Some(query) = parts.query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={HIDDEN}"),
                None if pair.is_empty() => String::new(),
                None => HIDDEN.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if parts.fragment.is_some() {
        out.push('#');
        out.push_str(HIDDEN);
    }
    out
}

/// `text` (an error message about `url`) with `url` redacted and, in case the text
/// quotes only a piece of it, every secret piece of `url` hidden too.
pub fn redact_url_in(text: &str, url: &str) -> String {
    if url.is_empty() {
        return text.to_owned();
    }
    let mut out = text.replace(url, &redact_url(url));
    let Some((scheme, rest)) = split_scheme(url) else {
        return out;
    };
    if url::Url::parse(url).is_err() {
        // Where a piece ends is unknown: hide every piece but the scheme.
        let mut pieces: Vec<&str> = rest
            .split(['/', ':', '@', '?', '#', '&', '=', ';'])
            .filter(|p| !p.is_empty())
            .collect();
        pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for piece in pieces {
            out = out.replace(piece, HIDDEN);
        }
        return out;
    }
    let parts = Parts::split(rest);
    let keep_path = PATH_IS_NOT_SECRET.contains(&scheme.to_ascii_lowercase().as_str());
    let mut secrets: Vec<&str> = Vec::new();
    if let Some(userinfo) = parts.userinfo {
        secrets.push(userinfo.split_once(':').map_or(userinfo, |(_, pw)| pw));
    }
    if !keep_path && parts.path.len() > 1 {
        secrets.push(&parts.path[1..]);
    }
    secrets.extend(parts.query);
    secrets.extend(parts.fragment);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, HIDDEN);
    }
    out
}

/// The pieces of a URL after `scheme://`.
struct Parts<'a> {
    userinfo: Option<&'a str>,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl<'a> Parts<'a> {
    /// `rest` split as a URL after `scheme://`: the user info first, up to the last
    /// `@` before any `?` (a password may hold `/`, `#` and `@`), then the fragment,
    /// the query and the path of what follows.
    fn split(rest: &'a str) -> Parts<'a> {
        let before_query = &rest[..rest.find('?').unwrap_or(rest.len())];
        let (userinfo, rest) = match before_query.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        Parts {
            userinfo,
            host,
            path,
            query,
            fragment,
        }
    }
}

/// `url` as `(scheme, rest)` when it starts with a valid scheme and `://`.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// A URL that may carry a credential (Redis password, webhook token): `Debug` and
/// `Display` show it through [`redact_url`]; [`SecretUrl::expose`] gives the URL itself
/// to the code that connects with it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its credentials, for connecting; never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for an empty URL.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URL redacted, for printing.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        SecretUrl(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        SecretUrl(url.to_owned())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_form_is_hidden() {
        let cases = [
            // Redis: password in the user info, user kept; db and socket paths kept.
            (
                "redis://:s3cret@10.0.0.5:6380/2",
                "redis://:***@10.0.0.5:6380/2",
            ),
            ("rediss://user:pw@host", "rediss://user:***@host"),
            ("redis://alice@host:6379/0", "redis://***@host:6379/0"),
            (
                "redis+unix:///run/redis.sock?pass=s3cret&db=2",
                "redis+unix:///run/redis.sock?pass=***&db=***",
            ),
            (
                "unix:///run/redis.sock?user=a&password=s3cret",
                "unix:///run/redis.sock?user=***&password=***",
            ),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("redis://127.0.0.1", "redis://127.0.0.1"),
            // Webhooks: the path, the query and the fragment are secrets.
            (
                "https://hooks.slack.com/services/T000/B000/XXXX",
                "https://hooks.slack.com/***",
            ),
            (
                "https://hooks.example:8443/services/T0/B0/SECRET?x=1",
                "https://hooks.example:8443/***?x=***",
            ),
            (
                "https://api.example/hook?token=abc&sig=def&api_key=g&access_token=h",
                "https://api.example/***?token=***&sig=***&api_key=***&access_token=***",
            ),
            ("https://host/?SECRET", "https://host/?***"),
            ("https://host#frag", "https://host#***"),
            ("https://host/a#frag", "https://host/***#***"),
            ("https://token@host/", "https://***@host/"),
            ("https://u:p@ss@host/x", "https://u:***@host/***"),
            ("http://hooks.example", "http://hooks.example"),
            // LDAP: the DN path is kept, a user info is not.
            (
                "ldap://dc1.corp.example/dc=corp",
                "ldap://dc1.corp.example/dc=corp",
            ),
            ("ldaps://u:pw@dc1", "ldaps://u:***@dc1"),
            // Not a URL: hidden unless it is a bare name.
            ("u:s3cret@host", "***"),
            ("host/s3cret", "***"),
            ("dc1.corp.example", "dc1.corp.example"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn a_password_holding_url_delimiters_is_hidden_whole() {
        let cases = [
            // Parsed: the user info runs to the last `@` before any `?`.
            ("redis://:p%2Fs3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://:s3cret@s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://u:s3c@ret@h/0?db=1", "redis://u:***@h/0?db=***"),
            ("redis://:pa%20s3cret@h", "redis://:***@h"),
            ("https://h/x?mail=a@b", "https://h/***?mail=***"),
            // Not parsed: only the scheme is shown.
            ("redis://user:pa/s3cret@127.0.0.1:6379/0", "redis://***"),
            ("redis://:s3cr#s3cret@127.0.0.1:6379/0", "redis://***"),
            ("redis://:s3c?s3cret@127.0.0.1:6379/0", "redis://***"),
            ("redis://:s3cret/@h", "redis://***"),
            ("redis://u:s3cret#@h/0", "redis://***"),
            ("ldap://u:s3/cret@dc1/dc=x", "ldap://***"),
            ("https://u:s3cret/x@[::1", "https://***"),
            // No scheme, a broken one, whitespace: hidden whole.
            ("//u:s3cret@h", "***"),
            (":s3cret@h", "***"),
            ("redis:/u:s3cret@h", "***"),
            (" redis://:s3cret@h", "***"),
            ("re dis://:s3cret@h", "***"),
            ("3redis://:s3cret@h", "***"),
            ("s3cret token", "***"),
            ("://:s3cret@h", "***"),
        ];
        for (url, want) in cases {
            let got = redact_url(url);
            assert_eq!(got, want, "{url}");
        }
        let hostile = [
            "redis://user:pa/ss@127.0.0.1:6379/0",
            "redis://:s3cr#et@127.0.0.1:6379/0",
            "redis://:s3cr?et@127.0.0.1:6379/0",
            "redis://:s3cr@et@127.0.0.1:6379/0",
            "redis://:s3cr%23et@127.0.0.1:6379/0",
            "redis://:s3cr et@127.0.0.1:6379/0",
            "redis://:s3cr\tet@127.0.0.1:6379/0",
            "redis://:s3cr\\et@127.0.0.1:6379/0",
            "https://:s3cr\\et@h/",
            "redis+unix:///run/r.sock?pass=s3cr/et#x",
            "ldaps://u:s3cr/et@dc1",
        ];
        for url in hostile {
            let got = redact_url(url);
            for piece in ["s3cr", "et@", "pa/ss", "ss@"] {
                assert!(!got.contains(piece), "{url} -> {got}");
            }
            let text = format!(
                "cannot use {url}: bad password {}",
                &url[url.find(':').unwrap() + 3..]
            );
            let said = redact_url_in(&text, url);
            assert!(!said.contains("s3cr") && !said.contains("pa/ss"), "{said}");
        }
    }

    #[test]
    fn secret_pieces_quoted_in_an_error_are_hidden() {
        let url = "https://hooks.example/services/T0/B0/SECRET?token=tk9";
        let text = format!("bad uri: {url}; path /services/T0/B0/SECRET; query token=tk9");
        let out = redact_url_in(&text, url);
        assert!(!out.contains("SECRET") && !out.contains("tk9"), "{out}");
        assert!(out.contains("hooks.example"), "{out}");
        let url = "redis://:pw123@h/0";
        assert_eq!(
            redact_url_in("io error on redis://:pw123@h/0 (pw123)", url),
            "io error on redis://:***@h/0 (***)"
        );
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let url = SecretUrl::from("redis+unix:///run/r.sock?pass=s3cret");
        assert_eq!(url.to_string(), "redis+unix:///run/r.sock?pass=***");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "redis+unix:///run/r.sock?pass=s3cret");
    }
}
