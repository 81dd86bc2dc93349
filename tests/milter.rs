// SPDX-License-Identifier: GPL-3.0-or-later
//! In-process milter-protocol tests: the daemon ([`Builder`]) on 127.0.0.1:0, driven by
//! indymilter-test as Postfix would drive it. Every stage's status is asserted, and
//! every wait is bounded.
//!
//! The milter registers connect, mail, rcpt, data, header, eoh, eom, abort and close only,
//! so these tests never call helo or body (indymilter-test would refuse them).

use fanout_milter::ReloadRequest;
use fanout_milter::clock::ManualClock;
use fanout_milter::config;
use fanout_milter::notify::{AlertKind, AlertReceiver};
use fanout_milter::quarantine::{
    COPY_HEADER, CopyMark, Filter, NewRequest, QuarantineIndex, QueueId, RequestAction, State,
    Store, Via,
};
use fanout_milter::{Builder, ReloadError, Reloaded};
use indymilter_test::{
    Actions, EomAction, EomActions, IntoCString, MacroStage, ProtoOpts, Status, TestConnection,
};
use std::ffi::CString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The longest any single step may take.
const STEP: Duration = Duration::from_secs(30);
const HEADER: &str = "X-Fanout-Verdict";
/// Every reply-waiving protocol option.
const NOREPLY_ALL: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_HELO)
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_DATA)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH)
    .union(ProtoOpts::NOREPLY_BODY)
    .union(ProtoOpts::NOREPLY_UNKNOWN);
/// The replies fanout-milter waives when the MTA offers it.
const WAIVED: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH);
const CONTACT: &str = "the Fanout Desk on extension 4242";

// ------------------------------------------------------------------------- harness

/// Awaits `f`, failing the test if it takes longer than [`STEP`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,indymilter=warn")
        .try_init();
}

/// The knobs the tests turn; everything else is fixed.
#[derive(Clone, Debug)]
struct Conf<'a> {
    mode: &'static str,
    /// tag, quarantine, reject of `[limits.envelope]`.
    envelope: [u64; 3],
    /// tag, quarantine, reject of `[limits.external]`.
    external: [u64; 3],
    shutdown_timeout: &'static str,
    max_header_bytes: usize,
    /// Further TOML appended to the file.
    extra: &'a str,
}

impl Default for Conf<'_> {
    fn default() -> Self {
        Conf {
            mode: "enforce",
            envelope: [3, 6, 10],
            external: [0, 0, 0],
            // Longer than STEP: a message wrongly left in flight makes `stop` time out.
            shutdown_timeout: "10m",
            max_header_bytes: 1024 * 1024,
            extra: "",
        }
    }
}

impl Conf<'_> {
    fn envelope(levels: [u64; 3]) -> Self {
        Conf {
            envelope: levels,
            ..Conf::default()
        }
    }

    fn toml(&self) -> String {
        let Conf {
            mode,
            envelope: [e_tag, e_quarantine, e_reject],
            external: [x_tag, x_quarantine, x_reject],
            shutdown_timeout,
            max_header_bytes,
            extra,
        } = self;
        format!(
            r#"[milter]
listen = "inet:127.0.0.1:0"
mode = "{mode}"
connection_timeout = "60s"
shutdown_timeout = "{shutdown_timeout}"
max_header_bytes = {max_header_bytes}

[domains]
internal = ["example.org", "*.example.org"]

[limits.envelope]
tag = {e_tag}
quarantine = {e_quarantine}
reject = {e_reject}

[limits.external]
tag = {x_tag}
quarantine = {x_quarantine}
reject = {x_reject}

[exempt]
senders = ["svc-*"]
envelope_senders = ["bulk@example.org"]

[reply]
contact = "{CONTACT}"
reject = "Not sent ({{reason}}); ask {{contact}}, quoting {{queue_id}}."

{extra}
"#
        )
    }
}

/// A running daemon ([`Builder`]) with its configuration file, reload channel and
/// shutdown trigger.
struct Milter {
    addr: SocketAddr,
    /// The review desk's address, when the configuration has one.
    desk: Option<SocketAddr>,
    store: Arc<Store>,
    alerts: AlertReceiver,
    clock: ManualClock,
    file: PathBuf,
    reloads: mpsc::Sender<ReloadRequest>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Milter {
    /// Writes `conf` to a file unique to `name`, loads it and serves it on 127.0.0.1:0.
    async fn start(name: &str, conf: &Conf<'_>) -> Milter {
        Milter::start_seeded(name, conf, &|_| {}).await
    }

    /// [`Milter::start`], with `seed` writing into the state directory (the store's)
    /// before the daemon starts.
    async fn start_seeded(name: &str, conf: &Conf<'_>, seed: &dyn Fn(&std::path::Path)) -> Milter {
        init_logging();
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("milter-{name}-{}.toml", std::process::id()));
        std::fs::write(&file, conf.toml()).expect("write the configuration");
        let config = config::load(&file).unwrap_or_else(|e| panic!("test config refused: {e}"));
        let (reloads, reload_rx) = mpsc::channel(1);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("milter-{name}-{}-state", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let store = Arc::new(Store::open(&state).expect("open the quarantine store"));
        seed(&state);
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let mut daemon = within(
            "start",
            Builder::new(config)
                .clock(Arc::new(clock.clone()))
                .store(store.clone())
                .admin_socket(None)
                .keep_alerts()
                .start(),
        )
        .await
        .expect("start on 127.0.0.1:0");
        let addr = daemon.local_addr().expect("a TCP listener has an address");
        let desk = daemon.desk_addr();
        let alert_queue = daemon.take_alerts().expect("alerts kept");
        let task = tokio::spawn(daemon.run(reload_rx, async move {
            let _ = shutdown_rx.await;
        }));
        Milter {
            addr,
            desk,
            store,
            alerts: alert_queue,
            clock,
            file,
            reloads,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Opens a milter connection (all actions offered) and sends CONNECT.
    async fn connect(&self) -> TestConnection {
        self.connect_with(Actions::all()).await
    }

    /// Opens a milter connection offering only `actions`, and sends CONNECT.
    async fn connect_with(&self, actions: Actions) -> TestConnection {
        let mut conn = within(
            "open a milter connection",
            TestConnection::configure()
                .read_timeout(STEP)
                .write_timeout(STEP)
                .available_actions(actions)
                .open_tcp(self.addr),
        )
        .await
        .expect("negotiate");
        assert_eq!(
            conn.negotiated_actions(),
            (Actions::ADD_HEADER
                | Actions::CHANGE_HEADER
                | Actions::QUARANTINE
                | Actions::REQUEST_MACROS)
                & actions,
            "the milter asks for exactly the actions it uses"
        );
        let macros = conn.requested_macros();
        if actions.contains(Actions::REQUEST_MACROS) {
            let wanted = |stage| macros.get(&stage).map(|m| m.to_str().unwrap());
            assert_eq!(
                wanted(MacroStage::Mail),
                Some("{auth_authen}"),
                "{macros:?}"
            );
            assert_eq!(wanted(MacroStage::Eom), Some("i"), "{macros:?}");
            // Postfix sends its default list for a stage whose list is missing or empty.
            for stage in [
                MacroStage::Connect,
                MacroStage::Helo,
                MacroStage::Rcpt,
                MacroStage::Data,
                MacroStage::Eoh,
            ] {
                assert_eq!(
                    wanted(stage),
                    Some("{fanout_none}"),
                    "{stage:?}: {macros:?}"
                );
            }
        } else {
            assert!(macros.is_empty(), "{macros:?}");
        }
        let opts = conn.negotiated_opts();
        assert!(
            !opts.contains(ProtoOpts::NO_DATA),
            "the milter answers DATA: without that round trip Postfix's Nagle stalls each message on TCP for 40 ms"
        );
        assert_eq!(
            opts & NOREPLY_ALL,
            WAIVED,
            "CONNECT, MAIL, RCPT, header and end-of-header replies are waived (one round trip per message, not per recipient); DATA and end of message are answered"
        );
        let status = within(
            "connect",
            conn.connect("client.example.net", ([192, 0, 2, 25], 40000)),
        )
        .await
        .expect("connect");
        assert_eq!(status, Status::Noreply);
        conn
    }

    /// Opens a milter connection as Postfix's cleanup does for mail from sendmail
    /// (pickup): from `localhost`, 127.0.0.1 port 0.
    async fn connect_local(&self) -> TestConnection {
        let mut conn = within(
            "open a milter connection",
            TestConnection::configure()
                .read_timeout(STEP)
                .write_timeout(STEP)
                .open_tcp(self.addr),
        )
        .await
        .expect("negotiate");
        let status = within("connect", conn.connect("localhost", ([127, 0, 0, 1], 0)))
            .await
            .expect("connect");
        assert_eq!(status, Status::Noreply);
        conn
    }

    /// Replaces the configuration file (read at the next reload).
    fn rewrite(&self, text: &str) {
        std::fs::write(&self.file, text).expect("rewrite the configuration");
    }

    /// Asks for a reload and waits for its answer.
    async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (ack, answer) = oneshot::channel();
        within("send a reload request", self.reloads.send(ack))
            .await
            .expect("the reloader is running");
        within("reload answer", answer)
            .await
            .expect("the reloader answers")
    }

    /// Starts a graceful shutdown.
    fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).expect("run is still waiting for shutdown");
        }
    }

    /// Waits for `run` to return, which must be `Ok`.
    async fn finished(&mut self) {
        let task = self.task.take().expect("not awaited yet");
        within("run returns after shutdown", task)
            .await
            .expect("run did not panic")
            .expect("run returns Ok");
    }

    /// Shuts down gracefully and checks that `run` returns `Ok`.
    async fn stop(mut self) {
        self.begin_shutdown();
        self.finished().await;
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ------------------------------------------------------------------------- messages

/// `n` distinct internal recipients, `<user{i}@dept.example.org>`.
fn internal(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("<user{i}@dept.example.org>"))
        .collect()
}

/// `n` distinct external recipients.
fn external(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("<friend{i}@elsewhere.example>"))
        .collect()
}

async fn mail(conn: &mut TestConnection, sender: &str) {
    let status = within("mail", conn.mail([sender])).await.expect("mail");
    assert_eq!(status, Status::Noreply, "MAIL FROM:{sender}");
}

async fn rcpts(conn: &mut TestConnection, rcpts: &[String]) {
    for r in rcpts {
        let status = within("rcpt", conn.rcpt([r.as_str()])).await.expect("rcpt");
        assert_eq!(status, Status::Noreply, "RCPT TO:{r}");
    }
}

async fn header(conn: &mut TestConnection, name: impl IntoCString, value: impl IntoCString) {
    let status = within("header", conn.header(name, value))
        .await
        .expect("header");
    assert_eq!(status, Status::Noreply);
}

/// End of message with a fresh queue id in macro `i`, as Postfix sends it.
async fn eom(conn: &mut TestConnection) -> (EomActions, Status) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{:04X}{n:06X}", std::process::id() & 0xffff);
    within("macros", conn.macros(MacroStage::Eom, [("i", id.as_str())]))
        .await
        .expect("macros");
    eom_raw(conn).await
}

/// End of headers, then end of message with only the macros the test sent itself.
async fn eom_raw(conn: &mut TestConnection) -> (EomActions, Status) {
    let status = within("eoh", conn.eoh()).await.expect("eoh");
    assert_eq!(status, Status::Noreply, "EOH");
    within("eom", conn.eom()).await.expect("eom")
}

/// DATA, the first stage after MAIL whose reply is not waived: once it is answered the
/// milter has processed MAIL and every RCPT.
async fn data(conn: &mut TestConnection) {
    let status = within("data", conn.data()).await.expect("data");
    assert_eq!(status, Status::Continue, "DATA");
}

/// One ordinary message: MAIL, the RCPTs, DATA, a few headers, end of message.
async fn message(conn: &mut TestConnection, sender: &str, to: &[String]) -> (EomActions, Status) {
    mail(conn, sender).await;
    rcpts(conn, to).await;
    data(conn).await;
    header(conn, "From", "Ann <ann@example.org>").await;
    header(conn, "To", "team@example.org").await;
    header(conn, "Subject", "Quarterly figures").await;
    eom(conn).await
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn add_header(value: &str) -> EomAction {
    EomAction::AddHeader {
        name: c(HEADER),
        value: c(value),
    }
}

fn quarantine(reason: &str) -> EomAction {
    EomAction::Quarantine { reason: c(reason) }
}

fn delete_header(index: i32) -> EomAction {
    EomAction::DeleteHeader {
        name: c(HEADER),
        index,
    }
}

/// The full reply line of a Reject or Tempfail status.
fn reply_of(status: &Status) -> String {
    match status {
        Status::Reject { message: Some(m) } | Status::Tempfail { message: Some(m) } => {
            m.to_str().expect("ASCII reply").to_owned()
        }
        other => panic!("expected a refusal with a reply text, got {other:?}"),
    }
}

fn assert_passed_untouched((actions, status): &(EomActions, Status)) {
    assert_eq!(*status, Status::Continue);
    assert_eq!(actions.actions, [], "no action expected");
}

fn assert_tagged((actions, status): &(EomActions, Status), value: &str) {
    assert_eq!(*status, Status::Continue);
    assert_eq!(actions.actions, [add_header(value)]);
}

fn assert_quarantined((actions, status): &(EomActions, Status), reason: &str) {
    assert_eq!(*status, Status::Continue);
    assert!(actions.has_quarantine(reason), "{actions:?}");
    assert!(
        actions.has_add_header(HEADER, format!("quarantine; {reason}").as_str()),
        "{actions:?}"
    );
    assert_eq!(
        actions.actions,
        [
            add_header(&format!("quarantine; {reason}")),
            quarantine(reason)
        ]
    );
}

// ------------------------------------------------------------------------- verdicts

#[tokio::test]
async fn five_recipients_are_accepted_untouched() {
    let milter = Milter::start("accept", &Conf::envelope([6, 8, 10])).await;
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(5)).await;
    assert_passed_untouched(&result);
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn an_mta_without_noreply_options_gets_every_stage_answered() {
    let milter = Milter::start("answered", &Conf::default()).await;
    let mut conn = within(
        "open a milter connection",
        TestConnection::configure()
            .read_timeout(STEP)
            .write_timeout(STEP)
            .available_opts(ProtoOpts::all().difference(NOREPLY_ALL))
            .open_tcp(milter.addr),
    )
    .await
    .expect("negotiate");
    assert!((conn.negotiated_opts() & NOREPLY_ALL).is_empty());
    let connect = conn.connect("client.example.net", ([192, 0, 2, 25], 40000));
    assert_eq!(
        within("connect", connect).await.expect("connect"),
        Status::Continue
    );
    let mail = conn.mail(["<ann@example.org>"]);
    assert_eq!(within("mail", mail).await.expect("mail"), Status::Continue);
    for r in internal(7) {
        let rcpt = conn.rcpt([r.as_str()]);
        assert_eq!(within("rcpt", rcpt).await.expect("rcpt"), Status::Continue);
    }
    assert_eq!(
        within("data", conn.data()).await.expect("data"),
        Status::Continue
    );
    let header = conn.header("Subject", "Quarterly figures");
    assert_eq!(
        within("header", header).await.expect("header"),
        Status::Continue
    );
    assert_eq!(
        within("eoh", conn.eoh()).await.expect("eoh"),
        Status::Continue
    );
    within(
        "macros",
        conn.macros(MacroStage::Eom, [("i", "4A1B2C3D4E")]),
    )
    .await
    .expect("macros");
    let result = within("eom", conn.eom()).await.expect("eom");
    assert_quarantined(
        &result,
        "limits.envelope: 7 envelope recipients >= quarantine level 6",
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn tag_level_adds_the_verdict_header() {
    let milter = Milter::start("tag", &Conf::default()).await;
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(3)).await;
    assert_tagged(
        &result,
        "tag; limits.envelope: 3 envelope recipients >= tag level 3",
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn quarantine_level_holds_the_message() {
    let milter = Milter::start("quarantine", &Conf::default()).await;
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(7)).await;
    assert_quarantined(
        &result,
        "limits.envelope: 7 envelope recipients >= quarantine level 6",
    );
    let held = milter
        .store
        .list(&Filter {
            state: Some(State::Held),
            since: None,
        })
        .expect("read the store");
    assert_eq!(held.len(), 1, "recorded before Postfix was told to hold it");
    let r = &held[0].message;
    assert_eq!(r.sender, "ann@example.org");
    assert_eq!(r.recipients.len(), 7);
    assert_eq!(r.subject.as_deref(), Some("Quarterly figures"));
    assert_eq!(r.rules[0].rule, "limits.envelope");
    assert_eq!(
        r.headers,
        [
            ("From".to_owned(), "Ann <ann@example.org>".to_owned()),
            ("To".to_owned(), "team@example.org".to_owned()),
            ("Subject".to_owned(), "Quarterly figures".to_owned()),
        ],
        "the record keeps the header fields as received, for the review desk"
    );
    assert_eq!(held[0].audit[0].who, "milter");
    let mut milter = milter;
    let alert = within("the quarantine alert", milter.alerts.recv())
        .await
        .expect("an alert was queued");
    assert_eq!(alert.kind, AlertKind::Quarantined);
    assert_eq!(alert.queue_id.as_deref(), Some(r.queue_id.as_str()));
    assert_eq!(alert.audience, 7);

    // Without a queue id the message could never be found again: tempfail, not hold.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(7)).await;
    let (actions, status) = eom_raw(&mut conn).await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    assert_eq!(actions.actions, [], "{actions:?}");
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

/// A held message's record and alert take their time from the daemon's clock, like
/// the storm and rate windows: a manual clock moves them all.
#[tokio::test]
async fn a_held_message_is_stamped_by_the_daemons_clock() {
    let mut milter = Milter::start("held-clock", &Conf::default()).await;
    milter.clock.advance(Duration::from_secs(3600));
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(7)).await;
    assert_quarantined(
        &result,
        "limits.envelope: 7 envelope recipients >= quarantine level 6",
    );
    let held = milter
        .store
        .list(&Filter {
            state: Some(State::Held),
            since: None,
        })
        .expect("read the store");
    assert_eq!(held[0].message.held_at, 1_800_003_600);
    let alert = within("the quarantine alert", milter.alerts.recv())
        .await
        .expect("an alert was queued");
    assert_eq!(
        alert.at,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_003_600)
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn an_unwritable_store_tempfails_instead_of_holding() {
    let milter = Milter::start("store-fault", &Conf::default()).await;
    let db = milter.store.path().to_owned();
    let dir = db.parent().expect("state dir").to_owned();
    // Another process wrecks the database: the next insert fails.
    let other = rusqlite::Connection::open(&db).expect("open the database");
    other
        .execute_batch("DROP TABLE audit; DROP TABLE held;")
        .expect("drop the tables");
    drop(other);
    let mut conn = milter.connect().await;
    let (actions, status) = message(&mut conn, "<ann@example.org>", &internal(7)).await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    assert_eq!(actions.actions, [], "no hold without a record");
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn reject_level_refuses_with_550_and_the_contact() {
    let milter = Milter::start("reject", &Conf::default()).await;
    let mut conn = milter.connect().await;
    let (actions, status) = message(&mut conn, "<ann@example.org>", &internal(10)).await;
    assert!(matches!(status, Status::Reject { .. }), "{status:?}");
    let reply = reply_of(&status);
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    assert!(reply.contains(CONTACT), "{reply}");
    assert!(
        reply.contains("(limits.envelope: 10 envelope recipients >= reject level 10)"),
        "{reply}"
    );
    assert_eq!(actions.actions, [], "a refused message is not modified");
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn external_limit_counts_only_recipients_outside_internal_domains() {
    let conf = Conf {
        envelope: [0, 0, 0],
        external: [0, 3, 0],
        ..Conf::default()
    };
    let milter = Milter::start("external", &conf).await;
    let mut conn = milter.connect().await;

    let mut to = internal(8);
    to.push("<boss@EXAMPLE.org>".into());
    to.push("<postmaster>".into());
    to.extend(external(2));
    let result = message(&mut conn, "<ann@example.org>", &to).await;
    assert_passed_untouched(&result);

    let mut to = internal(4);
    to.push("<x@example.org.elsewhere.example>".into());
    to.extend(external(2));
    let result = message(&mut conn, "<ann@example.org>", &to).await;
    assert_quarantined(
        &result,
        "limits.external: 3 external recipients >= quarantine level 3",
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn monitor_mode_only_tags() {
    let conf = Conf {
        mode: "monitor",
        ..Conf::default()
    };
    let milter = Milter::start("monitor", &conf).await;
    let mut conn = milter.connect().await;

    let result = message(&mut conn, "<ann@example.org>", &internal(6)).await;
    assert_tagged(
        &result,
        "tag (monitor: would quarantine); limits.envelope: 6 envelope recipients >= quarantine level 6",
    );
    let result = message(&mut conn, "<ann@example.org>", &internal(12)).await;
    assert_tagged(
        &result,
        "tag (monitor: would reject); limits.envelope: 12 envelope recipients >= reject level 10",
    );
    let result = message(&mut conn, "<ann@example.org>", &internal(3)).await;
    assert_tagged(
        &result,
        "tag; limits.envelope: 3 envelope recipients >= tag level 3",
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn exempt_by_sasl_login_or_trusted_envelope_sender() {
    let milter = Milter::start("exempt", &Conf::default()).await;

    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<BULK@Example.ORG>", &internal(50)).await;
    assert_passed_untouched(&result);
    within("close", conn.close()).await.expect("close");

    let mut conn = milter.connect().await;
    within(
        "macros",
        conn.macros(MacroStage::Mail, [("{auth_authen}", "svc-payroll")]),
    )
    .await
    .expect("macros");
    let result = message(&mut conn, "<ann@example.org>", &internal(50)).await;
    assert_passed_untouched(&result);
    within("close", conn.close()).await.expect("close");

    // A login that matches no pattern changes nothing.
    let mut conn = milter.connect().await;
    within(
        "macros",
        conn.macros(MacroStage::Mail, [("{auth_authen}", "ann")]),
    )
    .await
    .expect("macros");
    let (_, status) = message(&mut conn, "<ann@example.org>", &internal(50)).await;
    assert!(reply_of(&status).starts_with("550 5.7.1 "), "{status:?}");
    within("close", conn.close()).await.expect("close");

    // A client logged in as someone else that writes the trusted sender in MAIL FROM.
    let mut conn = milter.connect().await;
    within(
        "macros",
        conn.macros(MacroStage::Mail, [("{auth_authen}", "mallory")]),
    )
    .await
    .expect("macros");
    let (_, status) = message(&mut conn, "<bulk@example.org>", &internal(50)).await;
    assert!(reply_of(&status).starts_with("550 5.7.1 "), "{status:?}");
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn duplicate_recipients_count_once() {
    let milter = Milter::start("duplicates", &Conf::default()).await;
    let mut conn = milter.connect().await;
    let mut to: Vec<String> = [
        "<dup@example.org>",
        "<dup@Example.ORG>",
        "<dup@EXAMPLE.org>",
        "dup@example.ORG",
        "<dup@Example.Org.>",
    ]
    .map(String::from)
    .into();
    to.extend(internal(2));
    let result = message(&mut conn, "<ann@example.org>", &to).await;
    assert_tagged(
        &result,
        "tag; limits.envelope: 3 envelope recipients >= tag level 3",
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn two_messages_on_one_connection_start_afresh() {
    let milter = Milter::start("two-messages", &Conf::default()).await;
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(7)).await;
    assert_quarantined(
        &result,
        "limits.envelope: 7 envelope recipients >= quarantine level 6",
    );
    // Had the recipients carried over, 2 more would make 9.
    let result = message(&mut conn, "<bob@example.org>", &internal(2)).await;
    assert_passed_untouched(&result);
    let result = message(&mut conn, "<bob@example.org>", &internal(3)).await;
    assert_tagged(
        &result,
        "tag; limits.envelope: 3 envelope recipients >= tag level 3",
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn abort_discards_the_message_in_progress() {
    let milter = Milter::start("abort", &Conf::default()).await;
    let mut conn = milter.connect().await;

    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(9)).await;
    header(&mut conn, HEADER, "forged before abort").await;
    within("abort", conn.abort()).await.expect("abort");

    // Had the 9 recipients (or the forged header) survived, this would be a reject
    // (or carry a delete).
    let result = message(&mut conn, "<ann@example.org>", &external(1)).await;
    assert_passed_untouched(&result);

    mail(&mut conn, "<ann@example.org>").await;
    within("abort", conn.abort()).await.expect("abort");
    let result = message(&mut conn, "<ann@example.org>", &internal(3)).await;
    assert_tagged(
        &result,
        "tag; limits.envelope: 3 envelope recipients >= tag level 3",
    );

    // After an abort the message is no longer in flight: shutdown does not wait for it.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(2)).await;
    within("abort", conn.abort()).await.expect("abort");
    // (ABORT has no reply, but the session keeps reading commands until nothing is in
    // flight, so it is processed before the shutdown completes.)
    milter.stop().await;
    drop(conn);
}

#[tokio::test]
async fn mta_without_quarantine_gets_a_tempfail() {
    let milter = Milter::start("no-quarantine", &Conf::default()).await;
    let mut conn = milter.connect_with(Actions::ADD_HEADER).await;
    assert_eq!(conn.negotiated_actions(), Actions::ADD_HEADER);

    let (actions, status) = message(&mut conn, "<ann@example.org>", &internal(7)).await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    assert!(reply_of(&status).starts_with("451 4.7.1 "), "{status:?}");
    assert!(
        !actions.has_quarantine(indymilter_test::any()),
        "{actions:?}"
    );

    // Verdicts that need only ADD_HEADER still work on this connection.
    let result = message(&mut conn, "<ann@example.org>", &internal(3)).await;
    assert_tagged(
        &result,
        "tag; limits.envelope: 3 envelope recipients >= tag level 3",
    );
    // A reject needs no action at all.
    let (_, status) = message(&mut conn, "<ann@example.org>", &internal(10)).await;
    assert!(reply_of(&status).starts_with("550 5.7.1 "), "{status:?}");
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

/// `[reply] tempfail` says it is the text of the 451 reply, but the tempfail that an
/// MTA without QUARANTINE gets is a fixed text without the configured contact.
#[tokio::test]
async fn tempfail_uses_the_configured_text() {
    let milter = Milter::start("tempfail-text", &Conf::default()).await;
    let mut conn = milter.connect_with(Actions::ADD_HEADER).await;
    let (_, status) = message(&mut conn, "<ann@example.org>", &internal(7)).await;
    let reply = reply_of(&status);
    assert!(reply.starts_with("451 4.7.1 "), "{reply}");
    assert!(reply.contains(CONTACT), "{reply}");
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn queue_id_is_used_when_sent_and_optional() {
    let milter = Milter::start("queue-id", &Conf::default()).await;
    let mut conn = milter.connect().await;

    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(10)).await;
    header(&mut conn, "Subject", "hello").await;
    within(
        "macros",
        conn.macros(MacroStage::Eom, [("i", "4AbCdE1234")]),
    )
    .await
    .expect("macros");
    let (_, status) = eom_raw(&mut conn).await;
    let reply = reply_of(&status);
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    assert!(reply.ends_with("quoting 4AbCdE1234."), "{reply}");

    // The next message has no `i` (MAIL clears the later macros): still a verdict.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(10)).await;
    let (_, status) = eom_raw(&mut conn).await;
    let reply = reply_of(&status);
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    assert!(reply.ends_with("quoting NOQUEUE."), "{reply}");

    // An empty `i` counts as missing.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(10)).await;
    within("macros", conn.macros(MacroStage::Eom, [("i", "")]))
        .await
        .expect("macros");
    let (_, status) = eom_raw(&mut conn).await;
    assert!(
        reply_of(&status).ends_with("quoting NOQUEUE."),
        "{status:?}"
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn forged_verdict_headers_are_removed() {
    let milter = Milter::start("forged", &Conf::default()).await;
    let mut conn = milter.connect().await;

    // Accepted: both copies are deleted, the last first.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(1)).await;
    header(&mut conn, HEADER, "accept; trust me").await;
    header(&mut conn, "Subject", "hi").await;
    header(&mut conn, "x-fanout-verdict", "accept").await;
    let (actions, status) = eom(&mut conn).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.has_delete_header(HEADER, 1), "{actions:?}");
    assert!(actions.has_delete_header(HEADER, 2), "{actions:?}");
    assert_eq!(actions.actions, [delete_header(2), delete_header(1)]);

    // Tagged: the forged copy goes, ours is added.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(3)).await;
    header(&mut conn, HEADER, "accept").await;
    let (actions, status) = eom(&mut conn).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(
        actions.actions,
        [
            delete_header(1),
            add_header("tag; limits.envelope: 3 envelope recipients >= tag level 3")
        ]
    );

    // The count is per message: no forged header now, nothing deleted.
    let result = message(&mut conn, "<ann@example.org>", &internal(1)).await;
    assert_passed_untouched(&result);
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

/// A copy marked `token` to the `to`th internal recipient, queue id `id`.
async fn copy(
    conn: &mut TestConnection,
    id: &str,
    token: String,
    to: usize,
) -> (EomActions, Status) {
    mail(conn, "<ann@example.org>").await;
    rcpts(conn, &internal(to)[to - 1..]).await;
    data(conn).await;
    header(conn, COPY_HEADER, token.as_str()).await;
    header(conn, "Subject", "Quarterly figures").await;
    within("macros", conn.macros(MacroStage::Eom, [("i", id)]))
        .await
        .expect("macros");
    eom_raw(conn).await
}

/// The copy the root worker makes for a release to chosen recipients comes by sendmail:
/// with the request's token it is recorded as the request's copy and held (rule `copy`,
/// whatever the rules say) for the worker to release, with its mark removed and never
/// stored; so is a second one, and one of a request that is over is held for an admin.
/// A mark with a wrong token, or one that came by SMTP, is removed and changes nothing.
#[tokio::test]
async fn a_released_copy_is_held_for_the_worker_and_its_mark_never_leaves() {
    let mut milter = Milter::start("released-copy", &Conf::default()).await;
    let mut conn = milter.connect().await;
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(7)).await;
    within(
        "macros",
        conn.macros(MacroStage::Eom, [("i", "AB12CD0001")]),
    )
    .await
    .expect("macros");
    let (_, status) = eom_raw(&mut conn).await;
    assert_eq!(status, Status::Continue, "held");
    let store = milter.store.clone();
    let request = store
        .submit(
            None,
            &NewRequest {
                queue_id: QueueId::parse("AB12CD0001").unwrap(),
                action: RequestAction::ReleaseTo {
                    recipients: vec!["user3@dept.example.org".into()],
                },
                who: "carol".into(),
                via: Via::Desk,
                remote: None,
                comment: "only user3".into(),
                at: 1_800_000_000,
            },
        )
        .expect("filed");
    assert!(store.claim(request.id, 1_800_000_001).unwrap());
    let token = store.copy_token(request.id, "5ecret").unwrap();
    let mark = |token: &str| {
        CopyMark {
            original: "AB12CD0001".into(),
            request: request.id,
            token: token.into(),
        }
        .value()
    };
    let delete_mark = EomAction::DeleteHeader {
        name: c(COPY_HEADER),
        index: 1,
    };
    let held_as = |actions: &EomActions| {
        actions.actions.iter().find_map(|a| match a {
            EomAction::Quarantine { reason } => Some(reason.to_string_lossy().into_owned()),
            _ => None,
        })
    };

    // By SMTP, even with the right token: the mark goes, nothing else happens.
    let (actions, status) = copy(&mut conn, "AB12CD0002", mark(&token), 4).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(actions.actions, std::slice::from_ref(&delete_mark));
    assert!(store.copies(request.id).unwrap().is_empty());
    within("close", conn.close()).await.expect("close");

    let mut local = milter.connect_local().await;
    // A wrong token: the mark goes, the message is decided as any other (1 recipient).
    let (actions, status) = copy(&mut local, "AB12CD0003", mark("wrong"), 4).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(actions.actions, std::slice::from_ref(&delete_mark));
    // The genuine copy, and a second one: held for the worker, recorded, mark removed.
    for id in ["AB12CD0004", "AB12CD0005"] {
        let (actions, status) = copy(&mut local, id, mark(&token), 4).await;
        assert_eq!(status, Status::Continue);
        assert_eq!(actions.actions[0], delete_mark);
        let reason = held_as(&actions).expect("held");
        assert!(
            reason.contains(
                "copy: the copy made for release request 1, held until the worker releases it"
            ),
            "{reason}"
        );
        let held = store.record(&QueueId::parse(id).unwrap().into()).unwrap();
        assert_eq!(held.state, State::Held);
        assert_eq!(held.message.rules[0].rule, "copy");
        assert!(
            held.message
                .headers
                .iter()
                .all(|(n, v)| !n.eq_ignore_ascii_case(COPY_HEADER) && !v.contains("5ecret")),
            "the token is never stored: {:?}",
            held.message.headers
        );
    }
    assert_eq!(
        store.copies(request.id).unwrap(),
        ["AB12CD0004", "AB12CD0005"]
    );
    let alert = within("the original's alert", milter.alerts.recv())
        .await
        .expect("an alert");
    let (queued, _) = milter.alerts.drain(alert, 10);
    let ids: Vec<_> = queued.iter().map(|a| a.queue_id.as_deref()).collect();
    assert_eq!(
        ids,
        [Some("AB12CD0001")],
        "a copy held for the worker raises no alert"
    );
    // Over: a late copy is held for an admin.
    store
        .finish(request.id, false, "given up", 1_800_000_100)
        .unwrap();
    let (actions, _) = copy(&mut local, "AB12CD0006", mark(&token), 4).await;
    let reason = held_as(&actions).expect("held");
    assert!(
        reason.contains("that is over (request 1 is failed): held for an admin"),
        "{reason}"
    );
    within("close", local.close()).await.expect("close");
    milter.stop().await;
}

// ------------------------------------------------------------------------- hostile input

#[tokio::test]
async fn hostile_headers_still_get_a_verdict() {
    let milter = Milter::start("hostile", &Conf::default()).await;
    let mut conn = milter.connect().await;
    let tag3 = "tag; limits.envelope: 3 envelope recipients >= tag level 3";

    // Invalid UTF-8 in values and in a name.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(3)).await;
    header(
        &mut conn,
        "Subject",
        CString::new(vec![0xff, 0xfe, b' ', 0x80, b'x', 0xc3]).unwrap(),
    )
    .await;
    header(
        &mut conn,
        "To",
        CString::new(b"\xc3\x28 <a@example.org>, \xff@\xfe, =?utf-8?b?////?= <b@x>".to_vec())
            .unwrap(),
    )
    .await;
    header(
        &mut conn,
        CString::new(vec![0xe2, 0x28, 0xa1]).unwrap(),
        "v",
    )
    .await;
    let result = eom(&mut conn).await;
    assert_tagged(&result, tag3);

    // A 200 kB header value.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(7)).await;
    header(&mut conn, "X-Big", "a".repeat(200_000)).await;
    header(
        &mut conn,
        "To",
        format!("{}@example.org", "b".repeat(200_000)),
    )
    .await;
    let result = eom(&mut conn).await;
    assert_quarantined(
        &result,
        "limits.envelope: 7 envelope recipients >= quarantine level 6",
    );

    // 20,000 addresses in one To header.
    let many: Vec<String> = (0..20_000).map(|i| format!("u{i}@example.org")).collect();
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(10)).await;
    header(&mut conn, "To", many.join(", ")).await;
    let (_, status) = eom(&mut conn).await;
    assert!(reply_of(&status).starts_with("550 5.7.1 "), "{status:?}");

    // No headers at all.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(3)).await;
    let result = eom(&mut conn).await;
    assert_tagged(&result, tag3);

    // The null sender is counted like any other.
    mail(&mut conn, "<>").await;
    rcpts(&mut conn, &internal(3)).await;
    let result = eom(&mut conn).await;
    assert_tagged(&result, tag3);
    within("close", conn.close()).await.expect("close");

    // The milter still serves the next connection.
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(3)).await;
    assert_tagged(&result, tag3);
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn headers_beyond_the_cap_are_dropped_not_fatal() {
    let conf = Conf {
        max_header_bytes: 4096,
        ..Conf::default()
    };
    let milter = Milter::start("header-cap", &conf).await;
    let mut conn = milter.connect().await;
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(3)).await;
    header(&mut conn, "To", "a@example.org").await;
    header(&mut conn, "X-Big", "a".repeat(200_000)).await;
    header(&mut conn, HEADER, "forged after the cap").await;
    let (actions, status) = eom(&mut conn).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(
        actions.actions,
        [
            delete_header(1),
            add_header("tag; limits.envelope: 3 envelope recipients >= tag level 3")
        ],
        "a forged header is removed even when the header buffer is full"
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

// ------------------------------------------------------------------------- reload

#[tokio::test]
async fn reload_applies_a_good_file_and_keeps_the_old_one_on_error() {
    let a = Conf::envelope([0, 3, 0]);
    let b = Conf::envelope([0, 10, 0]);
    let c = Conf::envelope([0, 2, 0]);
    let milter = Milter::start("reload", &a).await;
    let mut conn = milter.connect().await;
    let q = |n: usize, level: u64| {
        format!("limits.envelope: {n} envelope recipients >= quarantine level {level}")
    };

    let result = message(&mut conn, "<ann@example.org>", &internal(5)).await;
    assert_quarantined(&result, &q(5, 3));

    milter.rewrite(&b.toml());
    milter.reload().await.expect("config B is valid");
    let result = message(&mut conn, "<ann@example.org>", &internal(5)).await;
    assert_passed_untouched(&result);

    milter.rewrite("[milter]\nmode = \"sometimes\"\n");
    let err = milter
        .reload()
        .await
        .expect_err("an invalid file is refused");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:2:", milter.file.display())),
        "{text}"
    );
    assert!(text.contains("milter.mode"), "{text}");
    // B still applies: 5 pass, 10 are held at B's level.
    let result = message(&mut conn, "<ann@example.org>", &internal(5)).await;
    assert_passed_untouched(&result);
    let result = message(&mut conn, "<ann@example.org>", &internal(10)).await;
    assert_quarantined(&result, &q(10, 10));

    // A missing file is refused too.
    std::fs::remove_file(&milter.file).unwrap();
    let err = milter
        .reload()
        .await
        .expect_err("a missing file is refused");
    assert!(
        err.to_string().contains("cannot read configuration"),
        "{err}"
    );
    let result = message(&mut conn, "<ann@example.org>", &internal(5)).await;
    assert_passed_untouched(&result);

    // A message keeps the configuration it started under (B), even across a reload.
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(5)).await;
    data(&mut conn).await;
    milter.rewrite(&c.toml());
    milter.reload().await.expect("config C is valid");
    let result = eom(&mut conn).await;
    assert_passed_untouched(&result);
    let result = message(&mut conn, "<ann@example.org>", &internal(5)).await;
    assert_quarantined(&result, &q(5, 2));

    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

/// A reload that moves `[quarantine] state_dir` keeps the running one until a restart:
/// list sizes (and LDAP snapshots) stay where the quarantine store is; the rest of the
/// file is applied.
#[tokio::test]
async fn reload_keeps_the_running_state_dir_until_restart() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("milter-reload-state-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (old, new) = (base.join("old"), base.join("new"));
    let with_state_dir = |levels: [u64; 3], dir: &std::path::Path| Conf {
        extra: String::leak(format!(
            "[quarantine]\nstate_dir = \"{}\"\n\n[[list]]\naddress = \"team@example.org\"\n\
             members = [\"a@example.org\", \"b@example.org\"]\n",
            dir.display()
        )),
        ..Conf::envelope(levels)
    };
    let milter = Milter::start("reload-state-dir", &with_state_dir([0, 3, 0], &old)).await;
    let sizes = |dir: &std::path::Path| dir.join("list-sizes.json");
    assert!(sizes(&old).exists(), "list sizes recorded at start");
    std::fs::remove_file(sizes(&old)).unwrap();

    milter.rewrite(&with_state_dir([0, 10, 0], &new).toml());
    let reloaded = milter.reload().await.expect("the file is valid");
    assert_eq!(reloaded.restart_needed, ["quarantine.state_dir"]);
    assert!(
        sizes(&old).exists(),
        "the reload records list sizes in the running state directory"
    );
    assert!(
        !new.exists(),
        "nothing is written to the new directory before a restart"
    );
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(5)).await;
    assert_passed_untouched(&result);

    // Reloading the same file again still keeps (and still reports) the running value.
    let reloaded = milter.reload().await.expect("the file is valid");
    assert_eq!(reloaded.restart_needed, ["quarantine.state_dir"]);
    assert!(!new.exists());

    within("close", conn.close()).await.expect("close");
    milter.stop().await;
    let _ = std::fs::remove_dir_all(&base);
}

// ------------------------------------------------------------------------- shutdown

/// Connects until the milter refuses, which it must do within [`STEP`].
async fn wait_until_refused(addr: SocketAddr) {
    within("the listening socket closes", async {
        loop {
            match TcpStream::connect(addr).await {
                Err(_) => break,
                Ok(stream) => {
                    drop(stream);
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_message_in_flight() {
    let mut milter = Milter::start("shutdown", &Conf::default()).await;
    let mut conn = milter.connect().await;
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(7)).await;
    // DATA is answered, so the milter has taken MAIL and RCPT in by now.
    data(&mut conn).await;

    milter.begin_shutdown();
    wait_until_refused(milter.addr).await;
    assert!(
        within("connect", TcpStream::connect(milter.addr))
            .await
            .is_err(),
        "no new connection after shutdown began"
    );
    let task = milter.task.as_ref().expect("running");
    assert!(!task.is_finished(), "run waits for the message in flight");

    header(&mut conn, "Subject", "late").await;
    let result = eom(&mut conn).await;
    assert_quarantined(
        &result,
        "limits.envelope: 7 envelope recipients >= quarantine level 6",
    );
    milter.finished().await;
    // The session is over: the connection no longer serves messages. MAIL's reply is
    // waived, so the failure shows at the first stage that waits for one.
    let mail = within("mail after shutdown", conn.mail(["<ann@example.org>"])).await;
    let data = within("data after shutdown", conn.data()).await;
    assert!(mail.is_err() || data.is_err(), "{mail:?} {data:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_wait_for_a_stuck_message() {
    let conf = Conf {
        shutdown_timeout: "1s",
        ..Conf::default()
    };
    let mut milter = Milter::start("shutdown-timeout", &conf).await;
    let mut conn = milter.connect().await;
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(3)).await;

    milter.begin_shutdown();
    // The message never finishes; run returns once shutdown_timeout has passed.
    milter.finished().await;
    wait_until_refused(milter.addr).await;
    assert!(
        within("eom after shutdown", conn.eom()).await.is_err(),
        "the session was closed, so no verdict can arrive"
    );
}

#[tokio::test]
async fn shutdown_when_idle_returns_at_once() {
    let milter = Milter::start("shutdown-idle", &Conf::default()).await;
    let mut conn = milter.connect().await;
    let result = message(&mut conn, "<ann@example.org>", &internal(1)).await;
    assert_passed_untouched(&result);
    // A connection between messages does not hold up the shutdown.
    milter.stop().await;
    drop(conn);
}

/// A reply to `<orig@example.org>` from `sender` to `to`.
async fn reply_all(conn: &mut TestConnection, sender: &str, to: &[String]) -> (EomActions, Status) {
    mail(conn, sender).await;
    rcpts(conn, to).await;
    header(conn, "From", sender).await;
    header(conn, "To", "all@example.org").await;
    header(conn, "Subject", "Re: Quarterly figures").await;
    header(conn, "In-Reply-To", "<orig@example.org>").await;
    header(conn, "References", "<orig@example.org>").await;
    eom(conn).await
}

const STORM: &str = "[storm]\nmin_audience = 5\nmin_messages = 3\nmin_senders = 2\nwindow = \"10m\"\nblock_for = \"6h\"\n";

#[tokio::test]
async fn a_reply_all_storm_is_cut_after_min_messages_and_each_sender_told_why() {
    storm_is_cut("storm", STORM).await;
}

/// With the relay breaker off the storm breaker still counts (the state is consulted
/// whenever any stateful rule asks for it).
#[tokio::test]
async fn a_reply_all_storm_is_cut_with_the_relay_breaker_off() {
    storm_is_cut(
        "storm-no-breaker",
        &format!("{STORM}[breaker]\nmax_per_minute = 0\n"),
    )
    .await;
}

async fn storm_is_cut(name: &str, extra: &str) {
    let conf = Conf {
        envelope: [0, 0, 0],
        extra,
        ..Conf::default()
    };
    let mut milter = Milter::start(name, &conf).await;
    let mut conn = milter.connect().await;
    let to = internal(8);
    let (_, status) = message(&mut conn, "<ann@example.org>", &to).await;
    assert_eq!(
        status,
        Status::Continue,
        "the original is not a reply and is never touched"
    );
    for i in 0..3 {
        let (_, status) = reply_all(&mut conn, &format!("<r{i}@example.org>"), &to).await;
        assert_eq!(
            status,
            Status::Continue,
            "reply {i} passes: at most min_messages do"
        );
    }
    let storm = within("the storm alert", milter.alerts.recv())
        .await
        .expect("an alert");
    assert_eq!(storm.kind, AlertKind::Storm);
    assert!(
        storm.reason.contains("3 replies from 3 senders"),
        "{}",
        storm.reason
    );
    for i in 3..6 {
        let (actions, status) = reply_all(&mut conn, &format!("<r{i}@example.org>"), &to).await;
        assert!(matches!(status, Status::Reject { .. }), "{status:?}");
        assert_eq!(actions.actions, [], "{actions:?}");
        let text = reply_of(&status);
        assert_eq!(
            text,
            format!(
                "550 5.7.1 A reply-all storm is in progress on \"Re: Quarterly figures\" to a large audience (8 recipients). \
                 Your message was not sent. Reply to the sender only, or contact {CONTACT}."
            )
        );
    }
    // A reply to the sender only is not part of the storm.
    let (_, status) = reply_all(&mut conn, "<r9@example.org>", &internal(1)).await;
    assert_eq!(status, Status::Continue);

    milter.clock.advance(Duration::from_secs(6 * 3600));
    let (_, status) = reply_all(&mut conn, "<r7@example.org>", &to).await;
    assert_eq!(
        status,
        Status::Continue,
        "after block_for replies pass again"
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

#[tokio::test]
async fn over_the_hourly_rate_is_tempfailed_with_the_limit_and_the_reset_time() {
    let conf = Conf {
        envelope: [0, 0, 0],
        extra: "[rate]\nrecipients_per_hour = 1000\n[hidden]\nmin_audience = 0\n",
        ..Conf::default()
    };
    let milter = Milter::start("rate", &conf).await;
    let mut conn = milter.connect().await;
    let to = internal(400);
    for _ in 0..2 {
        let (actions, status) = message(&mut conn, "<ann@example.org>", &to).await;
        assert_eq!(status, Status::Continue);
        assert_eq!(actions.actions, [], "accepted as it is");
    }
    let (_, status) = message(&mut conn, "<ann@example.org>", &to).await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    let text = reply_of(&status);
    assert!(
        text.contains("ann@example.org: 400 more recipients would exceed the limit of 1,000 per hour (800 used); retry after 08:12 UTC"),
        "{text}"
    );
    // Another sender has a budget of its own.
    let (_, status) = message(&mut conn, "<bob@example.org>", &to).await;
    assert_eq!(status, Status::Continue);
    // 12 minutes later 200 recipients' worth has flowed back.
    milter.clock.advance(Duration::from_secs(720));
    let (_, status) = message(&mut conn, "<ann@example.org>", &to).await;
    assert_eq!(
        status,
        Status::Continue,
        "passes once the window has moved on"
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

/// Postfix sends end of headers even for a message without headers; the milter must
/// still answer end of message (indymilter ignores it straight after DATA).
#[tokio::test]
async fn a_message_without_headers_is_decided() {
    let milter = Milter::start("no-headers", &Conf::default()).await;
    let mut conn = milter.connect().await;
    mail(&mut conn, "<ann@example.org>").await;
    rcpts(&mut conn, &internal(7)).await;
    data(&mut conn).await;
    let result = eom(&mut conn).await;
    assert_quarantined(
        &result,
        "limits.envelope: 7 envelope recipients >= quarantine level 6",
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

/// `recipient_delimiter` and `myorigin` come from one postconf run per load (start
/// and each reload), never per message, and what it says is how `list+tag@` and a
/// bare `list` resolve: a fake postconf that answers "+-" and "example.org" and
/// records its calls. Quoted and commented forms of the list are the list too.
#[tokio::test]
async fn postconf_is_asked_once_per_load_and_extensions_reach_the_list() {
    use std::os::unix::fs::PermissionsExt;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("milter-postconf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fake command directory");
    let calls = dir.join("calls");
    let script = dir.join("postconf.tmp");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\necho '+-'\necho 'example.org'\n",
            calls.display()
        ),
    )
    .expect("write the fake postconf");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&script, dir.join("postconf")).expect("rename");
    let extra: &'static str = Box::leak(
        format!(
            "[postfix]\ncommand_directory = \"{}\"\nconfig_directory = \"/etc/postfix-out\"\n\n\
             [[list]]\naddress = \"everyone@example.org\"\nmember_count = 840000\n",
            dir.display()
        )
        .into_boxed_str(),
    );
    let conf = Conf {
        extra,
        ..Conf::default()
    };
    let milter = Milter::start("postconf", &conf).await;
    let lines = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines(),
        ["-c /etc/postfix-out -x -h recipient_delimiter myorigin"]
    );
    let mut conn = milter.connect().await;
    for rcpt in [
        "<everyone@example.org>",
        "<everyone+x@example.org>",
        "<Everyone-news@example.org>",
        "<everyone-a+b@example.org>",
        "<\"everyone\"@example.org>",
        "<everyone(all)@example.org>",
        "<\\everyone@example.org>",
        "<everyone>",
        "<Everyone+x>",
    ] {
        let (_, status) = message(&mut conn, "<ann@example.org>", &[rcpt.to_owned()]).await;
        let reply = reply_of(&status);
        assert!(
            matches!(status, Status::Reject { .. }),
            "{rcpt}: {status:?}"
        );
        assert!(reply.contains("840,000"), "{rcpt}: {reply}");
    }
    within("close", conn.close()).await.expect("close");
    assert_eq!(lines().len(), 1, "no postconf per message: {:?}", lines());
    milter.reload().await.expect("reload");
    assert_eq!(lines().len(), 2, "once more on reload: {:?}", lines());
    milter.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------- the desk

/// One HTTP/1.1 request to the desk on a new connection; the whole answer.
async fn http(addr: SocketAddr, request: String) -> String {
    within("an HTTP answer", async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.expect("connect to the desk");
        s.write_all(request.as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    })
    .await
}

/// A same-origin form POST to the desk.
fn post(addr: SocketAddr, path: &str, cookie: Option<&str>, body: &str) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n{cookie}\
         Connection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A list that drifted (accepted at 1, 4 members now) holds its mail; an admin
/// accepts its new size on the desk the daemon serves, and the next message to it
/// passes, with no reload.
#[tokio::test]
async fn a_list_size_accepted_on_the_desk_lets_the_next_message_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::fs::write(
        state.join("list-sizes.json"),
        r#"{"lists":{"all@example.org":{"accepted":1}}}"#,
    )
    .expect("write the accepted sizes");
    let users = dir.path().join("review-users");
    let password = dir.path().join("password");
    std::fs::write(&password, "rosebud-rosebud\n").expect("write the password");
    let extra = format!(
        "[quarantine]\nstate_dir = \"{}\"\n[drift]\nfactor = 2.0\nmin_audience = 3\n\
         [[list]]\naddress = \"all@example.org\"\nmembers = [\"a@dept.example.org\", \
         \"b@dept.example.org\", \"c@dept.example.org\", \"d@dept.example.org\"]\n\
         [review]\nlisten = \"inet:127.0.0.1:0\"\nusers_file = \"{}\"\n",
        state.display(),
        users.display()
    );
    let conf = Conf {
        extra: &extra,
        ..Conf::default()
    };
    let file = dir.path().join("fanout-milter.toml");
    std::fs::write(&file, conf.toml()).expect("write the configuration");
    let passwd = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(&file)
        .args([
            "review",
            "passwd",
            "alice",
            "--role",
            "admin",
            "--password-file",
        ])
        .arg(&password)
        .output()
        .expect("run review passwd");
    assert!(passwd.status.success(), "{passwd:?}");

    let milter = Milter::start("drift-desk", &conf).await;
    let desk = milter.desk.expect("the desk listens");
    let list = vec!["<all@example.org>".to_owned()];
    let mut conn = milter.connect().await;
    let (actions, _) = message(&mut conn, "<ann@example.org>", &list).await;
    assert!(
        format!("{actions:?}").contains("drift"),
        "held for the drift: {actions:?}"
    );
    let held = milter
        .store
        .list(&Filter {
            state: Some(State::Held),
            since: None,
        })
        .expect("read the store");
    let queue_id = held[0].message.queue_id.to_string();

    let login = http(
        desk,
        post(desk, "/login", None, "user=alice&password=rosebud-rosebud"),
    )
    .await;
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = http(
        desk,
        format!(
            "GET /message/{queue_id} HTTP/1.1\r\nHost: {desk}\r\nCookie: {cookie}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(page.contains("accept-size"), "{page}");
    let at = page.find("name=\"token\" value=\"").expect("a token") + 20;
    let token = &page[at..at + 64];
    let accepted = http(
        desk,
        post(
            desk,
            &format!("/message/{queue_id}/accept-size"),
            Some(&cookie),
            &format!("token={token}&list=0&comment=merged+wards"),
        ),
    )
    .await;
    assert!(accepted.starts_with("HTTP/1.1 303"), "{accepted}");

    let after = message(&mut conn, "<ann@example.org>", &list).await;
    assert_passed_untouched(&after);
    let record = milter
        .store
        .get(&held[0].message.queue_id)
        .expect("the record");
    assert_eq!(record.state, State::Held, "accepting released nothing");
    let audit = record.audit.last().expect("an audit entry");
    assert_eq!(
        (audit.who.as_str(), audit.action.as_str()),
        ("alice", "accept list size")
    );
    assert!(
        audit.comment.as_deref().unwrap_or("").starts_with(
            "all@example.org: accepted size 4 (was 1) (via desk from 127.0.0.1): merged wards"
        ),
        "{audit:?}"
    );
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}

/// The brake a daemon last read is kept next to its store; a daemon that starts with
/// one (a restart, or Redis down at start) holds large mail from the first message.
#[tokio::test]
async fn a_daemon_starts_with_the_brake_it_kept() {
    let conf = Conf::envelope([50, 60, 70]);
    let plain = Milter::start("unbraked", &conf).await;
    let mut conn = plain.connect().await;
    assert_passed_untouched(&message(&mut conn, "<ann@example.org>", &internal(7)).await);
    within("close", conn.close()).await.expect("close");
    plain.stop().await;

    let kept = fanout_milter::state::Brake {
        min_audience: 5,
        since: 1_800_000_000 - 60,
        until: None,
        by: "carol".into(),
        comment: "incident".into(),
    };
    let json = serde_json::to_vec(&Some(&kept)).expect("JSON");
    let milter = Milter::start_seeded("braked", &conf, &|state| {
        std::fs::write(state.join("brake.json"), &json).expect("keep the brake");
    })
    .await;
    let mut conn = milter.connect().await;
    let (actions, status) = message(&mut conn, "<ann@example.org>", &internal(7)).await;
    assert_eq!(status, Status::Continue);
    assert!(
        actions.has_quarantine(
            "brake: emergency brake: audience 7 >= 5; held until an admin reviews it"
        ),
        "{actions:?}"
    );
    assert_passed_untouched(&message(&mut conn, "<ann@example.org>", &internal(4)).await);
    within("close", conn.close()).await.expect("close");
    milter.stop().await;
}
