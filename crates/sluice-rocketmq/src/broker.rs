//! What the RocketMQ face keeps: the engine's streams (a RocketMQ topic's message queues
//! are a stream's partitions, shared with Kafka), one engine `Subscription` per consumer
//! group and queue (receive with an invisible time, ack by receipt, redelivery with an
//! attempt count), and the groups' committed offsets, stored so a restart resumes where
//! they were acknowledged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_core::Clock;
use sluice_engine::delay::DelayStore;
use sluice_engine::stream::batch::BatchInfo;
use sluice_engine::stream::offsets::{Change, Committed, OffsetStore};
use sluice_engine::stream::record::BatchBuilder;
use sluice_engine::stream::record::{Record, read_batch};
use sluice_engine::stream::{LogConfig, LogError, Partition, Topics};
use sluice_engine::subscription::{Command, Effect, LeaseError, Policy, Subscription};

/// Group-and-queue subscriptions held at most (each is a consumer group's state on one
/// queue); receives that would make more are refused.
pub const SUBSCRIPTIONS_MAX: usize = 100_000;

/// Bytes read from a partition at a time to find leased records.
const READ_BYTES: usize = 1 << 20;

/// Where the face listens and what it tells clients.
#[derive(Debug, Clone)]
pub struct RocketConfig {
    /// Host and port the route names (this node's gRPC endpoint).
    pub advertised_host: String,
    pub advertised_port: u16,
    /// Largest message body a producer may send.
    pub max_body_bytes: usize,
    /// Deliveries of a message to a consumer group before it goes to the group's
    /// dead-letter topic.
    pub max_delivery_attempts: u32,
    /// A route asked for a missing topic creates it with this many queues (Apache's
    /// proxy does not: `None`, the default).
    pub auto_create_queues: Option<i32>,
}

/// The dead-letter topic of a consumer group, as RocketMQ names it.
pub fn dead_letter_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// One consumer group's state on one message queue.
#[derive(Debug)]
pub struct QueueSub {
    pub sub: Subscription,
    /// Decoded records of the last batches read, by offset, so the leases of one receive
    /// do not read the same batch again.
    cache: Vec<Record>,
    /// When a consumer last received from it (the broker's clock).
    used_ms: i64,
}

type SubKey = (Arc<str>, Arc<str>, i32);

/// A consumer group's subscription to one message queue, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    pub group: String,
    pub topic: String,
    pub queue: i32,
    /// Every message below this offset is done for the group.
    pub committed: u64,
    pub in_flight: usize,
    pub retrying: usize,
}

#[derive(Debug)]
pub struct RocketBroker {
    pub topics: Arc<Topics>,
    pub config: RocketConfig,
    pub clock: Arc<dyn Clock>,
    subs: Mutex<HashMap<SubKey, Arc<Mutex<QueueSub>>>>,
    /// Committed offsets as stored when the face opened, and those of subscriptions
    /// dropped while idle since, for subscriptions made later.
    stored: Mutex<HashMap<SubKey, u64>>,
    offsets: OffsetStore,
    /// Delayed messages until their delivery time.
    delayed: Mutex<DelayStore>,
    /// Wakes the delivery of delayed messages when one is held.
    delay_wake: tokio::sync::Notify,
    /// Half messages of open transactions, scheduled at their next check-back.
    half: Mutex<DelayStore>,
    /// Check-backs sent per half message (since the process started).
    checks: Mutex<HashMap<u64, u32>>,
    /// Telemetry streams of producers, by the topics they publish to: where check-backs go.
    producers: Mutex<HashMap<String, Vec<Telemetry>>>,
    half_wake: tokio::sync::Notify,
    /// Consumer groups an administrator configured.
    groups: Mutex<crate::groups::Groups>,
    /// Deliveries to push consumers kept invisible while they are being processed.
    renewals: Mutex<Vec<Renewal>>,
    /// Signatures and permissions; `None`: calls are not signed.
    pub auth: Option<Arc<dyn crate::auth::Auth>>,
}

/// A push consumer's delivery that the broker renews until it is settled.
#[derive(Debug)]
struct Renewal {
    sub: Arc<Mutex<QueueSub>>,
    offset: u64,
    receipt: u64,
    since_ms: i64,
}

/// Invisible time of a push consumer's delivery (its receive names none), renewed while
/// the consumer holds it.
pub const AUTO_RENEW_INVISIBLE_MS: u64 = 60_000;
/// How often held push deliveries are renewed.
pub const AUTO_RENEW_EVERY_MS: u64 = 20_000;
/// Longest a push delivery is kept invisible by renewals (then it is redelivered).
pub const AUTO_RENEW_MAX_MS: i64 = 3 * 60 * 60 * 1000;

/// A group's subscription to a queue that holds nothing in flight, nothing to retry and
/// has not been received from for this long is dropped from memory; its committed offset
/// stays, and the next receive makes it again from there.
pub const SUBSCRIPTION_IDLE_MS: i64 = 10 * 60 * 1000;

/// How often idle subscriptions are looked for.
const EVICT_EVERY_MS: i64 = 60 * 1000;
/// Push deliveries renewed at most at once; past it, new ones are not renewed.
const RENEWALS_MAX: usize = 1_000_000;

/// A producer's Telemetry stream, for commands the server pushes.
pub type Telemetry = tokio::sync::mpsc::Sender<Result<crate::pb::TelemetryCommand, tonic::Status>>;

/// First check-back of an unresolved transaction (the Apache broker's
/// `transactionTimeOut`), unless the message names its own.
pub const TXN_CHECK_FIRST_MS: i64 = 6_000;
/// Between check-backs (the Apache broker's `transactionCheckInterval`).
pub const TXN_CHECK_INTERVAL_MS: i64 = 30_000;
/// Check-backs before an unresolved half message is rolled back (`transactionCheckMax`).
pub const TXN_CHECKS_MAX: u32 = 15;

/// How an EndTransaction went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndFailed {
    /// No open transaction has this id (resolved already, or never begun), or its
    /// message id does not match.
    Unknown,
    Append(AppendFailed),
}

/// Where an append went.
#[derive(Debug)]
pub struct Appended {
    pub base_offset: i64,
    /// The offset after the last message: durable once the log is synced past it.
    pub next_offset: u64,
    pub partition: Arc<Partition>,
}

/// Why a message could not be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendFailed {
    /// The topic or the queue does not exist (any more).
    NoQueue,
    Storage,
}

/// What a consumer gets for one leased record.
#[derive(Debug)]
pub struct Leased {
    pub record: Record,
    pub attempt: u32,
    pub receipt: u64,
}

impl RocketBroker {
    /// Opens the face's stored offsets under `dir`. Blocking.
    pub fn open(
        dir: &Path,
        log: &LogConfig,
        topics: Arc<Topics>,
        config: RocketConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let (offsets, stored) = OffsetStore::open(dir, log, Arc::clone(&clock))?;
        let groups = crate::groups::Groups::open(dir).map_err(|e| LogError::Io {
            path: dir.join("groups.json"),
            source: e,
        })?;
        let half = DelayStore::open(&dir.join("transactions"), log.clone(), Arc::clone(&clock))
            .map_err(|e| LogError::Io {
                path: dir.join("transactions"),
                source: std::io::Error::other(e.to_string()),
            })?;
        let delayed = DelayStore::open(&dir.join("delayed"), log.clone(), Arc::clone(&clock))
            .map_err(|e| LogError::Io {
                path: dir.join("delayed"),
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut committed = HashMap::new();
        for (group, per) in stored.offsets {
            let group: Arc<str> = group.as_str().into();
            for ((topic, partition), c) in per {
                let offset = u64::try_from(c.offset).unwrap_or(0);
                committed.insert(
                    (Arc::clone(&group), topic.as_str().into(), partition),
                    offset,
                );
            }
        }
        Ok(RocketBroker {
            topics,
            config,
            clock,
            subs: Mutex::new(HashMap::new()),
            stored: Mutex::new(committed),
            offsets,
            delayed: Mutex::new(delayed),
            delay_wake: tokio::sync::Notify::new(),
            half: Mutex::new(half),
            checks: Mutex::new(HashMap::new()),
            producers: Mutex::new(HashMap::new()),
            half_wake: tokio::sync::Notify::new(),
            groups: Mutex::new(groups),
            renewals: Mutex::new(Vec::new()),
            auth: None,
        })
    }

    /// Appends `messages` (with their system properties) to queue `queue` of `topic` as
    /// one batch.
    pub fn append(
        &self,
        topic: &str,
        queue: i32,
        messages: &[(&crate::pb::Message, &crate::pb::SystemProperties)],
    ) -> Result<Appended, AppendFailed> {
        let partition = self
            .topics
            .get(topic)
            .and_then(|t| t.partition(queue))
            .ok_or(AppendFailed::NoQueue)?;
        let now = self.clock.now_ms();
        let mut batch = BatchBuilder::default();
        for (message, system) in messages {
            crate::convert::push(&mut batch, message, system, now);
        }
        let bytes = bytes::Bytes::from(batch.finish());
        let info = BatchInfo {
            start: 0,
            len: bytes.len(),
            offsets: u32::try_from(messages.len()).unwrap_or(u32::MAX),
            max_timestamp: now,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
        };
        let produced = partition.append(&bytes, &[info], None).map_err(|e| {
            tracing::error!(topic, queue, error = ?e, "RocketMQ message not stored");
            AppendFailed::Storage
        })?;
        Ok(Appended {
            base_offset: produced.base_offset,
            next_offset: produced.next_offset,
            partition,
        })
    }

    /// Makes the held delayed and half messages durable (a send to a `flush=sync`
    /// topic). Blocking.
    pub fn sync_held(&self) -> Result<(), AppendFailed> {
        let sync = |store: &Mutex<DelayStore>| {
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sync()
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot sync held RocketMQ messages");
                    AppendFailed::Storage
                })
        };
        sync(&self.delayed)?;
        sync(&self.half)
    }

    /// Holds a delayed message until `due_ms`, then appends it to queue `queue` of
    /// `topic`.
    pub fn hold(
        &self,
        message: &crate::pb::Message,
        topic: &str,
        queue: i32,
        due_ms: i64,
    ) -> Result<(), AppendFailed> {
        let held = crate::convert::to_held(message, topic, queue);
        self.delayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hold(&held, due_ms)
            .map_err(|e| {
                tracing::error!(topic, error = %e, "delayed RocketMQ message not stored");
                AppendFailed::Storage
            })?;
        self.delay_wake.notify_one();
        Ok(())
    }

    /// Keeps a push consumer's delivery invisible, renewing it every
    /// `AUTO_RENEW_EVERY_MS`, until it is acked, changed or `AUTO_RENEW_MAX_MS` passed.
    pub fn track_renewal(&self, sub: &Arc<Mutex<QueueSub>>, offset: u64, receipt: u64) {
        let mut renewals = self.renewals.lock().unwrap_or_else(|p| p.into_inner());
        if renewals.len() < RENEWALS_MAX {
            renewals.push(Renewal {
                sub: Arc::clone(sub),
                offset,
                receipt,
                since_ms: self.clock.now_ms(),
            });
        }
    }

    /// One round of renewals: held push deliveries get `AUTO_RENEW_INVISIBLE_MS` from
    /// now; settled or expired ones are forgotten. Returns how many are held.
    pub fn renew_held(&self) -> usize {
        let now = self.clock.now_ms();
        let mut renewals = self.renewals.lock().unwrap_or_else(|p| p.into_inner());
        renewals.retain(|r| {
            if now.saturating_sub(r.since_ms) >= AUTO_RENEW_MAX_MS {
                return false;
            }
            let renew = Command::Renew {
                offset: r.offset,
                receipt: r.receipt,
                invisible_ms: AUTO_RENEW_INVISIBLE_MS,
            };
            let mut effects = Vec::new();
            let mut qs = r.sub.lock().unwrap_or_else(|p| p.into_inner());
            qs.sub.apply(renew, now, &mut effects);
            !effects.iter().any(|e| matches!(e, Effect::Refused(_)))
        });
        renewals.len()
    }

    /// Renews held push deliveries and drops idle subscriptions, for ever.
    pub async fn run_renewals(self: Arc<Self>) {
        let mut every =
            tokio::time::interval(std::time::Duration::from_millis(AUTO_RENEW_EVERY_MS));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut evicted_ms = self.clock.now_ms();
        loop {
            every.tick().await;
            self.renew_held();
            let now = self.clock.now_ms();
            if now.saturating_sub(evicted_ms) >= EVICT_EVERY_MS {
                evicted_ms = now;
                let dropped = self.evict_idle();
                if dropped > 0 {
                    tracing::debug!(dropped, "idle RocketMQ subscriptions dropped");
                }
            }
        }
    }

    /// Drops the subscriptions idle for `SUBSCRIPTION_IDLE_MS` (see there), keeping their
    /// committed offsets for the next use; returns how many. A subscription someone holds
    /// (a receive or ack under way, a renewal) is never idle: it is only dropped when the
    /// map holds its one reference, under the map's lock, so nobody can get it meanwhile.
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now_ms();
        let mut subs = self.subs();
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let before = subs.len();
        subs.retain(|key, sub| {
            if Arc::strong_count(sub) > 1 {
                return true;
            }
            let Ok(qs) = sub.try_lock() else {
                return true;
            };
            let idle = qs.sub.in_flight() == 0
                && qs.sub.retrying() == 0
                && qs.sub.parked() == 0
                && now.saturating_sub(qs.used_ms) >= SUBSCRIPTION_IDLE_MS;
            if idle {
                stored.insert(key.clone(), qs.sub.committed());
            }
            !idle
        });
        before - subs.len()
    }

    /// A consumer group's configuration (the defaults for one never configured).
    pub fn group(&self, name: &str) -> crate::groups::GroupConfig {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
    }

    /// Deliveries of a message to `group` before it is dead-lettered.
    pub fn max_delivery_attempts(&self, group: &str) -> u32 {
        self.group(group)
            .retry_max_times
            .map_or(self.config.max_delivery_attempts, |r| r.saturating_add(1))
            .max(1)
    }

    /// Configures a consumer group (stored durably). FIFO and the retry limit apply from
    /// the next receive on. Blocking.
    pub fn set_group(&self, name: &str, config: crate::groups::GroupConfig) -> Result<(), String> {
        if !crate::groups::valid_name(name) {
            return Err(format!("consumer group name {name:?} is not valid"));
        }
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(name, config)
            .map_err(|e| format!("cannot store the group: {e}"))?;
        let held: Vec<Arc<Mutex<QueueSub>>> = self
            .subs()
            .iter()
            .filter(|(key, _)| &*key.0 == name)
            .map(|(_, sub)| Arc::clone(sub))
            .collect();
        let policy = self.retry_policy(name);
        for sub in held {
            let mut qs = sub.lock().unwrap_or_else(|p| p.into_inner());
            qs.sub.set_policy(policy);
        }
        Ok(())
    }

    /// Redelivery follows the invisible time the consumer chose, with no backoff of its
    /// own; past the group's last attempt a message goes to the dead-letter topic.
    fn retry_policy(&self, group: &str) -> Policy {
        Policy {
            max_attempts: self.max_delivery_attempts(group),
            backoff_ms: 0,
            multiplier: 1,
            backoff_max_ms: 0,
        }
    }

    /// Creates a topic with `queues` message queues and a message type (a stream, also
    /// a Kafka topic); `Ok(false)` if it exists already. Blocking.
    pub fn create_topic(
        &self,
        name: &str,
        queues: i32,
        message_type: &str,
    ) -> Result<bool, String> {
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert("message.type".to_string(), message_type.to_string());
        match self.topics.create(name, queues, overrides) {
            Ok(_) => Ok(true),
            Err(e) if e.kind == sluice_engine::stream::RefusalKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.message),
        }
    }

    /// Stores a half message: invisible until its transaction commits. Returns the
    /// transaction id.
    pub fn begin_transaction(
        &self,
        message: &crate::pb::Message,
        topic: &str,
        queue: i32,
    ) -> Result<String, AppendFailed> {
        let first = message
            .system_properties
            .as_ref()
            .and_then(|s| s.orphaned_transaction_recovery_duration.as_ref())
            .map(|d| i64::try_from(crate::convert::duration_ms(d)).unwrap_or(i64::MAX))
            .filter(|ms| *ms > 0)
            .unwrap_or(TXN_CHECK_FIRST_MS);
        let held = crate::convert::to_held(message, topic, queue);
        let due = self.clock.now_ms().saturating_add(first);
        let offset = self
            .half
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hold(&held, due)
            .map_err(|e| {
                tracing::error!(topic, error = %e, "half message not stored");
                AppendFailed::Storage
            })?;
        self.half_wake.notify_one();
        Ok(format!("{offset:016X}"))
    }

    /// Commits (the half message is appended to its queue) or rolls back (it is
    /// dropped) the transaction `transaction_id` of message `message_id`.
    pub fn end_transaction(
        &self,
        transaction_id: &str,
        message_id: &str,
        commit: bool,
    ) -> Result<(), EndFailed> {
        let offset = u64::from_str_radix(transaction_id, 16).map_err(|_| EndFailed::Unknown)?;
        let mut half = self.half.lock().unwrap_or_else(|p| p.into_inner());
        let held = half.take(offset).ok_or(EndFailed::Unknown)?;
        let Some((topic, queue, message)) = crate::convert::from_held(&held) else {
            let _ = half.release(&[offset]);
            return Err(EndFailed::Unknown);
        };
        let system = message.system_properties.clone().unwrap_or_default();
        if system.message_id != message_id {
            // Not this transaction's message: it stays open.
            half.again(offset, self.clock.now_ms());
            return Err(EndFailed::Unknown);
        }
        if commit && let Err(e) = self.append(&topic, queue, &[(&message, &system)]) {
            half.again(offset, self.clock.now_ms().saturating_add(1_000));
            return Err(EndFailed::Append(e));
        }
        if let Err(e) = half.release(&[offset]) {
            tracing::error!(error = %e, "cannot release a resolved half message");
        }
        drop(half);
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&offset);
        Ok(())
    }

    /// Registers a producer's Telemetry stream for check-backs of `topic`, if the topic
    /// exists (clients name topics freely: the registry holds only real ones).
    pub fn register_producer(&self, topic: &str, stream: &Telemetry) {
        if self.topics.get(topic).is_none() {
            return;
        }
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        let list = producers.entry(topic.to_string()).or_default();
        list.retain(|s| !s.is_closed());
        if !list.iter().any(|s| s.same_channel(stream)) {
            list.push(stream.clone());
        }
    }

    /// Sends check-backs for unresolved transactions as they come due, for ever.
    pub async fn run_checks(self: Arc<Self>) {
        self.run_rounds(RocketBroker::check_due, |b| &b.half_wake)
            .await;
    }

    /// Runs `round` (blocking file work, off the async workers) whenever what it
    /// returned as the next due time comes, or `wake` fires, for ever.
    async fn run_rounds(
        self: Arc<Self>,
        round: fn(&RocketBroker) -> Option<i64>,
        wake: fn(&RocketBroker) -> &tokio::sync::Notify,
    ) {
        loop {
            let broker = Arc::clone(&self);
            let next = tokio::task::spawn_blocking(move || round(&broker))
                .await
                .unwrap_or(None);
            let now = self.clock.now_ms();
            let wait = match next {
                Some(due) if due <= now => continue,
                Some(due) => {
                    std::time::Duration::from_millis(u64::try_from(due - now).unwrap_or(0))
                }
                None => std::time::Duration::from_secs(3600),
            };
            let _ = tokio::time::timeout(wait, wake(&self).notified()).await;
        }
    }

    /// One round of check-backs: each due half message is pushed to a producer of its
    /// topic and checked again later; one checked `TXN_CHECKS_MAX` times is rolled back.
    /// Returns when the next one is due. Blocking (reads the store).
    pub fn check_due(&self) -> Option<i64> {
        const ROUND_MAX: usize = 256;
        let now = self.clock.now_ms();
        let mut due = Vec::new();
        let mut half = self.half.lock().unwrap_or_else(|p| p.into_inner());
        half.due(now, ROUND_MAX, &mut due);
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let mut send = Vec::new();
        let mut dropped = Vec::new();
        for (offset, held) in due {
            let count = checks.entry(offset).or_insert(0);
            *count += 1;
            if *count > TXN_CHECKS_MAX {
                tracing::warn!(
                    offset,
                    "transaction unresolved after {TXN_CHECKS_MAX} check-backs; rolled back"
                );
                checks.remove(&offset);
                dropped.push(offset);
                continue;
            }
            // Scheduled again before anything is sent, so an EndTransaction answering
            // this check finds it.
            half.again(offset, now.saturating_add(TXN_CHECK_INTERVAL_MS));
            if let Some(found) = crate::convert::from_held(&held) {
                send.push((offset, found));
            }
        }
        if let Err(e) = half.release(&dropped) {
            tracing::error!(error = %e, "cannot release rolled-back half messages");
        }
        let next = half.next_due();
        drop(checks);
        drop(half);
        for (offset, (topic, _, mut message)) in send {
            crate::convert::add_digest(&mut message);
            let command = crate::pb::TelemetryCommand {
                status: None,
                command: Some(
                    crate::pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                        crate::pb::RecoverOrphanedTransactionCommand {
                            message: Some(message),
                            transaction_id: format!("{offset:016X}"),
                        },
                    ),
                ),
            };
            let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
            let list = producers.entry(topic.clone()).or_default();
            list.retain(|s| !s.is_closed());
            // One producer of the topic is asked; a full stream waits for the next round.
            if let Some(stream) = list.first()
                && stream.try_send(Ok(command)).is_err()
            {
                tracing::debug!(topic, "check-back not sent: producer stream full");
            }
        }
        next
    }

    /// Delivers the delayed messages that are due, as they come due, for ever.
    pub async fn run_delays(self: Arc<Self>) {
        self.run_rounds(|b| b.deliver_due(1024), |b| &b.delay_wake)
            .await;
    }

    /// One round: appends up to `max` due messages to their queues and releases them;
    /// returns when the next one is due. Blocking.
    pub fn deliver_due(&self, max: usize) -> Option<i64> {
        let now = self.clock.now_ms();
        let mut due = Vec::new();
        self.delayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now, max, &mut due);
        let mut done = Vec::with_capacity(due.len());
        let mut failed = Vec::new();
        for (offset, held) in &due {
            let Some((topic, queue, message)) = crate::convert::from_held(held) else {
                tracing::error!(offset, "undecodable delayed RocketMQ message dropped");
                done.push(*offset);
                continue;
            };
            let system = message.system_properties.clone().unwrap_or_default();
            match self.append(&topic, queue, &[(&message, &system)]) {
                Ok(_) => done.push(*offset),
                Err(AppendFailed::NoQueue) => {
                    tracing::warn!(topic, queue, "delayed message's queue is gone; dropped");
                    done.push(*offset);
                }
                Err(AppendFailed::Storage) => failed.push(*offset),
            }
        }
        let mut delayed = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
        // Tried again in a second: the log may recover (or the process restarts).
        for offset in failed {
            delayed.again(offset, now.saturating_add(1_000));
        }
        if let Err(e) = delayed.release(&done) {
            tracing::error!(error = %e, "cannot release delivered delayed messages");
        }
        if !done.is_empty() {
            delayed.maintain();
        }
        delayed.next_due()
    }

    /// Delayed messages waiting for their time, and half messages of open transactions,
    /// each with the time of the next one due (ms since the epoch).
    pub fn held_counts(&self) -> ((usize, Option<i64>), (usize, Option<i64>)) {
        let d = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
        let h = self.half.lock().unwrap_or_else(|p| p.into_inner());
        ((d.len(), d.next_due()), (h.len(), h.next_due()))
    }

    /// Every consumer group's subscription to a queue now, sorted by group, topic and
    /// queue, for operators.
    pub fn subscription_stats(&self) -> Vec<SubscriptionStats> {
        let held: Vec<(SubKey, Arc<Mutex<QueueSub>>)> = self
            .subs()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let mut out: Vec<SubscriptionStats> = held
            .into_iter()
            .map(|((group, topic, queue), sub)| {
                let qs = sub.lock().unwrap_or_else(|p| p.into_inner());
                SubscriptionStats {
                    group: group.to_string(),
                    topic: topic.to_string(),
                    queue,
                    committed: qs.sub.committed(),
                    in_flight: qs.sub.in_flight(),
                    retrying: qs.sub.retrying(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.group, &a.topic, a.queue).cmp(&(&b.group, &b.topic, b.queue)));
        out
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<SubKey, Arc<Mutex<QueueSub>>>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group's subscription to one queue if it has one: a delivery's receipt can
    /// only be valid in a subscription that exists.
    pub fn existing_subscription(
        &self,
        group: &str,
        topic: &str,
        index: i32,
    ) -> Option<Arc<Mutex<QueueSub>>> {
        let key: SubKey = (group.into(), topic.into(), index);
        self.subs().get(&key).cloned()
    }

    /// The group's subscription to one queue, made on first use from the stored
    /// committed offset (or the queue's start: a new group reads what is retained).
    /// `None` when `SUBSCRIPTIONS_MAX` are held and this would be a new one.
    pub fn subscription(
        &self,
        group: &str,
        topic: &str,
        partition: &Partition,
        index: i32,
    ) -> Option<Arc<Mutex<QueueSub>>> {
        let key: SubKey = (group.into(), topic.into(), index);
        if let Some(s) = self.subs().get(&key) {
            return Some(Arc::clone(s));
        }
        if self.subs().len() >= SUBSCRIPTIONS_MAX {
            return None;
        }
        let (log_start, _) = partition.offsets();
        let committed = self
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0)
            .max(u64::try_from(log_start).unwrap_or(0));
        let policy = self.retry_policy(group);
        let made = Arc::new(Mutex::new(QueueSub {
            sub: Subscription::new(policy, committed),
            cache: Vec::new(),
            used_ms: self.clock.now_ms(),
        }));
        Some(Arc::clone(self.subs().entry(key).or_insert(made)))
    }

    /// Leases up to `max` records of `partition` for `invisible_ms`: due redeliveries
    /// first, then new records. Messages past their last attempt are moved to `group`'s
    /// dead-letter topic. Commits are returned for storing.
    #[allow(clippy::too_many_arguments)]
    pub fn receive(
        &self,
        group: &str,
        topic: &str,
        sub: &Mutex<QueueSub>,
        partition: &Partition,
        max: usize,
        invisible_ms: u64,
        commits: &mut Vec<u64>,
    ) -> Vec<Leased> {
        let now = self.clock.now_ms();
        let fifo = self.group(group).fifo;
        let (start, end) = partition.offsets();
        let start = u64::try_from(start).unwrap_or(0);
        let end = u64::try_from(end).unwrap_or(0);
        let mut guard = sub.lock().unwrap_or_else(|p| p.into_inner());
        let qs = &mut *guard;
        qs.used_ms = now;
        let mut effects = Vec::new();
        qs.sub.apply(
            Command::Receive {
                max,
                invisible_ms,
                end,
            },
            now,
            &mut effects,
        );
        let mut out = Vec::new();
        for effect in effects {
            match effect {
                Effect::Deliver(lease) => {
                    // Below the log start (removed by retention before it was read), or
                    // a control record or hole (a transaction marker takes an offset and
                    // holds no message): nothing to hand out, so done for this group.
                    let record = (lease.offset >= start)
                        .then(|| read_at(partition, &mut qs.cache, lease.offset))
                        .flatten();
                    match record {
                        Some(record) => {
                            // In a FIFO consumer group, a message of a message group
                            // waits for the earlier ones.
                            if fifo
                                && let Some(group) = message_group(&record)
                                && !qs.sub.claim(lease.offset, lease.receipt, group)
                            {
                                continue;
                            }
                            out.push(Leased {
                                record,
                                attempt: lease.attempt,
                                receipt: lease.receipt,
                            });
                        }
                        None => {
                            let mut done = Vec::new();
                            let ack = Command::Ack {
                                offset: lease.offset,
                                receipt: lease.receipt,
                            };
                            qs.sub.apply(ack, now, &mut done);
                            commits.extend(done.iter().filter_map(commit_of));
                        }
                    }
                }
                Effect::Commit(c) => commits.push(c),
                Effect::DeadLetter(offset) => {
                    if let Some(record) = read_at(partition, &mut qs.cache, offset) {
                        self.dead_letter(group, topic, &record);
                    }
                }
                Effect::Refused(_) => {}
            }
        }
        out
    }

    /// Copies `record` of `topic` to `group`'s dead-letter topic (made on first use),
    /// marked with where it came from. A failure is logged: the message is done for the
    /// group either way, as a message past its last attempt is in RocketMQ.
    pub fn dead_letter(&self, group: &str, topic: &str, record: &Record) {
        let dlq = dead_letter_topic(group);
        let target = match self.topics.get(&dlq) {
            Some(t) => Ok(t),
            None => self.topics.create_internal(&dlq, 1).or_else(|e| {
                // Made by a concurrent dead letter meanwhile.
                self.topics.get(&dlq).ok_or(e)
            }),
        };
        let partition = match target.map(|t| t.partition(0)) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(topic = %dlq, error = %e.message, "cannot create a dead-letter topic");
                return;
            }
        };
        let mut batch = BatchBuilder::default();
        crate::convert::push_dead_letter(&mut batch, record, topic);
        let bytes = bytes::Bytes::from(batch.finish());
        let info = BatchInfo {
            start: 0,
            len: bytes.len(),
            offsets: 1,
            max_timestamp: record.timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
        };
        if let Err(e) = partition.append(&bytes, &[info], None) {
            tracing::error!(topic = %dlq, error = ?e, "dead letter not stored");
        }
    }

    /// Moves the delivery `offset` / `receipt` of `group` on `partition` to the group's
    /// dead-letter topic now (ForwardMessageToDeadLetterQueue); `false` if no such
    /// delivery is in flight.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_to_dead_letter(
        &self,
        group: &str,
        topic: &str,
        sub: &Mutex<QueueSub>,
        partition: &Partition,
        offset: u64,
        receipt: u64,
        commits: &mut Vec<u64>,
    ) -> bool {
        let now = self.clock.now_ms();
        let mut qs = sub.lock().unwrap_or_else(|p| p.into_inner());
        let qs = &mut *qs;
        let Some(record) = read_at(partition, &mut qs.cache, offset) else {
            return false;
        };
        let mut effects = Vec::new();
        qs.sub
            .apply(Command::Ack { offset, receipt }, now, &mut effects);
        if effects.iter().any(|e| matches!(e, Effect::Refused(_))) {
            return false;
        }
        commits.extend(effects.iter().filter_map(commit_of));
        self.dead_letter(group, topic, &record);
        true
    }

    /// Applies an ack or an extension; `Ok` with the new receipt for an extension.
    pub fn settle(
        &self,
        sub: &Mutex<QueueSub>,
        command: Command,
        commits: &mut Vec<u64>,
    ) -> Result<Option<u64>, LeaseError> {
        let now = self.clock.now_ms();
        let mut qs = sub.lock().unwrap_or_else(|p| p.into_inner());
        let mut effects = Vec::new();
        qs.sub.apply(command, now, &mut effects);
        let mut receipt = None;
        for effect in effects {
            match effect {
                Effect::Refused(e) => return Err(e),
                Effect::Deliver(lease) => receipt = Some(lease.receipt),
                Effect::Commit(c) => commits.push(c),
                Effect::DeadLetter(_) => {}
            }
        }
        Ok(receipt)
    }

    /// When the group's next lease on this queue ends (a redelivery becomes due).
    pub fn next_due(sub: &Mutex<QueueSub>) -> Option<i64> {
        sub.lock().unwrap_or_else(|p| p.into_inner()).sub.next_due()
    }

    /// Stores a group's committed offset on a queue (fsynced before it returns).
    pub async fn commit(&self, group: &str, topic: &str, partition: i32, offset: u64) {
        self.commit_many(group, topic, &[(partition, offset)]).await;
    }

    /// Stores a group's committed offsets on several queues with one fsync.
    pub async fn commit_many(&self, group: &str, topic: &str, offsets: &[(i32, u64)]) {
        let changes: Vec<Change> = offsets
            .iter()
            .map(|&(partition, offset)| Change::Commit {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
                committed: Committed {
                    offset: i64::try_from(offset).unwrap_or(i64::MAX),
                    leader_epoch: -1,
                    metadata: None,
                },
            })
            .collect();
        if let Err(e) = self.offsets.persist(&changes).await {
            tracing::error!(group, topic, error = %e, "cannot store a RocketMQ group's offsets");
        }
    }

    /// Makes the stored offsets and delayed messages durable (clean shutdown). Blocking.
    pub fn close(&self) {
        if let Err(e) = self.offsets.sync() {
            tracing::error!(error = %e, "cannot sync RocketMQ offsets");
        }
        let mut delayed = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = delayed.sync() {
            tracing::error!(error = %e, "cannot sync delayed RocketMQ messages");
        }
        let mut half = self.half.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = half.sync() {
            tracing::error!(error = %e, "cannot sync RocketMQ half messages");
        }
    }

    /// Compacts the offsets log when it has grown. Blocking.
    pub fn maintain(&self) {
        if let Err(e) = self.offsets.compact_if_due() {
            tracing::error!(error = %e, "cannot compact RocketMQ offsets");
        }
    }
}

/// The message group of a record sent as a FIFO message, as a key.
fn message_group(record: &Record) -> Option<u64> {
    use prost::Message as _;
    use std::hash::{Hash, Hasher};
    let (_, value) = record
        .headers
        .iter()
        .find(|(k, _)| k.as_ref() == crate::convert::SYSTEM_HEADER)?;
    let system = crate::pb::SystemProperties::decode(value.as_ref()?.as_ref()).ok()?;
    let group = system.message_group?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    group.hash(&mut hasher);
    Some(hasher.finish())
}

fn commit_of(effect: &Effect) -> Option<u64> {
    match effect {
        Effect::Commit(c) => Some(*c),
        _ => None,
    }
}

/// The record at `offset`, from `cache` or read into it.
fn read_at(partition: &Partition, cache: &mut Vec<Record>, offset: u64) -> Option<Record> {
    let cached = |cache: &Vec<Record>| {
        cache
            .binary_search_by_key(&offset, |r| r.offset)
            .ok()
            .and_then(|i| cache.get(i).cloned())
    };
    if let Some(r) = cached(cache) {
        return Some(r);
    }
    let batches = partition.read_batches(offset, READ_BYTES).ok()?;
    cache.clear();
    for batch in &batches {
        if let Err(e) = read_batch(&batch.payload, cache) {
            tracing::warn!(offset = batch.base_offset, error = ?e, "unreadable batch skipped by a RocketMQ consumer");
        }
    }
    cached(cache)
}

/// Receipt handles name the queue, the offset and the lease: `<queue>.<offset>.<receipt>`
/// in hex, so an ack finds its subscription without a lookup table.
pub fn receipt_handle(queue: i32, offset: u64, receipt: u64) -> String {
    format!("{queue:x}.{offset:x}.{receipt:x}")
}

pub fn parse_receipt_handle(handle: &str) -> Option<(i32, u64, u64)> {
    let mut parts = handle.split('.');
    let queue = i32::from_str_radix(parts.next()?, 16).ok()?;
    let offset = u64::from_str_radix(parts.next()?, 16).ok()?;
    let receipt = u64::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() || queue < 0 {
        return None;
    }
    Some((queue, offset, receipt))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use sluice_core::ManualClock;
    use sluice_engine::stream::TopicConfig;

    fn broker(dir: &Path, clock: &ManualClock) -> RocketBroker {
        let log = LogConfig::default();
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let topics = Topics::open(
            &dir.join("kafka"),
            TopicConfig::default(),
            log.clone(),
            Arc::clone(&clock),
            100,
            100,
        )
        .unwrap();
        let config = RocketConfig {
            advertised_host: "127.0.0.1".into(),
            advertised_port: 8081,
            max_body_bytes: 1 << 20,
            max_delivery_attempts: 17,
            auto_create_queues: None,
        };
        RocketBroker::open(&dir.join("rocketmq"), &log, Arc::new(topics), config, clock).unwrap()
    }

    /// A push consumer's delivery stays invisible past its 60 s while renewals run, and
    /// comes back once they stop (the consumer went away without settling it).
    #[test]
    fn held_push_deliveries_are_renewed_until_settled_or_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let b = broker(dir.path(), &clock);
        assert!(b.create_topic("t", 1, "MIXED").unwrap());
        let message = crate::pb::Message {
            system_properties: Some(crate::pb::SystemProperties {
                message_id: "01".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let system = message.system_properties.clone().unwrap();
        b.append("t", 0, &[(&message, &system)]).unwrap();
        let partition = b.topics.get("t").unwrap().partition(0).unwrap();
        let sub = b.subscription("g", "t", &partition, 0).unwrap();
        let mut commits = Vec::new();
        let receive = |commits: &mut Vec<u64>| {
            b.receive(
                "g",
                "t",
                &sub,
                &partition,
                10,
                AUTO_RENEW_INVISIBLE_MS,
                commits,
            )
        };
        let [first] = <[Leased; 1]>::try_from(receive(&mut commits)).unwrap();
        b.track_renewal(&sub, first.record.offset, first.receipt);
        for _ in 0..5 {
            clock.advance_ms(AUTO_RENEW_EVERY_MS as i64);
            assert_eq!(b.renew_held(), 1);
            assert!(receive(&mut commits).is_empty(), "renewed: still invisible");
        }
        // The consumer is gone: renewals stop once the limit passes.
        clock.advance_ms(AUTO_RENEW_MAX_MS);
        assert_eq!(b.renew_held(), 0);
        let again = receive(&mut commits);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].attempt, again[0].record.offset), (2, 0));
        // Settled: nothing left to renew.
        b.track_renewal(&sub, 0, again[0].receipt);
        b.settle(
            &sub,
            Command::Ack {
                offset: 0,
                receipt: again[0].receipt,
            },
            &mut commits,
        )
        .unwrap();
        assert_eq!(b.renew_held(), 0);
        assert_eq!(commits.last(), Some(&1));
    }

    /// A subscription is dropped only when idle (nothing in flight, unused for
    /// `SUBSCRIPTION_IDLE_MS`, held by nobody), and comes back at its committed offset.
    #[test]
    fn idle_subscriptions_are_dropped_and_resume_at_their_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let b = broker(dir.path(), &clock);
        assert!(b.create_topic("t", 1, "MIXED").unwrap());
        for id in ["01", "02", "03"] {
            let message = crate::pb::Message {
                system_properties: Some(crate::pb::SystemProperties {
                    message_id: id.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let system = message.system_properties.clone().unwrap();
            b.append("t", 0, &[(&message, &system)]).unwrap();
        }
        let partition = b.topics.get("t").unwrap().partition(0).unwrap();
        let receive = |n: usize| {
            let sub = b.subscription("g", "t", &partition, 0).unwrap();
            let mut commits = Vec::new();
            let leased = b.receive("g", "t", &sub, &partition, n, 3_600_000, &mut commits);
            (sub, leased)
        };
        // Two leased, one acked: the other is in flight.
        let (sub, leased) = receive(2);
        let mut commits = Vec::new();
        let ack = |l: &Leased, commits: &mut Vec<u64>| {
            let sub = b.existing_subscription("g", "t", 0).unwrap();
            let ack = Command::Ack {
                offset: l.record.offset,
                receipt: l.receipt,
            };
            b.settle(&sub, ack, commits).unwrap();
        };
        ack(&leased[0], &mut commits);
        drop(sub);
        clock.advance_ms(SUBSCRIPTION_IDLE_MS / 2);
        assert_eq!(b.evict_idle(), 0, "a delivery is in flight");
        ack(&leased[1], &mut commits);
        assert_eq!(b.evict_idle(), 0, "received from 5 minutes ago");
        clock.advance_ms(SUBSCRIPTION_IDLE_MS / 2);
        let held = b.existing_subscription("g", "t", 0).unwrap();
        assert_eq!(b.evict_idle(), 0, "held by a caller");
        drop(held);
        assert_eq!(b.evict_idle(), 1);
        assert!(b.existing_subscription("g", "t", 0).is_none());
        let (_sub, back) = receive(3);
        let offsets: Vec<u64> = back.iter().map(|l| l.record.offset).collect();
        assert_eq!(
            offsets,
            vec![2],
            "resumes at the committed offset: 0 and 1 stay done"
        );
    }

    #[test]
    fn receipt_handles_round_trip_and_garbage_is_refused() {
        let h = receipt_handle(3, 0xdead_beef, 42);
        assert_eq!(parse_receipt_handle(&h), Some((3, 0xdead_beef, 42)));
        for bad in ["", "1.2", "1.2.3.4", "x.1.1", "-1.1.1", "1..1"] {
            assert_eq!(parse_receipt_handle(bad), None, "{bad}");
        }
    }
}
