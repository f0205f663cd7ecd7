//! Log compaction (Kafka's log cleaner) for topics with `cleanup.policy` `compact`: the
//! latest record of every key stays, older ones go, and a tombstone (a null value) goes
//! once it is older than `delete.retention.ms`.
//!
//! A clean reads the dirty part of the log (after the last clean, up to the first
//! segment that may not be cleaned yet) into a map of key hash → latest offset, then
//! rewrites the sealed segments from the log start up to there, keeping the records the
//! map does not supersede. Each segment is rewritten beside itself and swapped in under
//! the partition lock (`sluice_log::Rewrite`): a crash at any point leaves every segment
//! whole, old or new, so every latest value survives. Offsets never move: what goes leaves
//! a gap, which readers step over.
//!
//! Never cleaned: the active segment, anything at or past the last stable offset (open
//! transactions), and segments with records newer than `min.compaction.lag.ms`. A log is
//! cleaned when its dirty bytes are at least `min.cleanable.dirty.ratio` of the cleanable
//! ones, or when its oldest dirty record is older than `max.compaction.lag.ms`. Records of
//! aborted transactions are dropped; transaction markers stay.
//!
//! The cleaner's reads and writes are held to `io_bytes_per_second`, and it takes the
//! partition lock only to list segments and to swap one in, so producers do not wait on it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_log::{LogError, SealedInfo};

use super::batch::{i16_at, i64_at, put_varint, txn_fields};
use super::partition::Partition;
use super::record::{Record, read_batch};
use super::txn::Aborted;

const CHECKPOINT_FILE: &str = "cleaner-checkpoint";

/// A topic's compaction settings (Kafka's topic configs of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactConfig {
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: u64,
    pub max_compaction_lag_ms: u64,
    pub delete_retention_ms: u64,
}

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX as u64,
            delete_retention_ms: 86_400_000,
        }
    }
}

/// Broker-wide limits of the cleaner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanerLimits {
    /// Bytes read and written per second (Kafka's `log.cleaner.io.max.bytes.per.second`).
    pub io_bytes_per_second: u64,
    /// Keys one clean maps (Kafka bounds its map by `log.cleaner.dedupe.buffer.size`); a
    /// dirty part with more is cleaned in several passes.
    pub map_keys_max: usize,
}

impl Default for CleanerLimits {
    fn default() -> Self {
        CleanerLimits {
            io_bytes_per_second: 64 * 1024 * 1024,
            map_keys_max: 1_000_000,
        }
    }
}

/// What one clean did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub segments: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
}

/// The key's 128-bit hash (two SipHash passes), as Kafka keys its map by an MD5.
fn key_hash(key: &[u8]) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0x5eed_u32.hash(&mut b);
    key.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

fn read_checkpoint(dir: &Path) -> u64 {
    std::fs::read(dir.join(CHECKPOINT_FILE))
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

fn write_checkpoint(dir: &Path, offset: u64) -> Result<(), LogError> {
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    std::fs::write(&tmp, offset.to_be_bytes()).map_err(|source| LogError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| LogError::Io { path, source })
}

/// Holds reads and writes to a byte rate.
struct Throttle {
    rate: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let spent = self.started.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
    }
}

fn aborted_at(aborted: &[Aborted], producer_id: i64, offset: u64) -> bool {
    aborted
        .iter()
        .any(|a| a.producer_id == producer_id && a.first <= offset && offset <= a.last)
}

/// Writes `records` as one uncompressed batch with the header fields of `original`
/// (base offset, base timestamp, last offset delta, producer, transactional bit), so
/// offsets, timestamps and producer state read as before.
fn rebuild(original: &[u8], records: &[&Record]) -> Vec<u8> {
    let base_offset = i64_at(original, 0);
    let base_ts = i64_at(original, 27);
    let attributes = i16_at(original, 21) as u16 & !0x07;
    let append_time = attributes & 0x08 != 0;
    let mut body = Vec::new();
    let mut max_ts = i64::MIN;
    for r in records {
        let mut rec = vec![0u8];
        let ts_delta = if append_time {
            0
        } else {
            r.timestamp - base_ts
        };
        max_ts = max_ts.max(r.timestamp);
        put_varint(&mut rec, ts_delta);
        put_varint(&mut rec, r.offset as i64 - base_offset);
        for field in [&r.key, &r.value] {
            match field {
                Some(b) => {
                    put_varint(&mut rec, b.len() as i64);
                    rec.extend_from_slice(b);
                }
                None => put_varint(&mut rec, -1),
            }
        }
        put_varint(&mut rec, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_varint(&mut rec, k.len() as i64);
            rec.extend_from_slice(k);
            match v {
                Some(v) => {
                    put_varint(&mut rec, v.len() as i64);
                    rec.extend_from_slice(v);
                }
                None => put_varint(&mut rec, -1),
            }
        }
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = original
        .get(..super::batch::HEADER_BYTES)
        .unwrap_or_default()
        .to_vec();
    b.extend_from_slice(&body);
    let length = (b.len() - 12) as i32;
    let max_ts = if append_time {
        i64_at(original, 35)
    } else {
        max_ts
    };
    let fields: [(usize, Vec<u8>); 4] = [
        (8, length.to_be_bytes().to_vec()),
        (21, attributes.to_be_bytes().to_vec()),
        (35, max_ts.to_be_bytes().to_vec()),
        (57, (records.len() as i32).to_be_bytes().to_vec()),
    ];
    for (at, v) in fields {
        if let Some(s) = b.get_mut(at..at + v.len()) {
            s.copy_from_slice(&v);
        }
    }
    let crc = crc32c::crc32c(b.get(21..).unwrap_or_default());
    if let Some(s) = b.get_mut(17..21) {
        s.copy_from_slice(&crc.to_be_bytes());
    }
    b
}

/// Cleans `partition` if it is due. Blocking: reads and writes segment files, sleeping
/// to hold its I/O rate. `Ok(None)`: nothing was due.
pub fn clean(
    partition: &Partition,
    config: &CompactConfig,
    limits: &CleanerLimits,
    now_ms: i64,
) -> Result<Option<Cleaned>, LogError> {
    let (dir, sealed, stable, aborted) = {
        let st = partition.lock();
        let end = st.log.next_offset();
        (
            st.log.dir().to_path_buf(),
            st.log.sealed_info(),
            st.txn_last_stable(end),
            st.txn_aborted().to_vec(),
        )
    };
    let lag_horizon = now_ms.saturating_sub(config.min_compaction_lag_ms as i64);
    let cleanable: Vec<&SealedInfo> = sealed
        .iter()
        .take_while(|s| s.next_offset <= stable && s.max_timestamp_ms <= lag_horizon)
        .collect();
    let Some(last) = cleanable.last() else {
        return Ok(None);
    };
    let checkpoint = read_checkpoint(&dir);
    let dirty: Vec<&SealedInfo> = cleanable
        .iter()
        .copied()
        .filter(|s| s.next_offset > checkpoint)
        .collect();
    let Some(oldest_dirty) = dirty.first() else {
        return Ok(None);
    };
    let total: u64 = cleanable.iter().map(|s| s.size).sum();
    let dirty_bytes: u64 = dirty.iter().map(|s| s.size).sum();
    let ratio = dirty_bytes as f64 / total.max(1) as f64;
    let overdue = oldest_dirty.max_timestamp_ms
        < now_ms.saturating_sub(config.max_compaction_lag_ms.min(i64::MAX as u64) as i64);
    if ratio < config.min_cleanable_dirty_ratio && !overdue {
        return Ok(None);
    }
    let mut throttle = Throttle {
        rate: limits.io_bytes_per_second,
        started: Instant::now(),
        bytes: 0,
    };
    // The map: every key of the dirty part, to its latest offset.
    let mut map: HashMap<u128, u64> = HashMap::new();
    let mut mapped_to = last.next_offset;
    let mut records = Vec::new();
    for s in &dirty {
        let mut failed = None;
        sluice_log::read_segment(&s.path, |b| {
            let fields = txn_fields(&b.payload);
            if fields.marker.is_some() {
                return true;
            }
            records.clear();
            if let Err(e) = read_batch(&b.payload, &mut records) {
                failed = Some(e);
                return false;
            }
            for r in &records {
                if fields.transactional && aborted_at(&aborted, fields.producer_id, r.offset) {
                    continue;
                }
                if let Some(k) = &r.key {
                    map.insert(key_hash(k), r.offset);
                }
            }
            true
        })?;
        if failed.is_some() {
            tracing::error!(path = %s.path.display(), "unreadable batch: segment not cleaned");
            return Ok(None);
        }
        throttle.add(s.size);
        if map.len() >= limits.map_keys_max {
            // Clean up to here; the rest in the next pass.
            mapped_to = s.next_offset;
            break;
        }
    }
    let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms as i64);
    let mut done = Cleaned::default();
    for s in cleanable.iter().take_while(|s| s.next_offset <= mapped_to) {
        let mut rewrite = {
            let st = partition.lock();
            st.log.start_rewrite(s)?
        };
        let mut removed = 0u64;
        let mut failed: Option<LogError> = None;
        sluice_log::read_segment(&s.path, |b| {
            let fields = txn_fields(&b.payload);
            let mut keep_whole = true;
            let mut rebuilt = None;
            if fields.marker.is_none() {
                records.clear();
                if read_batch(&b.payload, &mut records).is_ok() {
                    let keep: Vec<&Record> = records
                        .iter()
                        .filter(|r| {
                            if fields.transactional
                                && aborted_at(&aborted, fields.producer_id, r.offset)
                            {
                                return false;
                            }
                            let Some(k) = &r.key else { return true };
                            let latest = map.get(&key_hash(k)).copied().unwrap_or(r.offset);
                            if latest > r.offset {
                                return false;
                            }
                            // The latest: a tombstone goes once old enough.
                            !(r.value.is_none() && b.max_timestamp_ms < tombstone_horizon)
                        })
                        .collect();
                    removed += (records.len() - keep.len()) as u64;
                    if keep.len() < records.len() {
                        keep_whole = false;
                        if !keep.is_empty() {
                            rebuilt = Some(rebuild(&b.payload, &keep));
                        }
                    }
                }
            }
            let payload: Option<&[u8]> = if keep_whole {
                Some(&b.payload)
            } else {
                rebuilt.as_deref()
            };
            if let Some(p) = payload
                && let Err(e) = rewrite.append(b.base_offset, b.record_count, b.max_timestamp_ms, p)
            {
                failed = Some(e);
                return false;
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        throttle.add(s.size + rewrite.size());
        if removed == 0 {
            // Nothing to take out: the segment stays as it is.
            drop(rewrite);
            let _ = std::fs::remove_file(s.path.with_extension("cleaned"));
            continue;
        }
        let after = rewrite.size();
        let finished = rewrite.finish()?;
        let swapped = partition.lock().log.swap_rewritten(finished)?;
        if swapped {
            done.segments += 1;
            done.bytes_before += s.size;
            done.bytes_after += after;
            done.records_removed += removed;
        }
    }
    write_checkpoint(&dir, mapped_to)?;
    Ok(Some(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::batch::split;
    use crate::stream::record::BatchBuilder;
    use bytes::Bytes;
    use sluice_core::clock::ManualClock;
    use sluice_log::LogConfig;
    use std::sync::Arc;

    fn produce(p: &Partition, key: &str, value: Option<&str>, ts: i64) {
        let mut b = BatchBuilder::default();
        b.push(
            ts,
            Some(key.as_bytes()),
            value.map(str::as_bytes),
            std::iter::empty(),
        );
        let records = Bytes::from(b.finish());
        let mut infos = Vec::new();
        split(&records, &mut infos).unwrap();
        p.append(&records, &infos, None).unwrap();
    }

    fn latest(p: &Partition) -> Vec<(String, Option<String>, u64)> {
        let mut out = Vec::new();
        let mut at = p.offsets().0 as u64;
        loop {
            let batches = p.read_batches(at, 1 << 20).unwrap();
            let Some(last) = batches.last() else { break };
            at = last.next_offset();
            let mut records = Vec::new();
            for b in &batches {
                read_batch(&b.payload, &mut records).unwrap();
            }
            for r in records {
                let s = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                out.push((s(r.key).unwrap(), s(r.value), r.offset));
            }
        }
        out
    }

    #[test]
    fn keeps_the_latest_value_of_every_key_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 1024,
            ..LogConfig::default()
        };
        let p = Partition::open(0, dir.path(), config, Arc::new(ManualClock::new(0))).unwrap();
        for i in 0..40 {
            produce(&p, &format!("k{}", i % 4), Some(&format!("v{i}")), 1_000);
        }
        produce(&p, "k0", None, 1_000); // offset 40: a tombstone for k0
        produce(&p, "k9", Some("last"), 1_000); // stays in the active segment
        let before = latest(&p);
        let compact = CompactConfig::default();
        let done = clean(&p, &compact, &CleanerLimits::default(), 2_000)
            .unwrap()
            .expect("due: everything is dirty");
        assert!(
            done.records_removed > 25 && done.bytes_after < done.bytes_before,
            "{done:?}"
        );
        let after = latest(&p);
        // Per key, the last value of the original log is still there, at its offset.
        for key in ["k0", "k1", "k2", "k3", "k9"] {
            let was = before.iter().rfind(|r| r.0 == key).cloned();
            let now = after.iter().rfind(|r| r.0 == key).cloned();
            assert_eq!(was, now, "{key}");
        }
        assert!(after.len() < 15, "{} records left", after.len());
        // Nothing more is due; a reopen reads the same.
        assert_eq!(
            clean(&p, &compact, &CleanerLimits::default(), 2_000).unwrap(),
            None
        );
        drop(p);
        let p = Partition::open(
            0,
            dir.path(),
            LogConfig {
                segment_bytes: 1024,
                ..LogConfig::default()
            },
            Arc::new(ManualClock::new(0)),
        )
        .unwrap();
        assert_eq!(latest(&p), after);
        // A day later the tombstone goes too (delete.retention.ms), once cleaned again.
        for i in 0..40 {
            produce(
                &p,
                &format!("k{}", 1 + i % 3),
                Some(&format!("w{i}")),
                1_000,
            );
        }
        clean(&p, &compact, &CleanerLimits::default(), 1_000 + 86_400_001).unwrap();
        let later = latest(&p);
        let k0: Vec<_> = later.iter().filter(|r| r.0 == "k0").collect();
        assert!(k0.len() <= 1 && k0.iter().all(|r| r.1.is_none()), "{k0:?}");
    }
}
