//! The per-exchange lookup structure each exchange type routes with. Each exchange owns
//! one, so routing through it costs nothing for the bindings of other exchanges.
//!
//! Direct, fanout and topic route on (destination, key) pairs: several bindings that
//! differ only in arguments are one route, added with the pair's first binding and
//! removed with its last. Headers route on arguments, so each binding is an entry.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::Table;

use super::binding::{Binding, Destination, DestinationSet};
use super::exchange::ExchangeKind;
use super::headers::HeadersTable;
use super::topic::{TopicScratch, TopicTrie};

#[derive(Debug)]
pub(super) enum Matcher {
    Direct(HashMap<Arc<str>, DestinationSet>),
    Fanout(DestinationSet),
    Topic(TopicTrie),
    Headers(HeadersTable),
}

impl Matcher {
    pub(super) fn new(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Matcher::Direct(HashMap::new()),
            ExchangeKind::Fanout => Matcher::Fanout(DestinationSet::default()),
            ExchangeKind::Topic => Matcher::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Matcher::Headers(HeadersTable::default()),
        }
    }

    /// Records a new binding; `first_of_pair` says no binding with its destination and key
    /// existed before.
    pub(super) fn insert(&mut self, binding: &Binding, first_of_pair: bool) {
        let destination = binding.destination.clone();
        match self {
            Matcher::Headers(table) => table.insert(binding),
            _ if !first_of_pair => {}
            Matcher::Direct(keys) => {
                keys.entry(binding.routing_key.clone())
                    .or_default()
                    .insert(destination);
            }
            Matcher::Fanout(all) => {
                all.insert(destination);
            }
            Matcher::Topic(trie) => {
                trie.insert(&binding.routing_key, destination);
            }
        }
    }

    /// Forgets a binding; `last_of_pair` says no binding with its destination and key
    /// remains.
    pub(super) fn remove(&mut self, binding: &Binding, last_of_pair: bool) {
        let destination = &binding.destination;
        match self {
            Matcher::Headers(table) => table.remove(binding),
            _ if !last_of_pair => {}
            Matcher::Direct(keys) => {
                if let Some(set) = keys.get_mut(&*binding.routing_key) {
                    set.remove(destination);
                    if set.is_empty() {
                        keys.remove(&*binding.routing_key);
                    }
                }
            }
            Matcher::Fanout(all) => {
                all.remove(destination);
            }
            Matcher::Topic(trie) => {
                trie.remove(&binding.routing_key, destination);
            }
        }
    }

    /// Calls `emit` for every destination whose binding matches; a destination may come
    /// more than once (a queue bound under two matching topic patterns).
    pub(super) fn route(
        &self,
        routing_key: &str,
        headers: Option<&Table>,
        topic: &mut TopicScratch,
        mut emit: impl FnMut(&Destination),
    ) {
        match self {
            Matcher::Direct(keys) => {
                if let Some(set) = keys.get(routing_key) {
                    set.iter().for_each(emit);
                }
            }
            Matcher::Fanout(all) => all.iter().for_each(emit),
            Matcher::Topic(trie) => trie.route(routing_key, topic, &mut emit),
            Matcher::Headers(table) => table.route(headers, &mut emit),
        }
    }
}
