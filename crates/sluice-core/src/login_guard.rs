//! Failed logins, counted per protocol and limited per client address and user name:
//! each pair has a bucket of `BURST` failures that refills at one per `REFILL`; while it
//! is empty, that user's logins from that address are refused without looking at the
//! password, so guessing a password runs at the refill rate whatever the number of
//! connections. Keyed by user as well, so one misconfigured client does not lock out the
//! other users of its host. The table is bounded; when full, the entries that have
//! refilled are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failures an address may have in a row before it is held back.
pub const BURST: u32 = 20;
/// One more failure is allowed after each of these.
pub const REFILL: Duration = Duration::from_secs(2);
/// Addresses remembered at once.
const TRACKED_MAX: usize = 65_536;

/// The protocols whose logins are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Amqp,
    Kafka,
    Http,
    Rocketmq,
}

impl Face {
    pub const ALL: [Face; 4] = [Face::Amqp, Face::Kafka, Face::Http, Face::Rocketmq];

    pub fn name(self) -> &'static str {
        match self {
            Face::Amqp => "amqp091",
            Face::Kafka => "kafka",
            Face::Http => "http",
            Face::Rocketmq => "rocketmq",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed as of `at`.
    left: u32,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> Bucket {
        let earned = now.saturating_duration_since(self.at).as_millis() / REFILL.as_millis().max(1);
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned == 0 {
            return self;
        }
        Bucket {
            left: self.left.saturating_add(earned).min(BURST),
            at: now,
        }
    }
}

/// One counter per protocol.
#[derive(Debug, Default)]
struct PerFace {
    amqp: AtomicU64,
    kafka: AtomicU64,
    http: AtomicU64,
    rocketmq: AtomicU64,
}

impl PerFace {
    fn of(&self, face: Face) -> &AtomicU64 {
        match face {
            Face::Amqp => &self.amqp,
            Face::Kafka => &self.kafka,
            Face::Http => &self.http,
            Face::Rocketmq => &self.rocketmq,
        }
    }
}

#[derive(Debug, Default)]
pub struct LoginGuard {
    buckets: Mutex<HashMap<(IpAddr, String), Bucket>>,
    failures: PerFace,
    throttled: PerFace,
}

impl LoginGuard {
    /// Whether `user`'s logins from `ip` are held back now (counted as throttled if so).
    pub fn throttled(&self, face: Face, ip: IpAddr, user: &str) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let held = buckets
            .get(&(ip, user.to_string()))
            .is_some_and(|b| b.refilled(Instant::now()).left == 0);
        if held {
            self.throttled.of(face).fetch_add(1, Ordering::Relaxed);
        }
        held
    }

    /// Counts a failed login of `user` from `ip`.
    pub fn failed(&self, face: Face, ip: IpAddr, user: &str) {
        self.failures.of(face).fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ip, user.to_string());
        if buckets.len() >= TRACKED_MAX && !buckets.contains_key(&key) {
            buckets.retain(|_, b| b.refilled(now).left < BURST);
            if buckets.len() >= TRACKED_MAX {
                // Still full of failing addresses: forget one rather than grow.
                if let Some(k) = buckets.keys().next().cloned() {
                    buckets.remove(&k);
                }
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            left: BURST,
            at: now,
        });
        let mut next = b.refilled(now);
        next.left = next.left.saturating_sub(1);
        *b = next;
    }

    /// Failed and throttled logins so far, per protocol.
    pub fn counts(&self) -> Vec<(Face, u64, u64)> {
        Face::ALL
            .into_iter()
            .map(|f| {
                (
                    f,
                    self.failures.of(f).load(Ordering::Relaxed),
                    self.throttled.of(f).load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_address_is_held_back_after_its_burst_and_others_are_not() {
        let g = LoginGuard::default();
        let bad: IpAddr = [10, 0, 0, 1].into();
        let good: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..BURST {
            assert!(!g.throttled(Face::Kafka, bad, "u"));
            g.failed(Face::Kafka, bad, "u");
        }
        assert!(g.throttled(Face::Amqp, bad, "u"));
        assert!(!g.throttled(Face::Amqp, bad, "other user"));
        assert!(!g.throttled(Face::Amqp, good, "u"));
        let counts = g.counts();
        assert_eq!(counts[1], (Face::Kafka, u64::from(BURST), 0));
        assert_eq!(counts[0], (Face::Amqp, 0, 1));
        // Time refills the bucket.
        let mut buckets = g.buckets.lock().unwrap();
        let b = buckets.get_mut(&(bad, "u".to_string())).unwrap();
        b.at -= REFILL;
        drop(buckets);
        assert!(!g.throttled(Face::Amqp, bad, "u"));
    }
}
