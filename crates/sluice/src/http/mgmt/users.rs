//! Users and permissions, read and changed at runtime (kept in the data directory by
//! `sluice_amqp::users::UserStore`). Changing them needs the `administrator` tag, as in
//! RabbitMQ.

use super::*;
use sluice_amqp::users::{HASHING, Refusal};

fn vhost_names(admin: &Admin) -> Vec<String> {
    admin
        .broker
        .vhosts()
        .iter()
        .map(|v| v.name.clone())
        .collect()
}

/// A user as RabbitMQ's API shows it; `None` if there is no such user.
pub(super) fn user_json(admin: &Admin, name: &str) -> Option<Value> {
    let (tags, hash) = admin.broker.users.describe(name)?;
    Some(
        json!({"name": name, "password_hash": hash, "hashing_algorithm": HASHING,
                "tags": tags, "limits": {}}),
    )
}

pub(super) fn permission_items(admin: &Admin) -> Vec<Value> {
    admin
        .broker
        .users
        .grants(&vhost_names(admin))
        .into_iter()
        .map(|g| {
            json!({"user": g.user, "vhost": g.vhost, "configure": g.configure,
                   "write": g.write, "read": g.read})
        })
        .collect()
}

pub(super) fn administrator(admin: &Admin, user: &User) -> Result<(), Response> {
    let is_admin = admin
        .broker
        .users
        .describe(&user.0)
        .is_some_and(|(tags, _)| tags.iter().any(|t| t == "administrator"));
    if is_admin {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Not administrator user",
        ))
    }
}

fn refusal(r: &Refusal) -> Response {
    match r {
        Refusal::Io(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            r.to_string(),
        ),
        _ => bad_request(r.to_string()),
    }
}

pub(super) async fn whoami(State(admin): State<Arc<Admin>>, user: User) -> Response {
    let tags = admin
        .broker
        .users
        .describe(&user.0)
        .map(|(t, _)| t)
        .unwrap_or_default();
    axum::Json(json!({"name": user.0, "tags": tags})).into_response()
}

pub(super) async fn users(
    State(admin): State<Arc<Admin>>,
    _: User,
    Query(params): Query<Params>,
) -> Response {
    let items = admin
        .broker
        .users
        .names()
        .iter()
        .filter_map(|n| user_json(&admin, n))
        .collect();
    listing::respond(items, &params, false)
}

pub(super) async fn one_user(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    user_json(&admin, &name).map_or_else(not_found, |u| axum::Json(u).into_response())
}

/// Tags as RabbitMQ takes them: a comma-separated string or a list.
fn tags(body: &Map<String, Value>) -> Option<Vec<String>> {
    match body.get("tags")? {
        Value::String(s) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

pub(super) async fn put_user(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    or_return!(administrator(&admin, &user));
    let body = or_return!(object(&body));
    let Some(tags) = tags(&body) else {
        return bad_request("tags_not_present");
    };
    let password = body
        .get("password")
        .and_then(Value::as_str)
        .map(str::to_string);
    let hash = body
        .get("password_hash")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(algorithm) = body.get("hashing_algorithm").and_then(Value::as_str)
        && algorithm != HASHING
    {
        return bad_request(format!(
            "hashing algorithm {algorithm} is not supported; use {HASHING}"
        ));
    }
    blocking(move || {
        match admin.broker.users.put_user(
            &vhost_names(&admin),
            &name,
            password.as_deref(),
            hash.as_deref(),
            tags,
        ) {
            Ok(made) => created(made),
            Err(r) => refusal(&r),
        }
    })
    .await
}

pub(super) async fn delete_user(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path(name): Path<String>,
) -> Response {
    or_return!(administrator(&admin, &user));
    blocking(
        move || match admin.broker.users.delete_user(&vhost_names(&admin), &name) {
            Ok(true) => StatusCode::NO_CONTENT.into_response(),
            Ok(false) => not_found(),
            Err(r) => refusal(&r),
        },
    )
    .await
}

pub(super) async fn permissions(
    State(admin): State<Arc<Admin>>,
    _: User,
    Query(params): Query<Params>,
) -> Response {
    listing::respond(permission_items(&admin), &params, false)
}

pub(super) async fn vhost_permissions(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(vhost_name): Path<String>,
) -> Response {
    or_return!(vhost(&admin, &vhost_name));
    let items: Vec<Value> = permission_items(&admin)
        .into_iter()
        .filter(|p| p["vhost"] == vhost_name.as_str())
        .collect();
    axum::Json(Value::Array(items)).into_response()
}

pub(super) async fn user_permissions(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path(name): Path<String>,
) -> Response {
    if user_json(&admin, &name).is_none() {
        return not_found();
    }
    let items: Vec<Value> = permission_items(&admin)
        .into_iter()
        .filter(|p| p["user"] == name.as_str())
        .collect();
    axum::Json(Value::Array(items)).into_response()
}

pub(super) async fn one_permission(
    State(admin): State<Arc<Admin>>,
    _: User,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    permission_items(&admin)
        .into_iter()
        .find(|p| p["vhost"] == vhost.as_str() && p["user"] == user.as_str())
        .map_or_else(not_found, |p| axum::Json(p).into_response())
}

pub(super) async fn put_permission(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    or_return!(administrator(&admin, &user));
    let body = or_return!(object(&body));
    let missing: Vec<String> = ["configure", "write", "read"]
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return bad_request(format!("[{}]", missing.join(",")));
    }
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let patterns = [field("configure"), field("write"), field("read")];
    blocking(move || {
        let [c, w, r] = &patterns;
        match admin
            .broker
            .users
            .set_permissions(&vhost_names(&admin), &name, &vhost, [c, w, r])
        {
            Ok(made) => created(made),
            Err(r) => refusal(&r),
        }
    })
    .await
}

pub(super) async fn delete_permission(
    State(admin): State<Arc<Admin>>,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    or_return!(administrator(&admin, &user));
    blocking(move || {
        match admin
            .broker
            .users
            .delete_permissions(&vhost_names(&admin), &name, &vhost)
        {
            Ok(true) => StatusCode::NO_CONTENT.into_response(),
            Ok(false) => not_found(),
            Err(r) => refusal(&r),
        }
    })
    .await
}
