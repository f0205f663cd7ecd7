//! ListOffsets: earliest (-2), latest (-1), or the first record at or after a timestamp.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

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
            let (start, end) = partition.offsets();
            match lp.timestamp {
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
