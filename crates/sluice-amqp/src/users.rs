//! The broker's users and permissions, changeable while it runs (the management API) and
//! kept in `users.json` under the data directory. The configuration's `amqp.users` and
//! `amqp.permissions` seed a broker that has no such file yet; once an operator changes
//! users or permissions, the file is what the broker starts from, as RabbitMQ's default
//! user only applies to a fresh node. Passwords are stored only as RabbitMQ's salted
//! SHA-256 hashes.
//!
//! A snapshot (`Arc<Users>`) is taken per login or permission check; a change builds a
//! new one, writes the file (temporary file, fsync, rename) and swaps it in.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use sluice_core::login_guard::{Face, LoginGuard};
use sluice_core::scram::{Credential, Mechanism};

use crate::auth::{Grant, NoAccess, PasswordHash, Permissions, User, Users, scram_for};

/// RabbitMQ's name of the only hashing this store writes.
pub const HASHING: &str = "rabbit_password_hashing_sha256";

/// What a change was refused for (the management API's 400 reasons).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("tags_not_present")]
    TagsMissing,
    #[error("vhost_or_user_not_found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("cannot store users: {0}")]
    Io(String),
}

#[derive(Debug)]
pub struct UserStore {
    current: RwLock<Arc<Users>>,
    /// Failed logins of every protocol, and the addresses held back for them.
    pub guard: LoginGuard,
    /// Where changes are kept; `None` keeps them in memory only.
    path: Option<PathBuf>,
}

impl Default for UserStore {
    fn default() -> Self {
        UserStore::in_memory(Users::default())
    }
}

impl UserStore {
    pub fn in_memory(users: Users) -> Self {
        UserStore {
            current: RwLock::new(Arc::new(users)),
            guard: LoginGuard::default(),
            path: None,
        }
    }

    /// The store kept at `path`: what the file says if it exists, `seed` otherwise.
    pub fn open(path: &Path, seed: Users) -> Result<UserStore, String> {
        let users = match std::fs::read(path) {
            Ok(bytes) => {
                let users = decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), "users and permissions from the data directory (amqp.users and amqp.permissions seed a fresh one only)");
                users
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => seed,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(UserStore {
            current: RwLock::new(Arc::new(users)),
            guard: LoginGuard::default(),
            path: Some(path.to_path_buf()),
        })
    }

    pub fn snapshot(&self) -> Arc<Users> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn login(&self, user: &str, password: &str, loopback: bool) -> bool {
        self.snapshot().login(user, password, loopback)
    }

    /// A password login over `face` from `peer`, counted and limited by the guard: an
    /// address with too many recent failures is refused without a check.
    pub fn login_from(&self, face: Face, user: &str, password: &str, peer: IpAddr) -> bool {
        if self.guard.throttled(face, peer, user) {
            self.guard.failed(face, peer, user);
            return false;
        }
        let ok = self.login(user, password, peer.is_loopback());
        if !ok {
            self.guard.failed(face, peer, user);
        }
        ok
    }

    pub fn vhost_access(
        &self,
        user: &str,
        vhost: &str,
    ) -> Result<Option<Arc<Permissions>>, NoAccess> {
        self.snapshot().vhost_access(user, vhost)
    }

    pub fn names(&self) -> Vec<String> {
        self.snapshot().names()
    }

    pub fn grants(&self, vhosts: &[String]) -> Vec<Grant> {
        self.snapshot().grants(vhosts)
    }

    /// A user's tags and stored password hash, if the user exists.
    pub fn describe(&self, name: &str) -> Option<(Vec<String>, String)> {
        let users = self.snapshot();
        let u = users.users.get(name)?;
        Some((
            u.tags.clone(),
            u.password
                .as_ref()
                .map_or_else(String::new, PasswordHash::encode),
        ))
    }

    /// Applies `change` to a copy, stores it and makes it current.
    fn change<T>(
        &self,
        vhosts: &[String],
        change: impl FnOnce(&mut Users) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        if !next.restricted {
            // Until now everyone could use every vhost; from the first change on, access
            // is what is granted, so grant what each user had.
            for (name, user) in &mut next.users {
                for vhost in vhosts {
                    let full = Permissions::new(name, vhost, [".*", ".*", ".*"])
                        .map_err(Refusal::Invalid)?;
                    user.vhosts.insert(vhost.clone(), Arc::new(full));
                }
            }
            next.restricted = true;
        }
        let out = change(&mut next)?;
        if let Some(path) = &self.path {
            write_atomically(path, &encode(&next)).map_err(|e| Refusal::Io(e.to_string()))?;
        }
        *guard = Arc::new(next);
        Ok(out)
    }

    /// Creates or replaces user `name`; `Ok(true)` if it was created. `password` is
    /// hashed; `password_hash` is RabbitMQ's stored form; neither (or an empty hash)
    /// means no password login.
    pub fn put_user(
        &self,
        vhosts: &[String],
        name: &str,
        password: Option<&str>,
        password_hash: Option<&str>,
        tags: Vec<String>,
    ) -> Result<bool, Refusal> {
        if name.is_empty() {
            return Err(Refusal::Invalid("user name must not be empty".into()));
        }
        let scram = password.map(scram_for).unwrap_or_default();
        let hash = match (password, password_hash) {
            (Some(p), _) => Some(PasswordHash::new(p)),
            (None, Some("")) => None,
            (None, Some(h)) => Some(
                PasswordHash::parse(h)
                    .ok_or_else(|| Refusal::Invalid("invalid password_hash".into()))?,
            ),
            (None, None) => None,
        };
        self.change(vhosts, |users| {
            let permissions = users
                .users
                .get(name)
                .map(|u| u.vhosts.clone())
                .unwrap_or_default();
            let created = users
                .users
                .insert(
                    name.to_string(),
                    User {
                        password: hash,
                        tags,
                        scram,
                        vhosts: permissions,
                    },
                )
                .is_none();
            Ok(created)
        })
    }

    /// Sets (`Some`) or removes (`None`) `user`'s SCRAM credential for `mechanism`, as
    /// Kafka's AlterUserScramCredentials does. Kafka's users exist by having credentials,
    /// so an unknown user is created, with no password login, no tags and no permissions.
    /// Removing one the user does not have is `NotFound`.
    pub fn set_scram(
        &self,
        vhosts: &[String],
        changes: &[(String, Mechanism, Option<Credential>)],
    ) -> Result<(), Refusal> {
        if changes.is_empty() {
            return Ok(());
        }
        self.change(vhosts, |users| {
            for (user, mechanism, credential) in changes {
                match credential {
                    Some(c) => {
                        let u = users.users.entry(user.clone()).or_insert_with(|| User {
                            password: None,
                            tags: Vec::new(),
                            scram: Default::default(),
                            vhosts: HashMap::new(),
                        });
                        u.scram.insert(*mechanism, c.clone());
                    }
                    None => {
                        let removed = users
                            .users
                            .get_mut(user)
                            .and_then(|u| u.scram.remove(mechanism));
                        if removed.is_none() {
                            return Err(Refusal::NotFound);
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Deletes user `name`; false if there was none.
    pub fn delete_user(&self, vhosts: &[String], name: &str) -> Result<bool, Refusal> {
        if !self.snapshot().users.contains_key(name) {
            return Ok(false);
        }
        self.change(vhosts, |users| Ok(users.users.remove(name).is_some()))
    }

    /// Sets `user`'s permissions in `vhost`; `Ok(true)` if it had none there.
    pub fn set_permissions(
        &self,
        vhosts: &[String],
        user: &str,
        vhost: &str,
        patterns: [&str; 3],
    ) -> Result<bool, Refusal> {
        if !vhosts.iter().any(|v| v == vhost) {
            return Err(Refusal::NotFound);
        }
        let permissions =
            Arc::new(Permissions::new(user, vhost, patterns).map_err(Refusal::Invalid)?);
        self.change(vhosts, |users| {
            let u = users.users.get_mut(user).ok_or(Refusal::NotFound)?;
            Ok(u.vhosts.insert(vhost.to_string(), permissions).is_none())
        })
    }

    /// Removes `user`'s permissions in `vhost`; false if it had none.
    pub fn delete_permissions(
        &self,
        vhosts: &[String],
        user: &str,
        vhost: &str,
    ) -> Result<bool, Refusal> {
        let had = self
            .snapshot()
            .grants(vhosts)
            .iter()
            .any(|g| g.user == user && g.vhost == vhost);
        if !had {
            return Ok(false);
        }
        self.change(vhosts, |users| {
            Ok(users
                .users
                .get_mut(user)
                .is_some_and(|u| u.vhosts.remove(vhost).is_some()))
        })
    }
}

fn encode(users: &Users) -> Vec<u8> {
    let mut names: Vec<&String> = users.users.keys().collect();
    names.sort();
    let list: Vec<Value> = names
        .iter()
        .filter_map(|n| {
            let u = users.users.get(*n)?;
            Some(json!({
                "name": n,
                "password_hash": u.password.as_ref().map_or_else(String::new, PasswordHash::encode),
                "hashing_algorithm": HASHING,
                "tags": u.tags,
                "scram": u.scram.values().map(|c| (c.mechanism.name().to_string(), Value::from(c.encode()))).collect::<serde_json::Map<String, Value>>(),
            }))
        })
        .collect();
    let vhosts: Vec<String> = Vec::new();
    let permissions: Vec<Value> = if users.restricted {
        users
            .grants(&vhosts)
            .into_iter()
            .map(|g| json!({"user": g.user, "vhost": g.vhost, "configure": g.configure, "write": g.write, "read": g.read}))
            .collect()
    } else {
        Vec::new()
    };
    let doc = json!({"users": list, "permissions": permissions, "restricted": users.restricted});
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<Users, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut out: HashMap<String, User> = HashMap::new();
    for u in doc
        .get("users")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = u
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a user without a name")?;
        let hash = u.get("password_hash").and_then(Value::as_str).unwrap_or("");
        let password = if hash.is_empty() {
            None
        } else {
            Some(
                PasswordHash::parse(hash)
                    .ok_or_else(|| format!("user {name}: bad password_hash"))?,
            )
        };
        let tags = u
            .get("tags")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut scram = std::collections::BTreeMap::new();
        for (mech, encoded) in u
            .get("scram")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let m = Mechanism::from_name(mech)
                .ok_or_else(|| format!("user {name}: unknown SCRAM mechanism {mech}"))?;
            let c = encoded
                .as_str()
                .and_then(|e| Credential::decode(m, e))
                .ok_or_else(|| format!("user {name}: bad {mech} credential"))?;
            scram.insert(m, c);
        }
        out.insert(
            name.to_string(),
            User {
                password,
                tags,
                scram,
                vhosts: HashMap::new(),
            },
        );
    }
    for p in doc
        .get("permissions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
        let (user, vhost) = (field("user"), field("vhost"));
        let perms = Permissions::new(
            user,
            vhost,
            [field("configure"), field("write"), field("read")],
        )?;
        if let Some(u) = out.get_mut(user) {
            u.vhosts.insert(vhost.to_string(), Arc::new(perms));
        }
    }
    let restricted = doc
        .get("restricted")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    Ok(Users {
        users: out,
        restricted,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::Access;

    fn vhosts() -> Vec<String> {
        vec!["/".to_string(), "v2".to_string()]
    }

    #[test]
    fn changes_are_hashed_stored_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let store = UserStore::open(&path, Users::parse("guest:guest", "").unwrap()).unwrap();
        assert!(
            store.vhost_access("guest", "v2").unwrap().is_none(),
            "unrestricted at first"
        );
        assert!(
            store
                .put_user(
                    &vhosts(),
                    "alice",
                    Some("s3cret"),
                    None,
                    vec!["management".into()]
                )
                .unwrap()
        );
        assert!(
            !store
                .put_user(&vhosts(), "alice", Some("s3cret"), None, vec![])
                .unwrap()
        );
        assert!(store.login("alice", "s3cret", false));
        assert!(
            store.vhost_access("alice", "/").is_err(),
            "a new user has no access"
        );
        assert!(
            store.vhost_access("guest", "v2").unwrap().is_some(),
            "guest kept full access"
        );
        assert!(
            store
                .set_permissions(&vhosts(), "alice", "/", ["^a-", ".*", ".*"])
                .unwrap()
        );
        assert_eq!(
            store.set_permissions(&vhosts(), "bob", "/", [".*", ".*", ".*"]),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            store.set_permissions(&vhosts(), "alice", "nope", [".*", ".*", ".*"]),
            Err(Refusal::NotFound)
        );
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(!file.contains("s3cret"), "only the hash is stored");

        let again = UserStore::open(&path, Users::parse("guest:other", "").unwrap()).unwrap();
        assert!(again.login("alice", "s3cret", false));
        assert!(
            again.login("guest", "guest", true),
            "the file wins over the seed"
        );
        let p = again.vhost_access("alice", "/").unwrap().unwrap();
        assert!(p.check(Access::Configure, "queue", "a-q").is_ok());
        assert!(p.check(Access::Configure, "queue", "b-q").is_err());
        assert!(again.delete_permissions(&vhosts(), "alice", "/").unwrap());
        assert!(again.vhost_access("alice", "/").is_err());
        assert!(again.delete_user(&vhosts(), "alice").unwrap());
        assert!(!again.delete_user(&vhosts(), "alice").unwrap());
        assert!(!again.login("alice", "s3cret", false));
    }

    #[test]
    fn scram_credentials_come_with_passwords_and_from_kafka_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let store = UserStore::open(&path, Users::parse("guest:guest", "").unwrap()).unwrap();
        assert!(store.snapshot().scram("guest", Mechanism::Sha512).is_some());
        let made = Credential::from_password(Mechanism::Sha256, "k", 8192);
        store
            .set_scram(
                &vhosts(),
                &[("kuser".into(), Mechanism::Sha256, Some(made.clone()))],
            )
            .unwrap();
        assert_eq!(
            store.set_scram(&vhosts(), &[("kuser".into(), Mechanism::Sha512, None)]),
            Err(Refusal::NotFound)
        );
        let again = UserStore::open(&path, Users::default()).unwrap();
        let users = again.snapshot();
        assert_eq!(users.scram("kuser", Mechanism::Sha256), Some(made));
        assert!(
            !users.login("kuser", "k", true),
            "SCRAM only: no password login"
        );
        assert!(
            users.vhost_access("kuser", "/").is_err(),
            "and no permissions"
        );
        assert_eq!(
            users.scram_users()[1],
            ("kuser".to_string(), vec![(Mechanism::Sha256, 8192)])
        );
    }

    #[test]
    fn rabbitmq_s_password_hashes_log_in() {
        // RabbitMQ 3.10.8 stored these for "guest" and for "secret" (its API showed them).
        let guest = "tajXF/HrqCAYhJDAUSf+UAqZ/jI1YvBLSpc9/t1mgAi5gRX2";
        let secret = "1mUgIrx7Vy3wADfnr7Rn3xWpaX0SabgXZ0IK0lriPayZBvXv";
        assert!(PasswordHash::parse(guest).unwrap().matches("guest"));
        let parsed = PasswordHash::parse(secret).unwrap();
        assert!(parsed.matches("secret") && !parsed.matches("Secret"));
        assert_eq!(parsed.encode(), secret);
        let store = UserStore::in_memory(Users::default());
        store
            .put_user(&vhosts(), "imported", None, Some(secret), vec![])
            .unwrap();
        assert!(store.login("imported", "secret", false));
        assert_eq!(
            store.put_user(&vhosts(), "bad", None, Some("not base64!"), vec![]),
            Err(Refusal::Invalid("invalid password_hash".into()))
        );
    }
}
