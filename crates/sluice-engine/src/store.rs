//! A durable queue's storage: a log of its persistent messages and a log of settlements
//! (acknowledged or dropped message offsets). Replaying both after a restart gives back
//! exactly the messages not yet settled. Fully settled segments of the message log are
//! freed by moving its start offset past the settled head; the settlement log is
//! compacted by rewriting the few out-of-order settlements above that head.
//!
//! Durability of appends is group-committed: writers park a waiter with
//! [`QueueStore::wait`], the owner runs the [`SyncJob`]s it is given off its thread and
//! hands the result back to [`QueueStore::synced`], which releases the covered waiters.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_core::{Clock, Message};
pub use sluice_log::{
    Fault, FaultyIo, FileIo, Io, LogConfig, LogError, SyncJob, Synced, TruncateJob,
};
use sluice_log::{GroupCommit, Log};

const ENCODING_VERSION: u8 = 1;
/// Most writers waiting for one queue's fsync; past it publishers get an error back.
const WAITERS_MAX: usize = 65_536;

/// Settlement log size that triggers its compaction.
const SETTLED_LOG_BYTES_MAX: u64 = if cfg!(test) {
    64 * 1024
} else {
    16 * 1024 * 1024
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("stored message at offset {offset} in {path} is not decodable")]
    Undecodable { path: PathBuf, offset: u64 },
}

/// A message read back from disk, with its offset.
#[derive(Debug)]
pub struct Recovered {
    pub offset: u64,
    pub message: Message,
    /// When it expires (TTL) or is due (delay), as it was when stored.
    pub expires_at: Option<i64>,
}

/// Which log a background flush job belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    Messages,
    Settlements,
}

#[derive(Debug)]
pub struct QueueStore<W> {
    dir: PathBuf,
    messages: Log,
    settled: Log,
    group: GroupCommit<W>,
    /// Lowest message offset not yet settled.
    head: u64,
    /// Settled offsets above `head`.
    settled_above_head: BTreeSet<u64>,
    /// A flush job of the settlement log is out.
    settled_syncing: bool,
    /// Offset of a compaction record in the settlement log whose prefix is dropped once
    /// the record is durable.
    compaction_at: Option<u64>,
    /// Size of the settlement log right after its last compaction.
    compacted_bytes: u64,
    scratch: Vec<u8>,
}

/// Encodes a message for the log: version, exchange, routing key, flags, priority,
/// expiration, expiry time, properties, body.
pub(crate) fn encode(message: &Message, expires_at: Option<i64>, out: &mut Vec<u8>) {
    out.clear();
    out.push(ENCODING_VERSION);
    for s in [&message.exchange, &message.routing_key] {
        let len = s.len().min(255);
        out.push(len as u8);
        out.extend_from_slice(s.as_bytes().get(..len).unwrap_or_default());
    }
    out.push(u8::from(message.persistent));
    out.push(message.priority);
    out.extend_from_slice(&message.expiration_ms.map_or(u64::MAX, |e| e).to_le_bytes());
    out.extend_from_slice(&expires_at.unwrap_or(i64::MIN).to_le_bytes());
    out.extend_from_slice(&(message.properties.len() as u32).to_le_bytes());
    out.extend_from_slice(&message.properties);
    out.extend_from_slice(&message.body);
}

pub(crate) fn decode(mut bytes: Bytes) -> Option<(Message, Option<i64>)> {
    let take_str = |b: &mut Bytes| -> Option<Arc<str>> {
        let len = usize::from(*b.first()?);
        b.advance(1);
        if b.len() < len {
            return None;
        }
        let s = std::str::from_utf8(b.get(..len)?).ok()?.into();
        b.advance(len);
        Some(s)
    };
    if bytes.first() != Some(&ENCODING_VERSION) {
        return None;
    }
    bytes.advance(1);
    let exchange = take_str(&mut bytes)?;
    let routing_key = take_str(&mut bytes)?;
    if bytes.len() < 22 {
        return None;
    }
    let persistent = bytes.get_u8() == 1;
    let priority = bytes.get_u8();
    let expiration = bytes.get_u64_le();
    let expires_at = bytes.get_i64_le();
    let props_len = bytes.get_u32_le() as usize;
    if bytes.len() < props_len {
        return None;
    }
    let properties = bytes.split_to(props_len);
    let message = Message {
        exchange,
        routing_key,
        properties,
        body: bytes,
        persistent,
        priority,
        expiration_ms: (expiration != u64::MAX).then_some(expiration),
    };
    Some((message, (expires_at != i64::MIN).then_some(expires_at)))
}

impl<W> QueueStore<W> {
    /// Opens (or creates) the store in `dir` and returns the messages still unsettled,
    /// in order.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Vec<Recovered>), StoreError> {
        let mut recovered = Vec::new();
        let store = Self::open_each(dir, config, clock, |r| recovered.push(r))?;
        Ok((store, recovered))
    }

    /// Like [`QueueStore::open`], handing each unsettled message to `each` as it is read,
    /// so a long queue need not be held in memory whole.
    pub fn open_each(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
        each: impl FnMut(Recovered),
    ) -> Result<Self, StoreError> {
        Self::open_with_io(dir, config, clock, Arc::new(sluice_log::FileIo), each)
    }

    /// [`QueueStore::open_each`] with both logs' writes and fsyncs going through `io`
    /// (a fault-injecting backend in simulations).
    pub fn open_with_io(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
        io: Arc<dyn sluice_log::Io>,
        mut each: impl FnMut(Recovered),
    ) -> Result<Self, StoreError> {
        let messages = Log::open_with_io(
            dir.join("messages"),
            config.clone(),
            Arc::clone(&clock),
            Arc::clone(&io),
        )?;
        let mut settled = Log::open_with_io(dir.join("settled"), config, clock, io)?;
        let start = messages.start_offset();
        let end = messages.next_offset();
        let mut done = BTreeSet::new();
        let mut offset = settled.start_offset();
        loop {
            let batches = settled.read(offset, 1 << 20)?;
            let Some(last) = batches.last() else { break };
            offset = last.next_offset();
            for batch in &batches {
                for chunk in batch.payload.chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    let o = u64::from_le_bytes(b);
                    // A settlement can outlive the message it settled when the crash
                    // came before the message reached its file; that offset is given
                    // to the next message, which it must not settle. The compaction
                    // below rewrites the settlement log without such records.
                    if (start..end).contains(&o) {
                        done.insert(o);
                    }
                }
            }
        }
        let mut store = QueueStore {
            dir: dir.to_path_buf(),
            messages,
            settled,
            group: GroupCommit::new(WAITERS_MAX),
            head: start,
            settled_above_head: BTreeSet::new(),
            settled_syncing: false,
            compaction_at: None,
            compacted_bytes: 0,
            scratch: Vec::new(),
        };
        let mut offset = start;
        loop {
            let batches = store.messages.read(offset, 1 << 20)?;
            let Some(last) = batches.last() else { break };
            offset = last.next_offset();
            for batch in batches {
                if done.contains(&batch.base_offset) {
                    continue;
                }
                let (message, expires_at) =
                    decode(batch.payload).ok_or_else(|| StoreError::Undecodable {
                        path: store.dir.clone(),
                        offset: batch.base_offset,
                    })?;
                each(Recovered {
                    offset: batch.base_offset,
                    message,
                    expires_at,
                });
            }
        }
        store.settled_above_head = done;
        store.advance_head();
        store.compact_settled()?;
        Ok(store)
    }

    /// Reads back the message stored at `offset` (for a paged-out entry). Its bytes are
    /// copied out, so the message does not pin the read buffer.
    pub fn read(&mut self, offset: u64) -> Result<Message, StoreError> {
        let undecodable = || StoreError::Undecodable {
            path: self.dir.clone(),
            offset,
        };
        let batches = self.messages.read(offset, 1)?;
        let batch = batches
            .into_iter()
            .find(|b| b.base_offset == offset)
            .ok_or_else(undecodable)?;
        let (mut message, _) = decode(batch.payload).ok_or_else(undecodable)?;
        message.body = bytes::Bytes::copy_from_slice(&message.body);
        message.properties = bytes::Bytes::copy_from_slice(&message.properties);
        Ok(message)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a message with its expiry time; returns its offset.
    pub fn append(
        &mut self,
        message: &Message,
        expires_at: Option<i64>,
    ) -> Result<u64, StoreError> {
        let mut buf = std::mem::take(&mut self.scratch);
        encode(message, expires_at, &mut buf);
        let appended = self.messages.append(&buf, 1, 0);
        self.scratch = buf;
        Ok(appended?.base_offset)
    }

    /// Parks `waiter` until the message at `offset` is durable; gives it back if too many
    /// wait already.
    pub fn wait(&mut self, offset: u64, waiter: W) -> Result<(), W> {
        self.group.wait(offset + 1, waiter)
    }

    /// The fsync to run next for waiting writers, if none is running.
    pub fn sync_job(&mut self) -> Result<Option<SyncJob>, StoreError> {
        Ok(self.group.start(&mut self.messages)?)
    }

    /// Records a finished fsync; returns the waiters it made durable.
    pub fn synced(&mut self, synced: Synced) -> Vec<W> {
        self.group.finish(&mut self.messages, synced).collect()
    }

    /// A failed fsync: the waiters cannot be told their messages are safe.
    pub fn sync_failed(&mut self) -> Vec<W> {
        self.group.fail_all().collect()
    }

    /// Writes buffered settlements to their file (no fsync): after this a crash of the
    /// process, as opposed to the machine, redelivers none of the messages they settle.
    pub fn write_settlements(&mut self) -> Result<(), StoreError> {
        // The messages first: a settlement never reaches its file before the message.
        self.messages.write_buffered()?;
        Ok(self.settled.write_buffered()?)
    }

    /// The background fsyncs due for the `async` policy and for settlements, at most one
    /// per log and none while another job of that log runs. Each must come back through
    /// [`QueueStore::flushed`].
    pub fn flush_jobs(&mut self) -> Result<Vec<(Flushed, SyncJob)>, StoreError> {
        let mut jobs = Vec::new();
        if self.messages.flush_due()
            && let Some(job) = self.group.start_flush(&mut self.messages)?
        {
            jobs.push((Flushed::Messages, job));
        }
        if !self.settled_syncing
            && self.settled.flush_due()
            && let Some(job) = self.settled.sync_job()?
        {
            self.settled_syncing = true;
            jobs.push((Flushed::Settlements, job));
        }
        Ok(jobs)
    }

    /// Records a finished job from [`QueueStore::flush_jobs`]; returns the waiters it
    /// settles, each with whether its message is durable.
    pub fn flushed(&mut self, which: Flushed, result: Result<Synced, LogError>) -> Vec<(W, bool)> {
        match (which, result) {
            (Flushed::Messages, Ok(synced)) => {
                self.synced(synced).into_iter().map(|w| (w, true)).collect()
            }
            (Flushed::Messages, Err(e)) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "message log fsync failed");
                self.sync_failed().into_iter().map(|w| (w, false)).collect()
            }
            (Flushed::Settlements, result) => {
                self.settled_syncing = false;
                match result {
                    Ok(synced) => self.settled.synced(synced),
                    Err(e) => {
                        tracing::error!(dir = %self.dir.display(), error = %e, "settlement log fsync failed");
                    }
                }
                Vec::new()
            }
        }
    }

    /// Records settled (acknowledged or dropped) messages by offset.
    pub fn settle(&mut self, offsets: &[u64]) -> Result<(), StoreError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut buf = BytesMut::with_capacity(offsets.len() * 8);
        for &o in offsets {
            buf.put_u64_le(o);
            if o >= self.head {
                self.settled_above_head.insert(o);
            }
        }
        self.settled.append(&buf, 1, 0)?;
        self.advance_head();
        Ok(())
    }

    /// The file work settlements leave behind, for the background flusher to run outside
    /// the owner's lock, in order: freeing the message segments below the settled head
    /// (only when that frees a whole segment: below that, the settlement log alone says
    /// what is settled), and compacting the settlement log into one record of what is
    /// settled above the head once it grows past its bound. A compaction record is
    /// appended here; the settlement log's prefix before it is dropped in a later call,
    /// once an fsync covered the record.
    pub fn maintenance(&mut self) -> Result<Vec<TruncateJob>, StoreError> {
        let mut free_messages = self
            .messages
            .oldest_segment_end()
            .is_some_and(|end| self.head >= end);
        let mut settled_job = None;
        if let Some(at) = self.compaction_at
            && self.settled.durable_offset() > at
        {
            settled_job = self.settled.begin_truncate_prefix(at);
            self.compaction_at = None;
            self.compacted_bytes = self.settled.stats().bytes;
        }
        // Past the bound, and at least twice what the last compaction left: a record of
        // many settlements above the head may itself exceed the bound.
        let bound = SETTLED_LOG_BYTES_MAX.max(self.compacted_bytes.saturating_mul(2));
        if self.compaction_at.is_none() && self.settled.stats().bytes > bound {
            // The record below covers only offsets above the head: the messages below it
            // must be gone first.
            free_messages = true;
            let mut buf = BytesMut::with_capacity(self.settled_above_head.len() * 8 + 8);
            for &o in &self.settled_above_head {
                buf.put_u64_le(o);
            }
            // A record is never empty: an out-of-range offset stands for "nothing".
            if buf.is_empty() {
                buf.put_u64_le(u64::MAX);
            }
            // The record starts a segment of its own, so dropping the prefix before it
            // deletes files (a rare roll, on the flusher's thread).
            self.settled.roll()?;
            self.compaction_at = Some(self.settled.append(&buf, 1, 0)?.base_offset);
        }
        let mut jobs = Vec::new();
        if free_messages {
            jobs.extend(self.messages.begin_truncate_prefix(self.head));
        }
        jobs.extend(settled_job);
        Ok(jobs)
    }

    /// Moves `head` over settled offsets; returns how far.
    fn advance_head(&mut self) -> u64 {
        let before = self.head;
        let end = self.messages.next_offset();
        while self.head < end && self.settled_above_head.remove(&self.head) {
            self.head += 1;
        }
        self.head - before
    }

    /// Rewrites the settlement log as one record of the settlements above the head, on
    /// this thread (at open, before anyone waits on the store). Blocking.
    fn compact_settled(&mut self) -> Result<(), StoreError> {
        self.messages.truncate_prefix(self.head)?;
        let mut buf = BytesMut::with_capacity(self.settled_above_head.len() * 8 + 8);
        for &o in &self.settled_above_head {
            buf.put_u64_le(o);
        }
        // A record is never empty: an out-of-range offset stands for "nothing".
        if buf.is_empty() {
            buf.put_u64_le(u64::MAX);
        }
        let at = self.settled.append(&buf, 1, 0)?;
        self.settled.sync()?;
        self.settled.truncate_prefix(at.base_offset)?;
        Ok(())
    }

    /// Drops the store as a killed process leaves it: buffered appends and settlements
    /// are lost, what reached the files stays. For crash simulations.
    pub fn abandon(self) {
        self.messages.abandon();
        self.settled.abandon();
    }

    /// Makes everything durable (clean shutdown). Blocking.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.messages.sync()?;
        self.settled.sync()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ManualClock;

    fn message(body: &'static str) -> Message {
        Message {
            exchange: "ex".into(),
            routing_key: "key".into(),
            properties: Bytes::from_static(&[0x10, 0x00, 2]),
            body: Bytes::from_static(body.as_bytes()),
            persistent: true,
            priority: 3,
            expiration_ms: Some(5000),
        }
    }

    fn open(dir: &Path) -> (QueueStore<u32>, Vec<Recovered>) {
        QueueStore::open(dir, LogConfig::default(), Arc::new(ManualClock::new(0))).unwrap()
    }

    #[test]
    fn messages_round_trip_through_the_encoding() {
        let m = message("body");
        let mut buf = Vec::new();
        encode(&m, Some(1234), &mut buf);
        assert_eq!(decode(Bytes::from(buf)), Some((m, Some(1234))));
        assert_eq!(decode(Bytes::from_static(&[9, 0])), None);
    }

    #[test]
    fn a_stored_message_reads_back_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        let a = store.append(&message("first"), None).unwrap();
        let b = store.append(&message("second"), Some(7)).unwrap();
        assert_eq!(store.read(b).unwrap(), message("second"));
        assert_eq!(store.read(a).unwrap(), message("first"));
        assert!(store.read(b + 1).is_err());
    }

    #[test]
    fn reopening_returns_exactly_the_unsettled_messages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, recovered) = open(dir.path());
            assert!(recovered.is_empty());
            let offsets: Vec<u64> = ["a", "b", "c", "d"]
                .iter()
                .map(|b| store.append(&message(b), None).unwrap())
                .collect();
            store.settle(&[offsets[0], offsets[2]]).unwrap();
            store.close().unwrap();
        }
        let (mut store, recovered) = open(dir.path());
        let bodies: Vec<&[u8]> = recovered.iter().map(|r| &r.message.body[..]).collect();
        assert_eq!(bodies, [&b"b"[..], &b"d"[..]]);
        store.settle(&[recovered[0].offset]).unwrap();
        store.close().unwrap();
        drop(store);
        let (_, recovered) = open(dir.path());
        assert_eq!(recovered.len(), 1);
        assert_eq!(&recovered[0].message.body[..], b"d");
    }

    /// The background flusher's jobs are recorded: once one ran, no other is due until
    /// the interval passes again (it used to be due on every tick), a waiters' job cannot
    /// run beside it, and the waiters it covers are released by it.
    #[test]
    fn a_background_flush_is_recorded_and_is_the_only_job_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(0));
        let config = LogConfig {
            flush: sluice_log::FlushPolicy::Async {
                interval_ms: 1000,
                bytes: u64::MAX,
            },
            ..LogConfig::default()
        };
        let (mut store, _) =
            QueueStore::<u32>::open(dir.path(), config, Arc::clone(&clock) as _).unwrap();
        let a = store.append(&message("a"), None).unwrap();
        clock.advance_ms(1000);
        let jobs = store.flush_jobs().unwrap();
        assert_eq!(jobs.len(), 1);
        store.wait(a, 7).unwrap();
        assert!(
            store.sync_job().unwrap().is_none(),
            "the flush job holds the log"
        );
        let b = store.append(&message("b"), None).unwrap();
        store.wait(b, 8).unwrap();
        let mut released = Vec::new();
        for (which, job) in jobs {
            released.extend(store.flushed(which, job.run()));
        }
        assert_eq!(released, vec![(7, true)], "the flush covered a, not b");
        let job = store
            .sync_job()
            .unwrap()
            .expect("b waits for its own fsync");
        assert_eq!(store.synced(job.run().unwrap()), vec![8]);
        clock.advance_ms(999);
        assert!(
            store.flush_jobs().unwrap().is_empty(),
            "nothing due before the interval"
        );
        store.append(&message("c"), None).unwrap();
        assert!(
            store.flush_jobs().unwrap().is_empty(),
            "still inside the interval"
        );
        clock.advance_ms(1);
        assert_eq!(store.flush_jobs().unwrap().len(), 1);
    }

    #[test]
    fn waiters_are_released_by_the_fsync_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        let a = store.append(&message("a"), None).unwrap();
        store.wait(a, 1).unwrap();
        let job = store.sync_job().unwrap().unwrap();
        let b = store.append(&message("b"), None).unwrap();
        store.wait(b, 2).unwrap();
        assert!(store.sync_job().unwrap().is_none(), "one fsync at a time");
        assert_eq!(store.synced(job.run().unwrap()), vec![1]);
        let job = store.sync_job().unwrap().unwrap();
        assert_eq!(store.synced(job.run().unwrap()), vec![2]);
    }

    /// The settlement log is compacted by the background maintenance, which appends a
    /// record of what is settled above the head and drops the prefix before it only once
    /// an fsync covered the record; a reopen at any step finds the same unsettled set.
    #[test]
    fn settlement_log_compaction_is_deferred_and_safe_at_every_step() {
        let dir = tempfile::tempdir().unwrap();
        // What a crash now would leave: the files as they are, opened elsewhere.
        let recover_copy = |from: &Path| -> Vec<u64> {
            let copy = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let sub = entry.unwrap().path();
                let to = copy.path().join(sub.file_name().unwrap());
                std::fs::create_dir_all(&to).unwrap();
                for f in std::fs::read_dir(&sub).unwrap() {
                    let f = f.unwrap().path();
                    std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
                }
            }
            let (_, recovered) = QueueStore::<u32>::open(
                copy.path(),
                LogConfig::default(),
                Arc::new(ManualClock::new(0)),
            )
            .unwrap();
            recovered.iter().map(|r| r.offset).collect()
        };
        let (mut store, _) = QueueStore::<u32>::open(
            dir.path(),
            LogConfig::default(),
            Arc::new(ManualClock::new(0)),
        )
        .unwrap();
        let offsets: Vec<u64> = (0..20_000)
            .map(|_| store.append(&message("x"), None).unwrap())
            .collect();
        // Settle every other message, one at a time: the log grows past its bound.
        for o in offsets.iter().step_by(2) {
            store.settle(&[*o]).unwrap();
        }
        let before = store.settled.stats().bytes;
        assert!(before > SETTLED_LOG_BYTES_MAX);
        let expected: Vec<u64> = offsets.iter().copied().skip(1).step_by(2).collect();
        let check = |store: &mut QueueStore<u32>| {
            store.messages.sync().unwrap();
            store.settled.write_buffered().unwrap();
        };
        let jobs = store.maintenance().unwrap();
        assert!(
            store.compaction_at.is_some(),
            "a compaction record was appended"
        );
        for job in jobs {
            job.run().unwrap();
        }
        check(&mut store);
        assert_eq!(
            recover_copy(dir.path()),
            expected,
            "after the record, before its fsync"
        );
        store.settled.sync().unwrap();
        for job in store.maintenance().unwrap() {
            job.run().unwrap();
        }
        assert!(store.compaction_at.is_none());
        // One record of the 10,000 settled offsets above the head is left.
        assert!(store.settled.stats().bytes < before / 4);
        assert!(
            store.maintenance().unwrap().is_empty(),
            "no compaction right after one"
        );
        check(&mut store);
        assert_eq!(recover_copy(dir.path()), expected, "after the truncation");
    }

    #[test]
    fn settling_the_head_frees_whole_segments_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 1024,
            ..LogConfig::default()
        };
        let open_small = || {
            QueueStore::<u32>::open(dir.path(), config.clone(), Arc::new(ManualClock::new(0)))
                .unwrap()
        };
        let (mut store, _) = open_small();
        let offsets: Vec<u64> = (0..100)
            .map(|_| store.append(&message("x"), None).unwrap())
            .collect();
        let segments_before = store.messages.stats().segments;
        assert!(segments_before > 3);
        store.settle(&offsets[..90]).unwrap();
        assert_eq!(
            store.messages.stats().segments,
            segments_before,
            "settling does no file work"
        );
        for job in store.maintenance().unwrap() {
            job.run().unwrap();
        }
        assert!(
            store.messages.stats().segments < segments_before,
            "settled segments were deleted"
        );
        store.close().unwrap();
        drop(store);
        let (_, recovered) = open_small();
        let left: Vec<u64> = recovered.iter().map(|r| r.offset).collect();
        assert_eq!(left, offsets[90..].to_vec());
    }
}
