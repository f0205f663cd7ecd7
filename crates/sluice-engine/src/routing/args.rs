//! How RabbitMQ compares and names typed argument values, for the three places routing
//! needs it: header matching (Erlang `==` on values, types ignored), the
//! `alternate-exchange` equivalence check (same type class and `==`), and binding identity
//! (the whole argument table, key order ignored, types exact).

use sluice_core::{Table, Value};

/// The AMQP field type name RabbitMQ prints for a value in error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "bool",
        Value::I8(_) => "byte",
        Value::U8(_) => "unsignedbyte",
        Value::I16(_) => "short",
        Value::U16(_) => "unsignedshort",
        Value::I32(_) => "signedint",
        Value::U32(_) => "unsignedint",
        Value::I64(_) => "long",
        Value::F32(_) => "float",
        Value::F64(_) => "double",
        Value::Decimal { .. } => "decimal",
        Value::ShortString(_) => "shortstr",
        Value::LongString(_) => "longstr",
        Value::Array(_) => "array",
        Value::Timestamp(_) => "timestamp",
        Value::Table(_) => "table",
        Value::Bytes(_) => "binary",
        Value::Void => "void",
    }
}

/// A value as RabbitMQ formats it inside quotes: binaries as text, other terms as data.
pub fn describe(value: &Value) -> String {
    match value {
        Value::ShortString(s) => s.clone(),
        Value::LongString(b) | Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Bool(v) => v.to_string(),
        Value::I8(v) => v.to_string(),
        Value::U8(v) => v.to_string(),
        Value::I16(v) => v.to_string(),
        Value::U16(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::F32(v) => v.to_string(),
        Value::F64(v) => v.to_string(),
        Value::Timestamp(v) => v.to_string(),
        Value::Decimal { scale, value } => format!("{{{scale},{value}}}"),
        Value::Void => "undefined".to_owned(),
        Value::Array(_) | Value::Table(_) => format!("{value:?}"),
    }
}

/// Numbers as Erlang holds them after decoding: every integer type (and timestamps) is an
/// integer, both float types are floats.
enum Number {
    Int(i128),
    Float(f64),
}

fn number(value: &Value) -> Option<Number> {
    match *value {
        Value::F32(v) => Some(Number::Float(f64::from(v))),
        Value::F64(v) => Some(Number::Float(v)),
        Value::Timestamp(v) => Some(Number::Int(i128::from(v))),
        _ => value.as_i64().map(|v| Number::Int(i128::from(v))),
    }
}

/// Erlang binaries: both string kinds and byte arrays.
fn binary(value: &Value) -> Option<&[u8]> {
    match value {
        Value::ShortString(s) => Some(s.as_bytes()),
        Value::LongString(b) | Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// Erlang's `==` on two decoded values, types ignored: RabbitMQ's headers exchange compares
/// a binding's value with a header's this way, so `1` (byte) equals `1` (long) and `1.0`.
/// Arrays and tables keep their element types, as Erlang compares `{Type, Value}` pairs.
pub(super) fn erlang_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return match (x, y) {
            (Number::Int(x), Number::Int(y)) => x == y,
            (Number::Float(x), Number::Float(y)) => x == y,
            // Erlang converts the integer to a float to compare the two.
            (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
                i as f64 == f
            }
        };
    }
    if let (Some(x), Some(y)) = (binary(a), binary(b)) {
        return x == y;
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Decimal { .. }, Value::Decimal { .. })
        | (Value::Array(_), Value::Array(_))
        | (Value::Table(_), Value::Table(_))
        | (Value::Void, Value::Void) => a == b,
        _ => false,
    }
}

/// RabbitMQ's `type_class`: integer widths (and decimal) form one class, both floats
/// another. Our tables can also hold short strings, which RabbitMQ never decodes in a
/// table; they share the long strings' class so a face may use either.
fn type_class(value: &Value) -> &'static str {
    match value {
        Value::I8(_)
        | Value::U8(_)
        | Value::I16(_)
        | Value::U16(_)
        | Value::I32(_)
        | Value::U32(_)
        | Value::I64(_)
        | Value::Decimal { .. } => "int",
        Value::F32(_) | Value::F64(_) => "float",
        Value::ShortString(_) | Value::LongString(_) => "longstr",
        other => type_name(other),
    }
}

/// RabbitMQ's equivalence of one declared argument with the current one.
pub(super) fn equivalent(current: &Value, requested: &Value) -> bool {
    type_class(current) == type_class(requested) && erlang_eq(current, requested)
}

/// Whether two argument tables are the same binding arguments: RabbitMQ sorts them by key
/// before storing, so key order does not matter, but types and values must be exact.
pub(super) fn same_table(a: &Table, b: &Table) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_eq_ignores_integer_width_and_compares_ints_with_floats() {
        assert!(erlang_eq(&Value::I8(1), &Value::I64(1)));
        assert!(erlang_eq(&Value::U32(7), &Value::I16(7)));
        assert!(erlang_eq(&Value::I32(1), &Value::F64(1.0)));
        assert!(erlang_eq(&Value::F32(1.5), &Value::F64(1.5)));
        assert!(!erlang_eq(&Value::I32(1), &Value::I32(2)));
        assert!(!erlang_eq(&Value::I32(1), &Value::string("1")));
    }

    #[test]
    fn erlang_eq_compares_strings_and_bytes_as_binaries() {
        assert!(erlang_eq(
            &Value::string("a"),
            &Value::ShortString("a".into())
        ));
        assert!(erlang_eq(
            &Value::string("a"),
            &Value::Bytes(bytes::Bytes::from_static(b"a"))
        ));
        assert!(!erlang_eq(&Value::string("a"), &Value::string("b")));
        assert!(!erlang_eq(&Value::Bool(true), &Value::string("true")));
    }

    #[test]
    fn erlang_eq_keeps_element_types_inside_arrays() {
        let a = Value::Array(vec![Value::I32(1)]);
        let b = Value::Array(vec![Value::I64(1)]);
        assert!(erlang_eq(&a, &a.clone()));
        assert!(!erlang_eq(&a, &b));
    }

    #[test]
    fn equivalence_needs_the_same_type_class() {
        assert!(equivalent(&Value::I8(3), &Value::I64(3)));
        assert!(!equivalent(&Value::I64(3), &Value::F64(3.0)));
        assert!(equivalent(
            &Value::string("x"),
            &Value::ShortString("x".into())
        ));
        assert!(!equivalent(&Value::string("x"), &Value::string("y")));
    }

    #[test]
    fn same_table_ignores_key_order_but_not_types() {
        let mut a = Table::new();
        a.insert("x", Value::I32(1));
        a.insert("y", Value::string("v"));
        let mut b = Table::new();
        b.insert("y", Value::string("v"));
        b.insert("x", Value::I32(1));
        assert!(same_table(&a, &b));
        b.insert("x", Value::I64(1));
        assert!(!same_table(&a, &b));
        b.remove("x");
        assert!(!same_table(&a, &b));
    }
}
