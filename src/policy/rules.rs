// SPDX-License-Identifier: GPL-3.0-or-later
//! The rules of the policy core. Each takes counts or facts and returns the reason it
//! fired, with the rule's own monitor flag, or nothing.

use super::verdict::{Action, Reason};
use super::{Counts, fmt_count};
use serde::Serialize;

/// Tag, quarantine and reject levels of one counting rule; 0 switches a level off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Levels {
    /// Add the verdict header at or above this count.
    pub tag: u64,
    /// Hold at or above this count.
    pub quarantine: u64,
    /// Refuse at or above this count.
    pub reject: u64,
    /// Only tag, whatever level is reached.
    pub monitor: bool,
}

impl Levels {
    /// The most severe level that `count` reaches, with that level's value.
    pub fn reached(&self, count: usize) -> Option<(Action, u64)> {
        let count = count as u64;
        [
            (Action::Reject, self.reject),
            (Action::Quarantine, self.quarantine),
            (Action::Tag, self.tag),
        ]
        .into_iter()
        .find(|&(_, level)| level > 0 && count >= level)
    }

    fn check(&self, rule: &'static str, count: usize, noun: &str) -> Option<(Reason, bool)> {
        let (action, level) = self.reached(count)?;
        let plural = if count == 1 { "" } else { "s" };
        let reason = Reason {
            rule,
            action,
            message: format!(
                "{} {noun}{plural} >= {action} level {}",
                fmt_count(count),
                fmt_count(level as usize)
            ),
            monitor: false,
        };
        Some((reason, self.monitor))
    }
}

/// `[limits.envelope]`: distinct envelope recipients.
pub fn envelope(levels: &Levels, counts: &Counts) -> Option<(Reason, bool)> {
    levels.check("limits.envelope", counts.envelope, "envelope recipient")
}

/// `[limits.external]`: envelope recipients outside the internal domains.
pub fn external(levels: &Levels, counts: &Counts) -> Option<(Reason, bool)> {
    levels.check("limits.external", counts.external, "external recipient")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reached_picks_the_highest_level() {
        let l = Levels {
            tag: 5,
            quarantine: 10,
            reject: 20,
            monitor: false,
        };
        assert_eq!(l.reached(4), None);
        assert_eq!(l.reached(5), Some((Action::Tag, 5)));
        assert_eq!(l.reached(10), Some((Action::Quarantine, 10)));
        assert_eq!(l.reached(19), Some((Action::Quarantine, 10)));
        assert_eq!(l.reached(20), Some((Action::Reject, 20)));
        assert_eq!(Levels::default().reached(usize::MAX), None);
    }

    #[test]
    fn singular_and_separators_in_messages() {
        let l = Levels {
            tag: 1,
            quarantine: 0,
            reject: 1000,
            monitor: true,
        };
        let counts = Counts {
            external: 1,
            envelope: 2500,
            ..Default::default()
        };
        let (r, monitor) = external(&l, &counts).unwrap();
        assert_eq!(r.message, "1 external recipient >= tag level 1");
        assert!(monitor);
        let (r, _) = envelope(&l, &counts).unwrap();
        assert_eq!(r.message, "2,500 envelope recipients >= reject level 1,000");
    }
}
