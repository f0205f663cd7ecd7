//! One Kafka client connection: size-prefixed request frames in, responses out, in
//! order. Requests are handled one at a time, as Apache Kafka does per connection (a
//! long-polling Fetch holds the ones behind it). Frames above `max_request_bytes`,
//! unknown API keys, unsupported versions (other than ApiVersions) and undecodable
//! requests close the connection, as Kafka does.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::messages::ApiKey;
use sluice_engine::stream::{FileSlice, send_file_slice};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Duration, timeout};
use tracing::debug;

use crate::api;
use crate::api::fetch::Chunk;
use crate::broker::KafkaBroker;
use sluice_core::admission::Ticket;
use std::os::fd::AsRawFd;

/// Per-connection facts the handlers need.
#[derive(Debug, Clone)]
pub struct Client {
    pub peer: SocketAddr,
    pub client_id: String,
}

/// Why a connection ends early.
#[derive(Debug)]
pub enum Close {
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for Close {
    fn from(e: std::io::Error) -> Self {
        Close::Io(e)
    }
}

/// Serves one client connection until it closes. `ticket` holds its place among the
/// broker's connections; until its first whole request it may be evicted to make room.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<KafkaBroker>,
    ticket: Ticket,
) {
    let _ = stream.set_nodelay(true);
    let served = tokio::select! {
        served = run(stream, peer, &broker, &ticket) => served,
        _ = ticket.evicted() => Err(Close::Protocol("evicted before its first request".into())),
    };
    match served {
        Ok(()) => debug!(%peer, "kafka connection closed by client"),
        Err(Close::Io(e)) => debug!(%peer, error = %e, "kafka connection ended"),
        Err(Close::Protocol(why)) => debug!(%peer, %why, "kafka connection closed"),
    }
}

async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    broker: &Arc<KafkaBroker>,
    ticket: &Ticket,
) -> Result<(), Close> {
    let idle = broker.config.connections_max_idle;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut client = Client {
        peer,
        client_id: String::new(),
    };
    let mut first = true;
    loop {
        let size = match timeout(idle, read.read_i32()).await {
            Err(_) => return Err(Close::Protocol("idle past connections.max.idle.ms".into())),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        };
        if size < 8 || size as usize > broker.config.max_request_bytes {
            return Err(Close::Protocol(format!(
                "request size {size} out of bounds"
            )));
        }
        let mut frame = read_request(&mut read, size as usize, idle).await?.freeze();
        if first {
            ticket.authenticated();
            first = false;
        }
        let api_key = peek_i16(&frame, 0);
        let version = peek_i16(&frame, 2);
        let key = ApiKey::try_from(api_key)
            .map_err(|_| Close::Protocol(format!("unknown api key {api_key}")))?;
        let chunks = api::handle(broker, &mut client, key, version, &mut frame, &mut out).await?;
        if let Some(chunks) = chunks {
            // Responses stay in order: what is pending goes first.
            write_chunks(&mut write, &mut out, chunks).await?;
        }
        // Answers go out when no further request is already buffered, so pipelined
        // requests share a write.
        if (read.buffer().is_empty() && !out.is_empty()) || out.len() >= WRITE_BATCH_BYTES {
            write.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Writes `out`, then the chunks: encoded bytes are gathered into `out` and written with
/// it; file ranges go straight from the page cache to the socket with `sendfile(2)`.
async fn write_chunks(
    write: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    chunks: Vec<Chunk>,
) -> std::io::Result<()> {
    for chunk in chunks {
        match chunk {
            Chunk::Bytes(b) => out.extend_from_slice(&b),
            Chunk::File(slice) => {
                if !out.is_empty() {
                    write.write_all(out).await?;
                    out.clear();
                }
                send_slice(write.as_ref(), &slice).await?;
            }
        }
    }
    Ok(())
}

async fn send_slice(stream: &TcpStream, slice: &FileSlice) -> std::io::Result<()> {
    let fd = stream.as_raw_fd();
    let mut sent = 0;
    while sent < slice.len {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || send_file_slice(fd, slice, sent)) {
            // The file ends before the range: it was cut under us (never in normal
            // operation). The frame cannot be completed; end the connection.
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// First allocation for a request's bytes; the buffer then doubles as bytes arrive.
const REQUEST_CHUNK_BYTES: usize = 64 * 1024;

/// Reads a request of `size` bytes, growing the buffer with what has arrived rather than
/// allocating what the size prefix claims: a client that announces 100 MiB and stalls
/// holds only what it sent. Each read must come within `idle`.
async fn read_request(
    read: &mut BufReader<OwnedReadHalf>,
    size: usize,
    idle: Duration,
) -> Result<BytesMut, Close> {
    let mut frame = BytesMut::with_capacity(size.min(REQUEST_CHUNK_BYTES));
    while frame.len() < size {
        if frame.len() == frame.capacity() {
            frame.reserve(frame.len().min(size - frame.len()));
        }
        let room = (frame.capacity() - frame.len()).min(size - frame.len());
        let mut part = (&mut *read).take(room as u64);
        match timeout(idle, part.read_buf(&mut frame)).await {
            Err(_) => return Err(Close::Protocol("request stalled".into())),
            Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(frame)
}

/// Pending answers are written once they reach this, even with requests still buffered.
const WRITE_BATCH_BYTES: usize = 1 << 20;

fn peek_i16(b: &[u8], at: usize) -> i16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        x.copy_from_slice(s);
    }
    i16::from_be_bytes(x)
}
