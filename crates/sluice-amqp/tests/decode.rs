//! Fuzz-style property tests of everything that decodes peer input: the frame splitter,
//! method decoding, and content-header properties. Any bytes give a frame, "need more",
//! or a typed error with an AMQP reply code — never a panic, never a read past the input.
//! (cargo-fuzz needs a nightly toolchain, which this project's machines do not have.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use sluice_amqp::error::AmqpError;
use sluice_amqp::frame::{self, Frame};

fn codes_of(e: &AmqpError) -> u16 {
    match e {
        AmqpError::Connection { code, .. } | AmqpError::Channel { code, .. } => *code,
    }
}

/// A syntactically framed frame around arbitrary payload bytes.
fn framed(kind: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    b.put_u16(channel);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.put_u8(frame::FRAME_END);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_splitter(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        match frame::parse(&mut buf, 4096) {
            Ok(Some(_)) => prop_assert!(buf.len() < before),
            Ok(None) => prop_assert_eq!(buf.len(), before),
            Err(e) => prop_assert!(matches!(codes_of(&e), 501 | 502 | 505 | 540)),
        }
    }

    #[test]
    fn arbitrary_method_payloads_decode_or_fail_with_a_reply_code(
        class in prop_oneof![Just(10u16), Just(20), Just(40), Just(50), Just(60), Just(85), Just(90), any::<u16>()],
        method in prop_oneof![(0u16..130), any::<u16>()],
        args in proptest::collection::vec(any::<u8>(), 0..300),
        channel in any::<u16>(),
    ) {
        let mut payload = Vec::new();
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(&args);
        let mut buf = framed(frame::FRAME_METHOD, channel, &payload);
        match frame::parse(&mut buf, 131_072) {
            Ok(Some(Frame::Method(ch, _))) => prop_assert_eq!(ch, channel),
            Ok(other) => prop_assert!(false, "unexpected {:?}", other),
            Err(e) => prop_assert!(matches!(codes_of(&e), 502 | 540), "{:?}", e),
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_content_header_properties_never_panic(props in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = sluice_amqp::props::read_known(&props, true);
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        payload.extend_from_slice(&props);
        let mut buf = framed(frame::FRAME_HEADER, 1, &payload);
        let parsed = frame::parse(&mut buf, 131_072);
        prop_assert!(parsed.is_ok() || matches!(codes_of(&parsed.unwrap_err()), 501));
    }

    #[test]
    fn frames_longer_than_frame_max_are_refused_before_their_payload_arrives(size in 4089u32..u32::MAX, kind in 1u8..9) {
        let mut buf = BytesMut::new();
        buf.put_u8(kind);
        buf.put_u16(0);
        buf.put_u32(size);
        let err = frame::parse(&mut buf, 4096).unwrap_err();
        prop_assert_eq!(codes_of(&err), 501);
    }
}

#[test]
fn a_valid_method_frame_round_trips_through_the_writer_and_the_splitter() {
    use amq_protocol::protocol::{AMQPClass, basic};
    let mut out = BytesMut::new();
    frame::write_method(
        &mut out,
        7,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: true,
        })),
    );
    frame::write_content(&mut out, 7, &[0, 0], b"hello world", 4096);
    frame::write_heartbeat(&mut out);
    let mut kinds = Vec::new();
    while let Some(f) = frame::parse(&mut out, 4096).unwrap() {
        kinds.push(match f {
            Frame::Method(7, _) => "method",
            Frame::Header {
                channel: 7,
                body_size: 11,
                ..
            } => "header",
            Frame::Body(7, b) if &b[..] == b"hello world" => "body",
            Frame::Heartbeat(0) => "heartbeat",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(kinds, ["method", "header", "body", "heartbeat"]);
}
