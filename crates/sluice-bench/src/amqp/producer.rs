//! One publishing connection: stamps and sends messages as fast as the broker takes them
//! (or on a fixed schedule), keeps at most the confirm window unconfirmed, and remembers
//! which messages the broker confirmed, since exactly those must arrive.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::options::{Limit, Plan};
use super::pipeline::Pipeline;
use super::topology::Topology;
use super::{Shared, Start};
use crate::payload::{SEQ_MAX, Stamp, wall_ns};
use crate::tracker::SeqSet;

/// Tokio's timers fire on whole milliseconds, so a fixed-rate producer that keeps to its
/// schedule still sends up to this late; that much is the load generator's, not the
/// broker's. A producer further behind was held up (by the broker's back-pressure), and the
/// rest of the delay counts as latency, so that a stalled broker is not hidden
/// (coordinated omission).
const TIMER_SLACK_NS: u64 = 1_000_000;

/// How long a publish under way when the stop comes may still take.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long to wait, once publishing has stopped, for the confirms still outstanding.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// Publishes handed to lapin ahead of their being written: enough for its I/O thread to
/// write many per wake-up, few enough that the broker's TCP back-pressure still reaches the
/// producer within a fraction of a millisecond of messages.
const SEND_AHEAD: usize = 64;

/// A confirm being awaited in a task of its own, so that the moment it arrives is read when
/// it arrives, not when the producer next wakes (on tokio's 1 ms timer at a fixed rate).
type Confirming = tokio::task::JoinHandle<(lapin::Result<Confirmation>, u64)>;

/// Awaits `confirm` in its own task; the answer comes with the wall-clock ns it arrived at.
fn await_confirm(confirm: PublisherConfirm) -> Confirming {
    tokio::spawn(async move {
        let settled = confirm.await;
        (settled, wall_ns())
    })
}

/// The answer and arrival time of a confirm awaited by `await_confirm`.
fn joined(
    joined: Result<(lapin::Result<Confirmation>, u64), tokio::task::JoinError>,
) -> (lapin::Result<Confirmation>, u64) {
    joined.unwrap_or_else(|error| {
        let error = std::io::Error::other(format!("confirm task: {error}"));
        (Err(lapin::Error::from(error)), wall_ns())
    })
}

/// A producer's messages between the first poll of their publish and their confirm.
struct Line {
    /// Publishes being written: (seq, when it was due in wall-clock ns).
    sending: Pipeline<(u64, u64), lapin::Result<PublisherConfirm>>,
    /// Written publishes awaiting their confirm, with when they were due.
    confirms: VecDeque<(u64, u64, Confirming)>,
    produced: Produced,
}

/// What one producer did.
#[derive(Debug, Default)]
pub struct Produced {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    /// Published with confirms on, but neither acked nor nacked in time.
    pub unconfirmed: u64,
    /// The messages that must arrive: confirmed ones, or every one sent without confirms.
    pub expected: SeqSet,
    pub finished: Option<Instant>,
    /// From a publish being due (its stamp, as publish→deliver latency counts it) to its
    /// confirm arriving, in ns (with confirms on).
    pub confirm_ns: Option<hdrhistogram::Histogram<u64>>,
}

pub struct Producer {
    pub index: u32,
    pub plan: Arc<Plan>,
    pub topology: Arc<Topology>,
    pub shared: Arc<Shared>,
}

impl Producer {
    /// Connects, reports readiness on `ready`, waits for `go`, then publishes until its count
    /// is done, the duration is over, or `stop` turns true.
    pub async fn run(
        self,
        ready: oneshot::Sender<Result<(), String>>,
        go: watch::Receiver<Option<Start>>,
        stop: watch::Receiver<bool>,
    ) -> Produced {
        let (connection, channel) = match self.connect().await {
            Ok(connected) => connected,
            Err(error) => {
                let _ = ready.send(Err(format!("producer {}: {error}", self.index)));
                return Produced::default();
            }
        };
        let _ = ready.send(Ok(()));
        let produced = match wait_for_start(go).await {
            Some(start) => self.publish(&channel, start, stop).await,
            None => Produced::default(),
        };
        let _ = connection.close(200, "benchmark done".into()).await;
        produced
    }

    async fn connect(&self) -> lapin::Result<(Connection, Channel)> {
        let connection = super::connect(&self.plan.options).await?;
        let channel = connection.create_channel().await?;
        if self.plan.options.confirm > 0 {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        Ok((connection, channel))
    }

    async fn publish(
        &self,
        channel: &Channel,
        start: Start,
        stop: watch::Receiver<bool>,
    ) -> Produced {
        let options = &self.plan.options;
        let deadline = match self.plan.limit {
            Limit::Duration(d) => Some(start.instant + d),
            Limit::Count(_) => None,
        };
        let count = self
            .plan
            .count_for(self.index)
            .unwrap_or(SEQ_MAX)
            .min(SEQ_MAX);
        let mut stopped = StopSignal::new(deadline, stop);
        let window = options.confirm as usize;
        let properties = if options.persistent {
            BasicProperties::default().with_delivery_mode(2)
        } else {
            BasicProperties::default()
        };
        let mut line = Line {
            sending: Pipeline::default(),
            confirms: VecDeque::with_capacity(window),
            produced: Produced {
                confirm_ns: (window > 0)
                    .then(crate::tracker::latency_histogram)
                    .and_then(Result::ok),
                ..Produced::default()
            },
        };
        let queues = self.topology.routing_keys.len().max(1) as u64;

        'publishing: for seq in 0..count {
            if stopped.is_fired().await {
                break;
            }
            let sent_ns = match self.plan.interval {
                None => wall_ns(),
                Some(interval) => {
                    let offset = schedule_offset(interval, seq);
                    let due = start.instant + offset;
                    if due > Instant::now() {
                        tokio::select! {
                            biased;
                            () = stopped.fired() => break,
                            () = tokio::time::sleep_until(due) => {}
                        }
                    }
                    let scheduled_ns =
                        start.wall_ns + u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX);
                    wall_ns().min(scheduled_ns + TIMER_SLACK_NS)
                }
            };
            let target = ((seq + u64::from(self.index)) % queues) as usize;
            let Some(routing_key) = self.topology.routing_keys.get(target) else {
                break;
            };
            let mut body = vec![b'.'; options.size];
            Stamp {
                sent_ns,
                producer: self.index,
                seq,
            }
            .write(&mut body);
            let (channel, exchange) = (channel.clone(), self.topology.exchange.clone());
            let (routing_key, properties) = (routing_key.clone(), properties.clone());
            let publish = async move {
                let options = BasicPublishOptions::default();
                channel
                    .basic_publish(exchange, routing_key, options, &body, properties)
                    .await
            };
            line.sending.start((seq, sent_ns), Box::pin(publish)).await;
            while let Some((seq, sent)) = line.sending.finished().await {
                if !self.sent(&mut line, seq, sent) {
                    break 'publishing;
                }
            }
            // Book the confirms that have already arrived, for their latency.
            while let Some((seq, due, confirm)) = line.confirms.front_mut() {
                let Some(settled) = futures_lite::future::poll_once(&mut *confirm).await else {
                    break;
                };
                let (seq, due) = (*seq, *due);
                line.confirms.pop_front();
                if !self.settle(&mut line.produced, seq, due, joined(settled)) {
                    break 'publishing;
                }
            }
            // Wait while too much is in flight: sends not yet written, or (with confirms)
            // messages not yet confirmed.
            loop {
                let in_flight = line.sending.len() + line.confirms.len();
                let send_ahead_full = line.sending.len() >= SEND_AHEAD;
                if !send_ahead_full && (window == 0 || in_flight < window) {
                    break;
                }
                if send_ahead_full || line.confirms.is_empty() {
                    let next = tokio::select! {
                        biased;
                        next = line.sending.next() => next,
                        () = stopped.fired() => break 'publishing,
                    };
                    let Some((seq, sent)) = next else { break };
                    if !self.sent(&mut line, seq, sent) {
                        break 'publishing;
                    }
                } else {
                    let Some((seq, due, mut confirm)) = line.confirms.pop_front() else {
                        break;
                    };
                    let settled = tokio::select! {
                        biased;
                        settled = &mut confirm => joined(settled),
                        () = stopped.fired() => {
                            line.confirms.push_front((seq, due, confirm));
                            break 'publishing;
                        }
                    };
                    if !self.settle(&mut line.produced, seq, due, settled) {
                        break 'publishing;
                    }
                }
            }
        }
        // Publishes already handed to lapin may be on the wire: finish and count them,
        // unless the broker does not take them in time.
        let grace = Instant::now() + STOP_GRACE;
        while let Ok(Some((seq, sent))) = tokio::time::timeout_at(grace, line.sending.next()).await
        {
            if !self.sent(&mut line, seq, sent) {
                break;
            }
        }
        line.produced.finished = Some(Instant::now());
        let mut produced = line.produced;
        self.settle_outstanding(&mut produced, line.confirms).await;
        produced
    }

    /// Books a publish that lapin has written; false when the channel failed.
    fn sent(
        &self,
        line: &mut Line,
        (seq, due_ns): (u64, u64),
        sent: lapin::Result<PublisherConfirm>,
    ) -> bool {
        match sent {
            Ok(confirm) => {
                line.produced.published += 1;
                self.shared.published.fetch_add(1, super::RELAXED);
                if self.plan.options.confirm == 0 {
                    line.produced.expected.insert(seq);
                } else {
                    line.confirms
                        .push_back((seq, due_ns, await_confirm(confirm)));
                }
                true
            }
            Err(error) => {
                self.shared
                    .error(format!("producer {}: publish: {error}", self.index));
                false
            }
        }
    }

    /// Books the broker's answer for message `seq`; false when the channel failed.
    fn settle(
        &self,
        produced: &mut Produced,
        seq: u64,
        due_ns: u64,
        (settled, arrived_ns): (lapin::Result<Confirmation>, u64),
    ) -> bool {
        match settled {
            Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => {
                if let Some(h) = produced.confirm_ns.as_mut() {
                    let _ = h.record(arrived_ns.saturating_sub(due_ns).max(1));
                }
                produced.confirmed += 1;
                produced.expected.insert(seq);
                true
            }
            Ok(Confirmation::Nack(_)) => {
                produced.nacked += 1;
                self.shared
                    .error(format!("producer {}: message {seq} nacked", self.index));
                true
            }
            Err(error) => {
                produced.unconfirmed += 1;
                self.shared
                    .error(format!("producer {}: confirm: {error}", self.index));
                false
            }
        }
    }

    async fn settle_outstanding(
        &self,
        produced: &mut Produced,
        pending: VecDeque<(u64, u64, Confirming)>,
    ) {
        let deadline = Instant::now() + CONFIRM_WAIT;
        let mut pending = pending.into_iter();
        while let Some((seq, due, confirm)) = pending.next() {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(settled) => {
                    if !self.settle(produced, seq, due, joined(settled)) {
                        produced.unconfirmed += pending.len() as u64;
                        return;
                    }
                }
                Err(_) => {
                    produced.unconfirmed += 1 + pending.len() as u64;
                    self.shared.error(format!(
                        "producer {}: {} confirms not received within {}s",
                        self.index,
                        1 + pending.len(),
                        CONFIRM_WAIT.as_secs()
                    ));
                    return;
                }
            }
        }
    }
}

/// When producers must stop (the deadline passed or the run was interrupted), as a future
/// that can be awaited again and again: once it has fired, it stays ready.
struct StopSignal {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
    fired: bool,
}

impl StopSignal {
    fn new(deadline: Option<Instant>, mut stop: watch::Receiver<bool>) -> StopSignal {
        let inner = Box::pin(async move {
            let stop_requested = stop.wait_for(|s| *s);
            match deadline {
                Some(deadline) => tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    _ = stop_requested => {}
                },
                None => {
                    let _ = stop_requested.await;
                }
            }
        });
        StopSignal {
            inner,
            fired: false,
        }
    }

    async fn fired(&mut self) {
        if !self.fired {
            self.inner.as_mut().await;
            self.fired = true;
        }
    }

    async fn is_fired(&mut self) -> bool {
        futures_lite::future::poll_once(self.fired())
            .await
            .is_some()
    }
}

/// When message `seq` is due, counted from the start, in fixed-rate mode.
fn schedule_offset(interval: Duration, seq: u64) -> Duration {
    let nanos = interval.as_nanos().saturating_mul(u128::from(seq));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The start signal; `None` if the run was called off before it.
async fn wait_for_start(mut go: watch::Receiver<Option<Start>>) -> Option<Start> {
    match go.wait_for(Option::is_some).await {
        Ok(start) => *start,
        Err(_) => None,
    }
}
