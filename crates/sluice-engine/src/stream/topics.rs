//! Topics: names, ids, configs and partitions, on disk under `<dir>/topics/<name>/`:
//! a `topic.meta` text file (id, partition count, config overrides) and one log
//! directory per partition (`0/`, `1/`, ...).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sluice_core::clock::Clock;
use sluice_log::LogConfig;
use uuid::Uuid;

use super::config::TopicConfig;
use super::partition::{Partition, Unsynced};

const META_FILE: &str = "topic.meta";
const NAME_MAX: usize = 249;

#[derive(Debug)]
pub struct TopicState {
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<Partition>>,
}

#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    dir: PathBuf,
    state: RwLock<TopicState>,
}

/// Why a change to the topics was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    InvalidName,
    AlreadyExists,
    UnknownTopic,
    InvalidPartitions,
    /// A broker limit would be exceeded.
    PolicyViolation,
    InvalidConfig,
    Storage,
}

/// A change to the topics refused, with a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

fn refused(kind: RefusalKind, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}

impl Topic {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, TopicState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TopicState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let st = self.read();
        usize::try_from(index)
            .ok()
            .and_then(|i| st.partitions.get(i))
            .cloned()
    }

    pub fn partition_count(&self) -> i32 {
        self.read().partitions.len() as i32
    }

    pub fn config(&self) -> TopicConfig {
        self.read().config.clone()
    }

    fn save_meta(&self, st: &TopicState) -> std::io::Result<()> {
        let mut text = format!(
            "id={}\npartitions={}\n",
            self.id.simple(),
            st.partitions.len()
        );
        for (k, v) in &st.overrides {
            text.push_str(&format!("config.{k}={v}\n"));
        }
        write_atomic(&self.dir.join(META_FILE), text.as_bytes())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn random_uuid() -> Uuid {
    let mut bytes = [0u8; 16];
    let filled = fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !filled {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = now.to_le_bytes();
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Names of topics the broker makes itself, for RocketMQ's dead-letter queues
/// (`%DLQ%<group>`): Kafka's rule with `%` allowed too. Clients cannot create them.
pub fn valid_internal_name(name: &str) -> bool {
    name.contains('%') && valid_name(&name.replace('%', "_"))
}

/// Kafka's rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[derive(Debug, Default)]
struct Maps {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

#[derive(Debug)]
pub struct Topics {
    dir: PathBuf,
    defaults: TopicConfig,
    log_base: LogConfig,
    clock: Arc<dyn Clock>,
    partitions_max: i32,
    topics_max: usize,
    maps: RwLock<Maps>,
    /// Partitions with appends not yet fsynced: the flusher visits these, not all.
    unsynced: Arc<Unsynced>,
}

impl Topics {
    /// Opens every topic under `dir/topics`. A topic whose metadata is unreadable is
    /// skipped with an error logged, so one damaged topic does not stop the broker.
    pub fn open(
        dir: &Path,
        defaults: TopicConfig,
        log_base: LogConfig,
        clock: Arc<dyn Clock>,
        partitions_max: i32,
        topics_max: usize,
    ) -> std::io::Result<Topics> {
        let root = dir.join("topics");
        fs::create_dir_all(&root)?;
        let topics = Topics {
            dir: root.clone(),
            defaults,
            log_base,
            clock,
            partitions_max,
            topics_max,
            maps: RwLock::new(Maps::default()),
            unsynced: Arc::new(Unsynced::default()),
        };
        for entry in fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) && !valid_internal_name(&name) {
                // Leftovers of deletions in progress.
                if name.contains(".deleted-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
                continue;
            }
            match topics.load(&name, &entry.path()) {
                Ok(topic) => {
                    let mut maps = topics.maps_mut();
                    maps.by_id.insert(topic.id, Arc::clone(&topic));
                    maps.by_name.insert(name, topic);
                }
                Err(e) => tracing::error!(topic = %name, error = %e, "cannot open topic"),
            }
        }
        Ok(topics)
    }

    fn maps(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn maps_mut(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|p| p.into_inner())
    }

    fn load(&self, name: &str, dir: &Path) -> std::io::Result<Arc<Topic>> {
        let text = fs::read_to_string(dir.join(META_FILE))?;
        let mut id = None;
        let mut count = 0usize;
        let mut overrides = BTreeMap::new();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "id" => id = Uuid::try_parse(v).ok(),
                "partitions" => count = v.parse().unwrap_or(0),
                _ => {
                    if let Some(c) = k.strip_prefix("config.") {
                        overrides.insert(c.to_string(), v.to_string());
                    }
                }
            }
        }
        let id = id.ok_or_else(|| std::io::Error::other("topic.meta has no id"))?;
        let config = TopicConfig::with_overrides(&self.defaults, &overrides)
            .map_err(std::io::Error::other)?;
        let mut partitions = Vec::with_capacity(count);
        for i in 0..count {
            partitions.push(self.open_partition(dir, i as i32, &config)?);
        }
        Ok(Arc::new(Topic {
            name: name.to_string(),
            id,
            dir: dir.to_path_buf(),
            state: RwLock::new(TopicState {
                overrides,
                config,
                partitions,
            }),
        }))
    }

    fn open_partition(
        &self,
        topic_dir: &Path,
        index: i32,
        config: &TopicConfig,
    ) -> std::io::Result<Arc<Partition>> {
        let partition = Arc::new(
            Partition::open(
                index,
                &topic_dir.join(index.to_string()),
                config.log_config(&self.log_base),
                Arc::clone(&self.clock),
            )
            .map_err(std::io::Error::other)?,
        );
        partition.track_unsynced(&self.unsynced);
        Ok(partition)
    }

    pub fn defaults(&self) -> &TopicConfig {
        &self.defaults
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.maps().by_name.get(name).cloned()
    }

    pub fn by_id(&self, id: &Uuid) -> Option<Arc<Topic>> {
        self.maps().by_id.get(id).cloned()
    }

    /// Every topic, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.maps().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Partitions of all topics together.
    pub fn partition_count(&self) -> usize {
        self.maps()
            .by_name
            .values()
            .map(|t| t.read().partitions.len())
            .sum()
    }

    /// POLICY_VIOLATION unless `more` partitions fit under the broker's limit.
    fn check_partition_room(&self, more: usize) -> Result<(), Refusal> {
        let held = self.partition_count();
        let max = self.partitions_max.max(0) as usize;
        if held.saturating_add(more) > max {
            return Err(refused(
                RefusalKind::PolicyViolation,
                format!(
                    "cannot add {more} partitions: partition limit of this broker ({max}) would be exceeded, {held} exist"
                ),
            ));
        }
        Ok(())
    }

    /// Runs the fsyncs due under the async flush policy, in the partitions written since
    /// their last fsync (an idle partition costs nothing here). Blocking.
    pub fn flush_due(&self) {
        for p in self.unsynced.take() {
            if let Some(job) = p.flush_job() {
                p.flush_done(job.run());
            }
            p.relist_if_unsynced();
        }
    }

    /// Deletes sealed segments past each topic's retention. Blocking.
    pub fn apply_retention(&self) {
        for t in self.all() {
            for p in t.read().partitions.iter() {
                let mut st = p.lock();
                match st.log.apply_retention() {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(topic = %t.name, partition = p.index, segments = n, "retention deleted segments")
                    }
                    Err(e) => tracing::error!(topic = %t.name, error = %e, "retention failed"),
                }
                drop(st);
                if let Err(e) = p.save_transactions() {
                    tracing::error!(topic = %t.name, error = %e, "transaction snapshot failed");
                }
            }
        }
    }

    /// Cleans the partitions of compacted topics that are due (`stream::compact`).
    /// Blocking.
    pub fn clean_due(&self, limits: &super::compact::CleanerLimits) {
        for t in self.all() {
            let config = t.config();
            if !config.compact {
                continue;
            }
            let compact = config.compact_config();
            let partitions = t.read().partitions.clone();
            for p in partitions {
                let now = self.clock.now_ms();
                match super::compact::clean(&p, &compact, limits, now) {
                    Ok(Some(done)) if done.segments > 0 => tracing::info!(
                        topic = %t.name,
                        partition = p.index,
                        segments = done.segments,
                        bytes_before = done.bytes_before,
                        bytes_after = done.bytes_after,
                        records_removed = done.records_removed,
                        "log cleaned"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(topic = %t.name, partition = p.index, error = %e, "log clean failed")
                    }
                }
            }
        }
    }

    /// Writes and fsyncs every partition (clean shutdown). Blocking.
    pub fn sync_all(&self) {
        for p in self.all_partitions() {
            if let Err(e) = p.lock().log.sync() {
                tracing::error!(error = %e, "partition not synced at shutdown");
            }
            if let Err(e) = p.save_transactions() {
                tracing::error!(error = %e, "transaction snapshot not written at shutdown");
            }
        }
    }

    /// Every partition of every topic.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.all()
            .iter()
            .flat_map(|t| t.read().partitions.clone())
            .collect()
    }

    /// Checks a CreateTopics entry without creating anything.
    pub fn validate(
        &self,
        name: &str,
        partitions: i32,
        overrides: &BTreeMap<String, String>,
    ) -> Result<(), Refusal> {
        self.validate_named(name, valid_name(name), partitions, overrides)
    }

    fn validate_named(
        &self,
        name: &str,
        name_ok: bool,
        partitions: i32,
        overrides: &BTreeMap<String, String>,
    ) -> Result<(), Refusal> {
        if !name_ok {
            return Err(refused(
                RefusalKind::InvalidName,
                format!("topic name {name:?} is not valid: 1 to 249 of [a-zA-Z0-9._-]"),
            ));
        }
        if self.get(name).is_some() {
            return Err(refused(
                RefusalKind::AlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        if partitions < 1 {
            return Err(refused(
                RefusalKind::InvalidPartitions,
                "Number of partitions must be larger than 0.".to_string(),
            ));
        }
        self.check_partition_room(partitions as usize)?;
        if self.maps().by_name.len() >= self.topics_max {
            return Err(refused(
                RefusalKind::PolicyViolation,
                format!(
                    "cannot create topic '{name}': topic limit of this broker ({}) is reached",
                    self.topics_max
                ),
            ));
        }
        TopicConfig::with_overrides(&self.defaults, overrides)
            .map(|_| ())
            .map_err(|e| refused(RefusalKind::InvalidConfig, e))
    }

    /// Creates a topic (blocking file work: directories, the metadata file's fsync).
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, Refusal> {
        self.validate(name, partitions, &overrides)?;
        self.create_checked(name, partitions, overrides)
    }

    /// Creates a topic the broker makes itself, named by [`valid_internal_name`]
    /// (blocking file work).
    pub fn create_internal(&self, name: &str, partitions: i32) -> Result<Arc<Topic>, Refusal> {
        let overrides = BTreeMap::new();
        self.validate_named(name, valid_internal_name(name), partitions, &overrides)?;
        self.create_checked(name, partitions, overrides)
    }

    fn create_checked(
        &self,
        name: &str,
        partitions: i32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, Refusal> {
        let config = TopicConfig::with_overrides(&self.defaults, &overrides)
            .map_err(|e| refused(RefusalKind::InvalidConfig, e))?;
        let dir = self.dir.join(name);
        let storage = |e: std::io::Error| refused(RefusalKind::Storage, e.to_string());
        fs::create_dir_all(&dir).map_err(storage)?;
        let mut parts = Vec::with_capacity(partitions as usize);
        for i in 0..partitions {
            parts.push(self.open_partition(&dir, i, &config).map_err(storage)?);
        }
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id: random_uuid(),
            dir,
            state: RwLock::new(TopicState {
                overrides,
                config,
                partitions: parts,
            }),
        });
        topic.save_meta(&topic.read()).map_err(storage)?;
        let mut maps = self.maps_mut();
        if maps.by_name.contains_key(name) {
            // Lost a race with another creator; its topic stands.
            return Err(refused(
                RefusalKind::AlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        maps.by_id.insert(topic.id, Arc::clone(&topic));
        maps.by_name.insert(name.to_string(), Arc::clone(&topic));
        Ok(topic)
    }

    /// Removes a topic and deletes its files. Requests already holding its partitions
    /// finish on the open files.
    pub fn delete(&self, name: &str) -> Result<Arc<Topic>, Refusal> {
        let topic = {
            let mut maps = self.maps_mut();
            let topic = maps.by_name.remove(name).ok_or_else(|| {
                refused(
                    RefusalKind::UnknownTopic,
                    "This server does not host this topic-partition.".to_string(),
                )
            })?;
            maps.by_id.remove(&topic.id);
            topic
        };
        for p in &topic.read().partitions {
            p.wake_watchers();
        }
        let doomed = self
            .dir
            .join(format!("{name}.deleted-{}", topic.id.simple()));
        if let Err(e) = fs::rename(&topic.dir, &doomed).and_then(|_| fs::remove_dir_all(&doomed)) {
            tracing::warn!(topic = %name, error = %e, "topic files not fully deleted");
        }
        Ok(topic)
    }

    /// Grows a topic to `count` partitions.
    pub fn add_partitions(&self, topic: &Topic, count: i32) -> Result<(), Refusal> {
        // Checked before the topic's write lock: counting reads every topic.
        let before = topic.read().partitions.len() as i32;
        self.check_partition_room(count.saturating_sub(before).max(0) as usize)?;
        let mut st = topic.write();
        let current = st.partitions.len() as i32;
        if count <= current {
            return Err(refused(
                RefusalKind::InvalidPartitions,
                format!(
                    "Topic currently has {current} partitions, which is higher than the requested {count}."
                ),
            ));
        }
        let storage = |e: std::io::Error| refused(RefusalKind::Storage, e.to_string());
        for i in current..count {
            let config = st.config.clone();
            st.partitions.push(
                self.open_partition(&topic.dir, i, &config)
                    .map_err(storage)?,
            );
        }
        topic.save_meta(&st).map_err(storage)
    }

    /// Replaces a topic's overrides; they apply to every partition at once.
    pub fn set_overrides(
        &self,
        topic: &Topic,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), Refusal> {
        let config = TopicConfig::with_overrides(&self.defaults, &overrides)
            .map_err(|e| refused(RefusalKind::InvalidConfig, e))?;
        let mut st = topic.write();
        let old = std::mem::replace(&mut st.overrides, overrides);
        let old_config = std::mem::replace(&mut st.config, config);
        if let Err(e) = topic.save_meta(&st) {
            st.overrides = old;
            st.config = old_config;
            return Err(refused(RefusalKind::Storage, e.to_string()));
        }
        let log_config = st.config.log_config(&self.log_base);
        for p in &st.partitions {
            if let Err(e) = p.lock().log.set_config(log_config.clone()) {
                tracing::error!(topic = %topic.name, error = %e, "log settings not applied");
            }
        }
        Ok(())
    }
}
