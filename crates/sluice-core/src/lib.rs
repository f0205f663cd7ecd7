//! Shared vocabulary of Sluice: the clock seam every time-driven part reads through, and
//! the limits that bound what a peer or a config can make the broker hold.
//!
//! This crate sits at the bottom of the dependency graph; it depends on nothing of ours.

pub mod clock;
pub mod limits;

pub use clock::{Clock, ManualClock, SystemClock};
