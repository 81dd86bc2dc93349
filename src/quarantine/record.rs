// SPDX-License-Identifier: GPL-3.0-or-later
//! What the quarantine remembers about a held message.

use crate::text::{self, MAX_SUBJECT_CHARS};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// A Postfix queue id, checked before it is passed to a Postfix command.
///
/// Short ids are upper-case hex, long ids (`enable_long_queue_ids`) letters and digits;
/// both are plain ASCII alphanumerics, so an id can never be read as an option or
/// carry shell syntax.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

impl QueueId {
    /// Checks `s` against Postfix's queue id syntax.
    pub fn parse(s: &str) -> Result<QueueId, InvalidQueueId> {
        let ok = (6..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(QueueId(s.to_owned()))
        } else {
            Err(InvalidQueueId(s.chars().take(64).collect()))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A held message as the admin commands name it: `QUEUEID` (this relay's newest record
/// of that id) or, in a fleet-wide store, `RELAY:QUEUEID` (that relay's: queue ids
/// repeat across relays).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The relay named, if any.
    pub relay: Option<String>,
    /// The queue id.
    pub queue_id: QueueId,
}

impl Address {
    /// Parses `QUEUEID` or `RELAY:QUEUEID`.
    pub fn parse(s: &str) -> Result<Address, String> {
        let (relay, id) = match s.split_once(':') {
            Some((relay, id)) => {
                if !crate::config::fleet_store::valid_relay(relay) {
                    return Err(format!(
                        "{}: the relay before ':' is not a relay name",
                        crate::text::neutralize(s)
                    ));
                }
                (Some(relay.to_owned()), id)
            }
            None => (None, s),
        };
        let queue_id = QueueId::parse(id).map_err(|e| e.to_string())?;
        Ok(Address { relay, queue_id })
    }

    /// `queue_id` on `relay` (this relay when `None`).
    pub fn on(relay: Option<&str>, queue_id: QueueId) -> Address {
        Address {
            relay: relay.map(str::to_owned),
            queue_id,
        }
    }

    /// The address as one URL path segment: `RELAY:QUEUEID` or `QUEUEID` as they
    /// stand (relay names and queue ids are letters, digits, `.`, `-`, `_`), a relay
    /// name that is not one percent-encoded (it then names nothing when asked for).
    pub fn path_segment(&self) -> String {
        match &self.relay {
            Some(r) if !crate::config::fleet_store::valid_relay(r) => {
                url::form_urlencoded::byte_serialize(self.to_string().as_bytes()).collect()
            }
            _ => self.to_string(),
        }
    }
}

impl From<QueueId> for Address {
    fn from(queue_id: QueueId) -> Address {
        Address {
            relay: None,
            queue_id,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.relay {
            Some(relay) => write!(f, "{relay}:{}", self.queue_id),
            None => write!(f, "{}", self.queue_id),
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for QueueId {
    type Error = InvalidQueueId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        QueueId::parse(&s)
    }
}

impl From<QueueId> for String {
    fn from(q: QueueId) -> String {
        q.0
    }
}

/// A string that is not a Postfix queue id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a Postfix queue id (6 to 32 letters and digits)")]
pub struct InvalidQueueId(pub String);

/// Where a held message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In Postfix's hold queue, waiting for an admin.
    Held,
    /// Released for delivery.
    Released,
    /// Deleted from the queue.
    Discarded,
    /// Handled by the sweep after `expire_after`.
    Expired,
}

impl State {
    /// The name used in the store and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Held => "held",
            State::Released => "released",
            State::Discarded => "discarded",
            State::Expired => "expired",
        }
    }

    /// Every state.
    pub const ALL: [State; 4] = [
        State::Held,
        State::Released,
        State::Discarded,
        State::Expired,
    ];
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown state \"{s}\" (held, released, discarded, expired)"))
    }
}

/// One rule that fired, with its numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHit {
    /// Config key of the rule.
    pub rule: String,
    /// What it asked for.
    pub action: String,
    /// Its reason, e.g. "240 envelope recipients >= quarantine level 200".
    pub message: String,
}

/// One list the message reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListHit {
    /// The list address.
    pub address: String,
    /// Distinct mailboxes it reaches.
    pub size: u64,
    /// Of those, external.
    pub external: u64,
    /// The size last accepted, when it drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_from: Option<u64>,
}

/// The facts of a held message, as recorded when it was held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldMessage {
    /// Postfix queue id.
    pub queue_id: QueueId,
    /// When it was held (seconds since the epoch).
    pub held_at: u64,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// SASL login.
    pub sasl_login: Option<String>,
    /// Client address.
    pub client: Option<String>,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// Final mailboxes after expansion.
    pub audience: u64,
    /// Of those, external.
    pub external: u64,
    /// Largest lists first.
    pub lists: Vec<ListHit>,
    /// Recipient domains of the audience, largest first (at most 20).
    pub top_domains: Vec<(String, u64)>,
    /// To/Cc addresses in the headers.
    pub visible: Vec<String>,
    /// Subject header.
    pub subject: Option<String>,
    /// Message-ID header.
    pub message_id: Option<String>,
    /// Thread key (see `policy::thread_key`).
    pub thread_key: String,
    /// The rules that fired.
    pub rules: Vec<RuleHit>,
    /// Who recorded it: `milter`, or `reconcile` for a message found in the hold queue
    /// without a record.
    pub recorded_by: String,
    /// The message's header fields as the milter received them (name, value), capped
    /// at [`MAX_STORED_HEADER_BYTES`] in all: what the review desk shows, so that it
    /// never needs `postcat`. Empty for records written before they were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Held until the sender confirms or withdraws it (action `confirm`); an admin may
    /// still act.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
    /// The sender is told of the hold at once (see `policy::tell_sender`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notify_sender: bool,
    /// What a confirmation by the sender is remembered under (`policy::confirm_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_key: Option<String>,
}

/// `msg` as a store keeps it: the subject cut to [`MAX_SUBJECT_CHARS`] characters and the
/// headers to [`MAX_STORED_HEADER_BYTES`]; borrowed when nothing needed cutting.
pub fn capped(msg: &HeldMessage) -> Cow<'_, HeldMessage> {
    let subject = match msg
        .subject
        .as_deref()
        .map(|s| text::cap(s, MAX_SUBJECT_CHARS))
    {
        Some(Cow::Owned(subject)) => Some(subject),
        _ => None,
    };
    let headers = capped_headers(&msg.headers);
    if subject.is_none() && headers.is_none() {
        return Cow::Borrowed(msg);
    }
    Cow::Owned(HeldMessage {
        subject: subject.or_else(|| msg.subject.clone()),
        headers: headers.unwrap_or_else(|| msg.headers.clone()),
        ..msg.clone()
    })
}

/// How many bytes of header fields (names and values) a record keeps.
pub const MAX_STORED_HEADER_BYTES: usize = 32 * 1024;

/// `headers` cut to [`MAX_STORED_HEADER_BYTES`] of names and values in all: the fields
/// that fit, then as much of the next one's value as fits (on a character boundary);
/// `None` when nothing needed cutting.
pub fn capped_headers(headers: &[(String, String)]) -> Option<Vec<(String, String)>> {
    let total: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total <= MAX_STORED_HEADER_BYTES {
        return None;
    }
    let mut left = MAX_STORED_HEADER_BYTES;
    let mut kept = Vec::new();
    for (name, value) in headers {
        if name.len() >= left {
            break;
        }
        left -= name.len();
        if value.len() <= left {
            left -= value.len();
            kept.push((name.clone(), value.clone()));
            continue;
        }
        let mut cut = left;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        kept.push((name.clone(), value[..cut].to_owned()));
        break;
    }
    Some(kept)
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (seconds since the epoch).
    pub at: u64,
    /// Who: a login name, `milter` or `sweep`.
    pub who: String,
    /// What: `held`, `release`, `discard`, `notify-sender`, `escalate`, `reconcile` ...
    pub action: String,
    /// Free text.
    pub comment: Option<String>,
}

/// A stored quarantine record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Store row id.
    pub id: i64,
    /// The facts.
    pub message: HeldMessage,
    /// Current state.
    pub state: State,
    /// When the state last changed.
    pub state_at: u64,
    /// When the last escalation alert went out.
    pub escalated_at: Option<u64>,
    /// Held by another tool (a content filter, `header_checks HOLD`, an admin's
    /// `postsuper -h`), found in the hold queue by reconcile: the sweep never expires,
    /// releases or discards it, and admin commands act on it only with `--foreign`.
    #[serde(default)]
    pub foreign: bool,
    /// Held until at least this time (seconds since the epoch): a reviewer extended
    /// the hold, and the sweep expires it no earlier.
    #[serde(default)]
    pub hold_until: Option<u64>,
    /// The relay that holds it, with a fleet-wide store (`[quarantine] relay`); `None`
    /// in a relay's own SQLite store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
}

impl Record {
    /// Its address: its queue id on its relay (none in a relay's own store).
    pub fn address(&self) -> Address {
        Address::on(self.relay.as_deref(), self.message.queue_id.clone())
    }

    /// How long it has been held at `now`.
    pub fn held_for(&self, now: u64) -> Duration {
        Duration::from_secs(now.saturating_sub(self.message.held_at))
    }

    /// The first rule and its reason, for one-line listings.
    pub fn first_reason(&self) -> String {
        self.message
            .rules
            .first()
            .map(|r| format!("{}: {}", r.rule, r.message))
            .unwrap_or_else(|| "-".to_owned())
    }

    /// Every reason joined with "; ".
    pub fn reasons(&self) -> String {
        self.message.reasons()
    }
}

impl HeldMessage {
    /// Every reason joined with "; ".
    pub fn reasons(&self) -> String {
        let parts: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("{}: {}", r.rule, r.message))
            .collect();
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_named_by_its_queue_id_or_its_relay_and_queue_id() {
        let own = Address::parse("ABCDEF1").unwrap();
        assert_eq!((own.relay, own.queue_id.as_str()), (None, "ABCDEF1"));
        let theirs = Address::parse("relay-b.x_1:ABCDEF1").unwrap();
        assert_eq!(theirs.relay.as_deref(), Some("relay-b.x_1"));
        assert_eq!(theirs.to_string(), "relay-b.x_1:ABCDEF1");
        assert!(Address::parse(":ABCDEF1").is_err(), "an empty relay");
        assert!(Address::parse("relay b:ABCDEF1").is_err());
        assert!(Address::parse("relay-b:ABC:DEF1").is_err());
        assert!(Address::parse("relay-b:").is_err());
    }

    #[test]
    fn queue_ids_short_and_long_are_accepted_and_nothing_else() {
        for ok in ["3F1A2B4C5D", "4Xb1Kq0Q1bz2J9M", "ABCDEF"] {
            assert!(QueueId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ABC",
            "-d ALL",
            "ALL",
            "3F1A2B;rm",
            "../../etc",
            "3F1A2B4C5D\n",
            &"A".repeat(33),
        ] {
            assert!(QueueId::parse(bad).is_err(), "{bad:?}");
        }
        let e = QueueId::parse("-d").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"-d\" is not a Postfix queue id (6 to 32 letters and digits)"
        );
    }

    #[test]
    fn stored_headers_are_capped_on_a_character_boundary() {
        let small = vec![("Subject".to_owned(), "Hi".to_owned())];
        assert_eq!(capped_headers(&small), None);
        let name = "X-Long".to_owned();
        let exact = vec![(
            name.clone(),
            "a".repeat(MAX_STORED_HEADER_BYTES - name.len()),
        )];
        assert_eq!(
            capped_headers(&exact),
            None,
            "exactly the cap is kept whole"
        );
        let mut big = small.clone();
        big.push((name.clone(), "é".repeat(MAX_STORED_HEADER_BYTES)));
        big.push(("To".to_owned(), "x@example.org".to_owned()));
        let cut = capped_headers(&big).unwrap();
        assert_eq!(cut.len(), 2, "nothing after the field that was cut");
        assert_eq!(cut[0], small[0]);
        let bytes: usize = cut.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(bytes <= MAX_STORED_HEADER_BYTES, "{bytes}");
        assert!(bytes >= MAX_STORED_HEADER_BYTES - 1, "{bytes}");
        assert!(cut[1].1.chars().all(|c| c == 'é'));
    }

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
        }
        assert!("gone".parse::<State>().is_err());
    }
}
