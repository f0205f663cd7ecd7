//! Admin APIs: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! AlterConfigs, IncrementalAlterConfigs, DescribeCluster.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::*;

use super::str;
use crate::broker::KafkaBroker;
use crate::codes;
use crate::config::TopicConfig;
use crate::security::{Authz, Operation, Resource};
use crate::topic_configs::{self, SOURCE_STATIC_BROKER, TYPE_BOOLEAN, TYPE_INT};

/// A request refused: the Kafka error code and a message.
type Refusal = (i16, String);

/// The engine's refusal as Kafka's code and message.
fn refusal(r: sluice_engine::stream::Refusal) -> Refusal {
    (codes::of_refusal(r.kind), r.message)
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
fn replication_ok(factor: i16) -> Result<(), Refusal> {
    if factor == -1 || factor == 1 {
        Ok(())
    } else {
        Err((
            codes::INVALID_REPLICATION_FACTOR,
            format!("Replication factor: {factor} larger than available brokers: 1."),
        ))
    }
}

/// Kafka's text for a refused resource.
pub const AUTHORIZATION_FAILED: &str = "Authorization failed.";

/// `denied[i]`: the principal may not create `req.topics[i]`.
pub fn create_topics(
    b: &Arc<KafkaBroker>,
    req: CreateTopicsRequest,
    denied: Vec<bool>,
) -> CreateTopicsResponse {
    let mut r = CreateTopicsResponse::default();
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    for (i, t) in req.topics.into_iter().enumerate() {
        let name = t.name.0.to_string();
        let mut out = CreatableTopicResult::default();
        out.name = t.name.clone();
        if denied.get(i).copied().unwrap_or(false) {
            out.error_code = codes::TOPIC_AUTHORIZATION_FAILED;
            out.error_message = Some(str(AUTHORIZATION_FAILED));
            out.num_partitions = -1;
            out.replication_factor = -1;
            r.topics.push(out);
            continue;
        }
        let partitions = if !t.assignments.is_empty() {
            t.assignments.len() as i32
        } else if t.num_partitions == -1 {
            b.config.default_partitions
        } else {
            t.num_partitions
        };
        let overrides: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let result = if duplicated.contains(&name) {
            Err((
                codes::INVALID_REQUEST,
                format!(
                    "Create topics request from client contains multiple entries for topic {name}"
                ),
            ))
        } else {
            let factor = if t.assignments.is_empty() {
                t.replication_factor
            } else {
                t.assignments
                    .first()
                    .map_or(1, |a| a.broker_ids.len() as i16)
            };
            replication_ok(factor).and_then(|_| {
                if req.validate_only {
                    b.topics
                        .validate(&name, partitions, &overrides)
                        .map_err(refusal)
                } else {
                    b.topics
                        .create(&name, partitions, overrides.clone())
                        .map_err(refusal)
                        .map(|topic| {
                            out.topic_id = topic.id;
                        })
                }
            })
        };
        match result {
            Ok(()) => {
                out.num_partitions = partitions;
                out.replication_factor = 1;
                let config = TopicConfig::with_overrides(b.topics.defaults(), &overrides)
                    .unwrap_or_else(|_| b.topics.defaults().clone());
                let described = topic_configs::describe(
                    &config,
                    |n| overrides.contains_key(n),
                    b.topics.defaults(),
                    &b.config.log,
                    false,
                );
                out.configs = Some(
                    described
                        .into_iter()
                        .map(|d| {
                            let mut c = CreatableTopicConfigs::default();
                            c.name = str(d.name);
                            c.value = Some(str(d.value));
                            c.read_only = d.read_only;
                            c.config_source = d.source;
                            c
                        })
                        .collect(),
                );
            }
            Err((code, message)) => {
                out.error_code = code;
                out.error_message = Some(str(message));
                out.num_partitions = -1;
                out.replication_factor = -1;
            }
        }
        r.topics.push(out);
    }
    r
}

pub async fn delete_topics(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut r = DeleteTopicsResponse::default();
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = Vec::new();
    if version >= 6 {
        for t in req.topics {
            wanted.push((t.name.map(|n| n.0.to_string()), t.topic_id));
        }
    } else {
        for n in req.topic_names {
            wanted.push((Some(n.0.to_string()), uuid::Uuid::nil()));
        }
    }
    for (name, id) in wanted {
        let mut out = DeletableTopicResult::default();
        let name = match name {
            Some(n) => Some(n),
            None => b.topics.by_id(&id).map(|t| t.name.clone()),
        };
        out.topic_id = id;
        let Some(name) = name else {
            out.error_code = codes::UNKNOWN_TOPIC_ID;
            r.responses.push(out);
            continue;
        };
        out.name = Some(TopicName(str(name.clone())));
        if !authz.allows(Operation::Delete, Resource::Topic(&name)) {
            out.error_code = codes::TOPIC_AUTHORIZATION_FAILED;
            out.error_message = Some(str(AUTHORIZATION_FAILED));
            r.responses.push(out);
            continue;
        }
        // Renaming and removing the topic's files happens off the worker threads.
        let deleted = {
            let (b, name) = (Arc::clone(b), name.clone());
            tokio::task::spawn_blocking(move || b.topics.delete(&name).map_err(refusal))
                .await
                .unwrap_or_else(|e| Err((codes::UNKNOWN_SERVER_ERROR, e.to_string())))
        };
        match deleted {
            Ok(topic) => {
                out.topic_id = topic.id;
                b.groups.forget_topic(&name).await;
                tracing::info!(topic = %name, "topic deleted");
            }
            Err((code, message)) => {
                out.error_code = code;
                out.error_message = Some(str(message));
            }
        }
        r.responses.push(out);
    }
    r
}

pub fn create_partitions(
    b: &Arc<KafkaBroker>,
    req: CreatePartitionsRequest,
    denied: Vec<bool>,
) -> CreatePartitionsResponse {
    let mut r = CreatePartitionsResponse::default();
    for (i, t) in req.topics.into_iter().enumerate() {
        let mut out = CreatePartitionsTopicResult::default();
        let result = match b.topics.get(t.name.0.as_str()) {
            _ if denied.get(i).copied().unwrap_or(false) => Err((
                codes::TOPIC_AUTHORIZATION_FAILED,
                AUTHORIZATION_FAILED.to_string(),
            )),
            None => Err((
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("The topic '{}' does not exist.", t.name.0.as_str()),
            )),
            Some(topic) if req.validate_only => {
                if t.count > topic.partition_count() {
                    Ok(())
                } else {
                    Err((
                        codes::INVALID_PARTITIONS,
                        format!(
                            "Topic currently has {} partitions, which is higher than the requested {}.",
                            topic.partition_count(),
                            t.count
                        ),
                    ))
                }
            }
            Some(topic) => b.topics.add_partitions(&topic, t.count).map_err(refusal),
        };
        if let Err((code, message)) = result {
            out.error_code = code;
            out.error_message = Some(str(message));
        }
        out.name = t.name;
        r.results.push(out);
    }
    r
}

fn broker_configs(b: &KafkaBroker) -> Vec<(&'static str, String, i8)> {
    vec![
        ("broker.id", b.config.node_id.to_string(), TYPE_INT),
        (
            "auto.create.topics.enable",
            b.config.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        (
            "num.partitions",
            b.config.default_partitions.to_string(),
            TYPE_INT,
        ),
        (
            "group.initial.rebalance.delay.ms",
            b.config
                .group_initial_rebalance_delay
                .as_millis()
                .to_string(),
            TYPE_INT,
        ),
        (
            "socket.request.max.bytes",
            b.config.max_request_bytes.to_string(),
            TYPE_INT,
        ),
    ]
}

pub fn describe_configs(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut r = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        if !authz.allows(
            Operation::DescribeConfigs,
            config_resource(res.resource_type, res.resource_name.as_str()),
        ) {
            out.error_code = config_denied(res.resource_type);
            out.error_message = Some(str(AUTHORIZATION_FAILED));
            r.results.push(out);
            continue;
        }
        let wanted = |n: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == n))
        };
        match res.resource_type {
            RESOURCE_TOPIC => match b.topics.get(res.resource_name.as_str()) {
                Some(topic) => {
                    let st = topic.read();
                    let described = topic_configs::describe(
                        &st.config,
                        |n| st.overrides.contains_key(n),
                        b.topics.defaults(),
                        &b.config.log,
                        req.include_synonyms,
                    );
                    for d in described.into_iter().filter(|d| wanted(d.name)) {
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = str(d.name);
                        c.value = Some(str(d.value));
                        c.config_source = d.source;
                        c.read_only = d.read_only;
                        c.config_type = d.config_type;
                        c.synonyms = d
                            .synonyms
                            .into_iter()
                            .map(|(name, value, source)| {
                                let mut s = DescribeConfigsSynonym::default();
                                s.name = str(name);
                                s.value = Some(str(value));
                                s.source = source;
                                s
                            })
                            .collect();
                        out.configs.push(c);
                    }
                }
                None => {
                    out.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                    out.error_message = Some(str(format!(
                        "Topic {} does not exist",
                        res.resource_name.as_str()
                    )));
                }
            },
            RESOURCE_BROKER => {
                for (n, v, ty) in broker_configs(b).into_iter().filter(|(n, _, _)| wanted(n)) {
                    let mut c = DescribeConfigsResourceResult::default();
                    c.name = str(n);
                    c.value = Some(str(v));
                    c.read_only = true;
                    c.config_source = SOURCE_STATIC_BROKER;
                    c.config_type = ty;
                    out.configs.push(c);
                }
            }
            other => {
                out.error_code = codes::INVALID_REQUEST;
                out.error_message = Some(str(format!("resource type {other} is not supported")));
            }
        }
        r.results.push(out);
    }
    r
}

/// Validates and (unless `validate_only`) stores a topic's new overrides.
fn alter_topic(
    b: &KafkaBroker,
    resource_type: i8,
    name: &str,
    change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), Refusal>,
    validate_only: bool,
) -> Result<(), Refusal> {
    if resource_type != RESOURCE_TOPIC {
        return Err((
            codes::INVALID_REQUEST,
            "only topic configs can be altered; broker settings come from the config file".into(),
        ));
    }
    let topic = b.topics.get(name).ok_or_else(|| {
        (
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("Topic {name} does not exist"),
        )
    })?;
    let mut overrides = topic.read().overrides.clone();
    change(&mut overrides)?;
    TopicConfig::with_overrides(b.topics.defaults(), &overrides)
        .map_err(|e| (codes::INVALID_CONFIG, e))?;
    if validate_only {
        return Ok(());
    }
    b.topics.set_overrides(&topic, overrides).map_err(refusal)
}

/// What a config resource is, for authorization (topics, or the broker as the cluster).
pub fn config_resource(resource_type: i8, name: &str) -> Resource<'_> {
    if resource_type == RESOURCE_TOPIC {
        Resource::Topic(name)
    } else {
        Resource::Cluster
    }
}

fn config_denied(resource_type: i8) -> i16 {
    if resource_type == RESOURCE_TOPIC {
        codes::TOPIC_AUTHORIZATION_FAILED
    } else {
        codes::CLUSTER_AUTHORIZATION_FAILED
    }
}

pub fn alter_configs(
    b: &Arc<KafkaBroker>,
    req: AlterConfigsRequest,
    denied: Vec<bool>,
) -> AlterConfigsResponse {
    let mut r = AlterConfigsResponse::default();
    for (i, res) in req.resources.into_iter().enumerate() {
        // AlterConfigs replaces the whole set of overrides.
        let result = if denied.get(i).copied().unwrap_or(false) {
            Err((
                config_denied(res.resource_type),
                AUTHORIZATION_FAILED.to_string(),
            ))
        } else {
            alter_topic(
                b,
                res.resource_type,
                res.resource_name.as_str(),
                |o| {
                    o.clear();
                    for c in &res.configs {
                        if let Some(v) = &c.value {
                            o.insert(c.name.to_string(), v.to_string());
                        }
                    }
                    Ok(())
                },
                req.validate_only,
            )
        };
        let mut out = AlterConfigsResourceResponse::default();
        if let Err((code, message)) = result {
            out.error_code = code;
            out.error_message = Some(str(message));
        }
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        r.responses.push(out);
    }
    r
}

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

pub fn incremental_alter_configs(
    b: &Arc<KafkaBroker>,
    req: IncrementalAlterConfigsRequest,
    denied: Vec<bool>,
) -> IncrementalAlterConfigsResponse {
    let mut r = IncrementalAlterConfigsResponse::default();
    for (i, res) in req.resources.into_iter().enumerate() {
        let result = if denied.get(i).copied().unwrap_or(false) {
            Err((
                config_denied(res.resource_type),
                AUTHORIZATION_FAILED.to_string(),
            ))
        } else {
            alter_topic(
                b,
                res.resource_type,
                res.resource_name.as_str(),
                |o| {
                    for c in &res.configs {
                        match (c.config_operation, &c.value) {
                            (OP_SET, Some(v)) => {
                                o.insert(c.name.to_string(), v.to_string());
                            }
                            (OP_DELETE, _) => {
                                o.remove(c.name.as_str());
                            }
                            _ => {
                                return Err((
                                    codes::INVALID_CONFIG,
                                    format!(
                                        "operation {} is not valid for {}",
                                        c.config_operation,
                                        c.name.as_str()
                                    ),
                                ));
                            }
                        }
                    }
                    Ok(())
                },
                req.validate_only,
            )
        };
        let mut out = IncrementalResult::default();
        if let Err((code, message)) = result {
            out.error_code = code;
            out.error_message = Some(str(message));
        }
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        r.responses.push(out);
    }
    r
}

/// Moves partitions' log start offsets (DeleteRecords); `denied[i]`: the principal may
/// not delete records of `req.topics[i]`. Blocking (file deletes and fsyncs).
pub fn delete_records(
    b: &Arc<KafkaBroker>,
    req: DeleteRecordsRequest,
    denied: Vec<bool>,
) -> DeleteRecordsResponse {
    let mut r = DeleteRecordsResponse::default();
    for (i, t) in req.topics.into_iter().enumerate() {
        let topic = b.topics.get(t.name.0.as_str());
        let refused = denied.get(i).copied().unwrap_or(false);
        let mut out = DeleteRecordsTopicResult::default();
        out.name = t.name;
        for p in t.partitions {
            let mut res = DeleteRecordsPartitionResult::default();
            res.partition_index = p.partition_index;
            res.low_watermark = -1;
            let partition = topic.as_ref().and_then(|t| t.partition(p.partition_index));
            match partition {
                _ if refused => res.error_code = codes::TOPIC_AUTHORIZATION_FAILED,
                None => res.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION,
                Some(part) => match part.delete_records(p.offset) {
                    Ok(low) => {
                        res.low_watermark = low;
                        tracing::info!(topic = %out.name.0, partition = p.partition_index, low, "records deleted");
                    }
                    Err(None) => res.error_code = codes::OFFSET_OUT_OF_RANGE,
                    Err(Some(e)) => {
                        tracing::error!(error = %e, "DeleteRecords failed");
                        res.error_code = codes::KAFKA_STORAGE_ERROR;
                    }
                },
            }
            out.partitions.push(res);
        }
        r.topics.push(out);
    }
    r
}

pub fn describe_cluster(
    b: &Arc<KafkaBroker>,
    _req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut r = DescribeClusterResponse::default();
    r.cluster_id = str(b.config.cluster_id.clone());
    r.controller_id = BrokerId(b.config.node_id);
    let mut broker = DescribeClusterBroker::default();
    broker.broker_id = BrokerId(b.config.node_id);
    broker.host = str(b.config.advertised_host.clone());
    broker.port = b.config.advertised_port;
    r.brokers = vec![broker];
    r
}
