//! Shared broker state behind the AMQP face: the virtual host's routing table and its
//! queues, and the links from each queue's consumers to their connections.
//!
//! Locking: the router sits behind a read-write lock (routing reads it; declarations
//! write it); each queue has its own mutex, taken for one operation at a time and never
//! while another queue's is held, so publishers to different queues do not contend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use sluice_core::{Message, Table};
use sluice_engine::queue::{Consumer, ConsumerId, Delivery, Entry, MessageId, Queue, QueueError};
use sluice_engine::routing::Router;
use tokio::sync::mpsc;

/// Deliveries a consumer's connection may hold unwritten; past it the queue keeps the
/// messages and resumes when the connection has written some.
pub const FLOW_BUFFERED_MAX: u32 = 1024;

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
    },
    /// The queue behind a consumer went away: tell the client (`basic.cancel`).
    Cancelled {
        channel: u16,
        consumer: ConsumerId,
        tag: Arc<str>,
    },
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: Table,
}

#[derive(Debug)]
pub struct QueueState {
    pub queue: Queue,
    links: HashMap<ConsumerId, Link>,
    pub deleted: bool,
}

#[derive(Debug)]
pub struct QueueCell {
    pub name: Arc<str>,
    pub def: QueueDef,
    state: Mutex<QueueState>,
}

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
        let QueueState { queue, links, .. } = &mut *state;
        let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.flow.reserve());
        let result = op(queue, &mut reserve, &mut out);
        for delivery in out {
            self.send(&mut state, delivery);
        }
        result
    }

    fn send(self: &Arc<Self>, state: &mut QueueState, delivery: Delivery) {
        let Some(link) = state.links.get(&delivery.consumer) else {
            state.queue.restore(delivery.entry);
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
        };
        if let Err(e) = link.outbox.try_send(item) {
            // The connection is gone or over its bound: the message stays in the queue.
            link.flow.release();
            if let Outbound::Deliver { entry, .. } = e.into_inner() {
                state.queue.restore(entry);
            }
        }
    }

    pub fn publish(self: &Arc<Self>, message: Arc<Message>) {
        self.run(|q, reserve, out| {
            q.publish(message, reserve, out);
        });
    }

    pub fn dispatch(self: &Arc<Self>) {
        self.run(|q, reserve, out| q.dispatch(reserve, out));
    }

    pub fn ack(self: &Arc<Self>, ids: &[MessageId]) {
        self.run(|q, reserve, out| q.ack(ids, reserve, out));
    }

    pub fn requeue(self: &Arc<Self>, ids: &[MessageId]) {
        self.run(|q, reserve, out| q.requeue(ids, reserve, out));
    }

    pub fn discard(self: &Arc<Self>, ids: &[MessageId]) -> Vec<Entry> {
        self.run(|q, reserve, out| q.discard(ids, reserve, out))
    }

    pub fn restore(&self, entry: Entry) {
        self.lock().queue.restore(entry);
    }

    pub fn get(&self, no_ack: bool) -> Option<(Entry, u32)> {
        let mut state = self.lock();
        let entry = state.queue.get(no_ack)?;
        Some((entry, state.queue.message_count()))
    }

    pub fn purge(&self) -> u32 {
        self.lock().queue.purge()
    }

    pub fn counts(&self) -> (u32, u32) {
        let state = self.lock();
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
    ) -> Result<(), QueueError> {
        let id = consumer.id;
        let link = Link {
            outbox,
            channel,
            tag: Arc::clone(&consumer.tag),
            no_ack: consumer.no_ack,
            flow,
        };
        let mut out = Vec::new();
        let mut state = self.lock();
        state.links.insert(id, link);
        let QueueState { queue, links, .. } = &mut *state;
        let mut reserve = |c: ConsumerId| links.get(&c).is_some_and(|l| l.flow.reserve());
        let result = queue.consume(consumer, &mut reserve, &mut out);
        if result.is_err() {
            state.links.remove(&id);
        }
        for delivery in out {
            self.send(&mut state, delivery);
        }
        result
    }

    /// Removes a consumer; returns whether the queue is now an unused auto-delete queue.
    pub fn cancel(&self, consumer: ConsumerId) -> bool {
        let mut state = self.lock();
        state.links.remove(&consumer);
        state.queue.cancel(consumer);
        self.def.auto_delete && state.queue.unused_after_consumers()
    }
}

type Reserve2<'a> = &'a mut dyn FnMut(ConsumerId) -> bool;

/// One virtual host: its routing table and queues.
#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub router: RwLock<Router>,
    queues: RwLock<HashMap<Arc<str>, Arc<QueueCell>>>,
}

impl VHost {
    pub fn new(name: &str) -> Self {
        VHost {
            name: name.to_string(),
            router: RwLock::new(Router::new()),
            queues: RwLock::new(HashMap::new()),
        }
    }

    pub fn router(&self) -> std::sync::RwLockReadGuard<'_, Router> {
        self.router.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn router_mut(&self) -> std::sync::RwLockWriteGuard<'_, Router> {
        self.router.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn queue(&self, name: &str) -> Option<Arc<QueueCell>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Creates the queue unless one of that name exists; returns the queue and whether it
    /// was created.
    pub fn declare_queue(&self, name: Arc<str>, def: QueueDef) -> (Arc<QueueCell>, bool) {
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = queues.get(&name) {
            return (Arc::clone(existing), false);
        }
        let cell = Arc::new(QueueCell {
            name: Arc::clone(&name),
            def,
            state: Mutex::new(QueueState {
                queue: Queue::new(Arc::clone(&name)),
                links: HashMap::new(),
                deleted: false,
            }),
        });
        queues.insert(Arc::clone(&name), Arc::clone(&cell));
        drop(queues);
        self.router_mut().add_queue(name);
        (cell, true)
    }

    /// Deletes a queue: unbinds it, tells its consumers' connections, returns how many
    /// ready messages it held.
    pub fn delete_queue(&self, name: &str) -> u32 {
        let removed = self
            .queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let Some(cell) = removed else { return 0 };
        let _ = self.router_mut().remove_queue(name);
        let mut state = cell.lock();
        state.deleted = true;
        let count = state.queue.message_count();
        state.queue.purge();
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

/// The broker as the AMQP face sees it.
#[derive(Debug)]
pub struct Broker {
    vhost: Arc<VHost>,
    next_id: AtomicU64,
    pub message_bytes_max: usize,
}

impl Broker {
    pub fn new(message_bytes_max: usize) -> Self {
        Broker {
            vhost: Arc::new(VHost::new("/")),
            next_id: AtomicU64::new(1),
            message_bytes_max,
        }
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        (name == self.vhost.name).then(|| Arc::clone(&self.vhost))
    }

    /// A fresh id for a connection or consumer.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
