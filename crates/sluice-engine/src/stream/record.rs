//! Records inside a stream's batches, for faces that do not speak Kafka's format: a
//! builder that writes a batch (magic 2, uncompressed, no producer id) and a reader that
//! splits a stored batch into records without copying their bytes. Compressed batches
//! are inflated first (`codec`).

use bytes::{BufMut, Bytes};

use super::batch::{BatchError, HEADER_BYTES, put_varint, varint};

const ATTRIBUTES_AT: usize = 21;
const BASE_TIMESTAMP_AT: usize = 27;
const COUNT_AT: usize = 57;
const TIMESTAMP_TYPE_BIT: u16 = 0x08;
const COMPRESSION_MASK: u16 = 0x07;
const CONTROL_BIT: u16 = 0x20;

/// One record of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Milliseconds since the epoch: the producer's, or the broker's for log-append time.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// In the order written; keys may repeat, as in Kafka.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

/// Writes one batch of records, as a producer without idempotence would send it.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    records: Vec<u8>,
    record: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn push<'a>(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let r = &mut self.record;
        r.clear();
        r.push(0); // attributes
        put_varint(r, timestamp.saturating_sub(self.base_timestamp));
        put_varint(r, i64::from(self.count));
        put_bytes(r, key);
        put_bytes(r, value);
        put_varint(r, headers.len() as i64);
        for (k, v) in headers {
            put_bytes(r, Some(k));
            put_bytes(r, v);
        }
        put_varint(&mut self.records, r.len() as i64);
        self.records.extend_from_slice(r);
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The batch, with base offset 0 (the log assigns it) and its CRC.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.records.len());
        out.put_i64(0); // base offset
        out.put_i32((HEADER_BYTES - 12 + self.records.len()) as i32);
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2); // magic
        out.put_u32(0); // crc, below
        out.put_i16(0); // attributes
        out.put_i32(self.count - 1); // last offset delta
        out.put_i64(self.base_timestamp);
        out.put_i64(self.max_timestamp);
        out.put_i64(-1); // producer id
        out.put_i16(-1); // producer epoch
        out.put_i32(-1); // base sequence
        out.put_i32(self.count);
        out.extend_from_slice(&self.records);
        let crc = crc32c::crc32c(out.get(ATTRIBUTES_AT..).unwrap_or_default());
        if let Some(s) = out.get_mut(17..21) {
            s.copy_from_slice(&crc.to_be_bytes());
        }
        out
    }
}

fn be_i64(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Appends the records of a stored batch (base offset in place) to `out`. Control
/// batches (transaction markers) hold no records for readers and add nothing.
pub fn read_batch(batch: &Bytes, out: &mut Vec<Record>) -> Result<(), BatchError> {
    let corrupt = BatchError::Corrupt;
    let base_offset = be_i64(batch, 0).ok_or(corrupt)?;
    let attributes = be_u16(batch, ATTRIBUTES_AT).ok_or(corrupt)?;
    if attributes & CONTROL_BIT != 0 {
        return Ok(());
    }
    let base_timestamp = be_i64(batch, BASE_TIMESTAMP_AT).ok_or(corrupt)?;
    let max_timestamp = be_i64(batch, 35).ok_or(corrupt)?;
    let count = be_i32(batch, COUNT_AT).ok_or(corrupt)?;
    let append_time = attributes & TIMESTAMP_TYPE_BIT != 0;
    let body = match attributes & COMPRESSION_MASK {
        0 => batch.slice(HEADER_BYTES.min(batch.len())..),
        codec => Bytes::from(super::codec::inflate(
            codec,
            batch.get(HEADER_BYTES..).unwrap_or_default(),
        )?),
    };
    let b = &body[..];
    let mut at = 0usize;
    for _ in 0..count.max(0) {
        let len = usize::try_from(varint(b, &mut at).ok_or(corrupt)?).map_err(|_| corrupt)?;
        let end = at
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or(corrupt)?;
        let mut r = at + 1; // attributes
        let ts_delta = varint(b, &mut r).ok_or(corrupt)?;
        let offset_delta = varint(b, &mut r).ok_or(corrupt)?;
        let field = |r: &mut usize| -> Result<Option<Bytes>, BatchError> {
            let n = varint(b, r).ok_or(corrupt)?;
            if n < 0 {
                return Ok(None);
            }
            let n = usize::try_from(n).map_err(|_| corrupt)?;
            let e = r.checked_add(n).filter(|e| *e <= end).ok_or(corrupt)?;
            let s = body.slice(*r..e);
            *r = e;
            Ok(Some(s))
        };
        let key = field(&mut r)?;
        let value = field(&mut r)?;
        let n_headers = varint(b, &mut r).ok_or(corrupt)?;
        let mut headers = Vec::with_capacity(n_headers.clamp(0, 64) as usize);
        for _ in 0..n_headers.max(0) {
            let k = field(&mut r)?.ok_or(corrupt)?;
            let v = field(&mut r)?;
            headers.push((k, v));
        }
        if r != end {
            return Err(corrupt);
        }
        at = end;
        out.push(Record {
            offset: u64::try_from(base_offset.saturating_add(offset_delta)).map_err(|_| corrupt)?,
            timestamp: if append_time {
                max_timestamp
            } else {
                base_timestamp.saturating_add(ts_delta)
            },
            key,
            value,
            headers,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Header = (Vec<u8>, Option<Vec<u8>>);
    /// Timestamp, key, value, headers.
    type Input = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<Header>);

    fn build(records: &[Input]) -> Vec<u8> {
        let mut b = BatchBuilder::default();
        for (ts, k, v, h) in records {
            b.push(
                *ts,
                k.as_deref(),
                v.as_deref(),
                h.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
            );
        }
        b.finish()
    }

    proptest! {
        /// What the builder writes passes the checks a produce request gets, and reads
        /// back record for record.
        #[test]
        fn built_batches_pass_the_produce_checks_and_read_back(
            records in proptest::collection::vec(
                (0i64..1 << 40,
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
                 proptest::collection::vec(
                     (proptest::collection::vec(any::<u8>(), 0..10),
                      proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10))),
                     0..4)),
                1..8),
            base in 0u64..1 << 40,
        ) {
            let mut batch = build(&records);
            let mut infos = Vec::new();
            prop_assert!(crate::stream::batch::split(&batch, &mut infos).is_ok());
            prop_assert_eq!(infos[0].offsets as usize, records.len());
            batch[..8].copy_from_slice(&base.to_be_bytes());
            let mut out = Vec::new();
            read_batch(&Bytes::from(batch), &mut out).unwrap();
            prop_assert_eq!(out.len(), records.len());
            for (i, (r, (ts, k, v, h))) in out.iter().zip(&records).enumerate() {
                prop_assert_eq!(r.offset, base + i as u64);
                prop_assert_eq!(r.timestamp, *ts);
                prop_assert_eq!(r.key.as_deref(), k.as_deref());
                prop_assert_eq!(r.value.as_deref(), v.as_deref());
                let headers: Vec<Header> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.as_ref().map(|v| v.to_vec())))
                    .collect();
                prop_assert_eq!(&headers, h);
            }
        }

        /// Any bytes: an error or records, never a panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_batch(&Bytes::from(bytes), &mut Vec::new());
        }
    }
}
