//! Kafka's batch compression codecs, for reading records out of compressed batches:
//! gzip (1), snappy (2, raw or in the xerial framing Java clients write), lz4 (3, frame
//! format) and zstd (4). Output is bounded, so a small batch cannot inflate without
//! limit.

use std::io::Read;

use super::batch::BatchError;

/// Most bytes one batch may inflate to: what a reader of one batch holds at most (about
/// twice this while it grows). A batch of the default `max.message.bytes` (1 MiB) may
/// compress 32:1; one that inflates further is refused as corrupt.
pub const INFLATED_MAX: usize = 32 << 20;

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

fn read_bounded(mut r: impl Read) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let read = (&mut r)
        .take(INFLATED_MAX as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| BatchError::Corrupt)?;
    if read > INFLATED_MAX {
        return Err(BatchError::Corrupt);
    }
    Ok(out)
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let len = snap::raw::decompress_len(block).map_err(|_| BatchError::Corrupt)?;
    if out.len().saturating_add(len) > INFLATED_MAX {
        return Err(BatchError::Corrupt);
    }
    let at = out.len();
    out.resize(at + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, out.get_mut(at..).unwrap_or_default())
        .map_err(|_| BatchError::Corrupt)?;
    Ok(())
}

fn snappy(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        snappy_block(data, &mut out)?;
        return Ok(out);
    }
    // Magic, version and compatible version, then length-prefixed raw blocks.
    let mut at = 16;
    while at < data.len() {
        let len = data
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or(BatchError::Corrupt)? as usize;
        at += 4;
        let block = data.get(at..at + len).ok_or(BatchError::Corrupt)?;
        snappy_block(block, &mut out)?;
        at += len;
    }
    Ok(out)
}

/// The records section of a batch compressed with `codec` (the attributes' low bits).
pub fn inflate(codec: u16, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    match codec {
        1 => read_bounded(flate2::read::GzDecoder::new(data)),
        2 => snappy(data),
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(data)),
        4 => {
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(data).map_err(|_| BatchError::Corrupt)?;
            read_bounded(decoder)
        }
        _ => Err(BatchError::Corrupt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..10_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect()
    }

    #[test]
    fn every_codec_inflates_what_its_encoder_wrote() {
        let data = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        assert_eq!(inflate(1, &gz.finish().unwrap()).unwrap(), data);

        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(inflate(2, &raw).unwrap(), data);
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&1i32.to_be_bytes());
        xerial.extend_from_slice(&1i32.to_be_bytes());
        for chunk in data.chunks(7_000) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            xerial.extend_from_slice(&(block.len() as u32).to_be_bytes());
            xerial.extend_from_slice(&block);
        }
        assert_eq!(inflate(2, &xerial).unwrap(), data);

        let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz4.write_all(&data).unwrap();
        assert_eq!(inflate(3, &lz4.finish().unwrap()).unwrap(), data);
    }

    /// A zstd frame as the reference encoder writes it (`zstd -19` of "hello, stream\n").
    #[test]
    fn zstd_inflates_a_reference_frame() {
        let frame: &[u8] = &[
            0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x68, 0x71, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
            0x2c, 0x20, 0x73, 0x74, 0x72, 0x65, 0x61, 0x6d, 0x0a, 0x9f, 0x75, 0xfb, 0x92,
        ];
        assert_eq!(inflate(4, frame).unwrap(), b"hello, stream\n");
    }

    /// A small batch that would inflate past the bound is refused, not held.
    #[test]
    fn inflating_past_the_bound_is_refused() {
        let zeros = vec![0u8; INFLATED_MAX + 1];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&zeros).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < INFLATED_MAX / 100);
        assert!(inflate(1, &bomb).is_err());
        // Snappy announces its length first: refused before anything is allocated.
        let mut claim = Vec::new();
        let mut n = (INFLATED_MAX + 1) as u64;
        while n >= 0x80 {
            claim.push((n as u8) | 0x80);
            n >>= 7;
        }
        claim.push(n as u8);
        assert!(inflate(2, &claim).is_err());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        for codec in 0..8 {
            assert!(inflate(codec, b"\x01\x02\x03 definitely not compressed").is_err());
        }
    }
}
