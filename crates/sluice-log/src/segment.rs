//! One segment: a `.log` file of framed batches plus its sparse indexes. A segment is
//! either the log's active one (appended to, indexes in memory only) or sealed (indexes
//! written next to it, file and indexes loaded on demand).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::LogError;
use crate::files::FileSlot;
use crate::format::{
    BATCH_HEADER_BYTES, BatchHeader, FILE_HEADER_BYTES, INDEX_ENTRY_BYTES, SEGMENT_MAGIC,
    TIME_ENTRY_BYTES, check_file_header, file_header, segment_file_name,
};
use crate::index::{self, Indexes, OffsetEntry, SealInfo, TimeEntry};
use crate::log::Batch;
use crate::scan::{Scanner, Stop};

#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    /// One past the last offset stored here.
    pub next_offset: u64,
    /// Bytes in the segment, header included (for the active one: including buffered bytes).
    pub size: u64,
    /// Largest batch timestamp, `i64::MIN` while empty.
    pub max_timestamp_ms: i64,
    pub created_ms: i64,
    pub path: PathBuf,
    /// The file, opened on use and closed when the process-wide budget needs it.
    pub file: Arc<FileSlot>,
    pub indexes: Option<Indexes>,
    /// Batch bytes since the last index entry.
    since_index: u64,
    /// Read-recency stamp for closing the least recently used sealed segments.
    pub last_used: u64,
}

fn index_path(path: &Path, ext: &str) -> PathBuf {
    path.with_extension(ext)
}

fn open_rw(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(LogError::io(path))
}

impl Segment {
    pub(crate) fn empty(
        path: PathBuf,
        base_offset: u64,
        created_ms: i64,
        file: Arc<FileSlot>,
    ) -> Self {
        Segment {
            base_offset,
            next_offset: base_offset,
            size: FILE_HEADER_BYTES,
            max_timestamp_ms: i64::MIN,
            created_ms,
            path,
            file,
            indexes: Some(Indexes::default()),
            since_index: u64::MAX,
            last_used: 0,
        }
    }

    /// A new, empty segment file at `base_offset`.
    pub fn create(dir: &Path, base_offset: u64, now_ms: i64) -> Result<Segment, LogError> {
        let path = dir.join(segment_file_name(base_offset, "log"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(LogError::io(&path))?;
        file.write_all(&file_header(SEGMENT_MAGIC))
            .map_err(LogError::io(&path))?;
        Ok(Segment::empty(
            path,
            base_offset,
            now_ms,
            FileSlot::with(file, true),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }

    /// Records a batch just placed at `position` in this segment's indexes and counters.
    pub fn note_batch(&mut self, header: &BatchHeader, position: u64, interval: u32) {
        let rel = (header.base_offset - self.base_offset) as u32;
        let frame = header.frame_bytes();
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms);
        if let Some(indexes) = self.indexes.as_mut() {
            if self.since_index >= u64::from(interval) {
                indexes.offsets.push(OffsetEntry {
                    rel,
                    position: position as u32,
                });
                let newer = indexes
                    .times
                    .last()
                    .is_none_or(|t| self.max_timestamp_ms > t.timestamp_ms);
                if newer {
                    indexes.times.push(TimeEntry {
                        timestamp_ms: self.max_timestamp_ms,
                        rel,
                    });
                }
                self.since_index = 0;
            }
            self.since_index = self.since_index.saturating_add(frame);
        }
        self.next_offset = header.next_offset();
        self.size = position + frame;
    }

    /// Writes the indexes with their end and seal entries next to the segment file.
    /// Crash-safe without fsync: a damaged or missing index is rebuilt on open.
    pub fn seal(&mut self) -> Result<(), LogError> {
        let Some(indexes) = self.indexes.as_mut() else {
            return Ok(());
        };
        let next_rel = (self.next_offset - self.base_offset) as u32;
        indexes.offsets.push(OffsetEntry {
            rel: next_rel,
            position: self.size as u32,
        });
        indexes.times.push(TimeEntry {
            timestamp_ms: self.max_timestamp_ms,
            rel: next_rel,
        });
        let offsets_path = index_path(&self.path, "index");
        std::fs::write(&offsets_path, indexes.encode_offsets())
            .map_err(LogError::io(&offsets_path))?;
        let times_path = index_path(&self.path, "timeindex");
        std::fs::write(&times_path, indexes.encode_times()).map_err(LogError::io(&times_path))?;
        Ok(())
    }

    /// Opens a sealed segment from the seal in its index tails without scanning it, or
    /// rescans it when the seal is missing or disagrees with the file. `None` if nothing
    /// valid is left in it.
    pub fn open_sealed(
        dir: &Path,
        base_offset: u64,
        next_base: u64,
        interval: u32,
    ) -> Result<Option<Segment>, LogError> {
        let path = dir.join(segment_file_name(base_offset, "log"));
        let size = std::fs::metadata(&path).map_err(LogError::io(&path))?.len();
        if let Some(seal) = read_seal(&path)? {
            let next_offset = base_offset.saturating_add(u64::from(seal.next_rel));
            if seal.size == size && next_offset <= next_base {
                let mut segment = Segment::empty(path, base_offset, 0, FileSlot::new(false));
                segment.next_offset = next_offset;
                segment.size = size;
                segment.max_timestamp_ms = seal.max_timestamp_ms;
                segment.indexes = None;
                return Ok(Some(segment));
            }
        }
        tracing::warn!(path = %path.display(), "sealed segment index damaged; rescanning");
        let segment = Segment::recover(dir, base_offset, 0, interval, Some(next_base))?;
        match segment {
            Some(mut s) if !s.is_empty() => {
                s.seal()?;
                s.file = FileSlot::new(false);
                s.indexes = None;
                Ok(Some(s))
            }
            _ => {
                remove_segment_files(&dir.join(segment_file_name(base_offset, "log")))?;
                Ok(None)
            }
        }
    }

    /// Scans a segment file, verifying every batch, truncates it after the last valid
    /// batch and rebuilds its indexes in memory. Batches must be contiguous from
    /// `base_offset` (gaps allowed: compaction leaves them) and end at or before `next_base` when given. `None` if the file
    /// header itself is not ours.
    pub fn recover(
        dir: &Path,
        base_offset: u64,
        now_ms: i64,
        interval: u32,
        next_base: Option<u64>,
    ) -> Result<Option<Segment>, LogError> {
        let path = dir.join(segment_file_name(base_offset, "log"));
        let file = open_rw(&path)?;
        let len = file.metadata().map_err(LogError::io(&path))?.len();
        let mut head = [0u8; FILE_HEADER_BYTES as usize];
        let head_ok = len >= FILE_HEADER_BYTES
            && file.read_exact_at(&mut head, 0).is_ok()
            && check_file_header(&head, SEGMENT_MAGIC);
        if !head_ok {
            return Ok(None);
        }
        let mut segment = Segment::empty(path.clone(), base_offset, now_ms, FileSlot::new(true));
        let stop = {
            let mut scanner = Scanner::new(&file, &path, FILE_HEADER_BYTES, len);
            loop {
                match scanner.next(true)? {
                    Ok((position, header, _)) => {
                        let in_order = header.base_offset >= segment.next_offset;
                        let in_range = next_base.is_none_or(|n| header.next_offset() <= n);
                        let rel_fits = header.next_offset() - base_offset <= u64::from(u32::MAX);
                        if !in_order || !in_range || !rel_fits {
                            break Stop::Invalid("batch offset out of sequence");
                        }
                        segment.note_batch(&header, position, interval);
                    }
                    Err(s) => break s,
                }
            }
        };
        if segment.size < len {
            tracing::warn!(
                path = %path.display(),
                valid_bytes = segment.size,
                file_bytes = len,
                reason = ?stop,
                "truncating invalid segment tail"
            );
            file.set_len(segment.size).map_err(LogError::io(&path))?;
            file.sync_all().map_err(LogError::io(&path))?;
        }
        segment.file = FileSlot::with(file, true);
        Ok(Some(segment))
    }

    /// Opens the file and loads the indexes of a sealed segment, rebuilding damaged ones.
    pub fn ensure_open(&mut self, interval: u32) -> Result<(), LogError> {
        if self.indexes.is_some() {
            return Ok(());
        }
        let offsets_path = index_path(&self.path, "index");
        let times_path = index_path(&self.path, "timeindex");
        let seal = SealInfo {
            next_rel: (self.next_offset - self.base_offset) as u32,
            size: self.size,
            max_timestamp_ms: self.max_timestamp_ms,
        };
        let parsed = match (std::fs::read(&offsets_path), std::fs::read(&times_path)) {
            (Ok(o), Ok(t)) => index::parse_sealed(&o, &t, seal),
            _ => None,
        };
        match parsed {
            Some(indexes) => {
                self.file.get(&self.path)?;
                self.indexes = Some(indexes);
            }
            None => {
                tracing::warn!(path = %self.path.display(), "segment index damaged; rebuilding");
                let dir = self.path.parent().unwrap_or(Path::new("."));
                let rebuilt =
                    Segment::recover(dir, self.base_offset, 0, interval, Some(self.next_offset))?;
                let Some(mut rebuilt) = rebuilt else {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: 0,
                        reason: "segment header damaged",
                    });
                };
                rebuilt.seal()?;
                self.next_offset = rebuilt.next_offset;
                self.size = rebuilt.size;
                self.max_timestamp_ms = rebuilt.max_timestamp_ms;
                self.file = rebuilt.file;
                self.indexes = rebuilt.indexes;
            }
        }
        Ok(())
    }

    /// Closes the file and drops the loaded indexes of a sealed segment.
    pub fn close(&mut self) {
        self.file.close();
        self.indexes = None;
    }

    /// Whether the indexes are loaded (for the per-log bound on open segments; the file
    /// itself is under the process-wide budget).
    pub fn is_open(&self) -> bool {
        self.indexes.is_some()
    }

    pub fn file(&self) -> Result<Arc<File>, LogError> {
        self.file.get(&self.path)
    }

    /// Position of the first batch holding `offset` or later, scanning from the index.
    fn locate(&self, offset: u64, end: u64) -> Result<Option<u64>, LogError> {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let start = self
            .indexes
            .as_ref()
            .map_or(FILE_HEADER_BYTES, |i| i.position_for(rel));
        let file = self.file()?;
        let mut scanner = Scanner::new(&file, &self.path, start, end);
        loop {
            match scanner.next(false)? {
                Ok((position, header, _)) if header.next_offset() > offset => {
                    return Ok(Some(position));
                }
                Ok(_) => continue,
                Err(Stop::End) => return Ok(None),
                Err(Stop::Invalid(reason)) => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: scanner.position,
                        reason,
                    });
                }
            }
        }
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` of frames (always at
    /// least one batch), reading no further than `end`. Every batch's CRC is checked.
    pub fn read(&self, offset: u64, max_bytes: usize, end: u64) -> Result<Vec<Batch>, LogError> {
        let Some(start) = self.locate(offset, end)? else {
            return Ok(Vec::new());
        };
        let file = self.file()?;
        let corrupt = |position, reason| LogError::Corrupt {
            path: self.path.clone(),
            position,
            reason,
        };
        // The first batch's length decides how much to read in one pread.
        let mut head = [0u8; BATCH_HEADER_BYTES];
        file.read_exact_at(&mut head, start)
            .map_err(LogError::io(&self.path))?;
        let first = BatchHeader::decode(&head);
        let want = (max_bytes as u64).max(first.frame_bytes()).min(end - start);
        if first.frame_bytes() > want {
            return Err(corrupt(start, "torn batch payload"));
        }
        let mut buf = vec![0u8; want as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(LogError::io(&self.path))?;
        let buf = Bytes::from(buf);
        let mut batches = Vec::new();
        let mut at = 0usize;
        while at + BATCH_HEADER_BYTES <= buf.len() {
            let mut raw = [0u8; BATCH_HEADER_BYTES];
            if let Some(src) = buf.get(at..at + BATCH_HEADER_BYTES) {
                raw.copy_from_slice(src);
            }
            let header = BatchHeader::decode(&raw);
            let frame_end = at + header.frame_bytes() as usize;
            if frame_end > buf.len() {
                break;
            }
            let payload = buf.slice(at + BATCH_HEADER_BYTES..frame_end);
            if header.compute_crc(&payload) != header.crc {
                return Err(corrupt(start + at as u64, "crc mismatch"));
            }
            batches.push(Batch {
                base_offset: header.base_offset,
                record_count: header.record_count,
                max_timestamp_ms: header.max_timestamp_ms,
                payload,
            });
            at = frame_end;
        }
        Ok(batches)
    }

    /// File ranges of whole batch payloads from the one holding `offset`, up to
    /// `max_bytes` of payload (always at least one), for zero-copy sends.
    pub fn payload_ranges(
        &self,
        offset: u64,
        max_bytes: usize,
        end: u64,
    ) -> Result<Vec<(u64, BatchHeader)>, LogError> {
        let Some(start) = self.locate(offset, end)? else {
            return Ok(Vec::new());
        };
        let file = self.file()?;
        let mut scanner = Scanner::new(&file, &self.path, start, end);
        let mut out = Vec::new();
        let mut total = 0u64;
        while let Ok((position, header, _)) = scanner.next(false)? {
            if !out.is_empty() && total + u64::from(header.len) > max_bytes as u64 {
                break;
            }
            total += u64::from(header.len);
            out.push((position + BATCH_HEADER_BYTES as u64, header));
        }
        Ok(out)
    }

    /// Base offset of the first batch at or after `from` whose timestamp is at least
    /// `timestamp_ms`.
    pub fn find_time(
        &self,
        timestamp_ms: i64,
        from: u64,
        end: u64,
    ) -> Result<Option<u64>, LogError> {
        let rel = self
            .indexes
            .as_ref()
            .map_or(0, |i| i.rel_for_time(timestamp_ms));
        let scan_from = self.base_offset + u64::from(rel);
        let start = self
            .indexes
            .as_ref()
            .map_or(FILE_HEADER_BYTES, |i| i.position_for(rel));
        let file = self.file()?;
        let mut scanner = Scanner::new(&file, &self.path, start, end);
        while let Ok((_, header, _)) = scanner.next(false)? {
            if header.next_offset() > from.max(scan_from) && header.max_timestamp_ms >= timestamp_ms
            {
                return Ok(Some(header.base_offset.max(from)));
            }
        }
        Ok(None)
    }
}

/// Reads the seal of a sealed segment from the last entries of its index files.
fn read_seal(path: &Path) -> Result<Option<SealInfo>, LogError> {
    let tail = |ext: &str, entry: u64| -> Option<(Vec<u8>, u64)> {
        let p = index_path(path, ext);
        let file = File::open(&p).ok()?;
        let len = file.metadata().ok()?.len();
        let mut head = [0u8; FILE_HEADER_BYTES as usize];
        file.read_exact_at(&mut head, 0).ok()?;
        let magic = if ext == "index" {
            crate::format::INDEX_MAGIC
        } else {
            crate::format::TIME_INDEX_MAGIC
        };
        if !check_file_header(&head, magic) || len < FILE_HEADER_BYTES + entry {
            return None;
        }
        let mut buf = vec![0u8; entry as usize];
        file.read_exact_at(&mut buf, len - entry).ok()?;
        Some((buf, len))
    };
    let (Some((o, o_len)), Some((t, t_len))) = (
        tail("index", INDEX_ENTRY_BYTES),
        tail("timeindex", TIME_ENTRY_BYTES),
    ) else {
        return Ok(None);
    };
    Ok(index::seal_from_tails(&o, o_len, &t, t_len))
}

/// Deletes a segment's `.log`, `.index` and `.timeindex` files; missing ones are fine.
pub fn remove_segment_files(path: &Path) -> Result<(), LogError> {
    for p in [
        path.to_path_buf(),
        index_path(path, "index"),
        index_path(path, "timeindex"),
    ] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::Io { path: p, source: e }),
        }
    }
    Ok(())
}
