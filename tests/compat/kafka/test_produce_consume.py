"""Produce/consume round trips between both clients: keys, values, headers, nulls,
timestamps, offsets, and records near the 1 MiB default size limits."""

import hashlib
import os
import time

import pytest

from kafka_helpers import CLIENTS, consume, produce

FIXED_TS = 1_600_000_000_123  # ms; an explicit CreateTime must come back unchanged

RECORDS = [
    {"key": b"k1", "value": b"v1", "headers": [("h1", b"a"), ("h2", b"")]},
    {"key": None, "value": b"no key"},
    {"key": b"tombstone", "value": None},  # null value: a tombstone, not an empty value
    {"key": b"", "value": b""},  # empty is not null
    {"key": b"dup", "value": b"x", "headers": [("h", b"1"), ("h", b"2"), ("h", b"1")]},
    {"key": b"\x00\xff\x80", "value": bytes(range(256))},
    {"key": "ключ".encode(), "value": b"utf8 header", "headers": [("заголовок", "значение".encode())]},
    {"key": b"null-header", "value": b"v", "headers": [("n", None)]},
    {"key": b"ts", "value": b"explicit timestamp", "timestamp": FIXED_TS},
]


@pytest.mark.parametrize("consumer", CLIENTS)
@pytest.mark.parametrize("producer", CLIENTS)
def test_round_trip(clients, create_topic, producer, consumer):
    topic = create_topic(1)
    records = RECORDS
    if producer == "kafka-python":
        # kafka-python's send() only takes (str, bytes) headers: no null header values.
        records = [r for r in RECORDS if r["key"] != b"null-header"]
    before = int(time.time() * 1000)
    positions = produce(clients, producer, topic, records)
    after = int(time.time() * 1000)
    # One partition, one producer: offsets are assigned in send order from 0.
    assert positions == [(0, i) for i in range(len(records))]

    got = consume(clients, consumer, topic, [0], len(records))
    for i, (sent, rec) in enumerate(zip(records, got)):
        where = f"record {i} ({sent['key']!r})"
        assert rec["offset"] == i, where
        assert rec["key"] == sent.get("key"), where
        assert rec["value"] == sent.get("value"), where
        # Header order and duplicates are preserved; a null header value stays null.
        assert rec["headers"] == sent.get("headers", []), where
        assert rec["create_time"], f"{where}: timestamp type is not CreateTime"
        if "timestamp" in sent:
            assert rec["timestamp"] == sent["timestamp"], where
        else:
            assert before - 1000 <= rec["timestamp"] <= after + 1000, where


@pytest.mark.parametrize("producer", CLIENTS)
def test_records_near_1mib(clients, create_topic, producer):
    """Records just under 1 MiB pass Kafka's default limits (producer max request size
    1 MiB, topic max.message.bytes 1048588) and come back intact to both consumers."""
    topic = create_topic(1)
    size = 1024 * 1024 - 8 * 1024  # leaves room for the batch and record framing
    records = [
        {"key": f"big-{i}".encode(), "value": os.urandom(size), "headers": [("i", str(i).encode())]}
        for i in range(3)
    ]
    conf = (
        # librdkafka's own message.max.bytes defaults to 1,000,000; allow the full 1 MiB.
        {"message.max.bytes": 1024 * 1024}
        if producer == "confluent"
        else {"max_request_size": 1024 * 1024}
    )
    positions = produce(clients, producer, topic, records, conf)
    assert positions == [(0, 0), (0, 1), (0, 2)]

    want = [hashlib.sha256(r["value"]).hexdigest() for r in records]
    for consumer in CLIENTS:
        got = consume(clients, consumer, topic, [0], len(records), timeout=20)
        assert [r["offset"] for r in got] == [0, 1, 2], consumer
        assert [r["key"] for r in got] == [r["key"] for r in records], consumer
        assert [len(r["value"]) for r in got] == [size] * 3, consumer
        assert [hashlib.sha256(r["value"]).hexdigest() for r in got] == want, consumer


@pytest.mark.parametrize("producer", CLIENTS)
def test_explicit_partitions_and_per_partition_offsets(clients, create_topic, producer):
    """Records sent to explicit partitions land there; each partition numbers its own
    records from 0."""
    topic = create_topic(3)
    records = [{"key": f"k{i}".encode(), "value": f"v{i}".encode(), "partition": i % 3} for i in range(30)]
    positions = produce(clients, producer, topic, records)
    for i, (partition, offset) in enumerate(positions):
        assert partition == i % 3
        assert offset == i // 3

    got = consume(clients, "confluent", topic, [0, 1, 2], len(records))
    seen = {(r["partition"], r["offset"]): r["value"] for r in got}
    assert seen == {(i % 3, i // 3): f"v{i}".encode() for i in range(30)}
