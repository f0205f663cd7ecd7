//! The broker core of Sluice, under every protocol face.
//!
//! Its state machines are deterministic: commands in with the time as `now`, effects out,
//! no sockets, no clock, no randomness, so a face, a simulator or (later) Raft replay can
//! drive them and get the same result. They are routing (`routing`: exchanges, bindings,
//! the topic trie, per virtual host), the queue core (`queue`: ready and unacked
//! messages, consumers, fair dispatch, the TTL index), timers (`scheduler`) and
//! subscriptions (`subscription`: a consumer group's leases, retries and dead letters
//! over a stream).
//!
//! Next to them are the parts that own files: queue storage (`store`: a durable queue's
//! message and settlement logs), messages held until a delivery time (`delay`: a store
//! plus a scheduler, surviving restarts) and streams (`stream`: partitioned logs of record
//! batches and committed offsets, which Kafka topics and AMQP stream queues are).
//!
//! `vhost` puts them together as the broker the faces drive: virtual hosts with their
//! routing, queues (each a `QueueCell`: queue state, log, consumers, group fsyncs),
//! dead-letter hand-off, expiry timers, definitions and stream queues.

pub mod delay;
pub mod journal;
pub mod queue;
mod ready;
pub mod routing;
pub mod scheduler;
pub mod store;
pub mod stream;
pub mod subscription;
pub mod vhost;
