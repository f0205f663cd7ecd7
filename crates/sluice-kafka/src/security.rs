//! Authentication and authorization for the Kafka face. The users, their credentials and
//! their permissions live outside this crate (the broker's one user model, shared with
//! AMQP); this module names what Kafka asks of them (`Security`) and runs the SASL
//! exchanges (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`) of a connection.
//!
//! A listener's security protocol decides whether clients authenticate: on `PLAINTEXT`
//! and `SSL` listeners every request runs as the anonymous principal, which may do
//! everything, as an Apache Kafka broker without an authorizer allows. On `SASL_*`
//! listeners only ApiVersions, SaslHandshake and SaslAuthenticate are answered until the
//! client has authenticated, and every request is then checked against the user's
//! permissions.

use std::fmt::Debug;
use std::time::Instant;

use sluice_core::scram::{self, Credential, Mechanism};

/// What a request does, as Kafka's ACL operations name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
}

/// What a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    /// A producer's `transactional.id`.
    TransactionalId(&'a str),
    Cluster,
}

/// A Kafka ACL binding as the ACL APIs carry it (numbers are Kafka's wire values).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acl {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission_type: i8,
}

/// Kafka's wire values for the ACL fields used here.
pub mod acl {
    pub const RESOURCE_ANY: i8 = 1;
    pub const RESOURCE_TOPIC: i8 = 2;
    pub const RESOURCE_GROUP: i8 = 3;
    pub const RESOURCE_CLUSTER: i8 = 4;
    pub const PATTERN_ANY: i8 = 1;
    pub const PATTERN_MATCH: i8 = 2;
    pub const PATTERN_LITERAL: i8 = 3;
    pub const PATTERN_PREFIXED: i8 = 4;
    pub const OP_ANY: i8 = 1;
    pub const OP_ALL: i8 = 2;
    pub const OP_READ: i8 = 3;
    pub const OP_WRITE: i8 = 4;
    pub const OP_CREATE: i8 = 5;
    pub const OP_DELETE: i8 = 6;
    pub const OP_ALTER: i8 = 7;
    pub const OP_DESCRIBE: i8 = 8;
    pub const OP_CLUSTER_ACTION: i8 = 9;
    pub const OP_DESCRIBE_CONFIGS: i8 = 10;
    pub const OP_ALTER_CONFIGS: i8 = 11;
    pub const OP_IDEMPOTENT_WRITE: i8 = 12;
    pub const PERMISSION_ANY: i8 = 1;
    pub const PERMISSION_DENY: i8 = 2;
    pub const PERMISSION_ALLOW: i8 = 3;
}

/// The broker's users as the Kafka face needs them.
pub trait Security: Send + Sync + Debug {
    /// Whether `user` logs in with `password` (SASL/PLAIN).
    fn login(&self, user: &str, password: &str, loopback: bool) -> bool;
    /// The user's SCRAM credential for `mechanism`.
    fn scram(&self, user: &str, mechanism: Mechanism) -> Option<Credential>;
    /// Whether authenticated `user` may do `operation` on `resource`.
    fn allowed(&self, user: &str, operation: Operation, resource: Resource<'_>) -> bool;
    /// Users with SCRAM credentials and each one's mechanisms and iterations.
    fn scram_users(&self) -> Vec<(String, Vec<(Mechanism, u32)>)>;
    /// Sets or removes SCRAM credentials, all or none; the error is Kafka's code and text.
    fn set_scram(
        &self,
        changes: &[(String, Mechanism, Option<Credential>)],
    ) -> Result<(), (i16, String)>;
    /// Every ACL the permissions amount to.
    fn acls(&self) -> Vec<Acl>;
    /// Grants `acls`, all or none; the error is Kafka's code and text.
    fn create_acls(&self, acls: &[Acl]) -> Result<(), (i16, String)>;
    /// Revokes `acls` (as `acls()` listed them).
    fn delete_acls(&self, acls: &[Acl]) -> Result<(), (i16, String)>;
    /// Counts a failed login of `user` from `peer` and says how long to hold the answer
    /// back.
    fn failed_login(&self, peer: std::net::IpAddr, user: &str) -> std::time::Duration;
    /// Whether `user`'s logins from `peer` are, for now, refused for failing too often.
    fn throttled(&self, peer: std::net::IpAddr, user: &str) -> bool;
}

/// No users: everything is allowed and nobody can log in (a broker without SASL).
#[derive(Debug, Default)]
pub struct Open;

impl Security for Open {
    fn login(&self, _: &str, _: &str, _: bool) -> bool {
        false
    }
    fn scram(&self, _: &str, _: Mechanism) -> Option<Credential> {
        None
    }
    fn allowed(&self, _: &str, _: Operation, _: Resource<'_>) -> bool {
        true
    }
    fn scram_users(&self) -> Vec<(String, Vec<(Mechanism, u32)>)> {
        Vec::new()
    }
    fn set_scram(
        &self,
        _: &[(String, Mechanism, Option<Credential>)],
    ) -> Result<(), (i16, String)> {
        Err((
            crate::codes::SECURITY_DISABLED,
            "No users are configured".into(),
        ))
    }
    fn acls(&self) -> Vec<Acl> {
        Vec::new()
    }
    fn create_acls(&self, _: &[Acl]) -> Result<(), (i16, String)> {
        Err((
            crate::codes::SECURITY_DISABLED,
            "No authorizer is configured".into(),
        ))
    }
    fn delete_acls(&self, _: &[Acl]) -> Result<(), (i16, String)> {
        Err((
            crate::codes::SECURITY_DISABLED,
            "No authorizer is configured".into(),
        ))
    }
    fn failed_login(&self, _: std::net::IpAddr, _: &str) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    fn throttled(&self, _: std::net::IpAddr, _: &str) -> bool {
        false
    }
}

/// A listener's security protocol (`listener.security.protocol.map`'s values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Some(Protocol::Plaintext),
            "SSL" => Some(Protocol::Ssl),
            "SASL_PLAINTEXT" => Some(Protocol::SaslPlaintext),
            "SASL_SSL" => Some(Protocol::SaslSsl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    pub fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// The SASL mechanisms offered, in the order SaslHandshake lists them.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Where a connection is in authenticating.
#[derive(Debug, Default)]
pub enum Sasl {
    /// No authentication on this listener: the anonymous principal.
    #[default]
    Anonymous,
    /// Waiting for SaslHandshake.
    Start,
    /// A mechanism was chosen; waiting for its first SaslAuthenticate.
    Chosen(&'static str),
    /// SCRAM's first round is done.
    ScramFinal(Box<scram::Pending>),
    /// Authenticated as `user`, until `expires` (KIP-368) if set.
    Done {
        user: String,
        expires: Option<Instant>,
    },
}

impl Sasl {
    /// The principal requests run as, once authenticated.
    pub fn principal(&self) -> Option<&str> {
        match self {
            Sasl::Anonymous => Some(ANONYMOUS),
            Sasl::Done { user, .. } => Some(user),
            _ => None,
        }
    }

    /// The user authenticated before, during a re-authentication.
    pub fn previous_user(&self) -> Option<&str> {
        match self {
            Sasl::Done { user, .. } => Some(user),
            _ => None,
        }
    }
}

/// Kafka's principal for connections that did not authenticate.
pub const ANONYMOUS: &str = "ANONYMOUS";

/// SASL/PLAIN's one message: `authzid NUL authcid NUL password`.
pub fn parse_plain(bytes: &[u8]) -> Option<(String, String)> {
    let mut parts = bytes.split(|b| *b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        assert_eq!(
            parse_plain(b"\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"bob\0alice\0pw"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
        assert_eq!(parse_plain(b"\0alice"), None);
        assert_eq!(parse_plain(b"\0a\0b\0c"), None);
    }
}

/// A request's principal and the permissions to check it against.
#[derive(Clone, Copy)]
pub struct Authz<'a> {
    security: &'a dyn Security,
    /// `None`: the anonymous principal of a listener without SASL, allowed everything.
    user: Option<&'a str>,
}

impl<'a> Authz<'a> {
    pub fn new(security: &'a dyn Security, sasl: &'a Sasl) -> Authz<'a> {
        let user = match sasl {
            Sasl::Done { user, .. } => Some(user.as_str()),
            _ => None,
        };
        Authz { security, user }
    }

    /// Everything allowed (tests, and listeners without SASL).
    pub fn anonymous(security: &'a dyn Security) -> Authz<'a> {
        Authz {
            security,
            user: None,
        }
    }

    pub fn allows(&self, operation: Operation, resource: Resource<'_>) -> bool {
        match self.user {
            None => true,
            Some(user) => self.security.allowed(user, operation, resource),
        }
    }

    /// The authenticated user, `None` for the anonymous principal.
    pub fn user(&self) -> Option<&'a str> {
        self.user
    }

    /// Whether the request comes over a listener without SASL.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none()
    }

    /// Describe is implied by any access to the resource, as in Kafka.
    pub fn describes(&self, resource: Resource<'_>) -> bool {
        self.allows(Operation::Describe, resource)
    }
}

/// An `Authz` that can move to a blocking thread.
#[derive(Debug, Clone)]
pub struct OwnedAuthz {
    security: std::sync::Arc<dyn Security>,
    user: Option<String>,
}

impl OwnedAuthz {
    pub fn new(security: &std::sync::Arc<dyn Security>, authz: Authz<'_>) -> OwnedAuthz {
        OwnedAuthz {
            security: std::sync::Arc::clone(security),
            user: authz.user.map(str::to_string),
        }
    }

    pub fn get(&self) -> Authz<'_> {
        Authz {
            security: &*self.security,
            user: self.user.as_deref(),
        }
    }
}
