"""Idempotent producers: every record exactly once, in order; and on the wire, a replayed
batch (same producer id, epoch and sequence, as after a lost response) is acknowledged
with its original offset instead of being stored twice, and a sequence gap is refused."""

import os

import pytest

import kafka_wire as wire
from kafka_helpers import by_partition, consume, produce

N = 3000


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_idempotent_producer_exactly_once_in_order(clients, create_topic, client):
    topic = create_topic(2)
    records = [{"key": f"k{i}".encode(), "value": f"v{i}".encode(), "partition": i % 2} for i in range(N)]
    conf = (
        # Small batches and several in flight: the case idempotence has to keep in order.
        {"enable.idempotence": True, "linger.ms": 1, "batch.num.messages": 50}
        if client == "confluent"
        else {"enable_idempotence": True, "linger_ms": 1, "batch_size": 1024}
    )
    positions = produce(clients, client, topic, records, conf)
    assert positions == [(i % 2, i // 2) for i in range(N)]
    got = by_partition(consume(clients, "confluent", topic, [0, 1], N, timeout=30))
    for p in (0, 1):
        assert [r["offset"] for r in got[p]] == list(range(N // 2))
        assert [r["value"] for r in got[p]] == [f"v{i}".encode() for i in range(p, N, 2)]


def test_replayed_batch_is_stored_once(bootstrap, create_topic):
    topic = create_topic(1)
    conn = wire.RawConnection.to(bootstrap)
    try:
        err, pid, epoch = wire.parse_init_producer_id_response(conn.call(wire.init_producer_id_request(1), 1))
        assert err == 0 and pid >= 0 and epoch >= 0, (err, pid, epoch)

        corr = iter(range(2, 100))

        def send(batch):
            c = next(corr)
            (res,) = wire.parse_produce_response(conn.call(wire.produce_request(c, topic, 0, batch), c))
            return res[2], res[3]

        def batch(seq, *values):
            return wire.record_batch([(None, v, []) for v in values], producer_id=pid,
                                     producer_epoch=epoch, base_sequence=seq)

        first = batch(0, b"one")
        assert send(first) == (0, 0)
        # The same batch again: a retry whose first response was lost. Kafka answers it
        # as a success with the original offset (brokers before 1.0 used
        # DUPLICATE_SEQUENCE_NUMBER) and does not append it again.
        err, offset = send(first)
        assert err in (wire.NONE, wire.DUPLICATE_SEQUENCE_NUMBER) and (err or offset == 0), (err, offset)
        assert send(batch(1, b"two", b"three")) == (0, 1)
        err, offset = send(first)  # still recognised among the last five batches
        assert err in (wire.NONE, wire.DUPLICATE_SEQUENCE_NUMBER) and (err or offset == 0), (err, offset)
        # Sequence 3 is next; 5 leaves a gap.
        assert send(batch(5, b"gap"))[0] == wire.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert send(batch(3, b"four")) == (0, 3)

        c = next(corr)
        ((_, _, err, latest),) = wire.parse_list_offsets_response(
            conn.call(wire.list_offsets_request(c, topic, 0, -1), c)
        )
        assert (err, latest) == (0, 4), "duplicates or the refused batch were stored"
    finally:
        conn.close()


def test_refused_batch_does_not_use_up_its_sequence(bootstrap, create_topic):
    """A batch the broker refuses (here: over max.message.bytes) is not appended, so its
    sequence number is still the next one expected."""
    topic = create_topic(1, {"max.message.bytes": "10000"})
    conn = wire.RawConnection.to(bootstrap)
    try:
        err, pid, epoch = wire.parse_init_producer_id_response(conn.call(wire.init_producer_id_request(1), 1))
        assert err == 0

        corr = iter(range(2, 100))

        def send(seq, value):
            c = next(corr)
            batch = wire.record_batch([(None, value, [])], producer_id=pid, producer_epoch=epoch, base_sequence=seq)
            (res,) = wire.parse_produce_response(conn.call(wire.produce_request(c, topic, 0, batch), c))
            return res[2], res[3]

        assert send(0, b"a") == (0, 0)
        assert send(1, os.urandom(20000))[0] == wire.MESSAGE_TOO_LARGE
        assert send(2, b"skips 1")[0] == wire.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert send(1, b"b") == (0, 1)
    finally:
        conn.close()
