//! The Kafka wire-protocol face. Requests and responses are encoded with the
//! `kafka-protocol` crate; topics are the engine's streams (`sluice_engine::stream`),
//! whose partitions hold record batches exactly as producers sent them (only the base
//! offset is assigned), and fetches return those stored bytes.
//!
//! Modules: `connection` (framing, one request at a time per connection), `fetch_session`
//! (KIP-227's incremental fetch sessions), `api` (one
//! module per API family), `groups` (the classic group coordinator over the engine's
//! committed offsets), `txn` (the transaction coordinator), `broker` (shared state and background work), `config`, `codes`
//! (error codes, and the engine's errors mapped to them).

pub mod api;
pub mod broker;
pub mod codes;
pub mod config;
pub mod connection;
pub mod fetch_session;
pub mod group_record;
pub mod groups;
pub mod security;
pub mod topic_configs;
pub mod txn;

pub use api::SUPPORTED as SUPPORTED_APIS;
pub use broker::KafkaBroker;
pub use config::{KafkaConfig, TopicConfig};
pub use connection::{serve_connection, serve_stream};
pub use security::{Protocol, Security};
