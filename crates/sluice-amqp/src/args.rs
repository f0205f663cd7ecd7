//! Queue arguments (`x-message-ttl`, `x-max-length`, `x-overflow`, `x-dead-letter-*`,
//! `x-max-priority`, `x-single-active-consumer`, `x-queue-type`, …) checked as RabbitMQ
//! checks them: a bad value is PRECONDITION_FAILED (406) naming the argument.

use std::sync::Arc;

use sluice_core::{Table, Value};
use sluice_engine::queue::{Limits, Overflow};
pub use sluice_engine::vhost::QueueSettings;

use crate::error::AmqpError;

fn invalid(arg: &str, why: &str) -> AmqpError {
    AmqpError::precondition(format!("invalid arg '{arg}' for queue: {why}"))
}

fn non_negative(args: &Table, arg: &str) -> Result<Option<u64>, AmqpError> {
    match args.get(arg) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            Some(_) => Err(invalid(arg, "must be non-negative")),
            None => Err(invalid(arg, "must be an integer")),
        },
    }
}

fn text<'a>(args: &'a Table, arg: &str) -> Result<Option<&'a str>, AmqpError> {
    match args.get(arg) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| invalid(arg, "must be a string")),
    }
}

/// Reads and checks a queue's arguments; `durable` and the flags matter for quorum queues.
pub fn queue_settings(
    args: &Table,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) -> Result<QueueSettings, AmqpError> {
    let mut limits = Limits {
        message_ttl_ms: non_negative(args, "x-message-ttl")?,
        max_length: non_negative(args, "x-max-length")?,
        max_length_bytes: non_negative(args, "x-max-length-bytes")?,
        ..Limits::default()
    };
    if let Some(p) = non_negative(args, "x-max-priority")? {
        limits.max_priority =
            u8::try_from(p).map_err(|_| invalid("x-max-priority", "must be between 0 and 255"))?;
    }
    limits.overflow = match text(args, "x-overflow")? {
        None | Some("drop-head") => Overflow::DropHead,
        Some("reject-publish") => Overflow::RejectPublish,
        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
        Some(_) => {
            return Err(invalid(
                "x-overflow",
                "expected drop-head, reject-publish or reject-publish-dlx",
            ));
        }
    };
    if let Some(limit) = non_negative(args, "x-delivery-limit")? {
        limits.delivery_limit = Some(u32::try_from(limit).unwrap_or(u32::MAX));
    }
    limits.single_active_consumer = match args.get("x-single-active-consumer") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("x-single-active-consumer", "must be a boolean")),
    };
    let quorum = text(args, "x-queue-type")? == Some("quorum");
    match text(args, "x-queue-type")? {
        None | Some("classic") => {}
        Some("quorum") => {
            if !durable || exclusive || auto_delete {
                return Err(AmqpError::precondition(
                    "invalid property 'non-durable, exclusive or auto-delete' for a quorum queue",
                ));
            }
        }
        Some(other) => {
            return Err(invalid(
                "x-queue-type",
                &format!("unknown queue type '{other}'"),
            ));
        }
    }
    let expires_ms = non_negative(args, "x-expires")?;
    if expires_ms == Some(0) {
        return Err(invalid("x-expires", "must be positive"));
    }
    Ok(QueueSettings {
        limits,
        dead_letter_exchange: text(args, "x-dead-letter-exchange")?.map(Arc::from),
        dead_letter_routing_key: text(args, "x-dead-letter-routing-key")?.map(Arc::from),
        expires_ms,
        delay: false,
        quorum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, Value)]) -> Table {
        Table::from_pairs(entries)
    }

    #[test]
    fn valid_arguments_become_limits_and_dead_letter_settings() {
        let args = table(&[
            ("x-message-ttl", Value::I32(500)),
            ("x-max-length", Value::I64(10)),
            ("x-overflow", Value::string("reject-publish")),
            ("x-dead-letter-exchange", Value::string("dlx")),
            ("x-max-priority", Value::U8(9)),
        ]);
        let s = queue_settings(&args, false, false, false).unwrap();
        assert_eq!(s.limits.message_ttl_ms, Some(500));
        assert_eq!(s.limits.max_length, Some(10));
        assert_eq!(s.limits.overflow, Overflow::RejectPublish);
        assert_eq!(s.limits.max_priority, 9);
        assert_eq!(s.dead_letter_exchange.as_deref(), Some("dlx"));
    }

    #[test]
    fn bad_values_are_precondition_failed() {
        for args in [
            table(&[("x-max-length", Value::I32(-1))]),
            table(&[("x-max-priority", Value::I32(256))]),
            table(&[("x-overflow", Value::string("sometimes"))]),
            table(&[("x-message-ttl", Value::string("soon"))]),
            table(&[("x-queue-type", Value::string("quorum"))]),
        ] {
            let err = queue_settings(&args, false, false, false).unwrap_err();
            assert!(
                matches!(err, AmqpError::Channel { code: 406, .. }),
                "{err:?}"
            );
        }
    }
}
