//! Sluice's own endpoints, for what RabbitMQ's API has no place for: the engine's topics
//! (Kafka topics, RocketMQ topics and stream queues) with their partitions and offsets,
//! Kafka consumer groups with members, committed offsets and lag, RocketMQ consumer
//! groups' subscriptions with in-flight and retry counts, and held (delayed and
//! half) messages. Same login and error shapes as the management API.
//!
//! - `GET /api/sluice/topics`, `GET /api/sluice/topics/{name}`
//! - `GET /api/sluice/kafka/groups`, `GET /api/sluice/kafka/groups/{group}`
//! - `GET /api/sluice/rocketmq/subscriptions`, `GET /api/sluice/rocketmq/held`

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Admin, User, error};

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

fn topic_json(t: &sluice_engine::stream::Topic, with_partitions: bool) -> Value {
    let mut messages = 0i64;
    let mut bytes = 0u64;
    let mut partitions = Vec::new();
    for p in 0..t.partition_count() {
        let Some(part) = t.partition(p) else { continue };
        let (start, end) = part.offsets();
        let stats = part.lock().log.stats();
        messages += end - start;
        bytes += stats.bytes;
        partitions.push(
            json!({"partition": p, "log_start_offset": start, "end_offset": end,
                               "bytes": stats.bytes, "segments": stats.segments}),
        );
    }
    let config = t.config();
    let mut body = json!({
        "name": t.name,
        "partitions": t.partition_count(),
        "message_type": config.message_type.as_str(),
        "messages": messages,
        "bytes": bytes,
    });
    if with_partitions && let Value::Object(m) = &mut body {
        m.insert("partition_details".into(), Value::Array(partitions));
    }
    body
}

pub async fn topics(State(admin): State<Arc<Admin>>, _: User) -> Response {
    let mut all = admin.kafka.topics.all();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let items: Vec<Value> = all.iter().map(|t| topic_json(t, false)).collect();
    Json(Value::Array(items)).into_response()
}

pub async fn one_topic(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    match admin.kafka.topics.get(&name) {
        Some(t) => Json(topic_json(&t, true)).into_response(),
        None => not_found(),
    }
}

/// The end offset of every partition, by topic and partition.
fn ends(admin: &Admin) -> HashMap<(String, i32), i64> {
    let mut out = HashMap::new();
    for t in admin.kafka.topics.all() {
        for p in 0..t.partition_count() {
            if let Some(part) = t.partition(p) {
                out.insert((t.name.clone(), p), part.offsets().1);
            }
        }
    }
    out
}

/// A group's committed offsets with the lag behind each partition's end.
fn group_offsets(admin: &Admin, group: &str, ends: &HashMap<(String, i32), i64>) -> Vec<Value> {
    let mut out = Vec::new();
    for (topic, parts) in admin.kafka.groups.fetch(group, None) {
        for (p, committed) in parts {
            let Some(c) = committed else { continue };
            let end = ends.get(&(topic.clone(), p)).copied();
            out.push(
                json!({"topic": topic, "partition": p, "committed": c.offset,
                            "end_offset": end, "lag": end.map(|e| (e - c.offset).max(0))}),
            );
        }
    }
    out
}

pub async fn kafka_groups(State(admin): State<Arc<Admin>>, _: User) -> Response {
    let ends = ends(&admin);
    let items: Vec<Value> = admin
        .kafka
        .groups
        .list()
        .into_iter()
        .map(|(group, protocol_type, state)| {
            let members = admin
                .kafka
                .groups
                .describe(&group)
                .map_or(0, |d| d.members.len());
            let lag: i64 = group_offsets(&admin, &group, &ends)
                .iter()
                .filter_map(|o| o["lag"].as_i64())
                .sum();
            json!({"group": group, "protocol_type": protocol_type, "state": state,
                   "members": members, "lag": lag})
        })
        .collect();
    Json(Value::Array(items)).into_response()
}

pub async fn kafka_group(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(group): Path<String>,
) -> Response {
    let Some((_, protocol_type, state)) = admin
        .kafka
        .groups
        .list()
        .into_iter()
        .find(|(g, _, _)| *g == group)
    else {
        return not_found();
    };
    let members: Vec<Value> = admin
        .kafka
        .groups
        .describe(&group)
        .map(|d| {
            d.members
                .iter()
                .map(|(id, instance, client, host, _, _)| {
                    json!({"member_id": id, "group_instance_id": instance,
                           "client_id": client, "client_host": host})
                })
                .collect()
        })
        .unwrap_or_default();
    let offsets = group_offsets(&admin, &group, &ends(&admin));
    Json(
        json!({"group": group, "protocol_type": protocol_type, "state": state,
                "members": members, "offsets": offsets}),
    )
    .into_response()
}

pub async fn rocketmq_subscriptions(State(admin): State<Arc<Admin>>, _: User) -> Response {
    let ends = ends(&admin);
    let items: Vec<Value> = admin
        .rocketmq
        .subscription_stats()
        .into_iter()
        .map(|s| {
            let end = ends.get(&(s.topic.clone(), s.queue)).copied().unwrap_or(0);
            let committed = i64::try_from(s.committed).unwrap_or(i64::MAX);
            json!({"group": s.group, "topic": s.topic, "queue": s.queue,
                   "committed": s.committed, "end_offset": end,
                   "lag": (end - committed).max(0),
                   "in_flight": s.in_flight, "retrying": s.retrying})
        })
        .collect();
    Json(Value::Array(items)).into_response()
}

pub async fn rocketmq_held(State(admin): State<Arc<Admin>>, _: User) -> Response {
    let ((delayed, delayed_next), (half, half_next)) = admin.rocketmq.held_counts();
    Json(json!({
        "delayed": {"messages": delayed, "next_due_ms": delayed_next},
        "transactions": {"half_messages": half, "next_check_ms": half_next},
    }))
    .into_response()
}

/// AMQP delayed exchanges (`x-delayed-message`) with the messages each holds until due.
pub async fn amqp_delayed(State(admin): State<Arc<Admin>>, _: User) -> Response {
    let mut items = Vec::new();
    for v in admin.broker.vhosts() {
        let names: Vec<String> = v
            .router()
            .exchanges()
            .filter(|e| v.is_delayed(&e.name))
            .map(|e| e.name.to_string())
            .collect();
        for name in names {
            let held = v.delayed_store(&name).map_or(0, |q| q.stats().ready);
            items.push(json!({"vhost": v.name, "exchange": name, "messages": held}));
        }
    }
    Json(Value::Array(items)).into_response()
}
