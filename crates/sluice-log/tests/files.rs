#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Many logs under a small process-wide budget of open files: their files are closed and
//! opened again behind their backs all the time, and every log still reads back exactly
//! what was appended to it, before and after a reopen, with sendfile slices too.

mod common;

use common::{open, payload};
use sluice_core::ManualClock;
use sluice_log::{Log, LogConfig, files};

const LOGS: usize = 64;
const BUDGET: usize = 16;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        segment_ms: None,
        open_segments_max: 4,
        ..LogConfig::default()
    }
}

#[test]
fn many_logs_under_a_small_file_budget_read_back_everything() {
    files::set_open_files_max(BUDGET);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let path = |i: usize| dir.path().join(format!("log-{i}"));
    let mut logs: Vec<Option<Log>> = (0..LOGS)
        .map(|i| Some(open(&path(i), config(), &clock)))
        .collect();
    let mut model: Vec<Vec<Vec<u8>>> = vec![Vec::new(); LOGS];
    let mut rng = Rng(7);
    let mut most_open = 0;
    for step in 0..6_000u64 {
        let i = rng.below(LOGS as u64) as usize;
        let log = logs[i].as_mut().unwrap();
        match rng.below(10) {
            0..5 => {
                let p = payload(step, 1 + rng.below(300) as usize);
                let at = log.append(&p, 1, 0).unwrap();
                assert_eq!(at.base_offset, model[i].len() as u64);
                model[i].push(p);
            }
            5 => log.sync().unwrap(),
            6 | 7 if !model[i].is_empty() => {
                let at = rng.below(model[i].len() as u64);
                let got = log.read(at, 1).unwrap();
                assert_eq!(&got[0].payload[..], &model[i][at as usize][..]);
            }
            8 if !model[i].is_empty() => {
                let at = rng.below(model[i].len() as u64);
                let slices = log.read_slices(at, 1 << 20).unwrap();
                assert_eq!(slices.first().map(|s| s.base_offset), Some(at));
            }
            9 => {
                // A restart of this log, without a clean close.
                drop(logs[i].take());
                logs[i] = Some(open(&path(i), config(), &clock));
            }
            _ => {}
        }
        most_open = most_open.max(files::open_files());
    }
    assert!(
        most_open <= BUDGET + 1,
        "{most_open} segment files open at once, budget {BUDGET}"
    );
    for (i, log) in logs.iter_mut().enumerate() {
        let log = log.as_mut().unwrap();
        let mut next = 0u64;
        while next < model[i].len() as u64 {
            let batches = log.read(next, 1 << 20).unwrap();
            assert!(!batches.is_empty());
            for b in batches {
                assert_eq!(&b.payload[..], &model[i][b.base_offset as usize][..]);
                next = b.next_offset();
            }
        }
    }
}
