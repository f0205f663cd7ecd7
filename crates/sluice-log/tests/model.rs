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
use sluice_log::{Batch, Log, LogConfig, LogError};

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
