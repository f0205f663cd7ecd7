//! Bindings: the edges of the routing graph, from a source exchange to a queue or another
//! exchange, labelled with a key and arguments. Names are `Arc<str>` so that routing hands
//! out queue names by bumping a count, never by copying.

use std::sync::Arc;

use sluice_core::Table;

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    Queue(Arc<str>),
    /// An exchange-to-exchange binding (a RabbitMQ extension to AMQP 0-9-1).
    Exchange(Arc<str>),
}

impl Destination {
    pub fn queue(name: impl Into<Arc<str>>) -> Self {
        Destination::Queue(name.into())
    }

    pub fn exchange(name: impl Into<Arc<str>>) -> Self {
        Destination::Exchange(name.into())
    }

    pub fn name(&self) -> &Arc<str> {
        match self {
            Destination::Queue(name) | Destination::Exchange(name) => name,
        }
    }

    /// The resource kind RabbitMQ names in messages: `queue` or `exchange`.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Queue(_) => "queue",
            Destination::Exchange(_) => "exchange",
        }
    }
}

/// One binding. Two bindings are the same binding when source, destination and key are
/// equal and the arguments hold the same entries in any order (RabbitMQ sorts them).
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub source: Arc<str>,
    pub destination: Destination,
    pub routing_key: Arc<str>,
    pub arguments: Table,
}

impl Binding {
    /// A binding without arguments.
    pub fn new(
        source: impl Into<Arc<str>>,
        destination: Destination,
        routing_key: impl Into<Arc<str>>,
    ) -> Self {
        Binding {
            source: source.into(),
            destination,
            routing_key: routing_key.into(),
            arguments: Table::new(),
        }
    }

    pub fn with_arguments(mut self, arguments: Table) -> Self {
        self.arguments = arguments;
        self
    }
}

/// A set of destinations kept as a sorted vector: compact for the common one or two
/// entries, ordered for deterministic iteration, and `O(log n)` to search.
#[derive(Debug, Clone, Default)]
pub(super) struct DestinationSet(Vec<Destination>);

impl DestinationSet {
    pub(super) fn insert(&mut self, destination: Destination) -> bool {
        match self.0.binary_search(&destination) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, destination);
                true
            }
        }
    }

    pub(super) fn remove(&mut self, destination: &Destination) -> bool {
        match self.0.binary_search(destination) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, Destination> {
        self.0.iter()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_set_keeps_one_sorted_copy_of_each() {
        let mut set = DestinationSet::default();
        assert!(set.insert(Destination::queue("b")));
        assert!(set.insert(Destination::queue("a")));
        assert!(set.insert(Destination::exchange("a")));
        assert!(!set.insert(Destination::queue("a")));
        let names: Vec<_> = set.iter().map(|d| (d.kind(), &**d.name())).collect();
        assert_eq!(names, [("queue", "a"), ("queue", "b"), ("exchange", "a")]);
        assert!(set.remove(&Destination::queue("a")));
        assert!(!set.remove(&Destination::queue("a")));
        assert!(!set.is_empty());
    }
}
