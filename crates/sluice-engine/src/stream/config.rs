//! One topic's effective configs: the subset of Kafka's topic configs that Sluice
//! implements, plus `flush` and `message.type`. Names and values are Kafka's, since Kafka clients set them
//! and other faces show them.

use std::collections::BTreeMap;

use sluice_log::{FlushPolicy, LogConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// One topic's effective configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub max_message_bytes: u32,
    /// `sync`: acks=-1 is answered after fsync; `async`: fsync on the log's interval.
    pub flush_sync: bool,
    pub timestamp_type: TimestampType,
    /// What RocketMQ messages the topic accepts (RocketMQ's topic message type).
    pub message_type: MessageType,
    /// `cleanup.policy`: `delete` (retention), `compact`, or both.
    pub delete: bool,
    pub compact: bool,
    /// `min.cleanable.dirty.ratio`, in millionths.
    pub min_cleanable_dirty_ratio_ppm: u32,
    pub min_compaction_lag_ms: u64,
    pub max_compaction_lag_ms: u64,
    pub delete_retention_ms: u64,
}

/// A topic's RocketMQ message type: the one kind of message it accepts, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Normal,
    Fifo,
    Delay,
    Transaction,
    Mixed,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Normal => "NORMAL",
            MessageType::Fifo => "FIFO",
            MessageType::Delay => "DELAY",
            MessageType::Transaction => "TRANSACTION",
            MessageType::Mixed => "MIXED",
        }
    }

    /// Reads a type name in any case.
    pub fn parse(value: &str) -> Option<MessageType> {
        [
            MessageType::Normal,
            MessageType::Fifo,
            MessageType::Delay,
            MessageType::Transaction,
            MessageType::Mixed,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(value.trim()))
    }
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            segment_bytes: 256 * 1024 * 1024,
            max_message_bytes: 1_048_588,
            flush_sync: false,
            timestamp_type: TimestampType::CreateTime,
            message_type: MessageType::Mixed,
            delete: true,
            compact: false,
            min_cleanable_dirty_ratio_ppm: 500_000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX as u64,
            delete_retention_ms: 86_400_000,
        }
    }
}

fn parse_ms(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| format!("invalid value {value:?}: expected a non-negative number"))
}

fn parse_limit(value: &str) -> Result<Option<u64>, String> {
    match value.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(v) if v >= 0 => Ok(Some(v as u64)),
        _ => Err(format!(
            "invalid value {value:?}: expected -1 or a non-negative number"
        )),
    }
}

impl TopicConfig {
    /// Applies one `name=value` override; an unknown name or bad value is an error message
    /// for INVALID_CONFIG.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "cleanup.policy" => {
                let mut delete = false;
                let mut compact = false;
                for p in value.split(',').map(str::trim) {
                    match p {
                        "delete" => delete = true,
                        "compact" => compact = true,
                        _ => return Err(format!("invalid cleanup.policy {value:?}")),
                    }
                }
                if !delete && !compact {
                    return Err(format!("invalid cleanup.policy {value:?}"));
                }
                self.delete = delete;
                self.compact = compact;
            }
            "min.cleanable.dirty.ratio" => match value.trim().parse::<f64>() {
                Ok(v) if (0.0..=1.0).contains(&v) => {
                    self.min_cleanable_dirty_ratio_ppm = (v * 1e6).round() as u32;
                }
                _ => return Err(format!("invalid min.cleanable.dirty.ratio {value:?}")),
            },
            "min.compaction.lag.ms" => self.min_compaction_lag_ms = parse_ms(value)?,
            "max.compaction.lag.ms" => match parse_ms(value)? {
                0 => return Err(format!("invalid max.compaction.lag.ms {value:?}")),
                v => self.max_compaction_lag_ms = v,
            },
            "delete.retention.ms" => self.delete_retention_ms = parse_ms(value)?,
            "retention.ms" => self.retention_ms = parse_limit(value)?,
            "retention.bytes" => self.retention_bytes = parse_limit(value)?,
            "segment.bytes" => match value.parse::<u64>() {
                Ok(v) if (14..=1 << 30).contains(&v) => self.segment_bytes = v.max(1024),
                _ => return Err(format!("invalid segment.bytes {value:?}")),
            },
            "max.message.bytes" => match value.parse::<u32>() {
                Ok(v) if v <= sluice_core::limits::BATCH_BYTES_MAX => self.max_message_bytes = v,
                _ => return Err(format!("invalid max.message.bytes {value:?}")),
            },
            "message.timestamp.type" => match value {
                "CreateTime" => self.timestamp_type = TimestampType::CreateTime,
                "LogAppendTime" => self.timestamp_type = TimestampType::LogAppendTime,
                _ => return Err(format!("invalid message.timestamp.type {value:?}")),
            },
            "flush" => match value {
                "sync" => self.flush_sync = true,
                "async" => self.flush_sync = false,
                _ => return Err(format!("invalid flush {value:?}: expected sync or async")),
            },
            "message.type" => {
                self.message_type = MessageType::parse(value).ok_or_else(|| {
                    format!(
                        "invalid message.type {value:?}: expected NORMAL, FIFO, DELAY, TRANSACTION or MIXED"
                    )
                })?;
            }
            _ => return Err(format!("unknown topic config {name:?}")),
        }
        Ok(())
    }

    /// The defaults with `overrides` applied.
    pub fn with_overrides(
        defaults: &TopicConfig,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, String> {
        let mut c = defaults.clone();
        for (k, v) in overrides {
            c.set(k, v)?;
        }
        Ok(c)
    }

    /// The value DescribeConfigs reports for `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        let limit = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
        Some(match name {
            "cleanup.policy" => match (self.compact, self.delete) {
                (true, true) => "compact,delete".into(),
                (true, false) => "compact".into(),
                _ => "delete".into(),
            },
            "min.cleanable.dirty.ratio" => {
                format!("{}", f64::from(self.min_cleanable_dirty_ratio_ppm) / 1e6)
            }
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "retention.ms" => limit(self.retention_ms),
            "retention.bytes" => limit(self.retention_bytes),
            "segment.bytes" => self.segment_bytes.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "message.timestamp.type" => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            "flush" => if self.flush_sync { "sync" } else { "async" }.into(),
            "message.type" => self.message_type.as_str().into(),
            _ => return None,
        })
    }

    /// The compaction settings, for the cleaner.
    pub fn compact_config(&self) -> super::compact::CompactConfig {
        super::compact::CompactConfig {
            min_cleanable_dirty_ratio: f64::from(self.min_cleanable_dirty_ratio_ppm) / 1e6,
            min_compaction_lag_ms: self.min_compaction_lag_ms,
            max_compaction_lag_ms: self.max_compaction_lag_ms,
            delete_retention_ms: self.delete_retention_ms,
        }
    }

    /// The log settings for one partition of a topic with these configs.
    pub fn log_config(&self, base: &LogConfig) -> LogConfig {
        let mut log = base.clone();
        log.segment_bytes = self.segment_bytes.max(1024);
        // A compacted topic without `delete` keeps every segment the cleaner leaves.
        log.retention_bytes = self.retention_bytes.filter(|_| self.delete);
        log.retention_ms = self.retention_ms.filter(|_| self.delete);
        // Room for the largest batch plus its frame, whatever max.message.bytes says.
        log.batch_bytes_max = sluice_core::limits::BATCH_BYTES_MAX;
        log.flush = if self.flush_sync {
            FlushPolicy::Sync
        } else {
            match base.flush {
                FlushPolicy::Sync => FlushPolicy::default(),
                async_policy => async_policy,
            }
        };
        log
    }
}
