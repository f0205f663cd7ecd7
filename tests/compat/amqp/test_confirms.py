"""Publisher confirms (confirm.select, basic.ack / basic.nack, multiple, ordering)."""

import pika
import pytest

from helpers import AsyncConfirms, message_count


def test_confirm_select(channel):
    channel.confirm_delivery()  # raises if no confirm.select-ok
    assert channel.is_open


def test_routed_message_is_acked(channel, name):
    q = name("q")
    channel.queue_declare(q, exclusive=True)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"x")  # raises NackError on nack
    assert message_count(channel, q) == 1


def test_unroutable_message_is_acked(channel, name):
    channel.confirm_delivery()
    channel.basic_publish("", name("nowhere"), b"x")  # not mandatory: acked, dropped


def test_delivery_tags_count_from_one(connection, name):
    q = name("q")
    pub = AsyncConfirms(connection)
    pub.blocking.queue_declare(q, exclusive=True)
    for i in range(3):
        pub.publish("", q, b"%d" % i)
    pub.wait_all()
    assert pub.confirmed("ack") == {1, 2, 3}
    assert pub.confirmed("nack") == set()


def test_mandatory_unroutable_return_before_ack_blocking(channel, name):
    channel.confirm_delivery()
    # pika raises UnroutableError only when the basic.return arrived before the basic.ack.
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        channel.basic_publish("", name("nowhere"), b"bounce", mandatory=True)
    (returned,) = e.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.body == b"bounce"


def test_mandatory_unroutable_return_before_ack_ordering(connection, name):
    q = name("q")
    pub = AsyncConfirms(connection)
    pub.blocking.queue_declare(q, exclusive=True)
    pub.publish("", q, b"routed-1", mandatory=True)
    pub.publish("", name("nowhere"), b"bounce-2", mandatory=True)
    pub.publish("", q, b"routed-3", mandatory=True)
    pub.publish("", name("nowhere"), b"bounce-4", mandatory=True)
    pub.wait_all()
    assert pub.confirmed("ack") == {1, 2, 3, 4}
    # Each return comes before the ack that covers its delivery tag.
    returns = [i for i, ev in enumerate(pub.events) if ev[0] == "return"]
    assert [pub.events[i][1] for i in returns] == [b"bounce-2", b"bounce-4"]
    assert all(pub.events[i][2] == 312 for i in returns)
    for ret_index, tag in zip(returns, (2, 4)):
        first_ack = next(
            i
            for i, ev in enumerate(pub.events)
            if ev[0] == "ack" and (ev[1] == tag or (ev[2] and ev[1] >= tag))
        )
        assert ret_index < first_ack, pub.events


def test_many_messages_all_confirmed(connection, name):
    q = name("q")
    pub = AsyncConfirms(connection)
    pub.blocking.queue_declare(q, durable=True)
    n = 2000
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(n):
        pub.publish("", q, b"%d" % i, props)
    pub.wait_all(timeout=20)
    assert pub.confirmed("ack") == set(range(1, n + 1))
    assert pub.confirmed("nack") == set()
    # Tags are confirmed in increasing order, each exactly once.
    acked = []
    last = 0
    for kind, tag, multiple in (ev for ev in pub.events if ev[0] == "ack"):
        assert tag > last, "confirm tags must increase"
        acked.extend(range(last + 1, tag + 1) if multiple else [tag])
        last = tag
    assert sorted(acked) == list(range(1, n + 1))
    assert message_count(pub.blocking, q) == n
    pub.blocking.queue_delete(q)


def test_confirms_on_multiple_channels_are_independent(connection, name):
    q = name("q")
    a, b = AsyncConfirms(connection), AsyncConfirms(connection)
    a.blocking.queue_declare(q, exclusive=True)
    for i in range(10):
        a.publish("", q, b"a")
        b.publish("", q, b"b")
    a.wait_all()
    b.wait_all()
    assert a.confirmed() == set(range(1, 11))
    assert b.confirmed() == set(range(1, 11))


def test_tx_and_confirm_are_exclusive(connect):
    ch = connect().channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.tx_select()
    assert e.value.reply_code == 406
    ch = connect().channel()
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.confirm_delivery()
    assert e.value.reply_code == 406
