//! AMQP connections, their channels and the consumers of queues, as RabbitMQ's API
//! lists them; an operator can close a connection.

use super::*;
use sluice_amqp::broker::{ChannelInfo, ConnectionInfo};

fn connection_json(admin: &Admin, c: &ConnectionInfo, channels: usize) -> Value {
    let props = table_json(&c.client_properties);
    let provided = props.get("connection_name").cloned().unwrap_or(Value::Null);
    json!({
        "name": c.name,
        "node": admin.node,
        "type": "network",
        "state": "running",
        "protocol": "AMQP 0-9-1",
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "auth_mechanism": c.auth_mechanism,
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "ssl": c.tls,
        "channels": channels,
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat_s,
        "connected_at": c.connected_at_ms,
        "client_properties": props,
        "user_provided_name": provided,
    })
}

fn channel_json(admin: &Admin, c: &ConnectionInfo, ch: &ChannelInfo) -> Value {
    json!({
        "name": format!("{} ({})", c.name, ch.number),
        "number": ch.number,
        "node": admin.node,
        "state": "running",
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "connection_details": {"name": c.name, "peer_host": c.peer.ip().to_string(), "peer_port": c.peer.port()},
        "consumer_count": ch.consumers,
        "prefetch_count": ch.prefetch,
        "global_prefetch_count": 0,
        "confirm": ch.confirm,
        "transactional": ch.transactional,
        "messages_unacknowledged": ch.unacked,
        "messages_unconfirmed": ch.unconfirmed,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
    })
}

/// The connections in `vhost` (all with `None`), each with its channels.
async fn described(
    admin: &Admin,
    vhost: Option<&str>,
) -> Vec<(Arc<ConnectionInfo>, Vec<ChannelInfo>)> {
    let mut out = Vec::new();
    for c in admin.broker.connections.list() {
        if vhost.is_some_and(|v| v != c.vhost) {
            continue;
        }
        // A connection that does not answer (closing, stuck) is listed without channels.
        let channels = c.channels().await.unwrap_or_default();
        out.push((c, channels));
    }
    out
}

pub(super) async fn connections(
    State(admin): State<Arc<Admin>>,
    _: User,
    vhost_name: Option<Path<String>>,
    Query(params): Query<Params>,
) -> Response {
    if let Some(Path(name)) = &vhost_name {
        or_return!(vhost(&admin, name));
    }
    let vhost = vhost_name.as_ref().map(|Path(n)| n.as_str());
    let items = described(&admin, vhost)
        .await
        .iter()
        .map(|(c, chs)| connection_json(&admin, c, chs.len()))
        .collect();
    listing::respond(items, &params, true)
}

fn find(admin: &Admin, name: &str) -> Option<Arc<ConnectionInfo>> {
    admin
        .broker
        .connections
        .list()
        .into_iter()
        .find(|c| c.name == name)
}

pub(super) async fn one_connection(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    let Some(c) = find(&admin, &name) else {
        return not_found();
    };
    let channels = c.channels().await.unwrap_or_default().len();
    axum::Json(connection_json(&admin, &c, channels)).into_response()
}

/// Closes a connection: the client gets `CONNECTION_FORCED - <X-Reason>`.
pub(super) async fn close_connection(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(c) = find(&admin, &name) else {
        return not_found();
    };
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    c.close(reason);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn connection_channels(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    let Some(c) = find(&admin, &name) else {
        return not_found();
    };
    let channels = c.channels().await.unwrap_or_default();
    let items: Vec<Value> = channels
        .iter()
        .map(|ch| channel_json(&admin, &c, ch))
        .collect();
    axum::Json(Value::Array(items)).into_response()
}

async fn channel_items(admin: &Admin, vhost: Option<&str>) -> Vec<Value> {
    described(admin, vhost)
        .await
        .iter()
        .flat_map(|(c, chs)| chs.iter().map(|ch| channel_json(admin, c, ch)))
        .collect()
}

pub(super) async fn channels(
    State(admin): State<Arc<Admin>>,
    _: User,
    vhost_name: Option<Path<String>>,
    Query(params): Query<Params>,
) -> Response {
    if let Some(Path(name)) = &vhost_name {
        or_return!(vhost(&admin, name));
    }
    let vhost = vhost_name.as_ref().map(|Path(n)| n.as_str());
    listing::respond(channel_items(&admin, vhost).await, &params, true)
}

pub(super) async fn one_channel(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    channel_items(&admin, None)
        .await
        .into_iter()
        .find(|c| c["name"] == name.as_str())
        .map_or_else(not_found, |mut c| {
            extend(
                &mut c,
                [
                    ("consumer_details", json!([])),
                    ("deliveries", json!([])),
                    ("publishes", json!([])),
                ],
            );
            axum::Json(c).into_response()
        })
}

/// Every consumer of the queues of `v`.
pub(super) fn consumer_items(_: &Admin, v: &VHost) -> Vec<Value> {
    let mut out = Vec::new();
    for q in v.client_queues() {
        for c in q.stats().consumer_list {
            out.push(json!({
                "consumer_tag": &*c.tag,
                "queue": {"name": &*q.name, "vhost": v.name},
                "ack_required": c.ack_required,
                "prefetch_count": c.prefetch,
                "exclusive": c.exclusive,
                "active": c.active,
                "activity_status": if c.active { "up" } else { "waiting" },
                "arguments": {},
            }));
        }
    }
    out
}
