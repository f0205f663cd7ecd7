#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{open, payload, read_all, small_config};
use sluice_core::ManualClock;
use sluice_log::{FlushPolicy, LogConfig, LogError};

#[test]
fn append_then_read_returns_the_same_bytes_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let a = log.append(b"hello", 1, 10).unwrap();
    let b = log.append(b"world!", 3, 20).unwrap();
    assert_eq!((a.base_offset, a.next_offset), (0, 1));
    assert_eq!((b.base_offset, b.next_offset), (1, 4));
    let batches = log.read(0, 1 << 20).unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(&batches[0].payload[..], b"hello");
    assert_eq!(&batches[1].payload[..], b"world!");
    assert_eq!(
        (
            batches[1].base_offset,
            batches[1].record_count,
            batches[1].max_timestamp_ms
        ),
        (1, 3, 20)
    );
    assert_eq!(log.next_offset(), 4);
}

#[test]
fn read_at_an_offset_inside_a_batch_returns_that_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append(b"first", 5, 0).unwrap();
    log.append(b"second", 5, 0).unwrap();
    let batches = log.read(7, 1).unwrap();
    assert_eq!(
        batches.len(),
        1,
        "max_bytes smaller than a batch still returns one"
    );
    assert_eq!(batches[0].base_offset, 5);
    assert!(
        log.read(10, 100).unwrap().is_empty(),
        "the end of the log reads empty"
    );
}

#[test]
fn reads_outside_the_log_are_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append(b"x", 1, 0).unwrap();
    match log.read(2, 100) {
        Err(LogError::OffsetOutOfRange {
            offset: 2,
            start: 0,
            end: 1,
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn oversized_and_empty_batches_are_refused_without_changing_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        batch_bytes_max: 100,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    assert!(matches!(
        log.append(&[0u8; 101], 1, 0),
        Err(LogError::BatchTooLarge { len: 101, max: 100 })
    ));
    assert!(matches!(log.append(b"x", 0, 0), Err(LogError::EmptyBatch)));
    assert_eq!(log.next_offset(), 0);
    log.append(&[0u8; 100], 1, 0).unwrap();
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..200 {
        log.append(&payload(i, 100), 1, i as i64).unwrap();
    }
    assert!(log.stats().segments > 5, "{:?}", log.stats());
    let all = read_all(&mut log, 0);
    assert_eq!(all.len(), 200);
    for (i, b) in all.iter().enumerate() {
        assert_eq!(b.base_offset, i as u64);
        assert_eq!(b.payload[..], payload(i as u64, 100)[..]);
    }
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        segment_ms: Some(1_000),
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    log.append(b"a", 1, 0).unwrap();
    clock.advance_ms(999);
    log.append(b"b", 1, 0).unwrap();
    assert_eq!(log.stats().segments, 1);
    clock.advance_ms(1);
    log.append(b"c", 1, 0).unwrap();
    assert_eq!(log.stats().segments, 2);
}

#[test]
fn reopen_after_clean_close_keeps_every_batch_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..100 {
        log.append(&payload(i, 90), 2, i as i64).unwrap();
    }
    log.close().unwrap();
    let mut log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.next_offset(), 200);
    assert_eq!(read_all(&mut log, 0).len(), 100);
    assert_eq!(log.append(b"next", 1, 0).unwrap().base_offset, 200);
}

#[test]
fn reopen_trusts_sealed_segments_without_scanning_but_reads_detect_their_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..100 {
        log.append(&payload(i, 90), 1, 0).unwrap();
    }
    log.close().unwrap();
    // Flip one payload byte in the first (sealed) segment; its size is unchanged.
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[16 + 32 + 5] ^= 0x55;
    std::fs::write(&first, &bytes).unwrap();
    let mut log = open(dir.path(), small_config(), &clock);
    assert_eq!(
        log.next_offset(),
        100,
        "the sealed segment was not rescanned on open"
    );
    match log.read(0, 1 << 20) {
        Err(LogError::Corrupt {
            reason: "crc mismatch",
            ..
        }) => {}
        other => panic!("corrupt batch must not be returned: {other:?}"),
    }
    // Later segments stay readable.
    assert!(!log.read(90, 100).unwrap().is_empty());
}

#[test]
fn offset_for_timestamp_finds_the_first_batch_at_or_after_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..300u64 {
        log.append(&payload(i, 60), 1, 1_000 + (i as i64) * 10)
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1_000).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1_001).unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(2_500).unwrap(), Some(150));
    assert_eq!(log.offset_for_timestamp(3_990).unwrap(), Some(299));
    assert_eq!(log.offset_for_timestamp(3_991).unwrap(), None);
    log.close().unwrap();
    let mut log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.offset_for_timestamp(2_505).unwrap(), Some(151));
}

#[test]
fn retention_by_size_deletes_the_oldest_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        retention_bytes: Some(10_000),
        ..small_config()
    };
    let mut log = open(dir.path(), config, &clock);
    for i in 0..400 {
        log.append(&payload(i, 100), 1, 0).unwrap();
    }
    let before = log.stats();
    let deleted = log.apply_retention().unwrap();
    let after = log.stats();
    assert!(deleted > 0);
    assert!(after.bytes <= 10_000 + 4096, "{after:?}");
    assert_eq!(after.segments, before.segments - deleted);
    let start = log.start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(start - 1, 10),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&mut log, start).len() as u64, 400 - start);
}

#[test]
fn retention_by_age_deletes_segments_whose_newest_batch_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(100_000);
    let config = LogConfig {
        retention_ms: Some(50_000),
        ..small_config()
    };
    let mut log = open(dir.path(), config, &clock);
    for i in 0..200 {
        // The first half is old, the second half is recent.
        let ts = if i < 100 { 1_000 } else { 99_000 };
        log.append(&payload(i, 100), 1, ts).unwrap();
    }
    let deleted = log.apply_retention().unwrap();
    assert!(deleted > 0);
    let start = log.start_offset();
    assert!(start <= 100 && start > 50, "start {start}");
    clock.advance_ms(1_000_000);
    log.apply_retention().unwrap();
    assert_eq!(
        log.stats().segments,
        1,
        "the active segment is never deleted"
    );
}

#[test]
fn truncating_a_settled_prefix_frees_whole_segments_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..200 {
        log.append(&payload(i, 100), 1, 0).unwrap();
    }
    let segments = log.stats().segments;
    log.truncate_prefix(150).unwrap();
    assert!(log.stats().segments < segments);
    assert_eq!(log.start_offset(), 150);
    log.close().unwrap();
    let mut log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.start_offset(), 150);
    assert!(matches!(
        log.read(149, 10),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.read(150, 1).unwrap()[0].base_offset, 150);
}

#[test]
fn open_sealed_segments_stay_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        open_segments_max: 2,
        ..small_config()
    };
    let mut log = open(dir.path(), config.clone(), &clock);
    for i in 0..300 {
        log.append(&payload(i, 100), 1, 0).unwrap();
    }
    assert!(log.stats().open_segments <= 3);
    log.close().unwrap();
    let mut log = open(dir.path(), config, &clock);
    assert_eq!(read_all(&mut log, 0).len(), 300);
    assert!(log.stats().open_segments <= 3, "{:?}", log.stats());
}

#[test]
fn a_sync_job_makes_every_earlier_append_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        flush: FlushPolicy::Sync,
        ..small_config()
    };
    let mut log = open(dir.path(), config, &clock);
    let a = log.append(b"one", 1, 0).unwrap();
    assert!(log.durable_offset() < a.next_offset);
    assert!(log.flush_due());
    let job = log.sync_job().unwrap().expect("work to sync");
    let b = log.append(b"two", 1, 0).unwrap();
    log.synced(job.run().unwrap());
    assert_eq!(
        log.durable_offset(),
        a.next_offset,
        "the job covers only earlier appends"
    );
    log.sync().unwrap();
    assert_eq!(log.durable_offset(), b.next_offset);
    assert!(log.sync_job().unwrap().is_none());
}

#[test]
fn async_flush_is_due_after_the_interval_or_the_byte_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        flush: FlushPolicy::Async {
            interval_ms: 100,
            bytes: 1000,
        },
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    assert!(!log.flush_due());
    log.append(b"x", 1, 0).unwrap();
    assert!(!log.flush_due());
    clock.advance_ms(100);
    assert!(log.flush_due());
    log.sync().unwrap();
    assert!(!log.flush_due());
    log.append(&[0u8; 1000], 1, 0).unwrap();
    assert!(log.flush_due(), "byte threshold reached");
}

#[test]
fn a_batch_larger_than_the_segment_size_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    log.append(b"small", 1, 0).unwrap();
    log.append(&vec![7u8; 100_000], 1, 0).unwrap();
    log.append(b"after", 1, 0).unwrap();
    log.close().unwrap();
    let mut log = open(dir.path(), small_config(), &clock);
    let all = read_all(&mut log, 0);
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].payload.len(), 100_000);
}
