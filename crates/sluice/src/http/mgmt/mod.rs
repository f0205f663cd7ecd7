//! RabbitMQ's management HTTP API, the part tools use (`rabbitmqadmin`, `pyrabbit2`,
//! monitoring): the same paths, JSON shapes and status codes as RabbitMQ 3.10.8,
//! validated against it (`tests/compat/mgmt`). Objects are the AMQP face's: virtual
//! hosts, exchanges, queues, bindings, users and permissions.

// Handlers answer refusals as ready responses: the error side is a whole `Response`.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sluice_amqp::broker::{QueueCell, VHost};
use sluice_amqp::error::AmqpError;
use sluice_amqp::manage;
use sluice_engine::routing::{Binding, Destination};

use super::listing::{self, Params};
use super::{Admin, User, error};

/// The value of a `Result` whose error is a ready response, or that response returned.
macro_rules! or_return {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

mod connections;
mod exchanges;
mod objects;
mod queues;
mod users;

use connections::*;
use exchanges::*;
use objects::*;
use queues::*;
use users::*;

/// The management API version whose shapes these are.
const MANAGEMENT_VERSION: &str = "3.10.8";

pub fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/overview", get(overview))
        .route("/api/cluster-name", get(cluster_name))
        .route(
            "/api/extensions",
            get(|_: User| async { axum::Json(json!([])) }),
        )
        .route("/api/vhosts", get(vhosts))
        .route("/api/vhosts/{vhost}", get(one_vhost))
        .route("/api/users", get(users))
        .route(
            "/api/users/{user}",
            get(one_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(one_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(one_node))
        .route("/api/connections", get(connections))
        .route("/api/vhosts/{vhost}/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(one_connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/channels", get(channels))
        .route("/api/vhosts/{vhost}/channels", get(channels))
        .route("/api/channels/{name}", get(one_channel))
        .route("/api/consumers", get(list(consumer_items, false)))
        .route("/api/consumers/{vhost}", get(list(consumer_items, false)))
        .route("/api/exchanges", get(list(|_, v| exchange_items(v), true)))
        .route(
            "/api/exchanges/{vhost}",
            get(list(|_, v| exchange_items(v), true)),
        )
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(one_exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route("/api/bindings", get(list(|_, v| binding_items(v), false)))
        .route(
            "/api/bindings/{vhost}",
            get(list(|_, v| binding_items(v), false)),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(pair_bindings).post(add_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(one_binding).delete(delete_binding),
        )
        .route("/api/queues", get(list(queue_items, true)))
        .route("/api/queues/{vhost}", get(list(queue_items, true)))
        .route(
            "/api/queues/{vhost}/{name}",
            get(one_queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge),
        )
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route(
            "/api/definitions",
            get(definitions).post(import_definitions),
        )
        .route(
            "/api/definitions/{vhost}",
            get(vhost_definitions).post(import_definitions),
        )
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route("/api/health/checks/virtual-hosts", get(ok_check))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
}

/// What a PUT of a queue or exchange starts with: its vhost (404 `vhost_not_found`),
/// its body as an object, no reserved name (`amq.*`) and the configure permission.
fn declaring(
    admin: &Admin,
    user: &User,
    vhost_name: &str,
    kind: &str,
    name: &str,
    body: &Bytes,
) -> Result<(Arc<VHost>, Map<String, Value>), Response> {
    let Some(v) = admin.broker.vhost(vhost_name) else {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    };
    let body = object(body)?;
    if name.is_empty() || name.starts_with("amq.") {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.",
        ));
    }
    allow(
        admin,
        user,
        &v.name,
        sluice_amqp::auth::Access::Configure,
        kind,
        name,
    )?;
    Ok((v, body))
}

/// A handler listing the objects `items_of` gives for every virtual host, or for the
/// one the path names; `pageable` as `listing::respond` takes it.
// The handler's type is spelled out for axum; an alias would not make it simpler.
#[allow(clippy::type_complexity)]
fn list(
    items_of: fn(&Admin, &VHost) -> Vec<Value>,
    pageable: bool,
) -> impl Fn(
    State<Arc<Admin>>,
    User,
    Option<Path<String>>,
    Query<Params>,
) -> std::future::Ready<Response>
+ Clone
+ Send
+ 'static {
    move |State(admin): State<Arc<Admin>>,
          _: User,
          vhost_name: Option<Path<String>>,
          Query(params): Query<Params>| {
        let vhosts = match vhost_name {
            Some(Path(name)) => match vhost(&admin, &name) {
                Ok(v) => vec![v],
                Err(r) => return std::future::ready(r),
            },
            None => admin.broker.vhosts(),
        };
        let items = vhosts.iter().flat_map(|v| items_of(&admin, v)).collect();
        std::future::ready(listing::respond(items, &params, pageable))
    }
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

fn bad_request(reason: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// An AMQP refusal as the management API answers it: not found is 404, access refused
/// 401 "Access refused.", anything else 400 with RabbitMQ's text (without the AMQP
/// code prefix, as the API shows it).
fn refused(e: &AmqpError) -> Response {
    let text = e.text();
    match e.code() {
        404 => error(
            StatusCode::NOT_FOUND,
            "not_found",
            text.strip_prefix("NOT_FOUND - ").unwrap_or(text),
        ),
        403 => error(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.",
        ),
        _ => {
            let text = text
                .split_once(" - ")
                .filter(|(code, _)| code.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                .map_or(text, |(_, rest)| rest);
            bad_request(text)
        }
    }
}

fn created(made: bool) -> Response {
    if made {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// The request body as a JSON object: empty is `{}`, anything else not an object is
/// RabbitMQ's 400 `not_json`.
fn object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad_request("not_json")),
    }
}

/// A boolean field: JSON booleans and "true"/"false" (rabbitmqadmin sends strings).
fn flag(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(error_json(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "reason": ["not_boolean", other]}),
        )),
    }
}

fn error_json(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The `arguments` field: an object, or `[]` (pyrabbit2) for none.
fn arguments(body: &Map<String, Value>) -> sluice_core::Table {
    match body.get("arguments") {
        Some(Value::Object(o)) => manage::table_from_json(o),
        _ => sluice_core::Table::default(),
    }
}

fn table_json(table: &sluice_core::Table) -> Value {
    manage::table_json(&sluice_amqp::props::table_to_amqp(table))
}

fn vhost(admin: &Admin, name: &str) -> Result<Arc<VHost>, Response> {
    admin.broker.vhost(name).ok_or_else(not_found)
}

/// The user's permission check in `vhost` (unrestricted users pass).
fn allow(
    admin: &Admin,
    user: &User,
    vhost: &str,
    access: sluice_amqp::auth::Access,
    kind: &str,
    name: &str,
) -> Result<(), Response> {
    match admin.broker.users.vhost_access(&user.0, vhost) {
        Ok(None) => Ok(()),
        Ok(Some(p)) => p.check(access, kind, name).map_err(|e| refused(&e)),
        Err(_) => Err(error(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.",
        )),
    }
}

/// Runs blocking work (queue storage, fsyncs) off the async workers.
async fn blocking(job: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(job).await.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })
}

/// Adds fields to a JSON object.
fn extend<const N: usize>(object: &mut Value, fields: [(&str, Value); N]) {
    if let Value::Object(m) = object {
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
    }
}

fn rate() -> Value {
    json!({"rate": 0.0})
}
