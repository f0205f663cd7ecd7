//! Resource alarms: past the memory high watermark (or under the disk free limit) a
//! publishing connection is blocked with `connection.blocked` and not read from, while
//! consumers keep being served — as RabbitMQ does.

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
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::test]
async fn a_memory_alarm_blocks_publishers_but_keeps_serving_consumers() {
    // A watermark far below any real process size: the alarm goes off at once.
    let broker = Broker::start_env(&[("SLUICE_LIMITS_MEMORY_HIGH_WATERMARK", "0.000001")]);
    let consumer_conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let cch = consumer_conn.create_channel().await.unwrap();
    cch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = cch
        .basic_consume(
            "work".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let publisher = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let pch = publisher.create_channel().await.unwrap();
    pch.basic_publish(
        "".into(),
        "work".into(),
        BasicPublishOptions::default(),
        b"first",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // The message published before the block still reaches the consumer.
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"first");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !publisher.status().blocked() {
        assert!(
            Instant::now() < deadline,
            "the publishing connection was never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !consumer_conn.status().blocked(),
        "a connection that never published stays unblocked"
    );
    // While blocked, nothing more gets through from the publisher (lapin also holds its
    // publishes back once it is told the connection is blocked).
    let held = tokio::time::timeout(Duration::from_millis(700), async {
        let _ = pch
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                b"held",
                BasicProperties::default(),
            )
            .await;
        consumer.next().await
    })
    .await;
    assert!(
        held.is_err(),
        "a blocked publisher's message got through: {held:?}"
    );
}
