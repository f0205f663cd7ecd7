"""Helpers shared by the Kafka compatibility tests (import with `from kafka_helpers import ...`).

Named kafka_helpers (not helpers) so that this suite and tests/compat/amqp can be collected
in one pytest run without their helper modules shadowing each other.
"""

import os
import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    TopicPartition,
)
from kafka.structs import TopicPartition as KTopicPartition

KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP") or None
EXTERNAL = KAFKA_BOOTSTRAP is not None

# Client settings shared by the tests: fast heartbeats and short fetch waits so group
# changes and deliveries show up in well under a second; 6 s is Kafka's minimum session
# timeout (group.min.session.timeout.ms).
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 500
FETCH_WAIT_MS = 100


def sluice_only(reason):
    """Skip on an external broker: the test uses something only Sluice has."""
    return pytest.mark.skipif(EXTERNAL, reason=reason)


# ---------------------------------------------------------------------------------------
# Bounded waits.


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Deadline:
    def __init__(self, timeout):
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def passed(self):
        return time.monotonic() >= self.end


# ---------------------------------------------------------------------------------------
# confluent-kafka (librdkafka).


def confluent_producer_conf(bootstrap, **overrides):
    conf = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "message.timeout.ms": 15000,
        "socket.timeout.ms": 10000,
    }
    conf.update(overrides)
    return conf


def confluent_consumer_conf(bootstrap, group=None, **overrides):
    conf = {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_MS,
        "fetch.wait.max.ms": FETCH_WAIT_MS,
        "enable.partition.eof": False,
        "socket.timeout.ms": 10000,
    }
    # confluent-kafka refuses a consumer without group.id even when it only assign()s; a
    # group-less reader gets a throwaway id it never joins or commits to.
    conf["group.id"] = group if group is not None else f"compat-reader-{uuid.uuid4().hex[:12]}"
    conf.update(overrides)
    return conf


def confluent_produce(producer, topic, records, timeout=15.0):
    """Produces dicts (value, key, headers, partition, timestamp) and flushes; returns the
    delivered messages in the order of `records`, failing on any delivery error."""
    delivered = [None] * len(records)
    errors = []

    def report(i):
        def cb(err, msg):
            if err is not None:
                errors.append((i, err))
            delivered[i] = msg

        return cb

    for i, rec in enumerate(records):
        kwargs = {k: rec[k] for k in ("key", "headers", "partition", "timestamp") if k in rec}
        while True:
            try:
                producer.produce(topic, rec.get("value"), on_delivery=report(i), **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                producer.poll(0.1)
    left = producer.flush(timeout)
    assert left == 0, f"{left} records still undelivered after {timeout}s; errors: {errors[:5]}"
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[:5]}"
    assert all(m is not None for m in delivered)
    return delivered


def confluent_consume(consumer, n, timeout=15.0, allow_more=False):
    """Polls until n records arrived (bounded); fails on consumer errors. With allow_more
    False, keeps polling briefly after the n-th record to catch unexpected extra ones."""
    out = []
    deadline = Deadline(timeout)
    while len(out) < n:
        if deadline.passed():
            raise AssertionError(f"timed out after {timeout}s: {len(out)} of {n} records")
        for msg in consumer.consume(num_messages=max(1, n - len(out)), timeout=min(0.2, deadline.left())):
            check_message(msg)
            out.append(msg)
    if not allow_more:
        extra = confluent_drain(consumer, 0.3)
        assert not extra, f"{len(extra)} unexpected extra records, first: {describe(extra[0])}"
    return out


def confluent_drain(consumer, duration):
    """Whatever arrives within `duration` seconds."""
    out = []
    deadline = Deadline(duration)
    while not deadline.passed():
        for msg in consumer.consume(num_messages=100, timeout=min(0.1, deadline.left())):
            check_message(msg)
            out.append(msg)
    return out


def check_message(msg):
    err = msg.error()
    if err is not None:
        raise AssertionError(f"consumer error: {err} (code {err.code()}, name {err.name()})")


def describe(msg):
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()} key={msg.key()!r}"


def kafka_error_code(exc):
    """The KafkaError code inside a confluent KafkaException (or a KafkaError)."""
    err = exc.args[0] if exc.args else exc
    return err.code() if isinstance(err, KafkaError) else None


def wait_topic_ready(admin, topic, partitions, timeout=10.0):
    """Waits until metadata shows the topic with `partitions` partitions, each with a
    leader (Kafka creates topics asynchronously after CreateTopics returns)."""

    def ready():
        md = admin.list_topics(topic, timeout=5)
        t = md.topics.get(topic)
        if t is None or t.error is not None or len(t.partitions) != partitions:
            return False
        return all(p.leader >= 0 and p.error is None for p in t.partitions.values())

    wait_for(ready, timeout, 0.05, f"topic {topic} with {partitions} partitions and leaders")


# ---------------------------------------------------------------------------------------
# kafka-python.


def kp_consumer_kwargs(bootstrap, group=None, **overrides):
    kw = dict(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
        fetch_max_wait_ms=FETCH_WAIT_MS,
        request_timeout_ms=10000,
    )
    kw.update(overrides)
    return kw


def kp_consume(consumer, n, timeout=15.0, allow_more=False):
    """Polls a kafka-python consumer until n records arrived (bounded); returns records in
    arrival order."""
    out = []
    deadline = Deadline(timeout)
    while len(out) < n:
        if deadline.passed():
            raise AssertionError(f"timed out after {timeout}s: {len(out)} of {n} records")
        # poll returns as soon as records arrive; a long timeout matters while the member
        # joins: kafka-python 3.0.12 never completes a join whose SyncGroup answer comes
        # after a poll timed out (no heartbeats follow, and the session expires), which a
        # loaded machine makes likely with short polls.
        batches = consumer.poll(timeout_ms=int(min(2000, deadline.left() * 1000)) or 1)
        for recs in batches.values():
            out.extend(recs)
    if not allow_more:
        extra = kp_drain(consumer, 0.3)
        assert not extra, f"{len(extra)} unexpected extra records, first: {extra[0]}"
    return out


def kp_drain(consumer, duration):
    out = []
    deadline = Deadline(duration)
    while not deadline.passed():
        batches = consumer.poll(timeout_ms=int(min(100, deadline.left() * 1000)) or 1)
        for recs in batches.values():
            out.extend(recs)
    return out


def kp_produce(producer, topic, records, timeout=15.0):
    """Sends dicts (value, key, headers, partition, timestamp) and waits for every future;
    returns the RecordMetadata list in send order."""
    futures = []
    for rec in records:
        futures.append(
            producer.send(
                topic,
                value=rec.get("value"),
                key=rec.get("key"),
                headers=rec.get("headers"),
                partition=rec.get("partition"),
                timestamp_ms=rec.get("timestamp"),
            )
        )
    producer.flush(timeout=timeout)
    return [f.get(timeout=timeout) for f in futures]


# ---------------------------------------------------------------------------------------
# Either client, by name: "confluent" (confluent-kafka) or "kafka-python".

CLIENTS = ["confluent", "kafka-python"]


def produce(clients, kind, topic, records, conf=None):
    """Produces `records` with a new producer of `kind` (client-specific `conf`); returns
    [(partition, offset)] in the order of `records`."""
    if kind == "confluent":
        p = clients.producer(**(conf or {}))
        return [(m.partition(), m.offset()) for m in confluent_produce(p, topic, records)]
    p = clients.kp_producer(**(conf or {}))
    return [(m.partition, m.offset) for m in kp_produce(p, topic, records)]


def norm_confluent(msg):
    ts_type, ts = msg.timestamp()
    return {
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": msg.key(),
        "value": msg.value(),
        "headers": [(k, v) for k, v in (msg.headers() or [])],
        "timestamp": ts,
        "create_time": ts_type == TIMESTAMP_CREATE_TIME,
    }


def norm_kp(rec):
    return {
        "partition": rec.partition,
        "offset": rec.offset,
        "key": rec.key,
        "value": rec.value,
        "headers": [(k, v) for k, v in (rec.headers or [])],
        "timestamp": rec.timestamp,
        "create_time": rec.timestamp_type == 0,
    }


def consume(clients, kind, topic, partitions, n, offsets=None, timeout=15.0, conf=None):
    """Reads exactly n records with a new group-less consumer of `kind` assigned to
    `partitions` (from `offsets[p]`, default the beginning); returns normalized dicts
    (partition, offset, key, value, headers, timestamp, create_time) in arrival order."""
    offsets = offsets or {}
    if kind == "confluent":
        c = clients.consumer(**(conf or {}))
        c.assign([TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in partitions])
        return [norm_confluent(m) for m in confluent_consume(c, n, timeout)]
    c = clients.kp_consumer(**(conf or {}))
    tps = [KTopicPartition(topic, p) for p in partitions]
    c.assign(tps)
    for tp in tps:
        if tp.partition in offsets:
            c.seek(tp, offsets[tp.partition])
        else:
            c.seek_to_beginning(tp)
    return [norm_kp(r) for r in kp_consume(c, n, timeout)]


def by_partition(records):
    out = {}
    for r in records:
        out.setdefault(r["partition"], []).append(r)
    return out


# ---------------------------------------------------------------------------------------
# Consumer-group members (confluent-kafka, subscribe()).


class Member:
    """A subscribed confluent consumer that records its assignment changes and records.

    Rebalance callbacks and fetched records are only delivered inside consume(), so a test
    drives every member with pump()."""

    def __init__(self, consumer, topic, label):
        self.c = consumer
        self.topic = topic
        self.label = label
        self.assigned = set()
        self.assigns = 0
        self.revokes = 0
        self.records = []
        consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer, partitions):
        self.assigned = {p.partition for p in partitions}
        self.assigns += 1

    def _on_revoke(self, consumer, partitions):
        # Eager rebalancing (librdkafka's default range/roundrobin assignors) revokes
        # everything before the next assignment.
        self.assigned -= {p.partition for p in partitions}
        self.revokes += 1

    def poll(self, timeout=0.05):
        for msg in self.c.consume(num_messages=500, timeout=timeout):
            check_message(msg)
            self.records.append(msg)

    def positions(self):
        """{(partition, offset)} of the records received so far."""
        return {(m.partition(), m.offset()) for m in self.records}

    def commit(self, offsets):
        """Synchronous commit of {partition: offset}; fails on any per-partition error."""
        return commit_sync(self.c, self.topic, offsets)

    def __repr__(self):
        return f"<{self.label} assigned={sorted(self.assigned)} records={len(self.records)}>"


def commit_sync(consumer, topic, offsets, metadata=None):
    tps = [TopicPartition(topic, p, o, metadata=metadata) if metadata else TopicPartition(topic, p, o)
           for p, o in sorted(offsets.items())]
    result = consumer.commit(offsets=tps, asynchronous=False)
    errors = [(tp.partition, tp.error) for tp in result or [] if tp.error is not None]
    assert not errors, f"commit failed: {errors}"
    return result


def pump(members, until, timeout=20.0, what="condition"):
    """Polls every member in turn until `until()` holds, with a deadline."""
    deadline = Deadline(timeout)
    while not until():
        if deadline.passed():
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {members}")
        for m in members:
            m.poll(0.05)


def split_evenly(members, partitions):
    """True once the members hold disjoint, non-empty assignments covering `partitions`."""
    sets = [m.assigned for m in members]
    if not all(sets):
        return False
    union = set().union(*sets)
    return union == set(partitions) and sum(len(s) for s in sets) == len(union)
