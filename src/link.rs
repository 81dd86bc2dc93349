// SPDX-License-Identifier: GPL-3.0-or-later
//! Signed links mailed about one held message: the admin digest's release and discard
//! links, and the withdraw, ask-for-release and send links of a notice to the sender.
//!
//! A link is `{public_url}/link/{payload}.{mac}` (admins) or `{public_url}/s/{...}`
//! (senders). `payload` is the base64url (no padding) of a small JSON object naming
//! the relay that holds the message (`r`, with a fleet-wide quarantine store only), the
//! queue id, the time it was held, the action, the address the link was mailed to, the
//! expiry and a random nonce; `mac` is the base64url HMAC-SHA256 of the payload text
//! with the desk key (`state_dir/desk.key`), under a label of its own for each
//! [`Audience`], so that no other value the desk signs with that key (form tokens, the
//! other audience's links) can pass for one. [`verify`] checks the MAC in constant time
//! before it reads anything of the payload, then that the action is one of that
//! audience, then the expiry; the desk spends the nonce in the quarantine store in the
//! transaction that acts, so that a link acts at most once.
//!
//! The relay is signed with the rest, so a link acts on the record of the relay it was
//! signed for wherever it is opened. A link without one (a relay's own SQLite store,
//! or mailed before links named their relay) names the record of the relay that
//! verifies it: by default each relay has its own desk key, and only the relay that
//! signed a link verifies it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Bytes of the key links are signed with (the desk key).
pub const KEY_BYTES: usize = 32;

/// The desk key's file in the state directory (created by the daemon, 0600).
pub const KEY_FILE: &str = "desk.key";

/// The key in the bytes of a key file: exactly [`KEY_BYTES`] of them.
pub fn key_from(bytes: &[u8]) -> Option<[u8; KEY_BYTES]> {
    bytes.try_into().ok()
}

/// The longest link token [`verify`] looks at.
pub const MAX_TOKEN: usize = 2048;

/// Hex digits of a link's nonce (128 random bits).
pub const NONCE_HEX: usize = 32;

/// Whom a link was mailed to: what its MAC covers before the payload, so that a link of
/// one audience never passes for the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// An admin, in a digest.
    Admin,
    /// The sender of the held message, in a notice.
    Sender,
}

impl Audience {
    fn label(self) -> &'static [u8] {
        match self {
            Audience::Admin => b"fanout-milter digest link v1\0",
            Audience::Sender => b"fanout-milter sender link v1\0",
        }
    }
}

/// What a link asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkAction {
    /// Release the message to every recipient (an admin).
    Release,
    /// Discard the message (an admin).
    Discard,
    /// The sender takes the message back: discarded at once.
    Withdraw,
    /// The sender asks the admins to release it, saying why.
    Ask,
    /// The sender confirms a message held for confirmation: send it to all.
    Send,
}

impl LinkAction {
    /// The action's name in pages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Release => "release",
            LinkAction::Discard => "discard",
            LinkAction::Withdraw => "withdraw",
            LinkAction::Ask => "ask",
            LinkAction::Send => "send",
        }
    }

    /// Whom links with this action are mailed to.
    pub fn audience(self) -> Audience {
        match self {
            LinkAction::Release | LinkAction::Discard => Audience::Admin,
            LinkAction::Withdraw | LinkAction::Ask | LinkAction::Send => Audience::Sender,
        }
    }

    /// The admin digest's actions, in the order a digest lists them.
    pub const ALL: [LinkAction; 2] = [LinkAction::Release, LinkAction::Discard];
}

/// The signed facts of one link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The relay that holds the message, with a fleet-wide store (a relay name, see
    /// [`crate::config::fleet_store::valid_relay`]); `None`: the relay that verifies
    /// the link.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The held message's queue id.
    #[serde(rename = "q")]
    pub queue_id: String,
    /// When that message was held (seconds since the epoch): Postfix reuses short
    /// queue ids, and a link acts only on the hold it was mailed for.
    #[serde(rename = "h")]
    pub held_at: u64,
    /// What to do with it.
    #[serde(rename = "a")]
    pub action: LinkAction,
    /// The address the mail carrying the link went to: the admin of a digest, the
    /// sender of a notice.
    #[serde(rename = "to")]
    pub to: String,
    /// Seconds since the epoch after which the link is refused.
    #[serde(rename = "exp")]
    pub expires: u64,
    /// A random value, spent when the link is used.
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Why a link token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a link token at all (no MAC, not base64url, too long).
    #[error("this is not a valid link")]
    Malformed,
    /// The MAC does not match: the link was changed, or signed with another key.
    #[error("this link's signature does not match: it was changed or is from another relay")]
    BadSignature,
    /// A genuine link whose time has passed.
    #[error("this link expired")]
    Expired(Box<Link>),
}

fn mac(key: &[u8; KEY_BYTES], audience: Audience, payload: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(audience.label());
    mac.update(payload.as_bytes());
    mac
}

impl Link {
    /// A link for `queue_id` held on `relay` (a fleet-wide store; `None` in a relay's
    /// own) at `held_at`, `action`, mailed `to`, valid until `expires`, with a fresh
    /// random nonce.
    pub fn new(
        relay: Option<&str>,
        queue_id: &str,
        held_at: u64,
        action: LinkAction,
        to: &str,
        expires: u64,
    ) -> Result<Link, String> {
        let mut nonce = [0u8; NONCE_HEX / 2];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        Ok(Link {
            relay: relay.map(str::to_owned),
            queue_id: queue_id.to_owned(),
            held_at,
            action,
            to: to.to_owned(),
            expires,
            nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// The signed token, `payload.mac`, URL-safe as it stands.
    pub fn token(&self, key: &[u8; KEY_BYTES]) -> String {
        let json = serde_json::to_vec(self).expect("a link serialises");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = mac(key, self.action.audience(), &payload)
            .finalize()
            .into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }
}

/// The address of a sender link's page on the desk at `public_url` (`[review]
/// public_url`, with or without a trailing slash): `{public_url}/s/{token}`.
pub fn sender_link_url(public_url: &str, token: &str) -> String {
    format!("{}/s/{token}", public_url.trim_end_matches('/'))
}

/// The link `token` stands for, when its MAC matches under `key` for `audience`
/// (compared in constant time), its action is one of that audience's, the relay it
/// names (if any) is a relay name, and it has not expired at `now` (seconds since the
/// epoch).
pub fn verify(
    key: &[u8; KEY_BYTES],
    audience: Audience,
    token: &str,
    now: u64,
) -> Result<Link, LinkError> {
    if token.len() > MAX_TOKEN {
        return Err(LinkError::Malformed);
    }
    let (payload, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| LinkError::Malformed)?;
    mac(key, audience, payload)
        .verify_slice(&tag)
        .map_err(|_| LinkError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LinkError::Malformed)?;
    let link: Link = serde_json::from_slice(&json).map_err(|_| LinkError::Malformed)?;
    if link.nonce.len() != NONCE_HEX
        || !link.nonce.bytes().all(|b| b.is_ascii_hexdigit())
        || link.action.audience() != audience
        || link
            .relay
            .as_deref()
            .is_some_and(|r| !crate::config::fleet_store::valid_relay(r))
    {
        return Err(LinkError::Malformed);
    }
    if now >= link.expires {
        return Err(LinkError::Expired(Box::new(link)));
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_BYTES] = [7; KEY_BYTES];
    const NOW: u64 = 1_800_000_000;

    fn link(action: LinkAction) -> Link {
        Link::new(
            None,
            "4AbCdEf123",
            NOW - 60,
            action,
            "admin@corp.example",
            NOW + 3600,
        )
        .unwrap()
    }

    /// `token` with its payload replaced by `changed`'s, the MAC kept.
    fn with_payload_of(token: &str, changed: &Link) -> String {
        let (_, tag) = token.split_once('.').unwrap();
        let json = serde_json::to_vec(changed).unwrap();
        format!("{}.{tag}", URL_SAFE_NO_PAD.encode(json))
    }

    /// `token`'s MAC on `changed`'s payload, verified as an admin's link.
    fn forged(token: &str, changed: &Link) -> Result<Link, LinkError> {
        verify(&KEY, Audience::Admin, &with_payload_of(token, changed), NOW)
    }

    #[test]
    fn a_link_round_trips_url_safe_with_a_fresh_nonce() {
        let l = link(LinkAction::Release);
        let token = l.token(&KEY);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{token}"
        );
        assert_eq!(verify(&KEY, Audience::Admin, &token, NOW), Ok(l.clone()));
        assert_eq!(
            verify(&KEY, Audience::Admin, &token, NOW + 3599),
            Ok(l.clone())
        );
        let again = link(LinkAction::Release);
        assert_ne!(again.nonce, l.nonce, "random nonces");
        assert_eq!(again.nonce.len(), NONCE_HEX);
        assert_ne!(again.token(&KEY), token);
    }

    #[test]
    fn every_field_is_bound_by_the_mac() {
        let l = link(LinkAction::Release);
        let token = l.token(&KEY);
        let changes: [fn(&mut Link); 7] = [
            |l| l.relay = Some("relay-a".into()),
            |l| l.queue_id = "5AbCdEf123".into(),
            |l| l.held_at -= 1,
            |l| l.action = LinkAction::Discard,
            |l| l.to = "mallory@corp.example".into(),
            |l| l.expires += 86_400,
            |l| l.nonce = "0".repeat(NONCE_HEX),
        ];
        for change in changes {
            let mut changed = l.clone();
            change(&mut changed);
            assert_ne!(changed, l);
            assert_eq!(
                forged(&token, &changed),
                Err(LinkError::BadSignature),
                "{changed:?}"
            );
        }
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            verify(
                &KEY,
                Audience::Admin,
                &String::from_utf8(flipped).unwrap(),
                NOW
            )
            .is_err()
        );
    }

    /// A link as a relay of a fleet-wide store signs it.
    fn fleet_link(relay: &str) -> Link {
        Link::new(
            Some(relay),
            "4AbCdEf123",
            NOW - 60,
            LinkAction::Release,
            "admin@corp.example",
            NOW + 3600,
        )
        .unwrap()
    }

    /// `link` signed as it stands, whatever its fields.
    fn signed(link: &Link) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(link).unwrap());
        let tag = mac(&KEY, link.action.audience(), &payload)
            .finalize()
            .into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    #[test]
    fn a_fleet_link_carries_its_relay_and_a_relay_less_one_still_verifies() {
        let l = fleet_link("relay-a");
        let token = l.token(&KEY);
        let verified = verify(&KEY, Audience::Admin, &token, NOW).unwrap();
        assert_eq!(verified.relay.as_deref(), Some("relay-a"));
        assert_eq!(verified, l);
        // A link of a relay's own store (or one mailed before links named their relay)
        // has no relay in its payload, and verifies as naming none.
        let local = link(LinkAction::Release);
        let token = local.token(&KEY);
        let (payload, _) = token.split_once('.').unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            json.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["a", "exp", "h", "n", "q", "to"],
            "the payload of a link without a relay is as before"
        );
        let legacy = format!(
            r#"{{"q":"4AbCdEf123","h":{},"a":"release","to":"admin@corp.example","exp":{},"n":"{}"}}"#,
            NOW - 60,
            NOW + 3600,
            local.nonce
        );
        let payload = URL_SAFE_NO_PAD.encode(legacy.as_bytes());
        let tag = mac(&KEY, Audience::Admin, &payload).finalize().into_bytes();
        let legacy = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag));
        assert_eq!(verify(&KEY, Audience::Admin, &legacy, NOW), Ok(local));
    }

    #[test]
    fn the_relay_is_bound_by_the_mac() {
        let l = fleet_link("relay-a");
        let token = l.token(&KEY);
        for relay in [Some("relay-b"), None, Some("relay-a.")] {
            let mut changed = l.clone();
            changed.relay = relay.map(str::to_owned);
            assert_eq!(
                forged(&token, &changed),
                Err(LinkError::BadSignature),
                "{relay:?}"
            );
        }
        // A relay added to a link that named none does not pass either.
        let local = link(LinkAction::Release);
        let mut named = local.clone();
        named.relay = Some("relay-b".into());
        assert_eq!(
            verify(
                &KEY,
                Audience::Admin,
                &with_payload_of(&local.token(&KEY), &named),
                NOW
            ),
            Err(LinkError::BadSignature)
        );
        // Signed, but naming something that is no relay name: refused.
        for bad in ["", "relay a", "../relay", "r\u{202e}x", &"r".repeat(65)] {
            let mut odd = l.clone();
            odd.relay = Some(bad.to_owned());
            assert_eq!(
                verify(&KEY, Audience::Admin, &signed(&odd), NOW),
                Err(LinkError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(verify(&KEY, Audience::Admin, &signed(&l), NOW), Ok(l));
    }

    #[test]
    fn a_release_link_is_no_discard_link() {
        let release = link(LinkAction::Release);
        let mut discard = release.clone();
        discard.action = LinkAction::Discard;
        let (_, release_tag) = release
            .token(&KEY)
            .split_once('.')
            .map(|(p, t)| (p.to_owned(), t.to_owned()))
            .unwrap();
        let (discard_payload, _) = discard
            .token(&KEY)
            .split_once('.')
            .map(|(p, t)| (p.to_owned(), t.to_owned()))
            .unwrap();
        assert_eq!(
            verify(
                &KEY,
                Audience::Admin,
                &format!("{discard_payload}.{release_tag}"),
                NOW
            ),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&KEY, Audience::Admin, &discard.token(&KEY), NOW)
                .unwrap()
                .action,
            LinkAction::Discard
        );
    }

    #[test]
    fn another_key_or_another_use_of_the_key_is_refused() {
        let l = link(LinkAction::Discard);
        assert_eq!(
            verify(&[8; KEY_BYTES], Audience::Admin, &l.token(&KEY), NOW),
            Err(LinkError::BadSignature)
        );
        // A MAC of the bare payload (without the label) is not a link's.
        let token = l.token(&KEY);
        let (payload, _) = token.split_once('.').unwrap();
        let mut bare = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).unwrap();
        bare.update(payload.as_bytes());
        let bare = URL_SAFE_NO_PAD.encode(bare.finalize().into_bytes());
        assert_eq!(
            verify(&KEY, Audience::Admin, &format!("{payload}.{bare}"), NOW),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn a_sender_link_is_no_admin_link_and_the_other_way_round() {
        let send = Link::new(
            None,
            "4AbCdEf123",
            NOW - 60,
            LinkAction::Send,
            "ann@x.org",
            NOW + 60,
        )
        .unwrap();
        let token = send.token(&KEY);
        assert_eq!(
            verify(&KEY, Audience::Sender, &token, NOW),
            Ok(send.clone())
        );
        assert_eq!(
            verify(&KEY, Audience::Admin, &token, NOW),
            Err(LinkError::BadSignature)
        );
        let release = link(LinkAction::Release).token(&KEY);
        assert_eq!(
            verify(&KEY, Audience::Sender, &release, NOW),
            Err(LinkError::BadSignature)
        );
        // Signed under the sender label but naming an admin action: refused.
        let mut forged = send.clone();
        forged.action = LinkAction::Release;
        let json = serde_json::to_vec(&forged).unwrap();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = mac(&KEY, Audience::Sender, &payload)
            .finalize()
            .into_bytes();
        let token = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag));
        assert_eq!(
            verify(&KEY, Audience::Sender, &token, NOW),
            Err(LinkError::Malformed)
        );
        for (action, name) in [
            (LinkAction::Withdraw, "withdraw"),
            (LinkAction::Ask, "ask"),
            (LinkAction::Send, "send"),
        ] {
            assert_eq!(action.as_str(), name);
            assert_eq!(action.audience(), Audience::Sender);
        }
    }

    #[test]
    fn a_sender_link_url_is_under_s_of_the_public_url() {
        for base in [
            "https://review.corp.example/desk",
            "https://review.corp.example/desk/",
        ] {
            assert_eq!(
                sender_link_url(base, "abc.def"),
                "https://review.corp.example/desk/s/abc.def"
            );
        }
    }

    #[test]
    fn an_expired_link_is_refused_and_says_so() {
        let l = link(LinkAction::Release);
        let token = l.token(&KEY);
        assert_eq!(
            verify(&KEY, Audience::Admin, &token, l.expires),
            Err(LinkError::Expired(Box::new(l.clone())))
        );
        assert!(matches!(
            verify(&KEY, Audience::Admin, &token, l.expires + 1),
            Err(LinkError::Expired(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let token = link(LinkAction::Release).token(&KEY);
        let (payload, _) = token.split_once('.').unwrap();
        for bad in [
            "",
            "nodot",
            &format!("{payload}."),
            &format!("{payload}.!!!"),
            &format!("{}.{}", payload, "A".repeat(MAX_TOKEN)),
        ] {
            let refused = verify(&KEY, Audience::Admin, bad, NOW);
            assert!(
                matches!(refused, Err(LinkError::Malformed | LinkError::BadSignature)),
                "{bad}: {refused:?}"
            );
        }
        assert_eq!(
            verify(&KEY, Audience::Admin, "nodot", NOW),
            Err(LinkError::Malformed)
        );
        // Signed, but not a link's payload: refused after the MAC, as malformed.
        let payload = URL_SAFE_NO_PAD.encode(b"{\"q\":1}");
        let tag =
            URL_SAFE_NO_PAD.encode(mac(&KEY, Audience::Admin, &payload).finalize().into_bytes());
        assert_eq!(
            verify(&KEY, Audience::Admin, &format!("{payload}.{tag}"), NOW),
            Err(LinkError::Malformed)
        );
    }
}
