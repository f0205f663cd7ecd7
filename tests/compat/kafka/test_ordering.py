"""Keyed records: the same key always lands on the same partition, and the order of one
key's records is the order they were produced in."""

import random

from kafka_helpers import by_partition, consume, produce

STAGES = ["created", "paid", "completed"]


def test_order_events_keep_per_key_order(clients, create_topic):
    topic = create_topic(3)
    orders = [f"order-{i:03d}" for i in range(60)]

    # Interleave the orders randomly while keeping each order's stages in sequence, the
    # way events from many concurrent checkouts arrive.
    rng = random.Random(7)
    progress = {o: 0 for o in orders}
    events = []
    while progress:
        o = rng.choice(sorted(progress))
        events.append((o, STAGES[progress[o]]))
        progress[o] += 1
        if progress[o] == 2:  # created and paid here; completed comes from kafka-python
            del progress[o]

    # Both producers partition keys with murmur2 (librdkafka's murmur2_random is the
    # Java-compatible partitioner; kafka-python's default is murmur2), so they agree.
    first = [{"key": o.encode(), "value": f"{o}:{stage}".encode()} for o, stage in events]
    positions = produce(clients, "confluent", topic, first, {"partitioner": "murmur2_random"})
    completed = [{"key": o.encode(), "value": f"{o}:completed".encode()} for o in orders]
    positions += produce(clients, "kafka-python", topic, completed)
    sent = first + completed

    partition_of = {}
    for rec, (partition, _) in zip(sent, positions):
        key = rec["key"]
        assert partition_of.setdefault(key, partition) == partition, f"{key!r} went to two partitions"
    assert set(partition_of.values()) == {0, 1, 2}, "60 keys should use all 3 partitions"

    got = consume(clients, "confluent", topic, [0, 1, 2], len(sent))
    # Each partition numbers its records 0.. in the order the broker appended them.
    for p, recs in by_partition(got).items():
        assert [r["offset"] for r in recs] == list(range(len(recs))), f"partition {p}"
        want = [(rec["value"]) for rec, (part, _) in zip(sent, positions) if part == p]
        assert [r["value"] for r in recs] == want, f"partition {p}"

    stages_of = {}
    for r in got:
        assert r["partition"] == partition_of[r["key"]]
        order, stage = r["value"].decode().split(":")
        stages_of.setdefault(order, []).append(stage)
    assert stages_of == {o: STAGES for o in orders}
