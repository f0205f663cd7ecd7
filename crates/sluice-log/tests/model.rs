#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Random appends, reads, time lookups, retention, prefix truncation, rolls and restarts
//! agree with a simple in-memory model of the log.

mod common;

use common::open;
use proptest::prelude::*;
use sluice_core::ManualClock;
use std::sync::Arc;

use sluice_log::{Batch, Fault, FaultyIo, Io, Log, LogConfig, LogError};

#[derive(Debug, Clone)]
enum Op {
    Append {
        len: usize,
        count: u32,
        ts: i64,
    },
    Read {
        at: u64,
        max_bytes: usize,
    },
    ReadByTime {
        ts: i64,
    },
    RetainBytes {
        max: u64,
    },
    TruncatePrefix {
        at: u64,
    },
    Roll,
    Sync,
    Reopen,
    /// Reopen without a clean close: buffered bytes are written, no fsync.
    Drop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..600, 1u32..5, 0i64..1000).prop_map(|(len, count, ts)| Op::Append { len, count, ts }),
        3 => (any::<u64>(), 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0i64..1100).prop_map(|ts| Op::ReadByTime { ts }),
        1 => (1000u64..20_000).prop_map(|max| Op::RetainBytes { max }),
        1 => any::<u64>().prop_map(|at| Op::TruncatePrefix { at }),
        1 => Just(Op::Roll),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Drop),
    ]
}

fn make_payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn config(max_retained: Option<u64>) -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 200,
        segment_ms: None,
        open_segments_max: 2,
        retention_bytes: max_retained,
        ..LogConfig::default()
    }
}

struct Model {
    batches: Vec<Batch>,
    start: u64,
    next: u64,
}

impl Model {
    fn visible(&self) -> impl Iterator<Item = &Batch> {
        self.batches.iter().filter(|b| b.next_offset() > self.start)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn log_agrees_with_an_in_memory_model(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let mut log: Log = open(dir.path(), config(None), &clock);
        let mut model = Model { batches: Vec::new(), start: 0, next: 0 };
        let mut seq = 0u64;
        for op in ops {
            match op {
                Op::Append { len, count, ts } => {
                    let payload = make_payload(seq, len);
                    seq += 1;
                    let a = log.append(&payload, count, ts).unwrap();
                    prop_assert_eq!(a.base_offset, model.next);
                    model.batches.push(Batch {
                        base_offset: model.next,
                        record_count: count,
                        max_timestamp_ms: ts,
                        payload: payload.into(),
                    });
                    model.next += u64::from(count);
                }
                Op::Read { at, max_bytes } => {
                    let span = model.next - model.start + 2;
                    let at = model.start.saturating_sub(1) + at % span;
                    let got = log.read(at, max_bytes);
                    if at < model.start || at > model.next {
                        let out_of_range = matches!(got, Err(LogError::OffsetOutOfRange { .. }));
                        prop_assert!(out_of_range, "read {} outside [{}, {}]: {:?}", at, model.start, model.next, got);
                        continue;
                    }
                    let got = got.unwrap();
                    let expected: Vec<&Batch> = model.visible().filter(|b| b.next_offset() > at).collect();
                    if expected.is_empty() {
                        prop_assert!(got.is_empty());
                        continue;
                    }
                    prop_assert!(!got.is_empty(), "read at {} returned nothing", at);
                    for (g, e) in got.iter().zip(expected.iter()) {
                        prop_assert_eq!(g, *e);
                    }
                    let frames: usize = got.iter().map(|b| b.payload.len() + 32).sum();
                    prop_assert!(got.len() == 1 || frames <= max_bytes.max(32));
                }
                Op::ReadByTime { ts } => {
                    let got = log.offset_for_timestamp(ts).unwrap();
                    let expected = model.visible().find(|b| b.max_timestamp_ms >= ts).map(|b| b.base_offset.max(model.start));
                    prop_assert_eq!(got, expected);
                }
                Op::RetainBytes { max } => {
                    drop(log);
                    log = open(dir.path(), config(Some(max)), &clock);
                    log.apply_retention().unwrap();
                    prop_assert!(log.start_offset() >= model.start);
                    if log.start_offset() > model.start {
                        model.start = log.start_offset();
                        // Retention only cuts at batch boundaries.
                        let boundary = model.start == model.next
                            || model.batches.iter().any(|b| b.base_offset == model.start);
                        prop_assert!(boundary);
                    }
                    drop(log);
                    log = open(dir.path(), config(None), &clock);
                }
                Op::TruncatePrefix { at } => {
                    let at = at % (model.next + 1);
                    log.truncate_prefix(at).unwrap();
                    model.start = model.start.max(at);
                    prop_assert_eq!(log.start_offset(), model.start);
                }
                Op::Roll => log.roll().unwrap(),
                Op::Sync => {
                    log.sync().unwrap();
                    prop_assert_eq!(log.durable_offset(), model.next);
                }
                Op::Reopen => {
                    log.close().unwrap();
                    log = open(dir.path(), config(None), &clock);
                }
                Op::Drop => {
                    drop(log);
                    log = open(dir.path(), config(None), &clock);
                }
            }
            prop_assert_eq!(log.next_offset(), model.next);
            prop_assert_eq!(log.start_offset(), model.start);
        }
        // Everything visible reads back in order at the end.
        let all = common::read_all(&mut log, model.start);
        let expected: Vec<&Batch> = model.visible().collect();
        prop_assert_eq!(all.len(), expected.len());
        for (g, e) in all.iter().zip(expected) {
            prop_assert_eq!(g, e);
        }
    }
}

/// Operations of the fault model: appends, syncs and rolls while writes and fsyncs fail
/// or tear on purpose.
#[derive(Debug, Clone)]
enum FaultOp {
    Append { len: usize, count: u32 },
    Sync,
    WriteBuffered,
    Roll,
    Reopen,
    Arm(Fault),
}

fn fault_op() -> impl Strategy<Value = FaultOp> {
    prop_oneof![
        10 => (0usize..3000, 1u32..4).prop_map(|(len, count)| FaultOp::Append { len, count }),
        3 => Just(FaultOp::Sync),
        2 => Just(FaultOp::WriteBuffered),
        1 => Just(FaultOp::Roll),
        1 => Just(FaultOp::Reopen),
        1 => Just(FaultOp::Arm(Fault::FailWrite)),
        1 => (0usize..5000).prop_map(|keep| FaultOp::Arm(Fault::TearWrite { keep })),
        1 => Just(FaultOp::Arm(Fault::FailSync)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// A failed or torn write or fsync stops the log (every later change is refused), and
    /// reopening it gives back a prefix of what was appended, never garbage, holding at
    /// least everything a successful sync covered.
    #[test]
    fn failed_writes_and_fsyncs_stop_the_log_and_lose_nothing_synced(
        ops in proptest::collection::vec(fault_op(), 1..80)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let io = Arc::new(FaultyIo::default());
        let reopen = |io: &Arc<FaultyIo>| {
            Log::open_with_io(dir.path(), config(None), Arc::new(clock.clone()), Arc::clone(io) as Arc<dyn Io>)
                .unwrap()
        };
        let mut log = reopen(&io);
        let mut batches: Vec<Batch> = Vec::new();
        let mut durable = 0usize;
        let mut seq = 0u64;
        for op in ops {
            let result = match op {
                FaultOp::Append { len, count } => {
                    let payload = make_payload(seq, len);
                    seq += 1;
                    let next = batches.last().map_or(0, Batch::next_offset);
                    log.append(&payload, count, 0).map(|a| {
                        assert_eq!(a.base_offset, next);
                        batches.push(Batch {
                            base_offset: next,
                            record_count: count,
                            max_timestamp_ms: 0,
                            payload: payload.into(),
                        });
                    })
                }
                FaultOp::Sync => log.sync().map(|()| durable = batches.len()),
                FaultOp::WriteBuffered => log.write_buffered(),
                FaultOp::Roll => log.roll(),
                // A restart after a clean write of the buffer (a failing one is seen here,
                // not lost in a destructor).
                FaultOp::Reopen => match log.write_buffered() {
                    Ok(()) => {
                        drop(log);
                        log = reopen(&io);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                FaultOp::Arm(fault) => {
                    io.arm(fault);
                    Ok(())
                }
            };
            let Err(e) = result else { continue };
            prop_assert!(matches!(e, LogError::Io { .. } | LogError::Failed { .. }), "{e}");
            prop_assert!(log.has_failed());
            let refused = matches!(log.append(b"x", 1, 0), Err(LogError::Failed { .. }));
            prop_assert!(refused);
            // Restart: what comes back is a prefix of the appends with every synced one.
            drop(log);
            io.disarm();
            log = reopen(&io);
            let back = common::read_all(&mut log, 0);
            prop_assert!(back.len() >= durable, "{} batches back, {} were synced", back.len(), durable);
            prop_assert!(back.len() <= batches.len());
            for (g, e) in back.iter().zip(&batches) {
                prop_assert_eq!(g, e);
            }
            batches.truncate(back.len());
            durable = back.len();
            prop_assert_eq!(log.next_offset(), batches.last().map_or(0, Batch::next_offset));
        }
        // A clean end: everything appended reads back.
        io.disarm();
        log.sync().unwrap();
        drop(log);
        let mut log = reopen(&io);
        let back = common::read_all(&mut log, 0);
        prop_assert_eq!(back, batches);
    }
}
