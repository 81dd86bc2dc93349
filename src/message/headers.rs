// SPDX-License-Identifier: GPL-3.0-or-later
//! Header accumulation with a byte cap, and extraction of [`HeaderFacts`] with mail-parser.

use crate::policy::{HeaderFacts, RecipientSet};
use mail_parser::{Address, HeaderValue, MessageParser};

/// The headers [`extract`] reads that tell who sees a message: only they count
/// against `max_header_bytes`.
const VISIBLE: [&str; 2] = ["to", "cc"];

/// The headers [`extract`] reads that identify the sender and the thread. They are kept
/// even when To/Cc fill `max_header_bytes`, within [`THREAD_RESERVE`] more bytes.
const THREAD: [&str; 8] = [
    "from",
    "subject",
    "message-id",
    "in-reply-to",
    "references",
    "auto-submitted",
    "precedence",
    "list-id",
];

/// Bytes the thread headers may use beyond `max_header_bytes`.
pub const THREAD_RESERVE: usize = 64 * 1024;

/// The header block of one message as received from the MTA: only the headers
/// [`extract`] reads, capped in size. Other headers (padding, Received chains,
/// signatures) are not kept at all, so they cannot push Subject or References out;
/// To/Cc count against the cap, the thread headers against the cap plus
/// [`THREAD_RESERVE`].
#[derive(Clone, Debug, Default)]
pub struct HeaderBuffer {
    raw: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl HeaderBuffer {
    /// An empty buffer that keeps at most `cap` bytes of To/Cc headers.
    pub fn new(cap: usize) -> Self {
        HeaderBuffer {
            raw: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Appends one header if [`extract`] reads it. One that does not fit whole is
    /// dropped and the buffer is marked truncated; later headers are still considered.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let is = |names: &[&str]| {
            names
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        };
        let limit = if is(&VISIBLE) {
            self.cap
        } else if is(&THREAD) {
            self.cap.saturating_add(THREAD_RESERVE)
        } else {
            return;
        };
        let needed = name.len() + 2 + value.len() + 2;
        if self.raw.len() + needed > limit {
            self.truncated = true;
            return;
        }
        self.raw.extend_from_slice(name);
        self.raw.extend_from_slice(b": ");
        self.raw.extend_from_slice(value);
        self.raw.extend_from_slice(b"\r\n");
    }

    /// True when a header was dropped for size (the milter reads it from the facts).
    #[cfg(test)]
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The header block, terminated by an empty line.
    pub fn finish(mut self) -> (Vec<u8>, bool) {
        self.raw.extend_from_slice(b"\r\n");
        (self.raw, self.truncated)
    }
}

/// Every header field of a message as received (name, value), in order, kept for the
/// quarantine record up to `cap` bytes of names and values in all: the fields that fit,
/// then as much of the next one's value as fits (on a character boundary), nothing
/// after. Unlike [`HeaderBuffer`] it keeps every field, so the review desk shows the
/// header as it came; the cap bounds the memory a message can make the milter hold.
#[derive(Clone, Debug, Default)]
pub struct HeaderFields {
    fields: Vec<(String, String)>,
    left: usize,
    full: bool,
}

impl HeaderFields {
    /// An empty list that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        HeaderFields {
            fields: Vec::new(),
            left: cap,
            full: false,
        }
    }

    /// Appends one field (bytes not UTF-8 are replaced), or the part of it that fits.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        if self.full {
            return;
        }
        if name.len() >= self.left {
            self.full = true;
            return;
        }
        self.left -= name.len();
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = String::from_utf8_lossy(value).into_owned();
        if value.len() > self.left {
            let mut cut = self.left;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            self.full = true;
        }
        self.left -= value.len();
        self.fields.push((name, value));
    }

    /// The fields kept.
    pub fn into_vec(self) -> Vec<(String, String)> {
        self.fields
    }
}

/// Extracts what the policy needs from a header block (or a whole message).
///
/// Never panics; unparsable input gives empty facts.
pub fn extract(raw: &[u8]) -> HeaderFacts {
    let mut facts = HeaderFacts::default();
    let Some(msg) = MessageParser::default().parse_headers(raw) else {
        return facts;
    };
    let mut visible = RecipientSet::new();
    for list in msg.all_to().chain(msg.all_cc()) {
        add_addresses(&mut visible, list);
    }
    facts.visible = visible;
    facts.from = msg
        .from()
        .and_then(|a| a.iter().find_map(|a| a.address()))
        .map(crate::policy::address::normalize);
    facts.subject = msg.subject().map(str::to_owned);
    facts.message_id = msg.message_id().map(str::to_owned);
    facts.in_reply_to = ids(msg.in_reply_to());
    facts.references = ids(msg.references());
    facts.automated = automated(&msg);
    facts
}

/// True for mail a program sent or a list distributes (RFC 3834 `Auto-Submitted`
/// other than `no`, `Precedence: bulk|list|junk`, a `List-Id`): its sender is not told
/// about a hold, so that two programs never answer each other.
fn automated(msg: &mail_parser::Message<'_>) -> bool {
    let text = |name: &str| {
        msg.header_raw(name).map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    };
    let auto = text("Auto-Submitted").is_some_and(|v| !v.is_empty() && v != "no");
    let bulk = text("Precedence").is_some_and(|v| matches!(v.as_str(), "bulk" | "list" | "junk"));
    auto || bulk || msg.header_raw("List-Id").is_some()
}

fn add_addresses(set: &mut RecipientSet, list: &Address<'_>) {
    for addr in list.iter() {
        if let Some(a) = addr.address() {
            set.add(a);
        }
    }
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value.as_text_list() {
        Some(list) => list.iter().map(|s| s.to_string()).collect(),
        None => value
            .as_text()
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_of(headers: &[(&str, &str)]) -> HeaderFacts {
        let mut buf = HeaderBuffer::new(1 << 20);
        for (n, v) in headers {
            buf.push(n.as_bytes(), v.as_bytes());
        }
        let (raw, _) = buf.finish();
        extract(&raw)
    }

    #[test]
    fn counts_every_to_and_cc_header_and_groups() {
        let f = facts_of(&[
            ("From", "Ann <ann@Example.org>"),
            ("To", "x1@e.org, x2@e.org, G: x3@e.org, x4@e.org;"),
            ("To", "x5@e.org"),
            ("Cc", "X1@E.ORG, Boss <x6@e.org>"),
            ("Subject", "Re: Fwd: =?utf-8?q?Hall=C3=B6?="),
            ("Message-ID", "<abc@x.org>"),
            ("In-Reply-To", "<p@x.org>"),
            ("References", "<r1@x.org> <r2@x.org>"),
        ]);
        assert_eq!(
            f.visible.len(),
            7,
            "X1@E.ORG differs from x1@e.org only in the local part"
        );
        assert_eq!(f.from.as_deref(), Some("ann@example.org"));
        assert_eq!(f.subject.as_deref(), Some("Re: Fwd: Hallö"));
        assert_eq!(f.message_id.as_deref(), Some("abc@x.org"));
        assert_eq!(f.in_reply_to, ["p@x.org"]);
        assert_eq!(f.references, ["r1@x.org", "r2@x.org"]);
        assert!(!f.truncated);
    }

    #[test]
    fn programs_and_lists_are_automated() {
        assert!(!facts_of(&[("Subject", "hi")]).automated);
        assert!(!facts_of(&[("Auto-Submitted", " No ")]).automated);
        assert!(facts_of(&[("Auto-Submitted", "auto-replied")]).automated);
        assert!(facts_of(&[("auto-submitted", "auto-generated; owner-email=a@b")]).automated);
        assert!(facts_of(&[("Precedence", "bulk")]).automated);
        assert!(facts_of(&[("Precedence", "LIST")]).automated);
        assert!(facts_of(&[("Precedence", "junk")]).automated);
        assert!(!facts_of(&[("Precedence", "first-class")]).automated);
        assert!(facts_of(&[("List-Id", "<ward.example.org>")]).automated);
        let mut b = HeaderBuffer::new(100);
        b.push(b"List-Id", b"<ward.example.org>");
        b.push(b"Auto-Submitted", b"auto-replied");
        let (raw, _) = b.finish();
        assert!(extract(&raw).automated, "the buffer keeps them");
    }

    #[test]
    fn buffer_caps_and_marks_truncation() {
        let mut buf = HeaderBuffer::new(64);
        buf.push(b"To", b"a@b.org");
        buf.push(b"X-Big", &[b'x'; 100]);
        assert!(
            !buf.truncated(),
            "headers the rules do not read are not kept"
        );
        buf.push(b"To", &[b'x'; 100]);
        buf.push(b"Cc", b"c@d.org");
        assert!(buf.truncated());
        let (raw, truncated) = buf.finish();
        assert!(truncated);
        assert_eq!(extract(&raw).visible.len(), 2);
    }

    /// Padding that fills `max_header_bytes` to the last bytes before the thread headers,
    /// or To/Cc that do,
    /// do not push Subject and In-Reply-To out: the message is still a reply in its
    /// thread.
    #[test]
    fn padding_does_not_push_the_thread_headers_out() {
        use crate::policy::{MessageFacts, is_reply, thread_key};
        let pad = vec![b'x'; 998];
        for (name, count) in [
            (&b"X-Padding"[..], 1100),
            (b"To", 1100),
            (b"Received", 2000),
        ] {
            let mut buf = HeaderBuffer::new(1 << 20);
            buf.push(b"From", b"ann@corp.example");
            for _ in 0..count {
                buf.push(name, &pad);
            }
            for _ in 0..1000 {
                buf.push(name, b"x");
            }
            buf.push(b"Subject", b"Re: all staff");
            buf.push(b"In-Reply-To", b"<root@corp.example>");
            buf.push(b"References", b"<root@corp.example>");
            let (raw, _) = buf.finish();
            assert!(raw.len() <= (1 << 20) + THREAD_RESERVE + 2);
            let facts = MessageFacts {
                headers: extract(&raw),
                ..MessageFacts::default()
            };
            let who = String::from_utf8_lossy(name);
            assert_eq!(
                facts.headers.subject.as_deref(),
                Some("Re: all staff"),
                "{who}"
            );
            assert!(is_reply(&facts), "{who}");
            assert_eq!(thread_key(&facts), "mid:root@corp.example", "{who}");
        }
    }

    #[test]
    fn every_field_is_kept_in_order_up_to_the_cap() {
        let mut f = HeaderFields::new(40);
        f.push(b"Received", b"from x");
        f.push(b"Subject", b"Hi \xff");
        f.push(b"X-Long", "\u{e9}".repeat(20).as_bytes());
        f.push(b"To", b"a@b.org");
        let kept = f.into_vec();
        assert_eq!(
            kept.len(),
            3,
            "nothing after the field that was cut: {kept:?}"
        );
        assert_eq!(kept[0], ("Received".into(), "from x".into()));
        assert_eq!(kept[1], ("Subject".into(), "Hi \u{fffd}".into()));
        let bytes: usize = kept.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!((39..=40).contains(&bytes), "{bytes}");
        assert!(kept[2].1.chars().all(|c| c == '\u{e9}'));
        let mut small = HeaderFields::new(8);
        small.push(b"Received", b"x");
        small.push(b"To", b"y");
        assert!(
            small.into_vec().is_empty(),
            "a name that does not fit ends the list"
        );
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\r\n".to_vec(),
            b"garbage without colon".to_vec(),
            vec![0xff, 0xfe, b':', 0x80, b'\r', b'\n', b'\r', b'\n'],
            b"To: \"unterminated <a@b\r\nCc: ;;;,,,<<>>@@\r\n\r\n".to_vec(),
            b"To: =?utf-8?b?////?= <x@y>\r\nSubject: =?x-unknown?q?=ZZ?=\r\n\r\n".to_vec(),
        ];
        let mut long = b"To: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 200_000));
        long.extend_from_slice(b"\r\n\r\n");
        inputs.push(long);
        for input in inputs {
            let _ = extract(&input);
        }
    }

    #[test]
    fn twenty_thousand_visible_addresses() {
        let to: Vec<String> = (0..20_000).map(|i| format!("u{i}@e.org")).collect();
        let f = facts_of(&[("To", &to.join(", "))]);
        assert_eq!(f.visible.len(), 20_000);
    }
}
