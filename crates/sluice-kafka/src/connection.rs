//! One Kafka client connection: size-prefixed request frames in, responses out, in
//! order. Requests are handled one at a time, as Apache Kafka does per connection (a
//! long-polling Fetch holds the ones behind it). Frames above `max_request_bytes`,
//! unknown API keys, unsupported versions (other than ApiVersions) and undecodable
//! requests close the connection, as Kafka does.
//!
//! On a SASL listener only ApiVersions, SaslHandshake and SaslAuthenticate are answered
//! until the client authenticates; anything else closes the connection, as does a failed
//! login (after a pause that slows guessing). A login with a lifetime (KIP-368) must be
//! renewed before it ends: the first other request after that closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::messages::ApiKey;
use sluice_engine::stream::{FileSlice, send_file_slice};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::{Duration, timeout};
use tracing::debug;

use crate::api;
use crate::api::fetch::Chunk;
use crate::broker::KafkaBroker;
use crate::security::Sasl;
use sluice_core::admission::Ticket;
use std::os::fd::AsRawFd;

/// Per-connection facts the handlers need.
#[derive(Debug)]
pub struct Client {
    pub peer: SocketAddr,
    pub client_id: String,
    pub sasl: Sasl,
    /// Set by a failed login: answer, wait this long, then close.
    pub failed: Option<Duration>,
    /// During a re-authentication: who was logged in, for the new login must be the same.
    pub reauth_of: Option<String>,
    /// SaslHandshake v0 was used: SASL tokens come and go as bare size-prefixed frames.
    pub raw_tokens: bool,
}

impl Client {
    pub fn new(peer: SocketAddr, sasl: Sasl) -> Client {
        Client {
            peer,
            client_id: String::new(),
            sasl,
            failed: None,
            reauth_of: None,
            raw_tokens: false,
        }
    }
}

/// Where fetched record data goes: straight from the page cache with `sendfile(2)` on a
/// plain socket, copied through the TLS session otherwise.
pub trait SliceSink: AsyncWrite + Unpin + Send {
    fn send_slice(
        &mut self,
        slice: &FileSlice,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl SliceSink for OwnedWriteHalf {
    async fn send_slice(&mut self, slice: &FileSlice) -> std::io::Result<()> {
        sendfile_slice(self.as_ref(), slice).await
    }
}

/// The write half of a TLS session, with the buffer record data is copied through
/// (kept for the connection's life, so a fetch does not allocate one).
pub struct CopySink<T> {
    half: tokio::io::WriteHalf<T>,
    buf: Vec<u8>,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> SliceSink for CopySink<T> {
    async fn send_slice(&mut self, slice: &FileSlice) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let chunk = slice.len.min(COPY_CHUNK_BYTES) as usize;
        if self.buf.len() < chunk {
            self.buf.resize(chunk, 0);
        }
        let mut done = 0u64;
        while done < slice.len {
            let n = (slice.len - done).min(chunk as u64) as usize;
            let Some(part) = self.buf.get_mut(..n) else {
                break;
            };
            // From the page cache, as sendfile would read it.
            slice.file.read_exact_at(part, slice.position + done)?;
            self.half.write_all(part).await?;
            done += n as u64;
        }
        self.half.flush().await
    }
}

impl<T: AsyncWrite> AsyncWrite for CopySink<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.half).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.half).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.half).poll_shutdown(cx)
    }
}

/// Largest frame a client that has not logged in may send (Kafka's
/// `sasl.server.max.receive.size` default).
const SASL_RECEIVE_MAX: usize = 512 * 1024;

/// Record data is copied through TLS this much at a time.
const COPY_CHUNK_BYTES: u64 = 256 * 1024;

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
    let (read, write) = stream.into_split();
    serve_halves(read, write, peer, broker, ticket).await;
}

/// Serves one client over any stream (a TLS session).
pub async fn serve_stream<S>(stream: S, peer: SocketAddr, broker: Arc<KafkaBroker>, ticket: Ticket)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (read, half) = tokio::io::split(stream);
    let write = CopySink {
        half,
        buf: Vec::new(),
    };
    serve_halves(read, write, peer, broker, ticket).await;
}

async fn serve_halves<R, W>(
    read: R,
    write: W,
    peer: SocketAddr,
    broker: Arc<KafkaBroker>,
    ticket: Ticket,
) where
    R: AsyncRead + Unpin + Send,
    W: SliceSink,
{
    let served = tokio::select! {
        served = run(read, write, peer, &broker, &ticket) => served,
        _ = ticket.evicted() => Err(Close::Protocol("evicted before it logged in".into())),
    };
    match served {
        Ok(()) => debug!(%peer, "kafka connection closed by client"),
        Err(Close::Io(e)) => debug!(%peer, error = %e, "kafka connection ended"),
        Err(Close::Protocol(why)) => debug!(%peer, %why, "kafka connection closed"),
    }
}

async fn run<R, W>(
    read: R,
    mut write: W,
    peer: SocketAddr,
    broker: &Arc<KafkaBroker>,
    ticket: &Ticket,
) -> Result<(), Close>
where
    R: AsyncRead + Unpin + Send,
    W: SliceSink,
{
    let idle = broker.config.connections_max_idle;
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let sasl = broker.config.security_protocol.sasl();
    let mut client = Client::new(peer, if sasl { Sasl::Start } else { Sasl::Anonymous });
    // Until then the connection may be evicted to make room: its first whole request
    // without SASL, its login with it.
    let mut admitted = false;
    loop {
        let size = match timeout(idle, read.read_i32()).await {
            Err(_) => return Err(Close::Protocol("idle past connections.max.idle.ms".into())),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        };
        let least = if client.raw_tokens { 0 } else { 8 };
        // Before a login completes, frames are held to Kafka's sasl.server.max.receive.size.
        let most = match client.sasl {
            Sasl::Anonymous | Sasl::Done { .. } => broker.config.max_request_bytes,
            _ => SASL_RECEIVE_MAX,
        };
        if size < least || size as usize > most {
            return Err(Close::Protocol(format!(
                "request size {size} out of bounds"
            )));
        }
        let mut frame = read_request(&mut read, size as usize, idle).await?.freeze();
        if !admitted && !sasl {
            ticket.authenticated();
            admitted = true;
        }
        if client.raw_tokens {
            // A bare SASL token; a failure has no answer in this form, only the close.
            let token = api::security::raw_token(broker, &mut client, frame);
            if let Some(pause) = client.failed.take() {
                tokio::time::sleep(pause).await;
                return Err(Close::Protocol("authentication failed".into()));
            }
            out.extend_from_slice(&(token.len() as i32).to_be_bytes());
            out.extend_from_slice(&token);
            write.write_all(&out).await?;
            write.flush().await?;
            out.clear();
            client.raw_tokens = !matches!(client.sasl, Sasl::Done { .. });
            if !admitted && !client.raw_tokens {
                ticket.authenticated();
                admitted = true;
            }
            continue;
        }
        let api_key = peek_i16(&frame, 0);
        let version = peek_i16(&frame, 2);
        let key = ApiKey::try_from(api_key)
            .map_err(|_| Close::Protocol(format!("unknown api key {api_key}")))?;
        gate(&client.sasl, key)?;
        let chunks = api::handle(broker, &mut client, key, version, &mut frame, &mut out).await?;
        if let Some(pause) = client.failed.take() {
            // The answer goes out at once and the close comes later, as Kafka's
            // connection.failed.authentication.delay.ms does: clients read the error
            // before the connection ends, and a retry loop is slowed down.
            write.write_all(&out).await?;
            write.flush().await?;
            tokio::time::sleep(pause).await;
            return Err(Close::Protocol("authentication failed".into()));
        }
        if !admitted && matches!(client.sasl, Sasl::Done { .. }) {
            ticket.authenticated();
            admitted = true;
        }
        if let Some(chunks) = chunks {
            // Responses stay in order: what is pending goes first.
            write_chunks(&mut write, &mut out, chunks).await?;
        }
        // Answers go out when no further request is already buffered, so pipelined
        // requests share a write.
        if (read.buffer().is_empty() && !out.is_empty()) || out.len() >= WRITE_BATCH_BYTES {
            write.write_all(&out).await?;
            // TLS may hold records back until flushed; a socket's flush does nothing.
            write.flush().await?;
            out.clear();
        }
    }
}

/// What a connection may ask in its authentication state.
fn gate(sasl: &Sasl, key: ApiKey) -> Result<(), Close> {
    let handshake = matches!(
        key,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    );
    match sasl {
        Sasl::Anonymous => Ok(()),
        Sasl::Done {
            expires: Some(at), ..
        } if std::time::Instant::now() >= *at && !handshake => Err(Close::Protocol(
            "SASL session expired without re-authentication".into(),
        )),
        Sasl::Done { .. } => Ok(()),
        _ if handshake => Ok(()),
        _ => Err(Close::Protocol(format!(
            "unexpected {key:?} request during SASL handshake"
        ))),
    }
}

/// Writes `out`, then the chunks: encoded bytes are gathered into `out` and written with
/// it; file ranges go straight from the page cache to the socket with `sendfile(2)`.
async fn write_chunks<W: SliceSink>(
    write: &mut W,
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
                write.send_slice(&slice).await?;
            }
        }
    }
    Ok(())
}

async fn sendfile_slice(stream: &TcpStream, slice: &FileSlice) -> std::io::Result<()> {
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
async fn read_request<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
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
