// SPDX-License-Identifier: GPL-3.0-or-later
//! Loader tests for `[storm]`, `[rate]`, `[breaker]` and `[state]`.

use crate::config::*;

use super::{load_after_domains as load_str, refused_after_domains as refused};

#[test]
fn defaults_turn_the_storm_breaker_and_relay_breaker_on_and_rates_off() {
    let c = load_str("").expect("defaults");
    let p = &c.policy;
    assert_eq!(p.storm.min_audience, 500);
    assert_eq!((p.storm.min_messages, p.storm.min_senders), (3, 2));
    assert_eq!(p.storm.window, Duration::from_secs(600));
    assert_eq!(p.storm.block_for, Duration::from_secs(6 * 3600));
    assert_eq!(p.storm.action, crate::policy::Action::Reject);
    assert!(p.storm.reply.contains("{subject}"));
    assert_eq!(p.rate.recipients_per_hour, 0);
    assert_eq!(p.rate.action, crate::policy::Action::Tempfail);
    assert_eq!(p.breaker.max_per_minute, 200_000);
    assert_eq!(
        c.admin_socket,
        Path::new("/var/lib/fanout-milter/admin.sock")
    );
}

#[test]
fn storm_settings_are_checked() {
    refused(
        "[storm]\nwindow = \"ten minutes\"\n",
        4,
        "storm.window",
        "is not a duration",
    );
    refused(
        "[storm]\nmin_messages = 1\nmin_senders = 1\n",
        4,
        "storm.min_messages",
        "at least 2",
    );
    refused(
        "[storm]\nmin_senders = 4\n",
        4,
        "storm.min_senders",
        "between 1 and storm.min_messages (3)",
    );
    refused(
        "[storm]\naction = \"accept\"\n",
        4,
        "storm.action",
        "not an action for a rule",
    );
    refused(
        "[storm]\nreply = \"storm on {thread}\"\n",
        4,
        "storm.reply",
        "unknown placeholder \"{thread}\"",
    );
}

#[test]
fn rate_and_state_settings_are_checked() {
    refused(
        "[rate]\naction = \"reject\"\n",
        4,
        "rate.action",
        "use \"tempfail\" or \"quarantine\"",
    );
    refused(
        "[rate]\nreply = \"over {limit}\"\n",
        4,
        "rate.reply",
        "unknown placeholder \"{limit}\"",
    );
    refused(
        "[state]\nbackend = \"redis\"\nurl = \"http://user:secret@example.org/\"\n",
        5,
        "state.url",
        "\"http://user:***@example.org/\" is not a Redis URL",
    );
    refused(
        "[state]\nbackend = \"redis\"\ntimeout = \"1m\"\n",
        5,
        "state.timeout",
        "1m is too long",
    );
    refused(
        "[state]\nbackend = \"redis\"\nprefix = \"\"\n",
        5,
        "state.prefix",
        "non-empty",
    );
    refused(
        "[state]\non_failure = \"drop\"\n",
        4,
        "state.on_failure",
        "must be \"local\" or \"tempfail\"",
    );
    refused(
        "[state]\nadmin_socket = \"run/admin.sock\"\n",
        4,
        "state.admin_socket",
        "absolute path",
    );
    let c = load_str("[rate]\nrecipients_per_hour = 2000\nexternal_per_day = 300\naction = \"quarantine\"\n[state]\nadmin_socket = \"/run/fanout/admin.sock\"\n")
        .expect("valid");
    assert_eq!(c.policy.rate.recipients_per_hour, 2000);
    assert_eq!(c.policy.rate.external_per_day, 300);
    assert_eq!(c.policy.rate.action, crate::policy::Action::Quarantine);
    assert_eq!(c.admin_socket, Path::new("/run/fanout/admin.sock"));
    assert_eq!(c.state, StateSettings::Memory);
    let c = load_str("[state]\nbackend = \"redis\"\nurl = \"redis://:pw@10.0.0.5:6380/2\"\ntimeout = \"150ms\"\non_failure = \"tempfail\"\n")
        .expect("valid");
    assert_eq!(
        c.state,
        StateSettings::Redis {
            url: "redis://:pw@10.0.0.5:6380/2".into(),
            password_file: None,
            prefix: "fanout:".into(),
            timeout: Duration::from_millis(150),
            on_failure: OnFailure::Tempfail,
            conn: Box::default(),
        }
    );
    assert_eq!(
        redact_url("redis://:pw@10.0.0.5:6380/2"),
        "redis://:***@10.0.0.5:6380/2"
    );
    assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
    let printed = c.effective_toml();
    assert!(
        printed.contains("url = \"redis://:***@10.0.0.5:6380/2\"") && !printed.contains("pw"),
        "check-config does not print the password: {printed}"
    );
}

/// `check-config` (the journal, through ExecStartPre and ExecReload) and `?config` in a
/// log line show no credential of any URL.
#[test]
fn printed_settings_carry_no_credential() {
    let cases = [
        (
            "redis://:s3cret@10.0.0.5:6380/2",
            "redis://:***@10.0.0.5:6380/2",
        ),
        (
            "redis+unix:///run/redis.sock?pass=s3cret&db=2",
            "redis+unix:///run/redis.sock?pass=***&db=***",
        ),
        ("redis://user:s3cret@host", "redis://user:***@host"),
    ];
    for (url, shown) in cases {
        let c = load_str(&format!(
            "[state]\nbackend = \"redis\"\nurl = \"{url}\"\n\
             [notify]\nwebhook = \"https://hooks.example/services/T0/B0/SECRET?token=tok3n\"\n"
        ))
        .expect("valid");
        match &c.state {
            StateSettings::Redis { url: u, .. } => assert_eq!(u.expose(), url),
            other => panic!("{other:?}"),
        }
        let printed = c.effective_toml();
        let debug = format!("{c:?}");
        for text in [&printed, &debug] {
            for secret in ["s3cret", "SECRET", "tok3n"] {
                assert!(!text.contains(secret), "{secret} shown: {text}");
            }
        }
        assert!(printed.contains(&format!("url = \"{shown}\"")), "{printed}");
        assert!(
            printed.contains("webhook = \"https://hooks.example/***?token=***\""),
            "{printed}"
        );
    }
    // TLS without certificate checks is refused, naming the URL without its password.
    let err =
        load_str("[state]\nbackend = \"redis\"\nurl = \"rediss://user:s3cret@host/#insecure\"\n")
            .expect_err("no insecure TLS")
            .to_string();
    assert!(
        err.contains("\"rediss://user:***@host/")
            && err.contains("#insecure")
            && !err.contains("s3cret"),
        "{err}"
    );
    let bad = "[notify]\nwebhook = \"ftp://u:s3cret@hooks.example/SECRET\"\n";
    refused(
        bad,
        4,
        "notify.webhook",
        "\"ftp://u:***@hooks.example/***\" must be",
    );
    let err = load_str(bad).expect_err("not http").to_string();
    assert!(!err.contains("s3cret") && !err.contains("SECRET"), "{err}");
}

#[test]
fn a_redis_password_file_must_be_readable() {
    refused(
        "[state]\nbackend = \"redis\"\npassword_file = \"/nonexistent/redis.secret\"\n",
        5,
        "state.password_file",
        "cannot read \"/nonexistent/redis.secret\"",
    );
    // The memory backend ignores it.
    let c = load_str("[state]\npassword_file = \"/nonexistent/redis.secret\"\n").expect("memory");
    assert_eq!(c.state, StateSettings::Memory);
}

/// A self-signed CA certificate (P-256), for the TLS keys.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBmDCCAT2gAwIBAgIUbRcwCcUKYrYhn91vkRsotF8ll/swCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVZmFub3V0LW1pbHRlci10ZXN0LWNhMCAXDTI2MTEyMzE2NDYx
NloYDzIxMjYxMDMwMTY0NjE2WjAgMR4wHAYDVQQDDBVmYW5vdXQtbWlsdGVyLXRl
c3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASY6xru3tRonaY5JR8CUDtO
9tylp4ycBQzpYMTgdxX2vph5cjeGIT2gEMIKpmOqHXSy7HuPcjNRrS1/uZ+a19Cz
o1MwUTAdBgNVHQ4EFgQUWw6bd7iVX4DyT/LnzT18+F+nxSgwHwYDVR0jBBgwFoAU
Ww6bd7iVX4DyT/LnzT18+F+nxSgwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNJADBGAiEAhbUCC5F/u9/PtPWw98b4FRDmM3uao/901YPmKImyd1QCIQCY2TSd
Xh2qScp7emmiFz1cISqwMjB8aV69S6A6DNKZ3A==
-----END CERTIFICATE-----
";

/// A file holding `text` with permissions `mode`.
fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.display().to_string()
}

#[test]
fn redis_tls_files_are_checked_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_file(dir.path(), "ca.pem", CA_PEM, 0o644);
    let key = write_file(
        dir.path(),
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\n",
        0o600,
    );
    let c = load_str(&format!(
        "[state]\nbackend = \"redis\"\nurl = \"rediss://redis.corp.example:6380/\"\n\
         ca_file = \"{ca}\"\ncert_file = \"{ca}\"\nkey_file = \"{key}\"\n"
    ))
    .expect("valid");
    match &c.state {
        StateSettings::Redis { conn, .. } => {
            assert_eq!(conn.ca_file.as_deref(), Some(Path::new(&ca)));
            assert_eq!(
                conn.client_cert,
                Some((PathBuf::from(&ca), PathBuf::from(&key)))
            );
            assert_eq!(conn.sentinel, None);
        }
        other => panic!("{other:?}"),
    }
    refused(
        "[state]\nbackend = \"redis\"\nurl = \"rediss://h/\"\nca_file = \"/nonexistent/ca.pem\"\n",
        6,
        "state.ca_file",
        "cannot read \"/nonexistent/ca.pem\"",
    );
    refused(
        &format!("[state]\nbackend = \"redis\"\nca_file = \"{ca}\"\n"),
        5,
        "state.ca_file",
        "only used with TLS",
    );
    refused(
        &format!("[state]\nbackend = \"redis\"\nurl = \"rediss://h/\"\ncert_file = \"{ca}\"\n"),
        6,
        "state.cert_file",
        "cert_file needs key_file",
    );
    let open = write_file(
        dir.path(),
        "open-key.pem",
        "-----BEGIN PRIVATE KEY-----\n",
        0o644,
    );
    refused(
        &format!(
            "[state]\nbackend = \"redis\"\nurl = \"rediss://h/\"\ncert_file = \"{ca}\"\nkey_file = \"{open}\"\n"
        ),
        7,
        "state.key_file",
        "readable by every user",
    );
}

#[test]
fn redis_sentinel_settings_are_checked_and_never_print_a_password() {
    let c = load_str(
        "[state]\nbackend = \"redis\"\nurl = \"redis://:m4ster@mymaster/3\"\n\
         [state.sentinel]\nmaster = \"mymaster\"\n\
         urls = [\"redis://:s3ntinel@10.0.0.1:26379\", \"redis://10.0.0.2:26379\"]\n",
    )
    .expect("valid");
    match &c.state {
        StateSettings::Redis { conn, .. } => {
            let s = conn.sentinel.as_ref().expect("sentinel");
            assert_eq!(s.master, "mymaster");
            assert_eq!(s.urls.len(), 2);
            assert_eq!(s.urls[0].expose(), "redis://:s3ntinel@10.0.0.1:26379");
        }
        other => panic!("{other:?}"),
    }
    let printed = c.effective_toml();
    let debug = format!("{c:?}");
    for text in [&printed, &debug] {
        for secret in ["s3ntinel", "m4ster"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
    }
    assert!(printed.contains("redis://:***@10.0.0.1:26379"), "{printed}");
    refused(
        "[state]\nbackend = \"redis\"\n[state.sentinel]\nmaster = \"mymaster\"\n",
        5,
        "state.sentinel.urls",
        "at least one sentinel",
    );
    refused(
        "[state]\nbackend = \"redis\"\n[state.sentinel]\nurls = [\"redis://10.0.0.1:26379\"]\n",
        5,
        "state.sentinel.master",
        "is needed",
    );
    refused(
        "[state]\nbackend = \"redis\"\n[state.sentinel]\nmaster = \"mymaster\"\nurls = [\"redis://10.0.0.1:26379\", \"http://u:s3cret@h/\"]\n",
        7,
        "state.sentinel.urls[1]",
        "\"http://u:***@h/\" is not a sentinel URL",
    );
    refused(
        "[state]\nbackend = \"redis\"\nurl = \"redis+unix:///run/redis.sock\"\n[state.sentinel]\nmaster = \"m\"\nurls = [\"redis://10.0.0.1:26379\"]\n",
        5,
        "state.url",
        "must be redis:// or rediss://",
    );
    refused(
        "[state]\nbackend = \"redis\"\n[state.sentinel]\nmaster = \"m\"\nurls = [\"redis://10.0.0.1:26379\", \"rediss://10.0.0.2:26379\"]\n",
        7,
        "state.sentinel.urls",
        "for all the sentinels or for none",
    );
}
