//! AMQP 0-9-1 routing for one virtual host, with RabbitMQ 3.x semantics: exchanges of the
//! four standard types, queues as binding targets, bindings (exchange-to-exchange
//! included), alternate exchanges, and the default exchange.
//!
//! [`Router`] is pure state: commands mutate it and return what they removed, `route`
//! reads it. It reads no clock and does no I/O, so replaying the same commands gives the
//! same table, and routing the same message gives the same queues in the same order.
//!
//! Layout: `exchange` (types, declare equivalence), `binding` (bindings and destinations),
//! `matcher` (the per-exchange lookup structure), `topic` (the word trie), `headers`
//! (`x-match`), `router` (the table and the routing walk), `error` (reply codes).

mod args;
mod binding;
mod error;
mod exchange;
mod headers;
mod matcher;
mod router;
mod scratch;
mod topic;

pub use args::{describe, type_name};
pub use binding::{Binding, Destination};
pub use error::RoutingError;
pub use exchange::{ALTERNATE_EXCHANGE, ExchangeDef, ExchangeKind};
pub use router::{DeleteWhen, Removed, Router, RouterLimits};
pub use scratch::RouteScratch;

/// Longest routing key, binding key or exchange name, in bytes. AMQP 0-9-1 carries them as
/// short strings, so no AMQP client can send more; other faces are held to the same limit,
/// which also bounds a topic match to 128 words (256 with empty words) per key.
pub const ROUTING_KEY_BYTES_MAX: usize = 255;
