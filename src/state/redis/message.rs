// SPDX-License-Identifier: GPL-3.0-or-later
//! One round trip per message: the storm lookup, the thread count (and the storm it
//! trips) and the rate budgets of a [`Plan`] in one Lua script, so the message waits
//! for Redis once, and every step stays atomic across relays (the script runs alone on
//! the server). It computes what the separate scripts in [`super`] compute, on the same
//! keys, so relays of either version count together.
//!
//! All keys are declared in KEYS (as Redis Cluster would need; a message's keys do not
//! share a hash slot, so Cluster itself is not supported). redis-rs sends the script by
//! its digest (EVALSHA) and sends it whole (EVAL) when the server answers NOSCRIPT.

use super::{RedisBackend, THREAD_COUNT, err, ms, storm_from, us};
use crate::clock::epoch_secs;
use crate::state::algo;
use crate::state::memory::THREAD_EVENTS_MAX;
use crate::state::plan::{Outcome, Plan, TakeStep, ThreadOutcome};
use crate::state::{StateError, Storm, ThreadCounts};
use redis::{Script, Value};
use std::sync::LazyLock;
use std::time::SystemTime;

/// A message's plan.
///
/// KEYS, with a thread: the storm, the storm index, the thread's messages and senders;
/// then one budget (GCRA TAT) per charge.
/// ARGV: now (µs), charges, has a thread (1/0); with a thread: now (s), the thread, the
/// window's start (µs), the sender, the message's member in the thread (unique: the
/// relay's nonce and a counter), most messages kept, the thread's expiry (ms), the
/// least messages and senders that trip a storm, the storm's JSON before and after its
/// counts, its end (s), its id, its expiry (s); then per charge its span and the period
/// (µs).
///
/// Returns {kind, storm JSON, a, b, started, then per charge: allowed, TAT before (µs)};
/// kind 0: no thread; 1: stopped by the storm (JSON, blocked); 2: counted (messages,
/// distinct senders; started 1 when this call started the storm).
///
/// Every `redis.call` costs about 3 µs of the server's CPU on a small VM (several
/// times the command itself), so the script makes as few as it can: 13 for a counted
/// reply charged to two budgets (the budgets read with one MGET). A sender's last-seen
/// score only moves forward, whichever relay's clock is ahead (`ZADD GT` would save the
/// read but needs Redis 6.2).
static MESSAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            THREAD_COUNT,
            r#"
local now = tonumber(ARGV[1])
local charges = tonumber(ARGV[2])
local out = {0, '', 0, 0, 0}
local k, a = 1, 4
if ARGV[3] == '1' then
  k, a = 5, 18
  local now_s = tonumber(ARGV[4])
  local u = redis.call('HGET', KEYS[1], 'until')
  local active = u and tonumber(u) > now_s
  local stopped = false
  if active then
    local json = redis.call('HGET', KEYS[1], 'json')
    local ok, rec = pcall(cjson.decode, json or '')
    -- an id is 40 bits of the thread's digest: another thread's storm stops nothing
    if (not ok) or type(rec) ~= 'table' or rec.thread == ARGV[5] then
      out = {1, json or '', redis.call('HINCRBY', KEYS[1], 'blocked', 1), 0, 0}
      stopped = true
    end
  end
  if not stopped then
    local m, s = count(KEYS[3], KEYS[4], ARGV[1], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
    local started = 0
    if m >= tonumber(ARGV[11]) and s >= tonumber(ARGV[12]) and not active then
      redis.call('DEL', KEYS[1])
      local json = ARGV[13] .. m .. ',"senders":' .. s .. ARGV[14]
      redis.call('HSET', KEYS[1], 'json', json, 'until', ARGV[15], 'blocked', 0)
      redis.call('EXPIRE', KEYS[1], ARGV[17])
      redis.call('ZADD', KEYS[2], ARGV[15], ARGV[16])
      started = 1
    end
    out = {2, '', m, s, started}
  end
end
if charges > 0 then
  local stored = redis.call('MGET', unpack(KEYS, k, k + charges - 1))
  for i = 0, charges - 1 do
    local before = tonumber(stored[i + 1] or '0')
    local span, period = tonumber(ARGV[a + 2 * i]), tonumber(ARGV[a + 2 * i + 1])
    local new = math.max(before, now) + span
    if new - now <= period then
      redis.call('SET', KEYS[k + i], new, 'PX', math.floor((new - now) / 1000) + 1)
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
    out[#out + 1] = before
  end
end
return out
"#,
        ]
        .concat(),
    )
});

/// Gives back a message's budgets. KEYS: the TATs. ARGV: now, then each cost's span
/// (µs). The `GIVE_BACK` script's steps, for each key in turn.
static GIVE_BACK_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    local new = math.max(tonumber(v) - tonumber(ARGV[i + 1]), now)
    if new <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1)
    end
  end
end
return #KEYS
",
    )
});

/// The JSON of `storm` split around its counts, for the script to put them in:
/// `head .. messages .. ",\"senders\":" .. senders .. tail` is the JSON of the storm
/// with those counts.
fn storm_json_parts(storm: &Storm) -> Result<(String, String), StateError> {
    const COUNTS: &str = r#","messages":0,"senders":0,"#;
    let template = Storm {
        messages: 0,
        senders: 0,
        ..storm.kept()
    };
    let json = serde_json::to_string(&template)
        .map_err(|e| StateError(format!("cannot encode a storm: {e}")))?;
    // Every string field comes before the counts, and a quote inside a string is
    // escaped, so the last match is the counts themselves.
    let at = json
        .rfind(COUNTS)
        .ok_or_else(|| StateError("a storm's JSON has no counts".into()))?;
    Ok((
        format!(r#"{},"messages":"#, &json[..at]),
        format!(",{}", &json[at + COUNTS.len()..]),
    ))
}

fn value<T: redis::FromRedisValue>(v: Option<&Value>) -> Result<T, StateError> {
    let v = v.ok_or_else(|| StateError("redis: the message script answered too little".into()))?;
    redis::from_redis_value_ref(v)
        .map_err(|e| StateError(format!("redis: the message script's answer: {e}")))
}

impl RedisBackend {
    /// [`crate::state::StateBackend::observe`] in one script call.
    pub(super) async fn observe_plan(
        &self,
        plan: &Plan,
        now: SystemTime,
    ) -> Result<Outcome, StateError> {
        let now_us = algo::micros(now);
        let mut call = MESSAGE.prepare_invoke();
        call.arg(now_us)
            .arg(plan.takes.len())
            .arg(u8::from(plan.thread.is_some()));
        if let Some(step) = &plan.thread {
            let storm = &step.storm;
            let (head, tail) = storm_json_parts(storm)?;
            let now_s = epoch_secs(now);
            call.key(self.key(&["storm", &storm.id]))
                .key(self.key(&["storms"]));
            for k in self.thread_keys(step.thread()) {
                call.key(k);
            }
            call.arg(now_s)
                .arg(step.thread())
                .arg(now_us.saturating_sub(us(step.window)))
                .arg(&step.sender)
                .arg(self.next_member())
                .arg(THREAD_EVENTS_MAX)
                .arg(ms(step.window))
                .arg(step.min_messages)
                .arg(step.min_senders)
                .arg(head)
                .arg(tail)
                .arg(storm.until)
                .arg(&storm.id)
                .arg(storm.until.saturating_sub(now_s).max(1));
        }
        debug_assert!(
            plan.takes
                .iter()
                .enumerate()
                .all(|(i, t)| plan.takes[..i].iter().all(|u| u.key != t.key)),
            "one charge per budget: the script reads every budget before it writes any"
        );
        for t in &plan.takes {
            call.key(self.key(&["gcra", &t.key]))
                .arg(algo::span(t.cost, t.limit))
                .arg(us(t.limit.period));
        }
        let mut c = self.conn.clone();
        let answer: Vec<Value> = call.invoke_async(&mut c).await.map_err(err)?;
        let mut fields = answer.iter();
        let kind: u8 = value(fields.next())?;
        let json: String = value(fields.next())?;
        let a: u64 = value(fields.next())?;
        let b: u64 = value(fields.next())?;
        let started: u8 = value(fields.next())?;
        let thread = match (kind, &plan.thread) {
            (1, Some(_)) => Some(ThreadOutcome::Stopped(storm_from(&json, a)?)),
            (2, Some(_)) => Some(ThreadOutcome::Counted {
                counts: ThreadCounts {
                    messages: a,
                    senders: b,
                },
                started: started == 1,
            }),
            (0, None) => None,
            _ => {
                return Err(StateError(format!(
                    "redis: the message script answered kind {kind}"
                )));
            }
        };
        let mut takes = Vec::with_capacity(plan.takes.len());
        for t in &plan.takes {
            let allowed: u8 = value(fields.next())?;
            let stored: u64 = value(fields.next())?;
            let (take, _) = algo::gcra(stored, t.cost, t.limit, now);
            debug_assert_eq!(take.allowed, allowed == 1, "Lua and Rust GCRA agree");
            takes.push(algo::Take {
                allowed: allowed == 1,
                ..take
            });
        }
        Ok(Outcome { thread, takes })
    }
}

impl RedisBackend {
    /// [`crate::state::StateBackend::give_back_all`] in one script call.
    pub(super) async fn give_back_plan(
        &self,
        taken: &[TakeStep],
        now: SystemTime,
    ) -> Result<(), StateError> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut call = GIVE_BACK_ALL.prepare_invoke();
        call.arg(algo::micros(now));
        for t in taken {
            call.key(self.key(&["gcra", &t.key]))
                .arg(algo::span(t.cost, t.limit));
        }
        let mut c = self.conn.clone();
        let _: i64 = call.invoke_async(&mut c).await.map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storm_json_split_around_its_counts_puts_them_back_where_they_were() {
        let storm = Storm {
            id: Storm::id_of("t"),
            thread: "t".into(),
            subject: r#"Re: ,"messages":0,"senders":0, "quoted" ünïcode"#.into(),
            list: r#"all@corp.example,"messages":0,"senders":0,"#.into(),
            audience: 5000,
            messages: 17,
            senders: 4,
            since: 1_800_000_000,
            until: 1_800_021_600,
            blocked: 0,
        };
        let (head, tail) = storm_json_parts(&storm).unwrap();
        let joined = format!(r#"{head}17,"senders":4{tail}"#);
        assert_eq!(joined, serde_json::to_string(&storm).unwrap());
        let back: Storm = serde_json::from_str(&joined).unwrap();
        assert_eq!(back, storm);
    }
}
