// SPDX-License-Identifier: GPL-3.0-or-later
//! The state directory as root commands touch it.
//!
//! The directory belongs to the unprivileged daemon, so every entry in it may be a
//! symlink, hard link or FIFO planted by a compromised daemon to make root create,
//! overwrite or chown a file elsewhere (`/etc/ld.so.preload`). Root commands therefore:
//!
//! - accept the directory only when it is a real directory (not a symlink) owned by root
//!   or by the daemon's account (`[quarantine] state_owner`), not writable by group or
//!   others, in a parent only root can change, and use its canonical path, so that no
//!   component before the last can be swapped;
//! - accept an existing entry only when it is a regular file with one link, owned by root
//!   or the directory's owner;
//! - open every entry with `O_NOFOLLOW` (and `O_NONBLOCK`, so a FIFO cannot stall them),
//!   create new files with `O_CREAT | O_EXCL | O_NOFOLLOW` and rename them into place
//!   (`rename` replaces a planted link, never follows it), and hand files to the owner with
//!   `fchown` on the open descriptor, never `chown` by path.
//!
//! SQLite follows the same rules (see `quarantine::store`): it opens the database with
//! `SQLITE_OPEN_NOFOLLOW`, and every file it opens itself (`-journal`, `-wal`, `-shm`)
//! with `O_NOFOLLOW`; the side files are checked like any entry before the database is
//! opened.
//!
//! Why not drop root's privileges to the directory's owner instead: the quarantine
//! commands need root for postsuper in the same process, SQLite opens its side files
//! lazily during the whole command, and a process-wide `seteuid` that every child must
//! undo is easy to get wrong. Opening without following closes every path the process
//! uses, also when it runs as the daemon.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the state directory or an entry in it is not used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The directory or an entry is unsafe for root to use.
    #[error("refusing {}: {problem}", path.display())]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// An I/O error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The largest entry [`StateDir::read`] reads.
pub const MAX_ENTRY_BYTES: u64 = 64 << 20;

fn unsafe_(path: &Path, problem: impl Into<String>) -> StateDirError {
    StateDirError::Unsafe {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Opens an existing file for reading without following a link at its name, without
/// blocking on a FIFO, and only when it is a regular file.
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// A checked state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
    uid: u32,
    gid: u32,
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "no such user".to_owned())
}

/// True when `mode` lets group or others change the directory's entries.
fn others_may_write(mode: u32) -> bool {
    mode & 0o022 != 0 && mode & 0o1000 == 0
}

impl StateDir {
    /// Checks the existing directory `dir`. With `owner`, the directory must belong to
    /// root or to that account; without, to anyone. Only root's use is checked: a
    /// process running as the owner has nothing to gain from its own links.
    pub fn open(dir: &Path, owner: Option<&str>) -> Result<StateDir, StateDirError> {
        if !nix::unistd::geteuid().is_root() {
            let meta = std::fs::metadata(dir).map_err(io(dir))?;
            return Ok(StateDir {
                path: dir.canonicalize().map_err(io(dir))?,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
        let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
        if meta.file_type().is_symlink() {
            return Err(unsafe_(
                dir,
                "the state directory is a symbolic link; set [quarantine] state_dir to the real directory",
            ));
        }
        if !meta.is_dir() {
            return Err(unsafe_(dir, "not a directory"));
        }
        if let Some(owner) = owner {
            let expected = nix::unistd::User::from_name(owner)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw());
            if meta.uid() != 0 && Some(meta.uid()) != expected {
                return Err(unsafe_(
                    dir,
                    format!(
                        "the state directory is owned by uid {} ({}), not by root or the daemon's \
                         account \"{owner}\" ([quarantine] state_owner{})",
                        meta.uid(),
                        user_name(meta.uid()),
                        if expected.is_none() {
                            ", which does not exist here"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        if others_may_write(meta.mode()) {
            return Err(unsafe_(
                dir,
                format!(
                    "the state directory is writable by group or others (mode {:o})",
                    meta.mode() & 0o7777
                ),
            ));
        }
        let path = dir.canonicalize().map_err(io(dir))?;
        if let Some(parent) = path.parent() {
            let p = std::fs::metadata(parent).map_err(io(parent))?;
            if p.uid() != 0 || others_may_write(p.mode()) {
                return Err(unsafe_(
                    &path,
                    format!(
                        "its parent {} can be changed by uid {} or others: the state directory \
                         could be swapped",
                        parent.display(),
                        p.uid()
                    ),
                ));
            }
        }
        Ok(StateDir {
            path,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// The canonical path of the directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn check_meta(&self, path: &Path, meta: &Metadata) -> Result<(), StateDirError> {
        if meta.file_type().is_symlink() {
            return Err(unsafe_(path, "a symbolic link in the state directory"));
        }
        if !meta.is_file() {
            return Err(unsafe_(path, "not a regular file"));
        }
        if meta.uid() != 0 && meta.uid() != self.uid {
            return Err(unsafe_(
                path,
                format!(
                    "owned by uid {}, not by root or the state directory's owner (uid {})",
                    meta.uid(),
                    self.uid
                ),
            ));
        }
        if meta.nlink() > 1 {
            return Err(unsafe_(
                path,
                format!("has {} hard links; it must have one", meta.nlink()),
            ));
        }
        Ok(())
    }

    /// Checks an entry without opening it: absent, or a regular file with one link
    /// owned by root or the directory's owner.
    pub fn check_entry(&self, name: &str) -> Result<(), StateDirError> {
        let path = self.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => self.check_meta(&path, &meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateDirError::Io { path, source }),
        }
    }

    /// Opens an existing entry without following a link (`None` when absent), and
    /// checks what was opened.
    fn open_entry(&self, name: &str, write: bool) -> Result<Option<File>, StateDirError> {
        let path = self.join(name);
        let opened = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(unsafe_(&path, "a symbolic link in the state directory"));
            }
            Err(source) => return Err(StateDirError::Io { path, source }),
        };
        let meta = file.metadata().map_err(io(&path))?;
        self.check_meta(&path, &meta)?;
        Ok(Some(file))
    }

    /// Reads an entry (`None` when absent), of at most [`MAX_ENTRY_BYTES`].
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateDirError> {
        self.read_at_most(name, MAX_ENTRY_BYTES)
    }

    /// Reads an entry (`None` when absent) of at most `max` bytes: a larger one (the
    /// daemon's account could make it as large as the disk) is refused unread.
    pub fn read_at_most(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, StateDirError> {
        let Some(file) = self.open_entry(name, false)? else {
            return Ok(None);
        };
        let path = self.join(name);
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        if bytes.len() as u64 > max {
            return Err(unsafe_(&path, format!("larger than {max} bytes")));
        }
        Ok(Some(bytes))
    }

    /// Run as root, hands an entry to the directory's owner (with `fchown` on the open
    /// file), so that the daemon can still write it. Nothing to do when absent.
    pub fn give_to_owner(&self, name: &str) -> Result<(), StateDirError> {
        if !nix::unistd::geteuid().is_root() || self.uid == 0 {
            return Ok(());
        }
        let Some(file) = self.open_entry(name, false)? else {
            return Ok(());
        };
        let meta = file.metadata().map_err(io(&self.join(name)))?;
        if meta.uid() != self.uid || meta.gid() != self.gid {
            std::os::unix::fs::fchown(&file, Some(self.uid), Some(self.gid))
                .map_err(io(&self.join(name)))?;
        }
        Ok(())
    }

    /// Replaces an entry atomically: a new file created with `O_EXCL | O_NOFOLLOW`
    /// (mode 0600, owned by the directory's owner), written, synced and renamed over it.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StateDirError> {
        self.write_atomic_with(name, &mut |file| file.write_all(bytes))
    }

    /// [`StateDir::write_atomic`] with the contents written by `write` as they are
    /// made (a large file never whole in memory).
    pub fn write_atomic_with(
        &self,
        name: &str,
        write: &mut dyn FnMut(&mut File) -> std::io::Result<()>,
    ) -> Result<(), StateDirError> {
        let path = self.join(name);
        let tmp_name = format!(".{name}.{}", std::process::id());
        let tmp = self.join(&tmp_name);
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(&tmp)
        };
        let mut file = match create() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Left by a crash, or planted: unlinking removes the entry itself (a
                // link is not followed), then the name is created afresh.
                std::fs::remove_file(&tmp).map_err(io(&tmp))?;
                create().map_err(io(&tmp))?
            }
            Err(source) => return Err(StateDirError::Io { path: tmp, source }),
        };
        let written = (|| {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            if nix::unistd::geteuid().is_root() && self.uid != 0 {
                std::os::unix::fs::fchown(&file, Some(self.uid), Some(self.gid))?;
            }
            write(&mut file)?;
            file.sync_all()
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(StateDirError::Io { path: tmp, source });
        }
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> bool {
        let ok = nix::unistd::geteuid().is_root();
        if !ok {
            eprintln!("skipped: needs root, as the admin commands run");
        }
        ok
    }

    /// A state directory in a root-owned parent (the temporary directory is 0700 root).
    fn state() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        (dir, state)
    }

    #[test]
    fn a_state_directory_owned_by_another_account_is_refused() {
        if !root() {
            return;
        }
        let (_t, state) = state();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let e = StateDir::open(&state, Some("fanout-milter-no-such-user")).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("refusing "), "{text}");
        assert!(
            text.contains("owned by uid 65534") && text.contains("[quarantine] state_owner"),
            "{text}"
        );
        let name = user_name(65534);
        StateDir::open(&state, Some(&name)).expect("owned by the daemon's account");
        std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
        StateDir::open(&state, Some("fanout-milter-no-such-user")).expect("owned by root");
    }

    #[test]
    fn a_symlinked_or_open_state_directory_is_refused() {
        let (t, state) = state();
        let link = t.path().join("link");
        symlink(&state, &link).unwrap();
        let e = StateDir::open(&link, None).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&state, None).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
    }

    #[test]
    fn an_entry_larger_than_asked_for_is_refused_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(state.join("key"), [1u8; 33]).unwrap();
        let dir = StateDir::open(&state, None).unwrap();
        let e = dir.read_at_most("key", 32).unwrap_err();
        assert!(e.to_string().contains("larger than 32 bytes"), "{e}");
        assert_eq!(dir.read_at_most("key", 33).unwrap().unwrap().len(), 33);
        assert_eq!(dir.read_at_most("absent", 32).unwrap(), None);
    }

    #[test]
    fn entries_are_never_followed() {
        let (t, state) = state();
        let target = t.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        let dir = StateDir::open(&state, None).unwrap();
        symlink(&target, state.join("planted")).unwrap();
        assert!(dir.check_entry("planted").is_err());
        let e = dir.read("planted").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let fifo = state.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = dir.read("fifo").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::hard_link(&target, state.join("hard")).unwrap();
        let e = dir.read("hard").unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(dir.read("absent").unwrap(), None);

        // A planted temporary file is replaced, not written through.
        symlink(&target, state.join(format!(".data.{}", std::process::id()))).unwrap();
        dir.write_atomic("data", b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(dir.read("data").unwrap().unwrap(), b"new");
        // A link at the final name is replaced by rename, never followed.
        std::fs::remove_file(state.join("data")).unwrap();
        symlink(&target, state.join("data")).unwrap();
        dir.write_atomic("data", b"newer").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert!(
            !std::fs::symlink_metadata(state.join("data"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn root_hands_files_over_by_descriptor_only() {
        if !root() {
            return;
        }
        let (t, state) = state();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let target = t.path().join("target");
        std::fs::write(&target, "root's").unwrap();
        let dir = StateDir::open(&state, None).unwrap();
        symlink(&target, state.join("planted")).unwrap();
        assert!(dir.give_to_owner("planted").is_err());
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0, "not chowned");
        std::fs::write(state.join("mine"), "x").unwrap();
        dir.give_to_owner("mine").unwrap();
        assert_eq!(std::fs::metadata(state.join("mine")).unwrap().uid(), 65534);
        dir.write_atomic("written", b"y").unwrap();
        let meta = std::fs::metadata(state.join("written")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o600));
    }
}
