//! The Kafka face's users are the broker's users (`sluice_amqp::users`): the same
//! passwords log in with SASL/PLAIN, the SCRAM credentials made with them (or set by
//! Kafka's admin API) log in with SCRAM, and the same permissions authorize. Kafka's
//! topics and groups are names in vhost `/`, checked against the user's three patterns:
//!
//! | Kafka operation | pattern |
//! |---|---|
//! | Read (topic, group) | read |
//! | Write (topic) | write |
//! | Create, Delete, Alter, AlterConfigs | configure |
//! | Describe, DescribeConfigs | any of the three |
//! | cluster Describe | every user |
//! | other cluster operations (ACLs, SCRAM credentials, broker configs) | `administrator` tag |
//!
//! ACLs are a view of those patterns. Each pattern is read as alternatives separated by
//! `|`: `.*` is the literal ACL `*`, `^name$` a literal name and `^name` a prefix; other
//! alternatives (regular expressions written through AMQP's tools) have no ACL form and
//! are not listed. CreateAcls adds an alternative, DeleteAcls removes one. A pattern
//! covers topics and groups alike, so an ACL shows for both resource types and removing
//! it for one removes it for the other; the four configure operations share one
//! alternative the same way. Only ALLOW ACLs for host `*` exist: permissions grant,
//! nothing denies.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_amqp::Broker;
use sluice_amqp::auth::Access;
use sluice_core::login_guard::Face;
use sluice_core::scram::{Credential, Mechanism};
use sluice_kafka::codes;
use sluice_kafka::security::{Acl, Operation, Resource, Security, acl};

/// Kafka's topics and groups live in this vhost.
const VHOST: &str = "/";
/// Kafka's `connection.failed.authentication.delay.ms` default.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(100);
/// The cluster's resource name in ACLs.
const CLUSTER: &str = "kafka-cluster";

#[derive(Debug)]
pub struct UserModel {
    pub broker: Arc<Broker>,
}

fn access_of(op: Operation) -> Option<Access> {
    match op {
        Operation::Read => Some(Access::Read),
        Operation::Write => Some(Access::Write),
        Operation::Create | Operation::Delete | Operation::Alter | Operation::AlterConfigs => {
            Some(Access::Configure)
        }
        Operation::Describe | Operation::DescribeConfigs => None,
    }
}

/// A pattern's alternatives: splits on `|` outside groups, classes and escapes.
fn alternatives(pattern: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut class, mut escaped, mut start) = (0i32, false, false, 0usize);
    for (i, c) in pattern.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' if !class => class = true,
            ']' if class => class = false,
            '(' if !class => depth += 1,
            ')' if !class => depth -= 1,
            '|' if !class && depth == 0 => {
                out.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&pattern[start..]);
    out.retain(|a| !a.is_empty());
    out
}

/// The text of a regular expression that matches only itself, if it is one.
fn literal(re: &str) -> Option<String> {
    let mut out = String::with_capacity(re.len());
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next()?;
                if next.is_alphanumeric() {
                    return None;
                }
                out.push(next);
            }
            '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => {
                return None;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// An alternative as (resource name, pattern type), if it has an ACL form.
fn as_acl(alternative: &str) -> Option<(String, i8)> {
    if alternative == ".*" || alternative == "^.*$" || alternative == "^.*" {
        return Some(("*".into(), acl::PATTERN_LITERAL));
    }
    let body = alternative.strip_prefix('^')?;
    if let Some(exact) = body.strip_suffix('$')
        && !exact.ends_with('\\')
    {
        return literal(exact).map(|n| (n, acl::PATTERN_LITERAL));
    }
    let prefix = body.strip_suffix(".*").unwrap_or(body);
    literal(prefix).map(|n| (n, acl::PATTERN_PREFIXED))
}

/// The alternative that grants an ACL's resource pattern.
fn alternative_for(name: &str, pattern_type: i8) -> String {
    match (name, pattern_type) {
        ("*", acl::PATTERN_LITERAL) => ".*".into(),
        (n, acl::PATTERN_PREFIXED) => format!("^{}", regex::escape(n)),
        (n, _) => format!("^{}$", regex::escape(n)),
    }
}

/// The pattern for `access` among configure, write and read.
fn slot(patterns: &mut [String; 3], access: Access) -> &mut String {
    let [configure, write, read] = patterns;
    match access {
        Access::Configure => configure,
        Access::Write => write,
        Access::Read => read,
    }
}

/// The Kafka operations one pattern grants on one resource type.
fn operations(access: Access, resource_type: i8) -> &'static [i8] {
    match (access, resource_type) {
        (Access::Read, _) => &[acl::OP_READ],
        (Access::Write, acl::RESOURCE_TOPIC) => &[acl::OP_WRITE],
        (Access::Write, _) => &[],
        (Access::Configure, acl::RESOURCE_TOPIC) => &[
            acl::OP_CREATE,
            acl::OP_DELETE,
            acl::OP_ALTER,
            acl::OP_ALTER_CONFIGS,
        ],
        (Access::Configure, _) => &[acl::OP_DELETE],
    }
}

fn invalid(text: impl Into<String>) -> (i16, String) {
    (codes::INVALID_REQUEST, text.into())
}

impl UserModel {
    fn vhosts(&self) -> Vec<String> {
        self.broker
            .vhosts()
            .iter()
            .map(|v| v.name.clone())
            .collect()
    }

    /// The user's three patterns in vhost `/` (`""` for none).
    fn patterns(&self, user: &str) -> [String; 3] {
        let users = self.broker.users.snapshot();
        match users.vhost_access(user, VHOST) {
            Ok(None) => [".*".into(), ".*".into(), ".*".into()],
            Ok(Some(p)) => [
                p.pattern(Access::Configure),
                p.pattern(Access::Write),
                p.pattern(Access::Read),
            ],
            Err(_) => Default::default(),
        }
    }

    fn store(&self, user: &str, patterns: &[String; 3]) -> Result<(), (i16, String)> {
        self.broker
            .users
            .set_permissions(
                &self.vhosts(),
                user,
                VHOST,
                [&patterns[0], &patterns[1], &patterns[2]],
            )
            .map(|_| ())
            .map_err(|e| (codes::UNKNOWN_SERVER_ERROR, e.to_string()))
    }

    /// Which patterns an ACL's operation is granted by; `Ok(None)` if it needs none.
    fn accesses(&self, a: &Acl) -> Result<Option<Vec<Access>>, (i16, String)> {
        if a.resource_type == acl::RESOURCE_CLUSTER {
            return match a.operation {
                acl::OP_DESCRIBE | acl::OP_IDEMPOTENT_WRITE => Ok(None),
                _ => Err(invalid(
                    "cluster operations follow the user's administrator tag: set it with the management API or `sluice admin user`",
                )),
            };
        }
        if !matches!(a.resource_type, acl::RESOURCE_TOPIC | acl::RESOURCE_GROUP) {
            return Err(invalid(
                "only TOPIC, GROUP and CLUSTER resources have permissions",
            ));
        }
        let out = match a.operation {
            acl::OP_READ => vec![Access::Read],
            acl::OP_WRITE if a.resource_type == acl::RESOURCE_TOPIC => vec![Access::Write],
            acl::OP_CREATE | acl::OP_DELETE | acl::OP_ALTER | acl::OP_ALTER_CONFIGS => {
                vec![Access::Configure]
            }
            acl::OP_ALL => vec![Access::Configure, Access::Write, Access::Read],
            acl::OP_DESCRIBE | acl::OP_DESCRIBE_CONFIGS => return Ok(None),
            _ => return Err(invalid("this operation has no permission on the resource")),
        };
        Ok(Some(out))
    }
}

impl Security for UserModel {
    fn login(&self, user: &str, password: &str, loopback: bool) -> bool {
        self.broker.users.login(user, password, loopback)
    }

    fn scram(&self, user: &str, mechanism: Mechanism) -> Option<Credential> {
        self.broker.users.snapshot().scram(user, mechanism)
    }

    fn allowed(&self, user: &str, operation: Operation, resource: Resource<'_>) -> bool {
        let users = self.broker.users.snapshot();
        let name = match resource {
            Resource::Cluster => {
                return matches!(operation, Operation::Describe | Operation::DescribeConfigs)
                    || users.is_administrator(user);
            }
            Resource::Topic(n) | Resource::Group(n) | Resource::TransactionalId(n) => n,
        };
        match users.vhost_access(user, VHOST) {
            Err(_) => false,
            Ok(None) => true,
            Ok(Some(p)) => match access_of(operation) {
                Some(access) => p.allows(access, name),
                None => [Access::Configure, Access::Write, Access::Read]
                    .into_iter()
                    .any(|a| p.allows(a, name)),
            },
        }
    }

    fn scram_users(&self) -> Vec<(String, Vec<(Mechanism, u32)>)> {
        self.broker.users.snapshot().scram_users()
    }

    fn set_scram(
        &self,
        changes: &[(String, Mechanism, Option<Credential>)],
    ) -> Result<(), (i16, String)> {
        self.broker
            .users
            .set_scram(&self.vhosts(), changes)
            .map_err(|e| match e {
                sluice_amqp::users::Refusal::NotFound => (
                    codes::RESOURCE_NOT_FOUND,
                    "Attempt to delete a user credential that does not exist".into(),
                ),
                other => (codes::UNKNOWN_SERVER_ERROR, other.to_string()),
            })
    }

    fn acls(&self) -> Vec<Acl> {
        let users = self.broker.users.snapshot();
        let mut out = Vec::new();
        let allow = |resource_type, name: &str, pattern_type, user: &str, operation| Acl {
            resource_type,
            resource_name: name.to_string(),
            pattern_type,
            principal: format!("User:{user}"),
            host: "*".into(),
            operation,
            permission_type: acl::PERMISSION_ALLOW,
        };
        for user in users.names() {
            if users.is_administrator(&user) {
                out.push(allow(
                    acl::RESOURCE_CLUSTER,
                    CLUSTER,
                    acl::PATTERN_LITERAL,
                    &user,
                    acl::OP_ALL,
                ));
            }
            let mut patterns = self.patterns(&user);
            for access in [Access::Configure, Access::Write, Access::Read] {
                for alt in alternatives(slot(&mut patterns, access)) {
                    let Some((name, pattern_type)) = as_acl(alt) else {
                        continue;
                    };
                    for resource_type in [acl::RESOURCE_TOPIC, acl::RESOURCE_GROUP] {
                        for op in operations(access, resource_type) {
                            out.push(allow(resource_type, &name, pattern_type, &user, *op));
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn create_acls(&self, acls: &[Acl]) -> Result<(), (i16, String)> {
        for a in acls {
            if a.permission_type != acl::PERMISSION_ALLOW {
                return Err(invalid(
                    "only ALLOW ACLs exist here: permissions grant, nothing denies",
                ));
            }
            if a.host != "*" {
                return Err(invalid("ACLs apply to every host (*)"));
            }
            if !matches!(a.pattern_type, acl::PATTERN_LITERAL | acl::PATTERN_PREFIXED) {
                return Err(invalid("the pattern type must be LITERAL or PREFIXED"));
            }
            let Some(user) = a.principal.strip_prefix("User:") else {
                return Err(invalid("the principal must be User:<name>"));
            };
            let Some(accesses) = self.accesses(a)? else {
                // Describe is implied by any other grant on the resource.
                continue;
            };
            if self.broker.users.describe(user).is_none()
                && self
                    .broker
                    .users
                    .snapshot()
                    .scram(user, Mechanism::Sha512)
                    .is_none()
            {
                return Err(invalid(format!("there is no user {user}: create it first")));
            }
            let mut patterns = self.patterns(user);
            let wanted = alternative_for(&a.resource_name, a.pattern_type);
            for access in accesses {
                let p = slot(&mut patterns, access);
                if !alternatives(p).contains(&wanted.as_str()) {
                    *p = if p.is_empty() {
                        wanted.clone()
                    } else {
                        format!("{p}|{wanted}")
                    };
                }
            }
            self.store(user, &patterns)?;
        }
        Ok(())
    }

    fn delete_acls(&self, acls: &[Acl]) -> Result<(), (i16, String)> {
        for a in acls {
            let Some(user) = a.principal.strip_prefix("User:") else {
                continue;
            };
            let Ok(Some(accesses)) = self.accesses(a) else {
                // Cluster ACLs are the administrator tag: not changed here.
                continue;
            };
            let mut patterns = self.patterns(user);
            let doomed = alternative_for(&a.resource_name, a.pattern_type);
            for access in accesses {
                let p = slot(&mut patterns, access);
                let kept: Vec<&str> = alternatives(p)
                    .into_iter()
                    .filter(|alt| as_acl(alt) != as_acl(&doomed))
                    .collect();
                *p = kept.join("|");
            }
            self.store(user, &patterns)?;
        }
        Ok(())
    }

    fn failed_login(&self, peer: IpAddr, user: &str) -> Duration {
        self.broker.users.guard.failed(Face::Kafka, peer, user);
        FAILED_LOGIN_DELAY
    }

    fn throttled(&self, peer: IpAddr, user: &str) -> bool {
        self.broker.users.guard.throttled(Face::Kafka, peer, user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_read_as_acls_and_back() {
        assert_eq!(
            alternatives("^a$|^(b|c)$|[|]"),
            vec!["^a$", "^(b|c)$", "[|]"]
        );
        assert_eq!(as_acl(".*"), Some(("*".into(), acl::PATTERN_LITERAL)));
        assert_eq!(
            as_acl("^orders\\.eu$"),
            Some(("orders.eu".into(), acl::PATTERN_LITERAL))
        );
        assert_eq!(
            as_acl("^logs-"),
            Some(("logs-".into(), acl::PATTERN_PREFIXED))
        );
        assert_eq!(
            as_acl("^logs-.*"),
            Some(("logs-".into(), acl::PATTERN_PREFIXED))
        );
        assert_eq!(as_acl("^(b|c)$"), None);
        assert_eq!(as_acl("a\\d"), None);
        for (name, t) in [
            ("orders.eu", acl::PATTERN_LITERAL),
            ("x-", acl::PATTERN_PREFIXED),
            ("*", acl::PATTERN_LITERAL),
        ] {
            assert_eq!(
                as_acl(&alternative_for(name, t)),
                Some((name.to_string(), t))
            );
        }
        let re = regex::Regex::new(&alternative_for("a.b", acl::PATTERN_LITERAL))
            .unwrap_or_else(|_| unreachable!());
        assert!(re.is_match("a.b") && !re.is_match("axb") && !re.is_match("a.bc"));
    }
}
