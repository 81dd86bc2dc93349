// SPDX-License-Identifier: GPL-3.0-or-later
//! Loader tests for `[quarantine] store`, `url`, `password_file`, `password_env` and
//! `relay`: the fleet's PostgreSQL quarantine.

use std::os::unix::fs::PermissionsExt;

use super::{load_after_domains as load_str, refused_after_domains as refused};

const PG: &str = "[quarantine]\nstore = \"postgres\"\n";

#[test]
fn sqlite_is_the_default() {
    let c = load_str("").expect("defaults");
    assert_eq!(c.quarantine_store, None);
}

#[test]
fn postgres_takes_a_url_a_password_file_and_a_relay_name() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pg.secret");
    std::fs::write(&secret, "s3cret-pw\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = load_str(&format!(
        "{PG}url = \"postgresql://fanout@db.corp.example:5432/quarantine\"\n\
         password_file = \"{}\"\nrelay = \"relay-a\"\n",
        secret.display()
    ))
    .expect("postgres");
    let pg = c.quarantine_store.expect("postgres settings");
    assert_eq!(
        pg.url,
        "postgresql://fanout@db.corp.example:5432/quarantine"
    );
    assert_eq!(pg.password.as_deref(), Some("s3cret-pw"));
    assert_eq!(pg.relay, "relay-a");
    let shown = format!("{pg:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    let c = load_str(&format!(
        "{PG}url = \"postgresql://fanout@127.0.0.1/q\"\nrelay = \"relay-b\"\n"
    ))
    .expect("no password: trust or peer authentication");
    assert_eq!(c.quarantine_store.unwrap().relay, "relay-b");
}

#[test]
fn postgres_needs_a_relay_name_but_sqlite_does_not() {
    refused(
        &format!("{PG}url = \"postgresql://fanout@db/q\"\n"),
        3,
        "quarantine.relay",
        "must be set with store = \"postgres\"",
    );
    refused(
        &format!("{PG}url = \"postgresql://fanout@db/q\"\nrelay = \"  \"\n"),
        6,
        "quarantine.relay",
        "must be set with store = \"postgres\"",
    );
    let c = load_str("[quarantine]\nstore = \"sqlite\"\n").expect("sqlite needs no relay");
    assert_eq!(c.quarantine_store, None);
}

#[test]
fn a_password_in_the_url_is_refused_and_never_shown() {
    refused(
        &format!(
            "{PG}url = \"postgresql://fanout:s3cret@db.corp.example/q\"\nrelay = \"relay-a\"\n"
        ),
        5,
        "quarantine.url",
        "carries a password: give password_file or password_env instead",
    );
    let text = super::refused(&format!(
        "{}{PG}url = \"postgresql://fanout:s3cret@db.corp.example/q\"\nrelay = \"relay-a\"\n",
        super::DOMAINS
    ))
    .to_string();
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn the_store_the_url_the_password_and_the_relay_are_checked() {
    refused(
        "[quarantine]\nstore = \"mysql\"\n",
        4,
        "quarantine.store",
        "must be \"sqlite\" or \"postgres\"",
    );
    refused(
        &format!("{PG}url = \"mysql://db/q\"\nrelay = \"relay-a\"\n"),
        5,
        "quarantine.url",
        "must be a URL such as",
    );
    refused(
        &format!("{PG}url = \"postgresql://fanout@db/q\"\nrelay = \"relay a\"\n"),
        6,
        "quarantine.relay",
        "must be 1 to 64 letters",
    );
    refused(
        &format!(
            "{PG}url = \"postgresql://fanout@db/q\"\npassword_env = \"FANOUT_TEST_UNSET_PG_PASSWORD\"\nrelay = \"relay-a\"\n"
        ),
        6,
        "quarantine.password_env",
        "FANOUT_TEST_UNSET_PG_PASSWORD is not set",
    );
    refused(
        &format!(
            "{PG}url = \"postgresql://fanout@db/q\"\npassword_file = \"/nonexistent/pg.secret\"\nrelay = \"relay-a\"\n"
        ),
        6,
        "quarantine.password_file",
        "cannot read \"/nonexistent/pg.secret\"",
    );
}

#[test]
fn tls_takes_a_ca_file_and_sslmode_require_or_disable() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pg-ca.pem");
    std::fs::write(&ca, super::ldap::CA_PEM).unwrap();
    let ca = ca.display().to_string();
    let c = load_str(&format!(
        "{PG}url = \"postgresql://fanout@db.corp.example/q?sslmode=require\"\n\
         relay = \"relay-a\"\nca_file = \"{ca}\"\n"
    ))
    .expect("sslmode=require with a CA file");
    let tls = c.quarantine_store.unwrap().tls.expect("TLS");
    assert_eq!(tls.ca_file.display().to_string(), ca);
    assert_eq!(tls.ca_certificates.certificates().len(), 1);
    let c = load_str(&format!(
        "{PG}url = \"postgresql://fanout@db.corp.example/q\"\nrelay = \"relay-a\"\n\
         ca_file = \"{ca}\"\n"
    ))
    .expect("a CA file alone means TLS");
    assert!(c.quarantine_store.unwrap().tls.is_some());
    for url in [
        "postgresql://fanout@db/q?sslmode=disable",
        "postgresql://fanout@db/q",
    ] {
        let c =
            load_str(&format!("{PG}url = \"{url}\"\nrelay = \"relay-a\"\n")).expect("plain TCP");
        assert_eq!(c.quarantine_store.unwrap().tls, None, "{url}");
    }
}

#[test]
fn tls_settings_that_could_go_unverified_or_plain_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pg-ca.pem");
    std::fs::write(&ca, super::ldap::CA_PEM).unwrap();
    let ca = ca.display().to_string();
    let text = dir.path().join("not-a-cert.pem");
    std::fs::write(&text, "hello\n").unwrap();
    let text = text.display().to_string();
    // (the URL's query, the ca_file, the line and key named, the error)
    let cases: [(&str, Option<&str>, usize, &str, &str); 6] = [
        (
            "?sslmode=require",
            None,
            3,
            "quarantine.ca_file",
            "must be set with sslmode=require in url",
        ),
        (
            "?sslmode=prefer",
            Some(&ca),
            5,
            "quarantine.url",
            "sslmode=prefer would go on in plain text",
        ),
        (
            "?sslmode=disable",
            Some(&ca),
            7,
            "quarantine.ca_file",
            "is set, but url says sslmode=disable",
        ),
        (
            "?sslmode=verify-full",
            Some(&ca),
            5,
            "quarantine.url",
            "sslmode=verify-full is not supported: give sslmode=require",
        ),
        (
            "",
            Some("/nonexistent/pg-ca.pem"),
            7,
            "quarantine.ca_file",
            "cannot read \"/nonexistent/pg-ca.pem\"",
        ),
        (
            "?sslmode=require",
            Some(&text),
            7,
            "quarantine.ca_file",
            "holds no PEM certificate",
        ),
    ];
    for (query, ca_file, line, key, message) in cases {
        let ca_file = ca_file.map_or(String::new(), |f| format!("ca_file = \"{f}\"\n"));
        refused(
            &format!(
                "{PG}url = \"postgresql://fanout@db/q{query}\"\nrelay = \"relay-a\"\n{ca_file}"
            ),
            line,
            key,
            message,
        );
    }
}
