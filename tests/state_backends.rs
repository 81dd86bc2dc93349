// SPDX-License-Identifier: GPL-3.0-or-later
//! The state backends against one suite: in memory, in a private redis-server, and
//! Redis behind the failover. Then the failover itself: Redis killed, hung and back.

mod common;

use common::Redis;
use fanout_milter::clock::SystemClock;
use fanout_milter::metrics::Metrics;
use fanout_milter::notify::{AlertKind, AlertReceiver, channel};
use fanout_milter::state::failover::with_deadline;
use fanout_milter::state::{
    Brake, Failover, Limit, MAX_BRAKE_COMMENT_CHARS, MemoryBackend, OnFailure, Outcome, Plan,
    RedisBackend, StateBackend, Storm, Take, TakeStep, ThreadCounts, ThreadOutcome, ThreadStep,
};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

const WINDOW: Duration = Duration::from_secs(600);
const HOUR: Limit = Limit {
    limit: 1000,
    period: Duration::from_secs(3600),
};

fn storm(thread: &str, since: u64, until: u64) -> Storm {
    Storm {
        id: Storm::id_of(thread),
        thread: thread.into(),
        subject: "Re: all staff".into(),
        list: "all@corp.example".into(),
        audience: 5000,
        messages: 3,
        senders: 3,
        since: fanout_milter::clock::epoch_secs(t(since)),
        until: fanout_milter::clock::epoch_secs(t(until)),
        blocked: 0,
    }
}

fn counts(messages: u64, senders: u64) -> ThreadCounts {
    ThreadCounts { messages, senders }
}

/// Everything a backend must answer alike.
async fn suite(b: &dyn StateBackend) {
    // Threads: messages and distinct senders within the window.
    assert_eq!(
        b.thread_note("t", "a", WINDOW, t(0)).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.thread_note("t", "a", WINDOW, t(10)).await.unwrap(),
        counts(2, 1)
    );
    assert_eq!(
        b.thread_note("t", "b", WINDOW, t(20)).await.unwrap(),
        counts(3, 2)
    );
    assert_eq!(
        b.thread_note("other", "b", WINDOW, t(20)).await.unwrap(),
        counts(1, 1),
        "threads apart"
    );
    assert_eq!(
        b.thread_note("t", "c", WINDOW, t(605)).await.unwrap(),
        counts(3, 3),
        "the first fell out of the window"
    );
    assert_eq!(
        b.thread_note("t", "c", WINDOW, t(1300)).await.unwrap(),
        counts(1, 1),
        "all of them fell out"
    );

    // Storms: start once, block until their end, clear.
    assert!(b.storm_start(&storm("s", 0, 100), t(0)).await.unwrap());
    assert!(
        !b.storm_start(&storm("s", 1, 101), t(1)).await.unwrap(),
        "one storm per thread"
    );
    let hit = b.storm_hit("s", t(50)).await.unwrap().expect("active");
    assert_eq!((hit.blocked, hit.until), (1, storm("s", 0, 100).until));
    assert_eq!(b.storm_hit("s", t(60)).await.unwrap().unwrap().blocked, 2);
    assert!(
        b.storm_hit("s", t(100)).await.unwrap().is_none(),
        "over at until"
    );
    assert!(b.storm_hit("nothing", t(60)).await.unwrap().is_none());
    assert!(
        b.storm_start(&storm("s", 100, 200), t(100)).await.unwrap(),
        "a new one after the end"
    );
    assert!(b.storm_start(&storm("s2", 110, 300), t(110)).await.unwrap());
    let list = b.storm_list(t(150)).await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.thread.as_str()).collect::<Vec<_>>(),
        ["s", "s2"],
        "active storms, oldest first"
    );
    assert_eq!(b.storm_list(t(250)).await.unwrap().len(), 1);
    b.thread_note("s", "a", WINDOW, t(140)).await.unwrap();
    assert!(b.storm_clear(&Storm::id_of("s")).await.unwrap());
    assert!(!b.storm_clear(&Storm::id_of("s")).await.unwrap());
    assert_eq!(
        b.thread_note("s", "b", WINDOW, t(150))
            .await
            .unwrap()
            .messages,
        1,
        "clearing also forgets the thread's window"
    );
    assert!(b.storm_hit("s", t(150)).await.unwrap().is_none());

    // A storm keeps at most 200 characters of its subject, however long the message's.
    let mut long = storm("long", 0, 100);
    long.subject = format!("Re: {}", "{reason}".repeat(8_000));
    assert!(b.storm_start(&long, t(0)).await.unwrap());
    let kept = b.storm_hit("long", t(1)).await.unwrap().expect("active");
    assert_eq!(kept.subject.chars().count(), 200, "{}", kept.subject);
    assert!(kept.subject.starts_with("Re: {reason}{reason}"));
    let listed = b.storm_list(t(1)).await.unwrap();
    let listed = listed.iter().find(|s| s.thread == "long").expect("listed");
    assert_eq!(listed.subject, kept.subject);
    assert!(b.storm_clear(&Storm::id_of("long")).await.unwrap());

    // Flags: set once per ttl.
    let minute = Duration::from_secs(60);
    assert!(b.flag("breaker", minute, t(0)).await.unwrap());
    assert!(!b.flag("breaker", minute, t(30)).await.unwrap());
    assert!(b.flag("breaker", minute, t(60)).await.unwrap());

    // GCRA budgets, per key, given back.
    let a = b.take("a", 400, HOUR, t(0)).await.unwrap();
    assert!(a.allowed && a.used == 400, "{a:?}");
    assert!(b.take("a", 400, HOUR, t(1)).await.unwrap().allowed);
    let refused = b.take("a", 400, HOUR, t(2)).await.unwrap();
    assert!(!refused.allowed, "1,200 > 1,000");
    assert_eq!((refused.used, refused.retry_at), (800, t(720)));
    assert!(b.take("a", 400, HOUR, t(720)).await.unwrap().allowed);
    assert!(
        b.take("b", 400, HOUR, t(0)).await.unwrap().allowed,
        "another sender has its own budget"
    );
    assert!(b.take("c", 800, HOUR, t(0)).await.unwrap().allowed);
    b.give_back("c", 800, HOUR, t(0)).await.unwrap();
    b.give_back("never-taken", 5, HOUR, t(0)).await.unwrap();
    assert!(b.take("c", 1000, HOUR, t(0)).await.unwrap().allowed);

    // Sliding windows.
    // at(20) is a minute boundary.
    let base = 1_800_000_040;
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(base + s);
    assert_eq!(b.window_add("w", 600, minute, at(20)).await.unwrap(), 600);
    assert_eq!(b.window_total("w", minute, at(50)).await.unwrap(), 600);
    assert_eq!(
        b.window_add("w", 100, minute, at(95)).await.unwrap(),
        100 + 450
    );
    assert_eq!(b.window_total("w", minute, at(300)).await.unwrap(), 0);
    assert_eq!(b.window_total("none", minute, at(0)).await.unwrap(), 0);

    // The emergency brake: off, pulled for two hours (its comment capped), over by
    // itself, pulled until released, released.
    let epoch = fanout_milter::clock::epoch_secs;
    assert_eq!(b.brake_get(t(0)).await.unwrap(), None);
    let brake = Brake {
        min_audience: 100,
        since: epoch(t(0)),
        until: Some(epoch(t(7200))),
        by: "carol".into(),
        comment: "x".repeat(2000),
    };
    b.brake_set(Some(&brake), t(0)).await.unwrap();
    let on = b.brake_get(t(7199)).await.unwrap().expect("on");
    assert_eq!((on.min_audience, on.until), (100, brake.until));
    assert_eq!(on.comment.chars().count(), MAX_BRAKE_COMMENT_CHARS);
    assert_eq!(b.brake_get(t(7200)).await.unwrap(), None, "over by itself");
    let until_released = Brake {
        until: None,
        ..brake.clone()
    };
    b.brake_set(Some(&until_released), t(0)).await.unwrap();
    assert!(b.brake_get(t(86_400 * 365)).await.unwrap().is_some());
    b.brake_set(None, t(1)).await.unwrap();
    assert_eq!(b.brake_get(t(2)).await.unwrap(), None, "released");

    plan_suite(b).await;
}

/// A message counted in thread `thread`, from `sender`, at `at`: 3 messages from 2
/// senders trip a storm.
fn step(thread: &str, sender: &str, at: u64) -> ThreadStep {
    ThreadStep {
        storm: Storm {
            messages: 0,
            senders: 0,
            ..storm(thread, at, at + 3600)
        },
        sender: sender.into(),
        window: WINDOW,
        min_messages: 3,
        min_senders: 2,
    }
}

fn charge(key: &str, cost: u64) -> TakeStep {
    TakeStep {
        key: key.into(),
        cost,
        limit: HOUR,
    }
}

fn took(allowed: bool, used: u64, retry_at: SystemTime) -> Take {
    Take {
        allowed,
        used,
        retry_at,
    }
}

/// A whole message's plan answers what the separate operations answer, in order.
async fn plan_suite(b: &dyn StateBackend) {
    let message = |sender: &str, at: u64, takes: Vec<TakeStep>| Plan {
        thread: Some(step("p", sender, at)),
        takes,
    };
    let counted = |messages, senders, started| {
        Some(ThreadOutcome::Counted {
            counts: counts(messages, senders),
            started,
        })
    };
    assert_eq!(
        b.observe(&message("a", 0, vec![charge("pa", 400)]), t(0))
            .await
            .unwrap(),
        Outcome {
            thread: counted(1, 1, false),
            takes: vec![took(true, 400, t(0))],
        }
    );
    assert_eq!(
        b.observe(&message("a", 1, vec![charge("pa", 400)]), t(1))
            .await
            .unwrap(),
        Outcome {
            thread: counted(2, 1, false),
            takes: vec![took(true, 800, t(1))],
        }
    );
    assert_eq!(
        b.observe(
            &message("b", 2, vec![charge("pa", 400), charge("pb", 400)]),
            t(2)
        )
        .await
        .unwrap(),
        Outcome {
            thread: counted(3, 2, true),
            takes: vec![took(false, 800, t(720)), took(true, 400, t(2))],
        },
        "the third message trips the storm; budgets apart, in order"
    );
    let tripped = Storm {
        messages: 3,
        senders: 2,
        ..storm("p", 2, 3602)
    };
    let listed = b.storm_list(t(3)).await.unwrap();
    assert_eq!(
        listed.iter().find(|s| s.thread == "p"),
        Some(&tripped),
        "started with the counts that tripped it"
    );
    assert_eq!(
        b.observe(&message("c", 3, Vec::new()), t(3)).await.unwrap(),
        Outcome {
            thread: Some(ThreadOutcome::Stopped(Storm {
                blocked: 1,
                ..tripped.clone()
            })),
            takes: Vec::new(),
        },
        "the next one is stopped"
    );
    assert_eq!(
        b.observe(&message("d", 4, Vec::new()), t(4))
            .await
            .unwrap()
            .thread,
        Some(ThreadOutcome::Stopped(Storm {
            blocked: 2,
            ..tripped.clone()
        }))
    );
    assert_eq!(
        b.storm_hit("p", t(5)).await.unwrap().map(|s| s.blocked),
        Some(3),
        "the same storm as the separate operations see"
    );
    assert_eq!(
        b.observe(
            &Plan {
                thread: None,
                takes: vec![charge("pb", 600)],
            },
            t(5)
        )
        .await
        .unwrap(),
        Outcome {
            thread: None,
            takes: vec![took(true, 1000, t(5))],
        },
        "budgets alone"
    );
    assert_eq!(
        b.observe(&Plan::default(), t(5)).await.unwrap(),
        Outcome::default()
    );
    // Cleared, the thread counts afresh and trips again.
    assert!(b.storm_clear(&Storm::id_of("p")).await.unwrap());
    for (sender, at, expected) in [
        ("a", 20, counted(1, 1, false)),
        ("b", 21, counted(2, 2, false)),
        ("c", 22, counted(3, 3, true)),
    ] {
        let answer = b.observe(&message_on("p", sender, at), t(at)).await;
        assert_eq!(answer.unwrap().thread, expected, "{sender}");
    }
    assert!(b.storm_clear(&Storm::id_of("p")).await.unwrap());

    // A message's budgets given back together.
    let both = vec![charge("g1", 400), charge("g2", 600)];
    let taken = b
        .observe(
            &Plan {
                thread: None,
                takes: both.clone(),
            },
            t(30),
        )
        .await
        .unwrap();
    assert!(taken.takes.iter().all(|t| t.allowed));
    b.give_back_all(&both, t(30)).await.unwrap();
    b.give_back_all(&[charge("never-taken", 5)], t(30))
        .await
        .unwrap();
    for key in ["g1", "g2"] {
        let whole = b.take(key, 1000, HOUR, t(30)).await.unwrap();
        assert!(whole.allowed, "{key}: all of it back");
    }
}

fn message_on(thread: &str, sender: &str, at: u64) -> Plan {
    Plan {
        thread: Some(step(thread, sender, at)),
        takes: Vec::new(),
    }
}

#[tokio::test]
async fn the_memory_backend_passes_the_suite() {
    suite(&MemoryBackend::new()).await;
}

const TIMEOUT: Duration = Duration::from_millis(300);

fn redis_backend(redis: &Redis, prefix: &str) -> Arc<RedisBackend> {
    Arc::new(RedisBackend::new(&redis.url(), prefix, TIMEOUT).expect("a valid URL"))
}

#[tokio::test]
async fn the_redis_backend_passes_the_suite_and_keeps_its_keys_under_the_prefix() {
    let redis = Redis::start();
    let b = redis_backend(&redis, "suite:");
    b.ping().await.expect("redis answers");
    suite(b.as_ref()).await;
    let other = redis_backend(&redis, "other:");
    assert!(
        other.storm_list(t(150)).await.unwrap().is_empty(),
        "another prefix sees none of it"
    );
    assert_eq!(
        other.thread_note("t", "a", WINDOW, t(10)).await.unwrap(),
        counts(1, 1)
    );
}

fn failover(redis: &Redis, prefix: &str, on_failure: OnFailure) -> (Failover, AlertReceiver) {
    let (tx, rx) = channel(100);
    let f = Failover::new(
        redis_backend(redis, prefix),
        Arc::new(MemoryBackend::new()),
        &redis.url(),
        on_failure,
        TIMEOUT,
        Some(tx),
        Arc::new(SystemClock),
    );
    (f, rx)
}

#[tokio::test]
async fn redis_behind_the_failover_passes_the_suite() {
    let redis = Redis::start();
    let (f, mut alerts) = failover(&redis, "fo:", OnFailure::Tempfail);
    suite(&f).await;
    assert!(f.is_up());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), alerts.recv())
            .await
            .is_err(),
        "no outage, no alert"
    );
}

/// The next alert, within a deadline.
async fn next_alert(alerts: &mut AlertReceiver) -> fanout_milter::notify::Alert {
    tokio::time::timeout(Duration::from_secs(30), alerts.recv())
        .await
        .expect("an alert within 30 s")
        .expect("the alert queue is open")
}

/// Waits (bounded) until the failover uses Redis again.
async fn until_up(f: &Failover) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f.is_up() {
        assert!(
            Instant::now() < deadline,
            "redis not used again within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_relays_share_counts_carry_on_alone_when_redis_dies_and_share_again_when_it_is_back() {
    let mut redis = Redis::start();
    let (a, mut alerts) = failover(&redis, "fleet:", OnFailure::Local);
    let (b, _) = failover(&redis, "fleet:", OnFailure::Local);

    assert_eq!(
        a.thread_note("t", "x", WINDOW, t(0)).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.thread_note("t", "y", WINDOW, t(1)).await.unwrap(),
        counts(2, 2),
        "relay b sees relay a's message"
    );
    assert!(a.storm_start(&storm("t", 2, 1000), t(2)).await.unwrap());
    assert!(
        b.storm_hit("t", t(3)).await.unwrap().is_some(),
        "a storm tripped on a stops b"
    );
    let brake = Brake {
        min_audience: 100,
        since: 0,
        until: None,
        by: "carol".into(),
        comment: "incident".into(),
    };
    a.brake_set(Some(&brake), t(3)).await.unwrap();
    assert_eq!(
        b.brake_get(t(3)).await.unwrap(),
        Some(brake.clone()),
        "a brake pulled on a holds on b"
    );

    redis.kill();
    let started = Instant::now();
    let during = a.thread_note("t", "z", WINDOW, t(4)).await.unwrap();
    assert!(
        started.elapsed() < TIMEOUT * 3,
        "a dead server costs at most the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        during,
        counts(2, 2),
        "relay a carries on with what it wrote through (its own x, and z)"
    );
    assert!(!a.is_up());
    let down = next_alert(&mut alerts).await;
    assert_eq!(down.kind, AlertKind::StateDown);
    assert!(down.reason.contains("own state"), "{}", down.reason);
    assert!(
        b.storm_hit("t", t(5)).await.unwrap().is_some(),
        "relay b remembers the storm it saw while redis was up"
    );
    assert_eq!(
        b.brake_get(t(5)).await.unwrap(),
        Some(brake),
        "the brake does not let go because redis went away"
    );
    assert!(
        a.brake_set(None, t(5)).await.is_err(),
        "releasing it on one relay alone is refused, not half done"
    );
    assert!(a.brake_get(t(5)).await.unwrap().is_some());
    assert!(
        a.storm_start(&storm("u", 6, 1000), t(6)).await.unwrap(),
        "tripped alone"
    );

    let redis = Redis::start_on(redis.port);
    until_up(&a).await;
    until_up(&b).await;
    let back = next_alert(&mut alerts).await;
    assert_eq!(back.kind, AlertKind::StateBack);
    let fresh = redis_backend(&redis, "fleet:");
    assert!(
        fresh.storm_hit("u", t(7)).await.unwrap().is_some(),
        "the storm a tripped alone was copied to redis"
    );
    assert_eq!(
        a.thread_note("v", "x", WINDOW, t(8)).await.unwrap(),
        counts(1, 1)
    );
    assert_eq!(
        b.thread_note("v", "y", WINDOW, t(9)).await.unwrap(),
        counts(2, 2),
        "shared counting resumed"
    );
}

#[tokio::test]
async fn a_hung_redis_holds_one_message_for_the_timeout_and_no_more() {
    let redis = Redis::start();
    let (f, _alerts) = failover(&redis, "hang:", OnFailure::Local);
    assert_eq!(
        f.thread_note("t", "x", WINDOW, t(0)).await.unwrap(),
        counts(1, 1)
    );
    redis.signal(Signal::SIGSTOP);

    // One message: several operations under one deadline.
    let started = Instant::now();
    let answers = with_deadline(started + TIMEOUT, async {
        let first = f.thread_note("t", "y", WINDOW, t(1)).await;
        let second = f.take("sender", 10, HOUR, t(1)).await;
        (first, second)
    })
    .await;
    let took = started.elapsed();
    assert_eq!(answers.0.unwrap(), counts(2, 2), "counted locally");
    assert!(answers.1.unwrap().allowed);
    assert!(
        took >= TIMEOUT / 2 && took < TIMEOUT * 3,
        "the message waited about the timeout once: {took:?}"
    );
    assert!(!f.is_up());

    let started = Instant::now();
    f.thread_note("t", "z", WINDOW, t(2)).await.unwrap();
    assert!(
        started.elapsed() < TIMEOUT / 2,
        "the next message does not wait again: {:?}",
        started.elapsed()
    );

    redis.signal(Signal::SIGCONT);
    until_up(&f).await;
    f.thread_note("t", "w", WINDOW, t(3)).await.unwrap();
    let seen = redis_backend(&redis, "hang:")
        .thread_note("t", "q", WINDOW, t(4))
        .await
        .unwrap();
    assert!(
        seen.messages >= 3 && seen.senders >= 3,
        "back on redis: x from before, w after and q (y too if its command was queued): {seen:?}"
    );
}

/// One sample's value in a metrics exposition.
fn sample(metrics: &Metrics, series: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn on_failure_tempfail_refuses_while_redis_is_down_and_the_metrics_say_so() {
    let mut redis = Redis::start();
    let metrics = Arc::new(Metrics::new());
    let (f, _alerts) = failover(&redis, "tf:", OnFailure::Tempfail);
    let f = f.with_metrics(metrics.clone());
    assert!(f.take("s", 1, HOUR, t(0)).await.unwrap().allowed);
    let trips = "fanout_state_backend_request_duration_seconds_count";
    assert_eq!(sample(&metrics, trips), 1.0);
    assert_eq!(sample(&metrics, "fanout_state_backend_errors_total"), 0.0);
    assert_eq!(sample(&metrics, "fanout_state_failover_active"), 0.0);
    redis.kill();
    let e = f
        .take("s", 1, HOUR, t(1))
        .await
        .expect_err("no state, no answer");
    assert!(e.to_string().contains("on_failure = \"tempfail\""), "{e}");
    assert!(f.storm_hit("x", t(1)).await.is_err());
    assert_eq!(
        sample(&metrics, "fanout_state_backend_errors_total"),
        1.0,
        "the failed request; none is sent while it is down"
    );
    assert_eq!(sample(&metrics, "fanout_state_failover_active"), 1.0);
    let _redis = Redis::start_on(redis.port);
    until_up(&f).await;
    assert_eq!(sample(&metrics, "fanout_state_failover_active"), 0.0);
    assert!(f.take("s", 1, HOUR, t(2)).await.unwrap().allowed);
    assert_eq!(sample(&metrics, trips), 2.0);
}

/// A brake value in Redis that is no brake (written by hand, another program) is read
/// as no brake; Redis answered, so it stays in use (not marked down every read).
#[tokio::test]
async fn a_brake_value_that_is_no_brake_is_no_brake_and_redis_stays_up() {
    let redis = Redis::start();
    let (f, mut alerts) = failover(&redis, "bad:", OnFailure::Local);
    let client = redis::Client::open(redis.url()).expect("a valid URL");
    let mut c = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connected in time")
    .expect("connected");
    for bad in [
        "{not a brake",
        "\"on\"",
        "{\"min_audience\":\"\u{202e}lots\"}",
    ] {
        let () = redis::cmd("SET")
            .arg("bad:brake")
            .arg(bad)
            .query_async(&mut c)
            .await
            .expect("set");
        for _ in 0..3 {
            assert_eq!(f.brake_get(t(1)).await.expect("read"), None, "{bad}");
        }
        assert!(f.is_up(), "{bad}: redis stays in use");
    }
    assert_eq!(
        f.thread_note("t", "x", WINDOW, t(2)).await.unwrap(),
        counts(1, 1)
    );
    let (other, _) = failover(&redis, "bad:", OnFailure::Local);
    assert_eq!(
        other.thread_note("t", "y", WINDOW, t(3)).await.unwrap(),
        counts(2, 2),
        "still counted in redis"
    );
    let brake = Brake {
        min_audience: 100,
        since: 0,
        until: None,
        by: "carol".into(),
        comment: "incident".into(),
    };
    other.brake_set(Some(&brake), t(4)).await.unwrap();
    assert_eq!(f.brake_get(t(4)).await.unwrap(), Some(brake));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), alerts.recv())
            .await
            .is_err(),
        "no outage alerted"
    );
}

/// The commands clients sent `redis` while `work` ran, seen by MONITOR (commands a
/// script ran are left out: they are not round trips).
async fn commands_sent<F: std::future::Future>(redis: &Redis, work: F) -> (F::Output, Vec<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    const END: &str = "end-of-count";
    let connect = || {
        bounded(
            "a connection",
            tokio::net::TcpStream::connect(("127.0.0.1", redis.port)),
        )
    };
    let mut monitor = connect().await.expect("connect");
    monitor.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = BufReader::new(monitor).lines();
    let ok = bounded("MONITOR's answer", lines.next_line()).await;
    assert_eq!(ok.unwrap().as_deref(), Some("+OK"));
    let out = work.await;
    let mut marker = connect().await.expect("connect");
    marker
        .write_all(format!("ECHO {END}\r\n").as_bytes())
        .await
        .unwrap();
    let mut echoed = [0u8; 5];
    bounded("ECHO's answer", marker.read_exact(&mut echoed))
        .await
        .unwrap();
    let mut sent = Vec::new();
    loop {
        let line = bounded("the marker in MONITOR", lines.next_line())
            .await
            .unwrap()
            .expect("MONITOR stays open");
        if line.contains(END) {
            return (out, sent);
        }
        if !line.contains(" lua]") {
            sent.push(line);
        }
    }
}

/// `work`'s output, within 10 s.
async fn bounded<F: std::future::Future>(what: &str, work: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"))
}

/// The policy of a site that counts storms and rates: replies to 500+ recipients are
/// counted, 3 from 2 senders trip a storm; two hourly budgets per sender.
fn stateful_policy() -> fanout_milter::policy::Policy {
    use fanout_milter::policy::{Policy, RatePolicy, StormPolicy};
    Policy {
        storm: StormPolicy {
            min_audience: 500,
            reply: "storm on {subject}".into(),
            ..StormPolicy::default()
        },
        rate: RatePolicy {
            recipients_per_hour: 1_000_000,
            recipients_per_day: 10_000_000,
            ..RatePolicy::default()
        },
        ..Policy::default()
    }
}

/// A reply from `sender` to a list of 5,000.
fn reply(sender: &str, n: usize) -> fanout_milter::policy::MessageFacts {
    use fanout_milter::policy::{AudienceFacts, ListFacts, MessageFacts};
    let mut f = MessageFacts {
        sender: sender.to_owned(),
        ..MessageFacts::default()
    };
    f.recipients.add("all@corp.example");
    f.headers.visible.add("all@corp.example");
    f.headers.subject = Some("Re: the party".into());
    f.headers.message_id = Some(format!("<{n}@corp.example>"));
    f.headers.in_reply_to = vec!["<party@corp.example>".into()];
    f.headers.references = vec!["<party@corp.example>".into()];
    f.audience = Some(AudienceFacts {
        total: 5000,
        lists: vec![ListFacts {
            address: "all@corp.example".into(),
            size: 5000,
            ..Default::default()
        }],
        ..Default::default()
    });
    f
}

/// Each stateful message (a reply to 5,000 counted for storms, charged to two budgets)
/// costs one round trip to Redis, through the daemon's whole decision: counted, the
/// one that trips the storm, and the ones it stops (whose budgets are given back
/// afterwards, off the message's path, in one more call).
#[tokio::test]
async fn a_stateful_message_is_one_round_trip_to_redis() {
    use fanout_milter::decide::{GuardState, Offline, decide};
    use fanout_milter::policy::{Action, Replies};
    use fanout_milter::state::{Guard, StateError};
    let redis = Redis::start();
    let (f, _alerts) = failover(&redis, "rt:", OnFailure::Tempfail);
    let local = f.local().clone();
    let guard =
        Guard::new(Arc::new(f.clone()), Arc::new(SystemClock), None).with_relay_state(local);
    let policy = stateful_policy();
    let replies = Replies {
        contact: "the desk".into(),
        reject: "No: {reason}".into(),
        tempfail: "Later: {reason}".into(),
    };
    // Connects and loads the message's script (NOSCRIPT, SCRIPT LOAD, EVALSHA) on a
    // first message of another thread.
    let mut warm = reply("zed@corp.example", 0);
    warm.headers.in_reply_to = vec!["<other@corp.example>".into()];
    warm.headers.references = warm.headers.in_reply_to.clone();
    let send = |facts: fanout_milter::policy::MessageFacts| {
        let (guard, policy, replies) = (&guard, &policy, &replies);
        async move {
            let mut state = GuardState::new(guard);
            let d = decide(
                policy,
                replies,
                &facts,
                "Q",
                &mut state,
                &mut Offline::<StateError>::default(),
            )
            .await
            .expect("redis answers");
            d.effect.action
        }
    };
    assert_eq!(send(warm).await, Action::Accept);
    // And the script that gives budgets back.
    f.give_back_all(&[charge("warm", 1)], t(0))
        .await
        .expect("redis answers");
    let mut actions = Vec::new();
    for (n, sender) in ["ann", "bob", "cat"].into_iter().enumerate() {
        let (action, sent) = commands_sent(
            &redis,
            send(reply(&format!("{sender}@corp.example"), n + 1)),
        )
        .await;
        assert_eq!(sent.len(), 1, "{sender}: {sent:#?}");
        assert!(sent[0].contains("\"EVALSHA\""), "{}", sent[0]);
        actions.push(action);
    }
    assert_eq!(
        actions,
        [Action::Accept; 3],
        "the third trips the storm and passes"
    );
    let c = redis::Client::open(redis.url()).expect("a valid URL");
    let mut c = bounded("a connection", c.get_multiplexed_async_connection())
        .await
        .expect("connect");
    let (action, sent) = commands_sent(&redis, async {
        let action = send(reply("dan@corp.example", 4)).await;
        // The budgets given back in the background, before the count ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tat: Option<String> = redis::cmd("GET")
                .arg("rt:gcra:rate:recipients_per_hour:dan@corp.example")
                .query_async(&mut c)
                .await
                .expect("GET");
            if tat.is_none() {
                break;
            }
            assert!(Instant::now() < deadline, "budgets given back within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        action
    })
    .await;
    assert_eq!(action, Action::Reject, "stopped by the storm");
    // Less this test's own polls.
    let sent: Vec<String> = sent
        .into_iter()
        .filter(|l| !l.contains("\"GET\""))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert!(
        sent[0].contains("\"EVALSHA\"") && sent[0].contains("rt:thr:"),
        "the message: {}",
        sent[0]
    );
    assert!(
        sent[1].contains("\"EVALSHA\"") && sent[1].contains("rt:gcra:"),
        "then, off its path, its two budgets given back in one call: {}",
        sent[1]
    );
    assert!(f.is_up());
}

/// Two relays racing on one thread and one budget: every message counted once, the
/// budget never overdrawn, exactly one storm started.
#[tokio::test]
async fn two_relays_racing_on_one_key_stay_exact() {
    let redis = Redis::start();
    let relays = [
        redis_backend(&redis, "race:"),
        redis_backend(&redis, "race:"),
    ];
    for r in &relays {
        r.ping().await.expect("redis answers");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..120u64 {
        let relay = relays[(i % 2) as usize].clone();
        tasks.spawn(async move {
            let plan = Plan {
                thread: Some(ThreadStep {
                    min_messages: 100,
                    ..step("race", &format!("s{i}"), 0)
                }),
                takes: vec![charge("shared", 10)],
            };
            relay.observe(&plan, t(0)).await.expect("redis answers")
        });
    }
    let mut messages = Vec::new();
    let (mut allowed, mut started, mut stopped) = (0, 0, 0);
    while let Some(outcome) = tasks.join_next().await {
        let outcome = outcome.expect("task");
        allowed += usize::from(outcome.takes[0].allowed);
        match outcome.thread {
            Some(ThreadOutcome::Counted { counts, started: s }) => {
                assert_eq!(counts.messages, counts.senders, "one sender per message");
                messages.push(counts.messages);
                started += usize::from(s);
            }
            Some(ThreadOutcome::Stopped(_)) => stopped += 1,
            None => panic!("the thread was asked"),
        }
    }
    messages.sort_unstable();
    assert_eq!(
        messages,
        (1..=100).collect::<Vec<u64>>(),
        "each count seen once, up to the one that trips"
    );
    assert_eq!((started, stopped), (1, 20), "one storm; it stops the rest");
    assert_eq!(allowed, 100, "1,000 an hour at 10 a message");
}

/// A thread keeps its newest 10,000 messages (`THREAD_EVENTS_MAX`) in Redis as in
/// memory, through the message's script and the separate count alike.
#[tokio::test]
async fn a_thread_keeps_its_newest_ten_thousand_messages_in_redis_as_in_memory() {
    const MAX: u64 = 10_000;
    let memory = MemoryBackend::new();
    for i in 0..MAX {
        memory
            .thread_note("full", &format!("s{}", i % 7), WINDOW, t(0))
            .await
            .unwrap();
    }
    assert_eq!(
        memory.thread_note("full", "z", WINDOW, t(1)).await.unwrap(),
        counts(MAX, 8),
        "memory: the oldest dropped, the newest counted"
    );
    let redis = Redis::start();
    let b = redis_backend(&redis, "cap:");
    let c = redis::Client::open(redis.url()).expect("a valid URL");
    let mut c = bounded("a connection", c.get_multiplexed_async_connection())
        .await
        .expect("connect");
    let at = |secs: u64| {
        t(secs)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    };
    for thread in ["by-plan", "by-note"] {
        let mut fill = redis::cmd("ZADD");
        fill.arg(format!("cap:thr:{thread}:e"));
        for i in 0..MAX {
            fill.arg(at(0)).arg(format!("old-{i}"));
        }
        let added: u64 = bounded("the fill", fill.query_async(&mut c))
            .await
            .expect("ZADD");
        assert_eq!(added, MAX);
    }
    let outcome = b
        .observe(
            &Plan {
                thread: Some(ThreadStep {
                    min_messages: MAX + 1,
                    ..step("by-plan", "z", 1)
                }),
                takes: Vec::new(),
            },
            t(1),
        )
        .await
        .expect("redis answers");
    assert_eq!(
        outcome.thread,
        Some(ThreadOutcome::Counted {
            counts: counts(MAX, 1),
            started: false
        })
    );
    assert_eq!(
        b.thread_note("by-note", "z", WINDOW, t(1)).await.unwrap(),
        counts(MAX, 1)
    );
    for thread in ["by-plan", "by-note"] {
        let key = format!("cap:thr:{thread}:e");
        let kept: u64 = bounded("ZCARD", redis::cmd("ZCARD").arg(&key).query_async(&mut c))
            .await
            .expect("ZCARD");
        assert_eq!(kept, MAX, "{thread}: no more than the cap kept");
        let newest: Vec<(String, u64)> = bounded(
            "ZRANGE",
            redis::cmd("ZRANGE")
                .arg(&key)
                .arg(-1)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut c),
        )
        .await
        .expect("ZRANGE");
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].1, at(1), "{thread}: the new message is kept");
        assert!(
            !newest[0].0.starts_with("old-"),
            "{thread}: its member is the relay's own: {}",
            newest[0].0
        );
    }
}
