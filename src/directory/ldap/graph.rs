// SPDX-License-Identifier: GPL-3.0-or-later
//! Turns fetched entries into the list graph every source feeds: groups become lists
//! (named by their primary address, or by their DN when they have none), people become
//! mailboxes, member DNs are joined locally. Dangling members, empty groups and dynamic
//! lists that failed or matched nothing become unknown members, never one recipient.
//! Pure: no I/O.

use super::fetch::{Fetched, Item, Node, dynamic_queries};
use crate::config::ldap::LdapSettings;
use crate::directory::source::{ListDef, Member};
use crate::policy::address::fold_case;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Counts of one snapshot, for the log and `directory refresh`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphStats {
    /// Entries read.
    pub entries: u64,
    /// Of those, lists.
    pub lists: u64,
    /// Of those, dynamic (URL or filter) lists.
    pub dynamic_lists: u64,
    /// Member DNs not found in the snapshot.
    pub dangling: u64,
    /// Lists with no countable member.
    pub empty: u64,
    /// Dynamic queries that failed or matched nothing.
    pub dynamic_unknown: u64,
    /// Member DNs whose entry has no address.
    pub no_address: u64,
    /// Lists that name themselves as a member (not counted).
    pub self_members: u64,
    /// Member lists outside `base_dns`, whose members were not read.
    pub outside_lists: u64,
}

/// Builds the lists of a snapshot, consuming what was fetched: each list's members
/// are freed as soon as its definition is built.
pub fn build(f: Fetched, s: &LdapSettings, source: &str) -> (Vec<ListDef>, GraphStats) {
    let mut stats = GraphStats {
        entries: f.nodes.len() as u64,
        ..GraphStats::default()
    };
    let mut queries: HashMap<usize, Vec<Result<super::fetch::DynamicQuery, String>>> =
        HashMap::new();
    for (i, q) in dynamic_queries(s, &f.lists) {
        queries.entry(i).or_default().push(q);
    }
    let Fetched {
        nodes,
        lists: items,
        by_key,
        by_dn,
        dns,
        dynamic,
        outside,
        ..
    } = f;
    let outside: HashMap<u128, &Item> = outside.iter().map(|e| (dns.hash(&e.dn), e)).collect();

    // A member entry (found in the snapshot, or matched by a dynamic query) as a member.
    let as_member = |n: &Node, dn: &str, stats: &mut GraphStats| {
        if n.group || n.has_address {
            Member::Address(n.name.clone())
        } else {
            stats.no_address += 1;
            Member::NonMailbox(format!("{dn} (no address)"))
        }
    };

    let mut lists = Vec::with_capacity(items.len());
    for (position, (i, e)) in items.into_iter().enumerate() {
        let i = i as usize;
        let me = &nodes[i];
        let Some(parts) = &e.list else { continue };
        stats.lists += 1;
        let mut members = Vec::new();
        for dn in parts.member_dns.iter() {
            let key = dns.hash(dn);
            match (by_dn.get(&key).map(|j| j as usize), outside.get(&key)) {
                (Some(j), _) if j == i => stats.self_members += 1,
                (Some(j), _) => members.push(as_member(&nodes[j], dn, &mut stats)),
                (None, Some(e)) => {
                    let n = Node::of(e);
                    if n.group {
                        stats.outside_lists += 1;
                        members.push(Member::Unknown(format!(
                            "member list {dn} of {} is outside base_dns",
                            me.name
                        )));
                    } else {
                        members.push(as_member(&n, dn, &mut stats));
                    }
                }
                (None, None) => {
                    stats.dangling += 1;
                    members.push(Member::Unknown(format!(
                        "member {dn} of {} is not in the directory",
                        me.name
                    )));
                }
            }
        }
        for v in &parts.literals {
            let v = fold_case(v.trim());
            if v.contains('@') {
                members.push(Member::Address(v.into()));
            } else {
                members.push(Member::Unknown(format!(
                    "literal member \"{v}\" of {} is not an address",
                    me.name
                )));
            }
        }
        if let Some(qs) = queries.get(&position) {
            stats.dynamic_lists += 1;
            for q in qs {
                let found = match q {
                    Ok(q) => match dynamic.get(q) {
                        Some(Ok(found)) => Ok((q, found.as_slice())),
                        Some(Err(why)) => Err(why.clone()),
                        None => Err("not searched".into()),
                    },
                    Err(e) => Err(e.clone()),
                };
                match found {
                    Ok((q, [])) => {
                        stats.dynamic_unknown += 1;
                        members.push(Member::Unknown(format!(
                            "dynamic list {}: {} below {} matched no entry",
                            me.name, q.filter, q.base
                        )));
                    }
                    Ok((_, found)) => {
                        for m in found {
                            let member = match by_key.get(&m.key).map(|j| j as usize) {
                                Some(j) if j == i => continue,
                                Some(j) => as_member(&nodes[j], &m.dn, &mut stats),
                                None => as_member(&Node::of(m), &m.dn, &mut stats),
                            };
                            members.push(member);
                        }
                    }
                    Err(why) => {
                        stats.dynamic_unknown += 1;
                        members.push(Member::Unknown(format!("dynamic list {}: {why}", me.name)));
                    }
                }
            }
        }
        if members.is_empty() {
            stats.empty += 1;
            members.push(Member::Unknown(format!(
                "{} has no readable member",
                me.name
            )));
        }
        let aliases = e.addresses.iter().skip(1).cloned().collect();
        lists.push(ListDef {
            address: me.name.to_string(),
            aliases,
            members,
            origin: format!("{source} {}", e.dn),
        });
    }
    (lists, stats)
}
