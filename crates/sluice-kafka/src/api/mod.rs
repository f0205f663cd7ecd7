//! Request dispatch: one module per API family. Each handler takes the decoded request
//! and returns the response struct; this module owns headers, versions and framing.

mod admin;
pub mod fetch;
mod group;
mod list_offsets;
mod metadata;
mod produce;
pub mod security;
mod txn;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::broker::KafkaBroker;
use crate::codes;
use crate::connection::{Client, Close};
use crate::security::{Authz, Operation, OwnedAuthz, Resource};

/// The versions this broker speaks, as one Kafka 3.x broker would advertise them.
/// Produce and Fetch start at 0 because librdkafka enables compression and message format
/// features by checking for old versions in these ranges; requests below the codec's own
/// minimum (Produce 3, Fetch 4) close the connection, and no current client sends them.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 0, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
];

fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

pub fn str(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, Close> {
    T::decode(body, version).map_err(|e| Close::Protocol(format!("undecodable request: {e}")))
}

/// Appends one framed response: size, header, body.
fn encode<T: Encodable + HeaderVersion>(
    out: &mut BytesMut,
    correlation_id: i32,
    version: i16,
    header_version: i16,
    body: &T,
) -> Result<(), Close> {
    let start = out.len();
    out.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(out, header_version)
        .and_then(|_| body.encode(out, version))
        .map_err(|e| Close::Protocol(format!("response not encodable: {e}")))?;
    let len = (out.len() - start - 4) as i32;
    if let Some(size) = out.get_mut(start..start + 4) {
        size.copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

fn api_versions(error: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error;
    r.api_keys = SUPPORTED
        .iter()
        .map(|(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *min;
            v.max_version = *max;
            v
        })
        .collect();
    r
}

/// Handles one request frame (header and body) and appends its response, if any, to
/// `out`; a response with record data (Fetch) comes back instead as chunks to send after
/// `out`.
/// Runs an admin handler on a blocking thread: topic creation, deletion and config
/// changes create, rename, delete and fsync files, which must not stall a worker thread
/// that serves other connections.
async fn off_worker<T: Send + 'static>(
    b: &Arc<KafkaBroker>,
    f: impl FnOnce(&Arc<KafkaBroker>) -> T + Send + 'static,
) -> Result<T, Close> {
    let b = Arc::clone(b);
    tokio::task::spawn_blocking(move || f(&b))
        .await
        .map_err(|e| Close::Protocol(format!("admin request failed: {e}")))
}

/// Appends a refusal built whole by the caller.
fn encode_denied<T: Encodable + HeaderVersion>(
    out: &mut BytesMut,
    cid: i32,
    version: i16,
    r: T,
) -> Result<Option<Vec<fetch::Chunk>>, Close> {
    encode(out, cid, version, T::header_version(version), &r).map(|_| None)
}

pub async fn handle(
    broker: &Arc<KafkaBroker>,
    client: &mut Client,
    key: ApiKey,
    version: i16,
    frame: &mut Bytes,
    out: &mut BytesMut,
) -> Result<Option<Vec<fetch::Chunk>>, Close> {
    let Some((min, max)) = supported(key) else {
        return Err(Close::Protocol(format!("api {key:?} not supported")));
    };
    let header_version = key.request_header_version(version);
    if key == ApiKey::ApiVersions && version > max {
        // KIP-511: answer in v0 with the error and our ranges, so the client can retry.
        let header = RequestHeader::decode(frame, 1)
            .map_err(|e| Close::Protocol(format!("undecodable header: {e}")))?;
        return encode(
            out,
            header.correlation_id,
            0,
            0,
            &api_versions(codes::UNSUPPORTED_VERSION),
        )
        .map(|_| None);
    }
    if version < min || version > max {
        return Err(Close::Protocol(format!(
            "{key:?} v{version} not supported ({min}..={max})"
        )));
    }
    let header = RequestHeader::decode(frame, header_version)
        .map_err(|e| Close::Protocol(format!("undecodable header: {e}")))?;
    if let Some(id) = &header.client_id
        && client.client_id.as_str() != id.as_str()
    {
        client.client_id = id.to_string();
    }
    let cid = header.correlation_id;
    macro_rules! respond {
        ($resp:ty, $value:expr) => {{
            let value: $resp = $value;
            encode(
                out,
                cid,
                version,
                <$resp as HeaderVersion>::header_version(version),
                &value,
            )
        }};
    }
    let b = broker;
    let authz = Authz::new(&*b.security, &client.sasl);
    // The group APIs with one error for the whole request are refused here.
    let group_denied = |group: &str| !authz.allows(Operation::Read, Resource::Group(group));
    let encoded = match key {
        ApiKey::SaslHandshake => {
            let req = decode(frame, version)?;
            let resp = security::handshake(b, client, req);
            // After v0, the tokens come as bare size-prefixed frames (no Kafka header).
            client.raw_tokens = version == 0 && resp.error_code == codes::NONE;
            respond!(SaslHandshakeResponse, resp)
        }
        ApiKey::SaslAuthenticate => {
            let req = decode(frame, version)?;
            respond!(
                SaslAuthenticateResponse,
                security::authenticate(b, client, req, version)
            )
        }
        ApiKey::DescribeUserScramCredentials => {
            let req = decode(frame, version)?;
            respond!(
                DescribeUserScramCredentialsResponse,
                security::describe_scram(b, authz, req)
            )
        }
        ApiKey::AlterUserScramCredentials => {
            let req = decode(frame, version)?;
            let resp = security::alter_scram(b, authz, req);
            respond!(AlterUserScramCredentialsResponse, resp)
        }
        ApiKey::DescribeAcls => {
            let req = decode(frame, version)?;
            respond!(DescribeAclsResponse, security::describe_acls(b, authz, req))
        }
        ApiKey::CreateAcls => {
            let req = decode(frame, version)?;
            respond!(CreateAclsResponse, security::create_acls(b, authz, req))
        }
        ApiKey::DeleteAcls => {
            let req = decode(frame, version)?;
            respond!(DeleteAclsResponse, security::delete_acls(b, authz, req))
        }
        ApiKey::ApiVersions => {
            let _req: ApiVersionsRequest = decode(frame, version)?;
            // The ApiVersions response header is always v0.
            encode(out, cid, version, 0, &api_versions(codes::NONE))
        }
        ApiKey::Metadata => {
            let req: MetadataRequest = decode(frame, version)?;
            if metadata::may_create(b, &req, version) {
                // Creating a topic makes directories and fsyncs its metadata.
                let owned = OwnedAuthz::new(&b.security, authz);
                let resp = off_worker(b, move |b| metadata::metadata(b, owned.get(), req, version))
                    .await?;
                respond!(MetadataResponse, resp)
            } else {
                respond!(MetadataResponse, metadata::metadata(b, authz, req, version))
            }
        }
        ApiKey::Produce => {
            let req: ProduceRequest = decode(frame, version)?;
            match produce::produce(b, authz, req, version).await {
                Some(resp) => respond!(ProduceResponse, resp),
                // acks=0: no response at all.
                None => Ok(()),
            }
        }
        ApiKey::Fetch => {
            let req = decode(frame, version)?;
            let answer = fetch::fetch(b, authz, req).await;
            return Ok(Some(fetch::encode(answer, cid, version)));
        }
        ApiKey::ListOffsets => {
            let req = decode(frame, version)?;
            respond!(
                ListOffsetsResponse,
                list_offsets::list_offsets(b, authz, req)
            )
        }
        ApiKey::InitProducerId => {
            let req: InitProducerIdRequest = decode(frame, version)?;
            match req.transactional_id.as_ref() {
                Some(id) => {
                    let id = id.0.to_string();
                    respond!(
                        InitProducerIdResponse,
                        txn::init_producer_id(b, authz, &id, &req, version).await
                    )
                }
                None => respond!(
                    InitProducerIdResponse,
                    produce::init_producer_id(b, req).await
                ),
            }
        }
        ApiKey::AddPartitionsToTxn => {
            let req = decode(frame, version)?;
            respond!(
                AddPartitionsToTxnResponse,
                txn::add_partitions(b, authz, req, version).await
            )
        }
        ApiKey::AddOffsetsToTxn => {
            let req = decode(frame, version)?;
            respond!(
                AddOffsetsToTxnResponse,
                txn::add_offsets(b, authz, req, version).await
            )
        }
        ApiKey::TxnOffsetCommit => {
            let req = decode(frame, version)?;
            respond!(
                TxnOffsetCommitResponse,
                txn::txn_offset_commit(b, authz, req).await
            )
        }
        ApiKey::EndTxn => {
            let req = decode(frame, version)?;
            respond!(EndTxnResponse, txn::end_txn(b, authz, req, version).await)
        }
        ApiKey::DescribeTransactions => {
            let req = decode(frame, version)?;
            respond!(
                DescribeTransactionsResponse,
                txn::describe_transactions(b, authz, req)
            )
        }
        ApiKey::ListTransactions => {
            let req = decode(frame, version)?;
            respond!(
                ListTransactionsResponse,
                txn::list_transactions(b, authz, req)
            )
        }
        ApiKey::FindCoordinator => {
            let req = decode(frame, version)?;
            respond!(
                FindCoordinatorResponse,
                group::find_coordinator(b, req, version)
            )
        }
        ApiKey::JoinGroup => {
            let req: JoinGroupRequest = decode(frame, version)?;
            if group_denied(&req.group_id) {
                let mut r = JoinGroupResponse::default();
                r.error_code = codes::GROUP_AUTHORIZATION_FAILED;
                r.generation_id = -1;
                return encode_denied(out, cid, version, r);
            }
            respond!(
                JoinGroupResponse,
                group::join(b, client, req, version).await
            )
        }
        ApiKey::SyncGroup => {
            let req: SyncGroupRequest = decode(frame, version)?;
            if group_denied(&req.group_id) {
                let mut r = SyncGroupResponse::default();
                r.error_code = codes::GROUP_AUTHORIZATION_FAILED;
                return encode_denied(out, cid, version, r);
            }
            respond!(SyncGroupResponse, group::sync(b, req).await)
        }
        ApiKey::Heartbeat => {
            let req: HeartbeatRequest = decode(frame, version)?;
            if group_denied(&req.group_id) {
                let mut r = HeartbeatResponse::default();
                r.error_code = codes::GROUP_AUTHORIZATION_FAILED;
                return encode_denied(out, cid, version, r);
            }
            respond!(HeartbeatResponse, group::heartbeat(b, req))
        }
        ApiKey::LeaveGroup => {
            let req: LeaveGroupRequest = decode(frame, version)?;
            if group_denied(&req.group_id) {
                let mut r = LeaveGroupResponse::default();
                r.error_code = codes::GROUP_AUTHORIZATION_FAILED;
                return encode_denied(out, cid, version, r);
            }
            respond!(LeaveGroupResponse, group::leave(b, req, version))
        }
        ApiKey::OffsetCommit => {
            let req = decode(frame, version)?;
            respond!(
                OffsetCommitResponse,
                group::offset_commit(b, authz, req).await
            )
        }
        ApiKey::OffsetFetch => {
            let req = decode(frame, version)?;
            respond!(
                OffsetFetchResponse,
                group::offset_fetch(b, authz, req, version)
            )
        }
        ApiKey::DescribeGroups => {
            let req = decode(frame, version)?;
            respond!(
                DescribeGroupsResponse,
                group::describe_groups(b, authz, req)
            )
        }
        ApiKey::ListGroups => {
            let req = decode(frame, version)?;
            respond!(ListGroupsResponse, group::list_groups(b, authz, req))
        }
        ApiKey::DeleteGroups => {
            let req = decode(frame, version)?;
            respond!(
                DeleteGroupsResponse,
                group::delete_groups(b, authz, req).await
            )
        }
        ApiKey::CreateTopics => {
            let req: CreateTopicsRequest = decode(frame, version)?;
            let denied = req
                .topics
                .iter()
                .map(|t| !authz.allows(Operation::Create, Resource::Topic(&t.name)))
                .collect();
            let resp = off_worker(b, move |b| admin::create_topics(b, req, denied)).await?;
            respond!(CreateTopicsResponse, resp)
        }
        ApiKey::DeleteTopics => {
            let req = decode(frame, version)?;
            respond!(
                DeleteTopicsResponse,
                admin::delete_topics(b, authz, req, version).await
            )
        }
        ApiKey::CreatePartitions => {
            let req: CreatePartitionsRequest = decode(frame, version)?;
            let denied = req
                .topics
                .iter()
                .map(|t| !authz.allows(Operation::Alter, Resource::Topic(&t.name)))
                .collect();
            let resp = off_worker(b, move |b| admin::create_partitions(b, req, denied)).await?;
            respond!(CreatePartitionsResponse, resp)
        }
        ApiKey::DescribeConfigs => {
            let req = decode(frame, version)?;
            respond!(
                DescribeConfigsResponse,
                admin::describe_configs(b, authz, req)
            )
        }
        ApiKey::AlterConfigs => {
            let req: AlterConfigsRequest = decode(frame, version)?;
            let denied = req
                .resources
                .iter()
                .map(|r| {
                    !authz.allows(
                        Operation::AlterConfigs,
                        admin::config_resource(r.resource_type, &r.resource_name),
                    )
                })
                .collect();
            let resp = off_worker(b, move |b| admin::alter_configs(b, req, denied)).await?;
            respond!(AlterConfigsResponse, resp)
        }
        ApiKey::IncrementalAlterConfigs => {
            let req: IncrementalAlterConfigsRequest = decode(frame, version)?;
            let denied = req
                .resources
                .iter()
                .map(|r| {
                    !authz.allows(
                        Operation::AlterConfigs,
                        admin::config_resource(r.resource_type, &r.resource_name),
                    )
                })
                .collect();
            let resp =
                off_worker(b, move |b| admin::incremental_alter_configs(b, req, denied)).await?;
            respond!(IncrementalAlterConfigsResponse, resp)
        }
        ApiKey::OffsetForLeaderEpoch => {
            let req = decode(frame, version)?;
            respond!(
                OffsetForLeaderEpochResponse,
                list_offsets::offset_for_leader_epoch(b, authz, req)
            )
        }
        ApiKey::DeleteRecords => {
            let req: DeleteRecordsRequest = decode(frame, version)?;
            let denied = req
                .topics
                .iter()
                .map(|t| !authz.allows(Operation::Delete, Resource::Topic(&t.name)))
                .collect();
            let resp = off_worker(b, move |b| admin::delete_records(b, req, denied)).await?;
            respond!(DeleteRecordsResponse, resp)
        }
        ApiKey::DescribeCluster => {
            let req = decode(frame, version)?;
            respond!(DescribeClusterResponse, admin::describe_cluster(b, req))
        }
        other => Err(Close::Protocol(format!("api {other:?} not supported"))),
    };
    encoded.map(|_| None)
}
