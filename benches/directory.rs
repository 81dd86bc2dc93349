// SPDX-License-Identifier: GPL-3.0-or-later
//! Directory benchmark: a virtual(5) file of 1,000,000 entries over 5,000 lists, one of
//! 840,000 members. Measures load time, resident memory and the evaluation of a
//! message to the largest list. Prints one JSON object.
//!
//! Run with `cargo bench --bench directory` (scripts/bench does).

#[path = "support/proc_status.rs"]
mod proc_status;

use fanout_milter::config;
use fanout_milter::directory::{Directory, DriftMode};
use fanout_milter::policy::{self, MessageFacts};
use std::fmt::Write as _;
use std::time::Instant;

const BIG: usize = 840_000;
const LISTS: usize = 5_000;
const ENTRIES: usize = 1_000_000;

fn rss_kib(field: &str) -> u64 {
    proc_status::status_kib("self", field)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::args().all(|a| a != "--bench");
    let scale = if quick { 100 } else { 1 };
    let dir = std::env::temp_dir().join(format!("fanout-bench-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let virtual_path = dir.join("virtual");
    let mut text = String::with_capacity(ENTRIES / scale * 30);
    text.push_str("all-staff@nhs.example u0@nhs.example");
    for i in 1..BIG / scale {
        let _ = write!(text, ",\n  u{i}@nhs.example");
    }
    text.push('\n');
    let per_list = (ENTRIES - BIG) / (LISTS - 1);
    let mut next = BIG / scale;
    for l in 1..LISTS {
        let _ = write!(text, "list{l}@nhs.example");
        for _ in 0..per_list / scale.min(per_list) {
            let _ = write!(text, " u{next}@trust{}.example", l % 200);
            next += 1;
        }
        text.push('\n');
    }
    std::fs::write(&virtual_path, &text).expect("write virtual");
    let config_path = dir.join("fanout-milter.toml");
    std::fs::write(
        &config_path,
        format!(
            "[domains]\ninternal = [\"nhs.example\"]\n[limits.external]\nquarantine = 0\n\
             [drift]\nmin_audience = 0\n[[directory]]\ntype = \"postfix-virtual\"\npath = \"{}\"\n",
            virtual_path.display()
        ),
    )
    .expect("write config");
    let config = config::load(&config_path).expect("config");
    let file_mib = text.len() as f64 / (1 << 20) as f64;
    drop(text);

    let rss_before = rss_kib("VmRSS:");
    let started = Instant::now();
    let directory =
        Directory::load(&config, DriftMode::ReadOnly, &Default::default()).expect("load");
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_after = rss_kib("VmRSS:");
    let hwm = rss_kib("VmHWM:");

    let mut facts = MessageFacts {
        sender: "ann@nhs.example".into(),
        ..Default::default()
    };
    facts.recipients.add("all-staff@nhs.example");
    facts.recipients.add("list7@nhs.example");
    facts.headers.visible.add("all-staff@nhs.example");
    let mut times = Vec::new();
    let mut audience = 0;
    for _ in 0..if quick { 5 } else { 200 } {
        let t = Instant::now();
        let mut f = facts.clone();
        f.audience = directory.audience_facts(f.recipients.iter());
        let e = policy::evaluate(&config.policy, &f, &Default::default());
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        audience = e.counts.audience;
        // Quick mode scales the big list down to 8,400 members: past the default
        // quarantine level but not the reject level.
        let expected = if quick {
            policy::Action::Quarantine
        } else {
            policy::Action::Reject
        };
        assert_eq!(e.verdict.action, expected);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{{\"directory\": {{\"entries\": {}, \"lists\": {}, \"largest\": {}, \"file_mib\": {file_mib:.1}, \
         \"load_ms\": {load_ms:.0}, \"rss_before_kib\": {rss_before}, \"rss_after_kib\": {rss_after}, \
         \"rss_peak_kib\": {hwm}, \"eval_median_ms\": {median:.3}, \"audience\": {audience}, \"quick\": {quick}}}}}",
        directory.index.stats.edges,
        directory.index.stats.lists,
        BIG / scale
    );
    std::fs::remove_dir_all(&dir).ok();
}
