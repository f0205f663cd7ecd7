//! The AMQP 0-9-1 face against a real client (lapin): handshake, exchanges and routing,
//! queues, publishing, consuming, acknowledgements, confirms, and RabbitMQ's reply codes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Broker;
use futures_lite::StreamExt;
use lapin::Confirmation;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(broker: &Broker) -> Connection {
    Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap()
}

async fn channel(broker: &Broker) -> (Connection, Channel) {
    let conn = connect(broker).await;
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

async fn declare(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap();
}

async fn get_body(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .map(|m| m.delivery.data.clone())
}

/// Every body currently in `queue`, via basic.get.
async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = get_body(ch, queue).await {
        out.push(b);
    }
    out
}

#[tokio::test]
async fn a_message_published_to_the_default_exchange_reaches_a_consumer_and_is_acked() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "work").await;
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("corr-1".into())
        .with_priority(3);
    ch.basic_publish(
        "".into(),
        "work".into(),
        BasicPublishOptions::default(),
        b"hello",
        props.clone(),
    )
    .await
    .unwrap();
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delivery.data, b"hello");
    assert_eq!(delivery.properties, props);
    assert_eq!(delivery.routing_key.as_str(), "work");
    assert!(!delivery.redelivered);
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    let q = ch
        .queue_declare(
            "work".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn headers_of_every_field_type_round_trip_unchanged() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "types").await;
    let mut inner = FieldTable::default();
    inner.insert("nested".into(), AMQPValue::LongString("yes".into()));
    let mut headers = FieldTable::default();
    headers.insert("bool".into(), AMQPValue::Boolean(true));
    headers.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    headers.insert("u8".into(), AMQPValue::ShortShortUInt(8));
    headers.insert("i16".into(), AMQPValue::ShortInt(-16));
    headers.insert("i32".into(), AMQPValue::LongInt(-32));
    headers.insert("i64".into(), AMQPValue::LongLongInt(-64));
    headers.insert("f32".into(), AMQPValue::Float(1.5));
    headers.insert("f64".into(), AMQPValue::Double(2.25));
    headers.insert(
        "dec".into(),
        AMQPValue::DecimalValue(lapin::types::DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    headers.insert("str".into(), AMQPValue::LongString("text".into()));
    headers.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
    headers.insert("table".into(), AMQPValue::FieldTable(inner));
    headers.insert(
        "array".into(),
        AMQPValue::FieldArray(
            vec![AMQPValue::LongInt(1), AMQPValue::LongString("two".into())].into(),
        ),
    );
    headers.insert(
        "bytes".into(),
        AMQPValue::ByteArray(vec![0u8, 255, 7].into()),
    );
    headers.insert("void".into(), AMQPValue::Void);
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_001)
        .with_type("kind".into())
        .with_app_id("app".into())
        .with_reply_to("reply".into())
        .with_expiration("60000".into())
        .with_content_encoding("gzip".into())
        .with_user_id("guest".into());
    ch.basic_publish(
        "".into(),
        "types".into(),
        BasicPublishOptions::default(),
        b"x",
        props.clone(),
    )
    .await
    .unwrap();
    let got = ch
        .basic_get("types".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.properties, props);
}

#[tokio::test]
async fn direct_fanout_topic_and_headers_exchanges_route_as_rabbitmq_does() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    for q in ["d", "f1", "f2", "t1", "t2", "h"] {
        declare(&ch, q).await;
    }
    let opts = ExchangeDeclareOptions::default();
    ch.exchange_declare(
        "ex.d".into(),
        ExchangeKind::Direct,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "ex.f".into(),
        ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "ex.t".into(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "ex.h".into(),
        ExchangeKind::Headers,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let bind = |q: &'static str, e: &'static str, k: &'static str, args: FieldTable| {
        let ch = ch.clone();
        async move {
            ch.queue_bind(
                q.into(),
                e.into(),
                k.into(),
                QueueBindOptions::default(),
                args,
            )
            .await
            .unwrap()
        }
    };
    bind("d", "ex.d", "orders", FieldTable::default()).await;
    bind("f1", "ex.f", "", FieldTable::default()).await;
    bind("f2", "ex.f", "", FieldTable::default()).await;
    bind("t1", "ex.t", "order.*.paid", FieldTable::default()).await;
    bind("t2", "ex.t", "order.#", FieldTable::default()).await;
    let mut args = FieldTable::default();
    args.insert("x-match".into(), AMQPValue::LongString("all".into()));
    args.insert("region".into(), AMQPValue::LongString("eu".into()));
    bind("h", "ex.h", "", args).await;

    publish(&ch, "ex.d", "orders", b"direct").await;
    publish(&ch, "ex.d", "other", b"lost").await;
    publish(&ch, "ex.f", "anything", b"fan").await;
    publish(&ch, "ex.t", "order.42.paid", b"paid").await;
    publish(&ch, "ex.t", "order", b"bare").await;
    let mut h = FieldTable::default();
    h.insert("region".into(), AMQPValue::LongString("eu".into()));
    ch.basic_publish(
        "ex.h".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"eu",
        BasicProperties::default().with_headers(h),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "ex.h".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"none",
        BasicProperties::default(),
    )
    .await
    .unwrap();

    assert_eq!(drain(&ch, "d").await, [b"direct".to_vec()]);
    assert_eq!(drain(&ch, "f1").await, [b"fan".to_vec()]);
    assert_eq!(drain(&ch, "f2").await, [b"fan".to_vec()]);
    assert_eq!(drain(&ch, "t1").await, [b"paid".to_vec()]);
    assert_eq!(drain(&ch, "t2").await, [b"paid".to_vec(), b"bare".to_vec()]);
    assert_eq!(drain(&ch, "h").await, [b"eu".to_vec()]);
}

#[tokio::test]
async fn exchange_to_exchange_bindings_forward_messages() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "sink").await;
    let opts = ExchangeDeclareOptions::default();
    ch.exchange_declare(
        "front".into(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "back".into(),
        ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "back".into(),
        "front".into(),
        "a.#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "sink".into(),
        "back".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "front", "a.b", b"through").await;
    publish(&ch, "front", "b.a", b"dropped").await;
    assert_eq!(drain(&ch, "sink").await, [b"through".to_vec()]);
}

#[tokio::test]
async fn a_mandatory_unroutable_message_is_returned_before_its_confirm() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "no-such-queue".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    match confirm {
        Confirmation::Ack(Some(returned)) => {
            assert_eq!(returned.reply_code, 312);
            assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(returned.delivery.data, b"bounce");
        }
        other => panic!("expected an ack with the returned message, got {other:?}"),
    }
}

#[tokio::test]
async fn publisher_confirms_ack_every_message() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "confirmed").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..500u32 {
        let body = i.to_be_bytes();
        pending.push(
            ch.basic_publish(
                "".into(),
                "confirmed".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    let q = ch
        .queue_declare(
            "confirmed".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 500);
}

#[tokio::test]
async fn nack_with_requeue_redelivers_in_place_and_reject_without_requeue_drops() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "redo").await;
    publish(&ch, "", "redo", b"first").await;
    publish(&ch, "", "redo", b"second").await;
    let m = ch
        .basic_get("redo".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"first");
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let again = ch
        .basic_get("redo".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.delivery.data, b"first",
        "a requeued message keeps its place at the head"
    );
    assert!(again.delivery.redelivered);
    again
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    assert_eq!(drain(&ch, "redo").await, [b"second".to_vec()]);
}

#[tokio::test]
async fn prefetch_one_spreads_work_fairly_and_unacked_messages_return_when_a_channel_closes() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let setup = conn.create_channel().await.unwrap();
    declare(&setup, "jobs").await;
    let slow = conn.create_channel().await.unwrap();
    slow.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut slow_consumer = slow
        .basic_consume(
            "jobs".into(),
            "slow".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let fast = conn.create_channel().await.unwrap();
    fast.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut fast_consumer = fast
        .basic_consume(
            "jobs".into(),
            "fast".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..4u8 {
        publish(&setup, "", "jobs", &[i]).await;
    }
    // The slow consumer holds its one message unacked; the fast one gets the rest.
    let held = tokio::time::timeout(WAIT, slow_consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut fast_got = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(WAIT, fast_consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        fast_got.push(d.data[0]);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(fast_got.len(), 3);
    assert!(!fast_got.contains(&held.data[0]));
    // Closing the slow channel requeues its unacked message for the fast consumer.
    slow.close(200, "bye".into()).await.unwrap();
    let d = tokio::time::timeout(WAIT, fast_consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, held.data);
    assert!(d.redelivered);
}

#[tokio::test]
async fn server_named_queues_purge_and_delete_report_counts() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().as_str().to_string();
    assert!(name.starts_with("amq.gen-"), "{name}");
    for _ in 0..3 {
        publish(&ch, "", &name, b"x").await;
    }
    assert_eq!(
        ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        3
    );
    publish(&ch, "", &name, b"y").await;
    assert_eq!(
        ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "doomed").await;
    let mut consumer = ch
        .basic_consume(
            "doomed".into(),
            "watcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let other = conn.create_channel().await.unwrap();
    other
        .queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // The consumer stream ends when the broker cancels it.
    let next = tokio::time::timeout(WAIT, consumer.next()).await.unwrap();
    assert!(next.is_none(), "consumer should be cancelled, got {next:?}");
}

async fn expect_channel_error(result: lapin::Result<impl std::fmt::Debug>, code: &str) {
    let err = result.expect_err("the broker should refuse");
    let text = err.to_string();
    assert!(text.contains(code), "expected {code}, got {text}");
}

#[tokio::test]
async fn errors_close_the_channel_with_rabbitmqs_reply_codes_and_the_connection_lives_on() {
    let broker = Broker::start();
    let conn = connect(&broker).await;

    let ch = conn.create_channel().await.unwrap();
    expect_channel_error(
        ch.queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        "NOT_FOUND",
    )
    .await;

    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "plain").await;
    expect_channel_error(
        ch.queue_declare(
            "plain".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        "PRECONDITION_FAILED",
    )
    .await;

    let ch = conn.create_channel().await.unwrap();
    expect_channel_error(
        ch.exchange_declare(
            "nope".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        "NOT_FOUND",
    )
    .await;

    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "kind".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    expect_channel_error(
        ch.exchange_declare(
            "kind".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        "PRECONDITION_FAILED",
    )
    .await;

    let ch = conn.create_channel().await.unwrap();
    let m = ch
        .basic_get("plain".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(m.is_none());
    expect_channel_error(
        ch.basic_ack(99, BasicAckOptions::default())
            .await
            .and(ch.basic_qos(1, BasicQosOptions::default()).await),
        "PRECONDITION_FAILED",
    )
    .await;

    // The connection survived all of it.
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "still-alive").await;
}

#[tokio::test]
async fn an_exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
    let broker = Broker::start();
    let (owner, ch) = channel(&broker).await;
    ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_other, ch2) = channel(&broker).await;
    expect_channel_error(
        ch2.basic_consume(
            "mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
        "RESOURCE_LOCKED",
    )
    .await;
    owner.close(200, "bye".into()).await.unwrap();
    let ch3 = _other.create_channel().await.unwrap();
    expect_channel_error(
        ch3.queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        "NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let result = ch
        .basic_publish(
            "ghost".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let outcome = match result {
        Ok(confirm) => confirm.await.map(|_| ()),
        Err(e) => Err(e),
    };
    let text = format!("{outcome:?} {:?}", ch.status());
    assert!(
        text.contains("NOT_FOUND") || !ch.status().connected(),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let broker = Broker::start();
    let url = format!("amqp://guest:wrong@{}/%2f", broker.amqp);
    let result = Connection::connect(&url, ConnectionProperties::default()).await;
    assert!(result.is_err());
}

#[tokio::test]
async fn a_wrong_protocol_header_gets_the_supported_one_back() {
    let mut broker = Broker::start();
    let mut s = TcpStream::connect(broker.amqp).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"AMQP\x01\x01\x00\x0a").unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"AMQP\x00\x00\x09\x01");
    assert!(broker.is_running());
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_only_that_connection() {
    let mut broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "survivor").await;
    for bad in [
        &b"\x01\x00\x00\xff\xff\xff\xff"[..],
        b"\x63\x00\x01\x00\x00\x00\x01\x00\xce",
        b"\x01\x00\x00\x00\x00\x00\x04\xff\xff\xff\xff\xce",
    ] {
        let mut s = TcpStream::connect(broker.amqp).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        s.write_all(bad).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        assert!(
            !sink.is_empty(),
            "the broker answers with connection.start and a close"
        );
    }
    assert!(broker.is_running());
    assert!(!broker.stderr_lines().iter().any(|l| l.contains("panicked")));
    publish(&ch, "", "survivor", b"still here").await;
    assert_eq!(drain(&ch, "survivor").await, [b"still here".to_vec()]);
}

#[tokio::test]
async fn large_messages_span_many_body_frames() {
    let broker = Broker::start();
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "big").await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    publish(&ch, "", "big", &body).await;
    assert_eq!(get_body(&ch, "big").await.unwrap(), body);
}

#[tokio::test]
async fn many_channels_on_one_connection_work_independently() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let mut channels = Vec::new();
    for i in 0..200 {
        let ch = conn.create_channel().await.unwrap();
        declare(&ch, &format!("q{i}")).await;
        channels.push(ch);
    }
    for (i, ch) in channels.iter().enumerate() {
        publish(ch, "", &format!("q{i}"), format!("m{i}").as_bytes()).await;
    }
    for (i, ch) in channels.iter().enumerate() {
        assert_eq!(
            get_body(ch, &format!("q{i}")).await.unwrap(),
            format!("m{i}").into_bytes()
        );
    }
    let _ = ShortString::from("unused");
}

#[tokio::test]
async fn virtual_hosts_from_config_keep_their_own_queues_and_unknown_ones_are_refused() {
    let broker = Broker::start_env(&[("SLUICE_AMQP_VHOSTS", "/,staging")]);
    let staging = Connection::connect(
        &format!("amqp://guest:guest@{}/staging", broker.amqp),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let sch = staging.create_channel().await.unwrap();
    declare(&sch, "orders").await;
    publish(&sch, "", "orders", b"in staging").await;
    assert_eq!(drain(&sch, "orders").await, [b"in staging".to_vec()]);

    let (_root, rch) = channel(&broker).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    expect_channel_error(
        rch.queue_declare("orders".into(), passive, FieldTable::default())
            .await,
        "NOT_FOUND",
    )
    .await;

    let unknown = Connection::connect(
        &format!("amqp://guest:guest@{}/nope", broker.amqp),
        ConnectionProperties::default(),
    )
    .await;
    assert!(
        unknown.is_err(),
        "a vhost that is not configured is refused"
    );
}
