// SPDX-License-Identifier: GPL-3.0-or-later
//! The shipped Prometheus alert rules (`conf/prometheus-alerts.yml`): `promtool check
//! rules` accepts them, `promtool test rules tests/prometheus/alerts-test.yml` passes
//! (each alert fires when it should and stays quiet on a healthy relay), every alert has
//! a severity, a summary and a description, and every metric name they use is one of
//! the metric contract's, so renaming a metric breaks this test before it silently
//! breaks someone's pager. The README's "Monitoring" lists exactly the contract's
//! metrics and the shipped alerts.
//!
//! Needs `promtool` (Debian's `prometheus` package; `FANOUT_PROMTOOL` names another
//! binary). `scripts/test` installs it and sets `FANOUT_REQUIRE_PROMTOOL=1`, without
//! which the promtool tests are skipped, with their reason, when it is absent.

mod common;

use common::ChildGuard;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one promtool run may take.
const PROMTOOL_DEADLINE: Duration = Duration::from_secs(60);

/// The rules, relative to the repository.
const RULES: &str = "conf/prometheus-alerts.yml";

/// Their unit tests, relative to the repository.
const RULE_TESTS: &str = "tests/prometheus/alerts-test.yml";

/// Every metric name of the contract (`fanout_` prefix, as scraped: counters with
/// `_total`). Histograms are listed by their base name.
const CONTRACT: [&str; 31] = [
    "fanout_decisions_total",
    "fanout_tempfails_total",
    "fanout_message_envelope_recipients",
    "fanout_message_audience_recipients",
    "fanout_decision_duration_seconds",
    "fanout_milter_connections_active",
    "fanout_milter_connections_total",
    "fanout_milter_protocol_errors_total",
    "fanout_held_messages",
    "fanout_held_oldest_timestamp_seconds",
    "fanout_held_overdue_messages",
    "fanout_held_overdue_oldest_timestamp_seconds",
    "fanout_review_actions_total",
    "fanout_review_action_failures_total",
    "fanout_storms_active",
    "fanout_storms_tripped_total",
    "fanout_brake_engaged",
    "fanout_breaker_open",
    "fanout_state_backend_errors_total",
    "fanout_state_failover_active",
    "fanout_state_backend_request_duration_seconds",
    "fanout_directory_last_refresh_success_timestamp_seconds",
    "fanout_directory_refresh_interval_seconds",
    "fanout_directory_entries",
    "fanout_directory_lists",
    "fanout_directory_unknown_members",
    "fanout_directory_refresh_duration_seconds",
    "fanout_directory_refresh_failures_total",
    "fanout_config_last_reload_successful",
    "fanout_config_last_reload_success_timestamp_seconds",
    "fanout_build_info",
];

/// The histograms of the contract: their `_bucket`, `_count` and `_sum` series exist.
const HISTOGRAMS: [&str; 5] = [
    "fanout_message_envelope_recipients",
    "fanout_message_audience_recipients",
    "fanout_decision_duration_seconds",
    "fanout_state_backend_request_duration_seconds",
    "fanout_directory_refresh_duration_seconds",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// Every `fanout_[a-z_]+` token of `text` that starts a word.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("fanout_").map(|i| from + i) {
        let mut end = at + "fanout_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let starts_word =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_word {
            found.insert(text[at..end].to_string());
        }
        from = end;
    }
    found
}

/// The name as the contract lists it: a histogram's series by its base name.
fn contract_name(token: &str) -> &str {
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = token.strip_suffix(suffix)
            && HISTOGRAMS.contains(&base)
        {
            return base;
        }
    }
    token
}

/// The tokens of `text` that name no metric of the contract.
fn unknown_metrics(text: &str) -> Vec<String> {
    metric_tokens(text)
        .into_iter()
        .filter(|t| {
            let name = contract_name(t);
            !CONTRACT.contains(&name)
        })
        .collect()
}

/// The alert names in the rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn the_scanner_finds_names_and_flags_unknown_ones() {
    let text = "expr: rate(fanout_decision_duration_seconds_bucket[5m]) \
                and fanout_held_messages > 0 or xfanout_not_a_name\n\
                fanout-milter fanout_decisions_total fanout_held_mesages";
    let tokens = metric_tokens(text);
    assert_eq!(
        tokens.into_iter().collect::<Vec<_>>(),
        [
            "fanout_decision_duration_seconds_bucket",
            "fanout_decisions_total",
            "fanout_held_mesages",
            "fanout_held_messages",
        ]
    );
    assert_eq!(unknown_metrics(text), ["fanout_held_mesages"]);
    assert_eq!(
        unknown_metrics("fanout_decisions_total_bucket fanout_build_info_sum"),
        ["fanout_build_info_sum", "fanout_decisions_total_bucket"],
        "only a histogram has _bucket, _count and _sum series"
    );
}

#[test]
fn the_contract_list_is_consistent() {
    let names: BTreeSet<&str> = CONTRACT.iter().copied().collect();
    assert_eq!(names.len(), CONTRACT.len(), "no name twice");
    for h in HISTOGRAMS {
        assert!(names.contains(h), "histogram {h} is in the contract");
    }
    for name in CONTRACT {
        assert!(name.starts_with("fanout_"), "{name} has the prefix");
        assert_eq!(metric_tokens(name).into_iter().collect::<Vec<_>>(), [name]);
    }
}

#[test]
fn the_rules_use_only_contract_metrics() {
    let rules = read(RULES);
    let used = metric_tokens(&rules);
    // The names the issue says dashboards and pagers depend on are used.
    for needed in [
        "fanout_held_overdue_messages",
        "fanout_held_overdue_oldest_timestamp_seconds",
        "fanout_decisions_total",
        "fanout_decision_duration_seconds_bucket",
        "fanout_state_failover_active",
        "fanout_directory_last_refresh_success_timestamp_seconds",
        "fanout_config_last_reload_successful",
    ] {
        assert!(used.contains(needed), "{RULES} uses {needed}");
    }
    assert_eq!(
        unknown_metrics(&rules),
        Vec::<String>::new(),
        "{RULES} uses metric names that are not in the contract"
    );
    assert_eq!(
        unknown_metrics(&read(RULE_TESTS)),
        Vec::<String>::new(),
        "{RULE_TESTS} feeds series that are not in the contract"
    );
}

#[test]
fn every_alert_says_how_bad_and_what_to_do() {
    let rules = read(RULES);
    let names = alert_names(&rules);
    assert!(names.len() >= 12, "the alerts: {names:?}");
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "alert names are unique: {names:?}"
    );
    let mut blocks = rules.split("- alert:").skip(1);
    for name in &names {
        let block = blocks.next().expect("one block per alert");
        let severity = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .unwrap_or_else(|| panic!("{name} has a severity label"))
            .trim();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        for annotation in ["summary:", "description:"] {
            assert!(
                block.lines().any(|l| l.trim().starts_with(annotation)),
                "{name} has {annotation}"
            );
        }
    }
}

#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    for name in alert_names(&rules) {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{RULE_TESTS} has a case where {name} fires (block form, with exp_alerts)"
        );
        assert!(
            tests.contains(&format!("alertname: {name}, exp_alerts: []}}")),
            "{RULE_TESTS} has a case where {name} stays quiet"
        );
    }
}

/// The README's "Monitoring" section.
fn readme_monitoring() -> String {
    let readme = read("README.md");
    let start = readme
        .find("\n## Monitoring\n")
        .expect("the README has a \"Monitoring\" section");
    let section = &readme[start + 1..];
    section[..section[1..].find("\n## ").map_or(section.len(), |i| i + 1)].to_string()
}

/// The first cell of each table row of `text` that starts with `` | `PREFIX ``.
fn table_names(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("| `{prefix}")))
        .map(|rest| {
            format!(
                "{prefix}{}",
                &rest[..rest.find('`').expect("closing backquote")]
            )
        })
        .collect()
}

#[test]
fn the_readme_lists_the_contract_and_the_alerts() {
    let section = readme_monitoring();
    let mut listed = table_names(&section, "fanout_");
    listed.sort();
    let mut contract: Vec<String> = CONTRACT.iter().map(|n| n.to_string()).collect();
    contract.sort();
    assert_eq!(
        listed, contract,
        "the README's metric table is the contract"
    );
    let mut alerts = table_names(&section, "Fanout");
    alerts.sort();
    let mut shipped = alert_names(&read(RULES));
    shipped.sort();
    assert_eq!(
        alerts, shipped,
        "the README's alert table lists the shipped alerts"
    );
    for needed in [
        "credentials_file:",
        "rule_files:",
        "promtool test rules tests/prometheus/alerts-test.yml",
        "fanout-milter stats --all",
    ] {
        assert!(
            section.contains(needed),
            "the README's Monitoring shows {needed}"
        );
    }
}

/// The promtool to run: `FANOUT_PROMTOOL`, else `promtool` on `PATH`.
fn promtool() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FANOUT_PROMTOOL") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("FANOUT_PROMTOOL={} is not a file", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .ok_or_else(|| "promtool is not installed (Debian package prometheus)".to_string())
}

/// Runs promtool with `args` in the repository, for at most [`PROMTOOL_DEADLINE`]; its
/// success and its output (stdout and stderr).
fn run_promtool(promtool: &Path, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("promtool.log");
    let out = std::fs::File::create(&log).expect("promtool log");
    let mut child = ChildGuard(Some(
        Command::new(promtool)
            .args(args)
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", promtool.display())),
    ));
    let start = Instant::now();
    let status = loop {
        let c = child.0.as_mut().expect("promtool still owned");
        if let Some(status) = c.try_wait().expect("try_wait") {
            child.0 = None;
            break Some(status);
        }
        if start.elapsed() > PROMTOOL_DEADLINE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => (
            false,
            format!("{text}\n(killed after {PROMTOOL_DEADLINE:?})"),
        ),
    }
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    let promtool = match promtool() {
        Ok(found) => found,
        Err(why) if std::env::var("FANOUT_REQUIRE_PROMTOOL").as_deref() == Ok("1") => {
            panic!("the alert rule tests cannot run: {why}; scripts/test installs it")
        }
        Err(why) => {
            eprintln!("skipped: the alert rule tests cannot run: {why} (scripts/test installs it)");
            return;
        }
    };
    let (ok, output) = run_promtool(&promtool, &["check", "rules", RULES]);
    assert!(ok, "promtool check rules {RULES} failed:\n{output}");
    let rules = alert_names(&read(RULES)).len();
    assert!(
        output.contains(&format!("SUCCESS: {rules} rules found")),
        "promtool found all {rules} rules:\n{output}"
    );
    let (ok, output) = run_promtool(&promtool, &["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules {RULE_TESTS} failed:\n{output}");
    assert!(output.contains("SUCCESS"), "promtool test rules:\n{output}");
}
