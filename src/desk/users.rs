// SPDX-License-Identifier: GPL-3.0-or-later
//! The desk's accounts: the users file, one `NAME:ROLE:PHC-HASH` line per user
//! (argon2id; a user who only signs in through the SSO proxy has no hash).
//!
//! The file must be readable by its owner alone; the daemon re-reads it whenever it
//! changes, so `fanout-milter review passwd` needs no reload. The command writes it
//! atomically (a new file, then rename), never through a link.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The shortest password `review passwd` accepts.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// What a user may do on the desk; each role may do what the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads only.
    Viewer,
    /// Acts on ordinary holds.
    Reviewer,
    /// Acts on every hold, admin-only ones too.
    Admin,
}

impl Role {
    /// The name in the users file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "reviewer" => Ok(Role::Reviewer),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role \"{}\" (viewer, reviewer, admin)",
                crate::text::neutralize(s)
            )),
        }
    }
}

/// One account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The argon2 hash in PHC form; `None` for a user who signs in only through SSO.
    pub hash: Option<String>,
}

/// Why the users file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read it (or it is not a plain file).
    #[error("refusing {}: {problem}", path.display())]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A line is malformed.
    #[error("{}:{line}: {problem}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// Checks a user name: letters, digits and `._@-`, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.chars().count() > 64
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
    {
        return Err(format!(
            "\"{}\" is not a user name: use letters, digits and . _ @ - (at most 64)",
            crate::text::neutralize(name)
        ));
    }
    Ok(())
}

/// Parses the users file's text (`path` only names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<BTreeMap<String, User>, UsersError> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let syntax = |problem: String| UsersError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            problem,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        check_name(name).map_err(syntax)?;
        let role = parts
            .next()
            .ok_or_else(|| syntax("expected NAME:ROLE:HASH".into()))?
            .parse::<Role>()
            .map_err(syntax)?;
        let hash = match parts.next().map(str::trim) {
            None | Some("") => None,
            Some(h) => {
                PasswordHash::new(h).map_err(|e| {
                    syntax(format!("the hash of \"{name}\" is not a PHC string: {e}"))
                })?;
                Some(h.to_owned())
            }
        };
        if users.contains_key(name) {
            return Err(syntax(format!("\"{name}\" is listed twice")));
        }
        users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                role,
                hash,
            },
        );
    }
    Ok(users)
}

/// The text of a users file.
pub fn render(users: &BTreeMap<String, User>) -> String {
    let mut out = String::from(
        "# fanout-milter review desk users: NAME:ROLE:HASH (written by `fanout-milter review passwd`)\n",
    );
    for u in users.values() {
        out.push_str(&format!(
            "{}:{}:{}\n",
            u.name,
            u.role,
            u.hash.as_deref().unwrap_or("")
        ));
    }
    out
}

/// Reads the users file without following a link, refusing it when group or others
/// have any access to it.
pub fn read(path: &Path) -> Result<BTreeMap<String, User>, UsersError> {
    let io = |source| UsersError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = crate::state_dir::open_nofollow(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(UsersError::Unsafe {
            path: path.to_owned(),
            problem: format!(
                "group or others may access it (mode {:04o}): it holds password hashes; \
                 chmod 600 it",
                mode & 0o7777
            ),
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    parse(&text, path)
}

/// Writes the users file atomically: a new file beside it (mode 0600, created
/// exclusively, never through a link), handed to `owner` (uid, gid) when given, then
/// renamed over the old one.
pub fn write(
    path: &Path,
    users: &BTreeMap<String, User>,
    owner: Option<(u32, u32)>,
) -> Result<(), UsersError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let io = |source| UsersError::Io {
        path: path.to_owned(),
        source,
    };
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.write_all(render(users).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Hashes a password with argon2id, the crate's default (OWASP) parameters and a
/// random salt, in PHC form.
pub fn hash_password(password: &str) -> Result<String, String> {
    hash_with(password, Params::default())
}

/// [`hash_password`] with explicit parameters (tests use cheap ones).
pub fn hash_with(password: &str, params: Params) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC `hash` (parameters read from the hash).
pub fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// The users by name.
pub type Table = BTreeMap<String, User>;

/// The users file as the daemon sees it: read again whenever its size, time or inode
/// changed since the last look.
pub struct Users {
    path: PathBuf,
    cache: Mutex<Option<(FileStamp, Arc<Table>)>>,
}

/// What tells a changed file (the change time catches a chmod).
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Users {
    /// The users in `path`, read at first use.
    pub fn new(path: PathBuf) -> Users {
        Users {
            path,
            cache: Mutex::new(None),
        }
    }

    /// The current users: the cached table, or the file read again when it changed.
    /// Blocking (file I/O); an error leaves no cached table behind, so a broken file
    /// lets nobody in.
    pub fn current(&self) -> Result<Arc<Table>, UsersError> {
        let meta = std::fs::symlink_metadata(&self.path).map_err(|source| UsersError::Io {
            path: self.path.clone(),
            source,
        })?;
        let stamp = FileStamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        let mut cache = self.cache.lock().expect("users cache lock");
        if let Some((cached, users)) = cache.as_ref()
            && *cached == stamp
        {
            return Ok(users.clone());
        }
        *cache = None;
        let users = Arc::new(read(&self.path)?);
        *cache = Some((stamp, users.clone()));
        Ok(users)
    }

    /// One user, when the file can be read and lists them.
    pub fn get(&self, name: &str) -> Result<Option<User>, UsersError> {
        Ok(self.current()?.get(name).cloned())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Cheap argon2 parameters for tests.
    pub(crate) fn cheap() -> Params {
        Params::new(8, 1, 1, None).expect("params")
    }

    #[test]
    fn names_roles_and_hashes_are_checked() {
        let hash = hash_with("correct horse battery", cheap()).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(&hash, "correct horse battery"));
        assert!(!verify(&hash, "correct horse batterY"));
        assert!(!verify("not a hash", "x"));

        let text = format!("# comment\nalice:admin:{hash}\nbob.sso@corp:viewer:\ncarol:reviewer\n");
        let users = parse(&text, Path::new("/u")).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users["alice"].role, Role::Admin);
        assert_eq!(users["bob.sso@corp"].hash, None);
        assert_eq!(users["carol"].role, Role::Reviewer);
        assert_eq!(parse(&render(&users), Path::new("/u")).unwrap(), users);

        for (bad, needle) in [
            ("al ice:admin:", "not a user name"),
            ("alice:root:", "unknown role"),
            ("alice:admin:nothash", "not a PHC string"),
            ("alice:admin:\nalice:viewer:", "listed twice"),
        ] {
            let e = parse(bad, Path::new("/u")).unwrap_err().to_string();
            assert!(e.contains(needle) && e.starts_with("/u:"), "{bad}: {e}");
        }
        assert!(Role::Admin > Role::Reviewer && Role::Reviewer > Role::Viewer);
    }

    #[test]
    fn the_file_is_owner_only_written_atomically_and_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review-users");
        let mut users = BTreeMap::new();
        users.insert(
            "alice".to_owned(),
            User {
                name: "alice".into(),
                role: Role::Viewer,
                hash: None,
            },
        );
        write(&path, &users, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let table = Users::new(path.clone());
        assert_eq!(table.get("alice").unwrap().unwrap().role, Role::Viewer);

        users.get_mut("alice").unwrap().role = Role::Admin;
        write(&path, &users, None).unwrap();
        assert_eq!(
            table.get("alice").unwrap().unwrap().role,
            Role::Admin,
            "re-read"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = table.current().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read(&link).is_err(), "a link is never followed");
    }
}
