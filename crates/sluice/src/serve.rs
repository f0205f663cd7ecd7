//! `sluice serve`: the process lifetime around the broker.
//!
//! Order of work: lock the data directory, install the SIGINT/SIGTERM handlers, bind one
//! TCP listener per protocol face, then accept until a signal. Shutdown runs the other
//! way: stop accepting and close the listeners, release the lock, log `stopped`.
//!
//! The AMQP listener serves AMQP 0-9-1; durable definitions and persistent messages live
//! under `data_dir/amqp` and are replayed before the listeners open. The Kafka face is not
//! built yet: its accept loop closes each connection as soon as it is accepted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use sluice_amqp::{Broker, ConnectionConfig, serve_connection};
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
    let amqp_dir = config.data_dir.join("amqp");
    let broker = Broker::open(
        &amqp_dir,
        config.storage.clone(),
        config.storage.batch_bytes_max as usize,
        &config.amqp_vhosts,
    )
    .with_context(|| format!("cannot open AMQP data in {}", amqp_dir.display()))?;
    let memory_limit = resources::total_memory_bytes().map_or(u64::MAX, |total| {
        total / 1_000_000 * u64::from(config.memory_high_watermark_ppm)
    });
    broker
        .alarms
        .set_limits(memory_limit, config.disk_free_limit_bytes);
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
    let served = runtime.block_on(listen_until_signal(config, Arc::clone(&broker)));
    // Connections are dropped with the runtime; then everything stored is made durable.
    drop(runtime);
    broker.close();
    served?;
    drop(lock);
    info!("stopped");
    Ok(())
}

async fn listen_until_signal(config: &Config, broker: Arc<Broker>) -> anyhow::Result<()> {
    // Handlers go in before any listener binds: once a `listening` line is out, SIGTERM
    // must mean a clean stop, not the default kill.
    let mut signals = Signals::install()?;
    let amqp = bind("amqp.listen", config.amqp_listen).await?;
    let kafka = bind("kafka.listen", config.kafka_listen).await?;
    info!(amqp = %amqp.local_addr, "listening");
    info!(kafka = %kafka.local_addr, "listening");
    // The accept loops own the listeners: when a signal wins the select, both loops are
    // dropped and their sockets closed before this function returns.
    let signal = tokio::select! {
        signal = signals.recv() => signal,
        never = flush_loop(Arc::clone(&broker)) => match never {},
                never = expiry_loop(Arc::clone(&broker)) => match never {},
        never = alarm_loop(Arc::clone(&broker), config.data_dir.clone()) => match never {},
        never = amqp_accept_loop(amqp.listener, broker) => match never {},
        never = accept_loop("kafka", kafka.listener) => match never {},
    };
    info!(signal, "shutting down");
    Ok(())
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
async fn flush_loop(broker: Arc<Broker>) -> Infallible {
    let mut tick = tokio::time::interval(FLUSH_TICK);
    loop {
        tick.tick().await;
        let b = Arc::clone(&broker);
        if let Err(e) = tokio::task::spawn_blocking(move || b.flush_due()).await {
            warn!(error = %e, "flush round failed");
        }
    }
}

/// How often memory use and free disk space are measured for the resource alarms.
const ALARM_TICK: Duration = Duration::from_millis(500);

/// Raises and clears the memory and disk alarms that block publishers.
async fn alarm_loop(broker: Arc<Broker>, data_dir: std::path::PathBuf) -> Infallible {
    let mut tick = tokio::time::interval(ALARM_TICK);
    loop {
        tick.tick().await;
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
        broker.expire_due();
    }
}

/// Accepts AMQP connections, one task each.
async fn amqp_accept_loop(listener: TcpListener, broker: Arc<Broker>) -> Infallible {
    let config = ConnectionConfig::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "amqp connection accepted");
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    Arc::clone(&broker),
                    config.clone(),
                ));
            }
            Err(error) => {
                warn!(face = "amqp", %error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Accepts connections and closes each one at once: the protocol face behind this
/// listener is not built yet, so a client sees its connection accepted and then closed.
async fn accept_loop(face: &'static str, listener: TcpListener) -> Infallible {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(face, %peer, "connection closed: protocol not implemented yet");
                drop(stream);
            }
            Err(error) => {
                warn!(face, %error, "accept failed");
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
