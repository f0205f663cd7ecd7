"""One log for AMQP and Kafka: the stream queue S and the one-partition topic S are the same
log (docs/streams.md). What pika publishes, Kafka consumers read; what Kafka producers
write, an AMQP stream consumer receives, live and in order, compressed or not. Kafka
group offsets and AMQP stream consumers are independent, and both sides see everything
acknowledged after a kill -9. Sluice only: it needs the AMQP face of the same broker."""

import time

import pika
import pytest
from confluent_kafka import TopicPartition
from pika.exceptions import ChannelClosedByBroker

from kafka_helpers import CLIENTS, commit_sync, consume, produce, wait_for

STREAM = {"x-queue-type": "stream"}


class Amqp:
    def __init__(self, broker):
        self.broker = broker
        self.conns = []

    def channel(self):
        params = pika.URLParameters(self.broker.amqp_url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        conn = pika.BlockingConnection(params)
        self.conns.append(conn)
        return conn.channel()

    def read(self, q, offset, n, timeout=10.0):
        """n deliveries of stream queue q from `offset`: (method, properties, body)."""
        ch = self.channel()
        ch.basic_qos(prefetch_count=50)
        got = []

        def on_message(channel, method, properties, body):
            got.append((method, properties, body))
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume(q, on_message, arguments={"x-stream-offset": offset})
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            ch.connection.process_data_events(time_limit=0.05)
        assert len(got) >= n, f"{len(got)} of {n} deliveries from {q}"
        return got

    def close(self):
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass


@pytest.fixture
def amqp(broker):
    a = Amqp(broker)
    yield a
    a.close()


@pytest.mark.parametrize("consumer", CLIENTS)
def test_what_amqp_publishes_kafka_consumers_read(amqp, clients, name, consumer):
    s, x = name("stream"), name("x")
    ch = amqp.channel()
    ch.queue_declare(s, durable=True, arguments=STREAM)
    ch.exchange_declare(x, "direct")
    ch.queue_bind(s, x, "orders")
    ch.confirm_delivery()
    before = int(time.time() * 1000)
    for i in range(10):
        props = pika.BasicProperties(headers={"trace": f"t{i}", "raw": b"\x00\xff", "n": i}, content_type="text/plain")
        ch.basic_publish(x, "orders", b"order-%d" % i, props)
    after = int(time.time() * 1000)
    got = consume(clients, consumer, s, [0], 10)
    assert [r["offset"] for r in got] == list(range(10))
    assert [r["value"] for r in got] == [b"order-%d" % i for i in range(10)]
    assert {r["key"] for r in got} == {b"orders"}
    for i, r in enumerate(got):
        headers = dict(r["headers"])
        # String and byte-array AMQP headers are record headers; what Kafka has no place
        # for (the exchange, other properties, typed headers) travels in x-amqp-0-9-1.
        assert headers["trace"] == f"t{i}".encode()
        assert headers["raw"] == b"\x00\xff"
        assert "x-amqp-0-9-1" in headers
        assert before - 1000 <= r["timestamp"] <= after + 1000
    # The topic is listed in Kafka metadata with one partition.
    md = clients.admin().list_topics(s, timeout=10).topics[s]
    assert len(md.partitions) == 1


@pytest.mark.parametrize("producer", CLIENTS)
def test_what_kafka_producers_write_amqp_consumers_receive_live(amqp, clients, create_topic, producer):
    topic = create_topic(1)
    ch = amqp.channel()
    # A one-partition topic made with CreateTopics is a stream queue: declare it as one.
    ok = ch.queue_declare(topic, durable=True, arguments=STREAM)
    assert ok.method.queue == topic
    early = [{"key": b"k0", "value": b"v0", "headers": [("h", b"x")], "partition": 0}]
    produce(clients, producer, topic, early)
    # A live reader from "next" and a reader from the start.
    live = amqp.channel()
    live.basic_qos(prefetch_count=10)
    live_got = []
    live.basic_consume(topic, lambda c, m, p, b: (live_got.append((m, p, b)), c.basic_ack(m.delivery_tag)),
                       arguments={"x-stream-offset": "next"})
    live.connection.process_data_events(time_limit=0.3)
    later = [{"key": f"k{i}".encode(), "value": f"v{i}".encode(), "headers": [("h", b"y")], "partition": 0}
             for i in range(1, 20)]
    produce(clients, producer, topic, later)
    deadline = time.monotonic() + 10
    while len(live_got) < 19 and time.monotonic() < deadline:
        live.connection.process_data_events(time_limit=0.05)
    assert [b for _, _, b in live_got] == [f"v{i}".encode() for i in range(1, 20)]
    got = amqp.read(topic, "first", 20)
    assert [b for _, _, b in got] == [f"v{i}".encode() for i in range(20)]
    for i, (method, props, body) in enumerate(got):
        assert method.routing_key == f"k{i}"
        assert method.exchange == ""
        assert props.headers["x-stream-offset"] == i
        assert props.headers["h"] in ("x", "y")  # long strings; pika decodes UTF-8


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_kafka_batches_reach_amqp_consumers(amqp, clients, create_topic, codec):
    topic = create_topic(1)
    records = [{"key": b"k", "value": (f"record {i} " * 20).encode(), "headers": [], "partition": 0}
               for i in range(200)]
    produce(clients, "confluent", topic, records, {"compression.type": codec, "linger.ms": 50,
                                                     "batch.num.messages": 1000})
    got = amqp.read(topic, "first", 200)
    assert [b for _, _, b in got] == [r["value"] for r in records]
    assert [p.headers["x-stream-offset"] for _, p, _ in got] == list(range(200))
    # Starting inside a compressed batch skips what comes before the offset.
    mid = amqp.read(topic, 150, 50)
    assert [p.headers["x-stream-offset"] for _, p, _ in mid] == list(range(150, 200))


def test_a_topic_of_several_partitions_is_not_a_stream_queue(amqp, create_topic):
    topic = create_topic(3)
    ch = amqp.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(topic, passive=True)
    assert e.value.reply_code == 404
    ch = amqp.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(topic, durable=True, arguments=STREAM)
    assert e.value.reply_code == 406


def test_group_offsets_and_amqp_consumers_are_independent(amqp, clients, name):
    s, group = name("stream"), name("group")
    ch = amqp.channel()
    ch.queue_declare(s, durable=True, arguments=STREAM)
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", s, b"m%d" % i)
    consumer = clients.consumer(group)
    consumer.assign([TopicPartition(s, 0, 0)])
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 10 and time.monotonic() < deadline:
        m = consumer.poll(0.2)
        if m is not None and not m.error():
            got.append(m)
    assert len(got) == 10
    commit_sync(consumer, s, {0: 10})
    # AMQP readers are not moved by the group's commit, and acks move no Kafka offset.
    assert len(amqp.read(s, "first", 10)) == 10
    committed = consumer.committed([TopicPartition(s, 0)], timeout=10)
    assert committed[0].offset == 10


def test_both_sides_keep_what_they_acknowledged_across_kill9(amqp, clients, name, crash_broker):
    s = name("stream")
    ch = amqp.channel()
    ch.queue_declare(s, durable=True, arguments=STREAM)
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", s, b"amqp-%d" % i, pika.BasicProperties(delivery_mode=2))
    produce(clients, "confluent", s, [{"key": None, "value": b"kafka-%d" % i, "headers": [], "partition": 0}
                                      for i in range(50)], {"acks": "all"})
    amqp.close()
    clients.close_all()
    crash_broker()
    want = [b"amqp-%d" % i for i in range(50)] + [b"kafka-%d" % i for i in range(50)]
    got = amqp.read(s, "first", 100)
    assert [b for _, _, b in got] == want
    records = consume(clients, "kafka-python", s, [0], 100)
    assert [r["value"] for r in records] == want
    # And it still takes writes from both sides.
    ch = amqp.channel()
    ch.confirm_delivery()
    ch.basic_publish("", s, b"after")
    wait_for(lambda: len(consume(clients, "confluent", s, [0], 101)) == 101, what="the new record")


def test_odd_records_do_not_break_amqp_consumers(amqp, clients, create_topic):
    """A Kafka producer may write a forged x-amqp-0-9-1 header or headers too large for
    one AMQP frame: the AMQP consumer still gets every record, and its connection lives."""
    topic = create_topic(1)
    records = [
        {"key": b"k", "value": b"forged", "headers": [("x-amqp-0-9-1", b"\x05\xff\xfe garbage")], "partition": 0},
        {"key": b"k", "value": b"huge", "headers": [("big", b"h" * 200_000)], "partition": 0},
        {"key": b"k", "value": b"plain", "headers": [("h", b"v")], "partition": 0},
    ]
    produce(clients, "confluent", topic, records, {"message.max.bytes": 1_000_000})
    got = amqp.read(topic, "first", 3)
    assert [b for _, _, b in got] == [b"forged", b"huge", b"plain"]
    assert got[1][1].headers == {"x-stream-offset": 1}
    assert got[2][1].headers["h"] == "v"


def test_growing_a_stream_queue_topic_cancels_its_amqp_consumers(amqp, clients, create_topic):
    from confluent_kafka.admin import NewPartitions

    topic = create_topic(1)
    ch = amqp.channel()
    ch.queue_declare(topic, durable=True, arguments=STREAM)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    ch.basic_qos(prefetch_count=10)
    ch.basic_consume(topic, lambda *a: None, consumer_tag="reader")
    clients.admin().create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=10)
    deadline = time.monotonic() + 10
    while not cancelled and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.1)
    assert cancelled == ["reader"]
