//! Broker-wide Kafka settings. Per-topic configs are the engine's (`TopicConfig`).

use std::time::Duration;

pub use sluice_engine::stream::{LogConfig, TimestampType, TopicConfig};

/// Settings of the Kafka face.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub node_id: i32,
    /// Host and port put in Metadata for clients to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
    /// Metadata requests may create missing topics (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics with -1 (`num.partitions`).
    pub default_partitions: i32,
    /// Largest request frame accepted (`socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// How long a new group waits for more members before its first rebalance
    /// (`group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay: Duration,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// Topic configs applied where a topic does not override them.
    pub topic_defaults: TopicConfig,
    /// Log settings under every partition (segment size, flush interval, open files).
    pub log: LogConfig,
    /// Partitions of all topics together.
    pub partitions_max: i32,
    pub topics_max: usize,
    /// A connection that sends nothing for this long is closed
    /// (`connections.max.idle.ms`).
    pub connections_max_idle: Duration,
    /// The listener's security protocol: whether clients authenticate with SASL (and
    /// whether Metadata calls it TLS; the TLS itself is the listener's).
    pub security_protocol: crate::security::Protocol,
    /// How long a SASL login lasts before the client must re-authenticate (KIP-368,
    /// `connections.max.reauth.ms`); `None`: for the connection's life.
    pub reauth: Option<Duration>,
    /// The longest `transaction.timeout.ms` a producer may ask for
    /// (`transaction.max.timeout.ms`).
    pub transaction_max_timeout_ms: i32,
    /// Incremental fetch sessions kept at once (`max.incremental.fetch.session.cache.slots`);
    /// 0: none, every fetch is a full one.
    pub fetch_session_cache_slots: usize,
    /// How often compacted topics are checked for cleaning (`log.cleaner.backoff.ms`).
    pub log_cleaner_backoff: Duration,
    /// The cleaner's I/O rate and map size.
    pub cleaner: sluice_engine::stream::compact::CleanerLimits,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            node_id: 1,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            cluster_id: "sluice-cluster".into(),
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: 100 * 1024 * 1024,
            group_initial_rebalance_delay: Duration::from_millis(3000),
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            topic_defaults: TopicConfig::default(),
            log: LogConfig::default(),
            partitions_max: 100_000,
            topics_max: 10_000,
            connections_max_idle: Duration::from_millis(600_000),
            security_protocol: crate::security::Protocol::Plaintext,
            reauth: None,
            transaction_max_timeout_ms: 900_000,
            fetch_session_cache_slots: 1000,
            log_cleaner_backoff: Duration::from_millis(15_000),
            cleaner: Default::default(),
        }
    }
}
