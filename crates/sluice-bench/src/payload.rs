//! The stamp every benchmark message carries in its first 16 bytes, so that consumers can
//! measure publish→deliver latency and check sequence numbers without any broker support.
//!
//! Layout, little-endian: bytes 0..8 the send time in nanoseconds since the Unix epoch
//! (`SystemTime`, which producers and consumers on one machine read from the same clock);
//! bytes 8..16 the message id, the producer index in the top 24 bits and that producer's
//! sequence number in the low 40. The rest of the body is filler.

/// Bytes taken by the stamp; the smallest message the benchmark can send.
pub const STAMP_BYTES: usize = 16;

/// Producers per run: the producer index has 24 bits in the id.
pub const PRODUCERS_MAX: u32 = (1 << 24) - 1;

/// Messages per producer: the sequence number has 40 bits in the id (about 10^12, years of
/// sending at a million messages a second).
pub const SEQ_MAX: u64 = (1 << 40) - 1;

/// What a message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub producer: u32,
    pub seq: u64,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_BYTES`] of `body`; a shorter body is left
    /// as it is (options validation keeps bodies at least that long).
    pub fn write(&self, body: &mut [u8]) {
        let id = (u64::from(self.producer) << 40) | (self.seq & SEQ_MAX);
        if let Some(head) = body.get_mut(..STAMP_BYTES) {
            let (time, id_bytes) = head.split_at_mut(8);
            time.copy_from_slice(&self.sent_ns.to_le_bytes());
            id_bytes.copy_from_slice(&id.to_le_bytes());
        }
    }

    /// Reads the stamp from a delivered body; `None` when the body is too short to hold one.
    pub fn read(body: &[u8]) -> Option<Stamp> {
        let time: [u8; 8] = body.get(..8)?.try_into().ok()?;
        let id: [u8; 8] = body.get(8..STAMP_BYTES)?.try_into().ok()?;
        let id = u64::from_le_bytes(id);
        Some(Stamp {
            sent_ns: u64::from_le_bytes(time),
            producer: u32::try_from(id >> 40).ok()?,
            seq: id & SEQ_MAX,
        })
    }
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_through_a_body() {
        let stamp = Stamp {
            sent_ns: 1_764_000_000_123_456_789,
            producer: PRODUCERS_MAX,
            seq: SEQ_MAX,
        };
        let mut body = vec![b'x'; 20];
        stamp.write(&mut body);
        assert_eq!(Stamp::read(&body), Some(stamp));
        assert_eq!(&body[STAMP_BYTES..], b"xxxx");
    }

    #[test]
    fn a_body_shorter_than_a_stamp_reads_as_none() {
        assert_eq!(Stamp::read(&[0u8; STAMP_BYTES - 1]), None);
        assert_eq!(Stamp::read(&[]), None);
    }
}
