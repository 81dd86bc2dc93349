// SPDX-License-Identifier: GPL-3.0-or-later
//! Signed one-click links of the admin digest: release or discard one held message from
//! the mail, without a desk login.
//!
//! A link is `{public_url}/link/{payload}.{mac}`. `payload` is the base64url (no
//! padding) of a small JSON object naming the queue id, the action, the admin the digest
//! was mailed to, the expiry and a random nonce; `mac` is the base64url HMAC-SHA256 of
//! the payload text with the desk key (`state_dir/desk.key`), under a label of its own,
//! so that no other value the desk signs with that key (form tokens) can pass for a
//! link. [`verify`] checks the MAC in constant time before it reads anything of the
//! payload, then the expiry; the desk spends the nonce in the quarantine store in the
//! transaction that files the request, so that a link acts at most once.

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

/// What a link's MAC covers before the payload: links and nothing else.
const LABEL: &[u8] = b"fanout-milter digest link v1\0";

/// What a link asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkAction {
    /// Release the message to every recipient.
    Release,
    /// Discard the message.
    Discard,
}

impl LinkAction {
    /// `release` or `discard`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Release => "release",
            LinkAction::Discard => "discard",
        }
    }

    /// Both actions, in the order a digest lists them.
    pub const ALL: [LinkAction; 2] = [LinkAction::Release, LinkAction::Discard];
}

/// The signed facts of one link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
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
    /// The admin address the digest carrying the link was mailed to.
    #[serde(rename = "to")]
    pub admin: String,
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

fn mac(key: &[u8; KEY_BYTES], payload: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(LABEL);
    mac.update(payload.as_bytes());
    mac
}

impl Link {
    /// A link for `queue_id` held at `held_at`, `action` and `admin`, valid until
    /// `expires`, with a fresh random nonce.
    pub fn new(
        queue_id: &str,
        held_at: u64,
        action: LinkAction,
        admin: &str,
        expires: u64,
    ) -> Result<Link, String> {
        let mut nonce = [0u8; NONCE_HEX / 2];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        Ok(Link {
            queue_id: queue_id.to_owned(),
            held_at,
            action,
            admin: admin.to_owned(),
            expires,
            nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// The signed token, `payload.mac`, URL-safe as it stands.
    pub fn token(&self, key: &[u8; KEY_BYTES]) -> String {
        let json = serde_json::to_vec(self).expect("a link serialises");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = mac(key, &payload).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }
}

/// The link `token` stands for, when its MAC matches under `key` (compared in constant
/// time) and it has not expired at `now` (seconds since the epoch).
pub fn verify(key: &[u8; KEY_BYTES], token: &str, now: u64) -> Result<Link, LinkError> {
    if token.len() > MAX_TOKEN {
        return Err(LinkError::Malformed);
    }
    let (payload, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| LinkError::Malformed)?;
    mac(key, payload)
        .verify_slice(&tag)
        .map_err(|_| LinkError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LinkError::Malformed)?;
    let link: Link = serde_json::from_slice(&json).map_err(|_| LinkError::Malformed)?;
    if link.nonce.len() != NONCE_HEX || !link.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
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
        assert_eq!(verify(&KEY, &token, NOW), Ok(l.clone()));
        assert_eq!(verify(&KEY, &token, NOW + 3599), Ok(l.clone()));
        let again = link(LinkAction::Release);
        assert_ne!(again.nonce, l.nonce, "random nonces");
        assert_eq!(again.nonce.len(), NONCE_HEX);
        assert_ne!(again.token(&KEY), token);
    }

    #[test]
    fn every_field_is_bound_by_the_mac() {
        let l = link(LinkAction::Release);
        let token = l.token(&KEY);
        let changes: [fn(&mut Link); 6] = [
            |l| l.queue_id = "5AbCdEf123".into(),
            |l| l.held_at -= 1,
            |l| l.action = LinkAction::Discard,
            |l| l.admin = "mallory@corp.example".into(),
            |l| l.expires += 86_400,
            |l| l.nonce = "0".repeat(NONCE_HEX),
        ];
        for change in changes {
            let mut changed = l.clone();
            change(&mut changed);
            assert_ne!(changed, l);
            assert_eq!(
                verify(&KEY, &with_payload_of(&token, &changed), NOW),
                Err(LinkError::BadSignature),
                "{changed:?}"
            );
        }
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(verify(&KEY, &String::from_utf8(flipped).unwrap(), NOW).is_err());
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
            verify(&KEY, &format!("{discard_payload}.{release_tag}"), NOW),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&KEY, &discard.token(&KEY), NOW).unwrap().action,
            LinkAction::Discard
        );
    }

    #[test]
    fn another_key_or_another_use_of_the_key_is_refused() {
        let l = link(LinkAction::Discard);
        assert_eq!(
            verify(&[8; KEY_BYTES], &l.token(&KEY), NOW),
            Err(LinkError::BadSignature)
        );
        // A MAC of the bare payload (without the label) is not a link's.
        let token = l.token(&KEY);
        let (payload, _) = token.split_once('.').unwrap();
        let mut bare = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).unwrap();
        bare.update(payload.as_bytes());
        let bare = URL_SAFE_NO_PAD.encode(bare.finalize().into_bytes());
        assert_eq!(
            verify(&KEY, &format!("{payload}.{bare}"), NOW),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn an_expired_link_is_refused_and_says_so() {
        let l = link(LinkAction::Release);
        let token = l.token(&KEY);
        assert_eq!(
            verify(&KEY, &token, l.expires),
            Err(LinkError::Expired(Box::new(l.clone())))
        );
        assert!(matches!(
            verify(&KEY, &token, l.expires + 1),
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
            let refused = verify(&KEY, bad, NOW);
            assert!(
                matches!(refused, Err(LinkError::Malformed | LinkError::BadSignature)),
                "{bad}: {refused:?}"
            );
        }
        assert_eq!(verify(&KEY, "nodot", NOW), Err(LinkError::Malformed));
        // Signed, but not a link's payload: refused after the MAC, as malformed.
        let payload = URL_SAFE_NO_PAD.encode(b"{\"q\":1}");
        let tag = URL_SAFE_NO_PAD.encode(mac(&KEY, &payload).finalize().into_bytes());
        assert_eq!(
            verify(&KEY, &format!("{payload}.{tag}"), NOW),
            Err(LinkError::Malformed)
        );
    }
}
