// SPDX-License-Identifier: GPL-3.0-or-later
//! The in-memory backend: one relay, no other service. Every entry carries its expiry
//! and [`StateBackend::expire`] (run every minute by the daemon) drops idle ones, so
//! memory stays bounded by the senders and threads active within the longest window.

use super::algo::{self, Limit, Take, Window};
use super::{Brake, StateBackend, StateError, Storm, ThreadCounts};
use crate::clock::epoch_secs;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Messages remembered per thread; enough to see any storm, bounded against floods.
pub const THREAD_EVENTS_MAX: usize = 10_000;

#[derive(Debug)]
struct Expiring<T> {
    value: T,
    /// µs since the epoch.
    expires: u64,
}

/// A thread's counted messages, oldest first, and how many of them each sender sent:
/// a message is counted in constant time however large the thread.
#[derive(Debug, Default)]
struct Thread {
    events: VecDeque<(u64, String)>,
    senders: HashMap<String, usize>,
}

impl Thread {
    fn pop_oldest(&mut self) {
        if let Some((_, sender)) = self.events.pop_front()
            && let Some(n) = self.senders.get_mut(&sender)
        {
            *n -= 1;
            if *n == 0 {
                self.senders.remove(&sender);
            }
        }
    }

    fn push(&mut self, at: u64, sender: &str) {
        *self.senders.entry(sender.to_owned()).or_default() += 1;
        self.events.push_back((at, sender.to_owned()));
    }
}

#[derive(Debug, Default)]
struct Maps {
    gcra: HashMap<String, Expiring<u64>>,
    windows: HashMap<String, Expiring<Window>>,
    threads: HashMap<String, Expiring<Thread>>,
    storms: HashMap<String, Storm>,
    flags: HashMap<String, u64>,
    brake: Option<Brake>,
}

/// State in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    maps: Mutex<Maps>,
}

impl MemoryBackend {
    /// An empty state.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[async_trait]
impl StateBackend for MemoryBackend {
    async fn take(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<Take, StateError> {
        let mut m = self.lock();
        let now_us = algo::micros(now);
        let tat = m
            .gcra
            .get(key)
            .filter(|e| e.expires > now_us)
            .map_or(0, |e| e.value);
        let (take, new_tat) = algo::gcra(tat, cost, limit, now);
        if take.allowed {
            m.gcra.insert(
                key.to_owned(),
                Expiring {
                    value: new_tat,
                    expires: new_tat,
                },
            );
        }
        Ok(take)
    }

    async fn give_back(
        &self,
        key: &str,
        cost: u64,
        limit: Limit,
        now: SystemTime,
    ) -> Result<(), StateError> {
        let mut m = self.lock();
        if let Some(e) = m.gcra.get_mut(key) {
            e.value = algo::gcra_give_back(e.value, cost, limit, now);
            e.expires = e.value;
        }
        Ok(())
    }

    async fn window_add(
        &self,
        key: &str,
        amount: u64,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError> {
        let mut m = self.lock();
        let expires = algo::micros(now).saturating_add(us(width) * 2);
        let e = m.windows.entry(key.to_owned()).or_insert(Expiring {
            value: Window::default(),
            expires,
        });
        e.value.roll(width, now);
        e.value.current = e.value.current.saturating_add(amount);
        e.expires = expires;
        Ok(e.value.total(width, now))
    }

    async fn window_total(
        &self,
        key: &str,
        width: Duration,
        now: SystemTime,
    ) -> Result<u64, StateError> {
        let mut m = self.lock();
        Ok(m.windows.get_mut(key).map_or(0, |e| {
            e.value.roll(width, now);
            e.value.total(width, now)
        }))
    }

    async fn thread_note(
        &self,
        key: &str,
        sender: &str,
        window: Duration,
        now: SystemTime,
    ) -> Result<ThreadCounts, StateError> {
        let mut m = self.lock();
        let now_us = algo::micros(now);
        let from = now_us.saturating_sub(us(window));
        let e = m.threads.entry(key.to_owned()).or_insert(Expiring {
            value: Thread::default(),
            expires: 0,
        });
        let thread = &mut e.value;
        while thread.events.front().is_some_and(|(t, _)| *t < from) {
            thread.pop_oldest();
        }
        if thread.events.len() >= THREAD_EVENTS_MAX {
            thread.pop_oldest();
        }
        thread.push(now_us, sender);
        e.expires = now_us.saturating_add(us(window));
        Ok(ThreadCounts {
            messages: thread.events.len() as u64,
            senders: thread.senders.len() as u64,
        })
    }

    async fn storm_start(&self, storm: &Storm, now: SystemTime) -> Result<bool, StateError> {
        let mut m = self.lock();
        if m.storms.get(&storm.thread).is_some_and(|s| s.active(now)) {
            return Ok(false);
        }
        m.storms.insert(storm.thread.clone(), storm.kept());
        Ok(true)
    }

    async fn storm_hit(&self, thread: &str, now: SystemTime) -> Result<Option<Storm>, StateError> {
        let mut m = self.lock();
        Ok(match m.storms.get_mut(thread) {
            Some(s) if s.active(now) => {
                s.blocked += 1;
                Some(s.clone())
            }
            _ => None,
        })
    }

    async fn storm_list(&self, now: SystemTime) -> Result<Vec<Storm>, StateError> {
        let m = self.lock();
        let mut list: Vec<Storm> = m
            .storms
            .values()
            .filter(|s| s.active(now))
            .cloned()
            .collect();
        list.sort_by_key(|s| s.since);
        Ok(list)
    }

    async fn storm_clear(&self, id: &str) -> Result<bool, StateError> {
        let mut m = self.lock();
        let threads: Vec<String> = m
            .storms
            .values()
            .filter(|s| s.id == id)
            .map(|s| s.thread.clone())
            .collect();
        for t in &threads {
            m.storms.remove(t);
            m.threads.remove(t);
        }
        Ok(!threads.is_empty())
    }

    async fn brake_get(&self, now: SystemTime) -> Result<Option<Brake>, StateError> {
        let now = epoch_secs(now);
        Ok(self.lock().brake.clone().filter(|b| b.active(now)))
    }

    async fn brake_set(&self, brake: Option<&Brake>, _now: SystemTime) -> Result<(), StateError> {
        self.lock().brake = brake.map(Brake::kept);
        Ok(())
    }

    async fn flag(&self, key: &str, ttl: Duration, now: SystemTime) -> Result<bool, StateError> {
        let mut m = self.lock();
        let now_us = algo::micros(now);
        if m.flags.get(key).is_some_and(|&e| e > now_us) {
            return Ok(false);
        }
        m.flags
            .insert(key.to_owned(), now_us.saturating_add(us(ttl)));
        Ok(true)
    }

    async fn expire(&self, now: SystemTime) -> Result<usize, StateError> {
        let mut m = self.lock();
        let now_us = algo::micros(now);
        let now_s = epoch_secs(now);
        m.gcra.retain(|_, e| e.expires > now_us);
        m.windows.retain(|_, e| e.expires > now_us);
        m.threads.retain(|_, e| e.expires > now_us);
        m.storms.retain(|_, s| s.until > now_s);
        m.flags.retain(|_, &mut e| e > now_us);
        Ok(m.gcra.len() + m.windows.len() + m.threads.len() + m.storms.len() + m.flags.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn storm(thread: &str, since: u64, until: u64) -> Storm {
        Storm {
            id: Storm::id_of(thread),
            thread: thread.into(),
            subject: "Re: all staff".into(),
            list: "all@corp.example".into(),
            audience: 5000,
            messages: 3,
            senders: 3,
            since: epoch_secs(t(since)),
            until: epoch_secs(t(until)),
            blocked: 0,
        }
    }

    #[tokio::test]
    async fn idle_entries_expire_so_memory_stays_bounded() {
        let b = MemoryBackend::new();
        let hour = Limit {
            limit: 1000,
            period: Duration::from_secs(3600),
        };
        for i in 0..1000 {
            b.take(&format!("sender{i}"), 10, hour, t(0)).await.unwrap();
        }
        b.window_add("relay", 5, Duration::from_secs(60), t(0))
            .await
            .unwrap();
        b.thread_note("t", "a", Duration::from_secs(600), t(0))
            .await
            .unwrap();
        b.storm_start(&storm("t", 0, 3600), t(0)).await.unwrap();
        assert_eq!(b.expire(t(1)).await.unwrap(), 1003);
        assert_eq!(
            b.expire(t(3601)).await.unwrap(),
            0,
            "everything idle is gone"
        );
    }
}
