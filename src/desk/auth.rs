// SPDX-License-Identifier: GPL-3.0-or-later
//! Who is asking: sessions after a login (random ids, idle and absolute expiry), the
//! limit on failed logins, the per-session form token, and the desk key.
//!
//! Times are seconds since the epoch from the desk's clock, so tests move them without
//! sleeping.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Failed logins allowed per user and per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The window of [`MAX_FAILURES`].
pub const FAILURE_WINDOW: u64 = 60;
/// At most this many live sessions; the least recently used goes first beyond it.
const MAX_SESSIONS: usize = 10_000;
/// At most this many users and addresses are remembered by the failure limiter.
const MAX_LIMITED: usize = 10_000;
/// Bytes of the desk key.
pub const KEY_BYTES: usize = 32;

use crate::token::hex;
pub use crate::token::{random_id, same_secret};

/// HMAC-SHA256 of `parts` (each length-prefixed) with `key`, as hex.
pub fn sign(key: &[u8; KEY_BYTES], parts: &[&str]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p.as_bytes());
    }
    hex(&mac.finalize().into_bytes())
}

/// The desk key in `state_dir/desk.key`: read, or created (32 random bytes, mode
/// 0600) when missing. Never through a link.
pub fn load_or_create_key(path: &Path) -> std::io::Result<[u8; KEY_BYTES]> {
    match crate::state_dir::open_nofollow(path) {
        Ok(mut file) => {
            let mode = file.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} may be read by group or others (mode {:04o}); chmod 600 it",
                    path.display(),
                    mode & 0o7777
                )));
            }
            let mut key = [0u8; KEY_BYTES];
            file.read_exact(&mut key).map_err(|e| {
                std::io::Error::other(format!("{}: not a desk key: {e}", path.display()))
            })?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; KEY_BYTES];
            getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(path)?;
            file.write_all(&key)?;
            file.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// One signed-in browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The login name (its role is looked up in the users file at every request).
    pub user: String,
    /// When the user logged in.
    pub created: u64,
    /// The last request.
    pub last_seen: u64,
}

/// The live sessions, by id.
pub struct Sessions {
    idle: u64,
    lifetime: u64,
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Sessions that end after `idle` without a request or `lifetime` after the login.
    pub fn new(idle: Duration, lifetime: Duration) -> Sessions {
        Sessions {
            idle: idle.as_secs().max(1),
            lifetime: lifetime.as_secs().max(1),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session for `user` at `now`; its id.
    pub fn start(&self, user: &str, now: u64) -> Result<String, String> {
        let id = random_id()?;
        let mut live = self.live.lock().expect("sessions lock");
        live.retain(|_, s| self.alive(s, now));
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            live.remove(&oldest);
        }
        live.insert(
            id.clone(),
            Session {
                user: user.to_owned(),
                created: now,
                last_seen: now,
            },
        );
        Ok(id)
    }

    fn alive(&self, s: &Session, now: u64) -> bool {
        now.saturating_sub(s.last_seen) < self.idle && now.saturating_sub(s.created) < self.lifetime
    }

    /// The session with this id when it is still alive at `now` (it is then touched);
    /// an expired one is dropped.
    pub fn touch(&self, id: &str, now: u64) -> Option<Session> {
        let mut live = self.live.lock().expect("sessions lock");
        let alive = live.get(id).is_some_and(|s| self.alive(s, now));
        if !alive {
            live.remove(id);
            return None;
        }
        let s = live.get_mut(id)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        self.live.lock().expect("sessions lock").remove(id);
    }
}

/// Failed logins per key (a user name, a client address) within the window.
pub struct Limiter {
    failures: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl Limiter {
    /// Seconds until `keys` may try again at `now`, when any of them failed
    /// [`MAX_FAILURES`] times within the window.
    pub fn blocked(&self, keys: &[&str], now: u64) -> Option<u64> {
        let mut failures = self.failures.lock().expect("limiter lock");
        keys.iter()
            .filter_map(|k| {
                let times = failures.get_mut(*k)?;
                times.retain(|t| now.saturating_sub(*t) < FAILURE_WINDOW);
                (times.len() >= MAX_FAILURES).then(|| FAILURE_WINDOW - now.saturating_sub(times[0]))
            })
            .max()
    }

    /// Counts a failed login for each of `keys` at `now`.
    pub fn failed(&self, keys: &[&str], now: u64) {
        let mut failures = self.failures.lock().expect("limiter lock");
        if failures.len() >= MAX_LIMITED {
            failures.retain(|_, t| {
                t.back()
                    .is_some_and(|t| now.saturating_sub(*t) < FAILURE_WINDOW)
            });
        }
        for k in keys {
            let times = failures.entry((*k).to_owned()).or_default();
            times.push_back(now);
            while times.len() > MAX_FAILURES {
                times.pop_front();
            }
        }
    }

    /// Forgets the failures of `key` (after a successful login).
    pub fn clear(&self, key: &str) {
        self.failures.lock().expect("limiter lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_or_old() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(300));
        let id = s.start("alice", 1000).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, s.start("alice", 1000).unwrap(), "random ids");
        assert_eq!(s.touch(&id, 1059).unwrap().user, "alice");
        assert!(s.touch(&id, 1059 + 59).is_some(), "touched, so not idle");
        assert!(s.touch(&id, 1118 + 60).is_none(), "idle");
        assert!(s.touch(&id, 1119).is_none(), "gone for good");

        let id = s.start("bob", 2000).unwrap();
        for t in (2050..2300).step_by(50) {
            assert!(s.touch(&id, t).is_some(), "{t}");
        }
        assert!(s.touch(&id, 2300).is_none(), "absolute lifetime");
        let id = s.start("carol", 3000).unwrap();
        s.end(&id);
        assert!(s.touch(&id, 3001).is_none(), "logged out");
    }

    #[test]
    fn five_failures_a_minute_then_blocked_until_the_oldest_ages_out() {
        let l = Limiter::default();
        for t in 0..5 {
            assert_eq!(l.blocked(&["u:alice", "a:192.0.2.1"], 100 + t), None);
            l.failed(&["u:alice", "a:192.0.2.1"], 100 + t);
        }
        assert_eq!(l.blocked(&["u:alice"], 110), Some(50));
        assert_eq!(l.blocked(&["u:bob", "a:192.0.2.1"], 110), Some(50));
        assert_eq!(l.blocked(&["u:bob", "a:192.0.2.2"], 110), None);
        assert_eq!(l.blocked(&["u:alice"], 160), None, "the oldest aged out");
        l.clear("u:alice");
        assert_eq!(l.blocked(&["u:alice"], 104), None);
    }

    #[test]
    fn tokens_are_keyed_and_compared_in_full() {
        let k1 = [1u8; KEY_BYTES];
        let k2 = [2u8; KEY_BYTES];
        let t = sign(&k1, &["csrf", "abc"]);
        assert_eq!(t.len(), 64);
        assert_eq!(t, sign(&k1, &["csrf", "abc"]));
        assert_ne!(t, sign(&k2, &["csrf", "abc"]));
        assert_ne!(sign(&k1, &["csrf", "ab"]), sign(&k1, &["csr", "fab"]));
        assert!(same_secret(&t, &t.clone()));
        assert!(!same_secret(&t, &t[..63]));
        assert!(!same_secret(&t, &format!("{}0", &t[..63])) || t.ends_with('0'));
    }

    #[test]
    fn the_key_is_created_once_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desk.key");
        let k = load_or_create_key(&path).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), k);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_key(&path).is_err());
    }
}
