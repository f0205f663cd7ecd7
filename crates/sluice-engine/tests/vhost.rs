//! The engine's virtual host on a manual clock: message TTL with dead-lettering, and the
//! delayed exchange ("close the order if unpaid after 30 minutes") firing at the exact
//! simulated time, in memory and across a reopen of durable storage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_core::{ManualClock, Message, Table};
use sluice_engine::queue::{DeathReason, Limits};
use sluice_engine::routing::{Binding, Destination, ExchangeDef, ExchangeKind};
use sluice_engine::store::LogConfig;
use sluice_engine::stream::Partition;
use sluice_engine::vhost::{Definitions, Face, QueueDef, QueueRecord, QueueSettings, VHost};

const T0: i64 = 1_700_000_000_000;
const THIRTY_MINUTES: i64 = 30 * 60 * 1000;

/// A face with no encoding of its own: dead letters keep their properties, definitions
/// files live in memory (shared by every vhost opened on this face).
#[derive(Debug, Default)]
struct PlainFace {
    files: Mutex<HashMap<PathBuf, Definitions>>,
    /// Queue records as the journal names them: by their index here.
    records: Mutex<Vec<QueueRecord>>,
}

impl Face for PlainFace {
    fn headers(&self, _: &Message) -> Option<Table> {
        None
    }

    fn dead_lettered(
        &self,
        message: &Message,
        _queue: &str,
        _reason: DeathReason,
        exchange: &str,
        key: &str,
    ) -> Option<Message> {
        Some(Message {
            exchange: exchange.into(),
            routing_key: key.into(),
            ..message.clone()
        })
    }

    fn append_to_stream(&self, _: &Partition, _: &Message, _: i64) -> bool {
        false
    }

    fn queue_settings(&self, _: &Table, _: bool) -> QueueSettings {
        QueueSettings::default()
    }

    fn load_definitions(&self, path: &Path) -> std::io::Result<Definitions> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        Ok(files.get(path).cloned().unwrap_or_default())
    }

    fn save_definitions(&self, definitions: &Definitions, path: &Path) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.insert(path.to_path_buf(), definitions.clone());
        Ok(())
    }

    fn encode_queue(&self, record: &QueueRecord) -> Vec<u8> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.push(record.clone());
        (records.len() as u64 - 1).to_le_bytes().to_vec()
    }

    fn decode_queue(&self, bytes: &[u8]) -> Option<QueueRecord> {
        let index = u64::from_le_bytes(bytes.try_into().ok()?);
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.get(usize::try_from(index).ok()?).cloned()
    }
}

fn message(exchange: &str, key: &str, body: &'static [u8], persistent: bool) -> Arc<Message> {
    Arc::new(Message {
        exchange: exchange.into(),
        routing_key: key.into(),
        properties: Bytes::new(),
        body: Bytes::from_static(body),
        persistent,
        priority: 0,
        expiration_ms: None,
    })
}

fn queue_def(durable: bool, settings: QueueSettings) -> QueueDef {
    QueueDef {
        durable,
        exclusive_owner: None,
        auto_delete: false,
        arguments: Table::new(),
        settings,
    }
}

fn ready(vhost: &VHost, queue: &str) -> u32 {
    vhost.queue(queue).map_or(0, |q| q.counts().0)
}

/// A direct exchange `orders` that delays, bound to queue `closing` by key `close`.
fn orders_topology(vhost: &VHost, durable: bool) {
    vhost
        .router_mut()
        .declare_exchange(ExchangeDef {
            name: "orders".into(),
            kind: ExchangeKind::Direct,
            durable,
            auto_delete: false,
            internal: false,
            arguments: Table::new(),
        })
        .expect("declare exchange");
    vhost
        .declare_delayed("orders", durable)
        .expect("delay store");
    vhost
        .declare_queue(
            "closing".into(),
            queue_def(durable, QueueSettings::default()),
        )
        .expect("declare queue");
    vhost
        .router_mut()
        .bind(Binding::new(
            "orders",
            Destination::Queue("closing".into()),
            "close",
        ))
        .expect("bind");
}

#[test]
fn message_ttl_dead_letters_at_the_simulated_expiry() {
    let clock = ManualClock::new(T0);
    let vhost = VHost::new("/", Arc::new(PlainFace::default()), Arc::new(clock.clone()));
    let work = QueueSettings {
        limits: Limits {
            message_ttl_ms: Some(1_000),
            ..Limits::default()
        },
        dead_letter_exchange: Some("".into()),
        dead_letter_routing_key: Some("dead".into()),
        ..QueueSettings::default()
    };
    let (queue, _) = vhost
        .declare_queue("work".into(), queue_def(false, work))
        .expect("declare");
    vhost
        .declare_queue("dead".into(), queue_def(false, QueueSettings::default()))
        .expect("declare");
    queue.publish(message("", "work", b"job", false), None);

    clock.advance_ms(999);
    vhost.expire_due();
    assert_eq!((ready(&vhost, "work"), ready(&vhost, "dead")), (1, 0));

    clock.advance_ms(1);
    vhost.expire_due();
    assert_eq!((ready(&vhost, "work"), ready(&vhost, "dead")), (0, 1));
    let (entry, _) = vhost
        .queue("dead")
        .and_then(|q| q.get(true))
        .expect("dead letter");
    assert_eq!(&entry.message.body[..], b"job");
}

#[test]
fn a_delayed_message_is_routed_when_due_and_not_before() {
    let clock = ManualClock::new(T0);
    let vhost = VHost::new("/", Arc::new(PlainFace::default()), Arc::new(clock.clone()));
    orders_topology(&vhost, false);
    assert!(vhost.is_delayed("orders"));
    let taken = vhost.publish_delayed(
        message("orders", "close", b"order-1", false),
        THIRTY_MINUTES,
        None,
    );
    assert_eq!(taken, Some(false), "no confirm to wait for");
    // A later order with a shorter delay comes out first.
    vhost.publish_delayed(message("orders", "close", b"order-2", false), 1_000, None);
    // The store is not a queue routing can reach.
    assert_eq!(ready(&vhost, "closing"), 0);

    clock.advance_ms(1_000);
    vhost.expire_due();
    assert_eq!(ready(&vhost, "closing"), 1);
    let first = vhost
        .queue("closing")
        .and_then(|q| q.get(true))
        .expect("order-2");
    assert_eq!(&first.0.message.body[..], b"order-2");

    clock.set_ms(T0 + THIRTY_MINUTES - 1);
    vhost.expire_due();
    assert_eq!(ready(&vhost, "closing"), 0, "one millisecond early");

    clock.set_ms(T0 + THIRTY_MINUTES);
    vhost.expire_due();
    let due = vhost
        .queue("closing")
        .and_then(|q| q.get(true))
        .expect("order-1");
    assert_eq!(&due.0.message.body[..], b"order-1");
    assert_eq!(
        due.0.message.exchange.as_ref(),
        "orders",
        "routed as published"
    );

    vhost.delete_delayed("orders");
    assert!(!vhost.is_delayed("orders"));
    assert_eq!(
        vhost.publish_delayed(message("orders", "close", b"x", false), 1, None),
        None
    );
}

#[test]
fn durable_delayed_messages_survive_a_reopen_and_fire_on_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let face = Arc::new(PlainFace::default());
    let clock = ManualClock::new(T0);
    let open = |clock: &ManualClock| {
        VHost::open(
            "/",
            dir.path(),
            LogConfig::default(),
            Arc::clone(&face) as Arc<dyn Face>,
            Arc::new(clock.clone()),
        )
        .expect("open vhost")
    };
    {
        let vhost = open(&clock);
        orders_topology(&vhost, true);
        vhost.publish_delayed(
            message("orders", "close", b"order-1", true),
            THIRTY_MINUTES,
            None,
        );
        vhost.save_definitions();
        // Synced and closed, as a clean shutdown does.
        vhost.close_journal();
    }
    clock.advance_ms(THIRTY_MINUTES - 1);
    let vhost = open(&clock);
    vhost.expire_due();
    assert_eq!(ready(&vhost, "closing"), 0);
    assert!(vhost.is_delayed("orders"), "the delay store is restored");

    clock.advance_ms(1);
    vhost.expire_due();
    let due = vhost
        .queue("closing")
        .and_then(|q| q.get(true))
        .expect("order-1");
    assert_eq!(&due.0.message.body[..], b"order-1");
}
