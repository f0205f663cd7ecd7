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
        body_size: u64,
        properties: Bytes,
    },
    Body(u16, Bytes),
    Heartbeat(u16),
}

/// Takes one whole frame off the front of `buf`, or `None` when more bytes are needed.
/// A frame longer than `frame_max` is a FRAME_ERROR before its payload is read.
pub fn parse(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    let Some(&[kind, c0, c1, s0, s1, s2, s3]) = buf.get(..7) else {
        return Ok(None);
    };
    let channel = u16::from_be_bytes([c0, c1]);
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if size as usize + FRAME_OVERHEAD > frame_max as usize {
        return Err(AmqpError::connection(
            codes::FRAME_ERROR,
            format!("FRAME_ERROR - frame size {size} exceeds the negotiated frame_max {frame_max}"),
        ));
    }
    let total = size as usize + FRAME_OVERHEAD;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf.get(total - 1) != Some(&FRAME_END) {
        return Err(AmqpError::connection(
            codes::FRAME_ERROR,
            "FRAME_ERROR - missing frame end octet",
        ));
    }
    let mut frame = buf.split_to(total);
    frame.advance(7);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    match kind {
        FRAME_METHOD => {
            let parsed = parse_class(&payload[..]);
            match parsed {
                Ok((&[], class)) => Ok(Some(Frame::Method(channel, Box::new(class)))),
                Ok(_) => Err(AmqpError::connection(
                    codes::SYNTAX_ERROR,
                    "SYNTAX_ERROR - trailing bytes after method",
                )),
                Err(_) => Err(unknown_or_malformed(&payload)),
            }
        }
        FRAME_HEADER => {
            let Some(&[k0, k1, _, _, b0, b1, b2, b3, b4, b5, b6, b7, _, _]) = payload.get(..14)
            else {
                return Err(AmqpError::connection(
                    codes::FRAME_ERROR,
                    "FRAME_ERROR - short content header",
                ));
            };
            let class_id = u16::from_be_bytes([k0, k1]);
            let body_size = u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
            Ok(Some(Frame::Header {
                channel,
                class_id,
                body_size,
                properties: payload.slice(12..),
            }))
        }
        FRAME_BODY => Ok(Some(Frame::Body(channel, payload))),
        FRAME_HEARTBEAT => Ok(Some(Frame::Heartbeat(channel))),
        other => Err(AmqpError::connection(
            codes::FRAME_ERROR,
            format!("FRAME_ERROR - unknown frame type {other}"),
        )),
    }
}

/// A method frame that did not decode: an unknown class or method id is NOT_IMPLEMENTED
/// (540), bad arguments (including field tables nested too deep) are a FRAME_ERROR (501)
/// naming the method, as RabbitMQ answers them.
fn unknown_or_malformed(payload: &[u8]) -> AmqpError {
    let class = payload
        .first()
        .zip(payload.get(1))
        .map(|(a, b)| u16::from_be_bytes([*a, *b]));
    let method = payload
        .get(2)
        .zip(payload.get(3))
        .map(|(a, b)| u16::from_be_bytes([*a, *b]));
    let known = matches!(
        (class, method),
        (
            Some(10),
            Some(10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61)
        ) | (Some(20), Some(10 | 11 | 20 | 21 | 40 | 41))
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
    );
    if known {
        // RabbitMQ's text: the undecodable argument bytes as an Erlang binary.
        let args = payload.get(4..).unwrap_or_default();
        let mut text = String::from("FRAME_ERROR - cannot decode <<");
        for (i, byte) in args.iter().enumerate() {
            if text.len() > 255 {
                break;
            }
            if i > 0 {
                text.push(',');
            }
            text.push_str(&byte.to_string());
        }
        text.push_str(">>");
        AmqpError::connection(codes::FRAME_ERROR, text)
            .during(class.unwrap_or(0), method.unwrap_or(0))
    } else {
        AmqpError::connection(
            codes::NOT_IMPLEMENTED,
            format!(
                "NOT_IMPLEMENTED - unknown method {}.{}",
                class.unwrap_or(0),
                method.unwrap_or(0)
            ),
        )
    }
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
