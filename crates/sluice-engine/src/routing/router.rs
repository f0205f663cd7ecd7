//! The routing table of one virtual host: exchanges, the queues bindings may point at,
//! and the bindings between them, with RabbitMQ 3.x rules for declaring, binding,
//! deleting and routing.
//!
//! Invariants:
//! - every binding's source and destination exist; deleting either removes the binding;
//! - each binding is stored once, under its source, indexed by (destination, key); the
//!   destination keeps the (source, key) pairs that point at it, for removal and listing;
//! - the default exchange `""` has no bindings: it routes a key to the queue of that name.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sluice_core::Table;

use super::args::same_table;
use super::binding::{Binding, Destination};
use super::exchange::{ExchangeDef, ExchangeKind, parse_alternate};
use super::headers::XMatch;
use super::matcher::Matcher;
use super::scratch::RouteScratch;
use super::{ROUTING_KEY_BYTES_MAX, RoutingError};

/// When `delete_exchange` may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteWhen {
    /// Whatever its bindings.
    Always,
    /// Only when no binding has it as source (AMQP `if-unused`).
    Unused,
}

/// What an operation removed, so the caller can persist or report it: bindings, and
/// exchanges deleted outright or because they were auto-delete and lost their last
/// binding as source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Removed {
    pub bindings: Vec<Binding>,
    pub exchanges: Vec<ExchangeDef>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty() && self.exchanges.is_empty()
    }
}

/// A (source, key) pair pointing at a destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Inbound {
    source: Arc<str>,
    routing_key: Arc<str>,
}

/// The bindings of one source to one destination under one key, one per distinct
/// argument table.
type Pair = (Destination, Arc<str>);

#[derive(Debug)]
struct Exchange {
    def: ExchangeDef,
    alternate: Option<Arc<str>>,
    matcher: Matcher,
    outbound: BTreeMap<Pair, Vec<Binding>>,
    inbound: BTreeSet<Inbound>,
}

impl Exchange {
    fn new(def: ExchangeDef, alternate: Option<Arc<str>>) -> Self {
        Exchange {
            matcher: Matcher::new(def.kind),
            def,
            alternate,
            outbound: BTreeMap::new(),
            inbound: BTreeSet::new(),
        }
    }

    /// Adds `binding` unless an equal one exists. Returns whether it was added and
    /// whether it is the first of its pair.
    fn add_binding(&mut self, binding: Binding) -> (bool, bool) {
        let pair = (binding.destination.clone(), binding.routing_key.clone());
        let variants = self.outbound.entry(pair).or_default();
        if variants
            .iter()
            .any(|b| same_table(&b.arguments, &binding.arguments))
        {
            return (false, false);
        }
        let first = variants.is_empty();
        self.matcher.insert(&binding, first);
        variants.push(binding);
        (true, first)
    }

    fn has_binding(&self, binding: &Binding) -> bool {
        let pair = (binding.destination.clone(), binding.routing_key.clone());
        self.outbound.get(&pair).is_some_and(|v| {
            v.iter()
                .any(|b| same_table(&b.arguments, &binding.arguments))
        })
    }

    /// Removes the binding equal to `binding`. Returns it and whether it was the last of
    /// its pair.
    fn remove_binding(&mut self, binding: &Binding) -> Option<(Binding, bool)> {
        let pair = (binding.destination.clone(), binding.routing_key.clone());
        let variants = self.outbound.get_mut(&pair)?;
        let at = variants
            .iter()
            .position(|b| same_table(&b.arguments, &binding.arguments))?;
        let removed = variants.remove(at);
        let last = variants.is_empty();
        if last {
            self.outbound.remove(&pair);
        }
        self.matcher.remove(&removed, last);
        Some((removed, last))
    }

    /// Removes every binding of one pair.
    fn take_pair(&mut self, pair: &Pair) -> Vec<Binding> {
        let bindings = self.outbound.remove(pair).unwrap_or_default();
        let count = bindings.len();
        for (i, binding) in bindings.iter().enumerate() {
            self.matcher.remove(binding, i + 1 == count);
        }
        bindings
    }
}

thread_local! {
    static SCRATCH: RefCell<RouteScratch> = RefCell::new(RouteScratch::default());
}

/// The exchanges pre-declared in every virtual host, as `rabbit_vhost` declares them:
/// all durable; the trace exchange is internal.
const PREDECLARED: [(&str, ExchangeKind, bool); 7] = [
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

/// How many exchanges and bindings one routing table may hold. A declare or bind past a
/// limit is refused with 406, as RabbitMQ refuses a queue past its vhost's `max-queues`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterLimits {
    /// Exchanges a client declared; the pre-declared ones do not count.
    pub exchanges_max: usize,
    pub bindings_max: usize,
}

impl RouterLimits {
    pub const UNLIMITED: RouterLimits = RouterLimits {
        exchanges_max: usize::MAX,
        bindings_max: usize::MAX,
    };
}

/// The routing table of one virtual host. Pure state: no I/O, no clock.
#[derive(Debug)]
pub struct Router {
    vhost: Arc<str>,
    limits: RouterLimits,
    /// Bindings held, the default exchange's implicit ones not counted.
    binding_count: usize,
    by_name: BTreeMap<Arc<str>, usize>,
    /// Exchanges by dense id, so that routing can mark visited ones in a flat array.
    slots: Vec<Option<Exchange>>,
    free: Vec<usize>,
    /// Queues that bindings may point at, with the (source, key) pairs pointing at each.
    queues: HashMap<Arc<str>, BTreeSet<Inbound>>,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

impl Router {
    /// The routing table of virtual host `/`.
    pub fn new() -> Self {
        Router::with_vhost("/")
    }

    /// An empty routing table with the default and `amq.*` exchanges declared.
    pub fn with_vhost(vhost: impl Into<Arc<str>>) -> Self {
        let mut router = Router {
            vhost: vhost.into(),
            limits: RouterLimits::UNLIMITED,
            binding_count: 0,
            by_name: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            queues: HashMap::new(),
        };
        for (name, kind, internal) in PREDECLARED {
            let mut def = ExchangeDef::new(name, kind);
            def.durable = true;
            def.internal = internal;
            router.insert_exchange(Exchange::new(def, None));
        }
        router
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Sets the limits new exchanges and bindings are checked against; what the table
    /// already holds stays, even past them.
    pub fn set_limits(&mut self, limits: RouterLimits) {
        self.limits = limits;
    }

    pub fn binding_count(&self) -> usize {
        self.binding_count
    }

    /// Exchanges declared by clients: all but the pre-declared ones.
    pub fn declared_exchange_count(&self) -> usize {
        self.by_name.len().saturating_sub(PREDECLARED.len())
    }

    /// `exchange.declare`: creates the exchange (`Ok(true)`) or checks that the existing
    /// one is equivalent (`Ok(false)`).
    ///
    /// Refused: the default exchange (403); a new name starting with `amq.` (403);
    /// an inequivalent redeclare (406); a non-string `alternate-exchange` (406); a name
    /// over 255 bytes (503).
    pub fn declare_exchange(&mut self, def: ExchangeDef) -> Result<bool, RoutingError> {
        check_not_default(&def.name)?;
        check_length("exchange name", &def.name)?;
        if let Some(existing) = self.exchange(&def.name) {
            existing.check_equivalent(&def, &self.vhost)?;
            return Ok(false);
        }
        if def.name.starts_with("amq.") {
            return Err(RoutingError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                def.name
            )));
        }
        if self.declared_exchange_count() >= self.limits.exchanges_max {
            return Err(RoutingError::PreconditionFailed(format!(
                "cannot declare exchange '{}': exchange limit in vhost '{}' ({}) is reached",
                def.name, self.vhost, self.limits.exchanges_max
            )));
        }
        let alternate = parse_alternate(&def, &self.vhost)?;
        self.insert_exchange(Exchange::new(def, alternate));
        Ok(true)
    }

    /// `exchange.declare` with `passive`: the exchange if it exists.
    pub fn declare_exchange_passive(&self, name: &str) -> Result<&ExchangeDef, RoutingError> {
        check_not_default(name)?;
        self.exchange(name)
            .ok_or_else(|| self.not_found("exchange", name))
    }

    pub fn exchange(&self, name: &str) -> Option<&ExchangeDef> {
        self.lookup(name).map(|x| &x.def)
    }

    /// `exchange.delete`. Deleting a missing exchange succeeds and removes nothing, as in
    /// RabbitMQ 3.x. The exchange's bindings go with it, both ways; an auto-delete
    /// exchange that thereby loses its last binding as source is deleted too.
    ///
    /// Refused: the default exchange and `amq.*` exchanges (403); `DeleteWhen::Unused`
    /// while the exchange is the source of a binding (406).
    pub fn delete_exchange(
        &mut self,
        name: &str,
        when: DeleteWhen,
    ) -> Result<Removed, RoutingError> {
        check_not_default(name)?;
        if name.starts_with("amq.") {
            return Err(RoutingError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.vhost
            )));
        }
        let mut removed = Removed::default();
        let Some(&id) = self.by_name.get(name) else {
            return Ok(removed);
        };
        if when == DeleteWhen::Unused && self.slot(id).is_some_and(|x| !x.outbound.is_empty()) {
            return Err(RoutingError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.vhost
            )));
        }
        let mut candidates = Vec::new();
        self.remove_exchange(id, &mut removed, &mut candidates);
        self.auto_delete(candidates, &mut removed);
        self.binding_count = self.binding_count.saturating_sub(removed.bindings.len());
        Ok(removed)
    }

    /// Makes `name` a queue that bindings may point at and the default exchange routes
    /// to. False when it already was one.
    pub fn add_queue(&mut self, name: Arc<str>) -> bool {
        if self.queues.contains_key(&*name) {
            return false;
        }
        self.queues.insert(name, BTreeSet::new());
        true
    }

    /// Forgets queue `name` and the bindings to it; auto-delete exchanges left without
    /// bindings as source go too. Nothing is removed for an unknown queue.
    pub fn remove_queue(&mut self, name: &str) -> Removed {
        let mut removed = Removed::default();
        let Some((queue, inbound)) = self.queues.remove_entry(name) else {
            return removed;
        };
        let mut candidates = Vec::new();
        for Inbound {
            source,
            routing_key,
        } in inbound
        {
            let pair = (Destination::Queue(queue.clone()), routing_key);
            if let Some(x) = self.lookup_mut(&source) {
                removed.bindings.extend(x.take_pair(&pair));
            }
            candidates.push(source);
        }
        self.auto_delete(candidates, &mut removed);
        self.binding_count = self.binding_count.saturating_sub(removed.bindings.len());
        removed
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    /// `queue.bind` / `exchange.bind`: `Ok(true)` when the binding is new. Binding again
    /// with equal arguments changes nothing and gives `Ok(false)`.
    ///
    /// Refused: the default exchange as source or destination (403); a missing source,
    /// then a missing destination (404); invalid `x-match` on a headers exchange (406); a
    /// key over 255 bytes (503).
    pub fn bind(&mut self, binding: Binding) -> Result<bool, RoutingError> {
        check_length("routing key", &binding.routing_key)?;
        self.check_binding_ends_not_default(&binding)?;
        let source = self
            .lookup(&binding.source)
            .ok_or_else(|| self.not_found("exchange", &binding.source))?;
        if !self.destination_exists(&binding.destination) {
            return Err(self.not_found(binding.destination.kind(), binding.destination.name()));
        }
        if source.def.kind == ExchangeKind::Headers {
            XMatch::validate(&binding.arguments).map_err(RoutingError::PreconditionFailed)?;
        }
        let inbound = Inbound {
            source: binding.source.clone(),
            routing_key: binding.routing_key.clone(),
        };
        let destination = binding.destination.clone();
        let (limit, vhost) = (self.limits.bindings_max, self.vhost.clone());
        let full = self.binding_count >= limit;
        let Some(source) = self.lookup_mut(&inbound.source) else {
            return Ok(false);
        };
        if full && !source.has_binding(&binding) {
            return Err(RoutingError::PreconditionFailed(format!(
                "cannot bind '{}' to {} '{}': binding limit in vhost '{vhost}' ({limit}) is reached",
                binding.source,
                binding.destination.kind(),
                binding.destination.name()
            )));
        }
        let (added, first_of_pair) = source.add_binding(binding);
        if added {
            self.binding_count += 1;
        }
        if first_of_pair && let Some(set) = self.inbound_mut(&destination) {
            set.insert(inbound);
        }
        Ok(added)
    }

    /// `queue.unbind` / `exchange.unbind`. As in RabbitMQ 3.x, unbinding a binding that
    /// does not exist, or whose source or destination does not exist, succeeds and
    /// removes nothing. An auto-delete source left without bindings is deleted.
    ///
    /// Refused: the default exchange as source or destination (403).
    pub fn unbind(&mut self, binding: &Binding) -> Result<Removed, RoutingError> {
        self.check_binding_ends_not_default(binding)?;
        let mut removed = Removed::default();
        if !self.destination_exists(&binding.destination) {
            return Ok(removed);
        }
        let Some(source) = self.lookup_mut(&binding.source) else {
            return Ok(removed);
        };
        let Some((gone, last_of_pair)) = source.remove_binding(binding) else {
            return Ok(removed);
        };
        if last_of_pair {
            let inbound = Inbound {
                source: gone.source.clone(),
                routing_key: gone.routing_key.clone(),
            };
            if let Some(set) = self.inbound_mut(&gone.destination) {
                set.remove(&inbound);
            }
        }
        let source = gone.source.clone();
        removed.bindings.push(gone);
        self.auto_delete(vec![source], &mut removed);
        self.binding_count = self.binding_count.saturating_sub(removed.bindings.len());
        Ok(removed)
    }

    /// Routes a message published to `exchange` with `routing_key` (and `headers`, for
    /// headers exchanges), appending the names of the queues it reaches to `out`, each
    /// once, in name order.
    ///
    /// Exchange-to-exchange bindings are followed, each exchange visited at most once, so
    /// cycles end. An exchange whose own bindings match nothing (no queue and no
    /// exchange) passes the message to its alternate exchange, if that exists; an AE may
    /// have its own AE. The default exchange routes to the queue named by the key.
    ///
    /// Refused: a missing exchange (404); an internal exchange (403); a key over 255
    /// bytes (503).
    ///
    /// Allocates nothing beyond growing `out` once this thread's scratch buffers have
    /// grown; see [`Router::route_with`] to hold the buffers yourself.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&Table>,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), RoutingError> {
        let routed = SCRATCH.try_with(|cell| {
            cell.try_borrow_mut().ok().map(|mut scratch| {
                self.route_with(exchange, routing_key, headers, &mut scratch, out)
            })
        });
        match routed {
            Ok(Some(result)) => result,
            // The thread is exiting, or a caller re-entered: use fresh buffers.
            _ => self.route_with(
                exchange,
                routing_key,
                headers,
                &mut RouteScratch::default(),
                out,
            ),
        }
    }

    /// [`Router::route`] with caller-held buffers.
    pub fn route_with(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&Table>,
        scratch: &mut RouteScratch,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), RoutingError> {
        check_length("routing key", routing_key)?;
        if exchange.is_empty() {
            if let Some((queue, _)) = self.queues.get_key_value(routing_key) {
                out.push(queue.clone());
            }
            return Ok(());
        }
        let start = self
            .by_name
            .get(exchange)
            .copied()
            .ok_or_else(|| self.not_found("exchange", exchange))?;
        if self.slot(start).is_some_and(|x| x.def.internal) {
            return Err(RoutingError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.vhost
            )));
        }
        let first = out.len();
        let RouteScratch {
            exchanges: seen,
            worklist,
            topic,
        } = scratch;
        seen.begin(self.slots.len());
        seen.mark(start);
        worklist.clear();
        worklist.push(start);
        while let Some(id) = worklist.pop() {
            let Some(x) = self.slot(id) else {
                continue;
            };
            let mut matched = false;
            x.matcher.route(routing_key, headers, topic, |destination| {
                matched = true;
                match destination {
                    Destination::Queue(queue) => out.push(queue.clone()),
                    Destination::Exchange(name) => {
                        if let Some(&next) = self.by_name.get(&**name)
                            && seen.mark(next)
                        {
                            worklist.push(next);
                        }
                    }
                }
            });
            if !matched {
                let alternate = x.alternate.as_deref().and_then(|ae| self.by_name.get(ae));
                if let Some(&next) = alternate
                    && seen.mark(next)
                {
                    worklist.push(next);
                }
            }
        }
        sort_dedup_tail(out, first);
        Ok(())
    }

    /// All exchanges, the default one included, in name order.
    pub fn exchanges(&self) -> impl Iterator<Item = &ExchangeDef> {
        self.by_name
            .values()
            .filter_map(|&id| self.slot(id))
            .map(|x| &x.def)
    }

    /// All bindings, by source name, then destination, then key. The default exchange's
    /// implicit bindings are not listed.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.by_name
            .values()
            .filter_map(|&id| self.slot(id))
            .flat_map(|x| x.outbound.values().flatten())
    }

    /// The bindings whose source is `exchange`.
    pub fn bindings_from<'a>(
        &'a self,
        exchange: &str,
    ) -> impl Iterator<Item = &'a Binding> + use<'a> {
        self.lookup(exchange)
            .into_iter()
            .flat_map(|x| x.outbound.values().flatten())
    }

    /// The bindings whose destination is `queue`.
    pub fn bindings_for_queue<'a>(
        &'a self,
        queue: &str,
    ) -> impl Iterator<Item = &'a Binding> + use<'a> {
        self.queues
            .get_key_value(queue)
            .into_iter()
            .flat_map(move |(queue, inbound)| {
                self.pointing_at(Destination::Queue(queue.clone()), inbound)
            })
    }

    /// The bindings whose destination is `exchange`.
    pub fn bindings_to_exchange<'a>(
        &'a self,
        exchange: &str,
    ) -> impl Iterator<Item = &'a Binding> + use<'a> {
        self.lookup(exchange).into_iter().flat_map(move |x| {
            self.pointing_at(Destination::Exchange(x.def.name.clone()), &x.inbound)
        })
    }

    fn pointing_at<'a>(
        &'a self,
        destination: Destination,
        inbound: &'a BTreeSet<Inbound>,
    ) -> impl Iterator<Item = &'a Binding> + use<'a> {
        inbound.iter().flat_map(
            move |Inbound {
                      source,
                      routing_key,
                  }| {
                let pair = (destination.clone(), routing_key.clone());
                self.lookup(source)
                    .and_then(|x| x.outbound.get(&pair))
                    .into_iter()
                    .flatten()
            },
        )
    }

    fn slot(&self, id: usize) -> Option<&Exchange> {
        self.slots.get(id).and_then(Option::as_ref)
    }

    fn lookup(&self, name: &str) -> Option<&Exchange> {
        self.by_name.get(name).and_then(|&id| self.slot(id))
    }

    fn lookup_mut(&mut self, name: &str) -> Option<&mut Exchange> {
        let id = *self.by_name.get(name)?;
        self.slots.get_mut(id).and_then(Option::as_mut)
    }

    fn destination_exists(&self, destination: &Destination) -> bool {
        match destination {
            Destination::Queue(name) => self.queues.contains_key(&**name),
            Destination::Exchange(name) => self.by_name.contains_key(&**name),
        }
    }

    fn inbound_mut(&mut self, destination: &Destination) -> Option<&mut BTreeSet<Inbound>> {
        match destination {
            Destination::Queue(name) => self.queues.get_mut(&**name),
            Destination::Exchange(name) => self.lookup_mut(name).map(|x| &mut x.inbound),
        }
    }

    fn insert_exchange(&mut self, exchange: Exchange) {
        let name = exchange.def.name.clone();
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.slots.get_mut(id) {
                    *slot = Some(exchange);
                }
                id
            }
            None => {
                self.slots.push(Some(exchange));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name, id);
    }

    /// Deletes exchange `id` and every binding from or to it, recording them in `removed`;
    /// the sources of bindings to it go to `candidates` for the auto-delete check.
    fn remove_exchange(
        &mut self,
        id: usize,
        removed: &mut Removed,
        candidates: &mut Vec<Arc<str>>,
    ) {
        let Some(mut x) = self.slots.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.by_name.remove(&*x.def.name);
        self.free.push(id);
        for ((destination, routing_key), bindings) in std::mem::take(&mut x.outbound) {
            let inbound = Inbound {
                source: x.def.name.clone(),
                routing_key,
            };
            // A binding to itself pointed at the slot just emptied: nothing to update.
            if let Some(set) = self.inbound_mut(&destination) {
                set.remove(&inbound);
            }
            removed.bindings.extend(bindings);
        }
        for Inbound {
            source,
            routing_key,
        } in std::mem::take(&mut x.inbound)
        {
            let pair = (Destination::Exchange(x.def.name.clone()), routing_key);
            if let Some(source_x) = self.lookup_mut(&source) {
                removed.bindings.extend(source_x.take_pair(&pair));
                candidates.push(source);
            }
        }
        removed.exchanges.push(x.def);
    }

    /// RabbitMQ's `maybe_auto_delete`, iterated: each candidate that is auto-delete and
    /// no longer the source of any binding is deleted, which may make more candidates.
    fn auto_delete(&mut self, mut candidates: Vec<Arc<str>>, removed: &mut Removed) {
        while let Some(name) = candidates.pop() {
            let Some(&id) = self.by_name.get(&*name) else {
                continue;
            };
            let unused_auto_delete = self
                .slot(id)
                .is_some_and(|x| x.def.auto_delete && x.outbound.is_empty());
            if unused_auto_delete {
                self.remove_exchange(id, removed, &mut candidates);
            }
        }
    }

    fn check_binding_ends_not_default(&self, binding: &Binding) -> Result<(), RoutingError> {
        if let Destination::Exchange(name) = &binding.destination {
            check_not_default(name)?;
        }
        check_not_default(&binding.source)
    }

    fn not_found(&self, kind: &str, name: &str) -> RoutingError {
        RoutingError::NotFound(format!("no {kind} '{name}' in vhost '{}'", self.vhost))
    }
}

fn check_not_default(exchange: &str) -> Result<(), RoutingError> {
    if exchange.is_empty() {
        return Err(RoutingError::AccessRefused(
            "operation not permitted on the default exchange".to_owned(),
        ));
    }
    Ok(())
}

fn check_length(what: &str, value: &str) -> Result<(), RoutingError> {
    if value.len() > ROUTING_KEY_BYTES_MAX {
        return Err(RoutingError::CommandInvalid(format!(
            "{what} of {} bytes is longer than {ROUTING_KEY_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

/// Sorts and de-duplicates `out[first..]` in place, leaving the caller's prefix alone.
fn sort_dedup_tail(out: &mut Vec<Arc<str>>, first: usize) {
    let Some(tail) = out.get_mut(first..) else {
        return;
    };
    tail.sort_unstable();
    let mut kept = 0;
    for read in 0..tail.len() {
        let duplicate = kept > 0 && tail.get(read) == tail.get(kept - 1);
        if !duplicate {
            tail.swap(kept, read);
            kept += 1;
        }
    }
    out.truncate(first + kept);
}

#[cfg(test)]
mod tests;
