// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter storms list|clear`: the reply-all storms of the running daemon,
//! through its admin socket.

use super::{Outcome, load_config};
use crate::control::{self, Request, Response};
use crate::state::Storm;
use crate::text;
use anyhow::anyhow;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// `storms list`: a table, or one JSON array with `json`.
pub fn list(path: &Path, json: bool) -> Outcome {
    let config = load_config(path)?;
    match control::request(&config.admin_socket, &Request::StormsList)? {
        Response::Storms { storms } if json => {
            let json = serde_json::to_string_pretty(&storms).unwrap_or_default();
            println!("{}", text::neutralize_json(&json));
            Ok(ExitCode::SUCCESS)
        }
        Response::Storms { storms } => {
            print!("{}", storms_text(&storms));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(refused(other)),
    }
}

/// `storms clear ID`: ends a storm now; exits 1 when no such storm is in progress.
pub fn clear(path: &Path, id: String) -> Outcome {
    let config = load_config(path)?;
    let request = Request::StormsClear { id: id.clone() };
    match control::request(&config.admin_socket, &request)? {
        Response::Cleared { found: true } => {
            println!("storm {id} cleared: replies in its thread flow again");
            Ok(ExitCode::SUCCESS)
        }
        Response::Cleared { found: false } => {
            println!("no storm {id} in progress");
            Ok(ExitCode::from(1))
        }
        other => Err(refused(other)),
    }
}

/// The error for an answer that is not the one asked for.
fn refused(response: Response) -> anyhow::Error {
    match response {
        Response::Error { message } => anyhow!("the daemon refused: {message}"),
        other => anyhow!("unexpected answer from the daemon: {other:?}"),
    }
}

/// `storms list` as a table for a terminal; subjects, lists and thread keys come from
/// mail and the directory and are neutralised ([`text::neutralize`]), the subject also
/// capped at [`text::MAX_SUBJECT_CHARS`].
pub fn storms_text(storms: &[Storm]) -> String {
    let mut out = String::new();
    if storms.is_empty() {
        out.push_str("no reply-all storm in progress\n");
    }
    let at = text::utc_seconds;
    for s in storms {
        let _ = writeln!(
            out,
            "{}  {} messages from {} senders, {} stopped  since {}  until {}\n    list: {} ({} recipients)\n    subject: {}\n    thread: {}",
            text::neutralize(&s.id),
            s.messages,
            s.senders,
            s.blocked,
            at(s.since),
            at(s.until),
            text::neutralize(&s.list),
            s.audience,
            text::neutralize_capped(&s.subject, text::MAX_SUBJECT_CHARS),
            text::neutralize(&s.thread)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storms_list_survives_times_no_date_can_write() {
        let storm = Storm {
            id: Storm::id_of("t"),
            thread: "t".into(),
            subject: "Re: x".into(),
            list: "all@corp.example".into(),
            audience: 5000,
            messages: 3,
            senders: 2,
            since: 1_800_000_000,
            until: u64::MAX,
            blocked: 4,
        };
        let out = storms_text(&[storm]);
        assert!(
            out.contains("since 2027-01-15T08:00:00Z  until @18446744073709551615\n"),
            "{out}"
        );
        assert!(
            out.contains("thread: t"),
            "the whole entry is written: {out}"
        );
    }

    #[test]
    fn storms_list_shows_controls_and_bidi_as_escapes() {
        let thread = "subj:re: x\u{1b}[2J|all@corp.example";
        let storm = Storm {
            id: Storm::id_of(thread),
            thread: thread.into(),
            subject: "Re: \u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[3J\r\nfake line \u{202e}txt.exe"
                .into(),
            list: "all\u{202e}@corp.example".into(),
            audience: 5000,
            messages: 3,
            senders: 2,
            since: 1_800_000_000,
            until: 1_800_021_600,
            blocked: 4,
        };
        let out = storms_text(&[storm]);
        assert!(
            !out.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
            "{out:?}"
        );
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(
            out.contains(
                "    subject: Re: \\x1B]0;pwned\\x07\\x1B[2J\\x1B[3J\\x0D\\x0Afake line \\u{202E}txt.exe\n"
            ),
            "{out}"
        );
        assert!(out.contains("    list: all\\u{202E}@corp.example (5000 recipients)"));
        assert!(out.contains("    thread: subj:re: x\\x1B[2J|all@corp.example"));
        assert_eq!(storms_text(&[]), "no reply-all storm in progress\n");
    }
}
