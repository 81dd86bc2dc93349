// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter explain`: runs the policy core offline on one message.

use crate::config::Config;
use crate::decide::{NoState, Offline, decide};
use crate::directory::Directory;
use crate::message::extract;
use crate::policy::{Evaluation, MessageFacts, NO_QUEUE_ID, Policy, RecipientSet};
use crate::text;
use futures_util::FutureExt;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::Arc;

/// What `explain` evaluates.
#[derive(Clone, Debug, Default)]
pub struct ExplainInput {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
    /// SASL login.
    pub sasl_login: Option<String>,
    /// Client address.
    pub client: Option<String>,
    /// The message (headers at least), if given.
    pub message: Option<Vec<u8>>,
}

/// The facts and evaluation of one message, ready to print.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The facts evaluated.
    pub facts: MessageFacts,
    /// The result.
    pub evaluation: Evaluation,
    /// What the milter would do at end of message, in words.
    pub effect: String,
    /// The lists among the facts that a `[[list]]` restricts by name (the policy's
    /// [`Restricted::lists`](crate::policy::Restricted::lists)).
    pub restricted: Vec<Arc<str>>,
}

/// Decides one message with the same code the milter runs ([`decide`]), without the
/// shared state: storms, rate budgets and the breaker are taken as quiet.
pub fn explain(config: &Config, directory: &Directory, input: ExplainInput) -> Explanation {
    let form = config.postfix.address_form();
    let sender = form.canonical(&input.from);
    let mut recipients = RecipientSet::with_form(form);
    for r in &input.rcpts {
        recipients.add(r);
    }
    let headers = input.message.as_deref().map(extract).unwrap_or_default();
    let audience = directory.message_audience(&recipients, &headers);
    let facts = MessageFacts {
        queue_id: None,
        sender,
        sasl_login: input.sasl_login,
        client: input.client,
        recipients,
        headers,
        audience,
    };
    // Offline: no daemon, so no shared state (no storm in progress, every rate budget
    // with room, the breaker not tripped), no record and nothing applied.
    let decision = decide(
        &config.policy,
        &config.replies,
        &facts,
        NO_QUEUE_ID,
        &mut NoState,
        &mut Offline::new(),
    )
    .now_or_never()
    .expect("offline ports never wait");
    let Ok(decision) = decision;
    let restricted = facts
        .audience
        .iter()
        .flat_map(|a| &a.lists)
        .filter(|l| config.policy.restricted.by_name(&l.address).is_some())
        .map(|l| l.address.clone())
        .collect();
    Explanation {
        facts,
        evaluation: decision.evaluation,
        effect: decision.effect.describe(),
        restricted,
    }
}

impl Explanation {
    /// The JSON document of the `explain --json` contract.
    pub fn to_json(&self) -> serde_json::Value {
        let v = &self.evaluation.verdict;
        let c = &self.evaluation.counts;
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
            "effect": self.effect,
            "lists": self.facts.audience.as_ref().map(|a| a.lists.iter().map(|l| json!({
                "address": &*l.address,
                "audience": l.size,
                "external": l.external,
                "nested_lists": l.nested_lists,
                "cycles": l.cycles,
                "restricted": self.restricted.contains(&l.address),
                "named_in_headers": l.named,
                "drift_from": l.drift_from,
                "unknown_members": l.unknown,
                "unknown_reason": l.unknown_reason,
            })).collect::<Vec<_>>()).unwrap_or_default(),
            "audience_lower_bound": self.facts.audience.as_ref().is_some_and(|a| a.lower_bound),
            "audience_unknown_members": self.facts.audience.as_ref().map_or(0, |a| a.unknown),
            "directory_unavailable": self.facts.audience.as_ref().and_then(|a| a.unavailable.clone()),
            "non_mailbox_targets": self.facts.audience.as_ref().map_or(0, |a| a.non_mailbox),
            "sender": self.facts.sender,
            "subject": self.facts.headers.subject,
            "message_id": self.facts.headers.message_id,
        })
    }

    /// A human-readable report, neutralised ([`text::neutralize_lines`]): subjects,
    /// addresses and reasons come from mail and the directory.
    pub fn to_text(&self) -> String {
        text::neutralize_lines(&self.report()).into_owned()
    }

    fn report(&self) -> String {
        let v = &self.evaluation.verdict;
        let c = &self.evaluation.counts;
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
        let _ = writeln!(out, "effect: {}", self.effect);
        let _ = writeln!(out, "envelope recipients: {}", c.envelope);
        let _ = writeln!(out, "external recipients: {}", c.external);
        let _ = writeln!(out, "visible recipients (To/Cc): {}", c.visible);
        let _ = writeln!(out, "audience: {}", c.audience);
        let _ = writeln!(out, "  of which no To/Cc address shows: {}", c.unseen);
        if let Some(a) = &self.facts.audience {
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
        if let Some(s) = &self.facts.headers.subject {
            let _ = writeln!(out, "subject: {}", text::neutralize(s));
        }
        out
    }
}

/// `directory lookup`: what one address reaches (and who may send to it, by `policy`),
/// neutralised ([`text::neutralize_lines`]): names, DNs and reasons come from the
/// directory.
pub fn lookup_text(
    directory: &Directory,
    policy: &Policy,
    address: &str,
    max_members: usize,
) -> String {
    text::neutralize_lines(&lookup_report(directory, policy, address, max_members)).into_owned()
}

fn lookup_report(
    directory: &Directory,
    policy: &Policy,
    address: &str,
    max_members: usize,
) -> String {
    let mut out = String::new();
    let index = &directory.index;
    let Some(list) = index.list(address) else {
        let resolved = index.resolve(address);
        let _ = writeln!(
            out,
            "{address}: not a list; reaches {} address(es):",
            resolved.len()
        );
        for r in resolved {
            match r {
                crate::directory::index::Resolved::List(l) => {
                    let _ = writeln!(
                        out,
                        "  list {} ({} mailboxes, by catch-all)",
                        l.address,
                        l.total()
                    );
                }
                crate::directory::index::Resolved::Mailbox(m) => {
                    let _ = writeln!(out, "  {m}");
                }
                crate::directory::index::Resolved::Unavailable(why) => {
                    let _ = writeln!(out, "  cannot be counted now: {}", text::neutralize(&why));
                }
            }
        }
        return out;
    };
    let facts = directory.list_facts(list);
    if let Some(key) = index.list_key(address)
        && key != crate::policy::address::fold_case(address)
    {
        let _ = writeln!(
            out,
            "{}: looked up as {key} (recipient_delimiter \"{}\"), as Postfix does",
            crate::text::neutralize(address),
            crate::text::neutralize(index.recipient_delimiter().as_str())
        );
    }
    if let Some(canonical) = index.canonical(address) {
        let _ = writeln!(out, "{address}: another address of {canonical}");
    }
    let _ = writeln!(out, "{}: list defined at {}", list.address, list.origin);
    let _ = writeln!(
        out,
        "audience: {} mailboxes{}",
        list.total(),
        match (list.depth_exceeded, list.capped) {
            (true, _) => " (at least: nested deeper than max_depth)",
            (_, true) => " (at least: [expansion] max_audience reached)",
            _ => "",
        }
    );
    if let Some(why) = &list.unavailable {
        let _ = writeln!(
            out,
            "UNAVAILABLE: {}; mail to it is tempfailed",
            text::neutralize(why)
        );
    }
    if list.unknown > 0 {
        let _ = writeln!(
            out,
            "UNKNOWN members: {} (they count as unknown, never as one recipient):",
            list.unknown
        );
        for why in &list.unknown_reasons {
            let _ = writeln!(out, "  {}", text::neutralize(why));
        }
        if list.unknown > list.unknown_reasons.len() as u64 {
            let _ = writeln!(
                out,
                "  ... {} more",
                list.unknown - list.unknown_reasons.len() as u64
            );
        }
    }
    let _ = writeln!(out, "external: {}", list.external());
    if list.opaque > 0 {
        let _ = writeln!(out, "known only by count: {}", list.opaque);
    }
    if list.non_mailbox > 0 {
        let _ = writeln!(
            out,
            "non-mailbox targets (pipes, files): {}",
            list.non_mailbox
        );
    }
    if let Some(g) = policy.restricted.by_name(&list.address) {
        let _ = writeln!(out, "restricted to: {}", g.describe().join(", "));
    }
    if let Some(from) = facts.drift_from {
        let _ = writeln!(
            out,
            "DRIFTED: accepted size {from}, now {}; mail to it is held until accepted",
            list.total()
        );
    }
    for c in &list.cycles {
        let _ = writeln!(out, "cycle: {}", text::neutralize(c));
    }
    let _ = writeln!(out, "domains:");
    for (d, n) in list.domains.iter().take(10) {
        let _ = writeln!(out, "  {d}: {n}");
    }
    let _ = writeln!(out, "nested lists ({}):", list.nested_lists);
    tree(
        directory,
        list,
        1,
        &mut vec![list.address.clone()],
        &mut out,
    );
    let _ = writeln!(out, "first members:");
    for &m in list.mailboxes.iter().take(max_members) {
        let _ = writeln!(out, "  {}", text::neutralize(index.mailbox_name(m)));
    }
    if list.mailboxes.len() > max_members {
        let _ = writeln!(out, "  ... {} more", list.mailboxes.len() - max_members);
    }
    out
}

fn tree(
    directory: &Directory,
    list: &crate::directory::ListAudience,
    depth: usize,
    path: &mut Vec<std::sync::Arc<str>>,
    out: &mut String,
) {
    const MAX_SHOWN: usize = 200;
    for child in directory.index.children(list) {
        if out.lines().count() > MAX_SHOWN {
            let _ = writeln!(out, "{}...", "  ".repeat(depth));
            return;
        }
        let indent = "  ".repeat(depth);
        if path.contains(&child.address) {
            let _ = writeln!(out, "{indent}{} (cycle back)", child.address);
            continue;
        }
        let _ = writeln!(
            out,
            "{indent}{} ({} mailboxes)",
            child.address,
            child.total()
        );
        path.push(child.address.clone());
        tree(directory, &child, depth + 1, path, out);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::DriftMode;

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
        let json = e.to_json();
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
        let board = lookup_text(&directory, &config.policy, "board@corp.example", 5);
        assert!(
            board.contains("restricted to: ceo@corp.example\n"),
            "{board}"
        );
        let staff = lookup_text(&directory, &config.policy, "staff@corp.example", 5);
        assert!(!staff.contains("restricted to:"), "{staff}");
    }
    use crate::policy::{Action, Reason, Verdict};

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
        let out = e.to_text();
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
