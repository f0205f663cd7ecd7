//! The admin HTTP listener (`http.listen`, default 127.0.0.1:15672, RabbitMQ's management
//! port): the web dashboard (`/`, `ui/index.html`), Prometheus metrics (`metrics`),
//! RabbitMQ's management API (`mgmt`) and Sluice's own endpoints for what no client
//! protocol can do, creating RocketMQ topics with a message type and configuring RocketMQ
//! consumer groups (`sluice admin` calls them). Every request needs HTTP basic auth with a
//! broker user (`guest` only from loopback, as for AMQP); errors are JSON
//! `{"error": ..., "reason": ...}` as RabbitMQ's management API writes them.
//!
//! - `PUT /api/sluice/rocketmq/topics/{name}` `{"queues": 8, "message_type": "fifo"}`:
//!   201 when created, 204 when it exists.
//! - `PUT /api/sluice/rocketmq/groups/{name}` `{"fifo": true, "retry_max_times": 3}`:
//!   204.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::listen::AdmittingListener;
use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use serde::Deserialize;
use sluice_amqp::Broker;
use sluice_rocketmq::RocketBroker;
use sluice_rocketmq::groups::GroupConfig;

/// Queues of a topic created without a count (RocketMQ's default).
const DEFAULT_QUEUES: u32 = 8;

mod engine;
mod listing;
mod metrics;
mod mgmt;
mod rates;

pub struct Admin {
    pub broker: Arc<Broker>,
    pub kafka: Arc<sluice_kafka::KafkaBroker>,
    pub rocketmq: Arc<RocketBroker>,
    pub admission: Arc<sluice_core::admission::Admission>,
    /// The listeners, by protocol as RabbitMQ names them (`amqp`, `http`, ...).
    pub listeners: Vec<(&'static str, SocketAddr)>,
    /// The node's name in the API (RabbitMQ's `rabbit@host`).
    pub node: String,
    pub started: std::time::Instant,
    pub data_dir: std::path::PathBuf,
    pub rates: rates::Rates,
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: AdmittingListener, admin: Arc<Admin>) -> std::io::Result<()> {
    let sampled = Arc::clone(&admin);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(rates::SAMPLE_EVERY);
        loop {
            every.tick().await;
            sampled.rates.sample(&sampled.broker.stats);
        }
    });
    let api = Router::new()
        .route("/api/sluice/rocketmq/topics/{name}", put(create_topic))
        .route("/api/sluice/rocketmq/groups/{name}", put(configure_group))
        .merge(mgmt::routes())
        .route("/api/sluice/topics", get(engine::topics))
        .route("/api/sluice/topics/{name}", get(engine::one_topic))
        .route("/api/sluice/kafka/groups", get(engine::kafka_groups))
        .route("/api/sluice/kafka/groups/{group}", get(engine::kafka_group))
        .route(
            "/api/sluice/rocketmq/subscriptions",
            get(engine::rocketmq_subscriptions),
        )
        .route("/api/sluice/rocketmq/held", get(engine::rocketmq_held))
        .route("/api/sluice/amqp/delayed", get(engine::amqp_delayed))
        .route("/", get(dashboard))
        .route("/index.html", get(dashboard))
        .route("/metrics", get(metrics::aggregated))
        .route("/metrics/per-object", get(metrics::per_object))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found") })
        .with_state(admin);
    // A trailing slash names the same resource, as in RabbitMQ's API; the path is
    // rewritten before the routes see it.
    let app = Router::new()
        .fallback_service(api)
        .layer(axum::middleware::map_request(strip_trailing_slash));
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
}

async fn strip_trailing_slash(mut request: axum::extract::Request) -> axum::extract::Request {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let rebuilt = match request.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = rebuilt.parse() {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// The web dashboard: one page of our own (no build step, no outside resources) that
/// reads the API above; the browser's basic-auth login covers both.
const DASHBOARD: &str = include_str!("ui/index.html");

async fn dashboard(_: User) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// Tags that let a user use the API (RabbitMQ's management user tags).
const MANAGEMENT_TAGS: [&str; 4] = ["administrator", "monitoring", "policymaker", "management"];

/// An authenticated API user (HTTP basic auth against the broker's users). Without
/// credentials the answer is RabbitMQ's empty 401 with a challenge; with wrong ones its
/// JSON `not_authorized`.
pub struct User(pub String);

impl axum::extract::FromRequestParts<Arc<Admin>> for User {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        admin: &Arc<Admin>,
    ) -> Result<Self, Response> {
        let peer = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0.0);
        let Some(encoded) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            let mut r = StatusCode::UNAUTHORIZED.into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
            return Err(r);
        };
        let credentials = encoded
            .strip_prefix("Basic ")
            .and_then(|e| {
                base64::engine::general_purpose::STANDARD
                    .decode(e.trim())
                    .ok()
            })
            .and_then(|d| String::from_utf8(d).ok());
        if let (Some(text), Some(peer)) = (credentials, peer)
            && let Some((user, password)) = text.split_once(':')
            && admin.broker.users.login_from(
                sluice_core::login_guard::Face::Http,
                user,
                password,
                peer.ip(),
            )
        {
            // As RabbitMQ: the API is for users tagged for it.
            let allowed = admin.broker.users.describe(user).is_some_and(|(tags, _)| {
                tags.iter().any(|t| MANAGEMENT_TAGS.contains(&t.as_str()))
            });
            if !allowed {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "not_authorised",
                    "Not management user",
                ));
            }
            return Ok(User(user.to_string()));
        }
        Err(unauthorized())
    }
}

/// The client's address, for handlers (guest logs in from loopback only).
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdmittingListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdmittingListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

fn error(status: StatusCode, error: &str, reason: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": error, "reason": reason.into() });
    (status, Json(body)).into_response()
}

/// 401 with the challenge browsers and tools answer with credentials.
fn unauthorized() -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    r
}

/// Whether the request's basic-auth credentials are a broker user's.
fn authorized(admin: &Admin, headers: &HeaderMap, peer: SocketAddr) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    text.split_once(':').is_some_and(|(user, password)| {
        admin.broker.users.login_from(
            sluice_core::login_guard::Face::Http,
            user,
            password,
            peer.ip(),
        )
    })
}

/// Runs a change (file work) off the async workers; its error is the client's fault.
async fn blocking(job: impl FnOnce() -> Result<StatusCode, String> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(job).await {
        Ok(Ok(status)) => status.into_response(),
        Ok(Err(reason)) => error(StatusCode::BAD_REQUEST, "bad_request", reason),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicBody {
    queues: Option<u32>,
    message_type: Option<String>,
}

async fn create_topic(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Option<Json<TopicBody>>,
) -> Response {
    if !authorized(&admin, &headers, peer) {
        return unauthorized();
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let queues = i32::try_from(body.queues.unwrap_or(DEFAULT_QUEUES)).unwrap_or(i32::MAX);
    let kind = body.message_type.unwrap_or_else(|| "MIXED".to_string());
    let rocketmq = Arc::clone(&admin.rocketmq);
    blocking(move || {
        let created = rocketmq.create_topic(&name, queues, &kind)?;
        Ok(if created {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        })
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    #[serde(default)]
    fifo: bool,
    retry_max_times: Option<u32>,
}

async fn configure_group(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Option<Json<GroupBody>>,
) -> Response {
    if !authorized(&admin, &headers, peer) {
        return unauthorized();
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    if body.retry_max_times.is_some_and(|r| r > 1_000) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "retry_max_times must be at most 1000",
        );
    }
    let config = GroupConfig {
        fifo: body.fifo,
        retry_max_times: body.retry_max_times,
    };
    let rocketmq = Arc::clone(&admin.rocketmq);
    blocking(move || {
        rocketmq.set_group(&name, config)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
