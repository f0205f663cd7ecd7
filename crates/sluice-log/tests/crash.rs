#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Crash tests: damage one file of a closed log the way a crash or a bad disk would (cut
//! at a byte, zeros over the tail, a flipped byte, a missing index) and reopen. The log
//! must open, never return a batch that differs from what was written, keep everything
//! the damage did not touch, and accept appends after.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::open;
use proptest::prelude::*;
use sluice_core::ManualClock;
use sluice_log::{Log, LogConfig, LogError};

#[derive(Debug, Clone, Copy)]
enum Damage {
    Cut,
    ZeroTail,
    Flip,
    Delete,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 3000,
        index_interval_bytes: 300,
        segment_ms: None,
        ..LogConfig::default()
    }
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j) as u8).collect()
}

/// Segment base offset → its `.log`, `.index` and `.timeindex` paths.
fn segments(dir: &Path) -> BTreeMap<u64, PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_string();
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, path))
        })
        .collect()
}

/// Reads forward from `from`; stops at the first typed corruption error.
fn read_until_error(log: &mut Log, from: u64) -> (Vec<sluice_log::Batch>, bool) {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        match log.read(offset, 4096) {
            Ok(batches) if batches.is_empty() => return (out, false),
            Ok(batches) => {
                offset = batches.last().unwrap().next_offset();
                out.extend(batches);
            }
            Err(LogError::Corrupt { .. }) => return (out, true),
            Err(e) => panic!("unexpected read error {e}"),
        }
    }
}

fn damage(path: &Path, how: Damage, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let pos = if bytes.is_empty() {
        0
    } else {
        at % (bytes.len() + 1)
    };
    match how {
        Damage::Cut => bytes.truncate(pos),
        Damage::ZeroTail => bytes[pos..].iter_mut().for_each(|b| *b = 0),
        Damage::Flip => {
            if let Some(b) = bytes.get_mut(pos) {
                *b ^= 0x5a;
            }
        }
        Damage::Delete => {
            std::fs::remove_file(path).unwrap();
            return;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn reopen_after_damage_keeps_untouched_batches_and_never_returns_corrupt_ones(
        lens in proptest::collection::vec(1usize..700, 10..60),
        file_pick in any::<usize>(),
        kind in 0usize..3,
        how in prop_oneof![Just(Damage::Cut), Just(Damage::ZeroTail), Just(Damage::Flip), Just(Damage::Delete)],
        at in any::<usize>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let mut log = open(dir.path(), config(), &clock);
        let mut written = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            let p = payload(i, *len);
            let a = log.append(&p, 1 + (i % 3) as u32, i as i64).unwrap();
            written.push((a.base_offset, a.next_offset, p));
        }
        log.close().unwrap();

        let segs = segments(dir.path());
        let bases: Vec<u64> = segs.keys().copied().collect();
        let seg_i = file_pick % bases.len();
        let base = bases[seg_i];
        let is_last = seg_i + 1 == bases.len();
        let log_path = segs[&base].clone();
        let ext = ["log", "index", "timeindex"][kind];
        let target = log_path.with_extension(ext);
        let damaged_data = kind == 0;
        if !target.exists() {
            // The active segment has no index files until it is sealed.
            return Ok(());
        }
        damage(&target, how, at);

        let mut log = open(dir.path(), config(), &clock);
        let start = log.start_offset();
        let (got, saw_corruption) = read_until_error(&mut log, start);
        // Never a batch that differs from what was written at its offset.
        for b in &got {
            let w = written.iter().find(|w| w.0 == b.base_offset);
            prop_assert!(w.is_some(), "batch at unknown offset {}", b.base_offset);
            let w = w.unwrap();
            prop_assert_eq!(b.next_offset(), w.1);
            prop_assert_eq!(&b.payload[..], &w.2[..]);
        }
        let next_base = bases.get(seg_i + 1).copied().unwrap_or(u64::MAX);
        let in_damaged = |o: u64| o >= base && o < next_base;
        if !damaged_data {
            // Index damage loses nothing: indexes are rebuilt from the data.
            prop_assert!(!saw_corruption);
            prop_assert_eq!(got.len(), written.len());
        } else if matches!(how, Damage::Flip | Damage::ZeroTail) && !is_last {
            // Overwritten bytes in a sealed segment (its size unchanged) are not looked for
            // on open; the read's CRC check catches them. Earlier segments are intact.
            let before = written.iter().filter(|w| w.0 < base).count();
            prop_assert!(got.len() >= before);
        } else {
            // Cut, zeroed or flipped data: the damaged segment keeps a prefix of its
            // batches, every other segment keeps all of them.
            prop_assert!(!saw_corruption);
            let kept: Vec<u64> = got.iter().map(|b| b.base_offset).collect();
            let expected_outside: Vec<u64> = written.iter().map(|w| w.0).filter(|o| !in_damaged(*o)).collect();
            for o in &expected_outside {
                prop_assert!(kept.contains(o), "lost batch {} outside the damaged segment", o);
            }
            let inside: Vec<u64> = written.iter().map(|w| w.0).filter(|o| in_damaged(*o)).collect();
            let kept_inside: Vec<u64> = kept.iter().copied().filter(|o| in_damaged(*o)).collect();
            prop_assert_eq!(&kept_inside[..], &inside[..kept_inside.len()]);
        }
        // The log keeps working: appends continue after the last surviving offset.
        let next = log.next_offset();
        let a = log.append(b"after-crash", 1, 0).unwrap();
        prop_assert_eq!(a.base_offset, next);
        log.close().unwrap();
        let mut log = open(dir.path(), config(), &clock);
        prop_assert_eq!(log.next_offset(), next + 1);
        let last = log.read(next, 100).unwrap();
        prop_assert_eq!(&last[0].payload[..], b"after-crash");
    }
}

#[test]
fn recovery_truncates_a_batch_torn_in_the_middle_of_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    for i in 0..10 {
        log.append(&payload(i, 100), 1, 0).unwrap();
    }
    log.close().unwrap();
    let path = dir.path().join(format!("{:020}.log", 0));
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut the last batch in half.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 60).unwrap();
    drop(file);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(log.next_offset(), 9);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len - 132,
        "torn tail removed"
    );
    assert_eq!(log.append(b"x", 1, 0).unwrap().base_offset, 9);
}
