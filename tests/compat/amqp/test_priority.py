"""Priority queues (x-max-priority): higher first, FIFO within a priority."""

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import Collector, get_all, pump


@pytest.fixture
def ch(channel):
    channel.confirm_delivery()
    return channel


def publish(ch, q, items):
    for body, priority in items:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))


def test_higher_priority_first_fifo_within(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    publish(
        ch,
        q,
        [(b"p1-a", 1), (b"p5-a", 5), (b"p9-a", 9), (b"p5-b", 5), (b"p0-a", 0), (b"p9-b", 9),
         (b"p1-b", 1)],
    )
    got = [m[2] for m in get_all(ch, q)]
    assert got == [b"p9-a", b"p9-b", b"p5-a", b"p5-b", b"p1-a", b"p1-b", b"p0-a"]


def test_no_priority_counts_as_zero(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 5})
    publish(ch, q, [(b"none-a", None), (b"zero", 0), (b"one", 1), (b"none-b", None)])
    assert [m[2] for m in get_all(ch, q)] == [b"one", b"none-a", b"zero", b"none-b"]


def test_priority_above_max_is_capped(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 3})
    publish(ch, q, [(b"three", 3), (b"two", 2), (b"hundred", 100), (b"three-b", 3)])
    # 100 is treated as 3 (the max), so it keeps FIFO order among the 3s.
    assert [m[2] for m in get_all(ch, q)] == [b"three", b"hundred", b"three-b", b"two"]


def test_priority_ignored_without_x_max_priority(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    publish(ch, q, [(b"low", 1), (b"high", 9)])
    assert [m[2] for m in get_all(ch, q)] == [b"low", b"high"]


def test_priority_applies_to_consumers(connection, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    publish(ch, q, [(b"low", 1), (b"mid", 5), (b"high", 9)])
    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=1)
    col = Collector(ack=True)
    consumer.basic_consume(q, col, auto_ack=False)
    pump(connection, lambda: len(col.messages) == 3)
    assert col.bodies == [b"high", b"mid", b"low"]


def test_requeued_message_keeps_priority_order(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    publish(ch, q, [(b"high", 9), (b"low", 1)])
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"high"
    ch.basic_nack(method.delivery_tag, requeue=True)
    got = get_all(ch, q)
    assert [m[2] for m in got] == [b"high", b"low"]
    assert got[0][0].redelivered is True


def test_invalid_max_priority_is_406(connect, name):
    ch = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(name("q"), arguments={"x-max-priority": 256})
    assert e.value.reply_code == 406
