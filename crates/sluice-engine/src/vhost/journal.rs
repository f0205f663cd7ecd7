//! The vhost's journal as its queues share it: one lock held for one append or settle at
//! a time, group fsyncs run as jobs on a blocking thread, and the background work (the
//! `async` flush policy, buffered settlements written, freed segments deleted) in one
//! round for every queue.

use std::sync::{Arc, Mutex, MutexGuard};

use sluice_core::Message;

use super::flow::Confirm;
use crate::journal::Journal;
use crate::store::{LogError, StoreError, SyncJob, Synced};

#[derive(Debug)]
struct State {
    journal: Journal<Confirm>,
    syncing: bool,
}

#[derive(Debug)]
pub struct SharedJournal {
    state: Mutex<State>,
}

impl SharedJournal {
    pub fn new(journal: Journal<Confirm>) -> Self {
        SharedJournal {
            state: Mutex::new(State {
                journal,
                syncing: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every journal operation completes or fails before the guard is released.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `message` once for `queues`; `confirm` is told when it is on disk. Returns
    /// the offset, or the confirm (answered `false`) is consumed and `None` returned.
    pub fn append(
        self: &Arc<Self>,
        message: &Message,
        queues: &[(u64, Option<i64>)],
        confirm: Option<Confirm>,
    ) -> Option<u64> {
        let mut state = self.lock();
        match state.journal.append(message, queues) {
            Ok(offset) => {
                if let Some(c) = confirm {
                    match state.journal.wait(offset, c) {
                        Ok(()) => self.start_sync(&mut state),
                        Err(c) => c.done(false),
                    }
                }
                Some(offset)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store message");
                if let Some(c) = confirm {
                    c.done(false);
                }
                None
            }
        }
    }

    pub fn settle(&self, queue: u64, offsets: &[u64]) {
        if offsets.is_empty() {
            return;
        }
        if let Err(e) = self.lock().journal.settle(queue, offsets) {
            tracing::error!(queue, error = %e, "cannot record settled messages");
        }
    }

    /// Records a new queue, written to the file (not fsynced) before this returns.
    pub fn created(&self, queue: u64, definition: &[u8]) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.journal.created(queue, definition)?;
        state.journal.write_buffered()
    }

    /// Records a deleted queue (written to the file before this returns).
    pub fn deleted(&self, queue: u64, held: &[u64]) {
        let mut state = self.lock();
        let done = state
            .journal
            .deleted(queue, held)
            .and_then(|()| state.journal.write_buffered());
        if let Err(e) = done {
            tracing::error!(queue, error = %e, "cannot record a deleted queue");
        }
    }

    pub fn next_offset(&self) -> u64 {
        self.lock().journal.next_offset()
    }

    pub fn definitions_saved(&self, offset: u64) {
        self.lock().journal.definitions_saved(offset);
    }

    pub fn definitions_hold_segments(&self) -> bool {
        self.lock().journal.definitions_hold_segments()
    }

    pub fn read(&self, offset: u64) -> Result<Message, StoreError> {
        self.lock().journal.read(offset)
    }

    /// Starts the next group fsync if writers wait and none runs.
    fn start_sync(self: &Arc<Self>, state: &mut State) {
        if state.syncing {
            return;
        }
        match state.journal.sync_job() {
            Ok(Some(job)) => {
                state.syncing = true;
                let this = Arc::clone(self);
                tokio::task::spawn_blocking(move || this.run_syncs(job));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot start fsync");
                for c in state.journal.sync_failed() {
                    c.done(false);
                }
            }
        }
    }

    /// Runs group fsyncs on this blocking thread while writers wait: each finished one
    /// releases the confirms it covers, and the next is taken here rather than handed to
    /// another thread.
    fn run_syncs(self: &Arc<Self>, mut job: SyncJob) {
        loop {
            let result = job.run();
            let mut state = self.lock();
            state.syncing = false;
            Self::release(&mut state, result);
            match state.journal.sync_job() {
                Ok(Some(next)) => {
                    state.syncing = true;
                    job = next;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start fsync");
                    for c in state.journal.sync_failed() {
                        c.done(false);
                    }
                    return;
                }
            }
        }
    }

    fn release(state: &mut State, result: Result<Synced, LogError>) {
        for (c, ok) in state.journal.flushed(result) {
            c.done(ok);
        }
    }

    /// The journal's background work: buffered records written, segments every queue is
    /// done with deleted, and the fsync the `async` policy wants. File work runs outside
    /// the lock. Blocking: called from the flusher's thread.
    pub fn flush_due(self: &Arc<Self>) {
        let (job, truncate) = {
            let mut state = self.lock();
            if let Err(e) = state.journal.write_buffered() {
                tracing::error!(error = %e, "cannot write the journal");
            }
            let truncate = state.journal.maintenance();
            let job = if state.syncing {
                None
            } else {
                match state.journal.flush_job() {
                    Ok(job) => job,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot flush the journal");
                        None
                    }
                }
            };
            if job.is_some() {
                state.syncing = true;
            }
            (job, truncate)
        };
        if let Some(truncate) = truncate
            && let Err(e) = truncate.run()
        {
            tracing::error!(error = %e, "cannot free journal segments");
        }
        let Some(job) = job else { return };
        let result = job.run();
        let mut state = self.lock();
        state.syncing = false;
        Self::release(&mut state, result);
        // Writers that came after the flush job started wait for a job of their own.
        self.start_sync(&mut state);
    }

    /// Makes the journal durable (clean shutdown). Blocking.
    pub fn close(&self) {
        if let Err(e) = self.lock().journal.close() {
            tracing::error!(error = %e, "cannot close the journal");
        }
    }
}
