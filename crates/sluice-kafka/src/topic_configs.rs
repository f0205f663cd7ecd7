//! Every topic config an Apache Kafka 3.x broker reports in DescribeConfigs, with the
//! value Sluice really applies, where it comes from, and its broker-level synonym.
//!
//! Configs Sluice implements can be altered (`read_only` false); the others report what
//! Sluice does (for example `compression.type=producer`: batches are stored as sent) and
//! are read-only, since altering them would change nothing. Sources follow Kafka: a topic
//! override is TOPIC_CONFIG; otherwise a value equal to Sluice's built-in default is
//! DEFAULT_CONFIG and one set in Sluice's config file is STATIC_BROKER_CONFIG.

use sluice_engine::stream::{FlushPolicy, LogConfig};

use crate::config::TopicConfig;

pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

pub const TYPE_BOOLEAN: i8 = 1;
pub const TYPE_STRING: i8 = 2;
pub const TYPE_INT: i8 = 3;
pub const TYPE_LONG: i8 = 5;
pub const TYPE_DOUBLE: i8 = 6;
pub const TYPE_LIST: i8 = 7;

const LONG_MAX: &str = "9223372036854775807";

/// One config as DescribeConfigs answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: &'static str,
    pub value: String,
    pub source: i8,
    pub read_only: bool,
    pub config_type: i8,
    /// `(name, value, source)`, most specific first: the topic override, then the broker
    /// setting it defaults to.
    pub synonyms: Vec<(String, String, i8)>,
}

/// How Sluice comes by a config's value.
enum Value {
    /// Implemented and alterable: `TopicConfig::get`.
    Topic,
    /// Follows from the broker's log settings.
    Log(fn(&LogConfig) -> String),
    /// What Sluice always does.
    Fixed(&'static str),
}

struct Spec {
    name: &'static str,
    config_type: i8,
    /// The broker config a topic inherits this from, as Kafka names it.
    broker: Option<&'static str>,
    value: Value,
}

const fn spec(
    name: &'static str,
    config_type: i8,
    broker: Option<&'static str>,
    value: Value,
) -> Spec {
    Spec {
        name,
        config_type,
        broker,
        value,
    }
}

fn flush_ms(log: &LogConfig) -> String {
    match log.flush {
        FlushPolicy::Sync => "0".into(),
        FlushPolicy::Async { interval_ms, .. } => interval_ms.to_string(),
    }
}

fn flush_messages(log: &LogConfig) -> String {
    match log.flush {
        FlushPolicy::Sync => "1".into(),
        FlushPolicy::Async { .. } => LONG_MAX.into(),
    }
}

/// Kafka 3.6's topic configs, in name order, plus Sluice's own `flush` and `message.type`
/// (the RocketMQ message type).
const SPECS: &[Spec] = &[
    spec(
        "cleanup.policy",
        TYPE_LIST,
        Some("log.cleanup.policy"),
        Value::Topic,
    ),
    spec(
        "compression.type",
        TYPE_STRING,
        Some("compression.type"),
        Value::Fixed("producer"),
    ),
    spec(
        "delete.retention.ms",
        TYPE_LONG,
        Some("log.cleaner.delete.retention.ms"),
        Value::Topic,
    ),
    spec(
        "file.delete.delay.ms",
        TYPE_LONG,
        Some("log.segment.delete.delay.ms"),
        Value::Fixed("0"),
    ),
    spec("flush", TYPE_STRING, None, Value::Topic),
    spec(
        "flush.messages",
        TYPE_LONG,
        Some("log.flush.interval.messages"),
        Value::Log(flush_messages),
    ),
    spec(
        "flush.ms",
        TYPE_LONG,
        Some("log.flush.interval.ms"),
        Value::Log(flush_ms),
    ),
    spec(
        "follower.replication.throttled.replicas",
        TYPE_LIST,
        None,
        Value::Fixed(""),
    ),
    spec(
        "index.interval.bytes",
        TYPE_INT,
        Some("log.index.interval.bytes"),
        Value::Log(|l| l.index_interval_bytes.to_string()),
    ),
    spec(
        "leader.replication.throttled.replicas",
        TYPE_LIST,
        None,
        Value::Fixed(""),
    ),
    spec(
        "local.retention.bytes",
        TYPE_LONG,
        Some("log.local.retention.bytes"),
        Value::Fixed("-2"),
    ),
    spec(
        "local.retention.ms",
        TYPE_LONG,
        Some("log.local.retention.ms"),
        Value::Fixed("-2"),
    ),
    spec(
        "max.compaction.lag.ms",
        TYPE_LONG,
        Some("log.cleaner.max.compaction.lag.ms"),
        Value::Topic,
    ),
    spec(
        "max.message.bytes",
        TYPE_INT,
        Some("message.max.bytes"),
        Value::Topic,
    ),
    spec(
        "message.downconversion.enable",
        TYPE_BOOLEAN,
        Some("log.message.downconversion.enable"),
        Value::Fixed("false"),
    ),
    spec(
        "message.format.version",
        TYPE_STRING,
        Some("log.message.format.version"),
        Value::Fixed("3.0-IV1"),
    ),
    spec(
        "message.timestamp.after.max.ms",
        TYPE_LONG,
        Some("log.message.timestamp.after.max.ms"),
        Value::Fixed(LONG_MAX),
    ),
    spec(
        "message.timestamp.before.max.ms",
        TYPE_LONG,
        Some("log.message.timestamp.before.max.ms"),
        Value::Fixed(LONG_MAX),
    ),
    spec(
        "message.timestamp.difference.max.ms",
        TYPE_LONG,
        Some("log.message.timestamp.difference.max.ms"),
        Value::Fixed(LONG_MAX),
    ),
    spec(
        "message.timestamp.type",
        TYPE_STRING,
        Some("log.message.timestamp.type"),
        Value::Topic,
    ),
    spec("message.type", TYPE_STRING, None, Value::Topic),
    spec(
        "min.cleanable.dirty.ratio",
        TYPE_DOUBLE,
        Some("log.cleaner.min.cleanable.ratio"),
        Value::Topic,
    ),
    spec(
        "min.compaction.lag.ms",
        TYPE_LONG,
        Some("log.cleaner.min.compaction.lag.ms"),
        Value::Topic,
    ),
    spec(
        "min.insync.replicas",
        TYPE_INT,
        Some("min.insync.replicas"),
        Value::Fixed("1"),
    ),
    spec(
        "preallocate",
        TYPE_BOOLEAN,
        Some("log.preallocate"),
        Value::Fixed("false"),
    ),
    spec(
        "remote.storage.enable",
        TYPE_BOOLEAN,
        None,
        Value::Fixed("false"),
    ),
    spec(
        "retention.bytes",
        TYPE_LONG,
        Some("log.retention.bytes"),
        Value::Topic,
    ),
    spec(
        "retention.ms",
        TYPE_LONG,
        Some("log.retention.ms"),
        Value::Topic,
    ),
    spec(
        "segment.bytes",
        TYPE_INT,
        Some("log.segment.bytes"),
        Value::Topic,
    ),
    spec(
        "segment.index.bytes",
        TYPE_INT,
        Some("log.index.size.max.bytes"),
        Value::Fixed("10485760"),
    ),
    spec(
        "segment.jitter.ms",
        TYPE_LONG,
        Some("log.roll.jitter.ms"),
        Value::Fixed("0"),
    ),
    spec(
        "segment.ms",
        TYPE_LONG,
        Some("log.roll.ms"),
        Value::Log(|l| l.segment_ms.map_or(LONG_MAX.into(), |ms| ms.to_string())),
    ),
    spec(
        "unclean.leader.election.enable",
        TYPE_BOOLEAN,
        Some("unclean.leader.election.enable"),
        Value::Fixed("false"),
    ),
];

/// The names DescribeConfigs lists for a topic, in order.
pub fn names() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|s| s.name)
}

/// Every config of a topic with `config` (its overrides applied) and `overrides`, on a
/// broker whose topic defaults are `defaults` and log settings `log`.
pub fn describe(
    config: &TopicConfig,
    has_override: impl Fn(&str) -> bool,
    defaults: &TopicConfig,
    log: &LogConfig,
    synonyms: bool,
) -> Vec<Described> {
    let builtin = TopicConfig::default();
    let builtin_log = LogConfig::default();
    SPECS
        .iter()
        .map(|s| {
            let (value, default_value, builtin_value, read_only) = match &s.value {
                Value::Topic => (
                    config.get(s.name).unwrap_or_default(),
                    defaults.get(s.name).unwrap_or_default(),
                    builtin.get(s.name).unwrap_or_default(),
                    false,
                ),
                Value::Log(f) => (f(log), f(log), f(&builtin_log), true),
                Value::Fixed(v) => (v.to_string(), v.to_string(), v.to_string(), true),
            };
            let default_source = if default_value == builtin_value {
                SOURCE_DEFAULT
            } else {
                SOURCE_STATIC_BROKER
            };
            let overridden = !read_only && has_override(s.name);
            let mut list = Vec::new();
            if synonyms {
                if overridden {
                    list.push((s.name.to_string(), value.clone(), SOURCE_TOPIC));
                }
                if let Some(broker) = s.broker {
                    list.push((broker.to_string(), default_value.clone(), default_source));
                }
            }
            Described {
                name: s.name,
                value,
                source: if overridden {
                    SOURCE_TOPIC
                } else {
                    default_source
                },
                read_only,
                config_type: s.config_type,
                synonyms: list,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kafka_topic_config_is_listed_once_in_name_order() {
        let all: Vec<&str> = names().collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(all, sorted);
        assert_eq!(all.len(), 33);
    }

    #[test]
    fn sources_and_synonyms_follow_kafka() {
        let defaults = TopicConfig::default();
        let mut config = defaults.clone();
        config.set("retention.ms", "3600000").unwrap();
        let log = LogConfig::default();
        let d = describe(&config, |n| n == "retention.ms", &defaults, &log, true);
        let get = |n: &str| d.iter().find(|c| c.name == n).unwrap().clone();
        let retention = get("retention.ms");
        assert_eq!(
            (retention.value.as_str(), retention.source),
            ("3600000", SOURCE_TOPIC)
        );
        assert_eq!(
            retention.synonyms,
            vec![
                (
                    "retention.ms".to_string(),
                    "3600000".to_string(),
                    SOURCE_TOPIC
                ),
                (
                    "log.retention.ms".to_string(),
                    "604800000".to_string(),
                    SOURCE_DEFAULT
                ),
            ]
        );
        assert!(!retention.read_only);
        let compression = get("compression.type");
        assert_eq!(
            (compression.value.as_str(), compression.read_only),
            ("producer", true)
        );
        assert_eq!(get("flush.ms").value, "1000");
        // A broker default changed in Sluice's config file is a static broker config.
        let mut site = TopicConfig::default();
        site.set("segment.bytes", "1048576").unwrap();
        let d = describe(&site, |_| false, &site, &log, false);
        let segment = d.iter().find(|c| c.name == "segment.bytes").unwrap();
        assert_eq!(segment.source, SOURCE_STATIC_BROKER);
        assert!(segment.synonyms.is_empty(), "synonyms only when asked for");
    }
}
