//! Load generator for any RocketMQ 5 gRPC endpoint (Sluice, or an Apache or
//! rocketmq-rust proxy), on the protocol's generated client.
//!
//! It sends NORMAL messages to an existing topic for `--duration` from `--producers`
//! concurrent senders (one message per SendMessage, as the official clients send),
//! counting only the sends the server answered OK. Then `--consumers` receive them back
//! as a SimpleConsumer does (ReceiveMessage in batches of 32, AckMessage per batch) in a
//! fresh consumer group, until every sent message arrived or nothing came for a while.
//! Each phase reports messages/s, MB/s and the broker's CPU per MB; the report counts
//! sent messages that never arrived and ones that arrived twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_rocketmq::pb;
use sluice_rocketmq::pb::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;

use crate::cpu::{self, Process};
use crate::kafka::Phase;

/// A benchmark run against a RocketMQ 5 gRPC endpoint.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Options {
    /// The endpoint: host:port of a RocketMQ 5 gRPC proxy (or Sluice)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8081")]
    pub endpoint: String,

    /// Topic to send to; it must exist (`sluice admin topic create`)
    #[arg(long)]
    pub topic: String,

    /// Message body size in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,

    /// Seconds of sending
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,

    /// Concurrent senders (each waits for its answer before the next send)
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub producers: u32,

    /// Concurrent receivers in the consumer group
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub consumers: u32,

    /// Broker process to charge CPU to (its /proc/PID/stat is read); repeat it for a
    /// broker made of several processes (a proxy, a broker and a name server)
    #[arg(long, value_name = "PID")]
    pub broker_pid: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub options: Options,
    pub send: Phase,
    pub receive: Phase,
    /// Sent (answered OK) but never received.
    pub missing: u64,
    /// Received more than once.
    pub duplicates: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.errors == 0
    }

    pub fn summary(&self) -> String {
        let phase = |name: &str, p: &Phase| {
            let broker = match (p.broker_cpu_s_per_mb, p.broker_cores) {
                (Some(s), Some(c)) => format!("{:.2} ms CPU/MB, {c:.2} cores", s * 1e3),
                _ => "CPU not measured".to_string(),
            };
            format!(
                "{name}: {} messages in {:.2} s = {:.0} messages/s, {:.1} MB/s; broker {broker}; client {:.2} cores\n",
                p.records,
                p.seconds,
                p.records_per_s,
                p.mb_per_s,
                p.client_cores.unwrap_or(0.0),
            )
        };
        let mut s = phase("send", &self.send);
        s += &phase("receive+ack", &self.receive);
        s += &format!(
            "check: missing {}  duplicates {}  errors {}\n",
            self.missing, self.duplicates, self.errors
        );
        for e in self.error_messages.iter().take(5) {
            s += &format!("  error: {e}\n");
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("{0}")]
    Cpu(#[from] cpu::CpuError),
    #[error("route of topic {0}: {1}")]
    Route(String, String),
}

/// The topic's message queues, as the route names them: senders spread over the
/// writable ones as the official clients do (a proxy may refuse a send without a queue).
async fn route(
    client: &mut MessagingServiceClient<Channel>,
    o: &Options,
    client_id: &str,
) -> Result<Vec<pb::MessageQueue>, RunError> {
    let fail = |why: String| RunError::Route(o.topic.clone(), why);
    // The access point, as clients name it (a proxy checks it is there).
    let (host, port) = o.endpoint.rsplit_once(':').unwrap_or((&o.endpoint, "8081"));
    let scheme = if host.parse::<std::net::Ipv4Addr>().is_ok() {
        pb::AddressScheme::IPv4
    } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
        pb::AddressScheme::IPv6
    } else {
        pb::AddressScheme::DomainName
    };
    let asked = pb::QueryRouteRequest {
        topic: resource(&o.topic),
        endpoints: Some(pb::Endpoints {
            scheme: scheme as i32,
            addresses: vec![pb::Address {
                host: host.to_string(),
                port: port.parse().unwrap_or(8081),
            }],
        }),
    };
    let answer = client
        .query_route(request(asked, client_id))
        .await
        .map_err(|e| fail(e.to_string()))?
        .into_inner();
    match answer.status {
        Some(s) if s.code == pb::Code::Ok as i32 => {}
        Some(s) => return Err(fail(format!("{}: {}", s.code, s.message))),
        None => return Err(fail("no status".into())),
    }
    let writable = [
        pb::Permission::Write as i32,
        pb::Permission::ReadWrite as i32,
    ];
    let queues: Vec<pb::MessageQueue> = answer
        .message_queues
        .into_iter()
        .filter(|q| writable.contains(&q.permission))
        .collect();
    if queues.is_empty() {
        return Err(fail("no writable message queue".into()));
    }
    Ok(queues)
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    })
}

/// A request with the headers every official client sends.
fn request<T>(message: T, client_id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    let m = r.metadata_mut();
    for (k, v) in [
        ("x-mq-client-id", client_id),
        ("x-mq-language", "RUST"),
        ("x-mq-protocol", "GRPC_V2"),
        ("x-mq-client-version", "sluice-bench"),
    ] {
        if let Ok(v) = v.parse() {
            m.insert(k, v);
        }
    }
    r
}

struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    fn note(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < 10 {
            first.push(what);
        }
    }
}

fn phase(
    count: u64,
    bytes_each: usize,
    wall: Duration,
    broker: Option<Duration>,
    client: Duration,
) -> Phase {
    let seconds = wall.as_secs_f64().max(1e-9);
    let bytes = count.saturating_mul(bytes_each as u64);
    let mb = bytes as f64 / 1e6;
    Phase {
        records: count,
        bytes,
        seconds,
        records_per_s: count as f64 / seconds,
        mb_per_s: mb / seconds,
        broker_cpu_s_per_mb: broker.filter(|_| mb > 0.0).map(|b| b.as_secs_f64() / mb),
        broker_cores: broker.map(|b| b.as_secs_f64() / seconds),
        client_cores: Some(client.as_secs_f64() / seconds),
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let ns = crate::payload::wall_ns();
    prost_types::Timestamp {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
    }
}

/// CPU time of all of `pids` together; `None` when none are given.
fn cpu_of(pids: &[u32]) -> Result<Option<Duration>, cpu::CpuError> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = Duration::ZERO;
    for &p in pids {
        total += cpu::cpu_time(Process::Pid(p))?;
    }
    Ok(Some(total))
}

pub async fn run(o: &Options) -> Result<Report, RunError> {
    let channel = Channel::from_shared(format!("http://{}", o.endpoint))
        .map_err(|e| RunError::Connect(o.endpoint.clone(), e.to_string()))?
        .connect()
        .await
        .map_err(|e| RunError::Connect(o.endpoint.clone(), e.to_string()))?;
    let client = MessagingServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let run_id = format!("{:x}", crate::payload::wall_ns());
    let client_id = format!("sluice-bench@{}@{run_id}", std::process::id());
    let errors = Arc::new(Errors {
        count: AtomicU64::new(0),
        first: Mutex::new(Vec::new()),
    });

    let queues = Arc::new(route(&mut client.clone(), o, &client_id).await?);

    // Send.
    let sent: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let body = bytes::Bytes::from(vec![b'x'; o.size]);
    let deadline = Instant::now() + Duration::from_secs_f64(o.duration);
    let (broker0, client0, start) = (
        cpu_of(&o.broker_pid)?,
        cpu::cpu_time(Process::Current)?,
        Instant::now(),
    );
    let mut tasks = Vec::new();
    for p in 0..o.producers {
        let (mut client, sent, errors, body) = (
            client.clone(),
            Arc::clone(&sent),
            Arc::clone(&errors),
            body.clone(),
        );
        let (topic, client_id, run_id) = (o.topic.clone(), client_id.clone(), run_id.clone());
        let queues = Arc::clone(&queues);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let Some(queue) = queues.get((p as usize + seq as usize) % queues.len()) else {
                    break;
                };
                let id = format!("{run_id}-{p}-{seq}");
                let message = pb::Message {
                    topic: resource(&topic),
                    user_properties: Default::default(),
                    system_properties: Some(pb::SystemProperties {
                        message_id: id.clone(),
                        message_type: pb::MessageType::Normal as i32,
                        body_encoding: pb::Encoding::Identity as i32,
                        queue_id: queue.id,
                        // As the official clients stamp every message.
                        born_timestamp: Some(now_timestamp()),
                        born_host: "127.0.0.1".into(),
                        ..Default::default()
                    }),
                    body: body.clone(),
                };
                let reply = client
                    .send_message(request(
                        pb::SendMessageRequest {
                            messages: vec![message],
                        },
                        &client_id,
                    ))
                    .await;
                match reply.map(|r| r.into_inner().status) {
                    Ok(Some(s)) if s.code == pb::Code::Ok as i32 => mine.push(id),
                    Ok(Some(s)) => errors.note(format!("send answered {}: {}", s.code, s.message)),
                    Ok(None) => errors.note("send answered without a status".into()),
                    Err(e) => errors.note(format!("send failed: {e}")),
                }
            }
            sent.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let send_wall = start.elapsed();
    let (broker1, client1) = (cpu_of(&o.broker_pid)?, cpu::cpu_time(Process::Current)?);
    let sent: HashSet<String> =
        std::mem::take(&mut *sent.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect();
    let send = phase(
        sent.len() as u64,
        o.size,
        send_wall,
        broker0.zip(broker1).map(|(a, b)| b.saturating_sub(a)),
        client1.saturating_sub(client0),
    );

    // Receive and ack, in a fresh group.
    let group = format!("sluice-bench-{run_id}");
    // Ids seen, duplicates, and when the last new one arrived.
    let received: Arc<Mutex<(HashSet<String>, u64, Instant)>> =
        Arc::new(Mutex::new((HashSet::new(), 0, Instant::now())));
    let target = sent.len();
    let start = Instant::now();
    let (broker0, client0) = (cpu_of(&o.broker_pid)?, cpu::cpu_time(Process::Current)?);
    let mut tasks = Vec::new();
    for c in 0..o.consumers.max(1) {
        let (mut client, received, errors) =
            (client.clone(), Arc::clone(&received), Arc::clone(&errors));
        let queue = queues
            .get(c as usize % queues.len())
            .cloned()
            .unwrap_or_default();
        let (topic, group, client_id) = (o.topic.clone(), group.clone(), client_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            loop {
                if received.lock().unwrap_or_else(|p| p.into_inner()).0.len() >= target || idle >= 3
                {
                    return;
                }
                let asked = pb::ReceiveMessageRequest {
                    group: resource(&group),
                    message_queue: Some(queue.clone()),
                    filter_expression: Some(pb::FilterExpression {
                        r#type: pb::FilterType::Tag as i32,
                        expression: "*".into(),
                    }),
                    batch_size: 32,
                    invisible_duration: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    auto_renew: false,
                    long_polling_timeout: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    attempt_id: None,
                };
                let mut stream = match client.receive_message(request(asked, &client_id)).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        errors.note(format!("receive failed: {e}"));
                        idle += 1;
                        continue;
                    }
                };
                let mut entries = Vec::new();
                while let Ok(Some(item)) = stream.message().await {
                    use pb::receive_message_response::Content;
                    match item.content {
                        Some(Content::Message(m)) => {
                            if let Some(s) = m.system_properties {
                                entries.push(pb::AckMessageEntry {
                                    message_id: s.message_id,
                                    receipt_handle: s.receipt_handle.unwrap_or_default(),
                                    lite_topic: None,
                                });
                            }
                        }
                        Some(Content::Status(s))
                            if s.code != pb::Code::Ok as i32
                                && s.code != pb::Code::MessageNotFound as i32 =>
                        {
                            errors.note(format!("receive answered {}: {}", s.code, s.message));
                        }
                        _ => {}
                    }
                }
                if entries.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                {
                    let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
                    for e in &entries {
                        if r.0.insert(e.message_id.clone()) {
                            r.2 = Instant::now();
                        } else {
                            r.1 += 1;
                        }
                    }
                }
                let ack = pb::AckMessageRequest {
                    group: resource(&group),
                    topic: resource(&topic),
                    entries,
                };
                match client.ack_message(request(ack, &client_id)).await {
                    Ok(r)
                        if r.get_ref()
                            .status
                            .as_ref()
                            .is_some_and(|s| s.code == pb::Code::Ok as i32) => {}
                    Ok(r) => errors.note(format!("ack answered {:?}", r.get_ref().status)),
                    Err(e) => errors.note(format!("ack failed: {e}")),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (broker1, client1) = (cpu_of(&o.broker_pid)?, cpu::cpu_time(Process::Current)?);
    let (got, duplicates, last) = std::mem::replace(
        &mut *received.lock().unwrap_or_else(|p| p.into_inner()),
        (HashSet::new(), 0, Instant::now()),
    );
    // Up to the last arrival: the idle polls that end the phase are not receiving.
    let receive_wall = last.saturating_duration_since(start);
    let missing = sent.iter().filter(|id| !got.contains(*id)).count() as u64;
    let receive = phase(
        got.len() as u64,
        o.size,
        receive_wall,
        broker0.zip(broker1).map(|(a, b)| b.saturating_sub(a)),
        client1.saturating_sub(client0),
    );
    let error_messages = errors
        .first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Report {
        tool: "sluice bench rocketmq",
        options: o.clone(),
        send,
        receive,
        missing,
        duplicates,
        errors: errors.count.load(Ordering::Relaxed),
        error_messages,
    })
}
