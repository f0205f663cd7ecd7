//! Segmented append-only log storage: the one storage engine under every Sluice queue
//! and partition.
//!
//! A log is a sequence of opaque batches with 64-bit offsets (a batch of `n` records takes
//! `n` offsets). Batches live in segment files framed with length and CRC32C; each sealed
//! segment has a sparse offset index and a time index. The log knows nothing of messages
//! or protocols: a Kafka record batch or an AMQP message is just a payload here.
//!
//! Invariants:
//! - offsets only grow; a batch is readable at every offset it covers (compaction may
//!   leave gaps between batches and segments: a read from a gap starts at the next batch);
//! - a read never returns bytes whose CRC does not match;
//! - after a crash the log reopens at the last whole, valid batch of each segment,
//!   scanning only the active segment and sealed segments whose indexes are damaged;
//! - one owner mutates a `Log` (`&mut self`); fsync runs outside it via [`SyncJob`], so
//!   many appends share one fsync (group commit).
//!
//! The byte layout of every file is documented in `docs/log-format.md`.

pub mod config;
mod error;
pub mod files;
mod format;
mod group;
mod index;
pub mod io;
mod log;
mod rewrite;
mod scan;
mod segment;
mod sendfile;
mod sys;
pub mod timing;

pub use config::{ConfigError, FlushPolicy, LogConfig};
pub use error::LogError;
pub use group::{GroupCommit, SharedLog};
pub use io::{Fault, FaultyIo, FileIo, Io};
pub use log::{Appended, Batch, Log, LogStats, SyncJob, Synced, TruncateJob};
pub use rewrite::{Rewrite, Rewritten, SealedInfo, read_segment};
pub use sendfile::{FileSlice, send_file_slice};
