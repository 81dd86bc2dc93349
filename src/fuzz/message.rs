// SPDX-License-Identifier: GPL-3.0-or-later
//! The message path: milter stages fed from arbitrary bytes into the session code the
//! daemon runs ([`Session`]), decided by [`decide`] with the daemon's in-memory state,
//! up to the effect the milter would apply and the record it would write.
//!
//! Input: records separated by `0xFF`; a record's first byte says what it is, the rest
//! is its data (`0xFE` splits two fields):
//!
//! | byte | stage |
//! |------|-------|
//! | `C` | connect from the client named by the data; `c`: a local submission |
//! | `F` | MAIL FROM (starts a message) |
//! | `L` | MAIL FROM with a SASL login: `login 0xFE sender` |
//! | `T` | RCPT TO |
//! | `H` | a header: `name 0xFE value` |
//! | `M` | the last header again, 16 times the data's first byte |
//! | `B` | a header whose value is the data repeated up to 64 KiB |
//! | `E` | end of message, the data is the queue id (empty: none) |
//! | `A` | abort |
//!
//! A message still open at the end of the input is ended with queue id `4AbCdEf123`.
//!
//! End of message runs what `handle_eom` runs but for the store: the quarantine record
//! is built and checked, not written, and a copy the worker released is recognised
//! from its mark (see [`released_copy`]) rather than looked up.

use super::assert_one_line;
use crate::config::{self, Config};
use crate::decide::{GuardState, Outlet, decide};
use crate::directory::ldap::Snapshots;
use crate::milter::session::Session;
use crate::policy::effect::fault_reply;
use crate::policy::{
    self, Action, Effect, Evaluation, MessageFacts, NO_QUEUE_ID, ReleasedCopy, Reply,
};
use crate::quarantine::{self, CopyMark, QueueId};
use crate::shared::{Generation, Inflight};
use crate::state::{Guard, MemoryBackend};
use indymilter::ProtoOpts;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest header value that still fits one 998-byte line with our header's name.
const MAX_HEADER_VALUE: usize = 998 - policy::VERDICT_HEADER.len() - 2;
/// RFC 5321's 512 octets for a reply line, less the code, the enhanced code and CRLF.
const MAX_REPLY_TEXT: usize = 512 - "550 ".len() - "5.7.1 ".len() - 2;

/// The queue id given to a message the input leaves open.
const LAST_QUEUE_ID: &[u8] = b"4AbCdEf123";

/// The configuration the targets run, with the milter on `listen`: lists (nested,
/// cyclic, restricted, a large placeholder), every rule on with low thresholds, the
/// daemon's in-memory state, everything else under `dir` (written by
/// [`write_fixture`]).
pub(super) fn config_text(dir: &std::path::Path, listen: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[milter]
listen = "{listen}"
[domains]
internal = ["example.org", "*.example.org"]
[limits.envelope]
tag = 5
quarantine = 20
reject = 200
[limits.external]
quarantine = 10
[limits.audience]
quarantine = 50
reject = 100000
[exempt]
senders = ["bulk-ok"]
[expansion]
max_depth = 5
max_audience = 900000
on_unknown = "quarantine"
[restricted]
min_audience = 40
allowed_senders = ["comms"]
[hidden]
min_audience = 20
ratio = 5.0
[drift]
factor = 5.0
min_audience = 100
[storm]
min_audience = 20
min_messages = 2
min_senders = 1
reply = "Storm on \"{{subject}}\" to {{list}} ({{audience}}): {{contact}} {{queue_id}}"
[rate]
recipients_per_hour = 60
external_per_hour = 30
reply = "Limit ({{reason}}) {{contact}} {{queue_id}}"
[breaker]
max_per_minute = 80
min_audience = 20
[reply]
contact = "the service desk"
reject = "NOT sent ({{reason}}) {{queue_id}}; ask {{contact}}"
[state]
backend = "memory"
[quarantine]
state_dir = "{d}/state"
state_owner = "root"
[postfix]
config_directory = "{d}/postfix"
command_directory = "{d}/postfix"
sendmail = "{d}/postfix/sendmail"
[[directory]]
type = "postfix-virtual"
path = "{d}/virtual"
domains = ["example.org"]
[[list]]
address = "all-staff@example.org"
member_count = 840000
allowed_senders = ["comms"]
"#
    )
}

/// The virtual(5) table of the fixture.
fn virtual_table() -> String {
    let mut t = String::from(
        "staff@example.org ann@example.org, bob@example.org, team@example.org\n\
         team@example.org carl@example.org, staff@example.org, ext@other.example\n\
         ghost@example.org nobody-here@example.org\n\
         \u{202e}rtl@example.org ann@example.org\n",
    );
    t.push_str("ward@example.org ");
    let members: Vec<String> = (0..120).map(|i| format!("n{i}@example.org")).collect();
    t.push_str(&members.join(", "));
    t.push('\n');
    t
}

struct Fixture {
    generation: Arc<Generation>,
    _dir: PathBuf,
}

/// Writes the fixture's files into a new directory named after `what` and the process,
/// and returns its configuration with the milter on `listen`.
pub(super) fn write_fixture(
    what: &str,
    listen: impl Fn(&std::path::Path) -> String,
) -> (PathBuf, Config) {
    let prefix = format!("fanout-fuzz-{what}-");
    remove_stale(&prefix);
    let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
    // A directory left by an earlier process with the same id is the fixture's own.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).expect("fixture directory");
    std::fs::create_dir_all(dir.join("postfix")).expect("fixture directory");
    std::fs::write(dir.join("virtual"), virtual_table()).expect("fixture table");
    let file = dir.join("fanout-milter.toml");
    let text = config_text(&dir, &listen(&dir));
    std::fs::write(&file, &text).expect("fixture configuration");
    let config = config::parse(&text, &file).expect("the fixture configuration is valid");
    (dir, config)
}

/// Removes the fixture directories of processes that are gone: a fuzz engine starts a
/// new process every few thousand inputs, and none of them can clean up at exit.
fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (dir, config) = write_fixture("message", |_| "inet:127.0.0.1:9".to_owned());
        let snapshots = Snapshots {
            by_source: HashMap::new(),
            now: now(),
        };
        let generation = Generation::load(config, &snapshots).expect("the fixture directory loads");
        Fixture {
            generation: Arc::new(generation),
            _dir: dir,
        }
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// One step of a milter session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A connection from `client`; `local`: a local submission (port 0).
    Connect {
        /// The client's address or socket name.
        client: Vec<u8>,
        /// Submitted on the host (sendmail, pickup).
        local: bool,
    },
    /// MAIL FROM, with the SASL login if any.
    Mail {
        /// The envelope sender as Postfix sends it (`<a@b>`).
        sender: Vec<u8>,
        /// `{auth_authen}`.
        login: Option<Vec<u8>>,
    },
    /// RCPT TO.
    Rcpt(Vec<u8>),
    /// A header field.
    Header(Vec<u8>, Vec<u8>),
    /// The last header again, this many times.
    Repeat(usize),
    /// End of message with this queue id (`{i}`; empty: none).
    Eom(Vec<u8>),
    /// ABORT.
    Abort,
}

/// Decodes the record format in the module's documentation.
pub fn stages(data: &[u8]) -> Vec<Stage> {
    let mut out = Vec::new();
    for record in data.split(|&b| b == 0xFF) {
        let Some((&kind, rest)) = record.split_first() else {
            continue;
        };
        let two = |rest: &[u8]| match rest.iter().position(|&b| b == 0xFE) {
            Some(i) => (rest[..i].to_vec(), rest[i + 1..].to_vec()),
            None => (rest.to_vec(), Vec::new()),
        };
        out.push(match kind {
            b'C' | b'c' => Stage::Connect {
                client: rest.to_vec(),
                local: kind == b'c',
            },
            b'F' => Stage::Mail {
                sender: rest.to_vec(),
                login: None,
            },
            b'L' => {
                let (login, sender) = two(rest);
                Stage::Mail {
                    sender,
                    login: Some(login),
                }
            }
            b'T' => Stage::Rcpt(rest.to_vec()),
            b'H' => {
                let (name, value) = two(rest);
                Stage::Header(name, value)
            }
            b'M' => Stage::Repeat(usize::from(rest.first().copied().unwrap_or(1)) * 16),
            b'B' => {
                let unit = if rest.is_empty() { &b"x"[..] } else { rest };
                let value: Vec<u8> = unit.iter().copied().cycle().take(64 * 1024).collect();
                Stage::Header(b"Subject".to_vec(), value)
            }
            b'E' => Stage::Eom(rest.to_vec()),
            b'A' => Stage::Abort,
            _ => continue,
        });
    }
    out
}

/// Encodes stages in the record format (for seeds; [`Stage::Repeat`] rounds down to
/// a multiple of 16, at most 4,080).
pub fn encode(stages: &[Stage]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        if i > 0 {
            out.push(0xFF);
        }
        match stage {
            Stage::Connect { client, local } => {
                out.push(if *local { b'c' } else { b'C' });
                out.extend_from_slice(client);
            }
            Stage::Mail {
                sender,
                login: None,
            } => {
                out.push(b'F');
                out.extend_from_slice(sender);
            }
            Stage::Mail {
                sender,
                login: Some(login),
            } => {
                out.push(b'L');
                out.extend_from_slice(login);
                out.push(0xFE);
                out.extend_from_slice(sender);
            }
            Stage::Rcpt(r) => {
                out.push(b'T');
                out.extend_from_slice(r);
            }
            Stage::Header(name, value) => {
                out.push(b'H');
                out.extend_from_slice(name);
                out.push(0xFE);
                out.extend_from_slice(value);
            }
            Stage::Repeat(n) => {
                out.push(b'M');
                out.push(u8::try_from(n / 16).unwrap_or(u8::MAX));
            }
            Stage::Eom(q) => {
                out.push(b'E');
                out.extend_from_slice(q);
            }
            Stage::Abort => out.push(b'A'),
        }
    }
    out
}

/// The target: decodes `data` and runs it.
pub fn message(data: &[u8]) {
    run(&stages(data));
}

/// What a run decided, one entry per message ended.
pub type Outcomes = Vec<Outcome>;

/// The result of one end of message.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The effect applied, or `None` when the message was tempfailed as a fault.
    pub effect: Option<Effect>,
    /// The reply of a tempfailed fault.
    pub fault: Option<Reply>,
    /// A record was written (a hold).
    pub recorded: bool,
}

/// Runs the stages as the milter would and checks every effect; panics when an
/// invariant breaks.
pub fn run(stages: &[Stage]) -> Outcomes {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(session(stages))
}

async fn session(stages: &[Stage]) -> Outcomes {
    let fixture = fixture();
    let guard = Guard::new(
        Arc::new(MemoryBackend::new()),
        Arc::new(crate::clock::ManualClock::new(now())),
        None,
    );
    let inflight = Arc::new(Inflight::default());
    let mut session = Session::new(ProtoOpts::empty());
    let mut last_header: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut outcomes = Vec::new();
    for stage in stages {
        match stage {
            Stage::Connect { client, local } => {
                session.conn.client = Some(String::from_utf8_lossy(client).into_owned());
                session.conn.local_submission = *local;
                session.abort_message();
            }
            Stage::Mail { sender, login } => session.init_message(
                fixture.generation.clone(),
                &String::from_utf8_lossy(sender),
                login
                    .as_ref()
                    .map(|l| String::from_utf8_lossy(l).into_owned()),
                inflight.enter(),
            ),
            Stage::Rcpt(r) => {
                if let Some(msg) = session.msg.as_mut() {
                    msg.add_envelope_recipient(&String::from_utf8_lossy(r));
                }
            }
            Stage::Header(name, value) => {
                if let Some(msg) = session.msg.as_mut() {
                    msg.add_header(name, value);
                }
                last_header = Some((name.clone(), value.clone()));
            }
            Stage::Repeat(n) => {
                if let (Some(msg), Some((name, value))) = (session.msg.as_mut(), &last_header) {
                    for _ in 0..*n {
                        msg.add_header(name, value);
                    }
                }
            }
            Stage::Eom(queue_id) => {
                outcomes.push(end_of_message(&mut session, &guard, queue_id).await);
            }
            Stage::Abort => session.abort_message(),
        }
    }
    if session.msg.is_some() {
        outcomes.push(end_of_message(&mut session, &guard, LAST_QUEUE_ID).await);
    }
    assert_eq!(
        inflight.count(),
        0,
        "every message ended leaves the in-flight count"
    );
    outcomes
}

/// End of message as `handle_eom` runs it (without the released-copy check, which
/// asks the store), with an outlet that checks what it is given.
async fn end_of_message(session: &mut Session, guard: &Guard, queue_id: &[u8]) -> Outcome {
    let queue_id = Some(String::from_utf8_lossy(queue_id).into_owned()).filter(|q| !q.is_empty());
    let shown = queue_id.clone().unwrap_or_else(|| NO_QUEUE_ID.to_owned());
    let Some(msg) = session.msg.take() else {
        let fault = fault_reply(None, "internal error", &shown);
        check_reply(&fault, Action::Tempfail);
        return Outcome {
            effect: None,
            fault: Some(fault),
            recorded: false,
        };
    };
    let local_submission = session.conn.local_submission;
    let mut finished = msg.finish(queue_id.clone(), &session.conn);
    finished.facts.released = released_copy(
        &finished.copy_marks,
        finished.copy_headers,
        local_submission && queue_id.is_some(),
    );
    let config = &finished.runtime.config;
    let mut outlet = CheckingOutlet {
        queue_id: queue_id.as_deref(),
        headers: finished.header_fields,
        recorded: false,
    };
    let result = decide(
        &config.policy,
        &config.replies,
        &finished.facts,
        &shown,
        &mut GuardState::new(guard),
        &mut outlet,
    )
    .await;
    match result {
        Ok(decision) => {
            let effect = decision.effect;
            check_effect(&effect);
            assert_eq!(
                outlet.recorded,
                matches!(effect.action, Action::Confirm | Action::Quarantine),
                "a record is written for a hold and only for one: {effect:?}"
            );
            Outcome {
                effect: Some(effect),
                fault: None,
                recorded: outlet.recorded,
            }
        }
        Err(Fault) => {
            let fault = fault_reply(Some(&config.replies), "internal error", &shown);
            check_reply(&fault, Action::Tempfail);
            Outcome {
                effect: None,
                fault: Some(fault),
                recorded: false,
            }
        }
    }
}

/// What the store would say of a message that carries the copy header, as the milter
/// asks it (`released_copy` in the milter): only one well-formed mark on a local
/// submission with a queue id is looked up, and the store's answer is taken from the
/// mark itself here (an even request id: a copy the worker is waiting for; odd: a late
/// copy, for an admin).
fn released_copy(marks: &[String], count: i32, lookup: bool) -> Option<ReleasedCopy> {
    let mark = match (count, marks.first().and_then(|m| CopyMark::parse(m))) {
        (1, Some(mark)) if lookup => mark,
        _ => return None,
    };
    Some(if mark.request % 2 == 0 {
        ReleasedCopy::Accepted {
            request: mark.request,
        }
    } else {
        ReleasedCopy::Late {
            why: format!("request {} is over", mark.request),
        }
    })
}

/// Why the outlet refused: a hold without a valid queue id, as the milter refuses it.
#[derive(Debug)]
struct Fault;

impl From<crate::state::StateError> for Fault {
    fn from(e: crate::state::StateError) -> Fault {
        panic!("the in-memory state failed: {e}")
    }
}

struct CheckingOutlet<'a> {
    queue_id: Option<&'a str>,
    headers: Vec<(String, String)>,
    recorded: bool,
}

impl Outlet for CheckingOutlet<'_> {
    type Error = Fault;
    type Applied = ();

    async fn record_held(
        &mut self,
        facts: &MessageFacts,
        evaluation: &Evaluation,
    ) -> Result<(), Fault> {
        let id = QueueId::parse(self.queue_id.unwrap_or_default()).map_err(|_| Fault)?;
        let headers = std::mem::take(&mut self.headers);
        let held = quarantine::held_message(id, 1_800_000_000, facts, evaluation, headers);
        let alert = quarantine::alert(crate::notify::AlertKind::Quarantined, &held, 1_800_000_000);
        assert_one_line(
            "alert sender",
            &crate::text::neutralize(&alert.sender),
            usize::MAX,
        );
        self.recorded = true;
        Ok(())
    }

    async fn apply(&mut self, effect: &Effect) -> Result<(), Fault> {
        check_effect(effect);
        Ok(())
    }
}

/// The invariants of an effect: complete, and every text it puts on the wire one line.
fn check_effect(effect: &Effect) {
    assert!(effect.is_complete(), "incomplete effect: {effect:?}");
    if let Some(header) = &effect.header {
        assert_one_line("verdict header", header, MAX_HEADER_VALUE);
        assert!(!header.trim().is_empty(), "empty verdict header");
    }
    if let Some(hold) = &effect.hold {
        assert_one_line("hold reason", hold, MAX_HEADER_VALUE);
    }
    if let Some(reply) = &effect.reply {
        check_reply(reply, effect.action);
    }
    assert_eq!(
        effect.reply.is_some(),
        matches!(effect.action, Action::Tempfail | Action::Reject),
        "a reply for a refusal and only for one: {effect:?}"
    );
}

/// A reply's code, enhanced code and text agree with the action and fit one line.
fn check_reply(reply: &Reply, action: Action) {
    let class = match action {
        Action::Tempfail => 4,
        Action::Reject => 5,
        other => panic!("a reply for {other}: {reply:?}"),
    };
    assert!(
        reply.code.len() == 3 && reply.code.starts_with(&class.to_string()),
        "reply code for {action}: {reply:?}"
    );
    assert!(
        reply.enhanced.starts_with(&format!("{class}.")),
        "enhanced code for {action}: {reply:?}"
    );
    assert_one_line("reply text", &reply.text, MAX_REPLY_TEXT);
    assert!(!reply.text.trim().is_empty(), "empty reply text");
}

/// Seeds for the corpus: the messages the tests send, in the record format.
pub fn seeds() -> Vec<Vec<u8>> {
    let h = |n: &str, v: &str| Stage::Header(n.into(), v.into());
    let mail = |s: &str| Stage::Mail {
        sender: s.into(),
        login: None,
    };
    let rcpt = |r: &str| Stage::Rcpt(r.into());
    let eom = |q: &str| Stage::Eom(q.into());
    let connect = Stage::Connect {
        client: b"192.0.2.7".to_vec(),
        local: false,
    };
    let mut seeds = vec![
        vec![
            connect.clone(),
            mail("<ann@example.org>"),
            rcpt("<bob@example.org>"),
            h("From", "Ann <ann@example.org>"),
            h("To", "bob@example.org"),
            h("Subject", "lunch"),
            eom("4AbCdEf001"),
        ],
        vec![
            connect.clone(),
            Stage::Mail {
                sender: b"<comms@example.org>".to_vec(),
                login: Some(b"comms".to_vec()),
            },
            rcpt("<all-staff@example.org>"),
            h("To", "all-staff@example.org"),
            h("Subject", "News"),
            eom("4AbCdEf002"),
        ],
        vec![
            connect.clone(),
            mail("<ann@example.org>"),
            rcpt("<ward@example.org>"),
            rcpt("<staff@example.org>"),
            h("To", "bob@example.org"),
            h("Subject", "=?utf-8?q?R=C3=A9union?="),
            h("X-Fanout-Verdict", "accept"),
            eom("4AbCdEf003"),
        ],
    ];
    let mut storm = vec![connect.clone()];
    for i in 0..3 {
        storm.extend([
            mail(&format!("<p{i}@example.org>")),
            rcpt("<ward@example.org>"),
            h("To", "ward@example.org"),
            h("Subject", "RE: parking"),
            h("In-Reply-To", "<thread-1@example.org>"),
            h("References", "<thread-1@example.org>"),
            eom(&format!("4AbCdEf10{i}")),
        ]);
    }
    seeds.push(storm);
    let mut many = vec![connect.clone(), mail("<ann@example.org>")];
    many.extend((0..30).map(|i| rcpt(&format!("<x{i}@other.example>"))));
    many.extend([
        h("Received", "from x"),
        Stage::Repeat(2000),
        eom("4AbCdEf200"),
    ]);
    seeds.push(many);
    seeds.push(vec![
        Stage::Connect {
            client: b"localhost".to_vec(),
            local: true,
        },
        mail("<>"),
        rcpt("<team@example.org>"),
        h("X-Fanout-Released", "1.2.3"),
        h("Subject", "\u{202e}gpj.exe\r\nBcc: x"),
        Stage::Abort,
        mail("<ann@example.org>"),
        rcpt("<ward@example.org>"),
        eom("not a queue id"),
    ]);
    for request in [2, 3] {
        seeds.push(vec![
            Stage::Connect {
                client: b"localhost".to_vec(),
                local: true,
            },
            mail("<ann@example.org>"),
            rcpt("<ward@example.org>"),
            h(
                "X-Fanout-Released",
                &format!("v1; q=4AbCdEf001; r={request}; t=abc"),
            ),
            h("Subject", "released to chosen recipients"),
            eom("4AbCdEf300"),
        ]);
    }
    seeds.iter().map(|s| encode(s)).collect()
}

#[cfg(test)]
mod tests;
