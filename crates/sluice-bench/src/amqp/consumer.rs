//! One consuming connection: a consumer on one queue that books every delivery in its own
//! [`Tracker`] (latency, ids seen) and acknowledges it when asked to, until told to halt.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::Shared;
use super::options::Plan;
use super::pipeline::Pipeline;
use crate::payload::wall_ns;
use crate::tracker::Tracker;

/// Acks handed to lapin before the earlier ones are written, for the same reason as the
/// producer's send-ahead (see [`super::pipeline`]); each delivery is still acked on its own.
const ACK_AHEAD: usize = 64;

/// How long acks still in flight at the end may take.
const ACK_GRACE: Duration = Duration::from_secs(1);

/// What one consumer received.
#[derive(Debug)]
pub struct Consumed {
    /// Index of the queue it read.
    pub queue: usize,
    pub tracker: Tracker,
    pub last_delivery: Option<Instant>,
}

pub struct Consumer {
    pub index: u32,
    pub queue: usize,
    pub queue_name: ShortString,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
}

impl Consumer {
    /// Connects and starts consuming, reports readiness on `ready`, then books deliveries
    /// until `halt` turns true or the channel fails.
    pub async fn run(
        self,
        mut tracker: Tracker,
        ready: oneshot::Sender<Result<(), String>>,
        mut halt: watch::Receiver<bool>,
    ) -> Consumed {
        let manual_ack = self.plan.options.manual_ack;
        let mut last_delivery = None;
        let (connection, mut deliveries) = match self.connect().await {
            Ok(connected) => connected,
            Err(error) => {
                let _ = ready.send(Err(format!("consumer {}: {error}", self.index)));
                return self.consumed(tracker, last_delivery);
            }
        };
        let _ = ready.send(Ok(()));
        let halted = halt.wait_for(|h| *h);
        tokio::pin!(halted);
        let mut acks: Pipeline<u64, lapin::Result<bool>> = Pipeline::default();
        'consuming: loop {
            let next = tokio::select! {
                biased;
                _ = &mut halted => break,
                next = deliveries.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    self.shared
                        .error(format!("consumer {}: {error}", self.index));
                    break;
                }
                None => {
                    self.shared
                        .error(format!("consumer {}: cancelled by the broker", self.index));
                    break;
                }
            };
            tracker.record(&delivery.data, wall_ns());
            last_delivery = Some(Instant::now());
            self.shared.consumed.fetch_add(1, super::RELAXED);
            if !manual_ack {
                continue;
            }
            let acker = delivery.acker;
            let tag = delivery.delivery_tag;
            let ack = async move { acker.ack(BasicAckOptions::default()).await };
            acks.start(tag, Box::pin(ack)).await;
            loop {
                let acked = if acks.len() >= ACK_AHEAD {
                    tokio::select! {
                        biased;
                        acked = acks.next() => acked,
                        _ = &mut halted => break 'consuming,
                    }
                } else {
                    acks.finished().await
                };
                let Some((tag, acked)) = acked else { break };
                if let Err(error) = acked {
                    self.shared
                        .error(format!("consumer {}: ack {tag}: {error}", self.index));
                    break 'consuming;
                }
            }
        }
        let grace = Instant::now() + ACK_GRACE;
        while let Ok(Some(_)) = tokio::time::timeout_at(grace, acks.next()).await {}
        let _ = connection.close(200, "benchmark done".into()).await;
        self.consumed(tracker, last_delivery)
    }

    fn consumed(&self, tracker: Tracker, last_delivery: Option<Instant>) -> Consumed {
        Consumed {
            queue: self.queue,
            tracker,
            last_delivery,
        }
    }

    async fn connect(&self) -> lapin::Result<(Connection, lapin::Consumer)> {
        let options = &self.plan.options;
        let connection = super::connect(options).await?;
        let channel = connection.create_channel().await?;
        if options.prefetch > 0 {
            channel
                .basic_qos(options.prefetch, BasicQosOptions::default())
                .await?;
        }
        let consume = BasicConsumeOptions {
            no_ack: !options.manual_ack,
            ..BasicConsumeOptions::default()
        };
        let mut arguments = FieldTable::default();
        if options.stream {
            // The consumers start before the producers: "next" reads all they publish.
            arguments.insert(
                ShortString::from("x-stream-offset"),
                AMQPValue::LongString(LongString::from("next")),
            );
        }
        let deliveries = channel
            .basic_consume(
                self.queue_name.clone(),
                format!("sluice-bench-{}", self.index).into(),
                consume,
                arguments,
            )
            .await?;
        Ok((connection, deliveries))
    }
}
