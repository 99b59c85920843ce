//! Credential files for the agent (token, role id, secret id).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `contents` to `path` with mode 0600, atomically (a sibling file renamed over
/// it), so that an agent re-reading the file never sees it half-written.
pub fn write_private_file(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    let mut file = std::fs::File::options()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
