//! What an AMQP benchmark run does, as given on the command line or built in code, and the
//! checks that turn it into a [`Plan`] the run can follow without further questions.

use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::payload::{PRODUCERS_MAX, STAMP_BYTES};

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Largest message: RabbitMQ's and Sluice's default maximum message size (128 MiB).
pub const SIZE_MAX: usize = 128 << 20;

/// Producers or consumers per run: each has its own connection, and a few thousand is
/// already more than the machines these benchmarks run on can drive.
pub const CLIENTS_MAX: u32 = 10_000;

/// Queues per run, each declared and deleted one by one.
pub const QUEUES_MAX: u32 = 10_000;

/// Extra topic bindings: enough to show whether routing scans bindings, bounded so that
/// declaring them stays well under a minute.
pub const BINDINGS_MAX: u32 = 1_000_000;

/// Default run length when neither --duration nor --count is given.
pub const DURATION_DEFAULT_S: f64 = 10.0;

/// How messages reach the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// The default exchange: each message goes to one queue, named by its routing key.
    Direct,
    /// One fanout exchange bound to every queue: each message goes to all of them.
    Fanout,
    /// One topic exchange; queue i is bound with `bench.q<i>.*` and each message goes to
    /// one queue. --bindings adds non-matching bindings for the router to skip.
    Topic,
}

/// A benchmark run against an AMQP 0-9-1 broker. The defaults are those of the command line.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Options {
    /// Broker to drive: any AMQP 0-9-1 broker (Sluice, RabbitMQ, LavinMQ, ...)
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,

    /// PEM file of the CA that signed the broker's certificate, for amqps:// URLs
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Publishing connections, each with one channel
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub producers: u32,

    /// Consuming connections, each with one channel and one consumer; consumer i reads
    /// queue i modulo --queues, so there must be at least as many consumers as queues
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub consumers: u32,

    /// Message body size in bytes; the first 16 carry the producer, sequence number and
    /// send time, so 16 is the minimum
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,

    /// Publish for this many seconds [default: 10 when --count is not given]
    #[arg(long, value_name = "SECS", conflicts_with = "count")]
    pub duration: Option<f64>,

    /// Publish this many messages in total, spread over the producers
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Fixed-rate mode: publish this many messages per second in total, spread evenly over
    /// the producers and over time (for latency). A message sent more than 1 ms (the timer
    /// resolution) after its scheduled time has the extra delay counted as latency, so a
    /// broker that holds producers up is not flattered by their sending less
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,

    /// Queues to declare (fresh, uniquely named, deleted at the end)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queues: u32,

    /// How messages reach the queues
    #[arg(long, value_enum, default_value_t = Routing::Direct)]
    pub routing: Routing,

    /// Extra topic bindings that match no message, to load the router (--routing topic)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bindings: u32,

    /// Declare the queues (and the exchange) durable
    #[arg(long)]
    pub durable: bool,

    /// Publish persistent messages (delivery_mode 2)
    #[arg(long)]
    pub persistent: bool,

    /// Publisher confirms with at most WINDOW unconfirmed messages per producer; 0 turns
    /// confirms off (then every sent message counts as one that must arrive)
    #[arg(long, value_name = "WINDOW", default_value_t = 0)]
    pub confirm: u32,

    /// basic.qos prefetch count per consumer; 0 sets none (the broker's default: no limit)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub prefetch: u16,

    /// Acknowledge each delivery with basic.ack (otherwise consume with no-ack)
    #[arg(long)]
    pub manual_ack: bool,

    /// Declare stream queues (x-queue-type: stream, durable), each read by one consumer
    /// from x-stream-offset "next"; needs --manual-ack and --prefetch, as streams do
    #[arg(long)]
    pub stream: bool,

    /// After the producers stop, wait at most this long for the messages still on their
    /// way before counting the rest as missing
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub drain: f64,

    /// Charge this process (the broker) for its CPU time during the run, read from
    /// /proc/PID/stat, and report CPU µs per consumed message
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,

    /// No progress line on stderr
    #[arg(long)]
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            url: DEFAULT_URL.to_string(),
            tls_ca: None,
            producers: 1,
            consumers: 1,
            size: 1024,
            duration: None,
            count: None,
            rate: None,
            queues: 1,
            routing: Routing::Direct,
            bindings: 0,
            durable: false,
            persistent: false,
            confirm: 0,
            prefetch: 0,
            manual_ack: false,
            stream: false,
            drain: 5.0,
            broker_pid: None,
            quiet: false,
        }
    }
}

/// When producers stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Duration(Duration),
    Count(u64),
}

/// Options after validation, with the derived values the run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub options: Options,
    pub limit: Limit,
    /// Gap between two messages of one producer in fixed-rate mode.
    pub interval: Option<Duration>,
    pub drain: Duration,
    /// Deliveries each published message should cause: one, or one per queue with fanout.
    pub copies: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--{flag}: {reason}")]
pub struct OptionsError {
    pub flag: &'static str,
    pub reason: String,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> OptionsError {
    OptionsError {
        flag,
        reason: reason.into(),
    }
}

impl Options {
    pub fn plan(&self) -> Result<Plan, OptionsError> {
        if self.size < STAMP_BYTES || self.size > SIZE_MAX {
            return Err(invalid(
                "size",
                format!(
                    "must be {STAMP_BYTES}..={SIZE_MAX} bytes, got {}",
                    self.size
                ),
            ));
        }
        let clients_max = CLIENTS_MAX.min(PRODUCERS_MAX);
        if self.producers == 0 || self.producers > clients_max {
            return Err(invalid("producers", format!("must be 1..={clients_max}")));
        }
        if self.consumers == 0 || self.consumers > CLIENTS_MAX {
            return Err(invalid("consumers", format!("must be 1..={CLIENTS_MAX}")));
        }
        if self.queues == 0 || self.queues > QUEUES_MAX {
            return Err(invalid("queues", format!("must be 1..={QUEUES_MAX}")));
        }
        if self.consumers < self.queues {
            return Err(invalid(
                "consumers",
                format!(
                    "every queue needs a consumer: {} consumers for {} queues",
                    self.consumers, self.queues
                ),
            ));
        }
        if self.stream {
            if !self.manual_ack || self.prefetch == 0 {
                return Err(invalid(
                    "stream",
                    "stream consumers need --manual-ack and --prefetch",
                ));
            }
            if self.consumers != self.queues {
                return Err(invalid(
                    "stream",
                    "every consumer of a stream reads all of it: give one consumer per queue",
                ));
            }
        }
        if self.bindings > 0 && self.routing != Routing::Topic {
            return Err(invalid("bindings", "needs --routing topic"));
        }
        if self.bindings > BINDINGS_MAX {
            return Err(invalid(
                "bindings",
                format!("must be at most {BINDINGS_MAX}"),
            ));
        }
        let limit = match (self.duration, self.count) {
            (Some(_), Some(_)) => {
                return Err(invalid("count", "give either --duration or --count"));
            }
            (Some(secs), None) => Limit::Duration(seconds("duration", secs)?),
            (None, Some(0)) => return Err(invalid("count", "must be at least 1")),
            (None, Some(count)) => Limit::Count(count),
            (None, None) => Limit::Duration(Duration::from_secs_f64(DURATION_DEFAULT_S)),
        };
        let interval = match self.rate {
            None => None,
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                let per_producer = rate / f64::from(self.producers);
                Some(Duration::from_secs_f64(1.0 / per_producer))
            }
            Some(rate) => return Err(invalid("rate", format!("must be above 0, got {rate}"))),
        };
        let drain = if self.drain == 0.0 {
            Duration::ZERO
        } else {
            seconds("drain", self.drain)?
        };
        let copies = match self.routing {
            Routing::Fanout => u64::from(self.queues),
            Routing::Direct | Routing::Topic => 1,
        };
        Ok(Plan {
            options: self.clone(),
            limit,
            interval,
            drain,
            copies,
        })
    }
}

/// Seconds from a flag, at most a day.
fn seconds(flag: &'static str, secs: f64) -> Result<Duration, OptionsError> {
    const DAY_S: f64 = 86_400.0;
    if secs.is_finite() && secs > 0.0 && secs <= DAY_S {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(invalid(
            flag,
            format!("must be above 0 and at most {DAY_S} seconds, got {secs}"),
        ))
    }
}

impl Plan {
    /// Messages producer `producer` publishes in count mode.
    pub fn count_for(&self, producer: u32) -> Option<u64> {
        match self.limit {
            Limit::Duration(_) => None,
            Limit::Count(total) => {
                let producers = u64::from(self.options.producers);
                let extra = u64::from(u64::from(producer) < total % producers);
                Some(total / producers + extra)
            }
        }
    }
}

/// The URL with its password replaced, for reports that get shared.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

fn serialize_redacted_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_url(url))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn parse(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .unwrap()
            .options
    }

    #[test]
    fn command_line_defaults_are_the_default_options() {
        let parsed = parse(&[]);
        let default = Options::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn no_duration_and_no_count_publishes_for_ten_seconds() {
        let plan = Options::default().plan().unwrap();
        assert_eq!(plan.limit, Limit::Duration(Duration::from_secs(10)));
    }

    #[test]
    fn a_count_is_spread_over_producers_with_the_remainder_on_the_first() {
        let plan = parse(&["--count", "10", "--producers", "4"])
            .plan()
            .unwrap();
        let counts: Vec<_> = (0..4).map(|p| plan.count_for(p).unwrap()).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
    }

    #[test]
    fn a_rate_is_spread_over_producers() {
        let plan = parse(&["--rate", "10000", "--producers", "4"])
            .plan()
            .unwrap();
        assert_eq!(plan.interval, Some(Duration::from_micros(400)));
    }

    #[test]
    fn duration_and_count_together_are_refused() {
        let cli = Cli::try_parse_from(["bench", "--duration", "1", "--count", "5"]);
        assert!(cli.is_err());
        let options = Options {
            duration: Some(1.0),
            count: Some(5),
            ..Options::default()
        };
        assert_eq!(options.plan().unwrap_err().flag, "count");
    }

    #[test]
    fn bad_options_name_their_flag() {
        let cases: [(&[&str], &str); 8] = [
            (&["--size", "15"], "size"),
            (&["--producers", "0"], "producers"),
            (&["--queues", "3", "--consumers", "2"], "consumers"),
            (&["--bindings", "5"], "bindings"),
            (&["--duration", "0"], "duration"),
            (&["--count", "0"], "count"),
            (&["--rate=-1"], "rate"),
            (&["--drain=-1"], "drain"),
        ];
        for (args, flag) in cases {
            assert_eq!(parse(args).plan().unwrap_err().flag, flag, "{args:?}");
        }
    }

    #[test]
    fn fanout_expects_one_delivery_per_queue() {
        let plan = parse(&["--routing", "fanout", "--queues", "10", "--consumers", "10"])
            .plan()
            .unwrap();
        assert_eq!(plan.copies, 10);
    }

    #[test]
    fn the_password_is_redacted_from_reported_urls() {
        assert_eq!(
            redacted_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redacted_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
