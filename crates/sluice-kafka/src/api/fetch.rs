//! Fetch with long polling: answer once `min_bytes` are there or `max_wait_ms` passed,
//! woken by appends to any requested partition. No fetch sessions: the response's session
//! id 0 tells clients to keep sending full requests. `read_committed` fetches stop at the
//! last stable offset and name the aborted transactions in what they return.
//!
//! Record data is not copied: the partition hands out file ranges of the stored batches
//! and the response goes out as encoded bytes interleaved with those ranges, which the
//! connection sends with `sendfile(2)`. The response is encoded here by hand (versions
//! 4 to 12) because the codec can only encode records it holds in memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::FetchRequest;
use sluice_engine::stream::FileSlice;
use tokio::sync::Notify;

use crate::broker::KafkaBroker;
use crate::codes;
use crate::security::{Authz, Operation, Resource};
use sluice_engine::stream::partition::Partition;

/// Upper bound on a fetch's wait, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);

/// A piece of an outgoing response: encoded bytes or a range of a segment file.
#[derive(Debug)]
pub enum Chunk {
    Bytes(Bytes),
    File(FileSlice),
}

struct Wanted {
    topic: usize,
    denied: bool,
    partition: Option<Arc<Partition>>,
    index: i32,
    offset: i64,
    max_bytes: i32,
}

struct PartitionOut {
    index: i32,
    error: i16,
    high_watermark: i64,
    last_stable: i64,
    log_start: i64,
    slices: Vec<FileSlice>,
    /// `(producer id, first offset)` of aborted transactions, for `read_committed`.
    aborted: Vec<(i64, i64)>,
}

pub struct FetchOut {
    topics: Vec<(String, Vec<PartitionOut>)>,
}

pub async fn fetch(b: &Arc<KafkaBroker>, authz: Authz<'_>, req: FetchRequest) -> FetchOut {
    let mut names = Vec::with_capacity(req.topics.len());
    let mut wanted = Vec::new();
    for (ti, ft) in req.topics.iter().enumerate() {
        let denied = !authz.allows(Operation::Read, Resource::Topic(&ft.topic));
        let topic = b.topics.get(ft.topic.0.as_str()).filter(|_| !denied);
        names.push(ft.topic.0.to_string());
        for fp in &ft.partitions {
            wanted.push(Wanted {
                topic: ti,
                denied,
                partition: topic.as_ref().and_then(|t| t.partition(fp.partition)),
                index: fp.partition,
                offset: fp.fetch_offset,
                max_bytes: fp.partition_max_bytes,
            });
        }
    }
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let committed = req.isolation_level == 1;
    let notify = Arc::new(Notify::new());
    let mut registered = false;
    loop {
        let (parts, total, errors) = read_all(&wanted, max_bytes, committed);
        let now = tokio::time::Instant::now();
        if total >= min_bytes.max(1) || errors || now >= deadline {
            let mut topics: Vec<(String, Vec<PartitionOut>)> =
                names.into_iter().map(|n| (n, Vec::new())).collect();
            for (w, p) in wanted.iter().zip(parts) {
                if let Some(t) = topics.get_mut(w.topic) {
                    t.1.push(p);
                }
            }
            return FetchOut { topics };
        }
        if !registered {
            // Register, then read again: an append between the read and the
            // registration is not missed.
            for w in &wanted {
                if let Some(p) = &w.partition {
                    p.watch(&notify);
                }
            }
            registered = true;
            continue;
        }
        if tokio::time::timeout_at(deadline, notify.notified())
            .await
            .is_ok()
        {
            // Re-arm for the next wake-up.
            for w in &wanted {
                if let Some(p) = &w.partition {
                    p.watch(&notify);
                }
            }
        }
    }
}

/// Reads every wanted partition within the response budget. KIP-74: the first batch of
/// the first partition with data is returned even when larger than the limits.
fn read_all(
    wanted: &[Wanted],
    max_bytes: usize,
    committed: bool,
) -> (Vec<PartitionOut>, usize, bool) {
    let mut parts = Vec::with_capacity(wanted.len());
    let mut total = 0usize;
    let mut errors = false;
    for w in wanted {
        let Some(partition) = &w.partition else {
            errors = true;
            parts.push(PartitionOut {
                index: w.index,
                error: if w.denied {
                    codes::TOPIC_AUTHORIZATION_FAILED
                } else {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                },
                high_watermark: -1,
                last_stable: -1,
                log_start: -1,
                slices: Vec::new(),
                aborted: Vec::new(),
            });
            continue;
        };
        let budget = (w.max_bytes.max(0) as usize).min(max_bytes.saturating_sub(total));
        let mut aborted = Vec::new();
        let read = partition.read_slices(w.offset, budget, total == 0, committed, &mut aborted);
        let error = codes::of_read(read.status);
        errors |= error != codes::NONE;
        total += read.slices.iter().map(|s| s.len as usize).sum::<usize>();
        parts.push(PartitionOut {
            index: w.index,
            error,
            high_watermark: read.high_watermark,
            last_stable: read.last_stable,
            log_start: read.log_start,
            slices: read.slices,
            aborted,
        });
    }
    (parts, total, errors)
}

fn put_uvarint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Encodes a Fetch response (v4 to v12) as a frame: size, header, body, with record data
/// as file ranges.
pub fn encode(out: FetchOut, correlation_id: i32, version: i16) -> Vec<Chunk> {
    let flexible = version >= 12;
    let mut chunks = Vec::new();
    let mut head = BytesMut::with_capacity(256);
    head.put_i32(correlation_id);
    if flexible {
        put_uvarint(&mut head, 0); // header tagged fields
    }
    head.put_i32(0); // throttle_time_ms
    if version >= 7 {
        head.put_i16(codes::NONE);
        head.put_i32(0); // session_id: no session
    }
    let array_len = |head: &mut BytesMut, n: usize| {
        if flexible {
            put_uvarint(head, n as u64 + 1);
        } else {
            head.put_i32(n as i32);
        }
    };
    array_len(&mut head, out.topics.len());
    for (name, partitions) in out.topics {
        if flexible {
            put_uvarint(&mut head, name.len() as u64 + 1);
        } else {
            head.put_i16(name.len() as i16);
        }
        head.extend_from_slice(name.as_bytes());
        array_len(&mut head, partitions.len());
        for p in partitions {
            head.put_i32(p.index);
            head.put_i16(p.error);
            head.put_i64(p.high_watermark);
            head.put_i64(p.last_stable);
            if version >= 5 {
                head.put_i64(p.log_start);
            }
            array_len(&mut head, p.aborted.len());
            for (producer_id, first_offset) in &p.aborted {
                head.put_i64(*producer_id);
                head.put_i64(*first_offset);
                if flexible {
                    put_uvarint(&mut head, 0);
                }
            }
            if version >= 11 {
                head.put_i32(-1); // preferred_read_replica
            }
            let len: u64 = p.slices.iter().map(|s| s.len).sum();
            if flexible {
                put_uvarint(&mut head, len + 1);
            } else {
                head.put_i32(len as i32);
            }
            if !p.slices.is_empty() {
                chunks.push(Chunk::Bytes(head.split().freeze()));
                chunks.extend(p.slices.into_iter().map(Chunk::File));
            }
            if flexible {
                put_uvarint(&mut head, 0); // partition tagged fields
            }
        }
        if flexible {
            put_uvarint(&mut head, 0); // topic tagged fields
        }
    }
    if flexible {
        put_uvarint(&mut head, 0); // top-level tagged fields
    }
    chunks.push(Chunk::Bytes(head.freeze()));
    let size: u64 = chunks
        .iter()
        .map(|c| match c {
            Chunk::Bytes(b) => b.len() as u64,
            Chunk::File(f) => f.len,
        })
        .sum();
    let mut prefix = BytesMut::with_capacity(4);
    prefix.put_i32(size as i32);
    chunks.insert(0, Chunk::Bytes(prefix.freeze()));
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::Decodable;

    fn flatten(chunks: Vec<Chunk>) -> Bytes {
        let mut all = BytesMut::new();
        for c in chunks {
            match c {
                Chunk::Bytes(b) => all.extend_from_slice(&b),
                Chunk::File(f) => {
                    let mut buf = vec![0u8; f.len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&*f.file, &mut buf, f.position)
                        .unwrap();
                    all.extend_from_slice(&buf);
                }
            }
        }
        all.freeze()
    }

    /// The hand-written encoding decodes with the codec, in every version served.
    #[test]
    fn encoding_matches_the_codec() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let file = std::sync::Arc::new(file);
        std::os::unix::fs::FileExt::write_all_at(&*file, b"0123456789", 0).unwrap();
        for version in 4..=12 {
            let out = FetchOut {
                topics: vec![(
                    "t".into(),
                    vec![
                        PartitionOut {
                            index: 0,
                            error: 0,
                            high_watermark: 10,
                            last_stable: 8,
                            log_start: 2,
                            slices: vec![FileSlice {
                                file: file.clone(),
                                position: 3,
                                len: 4,
                                base_offset: 0,
                                record_count: 1,
                            }],
                            aborted: vec![(7, 3), (9, 4)],
                        },
                        PartitionOut {
                            index: 1,
                            error: codes::OFFSET_OUT_OF_RANGE,
                            high_watermark: 5,
                            last_stable: 5,
                            log_start: 0,
                            slices: Vec::new(),
                            aborted: Vec::new(),
                        },
                    ],
                )],
            };
            let mut frame = flatten(encode(out, 9, version));
            let size = i32::from_be_bytes(frame[..4].try_into().unwrap());
            assert_eq!(size as usize, frame.len() - 4);
            let _ = frame.split_to(8); // size and correlation id
            if version >= 12 {
                let _ = frame.split_to(1);
            }
            let r = FetchResponse::decode(&mut frame, version).unwrap();
            assert!(frame.is_empty(), "v{version}: trailing bytes");
            let parts = &r.responses[0].partitions;
            assert_eq!(r.responses[0].topic.0.as_str(), "t");
            assert_eq!(parts[0].records.as_deref(), Some(&b"3456"[..]));
            assert_eq!(parts[0].high_watermark, 10);
            assert_eq!(parts[0].last_stable_offset, 8);
            let aborted: Vec<_> = parts[0]
                .aborted_transactions
                .iter()
                .flatten()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect();
            assert_eq!(aborted, vec![(7, 3), (9, 4)]);
            assert_eq!(parts[1].error_code, codes::OFFSET_OUT_OF_RANGE);
            if version >= 5 {
                assert_eq!(parts[0].log_start_offset, 2);
            }
        }
    }
}
