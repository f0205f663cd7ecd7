//! Group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups. The state
//! machine is in [`crate::groups`]; this module maps requests and responses.

use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;

use super::str;
use crate::broker::KafkaBroker;
use crate::codes;
use crate::connection::Client;
use crate::groups::{FetchedOffsets, JoinArgs, METADATA_MAX};
use crate::security::{Authz, Operation, Resource};
use sluice_engine::stream::offsets::Committed;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn find_coordinator(
    b: &Arc<KafkaBroker>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorResponse::default();
    // This node coordinates every group and every transactional id.
    let code = if req.key_type == KEY_TYPE_GROUP || req.key_type == KEY_TYPE_TRANSACTION {
        codes::NONE
    } else {
        codes::COORDINATOR_NOT_AVAILABLE
    };
    if version >= 4 {
        r.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let mut c = CoordinatorEntry::default();
                c.key = key;
                c.error_code = code;
                if code == codes::NONE {
                    c.node_id = BrokerId(b.config.node_id);
                    c.host = str(b.config.advertised_host.clone());
                    c.port = b.config.advertised_port;
                } else {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                }
                c
            })
            .collect();
        return r;
    }
    r.error_code = code;
    if code == codes::NONE {
        r.node_id = BrokerId(b.config.node_id);
        r.host = str(b.config.advertised_host.clone());
        r.port = b.config.advertised_port;
    } else {
        r.node_id = BrokerId(-1);
        r.port = -1;
    }
    r
}

pub async fn join(
    b: &Arc<KafkaBroker>,
    client: &Client,
    req: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let args = JoinArgs {
        group: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        client_id: client.client_id.clone(),
        client_host: format!("/{}", client.peer.ip()),
        require_known_member: version >= 4,
    };
    let o = b.groups.join(args).await;
    let mut r = JoinGroupResponse::default();
    r.error_code = o.error;
    r.generation_id = o.generation;
    r.protocol_type = o.protocol_type.map(str);
    // Before v7 the protocol name is not nullable.
    r.protocol_name = Some(str(o.protocol.unwrap_or_default()));
    r.leader = str(o.leader);
    r.member_id = str(o.member_id);
    r.members = o
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = str(id);
            m.group_instance_id = instance.map(str);
            m.metadata = metadata;
            m
        })
        .collect();
    r
}

pub async fn sync(b: &Arc<KafkaBroker>, req: SyncGroupRequest) -> SyncGroupResponse {
    let o = b
        .groups
        .sync(
            req.group_id.0.as_str(),
            req.generation_id,
            req.member_id.as_str(),
            req.group_instance_id.as_deref(),
            req.protocol_type.as_deref(),
            req.protocol_name.as_deref(),
            req.assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        )
        .await;
    let mut r = SyncGroupResponse::default();
    r.error_code = o.error;
    r.protocol_type = o.protocol_type.map(str);
    r.protocol_name = o.protocol.map(str);
    r.assignment = o.assignment;
    r
}

pub fn heartbeat(b: &Arc<KafkaBroker>, req: HeartbeatRequest) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    r.error_code = b.groups.heartbeat(
        req.group_id.0.as_str(),
        req.generation_id,
        req.member_id.as_str(),
        req.group_instance_id.as_deref(),
    );
    r
}

pub fn leave(b: &Arc<KafkaBroker>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let mut r = LeaveGroupResponse::default();
    let group = req.group_id.0.as_str();
    if version < 3 {
        let codes = b.groups.leave(group, &[(req.member_id.to_string(), None)]);
        r.error_code = codes.first().copied().unwrap_or(codes::NONE);
        return r;
    }
    let members: Vec<(String, Option<String>)> = req
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.group_instance_id.as_ref().map(|s| s.to_string()),
            )
        })
        .collect();
    let results = b.groups.leave(group, &members);
    r.members = req
        .members
        .into_iter()
        .zip(results)
        .map(|(m, code)| {
            let mut out = MemberResponse::default();
            out.member_id = m.member_id;
            out.group_instance_id = m.group_instance_id;
            out.error_code = code;
            out
        })
        .collect();
    r
}

/// A topic's partitions with the code each already has, or `None` to take the commit's.
type PlannedTopic = (TopicName, Vec<(i32, Option<i16>)>);

pub async fn offset_commit(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group_denied = !authz.allows(Operation::Read, Resource::Group(&req.group_id));
    let mut r = OffsetCommitResponse::default();
    let mut entries = Vec::new();
    // Per-partition codes known before the commit; `None` waits for the commit's result.
    let mut planned: Vec<PlannedTopic> = Vec::new();
    for t in req.topics {
        let topic = b.topics.get(t.name.0.as_str());
        let topic_denied = !authz.allows(Operation::Read, Resource::Topic(&t.name));
        let mut parts = Vec::new();
        for p in t.partitions {
            let known = topic
                .as_ref()
                .is_some_and(|tp| tp.partition(p.partition_index).is_some());
            let meta_len = p.committed_metadata.as_ref().map_or(0, |m| m.len());
            if group_denied {
                parts.push((p.partition_index, Some(codes::GROUP_AUTHORIZATION_FAILED)));
            } else if topic_denied {
                parts.push((p.partition_index, Some(codes::TOPIC_AUTHORIZATION_FAILED)));
            } else if !known {
                parts.push((p.partition_index, Some(codes::UNKNOWN_TOPIC_OR_PARTITION)));
            } else if meta_len > METADATA_MAX {
                parts.push((p.partition_index, Some(codes::OFFSET_METADATA_TOO_LARGE)));
            } else {
                entries.push((
                    t.name.0.to_string(),
                    p.partition_index,
                    Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.map(|m| m.to_string()),
                    },
                ));
                parts.push((p.partition_index, None));
            }
        }
        planned.push((t.name, parts));
    }
    let code = if entries.is_empty() {
        codes::NONE
    } else {
        b.groups
            .commit(
                req.group_id.0.as_str(),
                req.generation_id_or_member_epoch,
                req.member_id.as_str(),
                req.group_instance_id.as_deref(),
                entries,
            )
            .await
    };
    for (name, parts) in planned {
        let mut t = OffsetCommitResponseTopic::default();
        t.name = name;
        t.partitions = parts
            .into_iter()
            .map(|(index, known)| {
                let mut p = OffsetCommitResponsePartition::default();
                p.partition_index = index;
                p.error_code = known.unwrap_or(code);
                p
            })
            .collect();
        r.topics.push(t);
    }
    r
}

fn fetch_group(
    b: &KafkaBroker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> FetchedOffsets {
    b.groups.fetch(group, topics)
}

pub fn offset_fetch(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut r = OffsetFetchResponse::default();
    // KIP-447: offsets an open transaction will commit are not answered to a consumer
    // that asks for stable ones (UNSTABLE_OFFSET_COMMIT, which it retries).
    let pending = |group: &str| {
        if req.require_stable {
            b.txns.pending_offsets(group)
        } else {
            Default::default()
        }
    };
    // Topics the principal may not describe are left out of the answer.
    let visible = |name: &str| authz.describes(Resource::Topic(name));
    if version >= 8 {
        for g in req.groups {
            if !authz.describes(Resource::Group(&g.group_id)) {
                let mut out = OffsetFetchResponseGroup::default();
                out.group_id = g.group_id.clone();
                out.error_code = codes::GROUP_AUTHORIZATION_FAILED;
                r.groups.push(out);
                continue;
            }
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut out = OffsetFetchResponseGroup::default();
            out.group_id = g.group_id.clone();
            let group = g.group_id.0.as_str();
            let pending = pending(group);
            out.topics = fetch_group(b, group, wanted)
                .into_iter()
                .filter(|(name, _)| visible(name))
                .map(|(name, parts)| {
                    let mut t = OffsetFetchResponseTopics::default();
                    t.name = TopicName(str(name.clone()));
                    t.partitions = parts
                        .into_iter()
                        .map(|(index, c)| {
                            let mut p = OffsetFetchResponsePartitions::default();
                            p.partition_index = index;
                            if pending.contains(&(name.clone(), index)) {
                                p.error_code = codes::UNSTABLE_OFFSET_COMMIT;
                                p.committed_offset = -1;
                                p.committed_leader_epoch = -1;
                                return p;
                            }
                            p.committed_offset = c.as_ref().map_or(-1, |c| c.offset);
                            p.committed_leader_epoch = c.as_ref().map_or(-1, |c| c.leader_epoch);
                            p.metadata = Some(str(c.and_then(|c| c.metadata).unwrap_or_default()));
                            p
                        })
                        .collect();
                    t
                })
                .collect();
            r.groups.push(out);
        }
        return r;
    }
    if !authz.describes(Resource::Group(&req.group_id)) {
        r.error_code = codes::GROUP_AUTHORIZATION_FAILED;
        return r;
    }
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let pending = pending(req.group_id.0.as_str());
    r.topics = fetch_group(b, req.group_id.0.as_str(), wanted)
        .into_iter()
        .filter(|(name, _)| visible(name))
        .map(|(name, parts)| {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = TopicName(str(name.clone()));
            t.partitions = parts
                .into_iter()
                .map(|(index, c)| {
                    let mut p = OffsetFetchResponsePartition::default();
                    p.partition_index = index;
                    if pending.contains(&(name.clone(), index)) {
                        p.error_code = codes::UNSTABLE_OFFSET_COMMIT;
                        p.committed_offset = -1;
                        p.committed_leader_epoch = -1;
                        return p;
                    }
                    p.committed_offset = c.as_ref().map_or(-1, |c| c.offset);
                    p.committed_leader_epoch = c.as_ref().map_or(-1, |c| c.leader_epoch);
                    p.metadata = Some(str(c.and_then(|c| c.metadata).unwrap_or_default()));
                    p
                })
                .collect();
            t
        })
        .collect();
    r
}

pub fn describe_groups(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut r = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut g = DescribedGroup::default();
        if !authz.describes(Resource::Group(&id)) {
            g.error_code = codes::GROUP_AUTHORIZATION_FAILED;
            g.group_id = id;
            r.groups.push(g);
            continue;
        }
        match b.groups.describe(id.0.as_str()) {
            Some(d) => {
                g.group_state = str(d.state);
                g.protocol_type = str(d.protocol_type);
                g.protocol_data = str(d.protocol);
                g.members = d
                    .members
                    .into_iter()
                    .map(|(mid, inst, client_id, host, metadata, assignment)| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = str(mid);
                        m.group_instance_id = inst.map(str);
                        m.client_id = str(client_id);
                        m.client_host = str(host);
                        m.member_metadata = metadata;
                        m.member_assignment = assignment;
                        m
                    })
                    .collect();
            }
            // Kafka describes an unknown group as Dead, without an error.
            None => g.group_state = str("Dead"),
        }
        g.group_id = id;
        r.groups.push(g);
    }
    r
}

pub fn list_groups(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: ListGroupsRequest,
) -> ListGroupsResponse {
    let mut r = ListGroupsResponse::default();
    r.groups = b
        .groups
        .list()
        .into_iter()
        .filter(|(id, _, _)| authz.describes(Resource::Group(id)))
        .filter(|(_, _, state)| {
            req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|f| f.as_str().eq_ignore_ascii_case(state))
        })
        .map(|(id, protocol_type, state)| {
            let mut g = ListedGroup::default();
            g.group_id = GroupId(str(id));
            g.protocol_type = str(protocol_type);
            g.group_state = str(state);
            g.group_type = str("classic");
            g
        })
        .collect();
    r
}

pub async fn delete_groups(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut r = DeleteGroupsResponse::default();
    for id in req.groups_names {
        let mut g = DeletableGroupResult::default();
        g.error_code = if authz.allows(Operation::Delete, Resource::Group(&id)) {
            b.groups.delete(id.0.as_str()).await
        } else {
            codes::GROUP_AUTHORIZATION_FAILED
        };
        g.group_id = id;
        r.results.push(g);
    }
    r
}
