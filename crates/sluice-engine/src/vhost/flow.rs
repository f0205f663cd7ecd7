//! Flow control between queues and the connections they deliver to, and the confirms
//! that tell a publisher its message is stored.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Deliveries a consumer's connection may hold unwritten; past it the queue keeps the
/// messages and resumes when the connection has written some.
pub const FLOW_BUFFERED_MAX: u32 = 1024;

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
    pub(super) fn push(&self, channel: u16, seq: u64, ok: bool) {
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
    pub fn done(self, ok: bool) {
        self.confirms.push(self.channel, self.seq, ok);
    }
}

/// Unwritten deliveries of one consumer.
#[derive(Debug, Default)]
pub struct Flow {
    buffered: AtomicU32,
}

impl Flow {
    pub(super) fn reserve(&self) -> bool {
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

    pub(super) fn reserve(&self) -> bool {
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
