//! Crash-safe file replacement: write a temporary file in the same directory, fsync it,
//! rename it over the target, fsync the directory. A crash at any point leaves the old
//! file or the new one, never a mix; after a successful return the new one is durable.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The suffix of temporary files; leftovers of a crash are removed on load.
pub const TMP_SUFFIX: &str = ".tmp";

/// The temporary name used while replacing `name` (hidden, ends in [`TMP_SUFFIX`]).
pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}{TMP_SUFFIX}"))
}

/// Replaces `dir/name` with `bytes`, mode 0600.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(dir, name);
    // A leftover from a crash may have other permissions; start from nothing.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    // The mode above is filtered by the umask; make sure it is exactly 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Removes `dir/name` durably (a missing file is not an error).
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir)
}

/// Makes the directory's entries (a rename, an unlink) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
