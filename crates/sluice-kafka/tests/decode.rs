//! Random request bodies behind valid headers, for every API key and version the broker
//! advertises: handling must never panic, whatever the bytes (a decode error closes the
//! connection; anything decodable is answered or waits). Sizes and array counts in the
//! bytes are arbitrary, so lying lengths are covered too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use proptest::prelude::*;
use sluice_kafka::connection::Client;
use sluice_kafka::{KafkaBroker, KafkaConfig, SUPPORTED_APIS};

fn frame(key: i16, version: i16, flexible_header: bool, body: &[u8]) -> Bytes {
    let mut f = BytesMut::new();
    f.put_i16(key);
    f.put_i16(version);
    f.put_i32(1);
    f.put_i16(-1); // null client id
    if flexible_header {
        f.put_u8(0); // no tagged fields
    }
    f.extend_from_slice(body);
    f.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_request_bodies_never_panic(
        api in 0..SUPPORTED_APIS.len(),
        version_pick in any::<u16>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let (key, min, max) = SUPPORTED_APIS[api];
        let version = min + (version_pick % (max - min + 1) as u16) as i16;
        let dir = tempfile::tempdir().unwrap();
        let config = KafkaConfig {
            group_initial_rebalance_delay: Duration::ZERO,
            ..KafkaConfig::default()
        };
        let broker = Arc::new(KafkaBroker::open(dir.path(), config).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let flexible = key.request_header_version(version) >= 2;
        let mut f = frame(key as i16, version, flexible, &body);
        let mut client = Client::new(SocketAddr::from(([127, 0, 0, 1], 1)), Default::default());
        let mut out = BytesMut::new();
        rt.block_on(async {
            // Answered, refused or still waiting after the timeout: all fine, no panic.
            let _ = tokio::time::timeout(
                Duration::from_millis(20),
                sluice_kafka::api::handle(&broker, &mut client, key, version, &mut f, &mut out),
            )
            .await;
        });
        prop_assert!(out.len() < 1 << 20);
        let _ = ApiKey::try_from(key as i16);
    }
}
