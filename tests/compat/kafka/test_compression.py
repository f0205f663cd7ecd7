"""Compressed record batches (none, gzip, snappy, lz4, zstd): the broker stores what the
producer sent and both consumers decode it, including a fetch that starts in the middle of
a compressed batch."""

import pytest

from kafka_helpers import CLIENTS, by_partition, consume, produce

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
N = 300


def records():
    # Repetitive values so every codec actually shrinks the batches.
    return [
        {
            "key": f"key-{i % 10}".encode(),
            "value": (f"record {i} " * 20).encode(),
            "headers": [("i", str(i).encode())],
            "partition": i % 2,
        }
        for i in range(N)
    ]


def producer_conf(producer, codec):
    if producer == "confluent":
        # linger + a large batch count: many records per (compressed) batch.
        return {"compression.type": codec, "linger.ms": 50, "batch.num.messages": 1000}
    return {"compression_type": None if codec == "none" else codec, "linger_ms": 50, "batch_size": 256 * 1024}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("producer", CLIENTS)
def test_compressed_round_trip(clients, create_topic, producer, codec):
    topic = create_topic(2)
    sent = records()
    positions = produce(clients, producer, topic, sent, producer_conf(producer, codec))
    for i, (partition, offset) in enumerate(positions):
        assert (partition, offset) == (i % 2, i // 2), f"record {i}"

    for consumer in CLIENTS:
        got = consume(clients, consumer, topic, [0, 1], N)
        parts = by_partition(got)
        for p in (0, 1):
            want = [r for r in sent if r["partition"] == p]
            have = parts.get(p, [])
            assert [r["offset"] for r in have] == list(range(len(want))), f"{consumer} p{p}"
            assert [(r["key"], r["value"], r["headers"]) for r in have] == [
                (w["key"], w["value"], w["headers"]) for w in want
            ], f"{consumer} p{p}"

        # Start inside a batch: the broker returns the whole batch, the client skips the
        # records before the requested offset; nothing before it may be delivered.
        mid = consume(clients, consumer, topic, [0], N // 2 - 75, offsets={0: 75})
        assert [r["offset"] for r in mid] == list(range(75, N // 2)), consumer
