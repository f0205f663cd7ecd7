"""Deep nesting and lying element counts.

AMQP: field tables and arrays nest at most 64 levels (the outermost table is level 1).
Proves that 64 levels are accepted and 65 (or 18,000, a ~126 KB frame that once
overflowed the decoder's stack) are refused without harming the broker, wherever a field
table travels:
- connection.start-ok client properties, before connection.tune: a frame over the
  pre-tune limit of 4096 bytes (18,000 levels) and a 65..500-level one that fits in 4096
  bytes are both refused the way RabbitMQ refuses anything before connection.open: the
  socket is closed after a ~3 s delay, with no connection.close;
- method arguments after login (queue.declare, exchange.declare, queue.bind,
  exchange.bind, basic.consume): connection.close 501 FRAME_ERROR 'FRAME_ERROR - cannot
  decode ...' naming the method;
- the `headers` property of a content header: connection.close 541 INTERNAL_ERROR.

Kafka: requests whose arrays claim 2^31-1 elements (classic i32 counts and compact
uvarint counts), lying string and bytes lengths, and lies at every nesting level of
CreateTopics (topics > assignments > broker ids, topics > configs) and of tagged-field
sections: the connection is closed (or the request answered with an error), quickly, and
the broker allocates nothing near what the counts claim.
"""

import struct
import uuid

import pytest

import hostile_wire as w
from hostile_broker import parallel, running_sluice

# The pre-open silent close waits ~3 s (RabbitMQ's SILENT_CLOSE_DELAY); allow some
# scheduling slack below it and plenty above.
SILENT_DELAY_MIN = 2.5
SILENT_TIMEOUT = 12.0


@pytest.fixture(scope="module")
def broker():
    with running_sluice("nesting") as b:
        yield b


def props_nested(kind, depth):
    """Client properties (a field table) `depth` levels deep in all."""
    inner = {"table": w.nested_table, "array": w.nested_array, "mixed": w.nested_mixed}[kind]
    tag = b"F" if kind in ("table", "mixed") else b"A"
    if depth == 1:
        return w.table([])
    return w.table([("hostile", tag + inner(depth - 1))])


# ---------------------------------------------------------------------------------------
# AMQP: connection.start-ok before tune.


def start_ok_refused_silently(port, props):
    def check():
        c = w.Amqp(port)
        try:
            c.handshake_start()
            c.send(w.frame(w.FRAME_METHOD, 0, w.start_ok(props)))
            c.expect_silent_close(timeout=SILENT_TIMEOUT, min_delay=SILENT_DELAY_MIN)
        finally:
            c.close()
    return check


def start_ok_accepted(port, props):
    def check():
        c = w.Amqp(port)
        try:
            c.handshake_start()
            c.sock.sendall(w.frame(w.FRAME_METHOD, 0, w.start_ok(props)))
            c.expect_method(10, 30)  # tune
            c.sock.sendall(w.method_frame(0, 10, 31, struct.pack(">HIH", 2047, 131072, 0)))
            c.sock.sendall(w.method_frame(0, 10, 40, w.short_str("/") + w.short_str("") + b"\0"))
            c.expect_method(10, 41)  # open-ok
        finally:
            c.close()
    return check


def test_start_ok_18000_deep_is_over_the_pre_tune_frame_limit(broker, survives):
    """~126 KB of client properties: over the 4096-byte pre-tune frame limit."""
    with survives(broker, rss_growth_mib=64):
        cases = []
        for kind in ("table", "array", "mixed"):
            props = props_nested(kind, 18000)
            assert len(props) > 60000
            cases.append((f"start-ok {kind} x18000 ({len(props)} bytes)",
                          start_ok_refused_silently(broker.amqp_port, props)))
        parallel(cases)


def test_start_ok_65_to_500_deep_within_4096_bytes_is_refused(broker, survives):
    with survives(broker, rss_growth_mib=64):
        cases = []
        for kind in ("table", "array", "mixed"):
            for depth in (65, 500):
                props = props_nested(kind, depth)
                frame_len = len(w.frame(w.FRAME_METHOD, 0, w.start_ok(props)))
                assert frame_len <= 4096, frame_len
                cases.append((f"start-ok {kind} x{depth} ({frame_len} bytes)",
                              start_ok_refused_silently(broker.amqp_port, props)))
        parallel(cases)


def test_start_ok_64_deep_is_accepted(broker, survives):
    with survives(broker, rss_growth_mib=64):
        parallel([(f"start-ok {kind} x64", start_ok_accepted(broker.amqp_port, props_nested(kind, 64)))
                  for kind in ("table", "array", "mixed")])


# ---------------------------------------------------------------------------------------
# AMQP: method arguments after login.


def args_nested(kind, depth):
    return props_nested(kind, depth)


def declare_with(port, args):
    c = w.Amqp(port).login().open_channel(1)
    name = f"hostile.deep.{uuid.uuid4().hex[:10]}"
    c.sock.sendall(w.frame(w.FRAME_METHOD, 1, w.queue_declare(name, args, exclusive=True)))
    return c


@pytest.mark.parametrize("kind", ["table", "array", "mixed"])
def test_queue_declare_arguments_nesting(broker, survives, kind):
    """64 levels: declare-ok. 65 and 18,000 levels: 501 FRAME_ERROR during 50.10."""
    with survives(broker, rss_growth_mib=64):
        c = declare_with(broker.amqp_port, args_nested(kind, 64))
        try:
            c.expect_method(50, 11)
        finally:
            c.close()
        for depth in (65, 18000):
            c = declare_with(broker.amqp_port, args_nested(kind, depth))
            try:
                f = c.expect_connection_close(w.FRAME_ERROR, "FRAME_ERROR - cannot decode")
                assert f.close_info()[2:] == (50, 10), f
            finally:
                c.close()


OTHER_METHODS = {
    "exchange.declare": ((40, 10), lambda args: w.exchange_declare(f"hostile.x.{uuid.uuid4().hex[:8]}", "direct",
                                                                   args)),
    "queue.bind": ((50, 20), lambda args: w.queue_bind("hostile.none", "amq.direct", "k", args)),
    "exchange.bind": ((40, 30), lambda args: w.exchange_bind("amq.direct", "amq.fanout", "k", args)),
    "basic.consume": ((60, 20), lambda args: w.basic_consume("hostile.none", "", args)),
}


@pytest.mark.parametrize("method_name", sorted(OTHER_METHODS))
def test_other_method_arguments_18000_deep(broker, survives, method_name):
    (cls, mid), build = OTHER_METHODS[method_name]
    with survives(broker, rss_growth_mib=64):
        for depth in (65, 18000):
            c = w.Amqp(broker.amqp_port).login().open_channel(1)
            try:
                c.sock.sendall(w.frame(w.FRAME_METHOD, 1, build(args_nested("table", depth))))
                f = c.expect_connection_close(w.FRAME_ERROR, "FRAME_ERROR - cannot decode")
                assert f.close_info()[2:] == (cls, mid), f
            finally:
                c.close()


# ---------------------------------------------------------------------------------------
# AMQP: content header `headers`.


def publish_with_headers(c, queue, headers, body=b"hello"):
    c.sock.sendall(
        w.frame(w.FRAME_METHOD, 1, w.basic_publish("", queue))
        + w.content_header(1, len(body), w.HEADERS_FLAG, headers)
        + w.frame(w.FRAME_BODY, 1, body)
    )


@pytest.mark.parametrize("kind", ["table", "array", "mixed"])
def test_content_header_headers_nesting(broker, survives, kind):
    """64 levels: the message is stored and comes back with its headers byte for byte.
    65 and 18,000 levels: 541 INTERNAL_ERROR."""
    with survives(broker, rss_growth_mib=64):
        c = w.Amqp(broker.amqp_port).login().open_channel(1)
        try:
            q = f"hostile.deep.{uuid.uuid4().hex[:10]}"
            c.sock.sendall(w.frame(w.FRAME_METHOD, 1, w.queue_declare(q, exclusive=True)))
            c.expect_method(50, 11)
            headers = args_nested(kind, 64)
            publish_with_headers(c, q, headers)
            c.sock.sendall(w.frame(w.FRAME_METHOD, 1, w.basic_get(q)))
            c.expect_method(60, 71)  # get-ok
            h = c.read_frame()
            assert h.kind == w.FRAME_HEADER, h
            flags = struct.unpack(">H", h.payload[12:14])[0]
            assert flags == w.HEADERS_FLAG and h.payload[14:] == headers, "headers did not come back as sent"
            b = c.read_frame()
            assert b.kind == w.FRAME_BODY and b.payload == b"hello", b
        finally:
            c.close()
        for depth in (65, 18000):
            c = w.Amqp(broker.amqp_port).login().open_channel(1)
            try:
                publish_with_headers(c, "hostile.none", args_nested(kind, depth))
                c.expect_connection_close(w.INTERNAL_ERROR)
            finally:
                c.close()


# ---------------------------------------------------------------------------------------
# Kafka: lying element counts.

MAXI = 0x7FFFFFFF
HUGE_UV = w.uvarint(0x80000000)  # compact count/length N+1 = 2^31: claims 2^31-1


def sized(payload):
    return w.i32(len(payload)) + payload


def req(api_key, version, body):
    return w.request(api_key, version, 7, body)


# Produce v3: transactional id, acks, timeout, then [topic [partition records]].
PRODUCE_V3_HEAD = w.kstring(None) + w.i16(1) + w.i32(1000)


def create_topics_v2(topics_count, assignments, configs):
    """CreateTopics v2: [topic (name, partitions, replication, [assignment], [config])],
    timeout, validate_only; `assignments` and `configs` are the raw arrays."""
    topic = w.kstring("hostile-lie") + w.i32(1) + w.i16(1) + assignments + configs
    return req(w.API_CREATE_TOPICS, 2, w.i32(topics_count) + topic + w.i32(1000) + b"\0")


def create_topics_v5(after_replication):
    """CreateTopics v5 (flexible): one topic, then `after_replication` as its compact
    assignments, configs and tagged fields (and whatever follows)."""
    return req(w.API_CREATE_TOPICS, 5,
               b"\x02" + w.compact_string("hostile-lie") + w.i32(1) + w.i16(1) + after_replication)


def join_group_v5(protocols):
    """JoinGroup v5: group, session and rebalance timeouts, member, instance, protocol
    type, then the raw protocols array."""
    return req(11, 5, w.kstring("g") + w.i32(6000) + w.i32(6000) + w.kstring("") + w.kstring(None)
               + w.kstring("consumer") + protocols)


RETENTION = w.kstring("retention.ms") + w.kstring("1000")
HEADER_V2_METADATA = w.i16(w.API_METADATA) + w.i16(9) + w.i32(7) + w.kstring("hostile")

KAFKA_LIES = {
    # Metadata v1: topics [string]; 2^31-1 names claimed, one sent.
    "metadata-v1-topics": req(w.API_METADATA, 1, w.i32(MAXI) + w.kstring("t")),
    # Metadata v9 (flexible): compact array count 2^31-1.
    "metadata-v9-compact-topics": req(w.API_METADATA, 9, HUGE_UV + b"\x00" * 8),
    # Produce v3: the topics count, a partitions count, a records length.
    "produce-v3-topics": req(w.API_PRODUCE, 3, PRODUCE_V3_HEAD + w.i32(MAXI)),
    "produce-v3-partitions": req(w.API_PRODUCE, 3, PRODUCE_V3_HEAD + w.i32(1) + w.kstring("t") + w.i32(MAXI)
                                 + w.i32(0)),
    "produce-v3-records-length": req(w.API_PRODUCE, 3, PRODUCE_V3_HEAD + w.i32(1) + w.kstring("t") + w.i32(1)
                                     + w.i32(0) + w.i32(MAXI) + b"\x00" * 16),
    # CreateTopics v2: lies at each nesting level (topics > assignments > broker ids,
    # topics > configs > name / value), and at all of them at once.
    "createtopics-v2-topics": create_topics_v2(MAXI, w.i32(0), w.i32(0)),
    "createtopics-v2-assignments": create_topics_v2(1, w.i32(MAXI) + w.i32(0) + w.i32(1), w.i32(0)),
    "createtopics-v2-broker-ids": create_topics_v2(1, w.i32(1) + w.i32(0) + w.i32(MAXI) + w.i32(1), w.i32(0)),
    "createtopics-v2-every-level": create_topics_v2(MAXI, w.i32(MAXI) + w.i32(0) + w.i32(MAXI) + w.i32(1), w.i32(MAXI)),
    "createtopics-v2-configs": create_topics_v2(1, w.i32(0), w.i32(MAXI) + RETENTION),
    "createtopics-v2-config-name-length": create_topics_v2(1, w.i32(0), w.i32(1) + w.i16(0x7FFF) + b"retention.ms"),
    "createtopics-v2-config-value-length": create_topics_v2(1, w.i32(0), w.i32(1) + w.kstring("retention.ms")
                                                            + w.i16(0x7FFF) + b"1000"),
    # CreateTopics v5 (flexible): compact counts and lengths, tagged fields.
    "createtopics-v5-compact-topics": req(w.API_CREATE_TOPICS, 5, HUGE_UV + w.compact_string("t") + w.i32(1)
                                          + w.i16(1) + b"\x01\x01\x00"),
    "createtopics-v5-compact-configs": create_topics_v5(b"\x01" + HUGE_UV + w.compact_string("retention.ms")
                                                        + w.compact_string("1") + b"\x00\x00"),
    "createtopics-v5-config-name-length": create_topics_v5(b"\x01\x02" + HUGE_UV + b"retention.ms"),
    "createtopics-v5-tag-count": create_topics_v5(b"\x01\x01" + HUGE_UV + b"\x00" * 8),
    "createtopics-v5-tag-size": create_topics_v5(b"\x01\x01\x01" + w.uvarint(5) + w.uvarint(MAXI) + b"\x00" * 8),
    "createtopics-v5-endless-varint": req(w.API_CREATE_TOPICS, 5, b"\xff" * 64),
    # The tagged fields of request header v2 itself: a count, then a size.
    "header-v2-tag-count": sized(HEADER_V2_METADATA + HUGE_UV),
    "header-v2-tag-size": sized(HEADER_V2_METADATA + b"\x01\x00" + w.uvarint(MAXI)),
    # Groups and configs.
    "joingroup-v5-protocols": join_group_v5(w.i32(MAXI) + w.kstring("range") + w.nbytes(b"")),
    "joingroup-v5-metadata-bytes": join_group_v5(w.i32(1) + w.kstring("range") + w.i32(MAXI) + b"\0" * 8),
    "offsetcommit-v2-partitions": req(8, 2, w.kstring("g") + w.i32(-1) + w.kstring("") + w.i64(-1) + w.i32(1)
                                      + w.kstring("t") + w.i32(MAXI) + w.i32(0)),
    "describeconfigs-v1-names": req(32, 1, w.i32(1) + w.i8(2) + w.kstring("t") + w.i32(MAXI) + w.kstring("x") + b"\0"),
    "apiversions-v3-software-name": req(w.API_API_VERSIONS, 3, HUGE_UV + b"abc"),
}


@pytest.mark.parametrize("case", list(KAFKA_LIES))
def test_kafka_lying_counts(broker, survives, case):
    with survives(broker, rss_growth_mib=64):
        c = w.Kafka(broker.kafka_port)
        try:
            c.send(KAFKA_LIES[case])
            outcome = c.closed_or_answered(timeout=5.0)
            if outcome != "closed":
                _, corr, _body = outcome
                assert corr == 7, f"answer with correlation id {corr} to {case}"
            print(f"{case}: {'closed' if outcome == 'closed' else 'answered'}")
        finally:
            c.close()
