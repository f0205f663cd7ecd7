//! Kafka error codes used by this face (the protocol guide's table).

pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_CONFIG: i16 = 40;
pub const INVALID_REQUEST: i16 = 42;
pub const POLICY_VIOLATION: i16 = 44;
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const INVALID_TXN_STATE: i16 = 48;
pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
pub const CONCURRENT_TRANSACTIONS: i16 = 51;
pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
pub const PRODUCER_FENCED: i16 = 90;
pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const FENCED_INSTANCE_ID: i16 = 82;
pub const INVALID_RECORD: i16 = 87;
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
pub const UNKNOWN_TOPIC_ID: i16 = 100;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const ILLEGAL_SASL_STATE: i16 = 34;
pub const SECURITY_DISABLED: i16 = 54;
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
pub const RESOURCE_NOT_FOUND: i16 = 91;
pub const DUPLICATE_RESOURCE: i16 = 92;
pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
pub const FENCED_LEADER_EPOCH: i16 = 74;

use sluice_engine::stream::batch::BatchError;
use sluice_engine::stream::{AppendError, ReadStatus, RefusalKind};

/// The code for records refused before they are appended.
pub fn of_batch(e: BatchError) -> i16 {
    match e {
        BatchError::Corrupt => CORRUPT_MESSAGE,
        BatchError::Invalid => INVALID_RECORD,
        BatchError::OldMagic => UNSUPPORTED_FOR_MESSAGE_FORMAT,
    }
}

pub fn of_append(e: AppendError) -> i16 {
    match e {
        AppendError::InvalidProducerEpoch => INVALID_PRODUCER_EPOCH,
        AppendError::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        AppendError::Storage => KAFKA_STORAGE_ERROR,
    }
}

pub fn of_read(s: ReadStatus) -> i16 {
    match s {
        ReadStatus::Ok => NONE,
        ReadStatus::OutOfRange => OFFSET_OUT_OF_RANGE,
        ReadStatus::Storage => KAFKA_STORAGE_ERROR,
    }
}

pub fn of_refusal(kind: RefusalKind) -> i16 {
    match kind {
        RefusalKind::InvalidName => INVALID_TOPIC_EXCEPTION,
        RefusalKind::AlreadyExists => TOPIC_ALREADY_EXISTS,
        RefusalKind::UnknownTopic => UNKNOWN_TOPIC_OR_PARTITION,
        RefusalKind::InvalidPartitions => INVALID_PARTITIONS,
        RefusalKind::PolicyViolation => POLICY_VIOLATION,
        RefusalKind::InvalidConfig => INVALID_CONFIG,
        RefusalKind::Storage => KAFKA_STORAGE_ERROR,
    }
}
