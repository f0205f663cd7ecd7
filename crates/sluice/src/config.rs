//! Settings of `sluice serve`, layered: built-in defaults < TOML file < `SLUICE_*`
//! environment < command-line flags.
//!
//! Every setting is one row of [`SETTINGS`]: its dotted file key, its environment variable,
//! its flag if it has one, and one string setter. The file, the environment and the flags
//! all go through that setter, so a value parses the same way wherever it is written, and
//! every error names the key and the source it came from. Storage settings are the
//! defaults of every log and are checked as a whole by `LogConfig::validate` once every
//! source has been applied.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use sluice_amqp::AmqpLimits;
use sluice_core::admission::AdmissionLimits;
use sluice_log::config::{FlushPolicy, LogConfig};
use tracing_subscriber::EnvFilter;

/// Everything `serve` needs, layered and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Root of all stored data and of the lock file.
    pub data_dir: PathBuf,
    /// Where AMQP 0-9-1 clients connect; `None`: no plaintext listener (TLS only).
    pub amqp_listen: Option<SocketAddr>,
    /// Virtual hosts AMQP clients may open.
    pub amqp_vhosts: Vec<String>,
    /// AMQP users, `name:password` separated by commas.
    pub amqp_users: String,
    /// AMQP permissions, `user@vhost configure write read` separated by semicolons; empty:
    /// every user may do everything in every virtual host.
    pub amqp_permissions: String,
    /// Where Kafka clients connect.
    pub kafka_listen: SocketAddr,
    /// Where RocketMQ 5 clients connect (gRPC).
    pub rocketmq_listen: SocketAddr,
    /// The admin HTTP API.
    pub http_listen: SocketAddr,
    /// Where AMQP clients connect over TLS (`amqps`); `None`: no TLS listener.
    pub amqp_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key for the TLS listeners, reloaded when changed.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates that client certificates are verified against; `None`: no
    /// client certificates are asked for.
    pub tls_client_ca_file: Option<PathBuf>,
    /// With a client CA: refuse clients without a certificate (else it is optional).
    pub tls_fail_if_no_peer_cert: bool,
    /// Which name of a client certificate EXTERNAL logs in as.
    pub amqp_ssl_cert_login_from: crate::tls::CertLogin,
    /// The Kafka listener's protocol (Kafka's listener security protocols).
    pub kafka_security_protocol: sluice_kafka::Protocol,
    /// How long a Kafka SASL login lasts before re-authentication (KIP-368); 0: forever.
    pub kafka_reauth_ms: u64,
    pub kafka_transaction_max_timeout_ms: u64,
    pub kafka_fetch_session_cache_slots: u64,
    pub kafka_log_cleaner_backoff_ms: u64,
    pub kafka_log_cleaner_io_max_bytes_per_second: u64,
    /// The RocketMQ gRPC listener speaks TLS only.
    pub rocketmq_tls: bool,
    /// RocketMQ access keys and their secrets, `key:secret` separated by commas; each key
    /// is a user's name, whose permissions apply. Empty: no signature is checked.
    pub rocketmq_credentials: String,
    /// The admin HTTP listener speaks TLS only (https).
    pub http_tls: bool,
    /// Deliveries of a message to a RocketMQ consumer group before it goes to the
    /// group's dead-letter topic `%DLQ%<group>` (RocketMQ: 16 retries, so 17).
    pub rocketmq_max_delivery_attempts: u32,
    /// A RocketMQ client's route request creates a missing topic (off, as in Apache
    /// RocketMQ's proxy).
    pub rocketmq_auto_create_topics: bool,
    /// Message queues of auto-created RocketMQ topics (Apache's `defaultTopicQueueNums`).
    pub rocketmq_default_queues: u32,
    /// Host given to Kafka clients in Metadata; empty means the listen address's IP.
    pub kafka_advertised_host: String,
    /// Metadata requests create missing topics (Kafka's `auto.create.topics.enable`).
    pub kafka_auto_create_topics: bool,
    /// Partitions of auto-created topics (Kafka's `num.partitions`).
    pub kafka_default_partitions: u32,
    /// Kafka's `group.initial.rebalance.delay.ms`.
    pub kafka_group_initial_rebalance_delay_ms: u64,
    /// A `tracing_subscriber::EnvFilter` directive such as `info` or `info,sluice=debug`.
    pub log_level: String,
    /// Defaults of every log the broker opens.
    pub storage: LogConfig,
    /// Block publishers while the process uses more than this share of physical memory,
    /// in parts per million (RabbitMQ's `vm_memory_high_watermark.relative`, 0.4).
    pub memory_high_watermark_ppm: u32,
    /// Block publishers while the data directory's disk has less free space than this
    /// (RabbitMQ's `disk_free_limit.absolute` default, 50 MB).
    pub disk_free_limit_bytes: u64,
    /// Open connections of every protocol, and those not logged in yet.
    pub admission: AdmissionLimits,
    /// Queues, exchanges and bindings per vhost; consumers per channel.
    pub amqp_limits: AmqpLimits,
    /// Highest channel number offered in `connection.tune` (RabbitMQ: 2047).
    pub amqp_channel_max: u16,
    /// Time a client has to open its connection (RabbitMQ's `handshake_timeout`, 10 s).
    pub amqp_handshake_timeout_ms: u64,
    /// Kafka topics, and partitions of all topics together.
    pub kafka_topics_max: usize,
    pub kafka_partitions_max: u32,
    /// Kafka's `connections.max.idle.ms`.
    pub kafka_connections_max_idle_ms: u64,
    /// How often retention runs over topics and stream queues.
    pub retention_check_interval_ms: u64,
    /// Log segment files open at once, across every queue journal, partition and
    /// stream; `None`: half the process's open-file limit.
    pub open_files_max: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./sluice-data"),
            amqp_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5672))),
            amqp_vhosts: vec!["/".to_owned()],
            amqp_users: "guest:guest".to_owned(),
            amqp_permissions: String::new(),
            kafka_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9092)),
            rocketmq_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 15672)),
            amqp_tls_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_fail_if_no_peer_cert: false,
            amqp_ssl_cert_login_from: crate::tls::CertLogin::DistinguishedName,
            kafka_security_protocol: sluice_kafka::Protocol::Plaintext,
            kafka_reauth_ms: 0,
            kafka_transaction_max_timeout_ms: 900_000,
            kafka_fetch_session_cache_slots: 1000,
            kafka_log_cleaner_backoff_ms: 15_000,
            kafka_log_cleaner_io_max_bytes_per_second: 64 * 1024 * 1024,
            rocketmq_tls: false,
            rocketmq_credentials: String::new(),
            http_tls: false,
            rocketmq_max_delivery_attempts: 17,
            rocketmq_auto_create_topics: false,
            rocketmq_default_queues: 8,
            kafka_advertised_host: String::new(),
            kafka_auto_create_topics: true,
            kafka_default_partitions: 1,
            kafka_group_initial_rebalance_delay_ms: 3000,
            log_level: "info".to_owned(),
            storage: LogConfig::default(),
            memory_high_watermark_ppm: 400_000,
            disk_free_limit_bytes: 50_000_000,
            admission: AdmissionLimits::default(),
            amqp_limits: AmqpLimits::default(),
            amqp_channel_max: 2047,
            amqp_handshake_timeout_ms: 10_000,
            kafka_topics_max: 10_000,
            kafka_partitions_max: 100_000,
            kafka_connections_max_idle_ms: 600_000,
            retention_check_interval_ms: 30_000,
            open_files_max: None,
        }
    }
}

/// Where a setting's value came from; `Display` is what an error line starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default { key: String },
    File { path: PathBuf, key: String },
    Env { var: &'static str },
    Flag { flag: &'static str },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default { key } => write!(f, "{key} (built-in default)"),
            Origin::File { path, key } => write!(f, "{}: {key}", path.display()),
            Origin::Env { var } => f.write_str(var),
            Origin::Flag { flag } => f.write_str(flag),
        }
    }
}

/// Why a configuration could not be loaded. Each variant displays as one line that names
/// the file, variable or flag and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Syntax { path: PathBuf, reason: String },
    #[error("{}: {key}: unknown key", path.display())]
    UnknownKey { path: PathBuf, key: String },
    #[error("{origin}: {reason}")]
    Value { origin: Origin, reason: String },
}

/// One setting: how each source names it and how its string form is parsed and applied.
pub struct Setting {
    /// Dotted key in the TOML file (`amqp.listen` is `listen` in table `[amqp]`).
    pub key: &'static str,
    pub env: &'static str,
    /// Command-line flag, for the settings common enough to deserve one.
    pub flag: Option<&'static str>,
    set: fn(&mut Draft, &str) -> Result<(), String>,
}

/// Every setting, in the order the default file lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "data_dir",
        env: "SLUICE_DATA_DIR",
        flag: Some("--data-dir"),
        set: |d, v| {
            if v.is_empty() {
                return Err("expected a directory path, got \"\"".to_owned());
            }
            d.config.data_dir = PathBuf::from(v);
            Ok(())
        },
    },
    Setting {
        key: "amqp.listen",
        env: "SLUICE_AMQP_LISTEN",
        flag: Some("--amqp-listen"),
        set: |d, v| {
            d.config.amqp_listen = if v == "none" {
                None
            } else {
                Some(parse_socket_addr(v)?)
            };
            Ok(())
        },
    },
    Setting {
        key: "amqp.tls_listen",
        env: "SLUICE_AMQP_TLS_LISTEN",
        flag: None,
        set: |d, v| {
            d.config.amqp_tls_listen = if v.is_empty() {
                None
            } else {
                Some(parse_socket_addr(v)?)
            };
            Ok(())
        },
    },
    Setting {
        key: "amqp.ssl_cert_login_from",
        env: "SLUICE_AMQP_SSL_CERT_LOGIN_FROM",
        flag: None,
        set: |d, v| {
            d.config.amqp_ssl_cert_login_from = match v {
                "distinguished_name" => crate::tls::CertLogin::DistinguishedName,
                "common_name" => crate::tls::CertLogin::CommonName,
                other => {
                    return Err(format!(
                        "expected distinguished_name or common_name, got {other:?}"
                    ));
                }
            };
            Ok(())
        },
    },
    Setting {
        key: "tls.cert_file",
        env: "SLUICE_TLS_CERT_FILE",
        flag: None,
        set: |d, v| {
            d.config.tls_cert_file = (!v.is_empty()).then(|| PathBuf::from(v));
            Ok(())
        },
    },
    Setting {
        key: "tls.key_file",
        env: "SLUICE_TLS_KEY_FILE",
        flag: None,
        set: |d, v| {
            d.config.tls_key_file = (!v.is_empty()).then(|| PathBuf::from(v));
            Ok(())
        },
    },
    Setting {
        key: "tls.client_ca_file",
        env: "SLUICE_TLS_CLIENT_CA_FILE",
        flag: None,
        set: |d, v| {
            d.config.tls_client_ca_file = (!v.is_empty()).then(|| PathBuf::from(v));
            Ok(())
        },
    },
    Setting {
        key: "tls.fail_if_no_peer_cert",
        env: "SLUICE_TLS_FAIL_IF_NO_PEER_CERT",
        flag: None,
        set: |d, v| {
            d.config.tls_fail_if_no_peer_cert = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.listen",
        env: "SLUICE_KAFKA_LISTEN",
        flag: Some("--kafka-listen"),
        set: |d, v| {
            d.config.kafka_listen = parse_socket_addr(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.security_protocol",
        env: "SLUICE_KAFKA_SECURITY_PROTOCOL",
        flag: None,
        set: |d, v| {
            d.config.kafka_security_protocol =
                sluice_kafka::Protocol::parse(v).ok_or_else(|| {
                    format!("expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got {v:?}")
                })?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.reauth_ms",
        env: "SLUICE_KAFKA_REAUTH_MS",
        flag: None,
        set: |d, v| {
            d.config.kafka_reauth_ms = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.transaction_max_timeout_ms",
        env: "SLUICE_KAFKA_TRANSACTION_MAX_TIMEOUT_MS",
        flag: None,
        set: |d, v| {
            d.config.kafka_transaction_max_timeout_ms = parse_positive(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.fetch_session_cache_slots",
        env: "SLUICE_KAFKA_FETCH_SESSION_CACHE_SLOTS",
        flag: None,
        set: |d, v| {
            d.config.kafka_fetch_session_cache_slots = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.log_cleaner_backoff_ms",
        env: "SLUICE_KAFKA_LOG_CLEANER_BACKOFF_MS",
        flag: None,
        set: |d, v| {
            d.config.kafka_log_cleaner_backoff_ms = parse_positive(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.log_cleaner_io_max_bytes_per_second",
        env: "SLUICE_KAFKA_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND",
        flag: None,
        set: |d, v| {
            d.config.kafka_log_cleaner_io_max_bytes_per_second = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "rocketmq.listen",
        env: "SLUICE_ROCKETMQ_LISTEN",
        flag: Some("--grpc-listen"),
        set: |d, v| {
            d.config.rocketmq_listen = parse_socket_addr(v)?;
            Ok(())
        },
    },
    Setting {
        key: "rocketmq.tls",
        env: "SLUICE_ROCKETMQ_TLS",
        flag: None,
        set: |d, v| {
            d.config.rocketmq_tls = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "rocketmq.credentials",
        env: "SLUICE_ROCKETMQ_CREDENTIALS",
        flag: None,
        set: |d, v| {
            d.config.rocketmq_credentials = v.to_string();
            Ok(())
        },
    },
    Setting {
        key: "http.listen",
        env: "SLUICE_HTTP_LISTEN",
        flag: Some("--http-listen"),
        set: |d, v| {
            d.config.http_listen = parse_socket_addr(v)?;
            Ok(())
        },
    },
    Setting {
        key: "http.tls",
        env: "SLUICE_HTTP_TLS",
        flag: None,
        set: |d, v| {
            d.config.http_tls = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "rocketmq.auto_create_topics",
        env: "SLUICE_ROCKETMQ_AUTO_CREATE_TOPICS",
        flag: None,
        set: |d, v| {
            d.config.rocketmq_auto_create_topics = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "rocketmq.default_queues",
        env: "SLUICE_ROCKETMQ_DEFAULT_QUEUES",
        flag: None,
        set: |d, v| {
            let n = parse_u32(v)?;
            if !(1..=1_024).contains(&n) {
                return Err(format!("expected 1 to 1024, got {n}"));
            }
            d.config.rocketmq_default_queues = n;
            Ok(())
        },
    },
    Setting {
        key: "rocketmq.max_delivery_attempts",
        env: "SLUICE_ROCKETMQ_MAX_DELIVERY_ATTEMPTS",
        flag: None,
        set: |d, v| {
            let n = parse_u32(v)?;
            if !(1..=1_000).contains(&n) {
                return Err(format!("expected 1 to 1000, got {n}"));
            }
            d.config.rocketmq_max_delivery_attempts = n;
            Ok(())
        },
    },
    Setting {
        key: "kafka.advertised_host",
        env: "SLUICE_KAFKA_ADVERTISED_HOST",
        flag: None,
        set: |d, v| {
            if v.chars().any(|c| c.is_whitespace() || c == ':') {
                return Err(format!("invalid host {v:?}"));
            }
            d.config.kafka_advertised_host = v.to_owned();
            Ok(())
        },
    },
    Setting {
        key: "kafka.auto_create_topics",
        env: "SLUICE_KAFKA_AUTO_CREATE_TOPICS",
        flag: None,
        set: |d, v| {
            d.config.kafka_auto_create_topics = parse_bool(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.default_partitions",
        env: "SLUICE_KAFKA_DEFAULT_PARTITIONS",
        flag: None,
        set: |d, v| {
            let n = parse_u32(v)?;
            if !(1..=10_000).contains(&n) {
                return Err(format!("expected 1 to 10000, got {n}"));
            }
            d.config.kafka_default_partitions = n;
            Ok(())
        },
    },
    Setting {
        key: "kafka.group_initial_rebalance_delay_ms",
        env: "SLUICE_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS",
        flag: None,
        set: |d, v| {
            d.config.kafka_group_initial_rebalance_delay_ms = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "kafka.topics_max",
        env: "SLUICE_KAFKA_TOPICS_MAX",
        flag: None,
        set: |d, v| {
            d.config.kafka_topics_max = parse_positive(v)? as usize;
            Ok(())
        },
    },
    Setting {
        key: "kafka.partitions_max",
        env: "SLUICE_KAFKA_PARTITIONS_MAX",
        flag: None,
        set: |d, v| {
            let n = parse_u32(v)?;
            if !(1..=i32::MAX as u32).contains(&n) {
                return Err(format!("expected 1 to {}, got {n}", i32::MAX));
            }
            d.config.kafka_partitions_max = n;
            Ok(())
        },
    },
    Setting {
        key: "kafka.connections_max_idle_ms",
        env: "SLUICE_KAFKA_CONNECTIONS_MAX_IDLE_MS",
        flag: None,
        set: |d, v| {
            d.config.kafka_connections_max_idle_ms = parse_positive(v)?;
            Ok(())
        },
    },
    Setting {
        key: "log.level",
        env: "SLUICE_LOG_LEVEL",
        flag: None,
        set: |d, v| {
            EnvFilter::try_new(v).map_err(|e| format!("invalid log filter {v:?}: {e}"))?;
            d.config.log_level = v.to_owned();
            Ok(())
        },
    },
    Setting {
        key: "storage.segment_bytes",
        env: "SLUICE_STORAGE_SEGMENT_BYTES",
        flag: None,
        set: |d, v| {
            d.config.storage.segment_bytes = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.segment_ms",
        env: "SLUICE_STORAGE_SEGMENT_MS",
        flag: None,
        set: |d, v| {
            d.config.storage.segment_ms = parse_optional_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.index_interval_bytes",
        env: "SLUICE_STORAGE_INDEX_INTERVAL_BYTES",
        flag: None,
        set: |d, v| {
            d.config.storage.index_interval_bytes = parse_u32(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.batch_bytes_max",
        env: "SLUICE_STORAGE_BATCH_BYTES_MAX",
        flag: None,
        set: |d, v| {
            d.config.storage.batch_bytes_max = parse_u32(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.flush",
        env: "SLUICE_STORAGE_FLUSH",
        flag: None,
        set: |d, v| {
            d.flush = parse_flush_mode(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.flush_interval_ms",
        env: "SLUICE_STORAGE_FLUSH_INTERVAL_MS",
        flag: None,
        set: |d, v| {
            d.flush_interval_ms = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.flush_bytes",
        env: "SLUICE_STORAGE_FLUSH_BYTES",
        flag: None,
        set: |d, v| {
            d.flush_bytes = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.retention_bytes",
        env: "SLUICE_STORAGE_RETENTION_BYTES",
        flag: None,
        set: |d, v| {
            d.config.storage.retention_bytes = parse_optional_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.retention_ms",
        env: "SLUICE_STORAGE_RETENTION_MS",
        flag: None,
        set: |d, v| {
            d.config.storage.retention_ms = parse_optional_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.retention_check_interval_ms",
        env: "SLUICE_STORAGE_RETENTION_CHECK_INTERVAL_MS",
        flag: None,
        set: |d, v| {
            d.config.retention_check_interval_ms = parse_positive(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.open_segments_max",
        env: "SLUICE_STORAGE_OPEN_SEGMENTS_MAX",
        flag: None,
        set: |d, v| {
            d.config.storage.open_segments_max = parse_usize(v)?;
            Ok(())
        },
    },
    Setting {
        key: "storage.open_files_max",
        env: "SLUICE_STORAGE_OPEN_FILES_MAX",
        flag: None,
        set: |d, v| {
            d.config.open_files_max =
                parse_optional_u64(v)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX).max(16));
            Ok(())
        },
    },
    Setting {
        key: "amqp.vhosts",
        env: "SLUICE_AMQP_VHOSTS",
        flag: None,
        set: |d, v| {
            d.config.amqp_vhosts = parse_vhosts(v)?;
            Ok(())
        },
    },
    Setting {
        key: "amqp.users",
        env: "SLUICE_AMQP_USERS",
        flag: None,
        set: |d, v| {
            sluice_amqp::auth::Users::parse(v, "")?;
            d.config.amqp_users = v.to_owned();
            Ok(())
        },
    },
    Setting {
        key: "amqp.permissions",
        env: "SLUICE_AMQP_PERMISSIONS",
        flag: None,
        set: |d, v| {
            d.config.amqp_permissions = v.to_owned();
            Ok(())
        },
    },
    Setting {
        key: "amqp.channel_max",
        env: "SLUICE_AMQP_CHANNEL_MAX",
        flag: None,
        set: |d, v| {
            let n = parse_u32(v)?;
            d.config.amqp_channel_max = u16::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("expected 1 to 65535, got {n}"))?;
            Ok(())
        },
    },
    Setting {
        key: "amqp.handshake_timeout_ms",
        env: "SLUICE_AMQP_HANDSHAKE_TIMEOUT_MS",
        flag: None,
        set: |d, v| {
            d.config.amqp_handshake_timeout_ms = parse_positive(v)?;
            Ok(())
        },
    },
    Setting {
        key: "amqp.consumers_per_channel_max",
        env: "SLUICE_AMQP_CONSUMERS_PER_CHANNEL_MAX",
        flag: None,
        set: |d, v| {
            d.config.amqp_limits.consumers_per_channel_max = parse_positive(v)? as usize;
            Ok(())
        },
    },
    Setting {
        key: "amqp.queues_max",
        env: "SLUICE_AMQP_QUEUES_MAX",
        flag: None,
        set: |d, v| {
            d.config.amqp_limits.queues_max = parse_positive(v)? as usize;
            Ok(())
        },
    },
    Setting {
        key: "amqp.exchanges_max",
        env: "SLUICE_AMQP_EXCHANGES_MAX",
        flag: None,
        set: |d, v| {
            d.config.amqp_limits.exchanges_max = parse_positive(v)? as usize;
            Ok(())
        },
    },
    Setting {
        key: "amqp.bindings_max",
        env: "SLUICE_AMQP_BINDINGS_MAX",
        flag: None,
        set: |d, v| {
            d.config.amqp_limits.bindings_max = parse_positive(v)? as usize;
            Ok(())
        },
    },
    Setting {
        key: "limits.memory_high_watermark",
        env: "SLUICE_LIMITS_MEMORY_HIGH_WATERMARK",
        flag: None,
        set: |d, v| {
            d.config.memory_high_watermark_ppm = parse_fraction_ppm(v)?;
            Ok(())
        },
    },
    Setting {
        key: "limits.disk_free_limit_bytes",
        env: "SLUICE_LIMITS_DISK_FREE_LIMIT_BYTES",
        flag: None,
        set: |d, v| {
            d.config.disk_free_limit_bytes = parse_u64(v)?;
            Ok(())
        },
    },
    Setting {
        key: "limits.connections_max",
        env: "SLUICE_LIMITS_CONNECTIONS_MAX",
        flag: None,
        set: |d, v| {
            d.config.admission.connections_max = parse_positive(v)? as usize;
            Ok(())
        },
    },
    Setting {
        key: "limits.unauthenticated_connections_max",
        env: "SLUICE_LIMITS_UNAUTHENTICATED_CONNECTIONS_MAX",
        flag: None,
        set: |d, v| {
            d.config.admission.unauthenticated_max = parse_positive(v)? as usize;
            Ok(())
        },
    },
];

/// No setting key has more than this many dotted parts; a table nested deeper in the file
/// can only be an unknown key, so the walk stops there.
const KEY_PARTS_MAX: usize = 2;

/// Builds the configuration from the defaults, then the file at `file` if any, then the
/// environment (`env` looks a variable up), then the flags (`flag` looks a value up by
/// setting key), and validates the storage settings.
pub fn load(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
    flag: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut draft = Draft::new(Config::default());
    if let Some(path) = file {
        draft.apply_file(path)?;
    }
    for setting in SETTINGS {
        if let Some(value) = env(setting.env) {
            let origin = Origin::Env { var: setting.env };
            let Some(value) = value.to_str() else {
                return Err(ConfigError::Value {
                    origin,
                    reason: "not valid UTF-8".to_owned(),
                });
            };
            draft.apply(setting, value, origin)?;
        }
    }
    for setting in SETTINGS {
        if let (Some(name), Some(value)) = (setting.flag, flag(setting.key)) {
            draft.apply(setting, &value, Origin::Flag { flag: name })?;
        }
    }
    draft.finish()
}

/// How appends reach the disk, before it is folded into a `FlushPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushMode {
    Sync,
    Async,
}

/// A `Config` while sources are applied. The flush settings are held apart from
/// `storage.flush` because `FlushPolicy::Sync` has nowhere to keep an interval or a byte
/// threshold, yet a file may set `flush_interval_ms` and the environment then switch
/// `flush` to "async".
struct Draft {
    config: Config,
    flush: FlushMode,
    flush_interval_ms: u64,
    flush_bytes: u64,
    /// Where the current value of each key came from, to name it if validation fails.
    origins: BTreeMap<&'static str, Origin>,
}

impl Draft {
    fn new(config: Config) -> Self {
        // The thresholds a switch to "async" starts from are those of the default policy.
        let (async_interval_ms, async_bytes) = match FlushPolicy::default() {
            FlushPolicy::Async { interval_ms, bytes } => (interval_ms, bytes),
            FlushPolicy::Sync => (1000, 64 * 1024 * 1024),
        };
        let (flush, flush_interval_ms, flush_bytes) = match config.storage.flush {
            FlushPolicy::Sync => (FlushMode::Sync, async_interval_ms, async_bytes),
            FlushPolicy::Async { interval_ms, bytes } => (FlushMode::Async, interval_ms, bytes),
        };
        Self {
            config,
            flush,
            flush_interval_ms,
            flush_bytes,
            origins: BTreeMap::new(),
        }
    }

    fn apply(&mut self, setting: &Setting, value: &str, origin: Origin) -> Result<(), ConfigError> {
        match (setting.set)(self, value) {
            Ok(()) => {
                self.origins.insert(setting.key, origin);
                Ok(())
            }
            Err(reason) => Err(ConfigError::Value { origin, reason }),
        }
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                reason: describe_syntax_error(&text, &e),
            })?;
        for (key, value) in flatten(&table) {
            let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key,
                });
            };
            let origin = Origin::File {
                path: path.to_owned(),
                key,
            };
            match scalar_string(value) {
                Ok(value) => self.apply(setting, &value, origin)?,
                Err(reason) => return Err(ConfigError::Value { origin, reason }),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Config, ConfigError> {
        self.config.storage.flush = match self.flush {
            FlushMode::Sync => FlushPolicy::Sync,
            FlushMode::Async => FlushPolicy::Async {
                interval_ms: self.flush_interval_ms,
                bytes: self.flush_bytes,
            },
        };
        if let Err(reason) =
            sluice_amqp::auth::Users::parse(&self.config.amqp_users, &self.config.amqp_permissions)
        {
            let key = "amqp.permissions".to_owned();
            let origin = self
                .origins
                .get(key.as_str())
                .cloned()
                .unwrap_or(Origin::Default { key });
            return Err(ConfigError::Value { origin, reason });
        }
        if let Err(error) = self.config.storage.validate() {
            let key = format!("storage.{}", error.key);
            let origin = self
                .origins
                .get(key.as_str())
                .cloned()
                .unwrap_or(Origin::Default { key });
            return Err(ConfigError::Value {
                origin,
                reason: error.reason,
            });
        }
        Ok(self.config)
    }
}

/// The table's leaves as dotted keys, sorted, so errors come in a stable order.
fn flatten(table: &toml::Table) -> Vec<(String, &toml::Value)> {
    let mut leaves = Vec::new();
    let mut pending: Vec<(String, usize, &toml::Table)> = vec![(String::new(), 0, table)];
    while let Some((prefix, depth, table)) = pending.pop() {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(inner) if depth + 1 < KEY_PARTS_MAX => {
                    pending.push((key, depth + 1, inner));
                }
                _ => leaves.push((key, value)),
            }
        }
    }
    leaves.sort_by(|a, b| a.0.cmp(&b.0));
    leaves
}

/// A scalar TOML value as the string a setter parses, so `segment_bytes = 4096` and
/// `SLUICE_STORAGE_SEGMENT_BYTES=4096` mean the same.
fn scalar_string(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) => Err("expected a single value, got an array".to_owned()),
        toml::Value::Table(_) => Err("expected a single value, got a table".to_owned()),
    }
}

/// A TOML syntax error on one line: position, then the parser's message.
fn describe_syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line} column {column}: {message}")
        }
        None => message,
    }
}

fn parse_socket_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("invalid socket address {value:?}"))
}

fn parse_u64(value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("expected a non-negative integer, got {value:?}"))
}

/// A count or duration of at least 1.
fn parse_positive(value: &str) -> Result<u64, String> {
    let n = parse_u64(value)?;
    if n == 0 {
        return Err("expected at least 1, got 0".to_owned());
    }
    Ok(n)
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected true or false, got {value:?}")),
    }
}

fn parse_u32(value: &str) -> Result<u32, String> {
    u32::try_from(parse_u64(value)?)
        .map_err(|_| format!("expected at most {}, got {value:?}", u32::MAX))
}

fn parse_usize(value: &str) -> Result<usize, String> {
    usize::try_from(parse_u64(value)?)
        .map_err(|_| format!("expected at most {}, got {value:?}", usize::MAX))
}

/// A comma-separated list of virtual host names, each 1 to 255 bytes.
fn parse_vhosts(value: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = value.split(',').map(|n| n.trim().to_owned()).collect();
    if names.iter().any(|n| n.is_empty() || n.len() > 255) {
        return Err(format!(
            "expected comma-separated virtual host names of 1 to 255 bytes, got {value:?}"
        ));
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != names.len() {
        return Err(format!("virtual host names repeat in {value:?}"));
    }
    Ok(names)
}

/// A fraction such as "0.4" (of 1), in parts per million.
fn parse_fraction_ppm(value: &str) -> Result<u32, String> {
    let bad = || format!("expected a fraction greater than 0 and at most 1, got {value:?}");
    let f: f64 = value.parse().map_err(|_| bad())?;
    if !(f > 0.0 && f <= 1.0) {
        return Err(bad());
    }
    Ok((f * 1_000_000.0).round().max(1.0) as u32)
}

/// A limit that may be switched off with "none" (TOML has no null).
fn parse_optional_u64(value: &str) -> Result<Option<u64>, String> {
    if value == "none" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("expected a non-negative integer or \"none\", got {value:?}"))
}

fn parse_flush_mode(value: &str) -> Result<FlushMode, String> {
    match value {
        "sync" => Ok(FlushMode::Sync),
        "async" => Ok(FlushMode::Async),
        _ => Err(format!("expected \"sync\" or \"async\", got {value:?}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const DEFAULT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/sluice.toml");

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn no_flag(_: &str) -> Option<String> {
        None
    }

    fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_with(
        file: Option<&Path>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        let flags: HashMap<String, String> = flags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load(file, &|var| env.get(var).cloned(), &|key| {
            flags.get(key).cloned()
        })
    }

    fn error_line(result: Result<Config, ConfigError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn no_sources_give_the_defaults() {
        let config = load(None, &no_env, &no_flag).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.data_dir, PathBuf::from("./sluice-data"));
        assert_eq!(config.amqp_listen.unwrap().to_string(), "127.0.0.1:5672");
        assert_eq!(config.kafka_listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.log_level, "info");
    }

    #[test]
    fn amqp_permissions_are_checked_against_the_users() {
        let line = error_line(load_with(
            None,
            &[("SLUICE_AMQP_PERMISSIONS", "nobody@/ .* .* .*")],
            &[],
        ));
        assert_eq!(
            line,
            "SLUICE_AMQP_PERMISSIONS: permission \"nobody@/ .* .* .*\": unknown user \"nobody\""
        );
        let line = error_line(load_with(None, &[("SLUICE_AMQP_USERS", "alice")], &[]));
        assert_eq!(
            line,
            "SLUICE_AMQP_USERS: user \"alice\": expected name:password"
        );
        let config = load_with(
            None,
            &[
                ("SLUICE_AMQP_USERS", "guest:guest,alice:pw"),
                ("SLUICE_AMQP_PERMISSIONS", "alice@/ ^a ^a .*"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(config.amqp_permissions, "alice@/ ^a ^a .*");
    }

    #[test]
    fn the_shipped_default_file_equals_the_built_in_defaults() {
        let config = load(Some(Path::new(DEFAULT_FILE)), &no_env, &no_flag).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_shipped_default_file_lists_every_setting() {
        let text = std::fs::read_to_string(DEFAULT_FILE).unwrap();
        let table = text.parse::<toml::Table>().unwrap();
        let mut in_file: Vec<String> = flatten(&table).into_iter().map(|(k, _)| k).collect();
        let mut settings: Vec<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        in_file.sort();
        settings.sort();
        assert_eq!(in_file, settings);
    }

    #[test]
    fn every_setting_has_a_unique_key_env_var_and_flag() {
        for (i, a) in SETTINGS.iter().enumerate() {
            let expected_env = format!("SLUICE_{}", a.key.replace('.', "_").to_uppercase());
            assert_eq!(a.env, expected_env);
            for b in SETTINGS.iter().skip(i + 1) {
                assert_ne!(a.key, b.key);
                assert!(a.flag.is_none() || a.flag != b.flag);
            }
        }
    }

    #[test]
    fn env_beats_file_and_flag_beats_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            "data_dir = \"/from-file\"\n[amqp]\nlisten = \"127.0.0.2:1\"\n[kafka]\nlisten = \"127.0.0.2:2\"\n",
        );
        let config = load_with(
            Some(&file),
            &[
                ("SLUICE_AMQP_LISTEN", "127.0.0.3:1"),
                ("SLUICE_KAFKA_LISTEN", "127.0.0.3:2"),
            ],
            &[("kafka.listen", "127.0.0.4:2")],
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from-file"));
        assert_eq!(config.amqp_listen.unwrap().to_string(), "127.0.0.3:1");
        assert_eq!(config.kafka_listen.to_string(), "127.0.0.4:2");
    }

    #[test]
    fn file_values_reach_every_storage_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            r#"
            [log]
            level = "debug,sluice=trace"
            [storage]
            segment_bytes = 8192
            segment_ms = "none"
            index_interval_bytes = 512
            batch_bytes_max = 1024
            flush = "async"
            flush_interval_ms = 5
            flush_bytes = 4096
            retention_bytes = 1_000_000
            retention_ms = 60000
            open_segments_max = 3
            "#,
        );
        let config = load_with(Some(&file), &[], &[]).unwrap();
        assert_eq!(config.log_level, "debug,sluice=trace");
        let expected = LogConfig {
            segment_bytes: 8192,
            segment_ms: None,
            index_interval_bytes: 512,
            batch_bytes_max: 1024,
            flush: FlushPolicy::Async {
                interval_ms: 5,
                bytes: 4096,
            },
            retention_bytes: Some(1_000_000),
            retention_ms: Some(60000),
            open_segments_max: 3,
        };
        assert_eq!(config.storage, expected);
    }

    #[test]
    fn flush_sync_from_env_overrides_async_thresholds_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[storage]\nflush_interval_ms = 7\n");
        let config = load_with(Some(&file), &[("SLUICE_STORAGE_FLUSH", "sync")], &[]).unwrap();
        assert_eq!(config.storage.flush, FlushPolicy::Sync);
    }

    #[test]
    fn async_thresholds_from_the_file_survive_a_later_switch_to_async() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[storage]\nflush = \"sync\"\nflush_interval_ms = 7\n");
        let config = load_with(Some(&file), &[("SLUICE_STORAGE_FLUSH", "async")], &[]).unwrap();
        let default_bytes = match FlushPolicy::default() {
            FlushPolicy::Async { bytes, .. } => bytes,
            FlushPolicy::Sync => panic!("default flush policy is async"),
        };
        assert_eq!(
            config.storage.flush,
            FlushPolicy::Async {
                interval_ms: 7,
                bytes: default_bytes
            }
        );
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let line = error_line(load_with(None, &[("SLUICE_AMQP_LISTEN", "abc")], &[]));
        assert_eq!(line, "SLUICE_AMQP_LISTEN: invalid socket address \"abc\"");
    }

    #[test]
    fn bad_flag_value_names_the_flag() {
        let line = error_line(load_with(None, &[], &[("kafka.listen", "localhost")]));
        assert_eq!(line, "--kafka-listen: invalid socket address \"localhost\"");
    }

    #[test]
    fn bad_file_value_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[storage]\nflush = \"sometimes\"\n");
        let line = error_line(load_with(Some(&file), &[], &[]));
        assert_eq!(
            line,
            format!(
                "{}: storage.flush: expected \"sync\" or \"async\", got \"sometimes\"",
                file.display()
            )
        );
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[storage]\nsegment_size = 4096\n");
        let line = error_line(load_with(Some(&file), &[], &[]));
        assert_eq!(
            line,
            format!("{}: storage.segment_size: unknown key", file.display())
        );
    }

    #[test]
    fn deeply_nested_table_is_an_unknown_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[storage.flush.deep]\nx = 1\n");
        let line = error_line(load_with(Some(&file), &[], &[]));
        assert_eq!(
            line,
            format!(
                "{}: storage.flush: expected a single value, got a table",
                file.display()
            )
        );
    }

    #[test]
    fn array_value_is_rejected_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "data_dir = [\"a\", \"b\"]\n");
        let line = error_line(load_with(Some(&file), &[], &[]));
        assert_eq!(
            line,
            format!(
                "{}: data_dir: expected a single value, got an array",
                file.display()
            )
        );
    }

    #[test]
    fn negative_and_fractional_numbers_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[storage]\nretention_ms = -1\n");
        let line = error_line(load_with(Some(&file), &[], &[]));
        assert!(
            line.ends_with(
                "storage.retention_ms: expected a non-negative integer or \"none\", got \"-1\""
            ),
            "{line}"
        );
        let line = error_line(load_with(
            None,
            &[("SLUICE_STORAGE_SEGMENT_BYTES", "1.5")],
            &[],
        ));
        assert_eq!(
            line,
            "SLUICE_STORAGE_SEGMENT_BYTES: expected a non-negative integer, got \"1.5\""
        );
    }

    #[test]
    fn u32_setting_rejects_a_value_past_its_range() {
        let line = error_line(load_with(
            None,
            &[("SLUICE_STORAGE_INDEX_INTERVAL_BYTES", "4294967296")],
            &[],
        ));
        assert_eq!(
            line,
            "SLUICE_STORAGE_INDEX_INTERVAL_BYTES: expected at most 4294967295, got \"4294967296\""
        );
    }

    #[test]
    fn syntax_error_names_the_file_and_the_line_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "data_dir = \"x\"\namqp.listen = \n");
        let line = error_line(load_with(Some(&file), &[], &[]));
        assert!(
            line.starts_with(&format!("{}: line 2 column ", file.display())),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let line = error_line(load_with(
            Some(Path::new("/nonexistent/sluice.toml")),
            &[],
            &[],
        ));
        assert!(
            line.starts_with("/nonexistent/sluice.toml: cannot read: "),
            "{line}"
        );
    }

    #[test]
    fn validation_error_names_the_storage_key_and_its_source() {
        let line = error_line(load_with(
            None,
            &[("SLUICE_STORAGE_SEGMENT_BYTES", "10")],
            &[],
        ));
        assert!(
            line.starts_with("SLUICE_STORAGE_SEGMENT_BYTES: must be between "),
            "{line}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[storage]\nflush_interval_ms = 0\n");
        let line = error_line(load_with(Some(&file), &[], &[]));
        assert_eq!(
            line,
            format!(
                "{}: storage.flush_interval_ms: must be at least 1",
                file.display()
            )
        );
    }

    #[test]
    fn bad_log_filter_is_rejected() {
        let line = error_line(load_with(None, &[("SLUICE_LOG_LEVEL", "sluice=loud")], &[]));
        assert!(
            line.starts_with("SLUICE_LOG_LEVEL: invalid log filter \"sluice=loud\""),
            "{line}"
        );
    }

    #[test]
    fn non_utf8_env_value_is_rejected_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let env = |var: &str| (var == "SLUICE_DATA_DIR").then(|| OsString::from_vec(vec![0xff]));
        let line = error_line(load(None, &env, &no_flag));
        assert_eq!(line, "SLUICE_DATA_DIR: not valid UTF-8");
    }
}
