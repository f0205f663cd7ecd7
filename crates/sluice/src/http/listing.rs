//! How RabbitMQ's management API shapes a list: sorted by name unless `sort=` says
//! otherwise, `columns=` keeping some fields (dotted paths reach into objects), and
//! `page=` turning the array into a page object, where `name=` filters by a
//! case-insensitive substring or, with `use_regex=true`, a regular expression.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error;

/// Query parameters as given.
pub type Params = HashMap<String, String>;

const PAGE_SIZE_DEFAULT: usize = 100;
const PAGE_SIZE_MAX: usize = 500;

/// Keeps only `columns` (comma-separated, dotted paths) of `item`.
pub fn select(item: &Value, columns: &str) -> Value {
    let mut out = Map::new();
    for column in columns.split(',').filter(|c| !c.is_empty()) {
        let path: Vec<&str> = column.split('.').collect();
        copy_path(item, &path, &mut out);
    }
    Value::Object(out)
}

fn copy_path(from: &Value, path: &[&str], into: &mut Map<String, Value>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = from.get(*first) else {
        return;
    };
    if rest.is_empty() {
        into.insert((*first).to_string(), value.clone());
        return;
    }
    let entry = into
        .entry((*first).to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(inner) = entry {
        copy_path(value, rest, inner);
    }
}

/// The field `path` (dotted) of `item`, for sorting.
fn field<'a>(item: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(item, |v, key| v.get(key))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Answers a list (already in its default order) as the query asks. `pageable` lists
/// (queues, exchanges, vhosts, connections, channels) take `page=`.
pub fn respond(mut items: Vec<Value>, params: &Params, pageable: bool) -> Response {
    if let Some(key) = params.get("sort").filter(|k| !k.is_empty()) {
        items.sort_by(|a, b| compare(field(a, key), field(b, key)));
    }
    if params.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    let columns = params.get("columns").filter(|c| !c.is_empty());
    let shape = |items: Vec<Value>| -> Vec<Value> {
        match columns {
            Some(c) => items.iter().map(|i| select(i, c)).collect(),
            None => items,
        }
    };
    let Some(page) = params.get("page").filter(|_| pageable) else {
        return axum::Json(Value::Array(shape(items))).into_response();
    };
    let (Ok(page), Ok(page_size)) = (
        page.parse::<usize>(),
        params
            .get("page_size")
            .map_or(Ok(PAGE_SIZE_DEFAULT), |s| s.parse::<usize>()),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Pagination parameters are invalid",
        );
    };
    if page == 0 || page_size == 0 || page_size > PAGE_SIZE_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_pagination_parameters",
            format!("Invalid pagination parameters: page number {page}, page size {page_size}"),
        );
    }
    let total = items.len();
    let filtered: Vec<Value> = match params.get("name").filter(|n| !n.is_empty()) {
        None => items,
        Some(name) => {
            let matches: Box<dyn Fn(&str) -> bool> =
                if params.get("use_regex").is_some_and(|v| v == "true") {
                    match regex::Regex::new(name) {
                        Ok(re) => Box::new(move |s: &str| re.is_match(s)),
                        Err(e) => {
                            return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
                        }
                    }
                } else {
                    let needle = name.to_lowercase();
                    Box::new(move |s: &str| s.to_lowercase().contains(&needle))
                };
            items
                .into_iter()
                .filter(|i| i.get("name").and_then(Value::as_str).is_some_and(&matches))
                .collect()
        }
    };
    let filtered_count = filtered.len();
    let page_count = filtered_count.div_ceil(page_size);
    if page > page_count.max(1) {
        return error(
            StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!(
                "Page out of range, page: {page} page size: {page_size}, len: {filtered_count}"
            ),
        );
    }
    let items: Vec<Value> = filtered
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    let body = serde_json::json!({
        "filtered_count": filtered_count,
        "item_count": items.len(),
        "items": shape(items),
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    });
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn columns_keep_dotted_paths_and_skip_missing_fields() {
        let item = json!({"name": "q", "messages": 3, "message_stats": {"publish": 5, "ack": 1}});
        assert_eq!(
            select(&item, "name,message_stats.publish,nope"),
            json!({"name": "q", "message_stats": {"publish": 5}})
        );
    }

    async fn body(r: Response) -> Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn pages_filter_by_name_and_refuse_a_page_past_the_end() {
        let items: Vec<Value> = ["q1", "Q2", "x"]
            .iter()
            .map(|n| json!({"name": n}))
            .collect();
        let params = |pairs: &[(&str, &str)]| -> Params {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let r = respond(
            items.clone(),
            &params(&[("page", "1"), ("page_size", "1"), ("name", "q")]),
            true,
        );
        let page = body(r).await;
        assert_eq!(page["filtered_count"], 2);
        assert_eq!(page["total_count"], 3);
        assert_eq!(page["page_count"], 2);
        assert_eq!(page["items"], json!([{"name": "q1"}]));
        let r = respond(
            items.clone(),
            &params(&[("page", "3"), ("page_size", "1"), ("name", "q")]),
            true,
        );
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = respond(
            items.clone(),
            &params(&[("page", "1"), ("name", "^q"), ("use_regex", "true")]),
            true,
        );
        assert_eq!(body(r).await["filtered_count"], 1);
        let r = respond(items, &params(&[("name", "q")]), true);
        assert_eq!(
            body(r).await.as_array().unwrap().len(),
            3,
            "name= needs page="
        );
    }
}
