"""max.message.bytes: a record batch larger than the topic's limit is refused with
MESSAGE_TOO_LARGE and not stored; smaller ones before and after it are."""

import os

import pytest
from confluent_kafka import KafkaError, TopicPartition
from kafka.errors import MessageSizeTooLargeError

import kafka_wire as wire

LIMIT = 10000


def test_confluent_record_over_topic_limit_fails(clients, create_topic):
    topic = create_topic(1, {"max.message.bytes": str(LIMIT)})
    p = clients.producer(**{"linger.ms": 0})
    reports = []

    def send(value):
        p.produce(topic, value, on_delivery=lambda err, msg: reports.append((err, msg)))
        assert p.flush(15) == 0
        return reports[-1]

    err, msg = send(os.urandom(LIMIT - 500))
    assert err is None and msg.offset() == 0
    # Random bytes do not compress, and librdkafka's own limit (1,000,000) is far away:
    # only the broker can refuse this one.
    err, _ = send(os.urandom(2 * LIMIT))
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    err, msg = send(b"small again")
    assert err is None and msg.offset() == 1, "the refused record took an offset"

    c = clients.consumer()
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False) == (0, 2)


def test_kafka_python_record_over_topic_limit_fails(clients, create_topic):
    topic = create_topic(1, {"max.message.bytes": str(LIMIT)})
    # Without idempotence: kafka-python's idempotent producer treats any non-retriable
    # batch error as fatal and fails every later send with it (a client policy).
    p = clients.kp_producer(enable_idempotence=False)
    assert p.send(topic, os.urandom(LIMIT - 500)).get(timeout=15).offset == 0
    with pytest.raises(MessageSizeTooLargeError):
        p.send(topic, os.urandom(2 * LIMIT)).get(timeout=15)
    assert p.send(topic, b"small again").get(timeout=15).offset == 1


def test_default_limit_refuses_batches_over_1mib_on_the_wire(bootstrap, create_topic):
    """Kafka's default max.message.bytes is 1048588 (1 MiB + 12). Clients check their own
    1 MiB limit before sending, so this goes over a raw connection."""
    topic = create_topic(1)
    conn = wire.RawConnection.to(bootstrap)
    try:
        big = wire.record_batch([(None, os.urandom(1100 * 1024), [])])
        (res,) = wire.parse_produce_response(conn.call(wire.produce_request(1, topic, 0, big), 1, timeout=10))
        assert res[2] == wire.MESSAGE_TOO_LARGE, res
        ok = wire.record_batch([(None, os.urandom(1000 * 1024), [])])
        (res,) = wire.parse_produce_response(conn.call(wire.produce_request(2, topic, 0, ok), 2, timeout=10))
        assert (res[2], res[3]) == (0, 0), res
    finally:
        conn.close()
