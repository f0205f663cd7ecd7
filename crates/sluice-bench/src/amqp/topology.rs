//! The queues, exchange and bindings of one run: fresh names, declared before the
//! measured window and deleted after it, whatever happened in between.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use super::options::{Plan, Routing};

#[derive(Debug, Clone)]
pub struct Topology {
    /// Exchange producers publish to ("" for the default exchange).
    pub exchange: ShortString,
    pub queues: Vec<ShortString>,
    /// Routing key that reaches queue i (all the same with fanout).
    pub routing_keys: Vec<ShortString>,
    routing: Routing,
    durable: bool,
    stream: bool,
    bindings: u32,
}

impl Topology {
    /// Names for a run; `prefix` makes them unique on the broker.
    pub fn new(plan: &Plan, prefix: &str) -> Topology {
        let options = &plan.options;
        let queues: Vec<ShortString> = (0..options.queues)
            .map(|i| format!("{prefix}-q{i}").into())
            .collect();
        let (exchange, routing_keys) = match options.routing {
            Routing::Direct => ("".into(), queues.clone()),
            Routing::Fanout => (
                format!("{prefix}-fanout").into(),
                queues.iter().map(|_| "".into()).collect(),
            ),
            Routing::Topic => (
                format!("{prefix}-topic").into(),
                (0..options.queues)
                    .map(|i| format!("bench.q{i}.m").into())
                    .collect(),
            ),
        };
        Topology {
            exchange,
            queues,
            routing_keys,
            routing: options.routing,
            durable: options.durable || options.stream,
            stream: options.stream,
            bindings: options.bindings,
        }
    }

    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let kind = match self.routing {
            Routing::Direct => None,
            Routing::Fanout => Some(ExchangeKind::Fanout),
            Routing::Topic => Some(ExchangeKind::Topic),
        };
        if let Some(kind) = kind {
            let options = ExchangeDeclareOptions {
                durable: self.durable,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(self.exchange.clone(), kind, options, FieldTable::default())
                .await?;
        }
        for (i, queue) in self.queues.iter().enumerate() {
            let options = QueueDeclareOptions {
                durable: self.durable,
                ..QueueDeclareOptions::default()
            };
            let mut arguments = FieldTable::default();
            if self.stream {
                arguments.insert(
                    ShortString::from("x-queue-type"),
                    AMQPValue::LongString(LongString::from("stream")),
                );
            }
            channel
                .queue_declare(queue.clone(), options, arguments)
                .await?;
            let key = match self.routing {
                Routing::Direct => continue,
                Routing::Fanout => String::new(),
                Routing::Topic => format!("bench.q{i}.*"),
            };
            self.bind(channel, queue, key).await?;
        }
        for k in 0..self.bindings {
            let index = k as usize % self.queues.len().max(1);
            if let Some(queue) = self.queues.get(index) {
                self.bind(channel, queue, decoy_pattern(k)).await?;
            }
        }
        Ok(())
    }

    async fn bind(&self, channel: &Channel, queue: &ShortString, key: String) -> lapin::Result<()> {
        channel
            .queue_bind(
                queue.clone(),
                self.exchange.clone(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Deletes the queues (with their bindings) and the exchange, on fresh channels of
    /// `connection` when a failed delete closed the last one. Returns the messages the
    /// broker still held in the queues, and the first error.
    pub async fn delete(&self, connection: &Connection) -> (u64, Option<lapin::Error>) {
        let mut left = 0;
        let mut first_error = None;
        let mut channel: Option<Channel> = None;
        let exchange = (!self.exchange.as_str().is_empty()).then_some(&self.exchange);
        for queue in self.queues.iter().map(Some).chain([None]) {
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                match connection.create_channel().await {
                    Ok(c) => channel = Some(c),
                    Err(error) => {
                        first_error.get_or_insert(error);
                        break;
                    }
                }
            }
            let Some(ch) = channel.as_ref() else { break };
            let result = match (queue, exchange) {
                (Some(queue), _) => ch
                    .queue_delete(queue.clone(), QueueDeleteOptions::default())
                    .await
                    .map(|count| left += u64::from(count)),
                (None, Some(exchange)) => {
                    ch.exchange_delete(exchange.clone(), ExchangeDeleteOptions::default())
                        .await
                }
                (None, None) => Ok(()),
            };
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        (left, first_error)
    }
}

/// The k-th binding pattern that matches no benchmark routing key (`bench.q<i>.m`), in three
/// shapes so that both literal and wildcard branches of a topic router get populated.
pub fn decoy_pattern(k: u32) -> String {
    match k % 3 {
        0 => format!("bench.decoy{k}.*"),
        1 => format!("*.decoy{k}.#"),
        _ => format!("#.decoy{k}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::amqp::Options;

    /// `*` is one word, `#` zero or more: the topic rules every AMQP broker follows.
    fn topic_matches(pattern: &str, key: &str) -> bool {
        fn go(p: &[&str], k: &[&str]) -> bool {
            match (p.first(), k.first()) {
                (None, None) => true,
                (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
                (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
                (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
                _ => false,
            }
        }
        let p: Vec<&str> = pattern.split('.').collect();
        let k: Vec<&str> = key.split('.').collect();
        go(&p, &k)
    }

    #[test]
    fn decoy_bindings_match_no_benchmark_key_and_queue_bindings_match_their_own_key() {
        let options = Options {
            routing: Routing::Topic,
            queues: 3,
            consumers: 3,
            ..Options::default()
        };
        let topology = Topology::new(&options.plan().unwrap(), "t");
        for k in 0..30 {
            for key in &topology.routing_keys {
                assert!(!topic_matches(&decoy_pattern(k), key.as_str()), "{k} {key}");
            }
        }
        for (i, key) in topology.routing_keys.iter().enumerate() {
            for j in 0..3 {
                let pattern = format!("bench.q{j}.*");
                assert_eq!(topic_matches(&pattern, key.as_str()), i == j);
            }
        }
    }

    #[test]
    fn direct_routing_uses_the_default_exchange_and_the_queue_names_as_keys() {
        let topology = Topology::new(&Options::default().plan().unwrap(), "run7");
        assert_eq!(topology.exchange.as_str(), "");
        assert_eq!(topology.queues[0].as_str(), "run7-q0");
        assert_eq!(topology.routing_keys, topology.queues);
    }
}
