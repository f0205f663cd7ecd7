"""queue.declare / bind / purge / delete with RabbitMQ's flags, counts and reply codes."""

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import consume, message_count, pump, wait_for


def test_declare_durable_and_transient(channel, name):
    for durable in (True, False):
        q = name("q")
        ok = channel.queue_declare(q, durable=durable)
        assert ok.method.queue == q
        assert ok.method.message_count == 0
        assert ok.method.consumer_count == 0
        # Redeclaring with the same flags is fine and idempotent.
        channel.queue_declare(q, durable=durable)
        channel.queue_delete(q)


def test_server_named_queue(channel):
    ok = channel.queue_declare("", exclusive=True)
    assert ok.method.queue.startswith("amq.gen-")
    ok2 = channel.queue_declare("", exclusive=True)
    assert ok2.method.queue != ok.method.queue
    # The generated name is usable right away.
    channel.confirm_delivery()
    channel.basic_publish("", ok.method.queue, b"hi")
    assert message_count(channel, ok.method.queue) == 1


def test_exclusive_queue_is_locked_to_its_connection(connect, name):
    owner = connect().channel()
    q = name("q")
    owner.queue_declare(q, exclusive=True)
    other = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.queue_declare(q, passive=True)
    assert e.value.reply_code == 405  # RESOURCE_LOCKED
    assert e.value.reply_text.startswith("RESOURCE_LOCKED")
    other = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.basic_consume(q, lambda *a: None)
    assert e.value.reply_code == 405


def test_exclusive_queue_deleted_when_connection_closes(connect, name):
    conn = connect()
    q = name("q")
    conn.channel().queue_declare(q, exclusive=True)
    conn.close()
    ch = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 404


def test_auto_delete_queue_goes_with_last_consumer(connection, channel, name):
    q = name("q")
    channel.queue_declare(q, auto_delete=True)
    # Never consumed: it stays.
    channel.queue_declare(q, passive=True)
    tag1 = channel.basic_consume(q, lambda *a: None)
    tag2 = channel.basic_consume(q, lambda *a: None)
    channel.basic_cancel(tag1)
    assert channel.queue_declare(q, passive=True).method.consumer_count == 1
    channel.basic_cancel(tag2)
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare(q, passive=True)
    assert e.value.reply_code == 404


def test_passive_declare_of_missing_queue_closes_channel_404(connection, channel, name):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare(name("missing"), passive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text.startswith("NOT_FOUND")
    assert channel.is_closed
    assert connection.is_open  # only the channel closes
    connection.channel().queue_declare("", exclusive=True)


@pytest.mark.parametrize(
    "first,second",
    [
        ({"durable": True}, {"durable": False}),
        ({"exclusive": False, "auto_delete": False}, {"auto_delete": True}),
        ({"arguments": {"x-max-length": 10}}, {"arguments": {"x-max-length": 20}}),
        ({"arguments": {"x-message-ttl": 1000}}, {"arguments": {}}),
        ({}, {"arguments": {"x-dead-letter-exchange": "dlx"}}),
    ],
    ids=["durable", "auto_delete", "max-length", "ttl-removed", "dlx-added"],
)
def test_redeclare_with_different_properties_is_406(connect, name, first, second):
    ch = connect().channel()
    q = name("q")
    ch.queue_declare(q, **first)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(q, **second)
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith("PRECONDITION_FAILED")
    connect().channel().queue_delete(q)


def test_invalid_argument_value_is_406(channel, name):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare(name("q"), arguments={"x-max-length": -1})
    assert e.value.reply_code == 406


def test_reserved_amq_prefix_is_403(channel):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare("amq.not-allowed")
    assert e.value.reply_code == 403
    assert e.value.reply_text.startswith("ACCESS_REFUSED")


def test_declare_ok_counts(connection, channel, name):
    q = name("q")
    channel.confirm_delivery()
    channel.queue_declare(q)
    for i in range(3):
        channel.basic_publish("", q, b"m%d" % i)
    ok = channel.queue_declare(q, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)
    # A non-passive redeclare reports the same counts.
    ok = channel.queue_declare(q)
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)
    # message_count counts ready messages only: delivered-unacked ones are not in it.
    c2 = connection.channel()
    c2.basic_qos(prefetch_count=1)
    got = []
    c2.basic_consume(q, lambda ch, m, p, b: got.append(m))
    pump(connection, lambda: len(got) == 1)
    ok = channel.queue_declare(q, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 1)


def test_bind_unbind(connection, channel, name):
    q, x = name("q"), name("x")
    channel.exchange_declare(x, "direct")
    channel.queue_declare(q)
    channel.queue_bind(q, x, routing_key="k")
    channel.confirm_delivery()
    channel.basic_publish(x, "k", b"1")
    channel.queue_unbind(q, x, routing_key="k")
    channel.basic_publish(x, "k", b"2")
    assert message_count(channel, q) == 1
    # Unbinding something that is not bound is not an error in RabbitMQ.
    channel.queue_unbind(q, x, routing_key="never-bound")


def test_bind_to_missing_exchange_is_404(channel, name):
    q = name("q")
    channel.queue_declare(q, exclusive=True)
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_bind(q, name("missing-x"), routing_key="k")
    assert e.value.reply_code == 404


def test_bind_missing_queue_is_404(channel, name):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_bind(name("missing-q"), "amq.direct", routing_key="k")
    assert e.value.reply_code == 404


def test_purge_returns_count(channel, name):
    q = name("q")
    channel.confirm_delivery()
    channel.queue_declare(q)
    for i in range(5):
        channel.basic_publish("", q, b"x")
    assert channel.queue_purge(q).method.message_count == 5
    assert message_count(channel, q) == 0
    assert channel.queue_purge(q).method.message_count == 0


def test_purge_leaves_unacked_messages(connection, channel, name):
    q = name("q")
    channel.confirm_delivery()
    channel.queue_declare(q)
    for i in range(3):
        channel.basic_publish("", q, b"%d" % i)
    c2 = connection.channel()
    method, _, _ = c2.basic_get(q, auto_ack=False)
    assert method is not None
    assert channel.queue_purge(q).method.message_count == 2
    c2.close()  # the unacked one returns to the queue
    assert message_count(channel, q) == 1


def test_delete_returns_count(channel, name):
    q = name("q")
    channel.confirm_delivery()
    channel.queue_declare(q)
    for i in range(4):
        channel.basic_publish("", q, b"x")
    assert channel.queue_delete(q).method.message_count == 4
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.queue_declare(q, passive=True)
    assert e.value.reply_code == 404


def test_delete_missing_queue_is_ok(channel, name):
    # RabbitMQ 3.x answers delete-ok with a zero count for a queue that does not exist.
    assert channel.queue_delete(name("missing")).method.message_count == 0


def test_delete_if_empty(connect, name):
    ch = connect().channel()
    q = name("q")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_delete(q, if_empty=True)
    assert e.value.reply_code == 406
    ch = connect().channel()
    assert message_count(ch, q) == 1
    ch.queue_purge(q)
    ch.queue_delete(q, if_empty=True)


def test_delete_if_unused(connect, name):
    conn = connect()
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None)
    other = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.queue_delete(q, if_unused=True)
    assert e.value.reply_code == 406
    ch.basic_cancel(tag)
    connect().channel().queue_delete(q, if_unused=True)


def test_queue_argument_types_accepted(channel, name):
    # The arguments RabbitMQ users pass at declare time are accepted as given.
    args = {
        "x-message-ttl": 60000,
        "x-expires": 600000,
        "x-max-length": 1000,
        "x-max-length-bytes": 1 << 20,
        "x-overflow": "reject-publish",
        "x-dead-letter-exchange": "some-dlx",
        "x-dead-letter-routing-key": "dead",
        "x-max-priority": 5,
        "x-queue-mode": "lazy",
    }
    q = name("q")
    channel.queue_declare(q, arguments=args)
    channel.queue_declare(q, arguments=args)
    channel.queue_delete(q)


def test_quorum_queue_declare(connect, name):
    ch = connect().channel()
    q = name("q")
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 3})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"hello", pika.BasicProperties(delivery_mode=2))
    (m, p, body), = consume(ch.connection, ch, q, 1)
    assert body == b"hello"
    ch.queue_delete(q)
    # A quorum queue must be durable.
    ch = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(name("q"), durable=False, arguments={"x-queue-type": "quorum"})
    assert e.value.reply_code == 406


def test_x_expires_deletes_unused_queue(connect, name):
    ch = connect().channel()
    q = name("q")
    ch.queue_declare(q, arguments={"x-expires": 200})

    def gone():
        c = connect().channel()
        try:
            c.queue_declare(q, passive=True)
            c.close()
            return False
        except ChannelClosedByBroker as e:
            assert e.reply_code == 404
            return True

    # A passive declare counts as use and renews the lease (in RabbitMQ too), so poll
    # less often than the expiry.
    wait_for(gone, timeout=5, interval=0.5, what="x-expires to delete the queue")
