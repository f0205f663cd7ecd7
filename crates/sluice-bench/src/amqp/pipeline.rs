//! A bounded line of client operations (publishes, acks) that have been handed to lapin but
//! have not finished, finished in the order they were started.
//!
//! Why: lapin writes frames from its own I/O thread, and an operation finishes only once
//! that thread has written it. Awaiting each publish before starting the next costs two
//! thread wake-ups per message, which made the load generator, not the broker, the
//! bottleneck; with several operations started ahead, one wake-up writes many frames.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use futures_lite::future::poll_once;

pub type Operation<T> = Pin<Box<dyn Future<Output = T> + Send>>;

enum State<T> {
    Running(Operation<T>),
    Done(T),
}

/// Operations in start order, each with a key (a sequence number) for its result.
pub struct Pipeline<K, T> {
    line: VecDeque<(K, State<T>)>,
}

impl<K, T> Default for Pipeline<K, T> {
    fn default() -> Self {
        Pipeline {
            line: VecDeque::new(),
        }
    }
}

impl<K, T> Pipeline<K, T> {
    pub fn len(&self) -> usize {
        self.line.len()
    }

    /// Starts `operation`: polls it once, which hands its frames to lapin, and keeps it in
    /// line behind the ones started before.
    pub async fn start(&mut self, key: K, mut operation: Operation<T>) {
        let state = match poll_once(&mut operation).await {
            Some(done) => State::Done(done),
            None => State::Running(operation),
        };
        self.line.push_back((key, state));
    }

    /// The oldest operation if it has finished, without waiting.
    pub async fn finished(&mut self) -> Option<(K, T)> {
        let (_, state) = self.line.front_mut()?;
        if let State::Running(operation) = state {
            *state = State::Done(poll_once(operation).await?);
        }
        self.pop_done()
    }

    /// Waits for the oldest operation. Cancel-safe: if this future is dropped before it
    /// finishes, the operation stays in line.
    pub async fn next(&mut self) -> Option<(K, T)> {
        let (_, state) = self.line.front_mut()?;
        if let State::Running(operation) = state {
            *state = State::Done(operation.await);
        }
        self.pop_done()
    }

    fn pop_done(&mut self) -> Option<(K, T)> {
        match self.line.pop_front()? {
            (key, State::Done(done)) => Some((key, done)),
            running => {
                self.line.push_front(running);
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn operations_finish_in_start_order_even_when_a_later_one_is_done_first() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut line: Pipeline<u64, u32> = Pipeline::default();
        line.start(1, Box::pin(async move { rx.await.unwrap() }))
            .await;
        line.start(2, Box::pin(async { 20 })).await;
        assert!(line.finished().await.is_none());
        assert_eq!(line.len(), 2);
        tx.send(10).unwrap();
        assert_eq!(line.finished().await, Some((1, 10)));
        assert_eq!(line.next().await, Some((2, 20)));
        assert!(line.next().await.is_none());
        assert_eq!(line.len(), 0);
    }
}
