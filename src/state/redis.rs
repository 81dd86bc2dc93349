// SPDX-License-Identifier: GPL-3.0-or-later
//! The Redis backend: state shared by a fleet of relays, so that a reply-all storm or a
//! sender's rate spread over several relays is counted as one.
//!
//! Every read-modify-write is one Lua script (or one MULTI pipeline), so it is atomic
//! across relays; what one message needs on its way is one script call
//! ([`message`]: one round trip). Times come from the caller's clock, as with the in-memory backend, so
//! both compute the same answers (relays must keep their clocks in step, with NTP); the
//! keys' Redis expiry only collects garbage and is always relative (`PX`/`EX`), so a
//! relay's clock offset from the Redis host does not matter.
//!
//! Keys, all under the configured prefix (`fanout:` by default):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `gcra:<key>` | string | a budget's theoretical arrival time, µs |
//! | `win:<key>:<bucket>` | integer | one bucket of a sliding window |
//! | `thr:<thread>:e` | sorted set | a thread's counted messages (score: µs; member: the relay's nonce and a counter) |
//! | `thr:<thread>:s` | sorted set | their senders (score: last seen, µs) |
//! | `thr:<thread>:n` | integer | written by earlier releases only (a sequence for the members); deleted with its storm |
//! | `storm:<id>` | hash | a storm: `json`, `until`, `blocked` |
//! | `storms` | sorted set | storm ids by `until` (for `storms list`) |
//! | `flag:<key>` | string | a flag's end, µs |
//! | `brake` | string | the emergency brake, JSON (a value that is none is no brake) |

mod message;

use super::algo::{self, Limit, Take, Window};
use super::memory::THREAD_EVENTS_MAX;
use super::plan::{Outcome, Plan, TakeStep};
use super::redis_conn::RedisConn;
use super::{Brake, StateBackend, StateError, Storm, ThreadCounts};
use crate::clock::epoch_secs;
use crate::config::RedisConnSettings;
use async_trait::async_trait;
use redis::{AsyncCommands as _, Script, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};
use tracing::warn;

/// GCRA take. KEYS: the TAT. ARGV: now, the cost's span, the period (µs).
/// Returns {allowed, TAT before} (the TAT as a string: Lua numbers are doubles, exact
/// below 2^53 µs, which is year 2255).
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = math.max(stored, now) + span
if new - now <= period then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1)
  return {1, string.format('%.0f', stored)}
end
return {0, string.format('%.0f', stored)}
",
    )
});

/// GCRA give back. KEYS: the TAT. ARGV: now, the cost's span (µs).
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local now = tonumber(ARGV[1])
local new = math.max(tonumber(v) - tonumber(ARGV[2]), now)
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1)
end
return 1
",
    )
});

/// The thread count, as a Lua function that both [`THREAD_NOTE`] and [`message`]'s
/// script define: `count(events, senders, now, from, sender, member, max, ttl)`
/// prunes both sets to the window (`from`, µs), adds the message (`member`, unique)
/// and keeps the newest `max`, moves the sender's last seen forward (never back,
/// whichever relay's clock is ahead), renews both keys' expiry (`ttl`, ms), and
/// returns the messages and distinct senders within the window.
pub(super) const THREAD_COUNT: &str = r"
local function count(events, senders, now, from, sender, member, max, ttl)
  from = '(' .. from
  redis.call('ZREMRANGEBYSCORE', events, '-inf', from)
  redis.call('ZADD', events, now, member)
  local m = redis.call('ZCARD', events)
  max = tonumber(max)
  if m > max then
    redis.call('ZREMRANGEBYRANK', events, 0, m - max - 1)
    m = max
  end
  redis.call('ZREMRANGEBYSCORE', senders, '-inf', from)
  local seen = redis.call('ZSCORE', senders, sender)
  if (not seen) or tonumber(seen) < tonumber(now) then redis.call('ZADD', senders, now, sender) end
  local s = redis.call('ZCARD', senders)
  redis.call('PEXPIRE', events, ttl)
  redis.call('PEXPIRE', senders, ttl)
  return m, s
end
";

/// Notes a message in a thread. KEYS: messages, senders. ARGV: now (µs), the window's
/// start (µs), sender, the message's member (unique), most messages kept, expiry (ms).
/// Returns {messages, distinct senders} within the window.
static THREAD_NOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            THREAD_COUNT,
            r"
local m, s = count(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return {m, s}
",
        ]
        .concat(),
    )
});

/// Starts a storm unless one is active. KEYS: the storm, the index. ARGV: now (s),
/// until (s), JSON, id, expiry (s). Returns 1 when started.
static STORM_START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local u = redis.call('HGET', KEYS[1], 'until')
if u and tonumber(u) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'json', ARGV[3], 'until', ARGV[2], 'blocked', 0)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
",
    )
});

/// Counts a stopped message on an active storm. KEYS: the storm. ARGV: now (s).
/// Returns {JSON, blocked} or nil.
static STORM_HIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local u = redis.call('HGET', KEYS[1], 'until')
if (not u) or tonumber(u) <= tonumber(ARGV[1]) then return false end
local b = redis.call('HINCRBY', KEYS[1], 'blocked', 1)
return {redis.call('HGET', KEYS[1], 'json'), b}
",
    )
});

/// Sets a flag unless set. KEYS: the flag. ARGV: now, end (µs), expiry (ms).
static FLAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// Storm, rate and breaker state in Redis.
#[derive(Clone)]
pub struct RedisBackend {
    conn: RedisConn,
    prefix: String,
    /// The digest of the last brake value that was not a brake, so that each bad value
    /// is warned about once, not at every read (twice a second).
    bad_brake: Arc<Mutex<Option<[u8; 32]>>>,
    /// This backend's random nonce (hex) and counter, for the members of threads.
    members: Arc<(String, AtomicU64)>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// 64 random bits in hex: keeps one relay's members of a thread apart from another's.
fn nonce() -> Result<String, StateError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| StateError(format!("no randomness: {e}")))?;
    Ok(format!("{:016x}", u64::from_be_bytes(bytes)))
}

fn err(e: redis::RedisError) -> StateError {
    StateError(format!("redis: {e}"))
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Milliseconds for a `PX`, at least 1.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisBackend {
    /// A backend on `url` (`redis://[:password@]host[:port][/db]` or
    /// `redis+unix:///path`), its keys under `prefix`. Connects lazily and reconnects
    /// by itself; every command gives up after `timeout`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisBackend, StateError> {
        Self::with_password(url, None, prefix, timeout)
    }

    /// [`RedisBackend::new`], authenticating with `password` (from `[state]
    /// password_file`) instead of a password in `url`.
    pub fn with_password(
        url: &str,
        password: Option<&str>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisBackend, StateError> {
        Self::connect(
            url,
            password,
            &RedisConnSettings::default(),
            prefix,
            timeout,
        )
    }

    /// [`RedisBackend::with_password`] with the TLS files and Sentinel of `settings`
    /// (see [`super::redis_conn`]).
    pub fn connect(
        url: &str,
        password: Option<&str>,
        settings: &RedisConnSettings,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisBackend, StateError> {
        Ok(RedisBackend {
            conn: super::redis_conn::connect(url, password, settings, timeout)?,
            prefix: prefix.to_owned(),
            bad_brake: Arc::new(Mutex::new(None)),
            members: Arc::new((nonce()?, AtomicU64::new(0))),
        })
    }

    /// A brake value that is no brake (written by hand, or by another program) is read
    /// as no brake known: Redis itself answered, so it is not marked down (which would
    /// send every other operation to local state, twice a second). Each distinct bad
    /// value is warned about once, neutralised and capped.
    fn unreadable_brake(&self, value: &str, e: &serde_json::Error) {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let mut last = self.bad_brake.lock().unwrap_or_else(|p| p.into_inner());
        if *last != Some(digest) {
            *last = Some(digest);
            warn!(
                key = %self.key(&["brake"]),
                value = %crate::text::neutralize_capped(value, 200),
                "redis: the emergency brake's value is not a brake ({}); read as no brake \
                 until an admin pulls or releases it",
                crate::text::neutralize(&e.to_string())
            );
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    /// A thread's messages and senders.
    fn thread_keys(&self, thread: &str) -> [String; 2] {
        ["e", "s"].map(|s| self.key(&["thr", thread, s]))
    }

    /// A new member for a thread's messages, unique across relays: this backend's
    /// random nonce and its counter.
    fn next_member(&self) -> String {
        let n = self.members.1.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n:x}", self.members.0)
    }

    fn bucket_keys(&self, key: &str, width: Duration, now: SystemTime) -> (u64, String, String) {
        let w = us(width).max(1);
        let now = algo::micros(now);
        let bucket = now - now % w;
        let current = self.key(&["win", key, &bucket.to_string()]);
        let previous = self.key(&["win", key, &(bucket.saturating_sub(w)).to_string()]);
        (bucket, current, previous)
    }

    async fn storm_of(&self, id: &str) -> Result<Option<Storm>, StateError> {
        let mut c = self.conn.clone();
        let (json, blocked): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key(&["storm", id]))
            .arg("json")
            .arg("blocked")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        json.map(|j| storm_from(&j, blocked.unwrap_or(0)))
            .transpose()
    }
}

fn storm_from(json: &str, blocked: u64) -> Result<Storm, StateError> {
    let s: Storm = serde_json::from_str(json)
        .map_err(|e| StateError(format!("redis: a storm record is not valid: {e}")))?;
    let mut s = s.kept();
    s.blocked = blocked;
    Ok(s)
}

#[async_trait]
impl StateBackend for RedisBackend {
    async fn take(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<Take, StateError> {
        let mut c = self.conn.clone();
        let span = algo::span(cost, limit);
        let (allowed, stored): (u8, String) = TAKE
            .key(self.key(&["gcra", key]))
            .arg(algo::micros(now))
            .arg(span)
            .arg(us(limit.period))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        let stored: u64 = stored.parse().unwrap_or(0);
        let (take, _) = algo::gcra(stored, cost, limit, now);
        debug_assert_eq!(take.allowed, allowed == 1, "Lua and Rust GCRA agree");
        Ok(Take {
            allowed: allowed == 1,
            ..take
        })
    }

    async fn give_back(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<(), StateError> {
        let mut c = self.conn.clone();
        let _: i64 = GIVE_BACK
            .key(self.key(&["gcra", key]))
            .arg(algo::micros(now))
            .arg(algo::span(cost, limit))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn window_add(
        &self,
        key: &str,
        amount: u64,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError> {
        let mut c = self.conn.clone();
        let (start, current, previous) = self.bucket_keys(key, width, now);
        let (cur, prev): (u64, Option<u64>) = redis::pipe()
            .atomic()
            .incr(&current, amount)
            .pexpire(&current, (ms(width) * 2) as i64)
            .ignore()
            .get(&previous)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(Window {
            start,
            current: cur,
            previous: prev.unwrap_or(0),
        }
        .total(width, now))
    }

    async fn window_total(
        &self,
        key: &str,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError> {
        let mut c = self.conn.clone();
        let (start, current, previous) = self.bucket_keys(key, width, now);
        let (cur, prev): (Option<u64>, Option<u64>) = redis::cmd("MGET")
            .arg(&current)
            .arg(&previous)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(Window {
            start,
            current: cur.unwrap_or(0),
            previous: prev.unwrap_or(0),
        }
        .total(width, now))
    }

    async fn thread_note(
        &self,
        key: &str,
        sender: &str,
        window: Duration,
        now: SystemTime,
    ) -> Result<ThreadCounts, StateError> {
        let mut c = self.conn.clone();
        let now_us = algo::micros(now);
        let [events, senders] = self.thread_keys(key);
        let (messages, senders): (u64, u64) = THREAD_NOTE
            .key(events)
            .key(senders)
            .arg(now_us)
            .arg(now_us.saturating_sub(us(window)))
            .arg(sender)
            .arg(self.next_member())
            .arg(THREAD_EVENTS_MAX)
            .arg(ms(window))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(ThreadCounts { messages, senders })
    }

    /// One script call ([`message`]).
    async fn observe(&self, plan: &Plan, now: SystemTime) -> Result<Outcome, StateError> {
        self.observe_plan(plan, now).await
    }

    /// One script call ([`message`]).
    async fn give_back_all(&self, taken: &[TakeStep], now: SystemTime) -> Result<(), StateError> {
        self.give_back_plan(taken, now).await
    }

    async fn storm_start(&self, storm: &Storm, now: SystemTime) -> Result<bool, StateError> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(&storm.kept())
            .map_err(|e| StateError(format!("cannot encode a storm: {e}")))?;
        let now_s = epoch_secs(now);
        let started: u8 = STORM_START
            .key(self.key(&["storm", &storm.id]))
            .key(self.key(&["storms"]))
            .arg(now_s)
            .arg(storm.until)
            .arg(json)
            .arg(&storm.id)
            .arg(storm.until.saturating_sub(now_s).max(1))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(started == 1)
    }

    async fn storm_hit(&self, thread: &str, now: SystemTime) -> Result<Option<Storm>, StateError> {
        let mut c = self.conn.clone();
        let hit: Option<(String, u64)> = STORM_HIT
            .key(self.key(&["storm", &Storm::id_of(thread)]))
            .arg(epoch_secs(now))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        match hit {
            Some((json, blocked)) => {
                let storm = storm_from(&json, blocked)?;
                Ok((storm.thread == thread).then_some(storm))
            }
            None => Ok(None),
        }
    }

    async fn storm_list(&self, now: SystemTime) -> Result<Vec<Storm>, StateError> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key(&["storms"]))
            .arg(format!("({}", epoch_secs(now)))
            .arg("+inf")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        let mut list = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.storm_of(&id).await?
                && s.active(now)
            {
                list.push(s);
            }
        }
        list.sort_by_key(|s| s.since);
        Ok(list)
    }

    async fn storm_clear(&self, id: &str) -> Result<bool, StateError> {
        let Some(storm) = self.storm_of(id).await? else {
            return Ok(false);
        };
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.key(&["storm", id]))
            .ignore()
            .zrem(self.key(&["storms"]), id)
            .ignore();
        for k in self.thread_keys(&storm.thread) {
            pipe.del(k).ignore();
        }
        pipe.del(self.key(&["thr", &storm.thread, "n"])).ignore();
        let () = pipe.query_async(&mut c).await.map_err(err)?;
        Ok(true)
    }

    async fn brake_get(&self, now: SystemTime) -> Result<Option<Brake>, StateError> {
        let mut c = self.conn.clone();
        let json: Option<String> = c.get(self.key(&["brake"])).await.map_err(err)?;
        let Some(json) = json else {
            return Ok(None);
        };
        let brake: Brake = match serde_json::from_str(&json) {
            Ok(brake) => brake,
            Err(e) => {
                self.unreadable_brake(&json, &e);
                return Ok(None);
            }
        };
        Ok(Some(brake.kept()).filter(|b| b.active(epoch_secs(now))))
    }

    /// A brake with an end is stored with Redis's own expiry too, so that a relay that
    /// was down when it ended never finds it again.
    async fn brake_set(&self, brake: Option<&Brake>, now: SystemTime) -> Result<(), StateError> {
        let mut c = self.conn.clone();
        let key = self.key(&["brake"]);
        let Some(brake) = brake else {
            let () = c.del(key).await.map_err(err)?;
            return Ok(());
        };
        let json = serde_json::to_string(&brake.kept())
            .map_err(|e| StateError(format!("redis: cannot store the brake: {e}")))?;
        let () = match brake.until {
            Some(until) => {
                let left = until.saturating_sub(epoch_secs(now)).max(1);
                c.set_ex(key, json, left).await.map_err(err)?
            }
            None => c.set(key, json).await.map_err(err)?,
        };
        Ok(())
    }

    async fn flag(&self, key: &str, ttl: Duration, now: SystemTime) -> Result<bool, StateError> {
        let mut c = self.conn.clone();
        let now_us = algo::micros(now);
        let set: u8 = FLAG
            .key(self.key(&["flag", key]))
            .arg(now_us)
            .arg(now_us.saturating_add(us(ttl)))
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(set == 1)
    }

    /// Redis expires keys by itself; this prunes the storm index and returns the
    /// number of storms in it.
    async fn expire(&self, now: SystemTime) -> Result<usize, StateError> {
        let mut c = self.conn.clone();
        let index = self.key(&["storms"]);
        let (n,): (usize,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(epoch_secs(now))
            .ignore()
            .zcard(&index)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(n)
    }

    async fn ping(&self) -> Result<(), StateError> {
        let mut c = self.conn.clone();
        let pong: Value = redis::cmd("PING").query_async(&mut c).await.map_err(err)?;
        match pong {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            other => Err(StateError(format!("redis: PING answered {other:?}"))),
        }
    }
}
