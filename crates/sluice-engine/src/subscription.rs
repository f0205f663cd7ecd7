//! A subscription: one consumer group's per-message state over one stream partition, as
//! RocketMQ 5 consumers (and retries on any protocol) need it. Messages stay in the
//! stream; the subscription remembers which offsets are in flight (invisible until a
//! deadline), how often each was attempted, which wait for a retry after a backoff, and
//! which were given up on (dead-lettered). Acknowledged offsets below every unfinished one
//! make the committed offset, which is all that must be stored: after a restart the
//! messages in flight are simply delivered again, with their attempt count from then on.
//!
//! Ordered messages (RocketMQ's FIFO message groups): once the owner has read a leased
//! record and found its group, [`Subscription::claim`] lets the group's earliest
//! unfinished message out and parks the later ones, so a group has one message in
//! flight at a time, in offset order; finishing it lets the next one out.
//!
//! Pure: commands in with `now_ms`, effects out; reading the stream is the owner's job.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::scheduler::Scheduler;

/// Retry and dead-letter rules, shared by every protocol's negative acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Deliveries of one message before it is dead-lettered (RocketMQ: 16 retries + 1).
    pub max_attempts: u32,
    /// Wait before the first retry; each further retry waits `multiplier` times longer,
    /// up to `backoff_max_ms`.
    pub backoff_ms: u64,
    pub multiplier: u32,
    pub backoff_max_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 17,
            backoff_ms: 1_000,
            multiplier: 2,
            backoff_max_ms: 2 * 60 * 60 * 1_000,
        }
    }
}

impl Policy {
    /// The wait before attempt `attempt + 1`, after `attempt` failed ones.
    pub fn backoff(&self, attempt: u32) -> u64 {
        let mut wait = self.backoff_ms;
        for _ in 1..attempt {
            wait = wait.saturating_mul(u64::from(self.multiplier.max(1)));
            if wait >= self.backoff_max_ms {
                return self.backoff_max_ms;
            }
        }
        wait.min(self.backoff_max_ms)
    }
}

/// A delivery handed to a consumer: the offset to read, which attempt it is, and the
/// receipt that acknowledges or extends exactly this delivery (a later delivery of the
/// same offset gets a new receipt, so a stale ack is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub offset: u64,
    pub attempt: u32,
    pub receipt: u64,
    /// Invisible to other receives until then.
    pub deadline_ms: i64,
}

/// What a receive hands out: retries that are due first, then new offsets from
/// `read_from` on (the owner reads that many records from the stream).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Receive {
    pub leases: Vec<Lease>,
}

/// Why an acknowledgement or extension was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// No delivery with this receipt is in flight: acked already, or its deadline passed
    /// and the message went back (RocketMQ's INVALID_RECEIPT_HANDLE).
    UnknownReceipt,
}

/// What a consumer asks of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// At most `max` deliveries, invisible for `invisible_ms`; new ones below `end`.
    Receive {
        max: usize,
        invisible_ms: u64,
        end: u64,
    },
    Ack {
        offset: u64,
        receipt: u64,
    },
    Nack {
        offset: u64,
        receipt: u64,
    },
    Extend {
        offset: u64,
        receipt: u64,
        invisible_ms: u64,
    },
    /// Moves a lease's deadline and keeps its receipt: the broker renewing a delivery
    /// for a consumer that still holds it (RocketMQ's auto-renew).
    Renew {
        offset: u64,
        receipt: u64,
        invisible_ms: u64,
    },
    /// Time passed: end leases, make retries due.
    Tick,
}

/// What the owner carries out after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Read the record at the lease's offset and hand it to the consumer.
    Deliver(Lease),
    /// The command named a delivery that is not in flight.
    Refused(LeaseError),
    /// Move the record at this offset to the dead-letter destination.
    DeadLetter(u64),
    /// Store this committed offset (it moved).
    Commit(u64),
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    attempt: u32,
    receipt: u64,
}

#[derive(Debug)]
pub struct Subscription {
    policy: Policy,
    /// Every offset below this was handed out at least once.
    cursor: u64,
    /// Offsets below this are done (acknowledged or dead-lettered): the committed offset.
    committed: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// Offsets whose lease ended, waiting for their retry, with the attempts so far.
    retrying: BTreeMap<u64, u32>,
    /// When leases end and retries are due, by offset.
    timers: Scheduler<u64>,
    /// Done above `committed` (acked out of order).
    done: BTreeSet<u64>,
    next_receipt: u64,
    dead: Vec<u64>,
    /// Unfinished offsets of each message group, in order: the first may be handed out,
    /// the others are parked behind it.
    groups: HashMap<u64, VecDeque<u64>>,
    /// The group of each offset in `groups`.
    group_of: HashMap<u64, u64>,
    /// Parked offsets, with the attempts they had before they were parked.
    parked: BTreeMap<u64, u32>,
}

impl Subscription {
    /// A subscription that starts reading at `committed` (the stored committed offset).
    pub fn new(policy: Policy, committed: u64) -> Self {
        Subscription {
            policy,
            cursor: committed,
            committed,
            in_flight: BTreeMap::new(),
            retrying: BTreeMap::new(),
            timers: Scheduler::default(),
            done: BTreeSet::new(),
            next_receipt: 1,
            dead: Vec::new(),
            groups: HashMap::new(),
            group_of: HashMap::new(),
            parked: BTreeMap::new(),
        }
    }

    /// The delivery `offset` / `receipt` holds a message of ordered group `group`: `true`
    /// if it may go to the consumer (it is the group's earliest unfinished message),
    /// `false` if it is parked behind an earlier one and must not be handed out (its
    /// attempt is given back; it comes out as a retry once the earlier one is done).
    pub fn claim(&mut self, offset: u64, receipt: u64, group: u64) -> bool {
        if let Some(g) = self.group_of.get(&offset) {
            let head = self.groups.get(g).and_then(|q| q.front()).copied();
            return head == Some(offset);
        }
        let Ok(lease) = self.find(offset, receipt) else {
            return false;
        };
        let queue = self.groups.entry(group).or_default();
        self.group_of.insert(offset, group);
        if queue.is_empty() {
            queue.push_back(offset);
            return true;
        }
        // Offsets reach a group in order (new ones come from the cursor, upwards).
        let at = queue.partition_point(|&o| o < offset);
        queue.insert(at, offset);
        self.in_flight.remove(&offset);
        self.timers.cancel(&offset);
        self.parked.insert(offset, lease.attempt.saturating_sub(1));
        false
    }

    /// Changes the retry policy from the next failed attempt on; attempts already
    /// counted stay.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Messages waiting behind an earlier one of their group.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Applies one command at `now_ms`; the effects come out in the order to carry them
    /// out.
    pub fn apply(&mut self, command: Command, now_ms: i64, effects: &mut Vec<Effect>) {
        let committed = self.committed;
        let refused = match command {
            Command::Receive {
                max,
                invisible_ms,
                end,
            } => {
                let received = self.receive(max, invisible_ms, end, now_ms);
                effects.extend(received.leases.into_iter().map(Effect::Deliver));
                Ok(())
            }
            Command::Ack { offset, receipt } => self.ack(offset, receipt),
            Command::Nack { offset, receipt } => self.nack(offset, receipt, now_ms),
            Command::Extend {
                offset,
                receipt,
                invisible_ms,
            } => self
                .extend(offset, receipt, invisible_ms, now_ms)
                .map(|lease| effects.push(Effect::Deliver(lease))),
            Command::Renew {
                offset,
                receipt,
                invisible_ms,
            } => self.renew(offset, receipt, invisible_ms, now_ms),
            Command::Tick => {
                self.tick(now_ms);
                Ok(())
            }
        };
        if let Err(e) = refused {
            effects.push(Effect::Refused(e));
        }
        effects.extend(self.take_dead().into_iter().map(Effect::DeadLetter));
        if self.committed != committed {
            effects.push(Effect::Commit(self.committed));
        }
    }

    /// The offset every earlier message is done below: what to store.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn retrying(&self) -> usize {
        self.retrying.len()
    }

    /// When the next lease ends or retry is due.
    pub fn next_due(&self) -> Option<i64> {
        self.timers.next_due()
    }

    /// Offsets given up on since the last call: the owner moves them to the dead-letter
    /// destination.
    pub fn take_dead(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dead)
    }

    /// Ends the leases whose deadline passed and makes due retries ready. A message that
    /// used up its attempts is dead-lettered.
    pub fn tick(&mut self, now_ms: i64) {
        let mut due = Vec::new();
        self.timers.pop_due(now_ms, &mut due);
        for offset in due {
            if let Some(lease) = self.in_flight.remove(&offset) {
                self.failed(offset, lease.attempt, now_ms);
            }
            // A due retry stays in `retrying`; `receive` takes it.
        }
    }

    /// A delivery failed (lease ended, or negative acknowledgement): retry after the
    /// backoff, or dead-letter after the last attempt.
    fn failed(&mut self, offset: u64, attempt: u32, now_ms: i64) {
        if attempt >= self.policy.max_attempts {
            self.dead.push(offset);
            self.finish(offset);
            return;
        }
        let wait = i64::try_from(self.policy.backoff(attempt)).unwrap_or(i64::MAX);
        self.retrying.insert(offset, attempt);
        // Without a backoff the retry is due at once: no timer to wait for.
        if wait > 0 {
            self.timers.at_most(offset, now_ms.saturating_add(wait));
        }
    }

    /// Hands out at most `max` deliveries, invisible for `invisible_ms`: due retries
    /// first (lowest offset first), then new offsets below `end` (the stream's end).
    pub fn receive(&mut self, max: usize, invisible_ms: u64, end: u64, now_ms: i64) -> Receive {
        self.tick(now_ms);
        let deadline = now_ms.saturating_add(i64::try_from(invisible_ms).unwrap_or(i64::MAX));
        let mut leases = Vec::new();
        let due: Vec<(u64, u32)> = self
            .retrying
            .iter()
            .filter(|(offset, _)| {
                // Not due yet while its retry timer is still set.
                !self.timers_has(**offset)
            })
            .take(max)
            .map(|(o, a)| (*o, *a))
            .collect();
        for (offset, attempts) in due {
            self.retrying.remove(&offset);
            leases.push(self.lease(offset, attempts + 1, deadline));
        }
        while leases.len() < max && self.cursor < end {
            let offset = self.cursor;
            self.cursor += 1;
            leases.push(self.lease(offset, 1, deadline));
        }
        Receive { leases }
    }

    fn timers_has(&self, offset: u64) -> bool {
        // A retry whose timer fired was removed from the scheduler by `tick`.
        self.timers.contains(&offset)
    }

    fn lease(&mut self, offset: u64, attempt: u32, deadline_ms: i64) -> Lease {
        let receipt = self.next_receipt;
        self.next_receipt += 1;
        self.in_flight.insert(offset, InFlight { attempt, receipt });
        self.timers.set(offset, deadline_ms);
        Lease {
            offset,
            attempt,
            receipt,
            deadline_ms,
        }
    }

    fn find(&self, offset: u64, receipt: u64) -> Result<InFlight, LeaseError> {
        match self.in_flight.get(&offset) {
            Some(l) if l.receipt == receipt => Ok(*l),
            _ => Err(LeaseError::UnknownReceipt),
        }
    }

    /// The consumer processed the delivery: the message is done.
    pub fn ack(&mut self, offset: u64, receipt: u64) -> Result<(), LeaseError> {
        self.find(offset, receipt)?;
        self.in_flight.remove(&offset);
        self.timers.cancel(&offset);
        self.finish(offset);
        Ok(())
    }

    /// The consumer could not process it: retry after the backoff (or dead-letter).
    pub fn nack(&mut self, offset: u64, receipt: u64, now_ms: i64) -> Result<(), LeaseError> {
        let lease = self.find(offset, receipt)?;
        self.in_flight.remove(&offset);
        self.timers.cancel(&offset);
        self.failed(offset, lease.attempt, now_ms);
        Ok(())
    }

    /// Moves a lease's deadline to `invisible_ms` from now; the receipt changes, as in
    /// RocketMQ's ChangeInvisibleDuration.
    pub fn extend(
        &mut self,
        offset: u64,
        receipt: u64,
        invisible_ms: u64,
        now_ms: i64,
    ) -> Result<Lease, LeaseError> {
        let lease = self.find(offset, receipt)?;
        let deadline = now_ms.saturating_add(i64::try_from(invisible_ms).unwrap_or(i64::MAX));
        self.timers.cancel(&offset);
        Ok(self.lease(offset, lease.attempt, deadline))
    }

    /// Moves a lease's deadline to `invisible_ms` from now without changing its receipt,
    /// so the consumer's handle stays valid.
    pub fn renew(
        &mut self,
        offset: u64,
        receipt: u64,
        invisible_ms: u64,
        now_ms: i64,
    ) -> Result<(), LeaseError> {
        self.find(offset, receipt)?;
        let deadline = now_ms.saturating_add(i64::try_from(invisible_ms).unwrap_or(i64::MAX));
        self.timers.set(offset, deadline);
        Ok(())
    }

    fn finish(&mut self, offset: u64) {
        self.retrying.remove(&offset);
        self.timers.cancel(&offset);
        if let Some(group) = self.group_of.remove(&offset)
            && let Some(queue) = self.groups.get_mut(&group)
        {
            queue.retain(|&o| o != offset);
            match queue.front() {
                // The next of the group comes out: ready now, as a retry with the
                // attempts it had.
                Some(&next) => {
                    if let Some(attempts) = self.parked.remove(&next) {
                        self.retrying.insert(next, attempts);
                    }
                }
                None => {
                    self.groups.remove(&group);
                }
            }
        }
        if offset == self.committed {
            self.committed += 1;
            while self.done.remove(&self.committed) {
                self.committed += 1;
            }
        } else if offset > self.committed {
            self.done.insert(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            max_attempts: 3,
            backoff_ms: 100,
            multiplier: 2,
            backoff_max_ms: 1_000,
        }
    }

    #[test]
    fn backoff_grows_to_its_bound() {
        let p = policy();
        assert_eq!((p.backoff(1), p.backoff(2), p.backoff(3)), (100, 200, 400));
        assert_eq!(p.backoff(10), 1_000);
    }

    #[test]
    fn a_lease_that_ends_comes_back_after_the_backoff_then_dead_letters() {
        let mut s = Subscription::new(policy(), 0);
        let r = s.receive(10, 1_000, 1, 0);
        assert_eq!(r.leases.len(), 1);
        // Invisible until the deadline.
        assert!(s.receive(10, 1_000, 1, 500).leases.is_empty());
        // Deadline passed: retry after 100 ms.
        assert!(s.receive(10, 1_000, 1, 1_000).leases.is_empty());
        let again = s.receive(10, 1_000, 1, 1_100).leases;
        assert_eq!((again[0].offset, again[0].attempt), (0, 2));
        // A stale receipt is refused.
        assert_eq!(
            s.ack(0, r.leases[0].receipt),
            Err(LeaseError::UnknownReceipt)
        );
        s.nack(0, again[0].receipt, 1_200).unwrap();
        let third = s.receive(10, 1_000, 1, 1_400).leases;
        assert_eq!(third[0].attempt, 3);
        s.nack(0, third[0].receipt, 1_500).unwrap();
        assert_eq!(s.take_dead(), vec![0]);
        assert_eq!(s.committed(), 1);
    }

    #[test]
    fn extending_a_lease_changes_its_receipt_and_deadline() {
        let mut s = Subscription::new(policy(), 5);
        let l = s.receive(1, 100, 10, 0).leases[0];
        assert_eq!(l.offset, 5);
        let e = s.extend(5, l.receipt, 1_000, 50).unwrap();
        assert_ne!(e.receipt, l.receipt);
        assert!(
            s.receive(1, 100, 6, 500).leases.is_empty(),
            "still invisible"
        );
        s.ack(5, e.receipt).unwrap();
        assert_eq!(s.committed(), 6);
    }

    #[test]
    fn renewing_a_lease_keeps_its_receipt_and_moves_its_deadline() {
        let mut s = Subscription::new(policy(), 0);
        let l = s.receive(1, 100, 1, 0).leases[0];
        s.renew(0, l.receipt, 100, 90).unwrap();
        assert!(
            s.receive(1, 100, 1, 150).leases.is_empty(),
            "renewed to 190"
        );
        s.ack(0, l.receipt).unwrap();
        assert_eq!(
            s.renew(0, l.receipt, 100, 200),
            Err(LeaseError::UnknownReceipt)
        );
        assert_eq!(s.committed(), 1);
    }

    /// The same run through `apply`: deliveries, a refusal, a dead letter, commits.
    #[test]
    fn commands_in_effects_out() {
        let mut s = Subscription::new(policy(), 0);
        let mut fx = Vec::new();
        s.apply(
            Command::Receive {
                max: 2,
                invisible_ms: 100,
                end: 2,
            },
            0,
            &mut fx,
        );
        let leases: Vec<Lease> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Deliver(l) => Some(*l),
                _ => None,
            })
            .collect();
        assert_eq!(leases.len(), 2);
        fx.clear();
        s.apply(
            Command::Ack {
                offset: 1,
                receipt: leases[1].receipt,
            },
            10,
            &mut fx,
        );
        assert!(fx.is_empty(), "offset 0 still open: nothing to commit");
        s.apply(
            Command::Ack {
                offset: 1,
                receipt: leases[1].receipt,
            },
            10,
            &mut fx,
        );
        assert_eq!(fx, vec![Effect::Refused(LeaseError::UnknownReceipt)]);
        fx.clear();
        s.apply(
            Command::Ack {
                offset: 0,
                receipt: leases[0].receipt,
            },
            20,
            &mut fx,
        );
        assert_eq!(fx, vec![Effect::Commit(2)]);
    }

    #[test]
    fn a_message_group_has_one_message_out_at_a_time_in_order() {
        let mut s = Subscription::new(policy(), 0);
        // Offsets 0, 2, 3 are group 7; 1 is group 8.
        let group = |o: u64| if o == 1 { 8 } else { 7 };
        let mut out = Vec::new();
        for l in s.receive(10, 1_000, 4, 0).leases {
            if s.claim(l.offset, l.receipt, group(l.offset)) {
                out.push(l);
            }
        }
        assert_eq!(out.iter().map(|l| l.offset).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(s.parked(), 2);
        s.ack(1, out[1].receipt).unwrap();
        // Nothing of group 7 comes out while 0 is in flight.
        assert!(s.receive(10, 1_000, 4, 10).leases.is_empty());
        s.ack(0, out[0].receipt).unwrap();
        let next = s.receive(10, 1_000, 4, 20).leases;
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].offset, next[0].attempt),
            (2, 1),
            "first delivery of 2"
        );
        assert!(s.claim(next[0].offset, next[0].receipt, 7));
        // 2's lease ends: 2 comes back before 3 (after its backoff).
        s.tick(1_020);
        let again = s.receive(10, 1_000, 4, 1_120).leases;
        assert_eq!((again[0].offset, again[0].attempt), (2, 2));
        assert!(s.claim(2, again[0].receipt, 7));
        s.ack(2, again[0].receipt).unwrap();
        let last = s.receive(10, 1_000, 4, 1_130).leases;
        assert_eq!(last[0].offset, 3);
        assert!(s.claim(3, last[0].receipt, 7));
        s.ack(3, last[0].receipt).unwrap();
        assert_eq!(s.committed(), 4);
        assert!(s.groups.is_empty() && s.group_of.is_empty() && s.parked.is_empty());
    }

    proptest! {
        /// With every offset in one of three message groups, a group never has two
        /// messages out at once, and its first deliveries come in offset order.
        #[test]
        fn message_groups_are_delivered_one_at_a_time_in_order(
            ops in proptest::collection::vec((0u8..5, 0usize..6, 0i64..400), 1..150)
        ) {
            let mut s = Subscription::new(policy(), 0);
            let group = |o: u64| o % 3;
            let mut now = 0i64;
            let mut end = 0u64;
            let mut out: Vec<Lease> = Vec::new();
            let mut first_seen: BTreeMap<u64, u64> = BTreeMap::new();
            for (op, n, dt) in ops {
                now += dt;
                match op {
                    0 => end += n as u64,
                    1 => {
                        for l in s.receive(n, 300, end, now).leases {
                            if !s.claim(l.offset, l.receipt, group(l.offset)) {
                                continue;
                            }
                            // Leases that ended are no longer out.
                            out.retain(|o| s.in_flight.get(&o.offset).is_some_and(|f| f.receipt == o.receipt));
                            prop_assert!(
                                !out.iter().any(|o| group(o.offset) == group(l.offset)),
                                "group {} has two out", group(l.offset)
                            );
                            if l.attempt == 1 {
                                let g = group(l.offset);
                                if let Some(prev) = first_seen.insert(g, l.offset) {
                                    prop_assert!(prev < l.offset, "group {} out of order", g);
                                }
                            }
                            out.push(l);
                        }
                    }
                    2 if !out.is_empty() => {
                        let l = out.remove(n % out.len());
                        let _ = s.ack(l.offset, l.receipt);
                    }
                    3 if !out.is_empty() => {
                        let l = out.remove(n % out.len());
                        let _ = s.nack(l.offset, l.receipt, now);
                    }
                    _ => s.tick(now),
                }
                s.take_dead();
            }
        }

        /// Every offset below the stream's end is, at any time, exactly one of: done
        /// (below the committed offset or acked above it), in flight, retrying, or not
        /// handed out yet; each is dead-lettered at most once and only after its last
        /// attempt; acks of handed-out leases only ever move the committed offset up.
        #[test]
        fn every_offset_is_in_exactly_one_state(
            ops in proptest::collection::vec((0u8..5, 0usize..6, 0i64..400), 1..150)
        ) {
            let mut s = Subscription::new(policy(), 0);
            let mut now = 0i64;
            let mut end = 0u64;
            let mut leases: Vec<Lease> = Vec::new();
            let mut dead = BTreeSet::new();
            let mut attempts: BTreeMap<u64, u32> = BTreeMap::new();
            for (op, n, dt) in ops {
                now += dt;
                match op {
                    0 => end += n as u64,
                    1 => {
                        let r = s.receive(n, 300, end, now);
                        for l in &r.leases {
                            let a = attempts.entry(l.offset).or_insert(0);
                            *a += 1;
                            prop_assert_eq!(l.attempt, *a);
                            prop_assert!(l.offset < end);
                        }
                        leases.extend(r.leases);
                    }
                    2 if !leases.is_empty() => {
                        let l = leases.remove(n % leases.len());
                        let before = s.committed();
                        let _ = s.ack(l.offset, l.receipt);
                        prop_assert!(s.committed() >= before);
                    }
                    3 if !leases.is_empty() => {
                        let l = leases.remove(n % leases.len());
                        let _ = s.nack(l.offset, l.receipt, now);
                    }
                    _ => s.tick(now),
                }
                for d in s.take_dead() {
                    prop_assert!(dead.insert(d), "offset {} dead-lettered twice", d);
                    prop_assert_eq!(attempts.get(&d).copied(), Some(policy().max_attempts));
                }
                for offset in 0..end {
                    let states = [
                        offset < s.committed() || s.done.contains(&offset),
                        s.in_flight.contains_key(&offset),
                        s.retrying.contains_key(&offset),
                        s.parked.contains_key(&offset),
                        offset >= s.cursor,
                    ];
                    prop_assert_eq!(states.iter().filter(|x| **x).count(), 1, "offset {}: {:?}", offset, states);
                }
            }
        }
    }
}
