//! Incremental fetch sessions (KIP-227). A consumer of many partitions sends them all
//! once (session epoch 0); the broker keeps them in a session, and later fetches name only
//! the partitions whose fetch position changed, while responses carry only the partitions
//! with records or with offsets or errors that changed.
//!
//! The cache holds at most `kafka.fetch_session_cache_slots` sessions (Kafka's
//! `max.incremental.fetch.session.cache.slots`, 1000). When it is full, a new session takes
//! the place of the least recently used one if that one has been idle for 2 minutes
//! (Kafka's `min.incremental.fetch.session.eviction.ms`) or holds fewer partitions;
//! otherwise the client gets session id 0 and keeps sending full requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Kafka's `min.incremental.fetch.session.eviction.ms`.
const EVICTABLE_AFTER: Duration = Duration::from_secs(120);

/// One partition of a session: where the client fetches from, and what it was last told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPart {
    pub topic: String,
    pub index: i32,
    pub offset: i64,
    pub max_bytes: i32,
    /// `(high watermark, last stable offset, log start)` as last answered; -2: never.
    pub answered: (i64, i64, i64),
}

impl SessionPart {
    pub fn new(topic: String, index: i32, offset: i64, max_bytes: i32) -> SessionPart {
        SessionPart {
            topic,
            index,
            offset,
            max_bytes,
            answered: (-2, -2, -2),
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub parts: Vec<SessionPart>,
    /// The epoch the next request must carry.
    pub next_epoch: i32,
    /// The principal that made it; nobody else may use it.
    pub user: Option<String>,
    last_used: Instant,
}

impl Session {
    pub fn new(user: Option<String>) -> Session {
        Session {
            parts: Vec::new(),
            next_epoch: 1,
            user,
            last_used: Instant::now(),
        }
    }

    /// Adds or updates a partition named by a request.
    pub fn upsert(&mut self, topic: &str, index: i32, offset: i64, max_bytes: i32) {
        match self
            .parts
            .iter_mut()
            .find(|p| p.index == index && p.topic == topic)
        {
            Some(p) => {
                p.offset = offset;
                p.max_bytes = max_bytes;
            }
            None => self.parts.push(SessionPart::new(
                topic.to_string(),
                index,
                offset,
                max_bytes,
            )),
        }
    }

    pub fn forget(&mut self, topic: &str, index: i32) {
        self.parts
            .retain(|p| !(p.index == index && p.topic == topic));
    }
}

/// Why an incremental fetch cannot go on (Kafka's top-level errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// FETCH_SESSION_ID_NOT_FOUND
    NotFound,
    /// INVALID_FETCH_SESSION_EPOCH
    InvalidEpoch,
}

#[derive(Debug)]
pub struct FetchSessions {
    sessions: Mutex<HashMap<i32, Session>>,
    slots: usize,
    next_id: Mutex<u32>,
}

impl FetchSessions {
    pub fn new(slots: usize) -> FetchSessions {
        // Ids start from the clock so that a restarted broker does not hand out the ids a
        // client still holds from before (they would be found NOT_FOUND either way).
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        FetchSessions {
            sessions: Mutex::new(HashMap::new()),
            slots,
            next_id: Mutex::new(seed),
        }
    }

    pub fn enabled(&self) -> bool {
        self.slots > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn remove(&self, id: i32) {
        self.lock().remove(&id);
    }

    /// Takes session `id` for an incremental fetch at `epoch` by `user`; it is put back
    /// with [`FetchSessions::put`] once answered.
    pub fn take(&self, id: i32, epoch: i32, user: Option<&str>) -> Result<Session, SessionError> {
        let mut sessions = self.lock();
        match sessions.get(&id) {
            Some(s) if s.user.as_deref() != user => return Err(SessionError::NotFound),
            Some(s) if s.next_epoch != epoch => return Err(SessionError::InvalidEpoch),
            Some(_) => {}
            None => return Err(SessionError::NotFound),
        }
        sessions.remove(&id).ok_or(SessionError::NotFound)
    }

    /// Stores a session after a fetch: an existing one under its id, a new one (`id`
    /// None) under a fresh id if the cache has a slot for it. Returns the id to answer,
    /// 0 when the session was not kept.
    pub fn put(&self, id: Option<i32>, mut session: Session) -> i32 {
        session.last_used = Instant::now();
        let mut sessions = self.lock();
        if sessions.len() >= self.slots {
            let now = Instant::now();
            let victim = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .filter(|(_, s)| {
                    now.duration_since(s.last_used) >= EVICTABLE_AFTER
                        || s.parts.len() < session.parts.len()
                })
                .map(|(id, _)| *id);
            match victim {
                Some(v) => {
                    sessions.remove(&v);
                }
                None => return 0,
            }
        }
        let id = match id {
            Some(id) => id,
            None => {
                let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    *next = next.wrapping_add(1);
                    let candidate = (*next & 0x7fff_ffff) as i32;
                    if candidate != 0 && !sessions.contains_key(&candidate) {
                        break candidate;
                    }
                }
            }
        };
        session.next_epoch = if session.next_epoch == i32::MAX {
            1
        } else {
            session.next_epoch
        };
        sessions.insert(id, session);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_taken_by_their_epoch_and_user_and_bounded() {
        let cache = FetchSessions::new(2);
        let mut s = Session::new(Some("alice".into()));
        s.upsert("t", 0, 5, 100);
        s.upsert("t", 1, 7, 100);
        let id = cache.put(None, s);
        assert!(id > 0);
        assert_eq!(
            cache.take(id, 1, Some("bob")).err(),
            Some(SessionError::NotFound)
        );
        assert_eq!(
            cache.take(id, 2, Some("alice")).err(),
            Some(SessionError::InvalidEpoch)
        );
        let mut s = cache.take(id, 1, Some("alice")).unwrap();
        assert_eq!(
            cache.take(id, 1, Some("alice")).err(),
            Some(SessionError::NotFound)
        );
        s.upsert("t", 0, 9, 100);
        s.forget("t", 1);
        assert_eq!(s.parts.len(), 1);
        assert_eq!(s.parts[0].offset, 9);
        s.next_epoch = 2;
        assert_eq!(cache.put(Some(id), s), id);
        // A second session fits; a third with fewer partitions than every idle one does not.
        let mut big = Session::new(None);
        big.upsert("t", 0, 0, 1);
        big.upsert("t", 1, 0, 1);
        assert!(cache.put(None, big) > 0);
        assert_eq!(cache.put(None, Session::new(None)), 0);
        // One with more partitions takes the least recently used slot.
        let mut bigger = Session::new(None);
        for p in 0..3 {
            bigger.upsert("u", p, 0, 1);
        }
        assert!(cache.put(None, bigger) > 0);
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.take(id, 2, Some("alice")).err(),
            Some(SessionError::NotFound)
        );
    }
}
