"""Message TTL (per queue, per message), dead lettering (x-death) and max-length."""

import datetime
import time

import pika
import pytest

from helpers import consume, get_all, message_count, sluice_only, wait_for


@pytest.fixture
def ch(channel):
    channel.confirm_delivery()
    return channel


@pytest.fixture
def dlx(ch, name):
    """A fanout dead-letter exchange with one queue bound; returns (exchange, queue)."""
    x, q = name("dlx"), name("dlq")
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x)
    return x, q


def drained(ch, q, n, timeout=5.0):
    return consume(ch.connection, ch, q, n, timeout=timeout)


def assert_death(props, *, reason, queue, exchange, routing_keys, count=1):
    headers = props.headers
    deaths = headers["x-death"]
    assert isinstance(deaths, list) and deaths, headers
    death = deaths[0]
    assert death["count"] == count
    assert death["reason"] == reason
    assert death["queue"] == queue
    assert death["exchange"] == exchange
    assert death["routing-keys"] == routing_keys
    assert isinstance(death["time"], datetime.datetime)
    assert headers["x-first-death-reason"] == reason
    assert headers["x-first-death-queue"] == queue
    assert headers["x-first-death-exchange"] == exchange


def test_queue_ttl_expires_messages(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 200})
    ch.basic_publish("", q, b"short-lived")
    wait_for(lambda: message_count(ch, q) == 0, timeout=5, what="queue TTL expiry")
    assert ch.basic_get(q) == (None, None, None)


def test_queue_ttl_zero_delivers_to_waiting_consumer_only(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 0})
    ch.basic_publish("", q, b"no-consumer")  # expires at once
    assert ch.basic_get(q) == (None, None, None)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"consumer-waiting")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    assert got == [b"consumer-waiting"]


def test_per_message_expiration(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="150"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    wait_for(lambda: message_count(ch, q) == 1, timeout=5, what="per-message expiry")
    ((method, props, body),) = get_all(ch, q)
    assert body == b"long"
    assert props.expiration == "60000"


def test_per_message_ttl_lower_of_queue_and_message(ch, name, dlx):
    x, dlq = dlx
    q = name("q")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-message-ttl": 200, "x-dead-letter-exchange": x}
    )
    ch.basic_publish("", q, b"queue-ttl-wins", pika.BasicProperties(expiration="60000"))
    ((_, props, body),) = drained(ch, dlq, 1)
    assert body == b"queue-ttl-wins"
    assert props.headers["x-death"][0]["reason"] == "expired"
    # The original per-message expiration is kept in x-death and removed from the message.
    assert props.headers["x-death"][0]["original-expiration"] == "60000"
    assert props.expiration is None


def test_invalid_expiration_is_406(connect, name):
    ch = connect().channel()
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="soon"))
    assert e.value.reply_code == 406


@sluice_only(
    "RabbitMQ classic queues expire messages only at the head: a short-TTL message behind a "
    "long-TTL one waits; Sluice expires by time (issue: 'expires on time, even behind')"
)
def test_per_message_ttl_expires_behind_longer_ttl(ch, name, dlx):
    x, dlq = dlx
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="150"))
    ((_, props, body),) = drained(ch, dlq, 1, timeout=5)
    assert body == b"short"
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert message_count(ch, q) == 1


def test_dead_letter_on_reject(ch, name, dlx):
    x, dlq = dlx
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"bad", pika.BasicProperties(headers={"k": "v"}))
    method, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    ((dmethod, props, body),) = drained(ch, dlq, 1)
    assert body == b"bad"
    assert dmethod.exchange == x
    assert dmethod.routing_key == q  # the original routing key when none is configured
    assert props.headers["k"] == "v"  # other headers kept
    assert_death(props, reason="rejected", queue=q, exchange="", routing_keys=[q])


def test_dead_letter_on_nack(ch, name, dlx):
    x, dlq = dlx
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    got = consume(ch.connection, ch, q, 3, auto_ack=False)
    ch.basic_nack(got[-1][0].delivery_tag, multiple=True, requeue=False)
    dead = drained(ch, dlq, 3)
    assert [m[2] for m in dead] == [b"0", b"1", b"2"]
    for m in dead:
        assert_death(m[1], reason="rejected", queue=q, exchange="", routing_keys=[q])


def test_dead_letter_on_expiry(ch, name, dlx):
    x, dlq = dlx
    q, src = name("q"), name("src")
    ch.exchange_declare(src, "direct")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": x}
    )
    ch.queue_bind(q, src, "rk")
    ch.basic_publish(src, "rk", b"stale")
    ((_, props, body),) = drained(ch, dlq, 1)
    assert body == b"stale"
    assert_death(props, reason="expired", queue=q, exchange=src, routing_keys=["rk"])


def test_a_message_that_expired_while_unacked_is_dead_lettered_not_redelivered(connect, ch, name, dlx):
    # Found by the engine's simulation test: a requeued message whose TTL passed while it
    # was out used to go straight to a waiting consumer. RabbitMQ drops it as expired.
    x, dlq = dlx
    q = name()
    ch.queue_declare(q, arguments={"x-message-ttl": 300, "x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"late")
    method, _, _ = ch.basic_get(q)
    waiting = connect()
    wch = waiting.channel()
    got = []
    wch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    waiting.process_data_events(time_limit=0.2)
    time.sleep(0.6)
    ch.basic_nack(method.delivery_tag, requeue=True)
    dead = drained(ch, dlq, 1)
    assert dead[0][2] == b"late"
    assert dead[0][1].headers["x-death"][0]["reason"] == "expired"
    waiting.process_data_events(time_limit=0.3)
    assert got == []
    ch.queue_delete(q)


def test_dead_letter_per_message_expiry(ch, name, dlx):
    x, dlq = dlx
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"stale", pika.BasicProperties(expiration="100"))
    ((_, props, body),) = drained(ch, dlq, 1)
    assert_death(props, reason="expired", queue=q, exchange="", routing_keys=[q])
    assert props.headers["x-death"][0]["original-expiration"] == "100"
    assert props.expiration is None


def test_dead_letter_routing_key(ch, name):
    dlx, dlq, q = name("dlx"), name("dlq"), name("q")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx, "dead.letters")
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead.letters"},
    )
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=False)
    ((dmethod, props, _),) = drained(ch, dlq, 1)
    assert dmethod.routing_key == "dead.letters"
    # x-death keeps the original routing keys.
    assert_death(props, reason="rejected", queue=q, exchange="", routing_keys=[q])


def test_dead_letter_to_default_exchange(ch, name):
    dlq, q = name("dlq"), name("q")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
    )
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    ((_, props, body),) = drained(ch, dlq, 1)
    assert body == b"x"


def test_x_death_count_increments(ch, name):
    # A queue that dead-letters back into itself: each rejection adds to the same entry.
    q = name("q")
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q},
    )
    ch.basic_publish("", q, b"again")
    for expected in (1, 2, 3):
        method, props, _ = wait_for(lambda: _get(ch, q), what="dead-lettered message back")
        if expected > 1:
            (death,) = props.headers["x-death"]
            assert death["count"] == expected - 1
            assert death["reason"] == "rejected"
        ch.basic_reject(method.delivery_tag, requeue=False)


def _get(ch, q):
    m = ch.basic_get(q, auto_ack=False)
    return m if m[0] is not None else None


def test_x_death_one_entry_per_queue_and_reason(ch, name):
    # expired in q1 -> dead-lettered to q2 -> rejected there -> lands in q3.
    q1, q2, q3 = name("q1"), name("q2"), name("q3")
    ch.queue_declare(q3, exclusive=True)
    ch.queue_declare(
        q2,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q3},
    )
    ch.queue_declare(
        q1,
        exclusive=True,
        arguments={
            "x-message-ttl": 100,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": q2,
        },
    )
    ch.basic_publish("", q1, b"x")
    method, _, _ = wait_for(lambda: _get(ch, q2), what="expired message in q2")
    ch.basic_reject(method.delivery_tag, requeue=False)
    ((_, props, _),) = drained(ch, q3, 1)
    deaths = props.headers["x-death"]
    # Most recent first.
    assert [(d["queue"], d["reason"]) for d in deaths] == [(q2, "rejected"), (q1, "expired")]
    assert props.headers["x-first-death-queue"] == q1
    assert props.headers["x-first-death-reason"] == "expired"


def test_max_length_drop_head(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 2})
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    assert [m[2] for m in get_all(ch, q)] == [b"3", b"4"]


def test_max_length_drop_head_dead_letters(ch, name, dlx):
    x, dlq = dlx
    q = name("q")
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-max-length": 2, "x-overflow": "drop-head", "x-dead-letter-exchange": x},
    )
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    dead = drained(ch, dlq, 2)
    assert [m[2] for m in dead] == [b"0", b"1"]
    for m in dead:
        assert_death(m[1], reason="maxlen", queue=q, exchange="", routing_keys=[q])
    assert [m[2] for m in get_all(ch, q)] == [b"2", b"3"]


def test_max_length_bytes(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, body)
    # 12 bytes of bodies > 10: the oldest is dropped.
    assert [m[2] for m in get_all(ch, q)] == [b"bbbb", b"cccc"]


def test_max_length_reject_publish_nacks(ch, name):
    q = name("q")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    ch.basic_publish("", q, b"0")
    ch.basic_publish("", q, b"1")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"2")
    assert [m[2] for m in get_all(ch, q)] == [b"0", b"1"]
    # Room again: publishes are acked again.
    ch.basic_publish("", q, b"3")
    assert [m[2] for m in get_all(ch, q)] == [b"3"]


def test_max_length_reject_publish_without_confirms_drops(connection, name):
    ch = connection.channel()
    q = name("q")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    ch.basic_publish("", q, b"kept")
    ch.basic_publish("", q, b"dropped")
    ch.basic_qos(prefetch_count=1)  # round trip; the channel stays open
    wait_for(lambda: message_count(ch, q) == 1)
    assert [m[2] for m in get_all(ch, q)] == [b"kept"]


def test_max_length_reject_publish_dlx(ch, name, dlx):
    x, dlq = dlx
    q = name("q")
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={
            "x-max-length": 1,
            "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": x,
        },
    )
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"rejected")
    ((_, props, body),) = drained(ch, dlq, 1)
    assert body == b"rejected"
    assert_death(props, reason="maxlen", queue=q, exchange="", routing_keys=[q])


def test_mandatory_with_reject_publish_is_not_returned(ch, name):
    # The message was routed (to a full queue): nack, not basic.return.
    q = name("q")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    with pytest.raises(pika.exceptions.NackError) as e:
        ch.basic_publish("", q, b"x", mandatory=True)
    assert e.value.messages == []
