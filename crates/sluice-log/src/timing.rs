//! How long fsync jobs take, for operators: a fixed-bucket histogram of every
//! [`SyncJob`](crate::SyncJob) of the process (all logs together), kept in atomics so
//! recording costs a few relaxed adds next to an fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus' `le`); one more counts the rest.
pub const BUCKETS_S: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Debug)]
pub struct FsyncHistogram {
    buckets: [AtomicU64; BUCKETS_S.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// The fsync jobs of this process.
pub static FSYNC: FsyncHistogram = FsyncHistogram {
    buckets: [const { AtomicU64::new(0) }; BUCKETS_S.len() + 1],
    count: AtomicU64::new(0),
    sum_ns: AtomicU64::new(0),
};

/// What the histogram holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Observations up to each bound of `BUCKETS_S`, cumulative as Prometheus wants.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_s: f64,
}

impl FsyncHistogram {
    pub fn record(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS_S.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .take(BUCKETS_S.len())
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        Snapshot {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = FsyncHistogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_S.len() + 1],
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        };
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(700));
        h.record(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative.first(), Some(&1), "50 µs ≤ 100 µs");
        assert_eq!(s.cumulative.get(3), Some(&2), "700 µs ≤ 1 ms");
        assert_eq!(s.cumulative.last(), Some(&2), "3 s is past the last bound");
        assert!((s.sum_s - 3.00075).abs() < 1e-9);
    }
}
