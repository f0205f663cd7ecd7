//! Messages held until a delivery time: a durable store (a queue store's message and
//! settlement logs) and the scheduler's timing, so held messages survive a restart and
//! come due at their time after it. Only the schedule (offset and due time) is in
//! memory; bodies are read back from disk when due.
//!
//! The owner asks [`DelayStore::due`] for what is due at `now`, delivers it wherever it
//! goes, then [`DelayStore::release`]s it. A crash in between delivers it again after
//! the restart (at least once).

use std::path::Path;
use std::sync::Arc;

use sluice_core::{Clock, Message};

use crate::scheduler::Scheduler;
use crate::store::{LogConfig, QueueStore, StoreError};

#[derive(Debug)]
pub struct DelayStore {
    store: QueueStore<()>,
    schedule: Scheduler<u64>,
}

impl DelayStore {
    /// Opens (or creates) the store in `dir`, scheduling every message it still holds at
    /// its stored time. Blocking.
    pub fn open(dir: &Path, log: LogConfig, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let mut schedule = Scheduler::default();
        let store = QueueStore::open_each(dir, log, clock, |r| {
            schedule.set(r.offset, r.expires_at.unwrap_or(i64::MIN));
        })?;
        Ok(DelayStore { store, schedule })
    }

    /// Holds `message` until `due_ms`. It is in the store's file (safe from a crash of
    /// the process, not of the machine) when this returns.
    pub fn hold(&mut self, message: &Message, due_ms: i64) -> Result<u64, StoreError> {
        let offset = self.store.append(message, Some(due_ms))?;
        self.store.write_settlements()?;
        self.schedule.set(offset, due_ms);
        Ok(offset)
    }

    /// When the next held message is due.
    pub fn next_due(&self) -> Option<i64> {
        self.schedule.next_due()
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.schedule.len()
    }

    pub fn is_empty(&self) -> bool {
        self.schedule.is_empty()
    }

    /// Appends the messages due at `now_ms` to `out` with their offsets, earliest first,
    /// at most `max`. An unreadable one is logged and released.
    pub fn due(&mut self, now_ms: i64, max: usize, out: &mut Vec<(u64, Message)>) {
        let mut offsets = Vec::new();
        self.schedule.pop_due_max(now_ms, max, &mut offsets);
        for offset in offsets {
            match self.store.read(offset) {
                Ok(message) => out.push((offset, message)),
                Err(e) => {
                    tracing::error!(offset, error = %e, "held message unreadable; dropped");
                    let _ = self.release(&[offset]);
                }
            }
        }
    }

    /// Takes the held message at `offset` out of the schedule and reads it, before it is
    /// due (a transaction resolved); `None` if no message is held there. Release it
    /// once it is handled.
    pub fn take(&mut self, offset: u64) -> Option<Message> {
        if !self.schedule.contains(&offset) {
            return None;
        }
        match self.store.read(offset) {
            Ok(message) => {
                self.schedule.cancel(&offset);
                Some(message)
            }
            Err(e) => {
                tracing::error!(offset, error = %e, "held message unreadable");
                None
            }
        }
    }

    /// Schedules a message handed out by [`DelayStore::due`] again (its delivery failed).
    pub fn again(&mut self, offset: u64, due_ms: i64) {
        self.schedule.set(offset, due_ms);
    }

    /// Forgets delivered messages (written to the file before this returns).
    pub fn release(&mut self, offsets: &[u64]) -> Result<(), StoreError> {
        self.store.settle(offsets)?;
        self.store.write_settlements()
    }

    /// Frees the log segments every message of which was released. Blocking.
    pub fn maintain(&mut self) {
        match self.store.maintenance() {
            Ok(jobs) => {
                for job in jobs {
                    if let Err(e) = job.run() {
                        tracing::error!(error = %e, "delay store maintenance failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot plan delay store maintenance"),
        }
    }

    /// Makes everything held and released so far durable (fsync). Blocking.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.store.close()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use bytes::Bytes;
    use sluice_core::ManualClock;

    fn message(body: &'static str) -> Message {
        Message {
            exchange: "orders".into(),
            routing_key: "0".into(),
            properties: Bytes::new(),
            body: Bytes::from_static(body.as_bytes()),
            persistent: true,
            priority: 0,
            expiration_ms: None,
        }
    }

    fn bodies(out: &[(u64, Message)]) -> Vec<&[u8]> {
        out.iter().map(|(_, m)| &m.body[..]).collect()
    }

    #[test]
    fn held_messages_come_due_in_time_order_and_survive_a_reopen_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let open = || DelayStore::open(dir.path(), LogConfig::default(), clock.clone()).unwrap();
        let mut store = open();
        store.hold(&message("late"), 1_000 + 30 * 60_000).unwrap();
        store.hold(&message("soon"), 2_000).unwrap();
        store.hold(&message("sooner"), 1_500).unwrap();
        let mut out = Vec::new();
        store.due(1_499, 10, &mut out);
        assert!(out.is_empty());
        store.due(2_000, 10, &mut out);
        assert_eq!(bodies(&out), vec![&b"sooner"[..], b"soon"]);
        let first = out.first().unwrap().0;
        store.release(&[first]).unwrap();
        // "soon" was handed out but not released when the process died.
        drop(store);

        let mut store = open();
        assert_eq!(store.len(), 2);
        assert_eq!(store.next_due(), Some(2_000));
        out.clear();
        store.due(2_000, 10, &mut out);
        assert_eq!(
            bodies(&out),
            vec![&b"soon"[..]],
            "delivered again after the restart"
        );
        store.release(&[out.first().unwrap().0]).unwrap();
        out.clear();
        store.due(1_000 + 30 * 60_000 - 1, 10, &mut out);
        assert!(out.is_empty(), "one millisecond early");
        store.due(1_000 + 30 * 60_000, 10, &mut out);
        assert_eq!(bodies(&out), vec![&b"late"[..]]);
    }

    #[test]
    fn a_message_taken_before_it_is_due_is_gone_from_the_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(0));
        let mut store = DelayStore::open(dir.path(), LogConfig::default(), clock).unwrap();
        let offset = store.hold(&message("half"), 100).unwrap();
        assert_eq!(store.take(offset + 1), None);
        assert_eq!(
            store.take(offset).map(|m| m.body),
            Some(Bytes::from_static(b"half"))
        );
        assert_eq!(store.take(offset), None, "taken once");
        store.release(&[offset]).unwrap();
        let mut out = Vec::new();
        store.due(1_000, 10, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_due_round_hands_out_at_most_max_and_keeps_the_rest_due() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(0));
        let mut store = DelayStore::open(dir.path(), LogConfig::default(), clock).unwrap();
        for _ in 0..5 {
            store.hold(&message("m"), 10).unwrap();
        }
        let mut out = Vec::new();
        store.due(10, 3, &mut out);
        assert_eq!(out.len(), 3);
        out.clear();
        store.due(10, 3, &mut out);
        assert_eq!(out.len(), 2);
    }
}
