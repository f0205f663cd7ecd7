//! Shared vocabulary of Sluice: the clock seam every time-driven part reads through, the
//! limits that bound what a peer or a config can make the broker hold, and typed values
//! for headers and arguments.
//!
//! This crate sits at the bottom of the dependency graph; it depends on nothing of ours.

pub mod admission;
pub mod clock;
pub mod limits;
pub mod login_guard;
pub mod message;
pub mod scram;
pub mod value;

pub use clock::{Clock, ManualClock, SystemClock};
pub use message::Message;
pub use value::{Table, Value};
