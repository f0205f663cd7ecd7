//! Typed header values shared by every protocol face: AMQP field tables map onto these
//! one to one (RabbitMQ's field types), Kafka and RocketMQ headers map onto `LongString`.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal {
        scale: u8,
        value: u32,
    },
    ShortString(String),
    /// Long strings may hold any bytes.
    LongString(Bytes),
    Array(Vec<Value>),
    /// Seconds since the Unix epoch.
    Timestamp(u64),
    Table(Table),
    Bytes(Bytes),
    Void,
}

impl Value {
    /// The value as text when it is a string of either kind holding UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::ShortString(s) => Some(s),
            Value::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer when it is any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::U8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn string(s: impl Into<String>) -> Value {
        Value::LongString(Bytes::from(s.into()))
    }
}

/// An ordered table of named values (AMQP field table, message headers, arguments).
/// Keys are unique: `insert` replaces an existing entry in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    entries: Vec<(String, Value)>,
}

impl Table {
    /// A table of `pairs`, in order (tests and hand-built arguments).
    pub fn from_pairs(pairs: &[(&str, Value)]) -> Table {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect()
    }

    pub fn new() -> Self {
        Table::default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(at).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl FromIterator<(String, Value)> for Table {
    fn from_iter<T: IntoIterator<Item = (String, Value)>>(iter: T) -> Self {
        let mut table = Table::new();
        for (k, v) in iter {
            table.insert(k, v);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_in_place_and_keeps_order() {
        let mut t = Table::new();
        t.insert("b", Value::I32(1));
        t.insert("a", Value::I32(2));
        t.insert("b", Value::I32(3));
        let keys: Vec<&str> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(t.get("b"), Some(&Value::I32(3)));
        assert_eq!(t.remove("b"), Some(Value::I32(3)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn integers_of_any_width_read_as_i64_and_strings_as_str() {
        assert_eq!(Value::U16(7).as_i64(), Some(7));
        assert_eq!(Value::I8(-1).as_i64(), Some(-1));
        assert_eq!(Value::string("x").as_str(), Some("x"));
        assert_eq!(Value::F64(1.0).as_i64(), None);
    }
}
