//! Byte layouts of segment, index and time-index files (little-endian throughout; see
//! `docs/log-format.md`). Pure encode/decode, no I/O.

pub const FORMAT_VERSION: u32 = 1;
pub const FILE_HEADER_BYTES: u64 = 16;
pub const BATCH_HEADER_BYTES: usize = 32;
pub const INDEX_ENTRY_BYTES: u64 = 8;
pub const TIME_ENTRY_BYTES: u64 = 12;

pub const SEGMENT_MAGIC: [u8; 8] = *b"SLUICELG";
pub const INDEX_MAGIC: [u8; 8] = *b"SLUICEIX";
pub const TIME_INDEX_MAGIC: [u8; 8] = *b"SLUICETI";
pub const START_MAGIC: [u8; 8] = *b"SLUICEST";

/// `magic (8) | version u32 | reserved u32`.
pub fn file_header(magic: [u8; 8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&magic);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out
}

pub fn check_file_header(bytes: &[u8], magic: [u8; 8]) -> bool {
    bytes.get(..8) == Some(&magic[..])
        && bytes.get(8..12) == Some(&FORMAT_VERSION.to_le_bytes()[..])
}

/// Header in front of every batch payload:
/// `len u32 | crc32c u32 | base_offset u64 | record_count u32 | reserved u32 | max_timestamp_ms i64`.
/// The CRC covers bytes 8..32 of the header and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub len: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub max_timestamp_ms: i64,
}

impl BatchHeader {
    #[cfg(test)]
    pub fn new(base_offset: u64, record_count: u32, max_timestamp_ms: i64, payload: &[u8]) -> Self {
        Self::from_parts(base_offset, record_count, max_timestamp_ms, &[payload])
    }

    /// A header for the payload made of `parts` back to back.
    pub fn from_parts(
        base_offset: u64,
        record_count: u32,
        max_timestamp_ms: i64,
        parts: &[&[u8]],
    ) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut header = BatchHeader {
            len: len as u32,
            crc: 0,
            base_offset,
            record_count,
            max_timestamp_ms,
        };
        let encoded = header.encode();
        let crc = crc32c::crc32c(&encoded[8..]);
        header.crc = parts
            .iter()
            .fold(crc, |crc, part| crc32c::crc32c_append(crc, part));
        header
    }

    pub fn encode(&self) -> [u8; BATCH_HEADER_BYTES] {
        let mut out = [0u8; BATCH_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..8].copy_from_slice(&self.crc.to_le_bytes());
        out[8..16].copy_from_slice(&self.base_offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.record_count.to_le_bytes());
        out[24..32].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; BATCH_HEADER_BYTES]) -> Self {
        BatchHeader {
            len: u32_at(bytes, 0),
            crc: u32_at(bytes, 4),
            base_offset: u64_at(bytes, 8),
            record_count: u32_at(bytes, 16),
            max_timestamp_ms: u64_at(bytes, 24) as i64,
        }
    }

    pub fn compute_crc(&self, payload: &[u8]) -> u32 {
        let encoded = self.encode();
        let crc = crc32c::crc32c(&encoded[8..]);
        crc32c::crc32c_append(crc, payload)
    }

    pub fn next_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count))
    }

    pub fn frame_bytes(&self) -> u64 {
        BATCH_HEADER_BYTES as u64 + u64::from(self.len)
    }
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        b.copy_from_slice(src);
    }
    u32::from_le_bytes(b)
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

pub fn segment_file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// The base offset named by a segment file, if the name is one of ours.
pub fn parse_segment_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_header_round_trips_and_crc_covers_payload() {
        let header = BatchHeader::new(42, 3, -5, b"hello");
        let decoded = BatchHeader::decode(&header.encode());
        assert_eq!(decoded, header);
        assert_eq!(decoded.compute_crc(b"hello"), header.crc);
        assert_ne!(decoded.compute_crc(b"hellp"), header.crc);
        assert_eq!(decoded.next_offset(), 45);
    }

    #[test]
    fn segment_names_parse_only_when_they_are_ours() {
        assert_eq!(
            parse_segment_name(&segment_file_name(7, "log"), "log"),
            Some(7)
        );
        assert_eq!(
            parse_segment_name("00000000000000000007.index", "log"),
            None
        );
        assert_eq!(parse_segment_name("7.log", "log"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.log", "log"), None);
    }

    #[test]
    fn file_header_check_rejects_other_magic_and_short_input() {
        let header = file_header(INDEX_MAGIC);
        assert!(check_file_header(&header, INDEX_MAGIC));
        assert!(!check_file_header(&header, SEGMENT_MAGIC));
        assert!(!check_file_header(&header[..10], INDEX_MAGIC));
    }
}
