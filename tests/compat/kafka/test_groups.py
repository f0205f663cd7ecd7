"""Consumer groups: partitions split between members, hand-over on LeaveGroup and on
session timeout (from the last committed offsets: nothing committed is read again, nothing
produced is skipped), independent groups, and auto.offset.reset for new groups."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from kafka.structs import TopicPartition as KTopicPartition

from kafka_helpers import (
    Deadline,
    Member,
    SESSION_TIMEOUT_MS,
    confluent_consume,
    kp_consume,
    produce,
    pump,
    split_evenly,
)

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = [0, 1, 2, 3]


def fill(clients, topic, per_partition, start=0, tag="b"):
    """Produces `per_partition` records to each of the 4 partitions; values name them."""
    records = [
        {"key": f"p{p}".encode(), "value": f"{tag}-p{p}-{i}".encode(), "partition": p}
        for i in range(start, start + per_partition)
        for p in PARTS
    ]
    produce(clients, "confluent", topic, records)


def drain(members, duration=0.5):
    """Keeps polling a little longer so that unexpected extra records would arrive."""
    deadline = Deadline(duration)
    while not deadline.passed():
        for m in members:
            m.poll(0.05)


def test_two_members_split_the_partitions(clients, create_topic, name):
    topic, group = create_topic(4), name("group")
    a = Member(clients.consumer(group), topic, "a")
    b = Member(clients.consumer(group), topic, "b")
    pump([a, b], lambda: split_evenly([a, b], PARTS), what="both members assigned")
    # Range assignment of 4 partitions to 2 members: 2 each.
    assert len(a.assigned) == 2 and len(b.assigned) == 2, (a, b)

    fill(clients, topic, 10)
    pump([a, b], lambda: len(a.records) + len(b.records) >= 40, what="40 records")
    drain([a, b])
    for m in (a, b):
        # Each member reads exactly its own partitions, every record once.
        assert {p for p, _ in m.positions()} == m.assigned, m
        assert m.positions() == {(p, o) for p in m.assigned for o in range(10)}, m
        assert len(m.records) == 20, m


def test_leave_group_hands_partitions_over_from_committed_offsets(clients, create_topic, name):
    topic, group = create_topic(4), name("group")
    a_consumer = clients.consumer(group)
    a = Member(a_consumer, topic, "a")
    b = Member(clients.consumer(group), topic, "b")
    pump([a, b], lambda: split_evenly([a, b], PARTS), what="both members assigned")

    fill(clients, topic, 10, tag="first")
    pump([a, b], lambda: len(a.records) == 20 and len(b.records) == 20, what="each member's 20 records")
    # b commits everything it read; a has read 10 per partition but commits only 6, as if
    # it crashed half-way through processing.
    b.commit({p: 10 for p in b.assigned})
    a.commit({p: 6 for p in a.assigned})
    a_parts, b_parts = set(a.assigned), set(b.assigned)

    a_consumer.close()  # sends LeaveGroup: the group rebalances without waiting
    clients.forget(a_consumer)
    b.records.clear()
    started = time.monotonic()
    pump([b], lambda: b.assigned == set(PARTS), timeout=15, what="b to take over all partitions")
    # LeaveGroup makes the hand-over immediate, not a session timeout later.
    assert time.monotonic() - started < SESSION_TIMEOUT_MS / 1000, "hand-over waited for the session timeout"

    fill(clients, topic, 5, start=10, tag="second")
    want = {(p, o) for p in a_parts for o in range(6, 15)} | {(p, o) for p in b_parts for o in range(10, 15)}
    pump([b], lambda: len(b.records) >= len(want), what=f"{len(want)} records after the hand-over")
    drain([b])  # anything extra (re-read or duplicated) shows up here
    assert len(b.records) == len(want), f"{len(b.records)} records, expected {len(want)} (duplicates?)"
    assert b.positions() == want


@pytest.mark.timeout(60)
def test_killed_member_loses_partitions_after_session_timeout(clients, create_topic, name):
    """A member killed with SIGKILL never sends LeaveGroup; the coordinator notices only
    when its session times out, then hands its partitions to the survivor, which resumes
    from the dead member's last commits."""
    topic, group = create_topic(4), name("group")
    fill(clients, topic, 10)
    child = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "group_member.py"), clients.broker.bootstrap, topic, group],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=HERE),
    )
    events = queue.Queue()

    def read_child():
        for line in child.stdout:
            events.put(json.loads(line))

    threading.Thread(target=read_child, name="group-member-stdout", daemon=True).start()
    try:
        child_state = {"assigned": set(), "committed": {}}

        def child_events():
            while True:
                try:
                    ev = events.get_nowait()
                except queue.Empty:
                    return
                assert "error" not in ev, f"child consumer error: {ev}"
                if "assigned" in ev:
                    child_state["assigned"] = set(ev["assigned"])
                if "committed" in ev:
                    child_state["committed"].update({int(p): o for p, o in ev["committed"].items()})

        b = Member(clients.consumer(group), topic, "b")

        def settled():
            child_events()
            ca = child_state["assigned"]
            return (
                ca
                and b.assigned
                and ca | b.assigned == set(PARTS)
                and not ca & b.assigned
                and all(child_state["committed"].get(p) == 10 for p in ca)
                # b may have read partitions before the child joined; what counts is that
                # it has read all of its final ones.
                and {(p, o) for p in b.assigned for o in range(10)} <= b.positions()
            )

        try:
            pump([b], settled, timeout=30, what="child and b to split the partitions and read them")
        except AssertionError as e:
            raise AssertionError(f"{e}; child: {child_state}") from None
        child_parts = set(child_state["assigned"])
        b.commit({p: 10 for p in b.assigned})
        b.records.clear()

        child.kill()  # SIGKILL: no LeaveGroup, no more heartbeats
        child.wait(timeout=10)
        killed = time.monotonic()
        pump([b], lambda: b.assigned == set(PARTS), timeout=SESSION_TIMEOUT_MS / 1000 + 15,
             what="b to get the dead member's partitions")
        waited = time.monotonic() - killed
        # Not before the session could have expired (heartbeats every 0.5 s kept it alive).
        assert waited >= SESSION_TIMEOUT_MS / 1000 - 2.5, f"partitions moved after only {waited:.1f}s"

        fill(clients, topic, 5, start=10)
        want = {(p, o) for p in PARTS for o in range(10, 15)}
        pump([b], lambda: len(b.records) >= len(want), what="the new records")
        drain([b])
        assert child_parts and b.positions() == want and len(b.records) == len(want)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)


def test_two_groups_each_get_every_record(clients, create_topic, name):
    topic = create_topic(2)
    records = [{"key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(50)]
    produce(clients, "confluent", topic, records)

    c1 = clients.consumer(name("group1"))
    c1.subscribe([topic])
    c2 = clients.kp_consumer(topic, group=name("group2"))
    got1 = confluent_consume(c1, 50)
    got2 = kp_consume(c2, 50)
    assert sorted(m.value() for m in got1) == sorted(r["value"] for r in records)
    assert sorted(r.value for r in got2) == sorted(r["value"] for r in records)


def test_new_group_earliest_reads_from_the_start(clients, create_topic, name):
    topic = create_topic(1)
    old = [{"value": f"old-{i}".encode()} for i in range(10)]
    produce(clients, "confluent", topic, old)
    for kind in ("confluent", "kafka-python"):
        if kind == "confluent":
            c = clients.consumer(name("group"), **{"auto.offset.reset": "earliest"})
            c.subscribe([topic])
            got = [m.value() for m in confluent_consume(c, 10)]
        else:
            c = clients.kp_consumer(topic, group=name("group"), auto_offset_reset="earliest")
            got = [r.value for r in kp_consume(c, 10)]
        assert got == [r["value"] for r in old], kind


def test_new_group_latest_reads_only_new_records_kafka_python(clients, create_topic, name):
    topic = create_topic(1)
    produce(clients, "confluent", topic, [{"value": f"old-{i}".encode()} for i in range(10)])
    c = clients.kp_consumer(topic, group=name("group"), auto_offset_reset="latest")
    tp = KTopicPartition(topic, 0)
    deadline = Deadline(15)
    while tp not in c.assignment():
        assert not deadline.passed(), "kafka-python consumer got no assignment"
        # Long polls while joining: kafka-python 3.0.12 never completes a join whose
        # SyncGroup answer comes after a poll timed out (see kafka_helpers.kp_consume).
        assert not c.poll(timeout_ms=2000), "records arrived before any were produced after joining"
    # position() resolves the reset (a ListOffsets for the latest offset) before returning.
    assert c.position(tp, timeout_ms=10000) == 10
    new = [{"value": f"new-{i}".encode()} for i in range(5)]
    produce(clients, "confluent", topic, new)
    assert [r.value for r in kp_consume(c, 5)] == [r["value"] for r in new]


def test_new_group_latest_reads_only_new_records_confluent(clients, create_topic, name):
    """librdkafka resolves `latest` lazily and exposes no position until a record arrives,
    so markers are produced until one is seen; from then on nothing may be missed, and none
    of the records from before the group existed may ever show up."""
    topic = create_topic(1)
    produce(clients, "confluent", topic, [{"value": f"old-{i}".encode()} for i in range(10)])
    c = clients.consumer(name("group"), **{"auto.offset.reset": "latest"})
    c.subscribe([topic])
    producer = clients.producer()
    seen = []
    deadline = Deadline(15)
    marker = 0
    while not seen:
        assert not deadline.passed(), "no marker arrived"
        producer.produce(topic, f"marker-{marker}".encode())
        producer.flush(5)
        marker += 1
        for m in c.consume(num_messages=100, timeout=0.2):
            assert m.error() is None, m.error()
            seen.append(m.value())
    new = [{"value": f"new-{i}".encode()} for i in range(5)]
    produce(clients, "confluent", topic, new)
    deadline = Deadline(10)
    while sum(v.startswith(b"new-") for v in seen) < 5:
        assert not deadline.passed(), f"new records missing: {seen}"
        seen += [m.value() for m in c.consume(num_messages=100, timeout=0.2)]
    assert not [v for v in seen if v.startswith(b"old-")], "a latest-reset group read old records"
    markers = [v for v in seen if v.startswith(b"marker-")]
    # A contiguous tail of the markers, then every new record in order.
    first = int(markers[0].split(b"-")[1])
    assert markers == [f"marker-{i}".encode() for i in range(first, marker)]
    assert [v for v in seen if v.startswith(b"new-")] == [r["value"] for r in new]


class CooperativeMember(Member):
    """A member under an incremental (cooperative) assignor: callbacks carry only the
    partitions that change hands."""

    def _on_assign(self, consumer, partitions):
        self.assigned |= {p.partition for p in partitions}
        self.assigns += 1


def test_cooperative_sticky_members_split_incrementally(clients, create_topic, name):
    topic, group = create_topic(4), name("group")
    conf = {"partition.assignment.strategy": "cooperative-sticky"}
    a = CooperativeMember(clients.consumer(group, **conf), topic, "a")
    pump([a], lambda: a.assigned == set(PARTS), what="a to own every partition")
    b = CooperativeMember(clients.consumer(group, **conf), topic, "b")
    pump([a, b], lambda: split_evenly([a, b], PARTS) and len(a.assigned) == 2,
         what="an incremental 2 + 2 split")
    # Incremental: a gave up only what b took; it was never left with nothing.
    assert a.revokes >= 1 and len(a.assigned) == 2, a

    fill(clients, topic, 10)
    pump([a, b], lambda: len(a.records) + len(b.records) >= 40, what="40 records")
    drain([a, b])
    seen = a.positions() | b.positions()
    assert len(a.records) + len(b.records) == 40, (a, b)
    assert seen == {(p, o) for p in PARTS for o in range(10)}
