//! Per-log settings: segment size and age, index density, flush policy, retention and the
//! bounds on open files. `validate` rejects values outside the hard limits, naming the key.

use sluice_core::limits;

/// When appended bytes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// An append is durable only after an fsync that covers it; concurrent appends share
    /// one fsync (group commit).
    Sync,
    /// fsync when `interval_ms` has passed or `bytes` have been written since the last one.
    Async { interval_ms: u64, bytes: u64 },
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy::Async {
            interval_ms: 1000,
            bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment once the active one would grow past this.
    pub segment_bytes: u64,
    /// Roll a non-empty active segment once it is older than this.
    pub segment_ms: Option<u64>,
    /// Bytes of batches between two sparse offset/time index entries.
    pub index_interval_bytes: u32,
    /// Largest batch payload accepted by `append`.
    pub batch_bytes_max: u32,
    pub flush: FlushPolicy,
    /// Delete whole sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest batch is older than this.
    pub retention_ms: Option<u64>,
    /// Sealed segments kept open at once (file descriptor plus loaded indexes).
    pub open_segments_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: limits::INDEX_INTERVAL_BYTES_DEFAULT,
            batch_bytes_max: limits::BATCH_BYTES_MAX,
            flush: FlushPolicy::default(),
            retention_bytes: None,
            retention_ms: None,
            open_segments_max: limits::OPEN_SEGMENTS_MAX_DEFAULT,
        }
    }
}

/// A setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: String| Err(ConfigError { key, reason });
        if self.segment_bytes < 1024 || self.segment_bytes > limits::SEGMENT_BYTES_MAX {
            return bad(
                "segment_bytes",
                format!("must be between 1024 and {}", limits::SEGMENT_BYTES_MAX),
            );
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes", "must be at least 1".into());
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > limits::BATCH_BYTES_MAX {
            return bad(
                "batch_bytes_max",
                format!("must be between 1 and {}", limits::BATCH_BYTES_MAX),
            );
        }
        if self.open_segments_max == 0 || self.open_segments_max > 1024 {
            return bad("open_segments_max", "must be between 1 and 1024".into());
        }
        if let FlushPolicy::Async { interval_ms, bytes } = self.flush {
            if interval_ms == 0 {
                return bad("flush_interval_ms", "must be at least 1".into());
            }
            if bytes == 0 {
                return bad("flush_bytes", "must be at least 1".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(LogConfig::default().validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_key_of_a_bad_value() {
        let config = LogConfig {
            segment_bytes: 10,
            ..LogConfig::default()
        };
        let err = config.validate().err();
        assert_eq!(err.map(|e| e.key), Some("segment_bytes"));
        let config = LogConfig {
            batch_bytes_max: limits::BATCH_BYTES_MAX + 1,
            ..LogConfig::default()
        };
        assert_eq!(
            config.validate().err().map(|e| e.key),
            Some("batch_bytes_max")
        );
    }
}
