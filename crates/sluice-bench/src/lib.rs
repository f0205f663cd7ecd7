//! Load generators behind `sluice bench`: they drive any broker of a protocol through a
//! real client library, so the same code measures Sluice and its peers.
//!
//! - [`amqp`]: AMQP 0-9-1 through lapin; [`amqp::run`] returns a [`report::Report`].
//! - [`kafka`]: the Kafka protocol through rdkafka (librdkafka): throughput and latency.
//! - [`payload`]: the 16-byte stamp (producer, sequence number, send time) in every body.
//! - [`tracker`]: consumer-side latency histogram and duplicate / missing detection.
//! - [`cpu`]: process CPU time from /proc, to charge a broker per message.
//! - [`report`], [`plot`]: the summary, the JSON and the SVG.
//! - [`cli`]: the `bench` subcommand as the `sluice` binary mounts it.

pub mod amqp;
pub mod cli;
pub mod cpu;
pub mod kafka;
pub mod payload;
pub mod plot;
pub mod report;
pub mod rocketmq;
pub mod tracker;
