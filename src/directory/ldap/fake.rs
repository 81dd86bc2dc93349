// SPDX-License-Identifier: GPL-3.0-or-later
//! An in-memory [`LdapServer`] that behaves the way Windows Active Directory does where
//! slapd and Samba cannot: a root entry naming the AD capability and the paged results
//! control, binary `objectGUID`s, pages never larger than MaxPageSize whatever size is
//! asked, and attributes with more values than MaxValRange returned only as
//! `attr;range=LOW-HIGH` (MS-ADTS 3.1.1.3.1.3.3). Limits and faults can be injected,
//! and every search is counted and logged so tests can assert the round trips.

use super::client::{Entry, LdapFault, LdapServer, Page, Scope, rc_name};
use super::entry::normalize_dn;
use super::fetch::{AD_CAPABILITY, PAGED_RESULTS};
use async_trait::async_trait;
use std::collections::HashMap;

/// One search the fake was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    /// Its base.
    pub base: String,
    /// Its scope.
    pub scope: Scope,
    /// Its filter.
    pub filter: String,
    /// The attributes asked for.
    pub attrs: Vec<String>,
    /// The page size asked for; `None` for an unpaged search.
    pub page_size: Option<u32>,
    /// Entries returned; `None` when the search failed.
    pub returned: Option<usize>,
}

/// Where a paged search stands, behind an opaque cookie.
struct Cursor {
    base: String,
    filter: String,
    offset: usize,
}

/// An in-memory directory server imitating Active Directory.
pub struct FakeDirectory {
    entries: Vec<Entry>,
    next_guid: u128,
    cursors: HashMap<Vec<u8>, Cursor>,
    next_cookie: u64,
    /// The root entry (base `""`, scope base); `None` hides it, as ACLs can.
    pub root: Option<Entry>,
    /// Whether paged searches are answered (a paged search otherwise fails with rc 12).
    pub paging: bool,
    /// MaxPageSize: entries per page, whatever size the client asks for.
    pub max_page_size: usize,
    /// MaxValRange: values of one attribute per answer.
    pub max_val_range: usize,
    /// Entries an unpaged search may return before it fails with rc 4.
    pub size_limit: Option<usize>,
    /// Entries all the pages of one paged search may return before it fails with rc 4.
    pub paged_limit: Option<usize>,
    /// Bases that do not exist (rc 32), besides those with no entry at or below them.
    pub missing_bases: Vec<String>,
    /// A search whose filter contains the text fails with the result code.
    pub failing_filters: Vec<(String, u32)>,
    /// The connection breaks after this many searches: later ones fail to connect.
    pub drop_after: Option<u64>,
    /// Searches asked for, failed ones included.
    pub searches: u64,
    /// Every search, in order.
    pub log: Vec<Logged>,
}

/// A root entry: the AD capability when `active_directory`, the paged results control
/// when `paging`.
pub fn root_dse(active_directory: bool, paging: bool) -> Entry {
    let mut controls = vec!["1.2.840.113556.1.4.473".to_owned()];
    if paging {
        controls.push(PAGED_RESULTS.to_owned());
    }
    let mut capabilities = Vec::new();
    if active_directory {
        capabilities.push(AD_CAPABILITY.to_owned());
        capabilities.push("1.2.840.113556.1.4.1670".to_owned());
    }
    let mut attrs = HashMap::from([
        ("supportedControl".to_owned(), controls),
        ("supportedLDAPVersion".to_owned(), vec!["3".to_owned()]),
    ]);
    if !capabilities.is_empty() {
        attrs.insert("supportedCapabilities".to_owned(), capabilities);
    }
    Entry {
        dn: String::new(),
        attrs,
        bin_attrs: HashMap::new(),
    }
}

impl FakeDirectory {
    /// A Windows domain controller with its default limits: pages of at most 1000
    /// entries, 1500 values per attribute, and unpaged searches also capped at 1000.
    pub fn active_directory() -> FakeDirectory {
        FakeDirectory {
            entries: Vec::new(),
            next_guid: 0x0011_2233_4455_6677_8899_aabb_ccdd_0000,
            cursors: HashMap::new(),
            next_cookie: 0,
            root: Some(root_dse(true, true)),
            paging: true,
            max_page_size: 1000,
            max_val_range: 1500,
            size_limit: Some(1000),
            paged_limit: None,
            missing_bases: Vec::new(),
            failing_filters: Vec::new(),
            drop_after: None,
            searches: 0,
            log: Vec::new(),
        }
    }

    /// A server that is not Active Directory, with or without the paged results
    /// control, and no limit unless one is set.
    pub fn other(paging: bool) -> FakeDirectory {
        FakeDirectory {
            root: Some(root_dse(false, paging)),
            paging,
            size_limit: None,
            max_page_size: usize::MAX,
            max_val_range: usize::MAX,
            ..FakeDirectory::active_directory()
        }
    }

    /// Adds an entry with a fresh `objectGUID`, which it returns.
    pub fn add(&mut self, dn: &str, attrs: Vec<(&str, Vec<String>)>) -> [u8; 16] {
        self.next_guid += 1;
        let guid = self.next_guid.to_be_bytes();
        self.add_with_guid(dn, guid, attrs);
        guid
    }

    /// Adds an entry with the given `objectGUID` (an entry seen under two DNs, moved
    /// between two searches).
    pub fn add_with_guid(&mut self, dn: &str, guid: [u8; 16], attrs: Vec<(&str, Vec<String>)>) {
        let mut entry = Entry {
            dn: dn.to_owned(),
            attrs: HashMap::new(),
            bin_attrs: HashMap::from([("objectGUID".to_owned(), vec![guid.to_vec()])]),
        };
        for (name, values) in attrs {
            entry
                .attrs
                .entry(name.to_owned())
                .or_default()
                .extend(values);
        }
        self.entries.push(entry);
    }

    /// Adds a user with one `mail` address.
    pub fn person(&mut self, dn: &str, mail: &str) -> [u8; 16] {
        self.add(
            dn,
            vec![
                ("objectClass", strings(&["top", "person", "user"])),
                ("mail", strings(&[mail])),
            ],
        )
    }

    /// Adds a group (`objectClass: group`) with an optional `mail` and `member` DNs.
    pub fn group(&mut self, dn: &str, mail: Option<&str>, members: &[String]) -> [u8; 16] {
        let mut attrs = vec![("objectClass", strings(&["top", "group"]))];
        if let Some(m) = mail {
            attrs.push(("mail", strings(&[m])));
        }
        if !members.is_empty() {
            attrs.push(("member", members.to_vec()));
        }
        self.add(dn, attrs)
    }

    /// Searches that asked for a ranged attribute (`member;range=1500-*`).
    pub fn range_searches(&self) -> usize {
        self.log
            .iter()
            .filter(|l| l.attrs.iter().any(|a| a.contains(";range=")))
            .count()
    }

    /// Searches of `base` (paged ones count each page).
    pub fn searches_of(&self, base: &str) -> Vec<&Logged> {
        let base = normalize_dn(base);
        self.log
            .iter()
            .filter(|l| normalize_dn(&l.base) == base)
            .collect()
    }

    fn base_exists(&self, base: &str) -> bool {
        if self.missing_bases.iter().any(|b| normalize_dn(b) == base) {
            return false;
        }
        let below = format!(",{base}");
        self.entries.iter().any(|e| {
            let dn = normalize_dn(&e.dn);
            dn == base || dn.ends_with(&below)
        })
    }

    /// The positions of the entries a search finds.
    fn matches(&self, base: &str, scope: Scope, filter: &Filter) -> Vec<usize> {
        let below = format!(",{base}");
        (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                let dn = normalize_dn(&e.dn);
                let in_scope = match scope {
                    Scope::Base => dn == base,
                    Scope::OneLevel => parent(&dn) == Some(base),
                    Scope::Subtree => dn == base || dn.ends_with(&below),
                };
                in_scope && filter.matches(e)
            })
            .collect()
    }

    /// An entry as the server returns it: the attributes asked for, those with more
    /// values than MaxValRange as their first range.
    fn project(&self, e: &Entry, attrs: &[String]) -> Entry {
        let all = attrs.is_empty() || attrs.iter().any(|a| a == "*");
        let cap = self.max_val_range;
        let mut out = Entry {
            dn: e.dn.clone(),
            ..Entry::default()
        };
        for (name, values) in &e.attrs {
            let asked = attrs.iter().find_map(|a| {
                let (attr, options) = a.split_once(';').unwrap_or((a, ""));
                attr.eq_ignore_ascii_case(name).then_some(options)
            });
            let range = match asked {
                Some(options) => match options.strip_prefix("range=") {
                    Some(r) => parse_range(r),
                    None => None,
                },
                None if all => None,
                None => continue,
            };
            let (low, high) = match range {
                Some(r) => r,
                None if values.len() > cap => (0, None),
                None => {
                    out.attrs.insert(name.clone(), values.clone());
                    continue;
                }
            };
            let n = values.len();
            let start = low.min(n);
            let mut end = start.saturating_add(cap).min(n);
            if let Some(h) = high {
                end = end.min(h.saturating_add(1)).max(start);
            }
            let key = if end >= n {
                format!("{name};range={low}-*")
            } else {
                format!("{name};range={low}-{}", end - 1)
            };
            out.attrs.insert(key, values[start..end].to_vec());
        }
        for (name, values) in &e.bin_attrs {
            if all || attrs.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                out.bin_attrs.insert(name.clone(), values.clone());
            }
        }
        out
    }

    fn answer(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        page: Option<(u32, Vec<u8>)>,
    ) -> Result<Page, LdapFault> {
        let fail = |rc: u32| LdapFault::Search {
            base: base.to_owned(),
            filter: filter.to_owned(),
            rc,
            text: rc_name(rc).to_owned(),
        };
        if self.drop_after.is_some_and(|k| self.searches > k) {
            return Err(LdapFault::Connect {
                url: "ldap://fake".into(),
                message: "connection reset by peer".into(),
            });
        }
        if let Some((_, rc)) = self
            .failing_filters
            .iter()
            .find(|(marker, _)| filter.contains(marker.as_str()))
        {
            return Err(fail(*rc));
        }
        let parsed = Filter::parse(filter).map_err(|_| fail(87))?;
        if base.is_empty() {
            return match (scope, &self.root) {
                (Scope::Base, Some(root)) if parsed.matches(root) => Ok(Page {
                    entries: vec![self.project(root, attrs)],
                    next: None,
                }),
                (Scope::Base, _) => Ok(Page::default()),
                _ => Err(fail(32)),
            };
        }
        let norm_base = normalize_dn(base);
        if !self.base_exists(&norm_base) {
            return Err(fail(32));
        }
        let found = self.matches(&norm_base, scope, &parsed);
        let Some((size, cookie)) = page else {
            if self.size_limit.is_some_and(|limit| found.len() > limit) {
                return Err(fail(4));
            }
            let entries = found
                .iter()
                .map(|&i| self.project(&self.entries[i], attrs))
                .collect();
            return Ok(Page {
                entries,
                next: None,
            });
        };
        if !self.paging {
            return Err(fail(12));
        }
        let offset = if cookie.is_empty() {
            0
        } else {
            match self.cursors.remove(&cookie) {
                Some(c) if c.base == norm_base && c.filter == filter => c.offset,
                _ => return Err(fail(53)),
            }
        };
        let size = match usize::try_from(size) {
            Ok(0) | Err(_) => self.max_page_size,
            Ok(s) => s.min(self.max_page_size),
        };
        let end = offset.saturating_add(size).min(found.len());
        if self.paged_limit.is_some_and(|limit| end > limit) {
            return Err(fail(4));
        }
        let entries = found[offset.min(end)..end]
            .iter()
            .map(|&i| self.project(&self.entries[i], attrs))
            .collect();
        let next = (end < found.len()).then(|| {
            self.next_cookie += 1;
            let cookie = format!("fake-cookie-{}", self.next_cookie).into_bytes();
            self.cursors.insert(
                cookie.clone(),
                Cursor {
                    base: norm_base,
                    filter: filter.to_owned(),
                    offset: end,
                },
            );
            cookie
        });
        Ok(Page { entries, next })
    }
}

#[async_trait]
impl LdapServer for FakeDirectory {
    async fn search_page(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        page: Option<(u32, Vec<u8>)>,
    ) -> Result<Page, LdapFault> {
        self.searches += 1;
        let page_size = page.as_ref().map(|(size, _)| *size);
        let result = self.answer(base, scope, filter, attrs, page);
        self.log.push(Logged {
            base: base.to_owned(),
            scope,
            filter: filter.to_owned(),
            attrs: attrs.to_vec(),
            page_size,
            returned: result.as_ref().ok().map(|p| p.entries.len()),
        });
        result
    }
}

/// Owned copies of string literals.
pub fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// The parent of a normalized DN.
fn parent(dn: &str) -> Option<&str> {
    let bytes = dn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b',' => return Some(&dn[i + 1..]),
            _ => i += 1,
        }
    }
    None
}

/// `LOW-HIGH` or `LOW-*` of a range option.
fn parse_range(r: &str) -> Option<(usize, Option<usize>)> {
    let (low, high) = r.split_once('-')?;
    let low = low.parse().ok()?;
    if high == "*" {
        return Some((low, None));
    }
    Some((low, Some(high.parse().ok()?)))
}

/// The part of RFC 4515 search filters the snapshot code sends: `&`, `|`, `!`,
/// equality, presence, substrings and ordering. Extensible matches are refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// All of them.
    And(Vec<Filter>),
    /// Any of them.
    Or(Vec<Filter>),
    /// Not it.
    Not(Box<Filter>),
    /// `attr=*`.
    Present(String),
    /// `attr=value` (and `attr~=value`).
    Equal(String, String),
    /// `attr>=value`.
    GreaterOrEqual(String, String),
    /// `attr<=value`.
    LessOrEqual(String, String),
    /// `attr=initial*any*final`.
    Substring {
        /// The attribute.
        attr: String,
        /// Text the value starts with.
        initial: String,
        /// Texts found in order after it.
        any: Vec<String>,
        /// Text the value ends with.
        last: String,
    },
}

impl Filter {
    /// Parses the string form of a filter.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut p = FilterParser {
            s: text.as_bytes(),
            pos: 0,
        };
        let f = p.filter()?;
        if p.pos != p.s.len() {
            return Err(format!("text after the filter at {}", p.pos));
        }
        Ok(f)
    }

    /// Whether an entry matches: attribute names and values without regard to case;
    /// every entry has an `objectClass`.
    pub fn matches(&self, e: &Entry) -> bool {
        let values =
            |attr: &str| -> Vec<String> { e.values(attr).map(str::to_lowercase).collect() };
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(e)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(e)),
            Filter::Not(f) => !f.matches(e),
            Filter::Present(a) => {
                a.eq_ignore_ascii_case("objectClass")
                    || e.values(a).next().is_some()
                    || e.bin_attrs.keys().any(|k| k.eq_ignore_ascii_case(a))
            }
            Filter::Equal(a, v) => values(a).contains(&v.to_lowercase()),
            Filter::GreaterOrEqual(a, v) => values(a)
                .iter()
                .any(|x| compare(x, v) != std::cmp::Ordering::Less),
            Filter::LessOrEqual(a, v) => values(a)
                .iter()
                .any(|x| compare(x, v) != std::cmp::Ordering::Greater),
            Filter::Substring {
                attr,
                initial,
                any,
                last,
            } => values(attr).iter().any(|x| {
                let (initial, last) = (initial.to_lowercase(), last.to_lowercase());
                let Some(mut rest) = x.strip_prefix(initial.as_str()) else {
                    return false;
                };
                for part in any {
                    let part = part.to_lowercase();
                    match rest.find(part.as_str()) {
                        Some(i) => rest = &rest[i + part.len()..],
                        None => return false,
                    }
                }
                rest.ends_with(last.as_str())
            }),
        }
    }
}

/// Numbers as numbers, other values as lower-case text.
fn compare(value: &str, asserted: &str) -> std::cmp::Ordering {
    match (value.parse::<i64>(), asserted.parse::<i64>()) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => value.cmp(&asserted.to_lowercase()),
    }
}

struct FilterParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl FilterParser<'_> {
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at {}", c as char, self.pos))
        }
    }

    fn filter(&mut self) -> Result<Filter, String> {
        self.expect(b'(')?;
        let f = match self.s.get(self.pos) {
            Some(b'&') => {
                self.pos += 1;
                Filter::And(self.list()?)
            }
            Some(b'|') => {
                self.pos += 1;
                Filter::Or(self.list()?)
            }
            Some(b'!') => {
                self.pos += 1;
                Filter::Not(Box::new(self.filter()?))
            }
            Some(_) => self.item()?,
            None => return Err("unexpected end of the filter".into()),
        };
        self.expect(b')')?;
        Ok(f)
    }

    fn list(&mut self) -> Result<Vec<Filter>, String> {
        let mut out = Vec::new();
        while self.s.get(self.pos) == Some(&b'(') {
            out.push(self.filter()?);
        }
        if out.is_empty() {
            return Err(format!("empty filter list at {}", self.pos));
        }
        Ok(out)
    }

    fn item(&mut self) -> Result<Filter, String> {
        let start = self.pos;
        while self.pos < self.s.len() && !matches!(self.s[self.pos], b'(' | b')') {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).map_err(|e| e.to_string())?;
        let (attr, value) = text
            .split_once('=')
            .ok_or_else(|| format!("no '=' in {text}"))?;
        let (attr, op) = match attr.as_bytes().last() {
            Some(b'>') => (&attr[..attr.len() - 1], '>'),
            Some(b'<') => (&attr[..attr.len() - 1], '<'),
            Some(b'~') => (&attr[..attr.len() - 1], '~'),
            _ => (attr, '='),
        };
        if attr.is_empty()
            || !attr
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ';')
        {
            return Err(format!(
                "\"{attr}\" is not an attribute (extensible matches are not supported)"
            ));
        }
        let attr = attr.to_owned();
        match op {
            '>' => return Ok(Filter::GreaterOrEqual(attr, unescape(value)?)),
            '<' => return Ok(Filter::LessOrEqual(attr, unescape(value)?)),
            _ => {}
        }
        if op == '=' && value == "*" {
            return Ok(Filter::Present(attr));
        }
        if op == '=' && value.contains('*') {
            let mut parts: Vec<String> =
                value.split('*').map(unescape).collect::<Result<_, _>>()?;
            let last = parts.pop().unwrap_or_default();
            let initial = parts.remove(0);
            return Ok(Filter::Substring {
                attr,
                initial,
                any: parts.into_iter().filter(|p| !p.is_empty()).collect(),
                last,
            });
        }
        Ok(Filter::Equal(attr, unescape(value)?))
    }
}

/// A filter value with its `\XX` escapes decoded.
fn unescape(v: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(v.len());
    let raw = v.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            let hex = v
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("bad escape in {v}"))?;
            bytes.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape in {v}"))?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).map_err(|e| e.to_string())
}
