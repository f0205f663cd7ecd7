//! The Kafka face against a real client (rdkafka, i.e. librdkafka): produce and fetch,
//! keys and ordering, consumer groups and committed offsets, admin, durability across
//! `kill -9`, idempotence, limits and bad input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Broker;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

fn start() -> Broker {
    Broker::start_env(&[("SLUICE_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")])
}

fn config(b: &Broker, extra: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", b.kafka.to_string());
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

fn producer(b: &Broker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = config(b, &[("linger.ms", "5"), ("message.timeout.ms", "20000")]);
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

fn consumer(b: &Broker, group: &str, extra: &[(&str, &str)]) -> StreamConsumer {
    let mut c = config(
        b,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("fetch.wait.max.ms", "100"),
        ],
    );
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

fn admin(b: &Broker) -> AdminClient<DefaultClientContext> {
    config(b, &[]).create().unwrap()
}

async fn create_topic(b: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(b)
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Queues a record without waiting for it (its delivery future does not borrow it).
fn enqueue(p: &FutureProducer, record: FutureRecord<'_, [u8], [u8]>) -> DeliveryFuture {
    p.send_result(record).map_err(|(e, _)| e).unwrap()
}

async fn delivered(f: DeliveryFuture) -> i64 {
    f.await.unwrap().map_err(|(e, _)| e).unwrap().offset
}

async fn send(p: &FutureProducer, record: FutureRecord<'_, [u8], [u8]>) -> (i32, i64) {
    let d = p.send(record, WAIT).await.map_err(|(e, _)| e).unwrap();
    (d.partition, d.offset)
}

/// Reads `n` messages (or panics after WAIT).
async fn receive(c: &StreamConsumer, n: usize) -> Vec<OwnedMessage> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, c.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()))
            .unwrap();
        out.push(m.detach());
    }
    out
}

/// Reads whatever arrives within `quiet` of the last message.
async fn receive_until_quiet(c: &StreamConsumer, quiet: Duration) -> Vec<OwnedMessage> {
    let mut out = Vec::new();
    while let Ok(m) = tokio::time::timeout(quiet, c.recv()).await {
        out.push(m.unwrap().detach());
    }
    out
}

fn assign_all(c: &StreamConsumer, topic: &str, partitions: i32) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_keys_headers_nulls_and_large_records() {
    let b = start();
    create_topic(&b, "basics", 1, &[]).await;
    let p = producer(&b, &[]);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "trace",
            value: Some("abc"),
        })
        .insert(Header {
            key: "empty",
            value: None::<&[u8]>,
        });
    let big = vec![7u8; 900 * 1024];
    let sent = [
        send(
            &p,
            FutureRecord::to("basics")
                .key(&b"k1"[..])
                .payload(&b"v1"[..])
                .headers(headers),
        )
        .await,
        send(&p, FutureRecord::to("basics").payload(&b"no key"[..])).await,
        send(&p, FutureRecord::to("basics").key(&b"gone"[..])).await,
        send(
            &p,
            FutureRecord::to("basics")
                .key(&b"big"[..])
                .payload(&big[..]),
        )
        .await,
    ];
    assert_eq!(sent.map(|(_, o)| o), [0, 1, 2, 3]);
    let c = consumer(&b, "basics-reader", &[]);
    assign_all(&c, "basics", 1);
    let got = receive(&c, 4).await;
    assert_eq!(got[0].key(), Some(&b"k1"[..]));
    assert_eq!(got[0].payload(), Some(&b"v1"[..]));
    let h = got[0].headers().unwrap();
    assert_eq!(h.count(), 2);
    assert_eq!(h.get(0).key, "trace");
    assert_eq!(h.get(0).value, Some(&b"abc"[..]));
    assert_eq!(h.get(1).key, "empty");
    assert_eq!(h.get(1).value, None);
    assert_eq!(got[1].key(), None);
    assert_eq!(got[1].payload(), Some(&b"no key"[..]));
    assert_eq!(got[2].key(), Some(&b"gone"[..]));
    assert_eq!(got[2].payload(), None, "a tombstone stays a null value");
    assert_eq!(got[3].payload().map(<[u8]>::len), Some(big.len()));
    assert_eq!(
        got.iter().map(|m| m.offset()).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_stored_and_served_as_sent() {
    let b = start();
    for codec in ["none", "lz4", "snappy"] {
        let topic = format!("codec-{codec}");
        create_topic(&b, &topic, 1, &[]).await;
        let p = producer(&b, &[("compression.type", codec), ("linger.ms", "50")]);
        let futures: Vec<_> = (0..200)
            .map(|i| {
                let body = format!("{codec} record {i} {}", "x".repeat(100));
                enqueue(&p, FutureRecord::to(&topic).payload(body.as_bytes()))
            })
            .collect();
        for f in futures {
            delivered(f).await;
        }
        let c = consumer(&b, &format!("codec-reader-{codec}"), &[]);
        assign_all(&c, &topic, 1);
        let got = receive(&c, 200).await;
        for (i, m) in got.iter().enumerate() {
            let body = format!("{codec} record {i} {}", "x".repeat(100));
            assert_eq!(m.payload(), Some(body.as_bytes()), "{codec} record {i}");
            assert_eq!(m.offset(), i as i64);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_lands_in_one_partition_in_order() {
    let b = start();
    create_topic(&b, "orders", 3, &[]).await;
    let p = producer(&b, &[]);
    let events = ["created", "paid", "completed"];
    for event in events {
        for order in 0..30 {
            let key = format!("order-{order}");
            send(
                &p,
                FutureRecord::to("orders")
                    .key(key.as_bytes())
                    .payload(event.as_bytes()),
            )
            .await;
        }
    }
    let c = consumer(&b, "orders-reader", &[]);
    assign_all(&c, "orders", 3);
    let got = receive(&c, 90).await;
    let mut by_key: BTreeMap<Vec<u8>, Vec<(i32, Vec<u8>)>> = BTreeMap::new();
    for m in &got {
        by_key
            .entry(m.key().unwrap().to_vec())
            .or_default()
            .push((m.partition(), m.payload().unwrap().to_vec()));
    }
    assert_eq!(by_key.len(), 30);
    let mut partitions_used = HashSet::new();
    for (key, seen) in by_key {
        let parts: HashSet<i32> = seen.iter().map(|(p, _)| *p).collect();
        assert_eq!(parts.len(), 1, "{key:?} spread over {parts:?}");
        partitions_used.extend(parts);
        let order: Vec<&[u8]> = seen.iter().map(|(_, e)| e.as_slice()).collect();
        assert_eq!(order, events.map(str::as_bytes), "{key:?}");
    }
    assert!(
        partitions_used.len() > 1,
        "keys should hash to several partitions"
    );
}

/// A consumer in its own task: receives, records and commits (synchronously) each
/// message until told to stop, then closes (leaving the group).
struct Member {
    seen: Arc<Mutex<Vec<(i32, i64)>>>,
    consumer: Arc<StreamConsumer>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn member(b: &Broker, group: &str, topic: &str) -> Member {
    let consumer = Arc::new(consumer(b, group, &[]));
    consumer.subscribe(&[topic]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = {
        let consumer = Arc::clone(&consumer);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    m = consumer.recv() => {
                        let m = m.unwrap();
                        seen.lock().unwrap().push((m.partition(), m.offset()));
                        consumer.commit_message(&m, CommitMode::Sync).unwrap();
                    }
                }
            }
        })
    };
    Member {
        seen,
        consumer,
        stop,
        task,
    }
}

fn assigned(m: &Member) -> Vec<i32> {
    let mut parts: Vec<i32> = m
        .consumer
        .assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default();
    parts.sort();
    parts
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_partitions_and_the_survivor_resumes_from_commits() {
    let b = start();
    create_topic(&b, "work", 4, &[]).await;
    let p = producer(&b, &[]);
    let a = member(&b, "workers", "work");
    let c = member(&b, "workers", "work");
    wait_for("a 2 + 2 split", || {
        let (x, y) = (assigned(&a), assigned(&c));
        x.len() == 2 && y.len() == 2
    })
    .await;
    let (x, y) = (assigned(&a), assigned(&c));
    assert!(x.iter().all(|p| !y.contains(p)), "{x:?} and {y:?} overlap");
    for i in 0..40 {
        send(
            &p,
            FutureRecord::to("work")
                .partition(i % 4)
                .payload(format!("job {i}").as_bytes()),
        )
        .await;
    }
    let total = |m: &Member| m.seen.lock().unwrap().len();
    wait_for("40 jobs consumed", || total(&a) + total(&c) == 40).await;
    for (m, parts) in [(&a, &x), (&c, &y)] {
        assert!(
            m.seen
                .lock()
                .unwrap()
                .iter()
                .all(|(p, _)| parts.contains(p)),
            "a member read a partition it was not assigned"
        );
    }
    // One member leaves; the other takes all partitions from the committed offsets.
    c.stop.send(()).unwrap();
    c.task.await.unwrap();
    drop(c.consumer);
    wait_for("the survivor to own all 4 partitions", || {
        assigned(&a) == vec![0, 1, 2, 3]
    })
    .await;
    for i in 40..80 {
        send(
            &p,
            FutureRecord::to("work")
                .partition(i % 4)
                .payload(format!("job {i}").as_bytes()),
        )
        .await;
    }
    wait_for("the next 40 jobs", || total(&a) >= 40 + x.len() * 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all: Vec<(i32, i64)> = c.seen.lock().unwrap().clone();
    all.extend(a.seen.lock().unwrap().iter().copied());
    let unique: HashSet<(i32, i64)> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a committed record was read twice");
    let expected: HashSet<(i32, i64)> = (0..4).flat_map(|p| (0..20).map(move |o| (p, o))).collect();
    assert_eq!(unique, expected, "every produced record is read");
    a.stop.send(()).unwrap();
    a.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_get_everything_and_reset_policies_apply() {
    let b = start();
    create_topic(&b, "news", 2, &[]).await;
    let p = producer(&b, &[]);
    for i in 0..10 {
        send(
            &p,
            FutureRecord::to("news")
                .partition(i % 2)
                .payload(format!("n{i}").as_bytes()),
        )
        .await;
    }
    for group in ["g-one", "g-two"] {
        let c = consumer(&b, group, &[]);
        c.subscribe(&["news"]).unwrap();
        let got = receive(&c, 10).await;
        let bodies: HashSet<Vec<u8>> = got.iter().map(|m| m.payload().unwrap().to_vec()).collect();
        assert_eq!(bodies.len(), 10, "{group} gets every message");
    }
    let late = consumer(&b, "g-latest", &[("auto.offset.reset", "latest")]);
    late.subscribe(&["news"]).unwrap();
    // Nothing old arrives; wait until it has its partitions and positions.
    assert!(
        receive_until_quiet(&late, Duration::from_secs(3))
            .await
            .is_empty()
    );
    for i in 10..14 {
        send(
            &p,
            FutureRecord::to("news")
                .partition(i % 2)
                .payload(format!("n{i}").as_bytes()),
        )
        .await;
    }
    let got = receive(&late, 4).await;
    let mut bodies: Vec<Vec<u8>> = got.iter().map(|m| m.payload().unwrap().to_vec()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        ["n10", "n11", "n12", "n13"].map(|s| s.as_bytes().to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_and_commits_survive_kill_9() {
    let b = start();
    create_topic(&b, "ledger", 2, &[("flush", "sync")]).await;
    let p = producer(&b, &[("acks", "all")]);
    let futures: Vec<_> = (0..200)
        .map(|i| {
            let body = format!("entry {i}");
            enqueue(
                &p,
                FutureRecord::to("ledger")
                    .partition(i % 2)
                    .payload(body.as_bytes()),
            )
        })
        .collect();
    for f in futures {
        delivered(f).await;
    }
    let c = consumer(&b, "auditors", &[]);
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset("ledger", 0, Offset::Offset(40))
        .unwrap();
    commit
        .add_partition_offset("ledger", 1, Offset::Offset(60))
        .unwrap();
    c.commit(&commit, CommitMode::Sync).unwrap();
    drop(c);
    drop(p);
    let b = b.restart(false);
    let c = consumer(&b, "auditors", &[]);
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition("ledger", 0);
    wanted.add_partition("ledger", 1);
    let committed = c.committed_offsets(wanted, WAIT).unwrap();
    let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    assert_eq!(offsets, [Offset::Offset(40), Offset::Offset(60)]);
    for partition in 0..2 {
        let (low, high) = c.fetch_watermarks("ledger", partition, WAIT).unwrap();
        assert_eq!((low, high), (0, 100), "partition {partition}");
    }
    let reader = consumer(&b, "re-reader", &[]);
    assign_all(&reader, "ledger", 2);
    let got = receive(&reader, 200).await;
    let bodies: HashSet<Vec<u8>> = got.iter().map(|m| m.payload().unwrap().to_vec()).collect();
    let expected: HashSet<Vec<u8>> = (0..200)
        .map(|i| format!("entry {i}").into_bytes())
        .collect();
    assert_eq!(bodies, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_writes_each_record_once_in_order() {
    let b = start();
    create_topic(&b, "exactly", 1, &[]).await;
    let p = producer(&b, &[("enable.idempotence", "true"), ("linger.ms", "20")]);
    let futures: Vec<_> = (0..500)
        .map(|i| {
            let body = format!("{i}");
            enqueue(&p, FutureRecord::to("exactly").payload(body.as_bytes()))
        })
        .collect();
    let mut offsets = Vec::new();
    for f in futures {
        offsets.push(delivered(f).await);
    }
    assert_eq!(offsets, (0..500).collect::<Vec<i64>>());
    let c = consumer(&b, "exactly-reader", &[]);
    assign_all(&c, "exactly", 1);
    let got = receive(&c, 500).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload(), Some(i.to_string().as_bytes()));
    }
    assert!(
        receive_until_quiet(&c, Duration::from_millis(500))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_topic_limit_is_refused() {
    let b = start();
    create_topic(&b, "small", 1, &[("max.message.bytes", "2000")]).await;
    let p = producer(&b, &[]);
    let big = vec![1u8; 5000];
    let err = p
        .send(
            FutureRecord::<[u8], [u8]>::to("small").payload(&big[..]),
            WAIT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap_err();
    assert_eq!(
        err,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    );
    // Smaller records still go through.
    send(&p, FutureRecord::to("small").payload(&b"fits"[..])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_times_finds_the_first_record_at_or_after() {
    let b = start();
    create_topic(&b, "timeline", 1, &[]).await;
    // One batch: linger holds the three records together.
    let p = producer(&b, &[("linger.ms", "200")]);
    let futures: Vec<_> = [1_000i64, 2_000, 3_000]
        .iter()
        .map(|ts| {
            enqueue(
                &p,
                FutureRecord::to("timeline")
                    .payload(&b"t"[..])
                    .timestamp(*ts),
            )
        })
        .collect();
    for f in futures {
        delivered(f).await;
    }
    let c = consumer(&b, "timeline-reader", &[]);
    for (ts, expected) in [
        (1_500, Offset::Offset(1)),
        (2_000, Offset::Offset(1)),
        (3_000, Offset::Offset(2)),
        (9_000, Offset::End),
    ] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("timeline", 0, Offset::Offset(ts))
            .unwrap();
        let found = c.offsets_for_times(tpl, WAIT).unwrap();
        assert_eq!(found.elements()[0].offset(), expected, "timestamp {ts}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_describes_alters_grows_and_deletes_topics() {
    let b = start();
    let admin = admin(&b);
    let opts = AdminOptions::new();
    create_topic(&b, "managed", 2, &[("retention.ms", "3600000")]).await;
    // Creating it again, or with 3 replicas on this 1-broker cluster, is refused.
    let again = admin
        .create_topics(
            [&NewTopic::new("managed", 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::TopicAlreadyExists
    );
    let replicated = admin
        .create_topics(
            [&NewTopic::new("replicated", 1, TopicReplication::Fixed(3))],
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(
        replicated[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidReplicationFactor
    );
    let config_of = |configs: &[rdkafka::admin::ConfigResourceResult], name: &str| {
        configs[0]
            .as_ref()
            .unwrap()
            .get(name)
            .and_then(|e| e.value.clone())
    };
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic("managed")], &opts)
        .await
        .unwrap();
    assert_eq!(
        config_of(&described, "retention.ms").as_deref(),
        Some("3600000")
    );
    assert_eq!(
        config_of(&described, "cleanup.policy").as_deref(),
        Some("delete")
    );
    let alter =
        AlterConfig::new(ResourceSpecifier::Topic("managed")).set("max.message.bytes", "4096");
    admin.alter_configs([&alter], &opts).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic("managed")], &opts)
        .await
        .unwrap();
    assert_eq!(
        config_of(&described, "max.message.bytes").as_deref(),
        Some("4096")
    );
    admin
        .create_partitions([&NewPartitions::new("managed", 5)], &opts)
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let metadata = admin.inner().fetch_metadata(Some("managed"), WAIT).unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 5);
    admin.delete_topics(&["managed"], &opts).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let all = admin.inner().fetch_metadata(None, WAIT).unwrap();
    assert!(all.topics().iter().all(|t| t.name() != "managed"));
}

/// Sends raw bytes on a fresh connection and tells whether the server closed it.
fn closed_after(b: &Broker, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(b.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_that_connection_and_others_are_served() {
    let mut b = start();
    create_topic(&b, "after", 1, &[]).await;
    // A size prefix far above the request limit.
    assert!(closed_after(&b, &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]));
    // An unknown API key (999).
    assert!(closed_after(
        &b,
        &[0, 0, 0, 10, 0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0xff, 0xff]
    ));
    // Metadata v1 whose topic array claims 2^31-1 entries.
    assert!(closed_after(
        &b,
        &[
            0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff
        ]
    ));
    // Garbage.
    assert!(closed_after(
        &b,
        &[0, 0, 0, 12, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]
    ));
    // A truncated request: the size promises more than arrives before the client leaves.
    {
        let mut s = TcpStream::connect(b.kafka).unwrap();
        s.write_all(&[0, 0, 0, 100, 0, 18, 0, 0]).unwrap();
    }
    assert!(b.is_running());
    let p = producer(&b, &[]);
    assert_eq!(
        send(&p, FutureRecord::to("after").payload(&b"ok"[..]))
            .await
            .1,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_batch_is_refused_and_nothing_is_stored() {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    let b = start();
    create_topic(&b, "guarded", 1, &[]).await;
    // A one-record batch (magic 2) with a wrong CRC.
    let mut batch = vec![0u8; 61];
    batch.extend_from_slice(&[14, 0, 0, 0, 0, 2, b'x', 0]); // record: len 7
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    batch[16] = 2;
    batch[57..61].copy_from_slice(&1i32.to_be_bytes());
    batch[17..21].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
    let mut partition = PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(batch.into());
    let mut topic = TopicProduceData::default();
    topic.name = TopicName(StrBytes::from_static_str("guarded"));
    topic.partition_data = vec![partition];
    let mut req = ProduceRequest::default();
    req.acks = 1;
    req.timeout_ms = 5000;
    req.topic_data = vec![topic];
    let mut header = RequestHeader::default();
    header.request_api_key = 0;
    header.request_api_version = 8;
    header.correlation_id = 5;
    let mut body = BytesMut::new();
    header.encode(&mut body, 1).unwrap();
    req.encode(&mut body, 8).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    let mut s = TcpStream::connect(b.kafka).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&frame).unwrap();
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut answer).unwrap();
    let mut answer = bytes::Bytes::from(answer);
    assert_eq!(&answer[..4], &5i32.to_be_bytes());
    let _ = answer.split_to(4);
    let resp = ProduceResponse::decode(&mut answer, 8).unwrap();
    let code = resp.responses[0].partition_responses[0].error_code;
    assert_eq!(code, 2, "CORRUPT_MESSAGE");
    let c = consumer(&b, "guarded-reader", &[]);
    assert_eq!(c.fetch_watermarks("guarded", 0, WAIT).unwrap(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_listed_described_and_deleted_when_empty() {
    let b = start();
    create_topic(&b, "tracked", 1, &[]).await;
    let c = consumer(&b, "trackers", &[]);
    c.subscribe(&["tracked"]).unwrap();
    wait_for_assignment(&c).await;
    let groups = c.fetch_group_list(Some("trackers"), WAIT).unwrap();
    let g = &groups.groups()[0];
    assert_eq!(g.state(), "Stable");
    assert_eq!(g.protocol_type(), "consumer");
    assert_eq!(g.members().len(), 1);
    let admin = admin(&b);
    let refused = admin
        .delete_groups(&["trackers"], &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        refused[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::NonEmptyGroup
    );
    drop(c);
    let deleted = admin
        .delete_groups(&["trackers"], &AdminOptions::new())
        .await
        .unwrap();
    deleted[0].as_ref().unwrap();
    let unknown = admin
        .delete_groups(&["trackers"], &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        unknown[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::GroupIdNotFound
    );
}

async fn wait_for_assignment(c: &StreamConsumer) {
    let deadline = Instant::now() + WAIT;
    loop {
        // Polling drives the rebalance.
        let _ = tokio::time::timeout(Duration::from_millis(100), c.recv()).await;
        if c.assignment().map(|a| a.count() > 0).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "no assignment");
    }
}
