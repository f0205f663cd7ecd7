//! Shared broker state behind the AMQP face: the virtual host's routing table and its
//! queues, and the links from each queue's consumers to their connections.
//!
//! Locking: the router sits behind a read-write lock (routing reads it; declarations
//! write it); each queue has its own mutex, taken for one operation at a time and never
//! while another queue's is held, so publishers to different queues do not contend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use sluice_core::{Clock, Message, SystemClock, Table};
use sluice_engine::queue::{
    Accepted, Consumer, ConsumerId, Dead, DeathReason, Delivery, Entry, MessageId, Overflow, Queue,
    QueueError,
};
use sluice_engine::routing::{Destination, Router, RouterLimits};
use sluice_engine::store::{LogConfig, QueueStore, StoreError, Synced};
use sluice_engine::stream::{Partition, Topic, Topics};
use tokio::sync::mpsc;

use crate::args::{QueueSettings, queue_settings};
use crate::definitions::{Definitions, QueueRecord};

/// Deliveries a consumer's connection may hold unwritten; past it the queue keeps the
/// messages and resumes when the connection has written some.
pub const FLOW_BUFFERED_MAX: u32 = 1024;

/// Message bodies a durable queue keeps in memory: stored messages that arrive while more
/// than this is ready stay on disk only and are read back when delivered.
pub const RESIDENT_BYTES_PER_QUEUE: u64 = 8 << 20;

pub type ConnectionId = u64;

/// Work for a connection task that comes from outside it.
#[derive(Debug)]
pub enum Outbound {
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

/// Storage outcomes of one connection's confirm-mode publishes, on their way to it.
/// Unlike the bounded outbox, a push never fails, so no confirm is ever lost; what it
/// holds is bounded by the connection's unconfirmed publishes, which the connection
/// stops reading past `UNCONFIRMED_MAX` (backpressure).
#[derive(Debug, Default)]
pub struct Confirms {
    done: Mutex<Vec<(u16, u64, bool)>>,
    ready: tokio::sync::Notify,
}

impl Confirms {
    fn push(&self, channel: u16, seq: u64, ok: bool) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((channel, seq, ok));
        // A stored permit wakes the connection even if it is not waiting yet.
        self.ready.notify_one();
    }

    /// Every outcome pushed so far: (channel, publish seq, stored).
    pub fn take(&self) -> Vec<(u16, u64, bool)> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Resolves once something was pushed since the last wake-up.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

/// A publisher waiting for its message to be on disk.
#[derive(Debug)]
pub struct Confirm {
    pub confirms: Arc<Confirms>,
    pub channel: u16,
    pub seq: u64,
}

impl Confirm {
    pub(crate) fn done(self, ok: bool) {
        self.confirms.push(self.channel, self.seq, ok);
    }
}

pub type Outbox = mpsc::Sender<Outbound>;

/// Unwritten deliveries of one consumer.
#[derive(Debug, Default)]
pub struct Flow {
    buffered: AtomicU32,
}

impl Flow {
    fn reserve(&self) -> bool {
        self.buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < FLOW_BUFFERED_MAX).then_some(b + 1)
            })
            .is_ok()
    }

    /// One delivery written or dropped; `true` when the consumer was at its limit, so
    /// its queue should dispatch again.
    pub fn release(&self) -> bool {
        self.buffered.fetch_sub(1, Ordering::AcqRel) == FLOW_BUFFERED_MAX
    }
}

#[derive(Debug)]
struct Link {
    outbox: Outbox,
    channel: u16,
    tag: Arc<str>,
    no_ack: bool,
    flow: Arc<Flow>,
    /// The channel-wide prefetch (`basic.qos` global), for manual-ack consumers.
    credit: Option<Arc<ChannelCredit>>,
}

impl Link {
    fn reserve(&self) -> bool {
        if !self.flow.reserve() {
            return false;
        }
        if let Some(credit) = &self.credit
            && !credit.reserve()
        {
            self.flow.release();
            return false;
        }
        true
    }
}

/// Unacknowledged deliveries of one channel against its global prefetch limit.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    /// 0 = unlimited.
    limit: AtomicU32,
    unacked: AtomicU32,
}

impl ChannelCredit {
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    fn reserve(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (limit == 0 || u < limit).then_some(u + 1)
            })
            .is_ok()
    }

    /// `n` deliveries settled; `true` when the channel was at its limit, so its
    /// consumers' queues should dispatch again.
    pub fn release(&self, n: u32) -> bool {
        if n == 0 {
            return false;
        }
        let before = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or(0);
        let limit = self.limit.load(Ordering::Acquire);
        limit != 0 && before >= limit
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: Table,
    /// Limits and dead-lettering read from `arguments`.
    pub settings: QueueSettings,
}

/// Messages that left their queues and wait to be dead-lettered (or dropped).
#[derive(Debug, Default)]
pub struct DeadLetters {
    pending: AtomicBool,
    items: Mutex<Vec<(Arc<QueueCell>, Dead)>>,
}

/// Runs file work (directories, opens, fsyncs) that a connection's task cannot avoid:
/// on a multi-threaded runtime its worker first hands its other tasks to another
/// (`block_in_place`), so one slow disk does not stall unrelated connections.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

#[derive(Debug)]
pub struct QueueState {
    pub queue: Queue,
    links: HashMap<ConsumerId, Link>,
    pub deleted: bool,
    /// Disk storage of a durable queue's persistent messages.
    store: Option<QueueStore<Confirm>>,
    syncing: bool,
    /// Messages that left the queue during the current operation.
    dead: Vec<Dead>,
}

impl QueueState {
    /// Records settled entries in the store (acknowledged, dropped or auto-acked).
    fn settle(&mut self, entries: impl IntoIterator<Item = Option<u64>>) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let offsets: Vec<u64> = entries.into_iter().flatten().collect();
        if let Err(e) = store.settle(&offsets) {
            tracing::error!(error = %e, "cannot record settled messages");
        }
    }
}

#[derive(Debug)]
pub struct QueueCell {
    pub name: Arc<str>,
    pub def: QueueDef,
    /// Storage directory id of a durable queue.
    pub store_id: Option<u64>,
    state: Mutex<QueueState>,
    dead_letters: Arc<DeadLetters>,
    /// Last time the queue was used (declared, consumed from, read), for `x-expires`.
    last_used_ms: AtomicI64,
    /// The vhost's expiry timers, and when this queue's fires (`i64::MAX`: not set).
    timers: Arc<Timers>,
    timer_at: AtomicI64,
}

/// A vhost's expiry timers: the queues holding messages with a TTL, by their next
/// expiry, so an expiry round touches the queues that are due.
pub type Timers = Mutex<sluice_engine::scheduler::Scheduler<Arc<str>>>;

impl QueueCell {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Queue operations leave the state consistent at every step; a panic elsewhere
        // while holding the lock does not make it unusable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` on the queue, then sends the deliveries it made to their connections.
    fn run<R>(
        self: &Arc<Self>,
        op: impl FnOnce(&mut Queue, Reserve2<'_>, &mut Vec<Delivery>) -> R,
    ) -> R {
        let mut out = Vec::new();
        let mut state = self.lock();
        Self::expire(&mut state);
        let result = {
            let QueueState { queue, links, .. } = &mut *state;
            let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.reserve());
            op(queue, &mut reserve, &mut out)
        };
        self.send_all(&mut state, out);
        self.hand_over_dead(&mut state);
        result
    }

    /// Expires what is due before an operation sees the queue.
    fn expire(state: &mut QueueState) {
        let now = now_ms();
        if state.queue.next_expiry().is_some_and(|at| at <= now) {
            let QueueState { queue, dead, .. } = state;
            queue.expire(now, dead);
        }
    }

    /// Sets the expiry timer for the queue's next expiry when it is earlier than the one
    /// set (called with the queue locked, after every change to its ready messages).
    fn note_expiry(&self, state: &QueueState) {
        let Some(at) = state.queue.next_expiry() else {
            return;
        };
        if at < self.timer_at.load(Ordering::Acquire) {
            self.timer_at.store(at, Ordering::Release);
            self.timers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .at_most(Arc::clone(&self.name), at);
        }
    }

    /// Settles messages that left the queue and passes them on for dead-lettering when
    /// the queue has a dead-letter exchange; then sets the expiry timer. Every change to
    /// a queue ends here.
    fn hand_over_dead(self: &Arc<Self>, state: &mut QueueState) {
        self.note_expiry(state);
        if state.dead.is_empty() {
            return;
        }
        let mut dead = std::mem::take(&mut state.dead);
        if self.def.settings.dead_letter_exchange.is_none() {
            state.settle(dead.iter().map(|d| d.entry.stored));
            return;
        }
        // Bodies are read back before settling lets the log drop them.
        let readable: Vec<bool> = dead
            .iter_mut()
            .map(|d| self.load(state, &mut d.entry))
            .collect();
        state.settle(dead.iter().map(|d| d.entry.stored));
        let mut readable = readable.into_iter();
        dead.retain(|_| readable.next().unwrap_or(false));
        let mut items = self
            .dead_letters
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        items.extend(dead.into_iter().map(|d| (Arc::clone(self), d)));
        self.dead_letters.pending.store(true, Ordering::Release);
    }

    /// Marks the queue used now (for `x-expires`).
    pub fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether an `x-expires` queue has been unused for its whole lease.
    fn lease_over(&self, now: i64) -> bool {
        let Some(expires) = self.def.settings.expires_ms else {
            return false;
        };
        let idle = now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed));
        idle >= i64::try_from(expires).unwrap_or(i64::MAX)
            && self.lock().queue.consumer_count() == 0
    }

    /// Expires due messages (its timer fired).
    pub fn expire_due(self: &Arc<Self>) {
        let mut state = self.lock();
        // The timer that fired is gone: the next one is set below.
        self.timer_at.store(i64::MAX, Ordering::Release);
        Self::expire(&mut state);
        self.hand_over_dead(&mut state);
    }

    fn send_all(self: &Arc<Self>, state: &mut QueueState, out: Vec<Delivery>) {
        for delivery in out {
            self.send(state, delivery);
        }
    }

    /// Reads a paged-out message back from the store; `false` if it cannot be read (the
    /// error is logged).
    fn load(&self, state: &mut QueueState, entry: &mut Entry) -> bool {
        if !entry.paged {
            return true;
        }
        let (Some(store), Some(offset)) = (state.store.as_mut(), entry.stored) else {
            return false;
        };
        match store.read(offset) {
            Ok(message) => {
                entry.message = Arc::new(message);
                entry.paged = false;
                true
            }
            Err(e) => {
                tracing::error!(queue = %self.name, offset, error = %e, "stored message unreadable; dropped");
                false
            }
        }
    }

    /// Drops a delivered message that could not be read back: out of the unacked set and
    /// settled on disk, so it cannot block the consumer or come back.
    fn drop_unreadable(state: &mut QueueState, entry: &Entry) {
        state
            .queue
            .settle_many(&[entry.id], &mut |_| false, &mut Vec::new());
        state.settle([entry.stored]);
    }

    fn send(self: &Arc<Self>, state: &mut QueueState, mut delivery: Delivery) {
        if !self.load(state, &mut delivery.entry) {
            if let Some(link) = state.links.get(&delivery.consumer) {
                link.flow.release();
                if let Some(credit) = &link.credit {
                    credit.release(1);
                }
            }
            Self::drop_unreadable(state, &delivery.entry);
            return;
        }
        let Some(link) = state.links.get(&delivery.consumer) else {
            state.queue.restore(delivery.entry);
            return;
        };
        if link.no_ack && delivery.entry.stored.is_some() {
            // Settled on send: the client never acknowledges it.
            let stored = delivery.entry.stored;
            state.settle([stored]);
        }
        let Some(link) = state.links.get(&delivery.consumer) else {
            return;
        };
        let item = Outbound::Deliver {
            channel: link.channel,
            consumer: delivery.consumer,
            tag: Arc::clone(&link.tag),
            no_ack: link.no_ack,
            queue: Arc::clone(self),
            entry: delivery.entry,
            flow: Arc::clone(&link.flow),
            credit: link.credit.clone(),
        };
        if let Err(e) = link.outbox.try_send(item) {
            // The connection is gone or over its bound: the message stays in the queue.
            link.flow.release();
            if let Some(credit) = &link.credit {
                credit.release(1);
            }
            if let Outbound::Deliver { entry, .. } = e.into_inner() {
                state.queue.restore(entry);
                self.note_expiry(state);
            }
        }
    }

    /// Enqueues a message. A persistent message in a durable queue is written to its log
    /// first; `confirm` is then told when it is on disk. Returns whether `confirm` was
    /// taken (otherwise the publish needs no wait for this queue).
    pub fn publish(
        self: &Arc<Self>,
        message: Arc<Message>,
        confirm: Option<Confirm>,
    ) -> (bool, Accepted) {
        self.publish_at(message, confirm, None)
    }

    /// Like [`QueueCell::publish`]; a `due_at` time replaces the TTL expiry (the hidden
    /// queue of a delayed exchange holds each message until it is due).
    pub fn publish_at(
        self: &Arc<Self>,
        message: Arc<Message>,
        confirm: Option<Confirm>,
        due_at: Option<i64>,
    ) -> (bool, Accepted) {
        let mut out = Vec::new();
        let mut state = self.lock();
        Self::expire(&mut state);
        let now = now_ms();
        let expires_at = due_at.or_else(|| state.queue.expiry_for(&message, now));
        if state.queue.would_reject(&message) {
            if state.queue.limits().overflow == Overflow::RejectPublishDlx {
                state.dead.push(Dead {
                    entry: Entry {
                        id: 0,
                        size: u32::try_from(message.body_len()).unwrap_or(u32::MAX),
                        paged: false,
                        message,
                        redelivered: false,
                        stored: None,
                        expires_at: None,
                        returns: 0,
                    },
                    reason: DeathReason::MaxLen,
                });
                self.hand_over_dead(&mut state);
            }
            return (false, Accepted::Rejected);
        }
        let mut stored = None;
        let mut waiting = false;
        if message.persistent
            && let Some(store) = state.store.as_mut()
        {
            match store.append(&message, expires_at) {
                Ok(offset) => {
                    stored = Some(offset);
                    if let Some(c) = confirm {
                        match store.wait(offset, c) {
                            Ok(()) => waiting = true,
                            Err(c) => c.done(false),
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot store message");
                    if let Some(c) = confirm {
                        c.done(false);
                        waiting = true;
                    }
                }
            }
        }
        let accepted = {
            let QueueState {
                queue, links, dead, ..
            } = &mut *state;
            let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.reserve());
            queue.publish(
                message,
                stored,
                expires_at,
                now,
                &mut reserve,
                &mut out,
                dead,
            )
        };
        self.send_all(&mut state, out);
        self.hand_over_dead(&mut state);
        if waiting {
            self.start_sync(&mut state);
        }
        (waiting, accepted)
    }

    /// Starts the next group fsync if writers wait and none runs.
    fn start_sync(self: &Arc<Self>, state: &mut QueueState) {
        if state.syncing {
            return;
        }
        let Some(store) = state.store.as_mut() else {
            return;
        };
        match store.sync_job() {
            Ok(Some(job)) => {
                state.syncing = true;
                let cell = Arc::clone(self);
                tokio::task::spawn_blocking(move || cell.run_syncs(job));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "cannot start fsync");
                for c in store.sync_failed() {
                    c.done(false);
                }
            }
        }
    }

    /// Runs group fsyncs on this blocking thread while writers wait: each finished one
    /// releases the confirms it covers, and the next is taken here rather than handed to
    /// another thread, which saves a thread hand-off per fsync on the confirm path.
    fn run_syncs(self: &Arc<Self>, mut job: sluice_engine::store::SyncJob) {
        loop {
            let result = job.run();
            let mut state = self.lock();
            self.finish_sync(&mut state, result);
            let Some(store) = state.store.as_mut() else {
                return;
            };
            match store.sync_job() {
                Ok(Some(next)) => {
                    state.syncing = true;
                    job = next;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot start fsync");
                    for c in store.sync_failed() {
                        c.done(false);
                    }
                    return;
                }
            }
        }
    }

    fn finish_sync(
        &self,
        state: &mut QueueState,
        result: Result<Synced, sluice_engine::store::LogError>,
    ) {
        state.syncing = false;
        let Some(store) = state.store.as_mut() else {
            return;
        };
        let waiters = match result {
            Ok(synced) => store
                .synced(synced)
                .into_iter()
                .map(|c| (c, true))
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "fsync failed");
                store
                    .sync_failed()
                    .into_iter()
                    .map(|c| (c, false))
                    .collect()
            }
        };
        for (c, ok) in waiters {
            c.done(ok);
        }
    }

    /// Runs the background work of the queue's storage: buffered settlements written,
    /// segments below the settled head freed, the settlement log compacted, and the
    /// fsyncs that are due (async flush policy, settlements), recorded so they release
    /// the confirms they cover. File work runs outside the queue's lock. Blocking: called
    /// from the flusher's blocking thread, one round at a time.
    pub fn flush_due(self: &Arc<Self>) {
        let (jobs, maintenance) = {
            let mut state = self.lock();
            let Some(store) = state.store.as_mut() else {
                return;
            };
            if let Err(e) = store.write_settlements() {
                tracing::error!(queue = %self.name, error = %e, "cannot write settlements");
            }
            let maintenance = store.maintenance().unwrap_or_else(|e| {
                tracing::error!(queue = %self.name, error = %e, "cannot plan storage maintenance");
                Vec::new()
            });
            match store.flush_jobs() {
                Ok(jobs) => (jobs, maintenance),
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot flush");
                    (Vec::new(), maintenance)
                }
            }
        };
        // Segment deletions and start-offset writes, outside the queue's lock.
        for job in maintenance {
            if let Err(e) = job.run() {
                tracing::error!(queue = %self.name, error = %e, "storage maintenance failed");
            }
        }
        if jobs.is_empty() {
            return;
        }
        let results: Vec<_> = jobs
            .into_iter()
            .map(|(which, job)| (which, job.run()))
            .collect();
        let mut state = self.lock();
        let Some(store) = state.store.as_mut() else {
            return;
        };
        let mut waiters = Vec::new();
        for (which, result) in results {
            waiters.extend(store.flushed(which, result));
        }
        for (c, ok) in waiters {
            c.done(ok);
        }
        // Writers that came after the flush job started wait for a job of their own.
        self.start_sync(&mut state);
    }

    /// Makes the queue's storage durable (clean shutdown). Blocking.
    pub fn close_store(&self) {
        let mut state = self.lock();
        if let Some(store) = state.store.as_mut()
            && let Err(e) = store.close()
        {
            tracing::error!(queue = %self.name, error = %e, "cannot close queue storage");
        }
    }

    pub fn dispatch(self: &Arc<Self>) {
        self.run(|q, reserve, out| q.dispatch(reserve, out));
    }

    pub fn ack(self: &Arc<Self>, ids: &[MessageId]) {
        self.settle_with(|q, reserve, out| q.settle_many(ids, reserve, out));
    }

    pub fn requeue(self: &Arc<Self>, ids: &[MessageId]) {
        let mut dead = Vec::new();
        let mut out = Vec::new();
        let mut state = self.lock();
        {
            let QueueState { queue, links, .. } = &mut *state;
            let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.reserve());
            queue.requeue(ids, now_ms(), &mut reserve, &mut out, &mut dead);
        }
        state.dead.extend(dead);
        self.send_all(&mut state, out);
        self.hand_over_dead(&mut state);
    }

    /// Rejects without requeue: the messages are dead-lettered (reason `rejected`).
    pub fn discard(self: &Arc<Self>, ids: &[MessageId]) {
        let mut out = Vec::new();
        let mut state = self.lock();
        let dropped = {
            let QueueState { queue, links, .. } = &mut *state;
            let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.reserve());
            queue.settle_many(ids, &mut reserve, &mut out)
        };
        state.dead.extend(dropped.into_iter().map(|entry| Dead {
            entry,
            reason: DeathReason::Rejected,
        }));
        self.send_all(&mut state, out);
        self.hand_over_dead(&mut state);
    }

    /// Runs an operation that settles entries, records them, and returns them.
    fn settle_with(
        self: &Arc<Self>,
        op: impl FnOnce(&mut Queue, Reserve2<'_>, &mut Vec<Delivery>) -> Vec<Entry>,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut state = self.lock();
        let settled = {
            let QueueState { queue, links, .. } = &mut *state;
            let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.reserve());
            op(queue, &mut reserve, &mut out)
        };
        state.settle(settled.iter().map(|e| e.stored));
        self.send_all(&mut state, out);
        settled
    }

    pub fn restore(&self, entry: Entry) {
        let mut state = self.lock();
        state.queue.restore(entry);
        self.note_expiry(&state);
    }

    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(Entry, u32)> {
        let mut state = self.lock();
        Self::expire(&mut state);
        self.hand_over_dead(&mut state);
        let mut entry = state.queue.get(no_ack)?;
        if !self.load(&mut state, &mut entry) {
            if no_ack {
                state.settle([entry.stored]);
            } else {
                Self::drop_unreadable(&mut state, &entry);
            }
            return None;
        }
        if no_ack {
            state.settle([entry.stored]);
        }
        Some((entry, state.queue.message_count()))
    }

    pub fn purge(&self) -> u32 {
        let mut state = self.lock();
        let purged = state.queue.purge();
        state.settle(purged.iter().map(|e| e.stored));
        u32::try_from(purged.len()).unwrap_or(u32::MAX)
    }

    pub fn counts(self: &Arc<Self>) -> (u32, u32) {
        let mut state = self.lock();
        Self::expire(&mut state);
        self.hand_over_dead(&mut state);
        (state.queue.message_count(), state.queue.consumer_count())
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    #[allow(clippy::too_many_arguments)]
    pub fn consume(
        self: &Arc<Self>,
        consumer: Consumer,
        outbox: Outbox,
        channel: u16,
        flow: Arc<Flow>,
        credit: Arc<ChannelCredit>,
    ) -> Result<(), QueueError> {
        let id = consumer.id;
        let link = Link {
            outbox,
            channel,
            tag: Arc::clone(&consumer.tag),
            no_ack: consumer.no_ack,
            flow,
            credit: (!consumer.no_ack).then_some(credit),
        };
        let mut out = Vec::new();
        let mut state = self.lock();
        Self::expire(&mut state);
        self.hand_over_dead(&mut state);
        state.links.insert(id, link);
        let result = {
            let QueueState { queue, links, .. } = &mut *state;
            let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.reserve());
            queue.consume(consumer, &mut reserve, &mut out)
        };
        if result.is_err() {
            state.links.remove(&id);
        }
        self.send_all(&mut state, out);
        result
    }

    /// Removes a consumer; returns whether the queue is now an unused auto-delete queue.
    pub fn cancel(&self, consumer: ConsumerId) -> bool {
        self.touch();
        let mut state = self.lock();
        state.links.remove(&consumer);
        state.queue.cancel(consumer);
        self.def.auto_delete && state.queue.unused_after_consumers()
    }
}

type Reserve2<'a> = &'a mut dyn FnMut(ConsumerId) -> bool;

/// Where a virtual host keeps its durable state.
#[derive(Debug)]
struct Storage {
    dir: PathBuf,
    log: LogConfig,
    clock: Arc<dyn Clock>,
    /// A definitions write is scheduled and has not read the state yet.
    definitions_pending: AtomicBool,
    /// Serialises definitions writes.
    definitions_lock: Mutex<()>,
    next_store_id: AtomicU64,
}

/// Where a direct reply goes: a connection's outbox, channel and consumer tag.
type ReplyConsumer = (Outbox, u16, Arc<str>);

/// One virtual host: its routing table and queues.
#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub router: RwLock<Router>,
    queues: RwLock<HashMap<Arc<str>, Arc<QueueCell>>>,
    storage: Option<Storage>,
    dead_letters: Arc<DeadLetters>,
    /// Direct reply-to consumers by their reply address.
    replies: Mutex<HashMap<Arc<str>, ReplyConsumer>>,
    /// Queues a declare may bring the vhost to (RabbitMQ's vhost `max-queues`).
    queues_max: AtomicUsize,
    /// The engine's streams that are this vhost's stream queues: the Kafka face's topics
    /// for `/`, a registry of the vhost's own (not seen by Kafka) for the others.
    streams: std::sync::OnceLock<Arc<Topics>>,
    /// The streams above are this vhost's to flush, trim and close.
    owns_streams: AtomicBool,
    /// Stored bindings whose queue was not known when the vhost opened: bindings to
    /// stream queues, restored once the streams are attached.
    pending_bindings: Mutex<Vec<sluice_engine::routing::Binding>>,
    /// Queues by their next message expiry.
    timers: Arc<Timers>,
    /// Queues with `x-expires`, checked for an ended lease every round.
    leased: Mutex<std::collections::HashSet<Arc<str>>>,
}

impl VHost {
    pub fn new(name: &str) -> Self {
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
    fn own_streams(&self) -> Option<&Arc<Topics>> {
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
        let found = crate::stream_queue::partition(topics, name)?;
        // A topic created over Kafka becomes a queue bindings may name.
        if !self.router().has_queue(name) {
            self.router_mut().add_queue(name.into());
        }
        Some(found)
    }

    pub fn queue_count(&self) -> usize {
        self.queues.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Applies the broker's limits to what clients create from now on.
    pub fn set_limits(&self, limits: &AmqpLimits) {
        self.queues_max.store(limits.queues_max, Ordering::Relaxed);
        self.router_mut().set_limits(RouterLimits {
            exchanges_max: limits.exchanges_max,
            bindings_max: limits.bindings_max,
        });
    }

    /// Registers a direct reply-to consumer under its reply address.
    pub fn add_reply_consumer(
        &self,
        address: Arc<str>,
        outbox: Outbox,
        channel: u16,
        tag: Arc<str>,
    ) {
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address, (outbox, channel, tag));
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
        let Some((outbox, channel, tag)) = replies.get(address) else {
            return false;
        };
        outbox
            .try_send(Outbound::Direct {
                channel: *channel,
                tag: Arc::clone(tag),
                message,
            })
            .is_ok()
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
                let Some(message) = crate::dead_letter::dead_lettered(
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
        let headers = crate::props::read_known(&message.properties, true)
            .ok()
            .and_then(|k| k.headers);
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
                let now = SystemClock.now_ms();
                crate::stream_queue::publish(&partition, message, now).is_ok()
            }
            None => false,
        }
    }

    /// Expires due messages in every queue and dead-letters them (timer).
    pub fn expire_due(&self) {
        let now = now_ms();
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
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir.join("queues"))
            .map_err(|e| OpenError::Io(dir.to_path_buf(), e))?;
        let path = dir.join("definitions");
        let defs = Definitions::load(&path).map_err(|e| OpenError::Io(path.clone(), e))?;
        let next_id = defs.queues.iter().map(|q| q.id + 1).max().unwrap_or(1);
        let mut vhost = VHost::new(name);
        let own_streams = (name != "/")
            .then(|| open_vhost_streams(dir, &log, Arc::clone(&clock)))
            .transpose()?;
        vhost.storage = Some(Storage {
            dir: dir.to_path_buf(),
            log,
            clock,
            definitions_pending: AtomicBool::new(false),
            definitions_lock: Mutex::new(()),
            next_store_id: AtomicU64::new(next_id),
        });
        {
            let mut router = vhost.router_mut();
            for e in defs.exchanges {
                let name = e.name.clone();
                if let Err(err) = router.declare_exchange(e) {
                    tracing::warn!(exchange = %name, error = %err, "stored exchange not restored");
                }
            }
        }
        for q in defs.queues {
            vhost.restore_queue(q)?;
        }
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

    fn restore_queue(&self, record: QueueRecord) -> Result<(), OpenError> {
        let Some(storage) = &self.storage else {
            return Ok(());
        };
        let dir = storage.dir.join("queues").join(record.id.to_string());
        let name: Arc<str> = record.name.as_str().into();
        let settings =
            queue_settings(&record.arguments, true, false, record.auto_delete).unwrap_or_default();
        let mut queue = Queue::with_limits(Arc::clone(&name), settings.limits.clone());
        // Messages beyond the resident share are paged out as they are read back, so a
        // long queue comes back without its bodies in memory.
        queue.set_paging(Some(RESIDENT_BYTES_PER_QUEUE));
        let mut count = 0usize;
        let store =
            QueueStore::open_each(&dir, storage.log.clone(), Arc::clone(&storage.clock), |r| {
                count += 1;
                // Whether it was delivered before the restart is not recorded: flag it as
                // possibly seen, as the AMQP `redelivered` bit allows.
                queue.push(Arc::new(r.message), Some(r.offset), true, r.expires_at);
            })
            .map_err(|e| OpenError::Store(dir.clone(), e))?;
        tracing::info!(queue = %name, messages = count, "durable queue restored");
        let def = QueueDef {
            durable: true,
            exclusive_owner: None,
            auto_delete: record.auto_delete,
            arguments: record.arguments,
            settings,
        };
        self.insert_queue(name, def, Some(record.id), queue, Some(store));
        Ok(())
    }

    fn insert_queue(
        &self,
        name: Arc<str>,
        def: QueueDef,
        store_id: Option<u64>,
        mut queue: Queue,
        store: Option<QueueStore<Confirm>>,
    ) -> Arc<QueueCell> {
        if store.is_some() {
            queue.set_paging(Some(RESIDENT_BYTES_PER_QUEUE));
        }
        let cell = Arc::new(QueueCell {
            name: Arc::clone(&name),
            def,
            store_id,
            state: Mutex::new(QueueState {
                queue,
                links: HashMap::new(),
                deleted: false,
                store,
                syncing: false,
                dead: Vec::new(),
            }),
            dead_letters: Arc::clone(&self.dead_letters),
            last_used_ms: AtomicI64::new(now_ms()),
            timers: Arc::clone(&self.timers),
            timer_at: AtomicI64::new(i64::MAX),
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
                                    .is_some_and(|t| crate::stream_queue::partition(t, q).is_some())
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
        let path = storage.dir.join("definitions");
        if let Err(e) = self.snapshot().save(&path) {
            tracing::error!(path = %path.display(), error = %e, "cannot save definitions");
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
        let mut store_id = None;
        if def.durable
            && def.exclusive_owner.is_none()
            && let Some(storage) = &self.storage
        {
            let id = storage.next_store_id.fetch_add(1, Ordering::Relaxed);
            let dir = storage.dir.join("queues").join(id.to_string());
            let (s, _) = blocking(|| {
                // A directory left by a queue deleted before a crash holds nothing we want.
                let _ = std::fs::remove_dir_all(&dir);
                QueueStore::open(&dir, storage.log.clone(), Arc::clone(&storage.clock))
            })
            .map_err(|e| OpenError::Store(dir.clone(), e))?;
            store = Some(s);
            store_id = Some(id);
        }
        let queue = Queue::with_limits(Arc::clone(&name), def.settings.limits.clone());
        Ok((self.insert_queue(name, def, store_id, queue, store), true))
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
        state.queue.purge();
        if let Some(store) = state.store.take() {
            let dir = store.dir().to_path_buf();
            drop(store);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove deleted queue's storage");
                }
            });
        }
        for (consumer, link) in state.links.drain() {
            let _ = link.outbox.try_send(Outbound::Cancelled {
                channel: link.channel,
                consumer,
                tag: link.tag,
            });
        }
        count
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
    pub users: crate::auth::Users,
    next_id: AtomicU64,
    pub message_bytes_max: usize,
    pub alarms: Alarms,
}

/// Stream queues of a vhost other than `/`, under its directory: topics of one
/// partition that Kafka does not see. They keep what their arguments ask for; the rest
/// of their settings come from the storage defaults.
fn open_vhost_streams(
    dir: &Path,
    log: &LogConfig,
    clock: Arc<dyn Clock>,
) -> Result<Topics, OpenError> {
    let defaults = sluice_engine::stream::TopicConfig {
        segment_bytes: log.segment_bytes,
        retention_bytes: None,
        retention_ms: None,
        flush_sync: log.flush == sluice_engine::stream::FlushPolicy::Sync,
        ..sluice_engine::stream::TopicConfig::default()
    };
    let limit = AmqpLimits::default().queues_max;
    Topics::open(
        dir,
        defaults,
        log.clone(),
        clock,
        i32::try_from(limit).unwrap_or(i32::MAX),
        limit,
    )
    .map_err(|e| OpenError::Io(dir.join("topics"), e))
}

/// Directory of a virtual host's data: `default` for `/`, else the name in hex (names may
/// hold any characters).
fn vhost_dir_name(name: &str) -> String {
    if name == "/" {
        return "default".to_string();
    }
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("v-{hex}")
}

impl Broker {
    /// A broker that keeps everything in memory, with the virtual host `/`.
    pub fn in_memory(message_bytes_max: usize) -> Self {
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_string(), Arc::new(VHost::new("/")));
        let mut broker = Broker {
            vhosts,
            limits: AmqpLimits::default(),
            next_id: AtomicU64::new(1),
            message_bytes_max,
            alarms: Alarms::default(),
            users: crate::auth::Users::default(),
        };
        broker.set_limits(AmqpLimits::default());
        broker
    }

    /// Sets what clients may create from now on; what exists stays.
    pub fn set_limits(&mut self, limits: AmqpLimits) {
        self.limits = limits;
        for vhost in self.vhosts.values() {
            vhost.set_limits(&limits);
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
            let vhost_dir = dir.join("vhosts").join(vhost_dir_name(name));
            let vhost = VHost::open(name, &vhost_dir, log.clone(), Arc::new(SystemClock))?;
            vhosts.insert(name.clone(), Arc::new(vhost));
        }
        // Recovery above restored everything stored; limits apply to what comes next.
        let mut broker = Broker {
            vhosts,
            limits: AmqpLimits::default(),
            next_id: AtomicU64::new(1),
            message_bytes_max,
            alarms: Alarms::default(),
            users: crate::auth::Users::default(),
        };
        broker.set_limits(AmqpLimits::default());
        Ok(broker)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
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

    /// Runs the fsyncs that are due in every durable queue and in the stream queues the
    /// vhosts keep themselves. Blocking.
    pub fn flush_due(&self) {
        for queue in self.vhosts.values().flat_map(|v| v.durable_queues()) {
            queue.flush_due();
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
        for queue in self.vhosts.values().flat_map(|v| v.durable_queues()) {
            queue.close_store();
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
