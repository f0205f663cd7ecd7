//! Consumer-side bookkeeping: which message ids arrived (to count duplicates and, against
//! what producers had confirmed, missing messages) and the publish→deliver latency of each.
//!
//! Each consumer keeps its own [`Tracker`], so the delivery path takes no lock; trackers of
//! consumers that share a queue are merged at the end, and a message seen by two of them
//! counts as a duplicate then.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::payload::Stamp;

/// Sequence numbers per chunk of a [`SeqSet`]: 4096 bits, 512 bytes.
const CHUNK_BITS: u64 = 4096;
const CHUNK_WORDS: usize = (CHUNK_BITS / 64) as usize;

/// Highest latency the histogram tells apart (one hour, in ns); longer ones count as this.
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

/// A set of sequence numbers, as a bitmap allocated in chunks as numbers arrive. Chunks, not
/// one vector, so that a stray message with a huge sequence number costs 512 bytes rather
/// than a vector up to that number.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    chunks: HashMap<u64, Box<[u64; CHUNK_WORDS]>>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let chunk = self
            .chunks
            .entry(seq / CHUNK_BITS)
            .or_insert_with(|| Box::new([0; CHUNK_WORDS]));
        let bit = seq % CHUNK_BITS;
        let Some(word) = chunk.get_mut((bit / 64) as usize) else {
            return false;
        };
        let mask = 1u64 << (bit % 64);
        if *word & mask != 0 {
            return false;
        }
        *word |= mask;
        self.len += 1;
        true
    }

    pub fn contains(&self, seq: u64) -> bool {
        let bit = seq % CHUNK_BITS;
        self.chunks
            .get(&(seq / CHUNK_BITS))
            .and_then(|chunk| chunk.get((bit / 64) as usize))
            .is_some_and(|word| word & (1u64 << (bit % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds every number of `other`; returns how many were in both.
    pub fn union_counting_overlap(&mut self, other: &SeqSet) -> u64 {
        let mut overlap = 0;
        for (index, theirs) in &other.chunks {
            let ours = self
                .chunks
                .entry(*index)
                .or_insert_with(|| Box::new([0; CHUNK_WORDS]));
            for (mine, their) in ours.iter_mut().zip(theirs.iter()) {
                overlap += u64::from((*mine & their).count_ones());
                self.len += u64::from((their & !*mine).count_ones());
                *mine |= their;
            }
        }
        overlap
    }

    /// How many numbers of `self` are not in `other`.
    pub fn count_not_in(&self, other: &SeqSet) -> u64 {
        let mut count = 0;
        for (index, ours) in &self.chunks {
            match other.chunks.get(index) {
                None => count += ours.iter().map(|w| u64::from(w.count_ones())).sum::<u64>(),
                Some(theirs) => {
                    for (mine, their) in ours.iter().zip(theirs.iter()) {
                        count += u64::from((mine & !their).count_ones());
                    }
                }
            }
        }
        count
    }
}

/// What one consumer (or, after merging, one queue's consumers) received.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Ids seen, one set per producer.
    seen: Vec<SeqSet>,
    /// Publish→deliver latency in nanoseconds, of every delivery with a stamp.
    latency_ns: Histogram<u64>,
    deliveries: u64,
    duplicates: u64,
    /// Deliveries without a stamp of this run (too short, or from a producer index that
    /// this run does not have).
    malformed: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("latency histogram: {0}")]
pub struct HistogramError(pub String);

impl Tracker {
    pub fn new(producers: u32) -> Result<Tracker, HistogramError> {
        let latency_ns = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
            .map_err(|e| HistogramError(format!("{e:?}")))?;
        Ok(Tracker {
            seen: (0..producers).map(|_| SeqSet::default()).collect(),
            latency_ns,
            deliveries: 0,
            duplicates: 0,
            malformed: 0,
        })
    }

    /// Books one delivered body received at `now_ns` (wall clock, as in the stamp).
    pub fn record(&mut self, body: &[u8], now_ns: u64) {
        self.deliveries += 1;
        let Some(stamp) = Stamp::read(body) else {
            self.malformed += 1;
            return;
        };
        let Some(seen) = self.seen.get_mut(stamp.producer as usize) else {
            self.malformed += 1;
            return;
        };
        if !seen.insert(stamp.seq) {
            self.duplicates += 1;
        }
        self.latency_ns
            .saturating_record(now_ns.saturating_sub(stamp.sent_ns).max(1));
    }

    /// Folds another consumer's bookkeeping of the same queue into this one.
    pub fn merge(&mut self, other: &Tracker) -> Result<(), HistogramError> {
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            self.duplicates += mine.union_counting_overlap(theirs);
        }
        self.deliveries += other.deliveries;
        self.duplicates += other.duplicates;
        self.malformed += other.malformed;
        self.latency_ns
            .add(&other.latency_ns)
            .map_err(|e| HistogramError(format!("{e:?}")))
    }

    /// Folds in only the latency of another tracker (of another queue: its ids are
    /// checked separately).
    pub fn merge_latency(&mut self, other: &Tracker) -> Result<(), HistogramError> {
        self.latency_ns
            .add(&other.latency_ns)
            .map_err(|e| HistogramError(format!("{e:?}")))
    }

    /// Messages in `expected` (per producer) that this tracker never saw.
    pub fn missing(&self, expected: &[SeqSet]) -> u64 {
        let empty = SeqSet::default();
        expected
            .iter()
            .enumerate()
            .map(|(producer, set)| set.count_not_in(self.seen.get(producer).unwrap_or(&empty)))
            .sum()
    }

    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    pub fn latency(&self) -> Latency {
        latency_of(&self.latency_ns)
    }
}

/// A latency histogram in nanoseconds, as the tracker keeps them.
pub fn latency_histogram() -> Result<Histogram<u64>, HistogramError> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).map_err(|e| HistogramError(format!("{e:?}")))
}

/// Percentiles of a histogram in nanoseconds, in microseconds.
pub fn latency_of(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    let empty = h.is_empty();
    let at = |q: f64| {
        if empty {
            0.0
        } else {
            us(h.value_at_quantile(q))
        }
    };
    Latency {
        count: h.len(),
        p50_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: if empty { 0.0 } else { us(h.max()) },
        mean_us: if empty { 0.0 } else { h.mean() / 1000.0 },
        curve: if empty {
            Vec::new()
        } else {
            percentile_curve(h)
        },
    }
}

/// Latency percentiles in the style of HdrHistogram's plots: evenly spaced on a scale of
/// 1/(1-p), from p0 to p99.999, then the maximum.
fn percentile_curve(h: &Histogram<u64>) -> Vec<Percentile> {
    let mut curve: Vec<Percentile> = (0..=50)
        .map(|step| {
            let quantile = 1.0 - 10f64.powf(-f64::from(step) / 10.0);
            Percentile {
                percentile: quantile * 100.0,
                latency_us: h.value_at_quantile(quantile) as f64 / 1000.0,
            }
        })
        .collect();
    curve.push(Percentile {
        percentile: 100.0,
        latency_us: h.max() as f64 / 1000.0,
    });
    curve
}

/// Publish→deliver latency, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// Points of the percentile curve (percentile in 0..=100, latency in µs).
    pub curve: Vec<Percentile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentile {
    pub percentile: f64,
    pub latency_us: f64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn body(producer: u32, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut body = vec![0; 32];
        Stamp {
            sent_ns,
            producer,
            seq,
        }
        .write(&mut body);
        body
    }

    fn expected(sets: &[&[u64]]) -> Vec<SeqSet> {
        sets.iter()
            .map(|seqs| {
                let mut set = SeqSet::default();
                for &seq in *seqs {
                    set.insert(seq);
                }
                set
            })
            .collect()
    }

    #[test]
    fn latency_percentiles_come_from_the_stamped_send_time() {
        let mut tracker = Tracker::new(1).unwrap();
        for seq in 0..1000u64 {
            // Latencies 1 µs .. 1000 µs, one each.
            let sent = 1_000_000_000;
            tracker.record(&body(0, seq, sent), sent + (seq + 1) * 1000);
        }
        let latency = tracker.latency();
        assert_eq!(latency.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.01;
        assert!(close(latency.p50_us, 500.0), "{latency:?}");
        assert!(close(latency.p90_us, 900.0), "{latency:?}");
        assert!(close(latency.p99_us, 990.0), "{latency:?}");
        assert!(close(latency.max_us, 1000.0), "{latency:?}");
        assert_eq!(latency.curve.last().unwrap().percentile, 100.0);
    }

    #[test]
    fn a_delivery_stamped_in_the_future_counts_as_the_smallest_latency_not_a_huge_one() {
        let mut tracker = Tracker::new(1).unwrap();
        tracker.record(&body(0, 0, 2_000), 1_000);
        assert!(tracker.latency().max_us < 0.01);
    }

    #[test]
    fn every_message_seen_once_leaves_no_duplicate_and_no_missing() {
        let mut tracker = Tracker::new(2).unwrap();
        for seq in 0..10_000 {
            tracker.record(&body(0, seq, 0), 1);
            tracker.record(&body(1, seq, 0), 1);
        }
        let all: Vec<u64> = (0..10_000).collect();
        assert_eq!(tracker.missing(&expected(&[&all, &all])), 0);
        assert_eq!(tracker.duplicates(), 0);
        assert_eq!(tracker.deliveries(), 20_000);
    }

    #[test]
    fn a_message_seen_twice_by_one_consumer_is_a_duplicate() {
        let mut tracker = Tracker::new(1).unwrap();
        tracker.record(&body(0, 7, 0), 1);
        tracker.record(&body(0, 7, 0), 1);
        assert_eq!(tracker.duplicates(), 1);
        assert_eq!(tracker.missing(&expected(&[&[7]])), 0);
    }

    #[test]
    fn a_message_seen_by_two_consumers_of_one_queue_is_a_duplicate_after_merging() {
        let mut a = Tracker::new(1).unwrap();
        let mut b = Tracker::new(1).unwrap();
        a.record(&body(0, 1, 0), 1);
        a.record(&body(0, 2, 0), 1);
        b.record(&body(0, 2, 0), 1);
        b.record(&body(0, 3, 0), 1);
        a.merge(&b).unwrap();
        assert_eq!(a.duplicates(), 1);
        assert_eq!(a.deliveries(), 4);
        assert_eq!(a.missing(&expected(&[&[1, 2, 3]])), 0);
        assert_eq!(a.latency().count, 4);
    }

    #[test]
    fn confirmed_messages_never_delivered_are_missing_and_unconfirmed_ones_are_not_required() {
        let mut tracker = Tracker::new(2).unwrap();
        tracker.record(&body(0, 0, 0), 1);
        tracker.record(&body(0, 2, 0), 1);
        // Producer 0 had 0..4 confirmed (1 and 3 lost), producer 1 had 0 confirmed (lost);
        // 5000 of producer 1 arrived without a confirm, which is allowed.
        tracker.record(&body(1, 5000, 0), 1);
        assert_eq!(tracker.missing(&expected(&[&[0, 1, 2, 3], &[0]])), 3);
    }

    #[test]
    fn bodies_without_a_stamp_of_this_run_are_counted_as_malformed() {
        let mut tracker = Tracker::new(1).unwrap();
        tracker.record(b"short", 1);
        tracker.record(&body(5, 0, 0), 1);
        assert_eq!(tracker.malformed(), 2);
        assert_eq!(tracker.deliveries(), 2);
        assert_eq!(tracker.latency().count, 0);
    }

    #[test]
    fn seq_sets_far_apart_allocate_only_the_chunks_they_touch() {
        let mut set = SeqSet::default();
        assert!(set.insert(0));
        assert!(set.insert(crate::payload::SEQ_MAX));
        assert!(!set.insert(0));
        assert_eq!(set.len(), 2);
        assert_eq!(set.chunks.len(), 2);
        assert!(set.contains(crate::payload::SEQ_MAX));
        assert!(!set.contains(1));
    }
}
