//! Operations on a virtual host's objects from outside any channel (the management HTTP
//! API), with the checks and reply texts of the AMQP methods that do the same, so an
//! operator gets RabbitMQ's answers whichever way they ask. Blocking: declaring a
//! durable queue creates its storage.

use std::sync::Arc;

use amq_protocol::protocol::basic::{AMQPProperties, gen_properties};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use sluice_core::{Message, Table};
use sluice_engine::routing::{Binding, DeleteWhen, Destination, ExchangeDef, ExchangeKind};

use crate::args;
use crate::broker::{ConnectionId, OpenError, QueueCell, QueueDef, VHost};
use crate::error::{AmqpError, codes};
use crate::props;

/// The exchange type of delayed delivery (as RabbitMQ's delayed-message plugin names it).
pub const DELAYED_TYPE: &str = "x-delayed-message";

/// Declares queue `name` (already checked for the reserved `amq.` prefix and for
/// permission). `connection` is the declaring connection, `None` from the management
/// API; `exclusive` makes it that connection's. Returns the queue and whether it was
/// created; an existing one must be equivalent.
pub fn declare_queue(
    vhost: &Arc<VHost>,
    name: Arc<str>,
    durable: bool,
    auto_delete: bool,
    exclusive: Option<ConnectionId>,
    connection: Option<ConnectionId>,
    arguments: Table,
) -> Result<(Arc<QueueCell>, bool), AmqpError> {
    let settings = args::queue_settings(&arguments, durable, exclusive.is_some(), auto_delete)?;
    let def = QueueDef {
        durable,
        exclusive_owner: exclusive,
        auto_delete,
        arguments,
        settings,
    };
    let (queue, created) = vhost
        .declare_queue(name, def.clone())
        .map_err(|e| match e {
            OpenError::Limit(text) => AmqpError::precondition(text).during(50, 10),
            e => {
                tracing::error!(error = %e, "cannot create queue storage");
                AmqpError::connection(
                    codes::INTERNAL_ERROR,
                    "INTERNAL_ERROR - cannot create queue storage",
                )
            }
        })?;
    if created {
        vhost.definitions_changed();
    } else {
        check_owner(&queue, connection, &vhost.name)?;
        check_equivalent(&queue, &def, &vhost.name)?;
    }
    Ok((queue, created))
}

/// An exclusive queue is only for the connection that declared it.
pub fn check_owner(
    queue: &QueueCell,
    connection: Option<ConnectionId>,
    vhost: &str,
) -> Result<(), AmqpError> {
    match queue.def.exclusive_owner {
        Some(owner) if Some(owner) != connection => Err(AmqpError::channel(
            codes::RESOURCE_LOCKED,
            format!(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                queue.name
            ),
        )),
        _ => Ok(()),
    }
}

/// RabbitMQ's PRECONDITION_FAILED for a declare that does not match the queue there.
pub fn check_equivalent(
    queue: &QueueCell,
    requested: &QueueDef,
    vhost: &str,
) -> Result<(), AmqpError> {
    let current = &queue.def;
    let mismatch = |arg: &str, received: String, now: String| {
        Err(AmqpError::precondition(format!(
            "inequivalent arg '{arg}' for queue '{}' in vhost '{vhost}': received '{received}' but current is '{now}'",
            queue.name
        )))
    };
    // RabbitMQ does not compare `durable` for an exclusive queue.
    if current.durable != requested.durable && current.exclusive_owner.is_none() {
        return mismatch(
            "durable",
            requested.durable.to_string(),
            current.durable.to_string(),
        );
    }
    if current.auto_delete != requested.auto_delete {
        return mismatch(
            "auto_delete",
            requested.auto_delete.to_string(),
            current.auto_delete.to_string(),
        );
    }
    if current.exclusive_owner.is_some() != requested.exclusive_owner.is_some() {
        return Err(AmqpError::channel(
            codes::RESOURCE_LOCKED,
            format!(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in vhost '{vhost}'",
                queue.name
            ),
        ));
    }
    for (key, _) in requested.arguments.iter().chain(current.arguments.iter()) {
        if !key.starts_with("x-") {
            continue;
        }
        let a = requested.arguments.get(key);
        let b = current.arguments.get(key);
        if a != b {
            let show =
                |v: Option<&sluice_core::Value>| v.map_or("none".to_string(), |v| format!("{v:?}"));
            return mismatch(key, show(a), show(b));
        }
    }
    Ok(())
}

/// Declares exchange `name` of type `kind` (permission already checked). Returns whether
/// it was created; an existing one must be equivalent.
pub fn declare_exchange(
    vhost: &Arc<VHost>,
    name: &str,
    kind: &str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: Table,
) -> Result<bool, AmqpError> {
    let delayed = kind == DELAYED_TYPE;
    let invalid_delayed = || {
        AmqpError::precondition(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    };
    let kind_name = if delayed {
        arguments
            .get("x-delayed-type")
            .and_then(sluice_core::Value::as_str)
            .ok_or_else(invalid_delayed)?
    } else {
        kind
    };
    let parsed: ExchangeKind = kind_name.parse().map_err(|_| {
        if delayed {
            invalid_delayed()
        } else {
            AmqpError::connection(
                codes::COMMAND_INVALID,
                format!("COMMAND_INVALID - invalid exchange type '{kind}'"),
            )
        }
    })?;
    let def = ExchangeDef {
        name: name.into(),
        kind: parsed,
        durable,
        auto_delete,
        internal,
        arguments,
    };
    let created = vhost.router_mut().declare_exchange(def)?;
    if delayed && created {
        vhost.declare_delayed(name, durable).map_err(|e| match e {
            OpenError::Limit(text) => AmqpError::precondition(text),
            e => {
                tracing::error!(error = %e, "cannot create delayed exchange storage");
                AmqpError::connection(
                    codes::INTERNAL_ERROR,
                    "INTERNAL_ERROR - cannot create delayed exchange storage",
                )
            }
        })?;
    }
    Ok(created)
}

/// Deletes exchange `name` (and a delayed exchange's store).
pub fn delete_exchange(vhost: &VHost, name: &str, if_unused: bool) -> Result<(), AmqpError> {
    let when = if if_unused {
        DeleteWhen::Unused
    } else {
        DeleteWhen::Always
    };
    vhost.router_mut().delete_exchange(name, when)?;
    vhost.delete_delayed(name);
    Ok(())
}

/// Deletes queue `name` as `queue.delete` does; returns the messages it held.
pub fn delete_queue(
    vhost: &VHost,
    name: &str,
    if_unused: bool,
    if_empty: bool,
    connection: Option<ConnectionId>,
) -> Result<u32, AmqpError> {
    let Some(queue) = vhost.client_queue(name) else {
        return Err(AmqpError::not_found("queue", name, &vhost.name));
    };
    check_owner(&queue, connection, &vhost.name)?;
    let (messages, consumers) = queue.counts();
    if if_unused && consumers > 0 {
        return Err(AmqpError::precondition(format!(
            "queue '{name}' in vhost '{}' in use",
            vhost.name
        )));
    }
    if if_empty && messages > 0 {
        return Err(AmqpError::precondition(format!(
            "queue '{name}' in vhost '{}' is not empty",
            vhost.name
        )));
    }
    Ok(vhost.delete_queue(name))
}

/// A binding from `source` to a queue or exchange.
pub fn binding(source: &str, destination: Destination, key: &str, arguments: Table) -> Binding {
    Binding {
        source: source.into(),
        destination,
        routing_key: key.into(),
        arguments,
    }
}

/// What a management-API publish carries besides the body.
#[derive(Debug, Default)]
pub struct Publish {
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub expiration: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub headers: Option<Table>,
}

/// Publishes `body` to `exchange` with `key`; returns whether some queue took it.
pub fn publish(
    vhost: &VHost,
    exchange: &str,
    key: &str,
    body: Bytes,
    p: Publish,
) -> Result<bool, AmqpError> {
    if !exchange.is_empty() && vhost.router().exchange(exchange).is_none() {
        return Err(AmqpError::not_found("exchange", exchange, &vhost.name));
    }
    let expiration_ms = match &p.expiration {
        Some(e) => Some(
            e.parse::<u64>()
                .map_err(|_| AmqpError::precondition(format!("invalid expiration '{e}'")))?,
        ),
        None => None,
    };
    let short = |s: &Option<String>| s.as_deref().map(ShortString::from);
    let mut props = AMQPProperties::default();
    if let Some(v) = short(&p.content_type) {
        props = props.with_content_type(v);
    }
    if let Some(v) = short(&p.content_encoding) {
        props = props.with_content_encoding(v);
    }
    if let Some(h) = &p.headers {
        props = props.with_headers(props::table_to_amqp(h));
    }
    if let Some(v) = p.delivery_mode {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    if let Some(v) = short(&p.correlation_id) {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = short(&p.reply_to) {
        props = props.with_reply_to(v);
    }
    if let Some(v) = short(&p.expiration) {
        props = props.with_expiration(v);
    }
    if let Some(v) = short(&p.message_id) {
        props = props.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        props = props.with_timestamp(v);
    }
    if let Some(v) = short(&p.kind) {
        props = props.with_type(v);
    }
    if let Some(v) = short(&p.user_id) {
        props = props.with_user_id(v);
    }
    if let Some(v) = short(&p.app_id) {
        props = props.with_app_id(v);
    }
    let encoded = gen_properties(&props)(amq_protocol::frame::WriteContext::from(Vec::new()))
        .map_err(|_| AmqpError::precondition("message properties cannot be encoded"))?;
    let message = Arc::new(Message {
        exchange: exchange.into(),
        routing_key: key.into(),
        properties: Bytes::from(encoded.write),
        body,
        persistent: p.delivery_mode == Some(2),
        priority: p.priority.unwrap_or(0),
        expiration_ms,
    });
    Ok(vhost.route_now(exchange, message) > 0)
}

/// One message a management-API get took, with what RabbitMQ shows of it.
#[derive(Debug)]
pub struct Got {
    pub exchange: Arc<str>,
    pub routing_key: Arc<str>,
    pub redelivered: bool,
    /// Messages left in the queue after this one was taken.
    pub remaining: u32,
    pub properties: AMQPProperties,
    pub body: Bytes,
}

/// Takes up to `count` messages from `queue`; with `requeue` they go back (marked
/// redelivered), otherwise they are acknowledged, as RabbitMQ's get modes do.
pub fn get(queue: &Arc<QueueCell>, count: usize, requeue: bool) -> Vec<Got> {
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let Some((entry, remaining)) = queue.get(false) else {
            break;
        };
        let properties =
            amq_protocol::protocol::basic::parse_properties(&entry.message.properties[..])
                .map(|(_, p)| p)
                .unwrap_or_default();
        out.push(Got {
            exchange: Arc::clone(&entry.message.exchange),
            routing_key: Arc::clone(&entry.message.routing_key),
            redelivered: entry.redelivered,
            remaining,
            properties,
            body: entry.message.body.clone(),
        });
        taken.push(entry.id);
    }
    if requeue {
        queue.requeue(&taken);
    } else {
        queue.ack(&taken);
    }
    out
}

/// An AMQP table as JSON (RabbitMQ's management API shows arguments and headers so).
pub fn table_json(table: &FieldTable) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, v) in table.inner() {
        map.insert(k.as_str().to_string(), value_json(v));
    }
    serde_json::Value::Object(map)
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortShortInt(n) => J::from(*n),
        AMQPValue::ShortShortUInt(n) => J::from(*n),
        AMQPValue::ShortInt(n) => J::from(*n),
        AMQPValue::ShortUInt(n) => J::from(*n),
        AMQPValue::LongInt(n) => J::from(*n),
        AMQPValue::LongUInt(n) => J::from(*n),
        AMQPValue::LongLongInt(n) => J::from(*n),
        AMQPValue::Float(f) => J::from(f64::from(*f)),
        AMQPValue::Double(f) => J::from(*f),
        AMQPValue::DecimalValue(d) => J::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => J::from(s.as_str()),
        AMQPValue::LongString(s) => J::from(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::Timestamp(t) => J::from(*t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => J::from(String::from_utf8_lossy(b.as_slice()).into_owned()),
        AMQPValue::Void => J::Null,
    }
}

/// A JSON object as an AMQP table for arguments and headers: strings stay strings,
/// integers are signed 64-bit, as RabbitMQ's management API reads them.
pub fn table_from_json(object: &serde_json::Map<String, serde_json::Value>) -> Table {
    let mut t = FieldTable::default();
    for (k, v) in object {
        t.insert(ShortString::from(k.as_str()), json_value(v));
    }
    props::table_from_amqp(&t)
}

fn json_value(v: &serde_json::Value) -> AMQPValue {
    use serde_json::Value as J;
    match v {
        J::Null => AMQPValue::Void,
        J::Bool(b) => AMQPValue::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        J::Array(a) => AMQPValue::FieldArray(a.iter().map(json_value).collect::<Vec<_>>().into()),
        J::Object(o) => {
            let mut t = FieldTable::default();
            for (k, v) in o {
                t.insert(ShortString::from(k.as_str()), json_value(v));
            }
            AMQPValue::FieldTable(t)
        }
    }
}
