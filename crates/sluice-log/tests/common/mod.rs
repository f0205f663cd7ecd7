#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::Arc;

use sluice_core::ManualClock;
use sluice_log::{Log, LogConfig};

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        segment_ms: None,
        ..LogConfig::default()
    }
}

pub fn open(dir: &Path, config: LogConfig, clock: &ManualClock) -> Log {
    Log::open(dir, config, Arc::new(clock.clone())).expect("open log")
}

/// A payload that names its batch, so misplaced bytes are visible.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut out = format!("batch-{i}-").into_bytes();
    while out.len() < len {
        out.push(b'a' + (out.len() % 26) as u8);
    }
    out.truncate(len.max(1));
    out
}

/// Reads every batch from `from` to the end of the log.
pub fn read_all(log: &mut Log, from: u64) -> Vec<sluice_log::Batch> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let batches = log.read(offset, 1 << 20).expect("read");
        let Some(last) = batches.last() else { break };
        offset = last.next_offset();
        out.extend(batches);
    }
    out
}
