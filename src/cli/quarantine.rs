// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter quarantine ...`: listing and showing held messages, and the review
//! actions ([`crate::quarantine::review`], the sweep) with their reports. Run as root:
//! Postfix's postqueue, postsuper and postcat need it.

use super::{Outcome, check_state_dir, load_config, usage};
use crate::clock::epoch_secs;
use crate::config::Config;
use crate::quarantine::postfix::PostfixTools;
use crate::quarantine::review::{Report, Review, invoking_user};
use crate::quarantine::{
    CLI_COMMENT, Executor, FOREIGN_NOTE, Filter, HeldMessage, NewRequest, QuarantineIndex, Record,
    Request, RequestAction, State, Store, Via, age,
};
use crate::text;
use std::fmt::{Display, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// How long a command waits for the worker's outcome of a request the worker claimed
/// before the command could: two Postfix commands' deadlines.
const WORKER_WAIT: Duration = Duration::from_secs(120);

/// One quarantine command's context: the configuration, the store and the time.
pub struct Session {
    config: Config,
    store: Store,
    now: u64,
}

impl Session {
    /// Loads the configuration at `path`, takes the time (`now`, RFC 3339 or seconds
    /// since the epoch, pretends for tests), checks the state directory and opens the
    /// store.
    pub fn open(path: &Path, now: Option<&str>) -> anyhow::Result<Session> {
        let config = load_config(path)?;
        let now = parse_now(now)?;
        check_state_dir(path, &config)?;
        let store = Store::open_configured(&config)?;
        Ok(Session { config, store, now })
    }

    fn review(&self) -> Review<'_> {
        Review {
            config: &self.config,
            store: &self.store,
            postfix: PostfixTools::new(self.config.postfix.clone()),
            who: invoking_user(),
            now: self.now,
        }
    }

    /// `quarantine list`: the records in `state`, held within `since`.
    pub fn list(&self, state: Option<State>, since: Option<Duration>, json: bool) -> Outcome {
        let filter = Filter {
            state,
            since: since.map(|d| self.now.saturating_sub(d.as_secs())),
        };
        let records = self.store.list(&filter)?;
        print!("{}", list_text(&records, self.now, json));
        Ok(ExitCode::SUCCESS)
    }

    /// `quarantine show ID` (`RELAY:ID` for another relay's record in a fleet).
    pub fn show(&self, id: &str) -> Outcome {
        let address = self.review().address(id).map_err(usage)?;
        let id = address.queue_id;
        let record = self.store.get_on(address.relay.as_deref(), &id)?;
        let requests = self.store.requests(record.id)?;
        // Another relay's message is in that relay's Postfix, not ours.
        let headers = if record.relay.as_deref() == self.store.relay() {
            PostfixTools::new(self.config.postfix.clone())
                .headers(&id)
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "in the Postfix queue of {}",
                record.relay.as_deref().unwrap_or("another relay")
            ))
        };
        print!("{}", show_text(&record, &requests, self.now, headers));
        Ok(ExitCode::SUCCESS)
    }

    /// `quarantine release ID...`.
    pub fn release(
        &self,
        ids: &[String],
        to: &[String],
        comment: Option<&str>,
        foreign: bool,
    ) -> Outcome {
        let action = if to.is_empty() {
            RequestAction::Release
        } else {
            RequestAction::ReleaseTo {
                recipients: to.to_vec(),
            }
        };
        Ok(printed(self.request(ids, &action, comment, foreign)))
    }

    /// `quarantine discard ID...`.
    pub fn discard(
        &self,
        ids: &[String],
        notify_sender: bool,
        comment: Option<&str>,
        foreign: bool,
    ) -> Outcome {
        Ok(printed(self.request(
            ids,
            &RequestAction::Discard { notify_sender },
            comment,
            foreign,
        )))
    }

    /// `quarantine extend ID... --until TIME | --for DURATION`: keeps the messages held,
    /// and out of the sweep's reach, until then.
    pub fn extend(
        &self,
        ids: &[String],
        until: Option<&str>,
        for_: Option<Duration>,
        comment: Option<&str>,
        foreign: bool,
    ) -> Outcome {
        let until = match (until, for_) {
            (Some(t), None) => parse_now(Some(t))?,
            (None, Some(d)) => self.now.saturating_add(d.as_secs()),
            _ => return Err(usage("extend needs one of --until and --for")),
        };
        if until <= self.now {
            return Err(usage(format_args!(
                "--until {} is not in the future",
                time(until)
            )));
        }
        Ok(printed(self.request(
            ids,
            &RequestAction::Extend { until },
            comment,
            foreign,
        )))
    }

    /// Files a request for each message as the invoking user and carries it out at
    /// once, through the worker's executor: the same path as the review desk's, and
    /// it works without the worker running. A message with an open request is a
    /// conflict (an error, nothing done).
    fn request(
        &self,
        ids: &[String],
        action: &RequestAction,
        comment: Option<&str>,
        foreign: bool,
    ) -> Report {
        let review = self.review();
        let executor = Executor {
            config: &self.config,
            store: &self.store,
            postfix: review.postfix.clone(),
        };
        let mut report = Report::default();
        for raw in ids {
            let r = match review.held_record(raw, foreign) {
                Ok(r) => r,
                Err(e) => {
                    report.fail(e);
                    continue;
                }
            };
            let request = NewRequest {
                queue_id: r.message.queue_id.clone(),
                action: action.clone(),
                who: review.who.clone(),
                via: Via::Cli,
                remote: None,
                comment: comment
                    .filter(|c| !c.trim().is_empty())
                    .unwrap_or(CLI_COMMENT)
                    .to_owned(),
                at: self.now,
            };
            match executor.file_and_execute(&request, r.relay.as_deref(), WORKER_WAIT) {
                Ok(done) if done.ok => report.line(done.result),
                Ok(open) if open.open => report.fail(format!(
                    "{}; not finished yet: the worker finishes it (`quarantine show {raw}`)",
                    open.result
                )),
                Ok(failed) => report.fail(failed.result),
                Err(e) => report.fail(e),
            }
        }
        report
    }

    /// `quarantine reconcile`.
    pub fn reconcile(&self) -> Outcome {
        Ok(printed(self.review().reconcile()))
    }

    /// `quarantine sweep`.
    pub fn sweep(&self) -> Outcome {
        Ok(printed(self.review().sweep()))
    }

    /// `quarantine worker`: carries out the requests filed in the store until SIGTERM.
    pub fn worker(&self) -> Outcome {
        Ok(super::worker::serve(&self.config, &self.store))
    }
}

/// `--now`: seconds since the epoch or an RFC 3339 time; the clock when absent.
fn parse_now(now: Option<&str>) -> anyhow::Result<u64> {
    match now {
        None => Ok(epoch_secs(SystemTime::now())),
        Some(s) => s
            .parse::<u64>()
            .or_else(|_| humantime::parse_rfc3339_weak(s).map(epoch_secs))
            .map_err(|e| usage(format_args!("--now {s}: {e}"))),
    }
}

/// Prints what a review action did; exits 1 when an item failed.
fn printed(report: Report) -> ExitCode {
    print!("{}", text::neutralize_lines(&report.text));
    if report.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn time(secs: u64) -> String {
    text::utc_seconds(secs)
}

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A record's state for listings: `foreign` for a held message another tool held.
fn state_label(r: &Record) -> String {
    if r.foreign && r.state == State::Held {
        "foreign".to_owned()
    } else {
        r.state.to_string()
    }
}

fn sender_of(m: &HeldMessage) -> &str {
    if m.sender.is_empty() { "<>" } else { &m.sender }
}

/// `quarantine list`: one line per record, or JSON; `now` for the ages.
pub fn list_text(records: &[Record], now: u64, json: bool) -> String {
    if json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "queue_id": r.message.queue_id,
                    "state": r.state,
                    "foreign": r.foreign,
                    "held_at": time(r.message.held_at),
                    "age_seconds": r.held_for(now).as_secs(),
                    "sender": r.message.sender,
                    "sasl_login": r.message.sasl_login,
                    "audience": r.message.audience,
                    "largest_list": r.message.lists.first().map(|l| &l.address),
                    "rules": r.message.rules,
                    "subject": r.message.subject,
                })
            })
            .collect();
        let json = serde_json::to_string_pretty(&rows).unwrap_or_default();
        return text::neutralize_json(&json).into_owned() + "\n";
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:<9} {:<28} {:>9}  {:<40} SUBJECT",
        "QUEUE ID", "AGE", "STATE", "SENDER", "AUDIENCE", "RULE"
    );
    for r in records {
        let m = &r.message;
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:<9} {:<28} {:>9}  {:<40} {}",
            m.queue_id,
            age(r.held_for(now)),
            state_label(r),
            text::neutralize_capped(sender_of(m), 28),
            count(m.audience),
            text::neutralize_capped(&r.first_reason(), 40),
            text::neutralize_capped(m.subject.as_deref().unwrap_or("-"), 60)
        );
    }
    let _ = writeln!(out, "{} message(s)", records.len());
    let foreign = records
        .iter()
        .filter(|r| r.foreign && r.state == State::Held)
        .count();
    if foreign > 0 {
        let _ = writeln!(out, "{foreign} {FOREIGN_NOTE}");
    }
    text::neutralize_lines(&out).into_owned()
}

/// `quarantine show ID`: every fact, the blast radius and Postfix's copy of the
/// headers (`postcat -hq`, or why not); every line neutralised ([`text::neutralize_lines`]).
pub fn show_text(
    r: &Record,
    requests: &[Request],
    now: u64,
    headers: Result<String, impl Display>,
) -> String {
    let m = &r.message;
    let mut o = String::new();
    let _ = writeln!(o, "Queue id:     {}", m.queue_id);
    let _ = writeln!(
        o,
        "State:        {} since {} ({} ago)",
        r.state,
        time(r.state_at),
        age(Duration::from_secs(now.saturating_sub(r.state_at)))
    );
    let _ = writeln!(
        o,
        "Held at:      {} ({} ago)",
        time(m.held_at),
        age(r.held_for(now))
    );
    let _ = writeln!(o, "Sender:       {}", text::neutralize(sender_of(m)));
    let _ = writeln!(
        o,
        "SASL login:   {}",
        text::neutralize(m.sasl_login.as_deref().unwrap_or("-"))
    );
    let _ = writeln!(
        o,
        "Client:       {}",
        text::neutralize(m.client.as_deref().unwrap_or("-"))
    );
    let _ = writeln!(
        o,
        "Subject:      {}",
        text::neutralize_capped(m.subject.as_deref().unwrap_or("-"), 200)
    );
    let _ = writeln!(
        o,
        "Message-ID:   {}",
        text::neutralize_capped(m.message_id.as_deref().unwrap_or("-"), 200)
    );
    let _ = writeln!(
        o,
        "Thread:       {}",
        text::neutralize_capped(&m.thread_key, 200)
    );
    let _ = writeln!(o, "Recorded by:  {}", m.recorded_by);
    if let Some(until) = r.hold_until {
        let _ = writeln!(
            o,
            "Held until:   {} (extended: the sweep leaves it alone until then)",
            time(until)
        );
    }
    if r.foreign {
        let _ = writeln!(
            o,
            "Held by:      ANOTHER TOOL (foreign), not by fanout-milter: a content filter, \
             header_checks HOLD or postsuper -h. The sweep never expires it; \
             release or discard it only with --foreign"
        );
    }
    let _ = writeln!(o, "\nWhy it is held:");
    for rule in &m.rules {
        let _ = writeln!(
            o,
            "  - {} ({}): {}",
            text::neutralize(&rule.rule),
            text::neutralize(&rule.action),
            text::neutralize(&rule.message)
        );
    }
    let _ = writeln!(o, "\nBlast radius:");
    let visible = m.visible.len() as u64;
    let _ = writeln!(
        o,
        "  audience {} mailboxes ({} external) from {} envelope recipient(s); visible in To/Cc {}, not visible {}",
        count(m.audience),
        count(m.external),
        count(m.recipients.len() as u64),
        count(visible),
        count(m.audience.saturating_sub(visible))
    );
    for l in m.lists.iter().take(10) {
        let drift = l
            .drift_from
            .map(|f| format!(", was {} when last accepted", count(f)))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  list {} expands 1 address to {} mailboxes ({} external{drift})",
            text::neutralize(&l.address),
            count(l.size),
            count(l.external)
        );
    }
    if !m.top_domains.is_empty() {
        let top: Vec<String> = m
            .top_domains
            .iter()
            .take(10)
            .map(|(d, n)| format!("{} {}", text::neutralize(d), count(*n)))
            .collect();
        let _ = writeln!(o, "  top recipient domains: {}", top.join(", "));
    }
    let shown: Vec<_> = m
        .recipients
        .iter()
        .take(20)
        .map(|r| text::neutralize(r))
        .collect();
    let more = m.recipients.len().saturating_sub(shown.len());
    let _ = writeln!(
        o,
        "  envelope: {}{}",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    let vis: Vec<_> = m
        .visible
        .iter()
        .take(20)
        .map(|v| text::neutralize(v))
        .collect();
    let _ = writeln!(
        o,
        "  visible To/Cc: {}",
        if vis.is_empty() {
            "-".to_owned()
        } else {
            vis.join(", ")
        }
    );
    let _ = writeln!(o, "\nAudit trail:");
    for a in &r.audit {
        let _ = writeln!(
            o,
            "  {} {} {}{}",
            time(a.at),
            text::neutralize(&a.who),
            text::neutralize(&a.action),
            a.comment
                .as_deref()
                .map(|c| format!(": {}", text::neutralize(c)))
                .unwrap_or_default()
        );
    }
    if !requests.is_empty() {
        let _ = writeln!(o, "\nRequests:");
        for q in requests {
            let _ = writeln!(
                o,
                "  {} {} {} by {} via {}: {}{}",
                q.id,
                time(q.requested_at),
                q.action.name(),
                text::neutralize(&q.who),
                q.via.as_str(),
                q.state,
                q.result
                    .as_deref()
                    .map(|res| format!(": {}", text::neutralize(res)))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(o, "\nHeaders (postcat -hq {}):", m.queue_id);
    match headers {
        Ok(h) => {
            for line in h.lines() {
                let _ = writeln!(o, "  {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(o, "  (not available: {e})");
        }
    }
    text::neutralize_lines(&o).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_counts_read_well() {
        assert_eq!(age(Duration::from_secs(40)), "40s");
        assert_eq!(age(Duration::from_secs(12 * 60 + 5)), "12m");
        assert_eq!(age(Duration::from_secs(2 * 3600 + 5 * 60)), "2h 05m");
        assert_eq!(age(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d 4h");
        assert_eq!(count(840_000), "840,000");
        assert_eq!(count(12), "12");
    }

    #[test]
    fn show_and_list_print_controls_and_bidi_as_escapes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let postcat = bin.join("postcat");
        std::fs::write(
            &postcat,
            "#!/bin/sh\nprintf 'Subject: \\033]0;pwned\\007\\033[2J\\r\\nX-Evil: a\\342\\200\\256b\\n'\n",
        )
        .unwrap();
        std::fs::set_permissions(&postcat, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = crate::config::parse(
            "[domains]\ninternal = [\"example.org\"]\n",
            std::path::Path::new("/test.toml"),
        )
        .unwrap();
        config.postfix.command_directory = bin;
        let store = Store::open(dir.path()).unwrap();
        let mut m = crate::quarantine::store::tests::held("AAAAAA1", 100);
        m.subject = Some("\u{1b}]0;pwned\u{7}".into());
        m.sender = "ann\u{202e}gpj.exe@example.org".into();
        m.rules[0].message = "list cn=x\r\nBcc: y".into();
        store.record_held(&m, "milter", None).unwrap();
        let postfix = PostfixTools::new(config.postfix.clone());
        let record = store.get(&m.queue_id).unwrap();
        let shown = show_text(&record, &[], 200, postfix.headers(&m.queue_id));
        let records = store.list(&Filter::default()).unwrap();
        let listed = list_text(&records, 200, false);
        let json = list_text(&records, 200, true);
        assert!(!json.contains(['\u{1b}', '\u{202e}']), "{json}");
        let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            rows[0]["sender"], m.sender,
            "JSON keeps the value for a parser"
        );
        for out in [&shown, &listed] {
            assert!(
                !out.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
                "{out}"
            );
            assert!(out.contains("\\x1B]0;pwned\\x07"), "{out}");
            assert!(out.contains("ann\\u{202E}gpj.exe"), "{out}");
        }
        assert!(
            shown.contains("  Subject: \\x1B]0;pwned\\x07\\x1B[2J\n"),
            "{shown}"
        );
        assert!(shown.contains("  X-Evil: a\\u{202E}b\n"), "{shown}");
        assert!(shown.contains("list cn=x\\x0D\\x0ABcc: y"), "{shown}");
    }
}
