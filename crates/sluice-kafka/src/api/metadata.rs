//! Metadata: this one broker, and topics with their partitions (all led by it).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::str;
use crate::broker::KafkaBroker;
use crate::codes;
use crate::security::{Authz, Operation, Resource};
use sluice_engine::stream::{RefusalKind, Topic};

pub fn topic_entry(broker: &KafkaBroker, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(str(topic.name.clone())));
    t.topic_id = topic.id;
    t.partitions = (0..topic.partition_count())
        .map(|i| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i;
            p.leader_id = node;
            p.leader_epoch = sluice_engine::stream::partition::LEADER_EPOCH;
            p.replica_nodes = vec![node];
            p.isr_nodes = vec![node];
            p
        })
        .collect();
    t
}

fn missing(name: Option<TopicName>, code: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = name;
    t.error_code = code;
    t
}

/// Topics the principal may not describe are left out of a listing of all topics and
/// refused by name (TOPIC_AUTHORIZATION_FAILED); auto-creation needs Create.
pub fn metadata(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(b.config.node_id);
    broker.host = str(b.config.advertised_host.clone());
    broker.port = b.config.advertised_port;
    r.brokers = vec![broker];
    r.cluster_id = Some(str(b.config.cluster_id.clone()));
    r.controller_id = BrokerId(b.config.node_id);
    // v0 asks for every topic with an empty list; later versions with null.
    let all = match &req.topics {
        None => true,
        Some(list) => version == 0 && list.is_empty(),
    };
    if all {
        r.topics = b
            .topics
            .all()
            .iter()
            .filter(|t| authz.describes(Resource::Topic(&t.name)))
            .map(|t| topic_entry(b, t))
            .collect();
        return r;
    }
    // Auto-creation is implicit before v4.
    let may_create = auto_create_allowed(b, &req, version);
    for wanted in req.topics.unwrap_or_default() {
        let entry = match wanted.name {
            Some(name) if !authz.describes(Resource::Topic(&name)) => {
                missing(Some(name), codes::TOPIC_AUTHORIZATION_FAILED)
            }
            Some(name) => match b.topics.get(name.0.as_str()) {
                Some(t) => topic_entry(b, &t),
                None if may_create && !authz.allows(Operation::Create, Resource::Topic(&name)) => {
                    missing(Some(name), codes::TOPIC_AUTHORIZATION_FAILED)
                }
                None if may_create => {
                    let partitions = b.config.default_partitions;
                    match b
                        .topics
                        .create(name.0.as_str(), partitions, BTreeMap::new())
                    {
                        Ok(t) => {
                            tracing::info!(topic = %t.name, partitions, "topic auto-created");
                            topic_entry(b, &t)
                        }
                        // Created meanwhile by someone else.
                        Err(r) if r.kind == RefusalKind::AlreadyExists => {
                            match b.topics.get(name.0.as_str()) {
                                Some(t) => topic_entry(b, &t),
                                None => missing(Some(name), codes::UNKNOWN_TOPIC_OR_PARTITION),
                            }
                        }
                        Err(r) => missing(Some(name), codes::of_refusal(r.kind)),
                    }
                }
                None => {
                    let code = if sluice_engine::stream::valid_name(name.0.as_str()) {
                        codes::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        codes::INVALID_TOPIC_EXCEPTION
                    };
                    missing(Some(name), code)
                }
            },
            None => match b.topics.by_id(&wanted.topic_id) {
                Some(t) if !authz.describes(Resource::Topic(&t.name)) => {
                    let mut m = missing(None, codes::TOPIC_AUTHORIZATION_FAILED);
                    m.topic_id = wanted.topic_id;
                    m
                }
                Some(t) => topic_entry(b, &t),
                None => {
                    let mut t = missing(None, codes::UNKNOWN_TOPIC_ID);
                    t.topic_id = wanted.topic_id;
                    t
                }
            },
        };
        r.topics.push(entry);
    }
    r
}

fn auto_create_allowed(b: &KafkaBroker, req: &MetadataRequest, version: i16) -> bool {
    b.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation)
}

/// Whether answering `req` may create a topic (so the answer has file work to do).
pub fn may_create(b: &KafkaBroker, req: &MetadataRequest, version: i16) -> bool {
    auto_create_allowed(b, req, version)
        && req.topics.iter().flatten().any(|t| {
            t.name
                .as_ref()
                .is_some_and(|n| b.topics.get(n.0.as_str()).is_none())
        })
}
