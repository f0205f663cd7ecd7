//! Dead-lettering: a message leaving a queue (rejected, expired, over the length limit)
//! is republished to the queue's dead-letter exchange with RabbitMQ's `x-death` history
//! and `x-first-death-*` headers, its per-message `expiration` moved into `x-death`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;
use sluice_core::Message;
use sluice_engine::queue::DeathReason;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn key(s: &str) -> ShortString {
    ShortString::from(s.to_string())
}

fn text_of(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The message as it goes to the dead-letter exchange `exchange` with `routing_key`.
pub fn dead_lettered(
    message: &Message,
    queue: &str,
    reason: DeathReason,
    exchange: &str,
    routing_key: &str,
) -> Option<Message> {
    let props: AMQPProperties = match parse_properties(&message.properties[..]) {
        Ok((_, p)) => p,
        Err(_) => return None,
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |v: &AMQPValue| match v {
        AMQPValue::FieldTable(t) => {
            text_of(t.inner().get("queue")).as_deref() == Some(queue)
                && text_of(t.inner().get("reason")).as_deref() == Some(reason.as_str())
        }
        _ => false,
    };
    let previous = deaths.iter().position(same).map(|i| deaths.remove(i));
    let count = match &previous {
        Some(AMQPValue::FieldTable(t)) => match t.inner().get("count") {
            Some(AMQPValue::LongLongInt(n)) => *n + 1,
            Some(AMQPValue::LongInt(n)) => i64::from(*n) + 1,
            _ => 1,
        },
        _ => 1,
    };
    let mut death = FieldTable::default();
    death.insert(key("count"), AMQPValue::LongLongInt(count));
    death.insert(key("reason"), long(reason.as_str()));
    death.insert(key("queue"), long(queue));
    death.insert(key("time"), AMQPValue::Timestamp(now));
    death.insert(key("exchange"), long(&message.exchange));
    death.insert(
        key("routing-keys"),
        AMQPValue::FieldArray(FieldArray::from(vec![long(&message.routing_key)])),
    );
    if let Some(expiration) = props.expiration() {
        death.insert(key("original-expiration"), long(expiration.as_str()));
    }
    deaths.insert(0, AMQPValue::FieldTable(death));
    headers.insert(
        key("x-death"),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (name, value) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", &message.exchange),
    ] {
        if !headers.inner().contains_key(name) {
            headers.insert(key(name), long(value));
        }
    }
    let mut rebuilt = AMQPProperties::default().with_headers(headers);
    if let Some(v) = props.content_type() {
        rebuilt = rebuilt.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        rebuilt = rebuilt.with_content_encoding(v.clone());
    }
    if let Some(v) = props.delivery_mode() {
        rebuilt = rebuilt.with_delivery_mode(*v);
    }
    if let Some(v) = props.priority() {
        rebuilt = rebuilt.with_priority(*v);
    }
    if let Some(v) = props.correlation_id() {
        rebuilt = rebuilt.with_correlation_id(v.clone());
    }
    if let Some(v) = props.reply_to() {
        rebuilt = rebuilt.with_reply_to(v.clone());
    }
    if let Some(v) = props.message_id() {
        rebuilt = rebuilt.with_message_id(v.clone());
    }
    if let Some(v) = props.timestamp() {
        rebuilt = rebuilt.with_timestamp(*v);
    }
    if let Some(v) = props.kind() {
        rebuilt = rebuilt.with_type(v.clone());
    }
    if let Some(v) = props.user_id() {
        rebuilt = rebuilt.with_user_id(v.clone());
    }
    if let Some(v) = props.app_id() {
        rebuilt = rebuilt.with_app_id(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        rebuilt = rebuilt.with_cluster_id(v.clone());
    }
    let encoded = gen_properties(&rebuilt)(WriteContext::from(Vec::new()))
        .ok()?
        .write;
    Some(Message {
        exchange: Arc::from(exchange),
        routing_key: Arc::from(routing_key),
        properties: Bytes::from(encoded),
        body: message.body.clone(),
        persistent: message.persistent,
        priority: message.priority,
        expiration_ms: None,
    })
}
