//! One AMQP queue's state as a deterministic core: ready messages in order, deliveries
//! awaiting acknowledgement, consumers with prefetch credit, and fair (round-robin)
//! dispatch. No I/O and no clock: the caller feeds operations in and sends the
//! [`Delivery`] values that come out to the consumers' connections.
//!
//! Invariants: a message is either ready or unacked, never both; ids only grow, and ready
//! messages stay ordered by id, so a requeued message returns to its original place.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::Message;

use crate::ready::Ready;

/// Identifies a consumer across the broker; assigned by the face.
pub type ConsumerId = u64;
/// A message's position in its queue.
pub type MessageId = u64;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: MessageId,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Where the message is stored on disk (its offset in the queue's log), if it is.
    pub stored: Option<u64>,
    /// When the message expires (queue or per-message TTL), in ms since the epoch.
    pub expires_at: Option<i64>,
    /// Times it came back unacknowledged (for `x-delivery-limit`).
    pub returns: u32,
    /// Body length, kept when the body itself is paged out.
    pub size: u32,
    /// Body and properties were dropped from memory: they are read back from the store
    /// (at `stored`) before the message leaves the queue.
    pub paged: bool,
}

impl Entry {
    /// Drops the body and properties of a stored message, keeping what the queue needs
    /// (routing fields, priority, expiry). `like` is a stub to share when it says the
    /// same, as consecutive messages of one stream mostly do.
    pub fn page_out(&mut self, like: Option<&Arc<Message>>) {
        if self.paged || self.stored.is_none() {
            return;
        }
        let m = &self.message;
        if let Some(stub) = like
            && stub.exchange == m.exchange
            && stub.routing_key == m.routing_key
            && stub.persistent == m.persistent
            && stub.priority == m.priority
            && stub.expiration_ms == m.expiration_ms
        {
            self.message = Arc::clone(stub);
            self.paged = true;
            return;
        }
        self.message = Arc::new(Message {
            exchange: Arc::clone(&m.exchange),
            routing_key: Arc::clone(&m.routing_key),
            properties: bytes::Bytes::new(),
            body: bytes::Bytes::new(),
            persistent: m.persistent,
            priority: m.priority,
            expiration_ms: m.expiration_ms,
        });
        self.paged = true;
    }
}

/// Asked once for a chosen consumer: may its connection take one more delivery now?
/// Answering `true` reserves that delivery.
pub type Reserve<'a> = &'a mut dyn FnMut(ConsumerId) -> bool;

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub consumer: ConsumerId,
    pub entry: Entry,
}

/// What happens when a length limit is reached (`x-overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// A queue's limits from its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub message_ttl_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// 0 = no priorities.
    pub max_priority: u8,
    pub single_active_consumer: bool,
    /// Dead-letter a message that came back unacknowledged more than this many times.
    pub delivery_limit: Option<u32>,
}

/// Why a message left its queue for the dead-letter exchange (the `x-death` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message removed from the queue that may be dead-lettered.
#[derive(Debug, Clone)]
pub struct Dead {
    pub entry: Entry,
    pub reason: DeathReason,
}

/// The outcome of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Queued(MessageId),
    /// Refused by `reject-publish` overflow.
    Rejected,
}

#[derive(Debug, Clone)]
pub struct Consumer {
    pub id: ConsumerId,
    pub tag: Arc<str>,
    /// Deliveries are settled on send; no credit is used.
    pub no_ack: bool,
    /// Most unacked deliveries at once; 0 = unlimited.
    pub prefetch: u32,
    pub exclusive: bool,
    pub priority: i32,
    pub unacked: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue '{0}' in exclusive use")]
    ExclusiveConsumer(String),
    #[error("unknown delivery {0}")]
    UnknownDelivery(MessageId),
}

impl QueueError {
    /// The AMQP reply code RabbitMQ uses for this condition.
    pub fn reply_code(&self) -> u16 {
        match self {
            QueueError::ExclusiveConsumer(_) => 403,
            QueueError::UnknownDelivery(_) => 406,
        }
    }
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    limits: Limits,
    next_id: MessageId,
    /// See [`Queue::set_paging`].
    page_above: Option<u64>,
    /// The last paged-out stub, shared by the next ones that say the same.
    last_stub: Option<Arc<Message>>,
    ready: Ready,
    unacked: HashMap<MessageId, (Entry, Option<ConsumerId>)>,
    /// Ordered by priority (highest first), then by arrival.
    consumers: Vec<Consumer>,
    /// Index in `consumers` where the next round-robin search starts.
    cursor: usize,
    had_consumer: bool,
}

impl Queue {
    pub fn new(name: Arc<str>) -> Self {
        Queue::with_limits(name, Limits::default())
    }

    pub fn with_limits(name: Arc<str>, limits: Limits) -> Self {
        Queue {
            name,
            ready: Ready::new(limits.max_priority),
            limits,
            next_id: 0,
            page_above: None,
            last_stub: None,
            unacked: HashMap::new(),
            consumers: Vec::new(),
            cursor: 0,
            had_consumer: false,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stored messages pushed while more than `bytes` of bodies are ready are paged out
    /// (their bodies stay on disk only).
    pub fn set_paging(&mut self, bytes: Option<u64>) {
        self.page_above = bytes;
    }

    pub fn message_count(&self) -> u32 {
        u32::try_from(self.ready.len()).unwrap_or(u32::MAX)
    }

    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    pub fn ready_bytes(&self) -> u64 {
        self.ready.bytes()
    }

    /// Body bytes of the deliveries not yet acknowledged (a walk: for inspection only).
    pub fn unacked_bytes(&self) -> u64 {
        self.unacked.values().map(|(e, _)| u64::from(e.size)).sum()
    }

    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.consumers.len()).unwrap_or(u32::MAX)
    }

    pub fn consumers(&self) -> &[Consumer] {
        &self.consumers
    }

    /// Whether an auto-delete queue should go now: it had a consumer and has none left.
    pub fn unused_after_consumers(&self) -> bool {
        self.had_consumer && self.consumers.is_empty()
    }

    /// When the next ready message expires.
    pub fn next_expiry(&self) -> Option<i64> {
        self.ready.next_expiry()
    }

    /// When a message published now expires under the queue's and its own TTL.
    pub fn expiry_for(&self, message: &Message, now_ms: i64) -> Option<i64> {
        let ttl = match (self.limits.message_ttl_ms, message.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(now_ms.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)))
    }

    /// Whether a publish of `message` would be refused by `reject-publish` overflow.
    pub fn would_reject(&self, message: &Message) -> bool {
        self.limits.overflow != Overflow::DropHead && self.full(message.body_len() as u64)
    }

    fn full(&self, extra_bytes: u64) -> bool {
        self.limits
            .max_length
            .is_some_and(|m| self.ready.len() as u64 >= m)
            || self
                .limits
                .max_length_bytes
                .is_some_and(|m| self.ready.bytes() + extra_bytes > m)
    }

    /// Adds a message at the tail, dispatches, then applies the length limits and
    /// expires what is due (a TTL of 0 only reaches a consumer waiting right now).
    /// `expires_at` comes from [`Queue::expiry_for`] (or a delay's due time).
    /// `reserve` is asked once per chosen consumer whether its connection can take
    /// another delivery now, and counts it.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &mut self,
        message: Arc<Message>,
        stored: Option<u64>,
        expires_at: Option<i64>,
        now_ms: i64,
        reserve: Reserve<'_>,
        out: &mut Vec<Delivery>,
        dead: &mut Vec<Dead>,
    ) -> Accepted {
        if self.limits.overflow != Overflow::DropHead && self.full(message.body_len() as u64) {
            return Accepted::Rejected;
        }
        let id = self.push(message, stored, false, expires_at);
        self.dispatch(reserve, out);
        if self.limits.overflow == Overflow::DropHead {
            while self.full(0) && !self.ready.is_empty() {
                let over_count = self
                    .limits
                    .max_length
                    .is_some_and(|m| self.ready.len() as u64 > m);
                let over_bytes = self
                    .limits
                    .max_length_bytes
                    .is_some_and(|m| self.ready.bytes() > m);
                if !over_count && !over_bytes {
                    break;
                }
                let Some(entry) = self.ready.pop_head_for_overflow() else {
                    break;
                };
                dead.push(Dead {
                    entry,
                    reason: DeathReason::MaxLen,
                });
            }
        }
        self.expire(now_ms, dead);
        Accepted::Queued(id)
    }

    /// Appends a message without dispatching (recovery after a restart uses it).
    pub fn push(
        &mut self,
        message: Arc<Message>,
        stored: Option<u64>,
        redelivered: bool,
        expires_at: Option<i64>,
    ) -> MessageId {
        let id = self.next_id;
        self.next_id += 1;
        let mut entry = Entry {
            id,
            size: u32::try_from(message.body_len()).unwrap_or(u32::MAX),
            message,
            redelivered,
            stored,
            expires_at,
            returns: 0,
            paged: false,
        };
        if self.page_above.is_some_and(|max| self.ready.bytes() >= max) {
            entry.page_out(self.last_stub.as_ref());
            if entry.paged {
                self.last_stub = Some(Arc::clone(&entry.message));
            }
        }
        self.ready.push_back(entry);
        id
    }

    /// Removes every ready message whose TTL has passed.
    pub fn expire(&mut self, now_ms: i64, dead: &mut Vec<Dead>) {
        let mut expired = Vec::new();
        self.ready.take_expired(now_ms, &mut expired);
        dead.extend(expired.into_iter().map(|entry| Dead {
            entry,
            reason: DeathReason::Expired,
        }));
    }

    pub fn consume(
        &mut self,
        consumer: Consumer,
        reserve: Reserve<'_>,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        let locked = self.consumers.iter().any(|c| c.exclusive);
        if locked || (consumer.exclusive && !self.consumers.is_empty()) {
            return Err(QueueError::ExclusiveConsumer(self.name.to_string()));
        }
        // Higher priority consumers are served first; equal priorities round-robin in
        // arrival order.
        let at = self
            .consumers
            .partition_point(|c| c.priority >= consumer.priority);
        self.consumers.insert(at, consumer);
        if at < self.cursor {
            self.cursor += 1;
        }
        self.had_consumer = true;
        self.dispatch(reserve, out);
        Ok(())
    }

    /// Removes a consumer. Its unacked deliveries stay unacked until their channel settles
    /// them. Returns whether it was there.
    pub fn cancel(&mut self, consumer: ConsumerId) -> bool {
        let before = self.consumers.len();
        self.consumers.retain(|c| c.id != consumer);
        for (_, owner) in self.unacked.values_mut() {
            if *owner == Some(consumer) {
                *owner = None;
            }
        }
        if self.cursor >= self.consumers.len() {
            self.cursor = 0;
        }
        before != self.consumers.len()
    }

    /// The consumer that receives everything under single active consumer: the first
    /// registered of the highest priority.
    pub fn active_consumer(&self) -> Option<ConsumerId> {
        if !self.limits.single_active_consumer {
            return None;
        }
        self.consumers.first().map(|c| c.id)
    }

    /// Hands ready messages to consumers with credit, round-robin within the highest
    /// priority that can take one.
    pub fn dispatch(&mut self, reserve: Reserve<'_>, out: &mut Vec<Delivery>) {
        while !self.ready.is_empty() {
            let Some(at) = self.next_consumer(reserve) else {
                return;
            };
            let Some(entry) = self.ready.pop_front() else {
                return;
            };
            let Some(consumer) = self.consumers.get_mut(at) else {
                return;
            };
            self.cursor = at + 1;
            if !consumer.no_ack {
                consumer.unacked += 1;
                self.unacked
                    .insert(entry.id, (entry.clone(), Some(consumer.id)));
            }
            out.push(Delivery {
                consumer: consumer.id,
                entry,
            });
        }
    }

    /// The consumer to deliver to next: within each priority level (highest first),
    /// round-robin from the cursor among those with prefetch credit whose connection
    /// accepts the reservation. Under single active consumer, only the first.
    fn next_consumer(&self, reserve: Reserve<'_>) -> Option<usize> {
        let has_credit = |c: &Consumer| c.no_ack || c.prefetch == 0 || c.unacked < c.prefetch;
        if self.limits.single_active_consumer {
            let c = self.consumers.first()?;
            return (has_credit(c) && reserve(c.id)).then_some(0);
        }
        let mut lo = 0;
        while lo < self.consumers.len() {
            let priority = self.consumers.get(lo)?.priority;
            let hi = lo
                + self
                    .consumers
                    .get(lo..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|c| c.priority == priority)
                    .count();
            let span = hi - lo;
            let start = if (lo..hi).contains(&self.cursor) {
                self.cursor - lo
            } else {
                0
            };
            for k in 0..span {
                let i = lo + (start + k) % span;
                let Some(c) = self.consumers.get(i) else {
                    continue;
                };
                if has_credit(c) && reserve(c.id) {
                    return Some(i);
                }
            }
            lo = hi;
        }
        None
    }

    /// Puts back a delivery its consumer's connection could not take, in its place and
    /// not marked redelivered (the client never saw it).
    pub fn restore(&mut self, entry: Entry) {
        self.settle(entry.id);
        self.ready.insert_in_place(entry);
    }

    /// `basic.get`: the head message, unacked unless `no_ack`.
    pub fn get(&mut self, no_ack: bool) -> Option<Entry> {
        let entry = self.ready.pop_front()?;
        if !no_ack {
            self.unacked.insert(entry.id, (entry.clone(), None));
        }
        Some(entry)
    }

    fn settle(&mut self, id: MessageId) -> Option<Entry> {
        let (entry, owner) = self.unacked.remove(&id)?;
        if let Some(owner) = owner
            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == owner)
        {
            c.unacked = c.unacked.saturating_sub(1);
        }
        Some(entry)
    }

    /// Settles deliveries for good: acknowledged, or rejected without requeue (the caller
    /// dead-letters those). The freed credit is used at once. Returns the settled entries.
    pub fn settle_many(
        &mut self,
        ids: &[MessageId],
        reserve: Reserve<'_>,
        out: &mut Vec<Delivery>,
    ) -> Vec<Entry> {
        let settled = ids.iter().filter_map(|&id| self.settle(id)).collect();
        self.dispatch(reserve, out);
        settled
    }

    /// Puts deliveries back in their original places, marked redelivered; one that came
    /// back more often than the delivery limit leaves the queue instead, and so does one
    /// whose TTL passed while it was out (dead with reason `expired`, as RabbitMQ drops
    /// expired messages on requeue rather than delivering them again).
    pub fn requeue(
        &mut self,
        ids: &[MessageId],
        now_ms: i64,
        reserve: Reserve<'_>,
        out: &mut Vec<Delivery>,
        dead: &mut Vec<Dead>,
    ) {
        for &id in ids {
            if let Some(mut entry) = self.settle(id) {
                entry.redelivered = true;
                entry.returns = entry.returns.saturating_add(1);
                if self
                    .limits
                    .delivery_limit
                    .is_some_and(|limit| entry.returns > limit)
                {
                    dead.push(Dead {
                        entry,
                        reason: DeathReason::DeliveryLimit,
                    });
                    continue;
                }
                self.ready.insert_in_place(entry);
            }
        }
        self.expire(now_ms, dead);
        self.dispatch(reserve, out);
    }

    /// Where every stored message the queue holds (ready or unacked) is stored.
    pub fn stored_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.ready
            .iter()
            .filter_map(|e| e.stored)
            .chain(self.unacked.values().filter_map(|(e, _)| e.stored))
    }

    /// Drops every ready message; unacked ones are untouched. Returns them.
    pub fn purge(&mut self) -> Vec<Entry> {
        self.ready.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(body: &'static str) -> Arc<Message> {
        Arc::new(Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: Bytes::new(),
            body: Bytes::from_static(body.as_bytes()),
            persistent: false,
            priority: 0,
            expiration_ms: None,
        })
    }

    fn msg_with(body: &'static str, priority: u8, expiration_ms: Option<u64>) -> Arc<Message> {
        let mut m = (*msg(body)).clone();
        m.priority = priority;
        m.expiration_ms = expiration_ms;
        Arc::new(m)
    }

    fn consumer(id: ConsumerId, prefetch: u32) -> Consumer {
        Consumer {
            id,
            tag: format!("c{id}").into(),
            no_ack: false,
            prefetch,
            exclusive: false,
            priority: 0,
            unacked: 0,
        }
    }

    fn any() -> impl FnMut(ConsumerId) -> bool {
        |_| true
    }

    /// Publishes with no stored offset, no TTL, at time 0, to any consumer.
    fn put(q: &mut Queue, m: Arc<Message>, out: &mut Vec<Delivery>) {
        q.publish(m, None, None, 0, &mut any(), out, &mut Vec::new());
    }

    fn bodies(out: &[Delivery]) -> Vec<(ConsumerId, &[u8])> {
        out.iter()
            .map(|d| (d.consumer, &d.entry.message.body[..]))
            .collect()
    }

    #[test]
    fn stored_messages_beyond_the_resident_share_are_paged_out() {
        let mut q = Queue::new("q".into());
        q.set_paging(Some(4));
        q.push(msg("abc"), Some(0), false, None);
        q.push(msg("defg"), Some(1), false, None);
        // Ready bytes reached the share: the next stored message is paged, an unstored
        // one cannot be.
        q.push(msg("hij"), Some(2), false, None);
        q.push(msg("kl"), None, false, None);
        assert_eq!(
            q.ready_bytes(),
            12,
            "paged bodies still count toward length limits"
        );
        let got: Vec<(bool, u32, usize)> = (0..4)
            .map(|_| {
                let e = q.get(true).unwrap();
                (e.paged, e.size, e.message.body.len())
            })
            .collect();
        assert_eq!(
            got,
            [(false, 3, 3), (false, 4, 4), (true, 3, 0), (false, 2, 2)]
        );
    }

    #[test]
    fn paged_messages_that_say_the_same_share_one_stub() {
        let mut q = Queue::new("q".into());
        q.set_paging(Some(1));
        for i in 0..4 {
            q.push(msg("abc"), Some(i), false, None);
        }
        q.push(msg_with("abc", 3, None), Some(9), false, None);
        let e: Vec<Entry> = (0..5).map(|_| q.get(true).unwrap()).collect();
        assert!(!e[0].paged);
        assert!(e[1..].iter().all(|e| e.paged));
        assert!(Arc::ptr_eq(&e[1].message, &e[3].message));
        assert!(
            !Arc::ptr_eq(&e[3].message, &e[4].message),
            "another priority: its own stub"
        );
        assert_eq!(e[4].message.priority, 3);
    }

    #[test]
    fn messages_wait_in_order_until_a_consumer_arrives() {
        let mut q = Queue::new("q".into());
        let mut out = Vec::new();
        put(&mut q, msg("a"), &mut out);
        put(&mut q, msg("b"), &mut out);
        assert!(out.is_empty());
        assert_eq!(q.message_count(), 2);
        q.consume(consumer(1, 0), &mut any(), &mut out).unwrap();
        assert_eq!(bodies(&out), [(1, &b"a"[..]), (1, &b"b"[..])]);
        assert_eq!(q.message_count(), 0);
        assert_eq!(q.unacked_count(), 2);
    }

    #[test]
    fn prefetch_one_dispatches_fairly_between_two_consumers() {
        let mut q = Queue::new("q".into());
        let mut out = Vec::new();
        q.consume(consumer(1, 1), &mut any(), &mut out).unwrap();
        q.consume(consumer(2, 1), &mut any(), &mut out).unwrap();
        for b in ["a", "b", "c", "d"] {
            put(&mut q, msg(b), &mut out);
        }
        assert_eq!(bodies(&out), [(1, &b"a"[..]), (2, &b"b"[..])]);
        let first = out[0].entry.id;
        out.clear();
        q.settle_many(&[first], &mut any(), &mut out);
        assert_eq!(bodies(&out), [(1, &b"c"[..])]);
    }

    #[test]
    fn requeued_messages_return_to_their_original_place_marked_redelivered() {
        let mut q = Queue::new("q".into());
        let mut out = Vec::new();
        let Accepted::Queued(a) = q.publish(
            msg("a"),
            None,
            None,
            0,
            &mut any(),
            &mut out,
            &mut Vec::new(),
        ) else {
            panic!("queued")
        };
        put(&mut q, msg("b"), &mut out);
        let got = q.get(false).unwrap();
        assert_eq!(got.id, a);
        q.requeue(&[a], 0, &mut any(), &mut out, &mut Vec::new());
        let again = q.get(true).unwrap();
        assert_eq!(&again.message.body[..], b"a");
        assert!(again.redelivered);
        assert!(!q.get(true).unwrap().redelivered);
    }

    #[test]
    fn an_exclusive_consumer_locks_out_others() {
        let mut q = Queue::new("q".into());
        let mut out = Vec::new();
        let mut c = consumer(1, 0);
        c.exclusive = true;
        q.consume(c, &mut any(), &mut out).unwrap();
        assert_eq!(
            q.consume(consumer(2, 0), &mut any(), &mut out)
                .unwrap_err()
                .reply_code(),
            403
        );
        let mut q = Queue::new("q2".into());
        q.consume(consumer(1, 0), &mut any(), &mut out).unwrap();
        let mut c = consumer(2, 0);
        c.exclusive = true;
        assert!(q.consume(c, &mut any(), &mut out).is_err());
    }

    #[test]
    fn higher_priority_consumers_are_served_first() {
        let mut q = Queue::new("q".into());
        let mut out = Vec::new();
        q.consume(consumer(1, 1), &mut any(), &mut out).unwrap();
        let mut high = consumer(2, 1);
        high.priority = 5;
        q.consume(high, &mut any(), &mut out).unwrap();
        put(&mut q, msg("a"), &mut out);
        put(&mut q, msg("b"), &mut out);
        assert_eq!(bodies(&out), [(2, &b"a"[..]), (1, &b"b"[..])]);
    }

    #[test]
    fn a_consumer_whose_connection_is_full_is_skipped() {
        let mut q = Queue::new("q".into());
        let mut out = Vec::new();
        let mut only_two = |c: ConsumerId| c == 2;
        q.consume(consumer(1, 0), &mut only_two, &mut out).unwrap();
        q.consume(consumer(2, 0), &mut only_two, &mut out).unwrap();
        q.publish(
            msg("a"),
            None,
            None,
            0,
            &mut only_two,
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(bodies(&out), [(2, &b"a"[..])]);
        let mut none = |_: ConsumerId| false;
        out.clear();
        q.publish(
            msg("b"),
            None,
            None,
            0,
            &mut none,
            &mut out,
            &mut Vec::new(),
        );
        assert!(out.is_empty());
        assert_eq!(q.message_count(), 1);
    }

    #[test]
    fn purge_drops_ready_messages_only_and_cancel_keeps_unacked() {
        let mut q = Queue::new("q".into());
        let mut out = Vec::new();
        q.consume(consumer(1, 1), &mut any(), &mut out).unwrap();
        put(&mut q, msg("a"), &mut out);
        put(&mut q, msg("b"), &mut out);
        assert_eq!(q.purge().len(), 1);
        assert!(q.cancel(1));
        assert!(q.unused_after_consumers());
        assert_eq!(q.unacked_count(), 1);
        let id = out[0].entry.id;
        let dropped = q.settle_many(&[id], &mut any(), &mut Vec::new());
        assert_eq!(dropped.len(), 1);
        assert_eq!(q.unacked_count(), 0);
    }

    fn limited(limits: Limits) -> Queue {
        Queue::with_limits("q".into(), limits)
    }

    #[test]
    fn a_short_ttl_expires_on_time_behind_a_longer_one() {
        let mut q = limited(Limits::default());
        let mut dead = Vec::new();
        for (body, ttl) in [("long", 60_000), ("short", 100)] {
            let m = msg_with(body, 0, Some(ttl));
            let at = q.expiry_for(&m, 1_000);
            q.publish(m, None, at, 1_000, &mut any(), &mut Vec::new(), &mut dead);
        }
        q.expire(1_099, &mut dead);
        assert!(dead.is_empty());
        q.expire(1_100, &mut dead);
        assert_eq!(dead.len(), 1);
        assert_eq!(&dead[0].entry.message.body[..], b"short");
        assert_eq!(dead[0].reason, DeathReason::Expired);
        assert_eq!(q.message_count(), 1);
        assert_eq!(q.next_expiry(), Some(61_000));
    }

    #[test]
    fn queue_ttl_zero_reaches_only_a_consumer_waiting_now() {
        let mut q = limited(Limits {
            message_ttl_ms: Some(0),
            ..Limits::default()
        });
        let mut out = Vec::new();
        let mut dead = Vec::new();
        let at = q.expiry_for(&msg("x"), 5);
        q.publish(msg("nobody"), None, at, 5, &mut any(), &mut out, &mut dead);
        assert_eq!(dead.len(), 1);
        q.consume(consumer(1, 0), &mut any(), &mut out).unwrap();
        q.publish(msg("taken"), None, at, 5, &mut any(), &mut out, &mut dead);
        assert_eq!(bodies(&out), [(1, &b"taken"[..])]);
        assert_eq!(dead.len(), 1);
    }

    #[test]
    fn higher_priority_messages_go_first_and_fifo_within_a_priority() {
        let mut q = limited(Limits {
            max_priority: 5,
            ..Limits::default()
        });
        let mut dead = Vec::new();
        for (b, p) in [
            ("low1", 0),
            ("high1", 5),
            ("low2", 0),
            ("over", 9),
            ("mid", 3),
        ] {
            q.publish(
                msg_with(b, p, None),
                None,
                None,
                0,
                &mut any(),
                &mut Vec::new(),
                &mut dead,
            );
        }
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| q.get(true))
            .map(|e| e.message.body.to_vec())
            .collect();
        assert_eq!(order, [&b"high1"[..], b"over", b"mid", b"low1", b"low2"]);
    }

    #[test]
    fn max_length_drops_the_head_or_rejects_the_publish() {
        let mut q = limited(Limits {
            max_length: Some(2),
            ..Limits::default()
        });
        let mut dead = Vec::new();
        for b in ["a", "b", "c"] {
            q.publish(
                msg(b),
                None,
                None,
                0,
                &mut any(),
                &mut Vec::new(),
                &mut dead,
            );
        }
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, DeathReason::MaxLen);
        assert_eq!(&dead[0].entry.message.body[..], b"a");
        let mut q = limited(Limits {
            max_length: Some(1),
            overflow: Overflow::RejectPublish,
            ..Limits::default()
        });
        assert!(matches!(
            q.publish(
                msg("a"),
                None,
                None,
                0,
                &mut any(),
                &mut Vec::new(),
                &mut dead
            ),
            Accepted::Queued(_)
        ));
        assert_eq!(
            q.publish(
                msg("b"),
                None,
                None,
                0,
                &mut any(),
                &mut Vec::new(),
                &mut dead
            ),
            Accepted::Rejected
        );
        assert_eq!(q.message_count(), 1);
    }

    #[test]
    fn single_active_consumer_gets_everything_until_it_leaves() {
        let mut q = limited(Limits {
            single_active_consumer: true,
            ..Limits::default()
        });
        let mut out = Vec::new();
        q.consume(consumer(1, 0), &mut any(), &mut out).unwrap();
        q.consume(consumer(2, 0), &mut any(), &mut out).unwrap();
        for b in ["a", "b"] {
            put(&mut q, msg(b), &mut out);
        }
        assert_eq!(bodies(&out), [(1, &b"a"[..]), (1, &b"b"[..])]);
        q.cancel(1);
        out.clear();
        put(&mut q, msg("c"), &mut out);
        assert_eq!(bodies(&out), [(2, &b"c"[..])]);
    }

    #[test]
    fn a_message_returned_more_often_than_the_delivery_limit_leaves_the_queue() {
        let mut q = limited(Limits {
            delivery_limit: Some(1),
            ..Limits::default()
        });
        let mut dead = Vec::new();
        q.publish(
            msg("poison"),
            None,
            None,
            0,
            &mut any(),
            &mut Vec::new(),
            &mut dead,
        );
        for round in 0..2 {
            let e = q.get(false).unwrap();
            q.requeue(&[e.id], 0, &mut any(), &mut Vec::new(), &mut dead);
            assert_eq!(dead.len(), round, "returned {} times", round + 1);
        }
        assert_eq!(dead[0].reason, DeathReason::DeliveryLimit);
        assert_eq!(q.message_count(), 0);
    }
}
