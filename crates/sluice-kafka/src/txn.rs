//! The transaction coordinator (KIP-98): one state per `transactional.id`, stored in the
//! consumer offsets log next to the groups (Kafka keeps it in `__transaction_state`),
//! and the markers that end a transaction in every partition it wrote to.
//!
//! Every state change is stored before it is answered. Ending a transaction stores the
//! decision first (PrepareCommit or PrepareAbort, with the offsets a commit makes
//! visible in the same log batch), then writes the markers, then stores the completion;
//! a coordinator that restarts between the two finishes the markers itself.
//!
//! State record, big-endian: `version u8 (1) | producer_id i64 | epoch i16 | timeout_ms
//! i32 | state u8 | started_ms i64 | updated_ms i64 | partitions u32 | (topic str |
//! partition i32)* | groups u32 | (group str | offsets u32 | (topic str | partition i32 |
//! offset i64 | leader_epoch i32 | metadata opt)*)*`, with `str` = `u16 len | utf-8` and
//! `opt` = `i16 len (-1: none) | utf-8`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sluice_engine::stream::offsets::{Change, Committed, OffsetStore, put_str};

use crate::broker::KafkaBroker;
use crate::codes;

/// Kafka's `transactional.id.expiration.ms`: an idle id is forgotten after a week.
pub const ID_EXPIRATION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Transactional ids one node keeps at once; InitProducerId for a new one beyond this is
/// refused (COORDINATOR_NOT_AVAILABLE, which clients retry) until ids expire.
pub const IDS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl State {
    /// Kafka's names, as DescribeTransactions and ListTransactions carry them.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::Ongoing => "Ongoing",
            State::PrepareCommit => "PrepareCommit",
            State::PrepareAbort => "PrepareAbort",
            State::CompleteCommit => "CompleteCommit",
            State::CompleteAbort => "CompleteAbort",
        }
    }

    pub const ALL: [State; 6] = [
        State::Empty,
        State::Ongoing,
        State::PrepareCommit,
        State::PrepareAbort,
        State::CompleteCommit,
        State::CompleteAbort,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn of(code: u8) -> Option<State> {
        State::ALL.get(usize::from(code)).copied()
    }
}

/// One transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub state: State,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub partitions: BTreeSet<(String, i32)>,
    /// Groups added with AddOffsetsToTxn, and the offsets the transaction commits for
    /// them (visible only once it commits).
    pub offsets: BTreeMap<String, BTreeMap<(String, i32), Committed>>,
}

#[derive(Debug)]
pub struct Entry {
    txn: Txn,
    /// A change is being stored or markers written: other requests for this id get
    /// CONCURRENT_TRANSACTIONS, which clients retry.
    busy: bool,
}

/// The codes a fenced producer gets: PRODUCER_FENCED from the request versions that
/// know it (KIP-588), INVALID_PRODUCER_EPOCH before.
pub fn fenced(knows_fenced: bool) -> i16 {
    if knows_fenced {
        codes::PRODUCER_FENCED
    } else {
        codes::INVALID_PRODUCER_EPOCH
    }
}

/// The producer a request names, and whether its request version knows
/// PRODUCER_FENCED.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub producer_id: i64,
    pub epoch: i16,
    pub knows_fenced: bool,
}

#[derive(Debug)]
pub struct Transactions {
    ids: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
    store: Arc<OffsetStore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one transaction produced and what the coordinator must do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnView {
    pub id: String,
    pub txn: Txn,
}

impl Transactions {
    pub fn new(store: Arc<OffsetStore>, stored: HashMap<String, Bytes>) -> Transactions {
        let mut ids = HashMap::new();
        for (id, bytes) in stored {
            match decode(&bytes) {
                Some(txn) => {
                    ids.insert(id, Arc::new(Mutex::new(Entry { txn, busy: false })));
                }
                None => tracing::error!(transactional_id = %id, "unreadable transaction skipped"),
            }
        }
        Transactions {
            ids: Mutex::new(ids),
            store,
        }
    }

    fn entry(&self, id: &str) -> Option<Arc<Mutex<Entry>>> {
        lock(&self.ids).get(id).cloned()
    }

    async fn persist(&self, id: &str, txn: &Txn, offsets: Vec<Change>) -> bool {
        let mut changes = offsets;
        changes.push(Change::TxnState {
            id: id.to_string(),
            value: Some(Bytes::from(encode(txn))),
        });
        match self.store.persist(&changes).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(transactional_id = %id, error = %e, "transaction state not stored");
                false
            }
        }
    }

    /// Stores `next` for an entry marked busy, then installs it and frees the entry.
    async fn commit_change(&self, id: &str, entry: &Mutex<Entry>, next: Txn) -> i16 {
        let stored = self.persist(id, &next, Vec::new()).await;
        let mut e = lock(entry);
        e.busy = false;
        if !stored {
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        e.txn = next;
        codes::NONE
    }

    /// InitProducerId with a transactional id: `(code, producer id, epoch)`.
    pub async fn init_producer_id(
        &self,
        b: &Arc<KafkaBroker>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        knows_fenced: bool,
    ) -> (i16, i64, i16) {
        let refused = |code| (code, -1, -1);
        if timeout_ms <= 0 || timeout_ms > b.config.transaction_max_timeout_ms {
            return refused(codes::INVALID_TRANSACTION_TIMEOUT);
        }
        let now = b.clock.now_ms();
        let Some(entry) = self.entry(id) else {
            if lock(&self.ids).len() >= IDS_MAX {
                tracing::warn!(limit = IDS_MAX, "transactional id refused: too many ids");
                return refused(codes::COORDINATOR_NOT_AVAILABLE);
            }
            let Some(producer_id) = new_producer_id(b).await else {
                return refused(codes::KAFKA_STORAGE_ERROR);
            };
            let txn = Txn {
                producer_id,
                epoch: 0,
                timeout_ms,
                state: State::Empty,
                started_ms: -1,
                updated_ms: now,
                partitions: BTreeSet::new(),
                offsets: BTreeMap::new(),
            };
            let entry = Arc::new(Mutex::new(Entry {
                txn: txn.clone(),
                busy: true,
            }));
            {
                let mut ids = lock(&self.ids);
                if ids.contains_key(id) {
                    return refused(codes::CONCURRENT_TRANSACTIONS);
                }
                ids.insert(id.to_string(), Arc::clone(&entry));
            }
            if self.persist(id, &txn, Vec::new()).await {
                lock(&entry).busy = false;
                return (codes::NONE, producer_id, 0);
            }
            lock(&self.ids).remove(id);
            return refused(codes::COORDINATOR_NOT_AVAILABLE);
        };
        let open = {
            let mut e = lock(&entry);
            if e.busy {
                return refused(codes::CONCURRENT_TRANSACTIONS);
            }
            if let Some((pid, epoch)) = expected
                && pid >= 0
                && (pid != e.txn.producer_id || epoch != e.txn.epoch)
            {
                // KIP-360: only the current producer may resume after an error.
                return refused(fenced(knows_fenced));
            }
            match e.txn.state {
                State::PrepareCommit | State::PrepareAbort => {
                    return refused(codes::CONCURRENT_TRANSACTIONS);
                }
                State::Ongoing => {
                    e.busy = true;
                    true
                }
                _ => false,
            }
        };
        if open {
            // A new instance of the producer: the old one's transaction is aborted and
            // it is fenced by the epoch the markers carry.
            let code = self.end(b, id, &entry, false, true).await;
            if code != codes::NONE {
                return refused(code);
            }
        }
        let mut next = {
            let mut e = lock(&entry);
            // Busy, or an abort whose markers are still to be written.
            if e.busy || matches!(e.txn.state, State::PrepareCommit | State::PrepareAbort) {
                return refused(codes::CONCURRENT_TRANSACTIONS);
            }
            e.busy = true;
            e.txn.clone()
        };
        if next.epoch >= i16::MAX - 1 {
            let Some(pid) = new_producer_id(b).await else {
                lock(&entry).busy = false;
                return refused(codes::KAFKA_STORAGE_ERROR);
            };
            next.producer_id = pid;
            next.epoch = 0;
        } else {
            next.epoch += 1;
        }
        next.timeout_ms = timeout_ms;
        next.state = State::Empty;
        next.started_ms = -1;
        next.updated_ms = now;
        next.partitions.clear();
        next.offsets.clear();
        let (pid, epoch) = (next.producer_id, next.epoch);
        match self.commit_change(id, &entry, next).await {
            codes::NONE => (codes::NONE, pid, epoch),
            code => refused(code),
        }
    }

    /// Checks a request of the current producer of `id`: `Ok(entry)` or the code.
    fn current(&self, id: &str, caller: Caller) -> Result<Arc<Mutex<Entry>>, i16> {
        let entry = self.entry(id).ok_or(codes::INVALID_PRODUCER_ID_MAPPING)?;
        let e = lock(&entry);
        if e.txn.producer_id != caller.producer_id {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if e.txn.epoch != caller.epoch {
            return Err(fenced(caller.knows_fenced));
        }
        drop(e);
        Ok(entry)
    }

    /// AddPartitionsToTxn and AddOffsetsToTxn: adds partitions and groups to the open
    /// transaction (opening it). One code for them all.
    pub async fn add(
        &self,
        b: &Arc<KafkaBroker>,
        id: &str,
        caller: Caller,
        partitions: &[(String, i32)],
        group: Option<&str>,
    ) -> i16 {
        let entry = match self.current(id, caller) {
            Ok(e) => e,
            Err(code) => return code,
        };
        let next = {
            let mut e = lock(&entry);
            if e.busy || matches!(e.txn.state, State::PrepareCommit | State::PrepareAbort) {
                return codes::CONCURRENT_TRANSACTIONS;
            }
            let has_all = partitions.iter().all(|p| e.txn.partitions.contains(p))
                && group.is_none_or(|g| e.txn.offsets.contains_key(g));
            if e.txn.state == State::Ongoing && has_all {
                return codes::NONE;
            }
            let mut next = e.txn.clone();
            if next.state != State::Ongoing {
                next.state = State::Ongoing;
                next.started_ms = b.clock.now_ms();
                next.partitions.clear();
                next.offsets.clear();
            }
            next.updated_ms = b.clock.now_ms();
            next.partitions.extend(partitions.iter().cloned());
            if let Some(g) = group {
                next.offsets.entry(g.to_string()).or_default();
            }
            e.busy = true;
            next
        };
        self.commit_change(id, &entry, next).await
    }

    /// TxnOffsetCommit: offsets the open transaction commits for `group`, stored now and
    /// visible when it commits.
    pub async fn commit_offsets(
        &self,
        id: &str,
        caller: Caller,
        group: &str,
        offsets: Vec<(String, i32, Committed)>,
    ) -> i16 {
        let entry = match self.current(id, caller) {
            Ok(e) => e,
            Err(codes::INVALID_PRODUCER_ID_MAPPING) => return codes::INVALID_PRODUCER_ID_MAPPING,
            Err(_) => return codes::INVALID_PRODUCER_EPOCH,
        };
        let next = {
            let mut e = lock(&entry);
            if e.busy {
                return codes::CONCURRENT_TRANSACTIONS;
            }
            if e.txn.state != State::Ongoing || !e.txn.offsets.contains_key(group) {
                // The group was not added to this transaction (AddOffsetsToTxn).
                return codes::INVALID_TXN_STATE;
            }
            let mut next = e.txn.clone();
            let pending = next.offsets.entry(group.to_string()).or_default();
            for (topic, partition, committed) in offsets {
                pending.insert((topic, partition), committed);
            }
            e.busy = true;
            next
        };
        self.commit_change(id, &entry, next).await
    }

    /// EndTxn from the producer.
    pub async fn end_txn(
        &self,
        b: &Arc<KafkaBroker>,
        id: &str,
        caller: Caller,
        commit: bool,
    ) -> i16 {
        let entry = match self.current(id, caller) {
            Ok(e) => e,
            Err(code) => return code,
        };
        {
            let mut e = lock(&entry);
            if e.busy {
                return codes::CONCURRENT_TRANSACTIONS;
            }
            match (e.txn.state, commit) {
                (State::Ongoing, _) => e.busy = true,
                // A retry of an answered EndTxn.
                (State::CompleteCommit, true) | (State::CompleteAbort, false) => {
                    return codes::NONE;
                }
                (State::PrepareCommit, true) | (State::PrepareAbort, false) => {
                    return codes::CONCURRENT_TRANSACTIONS;
                }
                _ => return codes::INVALID_TXN_STATE,
            }
        }
        self.end(b, id, &entry, commit, false).await
    }

    /// Ends the open transaction of a busy entry: stores the decision, writes the
    /// markers, makes committed offsets visible, stores the completion. `bump` (an abort
    /// by the coordinator) raises the epoch first, fencing the producer.
    async fn end(
        &self,
        b: &Arc<KafkaBroker>,
        id: &str,
        entry: &Mutex<Entry>,
        commit: bool,
        bump: bool,
    ) -> i16 {
        let mut prepared = lock(entry).txn.clone();
        if bump && prepared.epoch < i16::MAX - 1 {
            prepared.epoch += 1;
        }
        prepared.state = if commit {
            State::PrepareCommit
        } else {
            State::PrepareAbort
        };
        prepared.updated_ms = b.clock.now_ms();
        let offsets = if commit {
            offset_changes(&prepared)
        } else {
            Vec::new()
        };
        {
            // Produce verification reads the state: from here nothing joins.
            let mut e = lock(entry);
            e.txn.state = prepared.state;
        }
        if !self.persist(id, &prepared, offsets.clone()).await {
            let mut e = lock(entry);
            e.txn.state = State::Ongoing;
            e.busy = false;
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        {
            let mut e = lock(entry);
            e.txn = prepared.clone();
        }
        b.groups.apply_stored(offsets);
        self.complete(b, id, entry, prepared).await;
        codes::NONE
    }

    /// Writes the markers of a prepared transaction and stores its completion. Markers
    /// that cannot be written leave it prepared, for the next tick to finish.
    async fn complete(&self, b: &Arc<KafkaBroker>, id: &str, entry: &Mutex<Entry>, prepared: Txn) {
        let commit = prepared.state == State::PrepareCommit;
        let mut written = true;
        for (topic, index) in &prepared.partitions {
            let Some(t) = b.topics.get(topic) else {
                continue;
            };
            let Some(p) = t.partition(*index) else {
                continue;
            };
            let flush_sync = t.config().flush_sync;
            match p.write_marker(
                prepared.producer_id,
                prepared.epoch,
                commit,
                b.clock.now_ms(),
            ) {
                Ok(produced) => {
                    if flush_sync && let Err(e) = p.wait_durable(produced.next_offset).await {
                        tracing::error!(topic = %topic, error = %e, "transaction marker not synced");
                        written = false;
                    }
                }
                Err(e) => {
                    tracing::error!(topic = %topic, error = ?e, "transaction marker not written");
                    written = false;
                }
            }
        }
        if !written {
            lock(entry).busy = false;
            return;
        }
        let mut done = prepared;
        done.state = if commit {
            State::CompleteCommit
        } else {
            State::CompleteAbort
        };
        done.updated_ms = b.clock.now_ms();
        done.partitions.clear();
        done.offsets.clear();
        let stored = self.persist(id, &done, Vec::new()).await;
        let mut e = lock(entry);
        e.busy = false;
        if stored {
            e.txn = done;
        }
    }

    /// KIP-890's check on the partition leader: a transactional batch is appended only
    /// while its producer's transaction is open and holds the partition. The returned
    /// guard keeps the transaction from ending until the append is done.
    pub fn verify<'a>(
        &self,
        entry: &'a Arc<Mutex<Entry>>,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<MutexGuard<'a, Entry>, i16> {
        let e = lock(entry);
        if e.txn.producer_id != producer_id {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch < e.txn.epoch {
            return Err(codes::INVALID_PRODUCER_EPOCH);
        }
        if e.txn.state != State::Ongoing
            || epoch != e.txn.epoch
            || !e.txn.partitions.contains(&(topic.to_string(), partition))
        {
            return Err(codes::INVALID_TXN_STATE);
        }
        Ok(e)
    }

    /// The entry of `id`, for [`Transactions::verify`].
    pub fn lookup(&self, id: &str) -> Option<Arc<Mutex<Entry>>> {
        self.entry(id)
    }

    /// The partitions of `group` for which an undecided transaction holds offsets
    /// (KIP-447's `require_stable`).
    pub fn pending_offsets(&self, group: &str) -> HashSet<(String, i32)> {
        let entries: Vec<_> = lock(&self.ids).values().cloned().collect();
        let mut out = HashSet::new();
        for e in entries {
            let e = lock(&e);
            if matches!(
                e.txn.state,
                State::Ongoing | State::PrepareCommit | State::PrepareAbort
            ) && let Some(offsets) = e.txn.offsets.get(group)
            {
                out.extend(offsets.keys().cloned());
            }
        }
        out
    }

    /// Every transactional id and its state, sorted by id.
    pub fn all(&self) -> Vec<TxnView> {
        let entries: Vec<_> = lock(&self.ids)
            .iter()
            .map(|(id, e)| (id.clone(), Arc::clone(e)))
            .collect();
        let mut out: Vec<TxnView> = entries
            .into_iter()
            .map(|(id, e)| TxnView {
                id,
                txn: lock(&e).txn.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn get(&self, id: &str) -> Option<Txn> {
        self.entry(id).map(|e| lock(&e).txn.clone())
    }

    /// Aborts transactions open past their timeout (bumping the epoch, as Kafka does),
    /// finishes prepared ones whose markers are not all written (after a restart), and
    /// forgets ids idle past the expiration.
    pub async fn tick(&self, b: &Arc<KafkaBroker>) {
        let now = b.clock.now_ms();
        let entries: Vec<_> = lock(&self.ids)
            .iter()
            .map(|(id, e)| (id.clone(), Arc::clone(e)))
            .collect();
        for (id, entry) in entries {
            enum Due {
                Abort,
                Finish(Txn),
                Expire,
            }
            let due = {
                let mut e = lock(&entry);
                if e.busy {
                    continue;
                }
                let t = &e.txn;
                let due = match t.state {
                    State::Ongoing if now - t.started_ms > i64::from(t.timeout_ms) => Due::Abort,
                    State::PrepareCommit | State::PrepareAbort => Due::Finish(t.clone()),
                    State::Empty | State::CompleteCommit | State::CompleteAbort
                        if now - t.updated_ms > ID_EXPIRATION_MS =>
                    {
                        Due::Expire
                    }
                    _ => continue,
                };
                e.busy = true;
                due
            };
            match due {
                Due::Abort => {
                    tracing::info!(transactional_id = %id, "transaction timed out: aborted");
                    self.end(b, &id, &entry, false, true).await;
                }
                Due::Finish(prepared) => self.complete(b, &id, &entry, prepared).await,
                Due::Expire => {
                    let gone = Change::TxnState {
                        id: id.clone(),
                        value: None,
                    };
                    if self.store.persist(&[gone]).await.is_ok() {
                        lock(&self.ids).remove(&id);
                    } else {
                        lock(&entry).busy = false;
                    }
                }
            }
        }
    }
}

async fn new_producer_id(b: &Arc<KafkaBroker>) -> Option<i64> {
    let b2 = Arc::clone(b);
    match tokio::task::spawn_blocking(move || b2.new_producer_id()).await {
        Ok(Ok(id)) => Some(id),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "producer id reservation failed");
            None
        }
        Err(_) => None,
    }
}

/// The commits a transaction's offsets become.
fn offset_changes(txn: &Txn) -> Vec<Change> {
    let mut out = Vec::new();
    for (group, offsets) in &txn.offsets {
        for ((topic, partition), committed) in offsets {
            out.push(Change::Commit {
                group: group.clone(),
                topic: topic.clone(),
                partition: *partition,
                committed: committed.clone(),
            });
        }
    }
    out
}

pub fn encode(t: &Txn) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&t.producer_id.to_be_bytes());
    out.extend_from_slice(&t.epoch.to_be_bytes());
    out.extend_from_slice(&t.timeout_ms.to_be_bytes());
    out.push(t.state.code());
    out.extend_from_slice(&t.started_ms.to_be_bytes());
    out.extend_from_slice(&t.updated_ms.to_be_bytes());
    out.extend_from_slice(&(t.partitions.len() as u32).to_be_bytes());
    for (topic, partition) in &t.partitions {
        put_str(&mut out, topic);
        out.extend_from_slice(&partition.to_be_bytes());
    }
    out.extend_from_slice(&(t.offsets.len() as u32).to_be_bytes());
    for (group, offsets) in &t.offsets {
        put_str(&mut out, group);
        out.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
        for ((topic, partition), c) in offsets {
            put_str(&mut out, topic);
            out.extend_from_slice(&partition.to_be_bytes());
            out.extend_from_slice(&c.offset.to_be_bytes());
            out.extend_from_slice(&c.leader_epoch.to_be_bytes());
            match &c.metadata {
                Some(m) => {
                    let m = m
                        .as_bytes()
                        .get(..m.len().min(i16::MAX as usize))
                        .unwrap_or_default();
                    out.extend_from_slice(&(m.len() as i16).to_be_bytes());
                    out.extend_from_slice(m);
                }
                None => out.extend_from_slice(&(-1i16).to_be_bytes()),
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn string(&mut self) -> Option<String> {
        let n = u16::from_be_bytes(self.array()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

pub fn decode(bytes: &[u8]) -> Option<Txn> {
    let mut r = Reader(bytes);
    if r.array::<1>()? != [1] {
        return None;
    }
    let producer_id = i64::from_be_bytes(r.array()?);
    let epoch = i16::from_be_bytes(r.array()?);
    let timeout_ms = i32::from_be_bytes(r.array()?);
    let state = State::of(r.array::<1>()?[0])?;
    let started_ms = i64::from_be_bytes(r.array()?);
    let updated_ms = i64::from_be_bytes(r.array()?);
    let mut partitions = BTreeSet::new();
    for _ in 0..u32::from_be_bytes(r.array()?) {
        let topic = r.string()?;
        partitions.insert((topic, i32::from_be_bytes(r.array()?)));
    }
    let mut offsets = BTreeMap::new();
    for _ in 0..u32::from_be_bytes(r.array()?) {
        let group = r.string()?;
        let mut of_group = BTreeMap::new();
        for _ in 0..u32::from_be_bytes(r.array()?) {
            let topic = r.string()?;
            let partition = i32::from_be_bytes(r.array()?);
            let offset = i64::from_be_bytes(r.array()?);
            let leader_epoch = i32::from_be_bytes(r.array()?);
            let metadata = match i16::from_be_bytes(r.array()?) {
                -1 => None,
                n => Some(String::from_utf8(r.take(usize::try_from(n).ok()?)?.to_vec()).ok()?),
            };
            of_group.insert(
                (topic, partition),
                Committed {
                    offset,
                    leader_epoch,
                    metadata,
                },
            );
        }
        offsets.insert(group, of_group);
    }
    r.0.is_empty().then_some(Txn {
        producer_id,
        epoch,
        timeout_ms,
        state,
        started_ms,
        updated_ms,
        partitions,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_records_round_trip() {
        let mut t = Txn {
            producer_id: 42,
            epoch: 7,
            timeout_ms: 60_000,
            state: State::PrepareCommit,
            started_ms: 1_000,
            updated_ms: 2_000,
            partitions: [("a".to_string(), 0), ("b".to_string(), 3)].into(),
            offsets: BTreeMap::new(),
        };
        t.offsets.entry("g".into()).or_default().insert(
            ("in".into(), 1),
            Committed {
                offset: 99,
                leader_epoch: -1,
                metadata: Some("m".into()),
            },
        );
        t.offsets.entry("h".into()).or_default();
        let bytes = encode(&t);
        assert_eq!(decode(&bytes), Some(t));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        for s in State::ALL {
            assert_eq!(State::of(s.code()), Some(s));
        }
    }
}
