//! The agent's Unix socket: created in a directory the agent owns, with the umask set
//! before bind so it is never briefly world-accessible, a stale socket from a crashed
//! run removed, and the socket removed again on exit.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Group, chown};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::config::SocketConfig;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// Creating or securing the directory failed.
    #[error("socket directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another agent answers on the socket.
    #[error("another process is already serving on {0}")]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// bind, chmod or chown failed.
    #[error("socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configured group does not exist.
    #[error("socket.group {0:?}: no such group")]
    UnknownGroup(String),
}

/// A bound socket; dropping it removes the socket file.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if std::fs::remove_file(&self.path).is_ok() {
            info!(socket.path = %self.path.display(), "socket removed");
        }
    }
}

/// Creates the directory if needed, clears a stale socket, and binds.
pub fn bind(config: &SocketConfig) -> Result<(UnixListener, BoundSocket), SocketError> {
    let path = config.path.clone();
    let gid = config.group.as_deref().map(resolve_group).transpose()?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    prepare_directory(dir, gid)?;
    remove_stale(&path)?;

    // Owner and group only, from the first instant the file exists.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    umask(previous);
    let listener = bound.map_err(|source| SocketError::Io {
        path: path.clone(),
        source,
    })?;
    let guard = BoundSocket { path: path.clone() };

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.mode)).map_err(
        |source| SocketError::Io {
            path: path.clone(),
            source,
        },
    )?;
    if let Some(gid) = gid {
        chown(&path, None, Some(gid)).map_err(|e| SocketError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
    }
    info!(socket.path = %path.display(), socket.mode = format!("{:o}", config.mode), "listening");
    Ok((listener, guard))
}

fn prepare_directory(dir: &Path, gid: Option<Gid>) -> Result<(), SocketError> {
    let err = |source: std::io::Error| SocketError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(err)?;
        if let Some(gid) = gid {
            chown(dir, None, Some(gid)).map_err(|e| err(e.into()))?;
        }
    } else if let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o002 != 0
    {
        warn!(socket.dir = %dir.display(), "socket directory is world-writable; prefer a directory the agent owns (0750)");
    }
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    info!(socket.path = %path.display(), "removed a stale socket");
    Ok(())
}

fn resolve_group(group: &str) -> Result<Gid, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    match Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(SocketError::UnknownGroup(group.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: PathBuf) -> SocketConfig {
        SocketConfig {
            path,
            mode: 0o660,
            group: None,
        }
    }

    #[tokio::test]
    async fn binds_with_mode_replaces_stale_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/keygate/agent.sock");
        let (listener, guard) = bind(&config(path.clone())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o750);

        // A live socket is not taken over.
        assert!(matches!(
            bind(&config(path.clone())),
            Err(SocketError::InUse(_))
        ));

        // A dead one (listener gone, file left behind) is replaced.
        drop(listener);
        std::mem::forget(guard);
        let (_listener, guard) = bind(&config(path.clone())).unwrap();
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_remove_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            bind(&config(path.clone())),
            Err(SocketError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn unknown_group_is_an_error() {
        assert!(matches!(
            resolve_group("no-such-group-keygate"),
            Err(SocketError::UnknownGroup(_))
        ));
        assert_eq!(resolve_group("1234").unwrap(), Gid::from_raw(1234));
    }
}
