//! Load generator for any Kafka-protocol broker, through librdkafka (rdkafka).
//!
//! `throughput` mode: create a fresh topic, produce stamped records as fast as the broker
//! takes them for `--duration` (counting only records the broker acknowledged), then read
//! them all back from the beginning; each phase reports records/s, MB/s and the broker's
//! CPU per MB. `latency` mode: produce at a fixed `--rate` while a consumer reads, and
//! report publish→deliver percentiles. The topic is deleted at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use crate::cpu::{self, Process};
use crate::payload::{STAMP_BYTES, Stamp, wall_ns};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Produce as fast as possible, then consume everything back.
    Throughput,
    /// Produce at --rate while consuming; report publish→deliver latency.
    Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
    Snappy,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
        }
    }
}

/// A benchmark run against a Kafka-protocol broker.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Options {
    /// Broker to drive: host:port of any Kafka-protocol broker
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,

    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    pub mode: Mode,

    /// Record value size in bytes (at least 16: the stamp)
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,

    /// Seconds of producing
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,

    /// Partitions of the benchmark topic
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub partitions: i32,

    /// Throughput mode: consuming threads, each with its own consumer reading every
    /// N-th partition (at most --partitions)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub consumers: u32,

    /// Producer compression codec
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,

    /// Producer acks: 0, 1 or all
    #[arg(long, default_value = "1")]
    pub acks: String,

    /// Largest producer batch (librdkafka batch.size)
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub batch_bytes: usize,

    /// Producer linger.ms (latency mode uses 0 unless set)
    #[arg(long, value_name = "MS")]
    pub linger_ms: Option<u64>,

    /// Latency mode: records per second, spread evenly over time
    #[arg(long, value_name = "RECORDS_PER_SEC", default_value_t = 10_000.0)]
    pub rate: f64,

    /// Topic configs for the benchmark topic, NAME=VALUE (repeatable)
    #[arg(long = "topic-config", value_name = "NAME=VALUE")]
    pub topic_configs: Vec<String>,

    /// PID of the broker process, to report its CPU per MB moved
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,

    /// librdkafka settings for every client, NAME=VALUE (repeatable): for TLS and SASL,
    /// e.g. security.protocol=SASL_SSL, ssl.ca.location=ca.pem, sasl.mechanisms=SCRAM-SHA-512
    #[arg(long = "client-config", value_name = "NAME=VALUE")]
    #[serde(serialize_with = "serialize_redacted_configs")]
    pub client_configs: Vec<String>,
}

/// Client settings for reports, with the values of secrets (`*password*`) hidden.
fn serialize_redacted_configs<S: serde::Serializer>(
    configs: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let shown: Vec<String> = configs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.contains("password") => format!("{k}=***"),
            _ => kv.clone(),
        })
        .collect();
    serializer.collect_seq(shown)
}

/// One phase's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// Broker CPU seconds per MB (10^6 bytes of record values) moved.
    pub broker_cpu_s_per_mb: Option<f64>,
    /// Broker CPU time over wall time: the share of one core it used.
    pub broker_cores: Option<f64>,
    pub client_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub records: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub options: Options,
    pub produce: Option<Phase>,
    pub consume: Option<Phase>,
    pub latency: Option<LatencyReport>,
    /// Acknowledged records that were not read back.
    pub missing: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.errors == 0
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let phase = |name: &str, p: &Phase| {
            format!(
                "{name}: {} records in {:.2} s = {:.0} records/s, {:.1} MB/s; broker {}; client {:.2} cores\n",
                p.records,
                p.seconds,
                p.records_per_s,
                p.mb_per_s,
                match (p.broker_cpu_s_per_mb, p.broker_cores) {
                    (Some(per_mb), Some(cores)) =>
                        format!("{:.1} ms CPU/MB, {cores:.2} cores", per_mb * 1e3),
                    _ => "CPU not measured".into(),
                },
                p.client_cores.unwrap_or(0.0)
            )
        };
        if let Some(p) = &self.produce {
            s += &phase("produce", p);
        }
        if let Some(p) = &self.consume {
            s += &phase("consume", p);
        }
        if let Some(l) = &self.latency {
            s += &format!(
                "latency: {} records, p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs\n",
                l.records, l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        s += &format!("missing {}, errors {}\n", self.missing, self.errors);
        for e in &self.error_messages {
            s += &format!("  error: {e}\n");
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Options(String),
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("creating the benchmark topic: {0}")]
    Topic(String),
}

/// Counts acknowledged and failed deliveries on librdkafka's thread.
struct Counting {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// The producer's context: a handle on the shared counters.
#[derive(Clone)]
struct Counts(Arc<Counting>);

impl ClientContext for Counts {}

impl ProducerContext for Counts {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let this = &self.0;
        match result {
            Ok(_) => {
                this.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                this.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = this.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

struct CpuWindow {
    broker: Option<(u32, Duration)>,
    client: Option<Duration>,
    start: Instant,
}

impl CpuWindow {
    fn start(broker_pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            broker: broker_pid
                .and_then(|pid| cpu::cpu_time(Process::Pid(pid)).ok().map(|t| (pid, t))),
            client: cpu::cpu_time(Process::Current).ok(),
            start: Instant::now(),
        }
    }

    fn phase(&self, records: u64, bytes: u64, seconds: f64) -> Phase {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let broker = self.broker.and_then(|(pid, before)| {
            cpu::cpu_time(Process::Pid(pid))
                .ok()
                .map(|after| after.saturating_sub(before).as_secs_f64())
        });
        let client = self.client.and_then(|before| {
            cpu::cpu_time(Process::Current)
                .ok()
                .map(|after| after.saturating_sub(before).as_secs_f64())
        });
        let seconds = seconds.max(1e-9);
        let mb = bytes as f64 / 1e6;
        Phase {
            records,
            bytes,
            seconds,
            records_per_s: records as f64 / seconds,
            mb_per_s: mb / seconds,
            broker_cpu_s_per_mb: broker.filter(|_| mb > 0.0).map(|c| c / mb),
            broker_cores: broker.map(|c| c / wall),
            client_cores: client.map(|c| c / wall),
        }
    }
}

fn base_config(o: &Options) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.bootstrap);
    for kv in &o.client_configs {
        if let Some((k, v)) = kv.split_once('=') {
            c.set(k, v);
        }
    }
    c
}

fn topic_name() -> String {
    format!(
        "sluice-bench-{}-{}",
        std::process::id(),
        wall_ns() % 1_000_000_000
    )
}

async fn create_topic(
    o: &Options,
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
) -> Result<(), RunError> {
    let mut topic = NewTopic::new(name, o.partitions, TopicReplication::Fixed(1));
    let mut pairs = Vec::new();
    for kv in &o.topic_configs {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            RunError::Options(format!("--topic-config {kv:?}: expected NAME=VALUE"))
        })?;
        pairs.push((k.to_string(), v.to_string()));
    }
    for (k, v) in &pairs {
        topic = topic.set(k, v);
    }
    let results = admin.create_topics([&topic], &AdminOptions::new()).await?;
    for r in results {
        r.map_err(|(t, e)| RunError::Topic(format!("{t}: {e}")))?;
    }
    Ok(())
}

fn producer(
    o: &Options,
    linger_default: u64,
) -> Result<(ThreadedProducer<Counts>, Arc<Counting>), RunError> {
    let counting = Arc::new(Counting {
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let mut c = base_config(o);
    c.set("acks", &o.acks)
        .set("compression.type", o.compression.name())
        .set("batch.size", o.batch_bytes.to_string())
        .set("message.max.bytes", (o.batch_bytes + 4096).to_string())
        .set(
            "linger.ms",
            o.linger_ms.unwrap_or(linger_default).to_string(),
        )
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000");
    let p = c.create_with_context(Counts(Arc::clone(&counting)))?;
    Ok((p, counting))
}

fn consumer(o: &Options, topic: &str, from: Offset) -> Result<BaseConsumer, RunError> {
    consumer_of(o, topic, from, 0, 1)
}

/// A consumer assigned the partitions `p` with `p % of == index`.
fn consumer_of(
    o: &Options,
    topic: &str,
    from: Offset,
    index: i32,
    of: i32,
) -> Result<BaseConsumer, RunError> {
    let mut c = base_config(o);
    c.set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "1048576");
    let consumer: BaseConsumer = c.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in (0..o.partitions).filter(|p| p % of == index) {
        tpl.add_partition_offset(topic, p, from)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Sends one record, waiting while librdkafka's queue is full.
fn send(p: &ThreadedProducer<Counts>, topic: &str, body: &[u8], errors: &mut Vec<String>) -> bool {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(body);
    loop {
        match p.send(record) {
            Ok(()) => return true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => {
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
                return false;
            }
        }
    }
}

pub async fn run(o: &Options) -> Result<Report, RunError> {
    if o.size < STAMP_BYTES {
        return Err(RunError::Options(format!(
            "--size must be at least {STAMP_BYTES}"
        )));
    }
    if o.duration.is_nan() || o.duration <= 0.0 || !(1..=10_000).contains(&o.partitions) {
        return Err(RunError::Options(
            "--duration must be positive and --partitions 1 to 10000".into(),
        ));
    }
    let admin: AdminClient<DefaultClientContext> = base_config(o).create()?;
    let topic = topic_name();
    create_topic(o, &admin, &topic).await?;
    let o2 = o.clone();
    let t2 = topic.clone();
    let result = tokio::task::spawn_blocking(move || match o2.mode {
        Mode::Throughput => throughput(&o2, &t2),
        Mode::Latency => latency(&o2, &t2),
    })
    .await
    .map_err(|e| RunError::Options(format!("benchmark thread failed: {e}")))?;
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    result
}

/// Producer index of the warm-up records in latency mode.
const WARM_UP: u32 = 1;

/// A record value of random letters: no runs for a codec to squeeze out for free.
fn filler(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ wall_ns();
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect()
}

fn throughput(o: &Options, topic: &str) -> Result<Report, RunError> {
    let (p, counting) = producer(o, 5)?;
    let mut body = filler(o.size);
    let mut errors = Vec::new();
    let window = CpuWindow::start(o.broker_pid);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(o.duration);
    let mut sent = 0u64;
    while Instant::now() < until {
        for _ in 0..256 {
            Stamp {
                sent_ns: 0,
                producer: 0,
                seq: sent,
            }
            .write(&mut body);
            if send(&p, topic, &body, &mut errors) {
                sent += 1;
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    let produce_s = start.elapsed().as_secs_f64();
    let acked = counting.acked.load(Ordering::Relaxed);
    let failed = counting.failed.load(Ordering::Relaxed);
    let produce = window.phase(acked, acked * o.size as u64, produce_s);
    if let Some(e) = counting
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        errors.push(format!("delivery failed: {e}"));
    }
    drop(p);

    let threads = o.consumers.clamp(1, o.partitions as u32) as i32;
    let consumers = (0..threads)
        .map(|i| consumer_of(o, topic, Offset::Beginning, i, threads))
        .collect::<Result<Vec<_>, _>>()?;
    let window = CpuWindow::start(o.broker_pid);
    let start = Instant::now();
    let read = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = consumers
        .into_iter()
        .map(|c| {
            let (read, bytes, stalled) =
                (Arc::clone(&read), Arc::clone(&bytes), Arc::clone(&stalled));
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                let mut last = Instant::now();
                while read.load(Ordering::Relaxed) < acked && !stalled.load(Ordering::Relaxed) {
                    if last.elapsed() > Duration::from_secs(30) {
                        stalled.store(true, Ordering::Relaxed);
                    }
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            read.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(
                                m.payload().map_or(0, |b| b.len() as u64),
                                Ordering::Relaxed,
                            );
                            last = Instant::now();
                        }
                        Some(Err(e)) if errors.len() < 5 => errors.push(e.to_string()),
                        _ => {}
                    }
                }
                errors
            })
        })
        .collect();
    for r in readers {
        if let Ok(e) = r.join() {
            errors.extend(e);
        }
    }
    let (read, bytes) = (read.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    let consume = window.phase(read, bytes, start.elapsed().as_secs_f64());
    Ok(Report {
        tool: "sluice bench kafka",
        options: o.clone(),
        produce: Some(produce),
        consume: Some(consume),
        latency: None,
        missing: acked.saturating_sub(read),
        errors: failed + errors.len() as u64,
        error_messages: errors,
    })
}

fn latency(o: &Options, topic: &str) -> Result<Report, RunError> {
    let (p, counting) = producer(o, 0)?;
    let c = consumer(o, topic, Offset::Beginning)?;
    let received = Arc::new(AtomicU64::new(0));
    let warmed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let received = Arc::clone(&received);
        let warmed = Arc::clone(&warmed);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| e.to_string())?;
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(50))
                    && let Some(stamp) = m.payload().and_then(Stamp::read)
                {
                    if stamp.producer == WARM_UP {
                        warmed.store(true, Ordering::Relaxed);
                        continue;
                    }
                    let us = wall_ns().saturating_sub(stamp.sent_ns) / 1000;
                    let _ = h.record(us.max(1));
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, String>(h)
        })
    };
    let mut body = filler(o.size);
    let mut errors = Vec::new();
    // The clock starts once a first record has gone all the way through, so connection
    // set-up is not measured as latency.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !warmed.load(Ordering::Relaxed) && Instant::now() < deadline {
        Stamp {
            sent_ns: wall_ns(),
            producer: WARM_UP,
            seq: 0,
        }
        .write(&mut body);
        send(&p, topic, &body, &mut errors);
        p.flush(Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = counting.acked.load(Ordering::Relaxed);
    let window = CpuWindow::start(o.broker_pid);
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(1.0));
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let due = start + interval.mul_f64(sent as f64);
        if due.duration_since(start).as_secs_f64() >= o.duration {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Latency counts from the scheduled time, so a broker that holds the producer up
        // is not flattered by the producer sending later.
        let late = Instant::now().saturating_duration_since(due);
        let sent_ns = wall_ns().saturating_sub(late.as_nanos() as u64);
        Stamp {
            sent_ns,
            producer: 0,
            seq: sent,
        }
        .write(&mut body);
        if send(&p, topic, &body, &mut errors) {
            sent += 1;
        }
    }
    p.flush(Duration::from_secs(60))?;
    let acked = counting.acked.load(Ordering::Relaxed) - before;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let h = reader
        .join()
        .map_err(|_| RunError::Options("reader thread panicked".into()))?
        .map_err(RunError::Options)?;
    let read = received.load(Ordering::Relaxed);
    let produce = window.phase(acked, acked * o.size as u64, start.elapsed().as_secs_f64());
    Ok(Report {
        tool: "sluice bench kafka",
        options: o.clone(),
        produce: Some(produce),
        consume: None,
        latency: Some(LatencyReport {
            records: read,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }),
        missing: acked.saturating_sub(read),
        errors: counting.failed.load(Ordering::Relaxed) + errors.len() as u64,
        error_messages: errors,
    })
}
