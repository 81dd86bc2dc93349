// SPDX-License-Identifier: GPL-3.0-or-later
//! LDAP snapshot benchmark: a private slapd loaded with the test fixture at 20,000 and
//! 200,000 people (each in all-staff, plus the other fixture groups). For each size, in
//! a fresh process so memory figures are its own: the refresh (connect, bind, paged
//! searches, dynamic lists, local join), the directory build, resident memory, the
//! snapshot file, and the decision for a message to the largest list. Prints one JSON
//! object.
//!
//! Run with `cargo bench --bench ldap` (scripts/bench does); `cargo test` runs it
//! quickly at 200 people.

#[path = "../tests/common/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../tests/common/slapd.rs"]
#[allow(dead_code)]
mod slapd;

#[path = "support/proc_status.rs"]
mod proc_status;

use fanout_milter::config;
use fanout_milter::directory::ldap::{self as source, Snapshots};
use fanout_milter::directory::{Directory, DriftMode};
use fanout_milter::policy::{self, MessageFacts};
use process::*;
use slapd::Slapd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE_VAR: &str = "FANOUT_LDAP_BENCH_PEOPLE";

fn kib(field: &str) -> u64 {
    proc_status::status_kib("self", field)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Ok(n) = std::env::var(SIZE_VAR) {
        one_size(
            n.parse().expect("people"),
            args.iter().all(|a| a != "--bench"),
        );
        return;
    }
    let quick = args.iter().all(|a| a != "--bench");
    let sizes: &[usize] = if quick { &[200] } else { &[20_000, 200_000] };
    let mut rows = Vec::new();
    for &n in sizes {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(&args[1..])
            .env(SIZE_VAR, n.to_string())
            .output()
            .expect("run one size");
        assert!(
            out.status.success(),
            "size {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        rows.push(
            text.lines()
                .find(|l| l.starts_with('{'))
                .expect("a JSON line")
                .to_owned(),
        );
    }
    println!(
        "{{\"ldap\": {{\"quick\": {quick}, \"sizes\": [{}]}}}}",
        rows.join(", ")
    );
}

fn one_size(people: usize, quick: bool) {
    slapd::require_slapd();
    let dir = scratch_dir("bench-ldap");
    let ldif = slapd::fixture_ldif(people);
    let started = Instant::now();
    let server = Slapd::start(dir.path(), &ldif);
    let slapd_load_ms = started.elapsed().as_millis();
    drop(ldif);
    let config_path = dir.path().join("fanout-milter.toml");
    std::fs::write(
        &config_path,
        slapd::ldap_config(dir.path(), &server.url(), "timeout = \"120s\""),
    )
    .expect("config");
    let config = config::load(&config_path).expect("config");
    let settings = config.directories[0].ldap.clone().expect("ldap");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rss_start = kib("VmRSS:");
    let started = Instant::now();
    let snap = rt
        .block_on(source::refresh(&settings, Duration::from_secs(600)))
        .expect("refresh");
    let refresh_ms = started.elapsed().as_millis();
    let rss_snapshot = kib("VmRSS:");
    let started = Instant::now();
    source::save(&config.state_dir, &snap).expect("save");
    let save_ms = started.elapsed().as_millis();
    let file_kib = std::fs::metadata(source::snapshot_path(&config.state_dir, &settings.name))
        .map(|m| m.len() / 1024)
        .unwrap_or(0);
    let (searches, entries, lists) = (snap.searches, snap.stats.entries, snap.stats.lists);
    let mut snapshots = Snapshots::default();
    snapshots
        .by_source
        .insert(snap.source.clone(), Arc::new(snap));
    let started = Instant::now();
    let directory = Directory::load(&config, DriftMode::ReadOnly, &snapshots).expect("directory");
    let build_ms = started.elapsed().as_millis();
    let rss_directory = kib("VmRSS:");
    let peak = kib("VmHWM:");

    let mut facts = MessageFacts {
        sender: slapd::person_mail(1),
        ..Default::default()
    };
    facts.recipients.add(&slapd::group_mail("all-staff"));
    facts.headers.visible.add(&slapd::group_mail("all-staff"));
    let mut times = Vec::new();
    let mut audience = 0;
    for _ in 0..if quick { 5 } else { 500 } {
        let t = Instant::now();
        let mut f = facts.clone();
        f.audience = directory.audience_facts(f.recipients.iter());
        let e = policy::evaluate(&config.policy, &f, &Default::default());
        times.push(t.elapsed().as_secs_f64() * 1e6);
        audience = e.counts.audience;
        let expected = if people >= 1000 {
            policy::Action::Quarantine
        } else {
            policy::Action::Accept
        };
        assert_eq!(e.verdict.action, expected, "held from 1,000 on");
    }
    assert_eq!(audience, people, "all-staff reaches everyone");
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"people\": {people}, \"entries\": {entries}, \"lists\": {lists}, \"searches\": {searches}, \
         \"slapd_load_ms\": {slapd_load_ms}, \"refresh_ms\": {refresh_ms}, \"build_ms\": {build_ms}, \
         \"save_ms\": {save_ms}, \"snapshot_file_kib\": {file_kib}, \"rss_start_kib\": {rss_start}, \
         \"rss_snapshot_kib\": {rss_snapshot}, \"rss_directory_kib\": {rss_directory}, \
         \"rss_peak_kib\": {peak}, \"verdict_median_us\": {:.1}, \"verdict_p99_us\": {:.1}}}",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
    );
    drop(server);
}
