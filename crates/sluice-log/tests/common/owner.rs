//! A minimal async log owner as the broker runs one per queue/partition: writers send
//! appends over a bounded channel; the owner appends, parks a reply in a `GroupCommit`,
//! and runs fsync on a blocking thread, one at a time. Shared by tests and benches.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use sluice_log::{GroupCommit, Log, LogError, Synced};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub struct Append {
    pub payload: &'static [u8],
    pub reply: oneshot::Sender<u64>,
}

/// Runs until every sender is dropped and all waiters are released; returns the log.
pub async fn run(mut log: Log, mut rx: mpsc::Receiver<Append>) -> Log {
    let mut group = GroupCommit::new(65_536);
    let mut syncing: Option<JoinHandle<Result<Synced, LogError>>> = None;
    let mut inbox = Vec::with_capacity(256);
    let mut open = true;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut inbox, 256), if open => {
                if n == 0 {
                    open = false;
                }
                for a in inbox.drain(..) {
                    let appended = log.append(a.payload, 1, 0).unwrap();
                    if group.wait(appended.next_offset, (appended.base_offset, a.reply)).is_err() {
                        panic!("waiter queue full");
                    }
                }
            }
            done = async { syncing.as_mut().unwrap().await }, if syncing.is_some() => {
                syncing = None;
                let synced = done.unwrap().unwrap();
                for (offset, reply) in group.finish(&mut log, synced) {
                    let _ = reply.send(offset);
                }
            }
        }
        if syncing.is_none() {
            // Writers released by the last fsync are runnable now: yield while they keep
            // appending, so the next fsync covers all of them.
            for _ in 0..16 {
                tokio::task::yield_now().await;
                let mut arrived = 0;
                while let Ok(a) = rx.try_recv() {
                    arrived += 1;
                    let appended = log.append(a.payload, 1, 0).unwrap();
                    if group
                        .wait(appended.next_offset, (appended.base_offset, a.reply))
                        .is_err()
                    {
                        panic!("waiter queue full");
                    }
                }
                if arrived == 0 {
                    break;
                }
            }
            if let Some(job) = group.start(&mut log).unwrap() {
                syncing = Some(tokio::task::spawn_blocking(move || job.run()));
            } else if !open {
                return log;
            }
        }
    }
}
