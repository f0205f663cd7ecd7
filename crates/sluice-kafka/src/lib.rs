//! The Kafka wire-protocol face. Requests and responses are encoded with the
//! `kafka-protocol` crate; each topic partition is a `sluice-log` log holding record
//! batches exactly as producers sent them (only the base offset is assigned), and fetches
//! return those stored bytes.
//!
//! Modules: `connection` (framing, one request at a time per connection), `api` (one
//! module per API family), `batch` (record batch checks), `partition` (a log with
//! idempotence state, long-poll wake-ups and group commit), `topics` (names, configs,
//! files), `groups` and `offsets` (the classic group coordinator and committed offsets),
//! `broker` (shared state and background work), `config`, `codes` (error codes).

pub mod api;
pub mod batch;
pub mod broker;
pub mod codes;
pub mod config;
pub mod connection;
pub mod group_record;
pub mod groups;
pub mod offsets;
pub mod partition;
pub mod topic_configs;
pub mod topics;

pub use api::SUPPORTED as SUPPORTED_APIS;
pub use broker::KafkaBroker;
pub use config::{KafkaConfig, TopicConfig};
pub use connection::serve_connection;
