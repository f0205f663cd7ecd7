//! Users and their permissions, as RabbitMQ has them: a user logs in with a password
//! (`guest` only from loopback); per virtual host it has three regular expressions that
//! resource names must match to be configured (declared, deleted), written (published to,
//! bound to) or read (consumed from, bound from, purged). A refusal is 403 ACCESS_REFUSED
//! with RabbitMQ's text.
//!
//! Configuration strings (from `amqp.users` and `amqp.permissions`):
//! - users: `name:password` entries separated by commas;
//! - permissions: `user@vhost configure write read` entries separated by semicolons,
//!   each field separated by spaces. With no permissions configured, every user may use
//!   every virtual host fully.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;
use sluice_core::scram::{Credential, DEFAULT_ITERATIONS, Mechanism};

use crate::error::{AmqpError, codes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

/// A user's permissions in one virtual host.
#[derive(Debug)]
pub struct Permissions {
    user: String,
    vhost: String,
    configure: Regex,
    write: Regex,
    read: Regex,
}

impl Permissions {
    pub(crate) fn new(user: &str, vhost: &str, patterns: [&str; 3]) -> Result<Permissions, String> {
        let compile = |p: &str| {
            // RabbitMQ treats an empty pattern as "nothing".
            let p = if p.is_empty() { "^$" } else { p };
            Regex::new(p).map_err(|e| format!("invalid permission pattern {p:?}: {e}"))
        };
        Ok(Permissions {
            user: user.to_string(),
            vhost: vhost.to_string(),
            configure: compile(patterns[0])?,
            write: compile(patterns[1])?,
            read: compile(patterns[2])?,
        })
    }

    /// The pattern for `access` as configured (an empty one reads as `""`).
    pub fn pattern(&self, access: Access) -> String {
        let re = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        match re.as_str() {
            "^$" => String::new(),
            p => p.to_string(),
        }
    }

    /// Whether `name` matches the pattern for `access`.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        match access {
            Access::Configure => self.configure.is_match(name),
            Access::Write => self.write.is_match(name),
            Access::Read => self.read.is_match(name),
        }
    }

    /// `kind` is "queue" or "exchange"; the default exchange is checked as `amq.default`.
    pub fn check(&self, access: Access, kind: &str, name: &str) -> Result<(), AmqpError> {
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let pattern = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        if pattern.is_match(name) {
            return Ok(());
        }
        Err(AmqpError::channel(
            codes::ACCESS_REFUSED,
            format!(
                "ACCESS_REFUSED - access to {kind} '{name}' in vhost '{}' refused for user '{}'",
                self.vhost, self.user
            ),
        ))
    }
}

/// One user's patterns in one virtual host, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The user has no permissions in the virtual host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAccess;

/// A password as RabbitMQ stores it (`rabbit_password_hashing_sha256`): a 4-byte salt
/// and SHA-256 of salt and password, shown as base64 of the two together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash {
    salt: [u8; 4],
    digest: [u8; 32],
}

impl PasswordHash {
    /// A fresh salt and the hash of `password` with it.
    pub fn new(password: &str) -> PasswordHash {
        let mut salt = [0u8; 4];
        if getrandom::getrandom(&mut salt).is_err() {
            // No entropy source: a time-derived salt still differs between users.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            salt = nanos.to_le_bytes();
        }
        PasswordHash::with_salt(salt, password)
    }

    fn with_salt(salt: [u8; 4], password: &str) -> PasswordHash {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(salt);
        h.update(password.as_bytes());
        PasswordHash {
            salt,
            digest: h.finalize().into(),
        }
    }

    /// Reads RabbitMQ's base64 form; `None` if it is not one.
    pub fn parse(encoded: &str) -> Option<PasswordHash> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let (salt, digest) = raw.split_at_checked(4)?;
        Some(PasswordHash {
            salt: salt.try_into().ok()?,
            digest: digest.try_into().ok()?,
        })
    }

    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut raw = self.salt.to_vec();
        raw.extend_from_slice(&self.digest);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    /// Compares every byte, so the time taken does not tell how much matched.
    pub fn matches(&self, password: &str) -> bool {
        let other = PasswordHash::with_salt(self.salt, password);
        self.digest
            .iter()
            .zip(other.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Both SCRAM credentials for `password`.
pub(crate) fn scram_for(password: &str) -> BTreeMap<Mechanism, Credential> {
    Mechanism::ALL
        .into_iter()
        .map(|m| {
            (
                m,
                Credential::from_password(m, password, DEFAULT_ITERATIONS),
            )
        })
        .collect()
}

#[derive(Debug, Clone)]
pub(crate) struct User {
    /// `None`: no password login (RabbitMQ's empty `password_hash`).
    pub(crate) password: Option<PasswordHash>,
    pub(crate) tags: Vec<String>,
    /// Kafka's SCRAM credentials, derived when a password is set (a RabbitMQ hash alone
    /// cannot make them) or given by Kafka's AlterUserScramCredentials.
    pub(crate) scram: BTreeMap<Mechanism, Credential>,
    /// Per virtual host; empty when permissions are not configured at all.
    pub(crate) vhosts: HashMap<String, Arc<Permissions>>,
}

#[derive(Debug, Clone)]
pub struct Users {
    pub(crate) users: HashMap<String, User>,
    /// Whether permissions were given; if not, everyone may do everything.
    pub(crate) restricted: bool,
}

impl Default for Users {
    /// `guest`/`guest` with full access, as a fresh RabbitMQ.
    fn default() -> Self {
        Users::parse("guest:guest", "").unwrap_or(Users {
            users: HashMap::new(),
            restricted: false,
        })
    }
}

impl Users {
    pub fn parse(users: &str, permissions: &str) -> Result<Users, String> {
        let mut out = HashMap::new();
        for entry in users.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, password) = entry
                .split_once(':')
                .ok_or_else(|| format!("user {entry:?}: expected name:password"))?;
            if name.is_empty() {
                return Err(format!("user {entry:?}: empty name"));
            }
            // Users from the configuration administer the broker, as RabbitMQ's default
            // user does.
            out.insert(
                name.to_string(),
                User {
                    password: Some(PasswordHash::new(password)),
                    tags: vec!["administrator".to_string()],
                    scram: scram_for(password),
                    vhosts: HashMap::new(),
                },
            );
        }
        let mut restricted = false;
        for entry in permissions
            .split(';')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            restricted = true;
            let fields: Vec<&str> = entry.split_whitespace().collect();
            let [who, configure, write, read] = fields[..] else {
                return Err(format!(
                    "permission {entry:?}: expected \"user@vhost configure write read\""
                ));
            };
            let (user, vhost) = who
                .split_once('@')
                .ok_or_else(|| format!("permission {entry:?}: expected user@vhost"))?;
            let record = out
                .get_mut(user)
                .ok_or_else(|| format!("permission {entry:?}: unknown user {user:?}"))?;
            record.vhosts.insert(
                vhost.to_string(),
                Arc::new(Permissions::new(user, vhost, [configure, write, read])?),
            );
        }
        Ok(Users {
            users: out,
            restricted,
        })
    }

    /// Whether `user` may log in with `password` from a peer that is (or is not) on
    /// loopback. `guest` may only log in from loopback, as RabbitMQ's `loopback_users`.
    pub fn login(&self, user: &str, password: &str, loopback: bool) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        let same = u.password.as_ref().is_some_and(|h| h.matches(password));
        same && (loopback || user != "guest")
    }

    /// Whether `user` has the `administrator` tag.
    pub fn is_administrator(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.tags.iter().any(|t| t == "administrator"))
    }

    /// The user's SCRAM credential for `mechanism`.
    pub fn scram(&self, user: &str, mechanism: Mechanism) -> Option<Credential> {
        self.users.get(user)?.scram.get(&mechanism).cloned()
    }

    /// Users with SCRAM credentials, sorted, with each mechanism's iterations.
    pub fn scram_users(&self) -> Vec<(String, Vec<(Mechanism, u32)>)> {
        let mut out: Vec<_> = self
            .users
            .iter()
            .filter(|(_, u)| !u.scram.is_empty())
            .map(|(n, u)| {
                let creds = u
                    .scram
                    .values()
                    .map(|c| (c.mechanism, c.iterations))
                    .collect();
                (n.clone(), creds)
            })
            .collect();
        out.sort();
        out
    }

    /// Every user's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.users.keys().cloned().collect();
        out.sort();
        out
    }

    /// Every user's permissions, sorted by user then vhost. Without configured
    /// permissions every user may do everything in each of `vhosts`.
    pub fn grants(&self, vhosts: &[String]) -> Vec<Grant> {
        let mut out = Vec::new();
        for name in self.names() {
            let Some(user) = self.users.get(&name) else {
                continue;
            };
            if !self.restricted {
                for vhost in vhosts {
                    out.push(Grant {
                        user: name.clone(),
                        vhost: vhost.clone(),
                        configure: ".*".into(),
                        write: ".*".into(),
                        read: ".*".into(),
                    });
                }
                continue;
            }
            let mut held: Vec<(&String, &Arc<Permissions>)> = user.vhosts.iter().collect();
            held.sort_by(|a, b| a.0.cmp(b.0));
            for (vhost, p) in held {
                out.push(Grant {
                    user: name.clone(),
                    vhost: vhost.clone(),
                    configure: p.pattern(Access::Configure),
                    write: p.pattern(Access::Write),
                    read: p.pattern(Access::Read),
                });
            }
        }
        out
    }

    /// The user's permissions in `vhost`: `Ok(None)` means unrestricted.
    pub fn vhost_access(
        &self,
        user: &str,
        vhost: &str,
    ) -> Result<Option<Arc<Permissions>>, NoAccess> {
        if !self.restricted {
            return Ok(None);
        }
        self.users
            .get(user)
            .and_then(|u| u.vhosts.get(vhost))
            .cloned()
            .map(Some)
            .ok_or(NoAccess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_and_the_loopback_rule() {
        let users = Users::parse("guest:guest, alice:s3cr:t", "").unwrap();
        assert!(users.login("guest", "guest", true));
        assert!(!users.login("guest", "guest", false));
        assert!(users.login("alice", "s3cr:t", false));
        assert!(!users.login("alice", "s3cr", true));
        assert!(!users.login("bob", "", true));
        assert!(users.vhost_access("alice", "/").unwrap().is_none());
    }

    #[test]
    fn permissions_match_names_like_rabbitmq() {
        let users = Users::parse(
            "guest:guest,alice:pw",
            "alice@/ ^alice-.* ^(alice-.*|amq\\.default)$ .*; guest@/ .* .* .*",
        )
        .unwrap();
        let p = users.vhost_access("alice", "/").unwrap().unwrap();
        assert!(p.check(Access::Configure, "queue", "alice-q").is_ok());
        let Err(AmqpError::Channel { code, text, .. }) =
            p.check(Access::Configure, "queue", "bob-q")
        else {
            panic!("expected a channel error");
        };
        assert_eq!(code, codes::ACCESS_REFUSED);
        assert_eq!(
            text,
            "ACCESS_REFUSED - access to queue 'bob-q' in vhost '/' refused for user 'alice'"
        );
        assert!(p.check(Access::Write, "exchange", "").is_ok());
        assert!(users.vhost_access("alice", "other").is_err());
        assert!(Users::parse("a:b", "a@/ .* .*").is_err());
        assert!(Users::parse("a:b", "nobody@/ .* .* .*").is_err());
        assert!(Users::parse("a:b", "a@/ ( .* .*").is_err());
    }
}
