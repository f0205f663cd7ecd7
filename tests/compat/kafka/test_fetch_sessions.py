"""Incremental fetch sessions (KIP-227): a full fetch at epoch 0 opens a session; later
fetches carry the next epoch and name only the partitions whose position changed, and
responses carry only partitions with records or with changed offsets or errors. Checked
with raw frames (Fetch v7) against KIP-227's rules, and with kafka-python, whose consumer
uses sessions (librdkafka does not)."""

import uuid

import kafka_wire as wire
from kafka import TopicPartition as KTP
from kafka_helpers import Deadline, produce

API_FETCH = 1
FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71


def fetch_v7(conn, cid, session_id, epoch, partitions=(), forgotten=(), max_wait_ms=0):
    """partitions: [(topic, partition, offset)], forgotten: [(topic, [partitions])] ->
    (error, session_id, {(topic, partition): (error, high_watermark, records_bytes)})."""
    by_topic = {}
    for t, p, o in partitions:
        by_topic.setdefault(t, []).append((p, o))
    body = wire.i32(-1) + wire.i32(max_wait_ms) + wire.i32(0) + wire.i32(1 << 20) + wire.i8(0)
    body += wire.i32(session_id) + wire.i32(epoch)
    body += wire.array([
        wire.string(t) + wire.array([wire.i32(p) + wire.i64(o) + wire.i64(-1) + wire.i32(1 << 20) for p, o in ps])
        for t, ps in by_topic.items()
    ])
    body += wire.array([wire.string(t) + wire.array([wire.i32(p) for p in ps]) for t, ps in forgotten])
    r = wire.Reader(conn.call(wire.request(API_FETCH, 7, cid, body), cid))
    r.i32()  # throttle
    error, sid = r.i16(), r.i32()
    out = {}
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            p, perr, hw = r.i32(), r.i16(), r.i64()
            r.i64()  # last stable
            r.i64()  # log start
            n = r.i32()
            for _ in range(max(n, 0)):
                r.i64(), r.i64()
            size = r.i32()
            records = r.take(size) if size > 0 else b""
            out[(topic, p)] = (perr, hw, len(records))
    return error, sid, out


def test_an_incremental_session_sends_only_what_changed(clients, create_topic, bootstrap):
    topic = create_topic(3)
    produce(clients, "confluent", topic, [{"value": b"x", "partition": p} for p in range(3)])
    conn = wire.RawConnection.to(bootstrap)
    try:
        # Full fetch at epoch 0 from the end of each partition: a session is opened.
        error, sid, parts = fetch_v7(conn, 1, 0, 0, [(topic, p, 1) for p in range(3)])
        assert error == 0 and sid > 0
        assert set(parts) == {(topic, p) for p in range(3)}
        # Nothing changed: the incremental answer is empty.
        error, sid2, parts = fetch_v7(conn, 2, sid, 1)
        assert (error, sid2, parts) == (0, sid, {})
        # A record in partition 1: only partition 1 comes back, with it, from the
        # position the session holds.
        produce(clients, "confluent", topic, [{"value": b"y", "partition": 1}])
        error, _, parts = fetch_v7(conn, 3, sid, 2)
        assert list(parts) == [(topic, 1)]
        assert parts[(topic, 1)][0:2] == (0, 2) and parts[(topic, 1)][2] > 0
        # The client moves partition 1 on; partition 1's answer is then unchanged.
        error, _, parts = fetch_v7(conn, 4, sid, 3, [(topic, 1, 2)])
        assert (error, parts) == (0, {})
        # A wrong epoch, an unknown id.
        assert fetch_v7(conn, 5, sid, 9)[0] == INVALID_FETCH_SESSION_EPOCH
        assert fetch_v7(conn, 6, sid ^ 0x5A5A5A, 1)[0] == FETCH_SESSION_ID_NOT_FOUND
        # Forgetting partition 0, then a record there is not sent.
        error, _, parts = fetch_v7(conn, 7, sid, 4, forgotten=[(topic, [0])])
        assert (error, parts) == (0, {})
        produce(clients, "confluent", topic, [{"value": b"z", "partition": 0}])
        assert fetch_v7(conn, 8, sid, 5)[2] == {}
        # Epoch -1 closes the session (a full, sessionless fetch).
        error, sid3, parts = fetch_v7(conn, 9, sid, -1, [(topic, 0, 1)])
        assert error == 0 and sid3 == 0 and parts[(topic, 0)][2] > 0
        assert fetch_v7(conn, 10, sid, 6)[0] == FETCH_SESSION_ID_NOT_FOUND
    finally:
        conn.close()


def test_kafka_python_consumes_many_partitions_through_a_session(clients, create_topic):
    parts = 40
    topic = create_topic(parts)
    c = clients.kp_consumer()
    tps = [KTP(topic, p) for p in range(parts)]
    c.assign(tps)
    c.seek_to_beginning()
    expected = []
    for rnd in range(3):
        records = [{"value": f"{rnd}-{p}".encode(), "partition": p} for p in range(parts) if (p + rnd) % 3]
        produce(clients, "confluent", topic, records)
        expected += [(r["partition"], r["value"]) for r in records]
    got, deadline = [], Deadline(20)
    while len(got) < len(expected) and not deadline.passed():
        for recs in c.poll(timeout_ms=500).values():
            got += [(r.partition, r.value) for r in recs]
    assert sorted(got) == sorted(expected)
    # Each partition in order, nothing twice.
    for p in range(parts):
        mine = [v for q, v in got if q == p]
        assert mine == [v for q, v in expected if q == p]
    # The consumer's fetches were incremental: far smaller than a full request naming 40
    # partitions (about 40 x 28 bytes) once the session is open.
    metrics = c.metrics()
    sizes = [v for g, ms in metrics.items() if g.startswith("consumer-node-metrics.node-1") for k, v in ms.items() if k == "request-size-avg"]
    assert sizes and sizes[0] < 40 * 28, f"average request {sizes} bytes"
