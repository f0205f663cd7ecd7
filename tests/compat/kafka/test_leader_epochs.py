"""Leader epochs (KIP-101, KIP-320): stored batches carry the partition leader epoch the
broker stamps (0: one node has led every partition), Metadata names it, and
OffsetForLeaderEpoch says where an epoch ends, refusing current epochs that are not the
partition's with Kafka's codes."""

from kafka_helpers import produce, sluice_only

import kafka_wire as wire
from confluent_kafka import TopicPartition

API_OFFSET_FOR_LEADER_EPOCH = 23
UNKNOWN_TOPIC_OR_PARTITION = 3
UNKNOWN_LEADER_EPOCH = 75


def test_consumed_records_carry_the_leader_epoch(clients, create_topic):
    topic = create_topic()
    produce(clients, "confluent", topic, [{"value": f"v{i}".encode()} for i in range(3)])
    c = clients.consumer()
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    while len(got) < 3:
        m = c.poll(10)
        assert m is not None and m.error() is None
        got.append(m)
    assert [m.leader_epoch() for m in got] == [0, 0, 0]


def offset_for_leader_epoch(bootstrap, topic, partitions):
    """OffsetForLeaderEpoch v3 (non-flexible): [(partition, current_epoch, epoch)] ->
    [(error, partition, leader_epoch, end_offset)]."""
    body = wire.i32(-1) + wire.i32(1) + wire.string(topic) + wire.i32(len(partitions))
    for p, current, epoch in partitions:
        body += wire.i32(p) + wire.i32(current) + wire.i32(epoch)
    conn = wire.RawConnection.to(bootstrap)
    try:
        r = wire.Reader(conn.call(wire.request(API_OFFSET_FOR_LEADER_EPOCH, 3, 7, body), 7))
    finally:
        conn.close()
    r.i32()  # throttle
    assert r.i32() == 1 and r.string() == topic
    return [(r.i16(), r.i32(), r.i32(), r.i64()) for _ in range(r.i32())]


@sluice_only("Sluice's single node is leader at epoch 0")
def test_offset_for_leader_epoch_answers_where_the_epoch_ends(clients, create_topic, bootstrap):
    topic = create_topic()
    produce(clients, "confluent", topic, [{"value": b"x"} for _ in range(5)])
    assert offset_for_leader_epoch(bootstrap, topic, [(0, 0, 0), (0, -1, 0), (0, -1, 3), (0, 1, 0), (9, -1, 0)]) == [
        (0, 0, 0, 5),                         # the current epoch ends at the log end
        (0, 0, 0, 5),                         # no current epoch given: no check
        (0, 0, -1, -1),                       # an epoch that never was: undefined
        (UNKNOWN_LEADER_EPOCH, 0, -1, -1),    # the client knows a newer leader than this
        (UNKNOWN_TOPIC_OR_PARTITION, 9, -1, -1),
    ]


def test_fetch_and_list_offsets_check_the_current_leader_epoch(clients, create_topic, bootstrap):
    """KIP-320: Fetch (v9+) and ListOffsets (v4+) carry the leader epoch the client last
    saw; an epoch newer than the partition's is UNKNOWN_LEADER_EPOCH, -1 and the current
    one are served."""
    topic = create_topic()
    produce(clients, "confluent", topic, [{"value": b"e"}])
    conn = wire.RawConnection.to(bootstrap)
    try:
        for cid, epoch, expected in ((1, 1, UNKNOWN_LEADER_EPOCH), (2, 0, 0), (3, -1, 0)):
            body = wire.i32(-1) + wire.i32(0) + wire.i32(0) + wire.i32(1 << 20) + wire.i8(0)
            body += wire.i32(0) + wire.i32(-1)  # sessionless
            body += wire.array([wire.string(topic) + wire.array(
                [wire.i32(0) + wire.i32(epoch) + wire.i64(0) + wire.i64(-1) + wire.i32(1 << 20)])])
            body += wire.array([])
            r = wire.Reader(conn.call(wire.request(1, 9, cid, body), cid))
            r.i32(), r.i16(), r.i32()  # throttle, error, session id
            assert r.i32() == 1 and r.string() == topic and r.i32() == 1
            assert (r.i32(), r.i16()) == (0, expected), f"fetch with epoch {epoch}"
        for cid, epoch, expected in ((4, 1, UNKNOWN_LEADER_EPOCH), (5, 0, 0)):
            body = wire.i32(-1) + wire.i8(0)
            body += wire.array([wire.string(topic) + wire.array([wire.i32(0) + wire.i32(epoch) + wire.i64(-1)])])
            r = wire.Reader(conn.call(wire.request(2, 4, cid, body), cid))
            r.i32()
            assert r.i32() == 1 and r.string() == topic and r.i32() == 1
            assert (r.i32(), r.i16()) == (0, expected), f"list offsets with epoch {epoch}"
    finally:
        conn.close()
