// SPDX-License-Identifier: GPL-3.0-or-later
//! How fast notices at hold go out (pure): at most one notice per sender per
//! `sender_interval`, the holds that came meanwhile summarised in the next one, and at
//! most `per_minute` notices relay-wide, so that an incident that holds thousands of
//! messages never turns its notices into a second storm.

use std::collections::HashMap;

/// A notice due to a sender: the record it is about and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The held record.
    pub held_id: i64,
    /// The sender to tell.
    pub sender: String,
    /// Since when (seconds since the epoch).
    pub due_at: u64,
}

/// One notice to send: one held message, or a summary of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// To whom.
    pub sender: String,
    /// The records it is about, oldest first.
    pub held_ids: Vec<i64>,
}

/// The notices to send at `now`, in the order their first hold came. `due` is oldest
/// first; `last_told` says when each sender was last sent a notice; `sent` notices left
/// in the minute before `now`, of at most `per_minute`. A sender told less than
/// `interval` ago waits; every hold of a sender whose turn it is goes in one notice.
pub fn plan(
    due: &[Due],
    last_told: impl Fn(&str) -> Option<u64>,
    interval: u64,
    sent: u32,
    per_minute: u32,
    now: u64,
) -> Vec<Batch> {
    let mut order: Vec<&str> = Vec::new();
    let mut ids: HashMap<&str, Vec<i64>> = HashMap::new();
    for d in due {
        let entry = ids.entry(d.sender.as_str()).or_default();
        if entry.is_empty() {
            order.push(&d.sender);
        }
        entry.push(d.held_id);
    }
    let room = per_minute.saturating_sub(sent) as usize;
    order
        .into_iter()
        .filter(|sender| last_told(sender).is_none_or(|t| now >= t.saturating_add(interval)))
        .take(room)
        .map(|sender| Batch {
            sender: sender.to_owned(),
            held_ids: ids.remove(sender).unwrap_or_default(),
        })
        .collect()
}

/// Times of the notices sent in the last minute, for the relay-wide cap.
#[derive(Clone, Debug, Default)]
pub struct Window {
    sent: std::collections::VecDeque<u64>,
}

impl Window {
    /// Notices sent in the minute before `now` (older ones are forgotten).
    pub fn count(&mut self, now: u64) -> u32 {
        while self.sent.front().is_some_and(|&t| t + 60 <= now) {
            self.sent.pop_front();
        }
        self.sent.len() as u32
    }

    /// One notice sent at `now`.
    pub fn add(&mut self, now: u64) {
        self.sent.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(held_id: i64, sender: &str, due_at: u64) -> Due {
        Due {
            held_id,
            sender: sender.into(),
            due_at,
        }
    }

    fn never(_: &str) -> Option<u64> {
        None
    }

    #[test]
    fn each_sender_gets_one_notice_with_all_their_holds() {
        let d = [due(1, "ann", 10), due(2, "bob", 11), due(3, "ann", 12)];
        assert_eq!(
            plan(&d, never, 600, 0, 60, 20),
            [
                Batch {
                    sender: "ann".into(),
                    held_ids: vec![1, 3]
                },
                Batch {
                    sender: "bob".into(),
                    held_ids: vec![2]
                },
            ]
        );
        assert!(plan(&[], never, 600, 0, 60, 20).is_empty());
    }

    #[test]
    fn a_sender_told_within_the_interval_waits_for_a_summary() {
        let d: Vec<Due> = (1..=49).map(|i| due(i, "ann", 100 + i as u64)).collect();
        let told = |s: &str| (s == "ann").then_some(100);
        assert!(plan(&d, told, 600, 0, 60, 150).is_empty());
        assert!(plan(&d, told, 600, 0, 60, 699).is_empty());
        let at_end = plan(&d, told, 600, 0, 60, 700);
        assert_eq!(at_end.len(), 1, "one summary");
        assert_eq!(at_end[0].held_ids.len(), 49);
        let other = [due(60, "bob", 150)];
        assert_eq!(
            plan(&other, told, 600, 0, 60, 150).len(),
            1,
            "bob was not told"
        );
    }

    #[test]
    fn the_relay_wide_cap_holds_back_the_rest_oldest_first() {
        let d: Vec<Due> = (0..100)
            .map(|i| due(i, &format!("s{i}"), i as u64))
            .collect();
        let now = plan(&d, never, 600, 0, 60, 200);
        assert_eq!(now.len(), 60);
        assert_eq!(now[0].sender, "s0");
        assert_eq!(now[59].sender, "s59");
        assert_eq!(plan(&d, never, 600, 59, 60, 200).len(), 1);
        assert!(plan(&d, never, 600, 60, 60, 200).is_empty());
        assert!(plan(&d, never, 600, 61, 60, 200).is_empty());
    }

    #[test]
    fn the_window_counts_the_last_minute() {
        let mut w = Window::default();
        assert_eq!(w.count(100), 0);
        w.add(100);
        w.add(130);
        assert_eq!(w.count(159), 2);
        assert_eq!(w.count(160), 1);
        assert_eq!(w.count(190), 0);
    }
}
