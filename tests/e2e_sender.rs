// SPDX-License-Identifier: GPL-3.0-or-later
//! End to end, the sender in the loop: a private Postfix holds what the milter holds;
//! the daemon mails the sender a notice at once (through that Postfix, to the sink) with
//! signed links to the desk the daemon serves; the sender withdraws, asks for release,
//! or confirms over real HTTP without a login; the root worker carries it out. Mail a
//! program or a list sent gets no notice; a burst of holds gets one notice, then one
//! summary; a message nobody confirms is discarded by the sweep, with a notice.

mod common;

use common::http::*;
use common::*;
use fanout_milter::quarantine::{QuarantineIndex, QueueId, RequestState, State, Store, Via};
use std::path::PathBuf;
use std::process::Command;

const SENDER: &str = "ann@corp.example";

/// Where each link is in a notice: held (withdraw, ask), confirm (send, withdraw).
const WITHDRAW: usize = 0;
const ASK: usize = 1;
const SEND: usize = 0;

struct Relay {
    dir: tempfile::TempDir,
    sink: Sink,
    _milter: Milter,
    postfix: Postfix,
    config: PathBuf,
    port: u16,
    store: Store,
}

impl Relay {
    /// Envelope holds from 5 recipients; `ward@` (300) and `team@` (200) are lists a
    /// sender confirms when Bcc'd; notices every `interval` per sender.
    fn start(name: &str, interval: &str) -> Relay {
        require_postfix();
        let dir = scratch_dir(name);
        let sink = Sink::start(dir.path());
        let listen = format!("inet:127.0.0.1:{}", free_port());
        let postfix = Postfix::start(dir.path(), &sink, &listen);
        let state = dir.path().join("state");
        let port = free_port();
        let body = format!(
            r#"
[domains]
internal = ["corp.example"]

[limits.envelope]
tag = 0
quarantine = 5
reject = 0

[hidden]
min_audience = 100
action = "confirm"

[[list]]
address = "ward@corp.example"
member_count = 300

[[list]]
address = "team@corp.example"
member_count = 200

[postfix]
config_directory = "{etc}"

[quarantine]
state_dir = "{state}"

[review]
listen = "inet:127.0.0.1:{port}"
users_file = "{users}"
public_url = "http://127.0.0.1:{port}"

[notify]
from = "postmaster@corp.example"
relay = "127.0.0.1:{smtp}"
sender_interval = "{interval}"
"#,
            etc = postfix.etc.display(),
            state = state.display(),
            users = dir.path().join("review-users").display(),
            smtp = postfix.smtp_port,
        );
        let config = dir.path().join("fanout-milter.toml");
        std::fs::write(&config, with_listen(&listen, &body)).expect("config");
        let milter = Milter::start_file(dir.path(), &listen, config.clone());
        wait_for("the desk to listen", || listening(port).then_some(()));
        let store = Store::open(&state).expect("the daemon's store");
        Relay {
            dir,
            sink,
            _milter: milter,
            postfix,
            config,
            port,
            store,
        }
    }

    /// Sends `message` from `from` to `rcpts`; the queue id of the held message whose
    /// headers carry `subject`.
    fn send_held(&self, from: &str, rcpts: &[String], message: &[u8], subject: &str) -> String {
        smtp_send(self.postfix.smtp_port, from, rcpts, message).expect("accepted");
        wait_for(&format!("{subject} in the hold queue"), || {
            self.postfix
                .held()
                .into_iter()
                .find(|id| self.postfix.postcat_headers(id).contains(subject))
        })
    }

    /// A message to five colleagues: held for an admin.
    fn send_to_five(&self, subject: &str) -> String {
        let to = rcpts(6, "corp.example");
        self.send_held(SENDER, &to, &message(subject, &to.join(", ")), subject)
    }

    /// Sends a message, logged in as `ann`, to one colleague with `list` in Bcc (held
    /// for the sender to confirm, unless they confirmed that list lately: remembered
    /// under the login).
    fn send_bcc(&self, subject: &str, list: &str) {
        let to = ["bob@corp.example".to_owned(), list.to_owned()];
        let reply = smtp_send_as(
            self.postfix.smtp_port,
            "ann",
            SENDER,
            &to,
            &message(subject, "bob@corp.example"),
        );
        assert!(reply.starts_with('2'), "{reply}");
    }

    fn record_of(&self, queue_id: &str) -> fanout_milter::quarantine::Record {
        self.store
            .record(&QueueId::parse(queue_id).expect("queue id").into())
            .expect("record")
    }

    /// The notice to `to` that names `queue_id`, as a reader sees its text.
    fn notice(&self, to: &str, queue_id: &str) -> String {
        let m = self.sink.wait_until(queue_id, |m| {
            m.rcpts == [to] && m.has_header("Auto-Submitted", "auto-generated")
        });
        assert!(
            m.from.is_empty() || m.from == "<>",
            "notices go with the null sender: {}",
            m.from
        );
        unquoted(&m.text)
    }

    /// The desk paths of the sender links in `text`.
    fn links(&self, text: &str) -> Vec<String> {
        let base = format!("http://127.0.0.1:{}/s/", self.port);
        text.split(&base)
            .skip(1)
            .map(|rest| {
                let token: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                    .collect();
                format!("/s/{}", token.trim_end_matches('.'))
            })
            .collect()
    }

    /// The `n`-th sender link in `text`: a held notice offers withdraw then ask, a
    /// confirmation send then withdraw.
    fn link(&self, text: &str, n: usize) -> String {
        let links = self.links(text);
        assert_eq!(links.len(), 2, "two links in {text}");
        assert_ne!(links[0], links[1]);
        links[n].clone()
    }

    /// Presses the one button of the page at `path` (its hidden fields, and `words`
    /// in its text area if it has one); the answer.
    fn press(&self, path: &str, words: &str) -> String {
        let page = http(
            self.port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            ),
        );
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        let mut fields = hidden_fields(&page);
        if let Some(name) = textarea(&page) {
            fields.push((name, words.to_owned()));
        }
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        post(self.port, path, None, &form(&pairs))
    }

    fn done(&self, queue_id: &str) -> fanout_milter::quarantine::Request {
        let id = self.record_of(queue_id).id;
        wait_for(&format!("the request on {queue_id} to be done"), || {
            self.store
                .requests(id)
                .expect("requests")
                .pop()
                .filter(|r| r.state == RequestState::Done)
        })
    }
}

/// The hidden form fields of a page, in order.
fn hidden_fields(page: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let rest = &tag[at..];
        Some(rest[..rest.find('"')?].to_owned())
    };
    page.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            (attr(tag, "type").as_deref() == Some("hidden"))
                .then(|| Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default())))
                .flatten()
        })
        .collect()
}

/// The name of the page's text area, if it has one.
fn textarea(page: &str) -> Option<String> {
    let rest = &page[page.find("<textarea")?..];
    let at = rest.find("name=\"")? + 6;
    Some(rest[at..at + rest[at..].find('"')?].to_owned())
}

fn worker(r: &Relay) -> Worker {
    Worker::start(r.dir.path(), &r.config, &[])
}

#[test]
fn a_held_sender_is_told_at_once_and_withdraws_or_asks_for_release() {
    let r = Relay::start("sender-withdraw", "2s");
    let _worker = worker(&r);
    let first = r.send_to_five("sender-withdraw-1");

    let text = r.notice(SENDER, &first);
    assert!(text.contains("sender-withdraw-1"), "{text}");
    let withdraw = r.link(&text, WITHDRAW);
    let ask = r.link(&text, ASK);

    // Opening a link changes nothing; pressing withdraw discards it through the worker.
    let page = http(
        r.port,
        &format!("GET {withdraw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("sender-withdraw-1"), "{page}");
    assert_eq!(r.record_of(&first).state, State::Held);
    let pressed = r.press(&withdraw, "");
    assert!(pressed.starts_with("HTTP/1.1 200"), "{pressed}");
    let request = r.done(&first);
    assert_eq!(request.via, Via::Sender);
    assert_eq!(r.record_of(&first).state, State::Discarded);
    wait_for("the withdrawn message to leave the hold queue", || {
        (!r.postfix.held().contains(&first)).then_some(())
    });
    assert!(
        r.sink
            .find("sender-withdraw-1")
            .iter()
            .all(|m| m.rcpts == [SENDER])
    );
    // The ask link of the same notice acts no more: the message is gone.
    let late = post(r.port, &ask, None, &form(&[("words", "please")]));
    assert!(!late.starts_with("HTTP/1.1 200"), "{late}");
    assert_eq!(r.store.plea(r.record_of(&first).id).expect("plea"), None);

    // A second hold: its own notice (after the interval), and a plea for release.
    let second = r.send_to_five("sender-withdraw-2");
    let text = r.notice(SENDER, &second);
    let ask = r.link(&text, ASK);
    let asked = r.press(&ask, "The ward rota must reach all six today");
    assert!(asked.starts_with("HTTP/1.1 200"), "{asked}");
    let plea = r
        .store
        .plea(r.record_of(&second).id)
        .expect("store")
        .expect("the plea is recorded");
    assert_eq!(plea.words, "The ward rota must reach all six today");
    assert_eq!(r.record_of(&second).state, State::Held, "an admin decides");
    assert!(
        r.store
            .pleading(10)
            .expect("store")
            .contains(&QueueId::parse(&second).unwrap().into())
    );
    let again = post(r.port, &ask, None, &form(&[("words", "again")]));
    assert!(!again.starts_with("HTTP/1.1 200"), "{again}");
    assert_eq!(
        r.store
            .plea(r.record_of(&second).id)
            .expect("store")
            .map(|p| p.words),
        Some(plea.words.clone()),
        "the first plea stands"
    );

    // A changed link is refused and changes nothing.
    let forged = format!("{}x", r.link(&text, WITHDRAW));
    let refused = post(r.port, &forged, None, &form(&[("x", "y")]));
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert_eq!(r.record_of(&second).state, State::Held);
    assert!(r.postfix.held().contains(&second));
}

#[test]
fn a_sender_confirms_and_the_next_post_to_that_list_passes() {
    let r = Relay::start("sender-confirm", "2s");
    let _worker = worker(&r);
    r.send_bcc("sender-confirm-1", "ward@corp.example");
    let held = wait_for("the confirm hold", || {
        r.postfix
            .held()
            .into_iter()
            .find(|id| r.postfix.postcat_headers(id).contains("sender-confirm-1"))
    });
    let record = r.record_of(&held);
    assert!(record.message.confirm, "{record:?}");
    let text = r.notice(SENDER, &held);
    assert!(
        text.contains("would reach 301 people"),
        "the real audience: {text}"
    );
    let send = r.link(&text, SEND);
    let sent = r.press(&send, "");
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    let request = r.done(&held);
    assert_eq!(request.via, Via::Sender);
    let delivered = r
        .sink
        .wait_until("sender-confirm-1", |m| m.rcpts.len() == 2);
    assert!(delivered.rcpts.contains(&"ward@corp.example".to_owned()));
    assert_eq!(r.record_of(&held).state, State::Released);

    // The next post to the same list passes; to another list, it waits again.
    r.send_bcc("sender-confirm-2", "ward@corp.example");
    let passed = r
        .sink
        .wait_until("sender-confirm-2", |m| m.rcpts.len() == 2);
    assert!(passed.rcpts.contains(&"ward@corp.example".to_owned()));
    r.send_bcc("sender-confirm-3", "team@corp.example");
    let waiting = wait_for("the hold to team@", || {
        r.postfix
            .held()
            .into_iter()
            .find(|id| r.postfix.postcat_headers(id).contains("sender-confirm-3"))
    });
    r.notice(SENDER, &waiting);

    // Nobody confirms it: the sweep a day later discards it and tells the sender.
    let held_at = r.record_of(&waiting).message.held_at;
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
        .arg("-c")
        .arg(&r.config)
        .args([
            "quarantine",
            "--now",
            &(held_at + 86_400).to_string(),
            "sweep",
        ])
        .output()
        .expect("sweep");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(r.record_of(&waiting).state, State::Discarded);
    assert!(!r.postfix.held().contains(&waiting));
    let told = r.sink.wait_until(&waiting, |m| {
        m.rcpts == [SENDER] && unquoted(&m.text).contains("We asked you to confirm it")
    });
    assert!(
        unquoted(&told.text).contains("NOT sent to anyone"),
        "{}",
        told.text
    );
}

#[test]
fn programs_lists_and_the_null_sender_get_no_notice_and_a_burst_gets_one_summary() {
    let r = Relay::start("sender-quiet", "30s");
    let to = rcpts(6, "corp.example");
    let with = |subject: &str, extra: &str| {
        format!(
            "From: x@corp.example\r\nTo: {}\r\nSubject: {subject}\r\n{extra}\r\nbody\r\n",
            to.join(", ")
        )
        .into_bytes()
    };
    let null = r.send_held("", &to, &with("quiet-null", ""), "quiet-null");
    let auto = r.send_held(
        "robot@corp.example",
        &to,
        &with("quiet-auto", "Auto-Submitted: auto-replied\r\n"),
        "quiet-auto",
    );
    let listed = r.send_held(
        "lister@corp.example",
        &to,
        &with("quiet-list", "List-Id: <ward.corp.example>\r\n"),
        "quiet-list",
    );
    for id in [&null, &auto, &listed] {
        assert!(!r.record_of(id).message.notify_sender, "{id}");
    }

    // Ten holds from one sender within the interval: a notice at once about the
    // first, then one summary of the nine held after it when the interval is over.
    // (The nine are sent once the first notice is out: a notifier slower than the
    // sends would tell all ten at once, rightly, in one notice.)
    let first_id = r.send_to_five("burst-01");
    let first = r.notice(SENDER, &first_id);
    let ids: Vec<String> = std::iter::once(first_id)
        .chain((2..=10).map(|i| r.send_to_five(&format!("burst-{i:02}"))))
        .collect();
    let rest = r.notice(SENDER, &ids[9]);
    for id in &ids {
        assert!(
            first.contains(id.as_str()) != rest.contains(id.as_str()),
            "{id} in exactly one of\n{first}\n{rest}"
        );
    }
    let notices = r
        .sink
        .messages()
        .into_iter()
        .filter(|m| m.has_header("Auto-Submitted", "auto-generated"))
        .collect::<Vec<_>>();
    assert!(
        notices.iter().all(|m| m.rcpts == [SENDER]),
        "nobody else was told: {notices:?}"
    );
    let subjects: Vec<String> = notices
        .iter()
        .map(|m| {
            m.text
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(notices.len(), 2, "two notices for ten holds: {subjects:?}");
    // Settled once sent (the notifier records it right after the relay took it).
    wait_for("every notice to be settled", || {
        r.store
            .due_notices(100)
            .expect("store")
            .is_empty()
            .then_some(())
    });
}
