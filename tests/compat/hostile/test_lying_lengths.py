"""Lying counts and lengths.

AMQP: short strings, long strings and field tables whose length runs past the end of
their frame (or of the table around them), in method arguments after login (501
FRAME_ERROR 'cannot decode' naming the method) and in connection.start-ok before login
(the socket is closed after the silent-close delay, no connection.close); content
headers whose body size does not match the body frames that follow (more body than
announced: 501 FRAME_ERROR 'content body larger than announced'; a body frame after the
message completed: 505 UNEXPECTED_FRAME), whose property bytes lie (541
INTERNAL_ERROR) or which are too short to hold a body size (501); frames whose size
field does not end at the frame-end octet (501).

Kafka: Produce v3 record batches whose batchLength, record count, last offset delta or
record lengths lie (with a CRC computed over the lie, so only a broker that reads the
records can tell): the partition answers CORRUPT_MESSAGE or INVALID_RECORD (or the
connection is closed) and no offset is taken; a records field longer than the request,
and size prefixes smaller than the request header, close the connection.
"""

import struct
import time
import uuid

import pytest

import hostile_wire as w
from hostile_broker import parallel, running_sluice


@pytest.fixture(scope="module")
def broker():
    with running_sluice("lying") as b:
        yield b


# ---------------------------------------------------------------------------------------
# AMQP method arguments.

LIE_TABLE = struct.pack(">I", 0x7FFFFFFF) + w.short_str("k") + b"t\x01"
INNER_TABLE_PAST_OUTER = struct.pack(">I", 10) + w.short_str("k") + b"F" + struct.pack(">I", 100) + b"xxxx"
LONG_STRING_PAST_END = w.table([("k", b"S" + struct.pack(">I", 0xFFFFFFF0) + b"abc")])
ARRAY_PAST_END = w.table([("k", b"A" + struct.pack(">I", 0x7FFFFFFF) + b"I\x00\x00\x00\x01")])
BYTES_PAST_END = w.table([("k", b"x" + struct.pack(">I", 0x7FFFFFFF) + b"abc")])

AMQP_METHOD_LIES = {
    "queue.declare-name-short-string": ((50, 10), w.method(50, 10, b"\0\0" + b"\xc8" + b"abc")),
    "queue.declare-table-length": ((50, 10), w.queue_declare("hostile.lie", LIE_TABLE)),
    "queue.declare-inner-table-past-outer": ((50, 10), w.queue_declare("hostile.lie", INNER_TABLE_PAST_OUTER)),
    "queue.declare-long-string": ((50, 10), w.queue_declare("hostile.lie", LONG_STRING_PAST_END)),
    "queue.declare-array": ((50, 10), w.queue_declare("hostile.lie", ARRAY_PAST_END)),
    "queue.declare-byte-array": ((50, 10), w.queue_declare("hostile.lie", BYTES_PAST_END)),
    "queue.declare-truncated": ((50, 10), w.method(50, 10, b"\0\0" + w.short_str("hostile.lie"))),
    "exchange.declare-type-short-string": ((40, 10), w.method(40, 10, b"\0\0" + w.short_str("x") + b"\xffdirect")),
    "basic.publish-exchange-short-string": ((60, 40), w.method(60, 40, b"\0\0" + b"\xf0" + b"amq")),
    "basic.consume-arguments": ((60, 20), w.basic_consume("hostile.lie", "", LIE_TABLE)),
    "queue.bind-arguments": ((50, 20), w.queue_bind("hostile.lie", "amq.direct", "k", INNER_TABLE_PAST_OUTER)),
}


@pytest.mark.parametrize("case", list(AMQP_METHOD_LIES))
def test_amqp_method_argument_lies(broker, survives, case):
    (cls, mid), payload = AMQP_METHOD_LIES[case]
    with survives(broker, rss_growth_mib=64):
        c = w.Amqp(broker.amqp_port).login().open_channel(1)
        try:
            c.send(w.frame(w.FRAME_METHOD, 1, payload))
            f = c.expect_connection_close(w.FRAME_ERROR, "FRAME_ERROR - cannot decode")
            assert f.close_info()[2:] == (cls, mid), f
        finally:
            c.close()


PLAIN = w.short_str("PLAIN")
RESPONSE = w.long_str(b"\0guest\0guest")
LOCALE = w.short_str("en_US")
START_OK_LIES = {
    "response-long-string": w.method(10, 11, w.table([]) + PLAIN + struct.pack(">I", 0xFFFFFFFF) + b"\0guest\0guest"
                                     + LOCALE),
    "client-properties-table-length": w.method(10, 11, LIE_TABLE + PLAIN + RESPONSE + LOCALE),
    "client-properties-inner-table": w.method(10, 11, INNER_TABLE_PAST_OUTER + PLAIN + RESPONSE + LOCALE),
    "mechanism-short-string": w.method(10, 11, w.table([]) + b"\xffPLAIN"),
}


def test_amqp_start_ok_lies(broker, survives):
    def check(payload):
        def run():
            c = w.Amqp(broker.amqp_port)
            try:
                c.handshake_start()
                c.send(w.frame(w.FRAME_METHOD, 0, payload))
                c.expect_silent_close(timeout=12, min_delay=2.5)
            finally:
                c.close()
        return run

    with survives(broker, rss_growth_mib=64):
        parallel([(name, check(p)) for name, p in START_OK_LIES.items()])


# ---------------------------------------------------------------------------------------
# AMQP content.


def publisher(broker):
    c = w.Amqp(broker.amqp_port).login().open_channel(1)
    q = f"hostile.lie.{uuid.uuid4().hex[:10]}"
    c.sock.sendall(w.frame(w.FRAME_METHOD, 1, w.queue_declare(q, exclusive=True)))
    c.expect_method(50, 11)
    c.sock.sendall(w.frame(w.FRAME_METHOD, 1, w.basic_publish("", q)))
    return c, q


NEXT_METHOD = w.frame(w.FRAME_METHOD, 1, w.method(60, 10, b"\0\0\0\0\0\1\0"))  # basic.qos
EXPECTED_BODY = "UNEXPECTED_FRAME - expected content body"

CONTENT_LIES = {
    # (content frames after basic.publish, expected reply code, expected text prefix)
    # As RabbitMQ: body past the announced size is not kept, the content never completes,
    # and the next method is out of place.
    "one-body-frame-larger-than-announced": (
        lambda: w.content_header(1, 10) + w.frame(w.FRAME_BODY, 1, b"x" * 20) + NEXT_METHOD,
        w.UNEXPECTED_FRAME, EXPECTED_BODY),
    "more-body-frames-than-announced": (
        lambda: (w.content_header(1, 10) + w.frame(w.FRAME_BODY, 1, b"x" * 6)
                 + w.frame(w.FRAME_BODY, 1, b"y" * 6) + NEXT_METHOD),
        w.UNEXPECTED_FRAME, EXPECTED_BODY),
    "many-body-frames-after-small-announcement": (
        lambda: (w.content_header(1, 100) + b"".join(w.frame(w.FRAME_BODY, 1, b"z" * 30) for _ in range(50))
                 + NEXT_METHOD),
        w.UNEXPECTED_FRAME, EXPECTED_BODY),
    "body-frame-after-message-complete": (
        lambda: w.content_header(1, 5) + w.frame(w.FRAME_BODY, 1, b"hello") + w.frame(w.FRAME_BODY, 1, b"extra"),
        w.UNEXPECTED_FRAME, "UNEXPECTED_FRAME"),
    "method-before-body-complete": (
        lambda: (w.content_header(1, 10) + w.frame(w.FRAME_BODY, 1, b"hello")
                 + w.frame(w.FRAME_METHOD, 1, w.basic_publish("", "x"))),
        w.UNEXPECTED_FRAME, "UNEXPECTED_FRAME"),
    "headers-table-length-past-frame": (
        lambda: w.content_header(1, 5, w.HEADERS_FLAG, LIE_TABLE) + w.frame(w.FRAME_BODY, 1, b"hello"),
        w.INTERNAL_ERROR, None),
    "headers-inner-table-past-outer": (
        lambda: w.content_header(1, 5, w.HEADERS_FLAG, INNER_TABLE_PAST_OUTER) + w.frame(w.FRAME_BODY, 1, b"hello"),
        w.INTERNAL_ERROR, None),
    "all-property-flags-no-properties": (
        lambda: w.content_header(1, 5, 0xFFFC) + w.frame(w.FRAME_BODY, 1, b"hello"),
        w.INTERNAL_ERROR, None),
    "content-type-short-string-past-frame": (
        lambda: w.content_header(1, 5, 0x8000, b"\xff" + b"text/plain") + w.frame(w.FRAME_BODY, 1, b"hello"),
        w.INTERNAL_ERROR, None),
    "content-header-too-short": (
        lambda: w.frame(w.FRAME_HEADER, 1, struct.pack(">HH", 60, 0) + b"\x00\x00"),
        w.FRAME_ERROR, "FRAME_ERROR"),
}


@pytest.mark.parametrize("case", list(CONTENT_LIES))
def test_amqp_content_lies(broker, survives, case):
    build, code, prefix = CONTENT_LIES[case]
    with survives(broker, rss_growth_mib=64):
        c, q = publisher(broker)
        try:
            c.send(build())
            c.expect_connection_close(code, prefix)
        finally:
            c.close()


CHANNEL_OPEN = w.method(20, 10, w.short_str(""))
FRAME_LIES = {
    # The size field says 4 bytes, 12 follow: the 5th is not the frame-end octet.
    "size-shorter-than-payload": (struct.pack(">BHI", w.FRAME_METHOD, 1, 4) + CHANNEL_OPEN + b"\x00" * 6
                                  + bytes([w.FRAME_END])),
    # The size field says 40, the frame ends after 5 (then more frames' bytes follow).
    "size-longer-than-payload": (struct.pack(">BHI", w.FRAME_METHOD, 1, 40) + CHANNEL_OPEN + bytes([w.FRAME_END])
                                 + b"\x01" * 40),
}


@pytest.mark.parametrize("case", list(FRAME_LIES))
def test_amqp_frame_lies(broker, survives, case):
    with survives(broker, rss_growth_mib=64):
        c = w.Amqp(broker.amqp_port).login().open_channel(1)
        try:
            c.send(FRAME_LIES[case])
            c.expect_connection_close(w.FRAME_ERROR, "FRAME_ERROR")
        finally:
            c.close()


def test_amqp_heartbeat_on_a_channel(broker, survives):
    """RabbitMQ's 505 quoting the frame: heartbeats belong on channel 0."""
    with survives(broker, rss_growth_mib=64):
        c = w.Amqp(broker.amqp_port).login().open_channel(1)
        try:
            c.send(w.frame(w.FRAME_HEARTBEAT, 1, b""))
            c.expect_connection_close(w.UNEXPECTED_FRAME, "UNEXPECTED_FRAME - type 8, all octets = <<>>")
        finally:
            c.close()


# ---------------------------------------------------------------------------------------
# Kafka record batches.


def parse_metadata_v1(body):
    """-> {topic: (error, {partition: (error, leader)})}."""
    r = w.Reader(body)
    for _ in range(r.i32()):  # brokers
        r.i32(), r.string(), r.i32(), r.string()
    r.i32()  # controller
    topics = {}
    for _ in range(r.i32()):
        error, name, _internal = r.i16(), r.string(), r.take(1)
        parts = {}
        for _ in range(r.i32()):
            perr, p, leader = r.i16(), r.i32(), r.i32()
            for _ in range(r.i32()):
                r.i32()
            for _ in range(r.i32()):
                r.i32()
            parts[p] = (perr, leader)
        topics[name] = (error, parts)
    return topics


def fresh_topic(broker):
    """A new topic (auto-created through Metadata), once partition 0 has a leader."""
    topic = f"hostile-lie-{uuid.uuid4().hex[:12]}"
    c = w.Kafka(broker.kafka_port)
    try:
        deadline = time.monotonic() + 10
        corr = 100
        while True:
            corr += 1
            topics = parse_metadata_v1(c.call(w.metadata_v1(corr, [topic]), corr))
            error, parts = topics.get(topic, (None, {}))
            if error == 0 and parts.get(0, (1, -1))[0] == 0 and parts[0][1] >= 0:
                return topic
            assert time.monotonic() < deadline, f"topic {topic} not ready: {topics}"
            time.sleep(0.05)
    finally:
        c.close()


def latest_offset(broker, topic):
    c = w.Kafka(broker.kafka_port)
    try:
        [(_, _, error, offset)] = w.parse_list_offsets_v1(c.call(w.list_offsets_v1(9, topic, 0, -1), 9))
        assert error == 0, f"ListOffsets error {error}"
        return offset
    finally:
        c.close()


def one_record():
    return [(b"k", b"v")]


def with_batch_length(batch, length):
    """The batch with its batchLength field (after the 8-byte base offset) replaced."""
    return batch[:8] + w.i32(length) + batch[12:]


THREE = [(b"k1", b"v1"), (b"k2", b"v2"), (b"k3", b"v3")]

BATCH_LIES = {
    "batch-length-past-records": lambda: w.record_batch(one_record(), length_delta=+1000),
    "batch-length-short-of-header": lambda: with_batch_length(w.record_batch(one_record()), 20),
    "batch-length-negative": lambda: with_batch_length(w.record_batch(one_record()), -50),
    "batch-length-cuts-records": lambda: w.record_batch(THREE, length_delta=-5),
    "record-count-claims-1000": lambda: w.record_batch(one_record(), count=1000, last_offset_delta=999),
    "record-count-claims-2^31-1": lambda: w.record_batch(one_record(), count=0x7FFFFFFF, last_offset_delta=0x7FFFFFFE),
    "record-count-short-of-records": lambda: w.record_batch(THREE, count=1, last_offset_delta=0),
    "record-count-zero": lambda: w.record_batch(one_record(), count=0, last_offset_delta=-1),
    "record-count-negative": lambda: w.record_batch(one_record(), count=-5, last_offset_delta=-6),
    "record-count-mismatches-last-offset-delta": lambda: w.record_batch(THREE, count=3, last_offset_delta=7),
    "record-length-past-batch": lambda: w.record_batch(one_record(), record_length_delta=+100),
    "record-length-short": lambda: w.record_batch(THREE, record_length_delta=-2),
    "crc-wrong": lambda: w.record_batch(one_record(), crc=0x12345678),
}


@pytest.mark.parametrize("case", list(BATCH_LIES))
def test_kafka_lying_record_batch(broker, survives, case):
    with survives(broker, rss_growth_mib=64):
        topic = fresh_topic(broker)
        c = w.Kafka(broker.kafka_port)
        try:
            c.send(w.produce_v3(5, topic, 0, BATCH_LIES[case]()))
            outcome = c.closed_or_answered(timeout=10)
        finally:
            c.close()
        log_end = latest_offset(broker, topic)
        if outcome == "closed":
            assert log_end == 0, f"the connection was closed, yet the batch with {case} took offsets 0..{log_end}"
            return
        _, corr, body = outcome
        assert corr == 5, f"answer with correlation id {corr}"
        [(_, partition, error, base_offset)] = w.parse_produce_v3(body)
        assert partition == 0
        assert error in (w.CORRUPT_MESSAGE, w.INVALID_RECORD) and log_end == 0, (
            f"a record batch with {case} was answered with error code {error} (base offset {base_offset}), "
            f"expected {w.CORRUPT_MESSAGE} CORRUPT_MESSAGE or {w.INVALID_RECORD} INVALID_RECORD; the partition's "
            f"log end offset is now {log_end} (expected 0: nothing stored)")


KAFKA_FRAME_LIES = {
    # The records field claims 2^31-1 bytes; the request ends after 16.
    "records-bytes-past-request": w.request(w.API_PRODUCE, 3, 5, w.kstring(None) + w.i16(1) + w.i32(1000) + w.i32(1)
                                            + w.kstring("t") + w.i32(1) + w.i32(0) + w.i32(0x7FFFFFFF) + b"\x00" * 16),
    # Size prefixes smaller than the request header (8 bytes + client id) they precede.
    "size-4": w.i32(4) + w.request_header(w.API_METADATA, 1, 5) + w.i32(-1),
    "size-7": w.i32(7) + w.request_header(w.API_METADATA, 1, 5) + w.i32(-1),
    "size-8-client-id-missing": w.i32(8) + w.request_header(w.API_METADATA, 1, 5) + w.i32(-1),
    "size-12-client-id-cut": w.i32(12) + w.request_header(w.API_METADATA, 1, 5) + w.i32(-1),
    "size-cuts-body": (w.i32(len(w.request_header(w.API_METADATA, 1, 5)) + 2) + w.request_header(w.API_METADATA, 1, 5)
                       + w.i32(1) + w.kstring("t")),
}


@pytest.mark.parametrize("case", list(KAFKA_FRAME_LIES))
def test_kafka_size_prefix_lies(broker, survives, case):
    with survives(broker, rss_growth_mib=64):
        c = w.Kafka(broker.kafka_port)
        try:
            c.send(KAFKA_FRAME_LIES[case])
            outcome = c.closed_or_answered(timeout=5)
            if outcome != "closed":
                _, corr, _body = outcome
                assert corr == 5, f"answer with correlation id {corr} to {case}"
        finally:
            c.close()
