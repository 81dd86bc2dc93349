// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter stats`: the numbers `/metrics` serves, from the running daemon through
//! its admin socket, for admins without Prometheus.

use super::{Outcome, load_config};
use crate::control::{self, Request, Response};
use crate::text;
use anyhow::anyhow;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// `stats`: the metrics grouped by name; series at 0 and histogram buckets only with
/// `all`; the raw Prometheus text with `raw`.
pub fn stats(path: &Path, all: bool, raw: bool) -> Outcome {
    let config = load_config(path)?;
    match control::request(&config.admin_socket, &Request::Stats)? {
        Response::Stats { text } if raw => {
            print!("{}", text::neutralize_lines(&text));
            Ok(ExitCode::SUCCESS)
        }
        Response::Stats { text } => {
            print!("{}", stats_text(&text, all));
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => Err(anyhow!(
            "the daemon refused: {}",
            text::neutralize(&message)
        )),
        other => Err(anyhow!("unexpected answer from the daemon: {other:?}")),
    }
}

/// The Prometheus text `exposition` for a terminal: each metric's help, then its
/// series as `labels  value`, timestamps also as UTC times. Without `all`, labelled
/// series at 0, counters at 0 and histogram buckets are left out (a gauge without
/// labels always shows: a 0 there says something, such as a failed reload), and so is
/// a metric with nothing left to show.
pub fn stats_text(exposition: &str, all: bool) -> String {
    let mut out = String::new();
    let mut help = String::new();
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut gauge = false;
    let flush = |help: &str, rows: &mut Vec<(String, String)>, out: &mut String| {
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(out, "{help}");
        let width = rows
            .iter()
            .map(|(s, _)| s.chars().count())
            .max()
            .unwrap_or(0);
        for (series, value) in rows.drain(..) {
            let _ = writeln!(out, "  {series:<width$}  {value}");
        }
    };
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush(&help, &mut rows, &mut out);
            let (name, what) = rest.split_once(' ').unwrap_or((rest, ""));
            help = format!("{}: {}", text::neutralize(name), text::neutralize(what));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            gauge = rest.ends_with(" gauge");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let bucket = series.contains("_bucket{") || series.ends_with("_bucket");
        let number = value.parse::<f64>().ok();
        let zero = number.is_some_and(|v| v == 0.0);
        let labelled = series.contains('{');
        if !all && (bucket || (zero && (labelled || !gauge))) {
            continue;
        }
        let mut shown = text::neutralize(value).into_owned();
        let name = series.split('{').next().unwrap_or(series);
        if name.ends_with("_timestamp_seconds")
            && let Some(secs) = number.filter(|v| *v >= 1.0)
        {
            shown.push_str(&format!("  ({})", text::utc_seconds(secs as u64)));
        }
        rows.push((text::neutralize(series).into_owned(), shown));
    }
    flush(&help, &mut rows, &mut out);
    if out.is_empty() {
        out.push_str("nothing counted yet (fanout-milter stats --all shows every series)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP fanout_decisions_total Messages decided.\n\
        # TYPE fanout_decisions_total counter\n\
        fanout_decisions_total{verdict=\"accept\",rule=\"none\"} 3\n\
        fanout_decisions_total{verdict=\"reject\",rule=\"limits.envelope\"} 0\n\
        # HELP fanout_held_messages Messages held now.\n\
        # TYPE fanout_held_messages gauge\n\
        fanout_held_messages{rule=\"hidden\"} 0\n\
        # HELP fanout_decision_duration_seconds Time.\n\
        # TYPE fanout_decision_duration_seconds histogram\n\
        fanout_decision_duration_seconds_sum 0.25\n\
        fanout_decision_duration_seconds_count 3\n\
        fanout_decision_duration_seconds_bucket{le=\"0.001\"} 2\n";

    #[test]
    fn stats_show_what_was_counted_and_all_shows_the_rest() {
        let short = stats_text(SCRAPE, false);
        assert!(
            short.contains("fanout_decisions_total: Messages decided."),
            "{short}"
        );
        assert!(
            short.contains("fanout_decisions_total{verdict=\"accept\",rule=\"none\"}  3"),
            "{short}"
        );
        assert!(!short.contains("limits.envelope"), "{short}");
        assert!(!short.contains("fanout_held_messages"), "{short}");
        assert!(
            short.contains("fanout_decision_duration_seconds_count"),
            "{short}"
        );
        assert!(!short.contains("_bucket"), "{short}");
        let long = stats_text(SCRAPE, true);
        assert!(long.contains("limits.envelope\"}  0"), "{long}");
        assert!(
            long.contains("fanout_held_messages{rule=\"hidden\"}  0"),
            "{long}"
        );
        assert!(long.contains("_bucket{le=\"0.001\"}"), "{long}");
        assert!(stats_text("", false).starts_with("nothing counted yet"));
        let alarm = "# HELP fanout_config_last_reload_successful Reload.\n\
            # TYPE fanout_config_last_reload_successful gauge\n\
            fanout_config_last_reload_successful 0\n\
            # HELP fanout_config_last_reload_success_timestamp_seconds When.\n\
            # TYPE fanout_config_last_reload_success_timestamp_seconds gauge\n\
            fanout_config_last_reload_success_timestamp_seconds 1796157935\n\
            # HELP fanout_milter_connections_total Connections.\n\
            # TYPE fanout_milter_connections_total counter\n\
            fanout_milter_connections_total 0\n";
        let short = stats_text(alarm, false);
        assert!(
            short.contains("fanout_config_last_reload_successful  0"),
            "{short}"
        );
        assert!(
            short.contains("1796157935  (2026-12-01T"),
            "a timestamp also as a time: {short}"
        );
        assert!(!short.contains("connections_total"), "{short}");
    }

    #[test]
    fn label_values_cannot_write_to_the_terminal() {
        let text = stats_text(
            "fanout_directory_entries{source=\"a\u{1b}[2J\u{202e}\"} 5\n",
            false,
        );
        assert!(!text.contains(['\u{1b}', '\u{202e}']), "{text}");
    }
}
