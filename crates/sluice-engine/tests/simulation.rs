//! Deterministic simulation of a durable queue: the engine's queue state machine and the
//! journal it shares with other queues (here a second queue, which half the messages are
//! also routed to and which is deleted and created again now and then), driven by random commands from several producers and consumers on a manual
//! clock, with crashes (the process dies without flushing anything of its own; what it
//! wrote to files survives, as after `kill -9`) and recovery. After every step it checks:
//!
//! - nothing confirmed is lost: after a crash every confirmed message that was not
//!   settled comes back;
//! - nothing is delivered twice without the redelivered flag;
//! - order: a consumer's first deliveries come in publish order;
//! - TTL: no message is delivered at or after its expiry, and every ready message whose
//!   expiry has passed is gone once the clock reaches it;
//! - the other queue gets back only messages published to it since it was last created;
//! - the journal frees what is settled: at the end, with everything settled, it holds
//!   no message.
//!
//! Writes and fsyncs fail or tear now and then (a fault-injecting I/O backend): a failed
//! fsync confirms nothing, and a store that failed is restarted, as the broker is.
//!
//! Seeds `0..SEEDS` run in CI (`SIM_SEEDS` and `SIM_SEED` override); a failure prints its
//! seed and the last steps, and `SIM_SEED=<n>` replays exactly that run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use sluice_core::Message;
use sluice_core::clock::{Clock, ManualClock};
use sluice_engine::journal::{Journal, Restored};
use sluice_engine::queue::{Consumer, ConsumerId, Dead, Delivery, MessageId, Queue};
use sluice_engine::store::{Fault, FaultyIo, Io, LogConfig};

const SEEDS: u64 = 40;
/// The simulated queue's id in the journal, and the other queue's.
const SIM: u64 = 1;
const OTHER: u64 = 2;
const STEPS: usize = 1_500;

/// SplitMix64: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the clients know, against which the queue is checked.
#[derive(Default)]
struct Oracle {
    next_seq: u64,
    /// Publish seq → its expiry (ms), for every message published.
    published: BTreeMap<u64, Option<i64>>,
    /// Confirmed to the publisher: stored and fsynced.
    confirmed: BTreeSet<u64>,
    /// Acknowledged or expired: gone for good once the store has recorded it.
    settled: BTreeSet<u64>,
    /// Delivered at least once.
    delivered: HashSet<u64>,
    /// Last first-time delivery per consumer, for the order check.
    last_fresh: HashMap<ConsumerId, u64>,
    /// Messages published to the other queue since it was last created (and the
    /// creation reached the file), by seq, with their offsets.
    other: BTreeMap<u64, u64>,
    /// The other queue's creation was written: only messages from `other` may return.
    other_created: bool,
    /// `SIM_TRACE=<seq>`: print what happens to that message.
    trace: Option<u64>,
}

impl Oracle {
    fn note(&self, seq: u64, what: std::fmt::Arguments<'_>) {
        if self.trace == Some(seq) {
            eprintln!("trace {seq}: {what}");
        }
    }
}

struct Node {
    dir: std::path::PathBuf,
    clock: Arc<ManualClock>,
    io: Arc<FaultyIo>,
    /// A write or fsync failed: the node restarts after this step.
    failed: bool,
    queue: Queue,
    store: Journal<u64>,
    /// Message id in the queue → publish seq and store offset.
    ids: HashMap<MessageId, (u64, u64)>,
    /// Delivered and not yet acknowledged: (consumer, message id).
    unacked: Vec<(ConsumerId, MessageId)>,
    /// In the queue and not delivered.
    ready: BTreeSet<MessageId>,
    consumers: Vec<ConsumerId>,
    next_consumer: ConsumerId,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        ..LogConfig::default()
    }
}

fn seq_of(message: &Message) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&message.body[..8]);
    u64::from_be_bytes(b)
}

impl Node {
    fn open(
        dir: &std::path::Path,
        clock: Arc<ManualClock>,
        io: Arc<FaultyIo>,
        oracle: &mut Oracle,
    ) -> Node {
        io.disarm();
        let mut recovered = Vec::new();
        let mut other = BTreeMap::new();
        let store = Journal::<u64>::open_with_io(
            dir,
            config(),
            Arc::clone(&clock) as Arc<dyn Clock>,
            Arc::clone(&io) as Arc<dyn Io>,
            &mut |r: Restored| {
                if r.queue == SIM {
                    recovered.push(r);
                } else {
                    assert_eq!(r.queue, OTHER);
                    other.insert(seq_of(&r.message), r.offset);
                }
                true
            },
        )
        .unwrap();
        if oracle.other_created {
            for seq in other.keys() {
                assert!(
                    oracle.other.contains_key(seq),
                    "message {seq} came back to the other queue from before it was created"
                );
            }
        }
        // The other queue keeps what came back (settling none of it until it is
        // deleted).
        oracle.other = other;
        let mut queue = Queue::new("sim".into());
        let mut ids = HashMap::new();
        let mut ready = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for r in recovered {
            let seq = seq_of(&r.message);
            assert!(seen.insert(seq), "message {seq} recovered twice");
            oracle.note(seq, format_args!("recovered at offset {}", r.offset));
            assert!(
                oracle.published.contains_key(&seq),
                "message {seq} never published"
            );
            let id = queue.push(r.message, Some(r.offset), true, r.expires_at);
            ids.insert(id, (seq, r.offset));
            ready.insert(id);
        }
        // Nothing confirmed and unsettled may be missing.
        for seq in &oracle.confirmed {
            if !oracle.settled.contains(seq) {
                assert!(
                    seen.contains(seq),
                    "confirmed message {seq} lost in the crash"
                );
            }
        }
        // What came back is not settled any more, whatever the clients thought.
        for seq in &seen {
            oracle.settled.remove(seq);
        }
        oracle.last_fresh.clear();
        let mut node = Node {
            dir: dir.to_path_buf(),
            clock,
            io,
            failed: false,
            queue,
            store,
            ids,
            unacked: Vec::new(),
            ready,
            consumers: Vec::new(),
            next_consumer: 1,
        };
        // Expiry is checked when the queue comes back, as the broker's expiry loop does.
        node.expire(oracle);
        node
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Checks and records deliveries.
    fn delivered(&mut self, out: Vec<Delivery>, oracle: &mut Oracle) {
        let now = self.now();
        for d in out {
            let (seq, _) = self.ids[&d.entry.id];
            if let Some(at) = d.entry.expires_at {
                assert!(
                    now < at,
                    "message {seq} delivered at {now}, expired at {at}"
                );
            }
            let again = !oracle.delivered.insert(seq);
            assert!(
                !again || d.entry.redelivered,
                "message {seq} delivered twice without the redelivered flag"
            );
            if !d.entry.redelivered {
                if let Some(&last) = oracle.last_fresh.get(&d.consumer) {
                    assert!(seq > last, "consumer {} got {seq} after {last}", d.consumer);
                }
                oracle.last_fresh.insert(d.consumer, seq);
            }
            assert!(
                self.ready.remove(&d.entry.id),
                "message {seq} delivered but not ready"
            );
            oracle.note(
                seq,
                format_args!(
                    "delivered to {} (redelivered {})",
                    d.consumer, d.entry.redelivered
                ),
            );
            self.unacked.push((d.consumer, d.entry.id));
        }
    }

    /// Dead messages leave the queue: their storage is settled.
    fn buried(&mut self, dead: Vec<Dead>, oracle: &mut Oracle) {
        let mut offsets = Vec::new();
        for d in dead {
            let (seq, offset) = self.ids[&d.entry.id];
            assert!(
                self.ready.remove(&d.entry.id),
                "message {seq} died but was not ready"
            );
            let due = d
                .entry
                .expires_at
                .expect("only expiry kills in this simulation");
            assert!(due <= self.now(), "message {seq} expired early");
            oracle.settled.insert(seq);
            oracle.note(seq, format_args!("expired, settled at offset {offset}"));
            offsets.push(offset);
        }
        if self.store.settle(SIM, &offsets).is_err() {
            self.failed = true;
        }
    }

    fn expire(&mut self, oracle: &mut Oracle) {
        let mut dead = Vec::new();
        self.queue.expire(self.now(), &mut dead);
        self.buried(dead, oracle);
    }

    fn publish(&mut self, rng: &mut Rng, oracle: &mut Oracle) {
        let seq = oracle.next_seq;
        oracle.next_seq += 1;
        let mut body = seq.to_be_bytes().to_vec();
        body.extend(std::iter::repeat_n(b'.', rng.below(200) as usize));
        let ttl = (rng.below(4) == 0).then(|| 1 + rng.below(3_000) as i64);
        let expires_at = ttl.map(|t| self.now() + t);
        let message = Arc::new(Message {
            exchange: "".into(),
            routing_key: "sim".into(),
            properties: Bytes::new(),
            body: Bytes::from(body),
            persistent: true,
            priority: 0,
            expiration_ms: ttl.map(|t| t as u64),
        });
        oracle.published.insert(seq, expires_at);
        let fan_out = rng.below(2) == 0;
        let targets: &[(u64, Option<i64>)] = if fan_out {
            &[(SIM, expires_at), (OTHER, None)]
        } else {
            &[(SIM, expires_at)]
        };
        let Ok(offset) = self.store.append(&message, targets) else {
            // Refused (the publisher is nacked): nothing was queued.
            self.failed = true;
            return;
        };
        oracle.note(
            seq,
            format_args!("published at offset {offset}, expires {expires_at:?}"),
        );
        self.store.wait(offset, seq).unwrap();
        if fan_out {
            oracle.other.insert(seq, offset);
        }
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        let now = self.now();
        let id = match self.queue.publish(
            message,
            Some(offset),
            expires_at,
            now,
            &mut |_| true,
            &mut out,
            &mut dead,
        ) {
            sluice_engine::queue::Accepted::Queued(id) => id,
            sluice_engine::queue::Accepted::Rejected => panic!("no limits: nothing refused"),
        };
        self.ids.insert(id, (seq, offset));
        self.ready.insert(id);
        self.delivered(out, oracle);
        self.buried(dead, oracle);
    }

    fn sync(&mut self, oracle: &mut Oracle) {
        let job = match self.store.sync_job() {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_) => {
                self.failed = true;
                return;
            }
        };
        match job.run() {
            Ok(synced) => {
                for seq in self.store.synced(synced) {
                    oracle.note(seq, format_args!("confirmed by a sync"));
                    oracle.confirmed.insert(seq);
                }
            }
            Err(_) => {
                // The publishers are nacked: nothing is confirmed.
                let _ = self.store.sync_failed();
                self.failed = true;
            }
        }
    }

    fn background(&mut self, oracle: &mut Oracle) {
        if self.store.write_buffered().is_err() {
            self.failed = true;
            return;
        }
        // As the broker's definitions file would have been written by now.
        let mark = self.store.next_offset();
        self.store.definitions_saved(mark);
        if let Some(job) = self.store.maintenance() {
            job.run().unwrap();
        }
        let Ok(job) = self.store.flush_job() else {
            self.failed = true;
            return;
        };
        if let Some(job) = job {
            let result = job.run();
            self.failed |= result.is_err();
            for (seq, ok) in self.store.flushed(result) {
                if ok {
                    oracle.note(seq, format_args!("confirmed by a flush"));
                    oracle.confirmed.insert(seq);
                }
            }
        }
    }

    /// The other queue is deleted and created again under the same id, as a queue id
    /// used again after a restart would be.
    fn recreate_other(&mut self, oracle: &mut Oracle) {
        let held: Vec<u64> = oracle.other.values().copied().collect();
        let done = self
            .store
            .deleted(OTHER, &held)
            .and_then(|()| self.store.created(OTHER, b"other"))
            .and_then(|()| self.store.write_buffered());
        oracle.other.clear();
        match done {
            Ok(()) => oracle.other_created = true,
            Err(_) => {
                oracle.other_created = false;
                self.failed = true;
            }
        }
    }

    fn fault(&mut self, rng: &mut Rng) {
        self.io.arm(match rng.below(3) {
            0 => Fault::FailWrite,
            1 => Fault::TearWrite {
                keep: rng.below(300) as usize,
            },
            _ => Fault::FailSync,
        });
    }

    fn consume(&mut self, rng: &mut Rng, oracle: &mut Oracle) {
        if self.consumers.len() >= 3 {
            return;
        }
        let id = self.next_consumer;
        self.next_consumer += 1;
        let consumer = Consumer {
            id,
            tag: format!("c{id}").into(),
            no_ack: false,
            prefetch: 1 + rng.below(10) as u32,
            exclusive: false,
            priority: 0,
            unacked: 0,
        };
        let mut out = Vec::new();
        self.queue
            .consume(consumer, &mut |_| true, &mut out)
            .unwrap();
        self.consumers.push(id);
        self.delivered(out, oracle);
    }

    /// A consumer's channel closes: it goes and its unacked messages come back.
    fn cancel(&mut self, rng: &mut Rng, oracle: &mut Oracle) {
        if self.consumers.is_empty() {
            return;
        }
        let at = rng.below(self.consumers.len() as u64) as usize;
        let id = self.consumers.remove(at);
        self.queue.cancel(id);
        let back: Vec<MessageId> = self
            .unacked
            .iter()
            .filter(|(c, _)| *c == id)
            .map(|(_, m)| *m)
            .collect();
        self.unacked.retain(|(c, _)| *c != id);
        self.ready.extend(back.iter().copied());
        let now = self.now();
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        self.queue
            .requeue(&back, now, &mut |_| true, &mut out, &mut dead);
        self.delivered(out, oracle);
        self.buried(dead, oracle);
    }

    fn settle_one(&mut self, rng: &mut Rng, oracle: &mut Oracle, ack: bool) {
        if self.unacked.is_empty() {
            return;
        }
        let at = rng.below(self.unacked.len() as u64) as usize;
        let (_, id) = self.unacked.swap_remove(at);
        let now = self.now();
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        if ack {
            let settled = self.queue.settle_many(&[id], &mut |_| true, &mut out);
            assert_eq!(settled.len(), 1);
            let (seq, offset) = self.ids[&id];
            oracle.settled.insert(seq);
            oracle.note(seq, format_args!("acked, settled at offset {offset}"));
            self.failed |= self.store.settle(SIM, &[offset]).is_err();
        } else {
            self.ready.insert(id);
            self.queue
                .requeue(&[id], now, &mut |_| true, &mut out, &mut dead);
        }
        self.delivered(out, oracle);
        self.buried(dead, oracle);
    }

    fn advance(&mut self, rng: &mut Rng, oracle: &mut Oracle) {
        self.clock.advance_ms(1 + rng.below(1_500) as i64);
        self.expire(oracle);
        // Every ready message whose time has come is gone.
        let now = self.now();
        for id in &self.ready {
            let (seq, _) = self.ids[id];
            if let Some(Some(at)) = oracle.published.get(&seq) {
                assert!(
                    *at > now,
                    "message {seq} still ready at {now}, expired at {at}"
                );
            }
        }
    }

    /// Every ready message is acknowledged and the other queue deleted.
    fn drain(&mut self, oracle: &mut Oracle) {
        let mut offsets = Vec::new();
        while let Some(entry) = self.queue.get(true) {
            offsets.push(self.ids[&entry.id].1);
        }
        self.store.settle(SIM, &offsets).unwrap();
        let held: Vec<u64> = oracle.other.values().copied().collect();
        self.store.deleted(OTHER, &held).unwrap();
        oracle.other.clear();
    }

    /// `kill -9`: nothing of the process survives but what it wrote to its files.
    fn crash(self, oracle: &mut Oracle) -> Node {
        let (dir, clock, io) = (
            self.dir.clone(),
            Arc::clone(&self.clock),
            Arc::clone(&self.io),
        );
        // Buffered writes the process had not made are lost.
        self.store.abandon();
        Node::open(&dir, clock, io, oracle)
    }
}

/// One run; returns how many faults were injected.
fn run(seed: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut rng = Rng(seed);
    let mut oracle = Oracle {
        trace: std::env::var("SIM_TRACE").ok().and_then(|s| s.parse().ok()),
        ..Oracle::default()
    };
    let io = Arc::new(FaultyIo::default());
    let mut node = Node::open(dir.path(), Arc::clone(&clock), io, &mut oracle);
    let mut log: VecDeque<&'static str> = VecDeque::new();
    for _ in 0..STEPS {
        let op = match rng.below(100) {
            0..30 => "publish",
            30..42 => "sync",
            42..47 => "background",
            47..52 => "consume",
            52..54 => "cancel",
            54..72 => "ack",
            72..77 => "requeue",
            77..92 => "advance",
            92..93 => "crash",
            93..94 if rng.below(2) == 0 => "recreate",
            93..96 => "fault",
            _ => "idle",
        };
        log.push_back(op);
        if log.len() > 30 {
            log.pop_front();
        }
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match op {
            "publish" => node.publish(&mut rng, &mut oracle),
            "sync" => node.sync(&mut oracle),
            "background" => node.background(&mut oracle),
            "consume" => node.consume(&mut rng, &mut oracle),
            "cancel" => node.cancel(&mut rng, &mut oracle),
            "ack" => node.settle_one(&mut rng, &mut oracle, true),
            "requeue" => node.settle_one(&mut rng, &mut oracle, false),
            "advance" => node.advance(&mut rng, &mut oracle),
            "fault" => node.fault(&mut rng),
            "recreate" => node.recreate_other(&mut oracle),
            _ => {}
        }));
        if let Err(e) = step {
            eprintln!("simulation failed: seed {seed}, last steps {log:?}");
            std::panic::resume_unwind(e);
        }
        if op == "crash" || node.failed {
            oracle.note(oracle.trace.unwrap_or(u64::MAX), format_args!("crash"));
            let crashed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.crash(&mut oracle)));
            match crashed {
                Ok(n) => node = n,
                Err(e) => {
                    eprintln!("simulation failed: seed {seed}, last steps {log:?}");
                    std::panic::resume_unwind(e);
                }
            }
        }
    }
    // A last crash: everything confirmed and unsettled is still there.
    node.sync(&mut oracle);
    let mut node = node.crash(&mut oracle);
    // Everything settled everywhere: the journal holds nothing.
    node.drain(&mut oracle);
    assert_eq!(node.store.live_messages(), 0, "settled messages still held");
    node.io.injected()
}

#[test]
fn random_runs_keep_every_promise() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS);
            (0..n).collect()
        }
    };
    let faults: u64 = seeds.into_iter().map(run).sum();
    assert!(
        faults > 0,
        "no write or fsync failed: the fault paths went untested"
    );
}
