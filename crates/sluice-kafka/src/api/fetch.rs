//! Fetch with long polling: answer once `min_bytes` are there or `max_wait_ms` passed,
//! woken by appends to any requested partition, with incremental fetch sessions (KIP-227,
//! `crate::fetch_session`). `read_committed` fetches stop at the last stable offset and
//! name the aborted transactions in what they return.
//!
//! Record data is not copied: the partition hands out file ranges of the stored batches
//! and the response goes out as encoded bytes interleaved with those ranges, which the
//! connection sends with `sendfile(2)`. The response is encoded here by hand (versions
//! 4 to 12) because the codec can only encode records it holds in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::FetchRequest;
use sluice_engine::stream::FileSlice;
use tokio::sync::Notify;

use crate::broker::KafkaBroker;
use crate::codes;
use crate::fetch_session::{Session, SessionError};
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
    /// KIP-320: the leader epoch the client named is not the partition's.
    epoch_error: Option<i16>,
}

/// KIP-320: a `current_leader_epoch` newer than the partition's is unknown here, an
/// older one fenced; -1 skips the check.
fn epoch_error(current_leader_epoch: i32) -> Option<i16> {
    use sluice_engine::stream::partition::LEADER_EPOCH;
    match current_leader_epoch {
        e if e < 0 || e == LEADER_EPOCH => None,
        e if e > LEADER_EPOCH => Some(codes::UNKNOWN_LEADER_EPOCH),
        _ => Some(codes::FENCED_LEADER_EPOCH),
    }
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
    error: i16,
    session_id: i32,
    topics: Vec<(String, Vec<PartitionOut>)>,
}

impl FetchOut {
    fn refused(error: i16) -> FetchOut {
        FetchOut {
            error,
            session_id: 0,
            topics: Vec::new(),
        }
    }
}

/// The session epoch of a sessionless fetch, or of one that closes its session.
const FINAL_EPOCH: i32 = -1;

/// Resolves partitions by topic, looking each topic up (and authorizing it) once per run
/// of the same name.
struct Resolver<'a> {
    b: &'a KafkaBroker,
    authz: Authz<'a>,
    names: Vec<String>,
    /// Position of each name in `names`.
    index: HashMap<String, usize>,
    last: Option<(usize, bool, Option<Arc<sluice_engine::stream::Topic>>)>,
}

impl Resolver<'_> {
    fn want(&mut self, topic: &str, index: i32, offset: i64, max_bytes: i32) -> Wanted {
        let same =
            matches!(&self.last, Some((ti, ..)) if self.names.get(*ti).is_some_and(|n| n == topic));
        if !same {
            let ti = match self.index.get(topic) {
                Some(&ti) => ti,
                None => {
                    self.names.push(topic.to_string());
                    self.index.insert(topic.to_string(), self.names.len() - 1);
                    self.names.len() - 1
                }
            };
            let denied = !self.authz.allows(Operation::Read, Resource::Topic(topic));
            let t = self.b.topics.get(topic).filter(|_| !denied);
            self.last = Some((ti, denied, t));
        }
        let (ti, denied, t) = match &self.last {
            Some((ti, denied, t)) => (*ti, *denied, t.as_ref()),
            None => (0, true, None),
        };
        Wanted {
            topic: ti,
            denied,
            partition: t.and_then(|t| t.partition(index)),
            index,
            offset,
            max_bytes,
            epoch_error: None,
        }
    }
}

pub async fn fetch(b: &Arc<KafkaBroker>, authz: Authz<'_>, req: FetchRequest) -> FetchOut {
    let user = authz.user();
    let mut resolver = Resolver {
        b,
        authz,
        names: Vec::with_capacity(req.topics.len()),
        index: HashMap::new(),
        last: None,
    };
    let mut wanted = Vec::new();
    // KIP-227: `session` is the session this fetch uses or starts, `incremental` whether it
    // answers only what changed.
    let sessions = &b.fetch_sessions;
    let (mut session, session_id, incremental) = match (req.session_id, req.session_epoch) {
        (id, FINAL_EPOCH) => {
            if id != 0 {
                sessions.remove(id);
            }
            (None, None, false)
        }
        (id, 0) => {
            if id != 0 {
                sessions.remove(id);
            }
            let new = sessions
                .enabled()
                .then(|| Session::new(user.map(str::to_string)));
            (new, None, false)
        }
        (id, epoch) => match sessions.take(id, epoch, user) {
            Ok(s) => (Some(s), Some(id), true),
            Err(SessionError::NotFound) => {
                return FetchOut::refused(codes::FETCH_SESSION_ID_NOT_FOUND);
            }
            Err(SessionError::InvalidEpoch) => {
                return FetchOut::refused(codes::INVALID_FETCH_SESSION_EPOCH);
            }
        },
    };
    match &mut session {
        Some(s) => {
            for ft in &req.forgotten_topics_data {
                for p in &ft.partitions {
                    s.forget(ft.topic.0.as_str(), *p);
                }
            }
            for ft in &req.topics {
                for fp in &ft.partitions {
                    s.upsert(
                        ft.topic.0.as_str(),
                        fp.partition,
                        fp.fetch_offset,
                        fp.partition_max_bytes,
                    );
                }
            }
            for p in &s.parts {
                wanted.push(resolver.want(&p.topic, p.index, p.offset, p.max_bytes));
            }
            // Partitions this request names are checked against the epoch it names.
            for ft in &req.topics {
                for fp in &ft.partitions {
                    if let Some(code) = epoch_error(fp.current_leader_epoch)
                        && let Some(at) = s
                            .parts
                            .iter()
                            .position(|p| p.index == fp.partition && p.topic == ft.topic.0.as_str())
                        && let Some(w) = wanted.get_mut(at)
                    {
                        w.epoch_error = Some(code);
                    }
                }
            }
        }
        None => {
            for ft in &req.topics {
                for fp in &ft.partitions {
                    let mut w = resolver.want(
                        ft.topic.0.as_str(),
                        fp.partition,
                        fp.fetch_offset,
                        fp.partition_max_bytes,
                    );
                    w.epoch_error = epoch_error(fp.current_leader_epoch);
                    wanted.push(w);
                }
            }
        }
    }
    // A session holds at most as many partitions as the broker may have; one that grows
    // past that is dropped (the client starts over, and a full fetch that large gets no
    // session: it keeps sending full requests).
    let too_big = session
        .as_ref()
        .is_some_and(|s| s.parts.len() > b.config.partitions_max.max(0) as usize);
    if too_big {
        session = None;
        if incremental {
            return FetchOut::refused(codes::FETCH_SESSION_ID_NOT_FOUND);
        }
    }
    let names = resolver.names;
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
            for (i, (w, p)) in wanted.iter().zip(parts).enumerate() {
                if let Some(s) = &mut session
                    && let Some(sp) = s.parts.get_mut(i)
                {
                    let now = (p.high_watermark, p.last_stable, p.log_start);
                    let changed = sp.answered != now;
                    sp.answered = now;
                    // An incremental response leaves out what the client already knows.
                    if incremental && !changed && p.slices.is_empty() && p.error == codes::NONE {
                        continue;
                    }
                }
                if let Some(t) = topics.get_mut(w.topic) {
                    t.1.push(p);
                }
            }
            topics.retain(|(_, parts)| !parts.is_empty() || !incremental);
            let session_id = match session {
                Some(mut s) => {
                    s.next_epoch = if incremental {
                        req.session_epoch.wrapping_add(1).max(1)
                    } else {
                        1
                    };
                    sessions.put(session_id, s)
                }
                None => 0,
            };
            return FetchOut {
                error: codes::NONE,
                session_id,
                topics,
            };
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
        let refusal = match (&w.partition, w.epoch_error) {
            (None, _) if w.denied => Some(codes::TOPIC_AUTHORIZATION_FAILED),
            (None, _) => Some(codes::UNKNOWN_TOPIC_OR_PARTITION),
            (Some(_), e) => e,
        };
        let (Some(partition), None) = (&w.partition, refusal) else {
            errors = true;
            parts.push(PartitionOut {
                index: w.index,
                error: refusal.unwrap_or(codes::UNKNOWN_SERVER_ERROR),
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
        head.put_i16(out.error);
        head.put_i32(out.session_id);
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
                error: 0,
                session_id: 7,
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
