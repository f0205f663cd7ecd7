//! Durable definitions of a virtual host (exchanges, queues, bindings) in one file,
//! rewritten whole on every change: written to a temporary file, fsynced, renamed.
//!
//! Layout: `magic "SLUICEDF" | version u32 | crc32 of the rest u32 | field table`, the
//! table encoded as AMQP encodes field tables, holding arrays `exchanges`, `queues` and
//! `bindings` of tables.

use std::path::Path;

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use sluice_core::Table;
use sluice_engine::routing::{Binding, Destination, ExchangeDef, ExchangeKind};
use sluice_engine::vhost::{Definitions, QueueRecord};

use crate::props::{table_from_amqp, table_to_amqp};

const MAGIC: &[u8; 8] = b"SLUICEDF";
const VERSION: u32 = 1;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn key(s: &str) -> ShortString {
    ShortString::from(s.to_string())
}

fn get_text(t: &FieldTable, k: &str) -> Option<String> {
    match t.inner().get(k)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn get_bool(t: &FieldTable, k: &str) -> bool {
    matches!(t.inner().get(k), Some(AMQPValue::Boolean(true)))
}

fn get_table(t: &FieldTable, k: &str) -> Table {
    match t.inner().get(k) {
        Some(AMQPValue::FieldTable(f)) => table_from_amqp(f),
        _ => Table::new(),
    }
}

fn tables<'a>(t: &'a FieldTable, k: &str) -> Vec<&'a FieldTable> {
    match t.inner().get(k) {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub fn encode(defs: &Definitions) -> Vec<u8> {
    let mut root = FieldTable::default();
    let exchanges: Vec<AMQPValue> = defs
        .exchanges
        .iter()
        .map(|e| {
            let mut t = FieldTable::default();
            t.insert(key("name"), text(&e.name));
            t.insert(key("type"), text(e.kind.as_str()));
            t.insert(key("auto_delete"), AMQPValue::Boolean(e.auto_delete));
            t.insert(key("internal"), AMQPValue::Boolean(e.internal));
            t.insert(
                key("arguments"),
                AMQPValue::FieldTable(table_to_amqp(&e.arguments)),
            );
            AMQPValue::FieldTable(t)
        })
        .collect();
    let queues: Vec<AMQPValue> = defs
        .queues
        .iter()
        .map(|q| {
            let mut t = FieldTable::default();
            t.insert(key("name"), text(&q.name));
            t.insert(key("id"), AMQPValue::LongLongInt(q.id as i64));
            t.insert(key("auto_delete"), AMQPValue::Boolean(q.auto_delete));
            t.insert(
                key("arguments"),
                AMQPValue::FieldTable(table_to_amqp(&q.arguments)),
            );
            AMQPValue::FieldTable(t)
        })
        .collect();
    let bindings: Vec<AMQPValue> = defs
        .bindings
        .iter()
        .map(|b| {
            let mut t = FieldTable::default();
            t.insert(key("source"), text(&b.source));
            t.insert(key("destination"), text(b.destination.name()));
            t.insert(key("destination_type"), text(b.destination.kind()));
            t.insert(key("routing_key"), text(&b.routing_key));
            t.insert(
                key("arguments"),
                AMQPValue::FieldTable(table_to_amqp(&b.arguments)),
            );
            AMQPValue::FieldTable(t)
        })
        .collect();
    root.insert(
        key("exchanges"),
        AMQPValue::FieldArray(FieldArray::from(exchanges)),
    );
    root.insert(
        key("queues"),
        AMQPValue::FieldArray(FieldArray::from(queues)),
    );
    root.insert(
        key("bindings"),
        AMQPValue::FieldArray(FieldArray::from(bindings)),
    );
    let body = match gen_field_table(&root)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write,
        Err(_) => Vec::new(),
    };
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&crc32c_of(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// `None` when the bytes are not a whole, valid definitions file.
pub fn decode(bytes: &[u8]) -> Option<Definitions> {
    if bytes.get(..8)? != MAGIC || bytes.get(8..12)? != VERSION.to_le_bytes() {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?);
    let body = bytes.get(16..)?;
    if crc32c_of(body) != crc {
        return None;
    }
    let (_, root) = parse_field_table(body).ok()?;
    let mut defs = Definitions::default();
    for t in tables(&root, "exchanges") {
        let kind: ExchangeKind = get_text(t, "type")?.parse().ok()?;
        defs.exchanges.push(ExchangeDef {
            name: get_text(t, "name")?.into(),
            kind,
            durable: true,
            auto_delete: get_bool(t, "auto_delete"),
            internal: get_bool(t, "internal"),
            arguments: get_table(t, "arguments"),
        });
    }
    for t in tables(&root, "queues") {
        let id = match t.inner().get("id") {
            Some(AMQPValue::LongLongInt(v)) => u64::try_from(*v).ok()?,
            _ => return None,
        };
        defs.queues.push(QueueRecord {
            name: get_text(t, "name")?,
            id,
            auto_delete: get_bool(t, "auto_delete"),
            arguments: get_table(t, "arguments"),
        });
    }
    for t in tables(&root, "bindings") {
        let dest = get_text(t, "destination")?;
        let destination = match get_text(t, "destination_type")?.as_str() {
            "queue" => Destination::Queue(dest.into()),
            _ => Destination::Exchange(dest.into()),
        };
        defs.bindings.push(Binding {
            source: get_text(t, "source")?.into(),
            destination,
            routing_key: get_text(t, "routing_key")?.into(),
            arguments: get_table(t, "arguments"),
        });
    }
    Some(defs)
}

/// Writes the file atomically. Blocking.
pub fn save(defs: &Definitions, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&encode(defs))?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the file; a missing one is empty definitions.
pub fn load(path: &Path) -> std::io::Result<Definitions> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is damaged", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Definitions::default()),
        Err(e) => Err(e),
    }
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Value;

    #[test]
    fn definitions_round_trip_and_damage_is_detected() {
        let mut args = Table::new();
        args.insert("x-message-ttl", Value::I32(500));
        let defs = Definitions {
            exchanges: vec![ExchangeDef {
                name: "orders".into(),
                kind: ExchangeKind::Topic,
                durable: true,
                auto_delete: false,
                internal: true,
                arguments: Table::new(),
            }],
            queues: vec![QueueRecord {
                name: "q1".into(),
                id: 7,
                auto_delete: false,
                arguments: args.clone(),
            }],
            bindings: vec![Binding {
                source: "orders".into(),
                destination: Destination::Queue("q1".into()),
                routing_key: "order.#".into(),
                arguments: Table::new(),
            }],
        };
        let bytes = encode(&defs);
        assert_eq!(decode(&bytes), Some(defs));
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(decode(&damaged), None);
        assert_eq!(crc32c_of(b"123456789"), 0xE306_9283);
    }
}
