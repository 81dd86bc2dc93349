// SPDX-License-Identifier: GPL-3.0-or-later
//! LDAP snapshot benchmark at national scale: a private slapd loaded (LDIF streamed into
//! `slapadd`) with the fixture of `support/ldap_national.rs`, by default 150,000 people
//! and 10,000 lists, with `FANOUT_BENCH_LDAP_PEOPLE=1500000` 1.5 million people and
//! 100,000 lists (an all-staff list of 840,000). Measured in one run:
//!
//! * a plain `ldapsearch` of the refresh's main search (same filter, attributes and
//!   page size, output to /dev/null), before and after the refresh;
//! * in a fresh child process (so its memory figures are its own), the daemon's
//!   refresh code: `refresh` (connect, bind, paged searches, dynamic lists, local join),
//!   `save`, and the directory load that swaps the snapshot in; its peak RSS (VmHWM),
//!   the RSS of the live snapshot + index per directory entry, and the verdict time
//!   of a message to all-staff.
//!
//! Prints one JSON object. Run with `cargo bench --bench ldap` (scripts/bench does;
//! `scripts/bench --ldap-national` at 1.5 million); `cargo test` runs it quickly at 1,500
//! people.

#[path = "../tests/common/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../tests/common/slapd.rs"]
#[allow(dead_code)]
mod slapd;

#[path = "support/ldap_national.rs"]
mod ldap_national;
#[path = "support/proc_status.rs"]
mod proc_status;

use fanout_milter::config;
use fanout_milter::directory::ldap::{self as source, Snapshots};
use fanout_milter::directory::{Directory, DriftMode};
use fanout_milter::policy::{self, MessageFacts};
use ldap_national::Shape;
use process::*;
use slapd::Slapd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE_VAR: &str = "FANOUT_BENCH_LDAP_PEOPLE";
const CHILD: &str = "--refresh-child";

fn kib(field: &str) -> u64 {
    proc_status::status_kib("self", field)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().all(|a| a != "--bench");
    let people: usize = match std::env::var(SIZE_VAR) {
        Ok(n) => n.parse().expect("people"),
        Err(_) if quick => 1_500,
        Err(_) => 150_000,
    };
    if let Some(i) = args.iter().position(|a| a == CHILD) {
        refresh_child(&args[i + 1], people, quick);
        return;
    }
    let shape = Shape::of(people);
    slapd::require_slapd();
    let dir = scratch_dir("bench-ldap");
    let started = Instant::now();
    let server = Slapd::start_streamed(dir.path(), slapd::DEFAULT_LIMITS, &mut |w| {
        ldap_national::write(shape, w)
    });
    let slapd_load_ms = started.elapsed().as_millis();
    let config_path = dir.path().join("fanout-milter.toml");
    std::fs::write(
        &config_path,
        slapd::ldap_config(dir.path(), &server.url(), "timeout = \"600s\""),
    )
    .expect("config");
    let settings = config::load(&config_path).expect("config").directories[0]
        .ldap
        .clone()
        .expect("ldap");
    let (filter, attrs) = source::snapshot_search(&settings);
    let ldapsearch = || {
        let started = Instant::now();
        let status = Command::new("ldapsearch")
            .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &server.url()])
            .args(["-D", slapd::BIND_DN, "-w", slapd::BIND_PASSWORD])
            .args(["-b", &settings.base_dns[0]])
            .args(["-E", &format!("pr={}/noprompt", settings.page_size)])
            .arg(&filter)
            .args(&attrs)
            .stdout(Stdio::null())
            .status()
            .expect("run ldapsearch");
        assert!(status.success(), "ldapsearch: {status}");
        started.elapsed().as_millis()
    };
    let ldapsearch_before_ms = ldapsearch();
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(&args[1..])
        .arg(CHILD)
        .arg(&config_path)
        .env(SIZE_VAR, people.to_string())
        .output()
        .expect("run the refresh");
    assert!(
        out.status.success(),
        "refresh child: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ldapsearch_after_ms = ldapsearch();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line from the child");
    let refresh_ms: f64 = row
        .split("\"refresh_ms\": ")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.parse().ok())
        .expect("refresh_ms");
    let ldapsearch_ms = ldapsearch_before_ms.min(ldapsearch_after_ms);
    println!(
        "{{\"ldap\": {{\"quick\": {quick}, \"sizes\": [{{{}, \"slapd_load_ms\": {slapd_load_ms}, \
         \"ldapsearch_before_ms\": {ldapsearch_before_ms}, \"ldapsearch_after_ms\": {ldapsearch_after_ms}, \
         \"refresh_to_ldapsearch\": {:.2}}}]}}}}",
        row.trim().trim_start_matches('{').trim_end_matches('}'),
        refresh_ms / ldapsearch_ms.max(1) as f64,
    );
    drop(server);
}

/// The daemon's refresh, alone in this process: refresh, save, directory load; then
/// the live snapshot + index and the verdict for all-staff.
fn refresh_child(config_path: &str, people: usize, quick: bool) {
    let shape = Shape::of(people);
    let config = config::load(std::path::Path::new(config_path)).expect("config");
    let settings = config.directories[0].ldap.clone().expect("ldap");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rss_start = kib("VmRSS:");
    let started = Instant::now();
    let snap = rt
        .block_on(source::refresh(&settings, Duration::from_secs(3600)))
        .expect("refresh");
    let refresh_ms = started.elapsed().as_millis();
    let rss_snapshot = kib("VmRSS:");
    let peak_refresh = kib("VmHWM:");
    let started = Instant::now();
    source::save(&config.state_dir, &snap).expect("save");
    let save_ms = started.elapsed().as_millis();
    let file_kib = std::fs::metadata(source::snapshot_path(&config.state_dir, &settings.name))
        .map(|m| m.len() / 1024)
        .unwrap_or(0);
    let (searches, entries, lists) = (snap.searches, snap.stats.entries, snap.stats.lists);
    assert_eq!(lists, shape.lists() as u64, "every list read");
    let mut snapshots = Snapshots::default();
    snapshots
        .by_source
        .insert(snap.source.clone(), Arc::new(snap));
    let started = Instant::now();
    let directory = Directory::load(&config, DriftMode::ReadOnly, &snapshots).expect("directory");
    let build_ms = started.elapsed().as_millis();
    let rss_live = kib("VmRSS:");
    let peak = kib("VmHWM:");

    let all_staff = "all-staff@example.org";
    let mut facts = MessageFacts {
        sender: "u00001@example.org".into(),
        ..Default::default()
    };
    facts.recipients.add(all_staff);
    facts.headers.visible.add(all_staff);
    let mut times = Vec::new();
    let mut audience = 0;
    for _ in 0..if quick { 5 } else { 1000 } {
        let t = Instant::now();
        let mut f = facts.clone();
        f.audience = directory.audience_facts(f.recipients.iter());
        let e = policy::evaluate(&config.policy, &f, &Default::default());
        times.push(t.elapsed().as_secs_f64() * 1e6);
        audience = e.counts.audience;
        let expected = if shape.all_staff >= 1000 {
            policy::Action::Quarantine
        } else {
            policy::Action::Accept
        };
        assert_eq!(e.verdict.action, expected, "held from 1,000 on");
    }
    assert_eq!(audience, shape.all_staff, "all-staff reaches its members");
    let dept0 = directory
        .audience_facts(["dyn-0000@example.org"])
        .expect("dyn-0000")
        .total;
    assert_eq!(dept0, shape.department(0) as u64, "a dynamic list");
    times.sort_by(|a, b| a.total_cmp(b));
    let live_bytes_per_entry = (rss_live.saturating_sub(rss_start) * 1024) / entries.max(1);
    println!(
        "{{\"people\": {people}, \"entries\": {entries}, \"lists\": {lists}, \"all_staff\": {}, \
         \"searches\": {searches}, \"refresh_ms\": {refresh_ms}, \"build_ms\": {build_ms}, \
         \"save_ms\": {save_ms}, \"snapshot_file_kib\": {file_kib}, \"rss_start_kib\": {rss_start}, \
         \"rss_snapshot_kib\": {rss_snapshot}, \"rss_peak_refresh_kib\": {peak_refresh}, \
         \"rss_directory_kib\": {rss_live}, \"rss_peak_kib\": {peak}, \
         \"live_bytes_per_entry\": {live_bytes_per_entry}, \"peak_bytes_per_entry\": {}, \
         \"verdict_median_us\": {:.1}, \"verdict_p99_us\": {:.1}}}",
        shape.all_staff,
        peak * 1024 / entries.max(1),
        times[times.len() / 2],
        times[times.len() * 99 / 100],
    );
}
