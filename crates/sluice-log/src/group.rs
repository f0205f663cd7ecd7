//! Group commit for writers on threads: a log behind a mutex where each writer that needs
//! durability either leads the next fsync or waits for the one in flight. While the
//! leader fsyncs (without the lock) others keep appending; the next leader's fsync then
//! covers all of them, so N waiting writers cost far fewer than N fsyncs.
//!
//! Async owners (one task per queue/partition) use the same primitives directly:
//! `Log::sync_job` on the owner, `SyncJob::run` on a blocking thread, `Log::synced` back.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::LogError;
use crate::log::{Appended, Log};

#[derive(Debug)]
struct State {
    log: Log,
    syncing: bool,
}

#[derive(Debug)]
pub struct SharedLog {
    state: Mutex<State>,
    synced: Condvar,
}

impl SharedLog {
    pub fn new(log: Log) -> Self {
        SharedLog {
            state: Mutex::new(State {
                log,
                syncing: false,
            }),
            synced: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the log itself consistent: every
        // mutation completes before the guard is released or fails with an error.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the log under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R {
        f(&mut self.lock().log)
    }

    /// Appends without waiting for durability.
    pub fn append(
        &self,
        payload: &[u8],
        record_count: u32,
        max_timestamp_ms: i64,
    ) -> Result<Appended, LogError> {
        self.lock()
            .log
            .append(payload, record_count, max_timestamp_ms)
    }

    /// Appends and returns once the batch is fsynced, sharing fsyncs with concurrent
    /// writers.
    pub fn append_durable(
        &self,
        payload: &[u8],
        record_count: u32,
        max_timestamp_ms: i64,
    ) -> Result<Appended, LogError> {
        let mut state = self.lock();
        let appended = state.log.append(payload, record_count, max_timestamp_ms)?;
        loop {
            if state.log.durable_offset() >= appended.next_offset {
                return Ok(appended);
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let job = state.log.sync_job()?;
            let Some(job) = job else { continue };
            state.syncing = true;
            drop(state);
            let result = job.run();
            state = self.lock();
            state.syncing = false;
            self.synced.notify_all();
            state.log.synced(result?);
        }
    }
}
