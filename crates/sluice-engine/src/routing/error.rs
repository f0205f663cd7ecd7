//! The one error type of the routing table. Each variant is an AMQP 0-9-1 channel error
//! with RabbitMQ's reply code; the text is RabbitMQ's wording, so a face only adds the
//! code's name (`NOT_FOUND - …`) when it closes the channel.

/// Why a routing-table operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// An exchange or queue named by the operation does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the current state, such as an inequivalent redeclare
    /// or an exchange still in use (406).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The operation touches a reserved object: the default exchange, an `amq.*` name, an
    /// internal exchange (403).
    #[error("{0}")]
    AccessRefused(String),
    /// The request itself is malformed: an unknown exchange type, a key over the limit
    /// (503).
    #[error("{0}")]
    CommandInvalid(String),
}

impl RoutingError {
    /// The AMQP 0-9-1 reply code a channel close carries for this error.
    pub fn reply_code(&self) -> u16 {
        match self {
            RoutingError::NotFound(_) => 404,
            RoutingError::PreconditionFailed(_) => 406,
            RoutingError::AccessRefused(_) => 403,
            RoutingError::CommandInvalid(_) => 503,
        }
    }

    /// The reply text without the code's name.
    pub fn message(&self) -> &str {
        match self {
            RoutingError::NotFound(m)
            | RoutingError::PreconditionFailed(m)
            | RoutingError::AccessRefused(m)
            | RoutingError::CommandInvalid(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_carries_rabbitmq_reply_code() {
        assert_eq!(RoutingError::NotFound("x".into()).reply_code(), 404);
        assert_eq!(
            RoutingError::PreconditionFailed("x".into()).reply_code(),
            406
        );
        assert_eq!(RoutingError::AccessRefused("x".into()).reply_code(), 403);
        assert_eq!(RoutingError::CommandInvalid("x".into()).reply_code(), 503);
    }

    #[test]
    fn display_is_the_bare_reply_text() {
        let e = RoutingError::NotFound("no exchange 'x' in vhost '/'".into());
        assert_eq!(e.to_string(), "no exchange 'x' in vhost '/'");
        assert_eq!(e.message(), "no exchange 'x' in vhost '/'");
    }
}
