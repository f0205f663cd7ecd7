#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use common::open;
use sluice_core::ManualClock;
use sluice_log::{FlushPolicy, LogConfig, SharedLog};

#[test]
fn group_commit_issues_far_fewer_fsyncs_than_concurrent_durable_appends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        flush: FlushPolicy::Sync,
        ..LogConfig::default()
    };
    let log = Arc::new(SharedLog::new(open(dir.path(), config.clone(), &clock)));
    let writers = 32;
    let per_writer = 20;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for i in 0..per_writer {
                    let a = log
                        .append_durable(format!("w{w}-{i}").as_bytes(), 1, 0)
                        .unwrap();
                    // Durable when it returns.
                    assert!(log.with(|l| l.durable_offset()) >= a.next_offset);
                    offsets.push(a.base_offset);
                }
                offsets
            })
        })
        .collect();
    let mut offsets: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(
        offsets.len(),
        writers * per_writer,
        "every append got its own offset"
    );
    let stats = log.with(|l| l.stats());
    assert_eq!(stats.appends, (writers * per_writer) as u64);
    assert!(
        stats.fsyncs * 4 < stats.appends,
        "{} fsyncs for {} appends",
        stats.fsyncs,
        stats.appends
    );
    drop(log);
    let mut reopened = open(dir.path(), config, &clock);
    assert_eq!(
        common::read_all(&mut reopened, 0).len(),
        writers * per_writer
    );
}

#[path = "common/owner.rs"]
mod owner;

#[test]
fn an_async_owner_shares_each_fsync_among_many_waiting_writers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        flush: FlushPolicy::Sync,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config.clone(), &clock);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let writers = 64;
    let per_writer = 20;
    let log = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let owner = tokio::spawn(owner::run(log, rx));
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for _ in 0..per_writer {
                        let (reply, done) = tokio::sync::oneshot::channel();
                        tx.send(owner::Append {
                            payload: b"durable",
                            reply,
                        })
                        .await
                        .unwrap();
                        done.await.unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        for t in tasks {
            t.await.unwrap();
        }
        owner.await.unwrap()
    });
    let stats = log.stats();
    eprintln!("async owner: {stats:?}");
    assert_eq!(stats.appends, (writers * per_writer) as u64);
    assert_eq!(log.durable_offset(), log.next_offset());
    assert!(
        stats.fsyncs * 4 < stats.appends,
        "{} fsyncs for {} appends",
        stats.fsyncs,
        stats.appends
    );
}
