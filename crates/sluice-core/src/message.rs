//! The protocol-neutral message every face publishes into and delivers out of queues.
//!
//! Properties are kept in one encoding: the AMQP 0-9-1 basic-properties layout (property
//! flags, then the present fields; headers as a field table). It is typed, compact and
//! complete, so an AMQP message is delivered with the exact property bytes it was
//! published with, and other faces convert their headers into and out of it.

use std::sync::Arc;

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Exchange the message was published to (empty for the default exchange).
    pub exchange: Arc<str>,
    pub routing_key: Arc<str>,
    /// Encoded basic properties (see the module doc).
    pub properties: Bytes,
    pub body: Bytes,
    /// delivery-mode 2: stored on disk when it lands in a durable queue.
    pub persistent: bool,
    /// 0 when unset.
    pub priority: u8,
    /// Per-message TTL from the `expiration` property.
    pub expiration_ms: Option<u64>,
}

impl Message {
    /// Bytes this message accounts for in queue length limits.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}
