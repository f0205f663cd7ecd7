//! Method handlers under random input: many connections complete a real handshake, open
//! a channel, then send randomly generated method frames (known class and method ids with
//! random arguments, random content frames, random channels). The broker must answer
//! with closes, never crash, and keep serving a well-behaved client throughout.

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

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, channel, connection};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use common::Broker;
use lapin::options::*;
use lapin::types::FieldTable as LapinTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// xorshift64*: deterministic, so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn encode(frame: AMQPFrame) -> Vec<u8> {
    gen_frame(&frame)(WriteContext::from(Vec::new()))
        .unwrap()
        .write
}

/// Reads until at least one whole frame arrived (the broker's reply to a step).
fn read_some(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// Protocol header, start-ok, tune-ok, open, channel.open 1.
fn handshake(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    read_some(&mut s);
    let start_ok = connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: ShortString::from("PLAIN".to_string()),
        response: LongString::from(b"\x00guest\x00guest".to_vec()),
        locale: ShortString::from("en_US".to_string()),
    };
    s.write_all(&encode(AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
    )))
    .unwrap();
    read_some(&mut s);
    let tune_ok = connection::TuneOk {
        channel_max: 16,
        frame_max: 131_072,
        heartbeat: 0,
    };
    s.write_all(&encode(AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
    )))
    .unwrap();
    let open = connection::Open {
        virtual_host: ShortString::from("/".to_string()),
    };
    s.write_all(&encode(AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(open)),
    )))
    .unwrap();
    read_some(&mut s);
    s.write_all(&encode(AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )))
    .unwrap();
    read_some(&mut s);
    s
}

/// One random frame: mostly method frames of real (class, method) pairs with random
/// arguments, sometimes content frames or bytes on other channels.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    const METHODS: &[(u16, u16)] = &[
        (20, 10),
        (20, 20),
        (20, 40),
        (40, 10),
        (40, 20),
        (40, 30),
        (40, 40),
        (50, 10),
        (50, 20),
        (50, 30),
        (50, 40),
        (50, 50),
        (60, 10),
        (60, 20),
        (60, 30),
        (60, 40),
        (60, 70),
        (60, 80),
        (60, 90),
        (60, 100),
        (60, 110),
        (60, 120),
        (85, 10),
        (90, 10),
        (90, 20),
        (90, 30),
    ];
    let channel: u16 = if rng.below(8) == 0 {
        rng.below(20) as u16
    } else {
        1
    };
    let (kind, payload) = match rng.below(10) {
        0 => (2u8, {
            let mut p = vec![0, 60, 0, 0];
            p.extend_from_slice(&rng.below(100).to_be_bytes());
            let n = rng.below(40) as usize;
            p.extend(rng.bytes(n));
            p
        }),
        1 => {
            let n = rng.below(64) as usize;
            (3u8, rng.bytes(n))
        }
        _ => {
            let (class, method) = METHODS[rng.below(METHODS.len() as u64) as usize];
            let mut p = Vec::new();
            p.extend_from_slice(&class.to_be_bytes());
            p.extend_from_slice(&method.to_be_bytes());
            // Short, structured-looking arguments: small length prefixes reach deeper.
            for _ in 0..rng.below(6) {
                let len = rng.below(12) as u8;
                p.push(len);
                p.extend(rng.bytes(usize::from(len)));
            }
            (1u8, p)
        }
    };
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

#[tokio::test]
async fn random_methods_after_a_real_handshake_never_take_the_broker_down() {
    let mut broker = Broker::start();
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "steady".into(),
        QueueDeclareOptions::default(),
        LapinTable::default(),
    )
    .await
    .unwrap();
    let addr = broker.amqp;
    // More with SLUICE_FUZZ_SEEDS=N when hunting.
    let seeds: u64 = std::env::var("SLUICE_FUZZ_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    tokio::task::spawn_blocking(move || {
        for seed in 1..=seeds {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut s = handshake(addr);
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            for _ in 0..1 + rng.below(8) {
                if s.write_all(&random_frame(&mut rng)).is_err() {
                    break;
                }
            }
            let _ = read_some(&mut s);
        }
    })
    .await
    .unwrap();
    assert!(
        broker.is_running(),
        "the broker survived every random connection"
    );
    let panics: Vec<String> = broker
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "a connection task panicked: {panics:#?}");
    ch.basic_publish(
        "".into(),
        "steady".into(),
        BasicPublishOptions::default(),
        b"ok",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = ch
        .basic_get("steady".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.data, b"ok");
}
