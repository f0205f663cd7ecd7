//! Group commit for writers on threads: a log behind a mutex where each writer that needs
//! durability either leads the next fsync or waits for the one in flight. While the
//! leader fsyncs (without the lock) others keep appending; the next leader's fsync then
//! covers all of them, so N waiting writers cost far fewer than N fsyncs.
//!
//! Async owners (one task per queue/partition) use [`GroupCommit`]: the owner appends and
//! parks waiters, runs `SyncJob::run` on a blocking thread, and releases the waiters each
//! finished job covers. Writers never wait on threads of their own.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::LogError;
use crate::log::{Appended, Log, SyncJob, Synced};

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

/// Group commit for an owner task (one per queue/partition): writers that need durability
/// park a waiter here after their append; the owner runs at most one [`SyncJob`] at a
/// time, off its own thread, and each finished job releases every waiter it covers.
/// Appends that arrive while a job runs are covered by the next one.
#[derive(Debug)]
pub struct GroupCommit<W> {
    waiters: VecDeque<(u64, W)>,
    waiters_max: usize,
    in_flight: bool,
}

impl<W> GroupCommit<W> {
    /// `waiters_max` bounds the parked writers; past it `wait` pushes back.
    pub fn new(waiters_max: usize) -> Self {
        GroupCommit {
            waiters: VecDeque::new(),
            waiters_max,
            in_flight: false,
        }
    }

    /// Parks `waiter` until the log is durable up to `next_offset`. Gives the waiter back
    /// when the queue is full, for the caller to apply backpressure.
    pub fn wait(&mut self, next_offset: u64, waiter: W) -> Result<(), W> {
        if self.waiters.len() >= self.waiters_max {
            return Err(waiter);
        }
        self.waiters.push_back((next_offset, waiter));
        Ok(())
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The next fsync to run, if writers wait and none is running.
    pub fn start(&mut self, log: &mut Log) -> Result<Option<SyncJob>, LogError> {
        if self.in_flight || self.waiters.is_empty() {
            return Ok(None);
        }
        let job = log.sync_job()?;
        self.in_flight = job.is_some();
        Ok(job)
    }

    /// The fsync the `async` flush policy wants, unless one is running: it takes the same
    /// slot as a waiters' job, so a log never has two jobs out, and it releases whatever
    /// waiters it covers when it finishes.
    pub fn start_flush(&mut self, log: &mut Log) -> Result<Option<SyncJob>, LogError> {
        if self.in_flight {
            return Ok(None);
        }
        let job = log.sync_job()?;
        self.in_flight = job.is_some();
        Ok(job)
    }

    /// Records a finished job and returns the waiters it made durable, in append order.
    pub fn finish(&mut self, log: &mut Log, synced: Synced) -> impl Iterator<Item = W> + '_ {
        self.in_flight = false;
        log.synced(synced);
        let durable = log.durable_offset();
        let covered = self.waiters.partition_point(|(next, _)| *next <= durable);
        self.waiters.drain(..covered).map(|(_, w)| w)
    }

    /// A job failed: the log's durability is unknown, so nothing is released; the caller
    /// fails the waiters with [`GroupCommit::fail_all`].
    pub fn fail_all(&mut self) -> impl Iterator<Item = W> + '_ {
        self.in_flight = false;
        self.waiters.drain(..).map(|(_, w)| w)
    }
}
