"""Stream queues (`x-queue-type: stream`) as RabbitMQ 3.9+ offers them to AMQP 0-9-1
clients: declaration rules, consuming with a prefetch and manual acks from an
`x-stream-offset`, the `x-stream-offset` header on deliveries, messages kept after acks,
independent readers, retention and restarts. Checked against RabbitMQ 3.10.8 (see
README.md); where Sluice deliberately differs the test says so."""

import datetime
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from helpers import pump, sluice_only, wait_for

STREAM = {"x-queue-type": "stream"}


def declare_stream(ch, q, **arguments):
    return ch.queue_declare(q, durable=True, arguments={**STREAM, **arguments})


def publish(ch, q, bodies, properties=None, exchange=""):
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish(exchange, q, b, properties or pika.BasicProperties())


def read(connect, q, offset, prefetch=100, expect=None, timeout=5.0, ack=True):
    """Consumes `q` from `offset` on a new connection; returns (method, properties, body)
    until `expect` deliveries arrived (or for a short while when `expect` is None)."""
    conn = connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = []

    def on_message(channel, method, properties, body):
        got.append((method, properties, body))
        if ack:
            channel.basic_ack(method.delivery_tag)

    args = None if offset is None else {"x-stream-offset": offset}
    ch.basic_consume(q, on_message, arguments=args)
    if expect is None:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            conn.process_data_events(time_limit=0.05)
    else:
        pump(conn, lambda: len(got) >= expect, timeout=timeout, what=f"{expect} deliveries")
        conn.process_data_events(time_limit=0.2)
    conn.close()
    return got


def refused(connect, fn):
    ch = connect().channel()
    with pytest.raises((ChannelClosedByBroker, ConnectionClosedByBroker)) as e:
        fn(ch)
    return e.value.reply_code, e.value.reply_text


@pytest.mark.parametrize(
    "flags, arguments, text",
    [
        (dict(durable=False), {}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        (dict(exclusive=True), {}, "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
        (dict(auto_delete=True), {}, "invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
        ({}, {"x-message-ttl": 1000}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({}, {"x-max-length": 10}, "invalid arg 'x-max-length' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({}, {"x-dead-letter-exchange": "x"}, "invalid arg 'x-dead-letter-exchange' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({}, {"x-expires": 10000}, "invalid arg 'x-expires' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({}, {"x-max-age": "10x"}, "invalid arg 'x-max-age' for queue '{q}' in vhost '/': invalid_max_age"),
        ({}, {"x-max-age": "0s"}, "invalid arg 'x-max-age' for queue '{q}' in vhost '/': invalid_max_age"),
        ({}, {"x-max-age": 10}, "invalid arg 'x-max-age' for queue '{q}' in vhost '/': {{unacceptable_type,signedint}}"),
        ({}, {"x-max-length-bytes": "abc"}, "invalid arg 'x-max-length-bytes' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({}, {"x-max-length-bytes": -5}, "invalid arg 'x-max-length-bytes' for queue '{q}' in vhost '/': {{value_negative,-5}}"),
    ],
)
def test_declaration_rules(connect, name, flags, arguments, text):
    q = name()
    declare = {"durable": True, **flags}
    code, reply = refused(
        connect, lambda ch: ch.queue_declare(q, arguments={**STREAM, **arguments}, **declare)
    )
    assert code == 406
    assert reply == "PRECONDITION_FAILED - " + text.format(q=q)
    # Nothing was created.
    code, _ = refused(connect, lambda ch: ch.queue_declare(q, passive=True))
    assert code == 404


def test_max_age_units_are_accepted(connect, name):
    ch = connect().channel()
    for age in ["1Y", "2M", "3D", "4h", "5m", "6s"]:
        q = name()
        ok = declare_stream(ch, q, **{"x-max-age": age})
        assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
        ch.queue_delete(q)


def test_redeclaration_must_be_equivalent(connect, name):
    q, plain = name("q"), name("plain")
    ch = connect().channel()
    args = {"x-max-age": "1D"}
    declare_stream(ch, q, **args)
    # The same again, and with an unknown argument next to it, is fine; so is passive.
    declare_stream(ch, q, **args)
    declare_stream(ch, q, **args, **{"x-foo": "bar"})
    ch.queue_declare(q, passive=True)
    code, text = refused(connect, lambda c: declare_stream(c, q))
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue '{q}' in vhost '/': "
        "received none but current is the value '1D' of type 'longstr'",
    )
    code, text = refused(connect, lambda c: declare_stream(c, q, **{"x-max-age": "2D"}))
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue '{q}' in vhost '/': "
        "received '2D' but current is '1D'",
    )
    declare_stream(ch, plain)
    code, text = refused(connect, lambda c: c.queue_declare(plain, durable=True))
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{plain}' in vhost '/': "
        "received none but current is the value 'stream' of type 'longstr'",
    )
    code, text = refused(connect, lambda c: c.queue_declare(plain, durable=False))
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{plain}' in vhost '/': "
        "received 'false' but current is 'true'",
    )
    ch = connect().channel()
    ch.queue_delete(q)
    ch.queue_delete(plain)


def test_a_classic_queue_is_not_redeclared_as_a_stream(connect, name):
    q = name()
    ch = connect().channel()
    ch.queue_declare(q, durable=True)
    code, text = refused(connect, lambda c: declare_stream(c, q))
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': "
        "received the value 'stream' of type 'longstr' but current is none",
    )
    ch.queue_delete(q)


def test_what_stream_queues_refuse(connect, name):
    q = name()
    ch = connect().channel()
    declare_stream(ch, q)
    publish(ch, q, [b"m"])
    not_supported = f"queue '{q}' in vhost '/'"
    assert refused(connect, lambda c: c.basic_get(q)) == (
        540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues {not_supported}")
    assert refused(connect, lambda c: c.queue_purge(q)) == (
        540, f"NOT_IMPLEMENTED - queue.purge not supported by stream queues {not_supported}")

    def auto_ack(c):
        c.basic_qos(prefetch_count=10)
        c.basic_consume(q, lambda *a: None, auto_ack=True)
        c.connection.process_data_events(time_limit=1)

    assert refused(connect, auto_ack) == (
        540, f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues {not_supported}")

    def no_prefetch(c):
        c.basic_consume(q, lambda *a: None)
        c.connection.process_data_events(time_limit=1)

    assert refused(connect, no_prefetch) == (
        406, f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{q}' in vhost '/''")

    def nack(c):
        c.basic_qos(prefetch_count=10)
        c.basic_consume(q, lambda ch_, m, p, b: ch_.basic_nack(m.delivery_tag, requeue=True),
                        arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            c.connection.process_data_events(time_limit=0.1)

    assert refused(connect, nack) == (
        540, f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues {not_supported}")
    ch = connect().channel()
    ch.queue_delete(q)


def test_offsets_first_last_next_number_timestamp_interval(connect, name):
    q = name()
    ch = connect().channel()
    declare_stream(ch, q)
    publish(ch, q, [b"m%d" % i for i in range(5)])
    bodies = lambda got: [b for _, _, b in got]  # noqa: E731
    assert bodies(read(connect, q, "first", expect=5)) == [b"m%d" % i for i in range(5)]
    assert bodies(read(connect, q, 2, expect=3)) == [b"m2", b"m3", b"m4"]
    assert bodies(read(connect, q, 0, expect=5)) == [b"m%d" % i for i in range(5)]
    assert bodies(read(connect, q, -1, expect=5)) == [b"m%d" % i for i in range(5)]
    # Each message was published alone, so the last chunk holds the last message.
    assert bodies(read(connect, q, "last", expect=1)) == [b"m4"]
    assert read(connect, q, "next") == []
    assert read(connect, q, None) == []
    assert read(connect, q, 100) == []
    hour_ago = datetime.datetime.fromtimestamp(time.time() - 3600)
    assert bodies(read(connect, q, hour_ago, expect=5)) == [b"m%d" % i for i in range(5)]
    assert bodies(read(connect, q, "1h", expect=5)) == [b"m%d" % i for i in range(5)]
    code, text = refused(connect, lambda c: (c.basic_qos(prefetch_count=1),
                                             c.basic_consume(q, lambda *a: None, arguments={"x-stream-offset": "5"})))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{q}' in vhost '/': "
                    '{invalid_stream_offset_arg,{longstr,<<"5">>}}')
    ch = connect().channel()
    ch.queue_delete(q)


def test_deliveries_keep_what_was_published_and_carry_their_offset(connect, name):
    q, x = name("q"), name("x")
    ch = connect().channel()
    declare_stream(ch, q)
    ch.exchange_declare(x, "topic")
    ch.queue_bind(q, x, "a.*")
    props = pika.BasicProperties(
        content_type="text/plain", content_encoding="gz", delivery_mode=2, priority=3,
        correlation_id="c", reply_to="r", expiration="60000", message_id="id",
        timestamp=1234, type="ty", user_id="guest", app_id="app",
        headers={"s": "str", "bin": b"\x00\x01", "b": True, "n": 7},
    )
    publish(ch, "a.b", [b"via-topic"], props, exchange=x)
    (method, got, body), = read(connect, q, "first", expect=1)
    assert body == b"via-topic"
    assert (method.exchange, method.routing_key, method.redelivered) == (x, "a.b", False)
    assert got.headers == {"s": "str", "bin": b"\x00\x01", "b": True, "n": 7, "x-stream-offset": 0}
    for field in ["content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id"]:
        assert getattr(got, field) == getattr(props, field), field
    ch.queue_delete(q)
    ch.exchange_delete(x)


def test_prefetch_is_credit_and_acks_do_not_remove_messages(connect, name):
    q = name()
    ch = connect().channel()
    declare_stream(ch, q)
    publish(ch, q, [b"m%d" % i for i in range(6)])
    # Without acks a consumer gets its prefetch and no more.
    assert [b for _, _, b in read(connect, q, "first", prefetch=2, ack=False)] == [b"m0", b"m1"]
    # Acks give credit back: everything arrives, tags count up on the channel.
    got = read(connect, q, "first", prefetch=2, expect=6)
    assert [m.delivery_tag for m, _, _ in got] == [1, 2, 3, 4, 5, 6]
    # Acked messages are still there for the next reader, and for one reading now.
    assert len(read(connect, q, "first", expect=6)) == 6
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.message_count == 0  # RabbitMQ counts none for a stream
    ch.queue_delete(q)


def test_live_and_independent_readers(connect, name):
    q = name()
    ch = connect().channel()
    declare_stream(ch, q)
    publish(ch, q, [b"old"])
    readers = []
    for offset in ["first", "next"]:
        conn = connect()
        c = conn.channel()
        c.basic_qos(prefetch_count=10)
        got = []
        c.basic_consume(q, lambda ch_, m, p, b, got=got: (got.append(b), ch_.basic_ack(m.delivery_tag)),
                        arguments={"x-stream-offset": offset})
        conn.process_data_events(time_limit=0.3)
        readers.append((conn, got))
    publish(ch, q, [b"new1", b"new2"])
    for (conn, got), want in zip(readers, [[b"old", b"new1", b"new2"], [b"new1", b"new2"]]):
        pump(conn, lambda got=got, want=want: len(got) >= len(want), what="live deliveries")
        assert got == want
    ch.queue_delete(q)


def test_deleting_a_stream_cancels_its_consumers(connect, name):
    q = name()
    conn = connect()
    ch = conn.channel()
    declare_stream(ch, q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda *a: None, consumer_tag="reader")
    connect().channel().queue_delete(q)
    pump(conn, lambda: cancelled, what="basic.cancel")
    assert cancelled == ["reader"]
    assert refused(connect, lambda c: c.queue_declare(q, passive=True))[0] == 404


def test_x_stream_offset_is_refused_on_a_classic_queue(connect, name):
    q = name()
    ch = connect().channel()
    ch.queue_declare(q)
    code, text = refused(connect, lambda c: c.basic_consume(q, lambda *a: None, arguments={"x-stream-offset": "first"}))
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{q}' in vhost '/' of queue type rabbit_classic_queue",
    )
    ch.queue_delete(q)


def test_retention_by_size_drops_the_oldest_messages(connect, name):
    q = name()
    ch = connect().channel()
    declare_stream(ch, q, **{"x-max-length-bytes": 2000, "x-stream-max-segment-size-bytes": 1000})
    publish(ch, q, [b"x" * 100 for _ in range(60)])

    def first_offset():
        got = read(connect, q, "first", expect=None)
        return got and got[0][1].headers["x-stream-offset"] > 0 and got

    got = wait_for(first_offset, timeout=20, interval=0.5, what="retention")
    assert 0 < len(got) < 60
    ch.queue_delete(q)


@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_stream_queues_survive_restarts(connect, name, broker, how):
    if broker.external and not (broker.restart_cmd if how == "restart" else broker.kill_cmd):
        pytest.skip("needs control of the broker process")
    q, x = name("q"), name("x")
    ch = connect().channel()
    declare_stream(ch, q, **{"x-max-age": "7D"})
    ch.exchange_declare(x, "direct", durable=True)
    ch.queue_bind(q, x, "k")
    publish(ch, q, [b"m%d" % i for i in range(20)])
    broker.restart() if how == "restart" else broker.kill9_restart()

    def declared():
        # RabbitMQ answers 404 "home node ... is down" until the stream has recovered.
        try:
            c = connect().channel()
            declare_stream(c, q, **{"x-max-age": "7D"})
            return c
        except ChannelClosedByBroker as e:
            assert e.reply_code == 404
            return None

    ch = wait_for(declared, timeout=30, interval=0.5, what="the stream queue back")
    publish(ch, "k", [b"after"], exchange=x)
    got = read(connect, q, "first", expect=21)
    assert [b for _, _, b in got] == [b"m%d" % i for i in range(20)] + [b"after"]
    assert [p.headers["x-stream-offset"] for _, p, _ in got] == list(range(21))
    ch.queue_delete(q)
    ch.exchange_delete(x)


@sluice_only("RabbitMQ closes the connection with 541 INTERNAL_ERROR (a crash) here")
def test_unreadable_offsets_and_ages_are_precondition_failed(connect, name):
    q = name()
    ch = connect().channel()
    declare_stream(ch, q)
    code, _ = refused(connect, lambda c: (c.basic_qos(prefetch_count=1),
                                          c.basic_consume(q, lambda *a: None, arguments={"x-stream-offset": "abc"})))
    assert code == 406
    code, _ = refused(connect, lambda c: declare_stream(c, name(), **{"x-max-age": "-1s"}))
    assert code == 406
    ch = connect().channel()
    ch.queue_delete(q)


@sluice_only("RabbitMQ 3.10.8 drops messages dead-lettered to a stream queue (checked: none arrive)")
def test_dead_letters_reach_a_stream_queue(connect, name):
    s, q = name("stream"), name("q")
    ch = connect().channel()
    declare_stream(ch, s)
    ch.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": s})
    publish(ch, q, [b"late-%d" % i for i in range(3)])
    got = read(connect, s, "first", expect=3, timeout=10)
    assert [b for _, _, b in got] == [b"late-%d" % i for i in range(3)]
    death = got[0][1].headers["x-death"][0]
    assert (death["reason"], death["queue"]) == ("expired", q)
    ch.queue_delete(q)
    ch.queue_delete(s)


def test_retention_by_age_drops_old_segments(connect, name):
    q = name()
    ch = connect().channel()
    declare_stream(ch, q, **{"x-max-age": "1s", "x-stream-max-segment-size-bytes": 1000})
    publish(ch, q, [b"old" + b"x" * 100 for _ in range(30)])
    time.sleep(2.0)
    # New writes roll segments; the old ones are past their age.
    publish(ch, q, [b"new" + b"x" * 100 for _ in range(30)])

    def old_segments_gone():
        got = read(connect, q, "first", expect=None)
        old = [b for _, _, b in got if b.startswith(b"old")]
        # Whole segments go: the one holding the last old messages and the first new
        # ones stays (RabbitMQ keeps one old message here).
        return got and got[0][1].headers["x-stream-offset"] > 0 and len(old) < 10 and got

    got = wait_for(old_segments_gone, timeout=20, interval=0.5, what="age retention")
    assert sum(1 for _, _, b in got if b.startswith(b"new")) == 30
    ch.queue_delete(q)


def test_a_nack_refused_for_a_stream_leaves_classic_deliveries_to_come_back(connect, name):
    s, q = name("stream"), name("q")
    setup = connect().channel()
    declare_stream(setup, s)
    setup.queue_declare(q)
    publish(setup, s, [b"streamed"])
    publish(setup, q, [b"classic"])
    conn = connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    pump(conn, lambda: len(got) == 1, what="the classic delivery")
    ch.basic_consume(s, lambda c, m, p, b: got.append(m.delivery_tag), arguments={"x-stream-offset": "first"})
    pump(conn, lambda: len(got) == 2, what="the stream delivery")
    with pytest.raises(ConnectionClosedByBroker) as e:
        ch.basic_nack(0, multiple=True, requeue=True)
        pump(conn, lambda: False, timeout=2, what="the close")
    assert e.value.reply_code == 540
    # The classic message was not lost with the refused nack: it is there again.
    again = connect().channel()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        method, _, body = again.basic_get(q, auto_ack=True)
        if method:
            break
        time.sleep(0.05)
    assert body == b"classic" and method.redelivered
    again.queue_delete(q)
    again.queue_delete(s)
