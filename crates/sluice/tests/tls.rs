//! Rust clients over TLS against `sluice serve`: lapin (rustls) publishing and getting on
//! the amqps listener, and rdkafka (librdkafka with OpenSSL) producing and consuming on a
//! SASL_SSL listener with SCRAM-SHA-256, with a certificate made here by rcgen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

struct Server {
    child: Child,
    _temp: tempfile::TempDir,
    cert_pem: String,
    cert_file: String,
    amqps: String,
    kafka: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with AMQP over TLS only and a SASL_SSL Kafka listener, user `app`.
fn start() -> Server {
    let temp = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (temp.path().join("cert.pem"), temp.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--data-dir"])
        .arg(temp.path().join("data"))
        .args(["--amqp-listen", "none", "--kafka-listen", "127.0.0.1:0"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("SLUICE_AMQP_TLS_LISTEN", "127.0.0.1:0")
        .env("SLUICE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        .env("SLUICE_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .env("SLUICE_TLS_CERT_FILE", &cert)
        .env("SLUICE_TLS_KEY_FILE", &key)
        .env("SLUICE_AMQP_USERS", "app:app-pw")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut amqps, mut kafka) = (None, None);
    while amqps.is_none() || kafka.is_none() {
        let line = lines.next().expect("sluice exited").unwrap();
        let addr = |face: &str| {
            line.split_once(&format!("listening {face}="))
                .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        };
        amqps = amqps.or_else(|| addr("amqps"));
        kafka = kafka.or_else(|| addr("kafka"));
    }
    // Keeps draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        cert_pem: made.cert.pem(),
        cert_file: cert.to_str().unwrap().to_string(),
        _temp: temp,
        amqps: amqps.unwrap(),
        kafka: kafka.unwrap(),
    }
}

#[tokio::test]
async fn lapin_publishes_and_gets_over_amqps() {
    let server = start();
    let port = server.amqps.rsplit_once(':').unwrap().1;
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(server.cert_pem.clone()),
    };
    let conn = Connection::connect_with_config(
        &format!("amqps://app:app-pw@127.0.0.1:{port}/%2f"),
        ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime().unwrap(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "tls-q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "tls-q".into(),
        BasicPublishOptions::default(),
        b"over tls",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let got = ch
        .basic_get("tls-q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.data, b"over tls");
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn rdkafka_produces_and_consumes_with_scram_over_sasl_ssl() {
    let server = start();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &server.kafka)
        .set("security.protocol", "SASL_SSL")
        .set("ssl.ca.location", &server.cert_file)
        .set("sasl.mechanisms", "SCRAM-SHA-256")
        .set("sasl.username", "app")
        .set("sasl.password", "app-pw");
    let producer: FutureProducer = config.create().unwrap();
    producer
        .send(
            FutureRecord::<(), _>::to("tls-topic").payload("secret"),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", "tls-readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["tls-topic"]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), Some(&b"secret"[..]));
}
