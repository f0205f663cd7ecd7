//! Virtual hosts: a routing table, the queues it routes to, their dead-letter hand-off
//! and expiry timers, the durable definitions, and the streams that are stream queues.
//! Faces declare, publish, consume and settle through them; what depends on a face's
//! encoding (headers, dead-letter annotations, records for streams, the definitions
//! file) is asked of the face through [`Face`].
//!
//! Locking: the router sits behind a read-write lock (routing reads it; declarations
//! write it); each queue has its own mutex, taken for one operation at a time and never
//! while another queue's is held, so publishers to different queues do not contend.

mod cell;
mod flow;
mod journal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sluice_core::{Clock, Message, Table, Value};

pub use cell::{
    ConnectionId, ConsumerStats, DeadLetters, QueueCell, QueueCounts, QueueDef, QueueSettings,
    QueueState, QueueStats, Sink, Timers,
};
pub use flow::{ChannelCredit, Confirm, Confirms, FLOW_BUFFERED_MAX, Flow};
pub use journal::SharedJournal;

use crate::journal::{Journal, QueueChange, Replay, Restored};
use crate::queue::{Accepted, DeathReason, Queue};
use crate::routing::{Binding, Destination, ExchangeDef, Router, RouterLimits};
use crate::store::{LogConfig, QueueStore, StoreError};
use crate::stream::{Partition, Topic, Topics};

/// Message bodies a durable queue keeps in memory: stored messages that arrive while more
/// than this is ready stay on disk only and are read back when delivered.
pub const RESIDENT_BYTES_PER_QUEUE: u64 = 8 << 20;

/// What a virtual host asks of the face whose encodings its messages and definitions use.
pub trait Face: Send + Sync + std::fmt::Debug {
    /// The headers a headers exchange matches `message` by.
    fn headers(&self, message: &Message) -> Option<Table>;
    /// `message` as it is dead-lettered from `queue` for `reason` through `exchange`
    /// with `key` (the face records the death in its properties); `None` drops it.
    fn dead_lettered(
        &self,
        message: &Message,
        queue: &str,
        reason: DeathReason,
        exchange: &str,
        key: &str,
    ) -> Option<Message>;
    /// Appends `message` to a stream queue as one record; `false` if it was not stored.
    fn append_to_stream(&self, partition: &Partition, message: &Message, now_ms: i64) -> bool;
    /// The settings of a stored queue, from the arguments it was declared with.
    fn queue_settings(&self, arguments: &Table, auto_delete: bool) -> QueueSettings;
    /// Reads the definitions file (empty definitions when there is none).
    fn load_definitions(&self, path: &Path) -> std::io::Result<Definitions>;
    /// Replaces the definitions file, durably.
    fn save_definitions(&self, definitions: &Definitions, path: &Path) -> std::io::Result<()>;
    /// One durable queue's declaration, as the journal records it.
    fn encode_queue(&self, record: &QueueRecord) -> Vec<u8>;
    fn decode_queue(&self, bytes: &[u8]) -> Option<QueueRecord>;
}

/// Where a direct reply goes (RabbitMQ's direct reply-to): a consumer's connection.
pub trait Reply: Send + Sync + std::fmt::Debug {
    /// Hands `message` over; `false` if the connection cannot take it.
    fn send(&self, message: Arc<Message>) -> bool;
}

/// A durable queue as the definitions file keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    pub name: String,
    /// The queue's id in the journal.
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: Table,
}

/// The durable definitions of a virtual host: exchanges, queues and bindings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definitions {
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueRecord>,
    pub bindings: Vec<Binding>,
}

/// Argument marking the store of a delayed exchange in the definitions file.
pub const DELAY_ARGUMENT: &str = "x-sluice-delay-for";

/// The store that holds a delayed exchange's messages until they are due: a queue that
/// routing cannot reach, whose messages expire when due and go to the exchange.
fn delay_queue_name(exchange: &str) -> String {
    format!("amq.sluice.delayed.{exchange}")
}

fn delay_settings(exchange: &str) -> QueueSettings {
    QueueSettings {
        dead_letter_exchange: Some(exchange.into()),
        delay: true,
        ..QueueSettings::default()
    }
}

/// The stream queue `name` in `topics`: a stream of one partition.
pub fn stream_partition(topics: &Topics, name: &str) -> Option<(Arc<Topic>, Arc<Partition>)> {
    let topic = topics.get(name)?;
    if topic.partition_count() != 1 {
        return None;
    }
    let partition = topic.partition(0)?;
    Some((topic, partition))
}

#[derive(Debug)]
struct Storage {
    dir: PathBuf,
    /// A definitions write is scheduled and has not read the state yet.
    definitions_pending: AtomicBool,
    /// Serialises definitions writes.
    definitions_lock: Mutex<()>,
    /// Queues declared since the definitions file was last written (they are in the
    /// journal meanwhile).
    declared_since_save: AtomicUsize,
    next_store_id: AtomicU64,
    /// Every durable queue's persistent messages.
    journal: Arc<SharedJournal>,
}

/// One virtual host: its routing table and queues.
#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub router: RwLock<Router>,
    queues: RwLock<HashMap<Arc<str>, Arc<QueueCell>>>,
    storage: Option<Storage>,
    dead_letters: Arc<DeadLetters>,
    /// Direct reply-to consumers by their reply address.
    replies: Mutex<HashMap<Arc<str>, Box<dyn Reply>>>,
    /// Queues a declare may bring the vhost to (RabbitMQ's vhost `max-queues`).
    queues_max: AtomicUsize,
    /// The engine's streams that are this vhost's stream queues: the Kafka face's topics
    /// for `/`, a registry of the vhost's own (not seen by Kafka) for the others.
    streams: std::sync::OnceLock<Arc<Topics>>,
    /// The streams above are this vhost's to flush, trim and close.
    owns_streams: AtomicBool,
    /// Stored bindings whose queue was not known when the vhost opened: bindings to
    /// stream queues, restored once the streams are attached.
    pending_bindings: Mutex<Vec<Binding>>,
    /// Queues by their next message expiry.
    timers: Arc<Timers>,
    /// Queues with `x-expires`, checked for an ended lease every round.
    leased: Mutex<std::collections::HashSet<Arc<str>>>,
    face: Arc<dyn Face>,
    clock: Arc<dyn Clock>,
}

impl VHost {
    /// A vhost that keeps everything in memory; time comes from `clock`.
    pub fn new(name: &str, face: Arc<dyn Face>, clock: Arc<dyn Clock>) -> Self {
        VHost {
            name: name.to_string(),
            router: RwLock::new(Router::with_vhost(name)),
            queues: RwLock::new(HashMap::new()),
            storage: None,
            dead_letters: Arc::new(DeadLetters::default()),
            replies: Mutex::new(HashMap::new()),
            queues_max: AtomicUsize::new(usize::MAX),
            streams: std::sync::OnceLock::new(),
            owns_streams: AtomicBool::new(false),
            pending_bindings: Mutex::new(Vec::new()),
            timers: Arc::new(Timers::default()),
            leased: Mutex::new(std::collections::HashSet::new()),
            face,
            clock,
        }
    }

    /// Makes the engine's streams this vhost's stream queues.
    pub fn set_streams(&self, topics: Arc<Topics>) {
        let mut router = self.router_mut();
        for topic in topics.all() {
            if topic.partition_count() == 1 && self.queue(&topic.name).is_none() {
                router.add_queue(topic.name.as_str().into());
            }
        }
        let pending = std::mem::take(
            &mut *self
                .pending_bindings
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for b in pending {
            if let Err(err) = router.bind(b) {
                tracing::warn!(error = %err, "stored binding not restored");
            }
        }
        drop(router);
        let _ = self.streams.set(topics);
    }

    pub fn streams(&self) -> Option<&Arc<Topics>> {
        self.streams.get()
    }

    /// The stream registry this vhost keeps itself, if any.
    pub fn own_streams(&self) -> Option<&Arc<Topics>> {
        self.streams
            .get()
            .filter(|_| self.owns_streams.load(Ordering::Acquire))
    }

    /// The stream queue `name`: a one-partition stream, unless a classic queue has the
    /// name.
    pub fn stream(&self, name: &str) -> Option<(Arc<Topic>, Arc<Partition>)> {
        let topics = self.streams.get()?;
        if self.queue(name).is_some() {
            return None;
        }
        let found = stream_partition(topics, name)?;
        // A topic created over Kafka becomes a queue bindings may name.
        if !self.router().has_queue(name) {
            self.router_mut().add_queue(name.into());
        }
        Some(found)
    }

    /// The queues clients can name (not the engine's own stores), sorted by name.
    pub fn client_queues(&self) -> Vec<Arc<QueueCell>> {
        let mut out: Vec<Arc<QueueCell>> = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|q| !q.name.starts_with("amq.sluice."))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn queue_count(&self) -> usize {
        self.queues.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Applies the broker's limits to what clients create from now on.
    pub fn set_limits(&self, queues_max: usize, router: RouterLimits) {
        self.queues_max.store(queues_max, Ordering::Relaxed);
        self.router_mut().set_limits(router);
    }

    /// Registers a direct reply-to consumer under its reply address.
    pub fn add_reply_consumer(&self, address: Arc<str>, reply: Box<dyn Reply>) {
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address, reply);
    }

    pub fn remove_reply_consumer(&self, address: &str) {
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
    }

    /// Hands a reply to the consumer behind `address`; `false` if there is none.
    pub fn send_reply(&self, address: &str, message: Arc<Message>) -> bool {
        let replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        replies.get(address).is_some_and(|r| r.send(message))
    }

    /// Routes dead-lettered messages to their queues' dead-letter exchanges. Republishing
    /// can dead-letter more (a full or expiring target), so this runs until none is left,
    /// with a cap against cycles that never settle.
    pub fn process_dead_letters(&self) {
        const ROUNDS_MAX: usize = 64;
        let mut routed = Vec::new();
        for _ in 0..ROUNDS_MAX {
            if !self.dead_letters.pending.swap(false, Ordering::AcqRel) {
                return;
            }
            let items = std::mem::take(
                &mut *self
                    .dead_letters
                    .items
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for (source, dead) in items {
                let Some(dlx) = source.def.settings.dead_letter_exchange.as_deref() else {
                    continue;
                };
                if source.def.settings.delay {
                    // A delayed message is due: routed unchanged, as if published now.
                    self.route_now(dlx, Arc::clone(&dead.entry.message));
                    continue;
                }
                let key = source
                    .def
                    .settings
                    .dead_letter_routing_key
                    .as_deref()
                    .unwrap_or(&dead.entry.message.routing_key);
                let Some(message) = self.face.dead_lettered(
                    &dead.entry.message,
                    &source.name,
                    dead.reason,
                    dlx,
                    key,
                ) else {
                    continue;
                };
                routed.clear();
                if self.router().route(dlx, key, None, &mut routed).is_err() {
                    continue;
                }
                let message = Arc::new(message);
                for name in &routed {
                    // A message that expired or overflowed does not go back into the queue
                    // it just left (RabbitMQ drops such cycles); rejected ones may.
                    if **name == *source.name && dead.reason != DeathReason::Rejected {
                        continue;
                    }
                    self.publish_internal(name, &message);
                }
            }
        }
        tracing::warn!("dead-letter rounds capped; messages may be cycling between queues");
    }

    /// Routes a message through `exchange` to its queues; returns how many took it.
    pub fn route_now(&self, exchange: &str, message: Arc<Message>) -> usize {
        let mut routed = Vec::new();
        let headers = self.face.headers(&message);
        if self
            .router()
            .route(
                exchange,
                &message.routing_key,
                headers.as_ref(),
                &mut routed,
            )
            .is_err()
        {
            return 0;
        }
        routed
            .iter()
            .filter(|name| self.publish_internal(name, &message))
            .count()
    }

    /// Puts a message the broker routes itself (dead-lettered, or due from a delayed
    /// exchange) into the queue or stream queue `name`; false when there is none.
    fn publish_internal(&self, name: &str, message: &Arc<Message>) -> bool {
        if let Some(queue) = self.queue(name) {
            queue.publish(Arc::clone(message), None);
            return true;
        }
        match self.stream(name) {
            Some((_, partition)) => {
                self.face
                    .append_to_stream(&partition, message, self.clock.now_ms())
            }
            None => false,
        }
    }

    /// Expires due messages in every queue and dead-letters them (timer).
    pub fn expire_due(&self) {
        let now = self.clock.now_ms();
        let mut due = Vec::new();
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_due(now, &mut due);
        for name in due {
            if let Some(q) = self.queue(&name) {
                q.expire_due();
            }
        }
        let leased: Vec<Arc<QueueCell>> = {
            let names = self.leased.lock().unwrap_or_else(|p| p.into_inner());
            names.iter().filter_map(|n| self.queue(n)).collect()
        };
        for q in leased {
            if q.lease_over(now) {
                tracing::debug!(queue = %q.name, "queue unused past x-expires; deleting");
                self.delete_queue(&q.name);
                self.definitions_dirty_blocking();
            }
        }
        self.process_dead_letters();
    }

    /// Opens a virtual host stored in `dir`: its durable definitions, and every durable
    /// queue with the persistent messages it still holds. Blocking.
    pub fn open(
        name: &str,
        dir: &Path,
        log: LogConfig,
        face: Arc<dyn Face>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Io(dir.to_path_buf(), e))?;
        let path = dir.join("definitions");
        let defs = face
            .load_definitions(&path)
            .map_err(|e| OpenError::Io(path.clone(), e))?;
        let next_id = defs.queues.iter().map(|q| q.id + 1).max().unwrap_or(1);
        let mut vhost = VHost::new(name, face, Arc::clone(&clock));
        let own_streams = (name != "/")
            .then(|| open_vhost_streams(dir, &log, Arc::clone(&clock)))
            .transpose()?;
        {
            let mut router = vhost.router_mut();
            for e in defs.exchanges {
                let name = e.name.clone();
                if let Err(err) = router.declare_exchange(e) {
                    tracing::warn!(exchange = %name, error = %err, "stored exchange not restored");
                }
            }
        }
        let journal_dir = dir.join("journal");
        migrate_queue_stores(dir, &journal_dir, &log, &clock, &*vhost.face, &defs.queues)?;
        // The queues first, empty: those of the definitions file, then those the journal
        // recorded since it was written; the journal then hands each its messages in
        // order. Messages beyond the resident share are paged out as they are read back,
        // so a long queue comes back without its bodies in memory.
        let mut restoring = Restoring {
            face: Arc::clone(&vhost.face),
            queues: HashMap::new(),
            by_name: HashMap::new(),
        };
        for record in defs.queues {
            restoring.add(record);
        }
        let journal = Journal::open(
            &journal_dir,
            log.clone(),
            Arc::clone(&clock),
            &mut restoring,
        )
        .map_err(|e| OpenError::Store(journal_dir.clone(), e))?;
        let queues = restoring.queues;
        let next_id = next_id.max(queues.keys().map(|id| id + 1).max().unwrap_or(1));
        let journal = Arc::new(SharedJournal::new(journal));
        vhost.storage = Some(Storage {
            dir: dir.to_path_buf(),
            definitions_pending: AtomicBool::new(false),
            definitions_lock: Mutex::new(()),
            declared_since_save: AtomicUsize::new(0),
            next_store_id: AtomicU64::new(next_id),
            journal: Arc::clone(&journal),
        });
        let mut restored = 0usize;
        for (id, (record, settings, queue, count)) in queues {
            restored += count;
            let def = QueueDef {
                durable: true,
                exclusive_owner: None,
                auto_delete: record.auto_delete,
                arguments: record.arguments,
                settings,
            };
            let stored = cell::Stored {
                journal: Arc::clone(&journal),
                id,
            };
            vhost.insert_queue(record.name.into(), def, Some(stored), queue);
        }
        tracing::info!(vhost = name, messages = restored, "durable queues restored");
        // Vhost `/` shares the Kafka face's topics (attached later); the others keep
        // their stream queues themselves.
        if let Some(topics) = own_streams {
            vhost.owns_streams.store(true, Ordering::Release);
            vhost.set_streams(Arc::new(topics));
        }
        {
            let mut router = vhost.router_mut();
            for b in defs.bindings {
                let to_unknown_queue =
                    matches!(&b.destination, Destination::Queue(q) if !router.has_queue(q));
                if to_unknown_queue {
                    vhost
                        .pending_bindings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(b);
                } else if let Err(err) = router.bind(b) {
                    tracing::warn!(error = %err, "stored binding not restored");
                }
            }
        }
        Ok(vhost)
    }

    fn insert_queue(
        &self,
        name: Arc<str>,
        def: QueueDef,
        store: Option<cell::Stored>,
        mut queue: Queue,
    ) -> Arc<QueueCell> {
        if store.is_some() {
            queue.set_paging(Some(RESIDENT_BYTES_PER_QUEUE));
        }
        let cell = Arc::new(QueueCell {
            name: Arc::clone(&name),
            def,
            store_id: store.as_ref().map(|s| s.id),
            state: Mutex::new(QueueState {
                queue,
                links: HashMap::new(),
                deleted: false,
                store,
                dead: Vec::new(),
                counts: QueueCounts::default(),
            }),
            dead_letters: Arc::clone(&self.dead_letters),
            last_used_ms: AtomicI64::new(self.clock.now_ms()),
            timers: Arc::clone(&self.timers),
            timer_at: AtomicI64::new(i64::MAX),
            clock: Arc::clone(&self.clock),
        });
        // Recovered messages may carry a TTL.
        cell.note_expiry(&cell.lock());
        if cell.def.settings.expires_ms.is_some() {
            self.leased
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(Arc::clone(&name));
        }
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::clone(&name), Arc::clone(&cell));
        // The hidden queue of a delayed exchange is not reachable by routing.
        if !cell.def.settings.delay {
            self.router_mut().add_queue(name);
        }
        cell
    }

    /// Every durable queue, for background flushing and shutdown.
    pub fn durable_queues(&self) -> Vec<Arc<QueueCell>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.store_id.is_some())
            .cloned()
            .collect()
    }

    /// Runs the journal's background work (written records, freed segments, the `async`
    /// flush). Blocking.
    pub fn flush_journal(&self) {
        if let Some(storage) = &self.storage {
            // Queue records the definitions file has not taken in keep segments that
            // are otherwise free, and each costs a decode at the next start: the file
            // is written again once they are half as many as the queues (so a storm of
            // declares rewrites it a few times, not once per declare).
            let declared = storage.declared_since_save.load(Ordering::Relaxed);
            let due = declared >= (self.queue_count() / 2).max(1000);
            if due || storage.journal.definitions_hold_segments() {
                self.save_definitions();
            }
            storage.journal.flush_due();
        }
    }

    /// Makes the journal durable (clean shutdown). Blocking.
    pub fn close_journal(&self) {
        if let Some(storage) = &self.storage {
            storage.journal.close();
        }
    }

    /// The vhost's journal, if it stores durable queues.
    pub fn journal(&self) -> Option<&Arc<SharedJournal>> {
        self.storage.as_ref().map(|s| &s.journal)
    }

    /// Publishes `message` to `queues` (the classic queues it was routed to). A
    /// persistent message is stored once for every durable queue among them, and
    /// `confirm` is told when that one write is on disk. Returns whether `confirm` was
    /// taken and whether a queue refused the message (`reject-publish`).
    pub fn publish_to(
        &self,
        message: &Arc<Message>,
        queues: &[Arc<QueueCell>],
        confirm: Option<Confirm>,
    ) -> (bool, bool) {
        if let [queue] = queues {
            let (taken, accepted) = queue.publish(Arc::clone(message), confirm);
            return (taken, accepted == Accepted::Rejected);
        }
        let mut rejected = false;
        let mut admitted = Vec::with_capacity(queues.len());
        let mut targets = Vec::new();
        let mut journal = None;
        for queue in queues {
            let Some(expires_at) = queue.admit(message, None) else {
                rejected = true;
                continue;
            };
            if message.persistent
                && let Some(store) = queue.store()
            {
                targets.push((store.id, expires_at));
                journal.get_or_insert(store.journal);
            }
            admitted.push((queue, expires_at));
        }
        let mut taken = false;
        let mut stored = None;
        if let Some(journal) = journal {
            taken = confirm.is_some();
            stored = journal.append(message, &targets, confirm);
        }
        for (queue, expires_at) in admitted {
            let at = stored.filter(|_| queue.store_id.is_some());
            rejected |= queue.enqueue(Arc::clone(message), at, expires_at) == Accepted::Rejected;
        }
        (taken, rejected)
    }

    /// The durable definitions as they are now.
    fn snapshot(&self) -> Definitions {
        let queues: Vec<QueueRecord> = self
            .durable_queues()
            .iter()
            .filter_map(|c| {
                Some(QueueRecord {
                    name: c.name.to_string(),
                    id: c.store_id?,
                    auto_delete: c.def.auto_delete,
                    arguments: c.def.arguments.clone(),
                })
            })
            .collect();
        let router = self.router();
        let durable_exchange =
            |n: &str| !n.is_empty() && router.exchange(n).is_some_and(|e| e.durable);
        let exchanges = router
            .exchanges()
            .filter(|e| e.durable && !e.name.is_empty() && !e.name.starts_with("amq."))
            .cloned()
            .collect();
        let bindings = router
            .bindings()
            .filter(|b| {
                durable_exchange(&b.source)
                    && match &b.destination {
                        Destination::Queue(q) => {
                            queues.iter().any(|r| r.name.as_str() == &**q)
                                || self
                                    .streams
                                    .get()
                                    .is_some_and(|t| stream_partition(t, q).is_some())
                        }
                        Destination::Exchange(e) => durable_exchange(e),
                    }
            })
            .cloned()
            .collect();
        Definitions {
            exchanges,
            queues,
            bindings,
        }
    }

    /// Schedules a rewrite of the definitions file after a change that may touch durable
    /// entities. Writes are coalesced; the last one always sees the latest state.
    pub fn definitions_changed(self: &Arc<Self>) {
        let Some(storage) = &self.storage else { return };
        if storage.definitions_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let vhost = Arc::clone(self);
        tokio::task::spawn_blocking(move || vhost.save_definitions());
    }

    /// Schedules a definitions write from a timer, outside any runtime task context that
    /// has an `Arc` of the host.
    fn definitions_dirty_blocking(&self) {
        if self.storage.is_some() {
            self.save_definitions();
        }
    }

    /// Writes the definitions file now. Blocking.
    pub fn save_definitions(&self) {
        let Some(storage) = &self.storage else { return };
        let _guard = storage
            .definitions_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        storage.definitions_pending.store(false, Ordering::Release);
        // Every queue record below this offset is in the snapshot taken next.
        let mark = storage.journal.next_offset();
        storage.declared_since_save.store(0, Ordering::Relaxed);
        let path = storage.dir.join("definitions");
        match self.face.save_definitions(&self.snapshot(), &path) {
            Ok(()) => storage.journal.definitions_saved(mark),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot save definitions");
            }
        }
    }

    pub fn router(&self) -> std::sync::RwLockReadGuard<'_, Router> {
        self.router.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn router_mut(&self) -> std::sync::RwLockWriteGuard<'_, Router> {
        self.router.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A queue clients may name: the broker's own hidden queues are not.
    pub fn client_queue(&self, name: &str) -> Option<Arc<QueueCell>> {
        if name.starts_with("amq.sluice.") {
            return None;
        }
        self.queue(name)
    }

    pub fn queue(&self, name: &str) -> Option<Arc<QueueCell>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Creates the queue unless one of that name exists; returns the queue and whether it
    /// was created. A durable, non-exclusive queue gets storage on disk.
    pub fn declare_queue(
        &self,
        name: Arc<str>,
        def: QueueDef,
    ) -> Result<(Arc<QueueCell>, bool), OpenError> {
        if let Some(existing) = self.queue(&name) {
            return Ok((existing, false));
        }
        let max = self.queues_max.load(Ordering::Relaxed);
        if self.queue_count() >= max {
            return Err(OpenError::Limit(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                self.name
            )));
        }
        let mut store = None;
        if def.durable
            && def.exclusive_owner.is_none()
            && let Some(storage) = &self.storage
        {
            let id = storage.next_store_id.fetch_add(1, Ordering::Relaxed);
            let definition = self.face.encode_queue(&QueueRecord {
                name: name.to_string(),
                id,
                auto_delete: def.auto_delete,
                arguments: def.arguments.clone(),
            });
            // In the journal's file before the declare is answered: a `kill -9` right
            // after keeps the queue even before the definitions file is written again.
            storage
                .journal
                .created(id, &definition)
                .map_err(|e| OpenError::Store(storage.dir.join("journal"), e))?;
            storage.declared_since_save.fetch_add(1, Ordering::Relaxed);
            store = Some(cell::Stored {
                journal: Arc::clone(&storage.journal),
                id,
            });
        }
        let queue = Queue::with_limits(Arc::clone(&name), def.settings.limits.clone());
        Ok((self.insert_queue(name, def, store, queue), true))
    }

    /// Deletes a queue: unbinds it, tells its consumers' connections, returns how many
    /// ready messages it held.
    pub fn delete_queue(&self, name: &str) -> u32 {
        let removed = {
            let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
            let removed = queues.remove(name);
            if removed.is_some() {
                // Under the map's lock: a queue declared again under this name right
                // after keeps its own timer and lease.
                self.timers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .cancel(&Arc::from(name));
                self.leased
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
            }
            removed
        };
        let Some(cell) = removed else { return 0 };
        let _ = self.router_mut().remove_queue(name);
        let mut state = cell.lock();
        state.deleted = true;
        let count = state.queue.message_count();
        if let Some(store) = state.store.take() {
            let held: Vec<u64> = state.queue.stored_offsets().collect();
            store.journal.deleted(store.id, &held);
        }
        state.queue.purge();
        for (consumer, link) in state.links.drain() {
            link.sink.cancelled(consumer);
        }
        count
    }

    /// Gives the delayed exchange `exchange` the store that holds its messages until they
    /// are due: durable with the exchange.
    pub fn declare_delayed(&self, exchange: &str, durable: bool) -> Result<(), OpenError> {
        let mut arguments = Table::new();
        arguments.insert("x-dead-letter-exchange", Value::string(exchange));
        arguments.insert(DELAY_ARGUMENT, Value::string(exchange));
        let def = QueueDef {
            durable,
            exclusive_owner: None,
            auto_delete: false,
            arguments,
            settings: delay_settings(exchange),
        };
        self.declare_queue(delay_queue_name(exchange).into(), def)?;
        Ok(())
    }

    /// Holds `message` for `delay_ms`, then routes it through its exchange as if published
    /// then. `None` when its exchange is not a delayed exchange; otherwise whether
    /// `confirm` was taken (only a persistent message in a durable exchange waits for
    /// its fsync; for others the confirm is dropped and the caller confirms at once).
    pub fn publish_delayed(
        &self,
        message: Arc<Message>,
        delay_ms: i64,
        confirm: Option<Confirm>,
    ) -> Option<bool> {
        let hold = self.queue(&delay_queue_name(&message.exchange))?;
        let confirm = confirm.filter(|_| message.persistent && hold.store_id.is_some());
        let due = self.clock.now_ms().saturating_add(delay_ms);
        Some(hold.publish_at(message, confirm, Some(due)).0)
    }

    /// Whether `exchange` is a delayed exchange (it has a store for delayed messages).
    /// The store of delayed exchange `exchange`: its messages wait there until due.
    pub fn delayed_store(&self, exchange: &str) -> Option<Arc<QueueCell>> {
        self.queue(&delay_queue_name(exchange))
    }

    pub fn is_delayed(&self, exchange: &str) -> bool {
        self.queue(&delay_queue_name(exchange)).is_some()
    }

    /// Drops a deleted delayed exchange's store and the messages it held.
    pub fn delete_delayed(&self, exchange: &str) {
        self.delete_queue(&delay_queue_name(exchange));
    }

    /// Exclusive queues owned by a connection, for deletion when it closes.
    pub fn queues_owned_by(&self, owner: ConnectionId) -> Vec<Arc<str>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.def.exclusive_owner == Some(owner))
            .map(|c| Arc::clone(&c.name))
            .collect()
    }
}

/// A virtual host could not be opened from disk.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
    #[error("queue storage {path}: {source}", path = .0.display(), source = .1)]
    Store(PathBuf, StoreError),
    /// The vhost holds `queues_max` queues already (406, RabbitMQ's `max-queues` text).
    #[error("{0}")]
    Limit(String),
}

/// The durable queues of a vhost being opened, as the definitions file and then the
/// journal's queue records give them, filled with their messages by the journal.
struct Restoring {
    face: Arc<dyn Face>,
    queues: HashMap<u64, (QueueRecord, QueueSettings, Queue, usize)>,
    by_name: HashMap<String, u64>,
}

impl Restoring {
    fn add(&mut self, record: QueueRecord) {
        let settings = match record.arguments.get(DELAY_ARGUMENT).and_then(Value::as_str) {
            Some(exchange) => delay_settings(exchange),
            None => self
                .face
                .queue_settings(&record.arguments, record.auto_delete),
        };
        let mut queue = Queue::with_limits(record.name.as_str().into(), settings.limits.clone());
        queue.set_paging(Some(RESIDENT_BYTES_PER_QUEUE));
        // A name belongs to the queue declared last.
        if let Some(old) = self.by_name.insert(record.name.clone(), record.id)
            && old != record.id
        {
            self.queues.remove(&old);
        }
        self.queues.insert(record.id, (record, settings, queue, 0));
    }
}

impl Replay for Restoring {
    fn queue_changed(&mut self, change: QueueChange<'_>) {
        match change {
            QueueChange::Created { queue, definition } => {
                match self.face.decode_queue(definition) {
                    Some(mut record) => {
                        record.id = queue;
                        self.add(record);
                    }
                    None => tracing::warn!(queue, "queue record in the journal not readable"),
                }
            }
            QueueChange::Deleted { queue } => {
                if let Some((record, ..)) = self.queues.remove(&queue) {
                    self.by_name.remove(&record.name);
                }
            }
        }
    }

    fn keep(&mut self, r: Restored) -> bool {
        let Some((_, _, queue, count)) = self.queues.get_mut(&r.queue) else {
            return false;
        };
        *count += 1;
        // Whether it was delivered before the restart is not recorded: flag it as
        // possibly seen, as the AMQP `redelivered` bit allows.
        queue.push(r.message, Some(r.offset), true, r.expires_at);
        true
    }
}

/// Moves the messages of queues stored in the earlier layout (two logs per queue under
/// `queues/<id>`) into the journal, then removes those directories. A crash midway is
/// safe: each queue's copy starts with its creation record, which drops a partial copy.
fn migrate_queue_stores(
    dir: &Path,
    journal_dir: &Path,
    log: &LogConfig,
    clock: &Arc<dyn Clock>,
    face: &dyn Face,
    records: &[QueueRecord],
) -> Result<(), OpenError> {
    let old = dir.join("queues");
    let Ok(entries) = std::fs::read_dir(&old) else {
        return Ok(());
    };
    let dirs: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    if dirs.is_empty() {
        let _ = std::fs::remove_dir(&old);
        return Ok(());
    }
    let store_err = |e| OpenError::Store(journal_dir.to_path_buf(), e);
    let mut journal: Journal<()> = Journal::open(
        journal_dir,
        log.clone(),
        Arc::clone(clock),
        &mut |_: Restored| true,
    )
    .map_err(store_err)?;
    for record in records {
        let queue_dir = old.join(record.id.to_string());
        if !queue_dir.is_dir() {
            continue;
        }
        journal
            .created(record.id, &face.encode_queue(record))
            .map_err(store_err)?;
        let mut failed = None;
        let store = QueueStore::<()>::open_each(&queue_dir, log.clone(), Arc::clone(clock), |r| {
            if failed.is_none()
                && let Err(e) = journal.append(&r.message, &[(record.id, r.expires_at)])
            {
                failed = Some(e);
            }
        })
        .map_err(|e| OpenError::Store(queue_dir.clone(), e))?;
        drop(store);
        if let Some(e) = failed {
            return Err(store_err(e));
        }
        tracing::info!(queue = %record.name, "queue storage moved into the journal");
    }
    journal.close().map_err(store_err)?;
    for d in dirs {
        std::fs::remove_dir_all(&d).map_err(|e| OpenError::Io(d.clone(), e))?;
    }
    std::fs::remove_dir(&old).map_err(|e| OpenError::Io(old.clone(), e))?;
    Ok(())
}

/// Stream queues of a vhost other than `/`, under its directory: topics of one
/// partition that Kafka does not see. They keep what their arguments ask for; the rest
/// of their settings come from the storage defaults.
fn open_vhost_streams(
    dir: &Path,
    log: &LogConfig,
    clock: Arc<dyn Clock>,
) -> Result<Topics, OpenError> {
    const STREAMS_MAX: usize = 100_000;
    let defaults = crate::stream::TopicConfig {
        segment_bytes: log.segment_bytes,
        retention_bytes: None,
        retention_ms: None,
        flush_sync: log.flush == crate::stream::FlushPolicy::Sync,
        ..crate::stream::TopicConfig::default()
    };
    Topics::open(
        dir,
        defaults,
        log.clone(),
        clock,
        i32::try_from(STREAMS_MAX).unwrap_or(i32::MAX),
        STREAMS_MAX,
    )
    .map_err(|e| OpenError::Io(dir.join("topics"), e))
}

/// Directory of a virtual host's data: `default` for `/`, else the name in hex (names may
/// hold any characters).
pub fn dir_name(name: &str) -> String {
    if name == "/" {
        return "default".to_string();
    }
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("v-{hex}")
}
