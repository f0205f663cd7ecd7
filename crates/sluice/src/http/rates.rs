//! Message counters as RabbitMQ's API shows them: each count with its `_details` rate,
//! the rate taken over the last sampling interval by a background sampler.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sluice_amqp::broker::MessageStats;

/// How often rates are sampled (RabbitMQ's default collection interval).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The counters `message_stats` shows, by RabbitMQ's names.
pub fn counts(s: &MessageStats) -> Vec<(&'static str, u64)> {
    let g = MessageStats::get;
    let deliver = g(&s.delivered_consume_manual_ack);
    let deliver_no_ack = g(&s.delivered_consume_auto_ack);
    let get = g(&s.delivered_get_manual_ack);
    let get_no_ack = g(&s.delivered_get_auto_ack);
    vec![
        ("publish", g(&s.received)),
        ("confirm", g(&s.confirmed)),
        ("deliver", deliver),
        ("deliver_no_ack", deliver_no_ack),
        ("get", get),
        ("get_no_ack", get_no_ack),
        ("get_empty", g(&s.get_empty)),
        ("deliver_get", deliver + deliver_no_ack + get + get_no_ack),
        ("redeliver", g(&s.redelivered)),
        ("ack", g(&s.acknowledged)),
        ("return_unroutable", g(&s.unroutable_returned)),
        ("drop_unroutable", g(&s.unroutable_dropped)),
    ]
}

/// The last two samples of the counters.
#[derive(Debug, Default)]
pub struct Rates {
    last: Mutex<Option<(Instant, HashMap<&'static str, u64>)>>,
    rates: Mutex<HashMap<&'static str, f64>>,
}

impl Rates {
    /// Takes a sample: rates are the change since the previous one, per second.
    pub fn sample(&self, stats: &MessageStats) {
        let now = Instant::now();
        let current: HashMap<&'static str, u64> = counts(stats).into_iter().collect();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, before)) = last.as_ref() {
            let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
            let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in &current {
                let was = before.get(k).copied().unwrap_or(0);
                rates.insert(k, v.saturating_sub(was) as f64 / secs);
            }
        }
        *last = Some((now, current));
    }

    /// `message_stats` for the overview: every counter with its `_details`.
    pub fn message_stats(&self, stats: &MessageStats) -> Value {
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Map::new();
        for (name, count) in counts(stats) {
            out.insert(name.to_string(), json!(count));
            let rate = rates.get(name).copied().unwrap_or(0.0);
            out.insert(format!("{name}_details"), json!({"rate": rate}));
        }
        Value::Object(out)
    }
}
