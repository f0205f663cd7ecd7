//! Timers: one due time per key, fired in due order. Pure: time comes in as `now_ms`,
//! nothing runs by itself. The broker keeps one per virtual host for queue expiry, so a
//! timer round touches the queues that are due, not every queue.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

#[derive(Debug)]
pub struct Scheduler<K> {
    by_due: BTreeSet<(i64, K)>,
    due_of: HashMap<K, i64>,
}

impl<K> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            by_due: BTreeSet::new(),
            due_of: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Scheduler<K> {
    /// Makes `key` fire at `due_ms`, or earlier if it is already set to.
    pub fn at_most(&mut self, key: K, due_ms: i64) {
        if let Some(&current) = self.due_of.get(&key) {
            if current <= due_ms {
                return;
            }
            self.by_due.remove(&(current, key.clone()));
        }
        self.due_of.insert(key.clone(), due_ms);
        self.by_due.insert((due_ms, key));
    }

    /// Makes `key` fire at `due_ms`, whatever it was set to.
    pub fn set(&mut self, key: K, due_ms: i64) {
        self.cancel(&key);
        self.due_of.insert(key.clone(), due_ms);
        self.by_due.insert((due_ms, key));
    }

    /// Whether `key` has a timer.
    pub fn contains(&self, key: &K) -> bool {
        self.due_of.contains_key(key)
    }

    /// Forgets `key`'s timer.
    pub fn cancel(&mut self, key: &K) {
        if let Some(due) = self.due_of.remove(key) {
            self.by_due.remove(&(due, key.clone()));
        }
    }

    /// Takes every key due at `now_ms` (due time at or before it), earliest first.
    pub fn pop_due(&mut self, now_ms: i64, out: &mut Vec<K>) {
        self.pop_due_max(now_ms, usize::MAX, out);
    }

    /// Like [`Scheduler::pop_due`], taking at most `max` keys; the rest stay due.
    pub fn pop_due_max(&mut self, now_ms: i64, max: usize, out: &mut Vec<K>) {
        let mut taken = 0;
        while let Some((due, _)) = self.by_due.first() {
            if *due > now_ms || taken == max {
                break;
            }
            taken += 1;
            if let Some((_, key)) = self.by_due.pop_first() {
                self.due_of.remove(&key);
                out.push(key);
            }
        }
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<i64> {
        self.by_due.first().map(|(due, _)| *due)
    }

    pub fn len(&self) -> usize {
        self.due_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_fire_once_in_due_order_and_earlier_times_win() {
        let mut s = Scheduler::default();
        s.at_most("b", 20);
        s.at_most("a", 10);
        s.at_most("b", 30); // later: ignored
        s.at_most("c", 15);
        s.at_most("c", 5); // earlier: moves
        s.cancel(&"a");
        assert_eq!(s.next_due(), Some(5));
        let mut out = Vec::new();
        s.pop_due(19, &mut out);
        assert_eq!(out, vec!["c"]);
        s.pop_due(20, &mut out);
        assert_eq!(out, vec!["c", "b"]);
        assert!(s.is_empty());
    }

    proptest! {
        /// Against a plain map of key → earliest due time.
        #[test]
        fn agrees_with_a_map_of_earliest_times(
            ops in proptest::collection::vec((0u8..3, 0u8..8, 0i64..100), 1..200)
        ) {
            let mut s = Scheduler::default();
            let mut model: HashMap<u8, i64> = HashMap::new();
            let mut now = 0;
            for (op, key, t) in ops {
                match op {
                    0 => {
                        s.at_most(key, t);
                        let e = model.entry(key).or_insert(t);
                        *e = (*e).min(t);
                    }
                    1 => {
                        s.cancel(&key);
                        model.remove(&key);
                    }
                    _ => {
                        now += t / 10;
                        let mut out = Vec::new();
                        s.pop_due(now, &mut out);
                        let mut want: Vec<(i64, u8)> = model
                            .iter()
                            .filter(|(_, d)| **d <= now)
                            .map(|(k, d)| (*d, *k))
                            .collect();
                        want.sort();
                        let want: Vec<u8> = want.into_iter().map(|(_, k)| k).collect();
                        prop_assert_eq!(&out, &want);
                        model.retain(|_, d| *d > now);
                    }
                }
                prop_assert_eq!(s.len(), model.len());
                prop_assert_eq!(s.next_due(), model.values().min().copied());
            }
        }
    }
}
