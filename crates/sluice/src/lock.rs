//! The data directory lock: at most one sluice process uses a data directory at a time.
//!
//! The lock is an exclusive OS file lock (`File::try_lock`) on `<data_dir>/.lock`, held for
//! the life of the [`DataDirLock`]. The kernel drops it when the process exits, crash
//! included, so a stale lock file never blocks a restart; the file itself stays, holding
//! the pid of the last owner for whoever wonders who has the directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
const LOCK_FILE_NAME: &str = ".lock";

/// Holds the data directory for this process; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot create data directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {} is in use by another sluice process (lock file {})",
        dir.display(),
        lock.display()
    )]
    InUse { dir: PathBuf, lock: PathBuf },
    #[error("cannot lock data directory with {}: {source}", lock.display())]
    Lock {
        lock: PathBuf,
        source: std::io::Error,
    },
}

impl DataDirLock {
    /// Creates `dir` if it is missing and takes its lock, failing at once if another
    /// process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        std::fs::create_dir_all(dir).map_err(|source| LockError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let lock = dir.join(LOCK_FILE_NAME);
        let io_error = |source| LockError::Lock {
            lock: lock.clone(),
            source,
        };
        // Not truncated on open: until the lock is ours, the pid in it is the owner's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::InUse {
                    dir: dir.to_owned(),
                    lock,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        file.set_len(0).map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_fails_until_the_first_is_dropped() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let first = DataDirLock::acquire(&dir).unwrap();
        let err = DataDirLock::acquire(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data directory {} is in use by another sluice process (lock file {}/.lock)",
                dir.display(),
                dir.display()
            )
        );
        drop(first);
        DataDirLock::acquire(&dir).unwrap();
    }

    #[test]
    fn the_lock_file_holds_the_owner_pid() {
        let temp = tempfile::tempdir().unwrap();
        let _lock = DataDirLock::acquire(temp.path()).unwrap();
        let text = std::fs::read_to_string(temp.path().join(".lock")).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }

    #[test]
    fn a_data_dir_under_a_file_cannot_be_created() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = DataDirLock::acquire(&file.join("data")).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot create data directory {}/data: ",
                file.display()
            )),
            "{err}"
        );
    }
}
