//! The Kafka face's shared state: topics, the group coordinator, producer ids, and the
//! background work (async-policy fsyncs, retention, group timers).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_core::clock::{Clock, SystemClock};

use crate::config::KafkaConfig;
use crate::fetch_session::FetchSessions;
use crate::groups::Coordinator;
use crate::security::{Open, Security};
use crate::txn::Transactions;
use sluice_engine::stream::offsets::OffsetStore;
use sluice_engine::stream::topics::Topics;

/// Producer ids are handed out from blocks reserved on disk, so none repeats after a
/// crash.
const PRODUCER_ID_BLOCK: i64 = 1000;
const PRODUCER_IDS_FILE: &str = "producer-ids";

#[derive(Debug)]
struct ProducerIds {
    next: i64,
    reserved_until: i64,
}

#[derive(Debug)]
pub struct KafkaBroker {
    pub config: KafkaConfig,
    pub topics: Arc<Topics>,
    pub groups: Coordinator,
    /// The transaction coordinator.
    pub txns: Transactions,
    /// Incremental fetch sessions (KIP-227).
    pub fetch_sessions: FetchSessions,
    pub clock: Arc<dyn Clock>,
    /// Users, credentials and permissions (`security::Open` when there are none).
    pub security: Arc<dyn Security>,
    dir: PathBuf,
    producer_ids: Mutex<ProducerIds>,
}

fn read_reserved(dir: &Path) -> i64 {
    fs::read_to_string(dir.join(PRODUCER_IDS_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_reserved(dir: &Path, until: i64) -> std::io::Result<()> {
    let path = dir.join(PRODUCER_IDS_FILE);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, until.to_string())?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()
}

impl KafkaBroker {
    /// Opens (or creates) the Kafka data under `dir`: topics, committed offsets.
    pub fn open(dir: &Path, config: KafkaConfig) -> std::io::Result<KafkaBroker> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        dir: &Path,
        config: KafkaConfig,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<KafkaBroker> {
        fs::create_dir_all(dir)?;
        let topics = Topics::open(
            dir,
            config.topic_defaults.clone(),
            config.log.clone(),
            Arc::clone(&clock),
            config.partitions_max,
            config.topics_max,
        )?;
        let (store, mut stored) = OffsetStore::open(dir, &config.log, Arc::clone(&clock))
            .map_err(std::io::Error::other)?;
        let store = Arc::new(store);
        let txns = Transactions::new(Arc::clone(&store), std::mem::take(&mut stored.transactions));
        let groups = Coordinator::new(
            store,
            stored,
            config.group_initial_rebalance_delay,
            config.group_min_session_timeout_ms,
            config.group_max_session_timeout_ms,
        );
        let reserved = read_reserved(dir);
        let fetch_sessions = FetchSessions::new(config.fetch_session_cache_slots);
        Ok(KafkaBroker {
            config,
            topics: Arc::new(topics),
            groups,
            txns,
            fetch_sessions,
            clock,
            security: Arc::new(Open),
            dir: dir.to_path_buf(),
            producer_ids: Mutex::new(ProducerIds {
                next: reserved,
                reserved_until: reserved,
            }),
        })
    }

    /// Checks logins and permissions against `security`.
    pub fn with_security(mut self, security: Arc<dyn Security>) -> KafkaBroker {
        self.security = security;
        self
    }

    /// A producer id never handed out before (blocking: may fsync a new reservation).
    pub fn new_producer_id(&self) -> std::io::Result<i64> {
        let mut ids = self.producer_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.next >= ids.reserved_until {
            let until = ids.next + PRODUCER_ID_BLOCK;
            write_reserved(&self.dir, until)?;
            ids.reserved_until = until;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// Runs the fsyncs due under the async flush policy (blocking).
    pub fn flush_due(&self) {
        self.topics.flush_due();
    }

    /// Deletes sealed segments past retention and compacts the consumer offsets log
    /// (blocking).
    pub fn apply_retention(&self) {
        self.groups.compact_store();
        self.topics.apply_retention();
    }

    /// Cleans the compacted topics that are due (blocking).
    pub fn clean_logs(&self) {
        self.topics.clean_due(&self.config.cleaner);
    }

    /// Writes and fsyncs everything (clean shutdown; blocking).
    pub fn close(&self) {
        self.topics.sync_all();
        self.groups.sync_store();
    }
}
