// SPDX-License-Identifier: GPL-3.0-or-later
//! Fault-injection soak (not part of CI: ignored; `scripts/soak` runs it). Concurrent
//! SMTP sessions send a mix of mail through a private Postfix and the real daemon
//! (small mail, mail to lists from a virtual table and from a private slapd, mail that
//! is held, refused, and reply-all storms with their state in Redis) while a schedule
//! of faults runs: the milter killed with SIGKILL and restarted three times, reloads
//! with a good and a broken configuration, Redis killed and restarted, slapd stopped
//! in the middle of LDAP refreshes, the state directory's file system (a small tmpfs)
//! filled and freed. Clients behave like an MTA: a 4xx is retried with backoff. At the
//! end the books must balance, from Postfix's log, the sink, the hold queue and the
//! quarantine store: every message sent is delivered (once, to each recipient), held
//! with a record, or refused with a reply.
//!
//! `FANOUT_SOAK_MINUTES` (default 10) and `FANOUT_SOAK_SESSIONS` (default 20) size it.

mod common;

use common::slapd::*;
use common::*;
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// People in the LDAP fixture: its all-staff group (this many) is held.
const PEOPLE: usize = 300;
/// Members of the virtual lists: accepted, held, refused.
const TEAM: usize = 12;
const DEPT: usize = 150;
const EVERYONE: usize = 700;
/// Audience levels: held from 100, refused from 500.
const QUARANTINE_AT: usize = 100;
const REJECT_AT: usize = 500;
/// Recipients of a reply-all in a storm thread, and replies per thread (the storm
/// trips at the third, the rest are refused).
const STORM_AUDIENCE: usize = 8;
const REPLIES_PER_THREAD: usize = 6;
/// An MTA's retries: at most this many attempts, 2 s doubling to 30 s apart (about
/// 3.5 minutes in all), so a message tempfailed during the last fault is retried well
/// after it.
const MAX_ATTEMPTS: usize = 10;
/// How long a client waits for one SMTP reply: longer than Postfix's own milter
/// timeouts together, so a client never gives up on a transaction Postfix may still
/// accept (which would make a retry a duplicate).
const SMTP_TIMEOUT: Duration = Duration::from_secs(240);
/// The state directory's file system.
const STATE_FS_SIZE: &str = "32m";
/// Bound of the daemon's peak resident memory (VmHWM) in any life. The benchmarks
/// measured 27 MiB after a refresh of a 20,000-person directory; here the directory
/// is 300 people and a 700-line virtual table, 20 sessions are in flight and the store
/// holds a few thousand records, so anything near 128 MiB would be a leak.
const RSS_BOUND_KIB: u64 = 128 * 1024;
/// Bounds of the phases after the sending stops.
const DRAIN_DEADLINE: Duration = Duration::from_secs(420);
const QUIET_DEADLINE: Duration = Duration::from_secs(300);

/// What a message is meant to test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// One to three ordinary recipients: delivered.
    Small,
    /// The 12-member list of the virtual table: delivered.
    ListVirtual,
    /// small-10 or team-a in LDAP: delivered.
    ListLdap,
    /// The 150-member list of the virtual table: held.
    HeldVirtual,
    /// all-staff in LDAP (300): held.
    HeldLdap,
    /// The 700-member list of the virtual table: refused.
    Refused,
    /// A reply-all in a storm thread: delivered until the storm trips, then refused.
    Storm,
}

impl Kind {
    fn pick(r: u64) -> Kind {
        match r % 100 {
            0..30 => Kind::Small,
            30..42 => Kind::ListVirtual,
            42..54 => Kind::ListLdap,
            54..62 => Kind::HeldVirtual,
            62..70 => Kind::HeldLdap,
            70..78 => Kind::Refused,
            _ => Kind::Storm,
        }
    }

    /// May a message of this kind be delivered? (A held or refused one delivered is
    /// a leak: a fault must never open the gate.)
    fn may_deliver(self) -> bool {
        !matches!(self, Kind::HeldVirtual | Kind::HeldLdap | Kind::Refused)
    }
}

/// One try at sending a message, and what came back.
#[derive(Clone, Debug)]
struct Attempt {
    /// Seconds since the soak started.
    at: f64,
    /// The reply code; 0 when there was no reply (connection refused or dropped).
    code: u16,
    text: String,
}

/// How a message ended, for its client.
#[derive(Clone, Debug)]
enum Outcome {
    /// 250 to the end of DATA.
    Accepted(String),
    /// A 5xx.
    Refused(u16, String),
    /// 4xx (or no reply) on every attempt.
    GaveUp(u16, String),
}

/// A message sent, with its token (Subject and Message-ID).
#[derive(Clone, Debug)]
struct Sent {
    token: String,
    kind: Kind,
    from: String,
    rcpts: Vec<String>,
    body: Vec<u8>,
    attempts: Vec<Attempt>,
    outcome: Option<Outcome>,
}

/// What the sessions share.
struct Ctx {
    port: u16,
    start: Instant,
    send_until: Instant,
    abort: AtomicBool,
    storm_replies: AtomicUsize,
}

/// Stops the sessions and the sampler when the test ends, also when it fails.
struct AbortOnDrop(Arc<Ctx>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort.store(true, Ordering::SeqCst);
    }
}

/// xorshift64*: the sessions' choices, reproducible per session.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The state directory on its own small tmpfs; unmounted when dropped (the daemon is
/// stopped before: it is declared after this guard).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("state dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("fanout-soak")
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Fills the file system with one file; returns its path and size.
    fn fill(&self) -> (PathBuf, u64) {
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = f.flush();
        (path, written)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// One life of the daemon (between a start and a kill).
#[derive(Clone, Debug)]
struct Life {
    pid: i32,
    started: f64,
    peak_kib: u64,
    last_rss_kib: u64,
}

/// Reads VmHWM and VmRSS (KiB) of `pid`.
fn memory_of(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Samples the current daemon's memory into its life.
fn sample(lives: &Mutex<Vec<Life>>, pid: i32) {
    if let Some((hwm, rss)) = memory_of(pid) {
        let mut lives = lives.lock().expect("lives");
        if let Some(l) = lives.iter_mut().rev().find(|l| l.pid == pid) {
            l.peak_kib = l.peak_kib.max(hwm);
            l.last_rss_kib = rss;
        }
    }
}

fn token_of(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| w.starts_with("soak-"))
        .map(str::to_owned)
}

fn message_for(kind: Kind, token: &str, from: &str, rcpts: &[String], thread: &str) -> Vec<u8> {
    match kind {
        Kind::Storm => format!(
            "From: {from}\r\nTo: {to}\r\nSubject: Re: {token}\r\nMessage-ID: <{token}@corp.example>\r\n\
             In-Reply-To: <{thread}@corp.example>\r\nReferences: <{thread}@corp.example>\r\n\r\n\
             Me too.\r\nEND-OF-TEST-BODY\r\n",
            to = rcpts.join(", ")
        )
        .into_bytes(),
        _ => format!(
            "From: {from}\r\nTo: {to}\r\nSubject: {token}\r\nMessage-ID: <{token}@corp.example>\r\n\r\n\
             Hello.\r\nEND-OF-TEST-BODY\r\n",
            to = rcpts.join(", ")
        )
        .into_bytes(),
    }
}

/// A new message of a kind drawn by `rng`.
fn compose(ctx: &Ctx, rng: &mut Rng, session: usize, seq: usize) -> Sent {
    let kind = Kind::pick(rng.next());
    let token = format!("soak-s{session:02}-{seq:05}");
    let mut from = format!("sender{session}@corp.example");
    let mut thread = String::new();
    let rcpts: Vec<String> = match kind {
        Kind::Small => (0..1 + rng.next() % 3)
            .map(|i| format!("user{}@corp.example", (rng.next() % 50) * 3 + i))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect(),
        Kind::ListVirtual => vec!["team@corp.example".to_owned()],
        Kind::ListLdap => vec![if rng.next().is_multiple_of(2) {
            group_mail("small-10")
        } else {
            group_mail("team-a")
        }],
        Kind::HeldVirtual => vec!["dept@corp.example".to_owned()],
        Kind::HeldLdap => vec![group_mail("all-staff")],
        Kind::Refused => vec!["everyone@corp.example".to_owned()],
        Kind::Storm => {
            let n = ctx.storm_replies.fetch_add(1, Ordering::SeqCst);
            thread = format!("soak-thread-{}", n / REPLIES_PER_THREAD);
            from = format!("staff{}@corp.example", n % REPLIES_PER_THREAD);
            (0..STORM_AUDIENCE)
                .map(|i| format!("r{i}@corp.example"))
                .collect()
        }
    };
    let body = message_for(kind, &token, &from, &rcpts, &thread);
    Sent {
        token,
        kind,
        from,
        rcpts,
        body,
        attempts: Vec::new(),
        outcome: None,
    }
}

/// One SMTP attempt; sets the outcome when it is final, else returns when to retry.
fn attempt(ctx: &Ctx, m: &mut Sent) -> Option<Instant> {
    let r = smtp_send_within(ctx.port, &m.from, &m.rcpts, &m.body, SMTP_TIMEOUT);
    let at = ctx.start.elapsed().as_secs_f64();
    match r {
        Ok(text) => {
            m.outcome = Some(Outcome::Accepted(text));
            None
        }
        Err(e) if e.code >= 500 => {
            m.attempts.push(Attempt {
                at,
                code: e.code,
                text: e.text.clone(),
            });
            m.outcome = Some(Outcome::Refused(e.code, e.text));
            None
        }
        Err(e) => {
            m.attempts.push(Attempt {
                at,
                code: e.code,
                text: e.text.clone(),
            });
            let failures = m.attempts.len();
            if failures >= MAX_ATTEMPTS {
                m.outcome = Some(Outcome::GaveUp(e.code, e.text));
                return None;
            }
            let backoff = Duration::from_secs((1u64 << failures.min(5)).min(30));
            Some(Instant::now() + backoff)
        }
    }
}

/// One client: new mail until `send_until`, paced, with a queue of retries like an
/// MTA's; returns every message it sent (unfinished ones only when aborted).
fn session(ctx: Arc<Ctx>, s: usize) -> Vec<Sent> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((s as u64 + 1) * 0x1234_5678_9abc));
    let mut done = Vec::new();
    let mut pending: Vec<(Instant, Sent)> = Vec::new();
    let mut seq = 0;
    while !ctx.abort.load(Ordering::SeqCst) {
        let now = Instant::now();
        if let Some(i) = pending.iter().position(|(due, _)| *due <= now) {
            let (_, mut m) = pending.swap_remove(i);
            match attempt(&ctx, &mut m) {
                Some(due) => pending.push((due, m)),
                None => done.push(m),
            }
            continue;
        }
        if now < ctx.send_until {
            let mut m = compose(&ctx, &mut rng, s, seq);
            seq += 1;
            match attempt(&ctx, &mut m) {
                Some(due) => pending.push((due, m)),
                None => done.push(m),
            }
            // Pacing, like users: 0.2 to 1 s between messages of one session.
            std::thread::sleep(Duration::from_millis(200 + rng.next() % 800));
            continue;
        }
        let Some(next) = pending.iter().map(|(d, _)| *d).min() else {
            break;
        };
        std::thread::sleep(
            next.saturating_duration_since(now)
                .min(Duration::from_millis(500)),
        );
    }
    done.extend(pending.into_iter().map(|(_, m)| m));
    done
}

/// Runs the fanout-milter CLI with the soak's configuration.
fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run fanout-milter");
    assert!(
        out.status.success(),
        "fanout-milter {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config_text(dir: &Path, slapd_url: &str, redis: &str, contact: &str) -> String {
    let ldap = ldap_config(
        dir,
        slapd_url,
        "name = \"corp\"\nrefresh = \"5s\"\ntimeout = \"3s\"\nmax_staleness = \"1h\"\non_stale = \"use_stale\"",
    );
    // ldap_config gives [domains], [limits.audience], [hidden], the LDAP source and
    // [quarantine]; the soak sets its own levels and adds the rest.
    let ldap = ldap
        .replace(
            "internal = [\"example.org\"]",
            "internal = [\"example.org\", \"corp.example\"]",
        )
        .replace(
            "quarantine = 1000\nreject = 0",
            &format!("quarantine = {QUARANTINE_AT}\nreject = {REJECT_AT}\nnotify_sender = false"),
        );
    assert!(
        ldap.contains("corp.example") && ldap.contains("notify_sender"),
        "{ldap}"
    );
    format!(
        r#"{ldap}
[postfix]
config_directory = "{etc}"
recipient_delimiter = "+"
myorigin = "corp.example"

[[directory]]
type = "postfix-virtual"
path = "{virtual}"
domains = ["corp.example"]

[storm]
min_audience = 5
min_messages = 3
min_senders = 2
window = "10m"
block_for = "6h"

[reply]
contact = "{contact}"

[state]
backend = "redis"
url = "{redis}"
prefix = "soak:"
timeout = "2s"
on_failure = "tempfail"
"#,
        etc = dir.join("postfix/etc").display(),
        virtual = dir.join("virtual").display(),
    )
}

fn virtual_table() -> String {
    let mut t = String::new();
    for (list, n, prefix) in [
        ("team", TEAM, "t"),
        ("dept", DEPT, "d"),
        ("everyone", EVERYONE, "e"),
    ] {
        let members: Vec<String> = (0..n)
            .map(|i| format!("{prefix}{i}@corp.example"))
            .collect();
        let _ = writeln!(t, "{list}@corp.example {}", members.join(", "));
    }
    t
}

/// Occurrences of `needle` in the daemon's log.
fn count(milter: &Milter, needle: &str) -> usize {
    milter.log().matches(needle).count()
}

/// Waits (bounded) until `needle` occurs more often than `before` in the log.
fn wait_log(milter: &Milter, needle: &str, before: usize) {
    wait_for(&format!("{needle:?} in the daemon's log"), || {
        (count(milter, needle) > before).then_some(())
    });
}

fn secs(ctx: &Ctx) -> f64 {
    ctx.start.elapsed().as_secs_f64()
}

/// Sleeps until `fraction` of the run has passed (the schedule's pacing).
fn at(ctx: &Ctx, run: Duration, fraction: f64) {
    let when = ctx.start + run.mul_f64(fraction);
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

/// What the daemon and its neighbours went through.
#[derive(Default)]
struct Faults {
    kills: usize,
    reloads_ok: usize,
    reloads_failed: usize,
    redis_restarts: usize,
    slapd_hangs: usize,
    slapd_kills: usize,
    fs_fills: usize,
    /// The configurations in force: from when its SIGHUP was sent, from when the log
    /// confirmed it, and its `[reply] contact`.
    contacts: Vec<(f64, f64, String)>,
    log: Vec<String>,
}

impl Faults {
    fn note(&mut self, ctx: &Ctx, what: String) {
        let line = format!("[{:7.1}s] {what}", secs(ctx));
        eprintln!("soak: {line}");
        self.log.push(line);
    }
}

/// The books, per token and overall.
#[derive(Default, Debug)]
struct Books {
    sent: usize,
    accepted: usize,
    delivered: usize,
    held: usize,
    refused: usize,
    refused_storm: usize,
    retried: usize,
    retried_no_reply: usize,
    gave_up: usize,
    lost: usize,
    delivered_twice: usize,
    delivered_and_held: usize,
    held_twice: usize,
    missing_recipients: usize,
    refused_but_delivered: usize,
    leaked: usize,
    held_without_record: usize,
    records_without_hold: usize,
    unknown_in_hold_queue: usize,
    unfinished: usize,
    maillog_mismatch: usize,
    wrong_config: usize,
    contact_checked: usize,
    panics: usize,
    problems: Vec<String>,
}

impl Books {
    fn problem(&mut self, what: String) {
        if self.problems.len() < 40 {
            self.problems.push(what);
        }
    }
}

/// Postfix's log, read in order: for each token the queue files that were delivered
/// to the sink and those held (queue ids are reused over time, so each is tied to the
/// token of its latest `message-id=` line).
#[derive(Default)]
struct Maillog {
    sent: HashMap<String, HashSet<(String, usize)>>,
    held: HashMap<String, HashSet<(String, usize)>>,
    token_of_queue_id: HashMap<String, (String, usize)>,
}

fn read_maillog(text: &str) -> Maillog {
    let mut m = Maillog::default();
    let mut generation = 0usize;
    for line in text.lines() {
        let Some((_, rest)) = line.split_once("]: ") else {
            continue;
        };
        let Some((qid, what)) = rest.split_once(": ") else {
            continue;
        };
        if qid.is_empty() || !qid.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        if let Some(mid) = what.strip_prefix("message-id=") {
            if let Some(token) = token_of(mid) {
                generation += 1;
                m.token_of_queue_id
                    .insert(qid.to_owned(), (token, generation));
            }
            continue;
        }
        let Some((token, g)) = m.token_of_queue_id.get(qid).cloned() else {
            continue;
        };
        if line.contains("postfix/smtp[") && what.contains("status=sent") {
            m.sent.entry(token).or_default().insert((qid.to_owned(), g));
        } else if what.starts_with("milter-hold:") {
            m.held.entry(token).or_default().insert((qid.to_owned(), g));
        }
    }
    m
}

/// The token of each complete sink dump, by its Message-ID header (notices and
/// digests, which may quote a subject, have their own).
fn sink_by_token(sink: &Sink) -> (HashMap<String, Vec<SinkMessage>>, usize) {
    let mut out: HashMap<String, Vec<SinkMessage>> = HashMap::new();
    let mut incomplete = 0;
    for m in sink.messages() {
        let mid = m
            .text
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.len() > 11 && l[..11].eq_ignore_ascii_case("message-id:"))
            .and_then(token_of);
        let Some(token) = mid else { continue };
        if !m.text.contains("END-OF-TEST-BODY") {
            incomplete += 1;
            continue;
        }
        out.entry(token).or_default().push(m);
    }
    (out, incomplete)
}

#[test]
#[ignore = "a soak of minutes under faults: run it with scripts/soak"]
fn the_books_balance_under_faults() {
    require_postfix();
    require_redis();
    require_slapd();
    let minutes: f64 = std::env::var("FANOUT_SOAK_MINUTES")
        .ok()
        .map(|v| v.parse().expect("FANOUT_SOAK_MINUTES is a number"))
        .unwrap_or(10.0);
    let sessions: usize = std::env::var("FANOUT_SOAK_SESSIONS")
        .ok()
        .map(|v| v.parse().expect("FANOUT_SOAK_SESSIONS is a number"))
        .unwrap_or(20);
    assert!(
        minutes >= 1.0 && sessions >= 1,
        "at least 1 minute and 1 session"
    );
    let run = Duration::from_secs_f64(minutes * 60.0);
    // How long each fault lasts: a thirtieth of the run, 5 to 20 seconds.
    let hold = Duration::from_secs_f64((run.as_secs_f64() / 30.0).clamp(5.0, 20.0));
    eprintln!("soak: {minutes} minutes, {sessions} sessions, faults of {hold:?}");

    let dir = scratch_dir("soak");
    let root = dir.path();
    let state = root.join("state");
    let fs = Tmpfs::mount(&state, STATE_FS_SIZE);
    let mut slapd = Slapd::start(root, &fixture_ldif(PEOPLE));
    let mut redis = Redis::start();
    let redis_port = redis.port;
    let sink = Sink::start(root);
    let listen = format!("inet:127.0.0.1:{}", free_port());
    let postfix = Postfix::start(root, &sink, &listen);
    std::fs::write(root.join("virtual"), virtual_table()).expect("virtual table");
    let config = root.join("fanout-milter.toml");
    // slapd and Redis come back on the same ports.
    let (slapd_url, redis_url) = (slapd.url(), redis.url());
    let good =
        |contact: &str| with_listen(&listen, &config_text(root, &slapd_url, &redis_url, contact));
    let mut good_config = good("the Service Desk on 4242");
    std::fs::write(&config, &good_config).expect("config");
    let _ = cli(&config, &["check-config"]);
    let mut milter = Milter::start_file(root, &listen, config.clone());

    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        port: postfix.smtp_port,
        start,
        send_until: start + run,
        abort: AtomicBool::new(false),
        storm_replies: AtomicUsize::new(0),
    });
    let _abort = AbortOnDrop(ctx.clone());
    let lives = Arc::new(Mutex::new(vec![Life {
        pid: milter.pid(),
        started: 0.0,
        peak_kib: 0,
        last_rss_kib: 0,
    }]));
    let current_pid = Arc::new(AtomicI32::new(milter.pid()));
    let sampler = {
        let (ctx, lives, pid) = (ctx.clone(), lives.clone(), current_pid.clone());
        std::thread::spawn(move || {
            while !ctx.abort.load(Ordering::SeqCst) {
                sample(&lives, pid.load(Ordering::SeqCst));
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let clients: Vec<_> = (0..sessions)
        .map(|s| {
            let ctx = ctx.clone();
            std::thread::spawn(move || session(ctx, s))
        })
        .collect();

    // The fault schedule, spread over the first three quarters of the run.
    let mut faults = Faults {
        contacts: vec![(0.0, 0.0, "the Service Desk on 4242".to_owned())],
        ..Faults::default()
    };
    let mut logs: Vec<String> = Vec::new();
    let kill_and_restart = |milter: &mut Milter, faults: &mut Faults, logs: &mut Vec<String>| {
        let pid = milter.pid();
        sample(&lives, pid);
        let status = milter.stop_with(Signal::SIGKILL);
        logs.push(milter.log());
        faults.kills += 1;
        faults.note(&ctx, format!("milter {pid} killed ({status})"));
        // Down for a moment, as under systemd's RestartSec.
        std::thread::sleep(Duration::from_secs(2));
        *milter = Milter::start_file(root, &listen, config.clone());
        let pid = milter.pid();
        lives.lock().expect("lives").push(Life {
            pid,
            started: secs(&ctx),
            peak_kib: 0,
            last_rss_kib: 0,
        });
        current_pid.store(pid, Ordering::SeqCst);
        faults.note(&ctx, format!("milter restarted as {pid}"));
    };
    let reload_good =
        |milter: &Milter, faults: &mut Faults, good_config: &mut String, contact: &str| {
            *good_config = good(contact);
            std::fs::write(&config, &*good_config).expect("config");
            let before = count(milter, "configuration reloaded");
            let sent = secs(&ctx);
            milter.signal(Signal::SIGHUP);
            wait_log(milter, "configuration reloaded", before);
            faults.contacts.push((sent, secs(&ctx), contact.to_owned()));
            faults.reloads_ok += 1;
            faults.note(
                &ctx,
                format!("reloaded a good configuration (contact {contact:?})"),
            );
        };

    at(&ctx, run, 0.06);
    {
        let started = count(&milter, "ldap refresh started");
        let failed = count(&milter, "ldap refresh failed");
        slapd.signal(Signal::SIGSTOP);
        faults.note(&ctx, "slapd stopped (SIGSTOP)".into());
        wait_log(&milter, "ldap refresh started", started);
        wait_log(&milter, "ldap refresh failed", failed);
        faults.note(&ctx, "a refresh against the stopped slapd failed".into());
        std::thread::sleep(hold);
        let refreshed = count(&milter, "ldap snapshot refreshed");
        slapd.signal(Signal::SIGCONT);
        wait_log(&milter, "ldap snapshot refreshed", refreshed);
        faults.slapd_hangs += 1;
        faults.note(&ctx, "slapd resumed (SIGCONT); a refresh succeeded".into());
    }

    at(&ctx, run, 0.12);
    kill_and_restart(&mut milter, &mut faults, &mut logs);

    at(&ctx, run, 0.20);
    reload_good(
        &milter,
        &mut faults,
        &mut good_config,
        "the Service Desk on 4343",
    );

    at(&ctx, run, 0.27);
    {
        redis.kill();
        faults.note(&ctx, "redis killed".into());
        std::thread::sleep(hold);
        let back = count(&milter, "shared state reachable again");
        redis = Redis::start_on(redis_port);
        faults.redis_restarts += 1;
        faults.note(&ctx, "redis restarted (empty)".into());
        wait_log(&milter, "shared state reachable again", back);
        faults.note(&ctx, "the daemon reached redis again".into());
    }

    at(&ctx, run, 0.34);
    kill_and_restart(&mut milter, &mut faults, &mut logs);

    at(&ctx, run, 0.42);
    {
        let (filler, bytes) = fs.fill();
        faults.fs_fills += 1;
        faults.note(
            &ctx,
            format!("state file system filled ({} KiB)", bytes / 1024),
        );
        std::thread::sleep(hold);
        std::fs::remove_file(&filler).expect("remove the filler");
        faults.note(&ctx, "state file system freed".into());
        let decisions = count(&milter, "decision");
        wait_log(&milter, "decision", decisions + 3);
    }

    at(&ctx, run, 0.50);
    {
        std::fs::write(
            &config,
            format!("{good_config}\n[limits.audience]\nquarantine = \"lots\"\n"),
        )
        .expect("broken config");
        let before = count(&milter, "configuration not reloaded");
        milter.signal(Signal::SIGHUP);
        wait_log(&milter, "configuration not reloaded", before);
        std::fs::write(&config, &good_config).expect("config");
        faults.reloads_failed += 1;
        faults.note(&ctx, "a broken configuration was refused".into());
        let decisions = count(&milter, "decision");
        wait_log(&milter, "decision", decisions + 3);
        assert!(
            milter.is_running(),
            "the daemon serves after a broken reload"
        );
        faults.note(
            &ctx,
            "the daemon kept deciding with the old configuration".into(),
        );
    }

    at(&ctx, run, 0.57);
    {
        let started = count(&milter, "ldap refresh started");
        let failed = count(&milter, "ldap refresh failed");
        slapd.signal(Signal::SIGSTOP);
        wait_log(&milter, "ldap refresh started", started);
        slapd.kill();
        faults.note(&ctx, "slapd killed in the middle of a refresh".into());
        wait_log(&milter, "ldap refresh failed", failed);
        std::thread::sleep(hold);
        let refreshed = count(&milter, "ldap snapshot refreshed");
        slapd.restart();
        faults.slapd_kills += 1;
        wait_log(&milter, "ldap snapshot refreshed", refreshed);
        faults.note(&ctx, "slapd restarted; a refresh succeeded".into());
    }

    at(&ctx, run, 0.64);
    kill_and_restart(&mut milter, &mut faults, &mut logs);

    at(&ctx, run, 0.72);
    reload_good(
        &milter,
        &mut faults,
        &mut good_config,
        "the Service Desk on 4444",
    );
    faults.note(&ctx, "last fault done".into());

    // The sessions stop sending at the end of the run and finish their retries.
    let drained = wait_until(DRAIN_DEADLINE + run, "every session to finish", || {
        clients.iter().all(|c| c.is_finished())
    });
    assert!(drained, "the sessions finished within the deadline");
    let mut sent: Vec<Sent> = Vec::new();
    for c in clients {
        sent.extend(c.join().expect("session thread"));
    }
    faults.note(&ctx, format!("sessions done: {} messages", sent.len()));

    // Quiet: Postfix delivers what it queued; only the hold queue stays.
    let quiet = wait_until(QUIET_DEADLINE, "Postfix's queue to drain", || {
        postfix.queue().iter().all(|m| m["queue_name"] == "hold")
    });
    let (_, incomplete) = sink_by_token(&sink);
    let complete = incomplete == 0
        || wait_until(Duration::from_secs(60), "complete sink dumps", || {
            sink_by_token(&sink).1 == 0
        });
    faults.note(
        &ctx,
        format!("quiet: queue drained {quiet}, sink complete {complete}"),
    );
    sample(&lives, milter.pid());
    ctx.abort.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");

    // Reconcile: every message is settled, so records of messages that never reached
    // the hold queue (written before a kill or a tempfail) may be closed now rather
    // than after the 5 minute grace meant for messages still in flight.
    let later = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600)
        .to_string();
    let reconciled = cli(&config, &["quarantine", "reconcile", "--now", &later]);
    faults.note(
        &ctx,
        format!("reconcile: {}", reconciled.trim().replace('\n', " | ")),
    );
    let records: serde_json::Value = serde_json::from_str(&cli(
        &config,
        &["quarantine", "list", "--json", "--state", "held"],
    ))
    .expect("quarantine list --json");
    let records: Vec<(String, Option<String>)> = records
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["queue_id"].as_str().unwrap_or_default().to_owned(),
                r["subject"].as_str().and_then(token_of),
            )
        })
        .collect();
    let hold_queue: HashSet<String> = postfix.held().into_iter().collect();
    logs.push(milter.log());
    let maillog = postfix.maillog();

    let mut books = balance(&sent, &sink, &hold_queue, &records, &maillog, &mut faults);
    books.panics = logs.iter().map(|l| l.matches("panicked").count()).sum();
    if !quiet {
        books.problem(format!(
            "Postfix's queue did not drain: {:?}",
            postfix.queue()
        ));
    }
    let lives = lives.lock().expect("lives").clone();
    let report = report(&books, &faults, &lives, minutes, sessions);
    eprintln!("{report}");

    for (what, n) in [
        ("lost", books.lost),
        ("delivered twice", books.delivered_twice),
        ("delivered and held", books.delivered_and_held),
        ("held twice", books.held_twice),
        (
            "delivered without every recipient",
            books.missing_recipients,
        ),
        ("refused but delivered or held", books.refused_but_delivered),
        ("a held or refused kind delivered", books.leaked),
        ("held without a record", books.held_without_record),
        ("records without a held message", books.records_without_hold),
        (
            "unknown messages in the hold queue",
            books.unknown_in_hold_queue,
        ),
        ("unfinished", books.unfinished),
        (
            "maillog disagrees with the sink or hold queue",
            books.maillog_mismatch,
        ),
        (
            "replies from a configuration not in force",
            books.wrong_config,
        ),
        ("panics", books.panics),
    ] {
        assert_eq!(n, 0, "{what}: {n}\n{report}");
    }
    assert!(quiet, "Postfix's queue drained\n{report}");
    assert!(
        books.contact_checked > 0,
        "refusals name the contact of the configuration in force\n{report}"
    );
    assert_eq!(
        books.sent,
        books.delivered + books.held + books.refused + books.gave_up,
        "every message is delivered, held or refused\n{report}"
    );
    assert_eq!(faults.kills, 3, "{report}");
    assert_eq!(
        (faults.reloads_ok, faults.reloads_failed),
        (2, 1),
        "{report}"
    );
    for l in &lives {
        assert!(
            l.peak_kib > 0 && l.peak_kib < RSS_BOUND_KIB,
            "milter {} peaked at {} KiB (bound {RSS_BOUND_KIB} KiB)\n{report}",
            l.pid,
            l.peak_kib
        );
    }
    assert!(milter.is_running(), "the daemon still runs");
    milter.stop();
    drop(postfix);
    drop(redis);
    drop(slapd);
}

/// Polls `done` every 200 ms until it holds or `deadline` passes; false then.
fn wait_until(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > deadline {
            eprintln!("soak: gave up after {deadline:?} waiting for {what}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Balances every token against the sink, the hold queue, the store and the log.
fn balance(
    sent: &[Sent],
    sink: &Sink,
    hold_queue: &HashSet<String>,
    records: &[(String, Option<String>)],
    maillog: &str,
    faults: &mut Faults,
) -> Books {
    let mut b = Books::default();
    let log = read_maillog(maillog);
    let (at_sink, _) = sink_by_token(sink);
    // Held queue files per token, through the log's message-id lines (not the store).
    let mut held_by_token: HashMap<String, Vec<String>> = HashMap::new();
    for qid in hold_queue {
        match log.token_of_queue_id.get(qid) {
            Some((token, _)) => held_by_token
                .entry(token.clone())
                .or_default()
                .push(qid.clone()),
            None => {
                b.unknown_in_hold_queue += 1;
                b.problem(format!(
                    "{qid} in the hold queue: no message-id of ours in the log"
                ));
            }
        }
    }
    let recorded: HashSet<&str> = records.iter().map(|(q, _)| q.as_str()).collect();
    for qid in hold_queue {
        if !recorded.contains(qid.as_str()) {
            b.held_without_record += 1;
            b.problem(format!("{qid} held without a record"));
        }
    }
    for (qid, token) in records {
        if hold_queue.contains(qid) {
            let logged = log.token_of_queue_id.get(qid).map(|(t, _)| t);
            if logged != token.as_ref() {
                b.maillog_mismatch += 1;
                b.problem(format!("{qid}: record says {token:?}, the log {logged:?}"));
            }
            let hold_logged = logged
                .and_then(|t| log.held.get(t))
                .is_some_and(|h| h.iter().any(|(q, _)| q == qid));
            if !hold_logged {
                b.maillog_mismatch += 1;
                b.problem(format!("{qid}: held, but no milter-hold line in the log"));
            }
        }
        if !hold_queue.contains(qid) {
            b.records_without_hold += 1;
            b.problem(format!(
                "record {qid} ({token:?}) held, but not in the hold queue"
            ));
        }
    }
    let mut by_kind: BTreeMap<Kind, [usize; 4]> = BTreeMap::new();
    for m in sent {
        b.sent += 1;
        let t = &m.token;
        let delivered = at_sink.get(t).map(Vec::len).unwrap_or(0);
        let held = held_by_token.get(t).map(Vec::len).unwrap_or(0);
        let logged_sent = log.sent.get(t).map(HashSet::len).unwrap_or(0);
        if logged_sent != delivered {
            b.maillog_mismatch += 1;
            b.problem(format!(
                "{t}: {logged_sent} deliveries in the log, {delivered} at the sink"
            ));
        }
        if m.attempts.iter().any(|a| a.code < 500)
            && matches!(
                m.outcome,
                Some(Outcome::Accepted(_)) | Some(Outcome::Refused(..))
            )
        {
            b.retried += 1;
        }
        if m.attempts.iter().any(|a| a.code == 0) {
            b.retried_no_reply += 1;
        }
        let row = by_kind.entry(m.kind).or_default();
        match &m.outcome {
            None => {
                b.unfinished += 1;
                b.problem(format!("{t}: never finished"));
            }
            Some(Outcome::Accepted(reply)) => {
                b.accepted += 1;
                // Postfix's 250 names the queue file; it must be the one that left.
                let queued = reply
                    .split_once("queued as ")
                    .map(|(_, q)| q.trim().to_owned())
                    .unwrap_or_default();
                let left = log
                    .sent
                    .get(t)
                    .is_some_and(|s| s.iter().any(|(q, _)| *q == queued))
                    || held_by_token.get(t).is_some_and(|h| h.contains(&queued));
                if !left && delivered + held > 0 {
                    b.maillog_mismatch += 1;
                    b.problem(format!(
                        "{t}: accepted as {queued:?}, but another queue file left"
                    ));
                }
                match (delivered, held) {
                    (1, 0) => {
                        b.delivered += 1;
                        row[0] += 1;
                        let got: HashSet<&str> =
                            at_sink[t][0].rcpts.iter().map(String::as_str).collect();
                        if m.rcpts.iter().any(|r| !got.contains(r.as_str())) {
                            b.missing_recipients += 1;
                            b.problem(format!("{t}: delivered to {got:?}, sent to {:?}", m.rcpts));
                        }
                        if !m.kind.may_deliver() {
                            b.leaked += 1;
                            b.problem(format!("{t}: a {:?} message was delivered", m.kind));
                        }
                    }
                    (0, 1) => {
                        b.held += 1;
                        row[1] += 1;
                    }
                    (0, 0) => {
                        b.lost += 1;
                        b.problem(format!(
                            "{t}: accepted ({:?}) but neither delivered nor held",
                            m.kind
                        ));
                    }
                    (d, 0) => {
                        b.delivered_twice += 1;
                        b.problem(format!("{t}: delivered {d} times"));
                    }
                    (0, h) => {
                        b.held_twice += 1;
                        b.problem(format!("{t}: held {h} times"));
                    }
                    (d, h) => {
                        b.delivered_and_held += 1;
                        b.problem(format!("{t}: delivered {d} times and held {h} times"));
                    }
                }
            }
            Some(Outcome::Refused(code, text)) | Some(Outcome::GaveUp(code, text)) => {
                if matches!(m.outcome, Some(Outcome::Refused(..))) {
                    b.refused += 1;
                    row[2] += 1;
                    if text.contains("reply-all storm") {
                        b.refused_storm += 1;
                    }
                } else {
                    b.gave_up += 1;
                    row[3] += 1;
                    b.problem(format!(
                        "{t}: gave up after {} attempts, last {code}: {text}",
                        m.attempts.len()
                    ));
                }
                if delivered + held > 0 {
                    b.refused_but_delivered += 1;
                    b.problem(format!(
                        "{t}: refused ({code} {text}) yet delivered {delivered}, held {held}"
                    ));
                }
            }
        }
    }
    // Why clients were told to retry, and when the last one was.
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_4xx = 0f64;
    for a in sent
        .iter()
        .flat_map(|m| &m.attempts)
        .filter(|a| a.code < 500)
    {
        let reason: String = a.text.chars().take(60).collect();
        *reasons.entry(format!("{} {reason}", a.code)).or_default() += 1;
        last_4xx = last_4xx.max(a.at);
    }
    faults.log.push(format!(
        "last 4xx or missing reply at {last_4xx:.1}s; replies:"
    ));
    for (reason, n) in reasons {
        faults.log.push(format!("  {n:>6} x {reason}"));
    }
    let mut slots: BTreeMap<u64, usize> = BTreeMap::new();
    for a in sent
        .iter()
        .flat_map(|m| &m.attempts)
        .filter(|a| a.code < 500)
    {
        *slots.entry(a.at as u64 / 10 * 10).or_default() += 1;
    }
    let slots: Vec<String> = slots
        .iter()
        .map(|(from, n)| format!("{from}-{}s {n}", from + 10))
        .collect();
    faults
        .log
        .push(format!("  4xx per 10 s: {}", slots.join(", ")));
    // Every reply that names the contact names the one of the configuration in force
    // (the broken reload changed nothing); replies sent while a good reload was under
    // way may name the old or the new one.
    for m in sent {
        for a in &m.attempts {
            let Some((_, rest)) = a.text.split_once("Service Desk on ") else {
                continue;
            };
            let named: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let named = format!("the Service Desk on {named}");
            let settled = faults
                .contacts
                .iter()
                .rev()
                .find(|(_, confirmed, _)| *confirmed <= a.at)
                .map(|(_, _, c)| c.clone());
            let pending = faults
                .contacts
                .iter()
                .find(|(from, confirmed, _)| *from <= a.at && a.at < *confirmed)
                .map(|(_, _, c)| c.clone());
            if settled.as_ref() != Some(&named) && pending.as_ref() != Some(&named) {
                b.wrong_config += 1;
                b.problem(format!(
                    "{}: at {:.1}s the reply names {named:?}, in force was {settled:?}: {}",
                    m.token, a.at, a.text
                ));
            }
            b.contact_checked += 1;
        }
    }
    let mut line = String::from("per kind (delivered, held, refused, gave up):");
    for (k, [d, h, r, g]) in &by_kind {
        let _ = write!(line, " {k:?} {d}/{h}/{r}/{g}");
    }
    faults.log.push(line);
    b
}

fn report(b: &Books, f: &Faults, lives: &[Life], minutes: f64, sessions: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n=== soak: {minutes} minutes, {sessions} sessions ===");
    for l in &f.log {
        let _ = writeln!(o, "  {l}");
    }
    let rows: [(&str, usize); 23] = [
        ("sent", b.sent),
        ("accepted (250)", b.accepted),
        ("  delivered (once, every recipient)", b.delivered),
        ("  held with a record", b.held),
        ("refused (5xx with a reply)", b.refused),
        ("  of which reply-all storm", b.refused_storm),
        ("tempfailed, then retried to an outcome", b.retried),
        ("  of which no reply on some attempt", b.retried_no_reply),
        ("4xx until the retries ran out", b.gave_up),
        ("lost", b.lost),
        ("delivered twice", b.delivered_twice),
        ("delivered and held", b.delivered_and_held),
        ("held twice", b.held_twice),
        ("delivered without every recipient", b.missing_recipients),
        ("refused yet delivered or held", b.refused_but_delivered),
        ("held/refused kind delivered", b.leaked),
        ("held without a record", b.held_without_record),
        ("records without a held message", b.records_without_hold),
        ("unknown in the hold queue", b.unknown_in_hold_queue),
        ("maillog disagrees", b.maillog_mismatch),
        ("replies naming the contact, checked", b.contact_checked),
        ("  from a configuration not in force", b.wrong_config),
        ("panics in the daemon's logs", b.panics),
    ];
    for (what, n) in rows {
        let _ = writeln!(o, "  {what:<42} {n:>7}");
    }
    let _ = writeln!(
        o,
        "  milter restarts {}, reloads ok {} / failed {}, redis restarts {}, slapd hung {} / killed {}, state fs filled {}",
        f.kills,
        f.reloads_ok,
        f.reloads_failed,
        f.redis_restarts,
        f.slapd_hangs,
        f.slapd_kills,
        f.fs_fills
    );
    for (i, l) in lives.iter().enumerate() {
        let _ = writeln!(
            o,
            "  milter life {} (pid {}, from {:.0}s): peak RSS {} KiB, last RSS {} KiB (bound {} KiB)",
            i + 1,
            l.pid,
            l.started,
            l.peak_kib,
            l.last_rss_kib,
            RSS_BOUND_KIB
        );
    }
    if !b.problems.is_empty() {
        let _ = writeln!(o, "  problems (first {}):", b.problems.len());
        for p in &b.problems {
            let _ = writeln!(o, "    {p}");
        }
    }
    o
}
