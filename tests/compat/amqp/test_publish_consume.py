"""basic.publish / consume / get / ack / nack / reject / qos / cancel / return."""

import datetime
import decimal
import struct

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import Collector, consume, get_all, message_count, pump


@pytest.fixture
def q(channel, name):
    queue_name = name("q")
    channel.queue_declare(queue_name)
    yield queue_name
    try:
        channel.connection.channel().queue_delete(queue_name)
    except Exception:
        pass


def confirmed(connection):
    ch = connection.channel()
    ch.confirm_delivery()
    return ch


ALL_HEADER_TYPES = {
    "str": "héllo wörld",
    "empty-str": "",
    "int": 42,
    "negative": -7,
    "long": 2**40,
    "big-negative": -(2**62),
    "true": True,
    "false": False,
    "float": 3.25,
    "decimal": decimal.Decimal("123.45"),
    "decimal-int": decimal.Decimal("7"),
    "timestamp": datetime.datetime(2024, 5, 17, 12, 30, 45),
    "nested": {"a": 1, "b": {"c": "deep", "d": [1, "two", False]}},
    "list": [1, "two", 3.5, True, {"k": "v"}, [2**40], b"\x00\x01"],
    "empty-list": [],
    "empty-table": {},
    "bytes": b"\x00\xffbinary\x10",
    "void": None,
}


@pytest.fixture
def pika_floats(monkeypatch):
    """pika 1.3.2 cannot encode floats and decodes doubles ('d') truncated to int; teach
    it both directions, for the round-trip test."""
    encode_value, decode_value = pika.data.encode_value, pika.data.decode_value

    def encode(pieces, value):
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return encode_value(pieces, value)

    def decode(encoded, offset):
        if encoded[offset : offset + 1] == b"d":
            return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
        return decode_value(encoded, offset)

    monkeypatch.setattr(pika.data, "encode_value", encode)
    monkeypatch.setattr(pika.data, "decode_value", decode)


@pytest.fixture
def raw_properties(monkeypatch):
    """Records the raw bytes of every content header's properties pika decodes."""
    seen = []
    decode = pika.spec.BasicProperties.decode

    def recording_decode(self, encoded, offset=0):
        seen.append(bytes(encoded[offset:]))
        return decode(self, encoded, offset)

    monkeypatch.setattr(pika.spec.BasicProperties, "decode", recording_decode)
    return seen


def test_round_trip_all_properties_and_header_types(
    connection, channel, q, pika_floats, raw_properties
):
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=ALL_HEADER_TYPES,
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="reply-queue",
        expiration="60000",
        message_id="msg-1",
        timestamp=1700000000,
        type="order.created",
        user_id="guest",  # must equal the authenticated user in RabbitMQ
        app_id="compat-suite",
    )
    body = bytes(range(256)) * 4
    confirmed(connection).basic_publish("", q, body, props)
    ((method, got, got_body),) = consume(connection, channel, q, 1)
    assert got_body == body
    assert method.redelivered is False
    assert method.exchange == ""
    assert method.routing_key == q
    for field in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        assert getattr(got, field) == getattr(props, field), field
    assert got.headers == ALL_HEADER_TYPES
    # Types, not only values (True == 1 in Python; pika decodes 64-bit ints as its
    # int subclass `long`).
    for key, value in ALL_HEADER_TYPES.items():
        back = got.headers[key]
        if isinstance(value, bool) or not isinstance(value, int):
            assert type(back) is type(value), key
        else:
            assert isinstance(back, int) and not isinstance(back, bool), key
    # Byte for byte: same field type tags (RabbitMQ passes the encoded properties through).
    assert raw_properties[-1] == b"".join(props.encode())


def test_empty_body_and_no_properties(connection, channel, q):
    confirmed(connection).basic_publish("", q, b"")
    ((method, props, body),) = consume(connection, channel, q, 1)
    assert body == b""
    assert props.headers is None
    assert props.delivery_mode is None


def test_large_body_spans_frames(connection, channel, q):
    body = b"0123456789abcdef" * 70000  # ~1.1 MB, many body frames
    confirmed(connection).basic_publish("", q, body)
    ((_, _, got),) = consume(connection, channel, q, 1)
    assert got == body


def test_user_id_mismatch_is_406(channel, q):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.confirm_delivery()
        channel.basic_publish("", q, b"x", pika.BasicProperties(user_id="someone-else"))
    assert e.value.reply_code == 406


def test_basic_get_and_get_empty(connection, channel, q):
    pub = confirmed(connection)
    for i in range(3):
        pub.basic_publish("", q, b"m%d" % i)
    method, props, body = channel.basic_get(q, auto_ack=True)
    assert body == b"m0"
    assert method.message_count == 2  # messages left after this one
    assert method.redelivered is False
    assert [m[2] for m in get_all(channel, q)] == [b"m1", b"m2"]
    assert channel.basic_get(q) == (None, None, None)


def test_fifo_order(connection, channel, q):
    pub = confirmed(connection)
    for i in range(50):
        pub.basic_publish("", q, b"%03d" % i)
    got = consume(connection, channel, q, 50)
    assert [m[2] for m in got] == [b"%03d" % i for i in range(50)]


def test_manual_ack(connect, name):
    conn = connect()
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q)
    confirmed(conn).basic_publish("", q, b"a")
    confirmed(conn).basic_publish("", q, b"b")
    got = consume(conn, ch, q, 2, auto_ack=False)
    ch.basic_ack(got[0][0].delivery_tag)
    ch.basic_ack(got[1][0].delivery_tag)
    ch.close()
    ch = conn.channel()
    assert message_count(ch, q) == 0
    ch.queue_delete(q)


def test_ack_multiple(connection, channel, q):
    pub = confirmed(connection)
    for i in range(5):
        pub.basic_publish("", q, b"%d" % i)
    got = consume(connection, channel, q, 5, auto_ack=False)
    channel.basic_ack(got[3][0].delivery_tag, multiple=True)  # acks 1..4
    channel.close()  # the 5th goes back
    ch = connection.channel()
    left = get_all(ch, q)
    assert [m[2] for m in left] == [b"4"]
    assert left[0][0].redelivered is True


def test_ack_unknown_delivery_tag_is_406(connection, channel, q):
    confirmed(connection).basic_publish("", q, b"x")
    method, _, _ = channel.basic_get(q, auto_ack=False)
    channel.basic_ack(method.delivery_tag + 100)
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.basic_qos(prefetch_count=1)  # any synchronous call sees the close
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith("PRECONDITION_FAILED")


def test_double_ack_is_406(connection, channel, q):
    confirmed(connection).basic_publish("", q, b"x")
    method, _, _ = channel.basic_get(q, auto_ack=False)
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.basic_qos(prefetch_count=1)
    assert e.value.reply_code == 406


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_requeue_keeps_place_and_sets_redelivered(connection, channel, q, how):
    pub = confirmed(connection)
    for i in range(3):
        pub.basic_publish("", q, b"m%d" % i)
    method, _, body = channel.basic_get(q, auto_ack=False)
    assert body == b"m0" and method.redelivered is False
    if how == "nack":
        channel.basic_nack(method.delivery_tag, requeue=True)
    else:
        channel.basic_reject(method.delivery_tag, requeue=True)
    got = get_all(channel, q)
    assert [m[2] for m in got] == [b"m0", b"m1", b"m2"]
    assert [m[0].redelivered for m in got] == [True, False, False]


def test_nack_multiple_requeue(connection, channel, q):
    pub = confirmed(connection)
    for i in range(4):
        pub.basic_publish("", q, b"m%d" % i)
    got = consume(connection, channel, q, 4, auto_ack=False)
    channel.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=True)
    channel.basic_ack(got[3][0].delivery_tag)
    ch = connection.channel()
    left = get_all(ch, q)
    assert [m[2] for m in left] == [b"m0", b"m1", b"m2"]
    assert all(m[0].redelivered for m in left)


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_reject_without_requeue_drops(connection, channel, q, how):
    confirmed(connection).basic_publish("", q, b"gone")
    method, _, _ = channel.basic_get(q, auto_ack=False)
    if how == "nack":
        channel.basic_nack(method.delivery_tag, requeue=False)
    else:
        channel.basic_reject(method.delivery_tag, requeue=False)
    assert channel.basic_get(q) == (None, None, None)
    channel.close()
    ch = connection.channel()
    assert message_count(ch, q) == 0


def test_prefetch_1_fair_dispatch(connection, q):
    slow = connection.channel()
    fast = connection.channel()
    slow.basic_qos(prefetch_count=1)
    fast.basic_qos(prefetch_count=1)
    slow_col = Collector()  # never acks
    fast_col = Collector(ack=True)
    slow.basic_consume(q, slow_col, auto_ack=False)
    fast.basic_consume(q, fast_col, auto_ack=False)
    pub = confirmed(connection)
    for i in range(6):
        pub.basic_publish("", q, b"%d" % i)
    pump(connection, lambda: len(slow_col.messages) + len(fast_col.messages) == 6)
    assert len(slow_col.messages) == 1
    assert len(fast_col.messages) == 5
    connection.process_data_events(time_limit=0.2)
    assert len(slow_col.messages) == 1  # still blocked by its unacked message


def test_prefetch_limits_unacked_deliveries(connection, channel, q):
    channel.basic_qos(prefetch_count=3)
    col = Collector()
    channel.basic_consume(q, col, auto_ack=False)
    pub = confirmed(connection)
    for i in range(10):
        pub.basic_publish("", q, b"%d" % i)
    pump(connection, lambda: len(col.messages) == 3)
    connection.process_data_events(time_limit=0.2)
    assert len(col.messages) == 3
    channel.basic_ack(col.messages[-1][0].delivery_tag, multiple=True)
    pump(connection, lambda: len(col.messages) == 6)
    connection.process_data_events(time_limit=0.2)
    assert len(col.messages) == 6


def test_unacked_requeued_when_channel_closes(connection, q):
    pub = confirmed(connection)
    for i in range(3):
        pub.basic_publish("", q, b"m%d" % i)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=2)
    got = consume(connection, ch, q, 2, auto_ack=False)
    assert [m[2] for m in got] == [b"m0", b"m1"]
    ch.close()
    ch2 = connection.channel()
    left = get_all(ch2, q)
    assert [m[2] for m in left] == [b"m0", b"m1", b"m2"]
    assert [m[0].redelivered for m in left] == [True, True, False]


def test_unacked_requeued_when_connection_closes(connect, name):
    q = name("q")
    setup = connect().channel()
    setup.queue_declare(q)
    setup.confirm_delivery()
    setup.basic_publish("", q, b"x")
    conn = connect()
    got = consume(conn, conn.channel(), q, 1, auto_ack=False)
    assert got[0][2] == b"x"
    conn.close()
    method, _, body = setup.basic_get(q, auto_ack=True)
    assert body == b"x" and method.redelivered is True
    setup.queue_delete(q)


def test_basic_cancel_stops_delivery(connection, channel, q):
    col = Collector()
    tag = channel.basic_consume(q, col, auto_ack=True)
    pub = confirmed(connection)
    pub.basic_publish("", q, b"before")
    pump(connection, lambda: len(col.messages) == 1)
    channel.basic_cancel(tag)
    pub.basic_publish("", q, b"after")
    connection.process_data_events(time_limit=0.2)
    assert col.bodies == [b"before"]
    assert message_count(channel, q) == 1


def test_consumer_tags_are_per_channel(connection, channel, q):
    assert channel.basic_consume(q, lambda *a: None, consumer_tag="my-tag") == "my-tag"
    # The same tag on another channel is a different consumer.
    other = connection.channel()
    assert other.basic_consume(q, lambda *a: None, consumer_tag="my-tag") == "my-tag"
    assert channel.queue_declare(q, passive=True).method.consumer_count == 2
    other.basic_cancel("my-tag")
    assert channel.queue_declare(q, passive=True).method.consumer_count == 1


def test_consumer_cancel_notification_when_queue_deleted(connection, channel, name):
    q = name("q")
    channel.queue_declare(q)
    cancelled = []
    channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = channel.basic_consume(q, lambda *a: None)
    connection.channel().queue_delete(q)
    pump(connection, lambda: cancelled, what="basic.cancel from the broker")
    assert cancelled == [tag]
    assert channel.is_open


def test_mandatory_unroutable_returns_312(connection, channel, name):
    returned = []
    channel.add_on_return_callback(lambda ch, method, props, body: returned.append((method, body)))
    channel.basic_publish("", name("nowhere"), b"bounce", mandatory=True)
    pump(connection, lambda: returned, what="basic.return")
    method, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert body == b"bounce"


def test_non_mandatory_unroutable_is_dropped_silently(connection, channel, name):
    returned = []
    channel.add_on_return_callback(lambda *a: returned.append(a))
    channel.basic_publish("", name("nowhere"), b"lost")
    channel.basic_qos(prefetch_count=1)  # round trip
    connection.process_data_events(time_limit=0.1)
    assert returned == []
    assert channel.is_open


def test_publish_to_missing_exchange_closes_channel_404(connection, channel, name):
    channel.basic_publish(name("missing-x"), "k", b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.basic_qos(prefetch_count=1)
    assert e.value.reply_code == 404
    assert e.value.reply_text.startswith("NOT_FOUND")
    assert connection.is_open


def test_exclusive_consumer(connect, name):
    conn = connect()
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.basic_consume(q, lambda *a: None)
    assert e.value.reply_code == 403
    assert e.value.reply_text.startswith("ACCESS_REFUSED")
    # And an exclusive consume on a queue that already has a consumer is refused too.
    q2 = name("q")
    ch.queue_declare(q2)
    ch.basic_consume(q2, lambda *a: None)
    other = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.basic_consume(q2, lambda *a: None, exclusive=True)
    assert e.value.reply_code == 403
    conn.channel().queue_delete(q)
    conn.channel().queue_delete(q2)


def test_consume_missing_queue_404(channel, name):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.basic_consume(name("missing"), lambda *a: None)
    assert e.value.reply_code == 404


def test_consumer_priority(connection, q):
    low = connection.channel()
    high = connection.channel()
    low_col, high_col = Collector(ack=True), Collector(ack=True)
    low.basic_consume(q, low_col, arguments={"x-priority": 1})
    high.basic_consume(q, high_col, arguments={"x-priority": 10})
    pub = confirmed(connection)
    for i in range(5):
        pub.basic_publish("", q, b"%d" % i)
    pump(connection, lambda: len(low_col.messages) + len(high_col.messages) == 5)
    assert len(high_col.messages) == 5 and low_col.messages == []


def test_redelivery_to_another_consumer_after_cancel_without_ack(connection, q):
    a = connection.channel()
    confirmed(connection).basic_publish("", q, b"x")
    got = consume(connection, a, q, 1, auto_ack=False)  # cancels after receiving
    a.close()
    b = connection.channel()
    ((method, _, body),) = consume(connection, b, q, 1)
    assert body == b"x" and method.redelivered is True
    assert got[0][0].redelivered is False
