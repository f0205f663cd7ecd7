//! The ready messages of a queue: one FIFO per priority level (one level when the queue
//! has no `x-max-priority`), each ordered by message id, plus an index on expiry time so a
//! message expires on time wherever it sits, not only at the head.

use std::collections::{BTreeSet, VecDeque};

use crate::queue::{Entry, MessageId};

#[derive(Debug)]
pub struct Ready {
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    bytes: u64,
    /// (expires at, id, level) of every ready message with a TTL.
    expiry: BTreeSet<(i64, MessageId, u8)>,
}

impl Ready {
    /// `max_priority` 0 means no priorities.
    pub fn new(max_priority: u8) -> Self {
        Ready {
            levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            expiry: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn level_of(&self, entry: &Entry) -> u8 {
        let top = (self.levels.len() - 1) as u8;
        entry.message.priority.min(top)
    }

    fn added(&mut self, entry: &Entry, level: u8) {
        self.len += 1;
        self.bytes += u64::from(entry.size);
        if let Some(at) = entry.expires_at {
            self.expiry.insert((at, entry.id, level));
        }
    }

    fn removed(&mut self, entry: &Entry, level: u8) {
        self.len -= 1;
        self.bytes -= u64::from(entry.size);
        if let Some(at) = entry.expires_at {
            self.expiry.remove(&(at, entry.id, level));
        }
    }

    /// Adds a new message behind every other of its priority.
    pub fn push_back(&mut self, entry: Entry) {
        let level = self.level_of(&entry);
        self.added(&entry, level);
        if let Some(q) = self.levels.get_mut(usize::from(level)) {
            q.push_back(entry);
        }
    }

    /// Puts a message back in its place by id (requeue, restore).
    pub fn insert_in_place(&mut self, entry: Entry) {
        let level = self.level_of(&entry);
        self.added(&entry, level);
        if let Some(q) = self.levels.get_mut(usize::from(level)) {
            let at = q.partition_point(|e| e.id < entry.id);
            q.insert(at, entry);
        }
    }

    /// The next message to deliver: the oldest of the highest priority.
    pub fn pop_front(&mut self) -> Option<Entry> {
        let level = self.levels.iter().rposition(|q| !q.is_empty())?;
        let entry = self.levels.get_mut(level)?.pop_front()?;
        self.removed(&entry, level as u8);
        Some(entry)
    }

    /// The message that would be dropped first for a length limit: the oldest of the
    /// lowest priority (RabbitMQ drops from the head).
    pub fn pop_head_for_overflow(&mut self) -> Option<Entry> {
        let level = self.levels.iter().position(|q| !q.is_empty())?;
        let entry = self.levels.get_mut(level)?.pop_front()?;
        self.removed(&entry, level as u8);
        Some(entry)
    }

    /// Removes every message whose expiry time is at or before `now_ms`.
    pub fn take_expired(&mut self, now_ms: i64, out: &mut Vec<Entry>) {
        while let Some(&(at, id, level)) = self.expiry.first() {
            if at > now_ms {
                return;
            }
            self.expiry.pop_first();
            let Some(q) = self.levels.get_mut(usize::from(level)) else {
                continue;
            };
            let i = q.partition_point(|e| e.id < id);
            if q.get(i).is_some_and(|e| e.id == id)
                && let Some(entry) = q.remove(i)
            {
                self.len -= 1;
                self.bytes -= u64::from(entry.size);
                out.push(entry);
            }
        }
    }

    /// When the next message expires, if any has a TTL.
    pub fn next_expiry(&self) -> Option<i64> {
        self.expiry.first().map(|&(at, _, _)| at)
    }

    /// Every ready message, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.levels.iter().flatten()
    }

    pub fn drain(&mut self) -> Vec<Entry> {
        self.len = 0;
        self.bytes = 0;
        self.expiry.clear();
        let mut out = Vec::new();
        for q in self.levels.iter_mut().rev() {
            out.extend(q.drain(..));
        }
        out
    }
}
