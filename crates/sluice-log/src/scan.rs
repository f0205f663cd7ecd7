//! Sequential reading of framed batches from a segment file through a bounded buffer.
//! Used by recovery (verify everything), time lookups and reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sluice_core::limits::BATCH_BYTES_MAX;

use crate::error::LogError;
use crate::format::{BATCH_HEADER_BYTES, BatchHeader};

/// Bytes read by a scan's first chunk: a lookup from a sparse index entry finds its batch
/// within about one index interval, so it should not pay for more.
const SCAN_CHUNK_FIRST: usize = 8 * 1024;
/// Largest chunk: chunks double up to this as a scan goes on (recovery, long reads).
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// A batch found by a scan: its position, header and payload.
pub type Found<'b> = (u64, BatchHeader, &'b [u8]);

/// Why a scan stopped before the end of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Reached the end of the range cleanly.
    End,
    /// The bytes at this position are not a whole, valid batch.
    Invalid(&'static str),
}

/// Reads bytes `[start, end)` of a file in chunks, handing out whole batches.
pub struct Scanner<'a> {
    file: &'a File,
    path: &'a Path,
    buf: Vec<u8>,
    buf_start: u64,
    pub position: u64,
    end: u64,
    /// Size of the next chunk read.
    chunk: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(file: &'a File, path: &'a Path, start: u64, end: u64) -> Self {
        Scanner {
            file,
            path,
            buf: Vec::new(),
            buf_start: start,
            position: start,
            end,
            chunk: SCAN_CHUNK_FIRST,
        }
    }

    /// Makes `[position, position + len)` available in the buffer.
    fn fill(&mut self, len: usize) -> Result<(), LogError> {
        let have_from = self.position.saturating_sub(self.buf_start) as usize;
        if self.position >= self.buf_start && have_from + len <= self.buf.len() {
            return Ok(());
        }
        let want = len.max(self.chunk).min((self.end - self.position) as usize);
        self.chunk = (self.chunk * 2).min(SCAN_CHUNK_BYTES);
        // Only growth is zero-filled; the read overwrites all of it.
        self.buf.resize(want, 0);
        self.file
            .read_exact_at(&mut self.buf, self.position)
            .map_err(LogError::io(self.path))?;
        self.buf_start = self.position;
        Ok(())
    }

    /// The next batch header and payload, with its CRC checked when `verify` is set.
    /// `Ok(Err(stop))` when there is no further valid batch.
    pub fn next(&mut self, verify: bool) -> Result<Result<Found<'_>, Stop>, LogError> {
        let remaining = self.end.saturating_sub(self.position);
        if remaining == 0 {
            return Ok(Err(Stop::End));
        }
        if remaining < BATCH_HEADER_BYTES as u64 {
            return Ok(Err(Stop::Invalid("torn batch header")));
        }
        self.fill(BATCH_HEADER_BYTES)?;
        let at = (self.position - self.buf_start) as usize;
        let mut raw = [0u8; BATCH_HEADER_BYTES];
        if let Some(src) = self.buf.get(at..at + BATCH_HEADER_BYTES) {
            raw.copy_from_slice(src);
        }
        let header = BatchHeader::decode(&raw);
        if header.len > BATCH_BYTES_MAX {
            return Ok(Err(Stop::Invalid("batch length over the limit")));
        }
        if header.record_count == 0 {
            return Ok(Err(Stop::Invalid("batch with no records")));
        }
        let frame = header.frame_bytes();
        if frame > remaining {
            return Ok(Err(Stop::Invalid("torn batch payload")));
        }
        self.fill(frame as usize)?;
        let at = (self.position - self.buf_start) as usize;
        let payload = match self.buf.get(at + BATCH_HEADER_BYTES..at + frame as usize) {
            Some(p) => p,
            None => return Ok(Err(Stop::Invalid("torn batch payload"))),
        };
        if verify && header.compute_crc(payload) != header.crc {
            return Ok(Err(Stop::Invalid("crc mismatch")));
        }
        let position = self.position;
        self.position += frame;
        Ok(Ok((position, header, payload)))
    }
}
