"""Log compaction (`cleanup.policy=compact`): the cleaner keeps the latest record of every
key at its original offset, drops older ones and (after `delete.retention.ms`) tombstones,
never touches the active segment, and refuses records without a key, as Kafka's log
cleaner does (Kafka docs, "Log Compaction"). A kill -9 at any point of a clean leaves a log
that reopens with every latest value.

The session broker cleans every 200 ms (`SLUICE_KAFKA_LOG_CLEANER_BACKOFF_MS` in
conftest.py); topics here use 1 KiB segments so that most records are in sealed ones."""

import glob
import os
import time

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka import TopicPartition as KTP

from kafka_helpers import Deadline, confluent_produce, sluice_only

pytestmark = sluice_only("checks the log's contents after Sluice's cleaner ran")

COMPACT = {"cleanup.policy": "compact", "segment.bytes": "1024", "min.cleanable.dirty.ratio": "0.01"}
# A segment rolls when the next batch would not fit: each produce call (one flush) below is
# at least one batch.


def read_from_start(clients, topic, partition=0, timeout=15.0, isolation="read_committed"):
    """Every record from the log start to the end: [(offset, key, value)]."""
    c = clients.consumer(**{"enable.partition.eof": True, "isolation.level": isolation})
    c.assign([TopicPartition(topic, partition, 0)])
    out, deadline = [], Deadline(timeout)
    try:
        while True:
            assert not deadline.passed(), f"no end of partition after {len(out)} records"
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:
                    return out
                raise AssertionError(m.error())
            out.append((m.offset(), m.key(), m.value()))
    finally:
        c.close()
        clients.forget(c)


def latest_by_key(records):
    latest = {}
    for offset, key, value in records:
        latest[key] = (offset, value)
    return latest


def produce_keys(clients, topic, rounds, keys, tombstones=(), size=20):
    """`rounds` values for each of `keys`, then tombstones; -> {key: (offset, value)} as
    the deliveries report them."""
    # One flush per round: each round is a batch of its own, so segments roll.
    producer = clients.producer()
    delivered = []
    for r in range(rounds):
        round_ = [{"key": k, "value": f"{k.decode()}-{r}".encode().ljust(size, b"."), "partition": 0} for k in keys]
        delivered += confluent_produce(producer, topic, round_)
    if tombstones:
        delivered += confluent_produce(producer, topic, [{"key": k, "value": None, "partition": 0} for k in tombstones])
    return {m.key(): (m.offset(), m.value()) for m in delivered}


def wait_cleaned(clients, topic, fewer_than, timeout=20.0):
    deadline = Deadline(timeout)
    while True:
        records = read_from_start(clients, topic)
        if len(records) < fewer_than:
            return records
        assert not deadline.passed(), f"still {len(records)} records: not cleaned"
        time.sleep(0.3)


def test_the_latest_value_of_every_key_stays_at_its_offset(clients, create_topic):
    topic = create_topic(1, COMPACT)
    keys = [f"key{i}".encode() for i in range(8)]
    expected = produce_keys(clients, topic, 40, keys, tombstones=[b"key7"])
    total = 40 * 8 + 1
    records = wait_cleaned(clients, topic, total // 2)
    got = latest_by_key(records)
    # Every key's last record is there, at the offset it was written at (tombstones are
    # kept for delete.retention.ms, a day by default).
    assert got == expected
    offsets = [o for o, _, _ in records]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert offsets[-1] == total - 1
    # kafka-python reads across the gaps the cleaner left.
    kc = clients.kp_consumer()
    kc.assign([KTP(topic, 0)])
    kc.seek_to_beginning()
    seen, deadline = [], Deadline(15)
    while len(seen) < len(records) and not deadline.passed():
        for recs in kc.poll(timeout_ms=500).values():
            seen += [(r.offset, r.key, r.value) for r in recs]
    assert seen == records


def test_tombstones_go_after_delete_retention(clients, create_topic):
    topic = create_topic(1, {**COMPACT, "delete.retention.ms": "0"})
    keys = [f"t{i}".encode() for i in range(5)]
    produce_keys(clients, topic, 30, keys)
    # Tombstones between other records, then more writes so that they are in sealed
    # segments.
    mixed = []
    for i, k in enumerate(keys[:3]):
        mixed += [{"key": k, "value": None, "partition": 0},
                  {"key": b"other", "value": f"between-{i}".encode(), "partition": 0}]
    confluent_produce(clients.producer(), topic, mixed)
    expected = produce_keys(clients, topic, 30, [b"other"])
    deadline = Deadline(20)
    while True:
        got = latest_by_key(read_from_start(clients, topic))
        if not any(k in got for k in keys[:3]):
            break
        assert not deadline.passed(), f"tombstones still there: {sorted(k for k in keys[:3] if k in got)}"
        time.sleep(0.3)
    assert set(got) == {b"t3", b"t4", b"other"}
    assert got[b"other"] == expected[b"other"]


def test_a_key_is_required_and_configs_are_described(clients, create_topic, admin):
    topic = create_topic(1, COMPACT)
    p = clients.producer()
    errors = []
    p.produce(topic, value=b"no key", partition=0, on_delivery=lambda err, msg: errors.append(err))
    p.flush(15)
    assert errors and errors[0] is not None and errors[0].name() == "INVALID_RECORD"
    (fut,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    configs = fut.result(timeout=15)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["min.cleanable.dirty.ratio"].value == "0.01"
    assert configs["delete.retention.ms"].value == "86400000"
    assert configs["min.compaction.lag.ms"].value == "0"
    assert configs["max.compaction.lag.ms"].value == "9223372036854775807"
    # The policy can change on a live topic, and bad values are refused.
    fut = admin.incremental_alter_configs([ConfigResource(
        ResourceType.TOPIC, topic,
        incremental_configs=[ConfigEntry("cleanup.policy", "compact,delete",
                                         incremental_operation=AlterConfigOpType.SET)],
    )])
    list(fut.values())[0].result(timeout=15)
    (fut,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    assert fut.result(timeout=15)["cleanup.policy"].value == "compact,delete"


def test_min_compaction_lag_holds_recent_records(clients, create_topic):
    topic = create_topic(1, {**COMPACT, "min.compaction.lag.ms": "3600000"})
    produce_keys(clients, topic, 30, [b"a", b"b"])
    time.sleep(1.5)  # several cleaner rounds
    assert len(read_from_start(clients, topic)) == 60, "records younger than the lag were cleaned"


@pytest.mark.timeout(120)
def test_a_kill9_at_any_point_of_a_clean_keeps_every_latest_value(clients, create_topic, broker):
    """The cleaner is slowed to 200 KB/s so that a clean takes seconds; the broker is
    killed while `.cleaned` files exist (a rewrite in progress), at several moments, and
    every key's latest value must be there after each restart."""
    broker.process.env = {"SLUICE_KAFKA_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND": "200000"}
    try:
        broker.restart()
        topic = create_topic(1, {**COMPACT, "segment.bytes": "16384"})
        keys = [f"k{i:03}".encode() for i in range(100)]
        expected = produce_keys(clients, topic, 30, keys, size=200)
        clients.close_all()
        partition_dir = os.path.join(broker.process.data_dir, "kafka", "topics", topic, "0")
        assert os.path.isdir(partition_dir)
        kills = 0
        for delay in (0.0, 0.3, 0.8, 1.5):
            deadline = Deadline(30)
            while not glob.glob(os.path.join(partition_dir, "*.cleaned")):
                assert not deadline.passed(), "no clean in progress to interrupt"
                time.sleep(0.01)
            time.sleep(delay)
            broker.kill9_restart()
            kills += 1
            got = latest_by_key(read_from_start(clients, topic, timeout=30))
            assert got == expected, f"after kill {kills}: latest values differ"
            clients.close_all()
        assert kills == 4
    finally:
        broker.process.env = {}
        broker.restart()
    # Cleaned at full speed, the log is smaller and still has every latest value.
    records = wait_cleaned(clients, topic, 30 * 100 // 2, timeout=30)
    assert latest_by_key(records) == expected


def test_the_cleaner_drops_aborted_transactions_and_keeps_committed_ones(clients, create_topic, bootstrap):
    """Records of an aborted transaction are never a key's latest value for the cleaner
    (Kafka's cleaner discards aborted records): after a clean, even a read_uncommitted
    consumer no longer sees them, and the committed value of the key stays."""
    topic = create_topic(1, COMPACT)
    p = clients.producer(**{"transactional.id": f"compact-{topic}"})
    p.init_transactions(15)
    for rnd in range(20):
        p.begin_transaction()
        p.produce(topic, key=b"k", value=f"committed-{rnd}".encode(), partition=0)
        p.commit_transaction(15)
        p.begin_transaction()
        p.produce(topic, key=b"k", value=f"aborted-{rnd}".encode(), partition=0)
        p.flush(15)
        p.abort_transaction(15)
    # Later writes of another key, so that the transactions above are in sealed segments.
    produce_keys(clients, topic, 20, [b"filler"])
    deadline = Deadline(20)
    while True:
        values = [v for _, k, v in read_from_start(clients, topic, isolation="read_uncommitted") if k == b"k"]
        if values == [b"committed-19"]:
            break
        assert not deadline.passed(), f"not cleaned to the last committed value: {values}"
        time.sleep(0.3)
    assert [v for _, k, v in read_from_start(clients, topic) if k == b"k"] == [b"committed-19"]
