//! Stream queues (`x-queue-type: stream`), as RabbitMQ 3.9+ offers them to AMQP 0-9-1
//! clients, on the engine's streams: the stream queue S in vhost `/` is the one-partition
//! topic S that Kafka clients see. Declaring one creates the topic; a one-partition topic
//! created over Kafka is a stream queue here. Messages stay until retention removes them
//! (`x-max-age`, `x-max-length-bytes`); each consumer reads from an offset of its choice
//! (`x-stream-offset`) with the channel's prefetch as credit, and acks only return credit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_core::{Message, Table, Value};
use sluice_engine::routing::{describe, type_name};
use sluice_engine::stream::batch::BatchInfo;
use sluice_engine::stream::record::{Record, read_batch};
use sluice_engine::stream::{AppendError, Partition, ReadStatus, Topic, Topics};
use tokio::sync::Notify;

use sluice_engine::queue::ConsumerId;

use crate::broker::{Outbound, Outbox};
use crate::convert;
use crate::error::{AmqpError, codes};

/// Arguments RabbitMQ refuses on a stream queue ("invalid arg ... of queue type
/// rabbit_stream_queue").
const REFUSED_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-max-length",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-delivery-limit",
    "x-single-active-consumer",
    "x-quorum-initial-group-size",
    "x-queue-master-locator",
];

/// Bytes of batches a consumer reads from the log at a time.
const READ_BYTES: usize = 1 << 20;

/// How often a consumer waiting at the end of its stream checks that the stream still
/// exists (a deletion also wakes it at once).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Whether the arguments ask for a stream queue.
pub fn requested(args: &Table) -> bool {
    args.get("x-queue-type").and_then(Value::as_str) == Some("stream")
}

/// `x-max-age` in ms: a positive number and one of the units Y, M, D, h, m, s.
fn max_age_ms(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let n: u64 = text.get(..text.len() - 1)?.parse().ok()?;
    let second = 1000u64;
    let unit_ms = match unit {
        'Y' => 365 * 86_400 * second,
        'M' => 30 * 86_400 * second,
        'D' => 86_400 * second,
        'h' => 3_600 * second,
        'm' => 60 * second,
        's' => second,
        _ => return None,
    };
    (n > 0 && text.as_bytes().first().is_some_and(u8::is_ascii_digit))
        .then(|| n.saturating_mul(unit_ms))
}

/// An age in ms the way `x-max-age` writes it, in the largest whole unit.
fn age_text(ms: u64) -> String {
    for (unit, size) in [('D', 86_400_000), ('h', 3_600_000), ('m', 60_000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{}s", ms / 1000)
}

/// The topic configs a stream queue's arguments ask for, checked as RabbitMQ checks a
/// new stream queue. A stream keeps messages until its limits say otherwise, so no
/// `x-max-age` means no age limit (`retention.ms=-1`).
pub fn declare_overrides(
    args: &Table,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    queue: &str,
    vhost: &str,
) -> Result<BTreeMap<String, String>, AmqpError> {
    let where_ = format!("for queue '{queue}' in vhost '{vhost}'");
    for (bad, property) in [
        (!durable, "non-durable"),
        (exclusive, "exclusive-owner"),
        (auto_delete, "auto-delete"),
    ] {
        if bad {
            return Err(AmqpError::precondition(format!(
                "invalid property '{property}' {where_}"
            )));
        }
    }
    for arg in REFUSED_ARGS {
        if args.get(arg).is_some() {
            return Err(AmqpError::precondition(format!(
                "invalid arg '{arg}' {where_} of queue type rabbit_stream_queue"
            )));
        }
    }
    let mut overrides = BTreeMap::new();
    let age = match args.get("x-max-age") {
        None => None,
        Some(v) => match v.as_str() {
            Some(text) => Some(max_age_ms(text).ok_or_else(|| {
                AmqpError::precondition(format!(
                    "invalid arg 'x-max-age' {where_}: invalid_max_age"
                ))
            })?),
            None => {
                return Err(AmqpError::precondition(format!(
                    "invalid arg 'x-max-age' {where_}: {{unacceptable_type,{}}}",
                    type_name(v)
                )));
            }
        },
    };
    overrides.insert(
        "retention.ms".to_string(),
        age.map_or("-1".to_string(), |ms| ms.to_string()),
    );
    for (arg, config) in [
        ("x-max-length-bytes", "retention.bytes"),
        ("x-stream-max-segment-size-bytes", "segment.bytes"),
    ] {
        let Some(v) = args.get(arg) else { continue };
        let n = v.as_i64().ok_or_else(|| {
            AmqpError::precondition(format!(
                "invalid arg '{arg}' {where_}: \"expected integer, got {}\"",
                type_name(v)
            ))
        })?;
        if n < 0 {
            return Err(AmqpError::precondition(format!(
                "invalid arg '{arg}' {where_}: {{value_negative,{n}}}"
            )));
        }
        let n = if config == "segment.bytes" {
            n.clamp(1024, 1 << 30)
        } else {
            n
        };
        overrides.insert(config.to_string(), n.to_string());
    }
    Ok(overrides)
}

/// RabbitMQ's refusal of a redeclaration that differs from what exists.
fn inequivalent(
    arg: &str,
    received: Option<&Value>,
    current: Option<(String, &str)>,
    q: &str,
    v: &str,
) -> AmqpError {
    let detail = match (received, current) {
        (Some(r), Some((c, _))) => format!("received '{}' but current is '{c}'", describe(r)),
        (received, current) => {
            let received = received.map_or("none".to_string(), |r| {
                format!("the value '{}' of type '{}'", describe(r), type_name(r))
            });
            let current = current.map_or("none".to_string(), |(c, t)| {
                format!("the value '{c}' of type '{t}'")
            });
            format!("received {received} but current is {current}")
        }
    };
    AmqpError::precondition(format!(
        "inequivalent arg '{arg}' for queue '{q}' in vhost '{v}': {detail}"
    ))
}

/// Checks a declaration of the existing stream queue `topic`, in RabbitMQ's order:
/// durability, retention arguments, then the queue type.
pub fn check_equivalent(
    topic: &Topic,
    args: &Table,
    durable: bool,
    vhost: &str,
) -> Result<(), AmqpError> {
    let q = topic.name.as_str();
    if !durable {
        return Err(AmqpError::precondition(format!(
            "inequivalent arg 'durable' for queue '{q}' in vhost '{vhost}': received 'false' but current is 'true'"
        )));
    }
    let overrides = topic.read().overrides.clone();
    let current_bytes = overrides
        .get("retention.bytes")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|b| *b >= 0);
    let requested_bytes = args.get("x-max-length-bytes");
    if requested_bytes.and_then(Value::as_i64) != current_bytes {
        return Err(inequivalent(
            "x-max-length-bytes",
            requested_bytes,
            current_bytes.map(|b| (b.to_string(), "long")),
            q,
            vhost,
        ));
    }
    let current_age = overrides
        .get("retention.ms")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|ms| *ms > 0);
    let requested_age = args.get("x-max-age");
    let wanted = requested_age.and_then(Value::as_str).and_then(max_age_ms);
    if wanted.map(|ms| ms as i64) != current_age {
        return Err(inequivalent(
            "x-max-age",
            requested_age,
            current_age.map(|ms| (age_text(ms as u64), "longstr")),
            q,
            vhost,
        ));
    }
    match args.get("x-queue-type") {
        Some(v) if v.as_str() == Some("stream") => {}
        Some(v) if v.as_str().is_some() => {
            return Err(AmqpError::precondition(format!(
                "inequivalent arg 'x-queue-type' for queue '{q}' in vhost '{vhost}': received '{}' but current is 'stream'",
                describe(v)
            )));
        }
        other => {
            return Err(inequivalent(
                "x-queue-type",
                other,
                Some(("stream".to_string(), "longstr")),
                q,
                vhost,
            ));
        }
    }
    Ok(())
}

/// A stream queue: a topic of exactly one partition.
pub use sluice_engine::vhost::stream_partition as partition;

/// Appends a published message to a stream queue. Returns the offset past it, which a
/// confirm on a `flush=sync` topic waits for.
pub fn publish(partition: &Partition, message: &Message, now_ms: i64) -> Result<u64, AppendError> {
    let batch = bytes::Bytes::from(convert::to_batch(message, now_ms));
    let info = BatchInfo {
        start: 0,
        len: batch.len(),
        offsets: 1,
        max_timestamp: now_ms,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        transactional: false,
    };
    match partition.append(&batch, &[info], None) {
        Ok(produced) => Ok(produced.next_offset),
        Err(e) => {
            tracing::error!(error = ?e, "stream queue append failed");
            Err(e)
        }
    }
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    First,
    Last,
    Next,
    Offset(u64),
    /// The first message at or after this time (ms since the epoch).
    Time(i64),
}

/// Reads `x-stream-offset`; `now_ms` resolves intervals like "1h". RabbitMQ's default
/// is `next`.
pub fn start(args: &Table, now_ms: i64, queue: &str, vhost: &str) -> Result<Start, AmqpError> {
    let Some(v) = args.get("x-stream-offset") else {
        return Ok(Start::Next);
    };
    let invalid = || {
        AmqpError::precondition(format!(
            "invalid arg 'x-stream-offset' for queue '{queue}' in vhost '{vhost}': {{invalid_stream_offset_arg,{{{},<<\"{}\">>}}}}",
            type_name(v),
            describe(v)
        ))
    };
    match v {
        Value::Timestamp(seconds) => Ok(Start::Time(
            i64::try_from(*seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        )),
        Value::ShortString(_) | Value::LongString(_) => match v.as_str() {
            Some("first") => Ok(Start::First),
            Some("last") => Ok(Start::Last),
            Some("next") => Ok(Start::Next),
            Some(text) => max_age_ms(text)
                .map(|ms| Start::Time(now_ms.saturating_sub(ms as i64)))
                .ok_or_else(invalid),
            None => Err(invalid()),
        },
        other => match other.as_i64() {
            Some(n) => Ok(Start::Offset(u64::try_from(n).unwrap_or(0))),
            None => Err(invalid()),
        },
    }
}

/// Deliveries a stream consumer may have unacknowledged: the channel's prefetch when it
/// consumed. Acks give it back.
#[derive(Debug)]
pub struct StreamCredit {
    available: AtomicU32,
    ready: Notify,
}

impl StreamCredit {
    pub fn new(prefetch: u32) -> Self {
        StreamCredit {
            available: AtomicU32::new(prefetch),
            ready: Notify::new(),
        }
    }

    pub fn release(&self, n: u32) {
        if n > 0 {
            self.available.fetch_add(n, Ordering::AcqRel);
            self.ready.notify_one();
        }
    }

    /// Takes one credit if there is one.
    fn try_take(&self) -> bool {
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| a.checked_sub(1))
            .is_ok()
    }

    async fn take(&self) {
        while !self.try_take() {
            self.ready.notified().await;
        }
    }
}

/// The offset a consumer starting at `start` reads first, as the partition is now.
pub fn first_offset(partition: &Partition, start: Start) -> u64 {
    let (low, high) = partition.offsets();
    let (low, high) = (low.max(0) as u64, high.max(0) as u64);
    match start {
        Start::First => low,
        Start::Next => high,
        Start::Last => partition.last_batch_offset(),
        Start::Offset(o) => o.clamp(low, high),
        Start::Time(ms) => match partition.offset_for_time(ms) {
            Ok(Some((offset, _))) => offset.max(0) as u64,
            _ => high,
        },
    }
}

/// One stream consumer, reading its partition in a task of its own.
pub struct StreamReader {
    pub queue: Arc<str>,
    pub vhost: Arc<str>,
    pub topics: Arc<Topics>,
    pub topic: Arc<Topic>,
    pub partition: Arc<Partition>,
    /// The first offset to deliver ([`first_offset`]).
    pub start: u64,
    pub outbox: Outbox,
    pub channel: u16,
    pub consumer: ConsumerId,
    pub tag: Arc<str>,
    pub credit: Arc<StreamCredit>,
}

impl StreamReader {
    /// Whether the stream this reader follows is still a stream queue: not deleted, and
    /// not grown to more partitions.
    fn stream_exists(&self) -> bool {
        self.topics
            .get(&self.topic.name)
            .is_some_and(|t| Arc::ptr_eq(&t, &self.topic) && t.partition_count() == 1)
    }

    /// Delivers records from the start offset on, live, until the consumer goes away
    /// (the task is aborted) or the stream is deleted (the consumer is cancelled).
    pub async fn run(self) {
        let mut next = self.start;
        let notify = Arc::new(Notify::new());
        let mut records: Vec<Record> = Vec::new();
        loop {
            self.partition.watch(&notify);
            let batches = match self.partition.read_batches(next, READ_BYTES) {
                Ok(b) => b,
                Err(ReadStatus::OutOfRange) => {
                    // Retention removed what this reader had not read yet: go on from
                    // the oldest message left.
                    let (start, end) = self.partition.offsets();
                    next = (start.max(0) as u64).min(end.max(0) as u64);
                    continue;
                }
                Err(_) => {
                    // Unreadable: gone with its stream, or a disk error to wait out.
                    if !self.stream_exists() {
                        break;
                    }
                    tokio::time::sleep(IDLE_CHECK).await;
                    continue;
                }
            };
            if batches.is_empty() {
                if !self.stream_exists() {
                    break;
                }
                let _ = tokio::time::timeout(IDLE_CHECK, notify.notified()).await;
                continue;
            }
            if !self.stream_exists() {
                break;
            }
            for batch in &batches {
                records.clear();
                if let Err(e) = read_batch(&batch.payload, &mut records) {
                    tracing::warn!(stream = %self.topic.name, offset = batch.base_offset, error = ?e, "unreadable batch skipped by an AMQP stream consumer");
                }
                for record in records.drain(..).filter(|r| r.offset >= next) {
                    if !self.credit_or_gone().await {
                        return self.cancelled().await;
                    }
                    let delivery = Box::new(convert::to_delivery(&record, &self.topic.name));
                    let item = Outbound::Stream {
                        channel: self.channel,
                        consumer: self.consumer,
                        tag: Arc::clone(&self.tag),
                        credit: Arc::clone(&self.credit),
                        queue: Arc::clone(&self.queue),
                        vhost: Arc::clone(&self.vhost),
                        delivery,
                    };
                    if self.outbox.send(item).await.is_err() {
                        return;
                    }
                }
                next = next.max(batch.next_offset());
            }
        }
        self.cancelled().await;
    }

    /// Waits for credit; false when the stream was deleted meanwhile.
    async fn credit_or_gone(&self) -> bool {
        // The common case, without a timer.
        if self.credit.try_take() {
            return true;
        }
        loop {
            tokio::select! {
                () = self.credit.take() => return true,
                () = tokio::time::sleep(IDLE_CHECK) => {
                    if !self.stream_exists() {
                        return false;
                    }
                }
            }
        }
    }

    /// The stream is gone: tell the consumer (`basic.cancel`).
    async fn cancelled(&self) {
        let _ = self
            .outbox
            .send(Outbound::Cancelled {
                channel: self.channel,
                consumer: self.consumer,
                tag: Arc::clone(&self.tag),
            })
            .await;
    }
}

/// RabbitMQ's refusal of what stream queues do not do (a connection error).
pub fn not_supported(what: &str, queue: &str, vhost: &str) -> AmqpError {
    AmqpError::connection(
        codes::NOT_IMPLEMENTED,
        format!(
            "NOT_IMPLEMENTED - {what} not supported by stream queues queue '{queue}' in vhost '{vhost}'"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, Value)]) -> Table {
        Table::from_pairs(entries)
    }

    #[test]
    fn max_age_units_as_rabbitmq_reads_them() {
        assert_eq!(max_age_ms("1Y"), Some(365 * 86_400_000));
        assert_eq!(max_age_ms("2M"), Some(60 * 86_400_000));
        assert_eq!(max_age_ms("3D"), Some(3 * 86_400_000));
        assert_eq!(max_age_ms("4h"), Some(4 * 3_600_000));
        assert_eq!(max_age_ms("5m"), Some(5 * 60_000));
        assert_eq!(max_age_ms("6s"), Some(6_000));
        for bad in ["0s", "10", "1d", "1H", "-1s", "D", "", "+1s"] {
            assert_eq!(max_age_ms(bad), None, "{bad}");
        }
        assert_eq!(age_text(86_400_000), "1D");
        assert_eq!(age_text(90_000), "90s");
    }

    #[test]
    fn declarations_are_checked_as_rabbitmq_checks_them() {
        let stream = ("x-queue-type", Value::string("stream"));
        let ok = declare_overrides(
            &table(&[
                stream.clone(),
                ("x-max-age", Value::string("1D")),
                ("x-max-length-bytes", Value::I32(1000)),
            ]),
            true,
            false,
            false,
            "s",
            "/",
        )
        .unwrap();
        assert_eq!(ok.get("retention.ms").map(String::as_str), Some("86400000"));
        assert_eq!(ok.get("retention.bytes").map(String::as_str), Some("1000"));
        let plain = declare_overrides(
            &table(std::slice::from_ref(&stream)),
            true,
            false,
            false,
            "s",
            "/",
        )
        .unwrap();
        assert_eq!(plain.get("retention.ms").map(String::as_str), Some("-1"));
        let refused = |args: Table, durable, exclusive, auto_delete| match declare_overrides(
            &args,
            durable,
            exclusive,
            auto_delete,
            "ps1",
            "/",
        ) {
            Err(AmqpError::Channel { text, .. }) => text,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(table(std::slice::from_ref(&stream)), false, false, false),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'ps1' in vhost '/'"
        );
        assert_eq!(
            refused(
                table(&[stream.clone(), ("x-max-length", Value::I32(10))]),
                true,
                false,
                false
            ),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'ps1' in vhost '/' of queue type rabbit_stream_queue"
        );
        assert_eq!(
            refused(
                table(&[stream.clone(), ("x-max-length-bytes", Value::I32(-5))]),
                true,
                false,
                false
            ),
            "PRECONDITION_FAILED - invalid arg 'x-max-length-bytes' for queue 'ps1' in vhost '/': {value_negative,-5}"
        );
        assert_eq!(
            refused(
                table(&[stream, ("x-max-age", Value::I32(10))]),
                true,
                false,
                false
            ),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 'ps1' in vhost '/': {unacceptable_type,signedint}"
        );
    }

    #[test]
    fn stream_offsets() {
        let at = |v: Value| start(&table(&[("x-stream-offset", v)]), 10_000_000, "q", "/");
        assert_eq!(start(&Table::default(), 0, "q", "/").unwrap(), Start::Next);
        assert_eq!(at(Value::string("first")).unwrap(), Start::First);
        assert_eq!(at(Value::string("last")).unwrap(), Start::Last);
        assert_eq!(at(Value::I64(5)).unwrap(), Start::Offset(5));
        assert_eq!(at(Value::I8(-1)).unwrap(), Start::Offset(0));
        assert_eq!(at(Value::Timestamp(7)).unwrap(), Start::Time(7000));
        assert_eq!(
            at(Value::string("10s")).unwrap(),
            Start::Time(10_000_000 - 10_000)
        );
        assert!(at(Value::string("5")).is_err());
        assert!(at(Value::Bool(true)).is_err());
    }
}
