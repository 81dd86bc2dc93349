// SPDX-License-Identifier: GPL-3.0-or-later
//! Parsers for Postfix's text lookup tables: virtual(5) and aliases(5) source files.
//!
//! They return raw entries exactly as written (keys and targets case folded with
//! [`fold_case`], as Postfix folds table keys; nothing qualified with a domain yet); the
//! directory sources turn them into list edges.

use crate::policy::address::fold_case;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One `key value, value` line (continuations joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// The key, lower-cased: `user@domain`, `user` or `@domain` (virtual), or a local
    /// name (aliases).
    pub key: String,
    /// The targets in file order.
    pub targets: Vec<RawTarget>,
    /// The file the entry was read from (an `:include:` file for included targets is
    /// not recorded here: the entry belongs to the aliases file line).
    pub file: PathBuf,
    /// 1-based line of the key.
    pub line: usize,
}

/// One target of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawTarget {
    /// An address (`user@domain`, a bare `user`, or `@domain` in virtual(5)),
    /// lower-cased, brackets and quotes around the whole address removed.
    Address(String),
    /// `|command` (aliases): delivered to a program, not a mailbox.
    Pipe(String),
    /// `/path/file` (aliases): appended to a file, not a mailbox.
    File(String),
    /// `error:...`, `discard:...` and other `transport:` targets that reach no mailbox.
    Special(String),
}

/// What is wrong at a line of a table file. Its text is neutralised
/// ([`crate::text::neutralize`]): the message quotes the file's own text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}:{line}: {}",
    crate::text::neutralize(&file.display().to_string()),
    crate::text::neutralize(message)
)]
pub struct ParseError {
    /// The file (for an include problem, the included file when it could be read).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads included files; tests pass an in-memory map.
pub type IncludeReader<'a> = dyn FnMut(&Path) -> std::io::Result<String> + 'a;

/// The entries of one file, and what was read but ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Entries in file order; for a key defined twice only the first is kept, as
    /// `postmap` and `postalias` do.
    pub entries: Vec<RawEntry>,
    /// Duplicate keys, with file and line.
    pub warnings: Vec<String>,
}

/// How deep `:include:` files may nest.
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// One logical line: continuation lines (starting with whitespace) joined to the line
/// before them, comments and blank lines dropped.
struct Logical {
    line: usize,
    text: String,
}

/// Splits a table file into logical lines, as Postfix's `readlline` does.
fn logical_lines(text: &str) -> Vec<Logical> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<Logical> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.len() != raw.len()
            && let Some(last) = out.last_mut()
        {
            last.text.push(' ');
            last.text.push_str(trimmed.trim_end());
            continue;
        }
        out.push(Logical {
            line: i + 1,
            text: trimmed.trim_end().to_owned(),
        });
    }
    out
}

/// Splits a value list at separators outside double quotes.
fn split_outside_quotes(s: &str, is_sep: impl Fn(char) -> bool) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && is_sep(c) {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted {
        return Err("unbalanced double quote".to_owned());
    }
    parts.push(&s[start..]);
    Ok(parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect())
}

/// Removes one pair of surrounding double quotes and angle brackets.
fn unwrap_address(s: &str) -> &str {
    let s = s
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s);
    s.strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(s)
}

fn address_target(token: &str) -> Result<RawTarget, String> {
    let a = unwrap_address(token).trim().trim_start_matches('\\');
    if a.is_empty() {
        return Err(format!(
            "empty address in \"{}\"",
            crate::text::neutralize(token)
        ));
    }
    if a.chars().any(|c| c.is_control()) {
        return Err(format!(
            "control character in \"{}\"",
            crate::text::neutralize(token)
        ));
    }
    Ok(RawTarget::Address(fold_case(a)))
}

/// Parses a Postfix virtual(5) source file: `key  target, target ...`.
///
/// Keys and targets are lower-cased (`postmap` folds keys; addresses are compared
/// without case here). A key written `name:` is refused: that is aliases(5) syntax, and
/// Postfix would look it up as the literal key `name:`, which matches no address.
pub fn parse_virtual(text: &str, file: &Path) -> Result<Parsed, ParseError> {
    let mut parsed = Parsed::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in logical_lines(text) {
        let err = |message: String| ParseError {
            file: file.to_owned(),
            line: l.line,
            message,
        };
        let (key, value) = match l.text.split_once(char::is_whitespace) {
            Some((k, v)) if !v.trim().is_empty() => (k, v.trim()),
            _ => {
                return Err(err(format!(
                    "expected \"key value\", found \"{}\" with no value",
                    l.text
                )));
            }
        };
        if key.ends_with(':') {
            return Err(err(format!(
                "key \"{key}\" ends with ':': that is aliases(5) syntax; \
                 in a virtual(5) file write \"{} value\"",
                key.trim_end_matches(':')
            )));
        }
        let key = fold_case(key);
        let targets = split_outside_quotes(value, |c| c == ',' || c.is_whitespace())
            .map_err(&err)?
            .into_iter()
            .map(address_target)
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        if let Some(first) = seen.get(&key) {
            parsed.warnings.push(format!(
                "{}:{}: duplicate key \"{}\" ignored; line {first} is used",
                file.display(),
                l.line,
                crate::text::neutralize(&key)
            ));
            continue;
        }
        seen.insert(key.clone(), l.line);
        parsed.entries.push(RawEntry {
            key,
            targets,
            file: file.to_owned(),
            line: l.line,
        });
    }
    Ok(parsed)
}

/// Classifies one aliases(5) target.
fn alias_target(token: &str) -> Result<AliasTarget, String> {
    let t = token
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(token);
    if let Some(cmd) = t.strip_prefix('|') {
        return Ok(AliasTarget::Done(RawTarget::Pipe(cmd.trim().to_owned())));
    }
    if t.starts_with('/') {
        return Ok(AliasTarget::Done(RawTarget::File(t.to_owned())));
    }
    if let Some(path) = t.strip_prefix(":include:") {
        let path = path.trim();
        if path.is_empty() {
            return Err("\":include:\" without a file name".to_owned());
        }
        return Ok(AliasTarget::Include(PathBuf::from(path)));
    }
    if let Some((kind, _)) = t.split_once(':')
        && !kind.is_empty()
        && !kind.contains(['@', ' '])
    {
        return Ok(AliasTarget::Done(RawTarget::Special(t.to_owned())));
    }
    let mut targets = Vec::new();
    for part in split_outside_quotes(t, char::is_whitespace)? {
        targets.push(address_target(part)?);
    }
    Ok(AliasTarget::Addresses(targets))
}

enum AliasTarget {
    Done(RawTarget),
    Addresses(Vec<RawTarget>),
    Include(PathBuf),
}

/// Expands an aliases(5) right-hand side into `out`, following `:include:` files.
fn alias_targets(
    value: &str,
    here: &Path,
    line: usize,
    stack: &mut Vec<PathBuf>,
    reader: &mut IncludeReader<'_>,
    out: &mut Vec<RawTarget>,
) -> Result<(), ParseError> {
    let err = |message: String| ParseError {
        file: here.to_owned(),
        line,
        message,
    };
    for token in split_outside_quotes(value, |c| c == ',').map_err(err)? {
        match alias_target(token).map_err(err)? {
            AliasTarget::Done(t) => out.push(t),
            AliasTarget::Addresses(ts) => out.extend(ts),
            AliasTarget::Include(path) => {
                let path = match here.parent() {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path,
                };
                if stack.contains(&path) {
                    return Err(err(format!(":include: cycle through {}", path.display())));
                }
                if stack.len() >= MAX_INCLUDE_DEPTH {
                    return Err(err(format!(
                        ":include: files nested deeper than {MAX_INCLUDE_DEPTH} at {}",
                        path.display()
                    )));
                }
                let text = reader(&path).map_err(|e| {
                    err(format!("cannot read include file {}: {e}", path.display()))
                })?;
                stack.push(path.clone());
                let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
                for (i, raw) in text.lines().enumerate() {
                    let raw = raw.trim();
                    if raw.is_empty() || raw.starts_with('#') {
                        continue;
                    }
                    alias_targets(raw, &path, i + 1, stack, reader, out)?;
                }
                stack.pop();
            }
        }
    }
    Ok(())
}

/// Parses an aliases(5) file: `name: target, target ...`, following `:include:` files
/// through `reader` (relative include paths are taken from the aliases file's folder).
///
/// Names are lower-cased and may be quoted. Targets are addresses or local names,
/// `|command`, `/file` and `:include:/file`; other `kind:` targets are kept as
/// [`RawTarget::Special`].
pub fn parse_aliases(
    text: &str,
    file: &Path,
    reader: &mut IncludeReader<'_>,
) -> Result<Parsed, ParseError> {
    let mut parsed = Parsed::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in logical_lines(text) {
        let err = |message: String| ParseError {
            file: file.to_owned(),
            line: l.line,
            message,
        };
        let (name, value) = split_alias_name(&l.text)
            .ok_or_else(|| err(format!("expected \"name: value\", found \"{}\"", l.text)))?;
        if value.trim().is_empty() {
            return Err(err(format!("alias \"{name}\" has no value")));
        }
        let key = fold_case(name);
        let mut targets = Vec::new();
        let mut stack = vec![file.to_owned()];
        alias_targets(value, file, l.line, &mut stack, reader, &mut targets)?;
        if let Some(first) = seen.get(&key) {
            parsed.warnings.push(format!(
                "{}:{}: duplicate alias \"{}\" ignored; line {first} is used",
                file.display(),
                l.line,
                crate::text::neutralize(&key)
            ));
            continue;
        }
        seen.insert(key.clone(), l.line);
        parsed.entries.push(RawEntry {
            key,
            targets,
            file: file.to_owned(),
            line: l.line,
        });
    }
    Ok(parsed)
}

/// Splits `name: value`, where the name may be double-quoted.
fn split_alias_name(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('"') {
        let end = rest.find('"')?;
        let name = &rest[..end];
        let after = rest[end + 1..].trim_start().strip_prefix(':')?;
        return (!name.is_empty()).then_some((name, after));
    }
    let colon = s.find(':')?;
    let name = s[..colon].trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some((name, &s[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> RawTarget {
        RawTarget::Address(s.to_owned())
    }

    fn virt(text: &str) -> Result<Parsed, ParseError> {
        parse_virtual(text, Path::new("/etc/postfix/virtual"))
    }

    /// Found by the tables fuzz target: a duplicate key's control characters reached
    /// the warning, which is logged as it is.
    #[test]
    fn duplicate_warnings_show_control_characters_as_escapes() {
        let parsed = virt("a\u{1b}b@x c@x\na\u{1b}b@x d@x\n").expect("parsed");
        assert_eq!(
            parsed.warnings,
            ["/etc/postfix/virtual:2: duplicate key \"a\\x1Bb@x\" ignored; line 1 is used"]
        );
        let mut none = |_: &Path| -> std::io::Result<String> { Ok(String::new()) };
        let parsed = parse_aliases(
            "\"a\u{202e}\": b\n\"a\u{202e}\": c\n",
            Path::new("/a"),
            &mut none,
        )
        .expect("parsed");
        assert_eq!(
            parsed.warnings,
            ["/a:2: duplicate alias \"a\\u{202E}\" ignored; line 1 is used"]
        );
    }

    #[test]
    fn errors_show_control_characters_as_escapes() {
        let e = virt("all@x.example ann@x.example, b\u{1b}]0;pwned\u{7}@x.example\n").unwrap_err();
        assert_eq!(
            e.message,
            "control character in \"b\\x1B]0;pwned\\x07@x.example\""
        );
        let e = virt("bad\u{202e}key\u{1b}[2J\n").unwrap_err();
        let shown = e.to_string();
        assert!(!shown.contains(['\u{1b}', '\u{202e}']), "{shown:?}");
        assert!(shown.contains("bad\\u{202E}key\\x1B[2J"), "{shown}");
        let e = parse_virtual("a@x b@x c\u{9b}@x\n", Path::new("/etc/virt\u{1b}ual")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/virt\\x1Bual:1: control character in \"c\\x9B@x\""
        );
    }

    fn no_includes(p: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} not found", p.display()),
        ))
    }

    fn aliases_with(text: &str, files: &[(&str, &str)]) -> Result<Parsed, ParseError> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect();
        let mut reader = |p: &Path| {
            files.get(p).cloned().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
            })
        };
        parse_aliases(text, Path::new("/etc/aliases"), &mut reader)
    }

    #[test]
    fn virtual_keys_targets_comments_and_continuations() {
        let p = virt(
            "# lists\n\
             \u{20}  # indented comment\n\
             All@Corp.Example  a@corp.example, B@Corp.Example\n\
             \tc@corp.example\n\
             \n\
             @old.example\t@corp.example\r\n\
             staff x@corp.example y@corp.example,z@corp.example\n",
        )
        .expect("parse");
        assert!(p.warnings.is_empty());
        assert_eq!(p.entries.len(), 3);
        assert_eq!(p.entries[0].key, "all@corp.example");
        assert_eq!(p.entries[0].line, 3);
        assert_eq!(
            p.entries[0].targets,
            [
                addr("a@corp.example"),
                addr("b@corp.example"),
                addr("c@corp.example")
            ]
        );
        assert_eq!(p.entries[1].key, "@old.example");
        assert_eq!(p.entries[1].targets, [addr("@corp.example")]);
        assert_eq!(p.entries[2].line, 7);
        assert_eq!(p.entries[2].targets.len(), 3);
    }

    #[test]
    fn virtual_first_duplicate_wins_with_a_warning() {
        let p = virt("a@x.example one@x.example\nA@X.example two@x.example\n").expect("parse");
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].targets, [addr("one@x.example")]);
        assert_eq!(
            p.warnings,
            ["/etc/postfix/virtual:2: duplicate key \"a@x.example\" ignored; line 1 is used"]
        );
    }

    #[test]
    fn virtual_malformed_lines_name_the_line() {
        let e = virt("a@x.example b@x.example\nlonely@x.example\n").expect_err("no value");
        assert_eq!(e.line, 2);
        assert!(
            e.to_string()
                .starts_with("/etc/postfix/virtual:2: expected \"key value\""),
            "{e}"
        );

        let e = virt("# c\nlist: a@x.example\n").expect_err("aliases syntax");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("aliases(5) syntax"), "{e}");

        let e = virt("a@x.example \"b@x.example\n").expect_err("quote");
        assert!(e.message.contains("unbalanced double quote"), "{e}");
    }

    #[test]
    fn virtual_brackets_quotes_and_bom() {
        let p = virt("\u{feff}a@x.example <B@x.example>, \"c d\"@x.example\n").expect("parse");
        assert_eq!(p.entries[0].key, "a@x.example");
        assert_eq!(
            p.entries[0].targets,
            [addr("b@x.example"), addr("\"c d\"@x.example")]
        );
    }

    #[test]
    fn continuation_before_any_entry_starts_one() {
        let p = virt("   a@x.example b@x.example\n").expect("parse");
        assert_eq!(p.entries[0].key, "a@x.example");
    }

    #[test]
    fn aliases_targets_of_every_kind() {
        let p = aliases_with(
            "# comment\n\
             postmaster: root\n\
             Root: admin@corp.example, \\root\n\
             archive: \"|/usr/bin/archive --all\", /var/mail/archive, error:5.1.1 gone\n\
             \"quoted name\": a@corp.example,\n\
             \x20 b@corp.example\n",
            &[],
        )
        .expect("parse");
        let keys: Vec<&str> = p.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["postmaster", "root", "archive", "quoted name"]);
        assert_eq!(
            p.entries[1].targets,
            [addr("admin@corp.example"), addr("root")]
        );
        assert_eq!(
            p.entries[2].targets,
            [
                RawTarget::Pipe("/usr/bin/archive --all".into()),
                RawTarget::File("/var/mail/archive".into()),
                RawTarget::Special("error:5.1.1 gone".into()),
            ]
        );
        assert_eq!(
            p.entries[3].targets,
            [addr("a@corp.example"), addr("b@corp.example")]
        );
        assert_eq!(p.entries[3].line, 5);
    }

    #[test]
    fn aliases_follow_nested_includes() {
        let p = aliases_with(
            "staff: :include:/lists/staff, boss\nrel: :include:relative.inc\n",
            &[
                (
                    "/lists/staff",
                    "# members\nm1@corp.example\nm2@corp.example, m3\n:include:/lists/more\n",
                ),
                ("/lists/more", "m4@corp.example\n"),
                ("/etc/relative.inc", "r1\n"),
            ],
        )
        .expect("parse");
        assert_eq!(
            p.entries[0].targets,
            [
                addr("m1@corp.example"),
                addr("m2@corp.example"),
                addr("m3"),
                addr("m4@corp.example"),
                addr("boss")
            ]
        );
        assert_eq!(p.entries[1].targets, [addr("r1")]);
    }

    #[test]
    fn aliases_include_cycles_depth_and_missing_files_are_errors() {
        let e = aliases_with(
            "loop: :include:/l/a\n",
            &[("/l/a", "x\n:include:/l/b\n"), ("/l/b", ":include:/l/a\n")],
        )
        .expect_err("cycle");
        assert_eq!(e.file, PathBuf::from("/l/b"));
        assert_eq!(e.line, 1);
        assert!(e.message.contains(":include: cycle through /l/a"), "{e}");

        let files: Vec<(String, String)> = (0..20)
            .map(|i| (format!("/d/{i}"), format!(":include:/d/{}\n", i + 1)))
            .collect();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let e = aliases_with("deep: :include:/d/0\n", &refs).expect_err("depth");
        assert!(e.message.contains("nested deeper than 10"), "{e}");

        let e = aliases_with("a: b\nmissing: :include:/nope\n", &[]).expect_err("missing");
        assert_eq!((e.file.as_path(), e.line), (Path::new("/etc/aliases"), 2));
        assert!(e.message.contains("cannot read include file /nope"), "{e}");
    }

    #[test]
    fn aliases_malformed_lines_name_the_line() {
        let e = parse_aliases(
            "ok: a\nno colon here\n",
            Path::new("/etc/aliases"),
            &mut no_includes,
        )
        .expect_err("colon");
        assert_eq!(e.line, 2);
        assert!(
            e.to_string()
                .starts_with("/etc/aliases:2: expected \"name: value\""),
            "{e}"
        );

        let e = aliases_with("empty:\n", &[]).expect_err("empty");
        assert!(e.message.contains("alias \"empty\" has no value"), "{e}");

        let e = aliases_with("a: :include:\n", &[]).expect_err("include name");
        assert!(e.message.contains("without a file name"), "{e}");
    }

    #[test]
    fn aliases_duplicates_warn() {
        let p = aliases_with("a: one\nA: two\n", &[]).expect("parse");
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].targets, [addr("one")]);
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn parsing_is_linear_in_size() {
        let mut text = String::from("big@x.example");
        for i in 0..200_000 {
            text.push_str(&format!("\n  m{i}@x.example,"));
        }
        let p = virt(&text).expect("parse");
        assert_eq!(p.entries[0].targets.len(), 200_000);
    }
}
