// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter explain`: evaluates one message offline ([`crate::explain`]) and
//! prints the verdict with its reasons, as text or as the `--json` contract.

use super::directory::load_directory;
use super::{Outcome, load_config};
use crate::explain::{ExplainInput, Explanation, explain};
use crate::text;
use anyhow::anyhow;
use serde_json::json;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

/// `explain`: evaluates `input` (its message read from `message`, "-" for standard
/// input) against the configuration at `path` and prints the result.
pub fn run(path: &Path, mut input: ExplainInput, message: Option<&Path>, as_json: bool) -> Outcome {
    let config = load_config(path)?;
    let directory = load_directory(&config)?;
    input.message = message.map(read_message).transpose()?;
    let explanation = explain(&config, &directory, input);
    if as_json {
        let json = format!("{:#}", json(&explanation));
        println!("{}", text::neutralize_json(&json));
    } else {
        print!("{}", text(&explanation));
    }
    Ok(ExitCode::SUCCESS)
}

fn read_message(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| anyhow!("cannot read the message from standard input: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
    }
}

/// The JSON document of the `explain --json` contract.
pub fn json(e: &Explanation) -> serde_json::Value {
    let v = &e.evaluation.verdict;
    let c = &e.evaluation.counts;
    json!({
        "verdict": v.action,
        "intended": v.intended,
        "monitor": v.is_monitored(),
        "reasons": v.reasons,
        "exempt_by": v.exempt_by,
        "envelope_recipients": c.envelope,
        "visible_recipients": c.visible,
        "audience": c.audience,
        "unseen_audience": c.unseen,
        "external_recipients": c.external,
        "effect": e.effect,
        "lists": e.facts.audience.as_ref().map(|a| a.lists.iter().map(|l| json!({
            "address": &*l.address,
            "audience": l.size,
            "external": l.external,
            "nested_lists": l.nested_lists,
            "cycles": l.cycles,
            "restricted": e.restricted.contains(&l.address),
            "named_in_headers": l.named,
            "drift_from": l.drift_from,
            "unknown_members": l.unknown,
            "unknown_reason": l.unknown_reason,
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "audience_lower_bound": e.facts.audience.as_ref().is_some_and(|a| a.lower_bound),
        "audience_unknown_members": e.facts.audience.as_ref().map_or(0, |a| a.unknown),
        "directory_unavailable": e.facts.audience.as_ref().and_then(|a| a.unavailable.clone()),
        "non_mailbox_targets": e.facts.audience.as_ref().map_or(0, |a| a.non_mailbox),
        "sender": e.facts.sender,
        "subject": e.facts.headers.subject,
        "message_id": e.facts.headers.message_id,
    })
}

/// A human-readable report, neutralised ([`text::neutralize_lines`]): subjects,
/// addresses and reasons come from mail and the directory.
pub fn text(e: &Explanation) -> String {
    text::neutralize_lines(&report(e)).into_owned()
}

fn report(e: &Explanation) -> String {
    let v = &e.evaluation.verdict;
    let c = &e.evaluation.counts;
    let mut out = String::new();
    let _ = writeln!(out, "verdict: {}", v.action);
    if v.is_monitored() {
        let _ = writeln!(out, "  (monitor mode: would {})", v.intended);
    }
    if let Some(p) = &v.exempt_by {
        let _ = writeln!(out, "  exempt: sender matches [exempt] \"{p}\"");
    }
    for r in &v.reasons {
        let monitor = if r.monitor { " [monitor]" } else { "" };
        let _ = writeln!(
            out,
            "  {} ({}{monitor}): {}",
            r.rule,
            r.action,
            text::neutralize(&r.message)
        );
    }
    let _ = writeln!(out, "effect: {}", e.effect);
    let _ = writeln!(out, "envelope recipients: {}", c.envelope);
    let _ = writeln!(out, "external recipients: {}", c.external);
    let _ = writeln!(out, "visible recipients (To/Cc): {}", c.visible);
    let _ = writeln!(out, "audience: {}", c.audience);
    let _ = writeln!(out, "  of which no To/Cc address shows: {}", c.unseen);
    if let Some(a) = &e.facts.audience {
        if a.lower_bound {
            let _ = writeln!(
                out,
                "  (at least: some lists nest deeper than max_depth or reach max_audience)"
            );
        }
        if a.unknown > 0 {
            let _ = writeln!(out, "  plus {} member(s) that cannot be counted", a.unknown);
        }
        if let Some(why) = &a.unavailable {
            let _ = writeln!(out, "  directory unavailable: {}", text::neutralize(why));
        }
        for l in a.lists.iter().take(10) {
            let _ = writeln!(
                out,
                "  list {}: {} mailboxes ({} external, {} nested lists{})",
                text::neutralize(&l.address),
                l.size,
                l.external,
                l.nested_lists,
                if l.cycles > 0 { ", has cycles" } else { "" }
            );
        }
        if a.lists.len() > 10 {
            let _ = writeln!(out, "  ... and {} more lists", a.lists.len() - 10);
        }
        if a.non_mailbox > 0 {
            let _ = writeln!(
                out,
                "  non-mailbox targets (pipes, files): {}",
                a.non_mailbox
            );
        }
    }
    if let Some(s) = &e.facts.headers.subject {
        let _ = writeln!(out, "subject: {}", text::neutralize(s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Directory, DriftMode};
    use crate::explain::{ExplainInput, explain};
    use crate::policy::{Action, Evaluation, MessageFacts, Reason, Verdict};

    /// Who may send to a list is the policy's (`[[list]] allowed_senders`): `explain`
    /// and `directory lookup` still show which lists are restricted, and to whom.
    #[test]
    fn restricted_lists_are_shown_from_the_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[domains]\ninternal = [\"corp.example\"]\n\
             [quarantine]\nstate_dir = \"{}\"\n\
             [[list]]\naddress = \"Board@corp.example\"\nmember_count = 12\n\
             allowed_senders = [\"ceo@corp.example\"]\n\
             [[list]]\naddress = \"staff@corp.example\"\nmember_count = 40\n",
            dir.path().display()
        );
        let config = crate::config::parse(&text, &dir.path().join("f.toml")).expect("config");
        let directory =
            Directory::load(&config, DriftMode::ReadOnly, &Default::default()).expect("load");
        let e = explain(
            &config,
            &directory,
            ExplainInput {
                from: "ann@corp.example".into(),
                rcpts: vec!["board@corp.example".into(), "staff@corp.example".into()],
                ..ExplainInput::default()
            },
        );
        let json = json(&e);
        let restricted: Vec<(&str, bool)> = json["lists"]
            .as_array()
            .expect("lists")
            .iter()
            .map(|l| {
                (
                    l["address"].as_str().expect("address"),
                    l["restricted"].as_bool().expect("restricted"),
                )
            })
            .collect();
        assert_eq!(
            restricted,
            [("staff@corp.example", false), ("board@corp.example", true)]
        );
        let board =
            crate::cli::directory::lookup_text(&directory, &config.policy, "board@corp.example", 5);
        assert!(
            board.contains("restricted to: ceo@corp.example\n"),
            "{board}"
        );
        let staff =
            crate::cli::directory::lookup_text(&directory, &config.policy, "staff@corp.example", 5);
        assert!(!staff.contains("restricted to:"), "{staff}");
    }

    #[test]
    fn the_report_shows_controls_and_bidi_as_escapes() {
        let mut facts = MessageFacts::default();
        facts.headers.subject = Some("\u{1b}]0;pwned\u{7}\u{202e}".into());
        let mut verdict = Verdict::accept();
        verdict.action = Action::Quarantine;
        verdict.reasons.push(Reason {
            rule: "restricted",
            action: Action::Quarantine,
            message: "cn=staff\r\nverdict: accept".into(),
            monitor: false,
            reply: None,
        });
        let e = Explanation {
            facts,
            evaluation: Evaluation {
                verdict,
                counts: Default::default(),
            },
            effect: "held".into(),
            restricted: Vec::new(),
        };
        let out = text(&e);
        assert!(
            !out.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
            "{out:?}"
        );
        assert!(
            out.contains("  restricted (quarantine): cn=staff\\x0D\\x0Averdict: accept\n"),
            "{out}"
        );
        assert!(!out.contains("\nverdict: accept"), "no fake line: {out}");
        assert!(
            out.contains("subject: \\x1B]0;pwned\\x07\\u{202E}\n"),
            "{out}"
        );
    }
}
