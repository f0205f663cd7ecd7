//! The durable queues' shared storage: one log (the journal) for every durable queue of a
//! vhost, as RocketMQ keeps one commit log per broker. A persistent message is written
//! once, with the ids of every queue it went to, however many that is, and one fsync per
//! group commit covers every queue's writers. Settlements (acknowledged or dropped
//! messages) are records in the same log, so replaying it gives back exactly the messages
//! each queue still holds; a queue's creation and deletion are records too, so a queue id
//! used again never inherits old messages.
//!
//! Queues hold no files: a queue is an id in the records. Memory per stored message is
//! one counter of the queues still holding it (the journal frees a segment once every
//! message in it and before it is settled everywhere).
//!
//! Records (the payload of one `sluice-log` batch each):
//!
//! | kind | layout |
//! |---|---|
//! | 1 publish | `1 u8 \| n u32 \| (queue u64 \| expires_at i64)*n \| message` |
//! | 2 settle | `2 u8 \| queue u64 \| offset u64*` |
//! | 3 created | `3 u8 \| queue u64 \| definition` |
//! | 4 deleted | `4 u8 \| queue u64` |
//!
//! Integers are little-endian; `expires_at` is `i64::MIN` for none; the message is the
//! queue store's encoding (`crate::store`); the definition is the face's encoding of the
//! queue's declaration (name, arguments), so a queue declared since the definitions file
//! was last written comes back from the journal (see [`Journal::definitions_saved`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use sluice_core::{Clock, Message};
use sluice_log::{GroupCommit, Log, LogConfig, LogError, SyncJob, Synced, TruncateJob};

use crate::store::{StoreError, decode, encode};

/// Most writers waiting for the journal's fsync; past it publishers get an error back.
const WAITERS_MAX: usize = 1 << 20;
/// Queues one message may be stored for in one record.
pub const QUEUES_PER_RECORD_MAX: usize = 1 << 20;
const READ_CHUNK: usize = 1 << 20;

const PUBLISH: u8 = 1;
const SETTLE: u8 = 2;
const CREATED: u8 = 3;
const DELETED: u8 = 4;

/// A queue's stored message, handed back when the journal opens.
#[derive(Debug)]
pub struct Restored {
    pub queue: u64,
    pub offset: u64,
    pub message: Arc<Message>,
    pub expires_at: Option<i64>,
}

#[derive(Debug)]
pub struct Journal<W> {
    dir: PathBuf,
    log: Log,
    group: GroupCommit<W>,
    /// Stored messages not yet settled by every queue they went to: offset → queues.
    live: BTreeMap<u64, u32>,
    /// The definitions file reflects every queue record below this offset: the journal
    /// keeps everything from here on.
    definitions_at: u64,
    header: Vec<u8>,
    scratch: Vec<u8>,
}

/// One decoded record.
enum Record {
    Publish { targets: Bytes, message: Bytes },
    Settle { queue: u64, offsets: Bytes },
    Created(u64, Bytes),
    Deleted(u64),
}

/// A queue created or deleted, as the journal recorded it.
#[derive(Debug)]
pub enum QueueChange<'a> {
    Created { queue: u64, definition: &'a [u8] },
    Deleted { queue: u64 },
}

/// What opening a journal hands back: first every queue change in log order, then every
/// message a queue still holds, in log order.
pub trait Replay {
    fn queue_changed(&mut self, change: QueueChange<'_>);
    /// `false` when the queue no longer exists: its messages are dropped.
    fn keep(&mut self, restored: Restored) -> bool;
}

impl<F: FnMut(Restored) -> bool> Replay for F {
    fn queue_changed(&mut self, _change: QueueChange<'_>) {}

    fn keep(&mut self, restored: Restored) -> bool {
        self(restored)
    }
}

fn parse(mut payload: Bytes) -> Option<Record> {
    if payload.is_empty() {
        return None;
    }
    let kind = payload.get_u8();
    match kind {
        PUBLISH => {
            if payload.len() < 4 {
                return None;
            }
            let n = payload.get_u32_le() as usize;
            let len = n.checked_mul(16)?;
            if n == 0 || payload.len() < len {
                return None;
            }
            let targets = payload.split_to(len);
            Some(Record::Publish {
                targets,
                message: payload,
            })
        }
        SETTLE => {
            if payload.len() < 8 || !(payload.len() - 8).is_multiple_of(8) {
                return None;
            }
            let queue = payload.get_u64_le();
            Some(Record::Settle {
                queue,
                offsets: payload,
            })
        }
        CREATED => {
            if payload.len() < 8 {
                return None;
            }
            let queue = payload.get_u64_le();
            Some(Record::Created(queue, payload))
        }
        DELETED => {
            if payload.len() != 8 {
                return None;
            }
            Some(Record::Deleted(payload.get_u64_le()))
        }
        _ => None,
    }
}

fn targets(bytes: &Bytes) -> impl Iterator<Item = (u64, Option<i64>)> + '_ {
    bytes.chunks_exact(16).map(|c| {
        let mut q = [0u8; 8];
        let mut e = [0u8; 8];
        q.copy_from_slice(c.get(..8).unwrap_or(&[0; 8]));
        e.copy_from_slice(c.get(8..).unwrap_or(&[0; 8]));
        let e = i64::from_le_bytes(e);
        (u64::from_le_bytes(q), (e != i64::MIN).then_some(e))
    })
}

fn offsets(bytes: &Bytes) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        u64::from_le_bytes(b)
    })
}

impl<W> Journal<W> {
    /// Opens (or creates) the journal in `dir` and hands every message a queue still
    /// holds to `keep`, in log order; `keep` answers `false` for a queue that no longer
    /// exists (its messages are then dropped). Blocking.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
        replay: &mut impl Replay,
    ) -> Result<Self, StoreError> {
        Self::open_with_io(dir, config, clock, Arc::new(sluice_log::FileIo), replay)
    }

    /// [`Journal::open`] with writes and fsyncs going through `io` (a fault-injecting
    /// backend in simulations).
    pub fn open_with_io(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
        io: Arc<dyn sluice_log::Io>,
        replay: &mut impl Replay,
    ) -> Result<Self, StoreError> {
        let mut log = Log::open_with_io(dir, config, clock, io)?;
        let undecodable = |offset| StoreError::Undecodable {
            path: dir.to_path_buf(),
            offset,
        };
        // First pass: which queues still hold each message. Records come in log order,
        // so a queue's creation or deletion drops exactly the messages stored before it.
        let mut holders: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut gone_before: HashMap<u64, u64> = HashMap::new();
        let start = log.start_offset();
        let mut offset = start;
        loop {
            let batches = log.read(offset, READ_CHUNK)?;
            let Some(last) = batches.last() else { break };
            offset = last.next_offset();
            for batch in batches {
                let at = batch.base_offset;
                match parse(batch.payload).ok_or_else(|| undecodable(at))? {
                    Record::Publish { targets: t, .. } => {
                        let queues: Vec<u64> = targets(&t).map(|(q, _)| q).collect();
                        holders.insert(at, queues);
                    }
                    Record::Settle { queue, offsets: o } => {
                        for o in offsets(&o) {
                            if let Some(qs) = holders.get_mut(&o) {
                                if let Some(i) = qs.iter().position(|&q| q == queue) {
                                    qs.swap_remove(i);
                                }
                                if qs.is_empty() {
                                    holders.remove(&o);
                                }
                            }
                        }
                    }
                    Record::Created(queue, definition) => {
                        gone_before.insert(queue, at);
                        replay.queue_changed(QueueChange::Created {
                            queue,
                            definition: &definition,
                        });
                    }
                    Record::Deleted(queue) => {
                        gone_before.insert(queue, at);
                        replay.queue_changed(QueueChange::Deleted { queue });
                    }
                }
            }
        }
        if !gone_before.is_empty() {
            holders.retain(|&at, qs| {
                qs.retain(|q| gone_before.get(q).is_none_or(|&gone| at > gone));
                !qs.is_empty()
            });
        }
        // Second pass: the messages, decoded once however many queues hold them.
        let mut live = BTreeMap::new();
        let mut refused = std::collections::BTreeSet::new();
        let mut offset = holders.keys().next().copied().unwrap_or(start);
        while !holders.is_empty() {
            let batches = log.read(offset, READ_CHUNK)?;
            let Some(last) = batches.last() else { break };
            offset = last.next_offset();
            for batch in batches {
                let at = batch.base_offset;
                let Some(qs) = holders.remove(&at) else {
                    continue;
                };
                let Some(Record::Publish {
                    targets: t,
                    message,
                }) = parse(batch.payload)
                else {
                    return Err(undecodable(at));
                };
                let (message, _) = decode(message).ok_or_else(|| undecodable(at))?;
                let message = Arc::new(message);
                let mut count = 0u32;
                for (queue, expires_at) in targets(&t) {
                    if !qs.contains(&queue) {
                        continue;
                    }
                    let kept = replay.keep(Restored {
                        queue,
                        offset: at,
                        message: Arc::clone(&message),
                        expires_at,
                    });
                    if kept {
                        count += 1;
                    } else {
                        refused.insert(queue);
                    }
                }
                if count > 0 {
                    live.insert(at, count);
                }
            }
        }
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            log,
            group: GroupCommit::new(WAITERS_MAX),
            live,
            definitions_at: start,
            header: Vec::new(),
            scratch: Vec::new(),
        };
        // A queue that is gone (deleted before a crash could record it) is recorded
        // deleted now, so a queue given its id later never sees its messages.
        for &queue in &refused {
            journal.queue_record(DELETED, queue, &[])?;
        }
        if !refused.is_empty() {
            journal.log.sync()?;
        }
        Ok(journal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lowest offset a queue, or the definitions file, may still need.
    fn head(&self) -> u64 {
        self.live
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.log.next_offset())
            .min(self.definitions_at)
    }

    /// The offset the next record gets.
    pub fn next_offset(&self) -> u64 {
        self.log.next_offset()
    }

    /// The definitions file now holds every queue change recorded below `offset` (the
    /// caller read this offset before it took the definitions it saved).
    pub fn definitions_saved(&mut self, offset: u64) {
        self.definitions_at = self.definitions_at.max(offset);
    }

    /// Whether segments could be freed if the definitions file were written again.
    pub fn definitions_hold_segments(&self) -> bool {
        let live = self
            .live
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.log.next_offset());
        self.log
            .oldest_segment_end()
            .is_some_and(|end| live >= end && self.definitions_at < end)
    }

    /// Stores `message` once for every queue in `queues` (each with its expiry time);
    /// returns its offset.
    pub fn append(
        &mut self,
        message: &Message,
        queues: &[(u64, Option<i64>)],
    ) -> Result<u64, StoreError> {
        let n = queues.len().min(QUEUES_PER_RECORD_MAX);
        let mut header = std::mem::take(&mut self.header);
        header.clear();
        header.push(PUBLISH);
        header.extend_from_slice(&(n as u32).to_le_bytes());
        for &(q, e) in queues.iter().take(n) {
            header.extend_from_slice(&q.to_le_bytes());
            header.extend_from_slice(&e.unwrap_or(i64::MIN).to_le_bytes());
        }
        let mut body = std::mem::take(&mut self.scratch);
        encode(message, None, &mut body);
        let appended = self.log.append_parts(&[&header, &body], 1, 0);
        self.header = header;
        self.scratch = body;
        let at = appended?.base_offset;
        if n > 0 {
            self.live.insert(at, n as u32);
        }
        Ok(at)
    }

    /// Reads back the message stored at `offset`, its bytes copied out so it does not
    /// pin the read buffer.
    pub fn read(&mut self, offset: u64) -> Result<Message, StoreError> {
        let undecodable = || StoreError::Undecodable {
            path: self.dir.clone(),
            offset,
        };
        let batches = self.log.read(offset, 1)?;
        let batch = batches
            .into_iter()
            .find(|b| b.base_offset == offset)
            .ok_or_else(undecodable)?;
        let Some(Record::Publish { message, .. }) = parse(batch.payload) else {
            return Err(undecodable());
        };
        let (mut message, _) = decode(message).ok_or_else(undecodable)?;
        message.body = Bytes::copy_from_slice(&message.body);
        message.properties = Bytes::copy_from_slice(&message.properties);
        Ok(message)
    }

    /// Records that `queue` is done with the messages at `offsets`.
    pub fn settle(&mut self, queue: u64, offsets: &[u64]) -> Result<(), StoreError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.header);
        buf.clear();
        buf.push(SETTLE);
        buf.extend_from_slice(&queue.to_le_bytes());
        for o in offsets {
            buf.extend_from_slice(&o.to_le_bytes());
        }
        let appended = self.log.append(&buf, 1, 0);
        self.header = buf;
        appended?;
        self.release(offsets);
        Ok(())
    }

    fn release(&mut self, offsets: &[u64]) {
        for o in offsets {
            if let Some(n) = self.live.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    self.live.remove(o);
                }
            }
        }
    }

    /// Records a new queue with its definition: whatever an earlier queue of that id
    /// stored is not its.
    pub fn created(&mut self, queue: u64, definition: &[u8]) -> Result<(), StoreError> {
        self.queue_record(CREATED, queue, definition)
    }

    /// Records a deleted queue, which held the messages at `held`.
    pub fn deleted(&mut self, queue: u64, held: &[u64]) -> Result<(), StoreError> {
        self.queue_record(DELETED, queue, &[])?;
        self.release(held);
        Ok(())
    }

    fn queue_record(&mut self, kind: u8, queue: u64, rest: &[u8]) -> Result<(), StoreError> {
        let mut head = [0u8; 9];
        head[0] = kind;
        head[1..].copy_from_slice(&queue.to_le_bytes());
        self.log.append_parts(&[&head, rest], 1, 0)?;
        Ok(())
    }

    /// Parks `waiter` until the message at `offset` is durable; gives it back if too many
    /// wait already.
    pub fn wait(&mut self, offset: u64, waiter: W) -> Result<(), W> {
        self.group.wait(offset + 1, waiter)
    }

    /// The fsync to run next for waiting writers, if none is running.
    pub fn sync_job(&mut self) -> Result<Option<SyncJob>, StoreError> {
        Ok(self.group.start(&mut self.log)?)
    }

    /// Records a finished fsync; returns the waiters it made durable.
    pub fn synced(&mut self, synced: Synced) -> Vec<W> {
        self.group.finish(&mut self.log, synced).collect()
    }

    /// A failed fsync: the waiters cannot be told their messages are safe.
    pub fn sync_failed(&mut self) -> Vec<W> {
        self.group.fail_all().collect()
    }

    /// Writes buffered records to the file (no fsync): after this a crash of the
    /// process, as opposed to the machine, loses none of them.
    pub fn write_buffered(&mut self) -> Result<(), StoreError> {
        Ok(self.log.write_buffered()?)
    }

    /// The fsync the `async` flush policy wants now, if no other runs; it comes back
    /// through [`Journal::flushed`].
    pub fn flush_job(&mut self) -> Result<Option<SyncJob>, StoreError> {
        if !self.log.flush_due() {
            return Ok(None);
        }
        Ok(self.group.start_flush(&mut self.log)?)
    }

    /// Records a finished job from [`Journal::flush_job`] or [`Journal::sync_job`];
    /// returns the waiters it settles, each with whether its message is durable.
    pub fn flushed(&mut self, result: Result<Synced, LogError>) -> Vec<(W, bool)> {
        match result {
            Ok(synced) => self.synced(synced).into_iter().map(|w| (w, true)).collect(),
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "journal fsync failed");
                self.sync_failed().into_iter().map(|w| (w, false)).collect()
            }
        }
    }

    /// Frees the segments every queue is done with: the file work to run off the
    /// owner's lock, when a whole segment is free.
    pub fn maintenance(&mut self) -> Option<TruncateJob> {
        let head = self.head();
        if self.log.oldest_segment_end().is_some_and(|end| head >= end) {
            return self.log.begin_truncate_prefix(head);
        }
        None
    }

    /// Stored messages some queue still holds.
    pub fn live_messages(&self) -> usize {
        self.live.len()
    }

    pub fn stats(&self) -> sluice_log::LogStats {
        self.log.stats()
    }

    /// Drops the journal as a killed process leaves it: buffered records are lost, what
    /// reached the file stays. For crash simulations.
    pub fn abandon(self) {
        self.log.abandon();
    }

    /// Makes everything durable (clean shutdown). Blocking.
    pub fn close(&mut self) -> Result<(), StoreError> {
        Ok(self.log.sync()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ManualClock;

    fn message(body: &str) -> Message {
        Message {
            exchange: "ex".into(),
            routing_key: "key".into(),
            properties: Bytes::from_static(&[0x10, 0x00, 2]),
            body: Bytes::copy_from_slice(body.as_bytes()),
            persistent: true,
            priority: 0,
            expiration_ms: None,
        }
    }

    fn open(dir: &Path, config: LogConfig) -> (Journal<u32>, Vec<(u64, u64, String)>) {
        let mut restored = Vec::new();
        let journal = Journal::open(
            dir,
            config,
            Arc::new(ManualClock::new(0)),
            &mut |r: Restored| {
                restored.push((
                    r.queue,
                    r.offset,
                    String::from_utf8_lossy(&r.message.body).into_owned(),
                ));
                r.queue != 99
            },
        )
        .unwrap();
        (journal, restored)
    }

    #[test]
    fn a_message_for_many_queues_is_stored_once_and_settled_per_queue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, restored) = open(dir.path(), LogConfig::default());
            assert!(restored.is_empty());
            let a = j
                .append(&message("a"), &[(1, None), (2, Some(5)), (3, None)])
                .unwrap();
            let b = j.append(&message("b"), &[(2, None)]).unwrap();
            assert_eq!(j.stats().appends, 2, "one record per message");
            j.settle(1, &[a]).unwrap();
            j.settle(2, &[a, b]).unwrap();
            assert_eq!(j.live_messages(), 1, "queue 3 still holds a");
            j.close().unwrap();
        }
        let (mut j, restored) = open(dir.path(), LogConfig::default());
        assert_eq!(restored, vec![(3, 0, "a".to_string())]);
        assert_eq!(j.read(0).unwrap(), message("a"));
        j.settle(3, &[0]).unwrap();
        assert_eq!(j.live_messages(), 0);
    }

    #[test]
    fn deleted_and_recreated_queues_do_not_keep_old_messages() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = open(dir.path(), LogConfig::default());
            j.created(7, b"def").unwrap();
            let a = j.append(&message("old"), &[(7, None), (8, None)]).unwrap();
            j.deleted(7, &[a]).unwrap();
            j.created(7, b"def").unwrap();
            j.append(&message("new"), &[(7, None)]).unwrap();
            // A queue the caller no longer knows.
            j.append(&message("orphan"), &[(99, None)]).unwrap();
            j.close().unwrap();
        }
        let (j, restored) = open(dir.path(), LogConfig::default());
        let got: Vec<(u64, String)> = restored.into_iter().map(|(q, _, b)| (q, b)).collect();
        assert_eq!(
            got,
            vec![
                (8, "old".to_string()),
                (7, "new".to_string()),
                (99, "orphan".to_string())
            ]
        );
        assert_eq!(j.live_messages(), 2, "the refused orphan is not held");
        drop(j);
        // Refused once, gone for good: a queue 99 known now does not get it.
        let (_, restored) = open(dir.path(), LogConfig::default());
        assert!(restored.iter().all(|(q, _, _)| *q != 99), "{restored:?}");
    }

    /// Queue records carry their definitions; segments holding records the definitions
    /// file has not taken in yet are kept.
    #[test]
    fn queue_definitions_come_back_and_hold_segments_until_saved() {
        struct Changes(Vec<String>);
        impl Replay for Changes {
            fn queue_changed(&mut self, change: QueueChange<'_>) {
                self.0.push(match change {
                    QueueChange::Created { queue, definition } => {
                        format!("+{queue}:{}", String::from_utf8_lossy(definition))
                    }
                    QueueChange::Deleted { queue } => format!("-{queue}"),
                });
            }
            fn keep(&mut self, _: Restored) -> bool {
                true
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 1024,
            ..LogConfig::default()
        };
        let clock = || Arc::new(ManualClock::new(0)) as Arc<dyn Clock>;
        let mut j: Journal<u32> = Journal::open(
            dir.path(),
            config.clone(),
            clock(),
            &mut Changes(Vec::new()),
        )
        .unwrap();
        j.created(1, b"orders").unwrap();
        j.created(2, b"audit").unwrap();
        j.deleted(1, &[]).unwrap();
        for i in 0..40 {
            let at = j.append(&message(&format!("m{i}")), &[(2, None)]).unwrap();
            j.settle(2, &[at]).unwrap();
        }
        assert!(j.definitions_hold_segments());
        assert!(j.maintenance().is_none(), "the queue records are kept");
        j.close().unwrap();
        drop(j);
        let mut changes = Changes(Vec::new());
        let mut j: Journal<u32> =
            Journal::open(dir.path(), config.clone(), clock(), &mut changes).unwrap();
        assert_eq!(changes.0, ["+1:orders", "+2:audit", "-1"]);
        let mark = j.next_offset();
        j.definitions_saved(mark);
        j.maintenance().unwrap().run().unwrap();
        drop(j);
        let mut changes = Changes(Vec::new());
        Journal::<u32>::open(dir.path(), config, clock(), &mut changes).unwrap();
        assert!(changes.0.is_empty(), "{:?}", changes.0);
    }

    #[test]
    fn settled_segments_are_freed_and_a_reopen_reads_only_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 1024,
            ..LogConfig::default()
        };
        let (mut j, _) = open(dir.path(), config.clone());
        // Nothing is kept for the definitions file in this test.
        j.definitions_saved(u64::MAX);
        let offsets: Vec<u64> = (0..200)
            .map(|i| j.append(&message(&format!("m{i}")), &[(1, None)]).unwrap())
            .collect();
        let before = j.stats().segments;
        assert!(before > 5);
        j.settle(1, &offsets[..190]).unwrap();
        j.maintenance().unwrap().run().unwrap();
        assert!(j.stats().segments < before / 2, "settled segments deleted");
        j.close().unwrap();
        drop(j);
        let (_, restored) = open(dir.path(), config);
        let bodies: Vec<String> = restored.into_iter().map(|(_, _, b)| b).collect();
        let expected: Vec<String> = (190..200).map(|i| format!("m{i}")).collect();
        assert_eq!(bodies, expected);
    }

    #[test]
    fn waiters_are_released_by_the_fsync_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = open(dir.path(), LogConfig::default());
        let a = j.append(&message("a"), &[(1, None)]).unwrap();
        j.wait(a, 1).unwrap();
        let job = j.sync_job().unwrap().unwrap();
        let b = j.append(&message("b"), &[(2, None)]).unwrap();
        j.wait(b, 2).unwrap();
        assert!(j.sync_job().unwrap().is_none(), "one fsync at a time");
        assert_eq!(j.synced(job.run().unwrap()), vec![1]);
        let job = j.sync_job().unwrap().unwrap();
        assert_eq!(j.synced(job.run().unwrap()), vec![2]);
        assert_eq!(j.stats().fsyncs, 2);
    }
}
