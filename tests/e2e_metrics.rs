// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, `/metrics`: the daemon runs in process ([`Builder`]) with `[metrics]
//! listen = "inet:127.0.0.1:0"`, and is scraped over real HTTP (plain TCP).
//!
//! - A known mix through a private Postfix (accepted, tagged, held, rejected, and
//!   tempfailed because the shared state is down) balances exactly in the scrape, the
//!   held gauge equals Postfix's hold queue before and after a release by the worker,
//!   and `promtool check metrics` accepts the scrape.
//! - 20 concurrent SMTP sessions while another thread scrapes in a loop: every scrape
//!   answers and every message is counted once.
//! - 10,000 messages from 10,000 senders through the milter protocol leave the set of
//!   series unchanged, and nothing from a message appears in the scrape.
//! - With `[metrics] token_file`, a scrape without the bearer token is refused.

mod common;

use common::*;
use fanout_milter::quarantine::{
    NewRequest, QuarantineIndex, QueueId, Request, RequestAction, RequestState, Store, Via,
};
use fanout_milter::{Builder, config};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ------------------------------------------------------------------------- harness

/// The daemon in process, on its own runtime: its milter and metrics addresses, its
/// store. Dropping it shuts it down (bounded) and then the runtime.
struct InProcess {
    rt: tokio::runtime::Runtime,
    milter: Option<SocketAddr>,
    metrics: SocketAddr,
    store: Arc<Store>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Loads `file` and starts the daemon it describes, which must have `[metrics]
    /// listen` on TCP.
    fn start(file: &Path) -> InProcess {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = config::load(file).unwrap_or_else(|e| panic!("test config refused: {e}"));
        let daemon = rt
            .block_on(async {
                tokio::time::timeout(DEADLINE, Builder::new(config).admin_socket(None).start())
                    .await
            })
            .expect("the daemon starts in time")
            .expect("the daemon starts");
        let milter = daemon.local_addr();
        let metrics = daemon.metrics_addr().expect("the metrics endpoint listens");
        let store = daemon.store();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (_reloads, reload_rx) = tokio::sync::mpsc::channel(1);
        let task = rt.spawn(async move {
            // The reload channel stays open while the daemon runs.
            let _keep = _reloads;
            daemon
                .run(reload_rx, async move {
                    let _ = stopped.await;
                })
                .await
        });
        InProcess {
            rt,
            milter,
            metrics,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `inet:127.0.0.1:PORT` of the milter socket, for Postfix.
    fn milter_listen(&self) -> String {
        format!("inet:{}", self.milter.expect("the milter listens on TCP"))
    }

    /// Stops the daemon and checks that it returned Ok.
    fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let task = self.task.take().expect("running");
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(DEADLINE, task).await })
            .expect("the daemon stops in time")
            .expect("the daemon task did not panic");
        assert!(result.is_ok(), "run returns Ok: {result:?}");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(DEADLINE, task).await });
        }
    }
}

/// One HTTP/1.1 GET of `/metrics` with extra header lines, bounded by [`DEADLINE`]:
/// (status code, headers lowercased, body).
fn get_metrics(addr: SocketAddr, extra_headers: &str) -> (u16, String, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to /metrics");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.set_write_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("the whole answer within the deadline");
    assert!(
        started.elapsed() < DEADLINE,
        "a scrape answered within {DEADLINE:?}"
    );
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_ascii_lowercase(), body)
}

/// The body of a chunked answer.
fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

/// A scrape in the Prometheus text format that answered 200.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, head, body) = get_metrics(addr, "");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Scrape::parse(body)
}

/// The samples of one scrape, by series (`name{labels}`).
struct Scrape {
    body: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn parse(body: String) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{line:?}: value: {e}"));
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "a series appears once: {series}"
            );
        }
        Scrape { body, samples }
    }

    /// The value of one series; it must exist.
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in\n{}", self.body))
    }

    /// The sum of the samples named `name` whose labels contain every `label="value"`
    /// of `with`.
    fn sum(&self, name: &str, with: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (n, labels) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name && with.iter().all(|w| labels.contains(w))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Decisions counted with `verdict`, whatever the rule.
    fn verdict(&self, verdict: &str) -> f64 {
        self.sum(
            "fanout_decisions_total",
            &[&format!("verdict=\"{verdict}\"")],
        )
    }

    /// Every message decided.
    fn decided(&self) -> f64 {
        self.sum("fanout_decisions_total", &[])
    }

    /// The set of series (names and labels, without values).
    fn series(&self) -> BTreeSet<String> {
        self.samples.keys().cloned().collect()
    }
}

/// `promtool check metrics` on `body` (stdin). Without promtool the check is skipped
/// with a printed line, unless FANOUT_REQUIRE_PROMTOOL=1 asks for it.
fn promtool_check_metrics(body: &str) {
    const PROMTOOL: &str = "/usr/bin/promtool";
    if !Path::new(PROMTOOL).exists() {
        assert!(
            std::env::var("FANOUT_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "{PROMTOOL} is missing and FANOUT_REQUIRE_PROMTOOL=1: install Debian's prometheus package"
        );
        println!("{PROMTOOL} is not installed: `promtool check metrics` skipped");
        return;
    }
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = body.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("promtool") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer
        .join()
        .expect("writer thread")
        .expect("the scrape written to promtool");
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    assert!(
        status.success(),
        "promtool check metrics: {status}\n{out}\n{err}"
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The configuration file of the Postfix tests, written to `dir/fanout-milter.toml`:
/// tag from 3 envelope recipients, quarantine from 5, reject from 8, holds not told to
/// their sender (so that no notice passes the milter and is counted); `extra` added.
fn write_config(dir: &Path, sink: &Sink, extra: &str) -> std::path::PathBuf {
    let file = dir.join("fanout-milter.toml");
    std::fs::write(
        &file,
        format!(
            r#"[milter]
listen = "inet:127.0.0.1:0"
shutdown_timeout = "10s"

[domains]
internal = ["corp.example"]

[limits.envelope]
tag = 3
quarantine = 5
reject = 8
notify_sender = false

[reply]
contact = "the Service Desk on 4242"

[postfix]
config_directory = "{etc}"

[notify]
from = "postmaster@corp.example"
relay = "127.0.0.1:{sink}"

[quarantine]
state_dir = "{state}"
review_within = "4h"

[metrics]
listen = "inet:127.0.0.1:0"

{extra}
"#,
            etc = dir.join("postfix/etc").display(),
            sink = sink.port,
            state = dir.join("state").display(),
        ),
    )
    .expect("write the configuration");
    file
}

/// Sends one message to `n` recipients `r{i}@corp.example` (all in To) with a unique
/// subject.
fn send(port: u16, subject: &str, n: usize) -> Result<String, Refused> {
    let to: Vec<String> = (0..n).map(|i| format!("r{i}@corp.example")).collect();
    smtp_send(
        port,
        "ann@corp.example",
        &to,
        &message(subject, &to.join(", ")),
    )
}

/// How many keys the redis-server on `port` holds (DBSIZE).
fn redis_keys(port: u16) -> u64 {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), DEADLINE)
        .expect("connect to redis-server");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(b"DBSIZE\r\n").expect("send DBSIZE");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("the answer to DBSIZE");
    line.strip_prefix(':')
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("DBSIZE answered {line:?}"))
}

// ------------------------------------------------------------------------- tests

/// The known mix: 3 accepted, 2 tagged, 2 held, 2 rejected, 2 tempfailed (Redis down).
#[test]
fn a_known_mix_through_postfix_balances_exactly_in_the_scrape() {
    require_postfix();
    require_redis();
    let dir = scratch_dir("metrics-mix");
    let sink = Sink::start(dir.path());
    let mut redis = Redis::start();
    // Every message asks the shared state: [rate] charges the sender's hourly budget
    // in Redis (the relay-wide breaker counts on this relay's own state, and [storm]
    // asks only for replies). 1,000 an hour keeps the budget's key in Redis for 3.6 s
    // per recipient charged, long enough to see it. With on_failure = "tempfail", a
    // message that cannot reach Redis is tempfailed (cause state_backend).
    let file = write_config(
        dir.path(),
        &sink,
        &format!(
            "[rate]\nrecipients_per_hour = 1000\n\n[state]\nbackend = \"redis\"\n\
             url = \"{}\"\ntimeout = \"2s\"\non_failure = \"tempfail\"\n",
            redis.url()
        ),
    );
    let daemon = InProcess::start(&file);
    let postfix = Postfix::start(dir.path(), &sink, &daemon.milter_listen());
    let port = postfix.smtp_port;

    let before = scrape(daemon.metrics);
    assert_eq!(before.decided(), 0.0, "nothing decided yet");
    for verdict in [
        "accept",
        "tag",
        "confirm",
        "quarantine",
        "tempfail",
        "reject",
    ] {
        for rule in ["none", "limits.envelope", "fault", "rate", "exempt"] {
            assert_eq!(
                before.get(&format!(
                    "fanout_decisions_total{{verdict=\"{verdict}\",rule=\"{rule}\"}}"
                )),
                0.0,
                "every series exists from start at 0"
            );
        }
    }

    for i in 0..3 {
        send(port, &format!("mix-accept-{i}"), 1).expect("accepted");
    }
    for i in 0..2 {
        send(port, &format!("mix-tag-{i}"), 3).expect("tagged and accepted");
    }
    for i in 0..2 {
        send(port, &format!("mix-hold-{i}"), 5).expect("held, accepted by Postfix");
    }
    for i in 0..2 {
        let refused = send(port, &format!("mix-reject-{i}"), 8).expect_err("rejected");
        assert_eq!(refused.code / 100, 5, "{refused:?}");
    }
    assert!(
        redis_keys(redis.port) > 0,
        "the messages so far were counted in Redis"
    );
    redis.kill();
    for i in 0..2 {
        let refused = send(port, &format!("mix-down-{i}"), 1).expect_err("tempfailed");
        assert_eq!(refused.code / 100, 4, "{refused:?}");
    }
    let sent = 11.0;
    for subject in ["mix-accept-0", "mix-tag-1"] {
        sink.wait_for(subject);
    }
    let held = wait_for("both held messages in Postfix's hold queue", || {
        let held = postfix.held();
        (held.len() == 2).then_some(held)
    });

    let m = scrape(daemon.metrics);
    assert_eq!(m.verdict("accept"), 3.0, "{}", m.body);
    assert_eq!(m.verdict("tag"), 2.0, "{}", m.body);
    assert_eq!(m.verdict("quarantine"), 2.0, "{}", m.body);
    assert_eq!(m.verdict("confirm"), 0.0, "{}", m.body);
    assert_eq!(m.verdict("reject"), 2.0, "{}", m.body);
    assert_eq!(m.verdict("tempfail"), 2.0, "{}", m.body);
    assert_eq!(
        sent,
        m.verdict("accept")
            + m.verdict("tag")
            + (m.verdict("confirm") + m.verdict("quarantine"))
            + m.verdict("reject")
            + m.verdict("tempfail"),
        "sent = accepted + tagged + held + rejected + tempfailed"
    );
    assert_eq!(m.decided(), sent, "one decision per message");
    assert_eq!(
        m.get("fanout_decisions_total{verdict=\"accept\",rule=\"none\"}"),
        3.0
    );
    assert_eq!(
        m.get("fanout_decisions_total{verdict=\"tag\",rule=\"limits.envelope\"}"),
        2.0
    );
    assert_eq!(
        m.get("fanout_decisions_total{verdict=\"quarantine\",rule=\"limits.envelope\"}"),
        2.0
    );
    assert_eq!(
        m.get("fanout_decisions_total{verdict=\"reject\",rule=\"limits.envelope\"}"),
        2.0
    );
    assert_eq!(
        m.get("fanout_decisions_total{verdict=\"tempfail\",rule=\"fault\"}"),
        2.0
    );
    assert_eq!(
        m.get("fanout_tempfails_total{cause=\"state_backend\"}"),
        2.0
    );
    assert_eq!(m.sum("fanout_tempfails_total", &[]), 2.0, "no other cause");
    assert_eq!(
        m.get("fanout_state_failover_active"),
        1.0,
        "redis is down (on_failure = tempfail)"
    );
    assert!(m.get("fanout_state_backend_errors_total") >= 1.0);
    assert!(
        m.get("fanout_state_backend_request_duration_seconds_count") >= 9.0,
        "a round trip per message that reached redis"
    );
    assert_eq!(
        m.sum("fanout_held_messages", &[]),
        held.len() as f64,
        "the held gauge equals Postfix's hold queue"
    );
    assert_eq!(m.get("fanout_held_messages{rule=\"limits.envelope\"}"), 2.0);
    let oldest = m.get("fanout_held_oldest_timestamp_seconds{rule=\"limits.envelope\"}");
    assert!(
        oldest > 0.0 && oldest <= now() as f64,
        "the oldest hold's time: {oldest}"
    );
    assert_eq!(
        m.get("fanout_message_envelope_recipients_count"),
        9.0,
        "decided messages' envelopes (a fault has none)"
    );
    assert_eq!(m.get("fanout_decision_duration_seconds_count"), sent);
    assert!(
        m.get("fanout_milter_connections_total") >= sent,
        "one smtpd session per message"
    );
    assert_eq!(
        m.get("fanout_milter_protocol_errors_total{kind=\"sequence\"}"),
        0.0
    );
    for subject in ["mix-", "ann@", "corp.example"] {
        assert!(
            !m.body.contains(subject),
            "nothing from a message in the scrape: {subject}"
        );
    }
    promtool_check_metrics(&m.body);

    // OpenMetrics when asked for it.
    let (status, head, body) = get_metrics(
        daemon.metrics,
        "Accept: application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("fanout_decisions_total{verdict=\"quarantine\",rule=\"limits.envelope\"} 2"),
        "{body}"
    );

    // A release by the worker: the gauge drops by one, the release is counted.
    let release_before = m.get("fanout_review_actions_total{action=\"release\",via=\"desk\"}");
    let queue_id = &held[0];
    let request = daemon
        .store
        .submit(
            None,
            &NewRequest {
                queue_id: QueueId::parse(queue_id).expect("queue id"),
                action: RequestAction::Release,
                who: "carol".into(),
                via: Via::Desk,
                remote: Some("192.0.2.7".into()),
                comment: "checked with Ann".into(),
                at: now(),
            },
        )
        .expect("request filed");
    let worker = Worker::start(dir.path(), &file, &[]);
    let done: Request = wait_for("the release to be carried out", || {
        daemon
            .store
            .requests(request.held_id)
            .expect("requests")
            .into_iter()
            .find(|r| r.id == request.id && !r.state.is_open())
    });
    assert_eq!(done.state, RequestState::Done, "{done:?}");
    assert!(worker.stop().success(), "the worker exits 0 on SIGTERM");
    let left = wait_for("the released message out of the hold queue", || {
        let held = postfix.held();
        (!held.contains(queue_id)).then_some(held)
    });
    assert_eq!(left.len(), 1);
    let after = scrape(daemon.metrics);
    assert_eq!(
        after.sum("fanout_held_messages", &[]),
        m.sum("fanout_held_messages", &[]) - 1.0,
        "the held gauge drops by one"
    );
    assert_eq!(
        after.sum("fanout_held_messages", &[]),
        left.len() as f64,
        "and still equals the hold queue"
    );
    assert_eq!(
        after.get("fanout_review_actions_total{action=\"release\",via=\"desk\"}"),
        release_before + 1.0
    );
    assert_eq!(
        after.sum("fanout_review_actions_total", &[]),
        m.sum("fanout_review_actions_total", &[]) + 1.0,
        "no other action counted"
    );
    assert_eq!(after.sum("fanout_review_action_failures_total", &[]), 0.0);
    let delivered = wait_for("the released message at the sink", || {
        ["mix-hold-0", "mix-hold-1"].into_iter().find(|s| {
            sink.find(s)
                .iter()
                .any(|m| m.text.contains("END-OF-TEST-BODY"))
        })
    });
    assert!(delivered.starts_with("mix-hold-"));
    assert_eq!(
        after.decided(),
        sent,
        "a release goes out without passing the milter again"
    );
    promtool_check_metrics(&after.body);
    drop(postfix);
    daemon.stop();
}

/// `[metrics] token_file`: no token or a wrong one is refused with 401, the right one
/// gets the metrics.
#[test]
fn a_scrape_without_the_bearer_token_is_refused() {
    let dir = scratch_dir("metrics-token");
    let token = dir.path().join("metrics.token");
    std::fs::write(&token, "s3cret-scrape-token\n").expect("token file");
    let file = dir.path().join("fanout-milter.toml");
    std::fs::write(
        &file,
        format!(
            "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\n[domains]\ninternal = [\"corp.example\"]\n\n\
             [quarantine]\nstate_dir = \"{}\"\n\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n\
             token_file = \"{}\"\n",
            dir.path().join("state").display(),
            token.display()
        ),
    )
    .expect("write the configuration");
    let daemon = InProcess::start(&file);
    let addr = daemon.metrics;

    let (status, head, body) = get_metrics(addr, "");
    assert_eq!(status, 401, "no token: {head}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(!body.contains("fanout_"), "{body}");
    let (status, head, body) = get_metrics(addr, "Authorization: Bearer not-the-token\r\n");
    assert_eq!(status, 401, "a wrong token: {head}");
    assert!(!body.contains("fanout_"), "{body}");
    let (status, head, _) = get_metrics(addr, "Authorization: Basic czNjcmV0\r\n");
    assert_eq!(status, 401, "another scheme: {head}");
    let (status, head, body) = get_metrics(addr, "Authorization: Bearer s3cret-scrape-token\r\n");
    assert_eq!(status, 200, "the right token: {head}");
    assert!(body.contains("fanout_build_info{version=\""), "{body}");
    let (status, ..) = get_metrics(addr, "Authorization: Bearer s3cret-scrape-token\r\n");
    assert_eq!(status, 200, "again");

    // The file is read at each scrape: a new token takes effect at once.
    std::fs::write(&token, "the-next-token\n").expect("token file");
    let (status, ..) = get_metrics(addr, "Authorization: Bearer s3cret-scrape-token\r\n");
    assert_eq!(status, 401, "the old token no longer works");
    let (status, ..) = get_metrics(addr, "Authorization: Bearer the-next-token\r\n");
    assert_eq!(status, 200);
    daemon.stop();
}

/// One SMTP session sending `count` messages from `from`, each to one recipient with a
/// unique subject `{tag}-{i}`; every reply must come within [`DEADLINE`], and every
/// message must be accepted.
fn smtp_session(port: u16, from: &str, tag: &str, count: usize) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Postfix");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut reply = |expect: &str| {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("an SMTP reply in time");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        assert!(all.starts_with(expect), "expected {expect}, got {all:?}");
    };
    let mut send = |line: &str| writer.write_all(line.as_bytes()).expect("SMTP write");
    reply("220");
    send("EHLO client.corp.example\r\n");
    reply("250");
    for i in 0..count {
        let to = format!("{tag}-{i}@corp.example");
        send(&format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n"));
        reply("250");
        reply("250");
        reply("354");
        let mut body = message(&format!("{tag}-{i}"), &to);
        body.extend_from_slice(b".\r\n");
        send(std::str::from_utf8(&body).expect("ASCII message"));
        reply("250");
    }
    send("QUIT\r\n");
    reply("221");
}

/// 20 concurrent SMTP sessions of 5 messages each while another thread scrapes in a
/// loop: every scrape answers, and the decisions rise by exactly 100.
#[test]
fn scrapes_during_20_concurrent_smtp_sessions_all_answer_and_every_message_is_counted() {
    require_postfix();
    const SESSIONS: usize = 20;
    const PER_SESSION: usize = 5;
    let dir = scratch_dir("metrics-load");
    let sink = Sink::start(dir.path());
    let file = write_config(dir.path(), &sink, "");
    let daemon = InProcess::start(&file);
    let postfix = Postfix::start(dir.path(), &sink, &daemon.milter_listen());
    let port = postfix.smtp_port;
    let metrics = daemon.metrics;
    let before = scrape(metrics);

    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let scraper = std::thread::spawn(move || {
        let mut totals = Vec::new();
        loop {
            let s = scrape(metrics);
            totals.push(s.decided());
            // Paces the loop and ends it as soon as the sessions are over.
            match done_rx.recv_timeout(Duration::from_millis(25)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return totals,
            }
        }
    });
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|s| {
            std::thread::spawn(move || {
                smtp_session(
                    port,
                    &format!("load{s}@corp.example"),
                    &format!("load-{s}"),
                    PER_SESSION,
                );
            })
        })
        .collect();
    let mut failed = Vec::new();
    for (i, s) in sessions.into_iter().enumerate() {
        if let Err(e) = s.join() {
            failed.push((i, e));
        }
    }
    let _ = done_tx.send(());
    let totals = scraper.join().expect("every scrape answered 200 in time");
    assert!(failed.is_empty(), "sessions failed: {failed:?}");
    let after = scrape(metrics);
    let sent = (SESSIONS * PER_SESSION) as f64;
    assert_eq!(
        after.decided() - before.decided(),
        sent,
        "every message decided and counted once"
    );
    assert_eq!(after.verdict("accept") - before.verdict("accept"), sent);
    assert!(!totals.is_empty(), "the scraper scraped");
    println!("{} scrapes during the sessions", totals.len());
    assert!(
        totals.windows(2).all(|w| w[0] <= w[1]),
        "the counters only grow: {totals:?}"
    );
    assert!(
        totals.iter().all(|&t| t <= sent),
        "never more than sent: {totals:?}"
    );
    assert!(
        after.get("fanout_milter_connections_total")
            - before.get("fanout_milter_connections_total")
            >= SESSIONS as f64,
        "one milter connection per smtpd session at least"
    );
    sink.wait_for(&format!("load-{}-{}", SESSIONS - 1, PER_SESSION - 1));
    drop(postfix);
    daemon.stop();
}

/// 10,000 messages from 10,000 senders to 10,000 recipients with 10,000 subjects,
/// through the milter protocol (indymilter-test on a unix socket, 10 connections at
/// once): the scrape has the same series after as before, and nothing from a message.
#[test]
fn ten_thousand_senders_leave_the_label_set_unchanged() {
    use indymilter_test::{MacroStage, Status, TestConnection};
    const MESSAGES: usize = 10_000;
    const CONNECTIONS: usize = 10;
    let dir = scratch_dir("metrics-cardinality");
    let socket = dir.path().join("milter.sock");
    let file = dir.path().join("fanout-milter.toml");
    // tag from 2 envelope recipients, reject from 3; quarantine off (no store
    // writes); svc-* senders exempt. State in memory.
    std::fs::write(
        &file,
        format!(
            "[milter]\nlisten = \"unix:{}\"\n\n[domains]\ninternal = [\"corp.example\"]\n\n\
             [limits.envelope]\ntag = 2\nquarantine = 0\nreject = 3\n\n\
             [exempt]\nenvelope_senders = [\"svc-*@corp.example\"]\n\n\
             [rate]\nrecipients_per_hour = 1000000\n\n\
             [quarantine]\nstate_dir = \"{}\"\n\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n",
            socket.display(),
            dir.path().join("state").display()
        ),
    )
    .expect("write the configuration");
    let daemon = InProcess::start(&file);
    let before = scrape(daemon.metrics);
    let series_before = before.series();

    let started = Instant::now();
    let verdicts = daemon.rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let socket = socket.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = TestConnection::configure()
                    .read_timeout(DEADLINE)
                    .write_timeout(DEADLINE)
                    .open_unix(&socket)
                    .await
                    .expect("open a milter connection");
                assert_eq!(
                    conn.connect("client.corp.example", ([127, 0, 0, 1], 40000))
                        .await
                        .expect("connect"),
                    Status::Noreply
                );
                let mut counted = BTreeMap::<&'static str, usize>::new();
                for m in (c..MESSAGES).step_by(CONNECTIONS) {
                    // Distinct sender, recipients and subject per message; every 7th
                    // from an exempt sender, and 1, 2 or 3 recipients.
                    let sender = if m % 7 == 0 {
                        format!("<svc-zqsender{m}@corp.example>")
                    } else {
                        format!("<zqsender{m}@corp.example>")
                    };
                    let n = 1 + m % 3;
                    conn.mail([sender.as_str()]).await.expect("mail");
                    for r in 0..n {
                        conn.rcpt([format!("<zqrcpt{m}x{r}@corp.example>").as_str()])
                            .await
                            .expect("rcpt");
                    }
                    assert_eq!(conn.data().await.expect("data"), Status::Continue);
                    let subject = format!("zqsubject {m} payroll");
                    for (name, value) in [
                        ("From", format!("Someone <zqfrom{m}@corp.example>")),
                        ("To", format!("zqrcpt{m}x0@corp.example")),
                        ("Subject", subject),
                        ("Message-ID", format!("<zqmid{m}@corp.example>")),
                    ] {
                        conn.header(name, value.as_str()).await.expect("header");
                    }
                    let id = format!("C{m:010X}");
                    conn.macros(MacroStage::Eom, [("i", id.as_str())])
                        .await
                        .expect("macros");
                    conn.eoh().await.expect("eoh");
                    let (_, status) = conn.eom().await.expect("eom");
                    let verdict = match status {
                        Status::Continue => "passed",
                        Status::Reject { .. } => "rejected",
                        other => panic!("message {m}: unexpected {other:?}"),
                    };
                    *counted.entry(verdict).or_default() += 1;
                }
                conn.close().await.expect("close");
                counted
            }));
        }
        let mut all = BTreeMap::<&'static str, usize>::new();
        for t in tasks {
            let counted = tokio::time::timeout(DEADLINE * 5, t)
                .await
                .expect("the messages are decided in time")
                .expect("no connection failed");
            for (k, v) in counted {
                *all.entry(k).or_default() += v;
            }
        }
        all
    });
    println!(
        "{MESSAGES} messages through the milter protocol in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let after = scrape(daemon.metrics);
    assert_eq!(
        after.decided() - before.decided(),
        MESSAGES as f64,
        "every message counted: {verdicts:?}"
    );
    assert_eq!(
        after.verdict("reject") as usize,
        verdicts.get("rejected").copied().unwrap_or(0)
    );
    assert!(after.get("fanout_decisions_total{verdict=\"accept\",rule=\"exempt\"}") > 0.0);
    assert!(after.get("fanout_decisions_total{verdict=\"tag\",rule=\"limits.envelope\"}") > 0.0);
    let series_after = after.series();
    assert_eq!(
        series_after.len(),
        series_before.len(),
        "as many series after as before"
    );
    assert_eq!(
        series_after,
        series_before,
        "new: {:?}; gone: {:?}",
        series_after.difference(&series_before).collect::<Vec<_>>(),
        series_before.difference(&series_after).collect::<Vec<_>>()
    );
    for needle in ["zq", "@", "payroll", "corp.example", "C00000"] {
        assert!(
            !after.body.contains(needle),
            "nothing from a message in the scrape: {needle}"
        );
    }
    let (status, _, open) = get_metrics(
        daemon.metrics,
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    );
    assert_eq!(status, 200);
    for needle in ["zq", "@", "payroll"] {
        assert!(!open.contains(needle), "nor in OpenMetrics: {needle}");
    }
    daemon.stop();
}
