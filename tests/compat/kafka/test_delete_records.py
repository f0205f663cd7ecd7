"""DeleteRecords: the log start offset moves up to the given offset (or the high
watermark for -1), durably; ListOffsets earliest, Fetch and consumers see the new start,
as the Kafka protocol guide and KIP-107 describe. confluent-kafka and kafka-python."""

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from kafka.structs import TopicPartition as KTopicPartition

from kafka_helpers import consume, produce, sluice_only


def watermarks(clients, topic):
    c = clients.consumer()
    return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)


def test_records_below_the_offset_are_gone_and_the_rest_reads_from_there(clients, create_topic):
    topic = create_topic()
    # One producer, linger: the ten records share batches, so the new start falls inside one.
    produce(clients, "confluent", topic, [{"value": f"v{i}".encode()} for i in range(10)],
            conf={"linger.ms": 50})
    admin = clients.admin()
    (fut,) = admin.delete_records([TopicPartition(topic, 0, 4)]).values()
    assert fut.result(timeout=15).low_watermark == 4
    assert watermarks(clients, topic) == (4, 10)
    for kind in ("confluent", "kafka-python"):
        got = consume(clients, kind, topic, [0], 6)
        assert [(r["offset"], r["value"]) for r in got] == [(i, f"v{i}".encode()) for i in range(4, 10)]
    # Below the start is out of range; past the high watermark too.
    (fut,) = admin.delete_records([TopicPartition(topic, 0, 2)]).values()
    assert fut.result(timeout=15).low_watermark == 4, "a lower offset leaves the start where it is"
    (fut,) = admin.delete_records([TopicPartition(topic, 0, 11)]).values()
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=15)
    assert e.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE


def test_kafka_python_deletes_everything_with_minus_one(clients, create_topic):
    topic = create_topic()
    produce(clients, "kafka-python", topic, [{"value": b"x"} for _ in range(5)])
    admin = clients.kp_admin()
    result = admin.delete_records({KTopicPartition(topic, 0): -1})
    assert [v["low_watermark"] for v in result.values()] == [5]
    assert watermarks(clients, topic) == (5, 5)
    produce(clients, "confluent", topic, [{"value": b"after"}])
    got = consume(clients, "confluent", topic, [0], 1)
    assert [(r["offset"], r["value"]) for r in got] == [(5, b"after")]


@sluice_only("kill -9s the broker")
def test_the_new_start_survives_kill_9(clients, create_topic, crash_broker):
    topic = create_topic()
    produce(clients, "confluent", topic, [{"value": f"v{i}".encode()} for i in range(20)])
    (fut,) = clients.admin().delete_records([TopicPartition(topic, 0, 13)]).values()
    assert fut.result(timeout=15).low_watermark == 13
    clients.close_all()
    crash_broker()
    assert watermarks(clients, topic) == (13, 20)
    got = consume(clients, "confluent", topic, [0], 7)
    assert [r["offset"] for r in got] == list(range(13, 20))
