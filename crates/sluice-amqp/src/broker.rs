//! The broker as the AMQP face sees it: the engine's virtual hosts, users, limits and
//! resource alarms, and how the engine's queues reach AMQP connections (`Outbound`
//! items in a connection's outbox).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use sluice_core::{Message, SystemClock, Table};
use sluice_engine::queue::{ConsumerId, DeathReason, Entry};
use sluice_engine::routing::RouterLimits;
use sluice_engine::store::LogConfig;
use sluice_engine::stream::{Partition, Topics};
use sluice_engine::vhost::{self, Definitions, Face, QueueRecord, QueueSettings};
use tokio::sync::mpsc;

pub use sluice_engine::vhost::{
    ChannelCredit, Confirm, Confirms, ConnectionId, Flow, OpenError, QueueCell, QueueDef, VHost,
};

/// Work for a connection task that comes from outside it.
#[derive(Debug)]
pub enum Outbound {
    /// An operator closes the connection (`connection.close` 320 CONNECTION_FORCED).
    Close { reason: String },
    /// The management API asks what the connection's channels hold.
    Describe(tokio::sync::oneshot::Sender<Vec<ChannelInfo>>),
    Deliver {
        channel: u16,
        consumer: ConsumerId,
        tag: Arc<str>,
        no_ack: bool,
        queue: Arc<QueueCell>,
        entry: Entry,
        flow: Arc<Flow>,
        credit: Option<Arc<ChannelCredit>>,
    },
    /// The queue behind a consumer went away: tell the client (`basic.cancel`).
    Cancelled {
        channel: u16,
        consumer: ConsumerId,
        tag: Arc<str>,
    },
    /// A record for a consumer of a stream queue.
    Stream {
        channel: u16,
        consumer: ConsumerId,
        tag: Arc<str>,
        credit: Arc<crate::stream_queue::StreamCredit>,
        /// The stream queue's name and vhost.
        queue: Arc<str>,
        vhost: Arc<str>,
        /// Boxed: keeps every outbound item (queue deliveries above all) small.
        delivery: Box<crate::convert::Delivery>,
    },
    /// A reply for a direct reply-to consumer (`amq.rabbitmq.reply-to`).
    Direct {
        channel: u16,
        tag: Arc<str>,
        message: Arc<Message>,
    },
}

pub type Outbox = mpsc::Sender<Outbound>;

/// A queue consumer's way to its connection: `basic.deliver`s through the outbox.
#[derive(Debug)]
pub struct ConsumerSink {
    pub outbox: Outbox,
    pub channel: u16,
    pub tag: Arc<str>,
    pub no_ack: bool,
    pub flow: Arc<Flow>,
    pub credit: Option<Arc<ChannelCredit>>,
}

impl vhost::Sink for ConsumerSink {
    fn deliver(
        &self,
        queue: &Arc<QueueCell>,
        consumer: ConsumerId,
        entry: Entry,
    ) -> Result<(), Entry> {
        let item = Outbound::Deliver {
            channel: self.channel,
            consumer,
            tag: Arc::clone(&self.tag),
            no_ack: self.no_ack,
            queue: Arc::clone(queue),
            entry,
            flow: Arc::clone(&self.flow),
            credit: self.credit.clone(),
        };
        match self.outbox.try_send(item) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                Outbound::Deliver { entry, .. } => Err(entry),
                // What went in was a delivery; nothing else can come back.
                _ => Ok(()),
            },
        }
    }

    fn cancelled(&self, consumer: ConsumerId) {
        let _ = self.outbox.try_send(Outbound::Cancelled {
            channel: self.channel,
            consumer,
            tag: Arc::clone(&self.tag),
        });
    }
}

/// A direct reply-to consumer: its connection's outbox, channel and consumer tag.
#[derive(Debug)]
pub struct DirectReply {
    pub outbox: Outbox,
    pub channel: u16,
    pub tag: Arc<str>,
}

impl vhost::Reply for DirectReply {
    fn send(&self, message: Arc<Message>) -> bool {
        self.outbox
            .try_send(Outbound::Direct {
                channel: self.channel,
                tag: Arc::clone(&self.tag),
                message,
            })
            .is_ok()
    }
}

/// AMQP's side of the engine's virtual hosts: messages carry AMQP basic properties,
/// dead letters get RabbitMQ's `x-death`, stream records follow `convert.rs`, and the
/// definitions file stores arguments as AMQP field tables.
#[derive(Debug)]
pub struct AmqpFace;

impl Face for AmqpFace {
    fn headers(&self, message: &Message) -> Option<Table> {
        crate::props::read_known(&message.properties, true)
            .ok()
            .and_then(|k| k.headers)
    }

    fn dead_lettered(
        &self,
        message: &Message,
        queue: &str,
        reason: DeathReason,
        exchange: &str,
        key: &str,
    ) -> Option<Message> {
        crate::dead_letter::dead_lettered(message, queue, reason, exchange, key)
    }

    fn append_to_stream(&self, partition: &Partition, message: &Message, now_ms: i64) -> bool {
        crate::stream_queue::publish(partition, message, now_ms).is_ok()
    }

    fn queue_settings(&self, arguments: &Table, auto_delete: bool) -> QueueSettings {
        crate::args::queue_settings(arguments, true, false, auto_delete).unwrap_or_default()
    }

    fn load_definitions(&self, path: &Path) -> std::io::Result<Definitions> {
        crate::definitions::load(path)
    }

    fn save_definitions(&self, definitions: &Definitions, path: &Path) -> std::io::Result<()> {
        crate::definitions::save(definitions, path)
    }

    fn encode_queue(&self, record: &QueueRecord) -> Vec<u8> {
        crate::definitions::encode(&Definitions {
            queues: vec![record.clone()],
            ..Definitions::default()
        })
    }

    fn decode_queue(&self, bytes: &[u8]) -> Option<QueueRecord> {
        crate::definitions::decode(bytes)?.queues.pop()
    }
}

/// Resource alarms: while one is raised, connections that publish are blocked
/// (`connection.blocked`) and not read from, as RabbitMQ does.
#[derive(Debug)]
pub struct Alarms {
    memory: AtomicBool,
    disk: AtomicBool,
    /// Resident memory above which the memory alarm goes off.
    memory_limit_bytes: AtomicU64,
    disk_free_limit_bytes: AtomicU64,
}

impl Default for Alarms {
    fn default() -> Self {
        Alarms {
            memory: AtomicBool::new(false),
            disk: AtomicBool::new(false),
            memory_limit_bytes: AtomicU64::new(u64::MAX),
            disk_free_limit_bytes: AtomicU64::new(0),
        }
    }
}

impl Alarms {
    pub fn set_limits(&self, memory_limit_bytes: u64, disk_free_limit_bytes: u64) {
        self.memory_limit_bytes
            .store(memory_limit_bytes, Ordering::Relaxed);
        self.disk_free_limit_bytes
            .store(disk_free_limit_bytes, Ordering::Relaxed);
    }

    /// Updates the alarms from measurements; returns whether any changed.
    pub fn update(&self, resident_bytes: u64, disk_free_bytes: u64) -> bool {
        let memory = resident_bytes > self.memory_limit_bytes.load(Ordering::Relaxed);
        let disk = disk_free_bytes < self.disk_free_limit_bytes.load(Ordering::Relaxed);
        let was_memory = self.memory.swap(memory, Ordering::AcqRel);
        let was_disk = self.disk.swap(disk, Ordering::AcqRel);
        if memory != was_memory {
            tracing::warn!(resident_bytes, alarm = memory, "memory alarm");
        }
        if disk != was_disk {
            tracing::warn!(disk_free_bytes, alarm = disk, "disk alarm");
        }
        memory != was_memory || disk != was_disk
    }

    pub fn memory_limit(&self) -> u64 {
        self.memory_limit_bytes.load(Ordering::Relaxed)
    }

    pub fn disk_free_limit(&self) -> u64 {
        self.disk_free_limit_bytes.load(Ordering::Relaxed)
    }

    /// Why publishers are blocked now, if they are.
    pub fn reason(&self) -> Option<&'static str> {
        match (
            self.memory.load(Ordering::Acquire),
            self.disk.load(Ordering::Acquire),
        ) {
            (true, true) => Some("low on memory and disk space"),
            (true, false) => Some("low on memory"),
            (false, true) => Some("low on disk space"),
            (false, false) => None,
        }
    }
}

/// What clients of one broker may create: per virtual host, queues, exchanges and
/// bindings; per channel, consumers. Recovery restores what was stored whatever these say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmqpLimits {
    pub queues_max: usize,
    pub exchanges_max: usize,
    pub bindings_max: usize,
    pub consumers_per_channel_max: usize,
}

impl Default for AmqpLimits {
    fn default() -> Self {
        AmqpLimits {
            queues_max: 100_000,
            exchanges_max: 10_000,
            bindings_max: 1_000_000,
            consumers_per_channel_max: 10_000,
        }
    }
}

/// The broker as the AMQP face sees it.
#[derive(Debug)]
pub struct Broker {
    vhosts: HashMap<String, Arc<VHost>>,
    pub limits: AmqpLimits,
    /// Who may log in and what each may do (`guest`/`guest` by default).
    pub users: crate::users::UserStore,
    next_id: AtomicU64,
    pub message_bytes_max: usize,
    pub alarms: Alarms,
    /// AMQP channels open now (each channel holds an `OpenCount`).
    pub channels_open: Arc<AtomicUsize>,
    /// AMQP connections open now.
    pub connections_open: Arc<AtomicUsize>,
    /// The connections that completed their handshake, for the management API.
    pub connections: Arc<Connections>,
    pub stats: Arc<MessageStats>,
}

/// An open AMQP connection as operators see it (registered once it is open).
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: ConnectionId,
    /// RabbitMQ's name: `peer -> local`.
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub connected_at_ms: i64,
    pub user: String,
    pub vhost: String,
    pub auth_mechanism: String,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat_s: u16,
    /// The client's `client_properties` (connection name, product, version, platform).
    pub client_properties: Table,
    /// It came over TLS (`amqps`).
    pub tls: bool,
    pub outbox: tokio::sync::mpsc::Sender<Outbound>,
}

/// A channel of an open connection as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub number: u16,
    pub consumers: usize,
    pub prefetch: u16,
    pub confirm: bool,
    pub transactional: bool,
    pub unacked: usize,
    pub unconfirmed: usize,
}

impl ConnectionInfo {
    /// Its channels now, as the connection's task reports them (`None`: it did not answer
    /// in time, or is gone).
    pub async fn channels(&self) -> Option<Vec<ChannelInfo>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.outbox.try_send(Outbound::Describe(tx)).ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(1), rx)
            .await
            .ok()?
            .ok()
    }

    /// Asks the connection to close with `reason`; false if it is gone.
    pub fn close(&self, reason: &str) -> bool {
        self.outbox
            .try_send(Outbound::Close {
                reason: reason.to_string(),
            })
            .is_ok()
    }
}

/// The open connections, by id.
#[derive(Debug, Default)]
pub struct Connections {
    open: std::sync::Mutex<HashMap<ConnectionId, Arc<ConnectionInfo>>>,
}

impl Connections {
    /// Registers `info` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, info: ConnectionInfo) -> Registered {
        let id = info.id;
        self.lock().insert(id, Arc::new(info));
        Registered {
            connections: Arc::clone(self),
            id,
        }
    }

    /// Every open connection, sorted by name.
    pub fn list(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut out: Vec<Arc<ConnectionInfo>> = self.lock().values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Arc<ConnectionInfo>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's place in `Connections`, given up when dropped.
#[derive(Debug)]
pub struct Registered {
    connections: Arc<Connections>,
    id: ConnectionId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

/// Message counters of the whole broker, as RabbitMQ's `rabbitmq_global_messages_*`
/// count them. One relaxed atomic add per event on the message path.
#[derive(Debug, Default)]
pub struct MessageStats {
    /// Publishes received from clients.
    pub received: AtomicU64,
    /// Publishes received on channels in confirm mode.
    pub received_confirm: AtomicU64,
    /// Publishes routed to at least one queue.
    pub routed: AtomicU64,
    /// Unroutable publishes dropped (not mandatory) or returned (mandatory).
    pub unroutable_dropped: AtomicU64,
    pub unroutable_returned: AtomicU64,
    /// Publishes confirmed to the client.
    pub confirmed: AtomicU64,
    /// Deliveries to consumers, with and without manual acks, and through `basic.get`.
    pub delivered_consume_manual_ack: AtomicU64,
    pub delivered_consume_auto_ack: AtomicU64,
    pub delivered_get_manual_ack: AtomicU64,
    pub delivered_get_auto_ack: AtomicU64,
    pub get_empty: AtomicU64,
    /// Deliveries of messages delivered before.
    pub redelivered: AtomicU64,
    /// Deliveries the client acknowledged.
    pub acknowledged: AtomicU64,
}

impl MessageStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One open object counted in a shared gauge, until dropped.
#[derive(Debug)]
pub struct OpenCount(Arc<AtomicUsize>);

impl OpenCount {
    pub fn new(gauge: &Arc<AtomicUsize>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        OpenCount(Arc::clone(gauge))
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Broker {
    /// A broker that keeps everything in memory, with the virtual host `/`.
    pub fn in_memory(message_bytes_max: usize) -> Self {
        let mut vhosts = HashMap::new();
        vhosts.insert(
            "/".to_string(),
            Arc::new(VHost::new("/", Arc::new(AmqpFace), Arc::new(SystemClock))),
        );
        let mut broker = Broker {
            vhosts,
            limits: AmqpLimits::default(),
            next_id: AtomicU64::new(1),
            message_bytes_max,
            alarms: Alarms::default(),
            users: crate::users::UserStore::default(),
            channels_open: Arc::new(AtomicUsize::new(0)),
            connections_open: Arc::new(AtomicUsize::new(0)),
            connections: Arc::new(Connections::default()),
            stats: Arc::new(MessageStats::default()),
        };
        broker.set_limits(AmqpLimits::default());
        broker
    }

    /// Sets what clients may create from now on; what exists stays.
    pub fn set_limits(&mut self, limits: AmqpLimits) {
        self.limits = limits;
        for vhost in self.vhosts.values() {
            vhost.set_limits(
                limits.queues_max,
                RouterLimits {
                    exchanges_max: limits.exchanges_max,
                    bindings_max: limits.bindings_max,
                },
            );
        }
    }

    /// A broker whose durable definitions and persistent messages live under `dir`, one
    /// directory per virtual host in `vhost_names`. Blocking: it replays every durable
    /// queue.
    pub fn open(
        dir: &Path,
        log: LogConfig,
        message_bytes_max: usize,
        vhost_names: &[String],
    ) -> Result<Self, OpenError> {
        let mut vhosts = HashMap::new();
        for name in vhost_names {
            let vhost_dir = dir.join("vhosts").join(vhost::dir_name(name));
            let vhost = VHost::open(
                name,
                &vhost_dir,
                log.clone(),
                Arc::new(AmqpFace),
                Arc::new(SystemClock),
            )?;
            vhosts.insert(name.clone(), Arc::new(vhost));
        }
        // Recovery above restored everything stored; limits apply to what comes next.
        let mut broker = Broker {
            vhosts,
            limits: AmqpLimits::default(),
            next_id: AtomicU64::new(1),
            message_bytes_max,
            alarms: Alarms::default(),
            users: crate::users::UserStore::default(),
            channels_open: Arc::new(AtomicUsize::new(0)),
            connections_open: Arc::new(AtomicUsize::new(0)),
            connections: Arc::new(Connections::default()),
            stats: Arc::new(MessageStats::default()),
        };
        broker.set_limits(AmqpLimits::default());
        Ok(broker)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// Every virtual host, sorted by name.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut out: Vec<Arc<VHost>> = self.vhosts.values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// AMQP connections open now.
    pub fn connections_open(&self) -> usize {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// AMQP channels open now on all connections.
    pub fn channels_open(&self) -> usize {
        self.channels_open.load(Ordering::Relaxed)
    }

    /// Makes the engine's streams the stream queues of vhost `/`.
    pub fn attach_streams(&self, topics: Arc<Topics>) {
        if let Some(vhost) = self.vhosts.get("/") {
            vhost.set_streams(topics);
        }
    }

    /// A fresh id for a connection or consumer.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Expires due messages everywhere and dead-letters them.
    pub fn expire_due(&self) {
        for vhost in self.vhosts.values() {
            vhost.expire_due();
        }
    }

    /// Runs the journals' background work and the fsyncs that are due in the stream
    /// queues the vhosts keep themselves. Blocking.
    pub fn flush_due(&self) {
        for vhost in self.vhosts.values() {
            vhost.flush_journal();
        }
        for topics in self.vhosts.values().filter_map(|v| v.own_streams()) {
            topics.flush_due();
        }
    }

    /// Deletes what retention allows from the stream queues the vhosts keep themselves.
    /// Blocking.
    pub fn apply_stream_retention(&self) {
        for topics in self.vhosts.values().filter_map(|v| v.own_streams()) {
            topics.apply_retention();
        }
    }

    /// Makes every durable queue and the definitions durable (clean shutdown). Blocking.
    pub fn close(&self) {
        for vhost in self.vhosts.values() {
            vhost.save_definitions();
        }
        for vhost in self.vhosts.values() {
            vhost.close_journal();
        }
        for topics in self.vhosts.values().filter_map(|v| v.own_streams()) {
            topics.sync_all();
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// Every delivery to a consumer moves an `Outbound` through a channel: keep it small.
    #[test]
    fn outbound_items_stay_small() {
        let size = std::mem::size_of::<super::Outbound>();
        assert!(size <= 144, "Outbound is {size} bytes");
    }
}
