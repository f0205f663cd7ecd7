//! `sluice admin`: calls a running server's admin HTTP API (`http/`) and reports the
//! outcome: lists as tables (or the server's JSON with `--json`); changes exit 0 when
//! the object is usable, 1 with the server's reason otherwise.

use std::process::ExitCode;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cli::{
    AdminArgs, AdminObject, DefinitionsCommand, GroupCommand, Listable, PermissionCommand,
    QueueCommand, TopicCommand, UserCommand,
};

struct Client {
    server: String,
    auth: String,
    agent: ureq::Agent,
}

/// A request's outcome: the status and the body.
type Answer = Result<(u16, String), String>;

impl Client {
    fn new(args: &AdminArgs) -> Result<Client, String> {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", args.user, args.password));
        let mut config = ureq::Agent::config_builder().http_status_as_error(false);
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                return Err(format!("{}: no certificate", ca.display()));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Client {
            server: args.server.trim_end_matches('/').to_string(),
            auth: format!("Basic {auth}"),
            agent: config.build().into(),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let url = format!("{}{path}", self.server);
        let sent = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("authorization", &self.auth)
                .call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &self.auth)
                .call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("authorization", &self.auth)
                .send_json(b),
            (_, b) => self
                .agent
                .put(&url)
                .header("authorization", &self.auth)
                .send_json(b.unwrap_or(&json!({}))),
        };
        let mut response = sent.map_err(|e| format!("cannot reach {}: {e}", self.server))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, text))
    }
}

/// The server's reason for a refusal, from its JSON error body.
fn reason(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| {
            v.get("reason")
                .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string))
        })
        .unwrap_or_else(|| text.to_string())
}

/// Reports a change: `what created` / `what ready` / `what deleted`, or the refusal.
fn report(what: &str, done: &str, answer: Answer) -> ExitCode {
    match answer {
        Ok((status, _)) if (200..300).contains(&status) => {
            let verb = if status == 201 { "created" } else { done };
            println!("{what} {verb}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("sluice: {what}: {status} {}", reason(&text));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn main(args: &AdminArgs) -> ExitCode {
    let c = match Client::new(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    match &args.object {
        AdminObject::Topic(TopicCommand::Create {
            name,
            partitions,
            message_type,
        }) => report(
            &format!("topic {name}"),
            "ready",
            c.call(
                "PUT",
                &format!("/api/sluice/rocketmq/topics/{}", encode(name)),
                Some(&json!({ "queues": partitions, "message_type": message_type })),
            ),
        ),
        AdminObject::Group(GroupCommand::Create {
            name,
            fifo,
            retry_max_times,
        }) => report(
            &format!("group {name}"),
            "ready",
            c.call(
                "PUT",
                &format!("/api/sluice/rocketmq/groups/{}", encode(name)),
                Some(&json!({ "fifo": fifo, "retry_max_times": retry_max_times })),
            ),
        ),
        AdminObject::List { what, vhost } => list(&c, *what, vhost.as_deref(), args.json),
        AdminObject::KafkaGroup { name } => show(
            &c,
            &format!("/api/sluice/kafka/groups/{}", encode(name)),
            args.json,
            |v| {
                println!(
                    "group {}: {}, {} member(s)",
                    v["group"].as_str().unwrap_or(""),
                    v["state"].as_str().unwrap_or(""),
                    v["members"].as_array().map_or(0, Vec::len)
                );
                let rows = v["offsets"].as_array().cloned().unwrap_or_default();
                table(
                    &rows,
                    &["topic", "partition", "committed", "end_offset", "lag"],
                );
            },
        ),
        AdminObject::Queue(q) => {
            let (method, name, vhost, path_tail, body, done) = match q {
                QueueCommand::Declare {
                    name,
                    durable,
                    vhost,
                } => (
                    "PUT",
                    name,
                    vhost,
                    "",
                    Some(json!({"durable": durable})),
                    "ready",
                ),
                QueueCommand::Delete { name, vhost } => {
                    ("DELETE", name, vhost, "", None, "deleted")
                }
                QueueCommand::Purge { name, vhost } => {
                    ("DELETE", name, vhost, "/contents", None, "purged")
                }
            };
            let path = format!("/api/queues/{}/{}{path_tail}", encode(vhost), encode(name));
            report(
                &format!("queue {name}"),
                done,
                c.call(method, &path, body.as_ref()),
            )
        }
        AdminObject::User(UserCommand::Add {
            name,
            password,
            tags,
        }) => report(
            &format!("user {name}"),
            "changed",
            c.call(
                "PUT",
                &format!("/api/users/{}", encode(name)),
                Some(&json!({"password": password, "tags": tags})),
            ),
        ),
        AdminObject::User(UserCommand::Delete { name }) => report(
            &format!("user {name}"),
            "deleted",
            c.call("DELETE", &format!("/api/users/{}", encode(name)), None),
        ),
        AdminObject::Permission(PermissionCommand::Set {
            user,
            vhost,
            configure,
            write,
            read,
        }) => report(
            &format!("permissions of {user} in {vhost}"),
            "changed",
            c.call(
                "PUT",
                &format!("/api/permissions/{}/{}", encode(vhost), encode(user)),
                Some(&json!({"configure": configure, "write": write, "read": read})),
            ),
        ),
        AdminObject::Permission(PermissionCommand::Delete { user, vhost }) => report(
            &format!("permissions of {user} in {vhost}"),
            "deleted",
            c.call(
                "DELETE",
                &format!("/api/permissions/{}/{}", encode(vhost), encode(user)),
                None,
            ),
        ),
        AdminObject::Definitions(DefinitionsCommand::Export { file }) => {
            match c.call("GET", "/api/definitions", None) {
                Ok((200, text)) if file == "-" => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Ok((200, text)) => match std::fs::write(file, text) {
                    Ok(()) => {
                        println!("definitions exported to {file}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("sluice: {file}: {e}");
                        ExitCode::FAILURE
                    }
                },
                other => report("definitions", "exported", other),
            }
        }
        AdminObject::Definitions(DefinitionsCommand::Import { file }) => {
            let body = match std::fs::read(file)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
            {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("sluice: {file}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            report(
                "definitions",
                "imported",
                c.call("POST", "/api/definitions", Some(&body)),
            )
        }
    }
}

/// GETs `path` and prints it with `print` (or as JSON).
fn show(c: &Client, path: &str, as_json: bool, print: impl FnOnce(&Value)) -> ExitCode {
    match c.call("GET", path, None) {
        Ok((200, text)) => {
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                eprintln!("sluice: {path}: not JSON");
                return ExitCode::FAILURE;
            };
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text));
            } else {
                print(&v);
            }
            ExitCode::SUCCESS
        }
        other => report(path, "", other),
    }
}

fn list(c: &Client, what: Listable, vhost: Option<&str>, as_json: bool) -> ExitCode {
    let scoped = |base: &str| match vhost {
        Some(v) => format!("{base}/{}", encode(v)),
        None => base.to_string(),
    };
    let (path, columns): (String, &[&str]) = match what {
        Listable::Queues => (
            scoped("/api/queues"),
            &[
                "vhost",
                "name",
                "type",
                "durable",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ],
        ),
        Listable::Exchanges => (
            scoped("/api/exchanges"),
            &["vhost", "name", "type", "durable"],
        ),
        Listable::Bindings => (
            scoped("/api/bindings"),
            &[
                "vhost",
                "source",
                "destination",
                "destination_type",
                "routing_key",
            ],
        ),
        Listable::Vhosts => ("/api/vhosts".into(), &["name", "messages"]),
        Listable::Users => ("/api/users".into(), &["name", "tags"]),
        Listable::Permissions => (
            "/api/permissions".into(),
            &["user", "vhost", "configure", "write", "read"],
        ),
        Listable::Connections => (
            "/api/connections".into(),
            &["name", "user", "vhost", "channels", "user_provided_name"],
        ),
        Listable::Channels => (
            "/api/channels".into(),
            &[
                "name",
                "user",
                "consumer_count",
                "prefetch_count",
                "messages_unacknowledged",
            ],
        ),
        Listable::Consumers => (
            scoped("/api/consumers"),
            &[
                "queue.name",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
            ],
        ),
        Listable::Topics => (
            "/api/sluice/topics".into(),
            &["name", "partitions", "message_type", "messages", "bytes"],
        ),
        Listable::KafkaGroups => (
            "/api/sluice/kafka/groups".into(),
            &["group", "state", "members", "lag"],
        ),
        Listable::RocketmqSubscriptions => (
            "/api/sluice/rocketmq/subscriptions".into(),
            &["group", "topic", "queue", "lag", "in_flight", "retrying"],
        ),
    };
    show(c, &path, as_json, |v| {
        table(v.as_array().map_or(&[][..], Vec::as_slice), columns);
    })
}

/// A cell: strings as they are, lists joined with commas, dotted paths followed.
fn cell(row: &Value, column: &str) -> String {
    let v = column.split('.').try_fold(row, |v, k| v.get(k));
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Prints rows as an aligned table under the column names.
fn table(rows: &[Value], columns: &[&str]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r, c)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.to_vec());
    for r in &cells {
        line(r.iter().map(String::as_str).collect());
    }
}

/// A name as one path segment.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
