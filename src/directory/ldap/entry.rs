// SPDX-License-Identifier: GPL-3.0-or-later
//! What one entry says, read the same way by the fetch (which entries are lists, which
//! member DNs to follow) and by the graph (how members join): its key, its canonical
//! DN, its addresses, whether it is a list. Below both, so neither imports the other
//! for these. Pure: no I/O.

use super::client::Entry;
use crate::config::ldap::LdapSettings;
use crate::policy::address::fold_case;

/// A DN in a canonical form for joining: attribute names and values case folded,
/// spaces around separators dropped (escaped characters kept).
pub fn normalize_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    normalize_dn_into(dn, &mut out);
    out
}

/// [`normalize_dn`] into `out` (cleared first), reusing its allocation.
pub fn normalize_dn_into(dn: &str, out: &mut String) {
    out.clear();
    let mut chars = dn.trim().chars().peekable();
    let mut pending_space = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push_str(&pending_space);
                pending_space.clear();
                out.push('\\');
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            ',' | '=' | '+' => {
                pending_space.clear();
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            c if c.is_whitespace() => pending_space.push(c),
            c => {
                out.push_str(&pending_space);
                pending_space.clear();
                out.push(c);
            }
        }
    }
    if out.is_ascii() {
        out.make_ascii_lowercase();
    } else {
        *out = fold_case(out);
    }
}

/// A member DN without the optional `#'0101'B` UID of `uniqueMember` (RFC 4517 NameAndOptionalUID).
pub fn strip_uid(dn: &str) -> &str {
    if let Some(hash) = dn.rfind("#'")
        && let Some(bits) = dn[hash + 2..].strip_suffix("'B")
        && bits.chars().all(|c| c == '0' || c == '1')
    {
        return &dn[..hash];
    }
    dn
}

/// The mail addresses among an entry's mail attribute values, in order, each with
/// whether it is the primary one: plain values of the mail attributes (the first
/// address found is primary), `SMTP:`/`smtp:` values of proxy-style ones (`SMTP:` is
/// primary; other prefixes such as `X500:` are not mail addresses).
fn mail_values<'a>(e: &'a Entry, s: &'a LdapSettings) -> impl Iterator<Item = (&'a str, bool)> {
    let mut found = false;
    s.leaf_mail_attributes
        .iter()
        .flat_map(move |attr| e.values(attr))
        .filter_map(move |v| {
            let v = v.trim();
            let (address, is_primary) = match v.split_once(':') {
                Some((p, a)) if p.eq_ignore_ascii_case("smtp") => (a, p == "SMTP"),
                Some(_) if !v.contains('@') || v.find(':') < v.find('@') => return None,
                _ => (v, !found),
            };
            if !address.contains('@') {
                return None;
            }
            found = true;
            Some((address, is_primary))
        })
}

/// The addresses of an entry ([`mail_values`]), primary first, case folded and
/// without duplicates.
pub fn addresses(e: &Entry, s: &LdapSettings) -> Vec<String> {
    let mut primary: Vec<String> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    for (address, is_primary) in mail_values(e, s) {
        let a = fold_case(address);
        if is_primary && primary.is_empty() {
            primary.push(a);
        } else {
            rest.push(a);
        }
    }
    primary.extend(rest);
    if primary.len() <= 16 {
        // A person's two or three addresses: no set needed.
        let mut out: Vec<String> = Vec::with_capacity(primary.len());
        for a in primary {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        return out;
    }
    let mut seen = std::collections::HashSet::new();
    primary.retain(|a| seen.insert(a.clone()));
    primary
}

/// The first of [`addresses`] (the primary address), without reading the others:
/// all a person costs in a snapshot.
pub fn primary_address(e: &Entry, s: &LdapSettings) -> Option<String> {
    let mut first: Option<&str> = None;
    for (address, is_primary) in mail_values(e, s) {
        if is_primary {
            return Some(fold_case(address));
        }
        first.get_or_insert(address);
    }
    first.map(fold_case)
}

/// True when an entry is a list: it has members of some kind, a dynamic filter, or a
/// list object class.
pub fn is_list(e: &Entry, s: &LdapSettings) -> bool {
    s.member_dn_attributes
        .iter()
        .chain(&s.member_url_attributes)
        .chain(&s.literal_member_attributes)
        .any(|a| e.values(a).next().is_some())
        || s.filter_list
            .as_ref()
            .is_some_and(|fl| e.values(&fl.filter_attribute).next().is_some())
        || e.values("objectClass").any(|c| {
            s.group_object_classes
                .iter()
                .any(|g| g.eq_ignore_ascii_case(c))
        })
}

/// Direct members of a list entry: member DNs, URLs, literal addresses, filters.
pub fn direct_members(e: &Entry, s: &LdapSettings) -> usize {
    let filters = s
        .filter_list
        .as_ref()
        .map_or(0, |fl| e.values(&fl.filter_attribute).count());
    s.member_dn_attributes
        .iter()
        .chain(&s.member_url_attributes)
        .chain(&s.literal_member_attributes)
        .map(|a| e.values(a).count())
        .sum::<usize>()
        + filters
}

/// The key an entry is known by: its UUID when the server gives one, else its DN.
pub fn entry_key(e: &Entry) -> String {
    if let Some(u) = e.values("entryUUID").next() {
        return u.to_ascii_lowercase();
    }
    if let Some(g) = e
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("objectGUID"))
        .and_then(|(_, v)| v.first())
    {
        return g.iter().map(|b| format!("{b:02x}")).collect();
    }
    normalize_dn(&e.dn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the LDAP fuzz target: a value whose `#'` and `'B` overlap (`#'B`)
    /// sliced backwards and panicked.
    #[test]
    fn strip_uid_takes_only_a_whole_uid() {
        assert_eq!(strip_uid("#'B"), "#'B");
        assert_eq!(strip_uid("x#'B"), "x#'B");
        assert_eq!(strip_uid("cn=a,dc=x#''B"), "cn=a,dc=x");
        assert_eq!(strip_uid("cn=a,dc=x#'0101'B"), "cn=a,dc=x");
        assert_eq!(strip_uid("cn=a,dc=x#'012'B"), "cn=a,dc=x#'012'B");
    }
}
