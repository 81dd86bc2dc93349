// SPDX-License-Identifier: GPL-3.0-or-later
//! Directory sources: where lists and aliases come from. Each source turns its input
//! into [`ListDef`]s; the index merges them. A new kind of source (LDAP, say) only has
//! to implement [`DirectorySource`].

use super::parse::{ParseError, Parsed, RawEntry, RawTarget, parse_aliases, parse_virtual};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// One list (or alias) and what it expands to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListDef {
    /// The list address, lower-cased; `@domain` for a virtual(5) catch-all. A group
    /// without an address (a directory group nested in lists) is named by its DN.
    pub address: String,
    /// Other addresses of the same list (a directory group's secondary addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its members.
    pub members: Vec<Member>,
    /// Where it was defined, e.g. `/etc/postfix/virtual:12`.
    pub origin: String,
}

/// One member of a list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Member {
    /// An address: a final mailbox, or another list. Shared: a person's address is
    /// one allocation however many lists of a snapshot name them.
    Address(std::sync::Arc<str>),
    /// A pipe, file or special target: reaches no mailbox.
    NonMailbox(String),
    /// Members known only by their number (a list held where we cannot read it).
    Count(u64),
    /// A member that could not be counted (a dangling reference, an empty group, a
    /// dynamic list whose search failed), with the reason: never one recipient.
    Unknown(String),
    /// The source cannot say anything now (no snapshot yet, or too old), with the
    /// reason: messages reaching it are tempfailed.
    Unavailable(String),
}

/// What a source yields; lists it keeps itself (an LDAP snapshot's) are borrowed,
/// not copied.
#[derive(Clone, Debug, Default)]
pub struct SourceData<'a> {
    /// Lists and aliases.
    pub lists: Vec<Cow<'a, ListDef>>,
    /// Entries that were read but cannot be counted, with the reason.
    pub warnings: Vec<String>,
    /// Lists used only where no source defines the address (an LDAP source's
    /// vanished lists, which must not shadow a list that moved elsewhere).
    pub fallback: Vec<ListDef>,
}

/// Why a source could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file has a malformed line.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// What one source gave at a load, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceTally {
    /// The source's `source` label: an LDAP source's name, `config` for `[[list]]`,
    /// else the description.
    pub name: String,
    /// When its data was read (seconds since the epoch); `None`: at this load.
    pub taken_at: Option<u64>,
    /// How often it is refreshed; zero: read at start and reload only.
    pub interval: std::time::Duration,
    /// Entries read (an LDAP source's directory entries; a file's definitions).
    pub entries: u64,
    /// Of those, lists (definitions with more than one member, or groups).
    pub lists: u64,
    /// Members or entries it could not resolve or count.
    pub unknown: u64,
}

/// A source of lists.
pub trait DirectorySource: Send + Sync {
    /// A short description for logs, e.g. `postfix-virtual /etc/postfix/virtual`.
    fn describe(&self) -> String;
    /// Reads the source. Called at start and on reload, never on the mail path.
    fn load(&self) -> Result<SourceData<'_>, SourceError>;
    /// What `data`, loaded from this source, holds.
    fn tally(&self, data: &SourceData<'_>) -> SourceTally {
        SourceTally {
            name: self.describe(),
            taken_at: None,
            interval: std::time::Duration::ZERO,
            entries: data.lists.len() as u64,
            lists: data.lists.iter().filter(|l| l.members.len() > 1).count() as u64,
            unknown: data.warnings.len() as u64,
        }
    }
}

/// Qualifies a bare name (`user`) with the first of `domains`; addresses with a
/// domain are kept.
fn qualify(name: &str, domains: &[String]) -> String {
    match (name.contains('@'), domains.first()) {
        (false, Some(d)) => format!("{name}@{d}"),
        _ => name.to_owned(),
    }
}

fn origin(e: &RawEntry) -> String {
    format!("{}:{}", e.file.display(), e.line)
}

fn members(targets: &[RawTarget], domains: &[String]) -> Vec<Member> {
    targets
        .iter()
        .map(|t| match t {
            RawTarget::Address(a) => Member::Address(qualify(a, domains).into()),
            RawTarget::Pipe(c) => Member::NonMailbox(format!("|{c}")),
            RawTarget::File(f) => Member::NonMailbox(f.clone()),
            RawTarget::Special(s) => Member::NonMailbox(s.clone()),
        })
        .collect()
}

/// The largest virtual(5) or aliases(5) file read (a table of a million entries is
/// about 60 MB): a runaway file, a device or a FIFO is an error, not a hang.
pub const MAX_TABLE_BYTES: u64 = 512 * 1024 * 1024;

/// The largest `:include:` file read.
pub const MAX_INCLUDE_BYTES: u64 = 64 * 1024 * 1024;

/// How many `:include:` files one aliases(5) file may read in all: nesting is bounded
/// by depth, this bounds the fan-out (files that each include several others).
pub const MAX_INCLUDE_READS: usize = 10_000;

fn read(path: &Path) -> Result<String, SourceError> {
    read_bounded(path, MAX_TABLE_BYTES).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a regular UTF-8 file of at most `max` bytes; a FIFO or a device is refused
/// before it is opened (opening a FIFO would wait for a writer).
fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A Postfix virtual(5) source file (the text that `postmap` compiles).
///
/// Keys `user@domain` and `@domain` (catch-all) are used as written. A bare `user` key
/// applies to each of `domains` (Postfix applies it to `$myorigin`, `$mydestination`
/// and the interface domains); without `domains` it is reported and not counted. Bare
/// targets get the first of `domains`, as Postfix appends `$myorigin`.
#[derive(Clone, Debug)]
pub struct VirtualSource {
    /// The file.
    pub path: PathBuf,
    /// Domains for bare keys and targets.
    pub domains: Vec<String>,
}

impl DirectorySource for VirtualSource {
    fn describe(&self) -> String {
        format!("postfix-virtual {}", self.path.display())
    }

    fn load(&self) -> Result<SourceData<'_>, SourceError> {
        let text = read(&self.path)?;
        Ok(self.lists(parse_virtual(&text, &self.path)?))
    }
}

impl VirtualSource {
    /// The lists of the parsed file.
    pub(crate) fn lists(&self, parsed: Parsed) -> SourceData<'static> {
        let mut data = SourceData {
            lists: Vec::with_capacity(parsed.entries.len()),
            warnings: parsed.warnings,
            fallback: Vec::new(),
        };
        for e in &parsed.entries {
            let members = members(&e.targets, &self.domains);
            if e.key.contains('@') {
                data.lists.push(Cow::Owned(ListDef {
                    address: e.key.clone(),
                    members,
                    origin: origin(e),
                    ..ListDef::default()
                }));
            } else if self.domains.is_empty() {
                data.warnings.push(format!(
                    "{}: bare key \"{}\" not counted: set domains for this source",
                    origin(e),
                    crate::text::neutralize(&e.key)
                ));
            } else {
                for d in &self.domains {
                    data.lists.push(Cow::Owned(ListDef {
                        address: format!("{}@{d}", e.key),
                        members: members.clone(),
                        origin: origin(e),
                        ..ListDef::default()
                    }));
                }
            }
        }
        data
    }
}

/// A Postfix aliases(5) file, as local(8) expands it for the `domains` it delivers
/// (`$mydestination`). Pipes, files and `:include:` lists are handled; bare targets are
/// local names in the first of `domains`.
#[derive(Clone, Debug)]
pub struct AliasesSource {
    /// The file.
    pub path: PathBuf,
    /// The local domains the aliases apply to; at least one.
    pub domains: Vec<String>,
}

impl DirectorySource for AliasesSource {
    fn describe(&self) -> String {
        format!("aliases {}", self.path.display())
    }

    fn load(&self) -> Result<SourceData<'_>, SourceError> {
        let text = read(&self.path)?;
        let mut reads = 0;
        let mut reader = |p: &Path| {
            reads += 1;
            if reads > MAX_INCLUDE_READS {
                return Err(std::io::Error::other(format!(
                    "more than {MAX_INCLUDE_READS} :include: files read for one aliases file"
                )));
            }
            read_bounded(p, MAX_INCLUDE_BYTES)
        };
        Ok(self.lists(parse_aliases(&text, &self.path, &mut reader)?))
    }
}

impl AliasesSource {
    /// The lists of the parsed file.
    pub(crate) fn lists(&self, parsed: Parsed) -> SourceData<'static> {
        let mut data = SourceData {
            lists: Vec::with_capacity(parsed.entries.len()),
            warnings: parsed.warnings,
            fallback: Vec::new(),
        };
        for e in &parsed.entries {
            let members = members(&e.targets, &self.domains);
            for d in &self.domains {
                data.lists.push(Cow::Owned(ListDef {
                    address: format!("{}@{d}", e.key),
                    members: members.clone(),
                    origin: origin(e),
                    ..ListDef::default()
                }));
            }
        }
        data
    }
}

/// `[[list]]` entries of the configuration.
#[derive(Clone, Debug, Default)]
pub struct ConfigLists {
    /// Lists with members or a member count.
    pub lists: Vec<ListDef>,
}

impl DirectorySource for ConfigLists {
    fn describe(&self) -> String {
        "[[list]] entries of the configuration".to_owned()
    }

    fn tally(&self, data: &SourceData<'_>) -> SourceTally {
        SourceTally {
            name: "config".to_owned(),
            entries: data.lists.len() as u64,
            lists: data.lists.len() as u64,
            ..SourceTally::default()
        }
    }

    fn load(&self) -> Result<SourceData<'_>, SourceError> {
        Ok(SourceData {
            lists: self.lists.iter().map(Cow::Borrowed).collect(),
            warnings: Vec::new(),
            fallback: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fanout-source-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn virtual_source_qualifies_bare_keys_and_targets() {
        let d = tmp("virtual");
        let path = write(
            &d,
            "virtual",
            "all@corp.example a@corp.example, bob\nstaff  x@corp.example\n@old.example @corp.example\n",
        );
        let src = VirtualSource {
            path: path.clone(),
            domains: vec!["corp.example".into(), "mail.corp.example".into()],
        };
        let data = src.load().expect("load");
        let addrs: Vec<&str> = data.lists.iter().map(|l| l.address.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "all@corp.example",
                "staff@corp.example",
                "staff@mail.corp.example",
                "@old.example"
            ]
        );
        assert_eq!(
            data.lists[0].members,
            [
                Member::Address("a@corp.example".into()),
                Member::Address("bob@corp.example".into())
            ]
        );
        assert_eq!(data.lists[0].origin, format!("{}:1", path.display()));

        let bare = VirtualSource {
            path,
            domains: vec![],
        };
        let bare = bare.load().expect("load");
        assert_eq!(bare.lists.len(), 2);
        assert!(
            bare.warnings[0].contains("bare key \"staff\" not counted"),
            "{:?}",
            bare.warnings
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn aliases_source_counts_pipes_and_includes() {
        let d = tmp("aliases");
        let inc = write(&d, "members.inc", "m1@corp.example\nm2\n");
        let path = write(
            &d,
            "aliases",
            &format!(
                "biglist: :include:{}, \"|/usr/bin/archive\", /var/mail/archive\n",
                inc.display()
            ),
        );
        let src = AliasesSource {
            path,
            domains: vec!["lists.corp.example".into()],
        };
        let data = src.load().expect("load");
        assert_eq!(data.lists.len(), 1);
        assert_eq!(data.lists[0].address, "biglist@lists.corp.example");
        assert_eq!(
            data.lists[0].members,
            [
                Member::Address("m1@corp.example".into()),
                Member::Address("m2@lists.corp.example".into()),
                Member::NonMailbox("|/usr/bin/archive".into()),
                Member::NonMailbox("/var/mail/archive".into()),
            ]
        );
        std::fs::remove_dir_all(&d).ok();
    }

    /// Seen by the tables fuzz target: `:include:` files that each include several
    /// others read without end (10^5 files here), and an include of a device or a FIFO
    /// never ended. Both are now errors with the file and line, and the old directory stays.
    #[test]
    fn an_include_fan_out_and_an_endless_include_are_errors() {
        let d = tmp("fanout");
        for level in 0..5 {
            let next = d.join(format!("l{}.inc", level + 1));
            let line = format!(":include:{}\n", next.display());
            write(&d, &format!("l{level}.inc"), &line.repeat(10));
        }
        write(&d, "l5.inc", "m@corp.example\n");
        let path = write(
            &d,
            "aliases",
            &format!("wide: :include:{}\n", d.join("l0.inc").display()),
        );
        let src = AliasesSource {
            path,
            domains: vec!["lists.corp.example".into()],
        };
        let e = src.load().expect_err("too many includes").to_string();
        assert!(
            e.contains(&format!("more than {MAX_INCLUDE_READS} :include: files")),
            "{e}"
        );
        assert!(e.contains("l4.inc:"), "names the file and line: {e}");
        let zero = write(&d, "zero", "endless: :include:/dev/zero\n");
        let src = AliasesSource {
            path: zero,
            domains: vec!["lists.corp.example".into()],
        };
        let e = src.load().expect_err("an endless include").to_string();
        assert!(
            e.contains("cannot read include file /dev/zero: not a regular file"),
            "{e}"
        );
        let e = VirtualSource {
            path: "/dev/zero".into(),
            domains: vec![],
        }
        .load()
        .expect_err("an endless table")
        .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = write(&d, "big", "0123456789");
        assert_eq!(read_bounded(&big, 10).expect("at the limit"), "0123456789");
        let e = read_bounded(&big, 9).expect_err("over the limit");
        assert_eq!(e.to_string(), "larger than 9 bytes");
        std::fs::remove_dir_all(&d).ok();
    }

    /// Found by the tables fuzz target: a bare key's control and bidi characters
    /// reached the warning, which is logged as it is.
    #[test]
    fn a_bare_key_is_neutralised_in_its_warning() {
        let src = VirtualSource {
            path: "/etc/postfix/virtual".into(),
            domains: vec![],
        };
        let parsed =
            parse_virtual("st\u{1b}[2Jaff\u{feff} x@corp.example\n", &src.path).expect("parsed");
        let data = src.lists(parsed);
        assert!(
            data.warnings[0].contains("bare key \"st\\x1B[2jaff\\u{FEFF}\" not counted"),
            "{:?}",
            data.warnings
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let src = VirtualSource {
            path: "/nonexistent/virtual".into(),
            domains: vec![],
        };
        let e = src.load().expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/virtual:"),
            "{e}"
        );
    }
}
