// SPDX-License-Identifier: GPL-3.0-or-later
//! List drift: the last accepted size of every list, kept in the state directory, so
//! that a list that suddenly grows (40 yesterday, 840,000 today) is noticed.

use super::index::DirectoryIndex;
use crate::state_dir::{StateDir, StateDirError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file under the state directory.
pub const FILE_NAME: &str = "list-sizes.json";

/// What is known of one list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownSize {
    /// The last accepted size.
    pub accepted: u64,
    /// The size seen now, when it drifted past the limits and awaits acceptance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
}

/// How a list's current size compares with its accepted size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assessment {
    /// Never seen before: its size is accepted as it is.
    New,
    /// Within the limits: the new size becomes the accepted one.
    Normal,
    /// Grew past `factor` times its accepted size and above `min_audience`.
    Drifted {
        /// The accepted size.
        from: u64,
    },
}

/// Compares a list's size with its accepted size (pure).
pub fn assess(
    known: Option<&KnownSize>,
    current: u64,
    factor: f64,
    min_audience: u64,
) -> Assessment {
    let Some(known) = known else {
        return Assessment::New;
    };
    if min_audience > 0
        && current >= min_audience
        && current as f64 > factor * known.accepted as f64
    {
        Assessment::Drifted {
            from: known.accepted,
        }
    } else {
        Assessment::Normal
    }
}

/// The accepted sizes of all lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownSizes {
    /// By list address.
    pub lists: BTreeMap<String, KnownSize>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state directory or the file is unsafe to use (see [`crate::state_dir`]).
    #[error(transparent)]
    Unsafe(#[from] StateDirError),
    /// Not our JSON.
    #[error("{}: not a list-size file: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl KnownSizes {
    /// Reads the file in `state_dir`; a missing file (or directory) is an empty set.
    /// Never follows a link in the directory (see [`crate::state_dir`]).
    pub fn load(state_dir: &Path) -> Result<KnownSizes, StateError> {
        let path = state_dir.join(FILE_NAME);
        let dir = match StateDir::open(state_dir, None) {
            Ok(dir) => dir,
            Err(StateDirError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(KnownSizes::default());
            }
            Err(e) => return Err(e.into()),
        };
        match dir.read(FILE_NAME)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Format { path, source })
            }
            None => Ok(KnownSizes::default()),
        }
    }

    /// Writes the file atomically (a new temporary file created exclusively, fsync,
    /// rename), never following a link in the directory.
    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let json = serde_json::to_vec_pretty(self).expect("list sizes serialise");
        StateDir::open(state_dir, None)?.write_atomic(FILE_NAME, &json)?;
        Ok(())
    }

    /// Records the current sizes: new lists and normal changes are accepted, drifted
    /// lists keep their accepted size and get `pending`. Returns the drifted lists with
    /// their accepted size.
    pub fn update<'a>(
        &mut self,
        sizes: impl IntoIterator<Item = (&'a str, u64)>,
        factor: f64,
        min_audience: u64,
    ) -> BTreeMap<String, u64> {
        let mut drifted = BTreeMap::new();
        for (address, size) in sizes {
            match assess(self.lists.get(address), size, factor, min_audience) {
                Assessment::New | Assessment::Normal => {
                    self.lists.insert(
                        address.to_owned(),
                        KnownSize {
                            accepted: size,
                            pending: None,
                        },
                    );
                }
                Assessment::Drifted { from } => {
                    drifted.insert(address.to_owned(), from);
                    if let Some(k) = self.lists.get_mut(address) {
                        k.pending = Some(size);
                    }
                }
            }
        }
        drifted
    }

    /// Accepts a list's current size; returns the previous accepted size.
    pub fn accept(&mut self, address: &str, size: u64) -> Option<u64> {
        let previous = self.lists.get(address).map(|k| k.accepted);
        self.lists.insert(
            address.to_owned(),
            KnownSize {
                accepted: size,
                pending: None,
            },
        );
        previous
    }
}

/// A list size that [`accept_current_size`] recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The list's address, as the directory spells it.
    pub address: Arc<str>,
    /// The size now accepted: the list's audience now.
    pub size: u64,
    /// The size accepted before, if the list had one.
    pub previous: Option<u64>,
}

/// Why `directory accept` could not accept a list's size.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The address is no list of the directory.
    #[error("{0} is not a list of the configured directory")]
    NotAList(String),
    /// The list-size file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

/// `directory accept ADDRESS`: accepts the current size of the list at `address` in
/// `index`, so its mail flows again once the daemon reloads, and writes it to the
/// list-size file in `state_dir`.
pub fn accept_current_size(
    index: &DirectoryIndex,
    state_dir: &Path,
    address: &str,
) -> Result<Accepted, AcceptError> {
    let list = index
        .list(address)
        .ok_or_else(|| AcceptError::NotAList(address.to_owned()))?;
    let size = list.total();
    let mut known = KnownSizes::load(state_dir)?;
    let previous = known.accept(&list.address, size);
    known.save(state_dir)?;
    Ok(Accepted {
        address: list.address.clone(),
        size,
        previous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(n: u64) -> KnownSize {
        KnownSize {
            accepted: n,
            pending: None,
        }
    }

    #[test]
    fn assessment_needs_both_factor_and_minimum() {
        assert_eq!(assess(None, 840_000, 5.0, 1000), Assessment::New);
        assert_eq!(
            assess(Some(&known(40)), 840_000, 5.0, 1000),
            Assessment::Drifted { from: 40 }
        );
        assert_eq!(
            assess(Some(&known(40)), 200, 5.0, 1000),
            Assessment::Normal,
            "below the minimum"
        );
        assert_eq!(
            assess(Some(&known(1000)), 5000, 5.0, 1000),
            Assessment::Normal,
            "exactly 5x"
        );
        assert_eq!(
            assess(Some(&known(1000)), 5001, 5.0, 1000),
            Assessment::Drifted { from: 1000 }
        );
        assert_eq!(
            assess(Some(&known(40)), 840_000, 5.0, 0),
            Assessment::Normal,
            "0 switches it off"
        );
    }

    #[test]
    fn update_keeps_accepted_size_of_drifted_lists_until_accepted() {
        let mut k = KnownSizes::default();
        assert!(
            k.update([("dyn@x.org", 40), ("all@x.org", 5000)], 5.0, 1000)
                .is_empty()
        );
        let d = k.update([("dyn@x.org", 840_000), ("all@x.org", 5100)], 5.0, 1000);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            [("dyn@x.org".to_owned(), 40)]
        );
        assert_eq!(
            k.lists["dyn@x.org"],
            KnownSize {
                accepted: 40,
                pending: Some(840_000)
            }
        );
        assert_eq!(k.lists["all@x.org"].accepted, 5100);
        let d = k.update([("dyn@x.org", 840_000)], 5.0, 1000);
        assert_eq!(d.get("dyn@x.org"), Some(&40), "still held at the next load");
        assert_eq!(k.accept("dyn@x.org", 840_000), Some(40));
        assert!(k.update([("dyn@x.org", 840_000)], 5.0, 1000).is_empty());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("fanout-drift-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            KnownSizes::load(&dir).expect("missing is empty"),
            KnownSizes::default()
        );
        let mut k = KnownSizes::default();
        k.update([("a@x.org", 3)], 5.0, 1000);
        k.save(&dir).expect("save");
        assert_eq!(KnownSizes::load(&dir).expect("load"), k);
        std::fs::write(dir.join(FILE_NAME), b"{not json").expect("write");
        assert!(
            KnownSizes::load(&dir)
                .expect_err("garbage")
                .to_string()
                .contains("not a list-size file")
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn planted_links_are_not_followed() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let target = t.path().join("ld.so.preload");
        std::fs::write(&target, "precious").unwrap();
        // The temporary file root would create, planted by the daemon.
        symlink(
            &target,
            state.join(format!(".{FILE_NAME}.{}", std::process::id())),
        )
        .unwrap();
        let mut k = KnownSizes::default();
        k.accept("all@x.org", 5000);
        k.save(&state).expect("save");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(KnownSizes::load(&state).unwrap(), k);
        // The file itself replaced by a link: not read through.
        std::fs::remove_file(state.join(FILE_NAME)).unwrap();
        symlink(&target, state.join(FILE_NAME)).unwrap();
        let e = KnownSizes::load(&state).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        k.save(&state).expect("save replaces the link");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[test]
    fn accepting_records_a_lists_current_size_and_refuses_a_mailbox() {
        use crate::directory::{IndexOptions, ListDef, Member};
        use crate::policy::DomainSet;
        use crate::policy::address::RecipientDelimiter;
        let list = ListDef {
            address: "all@corp.example".into(),
            aliases: Vec::new(),
            members: vec![
                Member::Address("a@corp.example".into()),
                Member::Address("b@corp.example".into()),
            ],
            origin: "test".into(),
        };
        let options = IndexOptions {
            max_depth: 10,
            internal: DomainSet::new(["corp.example"]).expect("domains"),
            max_audience: 0,
            recipient_delimiter: RecipientDelimiter::new("+"),
        };
        let index = DirectoryIndex::build(vec![list], &options);
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let first = accept_current_size(&index, &state, "ALL@corp.example").expect("accept");
        assert_eq!(
            (&*first.address, first.size, first.previous),
            ("all@corp.example", 2, None)
        );
        let mut known = KnownSizes::load(&state).unwrap();
        known.lists.get_mut("all@corp.example").unwrap().pending = Some(2);
        known.lists.get_mut("all@corp.example").unwrap().accepted = 1;
        known.save(&state).unwrap();
        let again = accept_current_size(&index, &state, "all@corp.example").expect("accept");
        assert_eq!(again.previous, Some(1));
        assert_eq!(
            KnownSizes::load(&state).unwrap().lists["all@corp.example"],
            KnownSize {
                accepted: 2,
                pending: None
            }
        );
        let e = accept_current_size(&index, &state, "a@corp.example").unwrap_err();
        assert_eq!(
            e.to_string(),
            "a@corp.example is not a list of the configured directory"
        );
    }
}
