//! Limits that bound memory and disk use, each with the reason for its value. Config may
//! lower a limit; raising one past its hard maximum is a config error.

/// Largest batch the log stores. AMQP's default maximum message size is 128 MiB
/// (RabbitMQ's `max_message_size`), and one AMQP message is one batch.
pub const BATCH_BYTES_MAX: u32 = 128 * 1024 * 1024;

/// Hard cap on a segment file. Positions inside a segment are stored as `u32` in the
/// offset index; keeping segments under 2 GiB leaves room for one oversized batch.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Default segment size: small enough that retention and settled-prefix truncation free
/// space in useful steps, large enough that a busy partition rolls rarely.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Default bytes between two sparse offset-index entries: a lookup then scans at most
/// this much of the segment, and a full segment's index costs 8 bytes per 4 KiB.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;

/// Default number of segment files one log keeps open (with their indexes loaded).
/// Each open sealed segment costs one file descriptor and its index in memory.
pub const OPEN_SEGMENTS_MAX_DEFAULT: usize = 8;

/// Size of the in-memory write buffer in front of the active segment: small appends are
/// coalesced into one write(2); larger ones go straight to the file.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;
