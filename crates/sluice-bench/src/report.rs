//! The result of a run: what `--json` writes, what the summary prints and what `--plot`
//! draws. Rates are per second of the window they describe; CPU is per consumed message.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::amqp::{Options, group};
use crate::tracker::Latency;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub options: Options,
    pub started_unix_ms: u64,
    /// The measured window: from the start signal to the end of the drain.
    pub elapsed_s: f64,
    /// From the start to the last producer's last publish.
    pub publish_s: f64,
    /// From the start to the last delivery.
    pub consume_s: f64,
    /// Messages sent (the client library wrote them to the socket).
    pub published: u64,
    /// Messages the broker acked, when confirms were on.
    pub confirmed: Option<u64>,
    pub nacked: u64,
    /// Sent with confirms on but neither acked nor nacked in time.
    pub unconfirmed: u64,
    /// Deliveries that had to happen: confirmed (or, without confirms, sent) messages, once
    /// per queue they were routed to.
    pub expected: u64,
    /// Deliveries received, duplicates included.
    pub consumed: u64,
    pub published_per_s: f64,
    pub consumed_per_s: f64,
    pub published_mb_per_s: f64,
    pub consumed_mb_per_s: f64,
    pub latency: Latency,
    /// From a publish being due to its confirm (with confirms on).
    pub confirm_latency: Option<Latency>,
    pub errors: u64,
    /// The first few error messages.
    pub error_messages: Vec<String>,
    /// Deliveries of a message that the same queue had already delivered.
    pub duplicates: u64,
    /// Expected deliveries that never came (within the drain time).
    pub missing: u64,
    /// Deliveries that carried no stamp of this run.
    pub malformed: u64,
    /// Messages the broker still held in the benchmark's queues when they were deleted: a
    /// missing message counted here was late (consumers fell behind), not lost.
    pub queued_at_end: u64,
    pub broker_cpu: Option<Cpu>,
    /// The load generator's own CPU time, to tell when the client, not the broker, is the
    /// bottleneck.
    pub client_cpu: Option<Cpu>,
    /// Throughput over time, one point a second.
    pub series: Vec<Sample>,
}

/// CPU time of a process over the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cpu {
    pub cpu_s: f64,
    /// CPU µs per consumed message (per delivery).
    pub us_per_msg: f64,
}

impl Cpu {
    pub fn new(spent: Duration, deliveries: u64) -> Cpu {
        let cpu_s = spent.as_secs_f64();
        Cpu {
            cpu_s,
            us_per_msg: if deliveries == 0 {
                0.0
            } else {
                cpu_s * 1e6 / deliveries as f64
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the start, at the end of this sample's second.
    pub t_s: f64,
    pub published_per_s: f64,
    pub consumed_per_s: f64,
}

impl Report {
    /// True when every expected message arrived exactly once and nothing failed.
    pub fn is_clean(&self) -> bool {
        self.errors == 0 && self.missing == 0 && self.duplicates == 0 && self.malformed == 0
    }

    /// The human-readable summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let o = &self.options;
        let limit = match (o.duration, o.count) {
            (_, Some(count)) => format!("{count} messages"),
            (Some(secs), None) => format!("{secs}s"),
            (None, None) => format!("{}s", crate::amqp::DURATION_DEFAULT_S),
        };
        let _ = writeln!(
            out,
            "sluice bench amqp: {} producers, {} consumers, {} queues ({}), {} B, {}{}{}{}{}{}",
            o.producers,
            o.consumers,
            o.queues,
            format!("{:?}", o.routing).to_lowercase(),
            o.size,
            limit,
            o.rate.map(|r| format!(", {r} msg/s")).unwrap_or_default(),
            if o.durable { ", durable" } else { "" },
            if o.persistent { ", persistent" } else { "" },
            if o.confirm > 0 {
                format!(", confirms {}", o.confirm)
            } else {
                String::new()
            },
            if o.manual_ack {
                format!(", manual ack, prefetch {}", o.prefetch)
            } else {
                ", auto-ack".to_string()
            },
        );
        let _ = writeln!(
            out,
            "  published  {:>12} msg/s  {:>8.1} MB/s  ({} in {:.2}s)",
            group(self.published_per_s),
            self.published_mb_per_s,
            self.published,
            self.publish_s
        );
        let _ = writeln!(
            out,
            "  consumed   {:>12} msg/s  {:>8.1} MB/s  ({} in {:.2}s)",
            group(self.consumed_per_s),
            self.consumed_mb_per_s,
            self.consumed,
            self.consume_s
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  latency µs  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
        if let Some(l) = &self.confirm_latency {
            let _ = writeln!(
                out,
                "  confirm µs  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        for (whose, cpu) in [("broker", &self.broker_cpu), ("client", &self.client_cpu)] {
            if let Some(cpu) = cpu {
                let _ = writeln!(
                    out,
                    "  {whose} CPU {:.2}s  {:.2} µs/msg",
                    cpu.cpu_s, cpu.us_per_msg
                );
            }
        }
        if let Some(confirmed) = self.confirmed {
            let _ = writeln!(
                out,
                "  confirmed {confirmed}  nacked {}  unconfirmed {}",
                self.nacked, self.unconfirmed
            );
        }
        let _ = writeln!(
            out,
            "  check: expected {}  missing {}  duplicates {}  malformed {}  errors {}{}",
            self.expected,
            self.missing,
            self.duplicates,
            self.malformed,
            self.errors,
            if self.missing > 0 {
                format!("  ({} still queued at the end)", self.queued_at_end)
            } else {
                String::new()
            }
        );
        for message in &self.error_messages {
            let _ = writeln!(out, "  error: {message}");
        }
        out
    }
}
