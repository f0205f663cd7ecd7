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
use sluice_amqp::frame::{self, Frame, FrameError};

fn codes_of(e: &AmqpError) -> u16 {
    match e {
        AmqpError::Connection { code, .. } | AmqpError::Channel { code, .. } => *code,
    }
}

/// The reply code a frame error closes with; 0 for an abort (no close at all).
fn frame_code(e: &FrameError) -> u16 {
    e.error().map_or(0, codes_of)
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
            Err(e) => prop_assert!(matches!(frame_code(&e), 0 | 501 | 540)),
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
            Err(e) => prop_assert!(matches!(frame_code(&e), 0 | 501 | 540), "{:?}", e),
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
        prop_assert!(parsed.is_ok() || matches!(frame_code(&parsed.unwrap_err()), 501));
    }

    #[test]
    fn nested_tables_and_arrays_decode_up_to_the_depth_limit_and_fail_past_it(
        levels in proptest::collection::vec((any::<bool>(), 0usize..4), 1..400),
        place in 0usize..3,
    ) {
        let value = nested(&levels);
        let depth = levels.len() + 1;
        let ok = depth <= MAX_DEPTH;
        match place {
            0 => {
                let mut buf = framed(frame::FRAME_METHOD, 0, &start_ok(&value));
                match frame::parse(&mut buf, 1 << 20) {
                    Ok(Some(Frame::Method(0, _))) => prop_assert!(ok, "depth {} accepted", depth),
                    Err(e) => {
                        prop_assert!(!ok, "depth {} refused: {:?}", depth, e);
                        prop_assert_eq!(frame_code(&e), 501);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            1 => {
                let mut buf = framed(frame::FRAME_METHOD, 1, &declare(&value));
                match frame::parse(&mut buf, 1 << 20) {
                    Ok(Some(Frame::Method(1, _))) => prop_assert!(ok, "depth {} accepted", depth),
                    Err(e) => {
                        prop_assert!(!ok);
                        prop_assert_eq!(frame_code(&e), 501);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            _ => match sluice_amqp::props::read_known(&header_props(&value), true) {
                Ok(known) => {
                    prop_assert!(ok, "depth {} accepted", depth);
                    prop_assert!(known.headers.is_some());
                }
                Err(e) => {
                    prop_assert!(!ok);
                    prop_assert_eq!(codes_of(&e), 541);
                }
            },
        }
    }

    #[test]
    fn lying_table_and_string_lengths_fail_without_allocating_what_they_claim(
        claim in 1u32..u32::MAX,
        have in proptest::collection::vec(any::<u8>(), 0..64),
        kind in prop_oneof![Just(b'F'), Just(b'A'), Just(b'S'), Just(b'x')],
    ) {
        prop_assume!(claim as usize > have.len());
        let mut value = vec![kind];
        value.extend_from_slice(&claim.to_be_bytes());
        value.extend_from_slice(&have);
        let mut buf = framed(frame::FRAME_METHOD, 1, &declare(&value));
        let err = frame::parse(&mut buf, 1 << 20).unwrap_err();
        prop_assert_eq!(frame_code(&err), 501);
        prop_assert!(sluice_amqp::props::read_known(&header_props(&value), true).is_err());
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn wide_tables_decode(entries in 0usize..20_000, long in 0usize..100_000) {
        let mut body = Vec::new();
        for i in 0..entries {
            let key = format!("k{i}");
            body.push(key.len() as u8);
            body.extend_from_slice(key.as_bytes());
            body.push(b'b');
            body.push(1);
        }
        body.extend_from_slice(b"\x04longS");
        body.extend_from_slice(&(long as u32).to_be_bytes());
        body.resize(body.len() + long, b'x');
        let mut value = vec![b'F'];
        value.extend_from_slice(&(body.len() as u32).to_be_bytes());
        value.extend_from_slice(&body);
        let mut buf = framed(frame::FRAME_METHOD, 1, &declare(&value));
        prop_assert!(matches!(frame::parse(&mut buf, 1 << 22), Ok(Some(Frame::Method(1, _)))));
    }

    #[test]
    fn frames_longer_than_frame_max_are_refused_before_their_payload_arrives(size in 4097u32..u32::MAX, kind in 1u8..9) {
        let mut buf = BytesMut::new();
        buf.put_u8(kind);
        buf.put_u16(0);
        buf.put_u32(size);
        let err = frame::parse(&mut buf, 4096).unwrap_err();
        prop_assert!(matches!(err, FrameError::Lost(_)));
        prop_assert_eq!(frame_code(&err), 501);
    }
}

/// The decoders' nesting limit (vendor/amq-protocol-types/SLUICE-PATCH.md): the
/// outermost table is level 1, so a value holding `MAX_DEPTH - 1` levels fits in it.
const MAX_DEPTH: usize = amq_protocol::types::parsing::MAX_NESTING_DEPTH;

/// A typed field value: `levels.len()` tables (true) or arrays (false) nested in each
/// other, each level with `siblings` boolean entries beside the nested one. Nested in
/// one outer table, the whole has `levels.len() + 1` levels.
fn nested(levels: &[(bool, usize)]) -> Vec<u8> {
    let mut inner: Vec<u8> = vec![b'V'];
    for &(table, siblings) in levels.iter().rev() {
        inner = wrap(table, siblings, &inner);
    }
    inner
}

fn wrap(table: bool, siblings: usize, inner: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..siblings {
        if table {
            body.extend_from_slice(b"\x01s");
        }
        body.extend_from_slice(b"t\x01");
    }
    if table {
        body.extend_from_slice(b"\x01n");
    }
    body.extend_from_slice(inner);
    let mut v = vec![if table { b'F' } else { b'A' }];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(&body);
    v
}

/// A field table holding one entry `x` with `value`, with its length prefix.
fn table_with(value: &[u8]) -> Vec<u8> {
    let mut t = ((value.len() + 2) as u32).to_be_bytes().to_vec();
    t.extend_from_slice(b"\x01x");
    t.extend_from_slice(value);
    t
}

/// `connection.start-ok` with `value` in its client properties.
fn start_ok(value: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 10, 0, 11];
    p.extend_from_slice(&table_with(value));
    p.extend_from_slice(b"\x05PLAIN");
    p.extend_from_slice(&12u32.to_be_bytes());
    p.extend_from_slice(b"\0guest\0guest");
    p.extend_from_slice(b"\x05en_US");
    p
}

/// `queue.declare` with `value` in its arguments.
fn declare(value: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    p.extend_from_slice(&table_with(value));
    p
}

/// Content-header property bytes holding only `headers`, with `value` in it.
fn header_props(value: &[u8]) -> Vec<u8> {
    let mut p = vec![0x20, 0x00];
    p.extend_from_slice(&table_with(value));
    p
}

#[test]
fn the_depth_limit_is_exact_for_tables_and_arrays() {
    for table in [true, false] {
        let fits = nested(&vec![(table, 1); MAX_DEPTH - 1]);
        let too_deep = nested(&vec![(table, 1); MAX_DEPTH]);
        let mut buf = framed(frame::FRAME_METHOD, 1, &declare(&fits));
        assert!(matches!(
            frame::parse(&mut buf, 1 << 20),
            Ok(Some(Frame::Method(1, _)))
        ));
        let mut buf = framed(frame::FRAME_METHOD, 1, &declare(&too_deep));
        let err = frame::parse(&mut buf, 1 << 20).unwrap_err();
        assert_eq!(frame_code(&err), 501);
        match err.error().cloned().unwrap() {
            AmqpError::Connection {
                class_id,
                method_id,
                text,
                ..
            } => {
                assert_eq!((class_id, method_id), (50, 10));
                assert!(
                    text.starts_with("FRAME_ERROR - cannot decode <<0,0,1,113,"),
                    "{text}"
                );
                // Bounded here; the close itself cuts reply texts to 255 octets.
                assert!(text.len() <= 340);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The deepest accepted structure, decoded, converted to Sluice's tables, re-encoded and
/// dropped, fits in 1 MiB of stack (half a tokio worker's) in a debug build: what the limit allows cannot overflow a worker thread.
#[test]
fn the_deepest_accepted_headers_fit_in_a_small_stack() {
    let value = nested(&vec![(true, 2); MAX_DEPTH - 1]);
    let props = header_props(&value);
    let worker = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            let known = sluice_amqp::props::read_known(&props, true).unwrap();
            let headers = known.headers.unwrap();
            let back = sluice_amqp::props::table_to_amqp(&headers);
            let again = sluice_amqp::props::table_from_amqp(&back);
            assert_eq!(again, headers);
            let with_count = sluice_amqp::props::with_delivery_count(&props, 3).unwrap();
            assert!(sluice_amqp::props::read_known(&with_count, true).is_ok());
        })
        .unwrap();
    worker.join().unwrap();
}

/// The frame that crashed the broker: tables nested about 18,000 deep in one
/// `connection.start-ok` of about 126 KB. It is refused with a FRAME_ERROR.
#[test]
fn eighteen_thousand_nested_tables_are_refused_without_recursing() {
    let value = nested(&vec![(true, 0); 18_000]);
    let payload = start_ok(&value);
    assert!(payload.len() > 100_000);
    let worker = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            let mut buf = framed(frame::FRAME_METHOD, 0, &payload);
            let err = frame::parse(&mut buf, 1 << 20).unwrap_err();
            assert_eq!(frame_code(&err), 501);
        })
        .unwrap();
    worker.join().unwrap();
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
