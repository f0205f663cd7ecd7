//! RocketMQ 5 face of Sluice: the gRPC `apache.rocketmq.v2.MessagingService` that the
//! official RocketMQ 5 clients speak, on the engine's streams (a topic's message queues
//! are a stream's partitions) and subscriptions (receive with an invisible time, ack by
//! receipt handle, redelivery with an attempt count).

pub mod auth;
pub mod broker;
pub mod convert;
pub mod groups;
mod service;
pub mod sql;

pub use broker::{RocketBroker, RocketConfig};
pub use service::Service;

/// The protocol's messages and the generated server, from `proto/`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("apache.rocketmq.v2");
}

/// Serves the RocketMQ face on the connections of `incoming` until the process ends,
/// delivers delayed messages as they come due and sends transaction check-backs. The
/// caller accepts the connections (admission, `TCP_NODELAY`: with Nagle's algorithm a
/// response's last frame waits for the client's delayed ACK, about 40 ms a round trip).
pub async fn serve<I, IO>(
    incoming: I,
    broker: std::sync::Arc<RocketBroker>,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, std::io::Error>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    tokio::spawn(std::sync::Arc::clone(&broker).run_delays());
    tokio::spawn(std::sync::Arc::clone(&broker).run_checks());
    tokio::spawn(std::sync::Arc::clone(&broker).run_renewals());
    // Room for the largest body a send may carry, so a body over the limit is refused
    // with RocketMQ's MESSAGE_BODY_TOO_LARGE rather than a gRPC transport error.
    let request_max = broker.config.max_body_bytes.saturating_mul(2).max(4 << 20);
    let service = pb::messaging_service_server::MessagingServiceServer::new(Service::new(broker))
        .max_decoding_message_size(request_max);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
}
