//! Transaction APIs (KIP-98): InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, TxnOffsetCommit, EndTxn, DescribeTransactions and ListTransactions.
//! The coordinator itself is `crate::txn`.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as Listed;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;

use super::str;
use crate::broker::KafkaBroker;
use crate::codes;
use crate::security::{Authz, Operation, Resource};
use crate::txn::{Caller, State};

/// Per topic, per partition: a refusal of its own, or `None` to go on.
type Checked = Vec<(TopicName, Vec<(i32, Option<i16>)>)>;
use sluice_engine::stream::offsets::Committed;

pub async fn init_producer_id(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    id: &str,
    req: &InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if !authz.allows(Operation::Write, Resource::TransactionalId(id)) {
        r.error_code = codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return r;
    }
    let expected = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    let (code, pid, epoch) = b
        .txns
        .init_producer_id(b, id, req.transaction_timeout_ms, expected, version >= 4)
        .await;
    r.error_code = code;
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r
}

fn partition_result(index: i32, code: i16) -> AddPartitionsToTxnPartitionResult {
    let mut p = AddPartitionsToTxnPartitionResult::default();
    p.partition_index = index;
    p.partition_error_code = code;
    p
}

pub async fn add_partitions(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let id = req.v3_and_below_transactional_id.0.to_string();
    let mut checked: Checked = Vec::new();
    let id_denied = !authz.allows(Operation::Write, Resource::TransactionalId(&id));
    for t in &req.v3_and_below_topics {
        let denied = !authz.allows(Operation::Write, Resource::Topic(&t.name));
        let topic = b.topics.get(t.name.0.as_str());
        let parts = t
            .partitions
            .iter()
            .map(|&index| {
                let code = if id_denied {
                    Some(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                } else if denied {
                    Some(codes::TOPIC_AUTHORIZATION_FAILED)
                } else if topic.as_ref().and_then(|t| t.partition(index)).is_none() {
                    Some(codes::UNKNOWN_TOPIC_OR_PARTITION)
                } else {
                    None
                };
                (index, code)
            })
            .collect();
        checked.push((t.name.clone(), parts));
    }
    let refused = checked
        .iter()
        .any(|(_, ps)| ps.iter().any(|(_, c)| c.is_some()));
    // As Kafka: if any partition is refused, the others are not attempted.
    let code = if refused {
        codes::OPERATION_NOT_ATTEMPTED
    } else {
        let partitions: Vec<(String, i32)> = checked
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(i, _)| (t.0.to_string(), *i)))
            .collect();
        b.txns
            .add(
                b,
                &id,
                Caller {
                    producer_id: req.v3_and_below_producer_id.0,
                    epoch: req.v3_and_below_producer_epoch,
                    knows_fenced: version >= 2,
                },
                &partitions,
                None,
            )
            .await
    };
    let mut r = AddPartitionsToTxnResponse::default();
    r.results_by_topic_v3_and_below = checked
        .into_iter()
        .map(|(name, parts)| {
            let mut t = AddPartitionsToTxnTopicResult::default();
            t.name = name;
            t.results_by_partition = parts
                .into_iter()
                .map(|(index, own)| partition_result(index, own.unwrap_or(code)))
                .collect();
            t
        })
        .collect();
    r
}

pub async fn add_offsets(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let mut r = AddOffsetsToTxnResponse::default();
    let id = req.transactional_id.0.as_str();
    r.error_code = if !authz.allows(Operation::Write, Resource::TransactionalId(id)) {
        codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    } else if !authz.allows(Operation::Read, Resource::Group(&req.group_id)) {
        codes::GROUP_AUTHORIZATION_FAILED
    } else if req.group_id.0.is_empty() {
        codes::INVALID_GROUP_ID
    } else {
        b.txns
            .add(
                b,
                id,
                Caller {
                    producer_id: req.producer_id.0,
                    epoch: req.producer_epoch,
                    knows_fenced: version >= 2,
                },
                &[],
                Some(req.group_id.0.as_str()),
            )
            .await
    };
    r
}

pub async fn txn_offset_commit(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let id = req.transactional_id.0.as_str();
    let group = req.group_id.0.as_str();
    let mut code = if !authz.allows(Operation::Write, Resource::TransactionalId(id)) {
        codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    } else if !authz.allows(Operation::Read, Resource::Group(group)) {
        codes::GROUP_AUTHORIZATION_FAILED
    } else {
        // KIP-447: a producer that names its consumer's membership is fenced with it.
        b.groups.check_txn_commit(
            group,
            req.generation_id,
            req.member_id.as_str(),
            req.group_instance_id.as_deref(),
        )
    };
    let mut offsets = Vec::new();
    let mut missing = std::collections::HashSet::new();
    let mut denied_topics = Vec::new();
    for t in &req.topics {
        if !authz.allows(Operation::Read, Resource::Topic(&t.name)) {
            denied_topics.push(t.name.0.to_string());
            continue;
        }
        // Offsets of partitions that do not exist are refused, as Kafka does.
        let topic = b.topics.get(t.name.0.as_str());
        for p in &t.partitions {
            if topic
                .as_ref()
                .and_then(|t| t.partition(p.partition_index))
                .is_none()
            {
                missing.insert((t.name.0.as_str(), p.partition_index));
                continue;
            }
            offsets.push((
                t.name.0.to_string(),
                p.partition_index,
                Committed {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                },
            ));
        }
    }
    if code == codes::NONE && !denied_topics.is_empty() {
        code = codes::TOPIC_AUTHORIZATION_FAILED;
    }
    if code == codes::NONE {
        code = b
            .txns
            .commit_offsets(
                id,
                Caller {
                    producer_id: req.producer_id.0,
                    epoch: req.producer_epoch,
                    knows_fenced: false,
                },
                group,
                offsets,
            )
            .await;
    }
    let mut r = TxnOffsetCommitResponse::default();
    r.topics = req
        .topics
        .iter()
        .map(|t| {
            let mut out = TxnOffsetCommitResponseTopic::default();
            out.name = t.name.clone();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut x = TxnOffsetCommitResponsePartition::default();
                    x.partition_index = p.partition_index;
                    let gone = missing.contains(&(t.name.0.as_str(), p.partition_index));
                    x.error_code = if gone && code == codes::NONE {
                        codes::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        code
                    };
                    x
                })
                .collect();
            out
        })
        .collect();
    r
}

pub async fn end_txn(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    let mut r = EndTxnResponse::default();
    let id = req.transactional_id.0.as_str();
    r.error_code = if !authz.allows(Operation::Write, Resource::TransactionalId(id)) {
        codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    } else {
        b.txns
            .end_txn(
                b,
                id,
                Caller {
                    producer_id: req.producer_id.0,
                    epoch: req.producer_epoch,
                    knows_fenced: version >= 2,
                },
                req.committed,
            )
            .await
    };
    r
}

pub fn describe_transactions(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut r = DescribeTransactionsResponse::default();
    for id in req.transactional_ids {
        let mut s = TransactionState::default();
        s.transactional_id = id.clone();
        s.producer_id = ProducerId(-1);
        s.producer_epoch = -1;
        s.transaction_start_time_ms = -1;
        s.transaction_state = str("");
        if !authz.describes(Resource::TransactionalId(&id)) {
            s.error_code = codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
            r.transaction_states.push(s);
            continue;
        }
        let Some(t) = b.txns.get(&id) else {
            s.error_code = codes::TRANSACTIONAL_ID_NOT_FOUND;
            r.transaction_states.push(s);
            continue;
        };
        s.transaction_state = str(t.state.name());
        s.transaction_timeout_ms = t.timeout_ms;
        s.transaction_start_time_ms = t.started_ms;
        s.producer_id = ProducerId(t.producer_id);
        s.producer_epoch = t.epoch;
        let mut topics: Vec<TopicData> = Vec::new();
        for (topic, partition) in &t.partitions {
            match topics.last_mut() {
                Some(last) if last.topic.0.as_str() == topic => last.partitions.push(*partition),
                _ => {
                    let mut d = TopicData::default();
                    d.topic = TopicName(str(topic.clone()));
                    d.partitions = vec![*partition];
                    topics.push(d);
                }
            }
        }
        s.topics = topics;
        r.transaction_states.push(s);
    }
    r
}

pub fn list_transactions(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let mut r = ListTransactionsResponse::default();
    let mut states = Vec::new();
    for f in &req.state_filters {
        match State::ALL.iter().find(|s| s.name() == f.as_str()) {
            Some(s) => states.push(*s),
            None => r.unknown_state_filters.push(f.clone()),
        }
    }
    let now = b.clock.now_ms();
    for v in b.txns.all() {
        let t = &v.txn;
        let keep = authz.describes(Resource::TransactionalId(&v.id))
            && (req.state_filters.is_empty() || states.contains(&t.state))
            && (req.producer_id_filters.is_empty()
                || req.producer_id_filters.iter().any(|p| p.0 == t.producer_id))
            // KIP-994: only transactions running longer than this.
            && (req.duration_filter < 0
                || (t.state == State::Ongoing && now - t.started_ms > req.duration_filter));
        if keep {
            let mut l = Listed::default();
            l.transactional_id = TransactionalId(str(v.id.clone()));
            l.producer_id = ProducerId(t.producer_id);
            l.transaction_state = str(t.state.name());
            r.transaction_states.push(l);
        }
    }
    r
}
