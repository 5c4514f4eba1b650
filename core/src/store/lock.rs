//! One process per data directory.
//!
//! redb already refuses a second open of the same file, but its error cannot say
//! who holds it. The lock file `DATA_DIR/latchkey.lock` is held with an
//! exclusive advisory lock (`flock`) for the life of the owning process and
//! names that process, so a second `latchkey` can say "in use by PID 1234"
//! (and, once a server is running, where to reach it) instead of hanging.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What the holder of the lock says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockOwner {
    pub pid: u32,
    /// `serve` for a running server, `cli` for a one-shot command.
    pub role: String,
    /// Base URL of the holder's HTTPS API, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the data directory {dir} is already in use by {}", describe(.owner))]
    Busy {
        dir: PathBuf,
        owner: Option<LockOwner>,
    },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn describe(owner: &Option<LockOwner>) -> String {
    match owner {
        Some(o) if o.role == "serve" => format!(
            "a running Latchkey server (PID {}{})",
            o.pid,
            o.api_url
                .as_deref()
                .map(|u| format!(", {u}"))
                .unwrap_or_default()
        ),
        Some(o) => format!("another latchkey command (PID {})", o.pid),
        None => "another process".to_string(),
    }
}

/// An exclusive hold on a data directory, released on drop.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    pub const FILE_NAME: &'static str = "latchkey.lock";

    /// Takes the lock without waiting.
    pub fn acquire(dir: &Path, role: &str) -> Result<Self, LockError> {
        let path = dir.join(Self::FILE_NAME);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Busy {
                    dir: dir.to_path_buf(),
                    owner: read_owner(&path),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut lock = DataDirLock {
            file,
            path: path.clone(),
        };
        lock.describe_self(&LockOwner {
            pid: std::process::id(),
            role: role.to_string(),
            api_url: None,
        })
        .map_err(|source| LockError::Io { path, source })?;
        Ok(lock)
    }

    /// Rewrites what the lock file says about its holder (e.g. once the
    /// server knows its URL).
    pub fn describe_self(&mut self, owner: &LockOwner) -> std::io::Result<()> {
        let text = serde_json::to_vec(owner).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&text)?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads who holds the lock on `dir`, if anyone does.
pub fn current_owner(dir: &Path) -> Option<LockOwner> {
    let path = dir.join(DataDirLock::FILE_NAME);
    let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
    match file.try_lock() {
        Ok(()) => None, // nobody holds it (dropping `file` releases ours)
        Err(_) => read_owner(&path),
    }
}

fn read_owner(path: &Path) -> Option<LockOwner> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_told_who_has_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = DataDirLock::acquire(dir.path(), "serve").expect("first");
        let err = DataDirLock::acquire(dir.path(), "cli").expect_err("second must fail");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("running Latchkey server"), "{msg}");
    }

    #[test]
    fn released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(DataDirLock::acquire(dir.path(), "cli").expect("first"));
        assert!(current_owner(dir.path()).is_none());
        DataDirLock::acquire(dir.path(), "cli").expect("again");
    }
}
