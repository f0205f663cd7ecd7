//! Durable AMQP state across restarts and crashes, with a real client (lapin): durable
//! exchanges, queues and bindings come back; persistent messages in durable queues come
//! back unless acknowledged; transient ones and non-durable queues do not; nothing a
//! publisher confirm acknowledged is lost to `kill -9`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::Broker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

async fn channel(broker: &Broker) -> (Connection, Channel) {
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn bodies(ch: &Channel, queue: &str) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push((m.delivery.data.clone(), m.delivery.redelivered));
    }
    out
}

async fn queue_exists(broker: &Broker, name: &str) -> bool {
    let (_conn, ch) = channel(broker).await;
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .is_ok()
}

#[tokio::test]
async fn durable_definitions_and_persistent_messages_survive_a_restart_and_transient_ones_do_not() {
    let broker = Broker::start();
    {
        let (conn, ch) = channel(&broker).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare("keep".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(
            "scratch".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "orders".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "keep".into(),
            "orders".into(),
            "order.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        for (body, props) in [
            (&b"p1"[..], persistent()),
            (b"t1", BasicProperties::default()),
            (b"p2", persistent()),
        ] {
            ch.basic_publish(
                "orders".into(),
                "order.created".into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        // One persistent message acknowledged before the restart must not come back.
        ch.basic_publish(
            "".into(),
            "keep".into(),
            BasicPublishOptions::default(),
            b"acked",
            persistent(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let got: Vec<_> = bodies(&ch, "keep").await;
        assert_eq!(got.len(), 4);
        for (body, props) in [
            (&b"p1"[..], persistent()),
            (b"t1", BasicProperties::default()),
            (b"p2", persistent()),
        ] {
            ch.basic_publish(
                "orders".into(),
                "order.created".into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        conn.close(200, "bye".into()).await.unwrap();
    }
    let broker = broker.restart(true);
    assert!(
        !queue_exists(&broker, "scratch").await,
        "non-durable queues are gone"
    );
    let (_conn, ch) = channel(&broker).await;
    let got: Vec<Vec<u8>> = bodies(&ch, "keep")
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(
        got,
        [b"p1".to_vec(), b"p2".to_vec()],
        "persistent messages only, in order"
    );
    // The durable exchange and its binding came back too.
    ch.basic_publish(
        "orders".into(),
        "order.paid".into(),
        BasicPublishOptions::default(),
        b"after",
        persistent(),
    )
    .await
    .unwrap();
    let got: Vec<Vec<u8>> = bodies(&ch, "keep")
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(got, [b"after".to_vec()]);
}

#[tokio::test]
async fn kill_9_loses_no_confirmed_message_and_unacked_ones_come_back_redelivered() {
    let broker = Broker::start();
    let total = 2000u32;
    {
        let (_conn, ch) = channel(&broker).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare("crash".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        let mut confirms = Vec::new();
        for i in 0..total {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "crash".into(),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    persistent(),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
        // Take two without acknowledging them, then crash.
        for _ in 0..2 {
            ch.basic_get("crash".into(), BasicGetOptions::default())
                .await
                .unwrap()
                .unwrap();
        }
    }
    let broker = broker.restart(false);
    let (_conn, ch) = channel(&broker).await;
    let got = bodies(&ch, "crash").await;
    assert_eq!(
        got.len() as u32,
        total,
        "every confirmed message is still there"
    );
    let seqs: Vec<u32> = got
        .iter()
        .map(|(b, _)| u32::from_be_bytes(b[..4].try_into().unwrap()))
        .collect();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>(), "in publish order");
    assert!(
        got[0].1 && got[1].1,
        "messages unacked at the crash come back redelivered"
    );
}

#[tokio::test]
async fn acknowledged_messages_stay_gone_after_a_crash_once_flushed() {
    let broker = Broker::start();
    {
        let (_conn, ch) = channel(&broker).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare("settle".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..10u8 {
            ch.basic_publish(
                "".into(),
                "settle".into(),
                BasicPublishOptions::default(),
                &[i],
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        for _ in 0..4 {
            let m = ch
                .basic_get("settle".into(), BasicGetOptions::default())
                .await
                .unwrap()
                .unwrap();
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    // A graceful stop makes the acknowledgements durable.
    let broker = broker.restart(true);
    let (_conn, ch) = channel(&broker).await;
    let got: Vec<u8> = bodies(&ch, "settle")
        .await
        .into_iter()
        .map(|(b, _)| b[0])
        .collect();
    assert_eq!(got, [4, 5, 6, 7, 8, 9]);
}
