//! Configured limits, enforced with each protocol's own refusal: AMQP queues, exchanges
//! and bindings per vhost (406), consumers per channel (530), channels above the
//! negotiated `channel_max`, Kafka topics and partitions (POLICY_VIOLATION), and the
//! cap on open connections.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use common::Broker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.unwrap()
}

async fn refused(result: lapin::Result<impl std::fmt::Debug>, expected: &str) {
    let text = result.expect_err("the broker should refuse").to_string();
    assert!(text.contains(expected), "expected {expected:?} in {text}");
}

#[tokio::test]
async fn amqp_queues_exchanges_bindings_and_consumers_stop_at_their_limits() {
    let broker = Broker::start_env(&[
        ("SLUICE_AMQP_QUEUES_MAX", "3"),
        ("SLUICE_AMQP_EXCHANGES_MAX", "2"),
        ("SLUICE_AMQP_BINDINGS_MAX", "2"),
        ("SLUICE_AMQP_CONSUMERS_PER_CHANNEL_MAX", "2"),
    ]);
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = channel(&conn).await;
    let declare = |ch: Channel, name: &'static str| async move {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
    };
    for name in ["q1", "q2", "q3"] {
        declare(ch.clone(), name).await.unwrap();
    }
    // Redeclaring an existing queue is not a new one.
    declare(ch.clone(), "q1").await.unwrap();
    refused(
        declare(ch.clone(), "q4").await,
        "PRECONDITION_FAILED - cannot declare queue 'q4': queue limit in vhost '/' (3) is reached",
    )
    .await;

    let ch = channel(&conn).await;
    for name in ["x1", "x2"] {
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    refused(
        ch.exchange_declare(
            "x3".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        "exchange limit in vhost '/' (2) is reached",
    )
    .await;

    let ch = channel(&conn).await;
    for key in ["a", "b"] {
        ch.queue_bind(
            "q1".into(),
            "x1".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    refused(
        ch.queue_bind(
            "q1".into(),
            "x1".into(),
            "c".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        "binding limit in vhost '/' (2) is reached",
    )
    .await;

    let ch = channel(&conn).await;
    // Held: lapin cancels a consumer it drops.
    let mut held = Vec::new();
    for tag in ["c1", "c2"] {
        held.push(
            ch.basic_consume(
                "q2".into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap(),
        );
    }
    refused(
        ch.basic_consume(
            "q2".into(),
            "c3".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
        "NOT_ALLOWED - reached maximum (2) of consumers per channel",
    )
    .await;
    drop(held);
}

#[tokio::test]
async fn the_connection_cap_closes_new_connections_until_one_goes() {
    let broker = Broker::start_env(&[("SLUICE_LIMITS_CONNECTIONS_MAX", "3")]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
                .await
                .unwrap(),
        );
    }
    // The fourth is closed as soon as it is accepted: nothing comes back.
    let mut s = TcpStream::connect(broker.amqp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "a connection past the cap got {got:?}");
    let last = open.pop().unwrap();
    last.close(200, "bye".into()).await.unwrap();
    // The place is free once the broker has seen the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Connection::connect(&broker.amqp_url(), ConnectionProperties::default()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no room after a close: {e}"),
        }
    }
}

#[tokio::test]
async fn kafka_topics_and_partitions_stop_at_their_limits() {
    let broker = Broker::start_env(&[
        ("SLUICE_KAFKA_TOPICS_MAX", "2"),
        ("SLUICE_KAFKA_PARTITIONS_MAX", "5"),
    ]);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka.to_string())
        .create()
        .unwrap();
    let opts = AdminOptions::new();
    let create = |name: &'static str, partitions: i32| {
        NewTopic::new(name, partitions, TopicReplication::Fixed(1))
    };
    let r = admin
        .create_topics([&create("t1", 2)], &opts)
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let r = admin
        .create_topics([&create("big", 4)], &opts)
        .await
        .unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::PolicyViolation,
        "2 + 4 partitions are past the limit of 5"
    );
    let r = admin
        .create_topics([&create("t2", 3)], &opts)
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let r = admin
        .create_topics([&create("t3", 1)], &opts)
        .await
        .unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::PolicyViolation
    );
    let r = admin
        .create_partitions([&NewPartitions::new("t1", 3)], &opts)
        .await
        .unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::PolicyViolation
    );
    admin.delete_topics(&["t2"], &opts).await.unwrap();
    let r = admin
        .create_partitions([&NewPartitions::new("t1", 3)], &opts)
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}
