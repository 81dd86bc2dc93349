// SPDX-License-Identifier: GPL-3.0-or-later
//! Which quarantine store the running daemon uses, as the kernel sees it.
//!
//! `[quarantine] state_dir` takes effect at restart only: after a reload that changed
//! it, the daemon still records holds in the old directory, while the admin commands
//! (and the sweep) read the file and would open the new, empty one, where every message
//! the daemon held looks foreign. So root's commands look at the running daemons started
//! with the same configuration file, and refuse to run when one of them has the store
//! open in another directory.
//!
//! The answer comes from the kernel, not from anything the daemon writes: the daemons
//! are found by their command line (`/proc/PID/cmdline`), and whether one uses the
//! file's store by the lock every SQLite connection in WAL mode holds on the store's
//! `-shm` file for as long as it is open (`/proc/locks`, pid and inode). Neither needs
//! CAP_SYS_PTRACE, which the sweep unit does not have. The daemon's account can make root
//! refuse, which it could do anyway, but never make root use another directory: what is
//! found is only compared, and printed neutralised.

use super::store::DB_FILE;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The `-shm` file SQLite keeps next to the database in WAL mode.
const SHM_FILE: &str = "quarantine.sqlite-shm";

/// The configuration file named on a command line (`-c`, `--config`; else `default`),
/// and its first positional argument (the subcommand).
fn parse_args(args: &[&OsStr], default: &Path) -> (PathBuf, Option<Vec<u8>>) {
    let mut config = None;
    let mut command = None;
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_bytes();
        if a == b"--" {
            break;
        }
        if a == b"-c" || a == b"--config" {
            config = args.get(i + 1).map(PathBuf::from);
            i += 2;
            continue;
        }
        if let Some(v) = a.strip_prefix(b"--config=") {
            config = Some(PathBuf::from(OsStr::from_bytes(v)));
        } else if let Some(v) = a.strip_prefix(b"-c").filter(|v| !v.is_empty()) {
            config = Some(PathBuf::from(OsStr::from_bytes(v)));
        } else if !a.starts_with(b"-") && command.is_none() {
            command = Some(a.to_vec());
        }
        i += 1;
    }
    (config.unwrap_or_else(|| default.to_owned()), command)
}

/// The name of a program file, without the " (deleted)" the kernel adds once the file
/// was replaced (an upgrade while the daemon runs).
fn program_name(exe: &Path) -> Option<Vec<u8>> {
    let name = exe.file_name()?.as_bytes();
    Some(name.strip_suffix(b" (deleted)").unwrap_or(name).to_vec())
}

/// The running daemons of this program (same program file name, subcommand `run` or
/// none) started with `config`, compared after resolving both (a relative name from the
/// process's working directory). Processes that cannot be read are skipped.
pub fn daemons(config: &Path, default_config: &Path) -> Vec<u32> {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let config = canonical(config);
    let Some(me) = std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|e| program_name(&e))
    else {
        return Vec::new();
    };
    let own_pid = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        let proc = entry.path();
        let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
            continue;
        };
        let args: Vec<&OsStr> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(OsStr::from_bytes)
            .collect();
        let Some(argv0) = args.first() else {
            continue;
        };
        if program_name(Path::new(argv0)).as_ref() != Some(&me) {
            continue;
        }
        let (theirs, command) = parse_args(&args, default_config);
        if command.is_some_and(|c| c != b"run") {
            continue;
        }
        let theirs = if theirs.is_relative() {
            match std::fs::read_link(proc.join("cwd")) {
                Ok(cwd) => cwd.join(theirs),
                Err(_) => continue,
            }
        } else {
            theirs
        };
        if canonical(&theirs) == config {
            found.push(pid);
        }
    }
    found
}

/// True when `/proc/locks` (text in `locks`) shows a lock held by `pid` on the file
/// with device `dev` and inode `ino`.
fn holds_lock(locks: &str, pid: u32, dev: u64, ino: u64) -> bool {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let pid = pid.to_string();
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: POSIX  ADVISORY  READ 1234 fe:00:10297830 128 128"; blocked waiters
        // ("1: -> POSIX ...") have one field more and hold nothing.
        fields.len() >= 6 && fields[1] != "->" && fields[4] == pid && fields[5] == want
    })
}

/// The directory of the store a daemon has open, when its descriptors can be read
/// (as root with CAP_SYS_PTRACE, or as its own user); only for the error message.
fn open_store_dir(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .find(|t| t.file_name() == Some(OsStr::new(DB_FILE)))
        .and_then(|t| t.parent().map(Path::to_owned))
}

/// An error when a running daemon started with `config` does not have the quarantine
/// store in `state_dir` (the file's) open: the file's `state_dir` changed since the
/// daemon started, and takes effect only when it restarts.
pub fn check_same_store(
    config: &Path,
    default_config: &Path,
    state_dir: &Path,
) -> Result<(), String> {
    let daemons = daemons(config, default_config);
    if daemons.is_empty() {
        return Ok(());
    }
    let shm = std::fs::symlink_metadata(state_dir.join(SHM_FILE)).ok();
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let here = std::fs::canonicalize(state_dir).ok();
    let Some(pid) = daemons.into_iter().find(|&pid| {
        !shm.as_ref()
            .is_some_and(|m| holds_lock(&locks, pid, m.dev(), m.ino()))
    }) else {
        return Ok(());
    };
    // When its lock is not seen (once in CI the daemon had this very store open, yet
    // /proc/locks showed no lock on the -shm file's inode), the daemon's own
    // descriptors still say which store it has open, where root may read them: only
    // the same directory as the file's passes, so this never makes root use another.
    let open = open_store_dir(pid);
    if open.is_some() && open.as_deref().and_then(|d| std::fs::canonicalize(d).ok()) == here {
        return Ok(());
    }
    let running = match open {
        Some(dir) => format!(
            "keeps its quarantine store in {}",
            crate::text::neutralize(&dir.to_string_lossy())
        ),
        None => format!(
            "does not use the quarantine store in {}",
            state_dir.display()
        ),
    };
    Err(format!(
        "the running daemon (pid {pid}) {running}, but {} names [quarantine] state_dir = {}; \
         state_dir takes effect only at restart: restart the daemon first (systemctl \
         restart fanout-milter), then run this command again",
        config.display(),
        state_dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_file_is_read_from_the_command_line() {
        let default = Path::new("/etc/default.toml");
        let args = |s: &str| -> PathBuf {
            let v: Vec<&OsStr> = s.split(' ').map(OsStr::new).collect();
            parse_args(&v, default).0
        };
        let command = |s: &str| {
            let v: Vec<&OsStr> = s.split(' ').map(OsStr::new).collect();
            parse_args(&v, default).1
        };
        assert_eq!(command("fanout-milter -c x.toml"), None);
        assert_eq!(
            command("fanout-milter -c x.toml run"),
            Some(b"run".to_vec())
        );
        assert_eq!(
            command("fanout-milter quarantine -c x.toml sweep"),
            Some(b"quarantine".to_vec())
        );
        assert_eq!(args("fanout-milter"), default);
        assert_eq!(args("fanout-milter run"), default);
        assert_eq!(args("fanout-milter --config /a.toml"), Path::new("/a.toml"));
        assert_eq!(args("fanout-milter run -c b.toml"), Path::new("b.toml"));
        assert_eq!(args("fanout-milter --config=/c.toml"), Path::new("/c.toml"));
        assert_eq!(args("fanout-milter -c/d.toml run"), Path::new("/d.toml"));
        assert_eq!(args("fanout-milter -- -c /e.toml"), default);
    }

    #[test]
    fn a_lock_counts_only_for_its_holder_and_file() {
        let locks = "1: POSIX  ADVISORY  READ 4242 fe:00:10297830 128 128\n\
                     2: -> POSIX  ADVISORY  WRITE 77 fe:00:10297830 128 128\n\
                     3: FLOCK  ADVISORY  WRITE 4243 08:01:55 0 EOF\n";
        let fe00 = nix::sys::stat::makedev(0xfe, 0);
        assert!(holds_lock(locks, 4242, fe00, 10297830));
        assert!(!holds_lock(locks, 4242, fe00, 10297831), "another file");
        assert!(
            !holds_lock(locks, 77, fe00, 10297830),
            "a waiter holds nothing"
        );
        assert!(holds_lock(locks, 4243, nix::sys::stat::makedev(8, 1), 55));
        assert!(!holds_lock(locks, 4243, fe00, 55), "another device");
    }

    #[test]
    fn a_replaced_program_file_keeps_its_name() {
        assert_eq!(
            program_name(Path::new("/usr/local/bin/fanout-milter (deleted)")),
            Some(b"fanout-milter".to_vec())
        );
    }
}
