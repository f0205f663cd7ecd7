//! Rewriting a sealed segment (log compaction). The new contents are written beside the
//! segment as `<base>.cleaned` and fsynced, without the log's lock; the swap then drops
//! the old indexes, renames the new file over the old one, fsyncs the directory and
//! writes the new indexes. A crash before the rename leaves the old segment (the
//! `.cleaned` file is deleted at the next open); after it, the new one, whose indexes are
//! rebuilt if they were not written. Offsets do not move: batches keep their base offsets
//! and some are left out, which leaves gaps (also at the end of a segment, or a whole
//! segment empty); reads step over them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::LogError;
use crate::files::FileSlot;
use crate::format::{BatchHeader, FILE_HEADER_BYTES, SEGMENT_MAGIC, file_header};
use crate::log::{Batch, Log};
use crate::scan::{Scanner, Stop};
use crate::segment::Segment;

pub const CLEANED_EXT: &str = "cleaned";

/// A sealed segment as the cleaner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedInfo {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size: u64,
    pub max_timestamp_ms: i64,
    pub path: PathBuf,
}

/// Calls `f` with every batch of the segment file at `path`, in order, each checked
/// against its CRC; stops early when `f` returns false. Reads through a handle of its own,
/// so the log stays unlocked (sealed segments do not change, and a deleted one stays
/// readable through an open handle).
pub fn read_segment(path: &Path, mut f: impl FnMut(Batch) -> bool) -> Result<(), LogError> {
    let file = File::open(path).map_err(LogError::io(path))?;
    let len = file.metadata().map_err(LogError::io(path))?.len();
    let mut scanner = Scanner::new(&file, path, FILE_HEADER_BYTES, len);
    loop {
        match scanner.next(true)? {
            Ok((_, header, payload)) => {
                let batch = Batch {
                    base_offset: header.base_offset,
                    record_count: header.record_count,
                    max_timestamp_ms: header.max_timestamp_ms,
                    payload: Bytes::copy_from_slice(payload),
                };
                if !f(batch) {
                    return Ok(());
                }
            }
            Err(Stop::End) => return Ok(()),
            Err(Stop::Invalid(reason)) => {
                return Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    position: scanner.position,
                    reason,
                });
            }
        }
    }
}

/// The new contents of one sealed segment, being written.
#[derive(Debug)]
pub struct Rewrite {
    segment: Segment,
    tmp: PathBuf,
    file: File,
    interval: u32,
}

impl Rewrite {
    /// Appends a batch; base offsets must increase, and may leave gaps.
    pub fn append(
        &mut self,
        base_offset: u64,
        record_count: u32,
        max_timestamp_ms: i64,
        payload: &[u8],
    ) -> Result<(), LogError> {
        let header =
            BatchHeader::from_parts(base_offset, record_count, max_timestamp_ms, &[payload]);
        let position = self.segment.size;
        let mut frame = Vec::with_capacity(crate::format::BATCH_HEADER_BYTES + payload.len());
        frame.extend_from_slice(&header.encode());
        frame.extend_from_slice(payload);
        self.file
            .write_all_at(&frame, position)
            .map_err(LogError::io(&self.tmp))?;
        self.segment.note_batch(&header, position, self.interval);
        Ok(())
    }

    /// Bytes written so far, file header included.
    pub fn size(&self) -> u64 {
        self.segment.size
    }

    /// Makes the new contents durable; the swap puts them in place.
    pub fn finish(self) -> Result<Rewritten, LogError> {
        self.file.sync_all().map_err(LogError::io(&self.tmp))?;
        Ok(Rewritten {
            segment: self.segment,
            tmp: self.tmp,
            file: self.file,
        })
    }
}

/// A finished rewrite, ready for [`Log::swap_rewritten`].
#[derive(Debug)]
pub struct Rewritten {
    segment: Segment,
    tmp: PathBuf,
    file: File,
}

impl Rewritten {
    pub fn base_offset(&self) -> u64 {
        self.segment.base_offset
    }

    /// Drops the new contents.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The `.cleaned` file of the segment at `path` (`<base>.log`).
pub fn cleaned_path(path: &Path) -> PathBuf {
    path.with_extension(CLEANED_EXT)
}

/// Whether a file name is a rewrite's `.cleaned` file.
pub fn is_leftover(name: &str) -> bool {
    name.ends_with(".cleaned")
}

impl Log {
    /// The sealed segments, oldest first.
    pub fn sealed_info(&self) -> Vec<SealedInfo> {
        self.sealed
            .iter()
            .map(|s| SealedInfo {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                max_timestamp_ms: s.max_timestamp_ms,
                path: s.path.clone(),
            })
            .collect()
    }

    /// Starts new contents for the sealed segment `info`.
    pub fn start_rewrite(&self, info: &SealedInfo) -> Result<Rewrite, LogError> {
        let tmp = cleaned_path(&info.path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(LogError::io(&tmp))?;
        file.write_all_at(&file_header(SEGMENT_MAGIC), 0)
            .map_err(LogError::io(&tmp))?;
        let segment = Segment::empty(info.path.clone(), info.base_offset, 0, FileSlot::new(false));
        Ok(Rewrite {
            segment,
            tmp,
            file,
            interval: self.config.index_interval_bytes,
        })
    }

    /// Puts finished new contents in place of their segment. `Ok(false)`: the segment is
    /// gone (retention), or the new contents reach past its end; they are dropped.
    pub fn swap_rewritten(&mut self, new: Rewritten) -> Result<bool, LogError> {
        let Rewritten {
            mut segment,
            tmp,
            file,
        } = new;
        let at = self
            .sealed
            .iter()
            .position(|s| s.base_offset == segment.base_offset);
        let Some(at) = at.filter(|&i| {
            self.sealed
                .get(i)
                .is_some_and(|s| segment.next_offset <= s.next_offset)
        }) else {
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        };
        let path = segment.path.clone();
        for ext in ["index", "timeindex"] {
            let p = path.with_extension(ext);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::Io { path: p, source: e }),
            }
        }
        std::fs::rename(&tmp, &path).map_err(LogError::io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(LogError::io(&self.dir))?;
        segment.seal()?;
        // Reopened lazily, from the files just written.
        drop(file);
        segment.indexes = None;
        segment.file.close();
        if let Some(old) = self.sealed.get_mut(at) {
            segment.last_used = old.last_used;
            *old = segment;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;
    use sluice_core::clock::ManualClock;
    use std::sync::Arc;

    fn open(dir: &Path) -> Log {
        Log::open(dir, LogConfig::default(), Arc::new(ManualClock::new(0))).unwrap()
    }

    /// Every batch's `(base offset, payload)` from `offset` on.
    fn all(log: &mut Log, offset: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = offset;
        loop {
            let batches = log.read(at, 1 << 20).unwrap();
            let Some(last) = batches.last() else { break };
            at = last.next_offset();
            out.extend(batches.iter().map(|b| (b.base_offset, b.payload.to_vec())));
        }
        out
    }

    /// Two segments of four 2-offset batches; the first is rewritten keeping batch 2 only,
    /// leaving gaps (one at its end) that reads step over, before and after a reopen.
    fn rewritten_log(dir: &Path) -> Log {
        let mut log = open(dir);
        for i in 0..8u8 {
            log.append(&[i; 10], 2, 0).unwrap();
            if i == 3 {
                log.roll().unwrap();
            }
        }
        log.roll().unwrap();
        log
    }

    #[test]
    fn a_rewritten_segment_keeps_its_offsets_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = rewritten_log(dir.path());
        let first = log.sealed_info().remove(0);
        assert_eq!((first.base_offset, first.next_offset), (0, 8));
        let mut rw = log.start_rewrite(&first).unwrap();
        read_segment(&first.path, |b| {
            if b.base_offset == 2 {
                rw.append(
                    b.base_offset,
                    b.record_count,
                    b.max_timestamp_ms,
                    &b.payload,
                )
                .unwrap();
            }
            true
        })
        .unwrap();
        let done = rw.finish().unwrap();
        assert!(log.swap_rewritten(done).unwrap());
        let expect: Vec<(u64, Vec<u8>)> = std::iter::once((2, vec![1u8; 10]))
            .chain((4..8u8).map(|i| (u64::from(i) * 2, vec![i; 10])))
            .collect();
        assert_eq!(all(&mut log, 0), expect);
        // A read from a gap starts at the next batch, in the next segment here.
        assert_eq!(all(&mut log, 4)[0].0, 8);
        assert_eq!(all(&mut log, 0).len(), 5);
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(all(&mut log, 0), expect);
        assert_eq!(log.next_offset(), 16);
    }

    /// A crash before the rename leaves the old segment and a `.cleaned` file, deleted at
    /// open; a crash after it, before the indexes are written, leaves the new segment,
    /// whose indexes are rebuilt.
    #[test]
    fn a_crash_at_any_step_of_a_swap_reopens_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = rewritten_log(dir.path());
        let first = log.sealed_info().remove(0);
        let before = all(&mut log, 0);
        let mut rw = log.start_rewrite(&first).unwrap();
        rw.append(6, 2, 0, &[3; 10]).unwrap();
        let done = rw.finish().unwrap();
        drop(done);
        drop(log);
        assert!(cleaned_path(&first.path).exists());
        let mut log = open(dir.path());
        assert!(!cleaned_path(&first.path).exists());
        assert_eq!(all(&mut log, 0), before);
        // After the rename, with the old indexes gone and no new ones.
        let mut rw = log.start_rewrite(&first).unwrap();
        rw.append(6, 2, 0, &[3; 10]).unwrap();
        rw.finish().unwrap();
        drop(log);
        for ext in ["index", "timeindex"] {
            std::fs::remove_file(first.path.with_extension(ext)).unwrap();
        }
        std::fs::rename(cleaned_path(&first.path), &first.path).unwrap();
        let mut log = open(dir.path());
        let got = all(&mut log, 0);
        assert_eq!(got.first(), Some(&(6, vec![3; 10])));
        assert_eq!(got.len(), 5);
        assert_eq!(log.next_offset(), 16);
    }
}
