// SPDX-License-Identifier: GPL-3.0-or-later
//! Loader tests for `[review]`.

use crate::config::*;

use super::refused_after_domains as refused;
use super::{EXAMPLE, load_after_domains as load_str, load_str as load_plain};

#[test]
fn the_desk_is_off_by_default() {
    let c = load_str("").expect("defaults");
    assert_eq!(c.review.listen, None);
    assert!(!c.review.allow_remote);
    assert_eq!(c.review.public_url, "");
    assert!(!c.review.https());
    assert_eq!(
        c.review.users_file,
        Path::new("/etc/fanout-milter/review-users")
    );
    assert_eq!(c.review.session_idle, Duration::from_secs(30 * 60));
    assert_eq!(c.review.session_lifetime, Duration::from_secs(12 * 3600));
    assert_eq!(c.review.link_lifetime, Duration::from_secs(24 * 3600));
    assert!(
        !c.review.digest_actions,
        "one-click digest links are off by default"
    );
    assert!(c.review.trusted_proxies.is_empty());
    assert_eq!(c.review.user_header, None);
}

#[test]
fn settings_are_read() {
    let c = load_str(
        "[review]\nlisten = \"inet:127.0.0.1:8025\"\npublic_url = \"https://review.corp.example/\"\n\
         users_file = \"review-users\"\nsession_idle = \"10m\"\nsession_lifetime = \"1h\"\n\
         link_lifetime = \"2h\"\ntrusted_proxies = [\"192.0.2.7\", \"::1\"]\n\
         user_header = \"X-Remote-User\"\n",
    )
    .expect("valid");
    let r = &c.review;
    assert_eq!(
        r.listen.as_ref().map(ToString::to_string).as_deref(),
        Some("inet:127.0.0.1:8025")
    );
    assert_eq!(
        r.public_url, "https://review.corp.example",
        "trailing / dropped"
    );
    assert!(r.https());
    assert_eq!(
        r.users_file,
        Path::new("/etc/fanout-milter/review-users"),
        "relative to the file"
    );
    assert_eq!(r.session_idle, Duration::from_secs(600));
    assert_eq!(r.session_lifetime, Duration::from_secs(3600));
    assert_eq!(r.link_lifetime, Duration::from_secs(7200));
    assert!(!r.digest_actions);
    assert_eq!(r.trusted_proxies.len(), 2);
    assert_eq!(r.user_header.as_deref(), Some("x-remote-user"));

    let c = load_str("[review]\nlisten = \"unix:/run/fanout-milter/review.sock\"\n").unwrap();
    assert!(matches!(c.review.listen, Some(ListenAddr::Unix(_))));
}

#[test]
fn a_remote_address_needs_allow_remote() {
    refused(
        "[review]\nlisten = \"inet:0.0.0.0:8025\"\n",
        4,
        "review.listen",
        "set allow_remote = true",
    );
    let c = load_str("[review]\nlisten = \"inet:0.0.0.0:8025\"\nallow_remote = true\n")
        .expect("explicitly allowed");
    assert!(c.review.allow_remote);
}

#[test]
fn malformed_values_are_refused_with_line_and_key() {
    refused(
        "[review]\nlisten = \"127.0.0.1:8025\"\n",
        4,
        "review.listen",
        "not a desk socket",
    );
    refused(
        "[review]\npublic_url = \"review.corp.example\"\n",
        4,
        "review.public_url",
        "http:// or https://",
    );
    refused(
        "[review]\npublic_url = \"https://r.corp.example/?a=b\"\n",
        4,
        "review.public_url",
        "no query",
    );
    refused(
        "[review]\nsession_idle = \"soon\"\n",
        4,
        "review.session_idle",
        "not a duration",
    );
    refused(
        "[review]\nsession_idle = \"2h\"\nsession_lifetime = \"1h\"\n",
        4,
        "review.session_idle",
        "longer than session_lifetime",
    );
    refused(
        "[review]\ntrusted_proxies = [\"proxy.corp.example\"]\n",
        4,
        "review.trusted_proxies[0]",
        "not an IP address",
    );
    refused(
        "[review]\ntrusted_proxies = [\"192.0.2.7\"]\nuser_header = \"X Remote\"\n",
        5,
        "review.user_header",
        "not a header name",
    );
    refused(
        "[review]\nuser_header = \"X-Remote-User\"\n",
        4,
        "review.user_header",
        "needs trusted_proxies",
    );
}

#[test]
fn digest_actions_need_the_desk_and_its_public_address() {
    let c = load_str(
        "[review]\nlisten = \"inet:127.0.0.1:8025\"\npublic_url = \"https://review.corp.example\"\n\
         digest_actions = true\n",
    )
    .expect("valid");
    assert!(c.review.digest_actions);
    refused(
        "[review]\npublic_url = \"https://review.corp.example\"\ndigest_actions = true\n",
        5,
        "review.digest_actions",
        "needs listen",
    );
    refused(
        "[review]\nlisten = \"inet:127.0.0.1:8025\"\ndigest_actions = true\n",
        5,
        "review.digest_actions",
        "needs public_url",
    );
    refused(
        "[review]\ndigest_actions = \"yes\"\n",
        4,
        "review.digest_actions",
        "",
    );
}

#[test]
fn a_reload_keeps_the_running_desk_settings() {
    let base = load_plain(EXAMPLE).unwrap();
    let mut new =
        load_plain(&EXAMPLE.replace("session_idle = \"30m\"", "session_idle = \"5m\"")).unwrap();
    assert_eq!(base.keep_restart_only(&mut new), ["review"]);
    assert_eq!(new.review, base.review);
    assert_eq!(new.raw.review, base.raw.review);
}

#[test]
fn metrics_are_off_by_default_and_read_with_their_token_file() {
    let c = load_str("").expect("defaults");
    assert_eq!(c.metrics, MetricsSettings::default());
    let c =
        load_str("[metrics]\nlisten = \"inet:127.0.0.1:9785\"\ntoken_file = \"metrics.token\"\n")
            .expect("valid");
    assert_eq!(
        c.metrics
            .listen
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("inet:127.0.0.1:9785")
    );
    assert_eq!(
        c.metrics.token_file.as_deref(),
        Some(Path::new("/etc/fanout-milter/metrics.token")),
        "relative to the file"
    );
    let c = load_str("[metrics]\nlisten = \"unix:/run/fanout-milter/metrics.sock\"\n").unwrap();
    assert!(matches!(c.metrics.listen, Some(ListenAddr::Unix(_))));
    assert_eq!(c.metrics.token_file, None);
}

#[test]
fn bad_metrics_settings_are_refused_with_line_and_key() {
    refused(
        "[metrics]\nlisten = \"127.0.0.1:9785\"\n",
        4,
        "metrics.listen",
        "not a metrics socket: use inet:HOST:PORT or unix:/PATH",
    );
    refused(
        "[metrics]\nlisten = \"inet:0.0.0.0:9785\"\n",
        4,
        "metrics.listen",
        "set allow_remote = true",
    );
    load_str("[metrics]\nlisten = \"inet:0.0.0.0:9785\"\nallow_remote = true\n")
        .expect("explicitly allowed");
    refused(
        "[metrics]\ntoken_file = \"/etc/fanout-milter/metrics.token\"\n",
        4,
        "metrics.token_file",
        "has no effect without listen",
    );
    refused(
        "[metrics]\nport = 9785\n",
        4,
        "metrics.port",
        "unknown field",
    );
}
