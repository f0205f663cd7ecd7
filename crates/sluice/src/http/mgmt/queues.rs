//! Queues: listing, declaring, deleting, purging and getting messages.

use super::*;

pub(super) fn iso_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}+00:00",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

pub(super) fn queue_json(admin: &Admin, v: &VHost, q: &Arc<QueueCell>) -> Value {
    let s = q.stats();
    let kind = if q.def.settings.quorum {
        "quorum"
    } else {
        "classic"
    };
    let messages = u64::from(s.ready) + u64::from(s.unacked);
    let body = json!({
        "name": &*q.name,
        "vhost": v.name,
        "type": kind,
        "durable": q.def.durable,
        "auto_delete": q.def.auto_delete,
        "exclusive": q.def.exclusive_owner.is_some(),
        "arguments": table_json(&q.def.arguments),
        "node": admin.node,
        "state": "running",
        "consumers": s.consumers,
        "consumer_capacity": if s.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if s.consumers > 0 { 1.0 } else { 0.0 },
        "exclusive_consumer_tag": Value::Null,
        "single_active_consumer_tag": Value::Null,
        "policy": Value::Null,
        "operator_policy": Value::Null,
        "effective_policy_definition": {},
        "head_message_timestamp": Value::Null,
        "messages": messages, "messages_details": rate(),
        "messages_ready": s.ready, "messages_ready_details": rate(),
        "messages_unacknowledged": s.unacked, "messages_unacknowledged_details": rate(),
        "message_bytes": s.ready_bytes + s.unacked_bytes,
        "message_bytes_ready": s.ready_bytes,
        "message_bytes_unacknowledged": s.unacked_bytes,
        "message_stats": {
            "publish": s.counts.published,
            "deliver_get": s.counts.delivered,
            "ack": s.counts.acknowledged,
        },
        "idle_since": iso_ms(s.idle_since_ms),
    });
    body
}

pub(super) fn queue_items(admin: &Admin, v: &VHost) -> Vec<Value> {
    v.client_queues()
        .iter()
        .map(|q| queue_json(admin, v, q))
        .collect()
}

pub(super) async fn one_queue(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path((vhost_name, name)): Path<(String, String)>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let Some(q) = v.client_queue(&name) else {
        return not_found();
    };
    let mut body = queue_json(&admin, &v, &q);
    let details: Vec<Value> = q
        .stats()
        .consumer_list
        .iter()
        .map(|c| {
            json!({"consumer_tag": &*c.tag, "ack_required": c.ack_required,
                        "prefetch_count": c.prefetch, "exclusive": c.exclusive, "active": c.active,
                        "queue": {"name": &*q.name, "vhost": v.name}})
        })
        .collect();
    extend(
        &mut body,
        [
            ("consumer_details", Value::Array(details)),
            ("deliveries", json!([])),
            ("incoming", json!([])),
        ],
    );
    axum::Json(body).into_response()
}

pub(super) async fn put_queue(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (v, body) = or_return!(declaring(&admin, &user, &vhost_name, "queue", &name, &body));
    let durable = or_return!(flag(&body, "durable", false));
    let auto_delete = or_return!(flag(&body, "auto_delete", false));
    let mut args = arguments(&body);
    // rabbitmqadmin's `queue_type=quorum` is also an argument.
    if let Some(kind) = body.get("queue_type").and_then(Value::as_str)
        && args.get("x-queue-type").is_none()
    {
        args.insert(
            "x-queue-type",
            sluice_core::Value::LongString(Bytes::copy_from_slice(kind.as_bytes())),
        );
    }
    if sluice_amqp::stream_queue::requested(&args) {
        return bad_request(
            "stream queues are declared over AMQP (x-queue-type=stream) or as Kafka topics, not through this API yet",
        );
    }
    blocking(move || {
        match manage::declare_queue(
            &v,
            name.as_str().into(),
            durable,
            auto_delete,
            None,
            None,
            args,
        ) {
            Ok((_, made)) => created(made),
            Err(e) => refused(&e),
        }
    })
    .await
}

pub(super) async fn delete_queue(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        sluice_amqp::auth::Access::Configure,
        "queue",
        &name,
    ));
    if v.client_queue(&name).is_none() {
        return not_found();
    }
    let if_unused = params.get("if-unused").is_some_and(|s| s == "true");
    let if_empty = params.get("if-empty").is_some_and(|s| s == "true");
    blocking(
        move || match manage::delete_queue(&v, &name, if_unused, if_empty, None) {
            Ok(_) => {
                v.definitions_changed();
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => {
                // RabbitMQ's API words these without "in use"/"is not empty" variants.
                let text = e.text().replace("is not empty", "not empty");
                bad_request(text)
            }
        },
    )
    .await
}

pub(super) async fn purge(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, name)): Path<(String, String)>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        sluice_amqp::auth::Access::Read,
        "queue",
        &name,
    ));
    let Some(q) = v.client_queue(&name) else {
        return not_found();
    };
    if let Err(e) = manage::check_owner(&q, None, &v.name) {
        return refused(&e);
    }
    blocking(move || {
        q.purge();
        StatusCode::NO_CONTENT.into_response()
    })
    .await
}

pub(super) async fn get_messages(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost_name, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    let body = or_return!(object(&body));
    let missing: Vec<&str> = ["count", "ackmode", "encoding"]
        .into_iter()
        .filter(|k| !body.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        let terms: Vec<String> = missing
            .iter()
            .map(|k| format!("{{key_missing,{k}}}"))
            .collect();
        return bad_request(format!("[{}]", terms.join(",")));
    }
    let count = match body.get("count") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    };
    let Some(count) = count else {
        return error_json(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "reason": ["not_int", "count"]}),
        );
    };
    let requeue = match body.get("ackmode").and_then(Value::as_str) {
        Some("ack_requeue_true" | "reject_requeue_true") => true,
        Some("ack_requeue_false" | "reject_requeue_false") => false,
        _ => {
            return bad_request(
                "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false",
            );
        }
    };
    let base64_always = match body.get("encoding").and_then(Value::as_str) {
        Some("auto") => false,
        Some("base64") => true,
        _ => return bad_request("Unsupported encoding. Please use auto or base64."),
    };
    let truncate = body
        .get("truncate")
        .and_then(|t| {
            t.as_u64()
                .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
        })
        .map(|t| usize::try_from(t).unwrap_or(usize::MAX));
    or_return!(allow(
        &admin,
        &user,
        &v.name,
        sluice_amqp::auth::Access::Read,
        "queue",
        &name,
    ));
    let Some(q) = v.client_queue(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("NOT_FOUND - no queue '{name}' in vhost '{}'", v.name),
        );
    };
    if let Err(e) = manage::check_owner(&q, None, &v.name) {
        return refused(&e);
    }
    // At most what a page of the UI shows at once.
    let count = usize::try_from(count.min(10_000)).unwrap_or(10_000);
    blocking(move || {
        let got = manage::get(&q, count, requeue);
        let items: Vec<Value> = got
            .into_iter()
            .map(|m| message_json(&m, base64_always, truncate))
            .collect();
        axum::Json(Value::Array(items)).into_response()
    })
    .await
}

pub(super) fn message_json(m: &manage::Got, base64_always: bool, truncate: Option<usize>) -> Value {
    let shown = m
        .body
        .get(..truncate.map_or(m.body.len(), |t| t.min(m.body.len())))
        .unwrap_or(&m.body);
    let (payload, encoding) = match std::str::from_utf8(shown) {
        Ok(s) if !base64_always => (s.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    json!({
        "payload_bytes": m.body.len(),
        "redelivered": m.redelivered,
        "exchange": &*m.exchange,
        "routing_key": &*m.routing_key,
        "message_count": m.remaining,
        "properties": properties_json(&m.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// Message properties as RabbitMQ's API shows them; none at all is `[]`, as it writes.
pub(super) fn properties_json(p: &amq_protocol::protocol::basic::AMQPProperties) -> Value {
    let mut m = Map::new();
    let mut text = |k: &str, v: Option<&amq_protocol::types::ShortString>| {
        if let Some(v) = v {
            m.insert(k.to_string(), json!(v.as_str()));
        }
    };
    text("content_type", p.content_type().as_ref());
    text("content_encoding", p.content_encoding().as_ref());
    text("correlation_id", p.correlation_id().as_ref());
    text("reply_to", p.reply_to().as_ref());
    text("expiration", p.expiration().as_ref());
    text("message_id", p.message_id().as_ref());
    text("type", p.kind().as_ref());
    text("user_id", p.user_id().as_ref());
    text("app_id", p.app_id().as_ref());
    if let Some(v) = p.delivery_mode() {
        m.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        m.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        m.insert("timestamp".into(), json!(v));
    }
    if let Some(h) = p.headers() {
        m.insert("headers".into(), manage::table_json(h));
    }
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

pub(super) async fn queue_bindings(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path((vhost_name, name)): Path<(String, String)>,
) -> Response {
    let v = or_return!(vhost(&admin, &vhost_name));
    if v.client_queue(&name).is_none() {
        return not_found();
    }
    let mut items: Vec<Value> = binding_items(&v)
        .into_iter()
        .filter(|b| b["destination"] == name.as_str() && b["destination_type"] == "queue")
        .collect();
    // The implicit default-exchange binding first.
    items.sort_by_key(|b| b["source"] != "");
    axum::Json(Value::Array(items)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_since_is_rabbitmq_s_iso_format() {
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(iso_ms(1_796_440_299_128), "2026-12-05T03:11:39.128+00:00");
        assert_eq!(iso_ms(951_782_400_000), "2000-02-29T00:00:00.000+00:00");
    }
}
