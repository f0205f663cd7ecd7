//! RocketMQ's access-key signature and permissions. The official clients sign every call:
//! `authorization: MQv2-HMAC-SHA1 Credential=<access key>, SignedHeaders=x-mq-date-time,
//! Signature=<hex HMAC-SHA1 of x-mq-date-time keyed by the secret key>`. The Apache proxy
//! (ACL 2.0) checks that against the user named by the access key; Sluice does the same
//! against configured key pairs, whose access keys are users of the broker's one user
//! model, and then checks what the call touches against that user's permissions (sending
//! writes a topic; receiving, acknowledging and the like read the topic and the group).
//! A refusal is RocketMQ's UNAUTHORIZED (40100) or FORBIDDEN (40300).

use std::fmt::Debug;
use std::net::IpAddr;

use ring::hmac;

/// What the broker's users provide to the RocketMQ face.
pub trait Auth: Send + Sync + Debug {
    /// The secret key of `access_key`, if it is configured.
    fn secret(&self, access_key: &str) -> Option<String>;
    /// Whether `user` may write (send to) or read (receive from) the topic or group `name`.
    fn allowed(&self, user: &str, write: bool, name: &str) -> bool;
    /// Whether `user`'s calls from `peer` are held back for failing too often.
    fn throttled(&self, peer: Option<IpAddr>, user: &str) -> bool;
    /// Counts a failed signature.
    fn failed(&self, peer: Option<IpAddr>, user: &str);
}

/// Why a signature was refused (the text goes back to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsigned {
    Missing,
    Malformed,
    UnknownKey(String),
    Mismatch(String),
}

impl std::fmt::Display for Unsigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsigned::Missing => write!(
                f,
                "the authorization and x-mq-date-time headers are required"
            ),
            Unsigned::Malformed => write!(f, "the authorization header is malformed"),
            Unsigned::UnknownKey(k) => write!(f, "User:{k} is not found"),
            Unsigned::Mismatch(_) => write!(f, "check signature failed"),
        }
    }
}

/// The access key a header names, for counting failures against it.
pub fn access_key(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.split_once(' ')?;
    if scheme != "MQv2-HMAC-SHA1" {
        return None;
    }
    field(rest, "Credential").map(|c| c.split('/').next().unwrap_or(c))
}

fn field<'a>(rest: &'a str, name: &str) -> Option<&'a str> {
    rest.split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Checks a call's signature; the signer's access key (the user) if it holds.
pub fn verify(
    authorization: Option<&str>,
    date_time: Option<&str>,
    secret: impl FnOnce(&str) -> Option<String>,
) -> Result<String, Unsigned> {
    let (Some(authorization), Some(date_time)) = (authorization, date_time) else {
        return Err(Unsigned::Missing);
    };
    let key = access_key(authorization).ok_or(Unsigned::Malformed)?;
    let rest = authorization.split_once(' ').map_or("", |(_, r)| r);
    let given = field(rest, "Signature").ok_or(Unsigned::Malformed)?;
    let secret = secret(key).ok_or_else(|| Unsigned::UnknownKey(key.to_string()))?;
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes()),
        date_time.as_bytes(),
    );
    let expected: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let given = given.to_ascii_lowercase();
    let differs = expected.len() != given.len()
        || expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differs {
        return Err(Unsigned::Mismatch(key.to_string()));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_as_the_official_clients_make_them() {
        // The Python client's Signature.sign("sk", "20261205T101010Z"), by hand:
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"sk"),
            b"20261205T101010Z",
        );
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let header =
            format!("MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, Signature={hex}");
        let secret = |k: &str| (k == "ak").then(|| "sk".to_string());
        assert_eq!(
            verify(Some(&header), Some("20261205T101010Z"), secret),
            Ok("ak".into())
        );
        assert_eq!(
            verify(Some(&header), Some("20261205T101011Z"), secret),
            Err(Unsigned::Mismatch("ak".into()))
        );
        assert_eq!(verify(None, Some("x"), secret), Err(Unsigned::Missing));
        assert_eq!(
            verify(Some("Basic abc"), Some("x"), secret),
            Err(Unsigned::Malformed)
        );
        let other = header.replace("Credential=ak", "Credential=bk");
        assert_eq!(
            verify(Some(&other), Some("20261205T101010Z"), secret),
            Err(Unsigned::UnknownKey("bk".into()))
        );
    }
}
