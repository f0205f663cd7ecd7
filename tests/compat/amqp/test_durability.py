"""Restart and crash (kill -9) durability. These need control of the server process, so
they run against the Sluice this suite starts (or an external broker when AMQP_RESTART_CMD
/ AMQP_KILL_CMD are given) and are skipped otherwise."""

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import AsyncConfirms, consume, get_all, pump

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


def exists(connect, kind, name_, **declare):
    ch = connect().channel()
    try:
        if kind == "queue":
            ch.queue_declare(name_, passive=True)
        else:
            ch.exchange_declare(name_, passive=True, **declare)
        return True
    except ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False


def test_durable_definitions_and_persistent_messages_survive_restart(
    connect, name, restart_broker
):
    x, q = name("x"), name("q")
    ch = connect().channel()
    ch.exchange_declare(x, "topic", durable=True)
    ch.queue_declare(q, durable=True, arguments={"x-max-length": 1000})
    ch.queue_bind(q, x, "orders.*")
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish(x, "orders.new", b"p%d" % i, PERSISTENT)
        ch.basic_publish(x, "orders.new", b"t%d" % i, TRANSIENT)

    restart_broker()

    ch = connect().channel()
    # Same flags and arguments still match (no 406), the binding still routes.
    ch.exchange_declare(x, "topic", durable=True)
    ok = ch.queue_declare(q, durable=True, arguments={"x-max-length": 1000})
    assert ok.method.message_count == 10
    got = get_all(ch, q)
    # Persistent messages survive in order; transient ones are gone, as in RabbitMQ.
    assert [m[2] for m in got] == [b"p%d" % i for i in range(10)]
    assert all(m[1].delivery_mode == 2 for m in got)
    ch.confirm_delivery()
    ch.basic_publish(x, "orders.paid", b"after-restart", PERSISTENT)
    assert [m[2] for m in get_all(ch, q)] == [b"after-restart"]
    ch.queue_delete(q)
    ch.exchange_delete(x)


def test_transient_definitions_gone_after_restart(connect, name, restart_broker):
    tq, tx, dq = name("transient-q"), name("transient-x"), name("durable-q")
    ch = connect().channel()
    ch.queue_declare(tq, durable=False)
    ch.exchange_declare(tx, "fanout", durable=False)
    ch.queue_declare(dq, durable=True)
    ch.queue_bind(dq, tx)
    ch.confirm_delivery()
    ch.basic_publish("", tq, b"x", PERSISTENT)

    restart_broker()

    assert not exists(connect, "queue", tq)
    assert not exists(connect, "exchange", tx)
    assert exists(connect, "queue", dq)
    connect().channel().queue_delete(dq)


def test_confirmed_persistent_messages_survive_kill_9(connect, name, crash_broker):
    q = name("q")
    conn = connect()
    pub = AsyncConfirms(conn)
    pub.blocking.queue_declare(q, durable=True)
    n = 1000
    bodies = [b"msg-%05d-" % i + bytes([i % 256]) * (i % 700) for i in range(n)]
    for body in bodies:
        pub.publish("", q, body, PERSISTENT)
    pub.wait_all(timeout=20)
    assert pub.confirmed("ack") == set(range(1, n + 1))

    crash_broker()

    ch = connect().channel()
    got = get_all(ch, q)
    assert [m[2] for m in got] == bodies  # every confirmed message, intact, in order
    ch.queue_delete(q)


def test_unacked_at_crash_come_back_redelivered(connect, name, crash_broker):
    q = name("q")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i, PERSISTENT)
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=3)
    delivered = []
    consumer.basic_consume(q, lambda c, m, p, b: delivered.append(b), auto_ack=False)
    pump(conn, lambda: len(delivered) == 3)
    assert delivered == [b"m0", b"m1", b"m2"]

    crash_broker()

    ch = connect().channel()
    got = get_all(ch, q, auto_ack=False)
    assert [m[2] for m in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [m[0].redelivered for m in got[:3]] == [True, True, True]
    ch.close()
    connect().channel().queue_delete(q)


def test_unacked_at_graceful_restart_come_back_redelivered(connect, name, restart_broker):
    q = name("q")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i, PERSISTENT)
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=1)
    got = consume(conn, consumer, q, 1, auto_ack=False)
    assert got[0][2] == b"m0"

    restart_broker()

    ch = connect().channel()
    got = get_all(ch, q)
    assert [m[2] for m in got] == [b"m0", b"m1", b"m2"]
    assert got[0][0].redelivered is True
    ch.queue_delete(q)


def test_acked_messages_stay_gone_after_restart(connect, name, restart_broker):
    q = name("q")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, b"m%d" % i, PERSISTENT)
    c = conn.channel()
    for _ in range(2):
        method, _, _ = c.basic_get(q, auto_ack=False)
        c.basic_ack(method.delivery_tag)
    c.close()  # channel.close-ok follows the acks: they have been processed

    restart_broker()

    ch = connect().channel()
    assert [m[2] for m in get_all(ch, q)] == [b"m2", b"m3"]
    ch.queue_delete(q)


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill-9"])
def test_dead_letter_topology_survives(connect, name, restart_broker, crash_broker, crash):
    dlx, q, dlq = name("dlx"), name("q"), name("dlq")
    ch = connect().channel()
    ch.exchange_declare(dlx, "fanout", durable=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, durable=True, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"doomed", PERSISTENT)

    (crash_broker if crash else restart_broker)()

    ch = connect().channel()
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"doomed"
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.confirm_delivery()
    ((_, props, body),) = consume(ch.connection, ch, dlq, 1)
    assert body == b"doomed"
    assert props.headers["x-death"][0]["reason"] == "rejected"
    for n in (q, dlq):
        ch.queue_delete(n)
    ch.exchange_delete(dlx)


def test_queues_declared_just_before_kill_9_keep_their_confirmed_messages(connect, name, crash_broker):
    # The definitions file is rewritten in the background; a kill right after the last
    # declare must still find every queue (recorded in the journal before declare-ok).
    queues = [name(f"burst{i}") for i in range(300)]
    ch = connect().channel()
    ch.confirm_delivery()
    for q in queues:
        ch.queue_declare(q, durable=True)
        ch.basic_publish("", q, q.encode(), PERSISTENT)

    crash_broker()

    ch = connect().channel()
    for q in queues:
        assert ch.queue_declare(q, durable=True, passive=True).method.message_count == 1, q
    method, _, body = ch.basic_get(queues[-1], auto_ack=True)
    assert body == queues[-1].encode()
    for q in queues:
        ch.queue_delete(q)
