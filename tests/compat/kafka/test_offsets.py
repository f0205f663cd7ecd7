"""Committed offsets (commit, fetch, resume in a new member) and offset look-ups: earliest,
latest (watermarks) and by timestamp (offsets_for_times)."""

import pytest
from confluent_kafka import OFFSET_INVALID, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KTopicPartition

from kafka_helpers import Deadline, commit_sync, confluent_consume, kp_consume, produce

COMMITTED = {0: 4, 1: 7}


def fill(clients, topic, per_partition=10):
    records = [{"value": f"p{p}-{i}".encode(), "partition": p} for i in range(per_partition) for p in (0, 1)]
    produce(clients, "confluent", topic, records)


def commit_with(clients, kind, topic, group, offsets, metadata):
    """Joins `group`, reads everything, commits `offsets` (not the read position) with
    `metadata`, checks them with committed(), and closes (leaving the group)."""
    if kind == "confluent":
        c = clients.consumer(group)
        c.subscribe([topic])
        confluent_consume(c, 20)
        commit_sync(c, topic, offsets, metadata=metadata)
        got = c.committed([TopicPartition(topic, p) for p in offsets], timeout=10)
        assert {tp.partition: (tp.offset, tp.metadata) for tp in got} == {
            p: (o, metadata) for p, o in offsets.items()
        }
    else:
        c = clients.kp_consumer(topic, group=group)
        kp_consume(c, 20)
        c.commit({KTopicPartition(topic, p): OffsetAndMetadata(o, metadata, -1) for p, o in offsets.items()})
        for p, o in offsets.items():
            assert c.committed(KTopicPartition(topic, p)) == o
            assert c.committed(KTopicPartition(topic, p), metadata=True).metadata == metadata
    c.close()
    clients.forget(c)


def resume_with(clients, kind, topic, group, n):
    """A new member of `group` reads n records: {partition: [offsets]}."""
    out = {}
    if kind == "confluent":
        c = clients.consumer(group)
        c.subscribe([topic])
        for m in confluent_consume(c, n):
            out.setdefault(m.partition(), []).append(m.offset())
    else:
        c = clients.kp_consumer(topic, group=group)
        for r in kp_consume(c, n):
            out.setdefault(r.partition, []).append(r.offset)
    return out


@pytest.mark.parametrize("committer,resumer", [("confluent", "kafka-python"), ("kafka-python", "confluent")])
def test_new_member_resumes_from_committed_offsets(clients, create_topic, name, committer, resumer):
    topic, group = create_topic(2), name("group")
    fill(clients, topic)
    commit_with(clients, committer, topic, group, COMMITTED, "checkpoint-1")
    got = resume_with(clients, resumer, topic, group, n=(10 - 4) + (10 - 7))
    assert got == {0: list(range(4, 10)), 1: list(range(7, 10))}


def test_committed_is_unset_for_a_new_group(clients, create_topic, name):
    topic = create_topic(1)
    c = clients.consumer(name("group"))
    (tp,) = c.committed([TopicPartition(topic, 0)], timeout=10)
    assert tp.offset == OFFSET_INVALID and tp.error is None
    k = clients.kp_consumer(group=name("group"))
    assert k.committed(KTopicPartition(topic, 0)) is None


def test_commit_then_admin_lists_group_offsets(clients, create_topic, name):
    topic, group = create_topic(2), name("group")
    fill(clients, topic)
    commit_with(clients, "confluent", topic, group, COMMITTED, "m")
    admin = clients.admin()
    (fut,) = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]).values()
    res = fut.result(timeout=15)
    assert {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic} == COMMITTED
    kadmin = clients.kp_admin()
    offsets = kadmin.list_group_offsets(group)[group]
    assert {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic} == COMMITTED


def test_watermarks_earliest_and_latest(clients, create_topic):
    topic = create_topic(2)
    c = clients.consumer()
    k = clients.kp_consumer()
    tps = [KTopicPartition(topic, 0), KTopicPartition(topic, 1)]

    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False) == (0, 0)
    assert k.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    assert k.end_offsets(tps) == {tps[0]: 0, tps[1]: 0}

    produce(clients, "confluent", topic, [{"value": b"x", "partition": 0}] * 7)
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False) == (0, 7)
    assert c.get_watermark_offsets(TopicPartition(topic, 1), timeout=10, cached=False) == (0, 0)
    assert k.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    assert k.end_offsets(tps) == {tps[0]: 7, tps[1]: 0}

    admin = clients.admin()
    specs = {
        TopicPartition(topic, 0): OffsetSpec.earliest(),
        TopicPartition(topic, 1): OffsetSpec.latest(),
    }
    res = {tp.partition: f.result(timeout=15).offset for tp, f in admin.list_offsets(specs).items()}
    assert res == {0: 0, 1: 0}
    (fut,) = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.latest()}).values()
    assert fut.result(timeout=15).offset == 7


def test_offsets_for_times(clients, create_topic):
    topic = create_topic(1)
    t0 = 1_700_000_000_000
    # One record per second of CreateTime: offset i has timestamp t0 + 1000 i.
    produce(clients, "confluent", topic, [{"value": f"r{i}".encode(), "timestamp": t0 + 1000 * i} for i in range(10)])

    c = clients.consumer()

    def lookup(ts):
        (tp,) = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
        assert tp.error is None, tp.error
        return tp.offset

    # The earliest offset whose timestamp is >= the one asked for.
    assert lookup(t0 - 5000) == 0
    assert lookup(t0) == 0
    assert lookup(t0 + 2500) == 3
    assert lookup(t0 + 3000) == 3
    assert lookup(t0 + 9000) == 9
    assert lookup(t0 + 9001) == -1  # none that late: the end marker (OFFSET_END)

    k = clients.kp_consumer()
    tp = KTopicPartition(topic, 0)
    found = k.offsets_for_times({tp: t0 + 2500})[tp]
    assert (found.offset, found.timestamp) == (3, t0 + 3000)
    assert k.offsets_for_times({tp: t0 + 9001})[tp] is None

    admin = clients.admin()
    (fut,) = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.for_timestamp(t0 + 4500)}).values()
    res = fut.result(timeout=15)
    assert (res.offset, res.timestamp) == (5, t0 + 5000)


def test_auto_commit_on_close(clients, create_topic, name):
    """With enable.auto.commit, closing a member commits what it consumed; the next member
    of the group starts after it."""
    topic, group = create_topic(1), name("group")
    produce(clients, "confluent", topic, [{"value": f"r{i}".encode()} for i in range(10)])
    c = clients.consumer(group, **{"enable.auto.commit": True, "auto.commit.interval.ms": 60000})
    c.subscribe([topic])
    confluent_consume(c, 10)
    c.close()
    clients.forget(c)
    produce(clients, "confluent", topic, [{"value": f"r{i}".encode()} for i in range(10, 15)])
    k = clients.kp_consumer(topic, group=group, enable_auto_commit=True, auto_commit_interval_ms=60000)
    assert [r.offset for r in kp_consume(k, 5)] == list(range(10, 15))
    k.close()
    clients.forget(k)
    c = clients.consumer(group)
    (tp,) = c.committed([TopicPartition(topic, 0)], timeout=10)
    assert tp.offset == 15


def committed_past_the_end(clients, create_topic, name):
    """A topic of 5 records and a group whose committed offset is 1000: out of range."""
    topic, group = create_topic(1), name("group")
    produce(clients, "confluent", topic, [{"value": f"r{i}".encode()} for i in range(5)])
    setter = clients.consumer(group)
    commit_sync(setter, topic, {0: 1000})
    setter.close()
    clients.forget(setter)
    return topic, group


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_out_of_range_position_is_reset(clients, create_topic, name, client):
    """A committed offset past the end of the log (as after losing data) is out of range:
    the consumer falls back to auto.offset.reset (here earliest)."""
    topic, group = committed_past_the_end(clients, create_topic, name)
    if client == "confluent":
        c = clients.consumer(group, **{"auto.offset.reset": "earliest"})
        c.subscribe([topic])
        assert [m.offset() for m in confluent_consume(c, 5)] == list(range(5))
    else:
        k = clients.kp_consumer(topic, group=group, auto_offset_reset="earliest")
        assert [r.offset for r in kp_consume(k, 5)] == list(range(5))


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_out_of_range_position_is_reset_to_latest(clients, create_topic, name, client):
    """With auto.offset.reset=latest, a committed offset past the end moves the consumer to
    the end of the log: it reads records produced afterwards and none of the 5 before."""
    topic, group = committed_past_the_end(clients, create_topic, name)
    if client == "confluent":
        c = clients.consumer(group, **{"auto.offset.reset": "latest"})
        c.subscribe([topic])

        def poll():
            m = c.poll(0.2)
            return [] if m is None or m.error() else [m.offset()]
    else:
        k = clients.kp_consumer(topic, group=group, auto_offset_reset="latest")

        def poll():
            return [r.offset for recs in k.poll(timeout_ms=1000).values() for r in recs]

    # The reset happens once the group is joined and the first fetch is refused; records
    # produced before it lands are skipped too, so produce until one arrives.
    got = []
    deadline = Deadline(20)
    sent = 0
    while not got:
        assert not deadline.passed(), "nothing read after the reset"
        produce(clients, "confluent", topic, [{"value": f"s{sent}".encode()}])
        sent += 1
        for _ in range(3):
            got.extend(poll())
    assert min(got) >= 5, f"read {got}: the position went back to the start"
    assert max(got) <= 4 + sent
