//! The Admin API's persistent state under `<state_dir>/admin/`:
//!
//! ```text
//! lock                      held (flock) while a gateway uses the directory
//! revision                  the highest revision handed out by a delete
//! routes/<id>.json          one file per resource the Admin API wrote
//! upstreams/<id>.json
//! consumers/<username>.json
//! ```
//!
//! Every file is replaced atomically ([`atomic::write`]), so a crash (even `kill -9` in
//! the middle of a burst of writes) leaves each file old or new, and each admin request
//! touches exactly one file: the state after a restart is the state after some prefix of
//! the acknowledged writes (plus possibly the one in flight). Directories are 0700, files
//! 0600. A record whose `value` is absent is a tombstone: it hides the resource of that id
//! in the configuration file.
//!
//! Revisions (APISIX's `createdIndex`/`modifiedIndex`, and the generated ids of `POST`)
//! only grow: a record carries its own, and a delete first persists the revision it used.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::json_text::JsonText;
use crate::kind::{Kind, check_id};

pub mod atomic;

/// The state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not a record this gateway wrote.
    #[error("{path}: not a valid record: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process holds the directory.
    #[error("{path}: the state directory is in use by another gateway")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One resource as the Admin API stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The id (or username).
    pub id: String,
    /// Revision of the first write.
    #[serde(rename = "createdIndex")]
    pub created: u64,
    /// Revision of the last write.
    #[serde(rename = "modifiedIndex")]
    pub modified: u64,
    /// The resource's JSON (compact text, not a tree); `None` for a tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<JsonText>,
}

/// The loaded state, kept in memory and written through on every change.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
    revision: u64,
    records: [BTreeMap<String, Record>; 4],
}

const RECORD_SUFFIX: &str = ".json";
const REVISION_FILE: &str = "revision";

impl Store {
    /// Opens (creating it 0700 if needed) `<state_dir>/admin`, locks it against a second
    /// gateway, removes leftovers of interrupted writes and loads every record.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("admin");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_err(&root))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(&root))?;
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let revision_path = root.join(REVISION_FILE);
        let mut revision = match std::fs::read_to_string(&revision_path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| StoreError::Corrupt {
                    path: revision_path.clone(),
                    reason: e.to_string(),
                })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&revision_path)(e)),
        };
        atomic::remove(&root, &format!(".{REVISION_FILE}{}", atomic::TMP_SUFFIX))
            .map_err(io_err(&root))?;
        let mut records: [BTreeMap<String, Record>; 4] = Default::default();
        for kind in Kind::ALL {
            let dir = root.join(kind.plural());
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .map_err(io_err(&dir))?;
            let map = load_dir(kind, &dir)?;
            if let Some(max) = map.values().map(|r| r.modified).max() {
                revision = revision.max(max);
            }
            if let Some(slot) = records.get_mut(kind.index()) {
                *slot = map;
            }
        }
        Ok(Self {
            root,
            _lock: lock,
            revision,
            records,
        })
    }

    /// `<state_dir>/admin`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The highest revision handed out.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The revision the next write gets.
    pub fn next_revision(&self) -> u64 {
        self.revision.saturating_add(1)
    }

    /// The record of `kind` with this id.
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Record> {
        self.map(kind).and_then(|m| m.get(id))
    }

    /// Every record of `kind` (tombstones included), by id.
    pub fn records(&self, kind: Kind) -> impl Iterator<Item = &Record> {
        self.map(kind).into_iter().flat_map(BTreeMap::values)
    }

    fn map(&self, kind: Kind) -> Option<&BTreeMap<String, Record>> {
        self.records.get(kind.index())
    }

    /// Writes `record` (durably) and keeps it. Its `modified` must be
    /// [`Self::next_revision`] or later.
    pub fn put(&mut self, kind: Kind, record: Record) -> Result<(), StoreError> {
        let dir = self.root.join(kind.plural());
        let name = format!("{}{RECORD_SUFFIX}", record.id);
        // The record may hold credentials: its bytes are wiped once written.
        let bytes = crate::json_text::to_exact_vec(&record).map_err(|e| StoreError::Corrupt {
            path: dir.join(&name),
            reason: e.to_string(),
        })?;
        atomic::write(&dir, &name, &bytes).map_err(io_err(&dir.join(&name)))?;
        self.revision = self.revision.max(record.modified);
        if let Some(map) = self.records.get_mut(kind.index()) {
            map.insert(record.id.clone(), record);
        }
        Ok(())
    }

    /// Removes the record of `kind` with this id (durably), using up one revision.
    pub fn remove(&mut self, kind: Kind, id: &str) -> Result<(), StoreError> {
        let next = self.next_revision();
        atomic::write(&self.root, REVISION_FILE, next.to_string().as_bytes())
            .map_err(io_err(&self.root.join(REVISION_FILE)))?;
        self.revision = next;
        let dir = self.root.join(kind.plural());
        let name = format!("{id}{RECORD_SUFFIX}");
        atomic::remove(&dir, &name).map_err(io_err(&dir.join(&name)))?;
        if let Some(map) = self.records.get_mut(kind.index()) {
            map.remove(id);
        }
        Ok(())
    }
}

fn load_dir(kind: Kind, dir: &Path) -> Result<BTreeMap<String, Record>, StoreError> {
    let mut map = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "ignoring a file with a non UTF-8 name in the state directory");
            continue;
        };
        if name.ends_with(atomic::TMP_SUFFIX) {
            // An interrupted write: the record it was replacing is intact.
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let Some(id) = name.strip_suffix(RECORD_SUFFIX) else {
            tracing::warn!(path = %path.display(), "ignoring an unknown file in the state directory");
            continue;
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        check_id(kind, id).map_err(|why| corrupt(format!("file name: {why}")))?;
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(io_err(&path))?);
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if record.id != id {
            return Err(corrupt(format!(
                "holds id {:?}, not the file's {id:?}",
                record.id
            )));
        }
        if !record.value.as_ref().is_none_or(JsonText::is_object) {
            return Err(corrupt("value is not a JSON object".into()));
        }
        map.insert(record.id.clone(), record);
    }
    atomic::sync_dir(dir).map_err(io_err(dir))?;
    Ok(map)
}

#[cfg(test)]
mod tests;
