// SPDX-License-Identifier: GPL-3.0-or-later
use super::*;
use crate::policy::{Counts, Reason, Verdict};

fn evaluation(action: Action, rules: &[&'static str]) -> Evaluation {
    let mut verdict = Verdict::accept();
    verdict.action = action;
    verdict.intended = action;
    for rule in rules {
        verdict.reasons.push(Reason {
            rule,
            action,
            message: String::new(),
            monitor: false,
            reply: None,
        });
    }
    Evaluation {
        verdict,
        counts: Counts {
            envelope: 3,
            audience: 700,
            ..Default::default()
        },
    }
}

/// The value of one sample line `name{labels} value` in the exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
}

#[test]
fn every_known_series_exists_at_zero_from_start() {
    let text = Metrics::new().encode();
    for verdict in VERDICTS {
        for rule in RULES
            .into_iter()
            .chain([RULE_NONE, RULE_EXEMPT, RULE_FAULT])
        {
            let series = format!(
                "fanout_decisions_total{{verdict=\"{}\",rule=\"{rule}\"}}",
                verdict.as_str()
            );
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
    }
    for cause in Tempfail::ALL {
        let series = format!("fanout_tempfails_total{{cause=\"{}\"}}", cause.as_str());
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    for rule in ["limits.audience", "foreign", "none"] {
        let series = format!("fanout_held_messages{{rule=\"{rule}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(
        sample(
            &text,
            "fanout_review_actions_total{action=\"release-to\",via=\"sender\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "fanout_config_last_reload_successful"),
        Some(1.0)
    );
    let info = format!("fanout_build_info{{version=\"{}\"}}", crate::VERSION);
    assert_eq!(sample(&text, &info), Some(1.0));
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn a_decision_counts_once_under_its_deciding_rule() {
    let m = Metrics::new();
    m.decided(
        &evaluation(Action::Quarantine, &["hidden", "limits.envelope"]),
        Duration::from_millis(3),
    );
    m.decided(&evaluation(Action::Accept, &[]), Duration::from_millis(1));
    let mut exempt = evaluation(Action::Accept, &[]);
    exempt.verdict.exempt_by = Some("svc-*".into());
    m.decided(&exempt, Duration::ZERO);
    m.decided(
        &evaluation(Action::Tempfail, &["directory.unavailable"]),
        Duration::ZERO,
    );
    m.decided(&evaluation(Action::Tempfail, &["rate"]), Duration::ZERO);
    m.faulted(Tempfail::StateBackend, Duration::ZERO);
    let text = m.encode();
    let count = |verdict: &str, rule: &str| {
        sample(
            &text,
            &format!("fanout_decisions_total{{verdict=\"{verdict}\",rule=\"{rule}\"}}"),
        )
    };
    assert_eq!(count("quarantine", "hidden"), Some(1.0));
    assert_eq!(count("quarantine", "limits.envelope"), Some(0.0));
    assert_eq!(count("accept", "none"), Some(1.0));
    assert_eq!(count("accept", "exempt"), Some(1.0));
    assert_eq!(count("tempfail", "directory.unavailable"), Some(1.0));
    assert_eq!(count("tempfail", "rate"), Some(1.0));
    assert_eq!(count("tempfail", "fault"), Some(1.0));
    let tempfails = |cause: &str| {
        sample(
            &text,
            &format!("fanout_tempfails_total{{cause=\"{cause}\"}}"),
        )
    };
    assert_eq!(tempfails("directory_unavailable"), Some(1.0));
    assert_eq!(tempfails("rule"), Some(1.0));
    assert_eq!(tempfails("state_backend"), Some(1.0));
    assert_eq!(tempfails("internal"), Some(0.0));
    assert_eq!(
        sample(&text, "fanout_message_envelope_recipients_count"),
        Some(5.0),
        "faults have no counts"
    );
    assert_eq!(
        sample(
            &text,
            "fanout_message_audience_recipients_bucket{le=\"500.0\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_message_audience_recipients_bucket{le=\"1000.0\"}"
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "fanout_decision_duration_seconds_count"),
        Some(6.0)
    );
}

#[test]
fn connections_are_active_while_their_guard_lives() {
    let m = Arc::new(Metrics::new());
    let a = m.connected();
    let b = m.connected();
    drop(a);
    let text = m.encode();
    assert_eq!(sample(&text, "fanout_milter_connections_active"), Some(1.0));
    assert_eq!(sample(&text, "fanout_milter_connections_total"), Some(2.0));
    drop(b);
    assert_eq!(
        sample(&m.encode(), "fanout_milter_connections_active"),
        Some(0.0)
    );
}

#[test]
fn held_readings_replace_the_last_ones() {
    let m = Metrics::new();
    m.set_held(&HeldReading {
        by_rule: vec![("hidden", 2, 1_700_000_000), ("foreign", 1, 1_600_000_000)],
        overdue: 1,
        overdue_oldest: 1_600_000_000,
        actions: vec![("release", "desk", 7)],
        failures: vec![("discard", 2)],
    });
    m.set_held(&HeldReading {
        by_rule: vec![("hidden", 1, 1_700_000_100)],
        overdue: 0,
        overdue_oldest: 0,
        actions: vec![("release", "desk", 9)],
        failures: vec![("discard", 2)],
    });
    let text = m.encode();
    assert_eq!(
        sample(&text, "fanout_held_messages{rule=\"hidden\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "fanout_held_messages{rule=\"foreign\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_held_oldest_timestamp_seconds{rule=\"hidden\"}"
        ),
        Some(1_700_000_100.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_held_oldest_timestamp_seconds{rule=\"foreign\"}"
        ),
        Some(0.0)
    );
    assert_eq!(sample(&text, "fanout_held_overdue_messages"), Some(0.0));
    assert_eq!(
        sample(&text, "fanout_held_overdue_oldest_timestamp_seconds"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_review_actions_total{action=\"release\",via=\"desk\"}"
        ),
        Some(9.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_review_action_failures_total{action=\"discard\"}"
        ),
        Some(2.0)
    );
    // A reading that lost a race with a newer one lowers no counter.
    m.set_held(&HeldReading {
        actions: vec![("release", "desk", 5)],
        failures: vec![("discard", 1)],
        ..HeldReading::default()
    });
    let text = m.encode();
    assert_eq!(
        sample(
            &text,
            "fanout_review_actions_total{action=\"release\",via=\"desk\"}"
        ),
        Some(9.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_review_action_failures_total{action=\"discard\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "fanout_held_messages{rule=\"hidden\"}"),
        Some(0.0)
    );
}

#[test]
fn directory_sources_and_reloads_are_labelled_and_neutralised() {
    let m = Metrics::new();
    m.directory_source("corp\nldap\"", Duration::from_secs(300));
    m.directory_loaded(
        "corp\nldap\"",
        std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        12,
        3,
        1,
    );
    m.directory_failed("corp\nldap\"");
    m.reloaded(false, std::time::UNIX_EPOCH + Duration::from_secs(5));
    let text = m.encode();
    assert!(text.matches("corp\\\\x0Aldap").count() >= 7, "{text}");
    assert!(!text.contains("corp\nldap"), "{text}");
    assert_eq!(
        sample(
            &text,
            "fanout_directory_refresh_interval_seconds{source=\"corp\\\\x0Aldap\\\"\"}"
        ),
        Some(300.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_directory_last_refresh_success_timestamp_seconds{source=\"corp\\\\x0Aldap\\\"\"}"
        ),
        Some(1_800_000_000.0)
    );
    assert_eq!(
        sample(&text, "fanout_config_last_reload_successful"),
        Some(0.0)
    );
    m.reloaded(true, std::time::UNIX_EPOCH + Duration::from_secs(7));
    let text = m.encode();
    assert_eq!(
        sample(&text, "fanout_config_last_reload_successful"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "fanout_config_last_reload_success_timestamp_seconds"),
        Some(7.0)
    );
}

/// Every rule name the policy can put in a verdict is one of [`RULES`], so the
/// decision counter's `rule` label stays within the series made at start.
#[test]
fn rules_cover_every_rule_the_policy_names() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy");
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for part in text.split("rule: \"").skip(1) {
            seen.insert(part.split('"').next().unwrap().to_owned());
        }
    }
    assert!(seen.len() >= 10, "{seen:?}");
    for rule in &seen {
        assert!(
            RULES.contains(&rule.as_str()),
            "{rule} is missing from RULES"
        );
    }
    assert_eq!(rule_label("limits.audience"), "limits.audience");
    assert_eq!(rule_label("made-up"), RULE_NONE);
}
#[test]
fn prometheus_text_names_counters_with_their_suffix() {
    let m = Metrics::new();
    let open = m.encode();
    assert!(open.contains("# TYPE fanout_decisions counter\n"));
    let text = m.encode_prometheus();
    assert!(text.contains("# HELP fanout_decisions_total Messages decided"));
    assert!(text.contains("# TYPE fanout_decisions_total counter\n"));
    assert!(text.contains("# TYPE fanout_held_messages gauge\n"));
    assert!(text.contains("# TYPE fanout_decision_duration_seconds histogram\n"));
    assert!(!text.contains("# EOF"));
    assert_eq!(
        open.lines().filter(|l| !l.starts_with('#')).count(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
}

#[test]
fn a_directory_source_no_longer_configured_loses_its_series() {
    let m = Metrics::new();
    for name in ["old", "corp"] {
        m.directory_source(name, Duration::from_secs(60));
        m.directory_failed(name);
    }
    m.directory_sources(&["old", "corp"]);
    assert!(m.encode().contains("source=\"old\""));
    m.directory_sources(&["corp"]);
    // A refresh of the removed source that ends after the reload brings none back.
    m.directory_refresh_took("old", Duration::from_secs(1));
    m.directory_failed("old");
    let text = m.encode();
    assert!(!text.contains("source=\"old\""), "{text}");
    assert_eq!(
        sample(
            &text,
            "fanout_directory_refresh_failures_total{source=\"corp\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_monitored_rule_that_asked_more_does_not_decide() {
    let m = Metrics::new();
    let mut e = evaluation(
        Action::Tempfail,
        &["limits.envelope", "directory.unavailable"],
    );
    e.verdict.reasons[0].action = Action::Reject;
    e.verdict.reasons[0].monitor = true;
    m.decided(&e, Duration::ZERO);
    let text = m.encode();
    assert_eq!(
        sample(
            &text,
            "fanout_decisions_total{verdict=\"tempfail\",rule=\"directory.unavailable\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_tempfails_total{cause=\"directory_unavailable\"}"
        ),
        Some(1.0)
    );
    // An enforced rule that asked for less is not the deciding one either, wherever
    // it stands.
    let mut e = evaluation(Action::Quarantine, &["limits.external", "limits.envelope"]);
    e.verdict.reasons[0].action = Action::Tag;
    m.decided(&e, Duration::ZERO);
    assert_eq!(
        sample(
            &m.encode(),
            "fanout_decisions_total{verdict=\"quarantine\",rule=\"limits.envelope\"}"
        ),
        Some(1.0)
    );
    // Everything monitored (a tag): the first rule is named.
    let mut e = evaluation(Action::Tag, &["hidden", "limits.envelope"]);
    for r in &mut e.verdict.reasons {
        r.action = Action::Quarantine;
        r.monitor = true;
    }
    m.decided(&e, Duration::ZERO);
    assert_eq!(
        sample(
            &m.encode(),
            "fanout_decisions_total{verdict=\"tag\",rule=\"hidden\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn state_storm_brake_and_breaker_readings_show() {
    let m = Metrics::new();
    m.protocol_error();
    m.set_storms_active(2);
    m.storm_tripped();
    m.storm_tripped();
    m.storm_tripped();
    m.set_brake(true);
    m.set_breaker(true);
    m.state_error();
    m.set_failover(true);
    m.state_round_trip(Duration::from_micros(300));
    let text = m.encode();
    for (series, value) in [
        (
            "fanout_milter_protocol_errors_total{kind=\"sequence\"}",
            1.0,
        ),
        ("fanout_storms_active", 2.0),
        ("fanout_storms_tripped_total", 3.0),
        ("fanout_brake_engaged", 1.0),
        ("fanout_breaker_open", 1.0),
        ("fanout_state_backend_errors_total", 1.0),
        ("fanout_state_failover_active", 1.0),
        ("fanout_state_backend_request_duration_seconds_count", 1.0),
        (
            "fanout_state_backend_request_duration_seconds_bucket{le=\"0.00025\"}",
            0.0,
        ),
        (
            "fanout_state_backend_request_duration_seconds_bucket{le=\"0.0005\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}");
    }
    m.set_brake(false);
    m.set_breaker(false);
    m.set_failover(false);
    m.set_storms_active(0);
    let text = m.encode();
    for series in [
        "fanout_brake_engaged",
        "fanout_breaker_open",
        "fanout_state_failover_active",
        "fanout_storms_active",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series}");
    }
}

/// Every verdict and rule has its own counter resolved at start, so counting takes no
/// lock; the fallback through the family is for names a bug let through.
#[test]
fn every_verdict_and_rule_has_a_counter_of_its_own() {
    let names: std::collections::BTreeSet<&str> = DECISION_RULES.into_iter().collect();
    assert_eq!(names.len(), RULES.len() + 3, "{DECISION_RULES:?}");
    for extra in [RULE_NONE, RULE_EXEMPT, RULE_FAULT] {
        assert!(names.contains(extra), "{extra}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for verdict in VERDICTS {
        for rule in DECISION_RULES {
            let i = decision_index(verdict, rule).expect("resolved at start");
            assert!(seen.insert(i), "{verdict} {rule} shares counter {i}");
        }
    }
    assert_eq!(seen.len(), Metrics::new().by_decision.len());
    assert_eq!(decision_index(Action::Accept, "made-up"), None);
}

#[test]
fn directory_refreshes_are_timed() {
    let m = Metrics::new();
    m.directory_source("corp", Duration::from_secs(300));
    m.directory_refresh_took("corp", Duration::from_millis(70));
    let text = m.encode();
    assert_eq!(
        sample(
            &text,
            "fanout_directory_refresh_duration_seconds_count{source=\"corp\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "fanout_directory_refresh_duration_seconds_bucket{le=\"0.1\",source=\"corp\"}"
        ),
        Some(1.0)
    );
}
