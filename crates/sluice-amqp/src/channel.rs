//! One AMQP channel: its methods (exchange, queue, basic, confirm), the message being
//! published (method, header, body frames), its consumers, and the deliveries it awaits
//! acknowledgements for. Methods come in from the connection; frames go out through
//! `Ctx::out`. Errors are returned to the connection, which closes the channel or the
//! connection as their kind says.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, access, basic, channel, confirm, exchange, queue, tx};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use sluice_core::{Message, Table, Value};
use sluice_engine::queue::{Consumer, ConsumerId, Entry, MessageId};
use sluice_engine::routing::{Binding, Destination};
use sluice_engine::stream::{Partition, RefusalKind, Topic, valid_name};

use crate::auth::Access;
use crate::broker::{
    Broker, ChannelCredit, Confirm, Confirms, ConnectionId, ConsumerSink, DirectReply, Flow,
    MessageStats, Outbox, QueueCell, VHost,
};
use crate::convert;
use crate::error::{AmqpError, codes};
use crate::frame;
use crate::manage;
use crate::props;
use crate::stream_queue::{self, StreamCredit};

/// What a channel needs from its connection while handling a method.
pub struct Ctx<'a> {
    pub broker: &'a Broker,
    /// The authenticated user.
    pub user: &'a str,
    pub vhost: &'a Arc<VHost>,
    /// The user's permissions in this virtual host; `None`: unrestricted.
    pub perms: Option<&'a crate::auth::Permissions>,
    pub connection: ConnectionId,
    pub outbox: &'a Outbox,
    pub confirms: &'a Arc<Confirms>,
    pub out: &'a mut BytesMut,
    pub frame_max: u32,
}

impl Ctx<'_> {
    /// RabbitMQ's permission check: 403 ACCESS_REFUSED unless `name` matches the user's
    /// pattern for `access` in this virtual host.
    fn allow(&self, access: Access, kind: &str, name: &str) -> Result<(), AmqpError> {
        match self.perms {
            Some(p) => p.check(access, kind, name),
            None => Ok(()),
        }
    }
}

/// RabbitMQ's refusal of `basic.recover` / `recover-async` with requeue=false.
fn requeue_false() -> AmqpError {
    AmqpError::connection(codes::NOT_IMPLEMENTED, "NOT_IMPLEMENTED - requeue=false")
}

/// A `basic.publish` waiting for its content.
struct Publishing {
    exchange: Arc<str>,
    routing_key: Arc<str>,
    mandatory: bool,
    body_size: u64,
    properties: Bytes,
    known: props::Known,
    /// What the content header's properties were refused with; RabbitMQ decodes them
    /// only once the content is complete, so this waits for the last body frame.
    header_error: Option<AmqpError>,
    immediate: bool,
    /// More body arrived than the header announced: as RabbitMQ, the content never
    /// completes and the next method is out of place.
    overflow: bool,
    body: BytesMut,
    first_body: Option<Bytes>,
}

/// RabbitMQ's 505 for a content frame where a method was expected.
pub fn unexpected_non_method() -> AmqpError {
    AmqpError::connection(
        codes::UNEXPECTED_FRAME,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    )
}

/// A transaction's pending publishes and settlements.
#[derive(Default)]
struct Tx {
    publishes: Vec<(Arc<Message>, bool, Option<Table>)>,
    settlements: Vec<Settle>,
}

#[derive(Clone, Copy)]
enum Settle {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Reject {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

struct ConsumerEntry {
    id: ConsumerId,
    source: Source,
}

/// What a consumer reads from.
enum Source {
    Queue(Arc<QueueCell>),
    /// A stream queue, read by a task of its own.
    Stream(tokio::task::AbortHandle),
}

impl Source {
    fn dispatch(&self) {
        if let Source::Queue(queue) = self {
            queue.dispatch();
        }
    }
}

/// An unacknowledged delivery from a stream queue: its ack only gives credit back.
struct StreamUnacked {
    credit: Arc<StreamCredit>,
    queue: Arc<str>,
    vhost: Arc<str>,
}

struct Unacked {
    queue: Arc<QueueCell>,
    id: MessageId,
    /// Counts against the channel's global prefetch (delivered to a manual-ack consumer).
    counted: bool,
}

pub struct Channel {
    pub id: u16,
    /// Counts this channel in the broker's open channels while it lives.
    _open: crate::broker::OpenCount,
    stats: Arc<MessageStats>,
    /// `channel.close` was sent; everything but close / close-ok is ignored.
    pub closing: bool,
    publishing: Option<Box<Publishing>>,
    header_expected: bool,
    /// The queue this channel declared last, for an empty name in consume and get.
    last_queue: Option<Arc<str>>,
    confirm: bool,
    publish_seq: u64,
    /// Publishes whose messages are not on disk yet in every durable queue they went to:
    /// seq → queues still writing.
    unconfirmed: BTreeMap<u64, u32>,
    /// Publishes that failed to store, nacked already.
    nacked: BTreeSet<u64>,
    confirm_sent: u64,
    /// Work held back until `tx.commit` in transactional mode.
    tx: Option<Tx>,
    prefetch: u16,
    credit: Arc<ChannelCredit>,
    /// This channel's direct reply-to consumer: (reply address, consumer tag).
    reply_consumer: Option<(Arc<str>, Arc<str>)>,
    consumers: HashMap<Arc<str>, ConsumerEntry>,
    next_delivery_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    stream_unacked: BTreeMap<u64, StreamUnacked>,
    routed: Vec<Arc<str>>,
    /// The classic queues among `routed`, for one publish to all of them.
    routed_queues: Vec<Arc<QueueCell>>,
}

fn short(s: &str) -> ShortString {
    ShortString::from(s.to_string())
}

/// Bodies and properties shorter than this are copied out of the read buffer they
/// arrived in (see `finish_publish`).
const COPY_BELOW: usize = 4096;

fn ok(out: &mut BytesMut, channel: u16, method: AMQPClass) -> Result<(), AmqpError> {
    frame::write_method(out, channel, method);
    Ok(())
}

/// The `-ok` reply, unless the client asked for `nowait`.
fn ok_unless(
    nowait: bool,
    out: &mut BytesMut,
    channel: u16,
    method: AMQPClass,
) -> Result<(), AmqpError> {
    if !nowait {
        frame::write_method(out, channel, method);
    }
    Ok(())
}

impl Channel {
    pub fn new(id: u16, open: crate::broker::OpenCount, stats: Arc<MessageStats>) -> Self {
        Channel {
            id,
            _open: open,
            stats,
            closing: false,
            publishing: None,
            header_expected: false,
            confirm: false,
            last_queue: None,
            publish_seq: 0,
            unconfirmed: BTreeMap::new(),
            nacked: BTreeSet::new(),
            confirm_sent: 0,
            tx: None,
            prefetch: 0,
            credit: Arc::new(ChannelCredit::default()),
            reply_consumer: None,
            consumers: HashMap::new(),
            next_delivery_tag: 1,
            unacked: BTreeMap::new(),
            stream_unacked: BTreeMap::new(),
            routed: Vec::new(),
            routed_queues: Vec::new(),
        }
    }

    pub fn handle_method(&mut self, ctx: &mut Ctx<'_>, method: AMQPClass) -> Result<(), AmqpError> {
        if self.publishing.is_some() {
            let text = if self.header_expected {
                "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
            } else {
                "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
            };
            return Err(AmqpError::connection(codes::UNEXPECTED_FRAME, text).during(60, 40));
        }
        let class = method.get_amqp_class_id();
        let method_id = method.get_amqp_method_id();
        let result = match method {
            AMQPClass::Basic(m) => self.basic(ctx, m),
            AMQPClass::Queue(m) => self.queue(ctx, m),
            AMQPClass::Exchange(m) => self.exchange(ctx, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) if self.tx.is_some() => Err(
                AmqpError::precondition("cannot switch from tx to confirm mode"),
            ),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                self.confirm = true;
                if s.nowait {
                    Ok(())
                } else {
                    ok(
                        ctx.out,
                        self.id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    )
                }
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) if !f.active => Err(
                AmqpError::connection(codes::NOT_IMPLEMENTED, "NOT_IMPLEMENTED - active=false"),
            ),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => ok(
                ctx.out,
                self.id,
                AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
            ),
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => ok(
                ctx.out,
                self.id,
                AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: f.active,
                })),
            ),
            AMQPClass::Tx(m) => self.tx(ctx, m),
            other => Err(AmqpError::connection(
                codes::COMMAND_INVALID,
                format!(
                    "COMMAND_INVALID - method {}.{} not allowed on a channel",
                    other.get_amqp_class_id(),
                    other.get_amqp_method_id()
                ),
            )),
        };
        // Exchange and queue methods may change durable definitions (auto-deletes too). A
        // declared queue is recorded in the journal, which the definitions file catches
        // up with in the background (`VHost::flush_journal`).
        let queue_declare = class == 50 && method_id == 10;
        if result.is_ok() && (class == 40 || class == 50) && !queue_declare {
            ctx.vhost.definitions_changed();
        }
        result.map_err(|e| e.during(class, method_id))
    }

    fn exchange(
        &mut self,
        ctx: &mut Ctx<'_>,
        method: exchange::AMQPMethod,
    ) -> Result<(), AmqpError> {
        let id = self.id;
        match method {
            exchange::AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str();
                if d.passive {
                    if ctx.vhost.router().exchange(name).is_none() {
                        return Err(AmqpError::not_found("exchange", name, &ctx.vhost.name));
                    }
                } else {
                    ctx.allow(Access::Configure, "exchange", name)?;
                    manage::declare_exchange(
                        ctx.vhost,
                        name,
                        d.kind.as_str(),
                        d.durable,
                        d.auto_delete,
                        d.internal,
                        props::table_from_amqp(&d.arguments),
                    )?;
                }
                ok_unless(
                    d.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                )
            }
            exchange::AMQPMethod::Delete(d) => {
                ctx.allow(Access::Configure, "exchange", d.exchange.as_str())?;
                manage::delete_exchange(ctx.vhost, d.exchange.as_str(), d.if_unused)?;
                ok_unless(
                    d.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                )
            }
            exchange::AMQPMethod::Bind(b) => {
                ctx.allow(Access::Write, "exchange", b.destination.as_str())?;
                ctx.allow(Access::Read, "exchange", b.source.as_str())?;
                let binding = binding(
                    &b.source,
                    Destination::Exchange(b.destination.as_str().into()),
                    &b.routing_key,
                    &b.arguments,
                );
                ctx.vhost.router_mut().bind(binding)?;
                ok_unless(
                    b.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                )
            }
            exchange::AMQPMethod::Unbind(b) => {
                ctx.allow(Access::Write, "exchange", b.destination.as_str())?;
                ctx.allow(Access::Read, "exchange", b.source.as_str())?;
                let binding = binding(
                    &b.source,
                    Destination::Exchange(b.destination.as_str().into()),
                    &b.routing_key,
                    &b.arguments,
                );
                ctx.vhost.router_mut().unbind(&binding)?;
                ok_unless(
                    b.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                )
            }
            _ => Err(AmqpError::connection(
                codes::COMMAND_INVALID,
                "COMMAND_INVALID - unexpected exchange method",
            )),
        }
    }

    /// The queue a method names; an exclusive queue of another connection is locked.
    /// RabbitMQ's shortcut: an empty queue name in basic.consume and basic.get means the
    /// queue this channel declared last.
    fn last_queue_or<'a>(&'a self, name: &'a str) -> Result<&'a str, AmqpError> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue.as_deref().ok_or_else(|| {
            AmqpError::channel(codes::NOT_FOUND, "NOT_FOUND - no previously declared queue")
        })
    }

    fn find_queue(&self, ctx: &Ctx<'_>, name: &str) -> Result<Arc<QueueCell>, AmqpError> {
        let queue = ctx
            .vhost
            .client_queue(name)
            .ok_or_else(|| AmqpError::not_found("queue", name, &ctx.vhost.name))?;
        manage::check_owner(&queue, Some(ctx.connection), &ctx.vhost.name)?;
        Ok(queue)
    }

    fn queue(&mut self, ctx: &mut Ctx<'_>, method: queue::AMQPMethod) -> Result<(), AmqpError> {
        let id = self.id;
        match method {
            queue::AMQPMethod::Declare(d) => {
                if self.declare_stream(ctx, &d)? {
                    return Ok(());
                }
                let requested = d.queue.as_str();
                let (queue, created) = if d.passive {
                    (self.find_queue(ctx, requested)?, false)
                } else {
                    let name = new_queue_name(ctx, requested)?;
                    ctx.allow(Access::Configure, "queue", &name)?;
                    manage::declare_queue(
                        ctx.vhost,
                        name,
                        d.durable,
                        d.auto_delete,
                        d.exclusive.then_some(ctx.connection),
                        Some(ctx.connection),
                        props::table_from_amqp(&d.arguments),
                    )?
                };
                let _ = created;
                self.last_queue = Some(Arc::clone(&queue.name));
                if d.nowait {
                    return Ok(());
                }
                queue.touch();
                let (messages, consumers) = queue.counts();
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: short(&queue.name),
                        message_count: messages,
                        consumer_count: consumers,
                    })),
                )
            }
            queue::AMQPMethod::Bind(b) => {
                ctx.allow(Access::Write, "queue", b.queue.as_str())?;
                ctx.allow(Access::Read, "exchange", b.exchange.as_str())?;
                self.find_destination(ctx, b.queue.as_str())?;
                let binding = binding(
                    &b.exchange,
                    Destination::Queue(b.queue.as_str().into()),
                    &b.routing_key,
                    &b.arguments,
                );
                ctx.vhost.router_mut().bind(binding)?;
                ok_unless(
                    b.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                )
            }
            queue::AMQPMethod::Unbind(b) => {
                ctx.allow(Access::Write, "queue", b.queue.as_str())?;
                ctx.allow(Access::Read, "exchange", b.exchange.as_str())?;
                self.find_destination(ctx, b.queue.as_str())?;
                let binding = binding(
                    &b.exchange,
                    Destination::Queue(b.queue.as_str().into()),
                    &b.routing_key,
                    &b.arguments,
                );
                ctx.vhost.router_mut().unbind(&binding)?;
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                )
            }
            queue::AMQPMethod::Purge(p) => {
                ctx.allow(Access::Read, "queue", p.queue.as_str())?;
                if ctx.vhost.stream(p.queue.as_str()).is_some() {
                    return Err(stream_queue::not_supported(
                        "queue.purge",
                        p.queue.as_str(),
                        &ctx.vhost.name,
                    ));
                }
                let queue = self.find_queue(ctx, p.queue.as_str())?;
                let count = queue.purge();
                ok_unless(
                    p.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: count,
                    })),
                )
            }
            queue::AMQPMethod::Delete(d) => {
                let name = d.queue.as_str();
                ctx.allow(Access::Configure, "queue", name)?;
                let count = match ctx.vhost.client_queue(name) {
                    None => {
                        self.delete_stream(ctx, name)?;
                        0
                    }
                    Some(queue) => {
                        manage::check_owner(&queue, Some(ctx.connection), &ctx.vhost.name)?;
                        let (messages, consumers) = queue.counts();
                        if d.if_unused && consumers > 0 {
                            return Err(AmqpError::precondition(format!(
                                "queue '{name}' in vhost '{}' in use",
                                ctx.vhost.name
                            )));
                        }
                        if d.if_empty && messages > 0 {
                            return Err(AmqpError::precondition(format!(
                                "queue '{name}' in vhost '{}' is not empty",
                                ctx.vhost.name
                            )));
                        }
                        ctx.vhost.delete_queue(name)
                    }
                };
                ok_unless(
                    d.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: count,
                    })),
                )
            }
            _ => Err(AmqpError::connection(
                codes::COMMAND_INVALID,
                "COMMAND_INVALID - unexpected queue method",
            )),
        }
    }

    fn basic(&mut self, ctx: &mut Ctx<'_>, method: basic::AMQPMethod) -> Result<(), AmqpError> {
        let id = self.id;
        match method {
            basic::AMQPMethod::Publish(p) => {
                let exchange = p.exchange.as_str();
                ctx.allow(Access::Write, "exchange", exchange)?;
                {
                    let router = ctx.vhost.router();
                    match router.exchange(exchange) {
                        None => {
                            return Err(AmqpError::not_found(
                                "exchange",
                                exchange,
                                &ctx.vhost.name,
                            ));
                        }
                        Some(def) if def.internal => {
                            return Err(AmqpError::channel(
                                codes::ACCESS_REFUSED,
                                format!(
                                    "ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '{}'",
                                    ctx.vhost.name
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                }
                self.publishing = Some(Box::new(Publishing {
                    exchange: exchange.into(),
                    routing_key: p.routing_key.as_str().into(),
                    mandatory: p.mandatory,
                    body_size: 0,
                    properties: Bytes::new(),
                    known: props::Known::default(),
                    header_error: None,
                    immediate: p.immediate,
                    overflow: false,
                    body: BytesMut::new(),
                    first_body: None,
                }));
                self.header_expected = true;
                Ok(())
            }
            basic::AMQPMethod::Qos(q) => {
                // As RabbitMQ: global = false limits each new consumer and lifts the
                // channel's limit (rabbit_limiter:unlimit_prefetch); global = true limits
                // the whole channel, existing consumers included.
                if q.global {
                    self.credit.set_limit(u32::from(q.prefetch_count));
                } else {
                    self.prefetch = q.prefetch_count;
                    self.credit.set_limit(0);
                }
                // A raised or lifted limit lets deliveries through at once.
                for c in self.consumers.values() {
                    c.source.dispatch();
                }
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                )
            }
            basic::AMQPMethod::Consume(c) => self.consume(ctx, c),
            basic::AMQPMethod::Cancel(c) => {
                let tag: Arc<str> = c.consumer_tag.as_str().into();
                if self.reply_consumer.as_ref().is_some_and(|(_, t)| *t == tag)
                    && let Some((address, _)) = self.reply_consumer.take()
                {
                    ctx.vhost.remove_reply_consumer(&address);
                }
                self.cancel_consumer(ctx.vhost, &tag);
                ok_unless(
                    c.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    })),
                )
            }
            basic::AMQPMethod::Get(g) => {
                let name = self.last_queue_or(g.queue.as_str())?;
                ctx.allow(Access::Read, "queue", name)?;
                if ctx.vhost.stream(name).is_some() {
                    return Err(stream_queue::not_supported(
                        "basic.get",
                        name,
                        &ctx.vhost.name,
                    ));
                }
                let queue = self.find_queue(ctx, name)?;
                queue.touch();
                match queue.get(g.no_ack) {
                    None => {
                        MessageStats::add(&self.stats.get_empty, 1);
                        ok(
                            ctx.out,
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                        )
                    }
                    Some((entry, remaining)) => {
                        let counter = if g.no_ack {
                            &self.stats.delivered_get_auto_ack
                        } else {
                            &self.stats.delivered_get_manual_ack
                        };
                        MessageStats::add(counter, 1);
                        if entry.redelivered {
                            MessageStats::add(&self.stats.redelivered, 1);
                        }
                        let tag = self.take_delivery_tag(&queue, &entry, g.no_ack, false);
                        frame::write_method(
                            ctx.out,
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                                delivery_tag: tag,
                                redelivered: entry.redelivered,
                                exchange: short(&entry.message.exchange),
                                routing_key: short(&entry.message.routing_key),
                                message_count: remaining,
                            })),
                        );
                        let properties = crate::props::delivered_properties(
                            &entry.message.properties,
                            queue.def.settings.quorum,
                            entry.returns,
                            true,
                        );
                        frame::write_content(
                            ctx.out,
                            id,
                            &properties,
                            &entry.message.body,
                            ctx.frame_max,
                        );
                        Ok(())
                    }
                }
            }
            basic::AMQPMethod::Ack(a) => self.settle(Settle::Ack {
                tag: a.delivery_tag,
                multiple: a.multiple,
            }),
            basic::AMQPMethod::Nack(n) => self.settle(Settle::Reject {
                tag: n.delivery_tag,
                multiple: n.multiple,
                requeue: n.requeue,
            }),
            basic::AMQPMethod::Reject(r) => self.settle(Settle::Reject {
                tag: r.delivery_tag,
                multiple: false,
                requeue: r.requeue,
            }),
            basic::AMQPMethod::Recover(r) if !r.requeue => Err(requeue_false()),
            basic::AMQPMethod::RecoverAsync(r) if !r.requeue => Err(requeue_false()),
            basic::AMQPMethod::Recover(r) => {
                self.recover(r.requeue);
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                )
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                self.recover(r.requeue);
                Ok(())
            }
            _ => Err(AmqpError::connection(
                codes::COMMAND_INVALID,
                "COMMAND_INVALID - unexpected basic method",
            )),
        }
    }

    /// `basic.consume` on `amq.rabbitmq.reply-to`: replies come straight to this channel.
    fn consume_replies(&mut self, ctx: &mut Ctx<'_>, c: basic::Consume) -> Result<(), AmqpError> {
        if !c.no_ack {
            return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
        }
        if self.reply_consumer.is_some() {
            return Err(AmqpError::precondition("reply consumer already set"));
        }
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            server_name("amq.ctag-", ctx.broker.next_id()).into()
        } else {
            c.consumer_tag.as_str().into()
        };
        let address: Arc<str> = server_name(&format!("{REPLY_TO}."), ctx.broker.next_id()).into();
        ctx.vhost.add_reply_consumer(
            Arc::clone(&address),
            Box::new(DirectReply {
                outbox: ctx.outbox.clone(),
                channel: self.id,
                tag: Arc::clone(&tag),
            }),
        );
        self.reply_consumer = Some((address, Arc::clone(&tag)));
        if c.nowait {
            return Ok(());
        }
        ok(
            ctx.out,
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            })),
        )
    }

    /// Writes a direct reply to this channel's reply consumer (no acknowledgement).
    pub fn deliver_direct(
        &mut self,
        out: &mut BytesMut,
        frame_max: u32,
        tag: &str,
        message: &Message,
    ) {
        if self.closing
            || self
                .reply_consumer
                .as_ref()
                .is_none_or(|(_, t)| &**t != tag)
        {
            return;
        }
        let delivery_tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        frame::write_deliver(
            out,
            self.id,
            tag,
            delivery_tag,
            false,
            &message.exchange,
            &message.routing_key,
        );
        frame::write_content(out, self.id, &message.properties, &message.body, frame_max);
    }

    fn consume(&mut self, ctx: &mut Ctx<'_>, c: basic::Consume) -> Result<(), AmqpError> {
        if c.queue.as_str() == REPLY_TO {
            return self.consume_replies(ctx, c);
        }
        let name = self.last_queue_or(c.queue.as_str())?;
        ctx.allow(Access::Read, "queue", name)?;
        if let Some((topic, partition)) = ctx.vhost.stream(name) {
            return self.consume_stream(ctx, c, topic, partition);
        }
        let queue = self.find_queue(ctx, name)?;
        queue.touch();
        let tag = self.consumer_tag(ctx, &c)?;
        let arguments = props::table_from_amqp(&c.arguments);
        if arguments.get("x-stream-offset").is_some() {
            let kind = if queue.def.settings.quorum {
                "rabbit_quorum_queue"
            } else {
                "rabbit_classic_queue"
            };
            return Err(AmqpError::precondition(format!(
                "invalid arg 'x-stream-offset' for queue '{name}' in vhost '{}' of queue type {kind}",
                ctx.vhost.name
            )));
        }
        let priority = arguments
            .get("x-priority")
            .and_then(Value::as_i64)
            .map_or(0, |p| {
                p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
            });
        let consumer_id = ctx.broker.next_id();
        let consumer = Consumer {
            id: consumer_id,
            tag: Arc::clone(&tag),
            no_ack: c.no_ack,
            prefetch: u32::from(self.prefetch),
            exclusive: c.exclusive,
            priority,
            unacked: 0,
        };
        // consume-ok goes out before the first delivery, which the queue may send at once.
        let mark = ctx.out.len();
        if !c.nowait {
            write_consume_ok(ctx.out, self.id, &tag);
        }
        let flow = Arc::new(Flow::default());
        let sink = Box::new(ConsumerSink {
            outbox: ctx.outbox.clone(),
            channel: self.id,
            tag: Arc::clone(&consumer.tag),
            no_ack: consumer.no_ack,
            flow: Arc::clone(&flow),
            credit: (!consumer.no_ack).then(|| Arc::clone(&self.credit)),
        });
        if let Err(e) = queue.consume(consumer, sink, flow, Arc::clone(&self.credit)) {
            ctx.out.truncate(mark);
            return Err(e.into());
        }
        self.consumers.insert(
            tag,
            ConsumerEntry {
                id: consumer_id,
                source: Source::Queue(queue),
            },
        );
        Ok(())
    }

    /// The tag of a new consumer: the client's, or a fresh one when it sent none.
    fn consumer_tag(&self, ctx: &Ctx<'_>, c: &basic::Consume) -> Result<Arc<str>, AmqpError> {
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            server_name("amq.ctag-", ctx.broker.next_id()).into()
        } else {
            c.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                codes::NOT_ALLOWED,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let max = ctx.broker.limits.consumers_per_channel_max;
        if self.consumers.len() >= max {
            // RabbitMQ 3.12's `consumer_max_per_channel` refusal.
            return Err(AmqpError::connection(
                codes::NOT_ALLOWED,
                format!("NOT_ALLOWED - reached maximum ({max}) of consumers per channel"),
            )
            .during(60, 20));
        }
        Ok(tag)
    }

    /// `basic.consume` on a stream queue: a reader task from `x-stream-offset` on, with
    /// the channel's prefetch as its credit. As RabbitMQ: manual acks and a prefetch
    /// are required.
    fn consume_stream(
        &mut self,
        ctx: &mut Ctx<'_>,
        c: basic::Consume,
        topic: Arc<Topic>,
        partition: Arc<Partition>,
    ) -> Result<(), AmqpError> {
        let vhost = &ctx.vhost.name;
        if c.no_ack {
            return Err(stream_queue::not_supported(
                "automatic acknowledgement",
                &topic.name,
                vhost,
            ));
        }
        if self.prefetch == 0 {
            return Err(AmqpError::precondition(format!(
                "consumer prefetch count is not set for 'queue '{}' in vhost '{vhost}''",
                topic.name
            )));
        }
        let tag = self.consumer_tag(ctx, &c)?;
        let arguments = props::table_from_amqp(&c.arguments);
        let start = stream_queue::start(&arguments, now_ms(), &topic.name, vhost)?;
        // Resolved now, not when the reader first runs: "next" means what comes after
        // this consume, as in RabbitMQ, even if a publish overtakes the reader task.
        let start = stream_queue::first_offset(&partition, start);
        let Some(topics) = ctx.vhost.streams().cloned() else {
            return Err(AmqpError::not_found("queue", &topic.name, vhost));
        };
        if !c.nowait {
            write_consume_ok(ctx.out, self.id, &tag);
        }
        let consumer = ctx.broker.next_id();
        let reader = stream_queue::StreamReader {
            queue: topic.name.as_str().into(),
            vhost: vhost.as_str().into(),
            topics,
            topic,
            partition,
            start,
            outbox: ctx.outbox.clone(),
            channel: self.id,
            consumer,
            tag: Arc::clone(&tag),
            credit: Arc::new(StreamCredit::new(u32::from(self.prefetch))),
        };
        let reader = tokio::spawn(reader.run()).abort_handle();
        self.consumers.insert(
            tag,
            ConsumerEntry {
                id: consumer,
                source: Source::Stream(reader),
            },
        );
        Ok(())
    }

    /// Writes a record of a stream queue to one of this channel's consumers.
    #[allow(clippy::too_many_arguments)]
    pub fn deliver_stream(
        &mut self,
        out: &mut BytesMut,
        frame_max: u32,
        tag: &str,
        credit: Arc<StreamCredit>,
        queue: Arc<str>,
        vhost: &Arc<str>,
        delivery: &convert::Delivery,
    ) {
        let delivery_tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        self.stream_unacked.insert(
            delivery_tag,
            StreamUnacked {
                credit,
                queue,
                vhost: Arc::clone(vhost),
            },
        );
        // A content header must fit in one frame: a record whose headers do not is
        // delivered with its offset alone (a Kafka producer may send large headers).
        let mut properties = delivery.properties.clone();
        if frame_max > 0 && properties.len() + 20 > frame_max as usize {
            tracing::warn!(consumer = %tag, offset = delivery.offset, "record headers larger than the frame size; delivered without them");
            properties =
                props::with_long_header(&[0, 0], "x-stream-offset", delivery.offset as i64)
                    .unwrap_or_default();
        }
        frame::write_deliver(
            out,
            self.id,
            tag,
            delivery_tag,
            false,
            std::str::from_utf8(&delivery.exchange).unwrap_or_default(),
            std::str::from_utf8(&delivery.routing_key).unwrap_or_default(),
        );
        frame::write_content(out, self.id, &properties, &delivery.body, frame_max);
    }

    /// A queue a binding may name: a classic queue this connection may use, or a stream
    /// queue.
    fn find_destination(&self, ctx: &Ctx<'_>, name: &str) -> Result<(), AmqpError> {
        if ctx.vhost.stream(name).is_some() {
            return Ok(());
        }
        self.find_queue(ctx, name).map(|_| ())
    }

    /// `queue.declare` of a stream queue, new or existing; `false` when the declaration
    /// is not about one (a classic or quorum queue, or a passive declare of none).
    fn declare_stream(&mut self, ctx: &mut Ctx<'_>, d: &queue::Declare) -> Result<bool, AmqpError> {
        let arguments = props::table_from_amqp(&d.arguments);
        let requested = stream_queue::requested(&arguments);
        let Some(topics) = ctx.vhost.streams().cloned() else {
            if requested && !d.passive {
                return Err(AmqpError::precondition(format!(
                    "stream queues need storage, which vhost '{}' has none of (queue '{}')",
                    ctx.vhost.name,
                    d.queue.as_str()
                )));
            }
            return Ok(false);
        };
        let requested_name = d.queue.as_str();
        if !requested_name.is_empty() && ctx.vhost.queue(requested_name).is_some() {
            if requested && !d.passive {
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg 'x-queue-type' for queue '{requested_name}' in vhost '{}': received the value 'stream' of type 'longstr' but current is none",
                    ctx.vhost.name
                )));
            }
            return Ok(false);
        }
        let name: Arc<str> = match stream_queue::partition(&topics, requested_name) {
            Some((topic, _)) => {
                if !d.passive {
                    ctx.allow(Access::Configure, "queue", requested_name)?;
                    stream_queue::check_equivalent(&topic, &arguments, d.durable, &ctx.vhost.name)?;
                }
                requested_name.into()
            }
            None if d.passive || !requested => return Ok(false),
            None => {
                let name = new_queue_name(ctx, requested_name)?;
                ctx.allow(Access::Configure, "queue", &name)?;
                let overrides = stream_queue::declare_overrides(
                    &arguments,
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    &name,
                    &ctx.vhost.name,
                )?;
                if !valid_name(&name) {
                    return Err(AmqpError::precondition(format!(
                        "invalid stream queue name '{name}': Sluice keeps a stream queue as a topic of that name, 1 to 249 of [a-zA-Z0-9._-]"
                    )));
                }
                match tokio::task::block_in_place(|| topics.create(&name, 1, overrides)) {
                    Ok(_) => tracing::info!(queue = %name, "stream queue created"),
                    Err(r) if r.kind == RefusalKind::AlreadyExists => {
                        // Created meanwhile: a stream queue, or a topic of more partitions.
                        if stream_queue::partition(&topics, &name).is_none() {
                            return Err(AmqpError::precondition(format!(
                                "queue '{name}' in vhost '{}' is a Kafka topic of more than one partition; a stream queue has one",
                                ctx.vhost.name
                            )));
                        }
                    }
                    Err(r) if r.kind == RefusalKind::PolicyViolation => {
                        return Err(AmqpError::precondition(r.message));
                    }
                    Err(r) => {
                        tracing::error!(queue = %name, error = %r.message, "cannot create stream queue");
                        return Err(AmqpError::connection(
                            codes::INTERNAL_ERROR,
                            "INTERNAL_ERROR - cannot create queue storage",
                        ));
                    }
                }
                name
            }
        };
        // Known to the router from now on: the default exchange and bindings reach it.
        let _ = ctx.vhost.stream(&name);
        self.last_queue = Some(Arc::clone(&name));
        if !d.nowait {
            // RabbitMQ counts neither messages nor consumers of a stream queue here.
            frame::write_method(
                ctx.out,
                self.id,
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: short(&name),
                    message_count: 0,
                    consumer_count: 0,
                })),
            );
        }
        Ok(true)
    }

    /// `queue.delete` of a stream queue (its topic and everything in it); nothing when
    /// no stream has the name.
    fn delete_stream(&self, ctx: &Ctx<'_>, name: &str) -> Result<(), AmqpError> {
        let Some(topics) = ctx.vhost.streams() else {
            return Ok(());
        };
        if stream_queue::partition(topics, name).is_none() {
            return Ok(());
        }
        // Its readers notice and cancel their consumers.
        if let Err(r) = tokio::task::block_in_place(|| topics.delete(name)) {
            tracing::warn!(queue = %name, error = %r.message, "stream queue not deleted");
        }
        let _ = ctx.vhost.router_mut().remove_queue(name);
        Ok(())
    }

    /// Cancels a consumer of this channel; auto-delete queues left unused go away.
    fn cancel_consumer(&mut self, vhost: &VHost, tag: &Arc<str>) {
        match self.consumers.remove(tag).map(|e| (e.id, e.source)) {
            Some((id, Source::Queue(queue))) if queue.cancel(id) => {
                vhost.delete_queue(&queue.name);
            }
            Some((_, Source::Stream(reader))) => reader.abort(),
            Some(_) | None => {}
        }
    }

    /// The broker cancelled a consumer (its queue was deleted).
    pub fn consumer_cancelled(&mut self, out: &mut BytesMut, consumer: ConsumerId, tag: &Arc<str>) {
        if self.consumers.get(tag).is_some_and(|c| c.id == consumer) {
            if let Some(ConsumerEntry {
                source: Source::Stream(reader),
                ..
            }) = self.consumers.remove(tag)
            {
                reader.abort();
            }
            frame::write_method(
                out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: short(tag),
                    nowait: true,
                })),
            );
        }
    }

    /// Whether a consumer is still registered on this channel.
    pub fn has_consumer(&self, tag: &str, consumer: ConsumerId) -> bool {
        self.consumers.get(tag).is_some_and(|c| c.id == consumer)
    }

    fn take_delivery_tag(
        &mut self,
        queue: &Arc<QueueCell>,
        entry: &Entry,
        no_ack: bool,
        counted: bool,
    ) -> u64 {
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        if !no_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    queue: Arc::clone(queue),
                    id: entry.id,
                    counted,
                },
            );
        }
        tag
    }

    /// Gives back global prefetch credit for settled deliveries; when the channel was at
    /// its limit, its consumers' queues dispatch again.
    fn release_credit(&self, settled: &[Unacked]) {
        let n = settled.iter().filter(|u| u.counted).count() as u32;
        if self.credit.release(n) {
            for c in self.consumers.values() {
                c.source.dispatch();
            }
        }
    }

    /// Writes a delivery from a queue to one of this channel's consumers.
    pub fn deliver(
        &mut self,
        ctx_out: &mut BytesMut,
        frame_max: u32,
        tag: &str,
        no_ack: bool,
        queue: &Arc<QueueCell>,
        entry: &Entry,
    ) {
        let delivery_tag = self.take_delivery_tag(queue, entry, no_ack, true);
        let counter = if no_ack {
            &self.stats.delivered_consume_auto_ack
        } else {
            &self.stats.delivered_consume_manual_ack
        };
        MessageStats::add(counter, 1);
        if entry.redelivered {
            MessageStats::add(&self.stats.redelivered, 1);
        }
        frame::write_deliver(
            ctx_out,
            self.id,
            tag,
            delivery_tag,
            entry.redelivered,
            &entry.message.exchange,
            &entry.message.routing_key,
        );
        let properties = crate::props::delivered_properties(
            &entry.message.properties,
            queue.def.settings.quorum,
            entry.returns,
            false,
        );
        frame::write_content(
            ctx_out,
            self.id,
            &properties,
            &entry.message.body,
            frame_max,
        );
    }

    /// Removes unacked deliveries up to `tag` (or just `tag`), grouped by queue. Tag 0
    /// with `multiple` means all of them. An unknown tag is PRECONDITION_FAILED (406).
    fn take_unacked(
        &mut self,
        tag: u64,
        multiple: bool,
    ) -> Result<(Vec<QueueIds>, Vec<StreamUnacked>), AmqpError> {
        let unknown = || AmqpError::precondition(format!("unknown delivery tag {tag}"));
        let (taken, streams): (Vec<Unacked>, Vec<StreamUnacked>) = if multiple {
            if tag != 0
                && !self.unacked.contains_key(&tag)
                && !self.stream_unacked.contains_key(&tag)
            {
                return Err(unknown());
            }
            let upto = if tag == 0 { u64::MAX } else { tag };
            let rest = self.unacked.split_off(&upto.saturating_add(1));
            let taken = std::mem::replace(&mut self.unacked, rest)
                .into_values()
                .collect();
            let streams = if self.stream_unacked.is_empty() {
                Vec::new()
            } else {
                let rest = self.stream_unacked.split_off(&upto.saturating_add(1));
                std::mem::replace(&mut self.stream_unacked, rest)
                    .into_values()
                    .collect()
            };
            (taken, streams)
        } else if let Some(u) = self.unacked.remove(&tag) {
            (vec![u], Vec::new())
        } else if let Some(s) = self.stream_unacked.remove(&tag) {
            (Vec::new(), vec![s])
        } else {
            return Err(unknown());
        };
        self.release_credit(&taken);
        Ok((group_by_queue(taken), streams))
    }

    /// Applies an ack or reject now, or holds it for `tx.commit`.
    fn settle(&mut self, op: Settle) -> Result<(), AmqpError> {
        if let Some(tx) = self.tx.as_mut() {
            tx.settlements.push(op);
            return Ok(());
        }
        self.apply_settle(op)
    }

    fn apply_settle(&mut self, op: Settle) -> Result<(), AmqpError> {
        match op {
            Settle::Ack { tag, multiple } => {
                let (queues, streams) = self.take_unacked(tag, multiple)?;
                let mut acked = streams.len();
                for (queue, ids) in queues {
                    acked += ids.len();
                    queue.ack(&ids);
                }
                MessageStats::add(&self.stats.acknowledged, acked as u64);
                for s in streams {
                    s.credit.release(1);
                }
                Ok(())
            }
            Settle::Reject {
                tag,
                multiple,
                requeue,
            } => self.reject(tag, multiple, requeue),
        }
    }

    fn tx(&mut self, ctx: &mut Ctx<'_>, method: tx::AMQPMethod) -> Result<(), AmqpError> {
        let reply = match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirm {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Tx::default);
                tx::AMQPMethod::SelectOk(tx::SelectOk {})
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(tx) = self.tx.replace(Tx::default()) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                for (message, mandatory, headers) in tx.publishes {
                    self.route(ctx, message, mandatory, headers.as_ref())?;
                }
                for op in tx.settlements {
                    self.apply_settle(op)?;
                }
                tx::AMQPMethod::CommitOk(tx::CommitOk {})
            }
            tx::AMQPMethod::Rollback(_) => {
                if self.tx.replace(Tx::default()).is_none() {
                    return Err(AmqpError::precondition("channel is not transactional"));
                }
                tx::AMQPMethod::RollbackOk(tx::RollbackOk {})
            }
            _ => {
                return Err(AmqpError::connection(
                    codes::COMMAND_INVALID,
                    "COMMAND_INVALID - unexpected tx method",
                ));
            }
        };
        ok(ctx.out, self.id, AMQPClass::Tx(reply))
    }

    fn reject(&mut self, tag: u64, multiple: bool, requeue: bool) -> Result<(), AmqpError> {
        // Refused before anything is taken: the classic deliveries it also covers stay
        // unacked, to be requeued when the connection closes.
        let upto = if multiple && tag == 0 { u64::MAX } else { tag };
        let from = if multiple { 0 } else { tag };
        if let Some((_, s)) = self.stream_unacked.range(from..=upto).next() {
            return Err(stream_queue::not_supported(
                "basic.nack and basic.reject",
                &s.queue,
                &s.vhost,
            ));
        }
        let (queues, _) = self.take_unacked(tag, multiple)?;
        for (queue, ids) in queues {
            if requeue {
                queue.requeue(&ids);
            } else {
                // Dead-lettering of rejected messages comes with the DLX work.
                queue.discard(&ids);
            }
        }
        Ok(())
    }

    fn recover(&mut self, _requeue: bool) {
        // RabbitMQ requeues on recover whatever `requeue` says.
        let all: Vec<Unacked> = std::mem::take(&mut self.unacked).into_values().collect();
        self.release_credit(&all);
        // Stream deliveries are not redelivered; their credit comes back.
        for s in std::mem::take(&mut self.stream_unacked).into_values() {
            s.credit.release(1);
        }
        for (queue, ids) in group_by_queue(all) {
            queue.requeue(&ids);
        }
    }

    /// A content header frame for the message being published.
    pub fn handle_header(
        &mut self,
        ctx: &mut Ctx<'_>,
        class_id: u16,
        weight: u16,
        body_size: u64,
        properties: Bytes,
    ) -> Result<(), AmqpError> {
        let Some(p) = self.publishing.as_mut().filter(|_| self.header_expected) else {
            return Err(unexpected_non_method());
        };
        if class_id != 60 {
            return Err(AmqpError::connection(
                codes::UNEXPECTED_FRAME,
                format!("UNEXPECTED_FRAME - expected content header for class 60, got one for class {class_id} instead"),
            )
            .during(60, 40));
        }
        if weight != 0 {
            return Err(AmqpError::connection(
                codes::UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            )
            .during(60, 40));
        }
        if body_size > ctx.broker.message_bytes_max as u64 {
            self.publishing = None;
            return Err(AmqpError::precondition(format!(
                "message size {body_size} is larger than configured max size {}",
                ctx.broker.message_bytes_max
            ))
            .during(60, 40));
        }
        match props::read_known(&properties, true) {
            Ok(known) => p.known = known,
            Err(e) => p.header_error = Some(e),
        }
        if let Some(user) = &p.known.user_id
            && user.as_str() != ctx.user
        {
            let user = user.clone();
            self.publishing = None;
            return Err(AmqpError::precondition(format!(
                "user_id property set to '{user}' but authenticated user was '{}'",
                ctx.user
            ))
            .during(60, 40));
        }
        p.properties = properties;
        p.body_size = body_size;
        self.header_expected = false;
        if body_size == 0 {
            return self.finish_publish(ctx);
        }
        Ok(())
    }

    pub fn handle_body(&mut self, ctx: &mut Ctx<'_>, body: Bytes) -> Result<(), AmqpError> {
        let Some(p) = self.publishing.as_mut().filter(|_| !self.header_expected) else {
            return Err(unexpected_non_method());
        };
        let have = p.first_body.as_ref().map_or(0, |b| b.len()) + p.body.len();
        if p.overflow || (have + body.len()) as u64 > p.body_size {
            p.overflow = true;
            return Ok(());
        }
        if p.first_body.is_none() && p.body.is_empty() {
            p.first_body = Some(body);
        } else {
            if let Some(first) = p.first_body.take() {
                // Grows with what arrives, not with the size the header announced.
                p.body.reserve(first.len() * 2);
                p.body.extend_from_slice(&first);
            }
            p.body.extend_from_slice(&body);
        }
        let have = p.first_body.as_ref().map_or(0, |b| b.len()) + p.body.len();
        if have as u64 == p.body_size {
            return self.finish_publish(ctx);
        }
        Ok(())
    }

    /// Routes a complete message to its queues, returns it when it is mandatory and
    /// unroutable, and counts it for publisher confirms.
    fn finish_publish(&mut self, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let Some(p) = self.publishing.take() else {
            return Ok(());
        };
        let p = *p;
        if let Some(e) = p.header_error {
            // A channel error (a bad expiration) names basic.publish; the crash RabbitMQ
            // has on undecodable properties names no method.
            return Err(match e {
                AmqpError::Channel { .. } => e.during(60, 40),
                e => e,
            });
        }
        if p.immediate {
            return Err(AmqpError::connection(
                codes::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - immediate=true",
            )
            .during(60, 40));
        }
        let body = match p.first_body {
            // A small body is a slice of the connection's read buffer: copied out, a
            // message waiting in a queue holds its own bytes, not a whole buffer.
            Some(b) if b.len() < COPY_BELOW => Bytes::copy_from_slice(&b),
            Some(b) => b,
            None => p.body.freeze(),
        };
        let mut properties = if p.properties.len() < COPY_BELOW {
            Bytes::copy_from_slice(&p.properties)
        } else {
            p.properties
        };
        if p.known.reply_to.as_deref() == Some(REPLY_TO) {
            let Some((address, _)) = &self.reply_consumer else {
                return Err(
                    AmqpError::precondition("fast reply consumer does not exist").during(60, 40),
                );
            };
            properties = props::with_reply_to(&properties, address).ok_or_else(|| {
                AmqpError::connection(
                    codes::SYNTAX_ERROR,
                    "SYNTAX_ERROR - malformed content header properties",
                )
            })?;
        }
        let message = Arc::new(Message {
            exchange: p.exchange,
            routing_key: p.routing_key,
            properties,
            body,
            persistent: p.known.persistent,
            priority: p.known.priority,
            expiration_ms: p.known.expiration_ms,
        });
        if let Some(tx) = self.tx.as_mut() {
            tx.publishes.push((message, p.mandatory, p.known.headers));
            return Ok(());
        }
        self.route(ctx, message, p.mandatory, p.known.headers.as_ref())
    }

    /// Routes a complete message to its queues, returns it when it is mandatory and
    /// unroutable, and counts it for publisher confirms.
    fn route(
        &mut self,
        ctx: &mut Ctx<'_>,
        message: Arc<Message>,
        mandatory: bool,
        headers: Option<&Table>,
    ) -> Result<(), AmqpError> {
        MessageStats::add(&self.stats.received, 1);
        if self.confirm {
            MessageStats::add(&self.stats.received_confirm, 1);
        }
        if message.exchange.is_empty() && message.routing_key.starts_with(REPLY_TO) {
            // A reply: straight to the waiting consumer, or dropped as RabbitMQ does.
            let routed = ctx
                .vhost
                .send_reply(&message.routing_key, Arc::clone(&message));
            if self.confirm {
                self.publish_seq += 1;
            }
            if !routed && mandatory {
                self.return_unroutable(ctx, &message);
            }
            return Ok(());
        }
        if let Some(delay_ms) = headers
            .and_then(|h| h.get("x-delay"))
            .and_then(Value::as_i64)
            && delay_ms > 0
            && ctx.vhost.is_delayed(&message.exchange)
        {
            // A delayed exchange holds the message until it is due, then routes it.
            let seq = if self.confirm {
                self.publish_seq += 1;
                self.publish_seq
            } else {
                0
            };
            let confirm = self.confirm.then(|| Confirm {
                confirms: Arc::clone(ctx.confirms),
                channel: self.id,
                seq,
            });
            let waiting = ctx
                .vhost
                .publish_delayed(message, delay_ms, confirm)
                .unwrap_or(false);
            if waiting {
                self.unconfirmed.insert(seq, 1);
            }
            return Ok(());
        }
        self.routed.clear();
        ctx.vhost.router().route(
            &message.exchange,
            &message.routing_key,
            headers,
            &mut self.routed,
        )?;
        if self.routed.is_empty()
            && message.exchange.is_empty()
            && ctx.vhost.stream(&message.routing_key).is_some()
        {
            // A stream queue created over Kafka, published to for the first time.
            self.routed.push(Arc::clone(&message.routing_key));
        }
        let seq = if self.confirm {
            self.publish_seq += 1;
            self.publish_seq
        } else {
            0
        };
        let mut delivered = 0;
        let mut waiting = 0u32;
        let mut rejected = false;
        self.routed_queues.clear();
        for name in &self.routed {
            if let Some(queue) = ctx.vhost.queue(name) {
                self.routed_queues.push(queue);
                delivered += 1;
            } else if let Some((topic, partition)) = ctx.vhost.stream(name) {
                delivered += 1;
                match stream_queue::publish(&partition, &message, now_ms()) {
                    Ok(next) if self.confirm && topic.config().flush_sync => {
                        // A `flush=sync` stream confirms once the record is on disk.
                        let confirm = Confirm {
                            confirms: Arc::clone(ctx.confirms),
                            channel: self.id,
                            seq,
                        };
                        waiting += 1;
                        tokio::spawn(async move {
                            let ok = partition.wait_durable(next).await.is_ok();
                            confirm.done(ok);
                        });
                    }
                    Ok(_) => {}
                    Err(_) => rejected = true,
                }
            }
        }
        if !self.routed_queues.is_empty() {
            // One write of a persistent message for every durable queue it reached.
            let confirm = (self.confirm && message.persistent).then(|| Confirm {
                confirms: Arc::clone(ctx.confirms),
                channel: self.id,
                seq,
            });
            let (taken, refused) = ctx.vhost.publish_to(&message, &self.routed_queues, confirm);
            self.routed_queues.clear();
            if taken {
                waiting += 1;
            }
            rejected |= refused;
        }
        if self.confirm && rejected {
            // A queue at its limit refused it (`reject-publish`): nack, even if other
            // queues took it, as RabbitMQ does.
            self.nacked.insert(seq);
            frame::write_method(
                ctx.out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                })),
            );
        } else if waiting > 0 {
            self.unconfirmed.insert(seq, waiting);
        }
        let counter = match (delivered, mandatory) {
            (0, true) => &self.stats.unroutable_returned,
            (0, false) => &self.stats.unroutable_dropped,
            _ => &self.stats.routed,
        };
        MessageStats::add(counter, 1);
        if delivered == 0 && mandatory {
            self.return_unroutable(ctx, &message);
        }
        Ok(())
    }

    /// `basic.return` with 312 NO_ROUTE and the message.
    fn return_unroutable(&self, ctx: &mut Ctx<'_>, message: &Message) {
        frame::write_method(
            ctx.out,
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: codes::NO_ROUTE,
                reply_text: short("NO_ROUTE"),
                exchange: short(&message.exchange),
                routing_key: short(&message.routing_key),
            })),
        );
        frame::write_content(
            ctx.out,
            self.id,
            &message.properties,
            &message.body,
            ctx.frame_max,
        );
    }

    /// A queue reports a persistent message of publish `seq` on disk (or not).
    /// Publishes waiting for the disk before they are confirmed.
    /// What operators see of this channel.
    pub fn describe(&self) -> crate::broker::ChannelInfo {
        crate::broker::ChannelInfo {
            number: self.id,
            consumers: self.consumers.len(),
            prefetch: self.prefetch,
            confirm: self.confirm,
            transactional: self.tx.is_some(),
            unacked: self.unacked.len() + self.stream_unacked.len(),
            unconfirmed: self.unconfirmed.len(),
        }
    }

    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    pub fn stored(&mut self, out: &mut BytesMut, seq: u64, ok: bool) {
        let Some(left) = self.unconfirmed.get_mut(&seq) else {
            return;
        };
        if !ok {
            self.unconfirmed.remove(&seq);
            self.nacked.insert(seq);
            frame::write_method(
                out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                })),
            );
            return;
        }
        *left -= 1;
        if *left == 0 {
            self.unconfirmed.remove(&seq);
        }
    }

    /// Acknowledges every publish up to the first one still waiting for the disk: one
    /// `basic.ack` with `multiple` when none in the range was nacked.
    pub fn flush_confirms(&mut self, out: &mut BytesMut) {
        if !self.confirm {
            return;
        }
        let upto = match self.unconfirmed.keys().next() {
            Some(&first) => first - 1,
            None => self.publish_seq,
        };
        if upto <= self.confirm_sent {
            return;
        }
        if self.nacked.is_empty() {
            MessageStats::add(&self.stats.confirmed, upto - self.confirm_sent);
            frame::write_confirm_ack(out, self.id, upto, upto - self.confirm_sent > 1);
        } else {
            for seq in self.confirm_sent + 1..=upto {
                if !self.nacked.remove(&seq) {
                    MessageStats::add(&self.stats.confirmed, 1);
                    frame::write_confirm_ack(out, self.id, seq, false);
                }
            }
        }
        self.confirm_sent = upto;
    }

    /// The channel is closing: cancel its consumers and requeue what it had unacked.
    pub fn release(&mut self, vhost: &VHost) {
        if let Some((address, _)) = self.reply_consumer.take() {
            vhost.remove_reply_consumer(&address);
        }
        let tags: Vec<Arc<str>> = self.consumers.keys().cloned().collect();
        for tag in tags {
            self.cancel_consumer(vhost, &tag);
        }
        let all = std::mem::take(&mut self.unacked).into_values().collect();
        for (queue, ids) in group_by_queue(all) {
            queue.requeue(&ids);
        }
        self.stream_unacked.clear();
        self.publishing = None;
    }
}

/// A binding from the method's fields.
fn binding(
    source: &ShortString,
    destination: Destination,
    key: &ShortString,
    arguments: &amq_protocol::types::FieldTable,
) -> Binding {
    Binding {
        source: source.as_str().into(),
        destination,
        routing_key: key.as_str().into(),
        arguments: props::table_from_amqp(arguments),
    }
}

/// Message ids of one queue.
type QueueIds = (Arc<QueueCell>, Vec<MessageId>);

fn now_ms() -> i64 {
    sluice_core::Clock::now_ms(&sluice_core::SystemClock)
}

/// The pseudo-queue of direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn group_by_queue(items: Vec<Unacked>) -> Vec<QueueIds> {
    let mut groups: Vec<QueueIds> = Vec::new();
    for u in items {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, ids)) => ids.push(u.id),
            None => groups.push((u.queue, vec![u.id])),
        }
    }
    groups
}

/// `basic.consume-ok` for consumer `tag`.
fn write_consume_ok(out: &mut BytesMut, channel: u16, tag: &str) {
    frame::write_method(
        out,
        channel,
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: short(tag),
        })),
    );
}

/// The name of a queue being created: the client's (not in the reserved `amq.*`
/// namespace), or a server-generated one when it sent none.
fn new_queue_name(ctx: &Ctx<'_>, requested: &str) -> Result<Arc<str>, AmqpError> {
    if requested.starts_with("amq.") {
        return Err(AmqpError::channel(
            codes::ACCESS_REFUSED,
            format!("ACCESS_REFUSED - queue name '{requested}' contains reserved prefix 'amq.*'"),
        ));
    }
    Ok(if requested.is_empty() {
        server_name("amq.gen-", ctx.broker.next_id()).into()
    } else {
        requested.into()
    })
}

/// A server-generated name (`amq.gen-…`, `amq.ctag-…`): unique per broker run and hard
/// to guess, as RabbitMQ's are.
fn server_name(prefix: &str, n: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos.rotate_left(17);
    let mut out = String::with_capacity(prefix.len() + 22);
    out.push_str(prefix);
    for _ in 0..22 {
        // xorshift64*: spreads the counter and the time over the name.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.push(char::from(
            ALPHABET.get((v >> 58) as usize).copied().unwrap_or(b'A'),
        ));
    }
    out
}
