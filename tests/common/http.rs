// SPDX-License-Identifier: GPL-3.0-or-later
//! Plain HTTP/1.1 to the review desk for end-to-end tests, one connection per request.

use std::io::{Read, Write};
use std::net::TcpStream;

/// One HTTP/1.1 request on a new connection; the whole answer (status line, headers,
/// body).
pub fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the desk");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

pub fn post(port: u16, path: &str, cookie: Option<&str>, body: &str) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n\
             Sec-Fetch-Site: same-origin\r\n{cookie}Connection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

pub fn get(port: u16, path: &str, cookie: &str) -> String {
    http(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// Logs in; the session cookie (`name=value`).
pub fn login(port: u16, user: &str, password: &str) -> String {
    let answer = post(
        port,
        "/login",
        None,
        &form(&[("user", user), ("password", password)]),
    );
    assert!(answer.starts_with("HTTP/1.1 303"), "{user}: {answer}");
    answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

/// The form token of a page.
pub fn token(page: &str) -> String {
    let at = page
        .find("name=\"token\" value=\"")
        .expect("the page carries a form token");
    let rest = &page[at + "name=\"token\" value=\"".len()..];
    rest[..rest.find('"').expect("end of the token")].to_owned()
}

/// A mail body as a reader sees it: quoted-printable soft breaks and `=3D` undone.
pub fn unquoted(text: &str) -> String {
    text.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}
