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
    // TLS is not built in: the refusal names the URL without its password.
    let err = load_str("[state]\nbackend = \"redis\"\nurl = \"rediss://user:s3cret@host\"\n")
        .expect_err("no TLS")
        .to_string();
    assert!(
        err.contains("\"rediss://user:***@host\"") && !err.contains("s3cret"),
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
