//! One AMQP connection: protocol header, `connection.start`/`tune`/`open` handshake with
//! SASL PLAIN and AMQPLAIN, heartbeats, channel multiplexing, and the close handshakes.
//! The task reads frames, hands methods to channels, takes deliveries from queues through
//! its outbox, and writes all output in batches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::broker::{Broker, Confirms, ConnectionId, Outbound, VHost};
use crate::channel::{Channel, Ctx};
use crate::error::{AmqpError, codes};
use crate::frame::{self, Frame, FrameError, PROTOCOL_HEADER};
use sluice_core::admission::Ticket;

/// Settings the server offers in `connection.tune`, and bounds of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest frame, header and end octet included (RabbitMQ's default: 128 KiB).
    pub frame_max: u32,
    /// Highest channel number (RabbitMQ's default: 2047).
    pub channel_max: u16,
    /// Heartbeat interval offered to clients, in seconds (RabbitMQ's default: 60).
    pub heartbeat_s: u16,
    /// Time a client has to finish the handshake.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_s: 60,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest frame accepted before `tune-ok` settles the real limit: RabbitMQ's
/// `FRAME_MIN_SIZE`, so an unauthenticated client cannot make the broker buffer more.
const FRAME_MAX_BEFORE_TUNE: u32 = 4096;
/// RabbitMQ's `SILENT_CLOSE_DELAY`: after an error before the connection is open, wait
/// this long and close the socket without a `connection.close`, so a client cannot
/// retry failed logins or malformed handshakes at full speed.
const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);
/// Outbox slots per connection: deliveries are bounded by consumer flow limits first.
const OUTBOX_CAPACITY: usize = 1 << 16;
/// Initial size of a connection's read and write buffers: small, so idle connections
/// are cheap (10,000 of them must fit well under 1 GiB); they grow with traffic.
const BUFFER_BYTES_INITIAL: usize = 4096;
/// Confirm-mode publishes of one connection that may wait for the disk at once; past it
/// the connection is not read until confirms catch up.
const UNCONFIRMED_MAX: usize = 1 << 16;
/// How long to wait for `close-ok` after sending `connection.close` (RabbitMQ closes a
/// refused login's socket after 3 s without one).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent `connection.close` and wait for `close-ok`.
    Closing,
    Done,
}

struct Conn {
    id: ConnectionId,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: ConnectionConfig,
    phase: Phase,
    vhost: Option<Arc<VHost>>,
    perms: Option<Arc<crate::auth::Permissions>>,
    frame_max: u32,
    channel_max: u16,
    heartbeat_s: u16,
    channels: HashMap<u16, Channel>,
    /// The authenticated user.
    user: String,
    /// `Some` when EXTERNAL is offered (TLS with client certificates configured): the
    /// user the client's verified certificate names, if it presented one.
    external: Option<Option<String>>,
    /// The login mechanism and the client's properties, for the management API.
    mechanism: String,
    client_properties: sluice_core::Table,
    /// The client handles `connection.blocked` (its `capabilities` say so).
    wants_blocked: bool,
    /// This connection has published: resource alarms block it.
    publisher: bool,
    /// The reason sent in our last `connection.blocked`, until `unblocked`.
    blocked: Option<&'static str>,
    /// Channels with publisher confirms to send before the next write.
    confirm_dirty: Vec<u16>,
    /// The client handles a `connection.close` for a refused login (its capabilities
    /// include `authentication_failure_close`); others are closed silently.
    wants_auth_close: bool,
    /// Close the socket only after `SILENT_CLOSE_DELAY`: an error before the connection
    /// opened, or a frame whose boundary was lost.
    silent_close: bool,
    /// When our `connection.close` went out, while its `close-ok` is awaited.
    closing_since: Option<Instant>,
    out: BytesMut,
    outbox: mpsc::Sender<Outbound>,
    confirms: Arc<Confirms>,
}

/// Serves one client connection until it closes.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: ConnectionConfig,
    ticket: Ticket,
) {
    let _open = crate::broker::OpenCount::new(&broker.connections_open);
    let result = match (stream.set_nodelay(true), stream.local_addr()) {
        (Ok(()), Ok(local)) => {
            let (rd, wr) = stream.into_split();
            run(rd, wr, local, peer, false, broker, config, ticket, None).await
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "amqp connection ended");
    }
}

/// Serves one client connection over an established stream (TLS: `amqps`) until it
/// closes; `local` is the listener's side of it.
pub async fn serve_stream<S>(
    stream: S,
    local: SocketAddr,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: ConnectionConfig,
    ticket: Ticket,
    external: Option<Option<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    let _open = crate::broker::OpenCount::new(&broker.connections_open);
    let (rd, wr) = tokio::io::split(stream);
    if let Err(e) = run(rd, wr, local, peer, true, broker, config, ticket, external).await {
        tracing::debug!(%peer, error = %e, "amqps connection ended");
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<R, W>(
    mut rd: R,
    mut wr: W,
    local: SocketAddr,
    peer: SocketAddr,
    tls: bool,
    broker: Arc<Broker>,
    config: ConnectionConfig,
    ticket: Ticket,
    external: Option<Option<String>>,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let connected_at_ms = sluice_core::Clock::now_ms(&sluice_core::SystemClock);
    let mut header = [0u8; 8];
    let read = tokio::select! {
        read = tokio::time::timeout(config.handshake_timeout, rd.read_exact(&mut header)) => read,
        _ = ticket.evicted() => return Ok(()),
    };
    if !matches!(read, Ok(Ok(_))) || &header != PROTOCOL_HEADER {
        // RabbitMQ answers a wrong header with the one it speaks, then closes.
        wr.write_all(PROTOCOL_HEADER).await?;
        return Ok(());
    }
    let (outbox, mut inbox) = mpsc::channel(OUTBOX_CAPACITY);
    let mut conn = Conn {
        id: broker.next_id(),
        peer,
        broker,
        phase: Phase::AwaitStartOk,
        vhost: None,
        perms: None,
        frame_max: FRAME_MAX_BEFORE_TUNE,
        channel_max: config.channel_max,
        heartbeat_s: 0,
        config,
        channels: HashMap::new(),
        user: String::new(),
        external,
        mechanism: String::new(),
        client_properties: sluice_core::Table::default(),
        wants_blocked: false,
        publisher: false,
        blocked: None,
        confirm_dirty: Vec::new(),
        wants_auth_close: false,
        silent_close: false,
        closing_since: None,
        out: BytesMut::with_capacity(BUFFER_BYTES_INITIAL),
        outbox,
        confirms: Arc::new(Confirms::default()),
    };
    conn.send_start();
    let started = Instant::now();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut inbuf = BytesMut::with_capacity(BUFFER_BYTES_INITIAL);
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut authenticated = false;
    let mut _registered = None;
    let result = loop {
        if let Err(e) = conn.write_pending(&mut wr, &mut last_write).await {
            break Err(e);
        }
        if conn.phase == Phase::Done {
            break Ok(());
        }
        if conn.phase == Phase::Open && !authenticated {
            ticket.authenticated();
            authenticated = true;
            _registered = Some(conn.register(local, connected_at_ms, tls));
        }
        conn.sync_blocked();
        // While an alarm blocks this publisher, or too many of its publishes wait for the
        // disk, its socket is not read: TCP pushes back.
        let paused = conn.blocked.is_some() || conn.unconfirmed() >= UNCONFIRMED_MAX;
        let confirms = Arc::clone(&conn.confirms);
        // RabbitMQ sends a heartbeat once half the interval passed without a write.
        let beat_at = (conn.heartbeat_s > 0 && conn.phase == Phase::Open)
            .then(|| last_write + Duration::from_millis(u64::from(conn.heartbeat_s) * 500));
        tokio::select! {
            _ = tokio::time::sleep_until(beat_at.unwrap_or(last_write).into()), if beat_at.is_some() => {
                frame::write_heartbeat(&mut conn.out);
            }
            read = rd.read_buf(&mut inbuf), if !paused => {
                match read {
                    Ok(0) => break Ok(()),
                    Ok(_) => {
                        last_read = Instant::now();
                        if conn.process_input(&mut inbuf).is_break() {
                            // An unknown class or method id: dropped at once, no close.
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
            _ = confirms.ready() => {
                for (channel, seq, ok) in conn.confirms.take() {
                    conn.stored(channel, seq, ok);
                }
            }
            Some(item) = inbox.recv() => {
                conn.outbound(item);
                // Drain what else is ready so it goes out in the same write.
                for _ in 0..256 {
                    match inbox.try_recv() {
                        Ok(item) => conn.outbound(item),
                        Err(_) => break,
                    }
                }
            }
            _ = ticket.evicted(), if !authenticated => {
                tracing::debug!(peer = %conn.peer, "unauthenticated connection evicted for a newer one");
                break Ok(());
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                if conn.phase != Phase::Open && conn.phase != Phase::Closing
                    && now.duration_since(started) > conn.config.handshake_timeout
                {
                    break Ok(());
                }
                if conn.phase == Phase::Closing
                    && conn.closing_since.is_some_and(|since| now.duration_since(since) >= CLOSE_TIMEOUT)
                {
                    break Ok(());
                }
                if paused {
                    // Not reading a paused connection is our choice, not a dead peer.
                    last_read = now;
                }
                if conn.heartbeat_s > 0 {
                    let interval = Duration::from_secs(u64::from(conn.heartbeat_s));
                    if now.duration_since(last_read) > interval * 2 {
                        tracing::info!(peer = %conn.peer, "missed heartbeats from client, closing");
                        break Ok(());
                    }
                }
            }
        }
    };
    conn.release_all();
    if conn.silent_close {
        // Evicting this connection for a newer one cuts the delay short.
        tokio::select! {
            _ = tokio::time::sleep(SILENT_CLOSE_DELAY) => {}
            _ = ticket.evicted() => {}
        }
    }
    let _ = wr.shutdown().await;
    result
}

impl Conn {
    async fn write_pending<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        last_write: &mut Instant,
    ) -> std::io::Result<()> {
        for id in std::mem::take(&mut self.confirm_dirty) {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.flush_confirms(&mut self.out);
            }
        }
        if !self.out.is_empty() {
            wr.write_all(&self.out).await?;
            // TLS may hold records back until flushed; a socket's flush does nothing.
            wr.flush().await?;
            self.out.clear();
            *last_write = Instant::now();
        }
        Ok(())
    }

    fn send_start(&mut self) {
        let mut capabilities = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "per_consumer_qos",
            "authentication_failure_close",
            "consumer_priorities",
            "direct_reply_to",
            "connection.blocked",
        ] {
            capabilities.insert(ShortString::from(cap.to_string()), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        props.insert(ShortString::from("product".to_string()), text("Sluice"));
        props.insert(
            ShortString::from("version".to_string()),
            text(env!("CARGO_PKG_VERSION")),
        );
        props.insert(ShortString::from("platform".to_string()), text("Rust"));
        props.insert(
            ShortString::from("capabilities".to_string()),
            AMQPValue::FieldTable(capabilities),
        );
        frame::write_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: LongString::from(if self.external.is_some() {
                    b"PLAIN AMQPLAIN EXTERNAL".to_vec()
                } else {
                    b"PLAIN AMQPLAIN".to_vec()
                }),
                locales: LongString::from(b"en_US".to_vec()),
            })),
        );
    }

    /// Handles every whole frame in `inbuf`; `Break` when the socket must be dropped at
    /// once.
    fn process_input(&mut self, inbuf: &mut BytesMut) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow;
        while self.phase != Phase::Done {
            match frame::parse(inbuf, self.frame_max) {
                Ok(Some(f)) => {
                    if let Err(e) = self.handle_frame(f) {
                        self.fail(e);
                    }
                }
                Ok(None) => return ControlFlow::Continue(()),
                Err(FrameError::Abort) => {
                    tracing::debug!(peer = %self.peer, "unknown class or method id, dropping the connection");
                    return ControlFlow::Break(());
                }
                Err(FrameError::Bad(e)) => self.fail(e),
                Err(FrameError::Lost(e)) => {
                    // The stream cannot be re-synchronised: RabbitMQ closes, then drops
                    // the socket after its silent-close delay, close-ok or not.
                    self.fail(e);
                    self.silent_close = true;
                    self.phase = Phase::Done;
                    inbuf.clear();
                    return ControlFlow::Continue(());
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Sends the close for an error: the channel's, or the whole connection's.
    fn fail(&mut self, error: AmqpError) {
        match error {
            AmqpError::Channel {
                code,
                text,
                class_id,
                method_id,
            } => {
                // Channel errors carry their channel through `handle_frame`'s caller.
                tracing::debug!(code, %text, "channel error without channel");
                self.close_connection(code, &text, class_id, method_id);
            }
            AmqpError::Connection {
                code,
                text,
                class_id,
                method_id,
            } => {
                self.close_connection(code, &text, class_id, method_id);
            }
        }
    }

    fn close_connection(&mut self, code: u16, text: &str, class_id: u16, method_id: u16) {
        if matches!(self.phase, Phase::Closing | Phase::Done) {
            return;
        }
        tracing::debug!(peer = %self.peer, code, text, "closing connection");
        // As RabbitMQ: before the connection is opening, only a refused login (to a client
        // that handles it) gets a `connection.close`; other errors close silently.
        let told = match self.phase {
            Phase::AwaitStartOk => code == codes::ACCESS_REFUSED && self.wants_auth_close,
            Phase::AwaitTuneOk => false,
            _ => true,
        };
        if !told {
            self.silent_close = true;
            self.phase = Phase::Done;
            return;
        }
        frame::write_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: code,
                reply_text: ShortString::from(truncate(text)),
                class_id,
                method_id,
            })),
        );
        self.release_all();
        self.phase = Phase::Closing;
        self.closing_since = Some(Instant::now());
    }

    fn handle_frame(&mut self, f: Frame) -> Result<(), AmqpError> {
        if self.phase == Phase::Closing {
            // Only close-ok (or a crossing close) matters now.
            if let Frame::Method(0, m) = f {
                match *m {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        self.phase = Phase::Done
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.send_close_ok();
                        self.phase = Phase::Done;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        match f {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Method(0, m) => self.connection_method(*m),
            // RabbitMQ's reader quotes a frame it did not expect: any frame but a method on
            // channel 0 before the connection is open, content on channel 0, heartbeats on
            // other channels.
            f @ (Frame::Heartbeat(_) | Frame::Header { channel: 0, .. } | Frame::Body(0, _)) => {
                Err(unexpected_frame(&f))
            }
            f if self.phase != Phase::Open => Err(unexpected_frame(&f)),
            Frame::Method(ch, m) => self.channel_method(ch, *m),
            Frame::Header {
                channel,
                class_id,
                weight,
                body_size,
                properties,
            } => self.with_content_channel(channel, |ch, ctx| {
                ch.handle_header(ctx, class_id, weight, body_size, properties)
            }),
            Frame::Body(channel, body) => {
                self.with_content_channel(channel, |ch, ctx| ch.handle_body(ctx, body))
            }
        }
    }

    /// Content frames go to an open channel; on any other the frame is out of place.
    fn with_content_channel(
        &mut self,
        id: u16,
        f: impl FnOnce(&mut Channel, &mut Ctx<'_>) -> Result<(), AmqpError>,
    ) -> Result<(), AmqpError> {
        if !self.channels.contains_key(&id) {
            return Err(crate::channel::unexpected_non_method());
        }
        self.with_channel(id, f)
    }

    /// The login succeeded: remember who, and tune.
    fn logged_in(&mut self, user: String, s: &connection::StartOk) -> Result<(), AmqpError> {
        self.user = user;
        self.mechanism = s.mechanism.as_str().to_string();
        self.client_properties = crate::props::table_from_amqp(&s.client_properties);
        frame::write_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: self.config.channel_max,
                frame_max: self.config.frame_max,
                heartbeat: self.config.heartbeat_s,
            })),
        );
        self.phase = Phase::AwaitTuneOk;
        Ok(())
    }

    fn connection_method(&mut self, m: AMQPClass) -> Result<(), AmqpError> {
        let class = m.get_amqp_class_id();
        let method = m.get_amqp_method_id();
        let AMQPClass::Connection(m) = m else {
            return Err(
                AmqpError::connection(codes::CHANNEL_ERROR, UNEXPECTED_IN_RUNNING)
                    .during(class, method),
            );
        };
        match (self.phase, m) {
            (Phase::AwaitStartOk, connection::AMQPMethod::StartOk(s)) => {
                let capability = |name: &str| {
                    matches!(
                        s.client_properties.inner().get("capabilities"),
                        Some(AMQPValue::FieldTable(caps))
                            if matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
                    )
                };
                self.wants_blocked = capability("connection.blocked");
                self.wants_auth_close = capability("authentication_failure_close");
                let refused = |mechanism: &str| {
                    AmqpError::connection(
                        codes::ACCESS_REFUSED,
                        format!(
                            "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile.",
                        ),
                    )
                };
                if s.mechanism.as_str() == "EXTERNAL" && self.external.is_some() {
                    // The certificate is the credential: its user must exist, and guest
                    // stays on loopback, as with RabbitMQ's rabbitmq_auth_mechanism_ssl;
                    // without a certificate the login is refused.
                    let user = self.external.clone().flatten().filter(|u| {
                        self.broker.users.describe(u).is_some()
                            && (u != "guest" || self.peer.ip().is_loopback())
                    });
                    let Some(user) = user else {
                        tracing::info!(peer = %self.peer, cert_user = ?self.external, "EXTERNAL login refused");
                        return Err(refused("EXTERNAL"));
                    };
                    return self.logged_in(user, &s);
                }
                let Some(login) = credentials(s.mechanism.as_str(), s.response.as_bytes()) else {
                    // An unknown mechanism or a response it cannot read: RabbitMQ closes
                    // silently, whatever the client's capabilities.
                    tracing::info!(peer = %self.peer, mechanism = s.mechanism.as_str(), "bad authentication mechanism or response");
                    return Err(AmqpError::connection(
                        codes::SYNTAX_ERROR,
                        "unknown authentication mechanism or invalid response",
                    ));
                };
                let (user, pass) = &login;
                if !self.broker.users.login_from(
                    sluice_core::login_guard::Face::Amqp,
                    user,
                    pass,
                    self.peer.ip(),
                ) {
                    tracing::info!(peer = %self.peer, mechanism = s.mechanism.as_str(), "login refused");
                    return Err(refused(s.mechanism.as_str()));
                }
                self.logged_in(login.0, &s)
            }
            (Phase::AwaitTuneOk, connection::AMQPMethod::TuneOk(t)) => {
                // 0 means "no limit", which is above what was offered: RabbitMQ refuses it.
                if !(4096..=self.config.frame_max).contains(&t.frame_max)
                    || !(1..=self.config.channel_max).contains(&t.channel_max)
                {
                    tracing::info!(peer = %self.peer, frame_max = t.frame_max, channel_max = t.channel_max, "failed to negotiate connection parameters");
                    return Err(AmqpError::connection(
                        codes::NOT_ALLOWED,
                        "failed to negotiate connection parameters",
                    ));
                }
                self.frame_max = t.frame_max;
                self.channel_max = t.channel_max;
                self.heartbeat_s = t.heartbeat;
                self.phase = Phase::AwaitOpen;
                Ok(())
            }
            (Phase::AwaitOpen, connection::AMQPMethod::Open(o)) => {
                let name = o.virtual_host.as_str();
                let Some(vhost) = self.broker.vhost(name) else {
                    return Err(AmqpError::connection(
                        codes::NOT_ALLOWED,
                        format!("NOT_ALLOWED - vhost {name} not found"),
                    )
                    .during(10, 40));
                };
                let Ok(perms) = self.broker.users.vhost_access(&self.user, name) else {
                    tracing::info!(peer = %self.peer, user = %self.user, vhost = name, "vhost access refused");
                    return Err(AmqpError::connection(
                        codes::NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - access to vhost '{name}' refused for user '{}'",
                            self.user
                        ),
                    )
                    .during(10, 40));
                };
                self.perms = perms;
                self.vhost = Some(vhost);
                frame::write_method(
                    &mut self.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
                );
                self.phase = Phase::Open;
                Ok(())
            }
            (_, connection::AMQPMethod::Close(_)) => {
                self.release_all();
                self.send_close_ok();
                self.phase = Phase::Done;
                Ok(())
            }
            (_, connection::AMQPMethod::CloseOk(_)) => {
                self.phase = Phase::Done;
                Ok(())
            }
            (_, connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_)) => {
                Ok(())
            }
            (Phase::Open, _) => Err(AmqpError::connection(
                codes::CHANNEL_ERROR,
                UNEXPECTED_IN_RUNNING,
            )
            .during(class, method)),
            _ => Err(AmqpError::connection(
                codes::COMMAND_INVALID,
                "COMMAND_INVALID - connection method out of order",
            )
            .during(class, method)),
        }
    }

    fn send_close_ok(&mut self) {
        frame::write_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
    }

    fn channel_method(&mut self, id: u16, m: AMQPClass) -> Result<(), AmqpError> {
        let (class, method) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        if matches!(m, AMQPClass::Connection(_)) {
            return Err(unimplemented_method(class, method));
        }
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = m {
            if self.channels.contains_key(&id) {
                return Err(AmqpError::connection(
                    codes::CHANNEL_ERROR,
                    "CHANNEL_ERROR - second 'channel.open' seen",
                )
                .during(class, method));
            }
            // channel_max caps how many channels are open, not their numbers.
            if self.channels.len() >= usize::from(self.channel_max) {
                return Err(AmqpError::connection(
                    codes::NOT_ALLOWED,
                    format!(
                        "NOT_ALLOWED - number of channels opened ({}) has reached the negotiated channel_max ({})",
                        self.channels.len(),
                        self.channel_max
                    ),
                ));
            }
            self.channels.insert(
                id,
                Channel::new(
                    id,
                    crate::broker::OpenCount::new(&self.broker.channels_open),
                    Arc::clone(&self.broker.stats),
                ),
            );
            frame::write_method(
                &mut self.out,
                id,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Ok(());
        }
        let Some(closing) = self.channels.get(&id).map(|c| c.closing) else {
            return Err(AmqpError::connection(
                codes::CHANNEL_ERROR,
                "CHANNEL_ERROR - expected 'channel.open'",
            )
            .during(class, method));
        };
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                // A close crossing ours is answered, but the channel stays ours to close
                // until the client's close-ok.
                if !closing
                    && let Some(mut ch) = self.channels.remove(&id)
                    && let Some(vhost) = &self.vhost
                {
                    ch.release(vhost);
                }
                frame::write_method(
                    &mut self.out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                if closing {
                    self.channels.remove(&id);
                }
                Ok(())
            }
            m if closing => {
                // Dropped until the client's close-ok, as RabbitMQ does.
                drop(m);
                Ok(())
            }
            m if server_only(&m) => Err(unimplemented_method(class, method)),
            m => {
                if matches!(m, AMQPClass::Basic(basic::AMQPMethod::Publish(_))) {
                    self.publisher = true;
                }
                self.with_channel(id, |ch, ctx| ch.handle_method(ctx, m))
            }
        }
    }

    /// Runs `f` on an open channel; a channel error closes just that channel.
    fn with_channel(
        &mut self,
        id: u16,
        f: impl FnOnce(&mut Channel, &mut Ctx<'_>) -> Result<(), AmqpError>,
    ) -> Result<(), AmqpError> {
        let Some(vhost) = self.vhost.clone() else {
            return Err(AmqpError::connection(
                codes::CHANNEL_ERROR,
                "CHANNEL_ERROR - connection not open",
            ));
        };
        let Some(ch) = self.channels.get_mut(&id) else {
            return Err(AmqpError::connection(
                codes::CHANNEL_ERROR,
                "CHANNEL_ERROR - expected 'channel.open'",
            ));
        };
        if ch.closing {
            return Ok(());
        }
        let mut ctx = Ctx {
            broker: &self.broker,
            user: &self.user,
            vhost: &vhost,
            perms: self.perms.as_deref(),
            connection: self.id,
            outbox: &self.outbox,
            confirms: &self.confirms,
            out: &mut self.out,
            frame_max: self.frame_max,
        };
        let result = f(ch, &mut ctx);
        vhost.process_dead_letters();
        match result {
            Ok(()) => {
                self.confirm_dirty.push(id);
                Ok(())
            }
            Err(AmqpError::Channel {
                code,
                text,
                class_id,
                method_id,
            }) => {
                tracing::debug!(channel = id, code, %text, "closing channel");
                ch.flush_confirms(&mut self.out);
                frame::write_method(
                    &mut self.out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                        reply_code: code,
                        reply_text: ShortString::from(truncate(&text)),
                        class_id,
                        method_id,
                    })),
                );
                ch.release(&vhost);
                ch.closing = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Handles work sent by queues: a delivery to write, or a consumer to cancel.
    /// Lists this connection for operators (the management API).
    fn register(
        &self,
        local: SocketAddr,
        connected_at_ms: i64,
        tls: bool,
    ) -> crate::broker::Registered {
        self.broker
            .connections
            .register(crate::broker::ConnectionInfo {
                id: self.id,
                name: format!("{} -> {local}", self.peer),
                peer: self.peer,
                local,
                connected_at_ms,
                user: self.user.clone(),
                vhost: self
                    .vhost
                    .as_ref()
                    .map_or_else(String::new, |v| v.name.clone()),
                auth_mechanism: self.mechanism.clone(),
                channel_max: self.channel_max,
                frame_max: self.frame_max,
                heartbeat_s: self.heartbeat_s,
                client_properties: self.client_properties.clone(),
                tls,
                outbox: self.outbox.clone(),
            })
    }

    fn outbound(&mut self, item: Outbound) {
        match item {
            Outbound::Close { reason } => {
                self.close_connection(
                    codes::CONNECTION_FORCED,
                    &format!("CONNECTION_FORCED - {reason}"),
                    0,
                    0,
                );
            }
            Outbound::Describe(answer) => {
                let mut channels: Vec<crate::broker::ChannelInfo> =
                    self.channels.values().map(Channel::describe).collect();
                channels.sort_by_key(|c| c.number);
                let _ = answer.send(channels);
            }
            Outbound::Deliver {
                channel,
                consumer,
                tag,
                no_ack,
                queue,
                entry,
                flow,
                credit,
            } => {
                let live = self
                    .channels
                    .get(&channel)
                    .is_some_and(|ch| !ch.closing && ch.has_consumer(&tag, consumer));
                let resume = flow.release();
                if live && let Some(ch) = self.channels.get_mut(&channel) {
                    ch.deliver(&mut self.out, self.frame_max, &tag, no_ack, &queue, &entry);
                    if resume {
                        queue.dispatch();
                    }
                } else {
                    // The consumer went away while this was in flight.
                    if let Some(credit) = credit {
                        credit.release(1);
                    }
                    queue.restore(entry);
                    queue.dispatch();
                }
            }
            Outbound::Cancelled {
                channel,
                consumer,
                tag,
            } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.consumer_cancelled(&mut self.out, consumer, &tag);
                }
            }
            Outbound::Stream {
                channel,
                consumer,
                tag,
                credit,
                queue,
                vhost,
                delivery,
            } => {
                let live = self
                    .channels
                    .get(&channel)
                    .is_some_and(|ch| !ch.closing && ch.has_consumer(&tag, consumer));
                match self.channels.get_mut(&channel) {
                    Some(ch) if live => ch.deliver_stream(
                        &mut self.out,
                        self.frame_max,
                        &tag,
                        credit,
                        queue,
                        &vhost,
                        &delivery,
                    ),
                    // The consumer went away while this was in flight.
                    _ => credit.release(1),
                }
            }
            Outbound::Direct {
                channel,
                tag,
                message,
            } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.deliver_direct(&mut self.out, self.frame_max, &tag, &message);
                }
            }
        }
    }

    /// Follows the broker's resource alarms: a publishing connection is blocked while one
    /// is raised (told with `connection.blocked` when the client handles it) and
    /// unblocked when it clears.
    fn sync_blocked(&mut self) {
        if self.phase != Phase::Open || !self.publisher {
            return;
        }
        let reason = self.broker.alarms.reason();
        match (self.blocked, reason) {
            (None, Some(r)) => {
                if self.wants_blocked {
                    frame::write_method(
                        &mut self.out,
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Blocked(
                            connection::Blocked {
                                reason: ShortString::from(r.to_string()),
                            },
                        )),
                    );
                }
                self.blocked = Some(r);
            }
            (Some(_), None) => {
                if self.wants_blocked {
                    frame::write_method(
                        &mut self.out,
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                            connection::Unblocked {},
                        )),
                    );
                }
                self.blocked = None;
            }
            _ => {}
        }
    }

    /// Publishes waiting for the disk; only a publishing connection can have any, so
    /// others skip the walk over their channels.
    fn unconfirmed(&self) -> usize {
        if !self.publisher {
            return 0;
        }
        self.channels.values().map(Channel::unconfirmed).sum()
    }

    fn stored(&mut self, channel: u16, seq: u64, ok: bool) {
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.stored(&mut self.out, seq, ok);
            self.confirm_dirty.push(channel);
        }
    }

    /// Releases every channel and deletes this connection's exclusive queues.
    fn release_all(&mut self) {
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        for (_, mut ch) in self.channels.drain() {
            ch.release(&vhost);
        }
        for name in vhost.queues_owned_by(self.id) {
            vhost.delete_queue(&name);
        }
    }
}

/// RabbitMQ's answer to a handshake or channel method on channel 0 once the connection
/// is open.
const UNEXPECTED_IN_RUNNING: &str = "CHANNEL_ERROR - unexpected method in connection state running";

/// RabbitMQ's answer to a method it never takes from a client (on a channel).
fn unimplemented_method(class: u16, method: u16) -> AmqpError {
    AmqpError::connection(
        codes::COMMAND_INVALID,
        "COMMAND_INVALID - unimplemented method",
    )
    .during(class, method)
}

/// Methods only a server sends: replies (`*-ok`), deliveries, returns.
fn server_only(m: &AMQPClass) -> bool {
    use amq_protocol::protocol::{access, confirm, exchange, queue, tx};
    matches!(
        m,
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(_) | channel::AMQPMethod::FlowOk(_))
            | AMQPClass::Access(access::AMQPMethod::RequestOk(_))
            | AMQPClass::Exchange(
                exchange::AMQPMethod::DeclareOk(_)
                    | exchange::AMQPMethod::DeleteOk(_)
                    | exchange::AMQPMethod::BindOk(_)
                    | exchange::AMQPMethod::UnbindOk(_)
            )
            | AMQPClass::Queue(
                queue::AMQPMethod::DeclareOk(_)
                    | queue::AMQPMethod::BindOk(_)
                    | queue::AMQPMethod::PurgeOk(_)
                    | queue::AMQPMethod::DeleteOk(_)
                    | queue::AMQPMethod::UnbindOk(_)
            )
            | AMQPClass::Basic(
                basic::AMQPMethod::QosOk(_)
                    | basic::AMQPMethod::ConsumeOk(_)
                    | basic::AMQPMethod::CancelOk(_)
                    | basic::AMQPMethod::Return(_)
                    | basic::AMQPMethod::Deliver(_)
                    | basic::AMQPMethod::GetOk(_)
                    | basic::AMQPMethod::GetEmpty(_)
                    | basic::AMQPMethod::RecoverOk(_)
            )
            | AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
            | AMQPClass::Tx(
                tx::AMQPMethod::SelectOk(_)
                    | tx::AMQPMethod::CommitOk(_)
                    | tx::AMQPMethod::RollbackOk(_)
            )
    )
}

/// RabbitMQ's 505 quoting a frame that came where none of its kind may: its type and
/// payload as received.
fn unexpected_frame(f: &Frame) -> AmqpError {
    match f {
        Frame::Method(channel, m) => {
            let mut out = BytesMut::new();
            frame::write_method(&mut out, *channel, (**m).clone());
            let payload = out.get(7..out.len().saturating_sub(1)).unwrap_or_default();
            frame::unexpected(frame::FRAME_METHOD, payload)
        }
        Frame::Header {
            class_id,
            weight,
            body_size,
            properties,
            ..
        } => {
            let mut payload = Vec::with_capacity(12 + properties.len());
            payload.extend_from_slice(&class_id.to_be_bytes());
            payload.extend_from_slice(&weight.to_be_bytes());
            payload.extend_from_slice(&body_size.to_be_bytes());
            payload.extend_from_slice(properties);
            frame::unexpected(frame::FRAME_HEADER, &payload)
        }
        Frame::Body(_, body) => frame::unexpected(frame::FRAME_BODY, body),
        Frame::Heartbeat(_) => frame::unexpected(frame::FRAME_HEARTBEAT, &[]),
    }
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_string()
}

/// User and password from a SASL response: PLAIN is `authzid\0user\0password`;
/// AMQPLAIN is a field table without its length prefix holding LOGIN and PASSWORD.
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let pass = String::from_utf8(parts.next()?.to_vec()).ok()?;
            Some((user, pass))
        }
        "AMQPLAIN" => {
            let mut framed = Vec::with_capacity(response.len() + 4);
            framed.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
            framed.extend_from_slice(response);
            let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
            let text = |key: &str| match table.inner().get(key) {
                Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).ok(),
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                _ => None,
            };
            Some((text("LOGIN")?, text("PASSWORD")?))
        }
        _ => None,
    }
}
