//! Streams: topics of partitioned logs holding record batches in Kafka's format (magic 2)
//! exactly as they were produced, with idempotent-producer state, long-poll wake-ups and
//! group commit per partition, and the committed offsets of named readers. Kafka topics
//! are streams; other faces read and write the same logs.
//!
//! Errors are the engine's own; each face maps them to its protocol's codes.

pub mod batch;
pub mod codec;
pub mod compact;
pub mod config;
pub mod offsets;
pub mod partition;
pub mod record;
pub mod topics;
pub mod txn;

pub use config::{MessageType, TimestampType, TopicConfig};
pub use partition::{Partition, PartitionState, Produced, Slices};
pub use sluice_log::{Batch, FileSlice, FlushPolicy, LogConfig, LogError, send_file_slice};
pub use topics::{Refusal, RefusalKind, Topic, Topics, valid_internal_name, valid_name};

/// Why an append was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    /// An idempotent producer's epoch is older than the one the partition knows.
    InvalidProducerEpoch,
    /// An idempotent producer's sequence leaves a gap or goes back.
    OutOfOrderSequence,
    /// The log could not be written.
    Storage,
}

/// How a read of a partition went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    Ok,
    /// The offset is below the log start or past the end.
    OutOfRange,
    /// The log could not be read.
    Storage,
}
