//! Prometheus metrics, in the text format, taken at scrape time from the broker's own
//! state and counters (nothing is tracked for them on the message path but the counters'
//! atomic adds):
//! - RabbitMQ's names for the AMQP face, as its `rabbitmq_prometheus` plugin exposes them:
//!   `/metrics` with queue metrics summed over queues, `/metrics/per-object` with a
//!   `vhost` and `queue` label on each;
//! - kafka_exporter's names for Kafka topics and consumer groups;
//! - Sluice's own for RocketMQ subscriptions and storage, with the fsync latency
//!   histogram.
//!
//! Like RabbitMQ's plugin, the endpoints need no login.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::core::Collector;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use sluice_amqp::broker::MessageStats;

use super::Admin;

/// Collects metric families into one registry for a scrape.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn new() -> Self {
        Scrape {
            registry: Registry::new(),
        }
    }

    // Names and labels are constants of this file, valid (the scrape test makes every
    // one): a failure here is a bug, not input.
    #[allow(clippy::expect_used)]
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.register(g.clone());
        g
    }

    #[allow(clippy::expect_used)]
    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.register(c.clone());
        c
    }

    fn register(&self, c: impl Collector + 'static) {
        if let Err(e) = self.registry.register(Box::new(c)) {
            tracing::warn!(error = %e, "metric not registered");
        }
    }

    fn encode(&self) -> Response {
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.push(fsync_histogram());
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
    }
}

const NO_LABELS: [&str; 0] = [];

/// fsync latency of every log of the process, from `sluice_log::timing` (recorded where
/// the fsync runs, so this family is built from its buckets rather than observed here).
fn fsync_histogram() -> prometheus::proto::MetricFamily {
    use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};
    let snap = sluice_log::timing::FSYNC.snapshot();
    let buckets = sluice_log::timing::BUCKETS_S
        .iter()
        .zip(&snap.cumulative)
        .map(|(&bound, &count)| {
            let mut b = Bucket::default();
            b.set_upper_bound(bound);
            b.set_cumulative_count(count);
            b
        })
        .collect();
    let mut h = Histogram::default();
    h.set_sample_count(snap.count);
    h.set_sample_sum(snap.sum_s);
    h.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_histogram(h);
    let mut family = MetricFamily::default();
    family.set_name("sluice_fsync_duration_seconds".into());
    family.set_help(
        "Time an fsync job of a log took (its data files and, when new, its directory)".into(),
    );
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(vec![m]);
    family
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub async fn aggregated(State(admin): State<Arc<Admin>>) -> Response {
    scrape(&admin, false)
}

pub async fn per_object(State(admin): State<Arc<Admin>>) -> Response {
    scrape(&admin, true)
}

fn scrape(admin: &Admin, per_object: bool) -> Response {
    let s = Scrape::new();
    rabbitmq(&s, admin, per_object);
    kafka(&s, admin);
    rocketmq(&s, admin);
    storage(&s, admin);
    logins(&s, admin);
    s.encode()
}

/// Failed logins of every protocol, and those refused unchecked for failing too often.
fn logins(s: &Scrape, admin: &Admin) {
    let failed = s.counter(
        "sluice_auth_failures_total",
        "Failed logins (wrong or unknown credentials, refused signatures) since the broker started",
        &["protocol"],
    );
    let throttled = s.counter(
        "sluice_auth_throttled_total",
        "Logins refused without a check because their user failed too often from that address",
        &["protocol"],
    );
    for (face, failures, held) in admin.broker.users.guard.counts() {
        failed.with_label_values(&[face.name()]).inc_by(failures);
        throttled.with_label_values(&[face.name()]).inc_by(held);
    }
}

fn rabbitmq(s: &Scrape, admin: &Admin, per_object: bool) {
    let b = &admin.broker;
    s.gauge(
        "rabbitmq_identity_info",
        "RabbitMQ node & cluster identity info",
        &["rabbitmq_node", "rabbitmq_cluster"],
    )
    .with_label_values(&[&admin.node, &admin.node])
    .set(1);
    s.gauge(
        "rabbitmq_build_info",
        "RabbitMQ & Erlang/OTP version info",
        &["rabbitmq_version", "product_name", "product_version"],
    )
    .with_label_values(&["3.10.8", "Sluice", env!("CARGO_PKG_VERSION")])
    .set(1);
    s.gauge("rabbitmq_connections", "Connections currently open", &[])
        .with_label_values(&NO_LABELS)
        .set(i(b.connections_open() as u64));
    s.gauge("rabbitmq_channels", "Channels currently open", &[])
        .with_label_values(&NO_LABELS)
        .set(i(b.channels_open() as u64));
    let label_names: &[&str] = if per_object { &["vhost", "queue"] } else { &[] };
    let ready = s.gauge(
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        label_names,
    );
    let unacked = s.gauge(
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        label_names,
    );
    let messages = s.gauge(
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        label_names,
    );
    let consumers = s.gauge(
        "rabbitmq_queue_consumers",
        "Consumers on a queue",
        label_names,
    );
    let ready_bytes = s.gauge(
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        label_names,
    );
    let unacked_bytes = s.gauge(
        "rabbitmq_queue_messages_unacked_bytes",
        "Size in bytes of all unacknowledged messages",
        label_names,
    );
    let (mut queues, mut all_consumers) = (0i64, 0i64);
    for v in b.vhosts() {
        for q in v.client_queues() {
            let st = q.stats();
            queues += 1;
            all_consumers += i64::from(st.consumers);
            let labels: Vec<&str> = if per_object {
                vec![&v.name, &q.name]
            } else {
                Vec::new()
            };
            let add = |g: &IntGaugeVec, n: u64| g.with_label_values(&labels).add(i(n));
            add(&ready, u64::from(st.ready));
            add(&unacked, u64::from(st.unacked));
            add(&messages, u64::from(st.ready) + u64::from(st.unacked));
            add(&consumers, u64::from(st.consumers));
            add(&ready_bytes, st.ready_bytes);
            add(&unacked_bytes, st.unacked_bytes);
        }
    }
    s.gauge("rabbitmq_queues", "Queues available", &[])
        .with_label_values(&NO_LABELS)
        .set(queues);
    s.gauge("rabbitmq_consumers", "Consumers currently connected", &[])
        .with_label_values(&NO_LABELS)
        .set(all_consumers);
    s.gauge(
        "rabbitmq_global_consumers",
        "Current number of consumers",
        &["protocol"],
    )
    .with_label_values(&["amqp091"])
    .set(all_consumers);
    let st = &b.stats;
    let global = [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            &st.received,
        ),
        (
            "rabbitmq_global_messages_received_confirm_total",
            "Total number of messages received from publishers expecting confirmations",
            &st.received_confirm,
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            &st.routed,
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            &st.unroutable_dropped,
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            &st.unroutable_returned,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            &st.confirmed,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            &st.delivered_consume_manual_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            &st.delivered_consume_auto_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            &st.delivered_get_manual_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            &st.delivered_get_auto_ack,
        ),
        (
            "rabbitmq_global_messages_get_empty_total",
            "Total number of times basic.get operations fetched no message",
            &st.get_empty,
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            &st.redelivered,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            &st.acknowledged,
        ),
    ];
    for (name, help, counter) in global {
        s.counter(name, help, &["protocol"])
            .with_label_values(&["amqp091"])
            .inc_by(MessageStats::get(counter));
    }
    let delivered = [
        &st.delivered_consume_manual_ack,
        &st.delivered_consume_auto_ack,
        &st.delivered_get_manual_ack,
        &st.delivered_get_auto_ack,
    ]
    .iter()
    .map(|c| MessageStats::get(c))
    .sum();
    s.counter(
        "rabbitmq_global_messages_delivered_total",
        "Total number of messages delivered to consumers",
        &["protocol"],
    )
    .with_label_values(&["amqp091"])
    .inc_by(delivered);
}

/// kafka_exporter's metrics: offsets of every partition, committed offsets and lag of
/// every consumer group.
fn kafka(s: &Scrape, admin: &Admin) {
    let k = &admin.kafka;
    s.gauge(
        "kafka_brokers",
        "Number of Brokers in the Kafka Cluster.",
        &[],
    )
    .with_label_values(&NO_LABELS)
    .set(1);
    let partitions = s.gauge(
        "kafka_topic_partitions",
        "Number of partitions for this Topic",
        &["topic"],
    );
    let current = s.gauge(
        "kafka_topic_partition_current_offset",
        "Current Offset of a Broker at Topic/Partition",
        &["topic", "partition"],
    );
    let oldest = s.gauge(
        "kafka_topic_partition_oldest_offset",
        "Oldest Offset of a Broker at Topic/Partition",
        &["topic", "partition"],
    );
    let mut ends = std::collections::HashMap::new();
    for t in k.topics.all() {
        partitions
            .with_label_values(&[&t.name])
            .set(i64::from(t.partition_count()));
        for p in 0..t.partition_count() {
            let Some(part) = t.partition(p) else { continue };
            let (start, end) = part.offsets();
            let label = p.to_string();
            current.with_label_values(&[&t.name, &label]).set(end);
            oldest.with_label_values(&[&t.name, &label]).set(start);
            ends.insert((t.name.clone(), p), end);
        }
    }
    let group_offset = s.gauge(
        "kafka_consumergroup_current_offset",
        "Current Offset of a ConsumerGroup at Topic/Partition",
        &["consumergroup", "topic", "partition"],
    );
    let lag = s.gauge(
        "kafka_consumergroup_lag",
        "Current Approximate Lag of a ConsumerGroup at Topic/Partition",
        &["consumergroup", "topic", "partition"],
    );
    let members = s.gauge(
        "kafka_consumergroup_members",
        "Amount of members in a consumer group",
        &["consumergroup"],
    );
    for (group, _, _) in k.groups.list() {
        let count = k.groups.describe(&group).map_or(0, |d| d.members.len());
        members.with_label_values(&[&group]).set(i(count as u64));
        for (topic, parts) in k.groups.fetch(&group, None) {
            for (p, committed) in parts {
                let Some(c) = committed else { continue };
                let label = p.to_string();
                group_offset
                    .with_label_values(&[&group, &topic, &label])
                    .set(c.offset);
                if let Some(end) = ends.get(&(topic.clone(), p)) {
                    lag.with_label_values(&[&group, &topic, &label])
                        .set((end - c.offset).max(0));
                }
            }
        }
    }
}

/// RocketMQ consumer groups on each message queue: progress, lag, in-flight and retries.
fn rocketmq(s: &Scrape, admin: &Admin) {
    let labels = &["group", "topic", "queue"];
    let committed = s.gauge(
        "sluice_rocketmq_consumer_offset",
        "Offset below which every message is done for the consumer group",
        labels,
    );
    let lag = s.gauge(
        "sluice_rocketmq_consumer_lag",
        "Messages of the queue not yet done for the consumer group",
        labels,
    );
    let in_flight = s.gauge(
        "sluice_rocketmq_consumer_in_flight",
        "Messages received by the group and not yet acknowledged",
        labels,
    );
    let retrying = s.gauge(
        "sluice_rocketmq_consumer_retrying",
        "Messages waiting for their next delivery attempt",
        labels,
    );
    for sub in admin.rocketmq.subscription_stats() {
        let queue = sub.queue.to_string();
        let l = [sub.group.as_str(), sub.topic.as_str(), queue.as_str()];
        committed.with_label_values(&l).set(i(sub.committed));
        in_flight.with_label_values(&l).set(i(sub.in_flight as u64));
        retrying.with_label_values(&l).set(i(sub.retrying as u64));
        let end = admin
            .kafka
            .topics
            .get(&sub.topic)
            .and_then(|t| t.partition(sub.queue))
            .map_or(0, |p| p.offsets().1);
        lag.with_label_values(&l)
            .set((end - i(sub.committed)).max(0));
    }
}

/// The engine's stream partitions on disk: bytes, segments, appends and fsyncs (their
/// ratio is the group-commit batch size).
fn storage(s: &Scrape, admin: &Admin) {
    let labels = &["topic", "partition"];
    let bytes = s.gauge(
        "sluice_partition_bytes",
        "Bytes the partition's log holds on disk",
        labels,
    );
    let segments = s.gauge(
        "sluice_partition_segments",
        "Segment files of the partition's log",
        labels,
    );
    let appends = s.counter(
        "sluice_partition_appends_total",
        "Batches appended to the partition's log since the broker started",
        labels,
    );
    let fsyncs = s.counter(
        "sluice_partition_fsyncs_total",
        "fsyncs of the partition's log since the broker started",
        labels,
    );
    for t in admin.kafka.topics.all() {
        for p in 0..t.partition_count() {
            let Some(part) = t.partition(p) else { continue };
            let st = part.lock().log.stats();
            let label = p.to_string();
            let l = [t.name.as_str(), label.as_str()];
            bytes.with_label_values(&l).set(i(st.bytes));
            segments.with_label_values(&l).set(i(st.segments as u64));
            appends.with_label_values(&l).inc_by(st.appends);
            fsyncs.with_label_values(&l).inc_by(st.fsyncs);
        }
    }
}
