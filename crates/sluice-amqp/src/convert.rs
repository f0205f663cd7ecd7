//! AMQP messages into and out of stream records, the one place where this face meets
//! the engine's record model (a stream queue is a Kafka topic; see docs/streams.md).
//!
//! A message becomes one record: key = routing key, value = body, timestamp = publish
//! time, and each header whose value is a string or byte array becomes a record header,
//! so Kafka consumers read them. What a record has no place for (the exchange, the other
//! properties, headers of other types) travels in one more record header, `AMQP_HEADER`:
//! the exchange name (a length byte, then the name) followed by the content header's
//! property bytes exactly as published. Reading it back gives an AMQP consumer what was
//! published. A record without it (written by a Kafka producer, or an AMQP message with
//! string headers only) is delivered with its headers as long strings and its key as
//! routing key.

use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use sluice_core::Message;
use sluice_engine::stream::record::{BatchBuilder, Record};

/// The record header holding what Kafka's record has no place for.
pub const AMQP_HEADER: &str = "x-amqp-0-9-1";

/// A record as an AMQP consumer of a stream queue receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub offset: u64,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// Encoded properties, with `x-stream-offset` set in the headers.
    pub properties: Bytes,
    pub body: Bytes,
}

fn encode(props: &AMQPProperties) -> Option<Bytes> {
    let written =
        gen_properties(props)(amq_protocol::frame::WriteContext::from(Vec::new())).ok()?;
    Some(Bytes::from(written.write))
}

/// Record headers for the headers Kafka can hold (strings and byte arrays), and whether
/// every property fits a record without `AMQP_HEADER`.
fn kafka_headers(props: &AMQPProperties) -> (Vec<(Bytes, Bytes)>, bool) {
    let mut out = Vec::new();
    let mut complete = true;
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            let key = Bytes::copy_from_slice(k.as_str().as_bytes());
            match v {
                AMQPValue::LongString(s) => out.push((key, Bytes::copy_from_slice(s.as_bytes()))),
                AMQPValue::ShortString(s) => {
                    complete = false;
                    out.push((key, Bytes::copy_from_slice(s.as_str().as_bytes())));
                }
                AMQPValue::ByteArray(b) => {
                    complete = false;
                    out.push((key, Bytes::copy_from_slice(b.as_slice())));
                }
                _ => complete = false,
            }
        }
    }
    let only_headers = props.content_type().is_none()
        && props.content_encoding().is_none()
        && props.delivery_mode().is_none()
        && props.priority().is_none()
        && props.correlation_id().is_none()
        && props.reply_to().is_none()
        && props.expiration().is_none()
        && props.message_id().is_none()
        && props.timestamp().is_none()
        && props.kind().is_none()
        && props.user_id().is_none()
        && props.app_id().is_none()
        && props.cluster_id().is_none();
    (out, complete && only_headers)
}

/// The batch (one record) that stores `message` in a stream, published at `now_ms`.
pub fn to_batch(message: &Message, now_ms: i64) -> Vec<u8> {
    let props = match parse_properties(&message.properties[..]) {
        Ok((_, p)) => p,
        Err(_) => AMQPProperties::default(),
    };
    let (mut headers, complete) = kafka_headers(&props);
    if !complete || !message.exchange.is_empty() {
        let exchange = message.exchange.as_bytes();
        let mut extra = Vec::with_capacity(1 + exchange.len() + message.properties.len());
        extra.push(exchange.len().min(255) as u8);
        extra.extend_from_slice(exchange.get(..255.min(exchange.len())).unwrap_or_default());
        extra.extend_from_slice(&message.properties);
        headers.push((
            Bytes::from_static(AMQP_HEADER.as_bytes()),
            Bytes::from(extra),
        ));
    }
    let mut batch = BatchBuilder::default();
    batch.push(
        now_ms,
        Some(message.routing_key.as_bytes()),
        Some(&message.body),
        headers.iter().map(|(k, v)| (&k[..], Some(&v[..]))),
    );
    batch.finish()
}

/// The delivery of `record` from the stream queue `queue`.
pub fn to_delivery(record: &Record, queue: &str) -> Delivery {
    let body = record.value.clone().unwrap_or_default();
    let routing_key = record
        .key
        .clone()
        .filter(|k| k.len() <= 255 && std::str::from_utf8(k).is_ok())
        .unwrap_or_else(|| Bytes::copy_from_slice(queue.as_bytes()));
    // The broker writes its header last: a header of that name a client set comes first.
    let stored = record
        .headers
        .iter()
        .rev()
        .find(|(k, _)| &k[..] == AMQP_HEADER.as_bytes())
        .and_then(|(_, v)| v.as_ref());
    let offset = record.offset as i64;
    if let Some((exchange, raw)) = stored.and_then(split_raw)
        && let Some(properties) = crate::props::with_long_header(&raw, "x-stream-offset", offset)
    {
        // What an AMQP publisher sent, spliced without decoding: the common case.
        return Delivery {
            offset: record.offset,
            exchange,
            routing_key,
            properties,
            body,
        };
    }
    if record.headers.is_empty() {
        // Nothing but the offset: no table to build.
        if let Some(properties) = crate::props::with_long_header(&[0, 0], "x-stream-offset", offset)
        {
            return Delivery {
                offset: record.offset,
                exchange: Bytes::new(),
                routing_key,
                properties,
                body,
            };
        }
    }
    let (exchange, mut props) = match stored.and_then(split_stored) {
        Some((exchange, props)) => (exchange, props),
        None => {
            let mut table = FieldTable::default();
            for (k, v) in &record.headers {
                let Ok(k) = std::str::from_utf8(k) else {
                    continue;
                };
                if k.len() > 255 || k == AMQP_HEADER {
                    continue;
                }
                let value = match v {
                    Some(v) => AMQPValue::LongString(LongString::from(v.to_vec())),
                    None => AMQPValue::Void,
                };
                table.insert(ShortString::from(k.to_string()), value);
            }
            // No `timestamp` property: a message an AMQP publisher sent with string
            // headers only is stored the same way, and must read back as it was sent.
            let props = AMQPProperties::default().with_headers(table);
            (Bytes::new(), props)
        }
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::LongLongInt(offset),
    );
    props = props.with_headers(headers);
    Delivery {
        offset: record.offset,
        exchange,
        routing_key,
        properties: encode(&props).unwrap_or_default(),
        body,
    }
}

/// The exchange and the raw property bytes in an `AMQP_HEADER` value, when the bytes
/// are well-formed properties (a Kafka producer may write anything under that name).
fn split_raw(value: &Bytes) -> Option<(Bytes, Bytes)> {
    let len = usize::from(*value.first()?);
    std::str::from_utf8(value.get(1..1 + len)?).ok()?;
    let raw = value.slice(1 + len..);
    if !matches!(parse_properties(&raw[..]), Ok((&[], _))) {
        return None;
    }
    Some((value.slice(1..1 + len), raw))
}

/// The exchange and the properties in an `AMQP_HEADER` value.
fn split_stored(value: &Bytes) -> Option<(Bytes, AMQPProperties)> {
    let len = usize::from(*value.first()?);
    let exchange = value.get(1..1 + len)?;
    std::str::from_utf8(exchange).ok()?;
    let raw = value.get(1 + len..)?;
    let props = match parse_properties(raw) {
        Ok((&[], p)) => p,
        _ => return None,
    };
    Some((value.slice(1..1 + len), props))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::ByteArray;
    use proptest::prelude::*;

    fn message(exchange: &str, key: &str, props: &AMQPProperties, body: &[u8]) -> Message {
        Message {
            exchange: exchange.into(),
            routing_key: key.into(),
            properties: encode(props).unwrap(),
            body: Bytes::copy_from_slice(body),
            persistent: false,
            priority: 0,
            expiration_ms: None,
        }
    }

    fn stored(message: &Message, offset: u64) -> Record {
        let mut batch = to_batch(message, 1_700_000_000_123);
        batch[..8].copy_from_slice(&offset.to_be_bytes());
        let mut out = Vec::new();
        sluice_engine::stream::record::read_batch(&Bytes::from(batch), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    fn arb_props() -> impl Strategy<Value = AMQPProperties> {
        (
            proptest::option::of("[a-z/]{1,12}"),
            proptest::option::of(1u8..=2),
            proptest::option::of(0u8..10),
            proptest::option::of("[a-z0-9-]{1,16}"),
            proptest::option::of(0u64..1 << 40),
            proptest::collection::vec(
                (
                    "[a-z][a-z0-9-]{0,10}",
                    prop_oneof![
                        "[ -~]{0,20}".prop_map(|s| AMQPValue::LongString(LongString::from(s))),
                        proptest::collection::vec(any::<u8>(), 0..10)
                            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
                        any::<i32>().prop_map(AMQPValue::LongInt),
                        any::<bool>().prop_map(AMQPValue::Boolean),
                    ],
                ),
                0..5,
            ),
        )
            .prop_map(|(ct, dm, pr, id, ts, headers)| {
                let mut p = AMQPProperties::default();
                if let Some(ct) = ct {
                    p = p.with_content_type(ShortString::from(ct));
                }
                if let Some(dm) = dm {
                    p = p.with_delivery_mode(dm);
                }
                if let Some(pr) = pr {
                    p = p.with_priority(pr);
                }
                if let Some(id) = id {
                    p = p.with_message_id(ShortString::from(id));
                }
                if let Some(ts) = ts {
                    p = p.with_timestamp(ts);
                }
                let mut t = FieldTable::default();
                for (k, v) in headers {
                    t.insert(ShortString::from(k), v);
                }
                p.with_headers(t)
            })
    }

    proptest! {
        /// AMQP in, AMQP out: exchange, routing key, body and every property come back
        /// as published, plus `x-stream-offset`.
        #[test]
        fn an_amqp_message_reads_back_as_published(
            exchange in "[a-z.]{0,12}",
            key in "[a-z.]{0,20}",
            props in arb_props(),
            body in proptest::collection::vec(any::<u8>(), 0..100),
            offset in 0u64..1 << 40,
        ) {
            let m = message(&exchange, &key, &props, &body);
            let record = stored(&m, offset);
            prop_assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
            prop_assert_eq!(record.value.as_deref(), Some(&body[..]));
            let d = to_delivery(&record, "q");
            prop_assert_eq!(&d.exchange[..], exchange.as_bytes());
            prop_assert_eq!(&d.routing_key[..], key.as_bytes());
            prop_assert_eq!(&d.body[..], &body[..]);
            let (_, got) = parse_properties(&d.properties[..]).unwrap();
            let want_headers = props.headers().clone().unwrap_or_default();
            let mut got_headers = got.headers().clone().unwrap_or_default();
            prop_assert_eq!(
                got_headers.inner().get("x-stream-offset"),
                Some(&AMQPValue::LongLongInt(offset as i64))
            );
            let mut rest = FieldTable::default();
            for (k, v) in got_headers.inner() {
                if k.as_str() != "x-stream-offset" {
                    rest.insert(k.clone(), v.clone());
                }
            }
            got_headers = rest;
            prop_assert_eq!(got_headers, want_headers);
            prop_assert_eq!(got.content_type(), props.content_type());
            prop_assert_eq!(got.delivery_mode(), props.delivery_mode());
            prop_assert_eq!(got.priority(), props.priority());
            prop_assert_eq!(got.message_id(), props.message_id());
            prop_assert_eq!(got.timestamp(), props.timestamp());
        }
    }

    /// String headers reach Kafka readers as record headers; a message with nothing
    /// else needs no `AMQP_HEADER`.
    #[test]
    fn string_headers_become_record_headers() {
        let mut t = FieldTable::default();
        t.insert("trace".into(), AMQPValue::LongString("abc".into()));
        let props = AMQPProperties::default().with_headers(t);
        let record = stored(&message("", "orders", &props, b"hi"), 7);
        assert_eq!(
            record.headers,
            vec![(
                Bytes::from_static(b"trace"),
                Some(Bytes::from_static(b"abc"))
            )]
        );
        let d = to_delivery(&record, "q");
        assert_eq!(&d.routing_key[..], b"orders");
    }

    /// A record a Kafka producer wrote: headers as long strings, the key as routing key
    /// (the queue name without one).
    #[test]
    fn a_kafka_record_reads_as_an_amqp_message() {
        let record = Record {
            offset: 3,
            timestamp: 1_700_000_000_999,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: vec![
                (Bytes::from_static(b"h"), Some(Bytes::from_static(b"x"))),
                (Bytes::from_static(b"n"), None),
            ],
        };
        let d = to_delivery(&record, "events");
        assert_eq!(&d.routing_key[..], b"events");
        assert!(d.exchange.is_empty());
        let (_, p) = parse_properties(&d.properties[..]).unwrap();
        assert_eq!(*p.timestamp(), None);
        let h = p.headers().clone().unwrap();
        assert_eq!(h.inner().get("h"), Some(&AMQPValue::LongString("x".into())));
        assert_eq!(h.inner().get("n"), Some(&AMQPValue::Void));
        assert_eq!(
            h.inner().get("x-stream-offset"),
            Some(&AMQPValue::LongLongInt(3))
        );
    }
}
