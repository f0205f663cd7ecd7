"""Restart (SIGTERM) and crash (kill -9) of the broker: topics, their configs, records and
committed offsets come back; records acknowledged with acks=all on a `flush=sync` topic
(Sluice's per-topic fsync policy) all survive a kill -9, including while producing."""

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from kafka_helpers import (
    Deadline,
    commit_sync,
    confluent_consume,
    consume,
    produce,
    sluice_only,
    wait_topic_ready,
)

pytestmark = sluice_only("restarts the broker and uses Sluice's flush topic config")


def test_topics_configs_and_records_survive_restart(clients, create_topic, restart_broker):
    topic = create_topic(3, {"retention.ms": "3600000", "max.message.bytes": "500000"})
    records = [{"key": f"k{i}".encode(), "value": f"v{i}".encode(), "partition": i % 3} for i in range(300)]
    produce(clients, "confluent", topic, records)
    clients.close_all()

    restart_broker()

    admin = clients.admin()
    wait_topic_ready(admin, topic, 3)
    (fut,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    configs = fut.result(timeout=15)
    assert configs["retention.ms"].value == "3600000"
    assert configs["max.message.bytes"].value == "500000"

    got = consume(clients, "confluent", topic, [0, 1, 2], 300)
    assert {(r["partition"], r["offset"], r["value"]) for r in got} == {
        (i % 3, i // 3, f"v{i}".encode()) for i in range(300)
    }
    # New records continue the offsets; none is reused.
    more = produce(clients, "confluent", topic, [{"value": b"after", "partition": p} for p in range(3)])
    assert more == [(0, 100), (1, 100), (2, 100)]


@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_committed_offsets_survive(clients, create_topic, name, broker, how):
    topic, group = create_topic(2, {"flush": "sync"}), name("group")
    produce(clients, "confluent", topic, [{"value": f"p{p}-{i}".encode(), "partition": p} for i in range(10) for p in (0, 1)])
    c = clients.consumer(group)
    c.subscribe([topic])
    confluent_consume(c, 20)
    commit_sync(c, topic, {0: 4, 1: 7}, metadata="before-" + how)
    c.close()
    clients.close_all()

    broker.restart() if how == "restart" else broker.kill9_restart()

    c = clients.consumer(group)
    got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
    assert {tp.partition: (tp.offset, tp.metadata) for tp in got} == {
        0: (4, "before-" + how),
        1: (7, "before-" + how),
    }
    c.subscribe([topic])
    resumed = {}
    for m in confluent_consume(c, 6 + 3):
        resumed.setdefault(m.partition(), []).append(m.offset())
    assert resumed == {0: list(range(4, 10)), 1: list(range(7, 10))}


@pytest.mark.timeout(60)
def test_flush_sync_acked_records_survive_kill9(clients, create_topic, broker):
    topic = create_topic(3, {"flush": "sync"})

    # Phase 1: everything acknowledged, then the crash.
    first = [{"key": f"a{i}".encode(), "value": f"first-{i}".encode()} for i in range(600)]
    p = clients.producer(acks="all", **{"enable.idempotence": False})
    acked = {}  # (partition, offset) -> value
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg))

    for rec in first:
        p.produce(topic, rec["value"], key=rec["key"], on_delivery=on_delivery)
    assert p.flush(15) == 0
    assert all(err is None for err, _ in reports), [e for e, _ in reports if e][:3]

    # Phase 2: the crash hits while records are in flight. Whatever was acknowledged before
    # the kill must be there afterwards; the rest may or may not be.
    for i in range(20000):
        try:
            p.produce(topic, f"second-{i}".encode(), key=f"b{i}".encode(), on_delivery=on_delivery)
        except BufferError:
            break
    deadline = Deadline(15)
    while len(reports) < len(first) + 300:
        assert not deadline.passed(), "second phase acknowledgements did not arrive"
        p.poll(0.01)
    broker.process.kill()
    # Every report served so far arrived before the kill.
    for err, msg in list(reports):
        if err is None:
            acked[(msg.partition(), msg.offset())] = msg.value()
    assert len(acked) >= len(first) + 300
    p.purge(in_queue=True, in_flight=True)
    p.flush(1)
    clients.forget(p)

    broker.process.start()

    c = clients.consumer()
    highs = {}
    for part in range(3):
        low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=15, cached=False)
        assert low == 0
        highs[part] = high
        top = max((o for (pp, o) in acked if pp == part), default=-1)
        assert high >= top + 1, f"partition {part}: high watermark {high} below acked offset {top}"
    total = sum(highs.values())
    got = consume(clients, "confluent", topic, [0, 1, 2], total, timeout=30)
    stored = {(r["partition"], r["offset"]): r["value"] for r in got}
    missing = [k for k in acked if stored.get(k) != acked[k]]
    assert not missing, f"{len(missing)} acknowledged records lost or changed, e.g. {sorted(missing)[:5]}"
    # Offsets stay dense after recovery and new records continue from the high watermark.
    for part in range(3):
        assert sorted(o for (pp, o) in stored if pp == part) == list(range(highs[part]))
    more = produce(clients, "confluent", topic, [{"value": b"after", "partition": q} for q in range(3)])
    assert more == [(q, highs[q]) for q in range(3)]


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_flush_sync_acks_all_batch_survives_kill9(clients, create_topic, broker, client):
    topic = create_topic(2, {"flush": "sync"})
    records = [{"key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(500)]
    positions = produce(clients, client, topic, records, {"acks": "all"})
    clients.close_all()
    broker.kill9_restart()
    got = consume(clients, "kafka-python", topic, [0, 1], len(records), timeout=20)
    stored = {(r["partition"], r["offset"]): r["value"] for r in got}
    assert stored == {pos: rec["value"] for pos, rec in zip(positions, records)}


@pytest.mark.timeout(120)
def test_group_members_carry_on_across_kill9_without_a_rebalance(clients, create_topic, name, broker):
    """Kafka stores group membership with the offsets, so a coordinator that restarts keeps
    the generation and the assignment: members' heartbeats and commits go on, nothing is
    revoked, and no record is read twice. Three kill -9s in a row."""
    topic, group = create_topic(2, {"flush": "sync"}), name("group")
    events = []
    c = clients.consumer(group)
    c.subscribe(
        [topic],
        on_assign=lambda _c, ps: events.append(("assign", sorted(p.partition for p in ps))),
        on_revoke=lambda _c, ps: events.append(("revoke", sorted(p.partition for p in ps))),
        on_lost=lambda _c, ps: events.append(("lost", sorted(p.partition for p in ps))),
    )
    seen = []
    for round_ in range(4):
        produce(clients, "confluent", topic,
                [{"value": f"r{round_}-{i}".encode(), "partition": i % 2} for i in range(20)])
        got = confluent_consume(c, 20, timeout=30)
        seen.extend(m.value() for m in got)
        nxt = {}
        for m in got:
            nxt[m.partition()] = max(nxt.get(m.partition(), 0), m.offset() + 1)
        commit_sync(c, topic, nxt)
        if round_ < 3:
            broker.kill9_restart()
    assert sorted(seen) == sorted(f"r{r}-{i}".encode() for r in range(4) for i in range(20)), \
        "every record exactly once"
    assert events == [("assign", [0, 1])], f"rebalance events across restarts: {events}"
