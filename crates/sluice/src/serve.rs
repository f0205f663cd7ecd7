//! `sluice serve`: the process lifetime around the broker.
//!
//! Order of work: lock the data directory, install the SIGINT/SIGTERM handlers, bind one
//! TCP listener per protocol face, then accept until a signal. Shutdown runs the other
//! way: stop accepting and close the listeners, release the lock, log `stopped`.
//!
//! The AMQP listener serves AMQP 0-9-1; durable definitions and persistent messages live
//! under `data_dir/amqp` and are replayed before the listeners open. The Kafka listener
//! serves the Kafka protocol; topics and committed offsets live under `data_dir/kafka`,
//! opened once the Kafka port is bound (Metadata advertises the bound port). The
//! RocketMQ listener serves RocketMQ 5's gRPC protocol on the same topics; its consumer
//! groups' offsets live under `data_dir/rocketmq`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use crate::listen::AdmittingListener;
use anyhow::Context as _;
use sluice_amqp::{Broker, ConnectionConfig, serve_connection};
use sluice_core::SystemClock;
use sluice_core::admission::{Admission, Ticket};
use sluice_kafka::{KafkaBroker, KafkaConfig, TopicConfig};
use sluice_log::FlushPolicy;
use sluice_rocketmq::{RocketBroker, RocketConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::lock::DataDirLock;
use crate::resources;

/// Pause after a failed accept. Accept fails mostly when the process is out of file
/// descriptors; retrying at once would spin a core without freeing any.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let lock = DataDirLock::acquire(&config.data_dir)?;
    info!(data_dir = %config.data_dir.display(), "data directory locked");
    debug!(storage = ?config.storage, "storage defaults");
    let open_files_max = config
        .open_files_max
        .unwrap_or_else(|| (open_files_limit() / 2).clamp(64, 65_536));
    sluice_log::files::set_open_files_max(open_files_max);
    info!(open_files_max, "log files open at most");
    let amqp_dir = config.data_dir.join("amqp");
    let broker = Broker::open(
        &amqp_dir,
        config.storage.clone(),
        config.storage.batch_bytes_max as usize,
        &config.amqp_vhosts,
    )
    .with_context(|| format!("cannot open AMQP data in {}", amqp_dir.display()))?;
    let mut broker = broker;
    let seed = sluice_amqp::auth::Users::parse(&config.amqp_users, &config.amqp_permissions)
        .map_err(|e| anyhow::anyhow!("amqp.permissions: {e}"))?;
    broker.users = sluice_amqp::users::UserStore::open(&amqp_dir.join("users.json"), seed)
        .map_err(|e| anyhow::anyhow!("users: {e}"))?;
    let memory_limit = resources::total_memory_bytes().map_or(u64::MAX, |total| {
        total / 1_000_000 * u64::from(config.memory_high_watermark_ppm)
    });
    broker
        .alarms
        .set_limits(memory_limit, config.disk_free_limit_bytes);
    broker.set_limits(config.amqp_limits);
    info!(
        memory_limit_bytes = memory_limit,
        disk_free_limit_bytes = config.disk_free_limit_bytes,
        "resource alarms set"
    );
    let broker = Arc::new(broker);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut kafka = None;
    let served = runtime.block_on(listen_until_signal(config, Arc::clone(&broker), &mut kafka));
    // Connections are dropped with the runtime; then everything stored is made durable.
    drop(runtime);
    broker.close();
    if let Some(kafka) = kafka {
        kafka.close();
    }
    served?;
    drop(lock);
    info!("stopped");
    Ok(())
}

/// The Kafka face's settings, advertising `bound` to clients.
fn kafka_config(config: &Config, bound: SocketAddr) -> KafkaConfig {
    let advertised_host = if !config.kafka_advertised_host.is_empty() {
        config.kafka_advertised_host.clone()
    } else if bound.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        bound.ip().to_string()
    };
    let topic_defaults = TopicConfig {
        segment_bytes: config.storage.segment_bytes,
        retention_bytes: config.storage.retention_bytes,
        retention_ms: config.storage.retention_ms,
        flush_sync: config.storage.flush == FlushPolicy::Sync,
        ..TopicConfig::default()
    };
    KafkaConfig {
        advertised_host,
        advertised_port: i32::from(bound.port()),
        auto_create_topics: config.kafka_auto_create_topics,
        default_partitions: config.kafka_default_partitions as i32,
        group_initial_rebalance_delay: Duration::from_millis(
            config.kafka_group_initial_rebalance_delay_ms,
        ),
        log: config.storage.clone(),
        topic_defaults,
        max_request_bytes: (config.storage.batch_bytes_max as usize).saturating_add(1 << 20),
        topics_max: config.kafka_topics_max,
        partitions_max: i32::try_from(config.kafka_partitions_max).unwrap_or(i32::MAX),
        connections_max_idle: Duration::from_millis(config.kafka_connections_max_idle_ms),
        security_protocol: config.kafka_security_protocol,
        reauth: (config.kafka_reauth_ms > 0).then(|| Duration::from_millis(config.kafka_reauth_ms)),
        transaction_max_timeout_ms: i32::try_from(config.kafka_transaction_max_timeout_ms)
            .unwrap_or(i32::MAX),
        fetch_session_cache_slots: usize::try_from(config.kafka_fetch_session_cache_slots)
            .unwrap_or(usize::MAX),
        log_cleaner_backoff: Duration::from_millis(config.kafka_log_cleaner_backoff_ms),
        cleaner: sluice_engine::stream::compact::CleanerLimits {
            io_bytes_per_second: config.kafka_log_cleaner_io_max_bytes_per_second,
            ..Default::default()
        },
        ..KafkaConfig::default()
    }
}

async fn listen_until_signal(
    config: &Config,
    broker: Arc<Broker>,
    kafka_out: &mut Option<Arc<KafkaBroker>>,
) -> anyhow::Result<()> {
    // Handlers go in before any listener binds: once a `listening` line is out, SIGTERM
    // must mean a clean stop, not the default kill.
    let mut signals = Signals::install()?;
    let tls = tls_settings(config)?;
    let acceptor = |key: &str, alpn: &[&[u8]]| -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let Some(tls) = &tls else {
            anyhow::bail!("{key} needs tls.cert_file and tls.key_file");
        };
        tls.acceptor(alpn).map_err(|e| anyhow::anyhow!("tls: {e}"))
    };
    let amqp = match config.amqp_listen {
        Some(addr) => Some(bind("amqp.listen", addr).await?),
        None => None,
    };
    let kafka = bind("kafka.listen", config.kafka_listen).await?;
    let rocketmq = bind("rocketmq.listen", config.rocketmq_listen).await?;
    let http = bind("http.listen", config.http_listen).await?;
    let amqps = match config.amqp_tls_listen {
        None => None,
        Some(addr) => {
            let acceptor = acceptor("amqp.tls_listen", &[b"amqp"])?;
            Some((bind("amqp.tls_listen", addr).await?, acceptor))
        }
    };
    let kafka_tls = match config.kafka_security_protocol.tls() {
        true => Some(acceptor("kafka.security_protocol SSL", &[])?),
        false => None,
    };
    // gRPC clients insist on HTTP/2 being agreed in the handshake.
    let rocketmq_tls = match config.rocketmq_tls {
        true => Some(acceptor("rocketmq.tls", &[b"h2"])?),
        false => None,
    };
    let http_tls = match config.http_tls {
        true => Some(acceptor("http.tls", &[b"http/1.1"])?),
        false => None,
    };
    let kafka_dir = config.data_dir.join("kafka");
    let kafka_config = kafka_config(config, kafka.local_addr);
    let users = Arc::new(crate::kafka_auth::UserModel {
        broker: Arc::clone(&broker),
    });
    let kafka_broker = tokio::task::block_in_place(|| KafkaBroker::open(&kafka_dir, kafka_config))
        .with_context(|| format!("cannot open Kafka data in {}", kafka_dir.display()))?
        .with_security(users);
    let kafka_broker = Arc::new(kafka_broker);
    // One-partition topics are the stream queues of AMQP's vhost `/`.
    broker.attach_streams(Arc::clone(&kafka_broker.topics));
    *kafka_out = Some(Arc::clone(&kafka_broker));
    let rocketmq_dir = config.data_dir.join("rocketmq");
    let rocketmq_config = RocketConfig {
        advertised_host: rocketmq.local_addr.ip().to_string(),
        advertised_port: rocketmq.local_addr.port(),
        max_body_bytes: ROCKETMQ_BODY_MAX,
        max_delivery_attempts: config.rocketmq_max_delivery_attempts,
        auto_create_queues: config
            .rocketmq_auto_create_topics
            .then(|| i32::try_from(config.rocketmq_default_queues).unwrap_or(8)),
    };
    let rocketmq_broker = tokio::task::block_in_place(|| {
        RocketBroker::open(
            &rocketmq_dir,
            &config.storage,
            Arc::clone(&kafka_broker.topics),
            rocketmq_config,
            Arc::new(SystemClock),
        )
    })
    .with_context(|| format!("cannot open RocketMQ data in {}", rocketmq_dir.display()))?;
    let mut rocketmq_broker = rocketmq_broker;
    if let Some(auth) =
        crate::rocketmq_auth::RocketAuth::parse(Arc::clone(&broker), &config.rocketmq_credentials)
            .map_err(|e| anyhow::anyhow!(e))?
    {
        for key in auth.unknown_users() {
            warn!(access_key = %key, "rocketmq.credentials names no user of the broker: its calls will be refused");
        }
        rocketmq_broker.auth = Some(Arc::new(auth));
    }
    let rocketmq_broker = Arc::new(rocketmq_broker);
    let admission = Admission::new(config.admission);
    let mut plaintext = Vec::new();
    if let Some(amqp) = &amqp {
        plaintext.push(("amqp.listen", amqp.local_addr));
    }
    if !config.kafka_security_protocol.tls() {
        plaintext.push(("kafka.listen", kafka.local_addr));
    }
    if !config.rocketmq_tls {
        plaintext.push(("rocketmq.listen", rocketmq.local_addr));
    }
    if !config.http_tls {
        plaintext.push(("http.listen", http.local_addr));
    }
    for warning in exposure_warnings(&plaintext, broker.users.login("guest", "guest", true)) {
        warn!("{warning}");
    }
    if let Some(amqp) = &amqp {
        info!(amqp = %amqp.local_addr, "listening");
    }
    if let Some((bound, _)) = &amqps {
        info!(amqps = %bound.local_addr, "listening");
    }
    info!(kafka = %kafka.local_addr, protocol = config.kafka_security_protocol.name(), "listening");
    info!(rocketmq = %rocketmq.local_addr, "listening");
    info!(http = %http.local_addr, "listening");
    let admin = Arc::new(crate::http::Admin {
        broker: Arc::clone(&broker),
        kafka: Arc::clone(&kafka_broker),
        rocketmq: Arc::clone(&rocketmq_broker),
        admission: Arc::clone(&admission),
        listeners: amqp
            .iter()
            .map(|a| ("amqp", a.local_addr))
            .chain([
                ("kafka", kafka.local_addr),
                ("rocketmq", rocketmq.local_addr),
                ("http", http.local_addr),
            ])
            .collect(),
        node: format!("sluice@{}", node_host()),
        started: std::time::Instant::now(),
        data_dir: config.data_dir.clone(),
        rates: Default::default(),
    });
    // The accept loops own the listeners: when a signal wins the select, both loops are
    // dropped and their sockets closed before this function returns.
    let signal = tokio::select! {
        signal = signals.recv() => signal,
        never = flush_loop(Arc::clone(&broker), Arc::clone(&kafka_broker)) => match never {},
        never = expiry_loop(Arc::clone(&broker)) => match never {},
        never = kafka_group_loop(Arc::clone(&kafka_broker)) => match never {},
        never = kafka_txn_loop(Arc::clone(&kafka_broker)) => match never {},
        never = kafka_cleaner_loop(Arc::clone(&kafka_broker)) => match never {},
        never = retention_loop(
            Arc::clone(&broker),
            Arc::clone(&kafka_broker),
            Duration::from_millis(config.retention_check_interval_ms),
        ) => match never {},
        never = alarm_loop(Arc::clone(&broker), config.data_dir.clone()) => match never {},
        never = amqps_accept_loop(
            amqps,
            config.tls_client_ca_file.is_some().then_some(config.amqp_ssl_cert_login_from),
            Arc::clone(&broker),
            amqp_config(config),
            Arc::clone(&admission),
        ) => match never {},
        never = amqp_accept_loop(amqp.map(|a| a.listener), broker, amqp_config(config), Arc::clone(&admission)) => match never {},
        never = kafka_accept_loop(kafka.listener, kafka_tls, kafka_broker, Arc::clone(&admission)) => match never {},
        never = rocketmq_loop(
            AdmittingListener::new(rocketmq.listener, Arc::clone(&admission), "rocketmq").with_tls(rocketmq_tls),
            Arc::clone(&rocketmq_broker),
        ) => match never {},
        never = http_loop(AdmittingListener::new(http.listener, admission, "http").with_tls(http_tls), admin) => match never {},
    };
    tokio::task::block_in_place(|| rocketmq_broker.close());
    info!(signal, "shutting down");
    Ok(())
}

/// What an operator should hear about a broker reachable from the network: plaintext
/// listeners off loopback (their traffic and passwords can be read on the way), and the
/// default `guest`/`guest` login still valid (it works from loopback only, but anyone
/// with a shell on the machine has it).
fn exposure_warnings(plaintext: &[(&str, SocketAddr)], default_login: bool) -> Vec<String> {
    let exposed: Vec<String> = plaintext
        .iter()
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(key, addr)| format!("{key} {addr}"))
        .collect();
    let mut out = Vec::new();
    if !exposed.is_empty() {
        out.push(format!(
            "listening without TLS on non-loopback addresses ({}): traffic and passwords travel in clear text",
            exposed.join(", ")
        ));
        if default_login {
            out.push(
                "the default login guest/guest is still valid: set amqp.users before exposing the broker"
                    .to_string(),
            );
        }
    }
    out
}

/// This machine's host name, for the node name the management API shows.
fn node_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

struct Bound {
    listener: TcpListener,
    /// The address actually bound, with the port the OS chose when the config said 0.
    local_addr: SocketAddr,
}

async fn bind(key: &str, addr: SocketAddr) -> anyhow::Result<Bound> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot bind {addr}"))?;
    let local_addr = listener
        .local_addr()
        .with_context(|| format!("{key}: cannot read the bound address of {addr}"))?;
    Ok(Bound {
        listener,
        local_addr,
    })
}

/// How often durable queues are checked for fsyncs due under the `async` flush policy.
const FLUSH_TICK: Duration = Duration::from_millis(100);

/// Runs due background fsyncs on a blocking thread, one round at a time.
async fn flush_loop(broker: Arc<Broker>, kafka: Arc<KafkaBroker>) -> Infallible {
    let mut tick = tokio::time::interval(FLUSH_TICK);
    loop {
        tick.tick().await;
        let b = Arc::clone(&broker);
        let k = Arc::clone(&kafka);
        let round = tokio::task::spawn_blocking(move || {
            b.flush_due();
            k.flush_due();
        });
        if let Err(e) = round.await {
            warn!(error = %e, "flush round failed");
        }
    }
}

/// Serves the admin HTTP API.
async fn http_loop(listener: AdmittingListener, admin: Arc<crate::http::Admin>) -> Infallible {
    if let Err(e) = crate::http::serve(listener, admin).await {
        tracing::error!(error = %e, "the admin HTTP listener failed");
    }
    std::future::pending().await
}

/// Largest message body a RocketMQ producer may send (the Apache proxy's default).
const ROCKETMQ_BODY_MAX: usize = 4 << 20;

/// Serves RocketMQ 5 clients over gRPC.
async fn rocketmq_loop(listener: AdmittingListener, broker: Arc<RocketBroker>) -> Infallible {
    if let Err(e) = sluice_rocketmq::serve(listener.incoming(), broker).await {
        tracing::error!(error = %e, "the RocketMQ listener failed");
    }
    std::future::pending().await
}

/// How often consumer groups are checked for expired sessions and finished rebalances.
const GROUP_TICK: Duration = Duration::from_millis(100);

async fn kafka_group_loop(kafka: Arc<KafkaBroker>) -> Infallible {
    let mut tick = tokio::time::interval(GROUP_TICK);
    loop {
        tick.tick().await;
        kafka.groups.tick();
        kafka.groups.persist_groups().await;
    }
}

/// Cleans compacted topics every `kafka.log_cleaner_backoff_ms`, on a blocking thread.
async fn kafka_cleaner_loop(kafka: Arc<KafkaBroker>) -> Infallible {
    let mut tick = tokio::time::interval(kafka.config.log_cleaner_backoff);
    loop {
        tick.tick().await;
        let k = Arc::clone(&kafka);
        if let Err(e) = tokio::task::spawn_blocking(move || k.clean_logs()).await {
            warn!(error = %e, "log cleaner round failed");
        }
    }
}

/// How often transactions are checked for timeouts and unfinished markers.
const TXN_TICK: Duration = Duration::from_millis(1000);

async fn kafka_txn_loop(kafka: Arc<KafkaBroker>) -> Infallible {
    let mut tick = tokio::time::interval(TXN_TICK);
    loop {
        tick.tick().await;
        kafka.txns.tick(&kafka).await;
    }
}

/// Deletes segments past retention in topics and stream queues, every `every`.
async fn retention_loop(
    broker: Arc<Broker>,
    kafka: Arc<KafkaBroker>,
    every: Duration,
) -> Infallible {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let (b, k) = (Arc::clone(&broker), Arc::clone(&kafka));
        let round = move || {
            k.apply_retention();
            b.apply_stream_retention();
        };
        if let Err(e) = tokio::task::spawn_blocking(round).await {
            warn!(error = %e, "retention round failed");
        }
    }
}

/// How often memory use and free disk space are measured for the resource alarms.
const ALARM_TICK: Duration = Duration::from_millis(500);

/// Raises and clears the memory and disk alarms that block publishers.
/// How often freed heap memory may be handed back to the system, and how much resident
/// memory must have grown since the last time.
const TRIM_EVERY: Duration = Duration::from_secs(5);
const TRIM_AFTER_GROWTH: u64 = 32 << 20;

async fn alarm_loop(broker: Arc<Broker>, data_dir: std::path::PathBuf) -> Infallible {
    let mut tick = tokio::time::interval(ALARM_TICK);
    let mut trimmed = tokio::time::Instant::now();
    let mut floor = resources::resident_bytes().unwrap_or(0);
    loop {
        tick.tick().await;
        let now_resident = resources::resident_bytes().unwrap_or(0);
        floor = floor.min(now_resident);
        if trimmed.elapsed() >= TRIM_EVERY && now_resident > floor + TRIM_AFTER_GROWTH {
            trimmed = tokio::time::Instant::now();
            // glibc keeps what threads free in their own arenas: after a burst (100,000
            // queues declared) resident memory stayed three times what was in use. Only
            // after growth, so a steady load never waits on the arenas' locks for it.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap pages; it takes the arenas' locks.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            floor = resources::resident_bytes().unwrap_or(now_resident);
        }
        let resident = resources::resident_bytes().unwrap_or(0);
        let free = resources::disk_free_bytes(&data_dir).unwrap_or(u64::MAX);
        broker.alarms.update(resident, free);
    }
}

/// How often queues are checked for messages whose TTL has passed. Expiry is also checked
/// whenever a queue is used, so this only bounds how late an idle queue dead-letters.
const EXPIRY_TICK: Duration = Duration::from_millis(20);

async fn expiry_loop(broker: Arc<Broker>) -> Infallible {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        // Expired queues (`x-expires`) rewrite the definitions file: not on a worker.
        let b = Arc::clone(&broker);
        if let Err(e) = tokio::task::spawn_blocking(move || b.expire_due()).await {
            warn!(error = %e, "expiry round failed");
        }
    }
}

/// The AMQP connection settings from the config.
fn amqp_config(config: &Config) -> ConnectionConfig {
    ConnectionConfig {
        channel_max: config.amqp_channel_max,
        handshake_timeout: Duration::from_millis(config.amqp_handshake_timeout_ms),
        ..ConnectionConfig::default()
    }
}

/// Admits a connection, or logs and drops it when `connections_max` are open.
pub(crate) fn admit(admission: &Arc<Admission>, face: &str, peer: SocketAddr) -> Option<Ticket> {
    let ticket = admission.admit();
    if ticket.is_none() {
        let limits = admission.limits();
        warn!(face, %peer, connections_max = limits.connections_max, "connection refused: limit reached");
    }
    ticket
}

/// The TLS certificate (and client CAs) if configured.
fn tls_settings(config: &Config) -> anyhow::Result<Option<crate::tls::Tls>> {
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
        if config.tls_cert_file.is_some() || config.tls_key_file.is_some() {
            anyhow::bail!("tls.cert_file and tls.key_file go together");
        }
        return Ok(None);
    };
    crate::tls::Tls::open(
        cert,
        key,
        config.tls_client_ca_file.as_deref(),
        config.tls_fail_if_no_peer_cert,
    )
    .map(Some)
    .map_err(|e| anyhow::anyhow!("tls: {e}"))
}

/// Accepts AMQP connections, one task each. Never returns, also when there is no
/// plaintext listener.
async fn amqp_accept_loop(
    listener: Option<TcpListener>,
    broker: Arc<Broker>,
    config: ConnectionConfig,
    admission: Arc<Admission>,
) -> Infallible {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "amqp connection accepted");
                let Some(ticket) = admit(&admission, "amqp", peer) else {
                    drop(stream);
                    continue;
                };
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    Arc::clone(&broker),
                    config.clone(),
                    ticket,
                ));
            }
            Err(error) => {
                warn!(face = "amqp", %error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Accepts AMQP connections over TLS (`amqps`), one task each; the TLS handshake runs in
/// the connection's task, bounded by the AMQP handshake timeout. Never returns, also when
/// there is no TLS listener.
async fn amqps_accept_loop(
    listener: Option<(Bound, tokio_rustls::TlsAcceptor)>,
    external: Option<crate::tls::CertLogin>,
    broker: Arc<Broker>,
    config: ConnectionConfig,
    admission: Arc<Admission>,
) -> Infallible {
    let Some((bound, acceptor)) = listener else {
        return std::future::pending().await;
    };
    loop {
        match bound.listener.accept().await {
            Ok((stream, peer)) => {
                let Some(ticket) = admit(&admission, "amqps", peer) else {
                    drop(stream);
                    continue;
                };
                let (acceptor, broker, config) =
                    (acceptor.clone(), Arc::clone(&broker), config.clone());
                let local = bound.local_addr;
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let handshake =
                        tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream));
                    // A crowd of silent sockets evicts the oldest handshakes, as for plaintext.
                    let done = tokio::select! {
                        done = handshake => done,
                        () = ticket.evicted() => return,
                    };
                    match done {
                        Ok(Ok(tls)) => {
                            // With client certificates configured EXTERNAL is offered; a
                            // verified certificate names the user it logs in as.
                            let external =
                                external.map(|from| crate::tls::peer_user(tls.get_ref().1, from));
                            sluice_amqp::serve_stream(
                                tls, local, peer, broker, config, ticket, external,
                            )
                            .await;
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            Err(error) => {
                warn!(face = "amqps", %error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Time a Kafka client has for its TLS handshake.
const KAFKA_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts Kafka connections, one task each; with `tls`, the handshake runs in the
/// connection's task.
async fn kafka_accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    kafka: Arc<KafkaBroker>,
    admission: Arc<Admission>,
) -> Infallible {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "kafka connection accepted");
                let Some(ticket) = admit(&admission, "kafka", peer) else {
                    drop(stream);
                    continue;
                };
                let kafka = Arc::clone(&kafka);
                let Some(acceptor) = tls.clone() else {
                    tokio::spawn(sluice_kafka::serve_connection(stream, peer, kafka, ticket));
                    continue;
                };
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let handshake =
                        tokio::time::timeout(KAFKA_TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let done = tokio::select! {
                        done = handshake => done,
                        () = ticket.evicted() => return,
                    };
                    match done {
                        Ok(Ok(tls)) => sluice_kafka::serve_stream(tls, peer, kafka, ticket).await,
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            Err(error) => {
                warn!(face = "kafka", %error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// The signals that stop the server.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Waits for the next stop signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// The process's soft limit on open files.
fn open_files_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills in the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn loopback_only_brokers_get_no_warning_and_exposed_ones_do() {
        let lo: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9092".parse().unwrap();
        assert!(exposure_warnings(&[("amqp.listen", lo)], true).is_empty());
        let w = exposure_warnings(&[("amqp.listen", lo), ("kafka.listen", any)], true);
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("kafka.listen 0.0.0.0:9092") && !w[0].contains("amqp.listen"));
        assert!(w[1].contains("guest/guest"));
        assert_eq!(exposure_warnings(&[("kafka.listen", any)], false).len(), 1);
    }
}
