// SPDX-License-Identifier: GPL-3.0-or-later
//! The stateful rules driven through the milter's own decision path ([`decide`]: plan,
//! observe, evaluate, settle) over simulated traffic, with a manual clock: no sleeping,
//! no network.

use fanout_milter::clock::{Clock, ManualClock};
use fanout_milter::decide::{GuardState, Offline, decide};
use fanout_milter::notify::{AlertKind, AlertReceiver, channel};
use fanout_milter::policy::{
    self, Action, AudienceFacts, ListFacts, MessageFacts, Policy, Replies, StormPolicy,
};
use fanout_milter::state::{Guard, MemoryBackend, StateBackend, StateError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const MIN: Duration = Duration::from_secs(60);

struct Relay {
    policy: Policy,
    replies: Replies,
    guard: Guard,
    clock: ManualClock,
    backend: Arc<MemoryBackend>,
    alerts: AlertReceiver,
}

impl Relay {
    fn new() -> Relay {
        let policy = Policy {
            storm: StormPolicy {
                min_audience: 500,
                min_messages: 3,
                min_senders: 2,
                window: 10 * MIN,
                block_for: 6 * 60 * MIN,
                action: Action::Reject,
                monitor: false,
                reply: "A reply-all storm is in progress on \"{subject}\" to {list} ({audience} recipients).".into(),
            },
            ..Policy::default()
        };
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let backend = Arc::new(MemoryBackend::new());
        let (tx, alerts) = channel(10_000);
        let guard = Guard::new(backend.clone(), Arc::new(clock.clone()), Some(tx));
        let replies = Replies {
            contact: "the service desk".into(),
            reject: "Not sent: {reason}".into(),
            tempfail: "Try later: {reason}".into(),
        };
        Relay {
            policy,
            replies,
            guard,
            clock,
            backend,
            alerts,
        }
    }

    /// Decides one message as the milter does and returns its verdict.
    async fn send(&self, facts: MessageFacts) -> policy::Verdict {
        let mut state = GuardState::new(&self.guard);
        let verdict = decide(
            &self.policy,
            &self.replies,
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

    async fn storm_alerts(&mut self) -> usize {
        let mut n = 0;
        while let Ok(Some(a)) =
            tokio::time::timeout(Duration::from_millis(1), self.alerts.recv()).await
        {
            if a.kind == AlertKind::Storm {
                n += 1;
            }
        }
        n
    }
}

/// A message from `sender` to a list of `size` members (or to `size` people directly
/// when `size` is small), optionally replying to `parent`.
fn msg(
    sender: &str,
    list: &str,
    size: u64,
    subject: &str,
    parent: Option<&str>,
    own_id: &str,
) -> MessageFacts {
    let mut f = MessageFacts {
        sender: sender.to_owned(),
        ..MessageFacts::default()
    };
    f.recipients.add(list);
    f.headers.visible.add(list);
    f.headers.subject = Some(subject.to_owned());
    f.headers.message_id = Some(own_id.to_owned());
    if let Some(p) = parent {
        f.headers.in_reply_to = vec![p.to_owned()];
        f.headers.references = vec![p.to_owned()];
    }
    f.audience = Some(AudienceFacts {
        total: size,
        external: 0,
        lists: vec![ListFacts {
            address: list.into(),
            size,
            external: 0,
            nested_lists: 0,
            cycles: 0,
            domains: Arc::from(Vec::new()),
            drift_from: None,
            ..Default::default()
        }],
        non_mailbox: 0,
        lower_bound: false,
        ..Default::default()
    });
    f
}

#[tokio::test]
async fn a_storm_of_200_reply_alls_is_cut_after_min_messages_and_lifts_after_block_for() {
    let mut relay = Relay::new();
    let list = "all-staff@trust.example";
    let original = relay
        .send(msg(
            "ceo@trust.example",
            list,
            5_000,
            "Winter rota",
            None,
            "orig@trust.example",
        ))
        .await;
    assert_eq!(
        original.action,
        Action::Accept,
        "the message that started the thread is not touched"
    );

    let mut passed = 0;
    let mut stopped = 0;
    for i in 0..200u64 {
        relay.clock.advance(Duration::from_secs(9));
        let sender = format!("staff{}@trust.example", i % 150);
        let v = relay
            .send(msg(
                &sender,
                list,
                5_000,
                "RE: Winter rota",
                Some("orig@trust.example"),
                &format!("r{i}@trust.example"),
            ))
            .await;
        if v.action == Action::Accept {
            assert_eq!(stopped, 0, "reply {i} passed after the storm had tripped");
            passed += 1;
        } else {
            assert_eq!(v.action, Action::Reject, "reply {i}: {v:?}");
            assert_eq!(v.reasons[0].rule, "storm");
            assert_eq!(
                v.own_reply().map(|r| r.render(&[])).as_deref(),
                Some(
                    "A reply-all storm is in progress on \"RE: Winter rota\" to all-staff@trust.example (5,000 recipients)."
                )
            );
            stopped += 1;
        }
    }
    assert!(passed <= 3, "at most min_messages pass, {passed} did");
    assert_eq!(passed + stopped, 200);
    assert_eq!(relay.storm_alerts().await, 1, "one alert when it trips");
    let storms = relay.backend.storm_list(relay.clock.now()).await.unwrap();
    assert_eq!(storms.len(), 1);
    assert_eq!(storms[0].blocked, stopped);
    assert_eq!(storms[0].list, list);

    // Still stopped just before block_for ends (6 h after the trip at reply 3).
    relay.clock.advance(6 * 60 * MIN - 30 * MIN);
    let v = relay
        .send(msg(
            "late@trust.example",
            list,
            5_000,
            "Re: Winter rota",
            Some("orig@trust.example"),
            "late1@trust.example",
        ))
        .await;
    assert_eq!(v.action, Action::Reject);
    relay.clock.advance(MIN);
    let v = relay
        .send(msg(
            "late@trust.example",
            list,
            5_000,
            "Re: Winter rota",
            Some("orig@trust.example"),
            "late2@trust.example",
        ))
        .await;
    assert_eq!(
        v.action,
        Action::Accept,
        "after block_for replies pass again"
    );
}

/// A small deterministic generator (xorshift), so the day is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn a_realistic_day_of_normal_traffic_trips_nothing() {
    let mut relay = Relay::new();
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut threads: Vec<(String, String, u64, String)> = Vec::new();
    let mut decided = 0;
    // 10 hours, a message every 6 seconds on average: 6,000 messages.
    for n in 0..6_000u64 {
        relay.clock.advance(Duration::from_secs(1 + rng.below(11)));
        let sender = format!("user{}@trust.example", rng.below(3_000));
        let roll = rng.below(1_000);
        let v = if roll < 3 || threads.is_empty() {
            // A large announcement (a few a day) to a list of 2,000 to 20,000.
            let size = 2_000 + rng.below(18_000);
            let list = format!("announce{}@trust.example", rng.below(5));
            let id = format!("ann{n}@trust.example");
            threads.push((id.clone(), list.clone(), size, format!("Announcement {n}")));
            relay
                .send(msg(
                    &sender,
                    &list,
                    size,
                    &format!("Announcement {n}"),
                    None,
                    &id,
                ))
                .await
        } else if roll < 400 {
            // A reply in an existing thread: to a big list only by answering the sender.
            let (root, list, size, subject) =
                threads[rng.below(threads.len() as u64) as usize].clone();
            let (to, audience) = if size >= 500 {
                ("sender@trust.example".to_owned(), 1)
            } else {
                (list, size)
            };
            relay
                .send(msg(
                    &sender,
                    &to,
                    audience,
                    &format!("Re: {subject}"),
                    Some(&root),
                    &format!("m{n}@trust.example"),
                ))
                .await
        } else {
            // A new small conversation: 2 to 60 people, or a team list under 500.
            let size = 2 + rng.below(if roll < 950 { 60 } else { 450 });
            let list = format!("team{}@trust.example", rng.below(400));
            let id = format!("new{n}@trust.example");
            threads.push((id.clone(), list.clone(), size, format!("Topic {n}")));
            relay
                .send(msg(&sender, &list, size, &format!("Topic {n}"), None, &id))
                .await
        };
        assert_eq!(v.action, Action::Accept, "message {n}: {v:?}");
        decided += 1;
    }
    assert_eq!(decided, 6_000);
    assert_eq!(relay.storm_alerts().await, 0);
    assert!(
        relay
            .backend
            .storm_list(relay.clock.now())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn one_accidental_reply_all_per_announcement_does_not_trip() {
    let relay = Relay::new();
    for k in 0..20u64 {
        let root = format!("a{k}@trust.example");
        relay
            .send(msg(
                "comms@trust.example",
                "all@trust.example",
                9_000,
                "News",
                None,
                &root,
            ))
            .await;
        relay.clock.advance(MIN);
        let v = relay
            .send(msg(
                &format!("u{k}@trust.example"),
                "all@trust.example",
                9_000,
                "Re: News",
                Some(&root),
                &format!("r{k}@trust.example"),
            ))
            .await;
        assert_eq!(v.action, Action::Accept);
        relay.clock.advance(30 * MIN);
    }
}

#[tokio::test]
async fn the_relay_breaker_holds_large_mail_while_small_mail_flows_with_one_alert() {
    let mut relay = Relay::new();
    relay.policy.breaker = policy::BreakerPolicy {
        max_per_minute: 10_000,
        min_audience: 500,
        monitor: false,
    };
    relay
        .clock
        .set(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_040));
    let mut held = 0;
    for i in 0..30 {
        relay.clock.advance(Duration::from_millis(500));
        let v = relay
            .send(msg(
                "svc@trust.example",
                "big@trust.example",
                600,
                "Notice",
                None,
                &format!("b{i}@trust.example"),
            ))
            .await;
        if v.action == Action::Quarantine {
            assert_eq!(v.reasons[0].rule, "breaker", "{v:?}");
            held += 1;
        } else {
            assert_eq!(held, 0, "message {i} passed after the breaker tripped");
        }
    }
    // 17 messages x 600 = 10,200 > 10,000 leave; every later large one is held.
    assert_eq!(held, 30 - 17);
    let small = relay
        .send(msg(
            "ann@trust.example",
            "team@trust.example",
            12,
            "Lunch",
            None,
            "small@trust.example",
        ))
        .await;
    assert_eq!(small.action, Action::Accept, "small mail keeps flowing");
    let mut breaker_alerts = 0;
    while let Ok(Some(a)) =
        tokio::time::timeout(Duration::from_millis(1), relay.alerts.recv()).await
    {
        if a.kind == AlertKind::Breaker {
            breaker_alerts += 1;
        }
    }
    assert_eq!(
        breaker_alerts, 1,
        "one admin alert, not one per held message"
    );
    relay.clock.advance(2 * MIN);
    let v = relay
        .send(msg(
            "svc@trust.example",
            "big@trust.example",
            600,
            "Notice",
            None,
            "later@trust.example",
        ))
        .await;
    assert_eq!(
        v.action,
        Action::Accept,
        "once the rate has fallen back large mail flows again"
    );
}
