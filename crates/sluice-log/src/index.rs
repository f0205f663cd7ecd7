//! Sparse offset index and time index of one segment, held in memory and written to
//! `.index` / `.timeindex` files when the segment is sealed.
//!
//! A sealed segment's offset index ends with an end entry `(next_offset - base, size)` and
//! its time index with a seal entry `(max_timestamp, next_offset - base)`. Both let a
//! restart trust a sealed segment without scanning it: if either is missing or disagrees
//! with the segment file, the segment is rescanned and its indexes rebuilt.

use crate::format::{
    FILE_HEADER_BYTES, INDEX_ENTRY_BYTES, INDEX_MAGIC, TIME_ENTRY_BYTES, TIME_INDEX_MAGIC,
    check_file_header, file_header, u32_at, u64_at,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset relative to the segment's base offset.
    pub rel: u32,
    /// Byte position of the batch header in the segment file.
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest batch timestamp at or before the batch at `rel`.
    pub timestamp_ms: i64,
    pub rel: u32,
}

#[derive(Debug, Default, Clone)]
pub struct Indexes {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl Indexes {
    /// Position to start scanning from to find relative offset `rel`.
    pub fn position_for(&self, rel: u32) -> u64 {
        let i = self.offsets.partition_point(|e| e.rel <= rel);
        match i.checked_sub(1).and_then(|i| self.offsets.get(i)) {
            Some(e) => u64::from(e.position),
            None => FILE_HEADER_BYTES,
        }
    }

    /// Relative offset to start scanning from to find the first batch whose timestamp is
    /// at least `timestamp_ms`: every batch before it is older.
    pub fn rel_for_time(&self, timestamp_ms: i64) -> u32 {
        let i = self
            .times
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        match i.checked_sub(1).and_then(|i| self.times.get(i)) {
            Some(e) => e.rel,
            None => 0,
        }
    }

    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.offsets.len() * 8);
        out.extend_from_slice(&file_header(INDEX_MAGIC));
        for e in &self.offsets {
            out.extend_from_slice(&e.rel.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
        }
        seal_body_crc(&mut out);
        out
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.times.len() * 12);
        out.extend_from_slice(&file_header(TIME_INDEX_MAGIC));
        for e in &self.times {
            out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&e.rel.to_le_bytes());
        }
        seal_body_crc(&mut out);
        out
    }
}

/// Index files keep the CRC32C of their entries in the header's reserved word, so a
/// flipped bit in a sealed index is caught when it is loaded.
fn seal_body_crc(file: &mut [u8]) {
    let crc = crc32c::crc32c(file.get(FILE_HEADER_BYTES as usize..).unwrap_or_default());
    if let Some(slot) = file.get_mut(12..16) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
}

fn body_crc_ok(file: &[u8]) -> bool {
    let body = file.get(FILE_HEADER_BYTES as usize..).unwrap_or_default();
    u32_at(file, 12) == crc32c::crc32c(body)
}

/// What a sealed segment's index files say about it, read from their last entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInfo {
    pub next_rel: u32,
    pub size: u64,
    pub max_timestamp_ms: i64,
}

/// Reads the seal from the tails of both index files; `None` if either is damaged.
pub fn seal_from_tails(
    offsets: &[u8],
    offsets_len: u64,
    times: &[u8],
    times_len: u64,
) -> Option<SealInfo> {
    let offsets_ok = offsets_len >= FILE_HEADER_BYTES + INDEX_ENTRY_BYTES
        && (offsets_len - FILE_HEADER_BYTES).is_multiple_of(INDEX_ENTRY_BYTES);
    let times_ok = times_len >= FILE_HEADER_BYTES + TIME_ENTRY_BYTES
        && (times_len - FILE_HEADER_BYTES).is_multiple_of(TIME_ENTRY_BYTES);
    if !offsets_ok || !times_ok || offsets.len() != 8 || times.len() != 12 {
        return None;
    }
    let next_rel = u32_at(offsets, 0);
    let size = u64::from(u32_at(offsets, 4));
    let max_timestamp_ms = u64_at(times, 0) as i64;
    if u32_at(times, 8) != next_rel || next_rel == 0 {
        return None;
    }
    Some(SealInfo {
        next_rel,
        size,
        max_timestamp_ms,
    })
}

/// Parses whole index files of a sealed segment and checks them against its seal;
/// `None` if anything is out of order or out of bounds.
pub fn parse_sealed(offsets: &[u8], times: &[u8], seal: SealInfo) -> Option<Indexes> {
    if !check_file_header(offsets, INDEX_MAGIC)
        || !check_file_header(times, TIME_INDEX_MAGIC)
        || !body_crc_ok(offsets)
        || !body_crc_ok(times)
    {
        return None;
    }
    let header = FILE_HEADER_BYTES as usize;
    let offset_body = offsets.get(header..)?;
    let time_body = times.get(header..)?;
    if offset_body.len() % 8 != 0 || time_body.len() % 12 != 0 {
        return None;
    }
    let mut index = Indexes::default();
    let mut last = OffsetEntry {
        rel: 0,
        position: 0,
    };
    for chunk in offset_body.chunks_exact(8) {
        let e = OffsetEntry {
            rel: u32_at(chunk, 0),
            position: u32_at(chunk, 4),
        };
        let first = index.offsets.is_empty();
        if u64::from(e.position) < FILE_HEADER_BYTES
            || u64::from(e.position) > seal.size
            || (!first && (e.rel <= last.rel || e.position <= last.position))
        {
            return None;
        }
        index.offsets.push(e);
        last = e;
    }
    if last.rel != seal.next_rel || u64::from(last.position) != seal.size {
        return None;
    }
    let mut last_ts = i64::MIN;
    let mut last_rel = 0u32;
    for chunk in time_body.chunks_exact(12) {
        let e = TimeEntry {
            timestamp_ms: u64_at(chunk, 0) as i64,
            rel: u32_at(chunk, 8),
        };
        let first = index.times.is_empty();
        if e.rel > seal.next_rel || (!first && (e.timestamp_ms < last_ts || e.rel < last_rel)) {
            return None;
        }
        last_ts = e.timestamp_ms;
        last_rel = e.rel;
        index.times.push(e);
    }
    if last_ts != seal.max_timestamp_ms {
        return None;
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Indexes, SealInfo) {
        let index = Indexes {
            offsets: vec![
                OffsetEntry {
                    rel: 0,
                    position: 16,
                },
                OffsetEntry {
                    rel: 10,
                    position: 4000,
                },
                OffsetEntry {
                    rel: 20,
                    position: 8000,
                },
            ],
            times: vec![
                TimeEntry {
                    timestamp_ms: 5,
                    rel: 0,
                },
                TimeEntry {
                    timestamp_ms: 9,
                    rel: 10,
                },
                TimeEntry {
                    timestamp_ms: 9,
                    rel: 20,
                },
            ],
        };
        (
            index,
            SealInfo {
                next_rel: 20,
                size: 8000,
                max_timestamp_ms: 9,
            },
        )
    }

    #[test]
    fn position_lookup_picks_last_entry_at_or_before_the_offset() {
        let (index, _) = sample();
        assert_eq!(index.position_for(0), 16);
        assert_eq!(index.position_for(9), 16);
        assert_eq!(index.position_for(10), 4000);
        assert_eq!(index.position_for(15), 4000);
        assert_eq!(Indexes::default().position_for(3), FILE_HEADER_BYTES);
    }

    #[test]
    fn time_lookup_starts_at_last_entry_older_than_the_target() {
        let (index, _) = sample();
        assert_eq!(index.rel_for_time(0), 0);
        assert_eq!(index.rel_for_time(5), 0);
        assert_eq!(index.rel_for_time(6), 0);
        assert_eq!(index.rel_for_time(10), 20);
    }

    #[test]
    fn sealed_indexes_round_trip_and_reject_damage() {
        let (index, seal) = sample();
        let offsets = index.encode_offsets();
        let times = index.encode_times();
        let parsed = parse_sealed(&offsets, &times, seal);
        assert_eq!(parsed.map(|p| p.offsets), Some(index.offsets.clone()));
        let tail_o = &offsets[offsets.len() - 8..];
        let tail_t = &times[times.len() - 12..];
        assert_eq!(
            seal_from_tails(tail_o, offsets.len() as u64, tail_t, times.len() as u64),
            Some(seal)
        );
        // Cut at an entry boundary: the seal entry is gone.
        let cut = &offsets[..offsets.len() - 8];
        assert!(parse_sealed(cut, &times, seal).is_none());
        // Cut inside an entry.
        assert!(
            seal_from_tails(tail_o, offsets.len() as u64 - 3, tail_t, times.len() as u64).is_none()
        );
        let mut flipped = offsets.clone();
        flipped[20] ^= 0xff;
        assert!(parse_sealed(&flipped, &times, seal).is_none());
    }
}
