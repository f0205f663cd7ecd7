//! Record batches in Kafka's format (magic 2), the unit a stream stores. A produce request's records are
//! split into batches and checked (length, magic, CRC, offset deltas) without touching
//! the records inside; each is then stored byte for byte except its base offset, which
//! the broker assigns. The Kafka CRC starts at `attributes`, so the base offset can be
//! rewritten without recomputing it.

/// Bytes of the batch header up to and including the record count.
pub const HEADER_BYTES: usize = 61;
/// `baseOffset` and `batchLength`: the part of the header before the length-counted rest.
const LOG_OVERHEAD: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const COUNT_AT: usize = 57;

const COMPRESSION_MASK: u16 = 0x07;
const TIMESTAMP_TYPE_BIT: u16 = 0x08;
const TRANSACTIONAL_BIT: u16 = 0x10;
const CONTROL_BIT: u16 = 0x20;

/// One batch found in a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Where the batch starts in the request's records and how long it is.
    pub start: usize,
    pub len: usize,
    /// Offsets the batch takes: `lastOffsetDelta + 1`.
    pub offsets: u32,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
}

/// Why a produce request's records were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Framing or CRC is wrong: CORRUPT_MESSAGE.
    Corrupt,
    /// Well framed but not acceptable (no records, inconsistent counts, control batch):
    /// INVALID_RECORD.
    Invalid,
    /// Message format v0/v1: UNSUPPORTED_FOR_MESSAGE_FORMAT.
    OldMagic,
}

pub(crate) fn i16_at(b: &[u8], at: usize) -> i16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        x.copy_from_slice(s);
    }
    i16::from_be_bytes(x)
}

pub(crate) fn i32_at(b: &[u8], at: usize) -> i32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    i32::from_be_bytes(x)
}

pub(crate) fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    i64::from_be_bytes(x)
}

/// Splits `records` into whole, valid batches. Any defect refuses the whole set, as Kafka
/// does for a partition's records.
pub fn split(records: &[u8], out: &mut Vec<BatchInfo>) -> Result<(), BatchError> {
    out.clear();
    let mut at = 0;
    while at < records.len() {
        let rest = records.get(at..).unwrap_or_default();
        if rest.len() < LOG_OVERHEAD + 5 {
            return Err(BatchError::Corrupt);
        }
        let length = i32_at(rest, 8);
        let magic = rest.get(MAGIC_AT).copied().unwrap_or(0);
        if magic < 2 {
            return Err(BatchError::OldMagic);
        }
        if magic != 2 || length < (HEADER_BYTES - LOG_OVERHEAD) as i32 {
            return Err(BatchError::Corrupt);
        }
        let len = LOG_OVERHEAD + length as usize;
        let Some(batch) = rest.get(..len) else {
            return Err(BatchError::Corrupt);
        };
        let stored_crc = i32_at(batch, CRC_AT) as u32;
        let body = batch.get(ATTRIBUTES_AT..).unwrap_or_default();
        if crc32c::crc32c(body) != stored_crc {
            return Err(BatchError::Corrupt);
        }
        let attributes = i16_at(batch, ATTRIBUTES_AT) as u16;
        let last_delta = i32_at(batch, LAST_OFFSET_DELTA_AT);
        let count = i32_at(batch, COUNT_AT);
        // Producers number records 0..count; compaction gaps only exist on the broker side.
        if count <= 0 || last_delta != count - 1 || attributes & CONTROL_BIT != 0 {
            return Err(BatchError::Invalid);
        }
        if attributes & COMPRESSION_MASK == 0 {
            walk_records(batch.get(HEADER_BYTES..).unwrap_or_default(), count)?;
        }
        out.push(BatchInfo {
            start: at,
            len,
            offsets: count as u32,
            max_timestamp: i64_at(batch, MAX_TIMESTAMP_AT),
            producer_id: i64_at(batch, PRODUCER_ID_AT),
            producer_epoch: i16_at(batch, PRODUCER_EPOCH_AT),
            base_sequence: i32_at(batch, BASE_SEQUENCE_AT),
            transactional: attributes & TRANSACTIONAL_BIT != 0,
        });
        at += len;
    }
    if out.is_empty() {
        return Err(BatchError::Invalid);
    }
    Ok(())
}

/// Walks the records of an uncompressed batch, as Kafka's validator does: exactly
/// `count` records whose lengths use up the batch, offset deltas 0, 1, 2, ... A batch
/// whose counts or lengths lie would otherwise be stored and break every consumer of
/// the partition at that offset.
fn walk_records(records: &[u8], count: i32) -> Result<(), BatchError> {
    let mut at = 0;
    for expected_delta in 0..i64::from(count) {
        let len = varint(records, &mut at).ok_or(BatchError::Corrupt)?;
        let len = usize::try_from(len).map_err(|_| BatchError::Corrupt)?;
        let end = at.checked_add(len).ok_or(BatchError::Corrupt)?;
        let record = records.get(at..end).ok_or(BatchError::Corrupt)?;
        at = end;
        let mut r = 1; // attributes
        let mut field = || varint(record, &mut r).ok_or(BatchError::Corrupt);
        field()?; // timestamp delta
        if field()? != expected_delta {
            return Err(BatchError::Invalid);
        }
        let skip = |len: i64, r: &mut usize| -> Result<(), BatchError> {
            if len == -1 {
                return Ok(());
            }
            let n = usize::try_from(len).map_err(|_| BatchError::Corrupt)?;
            *r = r
                .checked_add(n)
                .filter(|e| *e <= record.len())
                .ok_or(BatchError::Corrupt)?;
            Ok(())
        };
        let key = varint(record, &mut r).ok_or(BatchError::Corrupt)?;
        skip(key, &mut r)?;
        let value = varint(record, &mut r).ok_or(BatchError::Corrupt)?;
        skip(value, &mut r)?;
        let headers = varint(record, &mut r).ok_or(BatchError::Corrupt)?;
        if headers < 0 {
            return Err(BatchError::Corrupt);
        }
        for _ in 0..headers {
            let key = varint(record, &mut r).ok_or(BatchError::Corrupt)?;
            if key < 0 {
                return Err(BatchError::Corrupt);
            }
            skip(key, &mut r)?;
            let value = varint(record, &mut r).ok_or(BatchError::Corrupt)?;
            skip(value, &mut r)?;
        }
        if r != record.len() {
            return Err(BatchError::Corrupt);
        }
    }
    if at == records.len() {
        Ok(())
    } else {
        Err(BatchError::Corrupt)
    }
}

/// Whether an uncompressed batch of a produce request (checked by [`split`]) holds a
/// record without a key, which a compacted topic refuses. Compressed batches are not
/// opened here and count as keyed.
pub fn has_null_key(records: &[u8], info: &BatchInfo) -> bool {
    let Some(batch) = records.get(info.start..info.start + info.len) else {
        return false;
    };
    if i16_at(batch, ATTRIBUTES_AT) as u16 & COMPRESSION_MASK != 0 {
        return false;
    }
    let mut at = HEADER_BYTES;
    for _ in 0..info.offsets {
        let Some(len) = varint(batch, &mut at) else {
            return false;
        };
        let mut r = at + 1; // attributes
        let _ = varint(batch, &mut r); // timestamp delta
        let _ = varint(batch, &mut r); // offset delta
        if varint(batch, &mut r) == Some(-1) {
            return true;
        }
        at = at.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
    }
    false
}

/// Rewrites a batch for log-append time: the timestamp type bit set, `maxTimestamp` =
/// `now`, and the CRC recomputed (both fields are covered by it).
pub fn with_append_time(batch: &[u8], now: i64) -> Vec<u8> {
    let mut out = batch.to_vec();
    if out.len() < HEADER_BYTES {
        return out;
    }
    let attributes = i16_at(&out, ATTRIBUTES_AT) as u16 | TIMESTAMP_TYPE_BIT;
    if let Some(s) = out.get_mut(ATTRIBUTES_AT..ATTRIBUTES_AT + 2) {
        s.copy_from_slice(&attributes.to_be_bytes());
    }
    if let Some(s) = out.get_mut(MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8) {
        s.copy_from_slice(&now.to_be_bytes());
    }
    let crc = crc32c::crc32c(out.get(ATTRIBUTES_AT..).unwrap_or_default());
    if let Some(s) = out.get_mut(CRC_AT..CRC_AT + 4) {
        s.copy_from_slice(&crc.to_be_bytes());
    }
    out
}

/// What the transaction fields of a stored batch say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub transactional: bool,
    /// `Some(commit)` for a control batch holding a transaction marker.
    pub marker: Option<bool>,
}

/// Reads the transaction fields of a stored batch.
pub fn txn_fields(batch: &[u8]) -> TxnFields {
    let attributes = i16_at(batch, ATTRIBUTES_AT) as u16;
    let marker = (attributes & CONTROL_BIT != 0).then(|| {
        // The control record's key: version i16, type i16 (0 abort, 1 commit). It follows
        // the record's length, attributes, timestamp delta, offset delta and key length.
        let mut at = HEADER_BYTES;
        let _ = varint(batch, &mut at);
        at += 1;
        let _ = varint(batch, &mut at);
        let _ = varint(batch, &mut at);
        let _ = varint(batch, &mut at);
        i16_at(batch, at + 2) == 1
    });
    TxnFields {
        producer_id: i64_at(batch, PRODUCER_ID_AT),
        producer_epoch: i16_at(batch, PRODUCER_EPOCH_AT),
        transactional: attributes & TRANSACTIONAL_BIT != 0,
        marker,
    }
}

/// Writes a zigzag varint (Kafka's varint and varlong).
pub(crate) fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A transaction marker as Kafka writes it: a control batch of one record whose key is
/// `version 0 | type` (0 abort, 1 commit) and whose value is `version 0 | coordinator
/// epoch`. The base offset and partition leader epoch are set at append.
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let mut record = vec![0u8]; // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, 4);
    record.extend_from_slice(&0i16.to_be_bytes());
    record.extend_from_slice(&i16::from(commit).to_be_bytes());
    put_varint(&mut record, 6);
    record.extend_from_slice(&0i16.to_be_bytes());
    record.extend_from_slice(&coordinator_epoch.to_be_bytes());
    put_varint(&mut record, 0); // headers
    let mut b = vec![0u8; HEADER_BYTES];
    put_varint(&mut b, record.len() as i64);
    b.extend_from_slice(&record);
    let length = (b.len() - LOG_OVERHEAD) as i32;
    let attributes = TRANSACTIONAL_BIT | CONTROL_BIT;
    let fields: [(usize, &[u8]); 10] = [
        (8, &length.to_be_bytes()),
        (ATTRIBUTES_AT, &attributes.to_be_bytes()),
        (LAST_OFFSET_DELTA_AT, &0i32.to_be_bytes()),
        (27, &timestamp.to_be_bytes()),
        (MAX_TIMESTAMP_AT, &timestamp.to_be_bytes()),
        (PRODUCER_ID_AT, &producer_id.to_be_bytes()),
        (PRODUCER_EPOCH_AT, &producer_epoch.to_be_bytes()),
        (BASE_SEQUENCE_AT, &(-1i32).to_be_bytes()),
        (COUNT_AT, &1i32.to_be_bytes()),
        (MAGIC_AT, &[2u8]),
    ];
    for (at, bytes) in fields {
        if let Some(s) = b.get_mut(at..at + bytes.len()) {
            s.copy_from_slice(bytes);
        }
    }
    let crc = crc32c::crc32c(b.get(ATTRIBUTES_AT..).unwrap_or_default());
    if let Some(s) = b.get_mut(CRC_AT..CRC_AT + 4) {
        s.copy_from_slice(&crc.to_be_bytes());
    }
    b
}

/// Reads a zigzag varint (Kafka's varint and varlong) at `*at`.
pub(crate) fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// In a stored batch, the first record with a timestamp at or after `target`:
/// `(offset, timestamp)`. Compressed batches are not opened: their base offset and max
/// timestamp stand for them.
pub fn find_time(batch: &[u8], target: i64) -> Option<(i64, i64)> {
    let base = i64_at(batch, 0);
    let attributes = i16_at(batch, ATTRIBUTES_AT) as u16;
    if attributes & 0x07 != 0 || attributes & TIMESTAMP_TYPE_BIT != 0 {
        return Some((base, i64_at(batch, MAX_TIMESTAMP_AT)));
    }
    let base_ts = i64_at(batch, 27);
    let mut at = HEADER_BYTES;
    for _ in 0..i32_at(batch, COUNT_AT).max(0) {
        let len = usize::try_from(varint(batch, &mut at)?).ok()?;
        let body_start = at;
        at += 1; // attributes
        let ts_delta = varint(batch, &mut at)?;
        let offset_delta = varint(batch, &mut at)?;
        if base_ts + ts_delta >= target {
            return Some((base + offset_delta, base_ts + ts_delta));
        }
        at = body_start + len;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sets a batch's record count (and last offset delta to match) and fixes its CRC.
    fn with_count(mut b: Vec<u8>, count: i32) -> Vec<u8> {
        b[COUNT_AT..COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&(count - 1).to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Counts and lengths that lie, under a correct CRC, are refused: the records are
    /// walked, not trusted.
    #[test]
    fn lying_record_counts_and_lengths_are_refused() {
        let mut out = Vec::new();
        assert!(split(&batch(3, -1, -1), &mut out).is_ok());
        for count in [1, 2, 4, 1000, i32::MAX] {
            let lying = with_count(batch(3, -1, -1), count);
            assert_eq!(
                split(&lying, &mut out),
                Err(BatchError::Corrupt),
                "count {count}"
            );
        }
        // The first record's length claims one byte more, then one byte less.
        for delta in [1i8, -1] {
            let mut b = batch(3, -1, -1);
            b[HEADER_BYTES] = (b[HEADER_BYTES] as i8 + 2 * delta) as u8;
            let b = with_count(b, 3);
            assert_eq!(
                split(&b, &mut out),
                Err(BatchError::Corrupt),
                "delta {delta}"
            );
        }
    }

    /// A minimal valid batch of `count` records with null keys and values.
    pub fn batch(count: i32, producer_id: i64, base_sequence: i32) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES];
        for i in 0..i64::from(count) {
            let mut record = vec![0u8]; // attributes
            put_varint(&mut record, 0); // timestamp delta
            put_varint(&mut record, i); // offset delta
            put_varint(&mut record, -1); // key
            put_varint(&mut record, -1); // value
            put_varint(&mut record, 0); // headers
            put_varint(&mut b, record.len() as i64);
            b.extend_from_slice(&record);
        }
        let length = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&length.to_be_bytes());
        b[MAGIC_AT] = 2;
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&(count - 1).to_be_bytes());
        b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
        b[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
        b[COUNT_AT..COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn splits_concatenated_batches() {
        let mut records = batch(3, -1, -1);
        records.extend(batch(2, 7, 5));
        let mut out = Vec::new();
        split(&records, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].offsets, 3);
        assert_eq!(out[1].start, out[0].len);
        assert_eq!(out[1].producer_id, 7);
        assert_eq!(out[1].base_sequence, 5);
    }

    #[test]
    fn refuses_bad_crc_truncation_and_empty() {
        let mut out = Vec::new();
        let mut b = batch(1, -1, -1);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(split(&b, &mut out), Err(BatchError::Corrupt));
        let b = batch(2, -1, -1);
        assert_eq!(split(&b[..b.len() - 1], &mut out), Err(BatchError::Corrupt));
        assert_eq!(split(&[], &mut out), Err(BatchError::Invalid));
        let mut old = batch(1, -1, -1);
        old[MAGIC_AT] = 1;
        assert_eq!(split(&old, &mut out), Err(BatchError::OldMagic));
    }

    #[test]
    fn null_keys_are_found_in_uncompressed_batches() {
        let records = batch(3, -1, -1); // null keys
        let mut infos = Vec::new();
        split(&records, &mut infos).unwrap();
        assert!(has_null_key(&records, &infos[0]));
        let mut b = crate::stream::record::BatchBuilder::default();
        b.push(1, Some(b"k"), Some(b"v"), std::iter::empty());
        b.push(1, Some(b"k2"), None, std::iter::empty());
        let keyed = b.finish();
        split(&keyed, &mut infos).unwrap();
        assert!(!has_null_key(&keyed, &infos[0]));
    }

    #[test]
    fn markers_read_back() {
        for commit in [true, false] {
            let m = marker_batch(7, 3, commit, 0, 99);
            let f = txn_fields(&m);
            assert_eq!(
                (f.producer_id, f.producer_epoch, f.transactional, f.marker),
                (7, 3, true, Some(commit))
            );
            assert_eq!(
                crc32c::crc32c(&m[ATTRIBUTES_AT..]),
                i32_at(&m, CRC_AT) as u32
            );
            // Producers may not send control batches.
            assert_eq!(split(&m, &mut Vec::new()), Err(BatchError::Invalid));
        }
        assert_eq!(txn_fields(&batch(1, 5, 0)).marker, None);
    }

    #[test]
    fn append_time_keeps_the_crc_valid() {
        let b = with_append_time(&batch(2, -1, -1), 1234);
        let mut out = Vec::new();
        split(&b, &mut out).unwrap();
        assert_eq!(out[0].max_timestamp, 1234);
    }
}
