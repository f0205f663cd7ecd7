//! RocketMQ messages as stream records, and back.
//!
//! A record keeps the body as its value, the first key as its key, each user property as
//! a header, and the message's system properties (id, tag, keys, born time and host,
//! type, group) encoded as protobuf in one header, `x-rocketmq-v2`, so a RocketMQ
//! consumer gets back what the producer sent. Records written by other faces (Kafka,
//! AMQP) have no such header: their id comes from the partition and offset, their key
//! becomes the message's key, and headers with UTF-8 names and values become user
//! properties.

use prost::Message as _;
use sluice_engine::stream::record::{BatchBuilder, Record};

use crate::pb;

/// Header holding the encoded `SystemProperties` of a message sent over RocketMQ.
pub const SYSTEM_HEADER: &[u8] = b"x-rocketmq-v2";

/// Appends one message to `batch`: what a record stores of it.
pub fn push(
    batch: &mut BatchBuilder,
    message: &pb::Message,
    system: &pb::SystemProperties,
    now_ms: i64,
) {
    let stored = pb::SystemProperties {
        tag: system.tag.clone(),
        keys: system.keys.clone(),
        message_id: system.message_id.clone(),
        message_type: system.message_type,
        born_timestamp: system.born_timestamp,
        born_host: system.born_host.clone(),
        message_group: system.message_group.clone(),
        trace_context: system.trace_context.clone(),
        delivery_timestamp: system.delivery_timestamp,
        ..Default::default()
    }
    .encode_to_vec();
    let timestamp = system.born_timestamp.as_ref().map_or(now_ms, timestamp_ms);
    let key = system.keys.first().map(String::as_bytes);
    let mut headers: Vec<(&[u8], Option<&[u8]>)> =
        Vec::with_capacity(message.user_properties.len() + 1);
    headers.push((SYSTEM_HEADER, Some(&stored)));
    for (k, v) in &message.user_properties {
        headers.push((k.as_bytes(), Some(v.as_bytes())));
    }
    batch.push(timestamp, key, Some(&message.body), headers.into_iter());
}

/// Appends a copy of `record` as a dead letter from `origin_topic`: its system
/// properties say where it came from (`dead_letter_queue`), all else is kept.
pub fn push_dead_letter(batch: &mut BatchBuilder, record: &Record, origin_topic: &str) {
    let mut system = record
        .headers
        .iter()
        .find(|(k, _)| k.as_ref() == SYSTEM_HEADER)
        .and_then(|(_, v)| pb::SystemProperties::decode(v.as_ref()?.as_ref()).ok())
        .unwrap_or_default();
    if system.message_id.is_empty() {
        system.message_id = format!("{:016X}", record.offset);
    }
    system.dead_letter_queue = Some(pb::DeadLetterQueue {
        topic: origin_topic.to_string(),
        message_id: system.message_id.clone(),
    });
    let encoded = system.encode_to_vec();
    let mut headers: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(record.headers.len() + 1);
    headers.push((SYSTEM_HEADER, Some(&encoded)));
    for (k, v) in &record.headers {
        if k.as_ref() != SYSTEM_HEADER {
            headers.push((k.as_ref(), v.as_deref()));
        }
    }
    batch.push(
        record.timestamp,
        record.key.as_deref(),
        record.value.as_deref(),
        headers.into_iter(),
    );
}

/// Where and how a record is handed out.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    pub topic: &'a str,
    pub queue_id: i32,
    pub receipt_handle: &'a str,
    pub attempt: u32,
    pub invisible_ms: u64,
    pub store_host: &'a str,
}

/// A record's headers with UTF-8 names and values, but the system header: the user
/// properties of a message sent over RocketMQ, the headers of one sent over another face.
pub fn user_properties(record: &Record) -> std::collections::HashMap<String, String> {
    record
        .headers
        .iter()
        .filter(|(name, _)| name.as_ref() != SYSTEM_HEADER)
        .filter_map(|(name, value)| {
            let name = std::str::from_utf8(name).ok()?;
            let value = std::str::from_utf8(value.as_ref()?).ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// The message a consumer receives for `record`.
pub fn to_message(record: &Record, at: Delivered<'_>) -> pb::Message {
    let mut system = pb::SystemProperties::default();
    let mut user_properties = std::collections::HashMap::new();
    for (name, value) in &record.headers {
        if name.as_ref() == SYSTEM_HEADER {
            if let Some(v) = value
                && let Ok(stored) = pb::SystemProperties::decode(v.as_ref())
            {
                system = stored;
            }
            continue;
        }
        if let (Ok(n), Some(Ok(v))) = (
            std::str::from_utf8(name),
            value.as_ref().map(|v| std::str::from_utf8(v)),
        ) {
            user_properties.insert(n.to_string(), v.to_string());
        }
    }
    if system.message_id.is_empty() {
        // Written by another face: an id as unique as its place in the log.
        system.message_id = format!("{:04X}{:016X}", at.queue_id, record.offset);
        system.message_type = pb::MessageType::Normal as i32;
        system.born_timestamp = Some(timestamp(record.timestamp));
        if let Some(key) = record
            .key
            .as_ref()
            .and_then(|k| std::str::from_utf8(k).ok())
        {
            system.keys = vec![key.to_string()];
        }
    }
    let body = record.value.clone().unwrap_or_default();
    system.body_encoding = pb::Encoding::Identity as i32;
    system.body_digest = Some(digest(&body));
    system.store_timestamp = Some(timestamp(record.timestamp));
    system.store_host = at.store_host.to_string();
    system.receipt_handle = Some(at.receipt_handle.to_string());
    system.queue_id = at.queue_id;
    system.queue_offset = Some(i64::try_from(record.offset).unwrap_or(i64::MAX));
    system.invisible_duration = Some(duration(at.invisible_ms));
    system.delivery_attempt = Some(i32::try_from(at.attempt).unwrap_or(i32::MAX));
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: at.topic.to_string(),
        }),
        user_properties,
        system_properties: Some(system),
        body,
    }
}

/// A body's digest as delivered: upper-case hex MD5, which both official clients check.
fn digest(body: &[u8]) -> pb::Digest {
    pb::Digest {
        r#type: pb::DigestType::Md5 as i32,
        checksum: md5_hex(body),
    }
}

/// Gives a message sent back to a client (a transaction check-back) its body digest
/// and encoding, as delivered messages have them.
pub fn add_digest(message: &mut pb::Message) {
    let d = digest(&message.body);
    let system = message
        .system_properties
        .get_or_insert_with(Default::default);
    system.body_encoding = pb::Encoding::Identity as i32;
    system.body_digest = Some(d);
}

/// Upper-case hex MD5, as the clients compute it to check a body.
fn md5_hex(body: &[u8]) -> String {
    use md5::Digest as _;
    let digest = md5::Md5::digest(body);
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// A message held for a later delivery, in the engine's message: the destination queue
/// in `exchange` (topic) and `routing_key` (queue id), the RocketMQ message without its
/// body as the properties (the original encoding), the body as the body.
pub fn to_held(message: &pb::Message, topic: &str, queue: i32) -> sluice_core::Message {
    let properties = pb::Message {
        body: bytes::Bytes::new(),
        ..message.clone()
    }
    .encode_to_vec();
    sluice_core::Message {
        exchange: topic.into(),
        routing_key: queue.to_string().into(),
        properties: properties.into(),
        body: message.body.clone(),
        persistent: true,
        priority: 0,
        expiration_ms: None,
    }
}

/// Back from [`to_held`]: the topic, the queue and the message.
pub fn from_held(held: &sluice_core::Message) -> Option<(String, i32, pb::Message)> {
    let mut message = pb::Message::decode(held.properties.as_ref()).ok()?;
    message.body = held.body.clone();
    let queue = held.routing_key.parse().ok()?;
    Some((held.exchange.to_string(), queue, message))
}

/// Milliseconds of a delivery time. The Python client 5.1.2 puts milliseconds into the
/// seconds field (its docs and tests pass milliseconds); a seconds value past the year
/// 5000 can only be that, and is read as milliseconds.
pub fn delivery_ms(t: &prost_types::Timestamp) -> i64 {
    const SECONDS_MAX: i64 = 100_000_000_000;
    if t.seconds > SECONDS_MAX {
        return t.seconds;
    }
    timestamp_ms(t)
}

pub fn timestamp_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos / 1_000_000))
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds of a duration; negative ones are 0.
pub fn duration_ms(d: &prost_types::Duration) -> u64 {
    let ms = d
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos / 1_000_000));
    u64::try_from(ms).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use sluice_engine::stream::record::read_batch;

    fn stored(batch: &BatchBuilder) -> Vec<Record> {
        let mut out = Vec::new();
        read_batch(&Bytes::from(batch.finish()), &mut out).unwrap();
        out
    }

    const AT: Delivered<'static> = Delivered {
        topic: "orders",
        queue_id: 2,
        receipt_handle: "h",
        attempt: 1,
        invisible_ms: 30_000,
        store_host: "127.0.0.1:8081",
    };

    proptest! {
        /// What a producer sends comes back to a consumer unchanged.
        #[test]
        fn a_message_round_trips_through_a_record(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            tag in proptest::option::of("[a-zA-Z0-9_]{1,8}"),
            keys in proptest::collection::vec("[a-z0-9]{1,6}", 0..3),
            props in proptest::collection::hash_map("[a-z]{1,6}", "[ -~]{0,8}", 0..4),
            group in proptest::option::of("[a-z]{1,6}"),
            born in 0i64..4_000_000_000_000,
        ) {
            let system = pb::SystemProperties {
                tag: tag.clone(),
                keys: keys.clone(),
                message_id: "01ABCDEF".into(),
                message_type: pb::MessageType::Normal as i32,
                born_timestamp: Some(timestamp(born)),
                born_host: "client-1".into(),
                message_group: group.clone(),
                ..Default::default()
            };
            let message = pb::Message {
                topic: None,
                user_properties: props.clone(),
                system_properties: Some(system),
                body: Bytes::from(body.clone()),
            };
            let mut batch = BatchBuilder::default();
            push(&mut batch, &message, message.system_properties.as_ref().unwrap(), 7);
            let records = stored(&batch);
            let got = to_message(&records[0], AT);
            let sys = got.system_properties.unwrap();
            prop_assert_eq!(&got.body[..], &body[..]);
            prop_assert_eq!(got.user_properties, props);
            prop_assert_eq!(sys.tag, tag);
            prop_assert_eq!(sys.keys, keys);
            prop_assert_eq!(sys.message_id, "01ABCDEF");
            prop_assert_eq!(sys.message_group, group);
            prop_assert_eq!(sys.born_timestamp.as_ref().map(timestamp_ms), Some(born));
            prop_assert_eq!(sys.born_host, "client-1");
            prop_assert_eq!(sys.queue_id, 2);
            prop_assert_eq!(sys.delivery_attempt, Some(1));
            prop_assert_eq!(sys.receipt_handle.as_deref(), Some("h"));
        }
    }

    #[test]
    fn a_held_message_comes_back_whole_with_its_destination() {
        let message = pb::Message {
            topic: Some(pb::Resource {
                resource_namespace: String::new(),
                name: "orders".into(),
            }),
            user_properties: [("k".to_string(), "v".to_string())].into(),
            system_properties: Some(pb::SystemProperties {
                message_id: "01AB".into(),
                delivery_timestamp: Some(timestamp(1_800_000)),
                ..Default::default()
            }),
            body: Bytes::from_static(b"close order 42"),
        };
        let held = to_held(&message, "orders", 3);
        assert_eq!(from_held(&held), Some(("orders".to_string(), 3, message)));
    }

    #[test]
    fn a_delivery_time_in_milliseconds_in_the_seconds_field_is_read_as_milliseconds() {
        let ms = 1_764_000_000_123;
        assert_eq!(delivery_ms(&timestamp(ms)), ms);
        let python_5_1_2 = prost_types::Timestamp {
            seconds: ms,
            nanos: 0,
        };
        assert_eq!(delivery_ms(&python_5_1_2), ms);
    }

    #[test]
    fn a_record_from_another_face_gets_an_id_key_and_properties() {
        let mut batch = BatchBuilder::default();
        batch.push(
            1_700_000_000_123,
            Some(b"k1"),
            Some(b"v"),
            [
                (&b"h"[..], Some(&b"x"[..])),
                (&b"bin"[..], Some(&[0xff][..])),
            ]
            .into_iter(),
        );
        let records = stored(&batch);
        let got = to_message(&records[0], AT);
        let sys = got.system_properties.unwrap();
        assert_eq!(sys.message_id, "0002".to_string() + &format!("{:016X}", 0));
        assert_eq!(sys.keys, vec!["k1".to_string()]);
        assert_eq!(
            sys.born_timestamp.as_ref().map(timestamp_ms),
            Some(1_700_000_000_123)
        );
        assert_eq!(got.user_properties.get("h").map(String::as_str), Some("x"));
        assert!(
            !got.user_properties.contains_key("bin"),
            "not UTF-8: left out"
        );
        assert_eq!(&got.body[..], b"v");
    }
}
