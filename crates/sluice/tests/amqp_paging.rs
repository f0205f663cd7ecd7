//! Long durable queues keep their message bodies on disk, not in memory: a backlog far
//! larger than the resident share is published, the broker's memory stays well under the
//! payload, and every message comes back intact and in order through consumers,
//! `basic.get`, dead-lettering and a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::Broker;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const BODY: usize = 64 * 1024;

fn body(i: u32) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8; BODY];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b
}

async fn channel(broker: &Broker) -> (Connection, Channel) {
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
}

async fn publish(ch: &Channel, queue: &str, range: std::ops::Range<u32>) {
    let mut confirms = Vec::new();
    for i in range {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(i),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

async fn consume_all(ch: &Channel, queue: &str, n: u32) {
    ch.basic_qos(64, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.data, body(i), "message {i}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.basic_cancel("reader".into(), BasicCancelOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_durable_queue_keeps_bodies_on_disk_and_delivers_them_intact() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "backlog", FieldTable::default()).await;
    let before = broker.rss_bytes();
    // 1600 × 64 KiB = 100 MiB queued, against 8 MiB kept in memory.
    publish(&ch, "backlog", 0..1600).await;
    let grown = broker.rss_bytes().saturating_sub(before);
    let payload = 1600 * BODY as u64;
    assert!(
        grown < payload / 3,
        "memory grew by {} MiB for {} MiB of queued bodies",
        grown >> 20,
        payload >> 20
    );
    // basic.get reads a paged message back too.
    for i in 0..3 {
        let m = ch
            .basic_get("backlog".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data, body(i));
    }
    let ch2 = _conn.create_channel().await.unwrap();
    let mut consumer = ch2
        .basic_consume(
            "backlog".into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch2.basic_qos(64, BasicQosOptions::default()).await.unwrap();
    for i in 3..1600 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.data, body(i), "message {i}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_messages_come_back_after_a_restart_and_dead_letter_with_their_bodies() {
    let broker = Broker::start();
    {
        let (_conn, ch) = channel(&broker).await;
        declare(&ch, "kept", FieldTable::default()).await;
        declare(&ch, "graveyard", FieldTable::default()).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString("graveyard".into()),
        );
        declare(&ch, "doomed", args).await;
        publish(&ch, "kept", 0..400).await;
        publish(&ch, "doomed", 0..400).await;
    }
    let broker = broker.restart(false);
    let (_conn, ch) = channel(&broker).await;
    consume_all(&ch, "kept", 400).await;
    // Rejecting the paged messages dead-letters them with their bodies.
    let mut consumer = ch
        .basic_consume(
            "doomed".into(),
            "rejecter".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..400 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.data, body(i));
        d.reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
    ch.basic_cancel("rejecter".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    consume_all(&ch, "graveyard", 400).await;
}
