//! AMQP 0-9-1 framing: splitting the byte stream into frames with every length checked
//! against the negotiated `frame_max` before anything is allocated, and writing frames.
//! Method frames are decoded and encoded by `amq-protocol`; content headers keep their
//! property bytes as received, and body frames are zero-copy slices of the read buffer.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{AmqpError, codes};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size in front of every frame payload, plus the end octet after it.
pub const FRAME_OVERHEAD: usize = 8;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const BASIC_CLASS: u16 = 60;

#[derive(Debug)]
pub enum Frame {
    Method(u16, Box<AMQPClass>),
    Header {
        channel: u16,
        class_id: u16,
        weight: u16,
        body_size: u64,
        properties: Bytes,
    },
    Body(u16, Bytes),
    Heartbeat(u16),
}

/// Why a frame could not be taken, and what that leaves of the stream.
#[derive(Debug)]
pub enum FrameError {
    /// The frame boundary is lost (a size over frame_max, no frame-end octet): RabbitMQ
    /// sends its connection.close, then drops the socket after the silent-close delay.
    Lost(AmqpError),
    /// A bad frame in a stream still in step: a connection error.
    Bad(AmqpError),
    /// An unknown class or method id: RabbitMQ's reader crashes on it and the socket is
    /// closed at once, with no close method.
    Abort,
}

impl FrameError {
    /// The error a close would carry; `None` for an abort.
    pub fn error(&self) -> Option<&AmqpError> {
        match self {
            FrameError::Lost(e) | FrameError::Bad(e) => Some(e),
            FrameError::Abort => None,
        }
    }
}

/// Writes `bytes` as Erlang prints a binary, since RabbitMQ's reply texts quote frames
/// that way: `<<"abc">>` when every octet is printable, else `<<0,60,1>>`.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let printable = |b: u8| (32..=126).contains(&b) || b"\n\r\t\x0b\x08\x0c\x1b".contains(&b);
    let mut out = String::from("<<");
    if !bytes.is_empty() && bytes.iter().all(|&b| printable(b)) {
        out.push('"');
        for &b in bytes {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0x0b => out.push_str("\\v"),
                0x08 => out.push_str("\\b"),
                0x0c => out.push_str("\\f"),
                0x1b => out.push_str("\\e"),
                b => out.push(char::from(b)),
            }
            if out.len() > 300 {
                break;
            }
        }
        out.push('"');
    } else {
        for (i, b) in bytes.iter().enumerate() {
            if out.len() > 300 {
                break;
            }
            if i > 0 {
                out.push(',');
            }
            out.push_str(&b.to_string());
        }
    }
    out.push_str(">>");
    out
}

/// RabbitMQ's 501 for a frame it cannot take apart, quoting its type and payload.
fn frame_error(kind: u8, payload: &[u8], reason: &str) -> AmqpError {
    AmqpError::connection(
        codes::FRAME_ERROR,
        format!(
            "FRAME_ERROR - type {kind}, all octets = {}: {reason}",
            erlang_binary(payload)
        ),
    )
}

/// Takes one whole frame off the front of `buf`, or `None` when more bytes are needed.
/// A payload over `frame_max` is refused before it is read (RabbitMQ compares the payload
/// alone with frame_max).
pub fn parse(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    let Some(&[kind, c0, c1, s0, s1, s2, s3]) = buf.get(..7) else {
        return Ok(None);
    };
    let channel = u16::from_be_bytes([c0, c1]);
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if size > frame_max {
        return Err(FrameError::Lost(frame_error(
            kind,
            &[],
            &format!(
                "{{frame_too_large,{size},{}}}",
                frame_max.saturating_sub(FRAME_OVERHEAD as u32)
            ),
        )));
    }
    let total = size as usize + FRAME_OVERHEAD;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    let end = frame.get(total - 1).copied().unwrap_or_default();
    frame.advance(7);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    if end != FRAME_END {
        return Err(FrameError::Lost(frame_error(
            kind,
            &payload,
            &format!("{{invalid_frame_end_marker,{end}}}"),
        )));
    }
    match kind {
        FRAME_METHOD => {
            if payload.len() < 4 {
                return Err(FrameError::Bad(frame_error(
                    kind,
                    &payload,
                    "unknown_frame",
                )));
            }
            // amq-protocol drops basic.qos's prefetch_size, which RabbitMQ refuses unless 0.
            if let Some(&[0, 60, 0, 10, a, b, c, d]) = payload.get(..8) {
                let size = u32::from_be_bytes([a, b, c, d]);
                if size != 0 && payload.len() == 11 {
                    return Err(FrameError::Bad(
                        AmqpError::connection(
                            codes::NOT_IMPLEMENTED,
                            format!("NOT_IMPLEMENTED - prefetch_size!=0 ({size})"),
                        )
                        .during(60, 10),
                    ));
                }
            }
            match parse_class(&payload[..]) {
                Ok((&[], class)) => Ok(Some(Frame::Method(channel, Box::new(class)))),
                Ok(_) => Err(FrameError::Bad(cannot_decode(&payload))),
                Err(_) if known_method(&payload) => Err(FrameError::Bad(cannot_decode(&payload))),
                Err(_) => Err(FrameError::Abort),
            }
        }
        FRAME_HEADER => {
            let Some(&[k0, k1, w0, w1, b0, b1, b2, b3, b4, b5, b6, b7]) = payload.get(..12) else {
                return Err(FrameError::Bad(frame_error(
                    kind,
                    &payload,
                    "unknown_frame",
                )));
            };
            Ok(Some(Frame::Header {
                channel,
                class_id: u16::from_be_bytes([k0, k1]),
                weight: u16::from_be_bytes([w0, w1]),
                body_size: u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
                properties: payload.slice(12..),
            }))
        }
        FRAME_BODY => Ok(Some(Frame::Body(channel, payload))),
        FRAME_HEARTBEAT if payload.is_empty() => Ok(Some(Frame::Heartbeat(channel))),
        _ => Err(FrameError::Bad(frame_error(
            kind,
            &payload,
            "unknown_frame",
        ))),
    }
}

/// RabbitMQ's `type 2, all octets = <<...>>` text for a frame where it was not expected.
pub fn unexpected(kind: u8, payload: &[u8]) -> AmqpError {
    AmqpError::connection(
        codes::UNEXPECTED_FRAME,
        format!(
            "UNEXPECTED_FRAME - type {kind}, all octets = {}",
            erlang_binary(payload)
        ),
    )
}

/// 501 for a known method whose arguments did not decode (or had octets left over),
/// naming the method, as RabbitMQ answers it.
fn cannot_decode(payload: &[u8]) -> AmqpError {
    let id = |at: usize| match payload.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    };
    let args = payload.get(4..).unwrap_or_default();
    AmqpError::connection(
        codes::FRAME_ERROR,
        format!("FRAME_ERROR - cannot decode {}", erlang_binary(args)),
    )
    .during(id(0), id(2))
}

/// Whether the class and method ids at the front of `payload` name an AMQP 0-9-1 method.
fn known_method(payload: &[u8]) -> bool {
    let class = payload
        .first()
        .zip(payload.get(1))
        .map(|(a, b)| u16::from_be_bytes([*a, *b]));
    let method = payload
        .get(2)
        .zip(payload.get(3))
        .map(|(a, b)| u16::from_be_bytes([*a, *b]));
    matches!(
        (class, method),
        (
            Some(10),
            Some(10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61)
        ) | (Some(20), Some(10 | 11 | 20 | 21 | 40 | 41))
            | (Some(30), Some(10 | 11))
            | (Some(40), Some(10 | 11 | 20 | 21 | 30 | 31 | 40 | 51))
            | (
                Some(50),
                Some(10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51)
            )
            | (
                Some(60),
                Some(
                    10 | 11
                        | 20
                        | 21
                        | 30
                        | 31
                        | 40
                        | 50
                        | 60
                        | 70
                        | 71
                        | 72
                        | 80
                        | 90
                        | 100
                        | 110
                        | 111
                        | 120
                )
            )
            | (Some(85), Some(10 | 11))
            | (Some(90), Some(10 | 11 | 20 | 21 | 30 | 31))
    )
}

/// Appends an encoded method frame to `out`.
pub fn write_method(out: &mut BytesMut, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    match gen_frame(&frame)(WriteContext::from(Vec::with_capacity(128))) {
        Ok(ctx) => out.extend_from_slice(&ctx.write),
        // Encoding into a Vec cannot run out of space.
        Err(e) => tracing::error!(error = ?e, "method frame encoding failed"),
    }
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    let len = s.len().min(255);
    out.put_u8(len as u8);
    out.put_slice(s.as_bytes().get(..len).unwrap_or_default());
}

/// `basic.deliver`, encoded by hand: it is written once per delivered message.
pub fn write_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let size = 4
        + 1
        + consumer_tag.len().min(255)
        + 8
        + 1
        + 1
        + exchange.len().min(255)
        + 1
        + routing_key.len().min(255);
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    out.put_u32(size as u32);
    out.put_u16(BASIC_CLASS);
    out.put_u16(60);
    put_short_str(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u8(FRAME_END);
}

/// `basic.ack` from the broker (publisher confirms), encoded by hand.
pub fn write_confirm_ack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    out.put_u32(13);
    out.put_u16(BASIC_CLASS);
    out.put_u16(80);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(multiple));
    out.put_u8(FRAME_END);
}

/// Appends a content header and the body split into frames of at most `frame_max`.
pub fn write_content(
    out: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    out.reserve(FRAME_OVERHEAD * 2 + 12 + properties.len() + body.len());
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32((12 + properties.len()) as u32);
    out.put_u16(BASIC_CLASS);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.put_slice(properties);
    out.put_u8(FRAME_END);
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

pub fn write_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}
