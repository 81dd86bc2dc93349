// SPDX-License-Identifier: GPL-3.0-or-later
//! The virtual(5) and aliases(5) parsers, the lists a file source makes of their
//! entries, and the directory index built from those lists.

use super::assert_one_line;
use crate::directory::index::{DirectoryIndex, IndexOptions, Resolved};
use crate::directory::parse::{ParseError, Parsed, RawTarget, parse_aliases, parse_virtual};
use crate::directory::source::{AliasesSource, Member, VirtualSource};
use crate::policy::DomainSet;
use crate::policy::address::{RecipientDelimiter, fold_case};
use std::path::{Path, PathBuf};

/// Include files one aliases file may read before reads fail, so that a file whose
/// includes fan out (each naming several others, ten deep) stays fast to fuzz.
const MAX_INCLUDE_READS: usize = 32;

/// Parses `data` as a table file and panics when an invariant breaks. The first byte
/// picks the format (bit 0: aliases(5), else virtual(5)), the domains of the source
/// (bits 1-2), the expansion depth (bits 3-5) and the recipient delimiter (bit 6). The
/// rest, up to its first NUL, is the file; after the NUL comes the text every
/// `:include:` file has.
///
/// Invariants: no panic; an error names the file (or an include) and a line of it, on
/// one line; every entry's key is non-empty and case folded, at a line of the file;
/// every address target is non-empty, case folded and free of controls; warnings are
/// one line each; the index built from the lists counts each list at least its
/// mailboxes, never more external than total, and a message to every key at least its
/// largest list.
pub fn tables(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (text, included) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let included = String::from_utf8_lossy(included);
    let domains: Vec<String> = match (head >> 1) & 3 {
        0 => vec![],
        1 => vec!["corp.example".into()],
        2 => vec!["lists.corp.example".into(), "corp.example".into()],
        _ => vec!["xn--bcher-kva.example".into()],
    };
    let aliases = head & 1 == 1;
    let file = PathBuf::from(if aliases {
        "/etc/postfix/aliases"
    } else {
        "/etc/postfix/virtual"
    });

    let mut reads = 0;
    let mut reader = |p: &Path| -> std::io::Result<String> {
        reads += 1;
        if reads > MAX_INCLUDE_READS || !p.starts_with("/etc/postfix") {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        Ok(included.clone().into_owned())
    };
    let parsed = if aliases {
        parse_aliases(&text, &file, &mut reader)
    } else {
        parse_virtual(&text, &file)
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            check_error(&e, &file, &text, &included);
            return;
        }
    };
    check_parsed(&parsed, &file, &text, aliases);

    let data = if aliases {
        if domains.is_empty() {
            return;
        }
        AliasesSource {
            path: file,
            domains: domains.clone(),
        }
        .lists(parsed)
    } else {
        VirtualSource {
            path: file,
            domains: domains.clone(),
        }
        .lists(parsed)
    };
    for w in &data.warnings {
        assert_one_line("source warning", w, usize::MAX);
    }
    let keys: Vec<String> = data.lists.iter().map(|l| l.address.clone()).collect();
    for l in &data.lists {
        assert!(!l.address.is_empty(), "a list without an address");
        for m in &l.members {
            if let Member::Address(a) = m {
                assert!(!a.is_empty(), "an empty member of {}", l.address);
            }
        }
    }
    let index = DirectoryIndex::build_from(
        data.lists,
        &IndexOptions {
            max_depth: usize::from((head >> 3) & 7) + 1,
            internal: DomainSet::new(&domains).expect("valid domains"),
            max_audience: 0,
            recipient_delimiter: RecipientDelimiter::new(if head & 0x40 == 0 { "+" } else { "" }),
        },
    );
    check_index(&index, &keys);
}

fn check_error(e: &ParseError, file: &Path, text: &str, included: &str) {
    let lines = if e.file == file {
        text.lines().count()
    } else {
        assert!(
            e.file.starts_with("/etc/postfix"),
            "an error in a file never read: {e:?}"
        );
        included.lines().count()
    };
    assert!(
        (1..=lines.max(1)).contains(&e.line),
        "line {} of a {lines}-line file: {e:?}",
        e.line
    );
    let shown = e.to_string();
    assert_one_line("table error", &shown, usize::MAX);
    assert!(
        shown.starts_with(&format!(
            "{}:{}: ",
            crate::text::neutralize(&e.file.display().to_string()),
            e.line
        )),
        "the error does not start with file:line: {shown}"
    );
}

fn check_parsed(parsed: &Parsed, file: &Path, text: &str, aliases: bool) {
    let lines = text.lines().count();
    for e in &parsed.entries {
        assert!(!e.key.is_empty(), "an empty key at line {}", e.line);
        assert_eq!(e.key, fold_case(&e.key), "a key not case folded");
        if !aliases {
            assert!(
                !e.key.contains(char::is_whitespace),
                "a virtual key with a space: {:?}",
                e.key
            );
        }
        assert_eq!(e.file, file);
        assert!((1..=lines).contains(&e.line), "line {} of {lines}", e.line);
        for t in &e.targets {
            if let RawTarget::Address(a) = t {
                assert!(!a.is_empty(), "an empty address in {:?}", e.key);
                assert_eq!(*a, fold_case(a), "an address not case folded");
                assert!(
                    !a.chars().any(char::is_control),
                    "an address with a control character: {a:?}"
                );
            }
        }
    }
    for w in &parsed.warnings {
        assert_one_line("table warning", w, usize::MAX);
    }
}

pub(super) fn check_index(index: &DirectoryIndex, keys: &[String]) {
    for l in index.lists() {
        assert!(
            l.mailboxes.windows(2).all(|w| w[0] < w[1]),
            "{}'s mailboxes are not sorted and distinct",
            l.address
        );
        assert!(l.external() <= l.total(), "{} more external", l.address);
    }
    let audience = index.audience(keys.iter().map(String::as_str));
    assert!(audience.external <= audience.total, "{audience:?}");
    let lists_total: u64 = audience.lists.iter().map(|l| l.total()).sum();
    // Each recipient resolves to lists (counted above) or to mailboxes, one each.
    let direct: usize = keys
        .iter()
        .map(|k| {
            index
                .resolve(k)
                .iter()
                .filter(|r| !matches!(r, Resolved::List(_)))
                .count()
        })
        .sum();
    assert!(
        audience.total <= lists_total + direct as u64,
        "an audience larger than its parts: {audience:?}"
    );
    if let Some(first) = audience.lists.first() {
        assert!(audience.total >= first.total(), "{audience:?}");
    }
}

/// Seeds: the table files and cases of the unit tests.
pub fn seeds() -> Vec<Vec<u8>> {
    let virtual_files = [
        "all@corp.example a@corp.example, bob\nstaff  x@corp.example\n@old.example @corp.example\n",
        "# comment\nall@corp.example ann@corp.example,\n  bob@corp.example\n\tcarol\n",
        "Team@Corp.Example \"Ann Smith\"@corp.example <bob@corp.example>\n",
        "all@x.example ann@x.example, b\u{1b}]0;pwned\u{7}@x.example\n",
        "staff: ann\n",
        "loop@corp.example loop@corp.example, other@corp.example\nother@corp.example loop@corp.example\n",
        "a@corp.example b@corp.example\na@corp.example c@corp.example\n",
    ];
    let aliases_files = [
        "biglist: :include:/etc/postfix/members.inc, \"|/usr/bin/archive\", /var/mail/archive\0m1@corp.example\nm2\n",
        "postmaster: root\nroot: ann, bob@corp.example\n\"odd name\": carol\n",
        "staff: error:5.1.1 gone, discard:, ann\n",
        "deep: :include:members.inc\0:include:members.inc, x\n",
        "fan: :include:a, :include:b, :include:c\0:include:a/x, :include:b/x, ann\n",
        "list: \"unbalanced\n",
    ];
    let mut out = Vec::new();
    for (i, text) in virtual_files.iter().enumerate() {
        out.push([&[(i as u8 % 4) << 1][..], text.as_bytes()].concat());
    }
    for (i, text) in aliases_files.iter().enumerate() {
        out.push([&[1 | ((i as u8 % 3 + 1) << 1) | 0x08][..], text.as_bytes()].concat());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    #[test]
    fn every_seed_parses_or_says_where() {
        let seeds = seeds();
        assert!(seeds.len() > 10);
        for seed in &seeds {
            tables(seed);
        }
    }

    fn config() -> Config {
        crate::fuzz::proptest_config(256, 0x7ab1_e500)
    }

    /// One line of a table file: keys, targets, separators and hostile characters.
    fn line() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "all@corp.example",
            "ANN@Corp.Example",
            "bob",
            "@corp.example",
            "staff:",
            "\"quoted name\":",
            ":include:members.inc",
            ":include:/etc/postfix/x",
            "|/usr/bin/prog",
            "/var/mail/box",
            "error:gone",
            "\"",
            "<x@y.example>",
            ",",
            " ",
            "\t",
            "\r",
            "\u{1b}",
            "\u{202e}",
            "\u{feff}",
            "STRASSE@x.example",
            "ß",
            "\\",
            "#",
            "\u{0}",
            "list+tag@corp.example",
            "",
        ]);
        (prop::collection::vec(token, 0..8), any::<bool>()).prop_map(|(parts, indent)| {
            let mut l = String::new();
            if indent {
                l.push(' ');
            }
            l.push_str(&parts.join(""));
            l.push('\n');
            l
        })
    }

    fn file() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u8>(),
            prop::collection::vec(line(), 0..12),
            prop::collection::vec(line(), 0..4),
        )
            .prop_map(|(head, lines, included)| {
                let mut out = vec![head];
                out.extend(lines.concat().replace('\0', "").bytes());
                out.push(0);
                out.extend(included.concat().bytes());
                out
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn structured_tables_parse_or_say_where(data in file()) {
            tables(&data);
        }

        #[test]
        fn any_bytes_parse_or_say_where(data in prop::collection::vec(any::<u8>(), 0..512)) {
            tables(&data);
        }
    }
}
