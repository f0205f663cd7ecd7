//! Accepting connections for the listeners served by a library's own server loop (gRPC
//! for RocketMQ, HTTP for the admin API): every connection takes a place in the one
//! `Admission` all protocols share, so `limits.connections_max` bounds them too, and
//! answers go out at once (`TCP_NODELAY`). A connection counts as not logged in until its
//! first bytes arrive (gRPC and HTTP authenticate each request): a crowd of silent
//! sockets is evicted oldest first like half-open AMQP and Kafka ones.
//!
//! With TLS, the handshake runs inside the connection's first reads and writes, so a
//! slow client never holds up the accept loop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sluice_core::admission::{Admission, Ticket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::futures::OwnedNotified;

/// A plain or TLS stream; TLS starts out handshaking.
enum Conn {
    Plain(TcpStream),
    Handshaking(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Plain",
            Conn::Handshaking(_) => "Handshaking",
            Conn::Tls(_) => "Tls",
            Conn::Failed => "Failed",
        })
    }
}

impl Conn {
    /// Drives a pending handshake; `Ready(Ok)` once the stream can carry data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Conn::Handshaking(accept) = self {
            match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(tls)) => *self = Conn::Tls(Box::new(tls)),
                Poll::Ready(Err(e)) => {
                    *self = Conn::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self {
            Conn::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS handshake failed",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// An accepted connection holding its place in the admission count until dropped.
#[derive(Debug)]
pub struct Admitted {
    stream: Conn,
    /// The peer, read at accept (the socket may be gone by the time it is asked for).
    info: tonic::transport::server::TcpConnectInfo,
    ticket: Ticket,
    /// Until the first bytes arrive: fires when the connection is evicted.
    evicted: Option<Pin<Box<OwnedNotified>>>,
}

/// A listener that admits what it accepts; refused connections are closed at once.
pub struct AdmittingListener {
    listener: TcpListener,
    admission: Arc<Admission>,
    face: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Accept errors such as running out of file descriptors last a while: wait before the
/// next try rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

impl std::fmt::Debug for AdmittingListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmittingListener")
            .field("face", &self.face)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl AdmittingListener {
    pub fn new(listener: TcpListener, admission: Arc<Admission>, face: &'static str) -> Self {
        AdmittingListener {
            listener,
            admission,
            face,
            tls: None,
        }
    }

    /// Every connection speaks TLS through `acceptor`.
    pub fn with_tls(mut self, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Self {
        self.tls = acceptor;
        self
    }

    /// The next admitted connection.
    pub async fn next(&mut self) -> (Admitted, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(face = self.face, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Some(ticket) = crate::serve::admit(&self.admission, self.face, peer) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let evicted = Some(Box::pin(ticket.eviction().notified_owned()));
            let info = tonic::transport::server::Connected::connect_info(&stream);
            let stream = match &self.tls {
                Some(acceptor) => Conn::Handshaking(Box::new(acceptor.accept(stream))),
                None => Conn::Plain(stream),
            };
            return (
                Admitted {
                    stream,
                    info,
                    ticket,
                    evicted,
                },
                peer,
            );
        }
    }

    /// The admitted connections as a stream, for tonic's `serve_with_incoming`.
    pub fn incoming(self) -> impl futures_lite::Stream<Item = io::Result<Admitted>> + Send {
        futures_lite::stream::unfold(self, |mut listener| async move {
            let (admitted, _) = listener.next().await;
            Some((Ok(admitted), listener))
        })
    }
}

impl axum::serve::Listener for AdmittingListener {
    type Io = Admitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Admitted, SocketAddr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(evicted) = this.evicted.as_mut()
            && evicted.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room: silent since it connected",
            )));
        }
        if let Err(e) = std::task::ready!(this.stream.poll_ready(cx)) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let read = match &mut this.stream {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            _ => Poll::Ready(Ok(())),
        };
        if this.evicted.is_some()
            && matches!(read, Poll::Ready(Ok(())))
            && buf.filled().len() > before
        {
            this.ticket.authenticated();
            this.evicted = None;
        }
        read
    }
}

/// Runs `$call` on the ready stream, plain or TLS.
macro_rules! on_stream {
    ($self:ident, $cx:ident, |$s:ident| $call:expr) => {{
        let this = &mut *$self;
        if let Err(e) = std::task::ready!(this.stream.poll_ready($cx)) {
            return Poll::Ready(Err(e));
        }
        match &mut this.stream {
            Conn::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Conn::Tls(t) => {
                let $s = Pin::new(t.as_mut());
                $call
            }
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }};
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, cx, |s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, cx, |s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(t) => t.is_write_vectored(),
            _ => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_shutdown(cx))
    }
}
