//! Committed consumer-group offsets, stored durably in an internal log
//! (`<dir>/consumer-offsets/`) and replayed into memory at startup.
//!
//! One log batch per OffsetCommit (or deletion); each entry is
//! `kind u8 | group_len u16 | group | topic_len u16 | topic | partition i32 | offset i64 |
//! leader_epoch i32 | metadata_len i32 (-1: null) | metadata`, big-endian. Kinds: 1 commit,
//! 2 forget one partition (topic deleted), 3 forget a whole group, 4 a group's membership
//! (as Kafka's group metadata records: the metadata bytes are the coordinator's encoding
//! of generation, leader and members; null is a tombstone), 5 a transactional id's state
//! (Kafka's `__transaction_state` record, laid out as kind 4 with the id in the group
//! field; the coordinator encodes the value; null forgets it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sluice_core::clock::Clock;
use sluice_log::{FlushPolicy, Log, LogConfig, LogError, SharedLog};

const COMMIT: u8 = 1;
const FORGET_PARTITION: u8 = 2;
const FORGET_GROUP: u8 = 3;
const GROUP_METADATA: u8 = 4;
const TXN_STATE: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// One change to the committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Commit {
        group: String,
        topic: String,
        partition: i32,
        committed: Committed,
    },
    ForgetPartition {
        group: String,
        topic: String,
        partition: i32,
    },
    ForgetGroup {
        group: String,
    },
    /// A group's membership as the coordinator encodes it; `None` forgets it.
    GroupMetadata {
        group: String,
        value: Option<Bytes>,
    },
    /// A transactional id's state as the transaction coordinator encodes it; `None`
    /// forgets it.
    TxnState {
        id: String,
        value: Option<Bytes>,
    },
}

pub type GroupOffsets = HashMap<(String, i32), Committed>;

/// Writes `u16 len | utf-8` (cut at 65,535 bytes).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s
        .as_bytes()
        .get(..s.len().min(u16::MAX as usize))
        .unwrap_or_default();
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn encode(change: &Change, out: &mut Vec<u8>) {
    let opaque = match change {
        Change::GroupMetadata { group, value } => Some((GROUP_METADATA, group, value)),
        Change::TxnState { id, value } => Some((TXN_STATE, id, value)),
        _ => None,
    };
    if let Some((kind, group, value)) = opaque {
        out.push(kind);
        put_str(out, group);
        put_str(out, "");
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&(-1i64).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        return;
    }
    let (kind, group, topic, partition, committed) = match change {
        Change::Commit {
            group,
            topic,
            partition,
            committed,
        } => (COMMIT, group, topic.as_str(), *partition, Some(committed)),
        Change::ForgetPartition {
            group,
            topic,
            partition,
        } => (FORGET_PARTITION, group, topic.as_str(), *partition, None),
        Change::ForgetGroup { group } => (FORGET_GROUP, group, "", -1, None),
        Change::GroupMetadata { .. } | Change::TxnState { .. } => return,
    };
    out.push(kind);
    put_str(out, group);
    put_str(out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    let offset = committed.map_or(-1, |c| c.offset);
    let epoch = committed.map_or(-1, |c| c.leader_epoch);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    match committed.and_then(|c| c.metadata.as_deref()) {
        Some(m) => {
            out.extend_from_slice(&(m.len() as i32).to_be_bytes());
            out.extend_from_slice(m.as_bytes());
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        let b: [u8; 2] = self.take(2)?.try_into().ok()?;
        Some(u16::from_be_bytes(b))
    }
    fn i32(&mut self) -> Option<i32> {
        let b: [u8; 4] = self.take(4)?.try_into().ok()?;
        Some(i32::from_be_bytes(b))
    }
    fn i64(&mut self) -> Option<i64> {
        let b: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(i64::from_be_bytes(b))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode_one(r: &mut Reader<'_>) -> Option<Change> {
    let kind = *r.take(1)?.first()?;
    let group = r.string()?;
    let topic = r.string()?;
    let partition = r.i32()?;
    let offset = r.i64()?;
    let leader_epoch = r.i32()?;
    let raw = match r.i32()? {
        -1 => None,
        n => Some(r.take(usize::try_from(n).ok()?)?),
    };
    if kind == GROUP_METADATA {
        return Some(Change::GroupMetadata {
            group,
            value: raw.map(Bytes::copy_from_slice),
        });
    }
    if kind == TXN_STATE {
        return Some(Change::TxnState {
            id: group,
            value: raw.map(Bytes::copy_from_slice),
        });
    }
    let metadata = match raw {
        None => None,
        Some(b) => Some(String::from_utf8(b.to_vec()).ok()?),
    };
    Some(match kind {
        COMMIT => Change::Commit {
            group,
            topic,
            partition,
            committed: Committed {
                offset,
                leader_epoch,
                metadata,
            },
        },
        FORGET_PARTITION => Change::ForgetPartition {
            group,
            topic,
            partition,
        },
        FORGET_GROUP => Change::ForgetGroup { group },
        _ => return None,
    })
}

/// Applies a change to the in-memory offsets.
pub fn apply(offsets: &mut HashMap<String, GroupOffsets>, change: Change) {
    match change {
        Change::Commit {
            group,
            topic,
            partition,
            committed,
        } => {
            offsets
                .entry(group)
                .or_default()
                .insert((topic, partition), committed);
        }
        Change::ForgetPartition {
            group,
            topic,
            partition,
        } => {
            if let Some(g) = offsets.get_mut(&group) {
                g.remove(&(topic, partition));
                if g.is_empty() {
                    offsets.remove(&group);
                }
            }
        }
        Change::ForgetGroup { group } => {
            offsets.remove(&group);
        }
        Change::GroupMetadata { .. } | Change::TxnState { .. } => {}
    }
}

/// What the store holds: committed offsets, and each group's last membership record.
#[derive(Debug, Default)]
pub struct Stored {
    pub offsets: HashMap<String, GroupOffsets>,
    pub groups: HashMap<String, Bytes>,
    pub transactions: HashMap<String, Bytes>,
}

impl Stored {
    fn apply(&mut self, change: Change) {
        match change {
            Change::GroupMetadata { group, value } => match value {
                Some(v) => {
                    self.groups.insert(group, v);
                }
                None => {
                    self.groups.remove(&group);
                }
            },
            Change::ForgetGroup { group } => {
                self.groups.remove(&group);
                self.offsets.remove(&group);
            }
            Change::TxnState { id, value } => match value {
                Some(v) => {
                    self.transactions.insert(id, v);
                }
                None => {
                    self.transactions.remove(&id);
                }
            },
            other => apply(&mut self.offsets, other),
        }
    }
}

/// Size of the offsets log past which it is compacted (Kafka compacts
/// `__consumer_offsets`): every commit and group record is otherwise kept forever.
const COMPACT_BYTES: u64 = if cfg!(test) {
    64 * 1024
} else {
    16 * 1024 * 1024
};
/// Largest batch a compaction writes.
const SNAPSHOT_BATCH_BYTES: usize = 4 << 20;

/// Folds the whole log into what it says.
fn read_all(log: &mut Log) -> Result<Stored, LogError> {
    let mut stored = Stored::default();
    let mut at = log.start_offset();
    loop {
        let batches = log.read(at, 4 << 20)?;
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            let mut r = Reader(&b.payload);
            while !r.0.is_empty() {
                match decode_one(&mut r) {
                    Some(change) => stored.apply(change),
                    None => {
                        tracing::error!(offset = b.base_offset, "bad offsets entry skipped");
                        break;
                    }
                }
            }
            at = b.next_offset();
        }
    }
    Ok(stored)
}

#[derive(Debug)]
pub struct OffsetStore {
    log: Arc<SharedLog>,
    /// Size of the log right after its last compaction.
    compacted_bytes: AtomicU64,
}

impl OffsetStore {
    /// Opens the store and returns it with the offsets it holds.
    pub fn open(
        dir: &Path,
        base: &LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(OffsetStore, Stored), LogError> {
        let mut config = base.clone();
        config.flush = FlushPolicy::Sync;
        config.retention_bytes = None;
        config.retention_ms = None;
        let mut log = Log::open(dir.join("consumer-offsets"), config, clock)?;
        let stored = read_all(&mut log)?;
        Ok((
            OffsetStore {
                log: Arc::new(SharedLog::new(log)),
                compacted_bytes: AtomicU64::new(0),
            },
            stored,
        ))
    }

    /// Writes `changes` and waits for the fsync (on a blocking thread).
    pub async fn persist(&self, changes: &[Change]) -> Result<(), LogError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut payload = Vec::new();
        for c in changes {
            encode(c, &mut payload);
        }
        let count = changes.len() as u32;
        let log = Arc::clone(&self.log);
        let now = 0;
        tokio::task::spawn_blocking(move || log.append_durable(&payload, count, now))
            .await
            .map_err(|e| LogError::Io {
                path: "consumer-offsets".into(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map(|_| ())
    }

    /// Flushes and fsyncs everything written (clean shutdown).
    pub fn sync(&self) -> Result<(), LogError> {
        self.log.with(|log| log.sync())
    }

    /// Rewrites the log as a snapshot of what it says, once it is past `COMPACT_BYTES`
    /// and twice what the last compaction left. The snapshot is folded from the log
    /// itself under its lock, so no change appended meanwhile can be missed; it starts a
    /// segment of its own, is fsynced, and only then is the history before it dropped.
    /// Returns whether it compacted. Blocking: for a background thread.
    pub fn compact_if_due(&self) -> Result<bool, LogError> {
        self.log.with(|log| {
            let bytes = log.stats().bytes;
            let bound = COMPACT_BYTES.max(self.compacted_bytes.load(Ordering::Relaxed) * 2);
            if bytes <= bound {
                return Ok(false);
            }
            let stored = read_all(log)?;
            log.roll()?;
            let first = log.next_offset();
            let mut changes = Vec::new();
            for (group, offsets) in stored.offsets {
                for ((topic, partition), committed) in offsets {
                    changes.push(Change::Commit {
                        group: group.clone(),
                        topic,
                        partition,
                        committed,
                    });
                }
            }
            for (group, value) in stored.groups {
                changes.push(Change::GroupMetadata {
                    group,
                    value: Some(value),
                });
            }
            for (id, value) in stored.transactions {
                changes.push(Change::TxnState {
                    id,
                    value: Some(value),
                });
            }
            let mut payload = Vec::new();
            let mut count = 0u32;
            for change in &changes {
                encode(change, &mut payload);
                count += 1;
                if payload.len() >= SNAPSHOT_BATCH_BYTES {
                    log.append(&payload, count, 0)?;
                    payload.clear();
                    count = 0;
                }
            }
            if count > 0 {
                log.append(&payload, count, 0)?;
            }
            log.sync()?;
            log.truncate_prefix(first)?;
            let left = log.stats().bytes;
            self.compacted_bytes.store(left, Ordering::Relaxed);
            tracing::info!(before = bytes, after = left, "consumer offsets compacted");
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::clock::ManualClock;

    /// Commits to the same partitions grow the log past its bound; a compaction leaves
    /// one snapshot that reopens to the same offsets and group records.
    #[tokio::test]
    async fn a_compaction_keeps_the_latest_state_and_frees_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let (store, _) =
            OffsetStore::open(dir.path(), &LogConfig::default(), Arc::clone(&clock)).unwrap();
        assert!(!store.compact_if_due().unwrap());
        for round in 0..2_000i64 {
            let changes: Vec<Change> = (0..4)
                .map(|p| Change::Commit {
                    group: format!("g{}", p % 2),
                    topic: "t".into(),
                    partition: p,
                    committed: Committed {
                        offset: round,
                        leader_epoch: -1,
                        metadata: None,
                    },
                })
                .chain([Change::GroupMetadata {
                    group: "g0".into(),
                    value: Some(Bytes::from(format!("generation {round}"))),
                }])
                .collect();
            store.persist(&changes).await.unwrap();
        }
        let before = store.log.with(|l| l.stats().bytes);
        assert!(store.compact_if_due().unwrap());
        let after = store.log.with(|l| l.stats().bytes);
        assert!(after * 20 < before, "{before} -> {after}");
        assert!(!store.compact_if_due().unwrap(), "not again right away");
        store
            .persist(&[Change::ForgetGroup { group: "g1".into() }])
            .await
            .unwrap();
        drop(store);
        let (_, stored) = OffsetStore::open(dir.path(), &LogConfig::default(), clock).unwrap();
        assert_eq!(stored.offsets.len(), 1, "g1 forgotten after the snapshot");
        let g0 = &stored.offsets["g0"];
        assert_eq!(g0.len(), 2);
        assert!(g0.values().all(|c| c.offset == 1_999));
        assert_eq!(&stored.groups["g0"][..], b"generation 1999");
    }

    #[tokio::test]
    async fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let commit = |g: &str, t: &str, p, o| Change::Commit {
            group: g.into(),
            topic: t.into(),
            partition: p,
            committed: Committed {
                offset: o,
                leader_epoch: -1,
                metadata: Some("m".into()),
            },
        };
        {
            let (store, stored) =
                OffsetStore::open(dir.path(), &LogConfig::default(), Arc::clone(&clock)).unwrap();
            assert!(stored.offsets.is_empty());
            store
                .persist(&[
                    commit("g", "t", 0, 5),
                    commit("g", "t", 1, 7),
                    commit("h", "t", 0, 1),
                ])
                .await
                .unwrap();
            store
                .persist(&[
                    commit("g", "t", 0, 9),
                    Change::ForgetPartition {
                        group: "g".into(),
                        topic: "t".into(),
                        partition: 1,
                    },
                    Change::ForgetGroup { group: "h".into() },
                ])
                .await
                .unwrap();
        }
        let (_, stored) = OffsetStore::open(dir.path(), &LogConfig::default(), clock).unwrap();
        let offsets = stored.offsets;
        assert_eq!(offsets.len(), 1);
        let g = &offsets["g"];
        assert_eq!(g.len(), 1);
        assert_eq!(g[&("t".to_string(), 0)].offset, 9);
        assert_eq!(g[&("t".to_string(), 0)].metadata.as_deref(), Some("m"));
    }
}
