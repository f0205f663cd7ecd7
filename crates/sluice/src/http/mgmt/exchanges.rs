//! Exchanges, publishing through them, and bindings.

use super::*;

pub(super) fn exchange_json(
    vhost: &str,
    def: &sluice_engine::routing::ExchangeDef,
    delayed: bool,
) -> Value {
    let (kind, arguments) = if delayed {
        let mut args = table_json(&def.arguments);
        if let Value::Object(m) = &mut args {
            m.insert("x-delayed-type".into(), json!(def.kind.as_str()));
        }
        ("x-delayed-message", args)
    } else {
        (def.kind.as_str(), table_json(&def.arguments))
    };
    let builtin = def.name.is_empty() || def.name.starts_with("amq.");
    json!({
        "name": &*def.name,
        "vhost": vhost,
        "type": kind,
        "durable": def.durable,
        "auto_delete": def.auto_delete,
        "internal": def.internal,
        "arguments": arguments,
        "user_who_performed_action": if builtin { "rmq-internal" } else { "" },
    })
}

pub(super) fn exchange_items(v: &VHost) -> Vec<Value> {
    let mut items: Vec<Value> = v
        .router()
        .exchanges()
        .map(|d| exchange_json(&v.name, d, v.is_delayed(&d.name)))
        .collect();
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    items
}

/// The URL name of the default exchange is `amq.default`.
pub(super) fn exchange_name(url_name: &str) -> &str {
    if url_name == "amq.default" {
        ""
    } else {
        url_name
    }
}

pub(super) async fn one_exchange(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path((vhost_name, name)): Path<(String, String)>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let name = exchange_name(&name);
    let router = v.router();
    let Some(def) = router.exchange(name) else {
        return not_found();
    };
    let mut body = exchange_json(&v.name, def, v.is_delayed(name));
    extend(
        &mut body,
        [("incoming", json!([])), ("outgoing", json!([]))],
    );
    axum::Json(body).into_response()
}

pub(super) async fn put_exchange(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (v, body) = or_return!(declaring(
        &admin,
        &user,
        &vhost_name,
        "exchange",
        &name,
        &body
    ));
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("direct")
        .to_string();
    let durable = or_return!(flag(&body, "durable", true));
    let auto_delete = or_return!(flag(&body, "auto_delete", false));
    let internal = or_return!(flag(&body, "internal", false));
    let args = arguments(&body);
    blocking(move || {
        let existing = v.router().exchange(&name).map(|d| d.kind.as_str().to_string());
        if let Some(current) = existing
            && current != kind
            && !(kind == manage::DELAYED_TYPE && v.is_delayed(&name))
        {
            return bad_request(format!(
                "inequivalent arg 'type' for exchange '{name}' in vhost '{}': received '{kind}' but current is '{current}'",
                v.name
            ));
        }
        if kind != manage::DELAYED_TYPE && kind.parse::<sluice_engine::routing::ExchangeKind>().is_err() {
            return bad_request(format!("unknown exchange type '{kind}'"));
        }
        match manage::declare_exchange(&v, &name, &kind, durable, auto_delete, internal, args) {
            Ok(made) => {
                v.definitions_changed();
                created(made)
            }
            Err(e) => refused(&e),
        }
    })
    .await
}

pub(super) async fn delete_exchange(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    if name.is_empty() || name.starts_with("amq.") {
        return error(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.",
        );
    }
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        sluice_amqp::auth::Access::Configure,
        "exchange",
        &name,
    ));
    if v.router().exchange(&name).is_none() {
        return not_found();
    }
    let if_unused = params.get("if-unused").is_some_and(|s| s == "true");
    match manage::delete_exchange(&v, &name, if_unused) {
        Ok(()) => {
            v.definitions_changed();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => refused(&e),
    }
}

pub(super) async fn publish(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let body = or_return!(object(&body));
    let exchange = exchange_name(&name).to_string();
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        sluice_amqp::auth::Access::Write,
        "exchange",
        &exchange,
    ));
    let key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let payload = body.get("payload").and_then(Value::as_str).unwrap_or("");
    let payload = match body
        .get("payload_encoding")
        .and_then(Value::as_str)
        .unwrap_or("string")
    {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => match base64::engine::general_purpose::STANDARD.decode(payload) {
            Ok(b) => Bytes::from(b),
            Err(_) => return bad_request("payload is not base64"),
        },
        other => {
            return error_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "reason": ["unsupported_encoding", other]}),
            );
        }
    };
    if payload.len() > admin.broker.message_bytes_max {
        return bad_request(format!(
            "message size {} is larger than configured max size {}",
            payload.len(),
            admin.broker.message_bytes_max
        ));
    }
    let props = or_return!(publish_properties(body.get("properties")));
    blocking(
        move || match manage::publish(&v, &exchange, &key, payload, props) {
            Ok(routed) => axum::Json(json!({"routed": routed})).into_response(),
            // RabbitMQ answers a publish to a missing exchange 400, with the AMQP text.
            Err(e) if e.code() == 404 => bad_request(format!("404 {}", e.text())),
            Err(e) => refused(&e),
        },
    )
    .await
}

pub(super) fn publish_properties(p: Option<&Value>) -> Result<manage::Publish, Response> {
    let Some(Value::Object(p)) = p else {
        return Ok(manage::Publish::default());
    };
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let int = |k: &str| -> Result<Option<u64>, Response> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                error_json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "bad_request", "reason": ["not_int", k]}),
                )
            }),
        }
    };
    Ok(manage::Publish {
        delivery_mode: int("delivery_mode")?.and_then(|v| u8::try_from(v).ok()),
        priority: int("priority")?.and_then(|v| u8::try_from(v).ok()),
        expiration: text("expiration"),
        content_type: text("content_type"),
        content_encoding: text("content_encoding"),
        correlation_id: text("correlation_id"),
        reply_to: text("reply_to"),
        message_id: text("message_id"),
        timestamp: int("timestamp")?,
        kind: text("type"),
        user_id: text("user_id"),
        app_id: text("app_id"),
        headers: match p.get("headers") {
            Some(Value::Object(h)) => Some(manage::table_from_json(h)),
            _ => None,
        },
    })
}

/// RabbitMQ's `properties_key`: the routing key, `~` for an empty one, and a digest of
/// the arguments after `~` when there are some.
pub(super) fn properties_key(b: &Binding) -> String {
    if !b.arguments.is_empty() {
        let digest = crc32c::crc32c(table_json(&b.arguments).to_string().as_bytes());
        let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.to_be_bytes());
        return format!("{}~{short}", b.routing_key);
    }
    if b.routing_key.is_empty() {
        "~".to_string()
    } else {
        b.routing_key.to_string()
    }
}

pub(super) fn binding_json(vhost: &str, b: &Binding) -> Value {
    let (destination, kind) = match &b.destination {
        Destination::Queue(n) => (n, "queue"),
        Destination::Exchange(n) => (n, "exchange"),
    };
    json!({
        "source": &*b.source,
        "vhost": vhost,
        "destination": &**destination,
        "destination_type": kind,
        "routing_key": &*b.routing_key,
        "arguments": table_json(&b.arguments),
        "properties_key": properties_key(b),
    })
}

/// Every binding of `v`, with the implicit default-exchange binding of each queue
/// first, sorted by source, destination and key as RabbitMQ lists them.
pub(super) fn binding_items(v: &VHost) -> Vec<Value> {
    let mut items: Vec<Value> = v
        .client_queues()
        .iter()
        .map(|q| {
            binding_json(
                &v.name,
                &manage::binding(
                    "",
                    Destination::Queue(Arc::clone(&q.name)),
                    &q.name,
                    Default::default(),
                ),
            )
        })
        .collect();
    items.extend(v.router().bindings().map(|b| binding_json(&v.name, b)));
    items.sort_by(|a, b| {
        let key = |x: &Value| {
            (
                x["source"].as_str().unwrap_or("").to_string(),
                x["destination"].as_str().unwrap_or("").to_string(),
                x["routing_key"].as_str().unwrap_or("").to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    items
}

pub(super) fn destination(kind: &str, name: &str) -> Option<Destination> {
    match kind {
        "q" => Some(Destination::Queue(name.into())),
        "e" => Some(Destination::Exchange(name.into())),
        _ => None,
    }
}

pub(super) fn pair(v: &VHost, source: &str, dest: &Destination) -> Vec<Value> {
    binding_items(v)
        .into_iter()
        .filter(|b| {
            b["source"] == exchange_name(source)
                && b["destination"] == dest.name().as_ref()
                && b["destination_type"] == dest.kind()
        })
        .collect()
}

pub(super) async fn pair_bindings(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path((vhost_name, source, kind, dest)): Path<(String, String, String, String)>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let Some(dest) = destination(&kind, &dest) else {
        return not_found();
    };
    axum::Json(Value::Array(pair(&v, &source, &dest))).into_response()
}

pub(super) async fn one_binding(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path((vhost_name, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let Some(dest) = destination(&kind, &dest) else {
        return not_found();
    };
    pair(&v, &source, &dest)
        .into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .map_or_else(not_found, |b| axum::Json(b).into_response())
}

pub(super) async fn add_binding(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let body = or_return!(object(&body));
    let Some(destination) = destination(&kind, &dest) else {
        return not_found();
    };
    let source = exchange_name(&source).to_string();
    let access = sluice_amqp::auth::Access::Write;
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        access,
        destination.kind(),
        &dest
    ));
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        sluice_amqp::auth::Access::Read,
        "exchange",
        &source,
    ));
    if v.router().exchange(&source).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no exchange '{source}' in vhost '{}'", v.name),
        );
    }
    let missing = match &destination {
        Destination::Queue(q) => v.client_queue(q).is_none() && v.stream(q).is_none(),
        Destination::Exchange(e) => v.router().exchange(e).is_none(),
    };
    if missing {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {} '{dest}' in vhost '{}'", destination.kind(), v.name),
        );
    }
    let key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let binding = manage::binding(&source, destination, &key, arguments(&body));
    let location = format!("{dest}/{}", properties_key(&binding));
    let result = v.router_mut().bind(binding);
    match result {
        Ok(_) => {
            v.definitions_changed();
            let mut r = StatusCode::CREATED.into_response();
            if let Ok(h) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, h);
            }
            r
        }
        Err(e) => refused(&AmqpError::from(e)),
    }
}

pub(super) async fn delete_binding(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let Some(destination) = destination(&kind, &dest) else {
        return not_found();
    };
    let source = exchange_name(&source).to_string();
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        sluice_amqp::auth::Access::Write,
        destination.kind(),
        &dest,
    ));
    let found = v
        .router()
        .bindings()
        .find(|b| {
            *b.source == *source && b.destination == destination && properties_key(b) == props
        })
        .cloned();
    let Some(binding) = found else {
        return not_found();
    };
    let result = v.router_mut().unbind(&binding);
    match result {
        Ok(_) => {
            v.definitions_changed();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => refused(&AmqpError::from(e)),
    }
}
