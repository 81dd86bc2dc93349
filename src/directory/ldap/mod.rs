// SPDX-License-Identifier: GPL-3.0-or-later
//! The LDAP directory source: a background snapshot of the directory's lists, never a
//! query per message. A refresh reads everything in a few paged searches, joins the
//! members locally into the same list graph the file sources feed, and is swapped in
//! whole; the last good snapshot is kept on disk so a restart does not wait for the
//! server. A refresh that fails in any way changes nothing.

pub(crate) mod client;
pub(crate) mod entry;
pub(crate) mod fetch;
pub(crate) mod graph;
pub(crate) mod guard;

use crate::config::ldap::{LdapSettings, OnStale};
use crate::directory::source::{DirectorySource, ListDef, Member, SourceData, SourceError};
use crate::policy::address::{RecipientDelimiter, fold_case};
use crate::state_dir::{StateDir, StateDirError};
use client::{Ldap3Server, LdapFault, LdapServer};
use graph::GraphStats;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Version of the snapshot file format.
const FORMAT: u32 = 1;

/// One good read of an LDAP source, as lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// File format version.
    pub format: u32,
    /// The source's name.
    pub source: String,
    /// The settings that shape a snapshot; a file taken with other settings is not used.
    pub fingerprint: String,
    /// When it was taken (seconds since the epoch).
    pub taken_at: u64,
    /// How long the refresh took.
    pub millis: u64,
    /// Searches it ran.
    pub searches: u64,
    /// Whether the server is Active Directory.
    pub active_directory: bool,
    /// What it found.
    pub stats: GraphStats,
    /// The lists.
    pub lists: Vec<ListDef>,
    /// Lists earlier snapshots had and this one lacks: counted as unknown until they
    /// come back or an admin accepts their loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vanished: Vec<guard::Vanished>,
}

impl Snapshot {
    /// Its age at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.taken_at))
            .and_then(|taken| now.duration_since(taken).ok())
            .unwrap_or_default()
    }
}

/// Why a refresh failed; the previous snapshot stays.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The server or the connection.
    #[error(transparent)]
    Ldap(#[from] LdapFault),
    /// The whole refresh took longer than its deadline.
    #[error("refresh took longer than {}", humantime::format_duration(*.0))]
    Deadline(Duration),
    /// The snapshot could not be saved.
    #[error("cannot save the snapshot {}: {error}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// The settings that shape a snapshot, as one string.
pub fn fingerprint(s: &LdapSettings) -> String {
    format!(
        "{}|{}|{}|{}",
        s.url,
        s.base_dns.join(";"),
        fetch::snapshot_filter(s),
        fetch::attributes(s).join(",")
    )
}

/// The filter and attributes of a refresh's main search (one per base DN), for
/// comparing it with other clients of the same server (`ldapsearch` in the benchmark).
pub fn snapshot_search(s: &LdapSettings) -> (String, Vec<String>) {
    (fetch::snapshot_filter(s), fetch::attributes(s))
}

/// Reads a snapshot from `server` (any [`LdapServer`]: ldap3 or a test fake).
pub async fn take(server: &mut dyn LdapServer, s: &LdapSettings) -> Result<Snapshot, LdapFault> {
    let started = Instant::now();
    let fetched = fetch::fetch(server, s).await?;
    let searches = fetched.searches;
    let active_directory = fetched.server.active_directory;
    // The join is CPU work (about a second at a million entries): off the runtime's
    // threads, which serve the milter.
    let settings = s.clone();
    let (lists, stats) = tokio::task::spawn_blocking(move || {
        graph::build(fetched, &settings, &format!("ldap {}", settings.name))
    })
    .await
    .map_err(|e| LdapFault::Search {
        base: String::new(),
        filter: String::new(),
        rc: 80,
        text: format!("building the snapshot failed: {e}"),
    })?;
    Ok(Snapshot {
        format: FORMAT,
        source: s.name.clone(),
        fingerprint: fingerprint(s),
        taken_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        millis: started.elapsed().as_millis() as u64,
        searches,
        active_directory,
        stats,
        lists,
        vanished: Vec::new(),
    })
}

/// Connects to the configured server and takes a snapshot, all within `deadline`.
pub async fn refresh(s: &LdapSettings, deadline: Duration) -> Result<Snapshot, RefreshError> {
    let work = async {
        let mut server = Ldap3Server::connect(s).await?;
        let snapshot = take(&mut server, s).await;
        server.close().await;
        Ok::<_, RefreshError>(snapshot?)
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| RefreshError::Deadline(deadline))?
}

/// The lookup filter for one address, as Postfix's `query_filter` expands it: `%s` is
/// the address, `%u` its local part, `%d` its domain, `%%` a percent sign; every value
/// is escaped (RFC 4515), so an address cannot change the filter.
pub fn lookup_filter_for(s: &LdapSettings, address: &str) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let mut out = String::with_capacity(s.lookup_filter.len() + 2 * address.len());
    let mut chars = s.lookup_filter.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push_str(&ldap3::ldap_escape(address)),
            Some('u') => out.push_str(&ldap3::ldap_escape(local)),
            Some('d') => out.push_str(&ldap3::ldap_escape(domain)),
            Some(other) => {
                out.push('%');
                if other != '%' {
                    out.push(other);
                }
            }
            None => out.push('%'),
        }
    }
    out
}

/// An entry found on the server by [`live_lookup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEntry {
    /// Its DN.
    pub dn: String,
    /// Its addresses, primary first.
    pub addresses: Vec<String>,
    /// True for a list.
    pub list: bool,
    /// Its direct members (DNs, URLs, literal addresses, filters).
    pub direct_members: usize,
}

/// Looks one address up on the server now with `lookup_filter` (for admins comparing
/// the directory with the snapshot; never on the mail path).
pub async fn live_lookup(s: &LdapSettings, address: &str) -> Result<Vec<LiveEntry>, LdapFault> {
    let filter = lookup_filter_for(s, address);
    let attrs = fetch::attributes(s);
    let mut server = Ldap3Server::connect(s).await?;
    let mut out = Vec::new();
    let mut result = Ok(());
    for base in &s.base_dns {
        match server
            .search_page(base, client::Scope::Subtree, &filter, &attrs, None)
            .await
        {
            Ok(page) => {
                for mut e in page.entries {
                    let mut searches = 0;
                    if let Err(fault) =
                        fetch::complete_ranges(&mut server, &mut e, &mut searches).await
                    {
                        result = Err(fault);
                        break;
                    }
                    out.push(LiveEntry {
                        addresses: entry::addresses(&e, s),
                        list: entry::is_list(&e, s),
                        direct_members: entry::direct_members(&e, s),
                        dn: e.dn,
                    });
                }
                if result.is_err() {
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    server.close().await;
    result.map(|()| out)
}

/// [`live_lookup`] as Postfix's LDAP table lookups go: the address case folded, then,
/// when nothing matches, without its extension (`recipient_delimiter`). Returns the
/// address whose search answered, with its entries.
pub async fn live_lookup_as_postfix(
    s: &LdapSettings,
    address: &str,
    delimiter: &RecipientDelimiter,
) -> Result<(String, Vec<LiveEntry>), LdapFault> {
    let folded = fold_case(address);
    let found = live_lookup(s, &folded).await?;
    if found.is_empty()
        && let Some(stripped) = delimiter.strip(&folded)
    {
        let found = live_lookup(s, &stripped).await?;
        return Ok((stripped, found));
    }
    Ok((folded, found))
}

/// Where a source's last good snapshot is kept.
pub fn snapshot_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("ldap-{name}.snapshot.json"))
}

/// Where a source's refused snapshot waits for an admin's accept.
pub fn pending_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("ldap-{name}.pending.json"))
}

/// Saves a snapshot atomically ([`StateDir::write_atomic`]: a new 0600 file, fsync,
/// rename).
pub fn save(state_dir: &Path, snapshot: &Snapshot) -> Result<(), RefreshError> {
    save_to(
        state_dir,
        &snapshot_path(state_dir, &snapshot.source),
        snapshot,
    )
}

/// Saves a refused snapshot as the source's pending one, for `directory accept`.
pub fn save_pending(state_dir: &Path, snapshot: &Snapshot) -> Result<(), RefreshError> {
    save_to(
        state_dir,
        &pending_path(state_dir, &snapshot.source),
        snapshot,
    )
}

/// Removes a source's pending snapshot, if any.
pub fn remove_pending(state_dir: &Path, name: &str) -> Result<(), RefreshError> {
    let path = pending_path(state_dir, name);
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(RefreshError::Save { path, error })
        }
        _ => Ok(()),
    }
}

/// Writes `snapshot` at `path` (a file in `state_dir`) through the state directory's
/// one atomic write, which never follows a link and never writes through a planted
/// temporary file.
fn save_to(state_dir: &Path, path: &Path, snapshot: &Snapshot) -> Result<(), RefreshError> {
    let save_err = |error| RefreshError::Save {
        path: path.to_owned(),
        error,
    };
    let state_err = |e: StateDirError| save_err(std::io::Error::other(e.to_string()));
    std::fs::create_dir_all(state_dir).map_err(save_err)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| save_err(std::io::Error::other("not a file name")))?;
    // Written as it is serialised: a large snapshot's JSON (about 100 MB at 1.5
    // million entries) is never whole in memory.
    let mut write = |file: &mut std::fs::File| {
        use std::io::Write;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        serde_json::to_writer(&mut out, snapshot)?;
        out.flush()
    };
    StateDir::open(state_dir, None)
        .and_then(|dir| dir.write_atomic_with(name, &mut write))
        .map_err(state_err)
}

/// Reads a source's saved snapshot: `Ok(None)` when there is none, or it was taken
/// with other settings.
pub fn load_saved(state_dir: &Path, s: &LdapSettings) -> Result<Option<Snapshot>, String> {
    load_from(&snapshot_path(state_dir, &s.name), s, true)
}

/// Reads a source's saved snapshot even when it was taken with other settings: the
/// baseline a first refresh after a settings change is compared with.
pub fn load_baseline(state_dir: &Path, s: &LdapSettings) -> Result<Option<Snapshot>, String> {
    load_from(&snapshot_path(state_dir, &s.name), s, false)
}

/// Reads a source's pending (refused) snapshot, if it was taken with its settings.
pub fn load_pending(state_dir: &Path, s: &LdapSettings) -> Result<Option<Snapshot>, String> {
    load_from(&pending_path(state_dir, &s.name), s, true)
}

fn load_from(
    path: &Path,
    s: &LdapSettings,
    same_settings: bool,
) -> Result<Option<Snapshot>, String> {
    let file = match crate::state_dir::open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let snapshot: Snapshot = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| format!("{} is not a snapshot: {e}", path.display()))?;
    if snapshot.format != FORMAT
        || snapshot.source != s.name
        || (same_settings && snapshot.fingerprint != fingerprint(s))
    {
        return Ok(None);
    }
    Ok(Some(snapshot))
}

/// The snapshots a directory load uses, and the time staleness is judged at.
#[derive(Clone, Debug)]
pub struct Snapshots {
    /// By source name.
    pub by_source: HashMap<String, Arc<Snapshot>>,
    /// "Now", for staleness.
    pub now: SystemTime,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots {
            by_source: HashMap::new(),
            now: SystemTime::now(),
        }
    }
}

impl Snapshots {
    /// The saved snapshots of every LDAP source of a configuration (admin commands,
    /// daemon start); sources without one are left out, and unreadable files reported.
    pub fn load_saved(config: &crate::config::Config) -> (Snapshots, Vec<String>) {
        let mut out = Snapshots::default();
        let mut errors = Vec::new();
        for s in config.directories.iter().filter_map(|d| d.ldap.as_ref()) {
            match load_saved(&config.state_dir, s) {
                Ok(Some(snap)) => {
                    out.by_source.insert(s.name.clone(), Arc::new(snap));
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        (out, errors)
    }
}

/// An LDAP source as the directory loader sees it: its snapshot, if any, judged for
/// staleness.
pub struct LdapSource<'a> {
    /// Its settings.
    pub settings: &'a LdapSettings,
    /// Its last good snapshot.
    pub snapshot: Option<Arc<Snapshot>>,
    /// When staleness is judged.
    pub now: SystemTime,
}

impl DirectorySource for LdapSource<'_> {
    fn describe(&self) -> String {
        format!(
            "ldap {} {}",
            self.settings.name,
            crate::config::redact_url(&self.settings.url)
        )
    }

    fn tally(&self, _data: &SourceData<'_>) -> crate::directory::source::SourceTally {
        let mut tally = crate::directory::source::SourceTally {
            name: self.settings.name.clone(),
            interval: self.settings.refresh,
            ..Default::default()
        };
        if let Some(snap) = &self.snapshot {
            let s = &snap.stats;
            tally.taken_at = Some(snap.taken_at);
            tally.entries = s.entries;
            tally.lists = s.lists;
            tally.unknown = s.dangling + s.dynamic_unknown + s.no_address;
        } else {
            tally.taken_at = Some(0);
        }
        tally
    }

    fn load(&self) -> Result<SourceData<'_>, SourceError> {
        let s = self.settings;
        let Some(snap) = &self.snapshot else {
            let why = format!("LDAP source {} has no snapshot yet", s.name);
            return Ok(SourceData {
                lists: s
                    .domains
                    .iter()
                    .map(|d| {
                        Cow::Owned(ListDef {
                            address: format!("@{d}"),
                            members: vec![Member::Unavailable(why.clone())],
                            origin: format!("ldap {} (no snapshot)", s.name),
                            ..ListDef::default()
                        })
                    })
                    .collect(),
                warnings: vec![format!(
                    "{why}: mail to {} is tempfailed until a refresh succeeds",
                    s.domains.join(", ")
                )],
                fallback: Vec::new(),
            });
        };
        let age = snap.age(self.now);
        // Borrowed from the snapshot, which the daemon keeps: the directory is built
        // from it without a copy.
        let mut lists: Vec<Cow<'_, ListDef>> = snap.lists.iter().map(Cow::Borrowed).collect();
        let mut warnings = Vec::new();
        let mut fallback = Vec::new();
        if !snap.vanished.is_empty() {
            let now = self.now.duration_since(UNIX_EPOCH).unwrap_or_default();
            fallback = guard::vanished_lists(&s.name, &snap.vanished, now.as_secs());
            let named: Vec<String> = snap
                .vanished
                .iter()
                .take(5)
                .map(|v| crate::text::neutralize(&v.address).into_owned())
                .collect();
            warnings.push(format!(
                "LDAP source {}: {} vanished list addresses count as unknown until they come \
                 back or `directory accept --source {}`: {}{}",
                s.name,
                snap.vanished.len(),
                s.name,
                named.join(", "),
                if snap.vanished.len() > named.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
        if age > s.max_staleness {
            let why = format!(
                "LDAP source {} snapshot is {} old (max_staleness {})",
                s.name,
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(s.max_staleness)
            );
            warnings.push(format!("{why}; on_stale = {}", s.on_stale.as_str()));
            let stale = match s.on_stale {
                OnStale::UseStale => None,
                OnStale::Tempfail => Some(Member::Unavailable(why)),
                OnStale::Unknown => Some(Member::Unknown(why)),
            };
            // One marker list that every list of the source nests: an expansion
            // visits it once, however many of the source's lists it goes through.
            if let Some(member) = stale {
                let address = format!("(ldap {} stale snapshot)", s.name);
                let marker: Arc<str> = address.as_str().into();
                for l in &mut lists {
                    l.to_mut().members.push(Member::Address(marker.clone()));
                }
                lists.push(Cow::Owned(ListDef {
                    address,
                    members: vec![member],
                    origin: format!("ldap {} (stale)", s.name),
                    ..ListDef::default()
                }));
            }
        }
        Ok(SourceData {
            lists,
            warnings,
            fallback,
        })
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
