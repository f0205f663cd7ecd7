//! The AMQP 0-9-1 face: frames in, broker operations, frames out, with RabbitMQ's
//! semantics and reply codes. Frames are decoded and encoded with `amq-protocol`; the
//! connection and channel state machines are ours.
//!
//! Layers, one per file: `frame` (bytes ↔ frames, bounded), `connection` (handshake,
//! tuning, heartbeats, channel multiplexing), `channel` (the methods), `broker` (shared
//! queues and routing, durable storage), `definitions` (the durable definitions file), `props` (message properties), `error` (reply codes),
//! `stream_queue` (stream queues over the engine's streams) and `convert` (messages to and
//! from stream records).

mod args;
pub mod auth;
pub mod broker;
mod channel;
pub mod connection;
pub mod convert;
mod dead_letter;
pub mod definitions;
pub mod error;
pub mod frame;
pub mod manage;
pub mod props;
pub mod stream_queue;
pub mod users;

pub use broker::{AmqpLimits, Broker};
pub use connection::{ConnectionConfig, serve_connection, serve_stream};
