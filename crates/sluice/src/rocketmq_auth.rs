//! The RocketMQ face's signatures and permissions: access keys and their secrets come from
//! `rocketmq.credentials` (RocketMQ signs with the secret itself, so it cannot be kept as
//! a hash); each access key is a user of the broker, whose permissions in vhost `/`
//! decide what it may send (write) and receive (read, for the topic and the group).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use sluice_amqp::Broker;
use sluice_amqp::auth::Access;
use sluice_core::login_guard::Face;

#[derive(Debug)]
pub struct RocketAuth {
    pub broker: Arc<Broker>,
    keys: HashMap<String, String>,
}

impl RocketAuth {
    /// From `key:secret` pairs separated by commas; `None` when there are none.
    pub fn parse(broker: Arc<Broker>, credentials: &str) -> Result<Option<RocketAuth>, String> {
        let mut keys = HashMap::new();
        for entry in credentials
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (key, secret) = entry
                .split_once(':')
                .filter(|(k, s)| !k.is_empty() && !s.is_empty())
                .ok_or_else(|| "rocketmq.credentials: expected key:secret entries".to_string())?;
            keys.insert(key.to_string(), secret.to_string());
        }
        Ok((!keys.is_empty()).then_some(RocketAuth { broker, keys }))
    }

    /// Access keys that name no user of the broker (they cannot be allowed anything).
    pub fn unknown_users(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .keys
            .keys()
            .filter(|k| self.broker.users.describe(k).is_none())
            .cloned()
            .collect();
        out.sort();
        out
    }
}

impl sluice_rocketmq::auth::Auth for RocketAuth {
    fn secret(&self, access_key: &str) -> Option<String> {
        self.keys.get(access_key).cloned()
    }

    fn allowed(&self, user: &str, write: bool, name: &str) -> bool {
        let access = if write { Access::Write } else { Access::Read };
        match self.broker.users.vhost_access(user, "/") {
            Err(_) => false,
            Ok(None) => self.broker.users.describe(user).is_some(),
            Ok(Some(p)) => p.allows(access, name),
        }
    }

    fn throttled(&self, peer: Option<IpAddr>, user: &str) -> bool {
        peer.is_some_and(|ip| self.broker.users.guard.throttled(Face::Rocketmq, ip, user))
    }

    fn failed(&self, peer: Option<IpAddr>, user: &str) {
        if let Some(ip) = peer {
            self.broker.users.guard.failed(Face::Rocketmq, ip, user);
        }
    }
}
