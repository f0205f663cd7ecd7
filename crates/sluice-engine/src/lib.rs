//! The broker core of Sluice, deterministic by construction: commands in, effects out, no
//! sockets, no clock, no randomness, so a face, a simulator or (later) Raft replay can
//! drive it and get the same result.
//!
//! It holds routing (`routing`: exchanges, bindings, the topic trie, per virtual host) and
//! the queue core (`queue`: ready and unacked messages, consumers, fair dispatch), queue
//! storage (`store`), streams (`stream`: partitioned logs and committed offsets, which
//! Kafka topics and AMQP stream queues are), timers (`scheduler`) and subscriptions
//! (`subscription`: a consumer group's leases, retries and dead letters over a stream).

pub mod queue;
mod ready;
pub mod routing;
pub mod scheduler;
pub mod store;
pub mod stream;
pub mod subscription;
