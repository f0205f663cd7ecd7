"""Transactions, basic.recover, single active consumer, direct reply-to."""

import time
import uuid

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import Collector, consume, get_all, message_count, pump


@pytest.fixture
def q(channel, name):
    queue_name = name("q")
    channel.queue_declare(queue_name, exclusive=True)
    return queue_name


def test_tx_commit_publishes(connection, channel, q):
    tx = connection.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"a")
    tx.basic_publish("", q, b"b")
    assert message_count(channel, q) == 0  # nothing before commit
    tx.tx_commit()
    assert [m[2] for m in get_all(channel, q)] == [b"a", b"b"]


def test_tx_rollback_discards_publishes(connection, channel, q):
    tx = connection.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"discarded")
    tx.tx_rollback()
    tx.basic_publish("", q, b"kept")
    tx.tx_commit()
    assert [m[2] for m in get_all(channel, q)] == [b"kept"]


def test_tx_acks_take_effect_on_commit(connection, channel, q):
    channel.confirm_delivery()
    for i in range(2):
        channel.basic_publish("", q, b"%d" % i)
    tx = connection.channel()
    tx.tx_select()
    m0, _, _ = tx.basic_get(q, auto_ack=False)
    tx.basic_ack(m0.delivery_tag)
    tx.tx_rollback()  # the ack is discarded; the message stays unacked
    m1, _, _ = tx.basic_get(q, auto_ack=False)
    tx.basic_ack(m1.delivery_tag)
    tx.tx_commit()
    tx.close()  # m0 was never acked: back to the queue
    left = get_all(channel, q)
    assert [m[2] for m in left] == [b"0"]
    assert left[0][0].redelivered is True


def test_tx_commit_without_select_is_406(channel):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.tx_commit()
    assert e.value.reply_code == 406


def test_basic_recover_requeue(connection, channel, q):
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish("", q, b"%d" % i)
    c = connection.channel()
    got = consume(connection, c, q, 3, auto_ack=False)
    assert all(not m[0].redelivered for m in got)
    c.basic_recover(requeue=True)
    again = get_all(c, q, auto_ack=True)
    assert [m[2] for m in again] == [b"0", b"1", b"2"]
    assert all(m[0].redelivered for m in again)


def test_single_active_consumer(connection, channel, name):
    q = name("q")
    channel.queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    a, b = connection.channel(), connection.channel()
    col_a, col_b = Collector(ack=True), Collector(ack=True)
    tag_a = a.basic_consume(q, col_a, auto_ack=False)
    b.basic_consume(q, col_b, auto_ack=False)
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", q, b"%d" % i)
    pump(connection, lambda: len(col_a.messages) == 5)
    assert col_b.messages == []
    # When the active consumer goes, the next one takes over.
    a.basic_cancel(tag_a)
    for i in range(5, 8):
        channel.basic_publish("", q, b"%d" % i)
    pump(connection, lambda: len(col_b.messages) == 3)
    assert col_b.bodies == [b"5", b"6", b"7"]
    assert len(col_a.messages) == 5


def test_single_active_consumer_failover_redelivers_unacked(connection, channel, name):
    q = name("q")
    channel.queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    a, b = connection.channel(), connection.channel()
    a.basic_qos(prefetch_count=1)
    col_a, col_b = Collector(), Collector(ack=True)  # a never acks
    a.basic_consume(q, col_a, auto_ack=False)
    b.basic_consume(q, col_b, auto_ack=False)
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish("", q, b"%d" % i)
    pump(connection, lambda: len(col_a.messages) == 1)
    a.close()
    pump(connection, lambda: len(col_b.messages) == 3)
    assert col_b.bodies == [b"0", b"1", b"2"]
    assert col_b.messages[0][0].redelivered is True


def test_direct_reply_to_rpc(connect, name):
    server_conn, client_conn = connect(), connect()
    server = server_conn.channel()
    requests = name("rpc")
    server.queue_declare(requests, exclusive=True)

    def on_request(ch, method, props, body):
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        ch.basic_publish(
            "",
            props.reply_to,
            body.upper(),
            pika.BasicProperties(correlation_id=props.correlation_id),
        )
        ch.basic_ack(method.delivery_tag)

    server.basic_consume(requests, on_request, auto_ack=False)

    client = client_conn.channel()
    replies = []
    # Must consume from the pseudo-queue in no-ack mode before publishing.
    client.basic_consume(
        "amq.rabbitmq.reply-to", lambda ch, m, p, b: replies.append((p, b)), auto_ack=True
    )
    corr = str(uuid.uuid4())
    client.basic_publish(
        "",
        requests,
        b"ping",
        pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=corr),
    )

    def round_trip():
        server_conn.process_data_events(time_limit=0.02)
        client_conn.process_data_events(time_limit=0.02)
        return replies

    deadline_pump(round_trip)
    ((props, body),) = replies
    assert body == b"PING"
    assert props.correlation_id == corr


def deadline_pump(done, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the RPC reply"


def test_direct_reply_to_requires_no_ack(channel):
    with pytest.raises(ChannelClosedByBroker) as e:
        channel.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False)
    assert e.value.reply_code == 406


def test_direct_reply_to_publish_without_consumer_is_406(connect, name):
    ch = connect().channel()
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
        ch.basic_qos(prefetch_count=1)
    assert e.value.reply_code == 406


def test_qos_global_per_channel(connection, channel, name):
    q1, q2 = name("q1"), name("q2")
    for q in (q1, q2):
        channel.queue_declare(q, exclusive=True)
    channel.confirm_delivery()
    for q in (q1, q2):
        for i in range(3):
            channel.basic_publish("", q, b"%d" % i)
    c = connection.channel()
    c.basic_qos(prefetch_count=2, global_qos=True)  # RabbitMQ: shared by the channel
    col = Collector()
    c.basic_consume(q1, col, auto_ack=False)
    c.basic_consume(q2, col, auto_ack=False)
    pump(connection, lambda: len(col.messages) == 2)
    connection.process_data_events(time_limit=0.2)
    assert len(col.messages) == 2
