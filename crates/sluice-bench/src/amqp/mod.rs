//! `sluice bench amqp`: a load generator for any AMQP 0-9-1 broker, on lapin and tokio.
//!
//! A run declares fresh queues, connects every consumer and producer, and only then starts
//! the clock: producers publish stamped messages (see [`crate::payload`]) until the count or
//! duration is reached, consumers book every delivery, and after a bounded drain the run
//! compares what arrived with what the broker confirmed. The queues are deleted at the end
//! whether the run succeeded or not. Each producer and consumer has its own connection.
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_bench::amqp::RunError> {
//! let options = sluice_bench::amqp::Options { count: Some(10_000), ..Default::default() };
//! let report = sluice_bench::amqp::run(&options).await?;
//! println!("{}", report.summary());
//! # Ok(()) }
//! ```

mod consumer;
mod options;
mod pipeline;
mod producer;
mod topology;

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cpu::{self, Process};
use crate::payload::wall_ns;
use crate::report::{Cpu, Report, Sample};
use crate::tracker::{HistogramError, SeqSet, Tracker};
pub use options::{
    DEFAULT_URL, DURATION_DEFAULT_S, Limit, Options, OptionsError, Plan, Routing, redacted_url,
};

use consumer::{Consumed, Consumer};
use producer::{Produced, Producer};
use topology::Topology;

/// Counters are statistics read by the progress line; no ordering with other memory needed.
const RELAXED: Ordering = Ordering::Relaxed;

/// How long producers and consumers get to connect and declare their consumers.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// Error messages kept for the report; the count of errors is always complete.
const ERROR_MESSAGES_MAX: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("connecting to {url}: {source}")]
    Connect { url: String, source: lapin::Error },
    #[error("declaring the benchmark queues: {0}")]
    Declare(lapin::Error),
    #[error("starting clients: {0}")]
    Clients(String),
    #[error(transparent)]
    Histogram(#[from] HistogramError),
}

/// Counters shared by producers, consumers and the progress line.
#[derive(Debug, Default)]
pub struct Shared {
    published: AtomicU64,
    consumed: AtomicU64,
    errors: AtomicU64,
    error_messages: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, message: String) {
        self.errors.fetch_add(1, RELAXED);
        if let Ok(mut messages) = self.error_messages.lock()
            && messages.len() < ERROR_MESSAGES_MAX
        {
            messages.push(message);
        }
    }
}

/// The moment the measured window opened, on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    instant: Instant,
    wall_ns: u64,
}

/// Runs the benchmark described by `options` to its end. Progress goes to stderr unless
/// `options.quiet`.
pub async fn run(options: &Options) -> Result<Report, RunError> {
    run_until(options, std::future::pending()).await
}

/// Like [`run`], but stops publishing early when `interrupt` completes (Ctrl-C in the
/// command line); the drain, the checks and the clean-up still happen.
/// Opens a connection to `options.url`, over TLS trusting `--tls-ca` if given.
pub(crate) async fn connect(options: &Options) -> lapin::Result<Connection> {
    let Some(ca) = &options.tls_ca else {
        return Connection::connect(&options.url, ConnectionProperties::default()).await;
    };
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(std::fs::read_to_string(ca)?),
    };
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_with_config(&options.url, ConnectionProperties::default(), tls, runtime)
        .await
}

pub async fn run_until(
    options: &Options,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, RunError> {
    let plan = Arc::new(options.plan()?);
    let connect_error = |source| RunError::Connect {
        url: redacted_url(&options.url),
        source,
    };
    let setup = connect(options).await.map_err(connect_error)?;
    let prefix = format!("sluice-bench-{}-{}", std::process::id(), wall_ns() / 1000);
    let topology = Arc::new(Topology::new(&plan, &prefix));
    let declared = match setup.create_channel().await {
        Ok(channel) => topology.declare(&channel).await,
        Err(error) => Err(error),
    };
    let outcome = match declared {
        Ok(()) => measure(&plan, &topology, interrupt).await,
        Err(error) => Err(RunError::Declare(error)),
    };
    let (left, delete_error) = topology.delete(&setup).await;
    let _ = setup.close(200, "benchmark done".into()).await;
    let mut report = outcome?;
    report.queued_at_end = left;
    if let Some(error) = delete_error {
        report.errors += 1;
        report
            .error_messages
            .push(format!("deleting the benchmark queues: {error}"));
    }
    Ok(report)
}

/// The measured part: clients up, clock on, publish, drain, clock off, clients down.
async fn measure(
    plan: &Arc<Plan>,
    topology: &Arc<Topology>,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, RunError> {
    let options = &plan.options;
    let shared = Arc::new(Shared::default());
    let (go_tx, go_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (halt_tx, halt_rx) = watch::channel(false);
    let mut readies = Vec::new();

    let mut consumers = Vec::new();
    for index in 0..options.consumers {
        let queue = index as usize % topology.queues.len().max(1);
        let Some(queue_name) = topology.queues.get(queue).cloned() else {
            break;
        };
        let consumer = Consumer {
            index,
            queue,
            queue_name,
            plan: plan.clone(),
            shared: shared.clone(),
        };
        let tracker = Tracker::new(options.producers)?;
        let (ready, ready_rx) = oneshot::channel();
        readies.push(ready_rx);
        consumers.push(tokio::spawn(consumer.run(tracker, ready, halt_rx.clone())));
    }
    let mut producers = Vec::new();
    for index in 0..options.producers {
        let producer = Producer {
            index,
            plan: plan.clone(),
            topology: topology.clone(),
            shared: shared.clone(),
        };
        let (ready, ready_rx) = oneshot::channel();
        readies.push(ready_rx);
        producers.push(tokio::spawn(producer.run(
            ready,
            go_rx.clone(),
            stop_rx.clone(),
        )));
    }
    if let Err(message) = all_ready(readies).await {
        // Dropping the start signal and halting makes every client close and return.
        drop(go_tx);
        let _ = halt_tx.send(true);
        join_all(producers).await;
        join_all(consumers).await;
        return Err(RunError::Clients(message));
    }

    let broker = options.broker_pid.map(Process::Pid);
    let broker_before = broker.map(cpu::cpu_time);
    let client_before = cpu::cpu_time(Process::Current);
    let start = Start {
        instant: Instant::now(),
        wall_ns: wall_ns(),
    };
    let started_unix_ms = start.wall_ns / 1_000_000;
    let _ = go_tx.send(Some(start));
    let sampler = tokio::spawn(sample(
        shared.clone(),
        start.instant,
        halt_rx,
        options.quiet,
    ));

    let producing = join_all(producers);
    tokio::pin!(producing);
    tokio::pin!(interrupt);
    let produced = tokio::select! {
        produced = &mut producing => produced,
        () = &mut interrupt => {
            let _ = stop_tx.send(true);
            producing.await
        }
    };
    let produced: Vec<Produced> = produced.into_iter().flatten().collect();
    let expected_deliveries = produced.iter().map(|p| p.expected.len()).sum::<u64>() * plan.copies;
    let drain_until = Instant::now() + plan.drain;
    while shared.consumed.load(RELAXED) < expected_deliveries && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let end = Instant::now();
    let broker_after = broker.map(cpu::cpu_time);
    let client_after = cpu::cpu_time(Process::Current);
    let _ = halt_tx.send(true);
    let consumed: Vec<Consumed> = join_all(consumers).await.into_iter().flatten().collect();
    let series = sampler.await.unwrap_or_default();
    drop(stop_tx);

    let measured = Measured {
        plan,
        start: start.instant,
        end,
        started_unix_ms,
        produced,
        consumed,
        series,
        shared: &shared,
        broker_cpu: cpu_used(broker_before, broker_after),
        client_cpu: cpu_used(Some(client_before), Some(client_after)),
    };
    measured.report()
}

/// Waits until every client is connected, or the first failure.
async fn all_ready(readies: Vec<oneshot::Receiver<Result<(), String>>>) -> Result<(), String> {
    let deadline = Instant::now() + CONNECT_WAIT;
    for ready in readies {
        match tokio::time::timeout_at(deadline, ready).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(message))) => return Err(message),
            Ok(Err(_)) => return Err("a client task ended before connecting".to_string()),
            Err(_) => {
                return Err(format!(
                    "clients not connected within {}s",
                    CONNECT_WAIT.as_secs()
                ));
            }
        }
    }
    Ok(())
}

async fn join_all<T>(handles: Vec<JoinHandle<T>>) -> Vec<Option<T>> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.ok());
    }
    out
}

type CpuReading = Option<Result<Duration, cpu::CpuError>>;

fn cpu_used(before: CpuReading, after: CpuReading) -> Option<Result<Duration, String>> {
    match (before?, after?) {
        (Ok(before), Ok(after)) => Some(Ok(after.saturating_sub(before))),
        (Err(error), _) | (_, Err(error)) => Some(Err(error.to_string())),
    }
}

/// Once a second: a throughput sample, and the progress line unless quiet. Returns the
/// samples when `halt` turns true.
async fn sample(
    shared: Arc<Shared>,
    start: Instant,
    mut halt: watch::Receiver<bool>,
    quiet: bool,
) -> Vec<Sample> {
    let mut series = Vec::new();
    let mut ticks =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_at, mut last_published, mut last_consumed) = (start, 0, 0);
    let terminal = std::io::stderr().is_terminal();
    loop {
        let now = tokio::select! {
            now = ticks.tick() => now,
            _ = halt.wait_for(|h| *h) => break,
        };
        let published = shared.published.load(RELAXED);
        let consumed = shared.consumed.load(RELAXED);
        let seconds = now.duration_since(last_at).as_secs_f64().max(1e-9);
        let point = Sample {
            t_s: now.duration_since(start).as_secs_f64(),
            published_per_s: (published - last_published) as f64 / seconds,
            consumed_per_s: (consumed - last_consumed) as f64 / seconds,
        };
        (last_at, last_published, last_consumed) = (now, published, consumed);
        if !quiet {
            let line = format!(
                "{:>6.1}s  out {:>10} msg/s  in {:>10} msg/s  published {}  consumed {}  errors {}",
                point.t_s,
                group(point.published_per_s),
                group(point.consumed_per_s),
                published,
                consumed,
                shared.errors.load(RELAXED),
            );
            let mut stderr = std::io::stderr().lock();
            let _ = if terminal {
                write!(stderr, "\r{line}\x1b[K")
            } else {
                writeln!(stderr, "{line}")
            };
            let _ = stderr.flush();
        }
        series.push(point);
    }
    if !quiet && terminal {
        eprintln!();
    }
    series
}

/// 1234567.8 as "1,234,568".
pub fn group(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Everything a finished run gathered, before it becomes a [`Report`].
struct Measured<'a> {
    plan: &'a Plan,
    start: Instant,
    end: Instant,
    started_unix_ms: u64,
    produced: Vec<Produced>,
    consumed: Vec<Consumed>,
    series: Vec<Sample>,
    shared: &'a Shared,
    broker_cpu: Option<Result<Duration, String>>,
    client_cpu: Option<Result<Duration, String>>,
}

impl Measured<'_> {
    fn report(self) -> Result<Report, RunError> {
        let options = &self.plan.options;
        let producers = options.producers;
        let expected: Vec<SeqSet> = self.produced.iter().map(|p| p.expected.clone()).collect();
        let sum = |f: fn(&Produced) -> u64| self.produced.iter().map(f).sum::<u64>();
        let published = sum(|p| p.published);

        // Consumers of one queue are checked together; with fanout every queue must hold
        // every message, otherwise the queues share the messages between them.
        let groups = match options.routing {
            Routing::Fanout => options.queues as usize,
            Routing::Direct | Routing::Topic => 1,
        };
        let mut merged: Vec<Tracker> = (0..groups)
            .map(|_| Tracker::new(producers))
            .collect::<Result<_, _>>()?;
        for consumed in &self.consumed {
            if let Some(tracker) = merged.get_mut(consumed.queue % groups) {
                tracker.merge(&consumed.tracker)?;
            }
        }
        let mut latency = Tracker::new(producers)?;
        for tracker in &merged {
            latency.merge_latency(tracker)?;
        }
        let mut confirm_ns = crate::tracker::latency_histogram()?;
        for h in self.produced.iter().filter_map(|p| p.confirm_ns.as_ref()) {
            confirm_ns
                .add(h)
                .map_err(|e| crate::tracker::HistogramError(format!("{e:?}")))?;
        }
        let deliveries: u64 = merged.iter().map(Tracker::deliveries).sum();
        let missing: u64 = merged.iter().map(|t| t.missing(&expected)).sum();
        let duplicates: u64 = merged.iter().map(Tracker::duplicates).sum();
        let malformed: u64 = merged.iter().map(Tracker::malformed).sum();

        let elapsed = self.end.duration_since(self.start);
        let publish_s = self
            .produced
            .iter()
            .filter_map(|p| p.finished)
            .max()
            .map_or(elapsed, |f| f.duration_since(self.start))
            .as_secs_f64()
            .max(1e-9);
        let consume_s = self
            .consumed
            .iter()
            .filter_map(|c| c.last_delivery)
            .max()
            .map_or(elapsed, |l| l.duration_since(self.start))
            .as_secs_f64()
            .max(1e-9);
        let size = options.size as f64;
        let mut error_messages = self
            .shared
            .error_messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut errors = self.shared.errors.load(RELAXED);
        let mut cpu = |reading: Option<Result<Duration, String>>, whose: &str| match reading? {
            Ok(spent) => Some(Cpu::new(spent, deliveries)),
            Err(error) => {
                errors += 1;
                error_messages.push(format!("{whose} CPU time: {error}"));
                None
            }
        };
        let broker_cpu = cpu(self.broker_cpu, "broker");
        let client_cpu = cpu(self.client_cpu, "client");
        Ok(Report {
            tool: "sluice bench amqp",
            options: options.clone(),
            started_unix_ms: self.started_unix_ms,
            elapsed_s: elapsed.as_secs_f64(),
            publish_s,
            consume_s,
            published,
            confirmed: (options.confirm > 0).then(|| sum(|p| p.confirmed)),
            nacked: sum(|p| p.nacked),
            unconfirmed: sum(|p| p.unconfirmed),
            expected: expected.iter().map(SeqSet::len).sum::<u64>() * self.plan.copies,
            consumed: deliveries,
            published_per_s: published as f64 / publish_s,
            consumed_per_s: deliveries as f64 / consume_s,
            published_mb_per_s: published as f64 * size / publish_s / 1e6,
            consumed_mb_per_s: deliveries as f64 * size / consume_s / 1e6,
            latency: latency.latency(),
            confirm_latency: (options.confirm > 0).then(|| crate::tracker::latency_of(&confirm_ns)),
            errors,
            error_messages,
            duplicates,
            missing,
            malformed,
            queued_at_end: 0,
            broker_cpu,
            client_cpu,
            series: self.series,
        })
    }
}
