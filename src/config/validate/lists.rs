// SPDX-License-Identifier: GPL-3.0-or-later
//! `[[list]]`: lists named in the configuration itself.

use crate::config::ListSpec;
use crate::config::raw::RawList;
use crate::policy::address::{fold_case, normalize};
use crate::policy::{AddressGlobs, TrustedSenders};
use std::collections::HashMap;

/// Checks every `[[list]]`: the lists, and the senders each restricted list allows
/// (which belong to the policy).
pub(super) fn lists(
    raw: &[RawList],
    report: &mut impl FnMut(&str, String),
) -> (Vec<ListSpec>, HashMap<String, TrustedSenders>) {
    let mut lists = Vec::new();
    let mut restricted = HashMap::new();
    for (i, l) in raw.iter().enumerate() {
        let key = format!("list[{i}]");
        let address = fold_case(&normalize(&l.address));
        if !address.contains('@') || address.starts_with('@') {
            report(
                &format!("{key}.address"),
                format!("\"{}\" is not a list address (user@domain)", l.address),
            );
        }
        let restricted_by_name =
            l.allowed_senders.is_some() || l.allowed_envelope_senders.is_some();
        match (&l.members, l.member_count, restricted_by_name) {
            (Some(_), Some(_), _) => report(
                &format!("{key}.member_count"),
                "give members or member_count, not both".into(),
            ),
            (None, None, false) => report(
                &key,
                "needs members, member_count, allowed_senders or allowed_envelope_senders".into(),
            ),
            _ => {}
        }
        let mut globs = |name: &str, patterns: &Option<Vec<String>>| {
            let patterns = patterns.as_deref().unwrap_or_default();
            AddressGlobs::new(patterns).unwrap_or_else(|(j, e)| {
                report(
                    &format!("{key}.{name}[{j}]"),
                    format!("invalid pattern: {e}"),
                );
                AddressGlobs::default()
            })
        };
        if restricted_by_name {
            let allowed = TrustedSenders {
                logins: globs("allowed_senders", &l.allowed_senders),
                envelope: globs("allowed_envelope_senders", &l.allowed_envelope_senders),
            };
            restricted.insert(address.clone(), allowed);
        }
        lists.push(ListSpec {
            address,
            members: l
                .members
                .as_ref()
                .map(|m| m.iter().map(|a| fold_case(&normalize(a))).collect()),
            member_count: l.member_count,
        });
    }
    (lists, restricted)
}
