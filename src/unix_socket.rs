// SPDX-License-Identifier: GPL-3.0-or-later
//! Binding a unix socket at a path, for the milter socket and the daemon's control
//! socket alike: a socket file left by a crashed instance is replaced, one that still
//! answers is in use, and anything that is not a socket is never deleted.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};

/// Removes the socket file on drop.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a unix socket at `path` with permissions `mode`. A stale socket there is
/// replaced; a socket that answers gives [`io::ErrorKind::AddrInUse`]; a file that is
/// not a socket (a typo pointing at data, a link) gives [`io::ErrorKind::AlreadyExists`]
/// and is left alone. The returned [`SocketFile`] removes the socket when dropped.
pub async fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketFile)> {
    remove_stale(path).await?;
    let listener = UnixListener::bind(path)?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok((listener, file))
}

/// A socket file left by a crashed instance is removed; one that still answers is in use.
async fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by another process", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let (live, file) = bind(&path, 0o600).await.expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind(&path, 0o600).await.expect_err("in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");

        // A crashed instance leaves its socket behind: it no longer answers.
        drop(live);
        std::mem::forget(file);
        assert!(path.exists());
        let (_again, file) = bind(&path, 0o600).await.expect("stale socket replaced");
        drop(file);
        assert!(!path.exists(), "removed on drop");

        let data = dir.path().join("data");
        std::fs::write(&data, b"not a socket").expect("file");
        let e = bind(&data, 0o600).await.expect_err("not a socket");
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&data).expect("kept"), b"not a socket");
    }
}
