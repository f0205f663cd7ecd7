//! ListOffsets: earliest (-2), latest (-1), or the first record at or after a timestamp.
//! For `read_committed` (isolation level 1) the latest offset is the last stable one.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};

use crate::broker::KafkaBroker;
use crate::codes;
use crate::security::{Authz, Resource};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub fn list_offsets(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    let committed = req.isolation_level == 1;
    for lt in req.topics {
        let denied = !authz.describes(Resource::Topic(&lt.name));
        let topic = b.topics.get(lt.name.0.as_str()).filter(|_| !denied);
        let mut t = ListOffsetsTopicResponse::default();
        t.name = lt.name;
        for lp in lt.partitions {
            let mut p = ListOffsetsPartitionResponse::default();
            p.partition_index = lp.partition_index;
            p.timestamp = -1;
            p.offset = -1;
            let Some(partition) = topic.as_ref().and_then(|t| t.partition(lp.partition_index))
            else {
                p.error_code = if denied {
                    codes::TOPIC_AUTHORIZATION_FAILED
                } else {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                };
                t.partitions.push(p);
                continue;
            };
            // KIP-320: a newer current epoch than the partition's is unknown here.
            if lp.current_leader_epoch > sluice_engine::stream::partition::LEADER_EPOCH {
                p.error_code = codes::UNKNOWN_LEADER_EPOCH;
                t.partitions.push(p);
                continue;
            }
            let (start, end) = partition.offsets();
            match lp.timestamp {
                LATEST if committed => p.offset = partition.last_stable(),
                LATEST => p.offset = end,
                EARLIEST => p.offset = start,
                ts if ts >= 0 => match partition.offset_for_time(ts) {
                    Ok(Some((offset, timestamp))) => {
                        p.offset = offset;
                        p.timestamp = timestamp;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "offset lookup failed");
                        p.error_code = codes::KAFKA_STORAGE_ERROR;
                    }
                },
                _ => p.error_code = codes::INVALID_REQUEST,
            }
            t.partitions.push(p);
        }
        r.topics.push(t);
    }
    r
}

/// OffsetForLeaderEpoch (KIP-101, KIP-320): where a leader epoch ends. One node has led
/// every partition since its first epoch, so the current epoch ends at the log end offset;
/// an epoch above it is unknown (-1, -1), as Kafka answers. A `current_leader_epoch` above
/// the partition's is refused with UNKNOWN_LEADER_EPOCH (with one epoch, none is older;
/// replication brings FENCED_LEADER_EPOCH).
pub fn offset_for_leader_epoch(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    use sluice_engine::stream::partition::LEADER_EPOCH;
    let mut r = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let denied = !authz.describes(Resource::Topic(&t.topic));
        let topic = b.topics.get(t.topic.0.as_str()).filter(|_| !denied);
        let mut out = OffsetForLeaderTopicResult::default();
        out.topic = t.topic;
        for p in t.partitions {
            let mut e = EpochEndOffset::default();
            e.partition = p.partition;
            e.leader_epoch = -1;
            e.end_offset = -1;
            match topic.as_ref().and_then(|t| t.partition(p.partition)) {
                None if denied => e.error_code = codes::TOPIC_AUTHORIZATION_FAILED,
                None => e.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION,
                Some(_) if p.current_leader_epoch > LEADER_EPOCH => {
                    e.error_code = codes::UNKNOWN_LEADER_EPOCH;
                }
                Some(partition) if (0..=LEADER_EPOCH).contains(&p.leader_epoch) => {
                    e.leader_epoch = LEADER_EPOCH;
                    e.end_offset = partition.offsets().1;
                }
                Some(_) => {}
            }
            out.partitions.push(e);
        }
        r.topics.push(out);
    }
    r
}
