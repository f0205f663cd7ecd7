//! Errors of log operations. I/O errors carry the path they happened on.

use std::path::PathBuf;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { len: usize, max: u32 },
    #[error("a batch must hold at least one record")]
    EmptyBatch,
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
    #[error("log in {path} failed an earlier write or fsync; it takes no changes until reopened")]
    Failed { path: PathBuf },
    #[error("invalid log config: {0}")]
    Config(#[from] ConfigError),
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { path, source }
    }
}
