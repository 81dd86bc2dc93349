// SPDX-License-Identifier: GPL-3.0-or-later
//! The shrink guard. A refresh that loses more than `max_shrink` of a source's lists,
//! or of their members (the sum of every list's audience, so one big list that
//! vanishes counts with its whole size), or in which one list that had at least a floor
//! of members (`[drift] min_audience`) loses more than `max_shrink` of them, is refused
//! like a failed one until an admin accepts it; a first snapshot with no list at all is
//! refused too. A list that
//! vanishes in a refresh that is taken is remembered as unknown, never as one mailbox,
//! until it comes back or an admin accepts its loss. Pure: no I/O, no clock.

use super::Snapshot;
use crate::config::ldap::Share;
use crate::directory::index::{DirectoryIndex, IndexOptions};
use crate::directory::source::{ListDef, Member};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// How many of the largest lost lists a summary names.
const NAMED: usize = 5;

/// A list that vanished from its source: counted as unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vanished {
    /// One of its addresses.
    pub address: String,
    /// When the first snapshot without it was taken (seconds since the epoch).
    pub since: u64,
    /// Its audience in the last snapshot that had it.
    pub members: u64,
}

/// The audience of each list of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Measure {
    sizes: HashMap<String, u64>,
}

impl Measure {
    /// Expands the lists as the directory would (`max_depth`, `max_audience` of
    /// `[expansion]`). CPU work of the size of a directory load: not on the mail path.
    pub fn of(lists: &[ListDef], max_depth: usize, max_audience: u64) -> Measure {
        let index = DirectoryIndex::build_from(
            lists,
            &IndexOptions {
                max_depth,
                internal: Default::default(),
                max_audience,
                // Lists are measured by their own keys: no extension to strip.
                recipient_delimiter: Default::default(),
            },
        );
        Measure {
            sizes: index
                .lists()
                .map(|l| (l.address.to_string(), l.total()))
                .collect(),
        }
    }

    /// Lists measured.
    pub fn lists(&self) -> u64 {
        self.sizes.len() as u64
    }

    /// Sum of their audiences.
    pub fn members(&self) -> u64 {
        self.sizes.values().sum()
    }
}

/// What a refresh would lose against the snapshot in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shrink {
    /// Lists before.
    pub lists_before: u64,
    /// Lists after.
    pub lists_after: u64,
    /// Lists of before that are gone.
    pub lists_lost: u64,
    /// Sum of the list audiences before.
    pub members_before: u64,
    /// Sum of the list audiences after.
    pub members_after: u64,
    /// What the lists of before lost, each counted alone (a list gone loses all).
    pub members_lost: u64,
    /// The largest lists gone, with their audience before.
    pub largest_lost: Vec<(String, u64)>,
    /// Lists still there, of at least the floor before, that lost more than
    /// `max_shrink` of their members.
    pub lists_shrunk: u64,
    /// The ones of them that lost most: address, audience before and after.
    pub largest_shrunk: Vec<(String, u64, u64)>,
}

impl Shrink {
    /// Compares two measures of a source. With no `before` (a first snapshot) only
    /// an empty one loses anything: all of it. Each list that had at least `floor`
    /// members and loses more than `max` of them counts in `lists_shrunk`: a total
    /// over a large directory hides one big list that empties.
    pub fn between(before: Option<&Measure>, after: &Measure, floor: u64, max: Share) -> Shrink {
        let Some(before) = before else {
            let empty = after.sizes.is_empty();
            return Shrink {
                lists_before: u64::from(empty),
                lists_lost: u64::from(empty),
                lists_after: after.lists(),
                members_after: after.members(),
                ..Shrink::default()
            };
        };
        let mut lost: Vec<(String, u64)> = Vec::new();
        let mut shrunk: Vec<(String, u64, u64)> = Vec::new();
        let mut members_lost = 0;
        for (address, &size) in &before.sizes {
            match after.sizes.get(address) {
                Some(&now) => {
                    let gone = size.saturating_sub(now);
                    members_lost += gone;
                    if size >= floor && max.exceeded_by(gone, size) {
                        shrunk.push((address.clone(), size, now));
                    }
                }
                None => {
                    members_lost += size;
                    lost.push((address.clone(), size));
                }
            }
        }
        let lists_lost = lost.len() as u64;
        lost.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        lost.truncate(NAMED);
        let lists_shrunk = shrunk.len() as u64;
        shrunk.sort_by(|a, b| (b.1 - b.2).cmp(&(a.1 - a.2)).then_with(|| a.0.cmp(&b.0)));
        shrunk.truncate(NAMED);
        Shrink {
            lists_before: before.lists(),
            lists_after: after.lists(),
            lists_lost,
            members_before: before.members(),
            members_after: after.members(),
            members_lost,
            largest_lost: lost,
            lists_shrunk,
            largest_shrunk: shrunk,
        }
    }

    /// True when it loses more than `max` of the lists or of their members, or when
    /// one list of at least the floor lost more than `max_shrink` of its own.
    pub fn exceeds(&self, max: Share) -> bool {
        max.exceeded_by(self.lists_lost, self.lists_before)
            || max.exceeded_by(self.members_lost, self.members_before)
            || self.lists_shrunk > 0
    }

    /// Counts before and after, for the log, the alert and `directory refresh`.
    pub fn summary(&self) -> String {
        let share = |part: u64, whole: u64| {
            if whole == 0 {
                String::new()
            } else {
                format!(", {:.1}%", part as f64 * 100.0 / whole as f64)
            }
        };
        let mut out = format!(
            "lists {} -> {} ({} lost{}), list members {} -> {} ({} lost{})",
            self.lists_before,
            self.lists_after,
            self.lists_lost,
            share(self.lists_lost, self.lists_before),
            self.members_before,
            self.members_after,
            self.members_lost,
            share(self.members_lost, self.members_before)
        );
        if !self.largest_lost.is_empty() {
            let named: Vec<String> = self
                .largest_lost
                .iter()
                .map(|(a, n)| format!("{} ({n})", crate::text::neutralize(a)))
                .collect();
            out.push_str(&format!("; largest lost: {}", named.join(", ")));
        }
        if self.lists_shrunk > 0 {
            let named: Vec<String> = self
                .largest_shrunk
                .iter()
                .map(|(a, b, n)| format!("{} ({b} -> {n})", crate::text::neutralize(a)))
                .collect();
            out.push_str(&format!(
                "; {} list(s) lost more than max_shrink of their members: {}",
                self.lists_shrunk,
                named.join(", ")
            ));
        }
        out
    }
}

fn mail_addresses(l: &ListDef) -> impl Iterator<Item = &String> {
    std::iter::once(&l.address)
        .chain(&l.aliases)
        .filter(|a| a.contains('@') && !a.starts_with('@'))
}

/// The lists `new` no longer has: those that vanished earlier and are still gone,
/// and the addresses of `previous`'s lists that `new` lacks, from `new.taken_at` on.
pub fn vanished(previous: &Snapshot, new: &Snapshot, before: &Measure) -> Vec<Vanished> {
    let present: HashSet<&str> = new
        .lists
        .iter()
        .flat_map(mail_addresses)
        .map(String::as_str)
        .collect();
    let mut out: Vec<Vanished> = previous
        .vanished
        .iter()
        .filter(|v| !present.contains(v.address.as_str()))
        .cloned()
        .collect();
    let mut known: HashSet<String> = out.iter().map(|v| v.address.clone()).collect();
    for l in &previous.lists {
        let members = before.sizes.get(&l.address).copied().unwrap_or(0);
        for a in mail_addresses(l) {
            if !present.contains(a.as_str()) && known.insert(a.clone()) {
                out.push(Vanished {
                    address: a.clone(),
                    since: new.taken_at,
                    members,
                });
            }
        }
    }
    out
}

/// The lists that stand for `vanished` in a directory load: each has one unknown
/// member saying why, so `[expansion] on_unknown` applies to mail that reaches it.
pub fn vanished_lists(source: &str, vanished: &[Vanished], now: u64) -> Vec<ListDef> {
    vanished
        .iter()
        .map(|v| {
            let ago = std::time::Duration::from_secs(now.saturating_sub(v.since));
            ListDef {
                address: v.address.clone(),
                members: vec![Member::Unknown(format!(
                    "list vanished from LDAP source {source} {} ago ({} members before); \
                     `fanout-milter directory accept --source {source}` once it is really gone",
                    humantime::format_duration(ago),
                    v.members
                ))],
                origin: format!("ldap {source} (vanished list)"),
                ..ListDef::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(address: &str, members: &[&str]) -> ListDef {
        ListDef {
            address: address.into(),
            members: members
                .iter()
                .map(|m| Member::Address((*m).into()))
                .collect(),
            origin: "test".into(),
            ..ListDef::default()
        }
    }

    fn people(prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{prefix}{i}@corp.example"))
            .collect()
    }

    fn share(x: f64) -> Share {
        let text = format!(
            "[domains]\ninternal = [\"corp.example\"]\n[[directory]]\ntype = \"ldap\"\n\
             url = \"ldap://dc1\"\nbase_dns = [\"dc=corp\"]\ndomains = [\"corp.example\"]\n\
             max_shrink = {x:?}\n"
        );
        let c = crate::config::parse(&text, std::path::Path::new("/etc/f.toml")).expect("config");
        c.directories[0].ldap.as_ref().expect("ldap").max_shrink
    }

    /// 40 department lists of 50 and one flat all-staff list of 2,000.
    fn directory(with_all: bool, departments: usize) -> Vec<ListDef> {
        let staff = people("p", 2000);
        let mut lists: Vec<ListDef> = (0..departments)
            .map(|d| {
                let members: Vec<&str> = staff[d * 50..d * 50 + 50]
                    .iter()
                    .map(String::as_str)
                    .collect();
                list(&format!("dept{d}@corp.example"), &members)
            })
            .collect();
        if with_all {
            let all: Vec<&str> = staff.iter().map(String::as_str).collect();
            lists.push(list("all@corp.example", &all));
        }
        lists
    }

    #[test]
    fn one_big_list_gone_is_a_small_share_of_lists_but_a_large_share_of_members() {
        let before = Measure::of(&directory(true, 40), 10, 0);
        let after = Measure::of(&directory(false, 40), 10, 0);
        let s = Shrink::between(Some(&before), &after, u64::MAX, share(0.1));
        assert_eq!((s.lists_before, s.lists_after, s.lists_lost), (41, 40, 1));
        assert_eq!((s.members_before, s.members_lost), (4000, 2000));
        assert!(!share(0.1).exceeded_by(s.lists_lost, s.lists_before));
        assert!(s.exceeds(share(0.1)), "half the members: {}", s.summary());
        assert!(
            s.summary()
                .contains("largest lost: all@corp.example (2000)")
        );
        assert!(!s.exceeds(share(0.5)), "exactly half is not more than half");
    }

    /// Many lists keep the total high: one big list that keeps a few members is a
    /// small share of all members, but refused by the per-list guard.
    #[test]
    fn one_big_list_that_empties_is_refused_whatever_the_total() {
        let staff = people("p", 2000);
        let refs: Vec<&str> = staff.iter().map(String::as_str).collect();
        let mut before_lists: Vec<ListDef> = (0..30)
            .map(|i| list(&format!("copy{i}@corp.example"), &refs))
            .collect();
        before_lists.push(list("big@corp.example", &refs));
        let mut after_lists = before_lists.clone();
        *after_lists.last_mut().unwrap() = list("big@corp.example", &refs[..3]);
        let before = Measure::of(&before_lists, 10, 0);
        let after = Measure::of(&after_lists, 10, 0);
        let s = Shrink::between(Some(&before), &after, 1000, share(0.1));
        assert_eq!((s.members_before, s.members_lost), (62_000, 1997));
        assert!(!share(0.1).exceeded_by(s.members_lost, s.members_before));
        assert_eq!(s.lists_shrunk, 1);
        assert!(s.exceeds(share(0.1)), "{}", s.summary());
        assert!(
            s.summary().contains(
                "1 list(s) lost more than max_shrink of their members: big@corp.example (2000 -> 3)"
            ),
            "{}",
            s.summary()
        );
        let below_floor = Shrink::between(Some(&before), &after, 2001, share(0.1));
        assert_eq!(below_floor.lists_shrunk, 0, "smaller than the floor");
        assert!(!below_floor.exceeds(share(0.1)));
        let at_floor = Shrink::between(Some(&before), &after, 2000, share(0.1));
        assert_eq!(at_floor.lists_shrunk, 1, "at least the floor");
        let within = Shrink::between(Some(&before), &after, 1000, share(0.999));
        assert_eq!(within.lists_shrunk, 0, "1997 of 2000 is within 99.9%");
        let exact = {
            let mut l = before_lists.clone();
            *l.last_mut().unwrap() = list("big@corp.example", &refs[..1800]);
            Shrink::between(Some(&before), &Measure::of(&l, 10, 0), 1000, share(0.1))
        };
        assert_eq!(exact.lists_shrunk, 0, "exactly a tenth is not more");
    }

    #[test]
    fn a_small_loss_is_taken_and_an_empty_result_is_not() {
        let before = Measure::of(&directory(true, 40), 10, 0);
        let s = Shrink::between(
            Some(&before),
            &Measure::of(&directory(true, 39), 10, 0),
            u64::MAX,
            share(0.1),
        );
        assert_eq!((s.lists_lost, s.members_lost), (1, 50));
        assert!(!s.exceeds(share(0.1)), "{}", s.summary());
        assert!(s.exceeds(share(0.0)), "0 refuses any loss");
        let empty = Shrink::between(Some(&before), &Measure::default(), u64::MAX, share(0.1));
        assert!(empty.exceeds(share(0.1)));
        assert!(empty.exceeds(share(0.99)));
        assert!(!empty.exceeds(share(1.0)), "1 takes every refresh");
    }

    #[test]
    fn members_lost_inside_a_list_count_too() {
        let before = Measure::of(&[list("all@corp.example", &["a@x", "b@x", "c@x"])], 10, 0);
        let after = Measure::of(&[list("all@corp.example", &["a@x"])], 10, 0);
        let s = Shrink::between(Some(&before), &after, u64::MAX, share(0.1));
        assert_eq!((s.lists_lost, s.members_lost), (0, 2));
        assert!(s.exceeds(share(0.1)));
    }

    #[test]
    fn a_first_snapshot_is_refused_only_when_it_has_no_list() {
        assert!(Shrink::between(None, &Measure::default(), 0, share(0.1)).exceeds(share(0.1)));
        let some = Measure::of(&directory(false, 2), 10, 0);
        assert!(!Shrink::between(None, &some, 0, share(0.1)).exceeds(share(0.0)));
    }

    fn snapshot(lists: Vec<ListDef>, vanished: Vec<Vanished>, taken_at: u64) -> Snapshot {
        Snapshot {
            format: 1,
            source: "corp".into(),
            fingerprint: String::new(),
            taken_at,
            millis: 0,
            searches: 0,
            active_directory: false,
            stats: Default::default(),
            lists,
            vanished,
        }
    }

    #[test]
    fn vanished_lists_are_remembered_until_they_come_back() {
        let mut with_alias = list("all@corp.example", &["a@corp.example", "b@corp.example"]);
        with_alias.aliases = vec!["everyone@corp.example".into()];
        let unnamed = list("cn=nested,dc=corp", &["c@corp.example"]);
        let team = list("team@corp.example", &["a@corp.example"]);
        let first = snapshot(vec![with_alias.clone(), unnamed, team.clone()], vec![], 100);
        let second = snapshot(vec![team.clone()], vec![], 200);
        let gone = vanished(&first, &second, &Measure::of(&first.lists, 10, 0));
        assert_eq!(
            gone,
            [
                Vanished {
                    address: "all@corp.example".into(),
                    since: 200,
                    members: 2
                },
                Vanished {
                    address: "everyone@corp.example".into(),
                    since: 200,
                    members: 2
                },
            ],
            "addresses only: a group named by its DN receives no mail"
        );
        let second = snapshot(vec![team.clone()], gone, 200);
        let third = snapshot(vec![team.clone()], vec![], 300);
        let still = vanished(&second, &third, &Measure::of(&second.lists, 10, 0));
        assert_eq!(still.len(), 2);
        assert!(
            still.iter().all(|v| v.since == 200),
            "the first time counts"
        );
        let second = snapshot(vec![team.clone()], still, 300);
        let back = snapshot(vec![team, with_alias], vec![], 400);
        assert!(vanished(&second, &back, &Measure::of(&second.lists, 10, 0)).is_empty());

        let defs = vanished_lists("corp", &second.vanished, 200 + 3600);
        assert_eq!(defs.len(), 2);
        assert!(matches!(
            &defs[0].members[..],
            [Member::Unknown(why)] if why.contains("vanished from LDAP source corp 1h ago (2 members before)")
        ));
    }
}
