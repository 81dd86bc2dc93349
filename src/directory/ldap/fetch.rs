// SPDX-License-Identifier: GPL-3.0-or-later
//! Reads what a snapshot needs from a server: the root entry, one paged search per
//! base, the rest of every ranged attribute (Active Directory), and one search per
//! dynamic list. Any limit, timeout or broken connection fails the whole fetch.

use super::client::{Entry, LdapFault, LdapServer, Scope};
use super::entry::{
    addresses, entry_key, is_list, normalize_dn, normalize_dn_into, primary_address, strip_uid,
};
use crate::config::ldap::LdapSettings;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

/// Capability OID in an Active Directory root entry.
pub const AD_CAPABILITY: &str = "1.2.840.113556.1.4.800";
/// The paged results control.
pub const PAGED_RESULTS: &str = "1.2.840.113556.1.4.319";

/// What the root entry said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// Active Directory (ranged attributes, objectGUID).
    pub active_directory: bool,
    /// The server supports paged results.
    pub paging: bool,
}

/// One dynamic list's search.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DynamicQuery {
    /// Search base.
    pub base: String,
    /// Scope.
    pub scope: ScopeKey,
    /// Filter.
    pub filter: String,
}

/// A hashable scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScopeKey {
    /// The base entry only.
    Base,
    /// Its children.
    One,
    /// The subtree.
    Sub,
}

impl ScopeKey {
    fn scope(self) -> Scope {
        match self {
            ScopeKey::Base => Scope::Base,
            ScopeKey::One => Scope::OneLevel,
            ScopeKey::Sub => Scope::Subtree,
        }
    }
}

/// What identifies an entry ([`entry_key`]), in 16 bytes when it is a UUID or a GUID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKey {
    /// An `entryUUID` or an `objectGUID`.
    Id([u8; 16]),
    /// Any other key: a normalized DN, or a UUID in another spelling.
    Text(Box<str>),
}

impl EntryKey {
    /// The key of an entry.
    pub fn of(e: &Entry) -> EntryKey {
        // The common case, an `entryUUID` in its usual spelling, read without
        // allocating; anything else as `entry_key` says.
        if let Some(id) = e.values("entryUUID").next().and_then(dashed_uuid) {
            return EntryKey::Id(id);
        }
        let text = entry_key(e);
        let hex: String =
            if text.len() == 36 && [8, 13, 18, 23].iter().all(|&i| text.as_bytes()[i] == b'-') {
                text.chars().filter(|&c| c != '-').collect()
            } else {
                text.clone()
            };
        let mut id = [0u8; 16];
        let parsed = hex.len() == 32
            && hex.is_ascii()
            && id.iter_mut().enumerate().all(|(i, b)| {
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map(|v| *b = v)
                    .is_ok()
            });
        if parsed {
            EntryKey::Id(id)
        } else {
            EntryKey::Text(text.into())
        }
    }
}

/// The 16 bytes of a UUID spelled `8-4-4-4-12` in hex digits (either case).
fn dashed_uuid(v: &str) -> Option<[u8; 16]> {
    let b = v.as_bytes();
    if b.len() != 36 {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        let dash = matches!(i, 8 | 13 | 18 | 23);
        if (c == b'-') != dash || (!dash && !c.is_ascii_hexdigit()) {
            return None;
        }
    }
    let mut id = [0u8; 16];
    let digits = b
        .iter()
        .filter(|&&c| c != b'-')
        .map(|&c| (c as char).to_digit(16).unwrap_or(0) as u8);
    for (i, d) in digits.enumerate() {
        id[i / 2] |= if i % 2 == 0 { d << 4 } else { d };
    }
    Some(id)
}

/// Compares with [`entry_key`]'s text (a UUID with or without its dashes).
impl PartialEq<String> for EntryKey {
    fn eq(&self, other: &String) -> bool {
        match self {
            EntryKey::Text(t) => **t == **other,
            EntryKey::Id(id) => {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                *other == hex || other.replace('-', "") == hex && other.len() == 36
            }
        }
    }
}

/// Normalized DNs ([`normalize_dn`]) as 128-bit hashes, keyed at random for each
/// refresh: a DN costs 16 bytes in the join instead of a string, and no one who can
/// write the directory can aim a collision at keys they do not know.
#[derive(Clone, Debug, Default)]
pub struct DnHasher(RandomState, RandomState);

impl DnHasher {
    /// The hash of `dn`'s normalized form.
    pub fn hash(&self, dn: &str) -> u128 {
        thread_local! {
            static BUFFER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        // Millions of DNs per refresh: normalised in a reused buffer, not a new
        // string each.
        BUFFER.with(|b| {
            let Ok(mut n) = b.try_borrow_mut() else {
                let n = normalize_dn(dn);
                return self.hash_normalized(&n);
            };
            normalize_dn_into(dn, &mut n);
            self.hash_normalized(&n)
        })
    }

    fn hash_normalized(&self, n: &str) -> u128 {
        (u128::from(self.0.hash_one(n)) << 64) | u128::from(self.1.hash_one(n))
    }
}

/// An entry as a member of lists: all that a person costs in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Its primary address, or its normalized DN when it has none.
    pub name: std::sync::Arc<str>,
    /// True for a list.
    pub group: bool,
    /// True when it has an address.
    pub has_address: bool,
}

impl Node {
    /// The node of a reduced entry.
    pub fn of(e: &Item) -> Node {
        Node {
            group: e.list.is_some(),
            has_address: !e.addresses.is_empty(),
            name: match e.addresses.first() {
                Some(a) => a.as_str().into(),
                None => normalize_dn(&e.dn).into(),
            },
        }
    }
}

/// A list entry (or a dynamic list's match, or an entry outside the searches) reduced
/// to what a snapshot needs, as soon as it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its DN, as the server spells it.
    pub dn: String,
    /// What identifies it ([`entry_key`]).
    pub key: EntryKey,
    /// Its addresses, primary first.
    pub addresses: Vec<String>,
    /// What makes it a list, when it is one.
    pub list: Option<Box<ListParts>>,
}

/// The members of a list entry, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParts {
    /// Member DNs, `#'...'B` suffixes stripped.
    pub member_dns: Dns,
    /// Member URLs.
    pub urls: Vec<String>,
    /// Literal member addresses.
    pub literals: Vec<String>,
    /// Exchange-style filters.
    pub filters: Vec<String>,
    /// Their base, when the entry names one.
    pub filter_base: Option<String>,
}

/// Strings packed in one buffer: a list's member DNs (840,000 of them in a big
/// list) cost their text and four bytes each, not a `String` each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns {
    text: String,
    ends: Vec<u32>,
}

impl Dns {
    /// Appends one.
    pub fn push(&mut self, dn: &str) {
        self.text.push_str(dn);
        self.ends
            .push(u32::try_from(self.text.len()).unwrap_or(u32::MAX));
    }

    /// Each, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let end = (end as usize).min(self.text.len());
            let dn = self.text.get(start..end).unwrap_or_default();
            start = end;
            dn
        })
    }
}

impl<S: AsRef<str>> FromIterator<S> for Dns {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Dns {
        let mut out = Dns::default();
        for dn in iter {
            out.push(dn.as_ref());
        }
        out.text.shrink_to_fit();
        out.ends.shrink_to_fit();
        out
    }
}

impl Item {
    /// Reduces an entry (ranged attributes completed) as the settings say.
    pub fn new(e: Entry, s: &LdapSettings) -> Item {
        let values = |attrs: &[String]| -> Vec<String> {
            attrs
                .iter()
                .flat_map(|a| e.values(a).map(str::to_owned))
                .collect()
        };
        let list = is_list(&e, s).then(|| {
            Box::new(ListParts {
                member_dns: s
                    .member_dn_attributes
                    .iter()
                    .flat_map(|a| e.values(a))
                    .map(|v| strip_uid(v.trim()))
                    .collect(),
                urls: values(&s.member_url_attributes),
                literals: values(&s.literal_member_attributes),
                filters: s.filter_list.as_ref().map_or_else(Vec::new, |fl| {
                    e.values(&fl.filter_attribute).map(str::to_owned).collect()
                }),
                filter_base: s.filter_list.as_ref().and_then(|fl| {
                    (!fl.base_attribute.is_empty())
                        .then(|| e.values(&fl.base_attribute).next().map(str::to_owned))
                        .flatten()
                }),
            })
        });
        Item {
            key: EntryKey::of(&e),
            addresses: addresses(&e, s),
            list,
            dn: e.dn,
        }
    }
}

/// Nodes found by a key each has: the keys in a vector by node, and a table of node
/// ids (about 21 bytes a node for a DN hash where a map costs about 43).
#[derive(Clone, Debug, Default)]
pub struct NodeIndex<K> {
    keys: Vec<K>,
    table: hashbrown::HashTable<u32>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone + Default> NodeIndex<K> {
    /// The node of `key`.
    pub fn get(&self, key: &K) -> Option<u32> {
        let keys = &self.keys;
        self.table
            .find(self.hasher.hash_one(key), |&id| {
                keys.get(id as usize) == Some(key)
            })
            .copied()
    }

    /// True when a node has `key`.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Gives node `id` its key: it is found by it from now on, and an earlier node
    /// with the same key no longer is (the last one set wins). With `first` set
    /// instead, an earlier node keeps the key: returns false and changes nothing.
    pub fn set(&mut self, id: u32, key: K, first: bool) -> bool {
        let hash = self.hasher.hash_one(&key);
        let i = id as usize;
        if self.keys.len() <= i {
            self.keys.resize(i + 1, K::default());
        }
        let (keys, hasher) = (&mut self.keys, &self.hasher);
        let found = self.table.find_mut(hash, |&j| keys[j as usize] == key);
        match found {
            Some(_) if first => false,
            Some(slot) => {
                *slot = id;
                keys[i] = key;
                true
            }
            None => {
                keys[i] = key;
                self.table
                    .insert_unique(hash, id, |&j| hasher.hash_one(&keys[j as usize]));
                true
            }
        }
    }
}

impl Default for EntryKey {
    /// A placeholder for nodes not keyed yet (never found: only keyed nodes are in
    /// the table).
    fn default() -> EntryKey {
        EntryKey::Id([0; 16])
    }
}

/// Everything a snapshot is built from. The entries of the main searches, people
/// most of them, are kept only as [`Node`]s found by key and by DN hash; lists keep
/// their members.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// The server.
    pub server: ServerInfo,
    /// Entries of every base, each once, in the order read.
    pub nodes: Vec<Node>,
    /// The lists among them (by node), ranged attributes completed.
    pub lists: Vec<(u32, Item)>,
    /// Nodes by key.
    pub by_key: NodeIndex<EntryKey>,
    /// Nodes by the hash of their normalized DN (the last read of a DN wins).
    pub by_dn: NodeIndex<u128>,
    /// The DN hash of `by_dn`.
    pub dns: DnHasher,
    /// The entries each dynamic query matched, or why it could not be run.
    pub dynamic: HashMap<DynamicQuery, Result<Vec<Item>, String>>,
    /// Member DNs the snapshot search did not return, read one by one: entries
    /// without an address (service accounts, disabled users) or outside `base_dns`.
    /// Those not here do not exist (or cannot be read).
    pub outside: Vec<Item>,
    /// Searches run (pages and range steps included).
    pub searches: u64,
}

/// The attributes a snapshot reads.
pub fn attributes(s: &LdapSettings) -> Vec<String> {
    let mut attrs: Vec<String> = Vec::new();
    let mut add = |a: &str| {
        if !a.is_empty() && !attrs.iter().any(|x| x.eq_ignore_ascii_case(a)) {
            attrs.push(a.to_owned());
        }
    };
    for a in s
        .leaf_mail_attributes
        .iter()
        .chain(&s.member_dn_attributes)
        .chain(&s.member_url_attributes)
        .chain(&s.literal_member_attributes)
    {
        add(a);
    }
    if let Some(f) = &s.filter_list {
        add(&f.filter_attribute);
        add(&f.base_attribute);
    }
    for a in ["objectClass", "entryUUID", "objectGUID"] {
        add(a);
    }
    attrs
}

/// The filter of the snapshot search: addressable entries (the lookup filter with
/// its placeholders as `*`) and every kind of list.
pub fn snapshot_filter(s: &LdapSettings) -> String {
    let addressable = s
        .lookup_filter
        .replace("%s", "*")
        .replace("%u", "*")
        .replace("%d", "*");
    let mut f = format!("(|{addressable}");
    for a in s
        .member_dn_attributes
        .iter()
        .chain(&s.member_url_attributes)
        .chain(&s.literal_member_attributes)
    {
        f.push_str(&format!("({a}=*)"));
    }
    if let Some(fl) = &s.filter_list {
        f.push_str(&format!("({}=*)", fl.filter_attribute));
    }
    for c in &s.group_object_classes {
        f.push_str(&format!("(objectClass={c})"));
    }
    f.push(')');
    f
}

/// Runs every page of one search.
async fn search_all(
    server: &mut dyn LdapServer,
    info: ServerInfo,
    page_size: u32,
    q: (&str, Scope, &str),
    attrs: &[String],
    searches: &mut u64,
) -> Result<Vec<Entry>, LdapFault> {
    let (base, scope, filter) = q;
    let mut out = Vec::new();
    let mut cookie = Some(Vec::new());
    while let Some(c) = cookie {
        *searches += 1;
        let page = if info.paging {
            Some((page_size, c))
        } else {
            None
        };
        let p = server.search_page(base, scope, filter, attrs, page).await?;
        out.extend(p.entries);
        cookie = if info.paging { p.next } else { None };
    }
    Ok(out)
}

/// Reads the root entry.
pub async fn server_info(server: &mut dyn LdapServer) -> Result<ServerInfo, LdapFault> {
    let attrs = ["supportedControl", "supportedCapabilities"].map(String::from);
    let page = server
        .search_page("", Scope::Base, "(objectClass=*)", &attrs, None)
        .await?;
    let Some(root) = page.entries.first() else {
        // A root entry hidden by ACLs: try paging, assume no Active Directory.
        return Ok(ServerInfo {
            active_directory: false,
            paging: true,
        });
    };
    Ok(ServerInfo {
        active_directory: root
            .values("supportedCapabilities")
            .any(|v| v == AD_CAPABILITY),
        paging: root.values("supportedControl").any(|v| v == PAGED_RESULTS),
    })
}

/// Parses `attr;range=LOW-HIGH`: the attribute and the next LOW, `None` when HIGH is `*`.
fn range_key(key: &str) -> Option<(&str, Option<u64>)> {
    let (attr, range) = key.split_once(";range=")?;
    let (_, high) = range.split_once('-')?;
    if high == "*" {
        return Some((attr, None));
    }
    let high: u64 = high.parse().ok()?;
    Some((attr, Some(high + 1)))
}

/// Folds ranged values into the plain attribute and fetches the rest of each range.
pub(crate) async fn complete_ranges(
    server: &mut dyn LdapServer,
    entry: &mut Entry,
    searches: &mut u64,
) -> Result<(), LdapFault> {
    let ranged: Vec<String> = entry
        .attrs
        .keys()
        .filter(|k| k.contains(";range="))
        .cloned()
        .collect();
    for key in ranged {
        let Some(values) = entry.attrs.remove(&key) else {
            continue;
        };
        let Some((attr, mut next)) = range_key(&key).map(|(a, n)| (a.to_owned(), n)) else {
            continue;
        };
        let mut all = values;
        let mut steps = 0u32;
        while let Some(low) = next {
            steps += 1;
            if steps > 100_000 {
                return Err(LdapFault::Search {
                    base: entry.dn.clone(),
                    filter: format!("{attr};range={low}-*"),
                    rc: 80,
                    text: "range retrieval does not end".into(),
                });
            }
            *searches += 1;
            let want = [format!("{attr};range={low}-*")];
            let page = server
                .search_page(&entry.dn, Scope::Base, "(objectClass=*)", &want, None)
                .await?;
            let chunk = page.entries.into_iter().next().and_then(|e| {
                e.attrs.into_iter().find(|(k, _)| {
                    k.to_ascii_lowercase()
                        .starts_with(&format!("{};range=", attr.to_ascii_lowercase()))
                })
            });
            match chunk {
                Some((k, v)) => {
                    let step = range_key(&k).map(|(_, n)| n);
                    all.extend(v);
                    next = match step {
                        Some(Some(n)) if n > low => Some(n),
                        Some(Some(_)) => {
                            return Err(LdapFault::Search {
                                base: entry.dn.clone(),
                                filter: k,
                                rc: 80,
                                text: "range retrieval went backwards".into(),
                            });
                        }
                        _ => None,
                    };
                }
                None => {
                    return Err(LdapFault::Search {
                        base: entry.dn.clone(),
                        filter: format!("{attr};range={low}-*"),
                        rc: 80,
                        text: "the server returned no values for the rest of a range".into(),
                    });
                }
            }
        }
        entry.attrs.entry(attr).or_default().extend(all);
    }
    Ok(())
}

/// The dynamic queries of the fetched lists, by their position in `lists`.
pub fn dynamic_queries(
    s: &LdapSettings,
    lists: &[(u32, Item)],
) -> Vec<(usize, Result<DynamicQuery, String>)> {
    let mut out = Vec::new();
    for (i, (_, e)) in lists.iter().enumerate() {
        let Some(list) = &e.list else { continue };
        for url in &list.urls {
            out.push((i, url_query(url)));
        }
        for filter in &list.filters {
            let bases: Vec<String> = match &list.filter_base {
                Some(b) => vec![b.clone()],
                None => s.base_dns.clone(),
            };
            for base in bases {
                out.push((
                    i,
                    match ldap3::parse_filter(filter) {
                        Ok(_) => Ok(DynamicQuery {
                            base,
                            scope: ScopeKey::Sub,
                            filter: filter.to_owned(),
                        }),
                        Err(_) => Err(format!("filter {filter} is not an LDAP filter")),
                    },
                ));
            }
        }
    }
    out
}

/// An RFC 2255 member URL as a query.
pub fn url_query(url: &str) -> Result<DynamicQuery, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("URL {url} does not parse: {e}"))?;
    let p = ldap3::get_url_params(&parsed).map_err(|e| format!("URL {url}: {e}"))?;
    if ldap3::parse_filter(p.filter.as_ref()).is_err() {
        return Err(format!("URL {url} has an invalid filter"));
    }
    Ok(DynamicQuery {
        base: p.base.into_owned(),
        scope: match p.scope {
            Scope::Base => ScopeKey::Base,
            Scope::OneLevel => ScopeKey::One,
            Scope::Subtree => ScopeKey::Sub,
        },
        filter: p.filter.into_owned(),
    })
}

/// Most member DNs outside the snapshot search read one by one; beyond, they count as
/// unknown (and the log says so through the dangling count).
pub const MAX_OUTSIDE_LOOKUPS: usize = 20_000;

/// The attributes a dynamic list's matches need: addresses, classes, identity.
fn match_attributes(s: &LdapSettings) -> Vec<String> {
    let mut attrs = s.leaf_mail_attributes.clone();
    attrs.extend(["objectClass", "entryUUID", "objectGUID"].map(String::from));
    attrs
}

/// Member DNs of the lists that are not among the entries read, in first-seen order.
fn referenced_elsewhere(f: &Fetched) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for list in f.lists.iter().filter_map(|(_, e)| e.list.as_ref()) {
        for dn in list.member_dns.iter() {
            let key = f.dns.hash(dn);
            if !f.by_dn.contains_key(&key) && seen.insert(key) {
                out.push(dn.to_owned());
            }
        }
    }
    out
}

/// Whether an entry has a DN: one without (only a root DSE has an empty DN, and no
/// search under a base returns it) would join as a list or member named "" (found by
/// the ldap fuzz target), so it is left out of the snapshot.
fn has_dn(e: &Entry) -> bool {
    // What `normalize_dn` leaves empty: nothing but white space.
    !e.dn.trim().is_empty()
}

/// Fills node `id` (reserved in arrival order) with entry `e`, ranged attributes
/// completed.
fn add(f: &mut Fetched, s: &LdapSettings, id: u32, e: Entry) {
    f.by_dn.set(id, f.dns.hash(&e.dn), false);
    let node = if is_list(&e, s) {
        let item = Item::new(e, s);
        let node = Node::of(&item);
        f.lists.push((id, item));
        node
    } else {
        let address = primary_address(&e, s);
        Node {
            has_address: address.is_some(),
            name: match address {
                Some(a) => a.into(),
                None => normalize_dn(&e.dn).into(),
            },
            group: false,
        }
    };
    if let Some(slot) = f.nodes.get_mut(id as usize) {
        *slot = node;
    }
}

/// Reads everything a snapshot needs.
pub async fn fetch(server: &mut dyn LdapServer, s: &LdapSettings) -> Result<Fetched, LdapFault> {
    let mut searches = 1;
    let info = server_info(server).await?;
    let attrs = attributes(s);
    let filter = snapshot_filter(s);
    let mut f = Fetched {
        server: info,
        ..Fetched::default()
    };
    for base in &s.base_dns {
        // Entry by entry, each reduced as it arrives: the directory never sits in
        // memory as full entries (not even a page of them), and a person is only a
        // node. An entry with ranged attributes (Active Directory) waits for the end
        // of its page, where the rest of its values are read.
        let mut cookie = Some(Vec::new());
        while let Some(c) = cookie {
            searches += 1;
            let page = info.paging.then_some((s.page_size, c));
            let mut ranged: Vec<(u32, Entry)> = Vec::new();
            let next = server
                .search_each(base, Scope::Subtree, &filter, &attrs, page, &mut |e| {
                    if !has_dn(&e) {
                        return;
                    }
                    let id = u32::try_from(f.nodes.len()).unwrap_or(u32::MAX);
                    if !f.by_key.set(id, EntryKey::of(&e), true) {
                        return;
                    }
                    f.nodes.push(Node::default());
                    if e.attrs.keys().any(|k| k.contains(";range=")) {
                        ranged.push((id, e));
                    } else {
                        add(&mut f, s, id, e);
                    }
                })
                .await?;
            cookie = if info.paging { next } else { None };
            if !ranged.is_empty() {
                for (id, mut e) in ranged {
                    complete_ranges(server, &mut e, &mut searches).await?;
                    add(&mut f, s, id, e);
                }
                f.lists.sort_by_key(|(id, _)| *id);
            }
        }
    }
    let mut dynamic: HashMap<DynamicQuery, Result<Vec<Item>, String>> = HashMap::new();
    for (_, q) in dynamic_queries(s, &f.lists) {
        let Ok(q) = q else { continue };
        if dynamic.contains_key(&q) {
            continue;
        }
        let result = search_all(
            server,
            info,
            s.page_size,
            (&q.base, q.scope.scope(), &q.filter),
            &match_attributes(s),
            &mut searches,
        )
        .await;
        let result = match result {
            Ok(found) => Ok(found
                .into_iter()
                .filter(has_dn)
                .map(|e| Item::new(e, s))
                .collect()),
            Err(e) if e.fails_refresh() => return Err(e),
            Err(e) => Err(e.to_string()),
        };
        dynamic.insert(q, result);
    }
    let mut outside = Vec::new();
    let missing: Vec<String> = referenced_elsewhere(&f)
        .into_iter()
        .take(MAX_OUTSIDE_LOOKUPS)
        .collect();
    for chunk in missing.chunks(1000) {
        searches += chunk.len() as u64;
        for result in server.read_many(chunk, &attrs).await {
            match result {
                Ok(page) => outside.extend(
                    page.entries
                        .into_iter()
                        .filter(has_dn)
                        .map(|e| Item::new(e, s)),
                ),
                Err(e) if e.fails_refresh() => return Err(e),
                // noSuchObject, no access: the member stays unknown.
                Err(_) => {}
            }
        }
    }
    f.dynamic = dynamic;
    f.outside = outside;
    f.searches = searches;
    Ok(f)
}
