//! One log for AMQP and Kafka with real clients on both sides (lapin and rdkafka): a
//! stream queue declared over AMQP is a one-partition topic, what lapin publishes rdkafka
//! consumes, and what rdkafka produces a lapin stream consumer receives, live.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use common::Broker;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(20);

fn stream_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("stream")),
    );
    args
}

async fn channel(b: &Broker) -> (Connection, Channel) {
    let conn = Connection::connect(&b.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

async fn declare_stream(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        stream_args(),
    )
    .await
    .unwrap();
}

/// A consumer of stream queue `queue` from `x-stream-offset: first`.
async fn consume_from_first(ch: &Channel, queue: &str, prefetch: u16) -> lapin::Consumer {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::LongString(LongString::from("first")),
    );
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .unwrap()
}

fn kafka(b: &Broker) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", b.kafka.to_string());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publishes_and_rdkafka_reads_the_same_log() {
    let b = Broker::start();
    let (_conn, ch) = channel(&b).await;
    declare_stream(&ch, "orders").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("trace"),
            AMQPValue::LongString(LongString::from(format!("t{i}"))),
        );
        ch.basic_publish(
            "".into(),
            "orders".into(),
            BasicPublishOptions::default(),
            format!("order-{i}").as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let kafka = b.kafka;
    let records = tokio::task::spawn_blocking(move || BrokerAddr(kafka).read("orders", 5))
        .await
        .unwrap();
    for (i, (offset, key, value, trace)) in records.into_iter().enumerate() {
        assert_eq!(offset, i as i64);
        assert_eq!(key.as_deref(), Some(&b"orders"[..]));
        assert_eq!(value, format!("order-{i}").into_bytes());
        assert_eq!(trace, Some(format!("t{i}").into_bytes()));
    }
}

/// The Kafka address alone, for reading on a blocking thread.
struct BrokerAddr(std::net::SocketAddr);

type Read = (i64, Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>);

impl BrokerAddr {
    fn read(&self, topic: &str, n: usize) -> Vec<Read> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.0.to_string())
            .set("group.id", "streams-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let trace = m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == "trace")
                        .and_then(|x| x.value.map(<[u8]>::to_vec))
                });
                out.push((
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                    trace,
                ));
            }
        }
        assert_eq!(out.len(), n, "records read from {topic}");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_produces_and_a_lapin_stream_consumer_receives_live() {
    let b = Broker::start();
    let (_conn, ch) = channel(&b).await;
    declare_stream(&ch, "events").await;
    let mut consumer = consume_from_first(&ch, "events", 10).await;
    let producer: FutureProducer = kafka(&b).set("linger.ms", "5").create().unwrap();
    for i in 0..20 {
        let value = format!("e{i}");
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to("events")
                    .key(key.as_bytes())
                    .payload(value.as_bytes())
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "h",
                        value: Some(&b"v"[..]),
                    })),
                WAIT,
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    for i in 0..20u64 {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery.data, format!("e{i}").into_bytes());
        assert_eq!(delivery.routing_key.as_str(), format!("k{i}"));
        let headers = delivery.properties.headers().clone().unwrap();
        assert_eq!(
            headers.inner().get("x-stream-offset"),
            Some(&AMQPValue::LongLongInt(i as i64))
        );
        assert_eq!(
            headers.inner().get("h"),
            Some(&AMQPValue::LongString(LongString::from("v")))
        );
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // The Kafka side still reads every record: AMQP acks remove nothing.
    let b_kafka = b.kafka;
    let n = tokio::task::spawn_blocking(move || BrokerAddr(b_kafka).read("events", 20).len())
        .await
        .unwrap();
    assert_eq!(n, 20);
}

async fn read_stream(ch: &Channel, queue: &str, n: usize) -> Vec<Vec<u8>> {
    let mut consumer = consume_from_first(ch, queue, 100).await;
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        out.push(d.data);
    }
    out
}

/// A vhost other than `/` keeps its stream queues itself: same names as in `/` do not
/// meet, Kafka does not see them, and they survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_queues_of_another_vhost_are_its_own() {
    let b = Broker::start_env(&[("SLUICE_AMQP_VHOSTS", "/,staging")]);
    let staging_url = |b: &Broker| format!("amqp://guest:guest@{}/staging", b.amqp);
    let conn = Connection::connect(&staging_url(&b), ConnectionProperties::default())
        .await
        .unwrap();
    let sch = conn.create_channel().await.unwrap();
    declare_stream(&sch, "events").await;
    sch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        sch.basic_publish(
            "".into(),
            "events".into(),
            BasicPublishOptions::default(),
            format!("staged-{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let (_root, rch) = channel(&b).await;
    declare_stream(&rch, "events").await;
    // Kafka sees the `/` stream only: empty.
    let kafka = b.kafka;
    let listed = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka.to_string())
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some("events"), Duration::from_secs(10))
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks("events", 0, Duration::from_secs(10))
            .unwrap();
        (md.topics().len(), low, high)
    })
    .await
    .unwrap();
    assert_eq!(listed, (1, 0, 0));
    let staged = read_stream(&conn.create_channel().await.unwrap(), "events", 3).await;
    assert_eq!(
        staged,
        [
            b"staged-0".to_vec(),
            b"staged-1".to_vec(),
            b"staged-2".to_vec()
        ]
    );
    drop(conn);
    let b = b.restart(true);
    let conn = Connection::connect(&staging_url(&b), ConnectionProperties::default())
        .await
        .unwrap();
    let after = read_stream(&conn.create_channel().await.unwrap(), "events", 3).await;
    assert_eq!(after, staged);
}

/// Retention reaches the stream queues a vhost keeps itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_the_stream_queues_of_another_vhost() {
    let b = Broker::start_env(&[
        ("SLUICE_AMQP_VHOSTS", "/,staging"),
        ("SLUICE_STORAGE_RETENTION_CHECK_INTERVAL_MS", "200"),
    ]);
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/staging", b.amqp),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = stream_args();
    args.insert(
        ShortString::from("x-max-length-bytes"),
        AMQPValue::LongLongInt(2_000),
    );
    args.insert(
        ShortString::from("x-stream-max-segment-size-bytes"),
        AMQPValue::LongLongInt(1_000),
    );
    ch.queue_declare(
        "trimmed".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..60 {
        ch.basic_publish(
            "".into(),
            "trimmed".into(),
            BasicPublishOptions::default(),
            &[b'x'; 100],
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let consumer = conn.create_channel().await.unwrap();
        let mut c = consume_from_first(&consumer, "trimmed", 1).await;
        let d = tokio::time::timeout(WAIT, c.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let headers = d.properties.headers().clone().unwrap();
        let first_offset = match headers.inner().get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(o)) => *o,
            other => panic!("{other:?}"),
        };
        let _ = consumer.close(200, "done".into()).await;
        if first_offset > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention never trimmed the stream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
