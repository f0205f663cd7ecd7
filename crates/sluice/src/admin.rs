//! `sluice admin`: calls a running server's admin HTTP API (see `http.rs`) and reports
//! the outcome: exit 0 when the object is usable, 1 with the server's reason otherwise.

use std::process::ExitCode;

use base64::Engine as _;

use crate::cli::{AdminArgs, AdminObject, GroupCommand, TopicCommand};

pub fn main(args: &AdminArgs) -> ExitCode {
    let server = args.server.trim_end_matches('/');
    let (path, body, what) = match &args.object {
        AdminObject::Topic(TopicCommand::Create {
            name,
            partitions,
            message_type,
        }) => (
            format!("/api/sluice/rocketmq/topics/{}", encode(name)),
            serde_json::json!({ "queues": partitions, "message_type": message_type }),
            format!("topic {name}"),
        ),
        AdminObject::Group(GroupCommand::Create {
            name,
            fifo,
            retry_max_times,
        }) => (
            format!("/api/sluice/rocketmq/groups/{}", encode(name)),
            serde_json::json!({ "fifo": fifo, "retry_max_times": retry_max_times }),
            format!("group {name}"),
        ),
    };
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", args.user, args.password));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .put(format!("{server}{path}"))
        .header("authorization", format!("Basic {credentials}"))
        .send_json(&body);
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot reach {server}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        let verb = if status == 201 { "created" } else { "ready" };
        println!("{what} {verb}");
        return ExitCode::SUCCESS;
    }
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let reason = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
        .unwrap_or(text);
    eprintln!("sluice: {what}: {status} {reason}");
    ExitCode::FAILURE
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
