//! Conversions between `amq-protocol`'s field tables and Sluice's typed tables, and the
//! few message properties the broker itself acts on.

use amq_protocol::protocol::basic::{AMQPProperties, parse_properties};
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use bytes::Bytes;
use sluice_core::{Table, Value};

use crate::error::{AmqpError, codes};

pub fn table_from_amqp(table: &FieldTable) -> Table {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_from_amqp(v)))
        .collect()
}

fn value_from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(v) => Value::Bool(*v),
        AMQPValue::ShortShortInt(v) => Value::I8(*v),
        AMQPValue::ShortShortUInt(v) => Value::U8(*v),
        AMQPValue::ShortInt(v) => Value::I16(*v),
        AMQPValue::ShortUInt(v) => Value::U16(*v),
        AMQPValue::LongInt(v) => Value::I32(*v),
        AMQPValue::LongUInt(v) => Value::U32(*v),
        AMQPValue::LongLongInt(v) => Value::I64(*v),
        AMQPValue::Float(v) => Value::F32(*v),
        AMQPValue::Double(v) => Value::F64(*v),
        AMQPValue::DecimalValue(d) => Value::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => Value::ShortString(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::LongString(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::Timestamp(t) => Value::Timestamp(*t),
        AMQPValue::FieldTable(t) => Value::Table(table_from_amqp(t)),
        AMQPValue::ByteArray(b) => Value::Bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => Value::Void,
    }
}

pub fn table_to_amqp(table: &Table) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in table.iter() {
        out.insert(ShortString::from(k.to_string()), value_to_amqp(v));
    }
    out
}

fn value_to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Bool(v) => AMQPValue::Boolean(*v),
        Value::I8(v) => AMQPValue::ShortShortInt(*v),
        Value::U8(v) => AMQPValue::ShortShortUInt(*v),
        Value::I16(v) => AMQPValue::ShortInt(*v),
        Value::U16(v) => AMQPValue::ShortUInt(*v),
        Value::I32(v) => AMQPValue::LongInt(*v),
        Value::U32(v) => AMQPValue::LongUInt(*v),
        Value::I64(v) => AMQPValue::LongLongInt(*v),
        Value::F32(v) => AMQPValue::Float(*v),
        Value::F64(v) => AMQPValue::Double(*v),
        Value::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        Value::ShortString(s) => AMQPValue::ShortString(ShortString::from(s.clone())),
        Value::LongString(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Timestamp(t) => AMQPValue::Timestamp(*t),
        Value::Table(t) => AMQPValue::FieldTable(table_to_amqp(t)),
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        Value::Void => AMQPValue::Void,
    }
}

/// What the broker reads from a message's properties.
#[derive(Debug, Default)]
pub struct Known {
    pub persistent: bool,
    pub priority: u8,
    pub expiration_ms: Option<u64>,
    pub headers: Option<Table>,
    pub user_id: Option<String>,
    pub reply_to: Option<String>,
}

/// Decodes the property bytes of a content header. Malformed ones close the connection
/// with 541 INTERNAL_ERROR, as RabbitMQ 3.10 does (its channel crashes decoding them);
/// an `expiration` that is not a non-negative integer is PRECONDITION_FAILED.
pub fn read_known(raw: &[u8], want_headers: bool) -> Result<Known, AmqpError> {
    let props: AMQPProperties = match parse_properties(raw) {
        Ok((&[], p)) => p,
        _ => {
            return Err(AmqpError::connection(
                codes::INTERNAL_ERROR,
                "INTERNAL_ERROR",
            ));
        }
    };
    let expiration_ms = match props.expiration() {
        Some(e) => Some(e.as_str().parse::<u64>().map_err(|_| {
            AmqpError::precondition(format!("invalid expiration '{}'", e.as_str()))
        })?),
        None => None,
    };
    Ok(Known {
        persistent: *props.delivery_mode() == Some(2),
        priority: props.priority().unwrap_or(0),
        expiration_ms,
        user_id: props.user_id().as_ref().map(|u| u.as_str().to_string()),
        reply_to: props.reply_to().as_ref().map(|u| u.as_str().to_string()),
        headers: if want_headers {
            props.headers().as_ref().map(table_from_amqp)
        } else {
            None
        },
    })
}

/// The same properties with header `x-delivery-count` set to `count` (quorum queues
/// count earlier returns of a message this way).
pub fn with_delivery_count(raw: &[u8], count: u32) -> Option<Bytes> {
    let (_, props) = parse_properties(raw).ok()?;
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from("x-delivery-count"),
        AMQPValue::LongLongInt(i64::from(count)),
    );
    let props = props.with_headers(headers);
    let encoded = amq_protocol::protocol::basic::gen_properties(&props)(
        amq_protocol::frame::WriteContext::from(Vec::new()),
    )
    .ok()?
    .write;
    Some(Bytes::from(encoded))
}

/// The properties a delivery from `queue` carries: a quorum queue adds
/// `x-delivery-count`, as RabbitMQ does (on `basic.get` always, starting at 0; on
/// `basic.deliver` from the first return on).
pub fn delivered_properties(raw: &Bytes, quorum: bool, returns: u32, get: bool) -> Bytes {
    if quorum && (get || returns > 0) {
        with_delivery_count(raw, returns).unwrap_or_else(|| raw.clone())
    } else {
        raw.clone()
    }
}

/// The same properties with `reply_to` replaced (direct reply-to rewrites it).
pub fn with_reply_to(raw: &[u8], reply_to: &str) -> Option<Bytes> {
    let (_, props) = parse_properties(raw).ok()?;
    let props = props.with_reply_to(ShortString::from(reply_to.to_string()));
    let encoded = amq_protocol::protocol::basic::gen_properties(&props)(
        amq_protocol::frame::WriteContext::from(Vec::new()),
    )
    .ok()?
    .write;
    Some(Bytes::from(encoded))
}

/// The same property bytes with a long-long header `name` = `value` appended to the
/// headers table (which is added when absent), without decoding the other properties.
/// `None` when the bytes are not what a splice can handle (malformed, or a header of that
/// name already there); the caller decodes and re-encodes them instead.
pub fn with_long_header(raw: &[u8], name: &str, value: i64) -> Option<Bytes> {
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    let flags = u16::from_be_bytes(raw.get(0..2)?.try_into().ok()?);
    if flags & 1 != 0 || name.len() > 255 {
        return None;
    }
    let mut at = 2usize;
    for bit in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & bit != 0 {
            at = at.checked_add(1 + usize::from(*raw.get(at)?))?;
        }
    }
    let mut entry = Vec::with_capacity(name.len() + 10);
    entry.push(name.len() as u8);
    entry.extend_from_slice(name.as_bytes());
    entry.push(b'l');
    entry.extend_from_slice(&value.to_be_bytes());
    let mut out = Vec::with_capacity(raw.len() + entry.len() + 4);
    if flags & HEADERS != 0 {
        let len = u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize;
        let table = raw.get(at + 4..at.checked_add(4 + len)?)?;
        // The name with its length byte: present means a header of that name may be.
        let key = entry.get(..1 + name.len())?;
        if table.windows(key.len()).any(|w| w == key) {
            return None;
        }
        out.extend_from_slice(raw.get(..at)?);
        out.extend_from_slice(&u32::try_from(len + entry.len()).ok()?.to_be_bytes());
        out.extend_from_slice(table);
        out.extend_from_slice(&entry);
        out.extend_from_slice(raw.get(at + 4 + len..)?);
    } else {
        if at > raw.len() {
            return None;
        }
        out.extend_from_slice(&(flags | HEADERS).to_be_bytes());
        out.extend_from_slice(raw.get(2..at)?);
        out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        out.extend_from_slice(&entry);
        out.extend_from_slice(raw.get(at..)?);
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::gen_properties;

    fn encode(props: &AMQPProperties) -> Vec<u8> {
        gen_properties(props)(amq_protocol::frame::WriteContext::from(Vec::new()))
            .unwrap()
            .write
    }

    /// The splice gives what decoding, inserting the header and encoding again gives,
    /// with or without a headers table and the short strings before it.
    #[test]
    fn a_spliced_header_reads_as_an_inserted_one() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::LongString("x".into()));
        let cases = [
            AMQPProperties::default(),
            AMQPProperties::default().with_content_type("text/plain".into()),
            AMQPProperties::default()
                .with_content_type("t".into())
                .with_content_encoding("gzip".into())
                .with_priority(4),
            AMQPProperties::default().with_headers(table.clone()),
            AMQPProperties::default()
                .with_content_encoding("e".into())
                .with_headers(table)
                .with_message_id("m".into()),
        ];
        for props in cases {
            let spliced = with_long_header(&encode(&props), "x-stream-offset", 42).unwrap();
            let (rest, got) = parse_properties(&spliced[..]).unwrap();
            assert!(rest.is_empty());
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(42));
            assert_eq!(got, props.clone().with_headers(headers));
        }
    }

    #[test]
    fn a_header_of_the_same_name_or_bad_bytes_are_left_to_the_decoder() {
        let mut table = FieldTable::default();
        table.insert("x-stream-offset".into(), AMQPValue::LongInt(1));
        let props = AMQPProperties::default().with_headers(table);
        assert_eq!(
            with_long_header(&encode(&props), "x-stream-offset", 2),
            None
        );
        assert_eq!(with_long_header(&[0x20, 0x00, 0, 0, 0, 9], "h", 1), None);
        assert_eq!(with_long_header(&[0x80], "h", 1), None);
    }
}
