//! One topic partition: a log holding the record batches as sent, the
//! idempotent producers' recent sequences, fetchers waiting for data, and group commit
//! for `flush=sync` topics.
//!
//! A std mutex guards the log: every critical section is a buffered append or a pread,
//! never an fsync (fsyncs run on blocking threads through [`SyncJob`]).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;
use sluice_core::clock::Clock;
use sluice_log::{Batch, FileSlice, GroupCommit, Log, LogConfig, LogError};
use tokio::sync::{Notify, oneshot};

use super::txn::{self, TxnIndex};
use super::{AppendError, ReadStatus};
use crate::stream::batch::{BatchInfo, TxnFields};

/// Batches remembered per producer for duplicate detection (Kafka keeps 5).
const PRODUCER_BATCHES: usize = 5;
/// Producers remembered per partition; the least recently used is forgotten beyond this.
const PRODUCERS_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct SentBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

#[derive(Debug)]
struct ProducerState {
    epoch: i16,
    batches: VecDeque<SentBatch>,
    last_used: u64,
}

/// What to do with one idempotent batch.
enum SeqCheck {
    Append,
    Duplicate(u64),
}

#[derive(Debug)]
pub struct PartitionState {
    pub log: Log,
    producers: HashMap<i64, ProducerState>,
    /// Open and aborted transactions (Kafka's producer state and transaction index).
    txn: TxnIndex,
    uses: u64,
    waiters: Vec<Arc<Notify>>,
    /// Produce requests waiting for an fsync (acks=-1 on `flush=sync` topics), and the
    /// one fsync job of the log, shared with the background flusher: the same group
    /// commit as an AMQP queue's.
    group: GroupCommit<oneshot::Sender<bool>>,
}

/// Produce requests one partition lets wait for an fsync at once; each connection has at
/// most one request in flight, so the connection limit bounds this first.
const DURABLE_WAITERS_MAX: usize = 100_000;

#[derive(Debug)]
pub struct Partition {
    pub index: i32,
    state: Mutex<PartitionState>,
    /// This partition and the list of partitions the flusher visits.
    unsynced: OnceLock<(Weak<Partition>, Arc<Unsynced>)>,
    /// On that list now.
    listed: AtomicBool,
}

/// Partitions with appends not yet fsynced, for the background flusher: an idle
/// partition is not visited at all.
#[derive(Debug, Default)]
pub struct Unsynced {
    list: Mutex<Vec<Weak<Partition>>>,
}

impl Unsynced {
    /// Every listed partition, taken off the list (a partition appended to from now on
    /// is listed again).
    pub fn take(&self) -> Vec<Arc<Partition>> {
        let list = std::mem::take(&mut *self.list.lock().unwrap_or_else(|p| p.into_inner()));
        list.iter()
            .filter_map(Weak::upgrade)
            .inspect(|p| p.listed.store(false, Ordering::Release))
            .collect()
    }
}

impl PartitionState {
    /// The last stable offset of a log ending at `end`.
    pub fn txn_last_stable(&self, end: u64) -> u64 {
        self.txn.last_stable(end)
    }

    /// The aborted transactions still in the log.
    pub fn txn_aborted(&self) -> &[super::txn::Aborted] {
        self.txn.aborted()
    }
}

/// What a Kafka fetch of one partition gets: the stored batches as file ranges and the
/// offsets around them.
#[derive(Debug)]
pub struct Slices {
    pub status: ReadStatus,
    pub log_start: i64,
    pub high_watermark: i64,
    pub last_stable: i64,
    pub slices: Vec<FileSlice>,
}

/// Result of appending one partition's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// One past the last offset written: durable once the log's durable offset gets here.
    pub next_offset: u64,
}

fn seq_after(last: i32, n: i32) -> i32 {
    // Sequences wrap from i32::MAX to 0.
    ((i64::from(last) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerState {
    fn check(&self, b: &BatchInfo) -> Result<SeqCheck, AppendError> {
        if b.producer_epoch < self.epoch {
            return Err(AppendError::InvalidProducerEpoch);
        }
        if b.producer_epoch > self.epoch {
            return if b.base_sequence == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err(AppendError::OutOfOrderSequence)
            };
        }
        let last_seq = seq_after(b.base_sequence, b.offsets as i32 - 1);
        if let Some(dup) = self
            .batches
            .iter()
            .find(|s| s.first_seq == b.base_sequence && s.last_seq == last_seq)
        {
            return Ok(SeqCheck::Duplicate(dup.base_offset));
        }
        match self.batches.back() {
            Some(prev) if b.base_sequence != seq_after(prev.last_seq, 1) => {
                Err(AppendError::OutOfOrderSequence)
            }
            _ => Ok(SeqCheck::Append),
        }
    }

    fn record(&mut self, b: &BatchInfo, base_offset: u64) {
        if b.producer_epoch != self.epoch {
            self.epoch = b.producer_epoch;
            self.batches.clear();
        }
        if self.batches.len() == PRODUCER_BATCHES {
            self.batches.pop_front();
        }
        self.batches.push_back(SentBatch {
            first_seq: b.base_sequence,
            last_seq: seq_after(b.base_sequence, b.offsets as i32 - 1),
            base_offset,
        });
    }
}

/// The leader epoch of every partition: one node leads everything, from its first epoch.
/// Replication will bump it at each change of leader.
pub const LEADER_EPOCH: i32 = 0;

/// How far back (in offsets) a reopened partition looks to rebuild idempotent producers'
/// recent batches, so a retry that crosses a restart is still recognised.
const REBUILD_OFFSETS: u64 = 20_000;

/// The last batches of every idempotent producer in the log's tail.
fn recent_producers(log: &mut Log) -> Result<HashMap<i64, ProducerState>, LogError> {
    let mut producers: HashMap<i64, ProducerState> = HashMap::new();
    let mut at = log
        .next_offset()
        .saturating_sub(REBUILD_OFFSETS)
        .max(log.start_offset());
    let mut infos = Vec::new();
    loop {
        let batches = log.read(at, 1 << 20)?;
        let Some(last) = batches.last() else { break };
        at = last.next_offset();
        for b in &batches {
            if crate::stream::batch::split(&b.payload, &mut infos).is_err() {
                continue;
            }
            for info in infos.iter().filter(|i| i.producer_id >= 0) {
                if producers.len() >= PRODUCERS_MAX && !producers.contains_key(&info.producer_id) {
                    continue;
                }
                producers
                    .entry(info.producer_id)
                    .or_insert_with(|| ProducerState {
                        epoch: info.producer_epoch,
                        batches: VecDeque::new(),
                        last_used: 0,
                    })
                    .record(info, b.base_offset);
            }
        }
    }
    Ok(producers)
}

/// The transaction state of a reopened log: the snapshot, brought up to the log's end by
/// reading the batches after it. Logs that never held a transaction are not read.
fn recover_transactions(log: &mut Log) -> Result<TxnIndex, LogError> {
    let (mut index, from) = match txn::load(log.dir()) {
        txn::Snapshot::None => return Ok(TxnIndex::default()),
        txn::Snapshot::Read(index) if index.scanned_to <= log.next_offset() => {
            let from = index.scanned_to.max(log.start_offset());
            (index, from)
        }
        // Torn, or ahead of a log that lost its tail: rebuilt from the whole log.
        _ => (TxnIndex::rebuilt(), log.start_offset()),
    };
    let mut at = from;
    loop {
        let batches = log.read(at, 1 << 20)?;
        let Some(last) = batches.last() else { break };
        at = last.next_offset();
        for b in &batches {
            let fields = crate::stream::batch::txn_fields(&b.payload);
            index.apply(fields, b.base_offset, b.next_offset());
        }
    }
    index.scanned_to = log.next_offset();
    index.forget_below(log.start_offset());
    if index.saved_to != index.scanned_to {
        txn::save(log.dir(), &index.encode()).map_err(|source| LogError::Io {
            path: log.dir().join(txn::SNAPSHOT_FILE),
            source,
        })?;
        index.saved_to = index.scanned_to;
    }
    Ok(index)
}

impl Partition {
    pub fn open(
        index: i32,
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Partition, LogError> {
        let mut log = Log::open(dir, config, clock)?;
        let producers = recent_producers(&mut log)?;
        let txn = recover_transactions(&mut log)?;
        Ok(Partition {
            index,
            unsynced: OnceLock::new(),
            listed: AtomicBool::new(false),
            state: Mutex::new(PartitionState {
                log,
                producers,
                txn,
                uses: 0,
                waiters: Vec::new(),
                group: GroupCommit::new(DURABLE_WAITERS_MAX),
            }),
        })
    }

    /// Puts the partition on `list` whenever it holds appends not yet fsynced.
    pub fn track_unsynced(self: &Arc<Self>, list: &Arc<Unsynced>) {
        let _ = self.unsynced.set((Arc::downgrade(self), Arc::clone(list)));
        self.relist_if_unsynced();
    }

    fn note_unsynced(&self) {
        if self.listed.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.unsynced.get() {
            Some((me, list)) => list
                .list
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Weak::clone(me)),
            None => self.listed.store(false, Ordering::Release),
        }
    }

    /// After a flush: back on the list if appends are still not fsynced (the `async`
    /// policy's interval has not passed yet).
    pub fn relist_if_unsynced(&self) {
        if !self.lock().log.is_synced() {
            self.note_unsynced();
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, PartitionState> {
        // Every mutation completes or fails before the guard drops; a panic elsewhere
        // cannot leave the log half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(log start offset, high watermark)`.
    pub fn offsets(&self) -> (i64, i64) {
        let st = self.lock();
        (st.log.start_offset() as i64, st.log.next_offset() as i64)
    }

    /// Appends the batches `batches` found in `records`, assigning base offsets. Idempotent
    /// batches already stored are answered with their first offset and not stored again.
    /// The bytes reach the segment file (not the disk) before this returns, so a process
    /// crash loses nothing that was answered.
    pub fn append(
        &self,
        records: &Bytes,
        batches: &[BatchInfo],
        append_time: Option<i64>,
    ) -> Result<Produced, AppendError> {
        let produced = self.append_unlisted(records, batches, append_time);
        self.note_unsynced();
        produced
    }

    fn append_unlisted(
        &self,
        records: &Bytes,
        batches: &[BatchInfo],
        append_time: Option<i64>,
    ) -> Result<Produced, AppendError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut first: Option<u64> = None;
        // Check every idempotent batch before storing any, so a refused request stores
        // nothing.
        let mut checks = Vec::with_capacity(batches.len());
        for b in batches {
            let check = match (b.producer_id >= 0, st.producers.get(&b.producer_id)) {
                (true, Some(p)) => p.check(b)?,
                _ => SeqCheck::Append,
            };
            checks.push(check);
        }
        if !st.txn.persisted && batches.iter().any(|b| b.transactional) {
            // The first transaction here: from now on a reopen must scan the log. The
            // snapshot says so, with the state so far (none) up to this append.
            st.txn.scanned_to = st.log.next_offset();
            st.txn.persisted = true;
            if let Err(e) = txn::save(st.log.dir(), &st.txn.encode()) {
                st.txn.persisted = false;
                tracing::error!(error = %e, "transaction snapshot not written");
                return Err(AppendError::Storage);
            }
            st.txn.saved_to = st.txn.scanned_to;
        }
        for (b, check) in batches.iter().zip(checks) {
            let base = match check {
                SeqCheck::Duplicate(base) => base,
                SeqCheck::Append => {
                    let raw = records.get(b.start..b.start + b.len).unwrap_or_default();
                    let next = st.log.next_offset();
                    let offset_bytes = next.to_be_bytes();
                    // The partition leader epoch (outside the CRC) is the broker's to set,
                    // as the base offset is.
                    let epoch_bytes = LEADER_EPOCH.to_be_bytes();
                    let appended = match append_time {
                        Some(now) => {
                            let rewritten = crate::stream::batch::with_append_time(raw, now);
                            let length = rewritten.get(8..12).unwrap_or_default();
                            let rest = rewritten.get(16..).unwrap_or_default();
                            st.log.append_parts(
                                &[&offset_bytes, length, &epoch_bytes, rest],
                                b.offsets,
                                now,
                            )
                        }
                        None => {
                            let length = raw.get(8..12).unwrap_or_default();
                            let rest = raw.get(16..).unwrap_or_default();
                            st.log.append_parts(
                                &[&offset_bytes, length, &epoch_bytes, rest],
                                b.offsets,
                                b.max_timestamp,
                            )
                        }
                    };
                    let appended = appended.map_err(|e| {
                        tracing::error!(error = %e, "partition append failed");
                        AppendError::Storage
                    })?;
                    if b.transactional {
                        let fields = TxnFields {
                            producer_id: b.producer_id,
                            producer_epoch: b.producer_epoch,
                            transactional: true,
                            marker: None,
                        };
                        st.txn
                            .apply(fields, appended.base_offset, appended.next_offset);
                    }
                    if b.producer_id >= 0 {
                        st.uses += 1;
                        let uses = st.uses;
                        let p =
                            st.producers
                                .entry(b.producer_id)
                                .or_insert_with(|| ProducerState {
                                    epoch: b.producer_epoch,
                                    batches: VecDeque::new(),
                                    last_used: uses,
                                });
                        p.last_used = uses;
                        p.record(b, appended.base_offset);
                    }
                    appended.base_offset
                }
            };
            first.get_or_insert(base);
        }
        if st.producers.len() > PRODUCERS_MAX
            && let Some((&oldest, _)) = st.producers.iter().min_by_key(|(_, p)| p.last_used)
        {
            st.producers.remove(&oldest);
        }
        st.log.write_buffered().map_err(|e| {
            tracing::error!(error = %e, "partition write failed");
            AppendError::Storage
        })?;
        let waiters = std::mem::take(&mut st.waiters);
        let produced = Produced {
            base_offset: first.map_or(-1, |b| b as i64),
            log_start_offset: st.log.start_offset() as i64,
            next_offset: st.log.next_offset(),
        };
        drop(guard);
        for w in waiters {
            w.notify_one();
        }
        Ok(produced)
    }

    /// File ranges of the stored batches from the one holding `offset`, up to about
    /// `max_bytes` (at least one batch when `at_least_one`), for a zero-copy send.
    /// `committed` (Kafka's `read_committed`) stops at the last stable offset and fills
    /// `aborted` with the aborted transactions the reader must skip.
    pub fn read_slices(
        &self,
        offset: i64,
        max_bytes: usize,
        at_least_one: bool,
        committed: bool,
        aborted: &mut Vec<(i64, i64)>,
    ) -> Slices {
        aborted.clear();
        let mut st = self.lock();
        let start = st.log.start_offset() as i64;
        let end = st.log.next_offset() as i64;
        let stable = st.txn.last_stable(end as u64) as i64;
        let mut out = Slices {
            status: ReadStatus::Ok,
            log_start: start,
            high_watermark: end,
            last_stable: stable,
            slices: Vec::new(),
        };
        if offset < start || offset > end {
            out.status = ReadStatus::OutOfRange;
            return out;
        }
        let upper = if committed { stable } else { end };
        if offset >= upper || (max_bytes == 0 && !at_least_one) {
            return out;
        }
        match st.log.read_slices(offset as u64, max_bytes.max(1)) {
            Ok(mut slices) => {
                if !at_least_one && slices.first().is_some_and(|s| s.len as usize > max_bytes) {
                    slices.clear();
                }
                if committed {
                    slices.retain(|s| (s.base_offset as i64) < upper);
                    let read_to = slices
                        .last()
                        .map_or(offset as u64, |s| s.base_offset + u64::from(s.record_count));
                    st.txn.aborted_between(offset as u64, read_to, aborted);
                }
                out.slices = slices;
            }
            Err(e) => {
                tracing::error!(error = %e, partition = self.index, "partition read failed");
                out.status = ReadStatus::Storage;
            }
        }
        out
    }

    /// The last stable offset: below it every transaction is decided.
    pub fn last_stable(&self) -> i64 {
        let st = self.lock();
        st.txn.last_stable(st.log.next_offset()) as i64
    }

    /// Appends a transaction marker for `producer_id` (Kafka's WriteTxnMarkers, which the
    /// coordinator sends itself here): the producer's open transaction in this partition
    /// ends, committed or aborted, and readers waiting for it are woken.
    pub fn write_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now: i64,
    ) -> Result<Produced, AppendError> {
        let written = self.write_marker_unlisted(producer_id, producer_epoch, commit, now);
        self.note_unsynced();
        written
    }

    fn write_marker_unlisted(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now: i64,
    ) -> Result<Produced, AppendError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let marker =
            crate::stream::batch::marker_batch(producer_id, producer_epoch, commit, 0, now);
        let next = st.log.next_offset();
        let length = marker.get(8..12).unwrap_or_default();
        let rest = marker.get(16..).unwrap_or_default();
        let appended = st
            .log
            .append_parts(
                &[
                    &next.to_be_bytes(),
                    length,
                    &LEADER_EPOCH.to_be_bytes(),
                    rest,
                ],
                1,
                now,
            )
            .and_then(|a| st.log.write_buffered().map(|_| a))
            .map_err(|e| {
                tracing::error!(error = %e, "transaction marker not written");
                AppendError::Storage
            })?;
        let fields = crate::stream::batch::txn_fields(&marker);
        st.txn
            .apply(fields, appended.base_offset, appended.next_offset);
        // A marker with a newer epoch fences the producer's older epochs here too.
        if let Some(p) = st.producers.get_mut(&producer_id)
            && producer_epoch > p.epoch
        {
            p.epoch = producer_epoch;
            p.batches.clear();
        }
        let waiters = std::mem::take(&mut st.waiters);
        let produced = Produced {
            base_offset: appended.base_offset as i64,
            log_start_offset: st.log.start_offset() as i64,
            next_offset: appended.next_offset,
        };
        drop(guard);
        for w in waiters {
            w.notify_one();
        }
        Ok(produced)
    }

    /// Whether `producer_id` has an open transaction here.
    pub fn in_transaction(&self, producer_id: i64) -> bool {
        self.lock().txn.is_ongoing(producer_id)
    }

    /// Writes the transaction snapshot if the log moved since the last one, so a reopen
    /// reads little (blocking: it fsyncs, outside the partition lock).
    pub fn save_transactions(&self) -> std::io::Result<()> {
        let (dir, encoded, end) = {
            let mut st = self.lock();
            let end = st.log.next_offset();
            if !st.txn.persisted || st.txn.saved_to >= end {
                return Ok(());
            }
            st.txn.scanned_to = end;
            let start = st.log.start_offset();
            st.txn.forget_below(start);
            (st.log.dir().to_path_buf(), st.txn.encode(), end)
        };
        txn::save(&dir, &encoded)?;
        let mut st = self.lock();
        st.txn.saved_to = st.txn.saved_to.max(end);
        Ok(())
    }

    /// The stored batches from the one holding `offset`, up to about `max_bytes` (at
    /// least one), for readers that open records. Empty at the end of the log.
    pub fn read_batches(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>, ReadStatus> {
        let mut st = self.lock();
        if offset < st.log.start_offset() || offset > st.log.next_offset() {
            return Err(ReadStatus::OutOfRange);
        }
        if offset == st.log.next_offset() {
            return Ok(Vec::new());
        }
        st.log.read(offset, max_bytes.max(1)).map_err(|e| {
            tracing::error!(error = %e, partition = self.index, "partition read failed");
            ReadStatus::Storage
        })
    }

    /// The first offset of the last stored batch (RabbitMQ's `last` chunk), or the end
    /// of an empty log.
    pub fn last_batch_offset(&self) -> u64 {
        let mut st = self.lock();
        let next = st.log.next_offset();
        if next == st.log.start_offset() {
            return next;
        }
        match st.log.read(next - 1, 1) {
            Ok(batches) => batches.first().map_or(next, |b| b.base_offset),
            Err(_) => next,
        }
    }

    /// Wakes every registered reader now (the partition is going away).
    pub fn wake_watchers(&self) {
        let waiters = std::mem::take(&mut self.lock().waiters);
        for w in waiters {
            w.notify_one();
        }
    }

    /// Registers `notify` to be woken by the next append.
    pub fn watch(&self, notify: &Arc<Notify>) {
        let mut st = self.lock();
        // Fetches that gave up waiting hold no reference any more.
        st.waiters.retain(|w| Arc::strong_count(w) > 1);
        // A reader that watches again before the next append is registered once.
        if !st.waiters.iter().any(|w| Arc::ptr_eq(w, notify)) {
            st.waiters.push(Arc::clone(notify));
        }
    }

    /// Moves the log start offset up to `offset` (Kafka's DeleteRecords; -1: the high
    /// watermark): whole segments below it are deleted, and the new start is persisted
    /// before this returns, so it holds across a crash. `Err(None)`: the offset is past the
    /// high watermark (or negative). Blocking: it deletes files and fsyncs.
    pub fn delete_records(&self, offset: i64) -> Result<i64, Option<LogError>> {
        let mut st = self.lock();
        let end = st.log.next_offset() as i64;
        let to = if offset == -1 { end } else { offset };
        if !(0..=end).contains(&to) {
            return Err(None);
        }
        st.log.truncate_prefix(to as u64).map_err(Some)?;
        Ok(st.log.start_offset() as i64)
    }

    /// The first record at or after `timestamp`: `(offset, its timestamp)`.
    pub fn offset_for_time(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        let mut st = self.lock();
        let Some(base) = st.log.offset_for_timestamp(timestamp)? else {
            return Ok(None);
        };
        let batches = st.log.read(base, 1)?;
        let Some(b) = batches.first() else {
            return Ok(None);
        };
        Ok(Some(
            crate::stream::batch::find_time(&b.payload, timestamp)
                .unwrap_or((b.base_offset as i64, b.max_timestamp_ms)),
        ))
    }

    /// Waits until everything below `next_offset` is fsynced. The first writer that finds
    /// no fsync running starts a task that runs them, one after another, while writers
    /// wait; writers that come meanwhile share the next one (group commit).
    pub async fn wait_durable(self: &Arc<Self>, next_offset: u64) -> Result<(), LogError> {
        let (tx, rx) = oneshot::channel();
        let job = {
            let mut st = self.lock();
            if st.log.durable_offset() >= next_offset {
                return Ok(());
            }
            let PartitionState { log, group, .. } = &mut *st;
            if group.wait(next_offset, tx).is_err() {
                return Err(LogError::Io {
                    path: log.dir().to_path_buf(),
                    source: std::io::Error::other("too many writers waiting for an fsync"),
                });
            }
            match group.start(log) {
                Ok(job) => job,
                Err(e) => {
                    // No fsync will run for them: fail every waiter now, this one too.
                    for w in group.fail_all() {
                        let _ = w.send(false);
                    }
                    return Err(e);
                }
            }
        };
        if let Some(job) = job {
            // A task of its own: the fsyncs must finish even if this request is dropped.
            let partition = Arc::clone(self);
            tokio::spawn(async move { partition.run_syncs(job).await });
        }
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(LogError::Io {
                path: self.lock().log.dir().to_path_buf(),
                source: std::io::Error::other("fsync failed"),
            }),
        }
    }

    /// Runs group fsyncs off the async threads while writers wait, releasing each
    /// writer its fsync covers.
    async fn run_syncs(&self, mut job: sluice_log::SyncJob) {
        loop {
            let result = tokio::task::spawn_blocking(move || job.run())
                .await
                .unwrap_or_else(|e| {
                    Err(LogError::Io {
                        path: std::path::PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            match self.finish(result) {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Records a finished fsync, releases the writers it covers (or fails them all), and
    /// takes the next job if writers still wait.
    fn finish(&self, result: Result<sluice_log::Synced, LogError>) -> Option<sluice_log::SyncJob> {
        let mut st = self.lock();
        let PartitionState { log, group, .. } = &mut *st;
        match result {
            Ok(synced) => {
                for w in group.finish(log, synced) {
                    let _ = w.send(true);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "partition fsync failed");
                for w in group.fail_all() {
                    let _ = w.send(false);
                }
            }
        }
        match group.start(log) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "partition fsync not started");
                for w in group.fail_all() {
                    let _ = w.send(false);
                }
                None
            }
        }
    }

    /// Takes the fsync due under the async flush policy, if any and none is in flight.
    pub fn flush_job(&self) -> Option<sluice_log::SyncJob> {
        let mut st = self.lock();
        if !st.log.flush_due() {
            return None;
        }
        let PartitionState { log, group, .. } = &mut *st;
        match group.start_flush(log) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, "partition flush failed");
                None
            }
        }
    }

    /// Hands back a job from [`Partition::flush_job`]; runs, on this blocking thread, the
    /// fsyncs writers who came meanwhile wait for.
    pub fn flush_done(&self, result: Result<sluice_log::Synced, LogError>) {
        let mut next = self.finish(result);
        while let Some(job) = next {
            next = self.finish(job.run());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::batch::{split, tests::batch};
    use sluice_core::clock::ManualClock;

    fn open(dir: &Path) -> Partition {
        Partition::open(
            0,
            dir,
            LogConfig::default(),
            Arc::new(ManualClock::new(1_000)),
        )
        .unwrap()
    }

    fn produce(p: &Partition, records: Vec<u8>) -> Result<Produced, AppendError> {
        let records = Bytes::from(records);
        let mut infos = Vec::new();
        split(&records, &mut infos).unwrap();
        p.append(&records, &infos, None)
    }

    /// Only partitions written since their last fsync are on the flusher's list, and
    /// one stays there until an fsync covers its appends.
    #[test]
    fn the_flusher_visits_only_partitions_with_unsynced_appends() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let list = Arc::new(Unsynced::default());
        let parts: Vec<Arc<Partition>> = dirs
            .iter()
            .map(|d| {
                let p = Arc::new(open(d.path()));
                p.track_unsynced(&list);
                p
            })
            .collect();
        assert!(list.take().is_empty(), "fresh partitions are synced");
        produce(&parts[1], batch(2, -1, 0)).unwrap();
        produce(&parts[1], batch(1, -1, 0)).unwrap();
        let taken = list.take();
        assert_eq!(taken.len(), 1, "listed once however often written");
        assert!(Arc::ptr_eq(&taken[0], &parts[1]));
        // Not fsynced yet: back on the list.
        taken[0].relist_if_unsynced();
        let taken = list.take();
        assert_eq!(taken.len(), 1);
        taken[0].lock().log.sync().unwrap();
        taken[0].relist_if_unsynced();
        assert!(list.take().is_empty(), "synced partitions leave the list");
    }

    /// acks=-1 writers and the background flusher share one fsync slot: a writer that
    /// comes while a flush runs is released by it, and concurrent writers share fsyncs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_waiting_for_durability_share_fsyncs_with_the_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(open(dir.path()));
        let first = produce(&p, batch(1, -1, -1)).unwrap();
        // Taken as the flusher takes it: through the group.
        let flush = {
            let mut st = p.lock();
            let PartitionState { log, group, .. } = &mut *st;
            group.start_flush(log).unwrap().expect("a flush job")
        };
        let waiter = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.wait_durable(first.next_offset).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the flush holds the slot");
        let job = flush;
        tokio::task::spawn_blocking({
            let p = Arc::clone(&p);
            move || p.flush_done(job.run())
        })
        .await
        .unwrap();
        waiter.await.unwrap().unwrap();
        let fsyncs_before = p.lock().log.stats().fsyncs;
        let mut writers = Vec::new();
        for _ in 0..50 {
            let produced = produce(&p, batch(1, -1, -1)).unwrap();
            let p = Arc::clone(&p);
            writers.push(tokio::spawn(async move {
                p.wait_durable(produced.next_offset).await
            }));
        }
        for w in writers {
            w.await.unwrap().unwrap();
        }
        let fsyncs = p.lock().log.stats().fsyncs - fsyncs_before;
        assert!((1..50).contains(&fsyncs), "{fsyncs} fsyncs for 50 writers");
        let st = p.lock();
        assert_eq!(st.log.durable_offset(), st.log.next_offset());
    }

    /// A reader that watches again and again while nothing is appended stays one waiter.
    #[test]
    fn watching_again_registers_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let notify = Arc::new(Notify::new());
        for _ in 0..1_000 {
            p.watch(&notify);
        }
        assert_eq!(p.lock().waiters.len(), 1);
    }

    #[test]
    fn assigns_offsets_and_serves_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        assert_eq!(produce(&p, batch(3, -1, -1)).unwrap().base_offset, 0);
        assert_eq!(produce(&p, batch(2, -1, -1)).unwrap().base_offset, 3);
        let read = p.read_slices(4, 1 << 20, true, false, &mut Vec::new());
        let slices = read.slices;
        assert_eq!(
            (
                read.status,
                read.log_start,
                read.high_watermark,
                slices.len()
            ),
            (ReadStatus::Ok, 0, 5, 1)
        );
        let mut out = vec![0u8; slices[0].len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&*slices[0].file, &mut out, slices[0].position)
            .unwrap();
        // The batch holding offset 4 starts at 3, with its base offset rewritten.
        assert_eq!(&out[..8], &3i64.to_be_bytes());
        assert_eq!(&out[8..], &batch(2, -1, -1)[8..]);
        let read = p.read_slices(6, 1 << 20, true, false, &mut Vec::new());
        assert_eq!(read.status, ReadStatus::OutOfRange);
    }

    #[test]
    fn a_retry_after_a_restart_is_still_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let p = open(dir.path());
            produce(&p, batch(2, 9, 0)).unwrap();
            produce(&p, batch(3, 9, 2)).unwrap();
            p.lock().log.sync().unwrap();
        }
        let p = open(dir.path());
        assert_eq!(produce(&p, batch(3, 9, 2)).unwrap().base_offset, 2);
        assert_eq!(p.offsets().1, 5, "the retry was not stored again");
        assert_eq!(
            produce(&p, batch(1, 9, 9)),
            Err(AppendError::OutOfOrderSequence)
        );
        assert_eq!(produce(&p, batch(1, 9, 5)).unwrap().base_offset, 5);
    }

    /// A transactional batch with its attribute bit set (and the CRC fixed).
    fn txn_batch(count: i32, producer_id: i64, base_sequence: i32) -> Vec<u8> {
        let mut b = batch(count, producer_id, base_sequence);
        b[22] |= 0x10;
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Open transactions hold the last stable offset; markers end them; aborted ones are
    /// named to `read_committed` readers; all of it comes back after a reopen, from the
    /// snapshot and from the log after it.
    #[test]
    fn transactions_bound_committed_reads_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut aborted = Vec::new();
        {
            let p = open(dir.path());
            produce(&p, batch(2, -1, -1)).unwrap(); // 0..2
            produce(&p, txn_batch(3, 7, 0)).unwrap(); // 2..5, producer 7
            produce(&p, txn_batch(1, 8, 0)).unwrap(); // 5, producer 8
            assert_eq!(p.last_stable(), 2);
            let read = p.read_slices(0, 1 << 20, true, true, &mut aborted);
            assert_eq!((read.last_stable, read.high_watermark), (2, 6));
            assert_eq!(read.slices.len(), 1, "only the batch below the LSO");
            p.write_marker(7, 0, false, 1_000).unwrap(); // 6: abort of 7
            assert_eq!(p.last_stable(), 5);
            assert!(p.save_transactions().is_ok());
            p.write_marker(8, 0, true, 1_000).unwrap(); // 7: commit of 8
            produce(&p, txn_batch(2, 9, 0)).unwrap(); // 8..10, producer 9, open
            p.lock().log.sync().unwrap();
        }
        let p = open(dir.path());
        assert_eq!(p.last_stable(), 8, "producer 9's transaction is still open");
        assert!(p.in_transaction(9) && !p.in_transaction(7) && !p.in_transaction(8));
        let read = p.read_slices(0, 1 << 20, true, true, &mut aborted);
        assert_eq!(aborted, vec![(7, 2)]);
        assert!(read.slices.iter().all(|s| s.base_offset < 8));
        p.read_slices(7, 1 << 20, true, true, &mut aborted);
        assert!(aborted.is_empty(), "the abort marker is below the read");
        // The coordinator aborts producer 9 with a bumped epoch: nothing stays open.
        p.write_marker(9, 1, false, 1_000).unwrap();
        assert_eq!(p.last_stable(), p.offsets().1);
    }

    #[test]
    fn idempotent_duplicates_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        assert_eq!(produce(&p, batch(2, 9, 0)).unwrap().base_offset, 0);
        assert_eq!(produce(&p, batch(3, 9, 2)).unwrap().base_offset, 2);
        // A retry of either batch answers its first offset and stores nothing.
        assert_eq!(produce(&p, batch(2, 9, 0)).unwrap().base_offset, 0);
        assert_eq!(produce(&p, batch(3, 9, 2)).unwrap().base_offset, 2);
        assert_eq!(p.offsets().1, 5);
        assert_eq!(
            produce(&p, batch(1, 9, 7)),
            Err(AppendError::OutOfOrderSequence)
        );
        assert_eq!(produce(&p, batch(1, 9, 5)).unwrap().base_offset, 5);
    }
}
