// SPDX-License-Identifier: GPL-3.0-or-later
//! A normal day at a hospital, decided with the shipped defaults (conf/fanout-milter.toml)
//! and a virtual(5) file of department lists: nothing may be held. Next to it, the
//! incident shapes the defaults must still contain. Each message goes the milter's way:
//! its facts as `explain` builds them (headers parsed, audience expanded through the
//! directory), then the milter's decision path (plan, observe, evaluate, settle) against
//! the state with a manual clock, so storms and rates see the whole day. No network, no
//! sleeping.

use fanout_milter::clock::ManualClock;
use fanout_milter::config::{self, Config};
use fanout_milter::decide::{GuardState, Offline, decide};
use fanout_milter::directory::{Directory, DriftMode};
use fanout_milter::explain::{ExplainInput, explain};
use fanout_milter::notify::channel;
use fanout_milter::policy::{Action, Verdict};
use fanout_milter::state::{Guard, MemoryBackend, StateError};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Departments and their list sizes: lists of 150 and 300, as in the replay.
const DEPARTMENTS: [(&str, usize); 6] = [
    ("cardiology", 300),
    ("radiology", 150),
    ("nursing", 300),
    ("pharmacy", 150),
    ("surgery", 300),
    ("admin", 150),
];

fn staff(dept: &str, i: usize) -> String {
    format!("{dept}{i}@example.org")
}

fn list(dept: &str) -> String {
    format!("{dept}@example.org")
}

/// The virtual file: one list per department; `extra` lines are appended.
fn virtual_file(extra: &str) -> String {
    let mut v = String::from("# department lists\n");
    for (dept, size) in DEPARTMENTS {
        let members: Vec<String> = (0..size).map(|i| staff(dept, i)).collect();
        let _ = writeln!(v, "{} {}", list(dept), members.join(", "));
    }
    v.push_str(extra);
    v
}

/// The shipped configuration file, with its state directory in `dir` and the virtual
/// file as its directory source: every other value is the shipped default.
fn shipped_config(dir: &Path) -> Config {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/fanout-milter.toml"),
    )
    .expect("conf/fanout-milter.toml");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let default_state = "state_dir = \"/var/lib/fanout-milter\"";
    assert!(
        shipped.contains(default_state),
        "the shipped state_dir line"
    );
    let text = format!(
        "{}\n[[directory]]\ntype = \"postfix-virtual\"\npath = \"{}\"\ndomains = [\"example.org\"]\n",
        shipped.replace(
            default_state,
            &format!("state_dir = \"{}\"", state.display())
        ),
        dir.join("virtual").display()
    );
    let file = dir.join("fanout-milter.toml");
    config::parse(&text, &file).expect("the shipped configuration with a directory")
}

/// One relay: the shipped configuration, the directory as the daemon loads it (list
/// sizes recorded for drift), memory state and a manual clock.
struct Relay {
    config: Config,
    directory: Directory,
    guard: Guard,
    clock: ManualClock,
    _alerts: fanout_milter::notify::AlertReceiver,
}

impl Relay {
    fn new(dir: &Path) -> Relay {
        let config = shipped_config(dir);
        let directory = Directory::load(&config, DriftMode::Record, &Default::default())
            .expect("directory")
            .record_drift();
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let (tx, alerts) = channel(10_000);
        let guard = Guard::new(
            Arc::new(MemoryBackend::new()),
            Arc::new(clock.clone()),
            Some(tx),
        );
        Relay {
            config,
            directory,
            guard,
            clock,
            _alerts: alerts,
        }
    }

    /// Reloads the directory, as SIGHUP does.
    fn reload(&mut self) {
        self.directory = Directory::load(&self.config, DriftMode::Record, &Default::default())
            .expect("directory")
            .record_drift();
    }

    /// Decides one message as the milter does.
    async fn send(&self, mail: &Mail) -> Verdict {
        let input = ExplainInput {
            from: mail.from.clone(),
            rcpts: mail.rcpts.clone(),
            sasl_login: Some(mail.from.clone()),
            client: Some("10.1.2.3".into()),
            message: Some(mail.headers().into_bytes()),
        };
        let facts = explain(&self.config, &self.directory, input).facts;
        let mut state = GuardState::new(&self.guard);
        let verdict = decide(
            &self.config.policy,
            &self.config.replies,
            &facts,
            "TEST",
            &mut state,
            &mut Offline::<StateError>::default(),
        )
        .await
        .expect("memory state never fails")
        .evaluation
        .verdict;
        assert_eq!(state.settle_error(), None, "settle");
        verdict
    }
}

/// One message: envelope and the headers that matter.
#[derive(Clone, Debug)]
struct Mail {
    from: String,
    rcpts: Vec<String>,
    to: Vec<String>,
    cc: Vec<String>,
    subject: String,
    id: String,
    parent: Option<String>,
}

impl Mail {
    fn new(from: &str, to: &[String], cc: &[String], subject: &str, id: &str) -> Mail {
        let mut rcpts: Vec<String> = to.to_vec();
        rcpts.extend(cc.iter().cloned());
        Mail {
            from: from.to_owned(),
            rcpts,
            to: to.to_vec(),
            cc: cc.to_vec(),
            subject: subject.to_owned(),
            id: id.to_owned(),
            parent: None,
        }
    }

    fn reply_to(mut self, parent: &Mail) -> Mail {
        self.parent = Some(parent.id.clone());
        self
    }

    fn headers(&self) -> String {
        let mut h = format!(
            "From: <{}>\r\nTo: {}\r\nSubject: {}\r\nMessage-ID: <{}>\r\n",
            self.from,
            self.to.join(", "),
            self.subject,
            self.id
        );
        if !self.cc.is_empty() {
            let _ = write!(h, "Cc: {}\r\n", self.cc.join(", "));
        }
        if let Some(p) = &self.parent {
            let _ = write!(h, "In-Reply-To: <{p}>\r\nReferences: <{p}>\r\n");
        }
        h.push_str("\r\n");
        h
    }
}

/// A small deterministic generator (no dependency, same day every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn someone(&mut self) -> String {
        let (dept, size) = DEPARTMENTS[self.below(DEPARTMENTS.len())];
        staff(dept, self.below(size))
    }
}

/// The day's traffic, in order.
fn normal_day() -> Vec<Mail> {
    let mut rng = Lcg(15);
    let mut day = Vec::new();
    let mut n = 0;
    let mut id = |what: &str| {
        n += 1;
        format!("{what}{n}@mail.example.org")
    };
    for round in 0..10 {
        for (d, (dept, size)) in DEPARTMENTS.iter().enumerate() {
            // A notice to a department list, from one of its staff or from another
            // department, in To or in Cc; for most senders their first post to it.
            let from = if (round + d) % 3 == 0 {
                rng.someone()
            } else {
                staff(dept, rng.below(*size))
            };
            let notice = if round % 2 == 0 {
                Mail::new(
                    &from,
                    &[list(dept)],
                    &[],
                    &format!("Rota change, week {round}"),
                    &id("notice"),
                )
            } else {
                Mail::new(
                    &from,
                    &[staff(dept, 0)],
                    &[list(dept)],
                    &format!("Training on ward {round}"),
                    &id("notice"),
                )
            };
            day.push(notice.clone());
            // Replies to the sender only.
            for _ in 0..2 {
                let who = staff(dept, rng.below(*size));
                day.push(
                    Mail::new(
                        &who,
                        std::slice::from_ref(&from),
                        &[],
                        &format!("Re: {}", notice.subject),
                        &id("reply"),
                    )
                    .reply_to(&notice),
                );
            }
            // Now and then someone replies to all: the list is in Cc.
            if (round + d) % 3 == 1 {
                let who = staff(dept, rng.below(*size));
                day.push(
                    Mail::new(
                        &who,
                        std::slice::from_ref(&from),
                        &[list(dept)],
                        &format!("Re: {}", notice.subject),
                        &id("replyall"),
                    )
                    .reply_to(&notice),
                );
            }
        }
    }
    // Small threads of 5 to 20 people, everyone in To or Cc, replying to all.
    for t in 0..40 {
        let people: Vec<String> = (0..5 + rng.below(16)).map(|_| rng.someone()).collect();
        let root = Mail::new(
            &people[0],
            &people[1..3],
            &people[3..],
            &format!("Case conference {t}"),
            &id("thread"),
        );
        day.push(root.clone());
        for _ in 0..4 {
            let who = people[rng.below(people.len())].clone();
            let others: Vec<String> = people.iter().filter(|p| **p != who).cloned().collect();
            day.push(
                Mail::new(
                    &who,
                    &others[..1],
                    &others[1..],
                    &format!("Re: {}", root.subject),
                    &id("thread-reply"),
                )
                .reply_to(&root),
            );
        }
    }
    day
}

#[tokio::test]
async fn a_normal_day_at_a_hospital_holds_nothing_with_the_shipped_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("virtual"), virtual_file("")).expect("virtual");
    let relay = Relay::new(dir.path());
    let day = normal_day();
    assert!(day.len() >= 300, "a few hundred messages: {}", day.len());
    let notices = day.iter().filter(|m| m.id.starts_with("notice")).count();
    assert_eq!(notices, 60);

    let mut held = Vec::new();
    let mut tagged = 0;
    for mail in &day {
        relay.clock.advance(Duration::from_secs(100));
        let v = relay.send(mail).await;
        match v.action {
            Action::Accept => {}
            Action::Tag => tagged += 1,
            _ => held.push(format!("{} {:?}: {}", mail.id, v.action, v.summary())),
        }
    }
    assert!(
        held.is_empty(),
        "{} of {} messages held on a normal day:\n{}",
        held.len(),
        day.len(),
        held.join("\n")
    );
    assert_eq!(
        tagged, 0,
        "nothing on a normal day even reaches a tag level"
    );
}

#[tokio::test]
async fn the_incident_shapes_are_still_held_with_the_shipped_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nurses: Vec<String> = (0..600).map(|i| staff("nurse", i)).collect();
    let dynamic: Vec<String> = (0..40).map(|i| staff("ward", i)).collect();
    let extra = |dynamic: &[String]| {
        format!(
            "all-nurses@example.org {}\nall-staff@example.org {}\n",
            nurses.join(", "),
            dynamic.join(", ")
        )
    };
    std::fs::write(dir.path().join("virtual"), virtual_file(&extra(&dynamic))).expect("virtual");
    let mut relay = Relay::new(dir.path());
    let rules = |v: &Verdict| v.reasons.iter().map(|r| r.rule).collect::<Vec<_>>();

    // A department list nobody can see: Bcc'd, To: the sender herself.
    let me = staff("pharmacy", 7);
    let mut bcc = Mail::new(&me, std::slice::from_ref(&me), &[], "Rota", "bcc@x");
    bcc.rcpts.push(list("nursing"));
    let v = relay.send(&bcc).await;
    assert_eq!(v.action, Action::Quarantine, "{}", v.summary());
    assert_eq!(rules(&v), ["hidden"]);

    // The same list named in To goes out.
    let named = Mail::new(&me, &[list("nursing")], &[], "Rota", "named@x");
    assert_eq!(relay.send(&named).await.action, Action::Accept);

    // The dynamic list named in To suddenly reaches far more: drift and the audience
    // levels hold it, not the hidden rule.
    let grown: Vec<String> = (0..5_000).map(|i| staff("anyone", i)).collect();
    std::fs::write(dir.path().join("virtual"), virtual_file(&extra(&grown))).expect("virtual");
    relay.reload();
    let all = Mail::new(&me, &["all-staff@example.org".into()], &[], "Hi", "all@x");
    let v = relay.send(&all).await;
    assert_eq!(v.action, Action::Quarantine, "{}", v.summary());
    let fired = rules(&v);
    assert!(fired.contains(&"drift"), "{fired:?}");
    assert!(fired.contains(&"limits.audience"), "{fired:?}");
    assert!(!fired.contains(&"hidden"), "{fired:?}");

    // Reply-all to a large list: the third reply trips the storm, the next is refused.
    let root = Mail::new(
        &staff("nurse", 0),
        &["all-nurses@example.org".into()],
        &[],
        "Parking",
        "root@x",
    );
    assert_eq!(relay.send(&root).await.action, Action::Accept);
    let reply = |i: usize| {
        Mail::new(
            &staff("nurse", i),
            &["all-nurses@example.org".into()],
            &[],
            "Re: Parking",
            &format!("storm{i}@x"),
        )
        .reply_to(&root)
    };
    for i in 1..=3 {
        relay.clock.advance(Duration::from_secs(30));
        assert_eq!(relay.send(&reply(i)).await.action, Action::Accept, "{i}");
    }
    let v = relay.send(&reply(4)).await;
    assert_eq!(v.action, Action::Reject, "{}", v.summary());
    assert_eq!(rules(&v), ["storm"]);
}
