//! Fetch with long polling: answer once `min_bytes` are there or `max_wait_ms` passed,
//! woken by appends to any requested partition. No fetch sessions: the response's session
//! id 0 tells clients to keep sending full requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use tokio::sync::Notify;

use crate::broker::KafkaBroker;
use crate::codes;
use crate::partition::Partition;

/// Upper bound on a fetch's wait, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);

struct Wanted {
    topic: usize,
    partition: Option<Arc<Partition>>,
    index: i32,
    offset: i64,
    max_bytes: i32,
}

pub async fn fetch(b: &Arc<KafkaBroker>, req: FetchRequest, _version: i16) -> FetchResponse {
    let mut r = FetchResponse::default();
    let mut wanted = Vec::new();
    for (ti, ft) in req.topics.iter().enumerate() {
        let topic = b.topics.get(ft.topic.0.as_str());
        let mut t = FetchableTopicResponse::default();
        t.topic = ft.topic.clone();
        t.topic_id = topic.as_ref().map(|t| t.id).unwrap_or(ft.topic_id);
        r.responses.push(t);
        for fp in &ft.partitions {
            wanted.push(Wanted {
                topic: ti,
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
    let notify = Arc::new(Notify::new());
    let mut registered = false;
    loop {
        let (parts, total, errors) = read_all(&wanted, max_bytes);
        let now = tokio::time::Instant::now();
        if total >= min_bytes.max(1) || errors || now >= deadline {
            for (w, p) in wanted.iter().zip(parts) {
                if let Some(t) = r.responses.get_mut(w.topic) {
                    t.partitions.push(p);
                }
            }
            return r;
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
fn read_all(wanted: &[Wanted], max_bytes: usize) -> (Vec<PartitionData>, usize, bool) {
    let mut buf = BytesMut::new();
    let mut parts = Vec::with_capacity(wanted.len());
    let mut total = 0usize;
    let mut errors = false;
    for w in wanted {
        let mut p = PartitionData::default();
        p.partition_index = w.index;
        p.aborted_transactions = Some(Vec::new());
        p.preferred_read_replica = kafka_protocol::messages::BrokerId(-1);
        let Some(partition) = &w.partition else {
            p.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
            p.high_watermark = -1;
            p.last_stable_offset = -1;
            p.log_start_offset = -1;
            errors = true;
            parts.push(p);
            continue;
        };
        let budget = (w.max_bytes.max(0) as usize).min(max_bytes.saturating_sub(total));
        let (code, start, end) = partition.read(w.offset, budget, total == 0, &mut buf);
        p.error_code = code;
        p.high_watermark = end;
        p.last_stable_offset = end;
        p.log_start_offset = start;
        errors |= code != codes::NONE;
        total += buf.len();
        p.records = Some(buf.split().freeze());
        parts.push(p);
    }
    (parts, total, errors)
}
