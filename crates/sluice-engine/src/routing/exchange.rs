//! Exchange definitions: the four AMQP exchange types, what a declare carries, and
//! RabbitMQ's rules for when a redeclare is equivalent to what exists.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sluice_core::{Table, Value};

use super::RoutingError;
use super::args::{describe, equivalent, type_name};

/// The argument naming an exchange's alternate exchange.
pub const ALTERNATE_EXCHANGE: &str = "alternate-exchange";

/// An exchange type. Parsing is case-sensitive, as in RabbitMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = RoutingError;

    /// An unknown type is `COMMAND_INVALID` (503), as RabbitMQ's `check_type` answers.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(RoutingError::CommandInvalid(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }
}

/// What `exchange.declare` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    /// Reachable only through exchange-to-exchange bindings, never by publishing.
    pub internal: bool,
    /// Only `alternate-exchange` has a meaning here (and in equivalence checks).
    pub arguments: Table,
}

impl ExchangeDef {
    /// A transient, non-auto-delete, non-internal exchange without arguments.
    pub fn new(name: impl Into<Arc<str>>, kind: ExchangeKind) -> Self {
        ExchangeDef {
            name: name.into(),
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: Table::new(),
        }
    }

    /// The alternate exchange's name, when the argument holds a UTF-8 string.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments
            .get(ALTERNATE_EXCHANGE)
            .and_then(Value::as_str)
    }

    /// RabbitMQ's `assert_equivalence`: type, durable, auto-delete, internal and the
    /// `alternate-exchange` argument must agree, checked in that order; other arguments
    /// are ignored. The error names the first field that differs.
    pub(super) fn check_equivalent(
        &self,
        requested: &ExchangeDef,
        vhost: &str,
    ) -> Result<(), RoutingError> {
        let fields = [
            ("type", self.kind.as_str(), requested.kind.as_str()),
            (
                "durable",
                bool_str(self.durable),
                bool_str(requested.durable),
            ),
            (
                "auto_delete",
                bool_str(self.auto_delete),
                bool_str(requested.auto_delete),
            ),
            (
                "internal",
                bool_str(self.internal),
                bool_str(requested.internal),
            ),
        ];
        for (field, current, received) in fields {
            if current != received {
                return Err(inequivalent(
                    field,
                    &self.name,
                    vhost,
                    &format!("'{received}'"),
                    &format!("'{current}'"),
                ));
            }
        }
        let current = self.arguments.get(ALTERNATE_EXCHANGE);
        let received = requested.arguments.get(ALTERNATE_EXCHANGE);
        let (received, current) = match (received, current) {
            (None, None) => return Ok(()),
            (Some(r), Some(c)) if equivalent(c, r) => return Ok(()),
            // Both present: RabbitMQ prints the bare values.
            (Some(r), Some(c)) => (format!("'{}'", describe(r)), format!("'{}'", describe(c))),
            (r, c) => (typed_or_none(r), typed_or_none(c)),
        };
        Err(inequivalent(
            ALTERNATE_EXCHANGE,
            &self.name,
            vhost,
            &received,
            &current,
        ))
    }
}

/// Reads `alternate-exchange` from a new exchange's arguments: a string names the AE, any
/// other type is refused (406), as RabbitMQ's `r_arg` check on declare does.
pub(super) fn parse_alternate(
    def: &ExchangeDef,
    vhost: &str,
) -> Result<Option<Arc<str>>, RoutingError> {
    let Some(value) = def.arguments.get(ALTERNATE_EXCHANGE) else {
        return Ok(None);
    };
    match value.as_str() {
        Some(name) => Ok(Some(Arc::from(name))),
        None => Err(RoutingError::PreconditionFailed(format!(
            "invalid type '{}' for arg '{ALTERNATE_EXCHANGE}' in exchange '{}' in vhost '{vhost}'",
            type_name(value),
            def.name
        ))),
    }
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn typed_or_none(value: Option<&Value>) -> String {
    match value {
        None => "none".to_owned(),
        Some(v) => format!("the value '{}' of type '{}'", describe(v), type_name(v)),
    }
}

fn inequivalent(
    field: &str,
    name: &str,
    vhost: &str,
    received: &str,
    current: &str,
) -> RoutingError {
    RoutingError::PreconditionFailed(format!(
        "inequivalent arg '{field}' for exchange '{name}' in vhost '{vhost}': \
         received {received} but current is {current}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_amqp_names_only() {
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
            ExchangeKind::Headers,
        ] {
            assert_eq!(kind.as_str().parse::<ExchangeKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let err = "x-delayed-message".parse::<ExchangeKind>().unwrap_err();
        assert_eq!(err.reply_code(), 503);
        assert_eq!(err.message(), "unknown exchange type 'x-delayed-message'");
        assert!("Direct".parse::<ExchangeKind>().is_err());
        assert!("".parse::<ExchangeKind>().is_err());
    }

    fn with_ae(name: &str, ae: Option<Value>) -> ExchangeDef {
        let mut def = ExchangeDef::new(name, ExchangeKind::Direct);
        if let Some(ae) = ae {
            def.arguments.insert(ALTERNATE_EXCHANGE, ae);
        }
        def
    }

    #[test]
    fn alternate_exchange_equivalence_uses_rabbitmq_wording() {
        let current = with_ae("x", Some(Value::string("ae1")));
        assert!(current.check_equivalent(&current.clone(), "/").is_ok());
        let short = with_ae("x", Some(Value::ShortString("ae1".into())));
        assert!(current.check_equivalent(&short, "/").is_ok());

        let other = with_ae("x", Some(Value::string("ae2")));
        assert_eq!(
            current.check_equivalent(&other, "/").unwrap_err().message(),
            "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': \
             received 'ae2' but current is 'ae1'"
        );
        let none = with_ae("x", None);
        assert_eq!(
            current.check_equivalent(&none, "/").unwrap_err().message(),
            "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': \
             received none but current is the value 'ae1' of type 'longstr'"
        );
        assert_eq!(
            none.check_equivalent(&current, "/").unwrap_err().message(),
            "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': \
             received the value 'ae1' of type 'longstr' but current is none"
        );
    }

    #[test]
    fn other_arguments_do_not_take_part_in_equivalence() {
        let current = with_ae("x", None);
        let mut requested = current.clone();
        requested.arguments.insert("x-anything", Value::I32(1));
        assert!(current.check_equivalent(&requested, "/").is_ok());
    }

    #[test]
    fn non_string_alternate_exchange_is_refused() {
        let def = with_ae("x", Some(Value::I32(1)));
        let err = parse_alternate(&def, "/").unwrap_err();
        assert_eq!(err.reply_code(), 406);
        assert_eq!(
            err.message(),
            "invalid type 'signedint' for arg 'alternate-exchange' in exchange 'x' in vhost '/'"
        );
        let def = with_ae("x", Some(Value::string("ae")));
        assert_eq!(parse_alternate(&def, "/"), Ok(Some(Arc::from("ae"))));
        assert_eq!(def.alternate_exchange(), Some("ae"));
    }
}
