"""Malformed input on a raw socket: each case ends with the connection closed (or, where
the request can be identified, an error answer) within a few seconds, and the broker then
still serves a normal producer and consumer."""

import socket

import pytest

import kafka_wire as wire
from kafka_helpers import consume, produce

METADATA_V1_HEADER = wire.i16(wire.API_METADATA) + wire.i16(1) + wire.i32(7) + wire.string("compat-raw")

CASES = {
    # An HTTP request: its first four bytes read as a size of about 1.2 GB.
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "huge-size": wire.i32(0x7FFFFFFF) + b"\x00" * 16,
    "negative-size": wire.i32(-1) + b"\x00" * 16,
    "zero-size": wire.i32(0),
    "header-too-short": wire.i32(3) + b"\x00\x03\x00",
    "unknown-api-key": wire.request(0x7FFF, 0, 7),
    "negative-api-key": wire.request(-1, 0, 7),
    "unsupported-version": wire.request(wire.API_METADATA, 999, 7),
    # A complete frame whose Metadata v1 body promises 5 topic names and carries none.
    "truncated-body": wire.i32(len(METADATA_V1_HEADER) + 4) + METADATA_V1_HEADER + wire.i32(5),
    # A Metadata v1 request with a topic name length running past the end of the frame.
    "string-past-end": wire.i32(len(METADATA_V1_HEADER) + 6) + METADATA_V1_HEADER + wire.i32(1) + wire.i16(500),
    "garbage": wire.i32(32) + bytes(range(200, 232)),
}


def closed_or_answered(conn, timeout=5.0):
    """'closed', or ('answered', correlation id, body); fails if the server does neither."""
    try:
        corr, body = conn.read_response(timeout)
    except wire.Closed:
        return "closed"
    except TimeoutError:
        pytest.fail(f"the server neither answered nor closed the connection within {timeout}s")
    return ("answered", corr, body)


def assert_still_serving(broker, clients, create_topic):
    broker.assert_alive()
    conn = wire.RawConnection.to(broker.bootstrap)
    try:
        error, apis = wire.parse_api_versions_v0(conn.call(wire.api_versions_request(1), 1))
        assert error == 0 and wire.API_PRODUCE in apis
    finally:
        conn.close()
    topic = create_topic(1)
    assert produce(clients, "confluent", topic, [{"value": b"still here"}]) == [(0, 0)]
    assert [r["value"] for r in consume(clients, "kafka-python", topic, [0], 1)] == [b"still here"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_frame(broker, clients, create_topic, case):
    conn = wire.RawConnection.to(broker.bootstrap)
    try:
        conn.send(CASES[case])
        outcome = closed_or_answered(conn)
        if outcome != "closed":
            _, corr, body = outcome
            # Only a request whose header could be read can be answered, and then with an
            # error for that request's correlation id.
            assert corr == 7, f"answer with correlation id {corr} to {case}"
    finally:
        conn.close()
    assert_still_serving(broker, clients, create_topic)


def test_partial_frame_then_eof(broker, clients, create_topic):
    """The client announces 100 bytes, sends 20 and shuts its side down."""
    conn = wire.RawConnection.to(broker.bootstrap)
    try:
        conn.send(wire.i32(100) + b"\x00" * 20)
        conn.sock.shutdown(socket.SHUT_WR)
        assert closed_or_answered(conn) == "closed"
    finally:
        conn.close()
    assert_still_serving(broker, clients, create_topic)


def test_bad_frame_does_not_disturb_other_connections(broker, create_topic):
    """A healthy connection opened before the bad one keeps working after it."""
    topic = create_topic(1)
    good = wire.RawConnection.to(broker.bootstrap)
    bad = wire.RawConnection.to(broker.bootstrap)
    try:
        bad.send(CASES["huge-size"])
        assert closed_or_answered(bad) == "closed"
        batch = wire.record_batch([(b"k", b"v", [])])
        (res,) = wire.parse_produce_response(good.call(wire.produce_request(2, topic, 0, batch), 2))
        assert res[2:] == (0, 0)
    finally:
        good.close()
        bad.close()


def test_unsupported_api_versions_version_is_answered(broker):
    """An ApiVersions request newer than the broker knows is answered (not closed) with
    UNSUPPORTED_VERSION and the v0 list of supported versions, so a client can retry with
    a version the broker has (KIP-511); the connection stays usable."""
    # Header v2 (client id, then empty tagged fields), as ApiVersions v3+ requests have,
    # and a v3-shaped body.
    payload = (
        wire.i16(wire.API_API_VERSIONS) + wire.i16(999) + wire.i32(11) + wire.string("compat-raw")
        + wire.uvarint(0)
        + wire.compact_string("compat") + wire.compact_string("1.0") + wire.uvarint(0)
    )
    conn = wire.RawConnection.to(broker.bootstrap)
    try:
        body = conn.call(wire.i32(len(payload)) + payload, 11)
        error, apis = wire.parse_api_versions_v0(body)
        assert error == wire.UNSUPPORTED_VERSION
        assert apis.get(wire.API_API_VERSIONS, (None,))[0] == 0, apis
        error, apis = wire.parse_api_versions_v0(conn.call(wire.api_versions_request(12), 12))
        assert error == 0
    finally:
        conn.close()
