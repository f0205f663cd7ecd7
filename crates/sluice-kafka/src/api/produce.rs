//! Produce and InitProducerId for idempotent producers (transactional ones: `txn`).

use std::sync::Arc;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};

use crate::broker::KafkaBroker;
use crate::codes;
use crate::config::TimestampType;
use crate::security::{Authz, Operation, Resource};
use sluice_engine::stream::batch::{self, BatchInfo};

fn partition_error(index: i32, code: i16) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.error_code = code;
    p.base_offset = -1;
    p
}

/// Appends every partition's records; `None` for acks=0, which gets no response.
pub async fn produce(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: ProduceRequest,
    _version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let txn_id = req.transactional_id.as_ref().map(|id| id.0.as_str());
    let txn_denied =
        txn_id.is_some_and(|id| !authz.allows(Operation::Write, Resource::TransactionalId(id)));
    let txn = txn_id.and_then(|id| b.txns.lookup(id));
    let mut infos: Vec<BatchInfo> = Vec::new();
    let mut r = ProduceResponse::default();
    for topic_data in req.topic_data {
        let mut t = TopicProduceResponse::default();
        t.name = topic_data.name.clone();
        let denied = !authz.allows(Operation::Write, Resource::Topic(&topic_data.name));
        let topic = b.topics.get(topic_data.name.0.as_str()).filter(|_| !denied);
        let config = topic.as_ref().map(|t| t.config());
        for pd in topic_data.partition_data {
            let index = pd.index;
            let fail = |code| partition_error(index, code);
            if denied {
                t.partition_responses
                    .push(fail(codes::TOPIC_AUTHORIZATION_FAILED));
                continue;
            }
            if !matches!(acks, -1..=1) {
                t.partition_responses
                    .push(fail(codes::INVALID_REQUIRED_ACKS));
                continue;
            }
            if txn_denied {
                t.partition_responses
                    .push(fail(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED));
                continue;
            }
            let (Some(topic), Some(config)) = (&topic, &config) else {
                t.partition_responses
                    .push(fail(codes::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            let Some(partition) = topic.partition(index) else {
                t.partition_responses
                    .push(fail(codes::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            let records = pd.records.unwrap_or_default();
            if let Err(e) = batch::split(&records, &mut infos) {
                t.partition_responses.push(fail(codes::of_batch(e)));
                continue;
            }
            if infos
                .iter()
                .any(|i| i.len > config.max_message_bytes as usize)
            {
                t.partition_responses.push(fail(codes::MESSAGE_TOO_LARGE));
                continue;
            }
            // Kafka: "Compacted topic cannot accept message without key".
            if config.compact && infos.iter().any(|i| batch::has_null_key(&records, i)) {
                t.partition_responses.push(fail(codes::INVALID_RECORD));
                continue;
            }
            let append_time = match config.timestamp_type {
                TimestampType::LogAppendTime => Some(b.clock.now_ms()),
                TimestampType::CreateTime => None,
            };
            let appended = match infos.iter().find(|i| i.transactional) {
                None => partition.append(&records, &infos, append_time),
                Some(first) => {
                    // Transactional records need the transactional id's open transaction
                    // to hold this partition (KIP-890's check), held while they are
                    // appended so the transaction cannot end in between.
                    let Some(entry) = &txn else {
                        let code = if txn_id.is_some() {
                            codes::INVALID_PRODUCER_ID_MAPPING
                        } else {
                            codes::INVALID_RECORD
                        };
                        t.partition_responses.push(fail(code));
                        continue;
                    };
                    let mixed = infos.iter().any(|i| {
                        !i.transactional
                            || i.producer_id != first.producer_id
                            || i.producer_epoch != first.producer_epoch
                    });
                    if mixed {
                        t.partition_responses.push(fail(codes::INVALID_RECORD));
                        continue;
                    }
                    match b.txns.verify(
                        entry,
                        first.producer_id,
                        first.producer_epoch,
                        &topic.name,
                        index,
                    ) {
                        Ok(guard) => {
                            let appended = partition.append(&records, &infos, append_time);
                            drop(guard);
                            appended
                        }
                        Err(code) => {
                            t.partition_responses.push(fail(code));
                            continue;
                        }
                    }
                }
            };
            let produced = match appended {
                Ok(p) => p,
                Err(e) => {
                    t.partition_responses.push(fail(codes::of_append(e)));
                    continue;
                }
            };
            if acks == -1
                && config.flush_sync
                && let Err(e) = partition.wait_durable(produced.next_offset).await
            {
                tracing::error!(topic = %topic.name, partition = index, error = %e, "fsync failed");
                t.partition_responses.push(fail(codes::KAFKA_STORAGE_ERROR));
                continue;
            }
            let mut p = PartitionProduceResponse::default();
            p.index = index;
            p.base_offset = produced.base_offset;
            p.log_append_time_ms = append_time.unwrap_or(-1);
            p.log_start_offset = produced.log_start_offset;
            t.partition_responses.push(p);
        }
        r.responses.push(t);
    }
    (acks != 0).then_some(r)
}

pub async fn init_producer_id(
    b: &Arc<KafkaBroker>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        // KIP-360: an idempotent producer bumps its epoch and keeps its id.
        r.producer_id = req.producer_id;
        r.producer_epoch = req.producer_epoch.saturating_add(1);
        if r.producer_epoch == i16::MAX {
            r.producer_epoch = -1;
        } else {
            return r;
        }
    }
    let b2 = Arc::clone(b);
    match tokio::task::spawn_blocking(move || b2.new_producer_id()).await {
        Ok(Ok(id)) => {
            r.producer_id = ProducerId(id);
            r.producer_epoch = 0;
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "producer id reservation failed");
            r.error_code = codes::KAFKA_STORAGE_ERROR;
        }
        Err(_) => r.error_code = codes::UNKNOWN_SERVER_ERROR,
    }
    r
}
