//! AMQP errors and their reply codes, mapped in one place. A channel error closes one
//! channel; a connection error closes the connection, as RabbitMQ does.

use sluice_engine::queue::QueueError;
use sluice_engine::routing::RoutingError;

/// Reply codes of AMQP 0-9-1 as RabbitMQ uses them.
pub mod codes {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpError {
    #[error("connection error {code}: {text}")]
    Connection {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    #[error("channel error {code}: {text}")]
    Channel {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
}

impl AmqpError {
    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        AmqpError::Connection {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        AmqpError::Channel {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that failed, for the close frame.
    pub fn during(mut self, class: u16, method: u16) -> Self {
        match &mut self {
            AmqpError::Connection {
                class_id,
                method_id,
                ..
            }
            | AmqpError::Channel {
                class_id,
                method_id,
                ..
            } => {
                if *class_id == 0 {
                    *class_id = class;
                    *method_id = method;
                }
            }
        }
        self
    }

    /// The AMQP reply code.
    pub fn code(&self) -> u16 {
        match self {
            AmqpError::Connection { code, .. } | AmqpError::Channel { code, .. } => *code,
        }
    }

    /// The reply text, as the client sees it.
    pub fn text(&self) -> &str {
        match self {
            AmqpError::Connection { text, .. } | AmqpError::Channel { text, .. } => text,
        }
    }

    pub fn not_found(what: &str, name: &str, vhost: &str) -> Self {
        AmqpError::channel(
            codes::NOT_FOUND,
            format!("NOT_FOUND - no {what} '{name}' in vhost '{vhost}'"),
        )
    }

    pub fn precondition(text: impl std::fmt::Display) -> Self {
        AmqpError::channel(
            codes::PRECONDITION_FAILED,
            format!("PRECONDITION_FAILED - {text}"),
        )
    }
}

impl From<RoutingError> for AmqpError {
    fn from(e: RoutingError) -> Self {
        let code = e.reply_code();
        let name = match code {
            403 => "ACCESS_REFUSED",
            404 => "NOT_FOUND",
            406 => "PRECONDITION_FAILED",
            _ => "COMMAND_INVALID",
        };
        let text = format!("{name} - {e}");
        if code == codes::COMMAND_INVALID {
            AmqpError::connection(code, text)
        } else {
            AmqpError::channel(code, text)
        }
    }
}

impl From<QueueError> for AmqpError {
    fn from(e: QueueError) -> Self {
        match e.reply_code() {
            403 => AmqpError::channel(codes::ACCESS_REFUSED, format!("ACCESS_REFUSED - {e}")),
            code => AmqpError::channel(code, format!("PRECONDITION_FAILED - {e}")),
        }
    }
}
