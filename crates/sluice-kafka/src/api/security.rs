//! SaslHandshake and SaslAuthenticate (the connection's login), the SCRAM credential
//! admin APIs, and the ACL APIs over the broker's permissions.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::*;
use sluice_core::scram::{self, Credential, Mechanism};

use super::str;
use crate::broker::KafkaBroker;
use crate::codes;
use crate::connection::Client;
use crate::security::{Acl, Authz, MECHANISMS, Operation, Resource, Sasl, acl, parse_plain};

/// Kafka's answer to the ACL APIs where nothing authorizes: here, listeners without SASL,
/// whose anonymous clients must not change the users' permissions.
const NO_AUTHORIZER: &str = "No Authorizer is configured on the broker";

pub fn handshake(
    b: &Arc<KafkaBroker>,
    client: &mut Client,
    req: SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mut r = SaslHandshakeResponse::default();
    r.mechanisms = MECHANISMS.iter().map(|m| str(*m)).collect();
    let may_start = match &client.sasl {
        Sasl::Start => true,
        // Re-authentication (KIP-368) starts with a handshake on a logged-in connection.
        Sasl::Done { .. } => b.config.reauth.is_some(),
        _ => false,
    };
    if !may_start {
        r.error_code = codes::ILLEGAL_SASL_STATE;
        client.failed = Some(std::time::Duration::ZERO);
        return r;
    }
    match MECHANISMS.iter().find(|m| **m == req.mechanism.as_str()) {
        Some(m) => {
            client.reauth_of = client.sasl.previous_user().map(str::to_string);
            client.sasl = Sasl::Chosen(m);
        }
        None => {
            r.error_code = codes::UNSUPPORTED_SASL_MECHANISM;
            client.failed = Some(std::time::Duration::ZERO);
        }
    }
    r
}

fn failure(
    b: &Arc<KafkaBroker>,
    client: &mut Client,
    code: i16,
    user: &str,
    message: String,
) -> SaslAuthenticateResponse {
    client.failed = Some(if code == codes::SASL_AUTHENTICATION_FAILED {
        b.security.failed_login(client.peer.ip(), user)
    } else {
        std::time::Duration::ZERO
    });
    tracing::info!(peer = %client.peer, user, %message, "kafka login refused");
    let mut r = SaslAuthenticateResponse::default();
    r.error_code = code;
    r.error_message = Some(str(message));
    r
}

/// Kafka's text for a failed SCRAM login.
fn scram_refused(mechanism: &str) -> String {
    format!(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
    )
}

pub fn authenticate(
    b: &Arc<KafkaBroker>,
    client: &mut Client,
    req: SaslAuthenticateRequest,
    version: i16,
) -> SaslAuthenticateResponse {
    let state = std::mem::replace(&mut client.sasl, Sasl::Start);
    let peer = client.peer.ip();
    let (user, answer) = match state {
        Sasl::Chosen("PLAIN") => {
            let Some((user, password)) = parse_plain(&req.auth_bytes) else {
                let text = "Authentication failed: Invalid username or password".to_string();
                return failure(b, client, codes::SASL_AUTHENTICATION_FAILED, "", text);
            };
            // A user failing too often from this address is refused unchecked.
            let ok = !b.security.throttled(peer, &user)
                && b.security.login(&user, &password, peer.is_loopback());
            if !ok {
                let text = "Authentication failed: Invalid username or password".to_string();
                return failure(b, client, codes::SASL_AUTHENTICATION_FAILED, &user, text);
            }
            (user, Bytes::new())
        }
        Sasl::Chosen(m) => {
            let Some(mechanism) = Mechanism::from_name(m) else {
                return failure(
                    b,
                    client,
                    codes::ILLEGAL_SASL_STATE,
                    "",
                    "unexpected mechanism".into(),
                );
            };
            let security = Arc::clone(&b.security);
            let mut tried = String::new();
            let first = scram::server_first(mechanism, &req.auth_bytes, |u| {
                tried = u.to_string();
                if security.throttled(peer, u) {
                    return None;
                }
                security.scram(u, mechanism)
            });
            match first {
                Ok((pending, first)) => {
                    client.sasl = Sasl::ScramFinal(Box::new(pending));
                    let mut r = SaslAuthenticateResponse::default();
                    r.auth_bytes = Bytes::from(first);
                    return r;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "SCRAM first message refused");
                    return failure(
                        b,
                        client,
                        codes::SASL_AUTHENTICATION_FAILED,
                        &tried,
                        scram_refused(m),
                    );
                }
            }
        }
        Sasl::ScramFinal(pending) => {
            let tried = pending.user().to_string();
            match scram::server_final(*pending, &req.auth_bytes) {
                Ok((user, last)) => (user, Bytes::from(last)),
                Err(e) => {
                    tracing::debug!(error = %e, "SCRAM final message refused");
                    return failure(
                        b,
                        client,
                        codes::SASL_AUTHENTICATION_FAILED,
                        &tried,
                        scram_refused("SCRAM"),
                    );
                }
            }
        }
        other => {
            client.sasl = other;
            return failure(
                b,
                client,
                codes::ILLEGAL_SASL_STATE,
                "",
                "SaslAuthenticate without a SaslHandshake before it".into(),
            );
        }
    };
    if let Some(before) = client.reauth_of.take()
        && before != user
    {
        let text = format!(
            "Cannot change principals during re-authentication from User:{before} to User:{user}"
        );
        return failure(b, client, codes::SASL_AUTHENTICATION_FAILED, &user, text);
    }
    let mut r = SaslAuthenticateResponse::default();
    r.auth_bytes = answer;
    let expires = b.config.reauth.filter(|_| version >= 1);
    r.session_lifetime_ms = expires.map_or(0, |d| d.as_millis() as i64);
    client.sasl = Sasl::Done {
        user,
        expires: expires.map(|d| Instant::now() + d),
    };
    r
}

/// A bare token after SaslHandshake v0: the same exchange, without the Kafka framing.
pub fn raw_token(b: &Arc<KafkaBroker>, client: &mut Client, token: Bytes) -> Bytes {
    let mut req = SaslAuthenticateRequest::default();
    req.auth_bytes = token;
    authenticate(b, client, req, 0).auth_bytes
}

pub fn describe_scram(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let mut r = DescribeUserScramCredentialsResponse::default();
    // Users are the whole broker's: a listener without logins does not show them.
    if authz.is_anonymous() || !authz.allows(Operation::Describe, Resource::Cluster) {
        r.error_code = codes::CLUSTER_AUTHORIZATION_FAILED;
        return r;
    }
    let known = b.security.scram_users();
    let result = |name: &str| {
        let mut x = DescribeUserScramCredentialsResult::default();
        x.user = str(name);
        match known.iter().find(|(n, _)| n == name) {
            Some((_, creds)) => {
                x.credential_infos = creds
                    .iter()
                    .map(|(m, i)| {
                        let mut c = CredentialInfo::default();
                        c.mechanism = m.kafka_type();
                        c.iterations = *i as i32;
                        c
                    })
                    .collect();
            }
            None => {
                x.error_code = codes::RESOURCE_NOT_FOUND;
                x.error_message = Some(str(format!(
                    "Attempt to describe a user credential that does not exist: {name}"
                )));
            }
        }
        x
    };
    match req.users {
        None => r.results = known.iter().map(|(n, _)| result(n)).collect(),
        Some(users) if users.is_empty() => {
            r.results = known.iter().map(|(n, _)| result(n)).collect()
        }
        Some(users) => {
            let mut seen = std::collections::HashSet::new();
            for u in users {
                let name = u.name.to_string();
                if !seen.insert(name.clone()) {
                    let mut x = DescribeUserScramCredentialsResult::default();
                    x.user = str(name.clone());
                    x.error_code = codes::DUPLICATE_RESOURCE;
                    x.error_message = Some(str(format!(
                        "Cannot describe SCRAM credentials for the same user twice in a single request: {name}"
                    )));
                    r.results.retain(|x| x.user.as_str() != name);
                    r.results.push(x);
                    continue;
                }
                r.results.push(result(&name));
            }
        }
    }
    r
}

pub fn alter_scram(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut r = AlterUserScramCredentialsResponse::default();
    let mut users: Vec<String> = req
        .deletions
        .iter()
        .map(|d| d.name.to_string())
        .chain(req.upsertions.iter().map(|u| u.name.to_string()))
        .collect();
    users.sort();
    users.dedup();
    let result = |user: &str, code: i16, message: Option<String>| {
        let mut x = AlterUserScramCredentialsResult::default();
        x.user = str(user);
        x.error_code = code;
        x.error_message = message.map(str);
        x
    };
    if authz.is_anonymous() || !authz.allows(Operation::Alter, Resource::Cluster) {
        r.results = users
            .iter()
            .map(|u| result(u, codes::CLUSTER_AUTHORIZATION_FAILED, None))
            .collect();
        return r;
    }
    // Per user: every change valid, or the user's result carries the first error.
    let mut errors: std::collections::BTreeMap<String, (i16, String)> = Default::default();
    let mut changes: Vec<(String, Mechanism, Option<Credential>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deletions = req
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism, None));
    let upsertions = req
        .upsertions
        .iter()
        .map(|u| (u.name.to_string(), u.mechanism, Some(u)));
    for (name, mech, upsert) in deletions.chain(upsertions) {
        let fail = |code, text: String| (code, text);
        let checked = (|| {
            if name.is_empty() {
                return Err(fail(
                    codes::UNACCEPTABLE_CREDENTIAL,
                    "Username must not be empty".into(),
                ));
            }
            let m = Mechanism::from_kafka_type(mech).ok_or_else(|| {
                fail(
                    codes::UNSUPPORTED_SASL_MECHANISM,
                    "Unknown SCRAM mechanism".into(),
                )
            })?;
            if !seen.insert((name.clone(), mech)) {
                return Err(fail(
                    codes::DUPLICATE_RESOURCE,
                    "A user credential cannot be altered twice in the same request".into(),
                ));
            }
            let credential = match upsert {
                None => None,
                Some(u) => {
                    let iterations = u32::try_from(u.iterations).unwrap_or(0);
                    if !(scram::MIN_ITERATIONS..=scram::MAX_ITERATIONS).contains(&iterations) {
                        return Err(fail(
                            codes::UNACCEPTABLE_CREDENTIAL,
                            format!(
                                "Iterations {} not in the allowed range [{}, {}] for {}",
                                u.iterations,
                                scram::MIN_ITERATIONS,
                                scram::MAX_ITERATIONS,
                                m.name()
                            ),
                        ));
                    }
                    if u.salt.is_empty() || u.salted_password.is_empty() {
                        return Err(fail(
                            codes::UNACCEPTABLE_CREDENTIAL,
                            "Salt and salted password must not be empty".into(),
                        ));
                    }
                    Some(Credential::from_salted_password(
                        m,
                        &u.salted_password,
                        u.salt.to_vec(),
                        iterations,
                    ))
                }
            };
            if credential.is_none() && b.security.scram(&name, m).is_none() {
                return Err(fail(
                    codes::RESOURCE_NOT_FOUND,
                    "Attempt to delete a user credential that does not exist".into(),
                ));
            }
            Ok((m, credential))
        })();
        match checked {
            Ok((m, c)) => changes.push((name, m, c)),
            Err(e) => {
                errors.entry(name).or_insert(e);
            }
        }
    }
    changes.retain(|(n, _, _)| !errors.contains_key(n));
    let stored = b.security.set_scram(&changes);
    for user in users {
        let x = match (errors.get(&user), &stored) {
            (Some((code, text)), _) => result(&user, *code, Some(text.clone())),
            (None, Err((code, text))) => result(&user, *code, Some(text.clone())),
            (None, Ok(())) => result(&user, codes::NONE, None),
        };
        r.results.push(x);
    }
    r
}

/// The fields of an ACL filter (DescribeAcls, DeleteAcls), with Kafka's ANY and MATCH.
struct Filter<'a> {
    resource_type: i8,
    name: Option<&'a str>,
    pattern: i8,
    principal: Option<&'a str>,
    host: Option<&'a str>,
    operation: i8,
    permission: i8,
}

impl Filter<'_> {
    fn selects(&self, a: &Acl) -> bool {
        let name_ok = match (self.name, self.pattern) {
            (None, _) => true,
            (Some(n), acl::PATTERN_MATCH) => {
                a.resource_name == n
                    || a.resource_name == "*"
                    || (a.pattern_type == acl::PATTERN_PREFIXED && n.starts_with(&a.resource_name))
            }
            (Some(n), _) => a.resource_name == n,
        };
        let pattern_ok = matches!(self.pattern, acl::PATTERN_ANY | acl::PATTERN_MATCH)
            || a.pattern_type == self.pattern;
        (self.resource_type == acl::RESOURCE_ANY || a.resource_type == self.resource_type)
            && name_ok
            && pattern_ok
            && self.principal.is_none_or(|p| p == a.principal)
            && self.host.is_none_or(|h| h == a.host)
            && (self.operation == acl::OP_ANY || a.operation == self.operation)
            && (self.permission == acl::PERMISSION_ANY || a.permission_type == self.permission)
    }

    /// The broker's ACLs this filter selects, sorted.
    fn select(&self, b: &KafkaBroker) -> Vec<Acl> {
        let mut found: Vec<Acl> = b
            .security
            .acls()
            .into_iter()
            .filter(|a| self.selects(a))
            .collect();
        found.sort();
        found
    }
}

pub fn describe_acls(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let mut r = DescribeAclsResponse::default();
    if authz.is_anonymous() {
        r.error_code = codes::SECURITY_DISABLED;
        r.error_message = Some(str(NO_AUTHORIZER));
        return r;
    }
    if !authz.allows(Operation::Describe, Resource::Cluster) {
        r.error_code = codes::CLUSTER_AUTHORIZATION_FAILED;
        r.error_message = Some(str("Cluster authorization failed."));
        return r;
    }
    let found = Filter {
        resource_type: req.resource_type_filter,
        name: req.resource_name_filter.as_deref(),
        pattern: req.pattern_type_filter,
        principal: req.principal_filter.as_deref(),
        host: req.host_filter.as_deref(),
        operation: req.operation,
        permission: req.permission_type,
    }
    .select(b);
    for a in found {
        let same = r.resources.last_mut().filter(|x| {
            x.resource_type == a.resource_type
                && x.resource_name.as_str() == a.resource_name
                && x.pattern_type == a.pattern_type
        });
        let mut d = AclDescription::default();
        d.principal = str(a.principal.clone());
        d.host = str(a.host.clone());
        d.operation = a.operation;
        d.permission_type = a.permission_type;
        match same {
            Some(x) => x.acls.push(d),
            None => {
                let mut x = DescribeAclsResource::default();
                x.resource_type = a.resource_type;
                x.resource_name = str(a.resource_name.clone());
                x.pattern_type = a.pattern_type;
                x.acls.push(d);
                r.resources.push(x);
            }
        }
    }
    r
}

pub fn create_acls(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: CreateAclsRequest,
) -> CreateAclsResponse {
    let mut r = CreateAclsResponse::default();
    let result = |code: i16, text: Option<String>| {
        let mut x = AclCreationResult::default();
        x.error_code = code;
        x.error_message = text.map(str);
        x
    };
    if authz.is_anonymous() {
        r.results = req
            .creations
            .iter()
            .map(|_| result(codes::SECURITY_DISABLED, Some(NO_AUTHORIZER.into())))
            .collect();
        return r;
    }
    if !authz.allows(Operation::Alter, Resource::Cluster) {
        r.results = req
            .creations
            .iter()
            .map(|_| {
                result(
                    codes::CLUSTER_AUTHORIZATION_FAILED,
                    Some("Cluster authorization failed.".into()),
                )
            })
            .collect();
        return r;
    }
    // One at a time, so each creation gets its own result, as Kafka's are.
    for c in req.creations {
        let a = Acl {
            resource_type: c.resource_type,
            resource_name: c.resource_name.to_string(),
            pattern_type: c.resource_pattern_type,
            principal: c.principal.to_string(),
            host: c.host.to_string(),
            operation: c.operation,
            permission_type: c.permission_type,
        };
        r.results
            .push(match b.security.create_acls(std::slice::from_ref(&a)) {
                Ok(()) => result(codes::NONE, None),
                Err((code, text)) => result(code, Some(text)),
            });
    }
    r
}

pub fn delete_acls(
    b: &Arc<KafkaBroker>,
    authz: Authz<'_>,
    req: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let mut r = DeleteAclsResponse::default();
    let allowed = authz.allows(Operation::Alter, Resource::Cluster);
    for f in req.filters {
        let mut x = DeleteAclsFilterResult::default();
        if authz.is_anonymous() {
            x.error_code = codes::SECURITY_DISABLED;
            x.error_message = Some(str(NO_AUTHORIZER));
            r.filter_results.push(x);
            continue;
        }
        if !allowed {
            x.error_code = codes::CLUSTER_AUTHORIZATION_FAILED;
            x.error_message = Some(str("Cluster authorization failed."));
            r.filter_results.push(x);
            continue;
        }
        let doomed = Filter {
            resource_type: f.resource_type_filter,
            name: f.resource_name_filter.as_deref(),
            pattern: f.pattern_type_filter,
            principal: f.principal_filter.as_deref(),
            host: f.host_filter.as_deref(),
            operation: f.operation,
            permission: f.permission_type,
        }
        .select(b);
        if let Err((code, text)) = b.security.delete_acls(&doomed) {
            x.error_code = code;
            x.error_message = Some(str(text));
        } else {
            x.matching_acls = doomed
                .into_iter()
                .map(|a| {
                    let mut m = DeleteAclsMatchingAcl::default();
                    m.resource_type = a.resource_type;
                    m.resource_name = str(a.resource_name);
                    m.pattern_type = a.pattern_type;
                    m.principal = str(a.principal);
                    m.host = str(a.host);
                    m.operation = a.operation;
                    m.permission_type = a.permission_type;
                    m
                })
                .collect();
        }
        r.filter_results.push(x);
    }
    r
}
