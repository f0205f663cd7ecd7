//! `apache.rocketmq.v2.MessagingService` on the engine: Sluice answers as name server and
//! broker at once (the route names this endpoint). Failures a client should act on come
//! back as RocketMQ status codes inside the response, as the Apache proxy answers them;
//! gRPC errors are only for what the protocol has no response for.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_engine::stream::{Partition, Topic};
use sluice_engine::subscription::Command;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::broker::{AppendFailed, EndFailed, RocketBroker, parse_receipt_handle, receipt_handle};
use crate::convert::{self, Delivered};
use crate::pb::{self, Code, messaging_service_server::MessagingService};

/// Shortest invisible time a receive may ask for (the Apache proxy's minimum).
const INVISIBLE_MIN_MS: u64 = 10_000;
/// Longest invisible time (the Apache proxy's maximum).
const INVISIBLE_MAX_MS: u64 = 12 * 60 * 60 * 1000;
/// Longest long poll, and the one a receive gets when it names none.
const LONG_POLL_MAX: Duration = Duration::from_secs(20);
/// Messages one receive hands out at most.
const RECEIVE_BATCH_MAX: usize = 32;

fn status(code: Code, message: impl Into<String>) -> Option<pb::Status> {
    Some(pb::Status {
        code: code as i32,
        message: message.into(),
    })
}

fn ok() -> Option<pb::Status> {
    status(Code::Ok, "OK")
}

/// A request refused with a RocketMQ code.
struct Refused(Code, String);

impl Refused {
    fn status(self) -> Option<pb::Status> {
        status(self.0, self.1)
    }
}

/// What a call reads (receives from, acknowledges in) or writes (sends to), by name.
enum Touch<'a> {
    Read(&'a str),
    Write(&'a str),
}

impl Service {
    /// Every call names its client, as the Apache proxy requires; with credentials
    /// configured it is signed by a known access key whose user may touch what it names.
    fn check_client<T>(&self, request: &Request<T>, touches: &[Touch<'_>]) -> Result<(), Refused> {
        let header = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok());
        match header("x-mq-client-id") {
            Some(id) if !id.is_empty() => {}
            _ => {
                return Err(Refused(
                    Code::ClientIdRequired,
                    "x-mq-client-id header is required".into(),
                ));
            }
        }
        let Some(auth) = &self.broker.auth else {
            return Ok(());
        };
        let peer = request.remote_addr().map(|a| a.ip());
        let claimed = header("authorization")
            .and_then(crate::auth::access_key)
            .unwrap_or("");
        if auth.throttled(peer, claimed) {
            auth.failed(peer, claimed);
            return Err(Refused(Code::Unauthorized, "check signature failed".into()));
        }
        let user = crate::auth::verify(header("authorization"), header("x-mq-date-time"), |k| {
            auth.secret(k)
        })
        .map_err(|e| {
            auth.failed(peer, claimed);
            tracing::info!(?peer, access_key = claimed, why = %e, "RocketMQ call refused");
            Refused(Code::Unauthorized, e.to_string())
        })?;
        for touch in touches {
            let (write, name) = match touch {
                Touch::Read(n) => (false, *n),
                Touch::Write(n) => (true, *n),
            };
            if !name.is_empty() && !auth.allowed(&user, write, name) {
                let action = if write { "Pub" } else { "Sub" };
                return Err(Refused(
                    Code::Forbidden,
                    format!("User:{user} has no {action} permission on {name}"),
                ));
            }
        }
        Ok(())
    }
}

fn name(resource: Option<&pb::Resource>) -> &str {
    resource.map_or("", |r| r.name.as_str())
}

/// The delivery a request names by group, topic and receipt handle.
struct Named {
    topic: Arc<Topic>,
    queue: i32,
    offset: u64,
    receipt: u64,
    partition: Arc<Partition>,
    sub: Arc<std::sync::Mutex<crate::broker::QueueSub>>,
}

fn invalid_handle() -> Refused {
    Refused(
        Code::InvalidReceiptHandle,
        "receipt handle is invalid or expired".into(),
    )
}

fn group_name(resource: Option<&pb::Resource>) -> Result<&str, Refused> {
    let group = name(resource);
    if group.is_empty() {
        return Err(Refused(
            Code::IllegalConsumerGroup,
            "consumer group is required".into(),
        ));
    }
    Ok(group)
}

pub struct Service {
    broker: Arc<RocketBroker>,
    /// Where the next receive starts among a topic's queues, so consumers share them.
    next_queue: AtomicUsize,
}

impl Service {
    pub fn new(broker: Arc<RocketBroker>) -> Self {
        Service {
            broker,
            next_queue: AtomicUsize::new(0),
        }
    }

    fn topic(&self, resource: Option<&pb::Resource>) -> Result<Arc<Topic>, Refused> {
        let topic = name(resource);
        if topic.is_empty() {
            return Err(Refused(Code::IllegalTopic, "topic name is required".into()));
        }
        self.broker
            .topics
            .get(topic)
            .ok_or_else(|| Refused(Code::TopicNotFound, format!("topic not found: {topic}")))
    }

    /// The delivery `handle` names in `group`'s subscription to `topic`.
    fn delivery(
        &self,
        group: &str,
        topic: Option<&pb::Resource>,
        handle: &str,
    ) -> Result<Named, Refused> {
        let topic = self.topic(topic)?;
        let (queue, offset, receipt) = parse_receipt_handle(handle).ok_or_else(invalid_handle)?;
        let partition = topic.partition(queue).ok_or_else(invalid_handle)?;
        let sub = self
            .broker
            .existing_subscription(group, &topic.name, queue)
            .ok_or_else(invalid_handle)?;
        Ok(Named {
            topic,
            queue,
            offset,
            receipt,
            partition,
            sub,
        })
    }

    fn endpoints(&self, asked: Option<&pb::Endpoints>) -> pb::Endpoints {
        // As the Apache proxy does: a client is sent back to the address it came in by,
        // which survives NAT and port forwarding; without one, the advertised address.
        if let Some(e) = asked
            && !e.addresses.is_empty()
        {
            return e.clone();
        }
        let host = &self.broker.config.advertised_host;
        let scheme = if host.parse::<std::net::Ipv4Addr>().is_ok() {
            pb::AddressScheme::IPv4
        } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
            pb::AddressScheme::IPv6
        } else {
            pb::AddressScheme::DomainName
        };
        pb::Endpoints {
            scheme: scheme as i32,
            addresses: vec![pb::Address {
                host: host.clone(),
                port: i32::from(self.broker.config.advertised_port),
            }],
        }
    }

    /// The message queues of `topic`, each naming this broker at `endpoints`.
    fn route(
        &self,
        topic: Option<&pb::Resource>,
        endpoints: Option<&pb::Endpoints>,
    ) -> Result<Vec<pb::MessageQueue>, Refused> {
        let found = self.topic(topic)?;
        let resource = topic.cloned().unwrap_or_default();
        Ok(self.queues(&found, &resource, &self.endpoints(endpoints)))
    }

    fn queues(
        &self,
        topic: &Topic,
        resource: &pb::Resource,
        endpoints: &pb::Endpoints,
    ) -> Vec<pb::MessageQueue> {
        (0..topic.partition_count())
            .map(|id| pb::MessageQueue {
                topic: Some(resource.clone()),
                id,
                permission: pb::Permission::ReadWrite as i32,
                broker: Some(pb::Broker {
                    name: "sluice".into(),
                    id: 0,
                    endpoints: Some(endpoints.clone()),
                }),
                accept_message_types: accepted_types(topic).iter().map(|t| *t as i32).collect(),
            })
            .collect()
    }

    fn send(
        &self,
        request: &pb::SendMessageRequest,
    ) -> Result<(Vec<pb::SendResultEntry>, Pending), Refused> {
        let first = request
            .messages
            .first()
            .ok_or_else(|| Refused(Code::BadRequest, "no message to send".into()))?;
        let topic = self.topic(first.topic.as_ref())?;
        let partitions = topic.partition_count();
        let now = self.broker.clock.now_ms();
        let accepted = accepted_types(&topic);
        // Checked whole before anything is stored: a refused request stores nothing.
        let mut now_queues: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        let mut held: Vec<(usize, i32, Kind)> = Vec::new();
        for (i, message) in request.messages.iter().enumerate() {
            if name(message.topic.as_ref()) != topic.name {
                return Err(Refused(
                    Code::BadRequest,
                    "messages of one request must share a topic".into(),
                ));
            }
            let system = message.system_properties.as_ref().ok_or_else(|| {
                Refused(Code::BadRequest, "system properties are required".into())
            })?;
            if system.message_id.is_empty() {
                return Err(Refused(
                    Code::IllegalMessageId,
                    "message id is required".into(),
                ));
            }
            if message.body.len() > self.broker.config.max_body_bytes {
                return Err(Refused(
                    Code::MessageBodyTooLarge,
                    format!(
                        "message body is {} bytes, more than {}",
                        message.body.len(),
                        self.broker.config.max_body_bytes
                    ),
                ));
            }
            let kind = classify(system, now)?;
            let declared = pb::MessageType::try_from(system.message_type).unwrap_or_default();
            if !accepted.contains(&declared) {
                return Err(Refused(
                    Code::MessagePropertyConflictWithType,
                    format!(
                        "topic {} does not accept {} messages (its message.type is {})",
                        topic.name,
                        declared.as_str_name(),
                        topic.config().message_type.as_str()
                    ),
                ));
            }
            let queue = if (0..partitions).contains(&system.queue_id) {
                system.queue_id
            } else {
                let n = usize::try_from(partitions.max(1)).unwrap_or(1);
                i32::try_from(self.next_queue.fetch_add(1, Ordering::Relaxed) % n).unwrap_or(0)
            };
            match kind {
                Kind::Now => now_queues.entry(queue).or_default().push(i),
                Kind::At(_) | Kind::Half => held.push((i, queue, kind)),
            }
        }
        let mut entries: Vec<pb::SendResultEntry> = request
            .messages
            .iter()
            .map(|m| pb::SendResultEntry {
                status: ok(),
                message_id: m
                    .system_properties
                    .as_ref()
                    .map(|s| s.message_id.clone())
                    .unwrap_or_default(),
                // A held message has no offset until it is delivered.
                offset: -1,
                ..Default::default()
            })
            .collect();
        let mut pending = Pending::default();
        let refused = |e: AppendFailed| match e {
            AppendFailed::NoQueue => Refused(
                Code::TopicNotFound,
                format!("topic not found: {}", topic.name),
            ),
            AppendFailed::Storage => {
                Refused(Code::InternalServerError, "message not stored".into())
            }
        };
        for (queue, members) in now_queues {
            let batch: Vec<(&pb::Message, &pb::SystemProperties)> = members
                .iter()
                .filter_map(|&i| {
                    let m = request.messages.get(i)?;
                    Some((m, m.system_properties.as_ref()?))
                })
                .collect();
            let appended = self
                .broker
                .append(&topic.name, queue, &batch)
                .map_err(refused)?;
            for (k, i) in members.into_iter().enumerate() {
                if let Some(entry) = entries.get_mut(i) {
                    entry.offset = appended.base_offset + i64::try_from(k).unwrap_or(0);
                }
            }
            pending
                .appended
                .push((appended.partition, appended.next_offset));
        }
        pending.held = !held.is_empty();
        for (i, queue, kind) in held {
            let (Some(message), Some(entry)) = (request.messages.get(i), entries.get_mut(i)) else {
                continue;
            };
            match kind {
                Kind::At(at) => self
                    .broker
                    .hold(message, &topic.name, queue, at)
                    .map_err(refused)?,
                Kind::Half => {
                    entry.transaction_id = self
                        .broker
                        .begin_transaction(message, &topic.name, queue)
                        .map_err(refused)?;
                }
                Kind::Now => {}
            }
        }
        if !topic.config().flush_sync {
            pending = Pending::default();
        }
        Ok((entries, pending))
    }

    async fn settle_entries(
        &self,
        request: &pb::AckMessageRequest,
    ) -> Result<Vec<pb::AckMessageResultEntry>, Refused> {
        let group = group_name(request.group.as_ref())?;
        let topic = self.topic(request.topic.as_ref())?;
        let mut commits: BTreeMap<i32, u64> = BTreeMap::new();
        let mut results = Vec::with_capacity(request.entries.len());
        for entry in &request.entries {
            let settled =
                parse_receipt_handle(&entry.receipt_handle).and_then(|(queue, offset, receipt)| {
                    topic.partition(queue)?;
                    let sub = self
                        .broker
                        .existing_subscription(group, &topic.name, queue)?;
                    let mut moved = Vec::new();
                    self.broker
                        .settle(&sub, Command::Ack { offset, receipt }, &mut moved)
                        .ok()?;
                    if let Some(c) = moved.last() {
                        commits.insert(queue, *c);
                    }
                    Some(())
                });
            results.push(pb::AckMessageResultEntry {
                message_id: entry.message_id.clone(),
                receipt_handle: entry.receipt_handle.clone(),
                status: match settled {
                    Some(()) => ok(),
                    None => status(
                        Code::InvalidReceiptHandle,
                        "receipt handle is invalid or expired",
                    ),
                },
            });
        }
        // One fsync for the whole acknowledgement, whatever queues it covers.
        let commits: Vec<(i32, u64)> = commits.into_iter().collect();
        if !commits.is_empty() {
            self.broker.commit_many(group, &topic.name, &commits).await;
        }
        Ok(results)
    }

    /// One receive: leases messages from the topic's queues, waiting up to `wait` for
    /// some to arrive or come due.
    async fn receive(
        &self,
        request: &pb::ReceiveMessageRequest,
        wait: Duration,
    ) -> Result<Vec<pb::Message>, Refused> {
        let group = group_name(request.group.as_ref())?;
        let topic = self.topic(
            request
                .message_queue
                .as_ref()
                .and_then(|q| q.topic.as_ref()),
        )?;
        let filter = Filter::parse(request.filter_expression.as_ref())?;
        let invisible_ms = match request
            .invisible_duration
            .as_ref()
            .map(convert::duration_ms)
        {
            Some(ms) if (INVISIBLE_MIN_MS..=INVISIBLE_MAX_MS).contains(&ms) => ms,
            Some(ms) => {
                return Err(Refused(
                    Code::IllegalInvisibleTime,
                    format!(
                        "invisible time {ms} ms is out of range [{INVISIBLE_MIN_MS}, {INVISIBLE_MAX_MS}]"
                    ),
                ));
            }
            None if request.auto_renew => crate::broker::AUTO_RENEW_INVISIBLE_MS,
            None => {
                return Err(Refused(
                    Code::IllegalInvisibleTime,
                    "invisible time is required".into(),
                ));
            }
        };
        let max = usize::try_from(request.batch_size)
            .unwrap_or(1)
            .clamp(1, RECEIVE_BATCH_MAX);
        let deadline = tokio::time::Instant::now() + wait;
        let notify = Arc::new(Notify::new());
        let store_host = format!(
            "{}:{}",
            self.broker.config.advertised_host, self.broker.config.advertised_port
        );
        loop {
            let count = topic.partition_count();
            let partitions: Vec<(i32, Arc<Partition>)> = (0..count)
                .filter_map(|i| Some((i, topic.partition(i)?)))
                .collect();
            for (_, p) in &partitions {
                p.watch(&notify);
            }
            let n = partitions.len().max(1);
            let first = self.next_queue.fetch_add(1, Ordering::Relaxed) % n;
            let mut out = Vec::new();
            let mut next_due: Option<i64> = None;
            for k in 0..partitions.len() {
                let Some((index, partition)) = partitions.get((first + k) % n) else {
                    continue;
                };
                if out.len() >= max {
                    break;
                }
                let Some(sub) = self
                    .broker
                    .subscription(group, &topic.name, partition, *index)
                else {
                    return Err(Refused(
                        Code::TooManyRequests,
                        format!(
                            "the broker holds {} consumer group subscriptions",
                            crate::broker::SUBSCRIPTIONS_MAX
                        ),
                    ));
                };
                let mut commits = Vec::new();
                let leased = self.broker.receive(
                    group,
                    &topic.name,
                    &sub,
                    partition,
                    max - out.len(),
                    invisible_ms,
                    &mut commits,
                );
                for l in leased {
                    if !filter.accepts(&l.record) {
                        // Not for this group's filter: done for it, as RocketMQ skips it.
                        let _ = self.broker.settle(
                            &sub,
                            Command::Ack {
                                offset: l.record.offset,
                                receipt: l.receipt,
                            },
                            &mut commits,
                        );
                        continue;
                    }
                    if request.auto_renew {
                        self.broker.track_renewal(&sub, l.record.offset, l.receipt);
                    }
                    let handle = receipt_handle(*index, l.record.offset, l.receipt);
                    out.push(convert::to_message(
                        &l.record,
                        Delivered {
                            topic: &topic.name,
                            queue_id: *index,
                            receipt_handle: &handle,
                            attempt: l.attempt,
                            invisible_ms,
                            store_host: &store_host,
                        },
                    ));
                }
                if let Some(c) = commits.last() {
                    self.broker.commit(group, &topic.name, *index, *c).await;
                }
                if let Some(due) = RocketBroker::next_due(&sub) {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            // Woken by an append, by a lease that ends (a redelivery), or by the deadline.
            let mut until = deadline;
            if let Some(due) = next_due {
                let wait_ms = due.saturating_sub(self.broker.clock.now_ms()).max(1);
                until = until.min(now + Duration::from_millis(u64::try_from(wait_ms).unwrap_or(1)));
            }
            let _ = tokio::time::timeout_at(until, notify.notified()).await;
        }
    }
}

/// The message types topics accept (Apache RocketMQ's topics of type MIXED accept all).
/// The message types a topic accepts: its `message.type`, or all four for MIXED (the
/// default), as Apache RocketMQ's topic attribute says.
fn accepted_types(topic: &Topic) -> Vec<pb::MessageType> {
    use sluice_engine::stream::MessageType as T;
    match topic.config().message_type {
        T::Normal => vec![pb::MessageType::Normal],
        T::Fifo => vec![pb::MessageType::Fifo],
        T::Delay => vec![pb::MessageType::Delay],
        T::Transaction => vec![pb::MessageType::Transaction],
        T::Mixed => vec![
            pb::MessageType::Normal,
            pb::MessageType::Fifo,
            pb::MessageType::Delay,
            pb::MessageType::Transaction,
        ],
    }
}

/// What a send left to wait for before it is answered: the fsyncs of a `flush=sync`
/// topic.
#[derive(Debug, Default)]
struct Pending {
    appended: Vec<(Arc<Partition>, u64)>,
    held: bool,
}

/// What a sent message becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Appended now.
    Now,
    /// Held until this time.
    At(i64),
    /// A half message: held until its transaction ends.
    Half,
}

/// Longest delay (the Apache broker's `timerMaxDelaySec` default: 3 days).
const DELAY_MAX_MS: i64 = 3 * 24 * 60 * 60 * 1000;

/// Checks a message's type against its properties, as the Apache proxy does, and says
/// what becomes of it.
fn classify(system: &pb::SystemProperties, now_ms: i64) -> Result<Kind, Refused> {
    let kind = pb::MessageType::try_from(system.message_type).unwrap_or_default();
    let conflict = |why: &str| {
        Err(Refused(
            Code::MessagePropertyConflictWithType,
            format!("{} message {why}", kind.as_str_name()),
        ))
    };
    match kind {
        pb::MessageType::Normal => {
            if system.message_group.is_some() {
                return conflict("has a message group");
            }
            if system.delivery_timestamp.is_some() {
                return conflict("has a delivery time");
            }
            Ok(Kind::Now)
        }
        pb::MessageType::Fifo => {
            if system.message_group.as_deref().is_none_or(str::is_empty) {
                return conflict("has no message group");
            }
            if system.delivery_timestamp.is_some() {
                return conflict("has a delivery time");
            }
            Ok(Kind::Now)
        }
        pb::MessageType::Delay => {
            if system.message_group.is_some() {
                return conflict("has a message group");
            }
            let Some(at) = system.delivery_timestamp.as_ref().map(convert::delivery_ms) else {
                return conflict("has no delivery time");
            };
            if at > now_ms.saturating_add(DELAY_MAX_MS) {
                return Err(Refused(
                    Code::IllegalDeliveryTime,
                    format!("delivery time {at} is more than 3 days ahead"),
                ));
            }
            Ok(if at > now_ms { Kind::At(at) } else { Kind::Now })
        }
        pb::MessageType::Transaction => {
            if system.message_group.is_some() {
                return conflict("has a message group");
            }
            if system.delivery_timestamp.is_some() {
                return conflict("has a delivery time");
            }
            Ok(Kind::Half)
        }
        other => Err(Refused(
            Code::MessagePropertyConflictWithType,
            format!("{} messages are not supported yet", other.as_str_name()),
        )),
    }
}

/// The first tag of a record's system properties, if it was sent over RocketMQ.
fn tag_of(record: &sluice_engine::stream::record::Record) -> Option<String> {
    use prost::Message as _;
    record
        .headers
        .iter()
        .find(|(k, _)| k.as_ref() == convert::SYSTEM_HEADER)
        .and_then(|(_, v)| pb::SystemProperties::decode(v.as_ref()?.as_ref()).ok())
        .and_then(|s| s.tag)
}

/// A consumer group's tag filter: `*` (or empty) takes everything, `a || b` those tags.
#[derive(Debug, PartialEq)]
enum Filter {
    All,
    Tags(HashSet<String>),
    Sql(crate::sql::Sql),
}

impl Filter {
    fn parse(expression: Option<&pb::FilterExpression>) -> Result<Filter, Refused> {
        let Some(e) = expression else {
            return Ok(Filter::All);
        };
        match pb::FilterType::try_from(e.r#type).unwrap_or_default() {
            pb::FilterType::Tag | pb::FilterType::Unspecified => {}
            pb::FilterType::Sql => {
                return crate::sql::Sql::parse(&e.expression)
                    .map(Filter::Sql)
                    .map_err(|why| {
                        Refused(
                            Code::IllegalFilterExpression,
                            format!("illegal SQL92 expression {:?}: {why}", e.expression),
                        )
                    });
            }
        }
        let expr = e.expression.trim();
        if expr.is_empty() || expr == "*" {
            return Ok(Filter::All);
        }
        let tags: HashSet<String> = expr
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if tags.is_empty() {
            return Err(Refused(
                Code::IllegalFilterExpression,
                format!("illegal tag expression: {expr}"),
            ));
        }
        Ok(Filter::Tags(tags))
    }

    /// Whether the group takes `record`: by its tag, or by its user properties and tag
    /// (`TAGS`) for an SQL92 filter.
    fn accepts(&self, record: &sluice_engine::stream::record::Record) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(tags) => tag_of(record).is_some_and(|t| tags.contains(&t)),
            Filter::Sql(sql) => {
                let mut properties = convert::user_properties(record);
                if let Some(tag) = tag_of(record) {
                    properties.insert("TAGS".to_string(), tag);
                }
                sql.matches(&properties)
            }
        }
    }
}

/// What the server answers a client's settings with: the client's own, completed with
/// the server's side (limits, retry policy, receive defaults), as the Apache proxy does.
fn settings_reply(client: &pb::Settings, broker: &RocketBroker) -> pb::Settings {
    let max_body_bytes = broker.config.max_body_bytes;
    let mut reply = client.clone();
    match reply.pub_sub.as_mut() {
        Some(pb::settings::PubSub::Publishing(p)) => {
            p.max_body_size = i32::try_from(max_body_bytes).unwrap_or(i32::MAX);
            p.validate_message_type = true;
            reply.backoff_policy = Some(pb::RetryPolicy {
                max_attempts: 3,
                strategy: Some(pb::retry_policy::Strategy::ExponentialBackoff(
                    pb::ExponentialBackoff {
                        initial: Some(convert::duration(10)),
                        max: Some(convert::duration(1_000)),
                        multiplier: 2.0,
                    },
                )),
            });
        }
        Some(pb::settings::PubSub::Subscription(s)) => {
            let group = name(s.group.as_ref()).to_string();
            let max_attempts = broker.max_delivery_attempts(&group);
            // A FIFO group's push consumers consume one message at a time per queue and
            // forward a message that failed its last attempt to the dead-letter topic.
            s.fifo = Some(broker.group(&group).fifo);
            s.receive_batch_size = Some(i32::try_from(RECEIVE_BATCH_MAX).unwrap_or(32));
            s.long_polling_timeout = Some(convert::duration(
                u64::try_from(LONG_POLL_MAX.as_millis()).unwrap_or(20_000),
            ));
            // RocketMQ's redelivery delays, used by push consumers between attempts.
            let delays_s = [
                1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600,
                7200,
            ];
            reply.backoff_policy = Some(pb::RetryPolicy {
                max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
                strategy: Some(pb::retry_policy::Strategy::CustomizedBackoff(
                    pb::CustomizedBackoff {
                        next: delays_s
                            .iter()
                            .map(|s| convert::duration(s * 1000))
                            .collect(),
                    },
                )),
            });
        }
        None => {}
    }
    reply
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl MessagingService for Service {
    async fn query_route(
        &self,
        request: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let asked = name(request.get_ref().topic.as_ref()).to_string();
        if let Some(queues) = self.broker.config.auto_create_queues
            && sluice_engine::stream::valid_name(&asked)
            && self.broker.topics.get(&asked).is_none()
            && self.check_client(&request, &[]).is_ok()
        {
            // File work (the topic's directories and metadata fsync), off the workers.
            let broker = Arc::clone(&self.broker);
            let made =
                tokio::task::spawn_blocking(move || broker.create_topic(&asked, queues, "MIXED"))
                    .await;
            if let Ok(Err(e)) = made {
                tracing::warn!(error = %e, "cannot auto-create a RocketMQ topic");
            }
        }
        let r = request.get_ref();
        let answer = self
            .check_client(&request, &[])
            .and_then(|()| self.route(r.topic.as_ref(), r.endpoints.as_ref()));
        Ok(Response::new(match answer {
            Ok(message_queues) => pb::QueryRouteResponse {
                status: ok(),
                message_queues,
            },
            Err(e) => pb::QueryRouteResponse {
                status: e.status(),
                message_queues: Vec::new(),
            },
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let status = match self.check_client(&request, &[]) {
            Ok(()) => ok(),
            Err(e) => e.status(),
        };
        Ok(Response::new(pb::HeartbeatResponse { status }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let touches: Vec<Touch<'_>> = request
            .get_ref()
            .messages
            .iter()
            .map(|m| Touch::Write(name(m.topic.as_ref())))
            .collect();
        let mut answer = self
            .check_client(&request, &touches)
            .and_then(|()| self.send(request.get_ref()));
        // A `flush=sync` topic answers once what the send stored is on disk.
        if let Ok((_, pending)) = &mut answer {
            let mut synced = Ok(());
            for (partition, next) in std::mem::take(&mut pending.appended) {
                if let Err(e) = partition.wait_durable(next).await {
                    tracing::error!(error = %e, "fsync failed");
                    synced = Err(());
                }
            }
            if std::mem::take(&mut pending.held) {
                let broker = Arc::clone(&self.broker);
                let held = tokio::task::spawn_blocking(move || broker.sync_held()).await;
                if !matches!(held, Ok(Ok(()))) {
                    synced = Err(());
                }
            }
            if synced.is_err() {
                answer = Err(Refused(
                    Code::MasterPersistenceTimeout,
                    "stored, but not made durable".into(),
                ));
            }
        }
        Ok(Response::new(match answer {
            Ok((entries, _)) => pb::SendMessageResponse {
                status: ok(),
                entries,
            },
            Err(e) => pb::SendMessageResponse {
                status: e.status(),
                entries: Vec::new(),
            },
        }))
    }

    async fn query_assignment(
        &self,
        request: Request<pb::QueryAssignmentRequest>,
    ) -> Result<Response<pb::QueryAssignmentResponse>, Status> {
        let r = request.get_ref();
        let answer = self
            .check_client(&request, &[Touch::Read(name(r.group.as_ref()))])
            .and_then(|()| self.route(r.topic.as_ref(), r.endpoints.as_ref()));
        Ok(Response::new(match answer {
            Ok(queues) => pb::QueryAssignmentResponse {
                status: ok(),
                assignments: queues
                    .into_iter()
                    .map(|q| pb::Assignment {
                        message_queue: Some(q),
                    })
                    .collect(),
            },
            Err(e) => pb::QueryAssignmentResponse {
                status: e.status(),
                assignments: Vec::new(),
            },
        }))
    }

    type ReceiveMessageStream = Stream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let r = request.get_ref();
        let topic = r.message_queue.as_ref().and_then(|q| q.topic.as_ref());
        let checked = self.check_client(
            &request,
            &[
                Touch::Read(name(r.group.as_ref())),
                Touch::Read(name(topic)),
            ],
        );
        let wait = request
            .get_ref()
            .long_polling_timeout
            .as_ref()
            .map_or(LONG_POLL_MAX, |d| {
                Duration::from_millis(convert::duration_ms(d))
            })
            .min(LONG_POLL_MAX);
        let result = match checked {
            Ok(()) => self.receive(request.get_ref(), wait).await,
            Err(e) => Err(e),
        };
        let mut items = Vec::new();
        match result {
            Ok(messages) if messages.is_empty() => {
                items.push(pb::receive_message_response::Content::Status(pb::Status {
                    code: Code::MessageNotFound as i32,
                    message: "no new message".into(),
                }));
            }
            Ok(messages) => {
                items.push(pb::receive_message_response::Content::Status(pb::Status {
                    code: Code::Ok as i32,
                    message: "OK".into(),
                }));
                items.extend(
                    messages
                        .into_iter()
                        .map(pb::receive_message_response::Content::Message),
                );
            }
            Err(Refused(code, message)) => {
                items.push(pb::receive_message_response::Content::Status(pb::Status {
                    code: code as i32,
                    message,
                }));
            }
        }
        items.push(pb::receive_message_response::Content::DeliveryTimestamp(
            convert::timestamp(self.broker.clock.now_ms()),
        ));
        let (tx, rx) = mpsc::channel(items.len().max(1));
        for content in items {
            // The channel holds every item: nothing waits here.
            let _ = tx.try_send(Ok(pb::ReceiveMessageResponse {
                content: Some(content),
            }));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack_message(
        &self,
        request: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        let r = request.get_ref();
        let touches = [
            Touch::Read(name(r.group.as_ref())),
            Touch::Read(name(r.topic.as_ref())),
        ];
        let answer = match self.check_client(&request, &touches) {
            Ok(()) => self.settle_entries(request.get_ref()).await,
            Err(e) => Err(e),
        };
        Ok(Response::new(match answer {
            Ok(entries) => {
                let failed = entries
                    .iter()
                    .filter(|e| e.status.as_ref().is_some_and(|s| s.code != Code::Ok as i32))
                    .count();
                let status = if failed == 0 {
                    ok()
                } else if failed == entries.len() {
                    entries.first().and_then(|e| e.status.clone())
                } else {
                    status(Code::MultipleResults, "some messages were not acknowledged")
                };
                pb::AckMessageResponse { status, entries }
            }
            Err(e) => pb::AckMessageResponse {
                status: e.status(),
                entries: Vec::new(),
            },
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let r = request.get_ref();
        let checked = self.check_client(
            &request,
            &[
                Touch::Read(name(r.group.as_ref())),
                Touch::Read(name(r.topic.as_ref())),
            ],
        );
        let answer: Result<Vec<u64>, Refused> = match checked {
            Err(e) => Err(e),
            Ok(()) => (|| {
                let group = group_name(r.group.as_ref())?;
                let d = self.delivery(group, r.topic.as_ref(), &r.receipt_handle)?;
                let mut commits = Vec::new();
                if !self.broker.forward_to_dead_letter(
                    group,
                    &d.topic.name,
                    &d.sub,
                    &d.partition,
                    d.offset,
                    d.receipt,
                    &mut commits,
                ) {
                    return Err(invalid_handle());
                }
                Ok(commits)
            })(),
        };
        let status = match answer {
            Ok(commits) => {
                if let (Some(c), Ok((queue, _, _))) = (
                    commits.last(),
                    parse_receipt_handle(&r.receipt_handle).ok_or(()),
                ) {
                    self.broker
                        .commit(name(r.group.as_ref()), name(r.topic.as_ref()), queue, *c)
                        .await;
                }
                ok()
            }
            Err(e) => e.status(),
        };
        Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse {
            status,
        }))
    }

    type PullMessageStream = Stream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        _request: Request<pb::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        Err(Status::unimplemented("PullMessage is not supported yet"))
    }

    async fn update_offset(
        &self,
        _request: Request<pb::UpdateOffsetRequest>,
    ) -> Result<Response<pb::UpdateOffsetResponse>, Status> {
        Ok(Response::new(pb::UpdateOffsetResponse {
            status: status(Code::NotImplemented, "pull consumers are not supported yet"),
        }))
    }

    async fn get_offset(
        &self,
        _request: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetResponse>, Status> {
        Ok(Response::new(pb::GetOffsetResponse {
            status: status(Code::NotImplemented, "pull consumers are not supported yet"),
            offset: 0,
        }))
    }

    async fn query_offset(
        &self,
        _request: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, Status> {
        Ok(Response::new(pb::QueryOffsetResponse {
            status: status(Code::NotImplemented, "pull consumers are not supported yet"),
            offset: 0,
        }))
    }

    async fn end_transaction(
        &self,
        request: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        let answer = (|| -> Result<(), Refused> {
            let r = request.get_ref();
            self.check_client(&request, &[Touch::Write(name(r.topic.as_ref()))])?;
            self.topic(r.topic.as_ref())?;
            let commit = match pb::TransactionResolution::try_from(r.resolution).unwrap_or_default()
            {
                pb::TransactionResolution::Commit => true,
                pb::TransactionResolution::Rollback => false,
                pb::TransactionResolution::Unspecified => {
                    return Err(Refused(
                        Code::BadRequest,
                        "transaction resolution is required".into(),
                    ));
                }
            };
            self.broker
                .end_transaction(&r.transaction_id, &r.message_id, commit)
                .map_err(|e| match e {
                    EndFailed::Unknown => Refused(
                        Code::InvalidTransactionId,
                        format!(
                            "no open transaction {} for message {}",
                            r.transaction_id, r.message_id
                        ),
                    ),
                    EndFailed::Append(_) => {
                        Refused(Code::InternalServerError, "message not stored".into())
                    }
                })
        })();
        Ok(Response::new(pb::EndTransactionResponse {
            status: match answer {
                Ok(()) => ok(),
                Err(e) => e.status(),
            },
        }))
    }

    type TelemetryStream = Stream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let refused = self.check_client(&request, &[]).err();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let broker = Arc::clone(&self.broker);
        tokio::spawn(async move {
            if let Some(e) = refused {
                let _ = tx
                    .send(Ok(pb::TelemetryCommand {
                        status: e.status(),
                        command: None,
                    }))
                    .await;
                return;
            }
            // Each settings report is answered with the server's settings; the stream
            // stays open for commands the server pushes, until the client ends it.
            while let Ok(Some(command)) = inbound.message().await {
                if let Some(pb::telemetry_command::Command::Settings(s)) = command.command {
                    // A producer's stream carries the check-backs of its topics.
                    if let Some(pb::settings::PubSub::Publishing(p)) = &s.pub_sub {
                        for topic in &p.topics {
                            broker.register_producer(&topic.name, &tx);
                        }
                    }
                    let reply = pb::TelemetryCommand {
                        status: ok(),
                        command: Some(pb::telemetry_command::Command::Settings(settings_reply(
                            &s, &broker,
                        ))),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn notify_client_termination(
        &self,
        request: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        let status = match self.check_client(&request, &[]) {
            Ok(()) => ok(),
            Err(e) => e.status(),
        };
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status,
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        let answer = (|| -> Result<_, Refused> {
            let r = request.get_ref();
            let touches = [
                Touch::Read(name(r.group.as_ref())),
                Touch::Read(name(r.topic.as_ref())),
            ];
            self.check_client(&request, &touches)?;
            let group = group_name(r.group.as_ref())?;
            let invisible_ms = r
                .invisible_duration
                .as_ref()
                .map_or(0, convert::duration_ms);
            if invisible_ms > INVISIBLE_MAX_MS {
                return Err(Refused(
                    Code::IllegalInvisibleTime,
                    format!("invisible time {invisible_ms} ms is over {INVISIBLE_MAX_MS}"),
                ));
            }
            let d = self.delivery(group, r.topic.as_ref(), &r.receipt_handle)?;
            let mut commits = Vec::new();
            let renewed = self
                .broker
                .settle(
                    &d.sub,
                    Command::Extend {
                        offset: d.offset,
                        receipt: d.receipt,
                        invisible_ms,
                    },
                    &mut commits,
                )
                .map_err(|_| invalid_handle())?
                .ok_or_else(invalid_handle)?;
            Ok(receipt_handle(d.queue, d.offset, renewed))
        })();
        Ok(Response::new(match answer {
            Ok(receipt_handle) => pb::ChangeInvisibleDurationResponse {
                status: ok(),
                receipt_handle,
            },
            Err(e) => pb::ChangeInvisibleDurationResponse {
                status: e.status(),
                receipt_handle: String::new(),
            },
        }))
    }

    async fn recall_message(
        &self,
        _request: Request<pb::RecallMessageRequest>,
    ) -> Result<Response<pb::RecallMessageResponse>, Status> {
        Ok(Response::new(pb::RecallMessageResponse {
            status: status(
                Code::NotImplemented,
                "recalling messages is not supported yet",
            ),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<pb::SyncLiteSubscriptionResponse>, Status> {
        Ok(Response::new(pb::SyncLiteSubscriptionResponse {
            status: status(Code::NotImplemented, "lite topics are not supported"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_filter(expression: &str) -> Option<pb::FilterExpression> {
        Some(pb::FilterExpression {
            r#type: pb::FilterType::Tag as i32,
            expression: expression.into(),
        })
    }

    #[test]
    fn tag_expressions_select_as_rocketmq_reads_them() {
        let all = Filter::parse(tag_filter("*").as_ref()).ok();
        assert_eq!(all, Some(Filter::All));
        let some = Filter::parse(tag_filter(" TagA || TagB ").as_ref()).ok();
        assert!(
            matches!(&some, Some(Filter::Tags(t)) if t.len() == 2 && t.contains("TagA") && t.contains("TagB"))
        );
        assert!(Filter::parse(tag_filter("||").as_ref()).is_err());
        let sql = |expression: &str| pb::FilterExpression {
            r#type: pb::FilterType::Sql as i32,
            expression: expression.into(),
        };
        assert!(matches!(
            Filter::parse(Some(&sql("a > 1"))),
            Ok(Filter::Sql(_))
        ));
        assert!(Filter::parse(Some(&sql("a >"))).is_err());
    }
}
