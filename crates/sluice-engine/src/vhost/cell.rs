//! A queue as the engine runs it: the queue's state machine (`Queue`), its durable log,
//! its consumers' links to their connections, group fsyncs, expiry and the hand-off of
//! dead messages, behind one mutex taken for one short, I/O-free operation at a time
//! (fsyncs run as jobs outside it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_core::{Clock, Message, Table};

use super::flow::{ChannelCredit, Confirm, Flow};
use super::journal::SharedJournal;
use crate::queue::{
    Accepted, Consumer, ConsumerId, Dead, DeathReason, Delivery, Entry, MessageId, Overflow, Queue,
    QueueError,
};

pub type ConnectionId = u64;

/// Where a consumer's deliveries go: its connection, in the face's terms.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Hands a delivery to the consumer's connection; gives the entry back when the
    /// connection is gone or cannot take more now.
    fn deliver(
        &self,
        queue: &Arc<QueueCell>,
        consumer: ConsumerId,
        entry: Entry,
    ) -> Result<(), Entry>;
    /// The queue went away (deleted): the consumer is cancelled.
    fn cancelled(&self, consumer: ConsumerId);
}

/// What a queue's arguments ask for (each face reads them from its own declaration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    pub limits: crate::queue::Limits,
    pub dead_letter_exchange: Option<Arc<str>>,
    pub dead_letter_routing_key: Option<Arc<str>>,
    /// Delete the queue after it has been unused this long (`x-expires`).
    pub expires_ms: Option<u64>,
    /// The hidden queue of a delayed exchange: messages leave it when due and are routed
    /// through `dead_letter_exchange` unchanged.
    pub delay: bool,
    /// A quorum queue: deliveries carry their delivery count.
    pub quorum: bool,
}

#[derive(Debug)]
pub(super) struct Link {
    pub(super) sink: Box<dyn Sink>,
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
    pub(super) pending: std::sync::atomic::AtomicBool,
    pub(super) items: Mutex<Vec<(Arc<QueueCell>, Dead)>>,
}

#[derive(Debug)]
pub struct QueueState {
    pub queue: Queue,
    pub(super) links: HashMap<ConsumerId, Link>,
    pub deleted: bool,
    /// Where a durable queue's persistent messages are stored.
    pub(super) store: Option<Stored>,
    /// Messages that left the queue during the current operation.
    pub(super) dead: Vec<Dead>,
    /// Messages taken in, handed to consumers or gets, and acknowledged, since the
    /// broker started (for rates; counted under the lock the operation holds anyway).
    pub(super) counts: QueueCounts,
}

/// A queue's message counters since the broker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub published: u64,
    pub delivered: u64,
    pub acknowledged: u64,
}

/// A durable queue's place in its vhost's journal.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) journal: Arc<SharedJournal>,
    pub(super) id: u64,
}

impl QueueState {
    /// Records settled entries in the journal (acknowledged, dropped or auto-acked).
    fn settle(&mut self, entries: impl IntoIterator<Item = Option<u64>>) {
        let Some(store) = self.store.as_ref() else {
            return;
        };
        let mut offsets = [0u64; 16];
        let mut n = 0;
        for o in entries.into_iter().flatten() {
            if n == offsets.len() {
                store.journal.settle(store.id, &offsets);
                n = 0;
            }
            if let Some(slot) = offsets.get_mut(n) {
                *slot = o;
                n += 1;
            }
        }
        store
            .journal
            .settle(store.id, offsets.get(..n).unwrap_or_default());
    }
}

/// A consumer of a queue as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    pub tag: Arc<str>,
    pub ack_required: bool,
    pub prefetch: u32,
    pub exclusive: bool,
    /// It gets deliveries now (not waiting as a single-active consumer's standby).
    pub active: bool,
}

/// A queue's counts as an operator sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u32,
    pub unacked: u32,
    pub consumers: u32,
    pub ready_bytes: u64,
    pub unacked_bytes: u64,
    pub consumer_list: Vec<ConsumerStats>,
    pub counts: QueueCounts,
    /// When it was last used (declared, consumed from, read), in ms since the epoch.
    pub idle_since_ms: i64,
}

#[derive(Debug)]
pub struct QueueCell {
    pub name: Arc<str>,
    pub def: QueueDef,
    /// Storage directory id of a durable queue.
    pub store_id: Option<u64>,
    pub(super) state: Mutex<QueueState>,
    pub(super) dead_letters: Arc<DeadLetters>,
    /// Last time the queue was used (declared, consumed from, read), for `x-expires`.
    pub(super) last_used_ms: AtomicI64,
    /// The vhost's expiry timers, and when this queue's fires (`i64::MAX`: not set).
    pub(super) timers: Arc<Timers>,
    pub(super) timer_at: AtomicI64,
    pub(super) clock: Arc<dyn Clock>,
}

/// A vhost's expiry timers: the queues holding messages with a TTL, by their next
/// expiry, so an expiry round touches the queues that are due.
pub type Timers = Mutex<crate::scheduler::Scheduler<Arc<str>>>;

impl QueueCell {
    pub(super) fn lock(&self) -> MutexGuard<'_, QueueState> {
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
        self.expire(&mut state);
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
    fn expire(&self, state: &mut QueueState) {
        let now = self.clock.now_ms();
        if state.queue.next_expiry().is_some_and(|at| at <= now) {
            let QueueState { queue, dead, .. } = state;
            queue.expire(now, dead);
        }
    }

    /// Sets the expiry timer for the queue's next expiry when it is earlier than the one
    /// set (called with the queue locked, after every change to its ready messages).
    pub(super) fn note_expiry(&self, state: &QueueState) {
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
        self.last_used_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// Whether an `x-expires` queue has been unused for its whole lease.
    pub(super) fn lease_over(&self, now: i64) -> bool {
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
        self.expire(&mut state);
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
        let (Some(store), Some(offset)) = (state.store.as_ref(), entry.stored) else {
            return false;
        };
        match store.journal.read(offset) {
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
        state.counts.delivered += 1;
        if let Err(entry) = link.sink.deliver(self, delivery.consumer, delivery.entry) {
            state.counts.delivered -= 1;
            // The connection is gone or over its bound: the message stays in the queue.
            link.flow.release();
            if let Some(credit) = &link.credit {
                credit.release(1);
            }
            state.queue.restore(entry);
            self.note_expiry(state);
        }
    }

    /// Enqueues a message. A persistent message in a durable queue is written to the
    /// journal first; `confirm` is then told when it is on disk. Returns whether
    /// `confirm` was taken (otherwise the publish needs no wait for this queue).
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
        // One queue: the whole publish under one hold of its lock (the journal's lock is
        // taken inside it, never the other way round).
        let mut state = self.lock();
        let Some(expires_at) = self.admit_locked(&mut state, &message, due_at) else {
            return (false, Accepted::Rejected);
        };
        let mut stored = None;
        let mut taken = false;
        if message.persistent
            && let Some(store) = state.store.as_ref()
        {
            taken = confirm.is_some();
            stored = store
                .journal
                .append(&message, &[(store.id, expires_at)], confirm);
        }
        (
            taken,
            self.enqueue_locked(&mut state, message, stored, expires_at),
        )
    }

    /// The queue's place in the journal, if it is durable.
    pub(super) fn store(&self) -> Option<Stored> {
        self.lock().store.clone()
    }

    /// The first step of a publish: expires what is due and checks the length limits.
    /// Returns the message's expiry time, or `None` when `reject-publish` refuses it
    /// (dead-lettered first under `reject-publish-dlx`).
    pub(super) fn admit(
        self: &Arc<Self>,
        message: &Arc<Message>,
        due_at: Option<i64>,
    ) -> Option<Option<i64>> {
        self.admit_locked(&mut self.lock(), message, due_at)
    }

    fn admit_locked(
        self: &Arc<Self>,
        state: &mut QueueState,
        message: &Arc<Message>,
        due_at: Option<i64>,
    ) -> Option<Option<i64>> {
        self.expire(state);
        let now = self.clock.now_ms();
        if state.queue.would_reject(message) {
            if state.queue.limits().overflow == Overflow::RejectPublishDlx {
                state.dead.push(Dead {
                    entry: Entry {
                        id: 0,
                        size: u32::try_from(message.body_len()).unwrap_or(u32::MAX),
                        paged: false,
                        message: Arc::clone(message),
                        redelivered: false,
                        stored: None,
                        expires_at: None,
                        returns: 0,
                    },
                    reason: DeathReason::MaxLen,
                });
            }
            self.hand_over_dead(state);
            return None;
        }
        Some(due_at.or_else(|| state.queue.expiry_for(message, now)))
    }

    /// The last step of a publish: the message, stored at `stored` if it is, joins the
    /// queue and is dispatched. A queue deleted or filled since [`QueueCell::admit`]
    /// settles it at once.
    pub(super) fn enqueue(
        self: &Arc<Self>,
        message: Arc<Message>,
        stored: Option<u64>,
        expires_at: Option<i64>,
    ) -> Accepted {
        self.enqueue_locked(&mut self.lock(), message, stored, expires_at)
    }

    fn enqueue_locked(
        self: &Arc<Self>,
        state: &mut QueueState,
        message: Arc<Message>,
        stored: Option<u64>,
        expires_at: Option<i64>,
    ) -> Accepted {
        let mut out = Vec::new();
        if state.deleted {
            return Accepted::Rejected;
        }
        self.expire(state);
        let now = self.clock.now_ms();
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
        if accepted == Accepted::Rejected {
            state.settle([stored]);
        } else {
            state.counts.published += 1;
        }
        self.send_all(state, out);
        self.hand_over_dead(state);
        accepted
    }

    pub fn dispatch(self: &Arc<Self>) {
        self.run(|q, reserve, out| q.dispatch(reserve, out));
    }

    pub fn ack(self: &Arc<Self>, ids: &[MessageId]) {
        let settled = self.settle_with(|q, reserve, out| q.settle_many(ids, reserve, out));
        self.lock().counts.acknowledged += settled.len() as u64;
    }

    pub fn requeue(self: &Arc<Self>, ids: &[MessageId]) {
        let mut dead = Vec::new();
        let mut out = Vec::new();
        let mut state = self.lock();
        {
            let QueueState { queue, links, .. } = &mut *state;
            let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.reserve());
            queue.requeue(ids, self.clock.now_ms(), &mut reserve, &mut out, &mut dead);
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
        self.expire(&mut state);
        self.hand_over_dead(&mut state);
        let mut entry = state.queue.get(no_ack)?;
        state.counts.delivered += 1;
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
        self.expire(&mut state);
        self.hand_over_dead(&mut state);
        (state.queue.message_count(), state.queue.consumer_count())
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// What an operator sees of the queue now (expired messages are gone first).
    pub fn stats(self: &Arc<Self>) -> QueueStats {
        let mut state = self.lock();
        self.expire(&mut state);
        self.hand_over_dead(&mut state);
        let q = &state.queue;
        QueueStats {
            ready: q.message_count(),
            unacked: u32::try_from(q.unacked_count()).unwrap_or(u32::MAX),
            consumers: q.consumer_count(),
            ready_bytes: q.ready_bytes(),
            unacked_bytes: q.unacked_bytes(),
            counts: state.counts,
            consumer_list: q
                .consumers()
                .iter()
                .map(|c| ConsumerStats {
                    tag: Arc::clone(&c.tag),
                    ack_required: !c.no_ack,
                    prefetch: c.prefetch,
                    exclusive: c.exclusive,
                    active: q.active_consumer().is_none_or(|a| a == c.id),
                })
                .collect(),
            idle_since_ms: self.last_used_ms.load(Ordering::Relaxed),
        }
    }

    /// Adds a consumer whose deliveries go to `sink`; `credit` is its channel's
    /// prefetch, which only manual-ack consumers count against.
    pub fn consume(
        self: &Arc<Self>,
        consumer: Consumer,
        sink: Box<dyn Sink>,
        flow: Arc<Flow>,
        credit: Arc<ChannelCredit>,
    ) -> Result<(), QueueError> {
        let id = consumer.id;
        let link = Link {
            sink,
            no_ack: consumer.no_ack,
            flow,
            credit: (!consumer.no_ack).then_some(credit),
        };
        let mut out = Vec::new();
        let mut state = self.lock();
        self.expire(&mut state);
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
