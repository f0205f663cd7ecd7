//! The broker as a whole: overview, virtual hosts, users, permissions, the node, definitions export and health checks.

use super::exchanges::{binding_json, exchange_items};
use super::users::{permission_items, user_json};
use super::*;

pub(super) async fn cluster_name(State(admin): State<Arc<Admin>>, _: User) -> Response {
    axum::Json(json!({"name": admin.node})).into_response()
}

pub(super) async fn overview(
    State(admin): State<Arc<Admin>>,
    _: User,
    Query(params): Query<Params>,
) -> Response {
    let mut queues = 0usize;
    let (mut ready, mut unacked, mut consumers, mut exchanges) = (0u64, 0u64, 0u64, 0usize);
    for v in admin.broker.vhosts() {
        exchanges += v.router().exchanges().count();
        for q in v.client_queues() {
            let s = q.stats();
            queues += 1;
            ready += u64::from(s.ready);
            unacked += u64::from(s.unacked);
            consumers += u64::from(s.consumers);
        }
    }
    let listeners: Vec<Value> = admin
        .listeners
        .iter()
        .map(|(protocol, addr)| {
            json!({"node": admin.node, "protocol": protocol, "ip_address": addr.ip().to_string(),
                   "port": addr.port(), "socket_opts": {}})
        })
        .collect();
    let body = json!({
        "management_version": MANAGEMENT_VERSION,
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Sluice",
        "rabbitmq_version": MANAGEMENT_VERSION,
        "cluster_name": admin.node,
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": admin.rates.message_stats(&admin.broker.stats),
        "queue_totals": {
            "messages": ready + unacked, "messages_details": rate(),
            "messages_ready": ready, "messages_ready_details": rate(),
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": rate(),
        },
        "object_totals": {
            "channels": admin.broker.channels_open(),
            "connections": admin.broker.connections_open(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": admin.node,
        "listeners": listeners,
    });
    // A dotted column keeps its whole top-level object here, as RabbitMQ does.
    match params.get("columns").filter(|c| !c.is_empty()) {
        Some(columns) => {
            let tops: Vec<&str> = columns
                .split(',')
                .map(|c| c.split('.').next().unwrap_or(c))
                .collect();
            axum::Json(listing::select(&body, &tops.join(","))).into_response()
        }
        None => axum::Json(body).into_response(),
    }
}

pub(super) fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
        {"name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true},
    ])
}

pub(super) fn vhost_json(admin: &Admin, v: &VHost) -> Value {
    let (mut ready, mut unacked) = (0u64, 0u64);
    for q in v.client_queues() {
        let s = q.stats();
        ready += u64::from(s.ready);
        unacked += u64::from(s.unacked);
    }
    let description = if v.name == "/" {
        "Default virtual host"
    } else {
        ""
    };
    json!({
        "name": v.name,
        "description": description,
        "tags": [],
        "default_queue_type": "undefined",
        "metadata": {"description": description, "tags": []},
        "tracing": false,
        "cluster_state": {admin.node.clone(): "running"},
        "messages": ready + unacked, "messages_details": rate(),
        "messages_ready": ready, "messages_ready_details": rate(),
        "messages_unacknowledged": unacked, "messages_unacknowledged_details": rate(),
    })
}

pub(super) async fn vhosts(
    State(admin): State<Arc<Admin>>,
    _: User,
    Query(params): Query<Params>,
) -> Response {
    let items = admin
        .broker
        .vhosts()
        .iter()
        .map(|v| vhost_json(&admin, v))
        .collect();
    listing::respond(items, &params, true)
}

pub(super) async fn one_vhost(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    match admin.broker.vhost(&name) {
        Some(v) => axum::Json(vhost_json(&admin, &v)).into_response(),
        None => not_found(),
    }
}

pub(super) fn node_json(admin: &Admin) -> Value {
    let open_files = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    json!({
        "name": admin.node,
        "type": "disc",
        "running": true,
        "mem_used": crate::resources::resident_bytes().unwrap_or(0),
        "mem_limit": admin.broker.alarms.memory_limit(),
        "mem_alarm": admin.broker.alarms.reason().is_some_and(|r| r.contains("memory")),
        "disk_free": crate::resources::disk_free_bytes(&admin.data_dir).unwrap_or(0),
        "disk_free_limit": admin.broker.alarms.disk_free_limit(),
        "disk_free_alarm": admin.broker.alarms.reason().is_some_and(|r| r.contains("disk")),
        "fd_used": open_files,
        "fd_total": open_files_limit(),
        "sockets_used": admin.admission.stats().open,
        "sockets_total": admin.admission.limits().connections_max,
        "proc_used": 0,
        "proc_total": 0,
        "uptime": u64::try_from(admin.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "processors": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "os_pid": std::process::id().to_string(),
        "run_queue": 0,
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "auth_mechanisms": [{"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
                            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true}],
        "partitions": [],
        "applications": [{"name": "sluice", "description": "Sluice message broker", "version": env!("CARGO_PKG_VERSION")}],
    })
}

pub(super) fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills in the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    }
}

pub(super) async fn nodes(
    State(admin): State<Arc<Admin>>,
    _: User,
    Query(params): Query<Params>,
) -> Response {
    listing::respond(vec![node_json(&admin)], &params, false)
}

pub(super) async fn one_node(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    if name == admin.node {
        axum::Json(node_json(&admin)).into_response()
    } else {
        not_found()
    }
}

pub(super) fn vhost_defs(v: &VHost, with_vhost: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let strip = |mut item: Value, keep: &[&str]| {
        if let Value::Object(m) = &mut item {
            m.retain(|k, _| keep.contains(&k.as_str()) || (with_vhost && k == "vhost"));
        }
        item
    };
    let queues = v
        .client_queues()
        .iter()
        .filter(|q| q.def.durable && q.def.exclusive_owner.is_none())
        .map(|q| {
            strip(
                json!({"name": &*q.name, "vhost": v.name, "durable": true,
                       "auto_delete": q.def.auto_delete, "arguments": table_json(&q.def.arguments)}),
                &["name", "durable", "auto_delete", "arguments"],
            )
        })
        .collect();
    let exchanges = exchange_items(v)
        .into_iter()
        .filter(|e| {
            let name = e["name"].as_str().unwrap_or("");
            !name.is_empty() && !name.starts_with("amq.") && e["durable"] == true
        })
        .map(|e| {
            strip(
                e,
                &[
                    "name",
                    "type",
                    "durable",
                    "auto_delete",
                    "internal",
                    "arguments",
                ],
            )
        })
        .collect();
    let bindings = v
        .router()
        .bindings()
        .map(|b| {
            strip(
                binding_json(&v.name, b),
                &[
                    "source",
                    "destination",
                    "destination_type",
                    "routing_key",
                    "arguments",
                ],
            )
        })
        .collect();
    (queues, exchanges, bindings)
}

pub(super) async fn definitions(State(admin): State<Arc<Admin>>, _: User) -> Response {
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    let mut vhosts = Vec::new();
    for v in admin.broker.vhosts() {
        let (q, e, b) = vhost_defs(&v, true);
        queues.extend(q);
        exchanges.extend(e);
        bindings.extend(b);
        vhosts.push(json!({"name": v.name}));
    }
    let users: Vec<Value> = admin
        .broker
        .users
        .names()
        .iter()
        .map(|n| user_json(&admin, n).unwrap_or(Value::Null))
        .collect();
    axum::Json(json!({
        "rabbit_version": MANAGEMENT_VERSION,
        "rabbitmq_version": MANAGEMENT_VERSION,
        "product_name": "Sluice",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts,
        "permissions": permission_items(&admin),
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }))
    .into_response()
}

pub(super) async fn vhost_definitions(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    let v = or_return!(vhost(&admin, &name));
    let (queues, exchanges, bindings) = vhost_defs(&v, false);
    axum::Json(json!({
        "rabbit_version": MANAGEMENT_VERSION,
        "parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }))
    .into_response()
}

/// RabbitMQ's aliveness test: declares queue `aliveness-test`, publishes to it through
/// the default exchange and reads the message back.
pub(super) async fn aliveness(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    let v = or_return!(vhost(&admin, &name));
    blocking(move || {
        let q = match manage::declare_queue(
            &v,
            "aliveness-test".into(),
            false,
            false,
            None,
            None,
            Default::default(),
        ) {
            Ok((q, _)) => q,
            Err(e) => return refused(&e),
        };
        let body = Bytes::from_static(b"test_message");
        match manage::publish(
            &v,
            "",
            "aliveness-test",
            body.clone(),
            manage::Publish::default(),
        ) {
            Ok(true) => {}
            _ => {
                return error_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "failed", "reason": "the test message was not routed"}),
                );
            }
        }
        let got = manage::get(&q, 1, false);
        if got.first().is_some_and(|m| m.body == body) {
            axum::Json(json!({"status": "ok"})).into_response()
        } else {
            error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "failed", "reason": "the test message did not come back"}),
            )
        }
    })
    .await
}

pub(super) async fn ok_check(_: User) -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

pub(super) async fn alarms(State(admin): State<Arc<Admin>>, _: User) -> Response {
    match admin.broker.alarms.reason() {
        None => axum::Json(json!({"status": "ok"})).into_response(),
        Some(reason) => error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                   "alarms": [{"node": admin.node, "resource": reason}]}),
        ),
    }
}

pub(super) async fn port_listener(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(port): Path<String>,
) -> Response {
    let ports: Vec<u16> = admin.listeners.iter().map(|(_, a)| a.port()).collect();
    match port.parse::<u16>() {
        Ok(p) if ports.contains(&p) => {
            axum::Json(json!({"status": "ok", "port": p})).into_response()
        }
        Ok(p) => error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "reason": "No active listener", "missing": p, "ports": ports}),
        ),
        Err(_) => bad_request(format!("invalid port '{port}'")),
    }
}

pub(super) async fn protocol_listener(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(protocol): Path<String>,
) -> Response {
    let wanted = match protocol.as_str() {
        "amqp091" | "amqp0-9-1" => "amqp",
        other => other,
    };
    let protocols: Vec<&str> = admin.listeners.iter().map(|(p, _)| *p).collect();
    if protocols.contains(&wanted) {
        axum::Json(json!({"status": "ok", "protocol": wanted})).into_response()
    } else {
        error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "reason": "No active listener", "missing": protocol,
                   "protocols": protocols}),
        )
    }
}

/// Imports definitions as RabbitMQ's `POST /api/definitions` does: users (with their
/// stored hashes), permissions, exchanges, queues and bindings, each created unless it
/// exists. Virtual hosts must exist already: Sluice's come from `amqp.vhosts`.
pub(super) async fn import_definitions(
    State(admin): State<Arc<Admin>>,
    user: User,
    vhost_name: Option<Path<String>>,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("failed_to_parse_json");
    };
    let only = vhost_name.map(|Path(v)| v);
    if let Some(v) = &only {
        or_return!(vhost(&admin, v));
    }
    blocking(move || match import(&admin, &user, &doc, only.as_deref()) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    })
    .await
}

fn import(
    admin: &Admin,
    user: &User,
    doc: &Map<String, Value>,
    only: Option<&str>,
) -> Result<(), Response> {
    let items = |key: &str| {
        doc.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let text = |item: &Value, key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let target = |item: &Value| -> Result<Arc<VHost>, Response> {
        let name = only.map_or_else(|| text(item, "vhost"), str::to_string);
        admin.broker.vhost(&name).ok_or_else(|| {
            bad_request(format!(
                "vhost '{name}' does not exist; Sluice's virtual hosts come from amqp.vhosts"
            ))
        })
    };
    let vhosts: Vec<String> = admin
        .broker
        .vhosts()
        .iter()
        .map(|v| v.name.clone())
        .collect();
    if only.is_none() {
        for v in items("vhosts") {
            target(&json!({"vhost": text(&v, "name")}))?;
        }
        let users = items("users");
        let grants = items("permissions");
        if !users.is_empty() || !grants.is_empty() {
            super::users::administrator(admin, user)?;
        }
        for u in &users {
            let tags = match u.get("tags") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect(),
                Some(Value::String(s)) => s
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            };
            admin
                .broker
                .users
                .put_user(
                    &vhosts,
                    &text(u, "name"),
                    None,
                    Some(&text(u, "password_hash")),
                    tags,
                )
                .map_err(|r| bad_request(r.to_string()))?;
        }
        for p in &grants {
            let patterns = [text(p, "configure"), text(p, "write"), text(p, "read")];
            admin
                .broker
                .users
                .set_permissions(
                    &vhosts,
                    &text(p, "user"),
                    &text(p, "vhost"),
                    [&patterns[0], &patterns[1], &patterns[2]],
                )
                .map_err(|r| bad_request(r.to_string()))?;
        }
    }
    let access = sluice_amqp::auth::Access::Configure;
    for e in items("exchanges") {
        let v = target(&e)?;
        let name = text(&e, "name");
        allow(admin, user, &v.name, access, "exchange", &name)?;
        let flag_of = |k: &str, d: bool| e.get(k).and_then(Value::as_bool).unwrap_or(d);
        let args = match e.get("arguments") {
            Some(Value::Object(o)) => manage::table_from_json(o),
            _ => Default::default(),
        };
        let kind = e.get("type").and_then(Value::as_str).unwrap_or("direct");
        manage::declare_exchange(
            &v,
            &name,
            kind,
            flag_of("durable", true),
            flag_of("auto_delete", false),
            flag_of("internal", false),
            args,
        )
        .map_err(|err| refused(&err))?;
        v.definitions_changed();
    }
    for q in items("queues") {
        let v = target(&q)?;
        let name = text(&q, "name");
        allow(admin, user, &v.name, access, "queue", &name)?;
        let args = match q.get("arguments") {
            Some(Value::Object(o)) => manage::table_from_json(o),
            _ => Default::default(),
        };
        let durable = q.get("durable").and_then(Value::as_bool).unwrap_or(true);
        let auto_delete = q
            .get("auto_delete")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        manage::declare_queue(
            &v,
            name.as_str().into(),
            durable,
            auto_delete,
            None,
            None,
            args,
        )
        .map_err(|err| refused(&err))?;
    }
    for b in items("bindings") {
        let v = target(&b)?;
        let destination = match text(&b, "destination_type").as_str() {
            "exchange" => Destination::Exchange(text(&b, "destination").into()),
            _ => Destination::Queue(text(&b, "destination").into()),
        };
        let args = match b.get("arguments") {
            Some(Value::Object(o)) => manage::table_from_json(o),
            _ => Default::default(),
        };
        let binding = manage::binding(
            &text(&b, "source"),
            destination,
            &text(&b, "routing_key"),
            args,
        );
        let result = v.router_mut().bind(binding);
        result.map_err(|err| refused(&AmqpError::from(err)))?;
        v.definitions_changed();
    }
    Ok(())
}
