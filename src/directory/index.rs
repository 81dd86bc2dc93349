// SPDX-License-Identifier: GPL-3.0-or-later
//! The directory index: every list expanded once, at load, into its distinct final
//! mailboxes, so that a message's audience is a few hash lookups and merges.

use super::source::{ListDef, Member};
use crate::policy::DomainSet;
use crate::policy::address::{RecipientDelimiter, domain_of, fold_case};
use indexmap::IndexSet;
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How lists are expanded.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Nesting deeper than this is not followed (the audience is then "at least").
    pub max_depth: usize,
    /// Internal domains, for the internal/external split.
    pub internal: DomainSet,
    /// A list's distinct mailboxes are counted up to this many, then it is "at least"
    /// this many (0: no cap).
    pub max_audience: u64,
    /// Postfix's `recipient_delimiter`: `list+tag@domain` is looked up as itself, then
    /// as `list@domain`, as Postfix's table lookups do.
    pub recipient_delimiter: RecipientDelimiter,
}

/// One list, fully expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListAudience {
    /// The list address.
    pub address: Arc<str>,
    /// Distinct final mailboxes, sorted ids into the directory's name table.
    pub mailboxes: Box<[u32]>,
    /// Members known only by count (`member_count` lists), summed over nested lists.
    pub opaque: u64,
    /// Pipes, files and other targets that reach no mailbox.
    pub non_mailbox: u64,
    /// Mailboxes outside the internal domains.
    pub external_mailboxes: u64,
    /// Opaque members of lists whose own address is outside the internal domains.
    pub external_opaque: u64,
    /// Lists nested below this one (each counted once).
    pub nested_lists: u32,
    /// Cycles met, as paths (`a -> b -> a`); each mailbox still counts once.
    pub cycles: Vec<String>,
    /// True when nesting went deeper than the limit, so the audience is a lower bound.
    pub depth_exceeded: bool,
    /// True when counting stopped at the audience cap, so the audience is a lower bound.
    pub capped: bool,
    /// Members that could not be counted (dangling references, empty groups, failed
    /// dynamic lists), over the whole expansion.
    pub unknown: u64,
    /// Why, for the first few of them.
    pub unknown_reasons: Vec<String>,
    /// Set when a source this list comes from cannot be used now: why.
    pub unavailable: Option<String>,
    /// Mailboxes per domain, largest first.
    pub domains: Arc<[(Arc<str>, u64)]>,
    /// Where the list is defined.
    pub origin: String,
}

impl ListAudience {
    /// Final mailboxes this list reaches.
    pub fn total(&self) -> u64 {
        self.mailboxes.len() as u64 + self.opaque
    }

    /// Of those, outside the internal domains.
    pub fn external(&self) -> u64 {
        self.external_mailboxes + self.external_opaque
    }

    /// True when the count is a lower bound (depth limit or audience cap).
    pub fn lower_bound(&self) -> bool {
        self.depth_exceeded || self.capped
    }
}

/// How many reasons for unknown members a list keeps.
const MAX_UNKNOWN_REASONS: usize = 5;

#[derive(Debug)]
struct Node {
    members: Vec<u32>,
    non_mailbox: u64,
    opaque: u64,
    unknown: Vec<String>,
    unavailable: Option<String>,
    origin: String,
}

/// Counts of one load, for the log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Lists and aliases.
    pub lists: usize,
    /// Distinct addresses (lists and mailboxes).
    pub addresses: usize,
    /// List edges read.
    pub edges: usize,
    /// Lists with a cycle below them.
    pub lists_with_cycles: usize,
    /// Lists whose nesting exceeded the depth limit.
    pub lists_too_deep: usize,
    /// Lists counted only up to the audience cap.
    pub lists_capped: usize,
    /// Lists with members that could not be counted.
    pub lists_with_unknown: usize,
}

/// The addresses of the index, interned: ids in order of first sight, the text of
/// all of them in one buffer, and a table of ids (about 30 bytes an address where a
/// set of boxed strings costs about 90).
#[derive(Debug, Default)]
struct Names {
    text: String,
    ends: Vec<u32>,
    table: hashbrown::HashTable<u32>,
    hasher: std::hash::RandomState,
}

impl Names {
    fn hash(&self, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(name)
    }

    fn name(&self, id: u32) -> &str {
        let id = id as usize;
        let Some(&end) = self.ends.get(id) else {
            return "";
        };
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.table
            .find(self.hash(name), |&id| self.name(id) == name)
            .copied()
    }

    /// Adds a name that is not there yet; its id.
    fn insert(&mut self, name: &str) -> u32 {
        let id = u32::try_from(self.ends.len()).expect("fewer than 2^32 addresses");
        self.text.push_str(name);
        self.ends
            .push(u32::try_from(self.text.len()).expect("under 4 GiB of addresses"));
        let hash = self.hash(name);
        let (text, ends, hasher) = (&self.text, &self.ends, &self.hasher);
        self.table.insert_unique(hash, id, |&id| {
            use std::hash::BuildHasher;
            let id = id as usize;
            let start = if id == 0 { 0 } else { ends[id - 1] as usize };
            hasher.hash_one(&text[start..ends[id] as usize])
        });
        id
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Releases spare capacity once the index is built.
    fn shrink(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
        let (text, ends, hasher) = (&self.text, &self.ends, &self.hasher);
        self.table.shrink_to_fit(|&id| {
            use std::hash::BuildHasher;
            let id = id as usize;
            let start = if id == 0 { 0 } else { ends[id - 1] as usize };
            hasher.hash_one(&text[start..ends[id] as usize])
        });
    }
}

/// The merged, expanded lists of every source.
#[derive(Debug)]
pub struct DirectoryIndex {
    names: Names,
    domains: IndexSet<Arc<str>>,
    name_domain: Vec<u32>,
    domain_internal: Vec<bool>,
    internal: DomainSet,
    nodes: HashMap<u32, Node>,
    alias_of: HashMap<u32, u32>,
    catch_all: HashMap<Box<str>, Vec<Member>>,
    audiences: HashMap<u32, Arc<ListAudience>>,
    delimiter: RecipientDelimiter,
    /// Lists defined twice, with the origin that was used and the one ignored.
    pub shadowed: Vec<String>,
    /// Load counts.
    pub stats: IndexStats,
}

const NO_DOMAIN: u32 = u32::MAX;

/// How one envelope recipient resolves.
#[derive(Clone, Debug)]
pub enum Resolved {
    /// A list or alias.
    List(Arc<ListAudience>),
    /// A final mailbox.
    Mailbox(String),
    /// An address the directory cannot count now (a catch-all of an unreadable
    /// source): why.
    Unavailable(String),
}

/// The real audience of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    /// Distinct final mailboxes over all recipients, plus opaque members.
    pub total: u64,
    /// Of those, outside the internal domains.
    pub external: u64,
    /// Lists among the recipients, largest first.
    pub lists: Vec<Arc<ListAudience>>,
    /// Non-mailbox targets reached.
    pub non_mailbox: u64,
    /// True when part of the audience could not be counted exactly (depth limit,
    /// audience cap).
    pub lower_bound: bool,
    /// Members of the lists that could not be counted at all.
    pub unknown: u64,
    /// Set when a recipient's source cannot be used now: why.
    pub unavailable: Option<String>,
    /// True when some lists were counted whole, without removing the members they
    /// share with larger lists ([`MERGE_BUDGET`]): the total is then an over-estimate.
    pub overestimated: bool,
}

/// How many list members one message's audience merge checks against the largest
/// list: beyond it, further lists count whole (an over-estimate, never an under-count)
/// so that a message naming many large lists cannot hold the milter thread for seconds.
pub const MERGE_BUDGET: usize = 250_000;

impl DirectoryIndex {
    /// Builds the index: the first definition of an address wins (as with several
    /// Postfix maps), every list is expanded once.
    pub fn build(defs: Vec<ListDef>, options: &IndexOptions) -> DirectoryIndex {
        Self::build_from(defs, options)
    }

    /// [`DirectoryIndex::build`] from owned or borrowed definitions: each is read once,
    /// and an owned one is dropped as soon as it is read, so the definitions and the
    /// index are never both whole in memory.
    pub fn build_from<D: Borrow<ListDef>>(
        defs: impl IntoIterator<Item = D>,
        options: &IndexOptions,
    ) -> DirectoryIndex {
        let mut index = DirectoryIndex {
            names: Names::default(),
            domains: IndexSet::new(),
            name_domain: Vec::new(),
            domain_internal: Vec::new(),
            internal: options.internal.clone(),
            nodes: HashMap::new(),
            alias_of: HashMap::new(),
            catch_all: HashMap::new(),
            audiences: HashMap::new(),
            delimiter: options.recipient_delimiter.clone(),
            shadowed: Vec::new(),
            stats: IndexStats::default(),
        };
        let mut first_origin: HashMap<String, String> = HashMap::new();
        let mut aliases: Vec<(String, String, u32)> = Vec::new();
        for owned in defs {
            let def: &ListDef = owned.borrow();
            if let Some(first) = first_origin.get(&def.address) {
                index.shadowed.push(format!(
                    "{} is defined at {} and again at {}; the first is used",
                    def.address, first, def.origin
                ));
                continue;
            }
            first_origin.insert(def.address.clone(), def.origin.clone());
            index.stats.edges += def.members.len();
            if let Some(domain) = def.address.strip_prefix('@') {
                index.catch_all.insert(domain.into(), def.members.clone());
                continue;
            }
            let id = index.intern(&def.address);
            for alias in &def.aliases {
                aliases.push((alias.clone(), def.origin.clone(), id));
            }
            let mut node = Node {
                members: Vec::with_capacity(def.members.len()),
                non_mailbox: 0,
                opaque: 0,
                unknown: Vec::new(),
                unavailable: None,
                origin: def.origin.clone(),
            };
            for m in &def.members {
                match m {
                    Member::Address(a) => node.members.push(index.intern(a)),
                    Member::NonMailbox(_) => node.non_mailbox += 1,
                    Member::Count(n) => node.opaque += n,
                    Member::Unknown(why) => node.unknown.push(why.clone()),
                    Member::Unavailable(why) => {
                        node.unavailable.get_or_insert_with(|| why.clone());
                    }
                }
            }
            index.nodes.insert(id, node);
        }
        for (alias, origin, id) in aliases {
            if let Some(first) = first_origin.get(&alias) {
                index.shadowed.push(format!(
                    "{alias} is defined at {first} and is also an address of the list at \
                     {origin}; the first is used"
                ));
                continue;
            }
            first_origin.insert(alias.clone(), origin);
            let alias_id = index.intern(&alias);
            index.alias_of.insert(alias_id, id);
        }
        let ids: Vec<u32> = index.nodes.keys().copied().collect();
        for id in ids {
            let audience = index.expand(id, options);
            let s = &mut index.stats;
            s.lists_with_cycles += usize::from(!audience.cycles.is_empty());
            s.lists_too_deep += usize::from(audience.depth_exceeded);
            s.lists_capped += usize::from(audience.capped);
            s.lists_with_unknown += usize::from(audience.unknown > 0);
            index.audiences.insert(id, Arc::new(audience));
        }
        let aliased: Vec<(u32, u32)> = index.alias_of.iter().map(|(&a, &l)| (a, l)).collect();
        for (alias, list) in aliased {
            if let Some(audience) = index.audiences.get(&list).cloned() {
                index.audiences.insert(alias, audience);
            }
        }
        index.stats.lists = index.nodes.len() + index.catch_all.len();
        index.stats.addresses = index.names.len();
        index.names.shrink();
        index.name_domain.shrink_to_fit();
        index
    }

    fn intern(&mut self, addr: &str) -> u32 {
        if let Some(id) = self.names.get(addr) {
            return id;
        }
        let domain = match domain_of(addr) {
            Some(d) => match self.domains.get_index_of(d) {
                Some(i) => i as u32,
                None => {
                    let (i, _) = self.domains.insert_full(Arc::from(d));
                    self.domain_internal.push(self.internal.contains(d));
                    i as u32
                }
            },
            None => NO_DOMAIN,
        };
        let id = self.names.insert(addr);
        self.name_domain.push(domain);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names.name(id)
    }

    fn is_external_id(&self, id: u32) -> bool {
        match self.name_domain.get(id as usize) {
            Some(&NO_DOMAIN) | None => false,
            Some(&d) => !self.domain_internal[d as usize],
        }
    }

    /// Depth-first expansion of one list with a visited set: cycles and repeated
    /// paths are noted, never followed twice, and every mailbox counts once.
    fn expand(&self, root: u32, options: &IndexOptions) -> ListAudience {
        let max_depth = options.max_depth;
        let cap = usize::try_from(options.max_audience).unwrap_or(usize::MAX);
        let mut mailboxes: Vec<u32> = Vec::new();
        let mut seen: HashSet<u32> = HashSet::from([root]);
        let mut path: Vec<(u32, usize)> = vec![(root, 0)];
        let mut a = ListAudience {
            address: Arc::from(self.name(root)),
            mailboxes: Box::new([]),
            opaque: 0,
            non_mailbox: 0,
            external_mailboxes: 0,
            external_opaque: 0,
            nested_lists: 0,
            cycles: Vec::new(),
            depth_exceeded: false,
            capped: false,
            unknown: 0,
            unknown_reasons: Vec::new(),
            unavailable: None,
            domains: Arc::new([]),
            origin: self.nodes[&root].origin.clone(),
        };
        let add_node = |a: &mut ListAudience, node: &Node| {
            a.opaque += node.opaque;
            a.non_mailbox += node.non_mailbox;
            a.unknown += node.unknown.len() as u64;
            for why in &node.unknown {
                if a.unknown_reasons.len() < MAX_UNKNOWN_REASONS {
                    a.unknown_reasons.push(why.clone());
                }
            }
            if a.unavailable.is_none() {
                a.unavailable.clone_from(&node.unavailable);
            }
        };
        add_node(&mut a, &self.nodes[&root]);
        while let Some(&mut (list, ref mut next)) = path.last_mut() {
            let node = &self.nodes[&list];
            let Some(&member) = node.members.get(*next) else {
                path.pop();
                continue;
            };
            *next += 1;
            let member = self.alias_of.get(&member).copied().unwrap_or(member);
            if member == list || !self.nodes.contains_key(&member) {
                // Postfix delivers an alias that lists itself to itself.
                mailboxes.push(member);
                if cap > 0 && mailboxes.len() >= cap.saturating_mul(2) {
                    mailboxes.sort_unstable();
                    mailboxes.dedup();
                    if mailboxes.len() > cap {
                        a.capped = true;
                        break;
                    }
                }
            } else if path.iter().any(|&(l, _)| l == member) {
                if a.cycles.len() < 10 {
                    let mut names: Vec<&str> = path
                        .iter()
                        .skip_while(|&&(l, _)| l != member)
                        .map(|&(l, _)| self.name(l))
                        .collect();
                    names.push(self.name(member));
                    a.cycles.push(names.join(" -> "));
                }
            } else if seen.insert(member) {
                if path.len() > max_depth {
                    a.depth_exceeded = true;
                    continue;
                }
                a.nested_lists += 1;
                add_node(&mut a, &self.nodes[&member]);
                path.push((member, 0));
            }
        }
        mailboxes.sort_unstable();
        mailboxes.dedup();
        if cap > 0 && mailboxes.len() > cap {
            mailboxes.truncate(cap);
            a.capped = true;
        }
        let mut per_domain: HashMap<u32, u64> = HashMap::new();
        for &m in &mailboxes {
            *per_domain.entry(self.name_domain[m as usize]).or_default() += 1;
            if self.is_external_id(m) {
                a.external_mailboxes += 1;
            }
        }
        if a.opaque > 0 && domain_of(&a.address).is_some_and(|d| !self.internal.contains(d)) {
            a.external_opaque = a.opaque;
        }
        let mut domains: Vec<(Arc<str>, u64)> = per_domain
            .into_iter()
            .map(|(d, n)| match self.domains.get_index(d as usize) {
                Some(name) => (name.clone(), n),
                None => (Arc::from(""), n),
            })
            .collect();
        domains.sort_unstable_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        a.domains = domains.into();
        a.mailboxes = mailboxes.into_boxed_slice();
        a
    }

    /// The list key an address finds, as Postfix's table lookups find it: the address
    /// itself, then (with a `recipient_delimiter`) the address without its extension;
    /// case folded with [`fold_case`], as the keys were.
    fn key_id(&self, folded: &str) -> Option<u32> {
        let exact = |a: &str| {
            self.names
                .get(a)
                .filter(|id| self.audiences.contains_key(id))
        };
        exact(folded).or_else(|| exact(&self.delimiter.strip(folded)?))
    }

    /// The list key an address resolves to (itself, or without its extension), if it
    /// names a list or another address of one.
    pub fn list_key(&self, address: &str) -> Option<&str> {
        self.key_id(&fold_case(address)).map(|id| self.name(id))
    }

    /// The expanded list at an address (`list+tag@` finds `list@`), if it is one.
    pub fn list(&self, address: &str) -> Option<&Arc<ListAudience>> {
        let id = self.key_id(&fold_case(address))?;
        self.audiences.get(&id)
    }

    /// The list an address names, if it is another address of one (a directory
    /// group's secondary address).
    pub fn canonical(&self, address: &str) -> Option<&str> {
        let id = self.key_id(&fold_case(address))?;
        self.alias_of.get(&id).map(|&l| self.name(l))
    }

    /// Resolves one address as Postfix's virtual(5) lookups would: `user+ext@domain`,
    /// `user@domain`, then the `@domain` catch-all (whose `@other` target keeps the
    /// whole local part, extension included), else a final mailbox. An extension that
    /// Postfix propagates to the list's members reaches the same mailboxes, so the list
    /// is counted as it is.
    pub fn resolve(&self, address: &str) -> Vec<Resolved> {
        let folded = fold_case(address);
        if let Some(list) = self.key_id(&folded).and_then(|id| self.audiences.get(&id)) {
            return vec![Resolved::List(list.clone())];
        }
        if let Some(domain) = domain_of(&folded)
            && let Some(targets) = self.catch_all.get(domain)
        {
            let local = &folded[..folded.len() - domain.len() - 1];
            return targets
                .iter()
                .filter_map(|t| match t {
                    Member::Address(t) => {
                        let target = match t.strip_prefix('@') {
                            Some(d) => format!("{local}@{d}"),
                            None => t.to_string(),
                        };
                        Some(match self.list(&target) {
                            Some(l) => Resolved::List(l.clone()),
                            None => Resolved::Mailbox(target),
                        })
                    }
                    Member::Unavailable(why) | Member::Unknown(why) => {
                        Some(Resolved::Unavailable(why.clone()))
                    }
                    Member::NonMailbox(_) | Member::Count(_) => None,
                })
                .collect();
        }
        vec![Resolved::Mailbox(folded)]
    }

    /// The deduplicated audience of a set of envelope recipients (within
    /// [`MERGE_BUDGET`]).
    pub fn audience<'a>(&self, recipients: impl IntoIterator<Item = &'a str>) -> Audience {
        self.audience_within(recipients, MERGE_BUDGET)
    }

    fn audience_within<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a str>,
        mut budget: usize,
    ) -> Audience {
        let mut lists: Vec<Arc<ListAudience>> = Vec::new();
        let mut direct: Vec<String> = Vec::new();
        let mut out = Audience::default();
        for r in recipients {
            for resolved in self.resolve(r) {
                match resolved {
                    Resolved::List(l) => {
                        if !lists.iter().any(|x| Arc::ptr_eq(x, &l)) {
                            lists.push(l);
                        }
                    }
                    Resolved::Mailbox(m) => direct.push(m),
                    Resolved::Unavailable(why) => {
                        out.unavailable.get_or_insert(why);
                        direct.push(fold_case(r));
                    }
                }
            }
        }
        lists.sort_by(|x, y| {
            y.total()
                .cmp(&x.total())
                .then_with(|| x.address.cmp(&y.address))
        });

        let base: &[u32] = lists.first().map_or(&[], |l| &l.mailboxes);
        let mut extra_ids: HashSet<u32> = HashSet::new();
        for l in &lists {
            out.total += l.opaque;
            out.external += l.external_opaque;
            out.non_mailbox += l.non_mailbox;
            out.lower_bound |= l.lower_bound();
            out.unknown += l.unknown;
            if out.unavailable.is_none() {
                out.unavailable.clone_from(&l.unavailable);
            }
        }
        if let Some(first) = lists.first() {
            out.total += first.mailboxes.len() as u64;
            out.external += first.external_mailboxes;
        }
        for l in lists.iter().skip(1) {
            if l.mailboxes.len() > budget {
                budget = 0;
                out.overestimated = true;
                out.total += l.mailboxes.len() as u64;
                out.external += l.external_mailboxes;
                continue;
            }
            budget -= l.mailboxes.len();
            for &m in l.mailboxes.iter() {
                if base.binary_search(&m).is_err() {
                    extra_ids.insert(m);
                }
            }
        }
        let mut extra_names: HashSet<String> = HashSet::new();
        for m in direct {
            match self.names.get(m.as_str()) {
                Some(id) if base.binary_search(&id).is_ok() => {}
                Some(id) => {
                    extra_ids.insert(id);
                }
                None => {
                    if !self.internal.is_internal(&m) && !extra_names.contains(&m) {
                        out.external += 1;
                    }
                    extra_names.insert(m);
                }
            }
        }
        out.total += (extra_ids.len() + extra_names.len()) as u64;
        out.external += extra_ids
            .iter()
            .filter(|&&m| self.is_external_id(m))
            .count() as u64;
        out.lists = lists;
        out
    }

    /// The `recipient_delimiter` lookups use.
    pub fn recipient_delimiter(&self) -> &RecipientDelimiter {
        &self.delimiter
    }

    /// The name of a mailbox id.
    pub fn mailbox_name(&self, id: u32) -> &str {
        self.name(id)
    }

    /// The lists directly nested in a list, with their expanded sizes, for `lookup`.
    pub fn children(&self, list: &ListAudience) -> Vec<Arc<ListAudience>> {
        let Some(id) = self.names.get(&list.address) else {
            return Vec::new();
        };
        let Some(node) = self.nodes.get(&id) else {
            return Vec::new();
        };
        let mut out: Vec<Arc<ListAudience>> = Vec::new();
        for m in &node.members {
            if *m != id
                && let Some(a) = self.audiences.get(m)
                && !out.iter().any(|x| Arc::ptr_eq(x, a))
            {
                out.push(a.clone());
            }
        }
        out
    }

    /// Every expanded list (for drift bookkeeping).
    pub fn lists(&self) -> impl Iterator<Item = &Arc<ListAudience>> {
        self.audiences.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(address: &str, members: &[&str]) -> ListDef {
        ListDef {
            address: address.into(),
            aliases: Vec::new(),
            members: members
                .iter()
                .map(|m| match m.strip_prefix('#') {
                    Some(n) => Member::Count(n.parse().expect("count")),
                    None if m.starts_with('|') => Member::NonMailbox((*m).into()),
                    None => Member::Address((*m).into()),
                })
                .collect(),
            origin: format!("test:{address}"),
        }
    }

    fn options() -> IndexOptions {
        IndexOptions {
            max_depth: 10,
            internal: DomainSet::new(["corp.example"]).expect("domains"),
            max_audience: 0,
            recipient_delimiter: RecipientDelimiter::new("+"),
        }
    }

    fn total(index: &DirectoryIndex, rcpts: &[&str]) -> u64 {
        index.audience(rcpts.iter().copied()).total
    }

    #[test]
    fn nested_lists_are_expanded_and_deduplicated() {
        let index = DirectoryIndex::build(
            vec![
                def(
                    "all@corp.example",
                    &["a@corp.example", "team@corp.example", "b@corp.example"],
                ),
                def(
                    "team@corp.example",
                    &["b@corp.example", "c@corp.example", "x@ext.example"],
                ),
            ],
            &options(),
        );
        let all = index.list("ALL@corp.example").expect("list");
        assert_eq!(all.total(), 4);
        assert_eq!(all.nested_lists, 1);
        assert_eq!(all.external(), 1);
        assert_eq!(&*all.domains[0].0, "corp.example");
        assert_eq!(all.domains[0].1, 3);
        let a = index.audience([
            "all@corp.example",
            "team@corp.example",
            "c@corp.example",
            "new@ext.example",
        ]);
        assert_eq!(
            a.total, 5,
            "duplicates across lists and direct recipients count once"
        );
        assert_eq!(a.external, 2);
        assert_eq!(&*a.lists[0].address, "all@corp.example");
        assert_eq!(a.lists.len(), 2);
        assert_eq!(index.stats.lists, 2);
    }

    #[test]
    fn cycles_are_reported_and_counted_once() {
        let index = DirectoryIndex::build(
            vec![
                def("a@corp.example", &["b@corp.example", "m1@corp.example"]),
                def(
                    "b@corp.example",
                    &["a@corp.example", "m2@corp.example", "m1@corp.example"],
                ),
                def(
                    "self@corp.example",
                    &["self@corp.example", "m3@corp.example"],
                ),
            ],
            &options(),
        );
        let a = index.list("a@corp.example").expect("list");
        assert_eq!(a.total(), 2);
        assert_eq!(
            a.cycles,
            ["a@corp.example -> b@corp.example -> a@corp.example"]
        );
        let s = index.list("self@corp.example").expect("list");
        assert_eq!(s.total(), 2, "an alias listing itself delivers to itself");
        assert!(s.cycles.is_empty());
        assert_eq!(index.stats.lists_with_cycles, 2);
    }

    #[test]
    fn very_deep_nesting_stops_at_the_limit() {
        let mut defs = Vec::new();
        for i in 0..50 {
            defs.push(def(
                &format!("l{i}@corp.example"),
                &[
                    &format!("l{}@corp.example", i + 1),
                    &format!("m{i}@corp.example"),
                ],
            ));
        }
        let index = DirectoryIndex::build(defs, &options());
        let top = index.list("l0@corp.example").expect("list");
        assert!(top.depth_exceeded);
        assert_eq!(top.total(), 11, "lists l0..l10 are followed");
        assert!(index.audience(["l0@corp.example"]).lower_bound);
        let near = index.list("l45@corp.example").expect("list");
        assert!(!near.depth_exceeded);
        assert_eq!(
            near.total(),
            6,
            "l45..l49 each add one mailbox, l50 is one more"
        );
    }

    #[test]
    fn the_audience_cap_makes_a_lower_bound() {
        let members: Vec<String> = (0..1000).map(|i| format!("m{i}@corp.example")).collect();
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let index = DirectoryIndex::build(
            vec![
                def("big@corp.example", &refs),
                def("small@corp.example", &refs[..10]),
            ],
            &IndexOptions {
                max_audience: 100,
                ..options()
            },
        );
        let big = index.list("big@corp.example").expect("big");
        assert!(big.capped && big.lower_bound());
        assert_eq!(big.total(), 100, "counted up to the cap");
        let small = index.list("small@corp.example").expect("small");
        assert!(!small.capped);
        assert_eq!(small.total(), 10);
        let a = index.audience(["big@corp.example"]);
        assert!(a.lower_bound);
        assert_eq!(index.stats.lists_capped, 1);
    }

    #[test]
    fn counts_non_mailboxes_and_opaque_members() {
        let index = DirectoryIndex::build(
            vec![
                def("dyn@corp.example", &["#840000"]),
                def("ext@partner.example", &["#10"]),
                def(
                    "arch@corp.example",
                    &["|/usr/bin/archive", "a@corp.example"],
                ),
            ],
            &options(),
        );
        let a = index.audience([
            "dyn@corp.example",
            "ext@partner.example",
            "arch@corp.example",
        ]);
        assert_eq!(a.total, 840_011);
        assert_eq!(a.external, 10);
        assert_eq!(a.non_mailbox, 1);
        assert_eq!(&*a.lists[0].address, "dyn@corp.example");
    }

    #[test]
    fn first_definition_wins_and_catch_all_resolves() {
        let index = DirectoryIndex::build(
            vec![
                def("l@corp.example", &["a@corp.example"]),
                def("l@corp.example", &["b@corp.example", "c@corp.example"]),
                def("@old.example", &["@corp.example"]),
                def("@gone.example", &["l@corp.example"]),
            ],
            &options(),
        );
        assert_eq!(index.list("l@corp.example").expect("list").total(), 1);
        assert_eq!(index.shadowed.len(), 1);
        assert!(index.shadowed[0].contains("first is used"));
        assert_eq!(total(&index, &["x@old.example", "x@corp.example"]), 1);
        assert_eq!(total(&index, &["y@gone.example"]), 1);
        assert_eq!(index.audience(["y@gone.example"]).lists.len(), 1);
        assert_eq!(total(&index, &["plain@corp.example"]), 1);
    }

    fn biglists(delimiter: &str) -> DirectoryIndex {
        let members: Vec<String> = (0..300).map(|i| format!("m{i}@corp.example")).collect();
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        DirectoryIndex::build(
            vec![
                def("all-staff@corp.example", &refs),
                def("@old.example", &["@corp.example"]),
                def("@gone.example", &["all-staff@corp.example"]),
                def("owner-all@corp.example", &["m1@corp.example"]),
            ],
            &IndexOptions {
                recipient_delimiter: RecipientDelimiter::new(delimiter),
                ..options()
            },
        )
    }

    #[test]
    fn an_address_extension_finds_the_list() {
        let index = biglists("+");
        for rcpt in [
            "all-staff@corp.example",
            "all-staff+x@corp.example",
            "All-Staff+Tag+more@CORP.example",
        ] {
            let a = index.audience([rcpt]);
            assert_eq!(a.total, 300, "{rcpt}");
            assert_eq!(&*a.lists[0].address, "all-staff@corp.example", "{rcpt}");
        }
        assert_eq!(
            index.list("all-staff+x@corp.example").map(|l| l.total()),
            Some(300)
        );
        assert_eq!(
            index.list_key("all-staff+x@corp.example"),
            Some("all-staff@corp.example")
        );
        assert_eq!(
            total(&index, &["all-staff-x@corp.example"]),
            1,
            "not a delimiter"
        );
        assert_eq!(
            total(&index, &["+x@corp.example"]),
            1,
            "no empty local part"
        );
        assert_eq!(
            total(
                &index,
                &["all-staff+a@corp.example", "all-staff+b@corp.example"]
            ),
            300,
            "one list however many extensions"
        );
        assert_eq!(
            total(&biglists(""), &["all-staff+x@corp.example"]),
            1,
            "no delimiter: Postfix does not split either"
        );
    }

    #[test]
    fn every_character_of_a_multi_character_delimiter_splits() {
        let index = biglists("+-");
        // With '-' a delimiter, "all-staff" itself splits at its first '-', but the
        // full key is tried first, as Postfix does.
        assert_eq!(total(&index, &["all-staff@corp.example"]), 300);
        let index = DirectoryIndex::build(
            vec![def(
                "staff@corp.example",
                &["a@corp.example", "b@corp.example"],
            )],
            &IndexOptions {
                recipient_delimiter: RecipientDelimiter::new("+-"),
                ..options()
            },
        );
        assert_eq!(total(&index, &["staff-x@corp.example"]), 2);
        assert_eq!(total(&index, &["staff+x@corp.example"]), 2);
        assert_eq!(total(&index, &["staff-x+y@corp.example"]), 2);
        let owner = biglists("+-");
        assert_eq!(
            owner.list_key("owner-all@corp.example"),
            Some("owner-all@corp.example"),
            "owner- is never split with '-' in the set"
        );
    }

    #[test]
    fn catch_alls_keep_the_extension_and_find_the_list() {
        let index = biglists("+");
        assert_eq!(
            total(&index, &["all-staff+x@old.example"]),
            300,
            "@old -> @corp keeps all-staff+x, which finds all-staff@corp"
        );
        assert_eq!(total(&index, &["anyone+x@gone.example"]), 300);
        let a = index.resolve("someone+x@old.example");
        assert!(
            matches!(&a[..], [Resolved::Mailbox(m)] if m == "someone+x@corp.example"),
            "{a:?}"
        );
    }

    #[test]
    fn non_ascii_keys_fold_like_the_lookups() {
        let members: Vec<String> = (0..50).map(|i| format!("dr{i}@corp.example")).collect();
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let virtual_file = crate::directory::parse::parse_virtual(
            &format!(
                "ÄRZTE@corp.example {}\nSTRASSE@corp.example dr1@corp.example, dr2@corp.example\n",
                refs.join(", ")
            ),
            std::path::Path::new("virtual"),
        )
        .expect("parse");
        let defs = virtual_file
            .entries
            .iter()
            .map(|e| {
                let targets: Vec<&str> = e
                    .targets
                    .iter()
                    .filter_map(|t| match t {
                        crate::directory::parse::RawTarget::Address(a) => Some(a.as_str()),
                        _ => None,
                    })
                    .collect();
                def(&e.key, &targets)
            })
            .collect();
        let index = DirectoryIndex::build(defs, &options());
        assert_eq!(total(&index, &["ÄRZTE@corp.example"]), 50);
        assert_eq!(total(&index, &["ärzte@corp.example"]), 50);
        assert_eq!(total(&index, &["Ärzte+x@corp.example"]), 50);
        assert_eq!(
            total(&index, &["straße@corp.example"]),
            2,
            "full case folding"
        );
    }

    #[test]
    fn merging_beyond_the_budget_over_estimates_and_never_under_counts() {
        let list = |name: &str, from: usize, n: usize| {
            let members: Vec<String> = (from..from + n)
                .map(|i| format!("m{i}@corp.example"))
                .collect();
            let refs: Vec<&str> = members.iter().map(String::as_str).collect();
            def(name, &refs)
        };
        let index = DirectoryIndex::build(
            vec![
                list("a@corp.example", 0, 100),
                list("b@corp.example", 50, 60),
                list("c@corp.example", 95, 30),
            ],
            &options(),
        );
        let rcpts = ["a@corp.example", "b@corp.example", "c@corp.example"];
        let exact = index.audience_within(rcpts, 1_000);
        assert_eq!(exact.total, 125);
        assert!(!exact.overestimated);
        let bounded = index.audience_within(rcpts, 70);
        assert!(bounded.overestimated);
        assert_eq!(
            bounded.total,
            100 + 10 + 30,
            "b@ (60) is merged (10 new); c@ (30) exceeds the 10 left and counts whole"
        );
        assert!(bounded.total >= exact.total);
        let none = index.audience_within(rcpts, 0);
        assert_eq!(none.total, 100 + 60 + 30);
    }

    #[test]
    fn empty_directory_counts_recipients() {
        let index = DirectoryIndex::build(vec![], &options());
        let a = index.audience(["a@corp.example", "b@ext.example", "A@CORP.example"]);
        assert_eq!(a.total, 2);
        assert_eq!(a.external, 1);
        assert!(a.lists.is_empty());
    }
}
