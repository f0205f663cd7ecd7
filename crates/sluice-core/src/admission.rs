//! Admission of client connections, shared by every protocol face: a cap on open
//! connections, and a smaller cap on connections that have not logged in yet.
//!
//! When the unauthenticated cap is reached, the oldest unauthenticated connection is
//! evicted to make room, so a flood of half-open sockets cannot lock out a real client:
//! a real client finishes its handshake in milliseconds, a flood's sockets are older.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Limits on open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Open connections of every protocol together.
    pub connections_max: usize,
    /// Connections that have not finished their login.
    pub unauthenticated_max: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            connections_max: 10_000,
            unauthenticated_max: 1_000,
        }
    }
}

/// Counts open connections and hands out tickets.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    next: u64,
    /// Unauthenticated connections by age, each with the signal that evicts it.
    waiting: BTreeMap<u64, Arc<Notify>>,
    evicted: u64,
    refused: u64,
}

/// Counters for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionStats {
    pub open: usize,
    pub unauthenticated: usize,
    pub evicted: u64,
    pub refused: u64,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ticket for a new connection, or `None` when `connections_max` are open.
    /// Admitting past `unauthenticated_max` evicts the oldest connection not logged in.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut st = self.lock();
        if st.open >= self.limits.connections_max {
            st.refused += 1;
            return None;
        }
        if st.waiting.len() >= self.limits.unauthenticated_max.max(1)
            && let Some((_, oldest)) = st.waiting.pop_first()
        {
            oldest.notify_one();
            st.evicted += 1;
        }
        st.open += 1;
        st.next += 1;
        let seq = st.next;
        let evict = Arc::new(Notify::new());
        st.waiting.insert(seq, Arc::clone(&evict));
        Some(Ticket {
            admission: Arc::clone(self),
            seq,
            evict,
        })
    }

    pub fn stats(&self) -> AdmissionStats {
        let st = self.lock();
        AdmissionStats {
            open: st.open,
            unauthenticated: st.waiting.len(),
            evicted: st.evicted,
            refused: st.refused,
        }
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    seq: u64,
    evict: Arc<Notify>,
}

impl Ticket {
    /// The connection logged in: it can no longer be evicted.
    pub fn authenticated(&self) {
        self.admission.lock().waiting.remove(&self.seq);
    }

    /// The signal behind `evicted`, for a connection that polls it itself.
    pub fn eviction(&self) -> Arc<Notify> {
        Arc::clone(&self.evict)
    }

    /// Resolves when the connection is evicted to make room for a newer one (never, once
    /// it is authenticated).
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.open = st.open.saturating_sub(1);
        st.waiting.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections_max: usize, unauthenticated_max: usize) -> AdmissionLimits {
        AdmissionLimits {
            connections_max,
            unauthenticated_max,
        }
    }

    #[test]
    fn refuses_past_the_connection_cap_and_frees_on_drop() {
        let a = Admission::new(limits(2, 10));
        let t1 = a.admit();
        let t2 = a.admit();
        assert!(t1.is_some() && t2.is_some());
        assert!(a.admit().is_none());
        assert_eq!(a.stats().refused, 1);
        drop(t1);
        assert!(a.admit().is_some());
    }

    #[tokio::test]
    async fn evicts_the_oldest_unauthenticated_connection() {
        let a = Admission::new(limits(100, 2));
        let oldest = a.admit().expect("admitted");
        let logged_in = a.admit().expect("admitted");
        logged_in.authenticated();
        let second = a.admit();
        assert!(second.is_some());
        assert_eq!(a.stats().evicted, 0, "two waiting fit the cap");
        let third = a.admit();
        assert!(third.is_some());
        assert_eq!(a.stats().evicted, 1);
        // The stored permit makes the eviction visible even to a later waiter.
        tokio::time::timeout(std::time::Duration::from_secs(1), oldest.evicted())
            .await
            .expect("the oldest waiting connection is evicted");
        assert_eq!(a.stats().unauthenticated, 2);
        assert_eq!(a.stats().open, 4);
    }
}
