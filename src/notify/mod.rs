// SPDX-License-Identifier: GPL-3.0-or-later
//! Telling people what happened: admin alerts (one digest per interval, by mail and by
//! webhook) and plain notices to senders whose message was not sent.
//!
//! Composition here is pure; delivery lives in [`deliver`] and the daemon's batching
//! queue in [`queue`].

pub(crate) mod deliver;
pub mod notices;
pub mod pace;
pub(crate) mod queue;

pub use deliver::{
    DeliverError, DigestOutcome, deliver_digest, post_webhook, send_mail, send_smtp,
};
pub use queue::{AlertReceiver, AlertSender, channel, run_digests};

use crate::link::{self, Link, LinkAction};
use crate::text;
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MessageBuilder};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// Alerts listed one by one in a digest; the rest are counted.
pub const DIGEST_MAX_LISTED: usize = 200;

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// The milter held a message.
    Quarantined,
    /// A held message passed `review_within` without a decision.
    Escalation,
    /// A held message passed `expire_after` and got `on_expiry`.
    Expired,
    /// The sweep found a message in the hold queue that another tool held; it is
    /// recorded as foreign and left alone.
    Foreign,
    /// A reply-all storm tripped.
    Storm,
    /// The global breaker tripped.
    Breaker,
    /// The shared state (Redis) stopped answering.
    StateDown,
    /// The shared state answers again.
    StateBack,
    /// A directory source could not be refreshed and its snapshot is older than
    /// `max_staleness` (or there is none).
    DirectoryStale,
    /// A directory refresh lost more than `max_shrink` of its lists or members and
    /// waits for an admin's accept; the previous snapshot stays in force.
    DirectoryShrunk,
    /// A directory source's first snapshot was taken with no earlier one to compare
    /// it with: the shrink guard could not judge it.
    DirectoryBaseline,
}

impl AlertKind {
    /// Stable name used in JSON and mail (`quarantined`, `escalation`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Quarantined => "quarantined",
            AlertKind::Escalation => "escalation",
            AlertKind::Expired => "expired",
            AlertKind::Foreign => "foreign-hold",
            AlertKind::Storm => "storm",
            AlertKind::Breaker => "breaker",
            AlertKind::StateDown => "state-down",
            AlertKind::StateBack => "state-back",
            AlertKind::DirectoryStale => "directory-stale",
            AlertKind::DirectoryShrunk => "directory-shrunk",
            AlertKind::DirectoryBaseline => "directory-baseline",
        }
    }
}

/// One thing admins should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// What happened.
    pub kind: AlertKind,
    /// When.
    pub at: SystemTime,
    /// The Postfix queue id of the message concerned, if one.
    pub queue_id: Option<String>,
    /// Envelope sender concerned.
    pub sender: String,
    /// Subject concerned.
    pub subject: String,
    /// Real audience concerned.
    pub audience: u64,
    /// Why, in words (the rules that fired).
    pub reason: String,
    /// How long the message has been held, for escalations and expiries.
    pub held_for: Option<Duration>,
}

impl Alert {
    fn json(&self) -> Value {
        json!({
            "kind": self.kind.as_str(),
            "at": humantime::format_rfc3339_seconds(self.at).to_string(),
            "queue_id": self.queue_id.as_deref().map(text::neutralize),
            "sender": text::neutralize(&self.sender),
            "subject": subject(&self.subject),
            "audience": self.audience,
            "reason": text::neutralize(&self.reason),
            "held_for_secs": self.held_for.map(|d| d.as_secs()),
        })
    }
}

/// One mail of a digest: its recipients and the message (or why it could not be
/// composed).
pub type DigestMail = (Vec<String>, Result<Vec<u8>, ComposeError>);

/// How a digest links held messages to the review desk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeskLinks {
    /// `[review] public_url`, without a trailing `/`: each held message links to
    /// `{public_url}/message/{queue_id}` (`.../message/{relay}:{queue_id}` in a fleet).
    pub public_url: String,
    /// The relay whose holds the digest is about (its own: `[quarantine] relay`), with
    /// a fleet-wide store; the page links and the one-click links name it.
    pub relay: Option<String>,
    /// One-click release and discard links (`[review] digest_actions`).
    pub actions: Option<ActionLinks>,
}

impl DeskLinks {
    /// The desk page of the held message `queue_id` (a queue id: letters and digits).
    fn page(&self, queue_id: &str) -> String {
        match &self.relay {
            Some(relay) if crate::config::fleet_store::valid_relay(relay) => {
                format!("{}/message/{relay}:{queue_id}", self.public_url)
            }
            _ => format!("{}/message/{queue_id}", self.public_url),
        }
    }
}

/// What one-click links are signed with and how long they last.
#[derive(Clone, PartialEq, Eq)]
pub struct ActionLinks {
    /// The desk key (`state_dir/desk.key`).
    pub key: [u8; link::KEY_BYTES],
    /// When the links expire (seconds since the epoch).
    pub expires: u64,
}

impl std::fmt::Debug for ActionLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionLinks")
            .field("key", &"(secret)")
            .field("expires", &self.expires)
            .finish()
    }
}

/// A batch of alerts sent as one mail (one per admin with one-click links) and one
/// webhook post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The alerts, oldest first.
    pub alerts: Vec<Alert>,
    /// Alerts lost because the daemon's queue was full.
    pub dropped: u64,
    /// The host that raised them.
    pub host: String,
    /// Links to the review desk, when it is on and `public_url` is set.
    pub desk: Option<DeskLinks>,
}

/// The alerts that are about a message still held, so that the desk can act on it.
fn held_now(a: &Alert) -> Option<&str> {
    match (&a.queue_id, a.kind) {
        (Some(id), AlertKind::Quarantined | AlertKind::Escalation)
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Some(id)
        }
        _ => None,
    }
}

impl Digest {
    /// The webhook body. A held message's desk page is in `desk_url`; one-click links
    /// never are (they are bound to one admin's mail).
    pub fn json(&self) -> Value {
        let alerts: Vec<Value> = self
            .alerts
            .iter()
            .map(|a| {
                let mut v = a.json();
                if let (Some(desk), Some(id)) = (&self.desk, held_now(a)) {
                    v["desk_url"] = json!(desk.page(id));
                }
                v
            })
            .collect();
        json!({
            "source": crate::NAME,
            "host": self.host,
            "dropped": self.dropped,
            "alerts": alerts,
        })
    }

    /// Whether each admin gets a mail of their own (one-click links are bound to the
    /// admin they are mailed to).
    pub fn per_admin(&self) -> bool {
        self.desk.as_ref().is_some_and(|d| d.actions.is_some())
    }

    /// The lines linking a held message to the desk: its page and, for `admin`, the
    /// one-click links.
    fn desk_lines(&self, id: &str, held_at: u64, admin: Option<&str>, out: &mut String) {
        let Some(desk) = &self.desk else { return };
        out.push_str(&format!("  desk:     {}\n", desk.page(id)));
        let (Some(actions), Some(admin)) = (&desk.actions, admin) else {
            return;
        };
        for action in LinkAction::ALL {
            match Link::new(
                desk.relay.as_deref(),
                id,
                held_at,
                action,
                admin,
                actions.expires,
            ) {
                Ok(l) => out.push_str(&format!(
                    "  {:<9} {}/link/{}\n",
                    format!("{}:", action.as_str()),
                    desk.public_url,
                    l.token(&actions.key)
                )),
                Err(e) => {
                    out.push_str(&format!("  (no one-click {} link: {e})\n", action.as_str()))
                }
            }
        }
    }

    /// A one-line summary, also the mail's subject.
    pub fn summary(&self) -> String {
        let mut counts: Vec<(AlertKind, usize)> = Vec::new();
        for a in &self.alerts {
            match counts.iter_mut().find(|(k, _)| *k == a.kind) {
                Some((_, n)) => *n += 1,
                None => counts.push((a.kind, 1)),
            }
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(k, n)| format!("{n} {}", k.as_str()))
            .collect();
        format!("{}: {} on {}", crate::NAME, parts.join(", "), self.host)
    }

    /// The plain-text body of the digest mail, without one-click links.
    pub fn text(&self) -> String {
        self.text_for(None)
    }

    /// The plain-text body of the digest mail to `admin`: with one-click links for
    /// that admin when the digest has them.
    pub fn text_for(&self, admin: Option<&str>) -> String {
        let mut out = String::new();
        for a in self.alerts.iter().take(DIGEST_MAX_LISTED) {
            let at = humantime::format_rfc3339_seconds(a.at);
            let what = match a.kind {
                AlertKind::Quarantined => "held for review".to_owned(),
                AlertKind::Escalation => format!(
                    "still held without review after {}",
                    humantime::format_duration(a.held_for.unwrap_or_default())
                ),
                AlertKind::Expired => format!(
                    "expired unreviewed after {}",
                    humantime::format_duration(a.held_for.unwrap_or_default())
                ),
                AlertKind::Foreign => "found in the hold queue, held by another tool \
                                       (not by fanout-milter): left alone"
                    .to_owned(),
                AlertKind::Storm => "reply-all storm tripped".to_owned(),
                AlertKind::Breaker => "global breaker tripped".to_owned(),
                AlertKind::StateDown => "shared state unreachable".to_owned(),
                AlertKind::StateBack => "shared state reachable again".to_owned(),
                AlertKind::DirectoryStale => "directory snapshot too old".to_owned(),
                AlertKind::DirectoryShrunk => "directory refresh refused: it shrank".to_owned(),
                AlertKind::DirectoryBaseline => {
                    "first directory snapshot, not compared with any".to_owned()
                }
            };
            out.push_str(&format!("[{}] {at} {what}\n", a.kind.as_str()));
            if let Some(id) = &a.queue_id {
                out.push_str(&format!("  queue id: {}\n", text::neutralize(id)));
            }
            if !matches!(
                a.kind,
                AlertKind::StateDown
                    | AlertKind::StateBack
                    | AlertKind::DirectoryStale
                    | AlertKind::DirectoryShrunk
                    | AlertKind::DirectoryBaseline
            ) {
                out.push_str(&format!("  sender:   {}\n", text::neutralize(&a.sender)));
                out.push_str(&format!("  subject:  {}\n", subject(&a.subject)));
                out.push_str(&format!("  audience: {}\n", a.audience));
            }
            out.push_str(&format!("  why:      {}\n", text::neutralize(&a.reason)));
            if let (Some(id), AlertKind::Foreign) = (&a.queue_id, a.kind) {
                out.push_str(&format!(
                    "  decide:   {} quarantine release|discard --foreign {id}\n",
                    crate::NAME
                ));
            }
            if let (Some(id), AlertKind::Quarantined | AlertKind::Escalation) =
                (&a.queue_id, a.kind)
            {
                out.push_str(&format!(
                    "  review:   {} quarantine show {}\n",
                    crate::NAME,
                    text::neutralize(id)
                ));
            }
            if let Some(id) = held_now(a) {
                // A new hold's alert is stamped with its hold time; an escalation's
                // says how long it has been held.
                let held_at = crate::clock::epoch_secs(a.at)
                    .saturating_sub(a.held_for.map_or(0, |d| d.as_secs()));
                self.desk_lines(id, held_at, admin, &mut out);
            }
            out.push('\n');
        }
        if self.alerts.len() > DIGEST_MAX_LISTED {
            out.push_str(&format!(
                "... and {} more; see `{} quarantine list`.\n",
                self.alerts.len() - DIGEST_MAX_LISTED,
                crate::NAME
            ));
        }
        if self.dropped > 0 {
            out.push_str(&format!(
                "{} further alerts were dropped because the alert queue was full; \
                 `{} quarantine list` shows every held message.\n",
                self.dropped,
                crate::NAME
            ));
        }
        if let (Some(admin), Some(ActionLinks { expires, .. })) =
            (admin, self.desk.as_ref().and_then(|d| d.actions.as_ref()))
            && self.alerts.iter().any(|a| held_now(a).is_some())
        {
            out.push_str(&format!(
                "The release and discard links are yours alone ({}): each opens a page to \
                 confirm on, acts once, and expires at {}. Do not forward this mail.\n",
                text::neutralize(admin),
                text::utc_seconds(*expires)
            ));
        }
        out
    }

    /// The digest as a complete RFC 5322 message from `from` to `admins` (without
    /// one-click links).
    pub fn mail(&self, from: &str, admins: &[String]) -> Result<Vec<u8>, ComposeError> {
        self.compose(from, admins, None)
    }

    /// The digest's mails to `admins`, each with its recipients: one mail to all of
    /// them, or one each when the digest carries one-click links (each only its own).
    pub fn mails(&self, from: &str, admins: &[String]) -> Vec<DigestMail> {
        if self.per_admin() {
            admins
                .iter()
                .map(|a| {
                    let to = vec![a.clone()];
                    let mail = self.compose(from, &to, Some(a));
                    (to, mail)
                })
                .collect()
        } else {
            vec![(admins.to_vec(), self.mail(from, admins))]
        }
    }

    fn compose(
        &self,
        from: &str,
        admins: &[String],
        links_for: Option<&str>,
    ) -> Result<Vec<u8>, ComposeError> {
        let mut b = auto_message(from)?.subject(self.summary());
        for a in admins {
            b = b.to(mailbox(a)?);
        }
        Ok(b.header(ContentType::TEXT_PLAIN)
            .body(self.text_for(links_for))?
            .formatted())
    }
}

/// A notice could not be composed (an address that is not one).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// An address did not parse.
    #[error("\"{0}\" is not a usable mail address")]
    Address(String),
    /// The message could not be built.
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// `Auto-Submitted: auto-generated` (RFC 3834), so that vacation responders stay quiet.
#[derive(Clone)]
struct AutoSubmitted;

impl lettre::message::header::Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

fn auto_message(from: &str) -> Result<MessageBuilder, ComposeError> {
    Ok(Message::builder()
        .from(mailbox(from)?)
        .header(AutoSubmitted))
}

/// Parses an address; a bare local part (`postmaster`) is qualified with this host's
/// name, as Postfix would with `myorigin`.
fn mailbox(address: &str) -> Result<Mailbox, ComposeError> {
    let full = if address.contains('@') {
        address.to_owned()
    } else {
        format!("{address}@{}", hostname())
    };
    full.parse()
        .map_err(|_| ComposeError::Address(address.to_owned()))
}

/// A subject as notices, digests and webhooks show it: neutralised, at most
/// [`text::MAX_SUBJECT_CHARS`] characters.
fn subject(text: &str) -> String {
    text::neutralize_capped(text, text::MAX_SUBJECT_CHARS)
}

/// This host's name, for digests and notices.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: AlertKind, subject: &str) -> Alert {
        Alert {
            kind,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            queue_id: Some("4AbCdEf123".into()),
            sender: "ann@corp.example".into(),
            subject: subject.into(),
            audience: 840_000,
            reason: "limits.audience: 840000 >= 50000".into(),
            held_for: Some(Duration::from_secs(5 * 3600)),
        }
    }

    #[test]
    fn digest_json_names_kinds_and_times() {
        let d = Digest {
            alerts: vec![
                alert(AlertKind::Quarantined, "x"),
                alert(AlertKind::Escalation, "y"),
            ],
            dropped: 3,
            host: "relay1".into(),
            desk: None,
        };
        let v = d.json();
        assert_eq!(v["alerts"][0]["kind"], "quarantined");
        assert_eq!(v["alerts"][1]["kind"], "escalation");
        assert_eq!(v["alerts"][0]["at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["alerts"][0]["queue_id"], "4AbCdEf123");
        assert_eq!(v["alerts"][1]["held_for_secs"], 18000);
        assert_eq!(v["dropped"], 3);
        assert_eq!(
            d.summary(),
            "fanout-milter: 1 quarantined, 1 escalation on relay1"
        );
    }

    #[test]
    fn digest_mail_cannot_be_split_by_a_hostile_subject() {
        let d = Digest {
            alerts: vec![alert(
                AlertKind::Quarantined,
                "hi\r\nBcc: everyone@corp.example\r\n\r\nbody",
            )],
            dropped: 0,
            host: "relay1".into(),
            desk: None,
        };
        let mail = String::from_utf8(
            d.mail("postmaster@corp.example", &["admins@corp.example".into()])
                .unwrap(),
        )
        .unwrap();
        let (headers, body) = mail.split_once("\r\n\r\n").expect("headers and body");
        assert!(!headers.to_lowercase().contains("bcc:"), "{headers}");
        assert!(
            headers.contains("Auto-Submitted: auto-generated"),
            "{headers}"
        );
        assert!(headers.contains("To: admins@corp.example"), "{headers}");
        assert!(
            body.contains("fanout-milter quarantine show 4AbCdEf123"),
            "{body}"
        );
        assert!(
            body.contains("hi\\x0D\\x0ABcc: everyone@corp.example"),
            "{body}"
        );
    }

    #[test]
    fn digests_and_webhooks_show_controls_and_bidi_as_escapes() {
        let mut a = alert(AlertKind::Quarantined, "\u{1b}]0;pwned\u{7}\u{1b}[2J");
        a.sender = "ann\u{202e}gpj.exe@corp.example".into();
        a.reason = format!("list x\r\nBcc: y; {}", "{reason}".repeat(300));
        a.subject.push_str(&"s".repeat(1000));
        let d = Digest {
            alerts: vec![a],
            dropped: 0,
            host: "relay1".into(),
            desk: None,
        };
        let text = d.text();
        let json = d.json();
        let field = |name: &str| json["alerts"][0][name].as_str().unwrap().to_owned();
        for out in [&text, &field("subject"), &field("sender"), &field("reason")] {
            assert!(
                !out.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
                "{out}"
            );
        }
        for out in [&text, &field("subject")] {
            assert!(out.contains("\\x1B]0;pwned\\x07"), "{out}");
        }
        for out in [&text, &field("sender")] {
            assert!(out.contains("ann\\u{202E}gpj.exe"), "{out}");
        }
        assert!(
            text.contains("  why:      list x\\x0D\\x0ABcc: y"),
            "{text}"
        );
        let subject = d.json()["alerts"][0]["subject"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(subject.chars().count(), crate::text::MAX_SUBJECT_CHARS);
    }

    const KEY: [u8; link::KEY_BYTES] = [9; link::KEY_BYTES];

    fn desk(actions: bool) -> Option<DeskLinks> {
        Some(DeskLinks {
            public_url: "https://review.corp.example/desk".into(),
            relay: None,
            actions: actions.then_some(ActionLinks {
                key: KEY,
                expires: 1_700_086_400,
            }),
        })
    }

    /// The one-click link tokens in `text`, with their action.
    fn tokens(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| {
                let (label, url) = l.trim().split_once(' ')?;
                let token = url
                    .trim()
                    .strip_prefix("https://review.corp.example/desk/link/")?;
                Some((label.trim_end_matches(':').to_owned(), token.to_owned()))
            })
            .collect()
    }

    #[test]
    fn held_messages_link_to_their_desk_page_only_when_the_desk_has_a_public_url() {
        let mut d = Digest {
            alerts: vec![
                alert(AlertKind::Quarantined, "x"),
                alert(AlertKind::Escalation, "y"),
                alert(AlertKind::Expired, "z"),
            ],
            dropped: 0,
            host: "relay1".into(),
            desk: None,
        };
        let text = d.text();
        assert!(!text.contains("/message/"), "{text}");
        assert!(d.json()["alerts"][0].get("desk_url").is_none());
        d.desk = desk(false);
        let text = d.text();
        assert_eq!(
            text.matches("  desk:     https://review.corp.example/desk/message/4AbCdEf123\n")
                .count(),
            2,
            "the held and the escalated message, not the expired one: {text}"
        );
        assert_eq!(
            text.matches("fanout-milter quarantine show 4AbCdEf123")
                .count(),
            2,
            "the CLI hint stays: {text}"
        );
        assert!(tokens(&d.text_for(Some("admin@corp.example"))).is_empty());
        assert!(!d.per_admin());
        assert_eq!(
            d.json()["alerts"][1]["desk_url"],
            "https://review.corp.example/desk/message/4AbCdEf123"
        );
        assert!(d.json()["alerts"][2].get("desk_url").is_none());
        // A queue id that could not be one is never put in a URL.
        d.alerts[0].queue_id = Some("../x?y".into());
        assert!(!d.text().contains("../x?y\n  desk"), "{}", d.text());
    }

    #[test]
    fn a_fleet_relays_digest_links_name_its_relay() {
        let mut links = desk(true).unwrap();
        links.relay = Some("relay-a".into());
        let d = Digest {
            alerts: vec![alert(AlertKind::Quarantined, "x")],
            dropped: 0,
            host: "relay1".into(),
            desk: Some(links),
        };
        let text = d.text_for(Some("ann@corp.example"));
        assert!(
            text.contains(
                "  desk:     https://review.corp.example/desk/message/relay-a:4AbCdEf123\n"
            ),
            "{text}"
        );
        assert_eq!(
            d.json()["alerts"][0]["desk_url"],
            "https://review.corp.example/desk/message/relay-a:4AbCdEf123"
        );
        let found = tokens(&text);
        assert_eq!(found.len(), 2, "{text}");
        for (_, token) in &found {
            let l = link::verify(&KEY, link::Audience::Admin, token, 1_700_000_000).expect("valid");
            assert_eq!(
                (l.relay.as_deref(), l.queue_id.as_str()),
                (Some("relay-a"), "4AbCdEf123")
            );
        }
    }

    #[test]
    fn one_click_links_are_signed_for_each_admin_and_only_with_digest_actions() {
        let d = Digest {
            alerts: vec![
                alert(AlertKind::Quarantined, "x"),
                alert(AlertKind::Storm, "s"),
            ],
            dropped: 0,
            host: "relay1".into(),
            desk: desk(true),
        };
        assert!(d.per_admin());
        assert!(tokens(&d.text()).is_empty(), "no admin, no links");
        let text = d.text_for(Some("ann@corp.example"));
        let found = tokens(&text);
        assert_eq!(
            found.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
            ["release", "discard"],
            "{text}"
        );
        for (action, token) in &found {
            let l = link::verify(&KEY, link::Audience::Admin, token, 1_700_000_000).expect("valid");
            assert_eq!(l.queue_id, "4AbCdEf123");
            assert_eq!(l.relay, None, "a relay's own store names no relay");
            assert_eq!(l.action.as_str(), action);
            assert_eq!(l.to, "ann@corp.example");
            assert_eq!(l.expires, 1_700_086_400);
        }
        assert!(text.contains("yours alone (ann@corp.example)"), "{text}");
        assert!(text.contains("expires at 2023-11-15T22:13:20Z"), "{text}");

        let admins = vec!["ann@corp.example".to_owned(), "bob@corp.example".to_owned()];
        let mails = d.mails("postmaster@corp.example", &admins);
        assert_eq!(mails.len(), 2, "one mail per admin");
        for ((to, mail), admin) in mails.iter().zip(&admins) {
            assert_eq!(to, &vec![admin.clone()]);
            let mail = String::from_utf8(mail.as_ref().unwrap().clone()).unwrap();
            let (headers, body) = mail.split_once("\r\n\r\n").unwrap();
            assert!(headers.contains(&format!("To: {admin}")), "{headers}");
            // Quoted-printable: soft line breaks and `=` as `=3D`.
            let body = body
                .replace("=\r\n", "")
                .replace("=3D", "=")
                .replace("\r\n", "\n");
            let found = tokens(&body);
            assert_eq!(found.len(), 2, "{body}");
            for (_, token) in found {
                assert_eq!(
                    &link::verify(&KEY, link::Audience::Admin, &token, 1_700_000_000)
                        .unwrap()
                        .to,
                    admin,
                    "each mail carries only its admin's links"
                );
            }
        }
        let plain = Digest {
            desk: desk(false),
            ..d.clone()
        };
        let mails = plain.mails("postmaster@corp.example", &admins);
        assert_eq!(mails.len(), 1, "without one-click links, one mail to all");
        assert_eq!(mails[0].0, admins);
    }

    #[test]
    fn long_digests_list_the_first_and_count_the_rest() {
        let d = Digest {
            alerts: (0..DIGEST_MAX_LISTED + 5)
                .map(|i| alert(AlertKind::Quarantined, &format!("m{i}")))
                .collect(),
            dropped: 7,
            host: "relay1".into(),
            desk: None,
        };
        let text = d.text();
        assert!(text.contains("... and 5 more"), "{text}");
        assert!(text.contains("7 further alerts were dropped"), "{text}");
        assert!(!text.contains("m200"));
    }
}
