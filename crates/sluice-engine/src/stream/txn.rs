//! A partition's transactions, as Kafka's producer state and transaction index keep them:
//! where each producer's open transaction starts (which bounds the last stable offset) and
//! the aborted transactions a `read_committed` reader must skip.
//!
//! The log is the truth: the state is a function of the batches read so far. A snapshot
//! (`txn-state` in the partition directory) records it up to an offset, and opening scans
//! the log from there. A partition without the file has never held a transactional batch
//! and is not scanned.
//!
//! Snapshot, big-endian: `magic "SLTXN001" | scanned_to u64 | ongoing u32 | (producer_id
//! i64 | first u64)* | aborted u32 | (producer_id i64 | first u64 | last u64)* | crc32c u32`
//! (of everything before it).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::batch::TxnFields;

pub const SNAPSHOT_FILE: &str = "txn-state";
const MAGIC: &[u8; 8] = b"SLTXN001";

/// An aborted transaction: its producer, first offset and the offset of its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted {
    pub producer_id: i64,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TxnIndex {
    /// Producers with an open transaction here, and its first offset.
    ongoing: HashMap<i64, u64>,
    /// In the order of their markers, so by `last`.
    aborted: Vec<Aborted>,
    /// The state covers the log below this offset.
    pub scanned_to: u64,
    /// Whether the snapshot file exists (the partition has held transactions).
    pub persisted: bool,
    /// The log offset the snapshot on disk covers (not stored in it).
    pub saved_to: u64,
}

impl TxnIndex {
    /// An empty state for a log to be read from its start, whose snapshot is to be
    /// rewritten.
    pub fn rebuilt() -> TxnIndex {
        TxnIndex {
            persisted: true,
            saved_to: u64::MAX,
            ..TxnIndex::default()
        }
    }

    /// Applies one stored batch at `base_offset`.
    pub fn apply(&mut self, fields: TxnFields, base_offset: u64, next_offset: u64) {
        if fields.transactional {
            match fields.marker {
                None => {
                    self.ongoing
                        .entry(fields.producer_id)
                        .or_insert(base_offset);
                }
                Some(commit) => {
                    if let Some(first) = self.ongoing.remove(&fields.producer_id)
                        && !commit
                    {
                        self.aborted.push(Aborted {
                            producer_id: fields.producer_id,
                            first,
                            last: base_offset,
                        });
                    }
                }
            }
        }
        self.scanned_to = self.scanned_to.max(next_offset);
    }

    /// The last stable offset: the first offset of the oldest open transaction, or `end`.
    pub fn last_stable(&self, end: u64) -> u64 {
        self.ongoing.values().copied().min().unwrap_or(end).min(end)
    }

    pub fn is_ongoing(&self, producer_id: i64) -> bool {
        self.ongoing.contains_key(&producer_id)
    }

    pub fn has_transactions(&self) -> bool {
        self.persisted || !self.ongoing.is_empty() || !self.aborted.is_empty()
    }

    /// The aborted transactions a reader of `[from, to)` must know: those whose marker is
    /// at or after `from` and that began before `to`, as `(producer_id, first_offset)`.
    pub fn aborted_between(&self, from: u64, to: u64, out: &mut Vec<(i64, i64)>) {
        out.clear();
        let start = self.aborted.partition_point(|a| a.last < from);
        for a in self.aborted.get(start..).unwrap_or_default() {
            if a.first < to {
                out.push((a.producer_id, a.first as i64));
            }
        }
    }

    /// Forgets aborted transactions wholly below the log start.
    pub fn forget_below(&mut self, start: u64) {
        let keep_from = self.aborted.partition_point(|a| a.last < start);
        if keep_from > 0 {
            self.aborted.drain(..keep_from);
        }
    }

    pub fn aborted(&self) -> &[Aborted] {
        &self.aborted
    }

    pub fn aborted_count(&self) -> usize {
        self.aborted.len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + self.ongoing.len() * 16 + self.aborted.len() * 24);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.scanned_to.to_be_bytes());
        let mut ongoing: Vec<_> = self.ongoing.iter().collect();
        ongoing.sort();
        out.extend_from_slice(&(ongoing.len() as u32).to_be_bytes());
        for (pid, first) in ongoing {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
        }
        out.extend_from_slice(&(self.aborted.len() as u32).to_be_bytes());
        for a in &self.aborted {
            out.extend_from_slice(&a.producer_id.to_be_bytes());
            out.extend_from_slice(&a.first.to_be_bytes());
            out.extend_from_slice(&a.last.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// `None` for a file that is torn or not a snapshot.
    pub fn decode(bytes: &[u8]) -> Option<TxnIndex> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return None;
        }
        let mut r = body.strip_prefix(MAGIC.as_slice())?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, rest) = r.split_at_checked(n)?;
            r = rest;
            Some(head)
        };
        let u64_of = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
        let scanned_to = u64_of(take(8)?)?;
        let mut index = TxnIndex {
            scanned_to,
            persisted: true,
            saved_to: scanned_to,
            ..TxnIndex::default()
        };
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..n {
            let pid = u64_of(take(8)?)? as i64;
            let first = u64_of(take(8)?)?;
            index.ongoing.insert(pid, first);
        }
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..n {
            index.aborted.push(Aborted {
                producer_id: u64_of(take(8)?)? as i64,
                first: u64_of(take(8)?)?,
                last: u64_of(take(8)?)?,
            });
        }
        Some(index)
    }
}

/// What a partition directory holds.
#[derive(Debug)]
pub enum Snapshot {
    /// No snapshot: the partition never held a transaction.
    None,
    Read(TxnIndex),
    /// Torn or unreadable: the caller reads the whole log.
    Unreadable,
}

/// Reads the snapshot in `dir`.
pub fn load(dir: &Path) -> Snapshot {
    match fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => TxnIndex::decode(&bytes).map_or(Snapshot::Unreadable, Snapshot::Read),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::None,
        Err(_) => Snapshot::Unreadable,
    }
}

/// Writes a snapshot (encoded by [`TxnIndex::encode`]) crash-safely: a temporary file,
/// fsynced, renamed over the old one, and the directory fsynced.
pub fn save(dir: &Path, encoded: &[u8]) -> std::io::Result<()> {
    let path: PathBuf = dir.join(SNAPSHOT_FILE);
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(encoded)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pid: i64) -> TxnFields {
        TxnFields {
            producer_id: pid,
            producer_epoch: 0,
            transactional: true,
            marker: None,
        }
    }

    fn marker(pid: i64, commit: bool) -> TxnFields {
        TxnFields {
            marker: Some(commit),
            ..data(pid)
        }
    }

    #[test]
    fn open_transactions_bound_the_stable_offset_and_aborts_are_indexed() {
        let mut t = TxnIndex::default();
        t.apply(data(1), 0, 3);
        t.apply(data(2), 3, 5);
        t.apply(data(1), 5, 6);
        assert_eq!(t.last_stable(6), 0);
        t.apply(marker(1, true), 6, 7);
        assert_eq!(t.last_stable(7), 3);
        t.apply(marker(2, false), 7, 8);
        assert_eq!(t.last_stable(8), 8);
        let mut out = Vec::new();
        t.aborted_between(0, 8, &mut out);
        assert_eq!(out, vec![(2, 3)]);
        t.aborted_between(8, 20, &mut out);
        assert!(out.is_empty(), "the abort marker is below the read");
        t.aborted_between(0, 3, &mut out);
        assert!(out.is_empty(), "the transaction starts after the read");
        // A marker for a producer without an open transaction changes nothing.
        t.apply(marker(9, false), 8, 9);
        assert_eq!(t.aborted_count(), 1);
        let back = TxnIndex::decode(&t.encode()).unwrap();
        assert_eq!(back.scanned_to, 9);
        assert_eq!(back.last_stable(9), 9);
        let mut torn = t.encode();
        torn.truncate(torn.len() - 1);
        assert_eq!(TxnIndex::decode(&torn), None);
        t.forget_below(8);
        assert_eq!(t.aborted_count(), 0);
    }
}
