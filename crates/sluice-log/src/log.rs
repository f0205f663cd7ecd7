//! The log: an ordered set of segments, the last one active. Owns recovery on open,
//! appends through a write buffer, reads by offset and time, rolling, retention,
//! settled-prefix truncation and the hand-off of fsync to a [`SyncJob`].

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use sluice_core::Clock;
use sluice_core::limits::WRITE_BUFFER_BYTES;

use crate::config::{FlushPolicy, LogConfig};
use crate::error::LogError;
use crate::format::{
    BATCH_HEADER_BYTES, BatchHeader, START_MAGIC, check_file_header, file_header,
    parse_segment_name, u64_at,
};
use crate::io::{FileIo, Io};
use crate::segment::{Segment, remove_segment_files};
use crate::sendfile::FileSlice;

const START_FILE: &str = "start-offset";

/// A batch as stored: its payload is the exact bytes given to `append`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub base_offset: u64,
    pub record_count: u32,
    pub max_timestamp_ms: i64,
    pub payload: Bytes,
}

impl Batch {
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    /// One past the batch's last offset: the batch is durable once `durable_offset()`
    /// reaches this.
    pub next_offset: u64,
}

/// Counters for tests, metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    pub appends: u64,
    pub fsyncs: u64,
    pub segments: usize,
    pub open_segments: usize,
    pub bytes: u64,
}

/// fsync work taken from a log, to run off the owner's thread. It covers every append
/// made before it was taken.
#[derive(Debug)]
pub struct SyncJob {
    files: Vec<(PathBuf, Arc<File>)>,
    dir: Option<PathBuf>,
    next_offset: u64,
    fsyncs: Arc<AtomicU64>,
    io: Arc<dyn Io>,
    /// Set when this job fails: the log refuses changes from then on.
    failed: Arc<AtomicBool>,
}

/// File work of a prefix truncation, taken from a log by
/// [`Log::begin_truncate_prefix`] to run off the owner's thread.
#[derive(Debug)]
pub struct TruncateJob {
    dir: PathBuf,
    start_offset: u64,
    segments: Vec<PathBuf>,
}

impl TruncateJob {
    /// Deletes the segments, then persists the start offset (a write, an fsync and a
    /// rename). Blocking.
    pub fn run(self) -> Result<(), LogError> {
        for path in &self.segments {
            remove_segment_files(path)?;
        }
        write_start_offset(&self.dir, self.start_offset)
    }
}

/// A finished [`SyncJob`], to hand back to [`Log::synced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub next_offset: u64,
}

impl SyncJob {
    /// Runs the fsyncs. Blocking: call it from a blocking thread, never an async executor.
    pub fn run(self) -> Result<Synced, LogError> {
        let started = std::time::Instant::now();
        let failed = |e: LogError| {
            self.failed.store(true, Ordering::Release);
            e
        };
        for (path, file) in &self.files {
            self.io
                .sync_data(file)
                .map_err(LogError::io(path))
                .map_err(failed)?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(dir) = &self.dir {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(LogError::io(dir))
                .map_err(failed)?;
        }
        crate::timing::FSYNC.record(started.elapsed());
        Ok(Synced {
            next_offset: self.next_offset,
        })
    }
}

#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    clock: Arc<dyn Clock>,
    /// Sealed segments in offset order.
    pub(crate) sealed: Vec<Segment>,
    active: Segment,
    /// Bytes of the active segment written to its file; the rest sits in `buffer`.
    written: u64,
    buffer: Vec<u8>,
    start_offset: u64,
    durable_offset: u64,
    /// Files sealed or created since the last sync job.
    unsynced_files: Vec<(PathBuf, Arc<File>)>,
    dir_dirty: bool,
    unsynced_bytes: u64,
    last_sync_ms: i64,
    use_counter: u64,
    appends: u64,
    fsyncs: Arc<AtomicU64>,
    io: Arc<dyn Io>,
    /// A write or fsync failed: changes are refused until the log is reopened.
    failed: Arc<AtomicBool>,
}

impl Log {
    /// Opens the log in `dir`, creating it if needed. Recovery scans only the active
    /// segment and any sealed segment whose indexes do not match its file.
    pub fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Log, LogError> {
        Self::open_with_io(dir, config, clock, Arc::new(FileIo))
    }

    /// [`Log::open`] with the batch writes and fsyncs going through `io`.
    pub fn open_with_io(
        dir: impl AsRef<Path>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
        io: Arc<dyn Io>,
    ) -> Result<Log, LogError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(LogError::io(&dir))?;
        let now = clock.now_ms();
        let interval = config.index_interval_bytes;

        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(LogError::io(&dir))? {
            let entry = entry.map_err(LogError::io(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = parse_segment_name(name, "log") {
                bases.push(base);
            } else if crate::rewrite::is_leftover(name) {
                // A rewrite a crash interrupted before its swap: the old segment stands.
                let path = entry.path();
                std::fs::remove_file(&path).map_err(LogError::io(&path))?;
            }
        }
        bases.sort_unstable();
        remove_orphan_indexes(&dir, &bases)?;

        let mut sealed = Vec::new();
        let mut active = None;
        for (i, &base) in bases.iter().enumerate() {
            match bases.get(i + 1) {
                Some(&next_base) => {
                    if let Some(segment) = Segment::open_sealed(&dir, base, next_base, interval)? {
                        sealed.push(segment);
                    }
                }
                None => match Segment::recover(&dir, base, now, interval, None)? {
                    Some(segment) => active = Some(segment),
                    None => {
                        // A header torn at creation: nothing was ever appended here.
                        remove_segment_files(
                            &dir.join(crate::format::segment_file_name(base, "log")),
                        )?;
                        active = Some(Segment::create(&dir, base, now)?);
                    }
                },
            }
        }
        let active = match active {
            Some(a) => a,
            None => {
                let base = sealed.last().map_or(0, |s| s.next_offset);
                Segment::create(&dir, base, now)?
            }
        };
        let first = sealed.first().map_or(active.base_offset, |s| s.base_offset);
        let start_offset = read_start_offset(&dir)?
            .unwrap_or(first)
            .clamp(first, active.next_offset);
        let written = active.size;
        let next = active.next_offset;
        let mut log = Log {
            dir,
            config,
            clock,
            sealed,
            active,
            written,
            // Grown on demand: an idle log (most queues) holds no buffer memory.
            buffer: Vec::new(),
            start_offset,
            durable_offset: next,
            unsynced_files: Vec::new(),
            dir_dirty: false,
            unsynced_bytes: 0,
            last_sync_ms: now,
            use_counter: 0,
            appends: 0,
            fsyncs: Arc::new(AtomicU64::new(0)),
            io,
            failed: Arc::new(AtomicBool::new(false)),
        };
        log.active.created_ms = now;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings; they apply from the next append, roll or retention pass.
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), crate::ConfigError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Where the oldest segment ends, when it is sealed: truncating the prefix up to here
    /// or beyond frees at least one whole segment.
    pub fn oldest_segment_end(&self) -> Option<u64> {
        self.sealed.first().map(|s| s.next_offset)
    }

    /// Lowest readable offset.
    pub fn start_offset(&self) -> u64 {
        self.start_offset
    }

    /// Offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.active.next_offset
    }

    /// Every offset below this is on disk (fsynced).
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset
    }

    /// Whether an fsync covered everything appended, sealed and created so far.
    pub fn is_synced(&self) -> bool {
        self.durable_offset >= self.next_offset()
            && self.unsynced_files.is_empty()
            && !self.dir_dirty
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            appends: self.appends,
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            segments: self.sealed.len() + 1,
            open_segments: 1 + self.sealed.iter().filter(|s| s.is_open()).count(),
            bytes: self.sealed.iter().map(|s| s.size).sum::<u64>() + self.active.size,
        }
    }

    /// Appends one batch of `record_count` records. The payload is stored byte for byte.
    pub fn append(
        &mut self,
        payload: &[u8],
        record_count: u32,
        max_timestamp_ms: i64,
    ) -> Result<Appended, LogError> {
        self.append_parts(&[payload], record_count, max_timestamp_ms)
    }

    /// Like [`Log::append`], with the payload given as parts stored back to back (so a
    /// caller can replace a header without copying the rest first).
    pub fn append_parts(
        &mut self,
        parts: &[&[u8]],
        record_count: u32,
        max_timestamp_ms: i64,
    ) -> Result<Appended, LogError> {
        self.usable()?;
        if record_count == 0 {
            return Err(LogError::EmptyBatch);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.config.batch_bytes_max as usize {
            return Err(LogError::BatchTooLarge {
                len,
                max: self.config.batch_bytes_max,
            });
        }
        let frame = (BATCH_HEADER_BYTES + len) as u64;
        if self.should_roll(frame, record_count) {
            self.roll()?;
        }
        let base_offset = self.active.next_offset;
        let header = BatchHeader::from_parts(base_offset, record_count, max_timestamp_ms, parts);
        let position = self.active.size;
        if self.buffer.len() + frame as usize > WRITE_BUFFER_BYTES {
            self.flush_buffer()?;
        }
        if frame as usize > WRITE_BUFFER_BYTES {
            let file = self.active_file()?;
            let encoded = header.encode();
            let mut slices: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
            slices.push(&encoded);
            slices.extend_from_slice(parts);
            if let Err(e) = self.io.write_vectored_at(&file, &slices, position) {
                self.failed.store(true, Ordering::Release);
                return Err(LogError::io(&self.active.path)(e));
            }
            self.written = position + frame;
        } else {
            self.buffer.extend_from_slice(&header.encode());
            for part in parts {
                self.buffer.extend_from_slice(part);
            }
        }
        self.active
            .note_batch(&header, position, self.config.index_interval_bytes);
        self.unsynced_bytes += frame;
        self.appends += 1;
        Ok(Appended {
            base_offset,
            next_offset: header.next_offset(),
        })
    }

    fn write_at(&self, bytes: &[u8], position: u64) -> Result<(), LogError> {
        let file = self.active_file()?;
        self.io.write_at(&file, bytes, position).map_err(|e| {
            self.failed.store(true, Ordering::Release);
            LogError::io(&self.active.path)(e)
        })
    }

    /// Whether the log may still change: not after a failed write or fsync.
    fn usable(&self) -> Result<(), LogError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(LogError::Failed {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Whether a write or fsync of this log failed (it must be reopened).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn active_file(&self) -> Result<Arc<File>, LogError> {
        self.active.file()
    }

    /// Writes buffered appends to the segment file without an fsync: after this, a crash
    /// of the process (not of the machine) loses none of them.
    pub fn write_buffered(&mut self) -> Result<(), LogError> {
        self.flush_buffer()
    }

    /// Writes buffered appends to the active segment file (no fsync).
    fn flush_buffer(&mut self) -> Result<(), LogError> {
        self.usable()?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.write_at(&self.buffer, self.written)?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    fn should_roll(&self, frame: u64, record_count: u32) -> bool {
        if self.active.is_empty() {
            return false;
        }
        let full = self.active.size + frame > self.config.segment_bytes;
        let rel_full = self.active.next_offset - self.active.base_offset + u64::from(record_count)
            > u64::from(u32::MAX);
        let old = self.config.segment_ms.is_some_and(|ms| {
            self.clock.now_ms().saturating_sub(self.active.created_ms) >= ms as i64
        });
        full || rel_full || old
    }

    /// Seals the active segment and starts a new one at the next offset.
    pub fn roll(&mut self) -> Result<(), LogError> {
        if self.active.is_empty() {
            return Ok(());
        }
        self.flush_buffer()?;
        let now = self.clock.now_ms();
        let next = Segment::create(&self.dir, self.active.next_offset, now)?;
        let mut old = std::mem::replace(&mut self.active, next);
        old.seal()?;
        if let Some(file) = old.file.current() {
            self.unsynced_files.push((old.path.clone(), file));
        }
        old.last_used = self.bump();
        self.sealed.push(old);
        self.written = self.active.size;
        self.dir_dirty = true;
        self.enforce_open_limit();
        Ok(())
    }

    fn bump(&mut self) -> u64 {
        self.use_counter += 1;
        self.use_counter
    }

    /// Closes the least recently used sealed segments beyond `open_segments_max`.
    fn enforce_open_limit(&mut self) {
        loop {
            let open = self.sealed.iter().filter(|s| s.is_open()).count();
            if open <= self.config.open_segments_max {
                return;
            }
            let lru = self
                .sealed
                .iter_mut()
                .filter(|s| s.is_open())
                .min_by_key(|s| s.last_used);
            match lru {
                Some(s) => s.close(),
                None => return,
            }
        }
    }

    /// Takes the fsync work for every append so far, or `None` if all of it is durable.
    /// Only one job should be outstanding at a time.
    pub fn sync_job(&mut self) -> Result<Option<SyncJob>, LogError> {
        self.flush_buffer()?;
        if self.durable_offset >= self.active.next_offset
            && self.unsynced_files.is_empty()
            && !self.dir_dirty
        {
            return Ok(None);
        }
        let mut files = std::mem::take(&mut self.unsynced_files);
        files.push((self.active.path.clone(), self.active_file()?));
        let dir = self.dir_dirty.then(|| self.dir.clone());
        self.dir_dirty = false;
        self.unsynced_bytes = 0;
        Ok(Some(SyncJob {
            files,
            dir,
            next_offset: self.active.next_offset,
            fsyncs: Arc::clone(&self.fsyncs),
            io: Arc::clone(&self.io),
            failed: Arc::clone(&self.failed),
        }))
    }

    /// Records a finished sync job.
    pub fn synced(&mut self, synced: Synced) {
        self.durable_offset = self.durable_offset.max(synced.next_offset);
        self.last_sync_ms = self.clock.now_ms();
    }

    /// Makes everything appended so far durable, on this thread.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if let Some(job) = self.sync_job()? {
            let done = job.run()?;
            self.synced(done);
        }
        Ok(())
    }

    /// Whether the `async` flush policy wants an fsync now.
    pub fn flush_due(&self) -> bool {
        match self.config.flush {
            FlushPolicy::Sync => self.durable_offset < self.active.next_offset,
            FlushPolicy::Async { interval_ms, bytes } => {
                let pending = self.durable_offset < self.active.next_offset
                    || !self.unsynced_files.is_empty();
                let late =
                    self.clock.now_ms().saturating_sub(self.last_sync_ms) >= interval_ms as i64;
                pending && (late || self.unsynced_bytes >= bytes)
            }
        }
    }

    /// The segment holding `offset`, or the first one after it when `offset` falls in a
    /// gap. `None` means the active segment.
    fn segment_index_for(&self, offset: u64) -> Option<usize> {
        let i = self.sealed.partition_point(|s| s.base_offset <= offset);
        let at = i.checked_sub(1)?;
        match self.sealed.get(at) {
            Some(s) if offset < s.next_offset => Some(at),
            _ => (i < self.sealed.len()).then_some(i),
        }
    }

    fn check_range(&self, offset: u64) -> Result<(), LogError> {
        if offset < self.start_offset || offset > self.active.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end: self.active.next_offset,
            });
        }
        Ok(())
    }

    fn open_sealed(&mut self, i: usize) -> Result<(), LogError> {
        let stamp = self.bump();
        let interval = self.config.index_interval_bytes;
        if let Some(s) = self.sealed.get_mut(i) {
            s.ensure_open(interval)?;
            s.last_used = stamp;
        }
        self.enforce_open_limit();
        // The limit never closes the segment just used: it has the newest stamp.
        Ok(())
    }

    /// Whole batches starting with the one that holds `offset`, up to `max_bytes` (at
    /// least one batch when any is there). Reads stay within one segment; an empty result
    /// means `offset` is the end of the log.
    pub fn read(&mut self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>, LogError> {
        self.check_range(offset)?;
        let mut offset = offset;
        loop {
            match self.segment_index_for(offset) {
                Some(i) => {
                    self.open_sealed(i)?;
                    let Some(s) = self.sealed.get(i) else {
                        return Ok(Vec::new());
                    };
                    let batches = s.read(offset, max_bytes, s.size)?;
                    if !batches.is_empty() {
                        return Ok(batches);
                    }
                    offset = s.next_offset;
                }
                None => {
                    self.flush_buffer()?;
                    return self.active.read(offset, max_bytes, self.written);
                }
            }
        }
    }

    /// Like [`Log::read`], but returns file ranges of the stored payloads for a zero-copy
    /// send (`sendfile`). The stored bytes are not re-checked against their CRC.
    pub fn read_slices(
        &mut self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<FileSlice>, LogError> {
        self.check_range(offset)?;
        let mut offset = offset;
        loop {
            let (segment, end) = match self.segment_index_for(offset) {
                Some(i) => {
                    self.open_sealed(i)?;
                    match self.sealed.get(i) {
                        Some(s) => (s, s.size),
                        None => return Ok(Vec::new()),
                    }
                }
                None => {
                    self.flush_buffer()?;
                    (&self.active, self.written)
                }
            };
            let ranges = segment.payload_ranges(offset, max_bytes, end)?;
            let file = segment.file()?;
            if !ranges.is_empty() || end == self.written {
                return Ok(ranges
                    .into_iter()
                    .map(|(position, h)| FileSlice {
                        file: Arc::clone(&file),
                        position,
                        len: u64::from(h.len),
                        base_offset: h.base_offset,
                        record_count: h.record_count,
                    })
                    .collect());
            }
            offset = segment.next_offset;
        }
    }

    /// Base offset of the first batch whose timestamp is at least `timestamp_ms`, or
    /// `None` when every batch is older.
    pub fn offset_for_timestamp(&mut self, timestamp_ms: i64) -> Result<Option<u64>, LogError> {
        let from = self.start_offset;
        for i in 0..self.sealed.len() {
            let Some(s) = self.sealed.get(i) else { break };
            if s.next_offset <= from || s.max_timestamp_ms < timestamp_ms {
                continue;
            }
            self.open_sealed(i)?;
            if let Some(s) = self.sealed.get(i)
                && let Some(offset) = s.find_time(timestamp_ms, from, s.size)?
            {
                return Ok(Some(offset));
            }
        }
        if self.active.max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        self.flush_buffer()?;
        self.active.find_time(timestamp_ms, from, self.written)
    }

    /// Drops everything below `offset` (for a queue: its settled prefix). Whole sealed
    /// segments below it are deleted; the new start offset is persisted.
    pub fn truncate_prefix(&mut self, offset: u64) -> Result<(), LogError> {
        match self.begin_truncate_prefix(offset) {
            Some(job) => job.run(),
            None => Ok(()),
        }
    }

    /// [`Log::truncate_prefix`] split for owners that must not touch files under their
    /// lock: the log forgets everything below `offset` at once, and the returned job
    /// deletes the whole segments below it and persists the new start offset, off the
    /// owner's thread. Until the job ran, a crash only brings back what the settlement
    /// records cover anyway: recovery clamps the start to the oldest segment left.
    /// Jobs of one log must run in the order they were taken.
    pub fn begin_truncate_prefix(&mut self, offset: u64) -> Option<TruncateJob> {
        let offset = offset.min(self.active.next_offset);
        if offset <= self.start_offset {
            return None;
        }
        self.start_offset = offset;
        let keep_from = self.sealed.partition_point(|s| s.next_offset <= offset);
        let count = keep_from.min(self.sealed.len());
        let mut paths = Vec::with_capacity(count);
        for s in self.sealed.drain(..count) {
            self.unsynced_files.retain(|(p, _)| p != &s.path);
            paths.push(s.path.clone());
        }
        Some(TruncateJob {
            dir: self.dir.clone(),
            start_offset: offset,
            segments: paths,
        })
    }

    /// Applies retention by size and age to sealed segments; returns how many were deleted.
    pub fn apply_retention(&mut self) -> Result<usize, LogError> {
        let now = self.clock.now_ms();
        let mut total: u64 = self.sealed.iter().map(|s| s.size).sum::<u64>() + self.active.size;
        let mut drop = 0;
        for s in &self.sealed {
            let too_big = self.config.retention_bytes.is_some_and(|max| total > max);
            let too_old = self
                .config
                .retention_ms
                .is_some_and(|ms| now.saturating_sub(s.max_timestamp_ms) > ms as i64);
            if !too_big && !too_old {
                break;
            }
            total -= s.size;
            drop += 1;
        }
        if drop == 0 {
            return Ok(0);
        }
        self.delete_sealed(drop)?;
        let first = self
            .sealed
            .first()
            .map_or(self.active.base_offset, |s| s.base_offset);
        if first > self.start_offset {
            self.start_offset = first;
            write_start_offset(&self.dir, first)?;
        }
        Ok(drop)
    }

    /// Deletes the first `count` sealed segments.
    fn delete_sealed(&mut self, count: usize) -> Result<(), LogError> {
        let count = count.min(self.sealed.len());
        for s in self.sealed.drain(..count) {
            remove_segment_files(&s.path)?;
            self.unsynced_files.retain(|(p, _)| p != &s.path);
        }
        Ok(())
    }

    /// Writes buffered appends and fsyncs: a clean close.
    pub fn close(mut self) -> Result<(), LogError> {
        self.sync()
    }

    /// Drops the log as a killed process leaves it: appends still in the write buffer
    /// are lost, what reached the files stays. For crash simulations.
    pub fn abandon(mut self) {
        self.buffer.clear();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Buffered bytes reach the page cache; durability is the owner's call. A failed
        // log writes nothing more.
        if self.has_failed() {
            return;
        }
        if let Err(e) = self.flush_buffer() {
            tracing::error!(error = %e, "log buffer lost on drop");
        }
    }
}

fn remove_orphan_indexes(dir: &Path, bases: &[u64]) -> Result<(), LogError> {
    for entry in std::fs::read_dir(dir).map_err(LogError::io(dir))? {
        let entry = entry.map_err(LogError::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let base =
            parse_segment_name(name, "index").or_else(|| parse_segment_name(name, "timeindex"));
        if let Some(base) = base
            && bases.binary_search(&base).is_err()
        {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(LogError::io(&path))?;
        }
    }
    Ok(())
}

/// `magic | version | reserved | start_offset u64 | crc32c u32` written via rename.
fn write_start_offset(dir: &Path, offset: u64) -> Result<(), LogError> {
    let mut bytes = file_header(START_MAGIC).to_vec();
    bytes.extend_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{START_FILE}.tmp"));
    let path = dir.join(START_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(LogError::io(&tmp))?;
    std::io::Write::write_all(&mut file, &bytes).map_err(LogError::io(&tmp))?;
    file.sync_data().map_err(LogError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(LogError::io(&path))
}

/// The persisted start offset; a missing or damaged file means "no truncation recorded".
fn read_start_offset(dir: &Path) -> Result<Option<u64>, LogError> {
    let path = dir.join(START_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::Io { path, source: e }),
    };
    if bytes.len() != 28 || !check_file_header(&bytes, START_MAGIC) {
        return Ok(None);
    }
    let crc = crate::format::u32_at(&bytes, 24);
    if bytes.get(..24).map(crc32c::crc32c) != Some(crc) {
        return Ok(None);
    }
    Ok(Some(u64_at(&bytes, 16)))
}
