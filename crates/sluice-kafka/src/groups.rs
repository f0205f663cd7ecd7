//! The group coordinator for Kafka's classic group protocol: JoinGroup/SyncGroup
//! rebalances with generations, heartbeats and session timeouts, static membership, and
//! committed offsets (kept in [`OffsetStore`]).
//!
//! States follow Apache Kafka's GroupCoordinator: Empty → PreparingRebalance (members
//! rejoin) → CompletingRebalance (leader's SyncGroup awaited) → Stable. Joins and syncs
//! that must wait park a oneshot sender in the member; the coordinator's mutex is never
//! held across an await. A periodic [`Coordinator::tick`] expires sessions and finishes
//! rebalances whose timeouts ran out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::codes;
use crate::group_record::{GroupRecord, MemberRecord};
use sluice_engine::stream::offsets::{Change, Committed, GroupOffsets, OffsetStore, Stored, apply};

/// How long an empty group without committed offsets is kept (Kafka drops such groups
/// at its next offsets cleanup, every 10 minutes by default).
const EMPTY_GROUP_KEEP: Duration = Duration::from_secs(600);
/// Members per group.
const MEMBERS_MAX: usize = 10_000;
/// Largest committed metadata string (`offset.metadata.max.bytes`).
pub const METADATA_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// `(member id, group instance id, metadata)`: filled for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    fn error(error: i16, member_id: &str) -> Self {
        JoinOutcome {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug)]
pub struct JoinArgs {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub client_id: String,
    pub client_host: String,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member: bool,
}

#[derive(Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    join: Option<oneshot::Sender<JoinOutcome>>,
    sync: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Ends whatever the member was waiting for with `error` (it left or was fenced).
    fn fail_waiters(&mut self, error: i16) {
        if let Some(tx) = self.join.take() {
            let _ = tx.send(JoinOutcome::error(error, &self.id));
        }
        if let Some(tx) = self.sync.take() {
            let _ = tx.send(SyncOutcome {
                error,
                ..Default::default()
            });
        }
    }
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order: the first is the default leader.
    members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, valid until the instant.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    delay_until: Option<Instant>,
    /// When the group was last seen empty; it is forgotten a while after (unless it has
    /// committed offsets).
    empty_since: Option<Instant>,
}

impl Group {
    fn new() -> Self {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: Vec::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            delay_until: None,
            empty_since: None,
        }
    }

    /// The membership to store; `None` while a rebalance is under way (Kafka stores a
    /// group when its rebalance completes or it empties).
    fn record(&self) -> Option<GroupRecord> {
        if !matches!(self.state, GroupState::Stable | GroupState::Empty) {
            return None;
        }
        Some(GroupRecord {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .iter()
                .map(|m| MemberRecord {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis().min(u32::MAX as u128) as u32,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis().min(u32::MAX as u128)
                        as u32,
                    assignment: m.assignment.clone(),
                    protocols: m.protocols.clone(),
                })
                .collect(),
        })
    }

    fn restore(record: GroupRecord, now: Instant) -> Group {
        let mut group = Group::new();
        group.generation = record.generation;
        group.protocol_type = record.protocol_type;
        group.protocol = record.protocol;
        group.leader = record.leader;
        group.members = record
            .members
            .into_iter()
            .take(MEMBERS_MAX)
            .map(|m| Member {
                id: m.id,
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: Duration::from_millis(u64::from(m.session_timeout_ms)),
                rebalance_timeout: Duration::from_millis(u64::from(m.rebalance_timeout_ms)),
                protocols: m.protocols,
                assignment: m.assignment,
                last_seen: now,
                join: None,
                sync: None,
            })
            .collect();
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        group
    }

    fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    fn has_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Protocol names every member supports, in `first`'s preference order.
    fn candidates<'a>(&'a self, first: &'a [(String, Bytes)]) -> Vec<&'a str> {
        first
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                self.members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .collect()
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocols.is_empty() || protocol_type.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && !self.candidates(protocols).is_empty()
    }

    /// Kafka's choice: each member votes for its most preferred common protocol.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates = self.candidates(&first.protocols);
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in &self.members {
            if let Some((name, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
                && let Some(v) = votes.iter_mut().find(|(c, _)| c == name)
            {
                v.1 += 1;
            }
        }
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes
            .iter()
            .find(|(_, n)| *n == best)
            .map(|(c, _)| c.to_string())
    }

    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::CompletingRebalance {
            for m in &mut self.members {
                if let Some(tx) = m.sync.take() {
                    let _ = tx.send(SyncOutcome {
                        error: codes::REBALANCE_IN_PROGRESS,
                        ..Default::default()
                    });
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        let timeout = self
            .members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let deadline = now + timeout;
        self.rebalance_deadline = Some(deadline);
        self.delay_until = was_empty.then(|| (now + initial_delay).min(deadline));
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.iter().all(|m| m.join.is_some());
        let delay_over = self.delay_until.is_none_or(|d| now >= d);
        let timed_out = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !(timed_out || all_joined && delay_over) {
            return;
        }
        // Members that did not rejoin in time are out.
        self.members.retain(|m| m.join.is_some());
        self.generation += 1;
        self.rebalance_deadline = None;
        self.delay_until = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.iter().any(|m| &m.id == l))
        {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let listing: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.metadata_for(&protocol),
                )
            })
            .collect();
        for m in &mut self.members {
            m.last_seen = now;
            if let Some(tx) = m.join.take() {
                let _ = tx.send(JoinOutcome {
                    error: codes::NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members: if m.id == leader {
                        listing.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    fn remove_member(&mut self, id: &str, error: i16) -> bool {
        let Some(i) = self.members.iter().position(|m| m.id == id) else {
            return false;
        };
        let mut m = self.members.remove(i);
        m.fail_waiters(error);
        true
    }

    fn on_members_removed(&mut self, now: Instant, initial_delay: Duration) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, initial_delay);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty => {}
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    groups: HashMap<String, Group>,
    offsets: HashMap<String, GroupOffsets>,
    next_member: u64,
    /// Groups whose membership changed since it was last stored.
    dirty: HashSet<String>,
}

/// Committed offsets by topic: `(partition, offset if any)`.
pub type FetchedOffsets = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// One group in a DescribeGroups answer.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// `(member id, instance id, client id, client host, metadata, assignment)`.
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

#[derive(Debug)]
pub struct Coordinator {
    inner: Mutex<Inner>,
    store: Arc<OffsetStore>,
    /// Orders membership writes: each writes the state current when it takes this.
    persisting: tokio::sync::Mutex<()>,
    initial_delay: Duration,
    min_session_ms: i32,
    max_session_ms: i32,
}

impl Coordinator {
    /// A coordinator over what `store` held: committed offsets, and the groups as last
    /// stored, each member's session starting now (as Kafka's coordinator does when it
    /// loads its groups), so members carry on without a rebalance.
    pub fn new(
        store: Arc<OffsetStore>,
        stored: Stored,
        initial_delay: Duration,
        min_session_ms: i32,
        max_session_ms: i32,
    ) -> Self {
        let now = Instant::now();
        let mut groups = HashMap::new();
        for (name, bytes) in stored.groups {
            match GroupRecord::decode(&bytes) {
                Some(record) => {
                    groups.insert(name, Group::restore(record, now));
                }
                None => tracing::error!(group = %name, "unreadable group record skipped"),
            }
        }
        Coordinator {
            inner: Mutex::new(Inner {
                offsets: stored.offsets,
                groups,
                ..Default::default()
            }),
            store,
            persisting: tokio::sync::Mutex::new(()),
            initial_delay,
            min_session_ms,
            max_session_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn join(&self, args: JoinArgs) -> JoinOutcome {
        let (group, member) = (args.group.clone(), args.member_id.clone());
        let outcome = match self.start_join(args) {
            Ok(outcome) => outcome,
            Err(rx) => rx
                .await
                .unwrap_or_else(|_| JoinOutcome::error(codes::UNKNOWN_SERVER_ERROR, "")),
        };
        tracing::debug!(
            %group,
            %member,
            error = outcome.error,
            generation = outcome.generation,
            assigned_id = %outcome.member_id,
            leader = %outcome.leader,
            "join answered"
        );
        outcome
    }

    /// Either answers at once (`Ok`) or parks the member and returns the receiver.
    fn start_join(&self, a: JoinArgs) -> Result<JoinOutcome, oneshot::Receiver<JoinOutcome>> {
        let now = Instant::now();
        if a.group.is_empty() {
            return Ok(JoinOutcome::error(codes::INVALID_GROUP_ID, &a.member_id));
        }
        if a.session_timeout_ms < self.min_session_ms || a.session_timeout_ms > self.max_session_ms
        {
            return Ok(JoinOutcome::error(
                codes::INVALID_SESSION_TIMEOUT,
                &a.member_id,
            ));
        }
        let initial_delay = self.initial_delay;
        let mut inner = self.lock();
        inner.next_member += 1;
        let serial = inner.next_member;
        let group = inner
            .groups
            .entry(a.group.clone())
            .or_insert_with(Group::new);
        if !group.supports(&a.protocol_type, &a.protocols) {
            return Ok(JoinOutcome::error(
                codes::INCONSISTENT_GROUP_PROTOCOL,
                &a.member_id,
            ));
        }
        let session_timeout = Duration::from_millis(a.session_timeout_ms.max(0) as u64);
        // rebalance.timeout.ms defaults to the session timeout in JoinGroup v0.
        let rebalance_timeout = Duration::from_millis(
            if a.rebalance_timeout_ms > 0 {
                a.rebalance_timeout_ms
            } else {
                a.session_timeout_ms
            }
            .max(0) as u64,
        );
        let new_id = || {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            format!("{}-{serial:08x}-{nanos:08x}", a.client_id)
        };
        let mut known_unchanged = false;
        // Set when a static member replaces its old self: the leader id to answer with.
        let mut static_leader: Option<String> = None;
        let member_id = if a.member_id.is_empty() {
            let static_old = a.instance_id.as_ref().and_then(|inst| {
                group
                    .members
                    .iter()
                    .find(|m| m.instance_id.as_ref() == Some(inst))
                    .map(|m| m.id.clone())
            });
            if let Some(old_id) = static_old {
                // A static member came back: it takes over its old place under a new id.
                let id = new_id();
                let was_leader = group.leader.as_deref() == Some(old_id.as_str());
                static_leader = group.leader.clone();
                if let Some(m) = group.member(&old_id) {
                    m.fail_waiters(codes::FENCED_INSTANCE_ID);
                    known_unchanged = m.protocols == a.protocols;
                    m.id = id.clone();
                }
                if was_leader {
                    group.leader = Some(id.clone());
                }
                id
            } else if a.require_known_member && a.instance_id.is_none() {
                let id = new_id();
                if group.pending.len() < MEMBERS_MAX {
                    group.pending.insert(id.clone(), now + session_timeout);
                }
                return Ok(JoinOutcome::error(codes::MEMBER_ID_REQUIRED, &id));
            } else {
                new_id()
            }
        } else if let Some(m) = group.member(&a.member_id) {
            if m.instance_id.is_some() && m.instance_id != a.instance_id {
                return Ok(JoinOutcome::error(codes::FENCED_INSTANCE_ID, &a.member_id));
            }
            known_unchanged = m.protocols == a.protocols;
            a.member_id.clone()
        } else if group.pending.remove(&a.member_id).is_some() {
            a.member_id.clone()
        } else {
            return Ok(JoinOutcome::error(codes::UNKNOWN_MEMBER_ID, &a.member_id));
        };
        if !group.has_member(&member_id) {
            if group.members.len() >= MEMBERS_MAX {
                return Ok(JoinOutcome::error(codes::UNKNOWN_SERVER_ERROR, &member_id));
            }
            if group.members.is_empty() {
                group.protocol_type = Some(a.protocol_type.clone());
            }
            group.members.push(Member {
                id: member_id.clone(),
                instance_id: a.instance_id.clone(),
                client_id: a.client_id.clone(),
                client_host: a.client_host.clone(),
                session_timeout,
                rebalance_timeout,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_seen: now,
                join: None,
                sync: None,
            });
        }
        let is_leader = group.leader.as_deref() == Some(member_id.as_str());
        let (tx, rx) = oneshot::channel();
        {
            let Some(m) = group.member(&member_id) else {
                return Ok(JoinOutcome::error(codes::UNKNOWN_SERVER_ERROR, &member_id));
            };
            m.protocols = a.protocols;
            m.session_timeout = session_timeout;
            m.rebalance_timeout = rebalance_timeout;
            m.client_id = a.client_id;
            m.client_host = a.client_host;
            m.last_seen = now;
            m.join = Some(tx);
        }
        match group.state {
            GroupState::Stable if known_unchanged && (!is_leader || static_leader.is_some()) => {
                // Nothing changed for this member: it keeps the current generation and its
                // assignment. A returning static leader is answered with the old leader
                // id, as Kafka does, so it does not compute an assignment a stable group
                // would never hand out.
                if let Some(m) = group.member(&member_id) {
                    m.join = None;
                }
                let replaced = static_leader.is_some() || a.instance_id.is_some();
                let outcome = JoinOutcome {
                    error: codes::NONE,
                    generation: group.generation,
                    protocol_type: group.protocol_type.clone(),
                    protocol: group.protocol.clone(),
                    leader: static_leader
                        .or_else(|| group.leader.clone())
                        .unwrap_or_default(),
                    member_id,
                    members: Vec::new(),
                };
                if replaced {
                    // A static member's new id is part of the stored membership.
                    inner.dirty.insert(a.group.clone());
                }
                return Ok(outcome);
            }
            GroupState::PreparingRebalance => {
                if let Some(d) = group.delay_until {
                    // New members of a new group extend the initial delay, up to the
                    // rebalance timeout.
                    let limit = group.rebalance_deadline.unwrap_or(d);
                    group.delay_until = Some((now + initial_delay).min(limit));
                }
            }
            _ => group.prepare_rebalance(now, initial_delay),
        }
        group.try_complete_join(now);
        Err(rx)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let err = |error| SyncOutcome {
            error,
            ..Default::default()
        };
        let rx = {
            let now = Instant::now();
            let mut inner = self.lock();
            let Some(group) = inner.groups.get_mut(group_id) else {
                return err(codes::UNKNOWN_MEMBER_ID);
            };
            let Some(m) = group.member(member_id) else {
                return err(codes::UNKNOWN_MEMBER_ID);
            };
            if m.instance_id.is_some() && m.instance_id.as_deref() != instance_id {
                return err(codes::FENCED_INSTANCE_ID);
            }
            m.last_seen = now;
            if generation != group.generation {
                return err(codes::ILLEGAL_GENERATION);
            }
            if protocol_type.is_some_and(|t| Some(t) != group.protocol_type.as_deref())
                || protocol.is_some_and(|p| Some(p) != group.protocol.as_deref())
            {
                return err(codes::INCONSISTENT_GROUP_PROTOCOL);
            }
            let done = |g: &Group, assignment: Bytes| SyncOutcome {
                error: codes::NONE,
                protocol_type: g.protocol_type.clone(),
                protocol: g.protocol.clone(),
                assignment,
            };
            match group.state {
                GroupState::Empty => return err(codes::UNKNOWN_MEMBER_ID),
                GroupState::PreparingRebalance => return err(codes::REBALANCE_IN_PROGRESS),
                GroupState::Stable => {
                    let assignment = group
                        .member(member_id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    return done(group, assignment);
                }
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            if let Some(m) = group.member(member_id) {
                m.sync = Some(tx);
            }
            let leader = group.leader.as_deref() == Some(member_id);
            if leader {
                let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                group.state = GroupState::Stable;
                let reply = done(group, Bytes::new());
                for m in &mut group.members {
                    m.assignment = by_member.remove(&m.id).unwrap_or_default();
                    if let Some(tx) = m.sync.take() {
                        let _ = tx.send(SyncOutcome {
                            assignment: m.assignment.clone(),
                            ..reply.clone()
                        });
                    }
                }
                inner.dirty.insert(group_id.to_string());
            }
            (rx, leader)
        };
        // The new generation is stored by the next `persist_groups` (within 100 ms), not
        // before the leader hears back: a SyncGroup slower than a client's poll timeout
        // trips kafka-python 3.0.12, which then never re-enables its heartbeat. A crash in
        // between costs the group one rebalance, not a record.
        let (rx, leader) = rx;
        let outcome = rx
            .await
            .unwrap_or_else(|_| err(codes::UNKNOWN_SERVER_ERROR));
        tracing::debug!(group = %group_id, member = %member_id, generation, leader, error = outcome.error, "sync answered");
        outcome
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        let mut inner = self.lock();
        let Some(group) = inner.groups.get_mut(group_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        let state = group.state;
        let current = group.generation;
        let Some(m) = group.member(member_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if m.instance_id.is_some() && m.instance_id.as_deref() != instance_id {
            return codes::FENCED_INSTANCE_ID;
        }
        m.last_seen = Instant::now();
        let code = match state {
            GroupState::Empty => codes::UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => codes::REBALANCE_IN_PROGRESS,
            _ if generation != current => codes::ILLEGAL_GENERATION,
            _ => codes::NONE,
        };
        if code != codes::NONE {
            tracing::debug!(group = %group_id, member = %member_id, generation, current, code, "heartbeat refused");
        }
        code
    }

    /// Removes members (`(member id, instance id)`; an empty member id means "by instance
    /// id"). Returns one error code per member.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let now = Instant::now();
        let initial_delay = self.initial_delay;
        let mut inner = self.lock();
        let Some(group) = inner.groups.get_mut(group_id) else {
            return vec![codes::UNKNOWN_MEMBER_ID; members.len()];
        };
        let mut removed = false;
        let codes: Vec<i16> = members
            .iter()
            .map(|(id, instance)| {
                let found = group
                    .members
                    .iter()
                    .find(|m| {
                        if id.is_empty() {
                            instance.is_some() && &m.instance_id == instance
                        } else {
                            &m.id == id
                        }
                    })
                    .map(|m| (m.id.clone(), m.instance_id.clone()));
                match found {
                    None => codes::UNKNOWN_MEMBER_ID,
                    Some((_, mi)) if instance.is_some() && &mi != instance => {
                        codes::FENCED_INSTANCE_ID
                    }
                    Some((mid, _)) => {
                        group.remove_member(&mid, codes::UNKNOWN_MEMBER_ID);
                        removed = true;
                        codes::NONE
                    }
                }
            })
            .collect();
        if removed {
            group.on_members_removed(now, initial_delay);
            inner.dirty.insert(group_id.to_string());
        }
        tracing::debug!(group = %group_id, ?members, ?codes, "leave");
        codes
    }

    /// Stores the membership of every group changed since the last call that is Stable or
    /// Empty now (a group mid-rebalance waits for the next call), and forgets the groups
    /// that are gone. Called after rebalances and periodically.
    pub async fn persist_groups(&self) {
        let _order = self.persisting.lock().await;
        let (changes, names): (Vec<Change>, Vec<String>) = {
            let mut inner = self.lock();
            let Inner { groups, dirty, .. } = &mut *inner;
            let mut changes = Vec::new();
            let mut names = Vec::new();
            dirty.retain(|name| {
                let value = match groups.get(name) {
                    None => None,
                    Some(g) => match g.record() {
                        Some(r) => Some(r.encode()),
                        None => return true,
                    },
                };
                changes.push(Change::GroupMetadata {
                    group: name.clone(),
                    value,
                });
                names.push(name.clone());
                false
            });
            (changes, names)
        };
        if let Err(e) = self.store.persist(&changes).await {
            tracing::error!(error = %e, "group membership not stored");
            self.lock().dirty.extend(names);
        }
    }

    /// Expires sessions and pending member ids, and finishes rebalances whose delay or
    /// timeout has passed. Called periodically.
    pub fn tick(&self) {
        let now = Instant::now();
        let initial_delay = self.initial_delay;
        let mut inner = self.lock();
        let Inner {
            groups,
            offsets,
            dirty,
            ..
        } = &mut *inner;
        for (name, group) in groups.iter_mut() {
            group.pending.retain(|_, until| *until > now);
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|m| m.join.is_none() && now.duration_since(m.last_seen) > m.session_timeout)
                .map(|m| m.id.clone())
                .collect();
            for id in &expired {
                tracing::info!(group = %name, member = %id, "session timed out");
                group.remove_member(id, codes::UNKNOWN_MEMBER_ID);
            }
            if !expired.is_empty() {
                group.on_members_removed(now, initial_delay);
                dirty.insert(name.clone());
            }
            let before = group.state;
            group.try_complete_join(now);
            if before != group.state && group.state == GroupState::Empty {
                dirty.insert(name.clone());
            }
        }
        groups.retain(|name, g| {
            if g.state != GroupState::Empty {
                g.empty_since = None;
                return true;
            }
            let since = *g.empty_since.get_or_insert(now);
            let keep = !g.pending.is_empty()
                || offsets.contains_key(name)
                || now.duration_since(since) < EMPTY_GROUP_KEEP;
            if !keep {
                dirty.insert(name.clone());
            }
            keep
        });
    }

    /// Checks that a member may commit for `group_id` now.
    fn check_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        let mut inner = self.lock();
        let Some(group) = inner.groups.get_mut(group_id) else {
            return if generation < 0 {
                codes::NONE
            } else {
                codes::ILLEGAL_GENERATION
            };
        };
        if generation < 0 && group.state == GroupState::Empty {
            return codes::NONE;
        }
        let state = group.state;
        let current = group.generation;
        let Some(m) = group.member(member_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if m.instance_id.is_some() && m.instance_id.as_deref() != instance_id {
            return codes::FENCED_INSTANCE_ID;
        }
        m.last_seen = Instant::now();
        if generation != current {
            return codes::ILLEGAL_GENERATION;
        }
        if state == GroupState::CompletingRebalance {
            return codes::REBALANCE_IN_PROGRESS;
        }
        codes::NONE
    }

    /// Commits offsets `(topic, partition, committed)`; returns one code for all (a
    /// membership error) or NONE once they are durable.
    pub async fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        entries: Vec<(String, i32, Committed)>,
    ) -> i16 {
        if group_id.is_empty() {
            return codes::INVALID_GROUP_ID;
        }
        let code = self.check_commit(group_id, generation, member_id, instance_id);
        if code != codes::NONE {
            return code;
        }
        let changes: Vec<Change> = entries
            .into_iter()
            .map(|(topic, partition, committed)| Change::Commit {
                group: group_id.to_string(),
                topic,
                partition,
                committed,
            })
            .collect();
        if let Err(e) = self.store.persist(&changes).await {
            tracing::error!(error = %e, "offset commit not stored");
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        self.apply_stored(changes);
        codes::NONE
    }

    /// Committed offsets of a group: for `wanted` partitions (-1 where none), or all.
    pub fn fetch(&self, group_id: &str, wanted: Option<Vec<(String, Vec<i32>)>>) -> FetchedOffsets {
        let inner = self.lock();
        let offsets = inner.offsets.get(group_id);
        match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, parts)| {
                    let found = parts
                        .into_iter()
                        .map(|p| {
                            let c = offsets.and_then(|o| o.get(&(topic.clone(), p))).cloned();
                            (p, c)
                        })
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut by_topic: HashMap<String, Vec<(i32, Option<Committed>)>> = HashMap::new();
                for ((t, p), c) in offsets.into_iter().flatten() {
                    by_topic
                        .entry(t.clone())
                        .or_default()
                        .push((*p, Some(c.clone())));
                }
                let mut all: Vec<_> = by_topic.into_iter().collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                for (_, parts) in &mut all {
                    parts.sort_by_key(|(p, _)| *p);
                }
                all
            }
        }
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let inner = self.lock();
        let Some(g) = inner.groups.get(group_id) else {
            return inner
                .offsets
                .contains_key(group_id)
                .then(|| GroupDescription {
                    state: GroupState::Empty.name(),
                    protocol_type: "consumer".into(),
                    protocol: String::new(),
                    members: Vec::new(),
                });
        };
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupDescription {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: g
                .members
                .iter()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        m.metadata_for(&protocol),
                        m.assignment.clone(),
                    )
                })
                .collect(),
        })
    }

    /// `(group id, protocol type, state)` of every known group.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .groups
            .iter()
            .map(|(n, g)| {
                (
                    n.clone(),
                    g.protocol_type.clone().unwrap_or_else(|| "consumer".into()),
                    g.state.name(),
                )
            })
            .collect();
        for n in inner.offsets.keys() {
            if !inner.groups.contains_key(n) {
                out.push((n.clone(), "consumer".into(), GroupState::Empty.name()));
            }
        }
        out.sort();
        out
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete(&self, group_id: &str) -> i16 {
        {
            let inner = self.lock();
            match inner.groups.get(group_id) {
                Some(g) if !g.members.is_empty() => return codes::NON_EMPTY_GROUP,
                None if !inner.offsets.contains_key(group_id) => {
                    return codes::GROUP_ID_NOT_FOUND;
                }
                _ => {}
            }
        }
        let change = Change::ForgetGroup {
            group: group_id.to_string(),
        };
        if let Err(e) = self.store.persist(std::slice::from_ref(&change)).await {
            tracing::error!(error = %e, "group deletion not stored");
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        let mut inner = self.lock();
        apply(&mut inner.offsets, change);
        if inner
            .groups
            .get(group_id)
            .is_some_and(|g| g.members.is_empty())
        {
            inner.groups.remove(group_id);
        }
        codes::NONE
    }

    /// Forgets committed offsets of a deleted topic, in every group.
    pub async fn forget_topic(&self, topic: &str) {
        let changes: Vec<Change> = {
            let inner = self.lock();
            inner
                .offsets
                .iter()
                .flat_map(|(g, o)| {
                    o.keys()
                        .filter(|(t, _)| t == topic)
                        .map(|(t, p)| Change::ForgetPartition {
                            group: g.clone(),
                            topic: t.clone(),
                            partition: *p,
                        })
                })
                .collect()
        };
        if let Err(e) = self.store.persist(&changes).await {
            tracing::error!(error = %e, "offset deletion not stored");
            return;
        }
        self.apply_stored(changes);
    }

    /// Makes committed offsets that are already stored (by a commit, a deletion or a
    /// transaction's commit) visible.
    pub fn apply_stored(&self, changes: Vec<Change>) {
        let mut inner = self.lock();
        for c in changes {
            apply(&mut inner.offsets, c);
        }
    }

    /// Checks that a transactional producer may commit offsets for `group_id` as the
    /// member it names (KIP-447); groups without a member id are not checked.
    pub fn check_txn_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if member_id.is_empty() && generation < 0 {
            return codes::NONE;
        }
        self.check_commit(group_id, generation, member_id, instance_id)
    }

    /// Compacts the offsets log when it is due. Blocking.
    pub fn compact_store(&self) {
        if let Err(e) = self.store.compact_if_due() {
            tracing::error!(error = %e, "consumer offsets not compacted");
        }
    }

    pub fn sync_store(&self) {
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "offsets not synced at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::clock::SystemClock;
    use sluice_engine::stream::LogConfig;

    fn coordinator(dir: &std::path::Path) -> Arc<Coordinator> {
        let (store, stored) =
            OffsetStore::open(dir, &LogConfig::default(), Arc::new(SystemClock)).unwrap();
        Arc::new(Coordinator::new(
            Arc::new(store),
            stored,
            Duration::ZERO,
            0,
            600_000,
        ))
    }

    fn args(member: &str, session_ms: i32) -> JoinArgs {
        JoinArgs {
            group: "g".into(),
            member_id: member.into(),
            instance_id: None,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            session_timeout_ms: session_ms,
            rebalance_timeout_ms: 5_000,
            client_id: "test".into(),
            client_host: "/127.0.0.1".into(),
            require_known_member: false,
        }
    }

    async fn sync(
        c: &Coordinator,
        o: &JoinOutcome,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        c.sync(
            "g",
            o.generation,
            &o.member_id,
            None,
            None,
            None,
            assignments,
        )
        .await
    }

    /// A second member joins the stable group of `a` (generation 1): `a` learns of the
    /// rebalance from its heartbeat and rejoins; the leader hands out `p0` to itself and
    /// `p1` to the newcomer. Returns `a`'s new join, the newcomer's, and its assignment.
    async fn second_member_joins(
        c: &Arc<Coordinator>,
        a: &JoinOutcome,
        a_session_ms: i32,
        b_session_ms: i32,
    ) -> (JoinOutcome, JoinOutcome, SyncOutcome) {
        let b_join = tokio::spawn({
            let c = Arc::clone(c);
            async move { c.join(args("", b_session_ms)).await }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.heartbeat("g", 1, &a.member_id, None) != codes::REBALANCE_IN_PROGRESS {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        let a2 = c.join(args(&a.member_id, a_session_ms)).await;
        let b = b_join.await.unwrap();
        let b_sync = tokio::spawn({
            let c = Arc::clone(c);
            let b = b.clone();
            async move { sync(&c, &b, Vec::new()).await }
        });
        sync(
            c,
            &a2,
            vec![
                (a2.member_id.clone(), Bytes::from_static(b"p0")),
                (b.member_id.clone(), Bytes::from_static(b"p1")),
            ],
        )
        .await;
        let b_sync = b_sync.await.unwrap();
        (a2, b, b_sync)
    }

    #[tokio::test]
    async fn an_expired_session_hands_the_group_to_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        let a = c.join(args("", 60_000)).await;
        assert_eq!(
            (a.error, a.generation, a.leader == a.member_id),
            (0, 1, true)
        );
        let s = sync(
            &c,
            &a,
            vec![(a.member_id.clone(), Bytes::from_static(b"all"))],
        )
        .await;
        assert_eq!(&s.assignment[..], b"all");

        // B joins with a short session; A learns of the rebalance from its heartbeat.
        let (a2, b, b_sync) = second_member_joins(&c, &a, 60_000, 200).await;
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(a2.members.len(), 2, "the leader sees both members");
        assert!(b.members.is_empty());
        assert_eq!(&b_sync.assignment[..], b"p1");

        // B goes silent: after its session timeout the tick removes it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.heartbeat("g", 2, &a.member_id, None), codes::NONE);
        c.tick();
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        assert_eq!(
            c.heartbeat("g", 2, &b.member_id, None),
            codes::UNKNOWN_MEMBER_ID
        );
        let a3 = c.join(args(&a.member_id, 60_000)).await;
        assert_eq!((a3.error, a3.generation, a3.members.len()), (0, 3, 1));
    }

    /// A coordinator opened on the store of a stopped one (a restart, or a kill -9 after
    /// the leader's SyncGroup was answered) knows the group's generation, leader, members
    /// and assignments: heartbeats and commits go on without a rebalance.
    #[tokio::test]
    async fn a_stable_group_survives_a_new_coordinator_on_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let c = coordinator(dir.path());
            let a = c.join(args("", 10_000)).await;
            sync(
                &c,
                &a,
                vec![(a.member_id.clone(), Bytes::from_static(b"all"))],
            )
            .await;
            let (a2, b, _) = second_member_joins(&c, &a, 10_000, 10_000).await;
            // What the broker's group loop does every 100 ms.
            c.persist_groups().await;
            (a2, b)
        };
        // No shutdown sync: the store's own fsyncs are all the new coordinator gets.
        let c = coordinator(dir.path());
        assert_eq!(c.heartbeat("g", 2, &a.member_id, None), codes::NONE);
        assert_eq!(c.heartbeat("g", 2, &b.member_id, None), codes::NONE);
        let described = c.describe("g").unwrap();
        assert_eq!(described.state, "Stable");
        let mut assignments: Vec<(String, Bytes)> = described
            .members
            .iter()
            .map(|m| (m.0.clone(), m.5.clone()))
            .collect();
        assignments.sort();
        let mut expected = vec![
            (a.member_id.clone(), Bytes::from_static(b"p0")),
            (b.member_id.clone(), Bytes::from_static(b"p1")),
        ];
        expected.sort();
        assert_eq!(assignments, expected);
        let committed = Committed {
            offset: 3,
            leader_epoch: -1,
            metadata: None,
        };
        let code = c
            .commit("g", 2, &b.member_id, None, vec![("t".into(), 1, committed)])
            .await;
        assert_eq!(code, codes::NONE);
        // A member that rejoins unchanged keeps its assignment and the generation.
        let again = sync(&c, &b, Vec::new()).await;
        assert_eq!(
            (again.error, &again.assignment[..]),
            (codes::NONE, &b"p1"[..])
        );
        // The group leaves: the stored membership empties, and a third coordinator
        // knows nobody.
        c.leave(
            "g",
            &[(a.member_id.clone(), None), (b.member_id.clone(), None)],
        );
        c.persist_groups().await;
        let c = coordinator(dir.path());
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id, None),
            codes::UNKNOWN_MEMBER_ID
        );
    }

    #[tokio::test]
    async fn commits_check_membership_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        let committed = |o| Committed {
            offset: o,
            leader_epoch: -1,
            metadata: None,
        };
        // A group nobody joined takes "simple" commits (generation -1).
        let code = c
            .commit("g", -1, "", None, vec![("t".into(), 0, committed(5))])
            .await;
        assert_eq!(code, codes::NONE);
        let a = c.join(args("", 60_000)).await;
        sync(&c, &a, Vec::new()).await;
        let stale = c
            .commit(
                "g",
                0,
                &a.member_id,
                None,
                vec![("t".into(), 0, committed(6))],
            )
            .await;
        assert_eq!(stale, codes::ILLEGAL_GENERATION);
        let stranger = c
            .commit("g", 1, "nobody", None, vec![("t".into(), 0, committed(6))])
            .await;
        assert_eq!(stranger, codes::UNKNOWN_MEMBER_ID);
        let ok = c
            .commit(
                "g",
                1,
                &a.member_id,
                None,
                vec![("t".into(), 0, committed(7))],
            )
            .await;
        assert_eq!(ok, codes::NONE);
        let fetched = c.fetch("g", Some(vec![("t".into(), vec![0, 1])]));
        assert_eq!(fetched[0].1[0].1.as_ref().map(|c| c.offset), Some(7));
        assert!(fetched[0].1[1].1.is_none());
    }
}
