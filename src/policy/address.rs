// SPDX-License-Identifier: GPL-3.0-or-later
//! Address normalisation and the matchers the rules use: internal domains and sender globs.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::HashSet;

/// Brings one envelope or header address to the form Postfix looks it up in: the
/// canonical form every comparison and every directory lookup uses.
///
/// Surrounding white space and angle brackets are stripped, RFC 822 comments
/// (`list(x)@dom`) and white space outside quotes are dropped, a source route
/// (`@a,@b:user@dom`) is dropped, and the local part is unquoted (quotes and backslash
/// escapes removed: Postfix's internal form) and then quoted again only where it must
/// be (`"a b"@dom`: `quote_822_local`, the external form Postfix queries its tables
/// with), so `"list"@dom`, `\list@dom` and `list@dom` are one address. The domain is
/// ASCII lower-cased and loses a trailing dot; the local part keeps its case, as
/// RFC 5321 requires ([`fold_case`] compares). The null sender (`<>`) becomes the
/// empty string. A bare name stays bare: [`AddressForm::canonical`] qualifies it.
pub fn normalize(raw: &str) -> String {
    let mut addr = raw.trim();
    if let Some(inner) = addr.strip_prefix('<') {
        addr = inner.strip_suffix('>').unwrap_or(inner).trim();
    }
    let tokens = strip_comments(addr);
    let mut addr = tokens.as_str();
    if addr.starts_with('@')
        && let Some((_, rest)) = addr.split_once(':')
    {
        addr = rest;
    }
    match last_unquoted_at(addr) {
        Some(at) => {
            let (local, domain) = addr.split_at(at);
            let domain = domain[1..].trim_end_matches('.');
            format!(
                "{}@{}",
                quote_local(&unquote(local)),
                domain.to_ascii_lowercase()
            )
        }
        None => quote_local(&unquote(addr)),
    }
}

/// Drops RFC 822 comments (nested, with escapes) and white space outside quoted
/// strings; quoted strings and escapes are kept for [`unquote`].
fn strip_comments(addr: &str) -> String {
    let mut out = String::with_capacity(addr.len());
    let (mut depth, mut quoted) = (0usize, false);
    let mut chars = addr.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next();
                if depth == 0 {
                    out.push(c);
                    out.extend(next);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            _ if quoted => out.push(c),
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 || c.is_whitespace() => {}
            _ => out.push(c),
        }
    }
    out
}

/// The byte offset of the last `@` outside a quoted string or escape.
fn last_unquoted_at(addr: &str) -> Option<usize> {
    let (mut quoted, mut escaped, mut at) = (false, false, None);
    for (i, c) in addr.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '@' if !quoted => at = Some(i),
            _ => {}
        }
    }
    at
}

/// Postfix's internal form of a local part: quotes removed, escapes resolved.
fn unquote(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    let mut chars = local.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {}
            '\\' => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

/// Postfix's external form of an unquoted local part (`quote_822_local`): quoted, with
/// `"` and `\` escaped, only when it is not a dot-atom.
fn quote_local(local: &str) -> String {
    const SPECIALS: &str = "()<>@,;:\\\".[] ";
    let atom = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| !c.is_control() && !SPECIALS.contains(c))
    };
    if local.is_empty() || local.split('.').all(atom) {
        return local.to_owned();
    }
    let mut out = String::with_capacity(local.len() + 2);
    out.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Appends `@origin` to a bare name (no `@`), as Postfix's address rewriting does with
/// `$myorigin`; anything else, or an empty origin, leaves the address as it is.
pub fn qualify(addr: String, origin: &str) -> String {
    if addr.is_empty() || origin.is_empty() || last_unquoted_at(&addr).is_some() {
        return addr;
    }
    format!("{addr}@{origin}")
}

/// How the MTA completes and compares addresses: its `$myorigin` and its
/// `recipient_delimiter`. The default knows neither (no qualification, no extension).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressForm {
    /// Postfix's `myorigin` (lower case): the domain a bare name gets. Empty: none.
    pub myorigin: String,
    /// Postfix's `recipient_delimiter`.
    pub delimiter: RecipientDelimiter,
}

impl AddressForm {
    /// The canonical form of a raw address ([`normalize`]), a bare name qualified
    /// with `$myorigin`.
    pub fn canonical(&self, raw: &str) -> String {
        qualify(normalize(raw), &self.myorigin)
    }

    /// The key two canonical addresses are compared by when asking "is this the same
    /// recipient": case folded ([`fold_case`]) and without an address extension, so
    /// `Dept+x@d` and `dept@d`, `STRASSE@d` and `straße@d` are the same.
    pub fn same_key(&self, addr: &str) -> String {
        let qualified = qualify(addr.to_owned(), &self.myorigin);
        fold_case(&self.delimiter.strip(&qualified).unwrap_or(qualified))
    }
}

/// Folds the case of an address or table key the way Postfix does with SMTPUTF8
/// (`casefold(3)`: ASCII lower-casing for ASCII text, Unicode full case folding
/// otherwise, so `ÄRZTE` and `ärzte`, `STRASSE` and `straße` are one key). Every key a
/// directory source reads and every address looked up in it goes through this one
/// function, so both sides always agree.
pub fn fold_case(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        caseless::default_case_fold_str(s)
    }
}

/// Local parts Postfix never splits at a delimiter (`split_addr(3)`).
const NEVER_SPLIT: [&str; 3] = ["postmaster", "mailer-daemon", "double-bounce"];

/// Postfix's `recipient_delimiter`: the set of characters that separate a local part
/// from its extension (`list+tag@domain`). Empty: addresses have no extension.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecipientDelimiter(String);

impl RecipientDelimiter {
    /// A delimiter set as written in main.cf or the configuration (`+`, `+-`).
    pub fn new(set: &str) -> RecipientDelimiter {
        RecipientDelimiter(set.to_owned())
    }

    /// The characters, as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when no character is a delimiter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The address without its extension, as Postfix's `split_addr` cuts it: at the
    /// first character of the set, not when that leaves an empty local part, never for
    /// postmaster, mailer-daemon and double-bounce, and (when `-` is in the set, with
    /// Postfix's default `owner_request_special`) never for `owner-*` and `*-request`.
    /// `None` when the address has no extension.
    pub fn strip(&self, address: &str) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let (local, rest) = match address.rfind('@') {
            Some(at) => address.split_at(at),
            None => (address, ""),
        };
        if NEVER_SPLIT.iter().any(|n| local.eq_ignore_ascii_case(n)) {
            return None;
        }
        if self.0.contains('-') {
            let lower = local.to_ascii_lowercase();
            if lower.starts_with("owner-") || lower.ends_with("-request") {
                return None;
            }
        }
        match local.find(|c| self.0.contains(c)) {
            Some(cut) if cut > 0 => Some(format!("{}{rest}", &local[..cut])),
            _ => None,
        }
    }
}

/// The domain part of a normalised address, if it has one.
pub fn domain_of(addr: &str) -> Option<&str> {
    addr.rfind('@')
        .map(|at| &addr[at + 1..])
        .filter(|d| !d.is_empty())
}

/// An error in a domain pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainPatternError {
    /// The pattern is empty.
    #[error("empty domain")]
    Empty,
    /// A wildcard anywhere but a leading `*.`.
    #[error("invalid domain pattern \"{0}\": only a leading \"*.\" wildcard is allowed")]
    Wildcard(String),
    /// Characters that cannot appear in a domain name.
    #[error("invalid domain \"{0}\"")]
    Invalid(String),
}

/// The set of internal domains: exact names and `*.` suffix patterns.
///
/// `example.org` matches only `example.org`; `*.example.org` matches any subdomain of it
/// (`a.example.org`, `b.a.example.org`) but not `example.org` itself.
#[derive(Clone, Debug, Default)]
pub struct DomainSet {
    exact: HashSet<String>,
    suffixes: HashSet<String>,
}

impl DomainSet {
    /// Builds the set from patterns; the first bad pattern is returned with its index.
    pub fn new<I, S>(patterns: I) -> Result<Self, (usize, DomainPatternError)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = DomainSet::default();
        for (i, p) in patterns.into_iter().enumerate() {
            set.insert(p.as_ref()).map_err(|e| (i, e))?;
        }
        Ok(set)
    }

    fn insert(&mut self, pattern: &str) -> Result<(), DomainPatternError> {
        let p = pattern.trim().to_ascii_lowercase();
        let (suffix, name) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest.trim_end_matches('.').to_owned()),
            None => (false, p.trim_end_matches('.').to_owned()),
        };
        if name.is_empty() {
            return Err(DomainPatternError::Empty);
        }
        if name.contains('*') {
            return Err(DomainPatternError::Wildcard(pattern.to_owned()));
        }
        let valid = name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        });
        if !valid {
            return Err(DomainPatternError::Invalid(pattern.to_owned()));
        }
        if suffix {
            self.suffixes.insert(name);
        } else {
            self.exact.insert(name);
        }
        Ok(())
    }

    /// Adds one exact domain (Postfix's `$myorigin`: a bare name is completed with it
    /// and delivered as Postfix's own, so it is internal like the bare name was).
    /// An address literal or a malformed name is not added.
    pub fn add_exact(&mut self, domain: &str) {
        let _ = self.insert(domain.trim_start_matches("*."));
    }

    /// True when no domain is configured.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }

    /// True when the (lower-case) domain is in the set.
    pub fn contains(&self, domain: &str) -> bool {
        if self.exact.contains(domain) {
            return true;
        }
        let mut rest = domain;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if self.suffixes.contains(rest) {
                return true;
            }
        }
        false
    }

    /// True when a normalised address is internal. An address without a domain is
    /// delivered locally by Postfix (it gets `$myorigin`), so it counts as internal.
    pub fn is_internal(&self, addr: &str) -> bool {
        match domain_of(addr) {
            Some(d) => self.contains(d),
            None => true,
        }
    }
}

/// Case-insensitive address globs (`*@trust-a.example.org`, `comms@example.org`).
#[derive(Clone, Debug)]
pub struct AddressGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Default for AddressGlobs {
    fn default() -> Self {
        AddressGlobs {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl PartialEq for AddressGlobs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for AddressGlobs {}

impl AddressGlobs {
    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// True when there is no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Compiles the patterns; the first bad one is returned with its index and the reason.
    pub fn new<I, S>(patterns: I) -> Result<Self, (usize, String)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for (i, p) in patterns.into_iter().enumerate() {
            let p = p.as_ref().trim();
            if p.is_empty() {
                return Err((i, "empty pattern".to_owned()));
            }
            let glob = GlobBuilder::new(p)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|e| (i, e.kind().to_string()))?;
            builder.add(glob);
            kept.push(p.to_owned());
        }
        let set = builder.build().map_err(|e| (0, e.to_string()))?;
        Ok(AddressGlobs {
            patterns: kept,
            set,
        })
    }

    /// The first pattern that matches the address, if any.
    pub fn first_match(&self, addr: &str) -> Option<&str> {
        if addr.is_empty() || self.patterns.is_empty() {
            return None;
        }
        self.set
            .matches(addr)
            .into_iter()
            .min()
            .map(|i| self.patterns[i].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quote inside a comment opens no quoted string, and a stray `)` outside any
    /// comment is kept as a character (a list hidden behind either would skip expansion).
    #[test]
    fn comments_hide_no_quote_and_a_stray_parenthesis_is_kept() {
        assert_eq!(
            normalize("(a\"b)biglist@corp.example"),
            "biglist@corp.example"
        );
        assert_eq!(
            normalize("big(x\"y)list@corp.example"),
            "biglist@corp.example"
        );
        assert_eq!(
            normalize("big)list@corp.example"),
            "\"big)list\"@corp.example"
        );
        assert_eq!(
            normalize("(a)b)list@corp.example"),
            "\"b)list\"@corp.example"
        );
    }

    /// The `@` that splits an address is the last one outside quotes and escapes.
    #[test]
    fn the_domain_starts_after_the_last_unquoted_at() {
        assert_eq!(last_unquoted_at("\"a@b\"@x"), Some(5));
        assert_eq!(last_unquoted_at("\"list@corp.example\""), None);
        assert_eq!(last_unquoted_at("list\\@corp.example"), None);
        assert_eq!(last_unquoted_at("a@b@c"), Some(3));
        assert_eq!(
            qualify("\"list@x\"".into(), "corp.example"),
            "\"list@x\"@corp.example"
        );
        assert_eq!(normalize("\"a@b\"@X.Example"), "\"a@b\"@x.example");
    }

    #[test]
    fn normalize_strips_brackets_and_lowercases_domain_only() {
        assert_eq!(normalize("<Bob@Example.ORG>"), "Bob@example.org");
        assert_eq!(normalize("  bob@example.org  "), "bob@example.org");
        assert_eq!(normalize("<>"), "");
        assert_eq!(
            normalize("<@relay.example,@b.example:Ann@Corp.Example>"),
            "Ann@corp.example"
        );
        assert_eq!(normalize("bob@example.org."), "bob@example.org");
        assert_eq!(normalize("postmaster"), "postmaster");
        assert_eq!(normalize("\"a@b\"@Example.Org"), "\"a@b\"@example.org");
    }

    #[test]
    fn normalize_gives_the_form_postfix_looks_up() {
        assert_eq!(
            normalize("<\"small\"@Lists.Corp.Example>"),
            "small@lists.corp.example"
        );
        assert_eq!(
            normalize("<small(c)@lists.corp.example>"),
            "small@lists.corp.example"
        );
        assert_eq!(
            normalize("(a (nested) one)sm\\all(x\\)y) @ lists.corp.example (z)"),
            "small@lists.corp.example"
        );
        assert_eq!(normalize("\"sm\"all@d.example"), "small@d.example");
        assert_eq!(normalize("\\small@d.example"), "small@d.example");
        assert_eq!(
            normalize("\"All-Staff\"@D.Example"),
            "All-Staff@d.example",
            "case kept"
        );
        assert_eq!(normalize("\"a b\"@d.example"), "\"a b\"@d.example");
        assert_eq!(normalize("a\\ b@d.example"), "\"a b\"@d.example");
        assert_eq!(normalize("\"a\\\"b\"@d.example"), "\"a\\\"b\"@d.example");
        assert_eq!(
            normalize("\"a(b)\"@d.example"),
            "\"a(b)\"@d.example",
            "no comment in quotes"
        );
        assert_eq!(normalize("\".a\"@d.example"), "\".a\"@d.example");
        assert_eq!(
            normalize("<@r.example:\"small\"@d.example>"),
            "small@d.example"
        );
        assert_eq!(normalize("<small>"), "small");
        assert_eq!(normalize("<\"small\">"), "small");
        assert_eq!(normalize("user@[192.0.2.1]"), "user@[192.0.2.1]");
    }

    #[test]
    fn address_form_qualifies_bare_names_and_compares_by_key() {
        let form = AddressForm {
            myorigin: "lists.corp.example".into(),
            delimiter: RecipientDelimiter::new("+"),
        };
        assert_eq!(form.canonical("<small>"), "small@lists.corp.example");
        assert_eq!(form.canonical("<small(c)>"), "small@lists.corp.example");
        assert_eq!(form.canonical("<\"small\">"), "small@lists.corp.example");
        assert_eq!(form.canonical("<a@b.example>"), "a@b.example");
        assert_eq!(form.canonical("<>"), "");
        assert_eq!(AddressForm::default().canonical("<small>"), "small");
        assert_eq!(
            form.same_key("Dept+x@d.example"),
            form.same_key("dept@d.example")
        );
        assert_eq!(
            form.same_key("STRASSE@d.example"),
            form.same_key("straße@d.example")
        );
        assert_eq!(form.same_key("small"), "small@lists.corp.example");
        assert_ne!(
            form.same_key("dept@d.example"),
            form.same_key("dept@e.example")
        );
    }

    #[test]
    fn fold_case_folds_unicode_like_postfix() {
        assert_eq!(fold_case("All-Staff@Example.ORG"), "all-staff@example.org");
        assert_eq!(fold_case("ÄRZTE@example.org"), "ärzte@example.org");
        assert_eq!(
            fold_case("STRASSE@x.example"),
            fold_case("straße@x.example")
        );
        assert_eq!(
            fold_case(&fold_case("ÉQUIPE")),
            fold_case("ÉQUIPE"),
            "idempotent"
        );
    }

    #[test]
    fn delimiters_split_like_postfix() {
        let plus = RecipientDelimiter::new("+");
        assert!(!plus.is_empty() && RecipientDelimiter::new("").is_empty());
        assert_eq!(RecipientDelimiter::new("").strip("list+x@d.example"), None);
        assert_eq!(
            plus.strip("list+x@d.example").as_deref(),
            Some("list@d.example")
        );
        assert_eq!(
            plus.strip("list+a+b@d.example").as_deref(),
            Some("list@d.example")
        );
        assert_eq!(plus.strip("list@d.example"), None);
        assert_eq!(plus.strip("+x@d.example"), None, "no empty local part");
        assert_eq!(plus.strip("list-x@d.example"), None);
        assert_eq!(
            plus.strip("postmaster+x@d.example").as_deref(),
            Some("postmaster@d.example")
        );
        assert_eq!(plus.strip("user+x").as_deref(), Some("user"));
        assert_eq!(
            plus.strip("owner-list+x@d.example").as_deref(),
            Some("owner-list@d.example")
        );
        let multi = RecipientDelimiter::new("+-");
        assert_eq!(
            multi.strip("list-x+y@d.example").as_deref(),
            Some("list@d.example")
        );
        assert_eq!(
            multi.strip("list+x-y@d.example").as_deref(),
            Some("list@d.example")
        );
        assert_eq!(multi.strip("owner-list@d.example"), None);
        assert_eq!(multi.strip("list-request@d.example"), None);
        assert_eq!(multi.strip("mailer-daemon@d.example"), None);
        assert_eq!(multi.strip("double-bounce@d.example"), None);
        assert_eq!(
            multi.strip("a+b@x@d.example").as_deref(),
            Some("a@d.example")
        );
        assert_eq!(
            RecipientDelimiter::default().strip("list+x@d.example"),
            None
        );
    }

    #[test]
    fn domain_of_takes_the_last_at() {
        assert_eq!(domain_of("a@b.org"), Some("b.org"));
        assert_eq!(domain_of("\"x@y\"@c.org"), Some("c.org"));
        assert_eq!(domain_of("local"), None);
        assert_eq!(domain_of("a@"), None);
    }

    #[test]
    fn domain_set_exact_and_suffix() {
        let set = DomainSet::new(["example.org", "*.nhs.example", "Trust.Example."]).unwrap();
        assert!(set.contains("example.org"));
        assert!(!set.contains("sub.example.org"));
        assert!(set.contains("a.nhs.example"));
        assert!(set.contains("b.a.nhs.example"));
        assert!(!set.contains("nhs.example"));
        assert!(!set.contains("evilnhs.example"));
        assert!(set.contains("trust.example"));
        assert!(set.is_internal("local-user"));
        let mut set = set;
        set.add_exact("Host.Example");
        set.add_exact("[192.0.2.1]");
        assert!(set.is_internal("postmaster@host.example"));
        assert!(!set.is_internal("postmaster@sub.host.example"));
        assert!(!set.is_internal("u@[192.0.2.1]"));
        assert!(!set.is_internal("x@gmail.example"));
    }

    #[test]
    fn empty_sets_equal_globs_and_the_delimiter_as_written() {
        assert!(DomainSet::default().is_empty());
        assert!(!DomainSet::new(["example.org"]).unwrap().is_empty());
        assert!(!DomainSet::new(["*.example.org"]).unwrap().is_empty());
        let globs = |p: &[&str]| AddressGlobs::new(p.iter().copied()).unwrap();
        assert!(globs(&["*@a.example"]) == globs(&["*@a.example"]));
        assert!(globs(&["*@a.example"]) != globs(&["*@b.example"]));
        assert_eq!(RecipientDelimiter::new("+-").as_str(), "+-");
    }

    #[test]
    fn domain_set_rejects_bad_patterns() {
        assert_eq!(
            DomainSet::new(["ok.org", "a.*.org"]).unwrap_err(),
            (1, DomainPatternError::Wildcard("a.*.org".into()))
        );
        assert_eq!(
            DomainSet::new([""]).unwrap_err().1,
            DomainPatternError::Empty
        );
        assert_eq!(
            DomainSet::new(["*."]).unwrap_err().1,
            DomainPatternError::Empty
        );
        assert!(matches!(
            DomainSet::new(["a..b"]).unwrap_err().1,
            DomainPatternError::Invalid(_)
        ));
        assert!(matches!(
            DomainSet::new(["a b.org"]).unwrap_err().1,
            DomainPatternError::Invalid(_)
        ));
    }

    #[test]
    fn globs_match_case_insensitively() {
        let g = AddressGlobs::new(["bulk@example.org", "*@trust-a.example.org"]).unwrap();
        assert_eq!(g.first_match("BULK@Example.org"), Some("bulk@example.org"));
        assert_eq!(
            g.first_match("ann@trust-a.example.org"),
            Some("*@trust-a.example.org")
        );
        assert_eq!(g.first_match("ann@trust-b.example.org"), None);
        assert_eq!(g.first_match(""), None);
        assert_eq!(AddressGlobs::new(["ok", "[unclosed"]).unwrap_err().0, 1);
        assert_eq!(AddressGlobs::new([" "]).unwrap_err().0, 0);
    }
}
