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
