//! Log throughput: appends (100 B and 1 KiB records, batches of 1 and 100, async and sync
//! flush, 1 and 64 sync writers) and sequential reads. `scripts/bench-log` runs these
//! next to `dd` on the same disk and writes the ratios to docs/benchmarks.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::SystemClock;
use sluice_log::{FlushPolicy, Log, LogConfig, SyncJob};

#[path = "../tests/common/owner.rs"]
mod owner;

fn bench_dir() -> tempfile::TempDir {
    // Next to the target dir, on the same disk as the repo (not a tmpfs /tmp).
    let base =
        std::env::var("SLUICE_BENCH_DIR").unwrap_or_else(|_| "../../target/bench-data".into());
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// Writes back every dirty page first, so one sample does not pay for the last one's.
fn settle_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn open(dir: &Path, flush: FlushPolicy) -> Log {
    let config = LogConfig {
        flush,
        ..LogConfig::default()
    };
    Log::open(dir, config, Arc::new(SystemClock)).unwrap()
}

/// Async appends: the owner appends; due fsyncs run on a flusher thread, as in the broker.
fn append_async(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_async");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for record_bytes in [100usize, 1024] {
        for batch in [1usize, 100] {
            let payload = vec![0xabu8; record_bytes * batch];
            group.throughput(Throughput::Bytes(payload.len() as u64));
            let id = BenchmarkId::new(format!("{record_bytes}B"), format!("batch{batch}"));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let dir = bench_dir();
                    settle_disk();
                    let mut log = open(dir.path(), FlushPolicy::default());
                    let (jobs, rx) = mpsc::sync_channel::<SyncJob>(1);
                    let flusher = std::thread::spawn(move || {
                        for job in rx {
                            job.run().unwrap();
                        }
                    });
                    let start = Instant::now();
                    for _ in 0..iters {
                        log.append(&payload, batch as u32, 0).unwrap();
                        if log.flush_due() {
                            // Never block the appender: skip if a flush is still running.
                            if let Some(job) = log.sync_job().unwrap()
                                && let Err(mpsc::TrySendError::Full(job)) = jobs.try_send(job)
                            {
                                drop(job);
                            }
                        }
                    }
                    let elapsed = start.elapsed();
                    drop(jobs);
                    flusher.join().unwrap();
                    drop(log);
                    elapsed
                })
            });
        }
    }
    group.finish();
}

/// Sync appends of 1 KiB through an async owner (as the broker runs them): each writer
/// task waits for its append to be fsynced before sending the next. One writer pays one
/// fsync per append; 64 writers share them (group commit).
fn append_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_sync");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    static PAYLOAD: [u8; 1024] = [0x5a; 1024];
    for writers in [1usize, 64] {
        group.bench_function(BenchmarkId::new("1KiB", format!("writers{writers}")), |b| {
            b.iter_custom(|iters| {
                let dir = bench_dir();
                settle_disk();
                let log = open(dir.path(), FlushPolicy::Sync);
                let per_writer = iters.div_ceil(writers as u64);
                let elapsed = runtime.block_on(async {
                    let (tx, rx) = tokio::sync::mpsc::channel(4096);
                    let owner = tokio::spawn(owner::run(log, rx));
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..writers)
                        .map(|_| {
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                for _ in 0..per_writer {
                                    let (reply, done) = tokio::sync::oneshot::channel();
                                    tx.send(owner::Append {
                                        payload: &PAYLOAD,
                                        reply,
                                    })
                                    .await
                                    .unwrap();
                                    done.await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    let elapsed = start.elapsed();
                    drop(tx);
                    owner.await.unwrap();
                    elapsed
                });
                // Report time per append actually made.
                elapsed.mul_f64(iters as f64 / (per_writer * writers as u64) as f64)
            })
        });
    }
    group.finish();
}

/// Sequential reads of 1 MiB at a time over 256 MiB of 1 KiB x 100 batches (page cache hot).
fn read_sequential(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_sequential");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let dir = bench_dir();
    let mut log = open(dir.path(), FlushPolicy::default());
    let payload = vec![0x11u8; 1024 * 100];
    let total_bytes = 256 * 1024 * 1024;
    for _ in 0..total_bytes / payload.len() {
        log.append(&payload, 100, 0).unwrap();
    }
    log.sync().unwrap();
    let end = log.next_offset();
    group.throughput(Throughput::Bytes(total_bytes as u64));
    group.bench_function("1MiB_reads", |b| {
        b.iter(|| {
            let mut offset = 0;
            let mut bytes = 0usize;
            while offset < end {
                let batches = log.read(offset, 1 << 20).unwrap();
                for batch in &batches {
                    bytes += batch.payload.len();
                }
                offset = batches.last().unwrap().next_offset();
            }
            bytes
        })
    });
    group.finish();
}

criterion_group!(benches, append_async, append_sync, read_sequential);
criterion_main!(benches);
