// SPDX-License-Identifier: GPL-3.0-or-later
//! Directory sources and the index that answers "whom does this message really reach".
//!
//! Sources are read at start and on reload, off the mail path, into a
//! [`DirectoryIndex`]; a message's audience is then computed from memory.

pub(crate) mod drift;
pub(crate) mod index;
pub mod ldap;
pub(crate) mod parse;
pub(crate) mod source;

pub use index::{DirectoryIndex, IndexOptions, ListAudience};
pub use source::{DirectorySource, ListDef, Member, SourceData, SourceError};

use crate::config::{Config, DirectoryKind};
use crate::policy::{AudienceFacts, HeaderFacts, ListFacts, RecipientSet};
use drift::KnownSizes;
use source::{AliasesSource, ConfigLists, VirtualSource};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// A source that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("directory source {source_name}: {error}")]
pub struct DirectoryError {
    /// Which source.
    pub source_name: String,
    /// What went wrong (file and line for a malformed entry).
    #[source]
    pub error: SourceError,
}

/// Whether a load keeps the updated list sizes for [`Directory::record_drift`].
/// Loading itself only reads the state directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftMode {
    /// The daemon: compare with the accepted sizes and keep the update, which
    /// [`Directory::record_drift`] then writes.
    Record,
    /// Admin commands: read the accepted sizes; `record_drift` writes nothing.
    ReadOnly,
}

/// What one load did, for the log.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Sources read, in order.
    pub sources: Vec<String>,
    /// Entries read but not counted, shadowed definitions, cycles.
    pub warnings: Vec<String>,
    /// Lists whose size jumped: address, accepted size, current size.
    pub drifted: Vec<(String, u64, u64)>,
    /// A state file that could not be read or written.
    pub state_error: Option<String>,
    /// How long the load took.
    pub duration: Duration,
    /// What each source gave, in order.
    pub tallies: Vec<source::SourceTally>,
}

/// The loaded directory.
#[derive(Debug)]
pub struct Directory {
    /// The expanded lists.
    pub index: DirectoryIndex,
    drifted: HashMap<String, u64>,
    /// The accepted sizes updated by this load and where they go, until
    /// [`Directory::record_drift`] writes them (`DriftMode::Record` only).
    unrecorded: Option<(KnownSizes, PathBuf)>,
    configured: bool,
    /// What the load did.
    pub report: LoadReport,
}

impl Directory {
    /// No source: the envelope recipients are the audience.
    pub fn empty() -> Directory {
        Directory {
            index: DirectoryIndex::build(
                Vec::new(),
                &IndexOptions {
                    max_depth: 1,
                    internal: Default::default(),
                    max_audience: 0,
                    recipient_delimiter: Default::default(),
                },
            ),
            drifted: HashMap::new(),
            unrecorded: None,
            configured: false,
            report: LoadReport::default(),
        }
    }

    /// Reads every source of the configuration (LDAP sources from `ldap`, their
    /// snapshots) and expands every list, judging list sizes against the accepted
    /// ones in the state directory. Writes nothing: the daemon calls
    /// [`Directory::record_drift`] on the result. Blocking: call it at start or from
    /// a blocking task.
    pub fn load(
        config: &Config,
        mode: DriftMode,
        ldap: &ldap::Snapshots,
    ) -> Result<Directory, DirectoryError> {
        let started = Instant::now();
        if config.directories.is_empty() && config.lists.is_empty() {
            return Ok(Directory::empty());
        }
        let mut sources: Vec<Box<dyn DirectorySource + '_>> = Vec::new();
        let mut configured = ConfigLists::default();
        for (i, l) in config.lists.iter().enumerate() {
            let members = match (&l.members, l.member_count) {
                (Some(m), _) => m
                    .iter()
                    .map(|a| Member::Address(a.as_str().into()))
                    .collect(),
                (None, Some(n)) => vec![Member::Count(n)],
                (None, None) => Vec::new(),
            };
            if !members.is_empty() || l.member_count.is_some() {
                configured.lists.push(ListDef {
                    address: l.address.clone(),
                    members,
                    origin: format!("{} [[list]] #{}", config.file.display(), i + 1),
                    ..ListDef::default()
                });
            }
        }
        sources.push(Box::new(configured));
        for d in &config.directories {
            if let Some(settings) = &d.ldap {
                sources.push(Box::new(ldap::LdapSource {
                    settings,
                    snapshot: ldap.by_source.get(&settings.name).cloned(),
                    now: ldap.now,
                }));
                continue;
            }
            sources.push(match d.kind {
                DirectoryKind::PostfixVirtual => Box::new(VirtualSource {
                    path: d.path.clone(),
                    domains: d.domains.clone(),
                }),
                DirectoryKind::Aliases => Box::new(AliasesSource {
                    path: d.path.clone(),
                    domains: d.domains.clone(),
                }),
                DirectoryKind::Ldap => continue,
            });
        }

        let mut report = LoadReport::default();
        let mut defs: Vec<Cow<'_, ListDef>> = Vec::new();
        let mut fallback = Vec::new();
        for source in &sources {
            let data = source.load().map_err(|error| DirectoryError {
                source_name: source.describe(),
                error,
            })?;
            report.sources.push(format!(
                "{} ({} lists)",
                source.describe(),
                data.lists.len()
            ));
            report.tallies.push(source.tally(&data));
            report.warnings.extend(data.warnings);
            defs.extend(data.lists);
            fallback.extend(data.fallback);
        }
        let mut taken: std::collections::HashSet<String> = defs
            .iter()
            .flat_map(|d| std::iter::once(&d.address).chain(&d.aliases))
            .cloned()
            .collect();
        fallback.retain(|d| taken.insert(d.address.clone()));
        defs.extend(fallback.into_iter().map(Cow::Owned));
        let defined: std::collections::HashSet<&str> =
            defs.iter().map(|d| d.address.as_str()).collect();
        // A list the policy restricts by name must exist for its mail to be judged.
        let mut undefined: Vec<String> = config
            .policy
            .restricted
            .lists
            .keys()
            .filter(|a| !defined.contains(a.as_str()))
            .cloned()
            .collect();
        undefined.sort();
        for address in undefined {
            report.warnings.push(format!(
                "[[list]] {address} has allowed_senders but no source defines it; it is \
                 restricted but counted as one recipient: add member_count"
            ));
            defs.push(Cow::Owned(ListDef {
                address,
                members: vec![Member::Count(1)],
                origin: format!("{} [[list]]", config.file.display()),
                ..ListDef::default()
            }));
        }
        let index = DirectoryIndex::build_from(
            defs,
            &IndexOptions {
                max_depth: config.max_depth,
                internal: config.policy.internal.clone(),
                max_audience: config.max_audience,
                recipient_delimiter: config.postfix.recipient_delimiter.clone(),
            },
        );
        report.warnings.extend(index.shadowed.iter().cloned());
        for list in index.lists() {
            for cycle in &list.cycles {
                report
                    .warnings
                    .push(format!("cycle below {}: {cycle}", list.address));
            }
            if list.depth_exceeded {
                report.warnings.push(format!(
                    "{} nests deeper than [expansion] max_depth {}; its audience is a lower bound",
                    list.address, config.max_depth
                ));
            }
        }

        let (drifted, unrecorded) = if config.drift_min_audience > 0 {
            let (drifted, known) = drift_state(config, &index, &mut report);
            let unrecorded = (mode == DriftMode::Record && report.state_error.is_none())
                .then(|| (known, config.state_dir.clone()));
            (drifted, unrecorded)
        } else {
            (HashMap::new(), None)
        };
        report.duration = started.elapsed();
        Ok(Directory {
            index,
            drifted,
            unrecorded,
            configured: true,
            report,
        })
    }

    /// Writes the list sizes a `DriftMode::Record` load accepted to the state
    /// directory, so the next load judges against them; a failure is kept in the
    /// report for [`Directory::log_report`]. A step of its own after a successful
    /// load, so that loading (every reload and LDAP refresh) reads and only the
    /// daemon's explicit call writes.
    pub fn record_drift(mut self) -> Directory {
        if let Some((known, state_dir)) = self.unrecorded.take()
            && let Err(e) = known.save(&state_dir)
        {
            self.report.state_error = Some(e.to_string());
        }
        self
    }

    /// True when any source or `[[list]]` is configured.
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The audience of a message's recipients; `None` without a directory.
    pub fn audience_facts<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a str>,
    ) -> Option<AudienceFacts> {
        if !self.configured {
            return None;
        }
        let a = self.index.audience(recipients);
        let lists: Vec<ListFacts> = a.lists.iter().map(|l| self.list_facts(l)).collect();
        Some(AudienceFacts {
            total: a.total,
            external: a.external,
            lists,
            non_mailbox: a.non_mailbox,
            lower_bound: a.lower_bound,
            unknown: a.unknown,
            unavailable: a.unavailable,
            seen: 0,
        })
    }

    /// The audience of a message's recipients, with what its headers show: the
    /// mailboxes reached through recipients named in To or Cc (`seen`) and which lists
    /// those are (`named`). Recipients resolve exactly as for the whole audience, so a
    /// list named in To is seen whatever form of its address the envelope carries.
    pub fn message_audience(
        &self,
        recipients: &RecipientSet,
        headers: &HeaderFacts,
    ) -> Option<AudienceFacts> {
        let mut facts = self.audience_facts(recipients.iter())?;
        let named = headers.named(recipients);
        if named.is_empty() {
            return Some(facts);
        }
        if named.len() == recipients.len() {
            facts.seen = facts.total;
            facts.lists.iter_mut().for_each(|l| l.named = true);
            return Some(facts);
        }
        let seen = self.index.audience(named.iter().copied());
        facts.seen = seen.total.min(facts.total);
        let named_lists: std::collections::HashSet<&str> =
            seen.lists.iter().map(|l| &*l.address).collect();
        for l in &mut facts.lists {
            l.named = named_lists.contains(&*l.address);
        }
        Some(facts)
    }

    /// The policy's view of one expanded list.
    pub fn list_facts(&self, l: &ListAudience) -> ListFacts {
        ListFacts {
            address: l.address.clone(),
            size: l.total(),
            external: l.external(),
            nested_lists: l.nested_lists,
            cycles: l.cycles.len(),
            domains: l.domains.clone(),
            drift_from: self.drifted.get(&*l.address).copied(),
            unknown: l.unknown,
            unknown_reason: l.unknown_reasons.first().cloned(),
            named: false,
        }
    }

    /// Logs what the load did: one summary line, then warnings.
    pub fn log_report(&self) {
        if !self.configured {
            return;
        }
        let s = &self.index.stats;
        info!(
            lists = s.lists,
            addresses = s.addresses,
            edges = s.edges,
            lists_with_cycles = s.lists_with_cycles,
            lists_too_deep = s.lists_too_deep,
            millis = self.report.duration.as_millis() as u64,
            sources = %self.report.sources.join("; "),
            "directory loaded"
        );
        for w in self.report.warnings.iter().take(50) {
            warn!("directory: {w}");
        }
        if self.report.warnings.len() > 50 {
            warn!(
                "directory: {} more warnings not shown",
                self.report.warnings.len() - 50
            );
        }
        for (address, from, to) in &self.report.drifted {
            warn!(
                list = %address,
                accepted = from,
                current = to,
                "list size drifted; its mail is held until an admin runs: fanout-milter directory accept {address}"
            );
        }
        if let Some(e) = &self.report.state_error {
            error!("list sizes not persisted, drift detection only covers this run: {e}");
        }
    }
}

/// The lists whose size drifted from the accepted one (address, accepted size), and
/// the accepted sizes updated with this load's.
fn drift_state(
    config: &Config,
    index: &DirectoryIndex,
    report: &mut LoadReport,
) -> (HashMap<String, u64>, KnownSizes) {
    let mut known = KnownSizes::load(&config.state_dir).unwrap_or_else(|e| {
        report.state_error = Some(e.to_string());
        KnownSizes::default()
    });
    let sizes: Vec<(&str, u64)> = index.lists().map(|l| (&*l.address, l.total())).collect();
    let drifted = known.update(
        sizes.iter().copied(),
        config.drift_factor,
        config.drift_min_audience,
    );
    let current: HashMap<&str, u64> = sizes.into_iter().collect();
    for (address, from) in &drifted {
        report.drifted.push((
            address.clone(),
            *from,
            current.get(address.as_str()).copied().unwrap_or(0),
        ));
    }
    (drifted.into_iter().collect(), known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A configuration whose sources are files in `dir`; `extra` is appended.
    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            r#"
[domains]
internal = ["corp.example", "*.nhs.example"]

[quarantine]
state_dir = "{state}"

[[directory]]
type = "postfix-virtual"
path = "{dir}/virtual"
domains = ["corp.example"]

[[directory]]
type = "aliases"
path = "{dir}/aliases"
domains = ["lists.corp.example"]
{extra}
"#,
            state = dir.join("state").display(),
            dir = dir.display(),
        );
        crate::config::parse(&text, &dir.join("fanout-milter.toml")).expect("configuration")
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    fn audience(d: &Directory, rcpts: &[&str]) -> AudienceFacts {
        d.audience_facts(rcpts.iter().copied()).expect("configured")
    }

    #[test]
    fn message_audience_tells_what_the_headers_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "virtual",
            "dept@corp.example a@corp.example, b@corp.example, c@corp.example\n\
             big@corp.example c@corp.example, d@corp.example, e@corp.example, f@corp.example\n",
        );
        write(dir.path(), "aliases", "");
        let d = Directory::load(
            &config(dir.path(), ""),
            DriftMode::ReadOnly,
            &Default::default(),
        )
        .expect("load");
        let rcpts: RecipientSet = ["dept@corp.example", "big@corp.example"]
            .into_iter()
            .collect();
        let mut headers = HeaderFacts::default();
        let a = d.message_audience(&rcpts, &headers).expect("configured");
        assert_eq!((a.total, a.seen), (6, 0), "nothing named: all unseen");
        assert!(a.lists.iter().all(|l| !l.named));

        headers.visible.add("DEPT@corp.example");
        let a = d.message_audience(&rcpts, &headers).expect("configured");
        assert_eq!(
            (a.total, a.seen),
            (6, 3),
            "dept@ in To: its 3 members see it"
        );
        let named: Vec<(&str, bool)> = a.lists.iter().map(|l| (&*l.address, l.named)).collect();
        assert!(named.contains(&("dept@corp.example", true)), "{named:?}");
        assert!(named.contains(&("big@corp.example", false)), "{named:?}");

        headers.visible.add("big@corp.example");
        let a = d.message_audience(&rcpts, &headers).expect("configured");
        assert_eq!((a.total, a.seen), (6, 6));
        assert!(a.lists.iter().all(|l| l.named));
    }

    #[test]
    fn sources_and_config_lists_are_merged_into_one_audience() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "virtual",
            "# staff lists\n\
             All-Staff@Corp.Example  ward-a, ward-b,\n    \
             \tpharmacy@lists.corp.example\n\
             ward-a  ann@corp.example, bob@corp.example, CARL@corp.example\n\
             ward-b  bob@corp.example, dora@trust.nhs.example, ext@partner.example\n",
        );
        write(
            dir.path(),
            "aliases",
            "pharmacy: carl@corp.example, eve@corp.example, \"|/usr/bin/logger\"\n",
        );
        let d = Directory::load(
            &config(
                dir.path(),
                "[[list]]\naddress = \"board@corp.example\"\nmember_count = 40\n",
            ),
            DriftMode::ReadOnly,
            &Default::default(),
        )
        .expect("load");
        assert!(d.is_configured());
        assert_eq!(d.report.sources.len(), 3, "{:?}", d.report.sources);

        // ann, bob, carl (twice: ward-a and pharmacy), dora, ext, eve: six mailboxes,
        // bob and carl counted once; the pipe is not a mailbox.
        let a = audience(&d, &["all-staff@CORP.example"]);
        assert_eq!(a.total, 6);
        assert_eq!(a.external, 1, "*.nhs.example is internal, partner is not");
        assert_eq!(a.non_mailbox, 1);
        assert_eq!(&*a.lists[0].address, "all-staff@corp.example");
        assert_eq!(a.lists[0].size, 6);
        assert_eq!(a.lists[0].nested_lists, 3);

        // Overlapping lists in one message: each mailbox once, the opaque list by count.
        let a = audience(
            &d,
            &[
                "ward-a@corp.example",
                "ward-b@corp.example",
                "ann@corp.example",
                "board@corp.example",
            ],
        );
        assert_eq!(a.total, 5 + 40);
        assert_eq!(a.external, 1);
        let sizes: Vec<(&str, u64)> = a.lists.iter().map(|l| (&*l.address, l.size)).collect();
        assert!(sizes.contains(&("board@corp.example", 40)), "{sizes:?}");
        assert!(sizes.contains(&("ward-a@corp.example", 3)), "{sizes:?}");
        assert!(sizes.contains(&("ward-b@corp.example", 3)), "{sizes:?}");

        // A plain address is one mailbox, whatever its case.
        assert_eq!(audience(&d, &["Ann@CORP.EXAMPLE"]).total, 1);
    }

    /// `list+tag@` and non-ASCII keys resolve as Postfix resolves them, with every fact
    /// of the list: its size, its restriction and its drift.
    #[test]
    fn extensions_and_unicode_case_reach_the_list_and_its_facts() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "virtual",
            "ÄRZTE@corp.example ann@corp.example, bob@corp.example, carl@corp.example\n\
             all-staff@corp.example ann@corp.example, bob@corp.example, dora@corp.example, \
             eve@corp.example\n\
             @old.corp.example @corp.example\n",
        );
        write(
            dir.path(),
            "aliases",
            "board: ann@corp.example, bob@corp.example\n",
        );
        let extra = "[drift]\nfactor = 2.0\nmin_audience = 2\n\
                     [[list]]\naddress = \"board@lists.corp.example\"\n\
                     allowed_senders = [\"ceo@corp.example\"]\n";
        let sizes = dir.path().join("state");
        std::fs::create_dir_all(&sizes).expect("state dir");
        let mut known = KnownSizes::default();
        known.accept("all-staff@corp.example", 1);
        known.save(&sizes).expect("save sizes");
        // [postfix] recipient_delimiter unset and postconf not asked: the fallback "+".
        let c = config(dir.path(), extra);
        let d = Directory::load(&c, DriftMode::ReadOnly, &Default::default()).expect("load");
        for rcpt in [
            "ÄRZTE@corp.example",
            "ärzte@corp.example",
            "Ärzte+x@corp.example",
        ] {
            let a = audience(&d, &[rcpt]);
            assert_eq!(a.total, 3, "{rcpt}");
            assert_eq!(&*a.lists[0].address, "ärzte@corp.example", "{rcpt}");
        }
        for rcpt in [
            "all-staff+x@corp.example",
            "ALL-STAFF+x@corp.example",
            "all-staff+x@old.corp.example",
        ] {
            let a = audience(&d, &[rcpt]);
            assert_eq!(a.total, 4, "{rcpt}");
            assert_eq!(a.lists[0].drift_from, Some(1), "{rcpt}: drift applies");
        }
        let board = audience(&d, &["board+minutes@lists.corp.example"]);
        assert_eq!(board.total, 2);
        assert!(
            c.policy
                .restricted
                .by_name(&board.lists[0].address)
                .is_some(),
            "the restriction applies to board+minutes@"
        );
    }

    #[test]
    fn config_lists_come_first_and_allowed_senders_without_a_definition_warn() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "virtual", "ward-a ann@corp.example\n");
        write(dir.path(), "aliases", "");
        let c = config(
            dir.path(),
            "[[list]]\naddress = \"ward-a@corp.example\"\nmember_count = 900\n\n\
             [[list]]\naddress = \"ceo@corp.example\"\nallowed_senders = [\"pa@corp.example\"]\n",
        );
        let d = Directory::load(&c, DriftMode::ReadOnly, &Default::default()).expect("load");
        assert_eq!(audience(&d, &["ward-a@corp.example"]).total, 900);
        assert!(
            d.report
                .warnings
                .iter()
                .any(|w| w.contains("ceo@corp.example has allowed_senders but no source")),
            "{:?}",
            d.report.warnings
        );
        let ceo = audience(&d, &["ceo@corp.example"]);
        assert!(
            c.policy.restricted.by_name(&ceo.lists[0].address).is_some(),
            "still restricted"
        );
    }

    #[test]
    fn a_malformed_line_names_the_source_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "virtual", "ward-a ann@corp.example\n");
        write(
            dir.path(),
            "aliases",
            "# lists\npharmacy: eve@corp.example\n\nbroken:\n",
        );
        let e = Directory::load(
            &config(dir.path(), ""),
            DriftMode::ReadOnly,
            &Default::default(),
        )
        .expect_err("the aliases file is broken");
        let text = e.to_string();
        let at = format!("{}:4:", dir.path().join("aliases").display());
        assert!(text.contains(&at), "{text}");
        assert!(text.contains("broken"), "{text}");
    }

    #[test]
    fn a_source_file_gone_since_the_config_was_read_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "aliases", "");
        write(dir.path(), "virtual", "ward-a ann@corp.example\n");
        let config = config(dir.path(), "");
        std::fs::remove_file(dir.path().join("virtual")).expect("remove");
        let e = Directory::load(&config, DriftMode::ReadOnly, &Default::default())
            .expect_err("no virtual file");
        assert!(
            e.to_string()
                .contains(&dir.path().join("virtual").display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn cycles_are_warnings_and_drift_is_recorded_only_in_record_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "virtual",
            "loop-a loop-b, ann@corp.example\nloop-b loop-a, bob@corp.example\n",
        );
        write(dir.path(), "aliases", "");
        let extra = "[drift]\nfactor = 2.0\nmin_audience = 2\n";
        let d = Directory::load(
            &config(dir.path(), extra),
            DriftMode::ReadOnly,
            &Default::default(),
        )
        .expect("load");
        assert_eq!(audience(&d, &["loop-a@corp.example"]).total, 2);
        assert!(
            d.report
                .warnings
                .iter()
                .any(|w| w.starts_with("cycle below")),
            "{:?}",
            d.report.warnings
        );
        let sizes = dir.path().join("state");
        assert!(
            !sizes.exists() || std::fs::read_dir(&sizes).expect("dir").next().is_none(),
            "read-only loads write nothing"
        );
        Directory::load(
            &config(dir.path(), extra),
            DriftMode::Record,
            &Default::default(),
        )
        .expect("load")
        .record_drift();
        let mut known = KnownSizes::load(&sizes).expect("sizes");
        assert_eq!(
            known.accept("loop-a@corp.example", 2),
            Some(2),
            "the daemon's load remembered the size"
        );
    }
}
