//! Accepting connections for the listeners served by a library's own server loop (gRPC
//! for RocketMQ, HTTP for the admin API): every connection takes a place in the one
//! `Admission` all protocols share, so `limits.connections_max` bounds them too, and
//! answers go out at once (`TCP_NODELAY`). A connection counts as not logged in until its
//! first bytes arrive (gRPC and HTTP authenticate each request): a crowd of silent
//! sockets is evicted oldest first like half-open AMQP and Kafka ones.

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

/// An accepted connection holding its place in the admission count until dropped.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    ticket: Ticket,
    /// Until the first bytes arrive: fires when the connection is evicted.
    evicted: Option<Pin<Box<OwnedNotified>>>,
}

/// A listener that admits what it accepts; refused connections are closed at once.
#[derive(Debug)]
pub struct AdmittingListener {
    listener: TcpListener,
    admission: Arc<Admission>,
    face: &'static str,
}

/// Accept errors such as running out of file descriptors last a while: wait before the
/// next try rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

impl AdmittingListener {
    pub fn new(listener: TcpListener, admission: Arc<Admission>, face: &'static str) -> Self {
        AdmittingListener {
            listener,
            admission,
            face,
        }
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
            return (
                Admitted {
                    stream,
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
        self.stream.connect_info()
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
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
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

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
