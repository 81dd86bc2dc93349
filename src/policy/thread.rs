// SPDX-License-Identifier: GPL-3.0-or-later
//! Thread identity: which conversation a message belongs to, so that reply-alls to one
//! announcement are counted together.
//!
//! The key is the thread's root Message-ID when the headers carry one: the first
//! Message-ID in `References`, else `In-Reply-To`, else the message's own Message-ID.
//! Without any of them, it is the normalised subject together with the audience (the
//! largest list hit, or a hash of the recipient set).

use super::facts::MessageFacts;
use sha2::{Digest, Sha256};

/// The thread key of a message: `mid:<root message-id>` or `subj:<subject>|<audience>`.
pub fn thread_key(facts: &MessageFacts) -> String {
    let h = &facts.headers;
    let root = h
        .references
        .first()
        .or_else(|| h.in_reply_to.first())
        .or(h.message_id.as_ref())
        .map(|id| {
            id.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_lowercase()
        })
        .filter(|id| !id.is_empty());
    if let Some(id) = root {
        return format!("mid:{id}");
    }
    let subject = normalize_subject(h.subject.as_deref().unwrap_or(""));
    let subject = crate::text::cap(&subject, crate::text::MAX_SUBJECT_CHARS);
    format!("subj:{subject}|{}", audience_key(facts))
}

/// The audience part of a subject key: the largest list, else a stable hash (SHA-256,
/// so relays sharing state agree) of the sorted envelope recipients.
fn audience_key(facts: &MessageFacts) -> String {
    if let Some(list) = facts.audience.as_ref().and_then(|a| a.lists.first()) {
        return list.address.to_string();
    }
    let mut rcpts: Vec<&str> = facts.recipients.iter().collect();
    rcpts.sort_unstable();
    let mut hasher = Sha256::new();
    for r in rcpts {
        hasher.update(r.as_bytes());
        hasher.update(b"\n");
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("rcpts:{hex}")
}

/// True for a reply or a forward: it names a parent message, or its subject carries a
/// reply or forward prefix. Only these count towards a reply-all storm.
pub fn is_reply(facts: &MessageFacts) -> bool {
    let h = &facts.headers;
    if !h.in_reply_to.is_empty() || !h.references.is_empty() {
        return true;
    }
    let mut subject = h.subject.as_deref().unwrap_or("").trim().to_lowercase();
    while subject.starts_with('[')
        && let Some(end) = subject.find(']')
    {
        subject = subject[end + 1..].trim_start().to_owned();
    }
    let plain = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    normalize_subject(&subject) != plain
}

/// Reply and forward prefixes in the languages mail clients commonly use.
const PREFIXES: &[&str] = &[
    "re", "fwd", "fw", "aw", "sv", "antw", "wg", "vs", "tr", "rif", "odp",
];

/// Lower-cases a subject, strips reply/forward prefixes (`Re:`, `RE[2]:`, `Fwd:`, `AW:`,
/// `SV:`, `Antw:`, `WG:` ...) and `[tags]` wherever they lead, and collapses whitespace.
pub fn normalize_subject(subject: &str) -> String {
    let mut s = subject.trim().to_lowercase();
    loop {
        let before = s.len();
        if s.starts_with('[')
            && let Some(end) = s.find(']')
        {
            s = s[end + 1..].trim_start().to_owned();
        }
        for p in PREFIXES {
            if let Some(rest) = s.strip_prefix(p) {
                let rest = rest.trim_start();
                let rest = match rest.strip_prefix('[') {
                    Some(r) => match r.find(']') {
                        Some(end) if r[..end].chars().all(|c| c.is_ascii_digit()) => {
                            r[end + 1..].trim_start()
                        }
                        _ => rest,
                    },
                    None => rest,
                };
                if let Some(rest) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('：')) {
                    s = rest.trim_start().to_owned();
                    break;
                }
            }
        }
        if s.len() == before {
            break;
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AudienceFacts, ListFacts};

    #[test]
    fn replies_are_told_by_their_headers_or_their_subject_prefix() {
        let with_subject = |s: &str| {
            let mut f = MessageFacts::default();
            f.headers.subject = Some(s.into());
            is_reply(&f)
        };
        assert!(with_subject("Re: all staff"));
        assert!(with_subject("[EXT] AW: Weihnachtsfeier"));
        assert!(with_subject("FW: minutes"));
        assert!(
            !with_subject("[EXT] Weihnachtsfeier"),
            "a tag alone is not a reply"
        );
        assert!(
            !with_subject("Reorganisation"),
            "a word starting with re is not a prefix"
        );
        assert!(!with_subject(""));
        let mut f = MessageFacts::default();
        f.headers.in_reply_to = vec!["a@b".into()];
        assert!(is_reply(&f));
    }

    fn facts() -> MessageFacts {
        let mut f = MessageFacts::default();
        f.recipients.add("b@example.org");
        f.recipients.add("a@example.org");
        f
    }

    #[test]
    fn root_message_id_wins_in_order() {
        let mut f = facts();
        f.headers.message_id = Some("<Own@x>".into());
        assert_eq!(thread_key(&f), "mid:own@x");
        f.headers.in_reply_to = vec!["<parent@x>".into()];
        assert_eq!(thread_key(&f), "mid:parent@x");
        f.headers.references = vec!["<ROOT@x>".into(), "<parent@x>".into()];
        assert_eq!(thread_key(&f), "mid:root@x");
    }

    #[test]
    fn subjects_are_normalised() {
        for s in [
            "Re: Staff survey",
            "RE: RE: staff   survey",
            "Fwd: [All-Staff] Re: Staff survey",
            "AW: WG: Staff survey",
            "SV: Antw: Staff Survey ",
            "Re[2]: Staff survey",
            "[EXTERNAL] re : Staff survey",
        ] {
            assert_eq!(normalize_subject(s), "staff survey", "{s}");
        }
        assert_eq!(
            normalize_subject("Regarding: the plan"),
            "regarding: the plan"
        );
        assert_eq!(normalize_subject("[unclosed tag"), "[unclosed tag");
        assert_eq!(normalize_subject(""), "");
    }

    #[test]
    fn without_ids_subject_and_audience_make_the_key() {
        let mut a = facts();
        a.headers.subject = Some("Re: Survey".into());
        let mut b = MessageFacts::default();
        b.recipients.add("a@example.org");
        b.recipients.add("b@example.org");
        b.headers.subject = Some("RE: survey".into());
        assert_eq!(
            thread_key(&a),
            thread_key(&b),
            "same recipients in another order"
        );
        assert!(thread_key(&a).starts_with("subj:survey|rcpts:"));

        b.audience = Some(AudienceFacts {
            lists: vec![ListFacts {
                address: "all@example.org".into(),
                size: 5000,
                external: 0,
                nested_lists: 0,
                cycles: 0,
                domains: Vec::new().into(),
                drift_from: None,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(thread_key(&b), "subj:survey|all@example.org");
    }

    #[test]
    fn a_long_subject_makes_a_small_key() {
        let mut f = facts();
        f.headers.subject = Some(format!("Re: {}", "{reason}".repeat(8_000)));
        let key = thread_key(&f);
        assert!(key.len() < 300, "key of {} bytes", key.len());
        assert!(key.starts_with("subj:{reason}{reason}"), "{key}");
    }

    /// `Re[2]:` is a reply prefix; `Re[ab]:` is not one (only digits count).
    #[test]
    fn only_digits_make_a_numbered_reply_prefix() {
        assert_eq!(normalize_subject("Re[2]: Rota"), "rota");
        assert_eq!(normalize_subject("Re[ab]: Rota"), "re[ab]: rota");
    }
}
