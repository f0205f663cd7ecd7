"""acks=0, acks=1 and acks=all produce with both clients, and the wire rule behind acks=0:
the broker sends no response at all."""

import pytest

import kafka_wire as wire
from kafka_helpers import CLIENTS, consume, produce

N = 200


def conf_for(client, acks):
    if client == "confluent":
        # librdkafka leaves idempotence off by default, so any acks value is accepted.
        return {"acks": acks}
    # kafka-python enables idempotence by default, which requires acks=all; opt out for the
    # weaker settings instead of relying on its silent downgrade.
    value = {"0": 0, "1": 1, "all": "all"}[acks]
    return {"acks": value, "enable_idempotence": acks == "all"}


@pytest.mark.parametrize("acks", ["0", "1", "all"])
@pytest.mark.parametrize("client", CLIENTS)
def test_produce_with_acks(clients, create_topic, client, acks):
    topic = create_topic(1)
    records = [{"key": f"k{i}".encode(), "value": f"acks={acks} #{i}".encode()} for i in range(N)]
    positions = produce(clients, client, topic, records, conf_for(client, acks))
    if acks != "0":
        # With an acknowledgement the producer learns each record's offset.
        assert positions == [(0, i) for i in range(N)]
    # acks=0 gives no offsets back, but on a healthy broker nothing is lost either.
    got = consume(clients, "confluent", topic, [0], N)
    assert [r["offset"] for r in got] == list(range(N))
    assert [r["value"] for r in got] == [r["value"] for r in records]


def test_acks0_produce_gets_no_response(bootstrap, create_topic):
    """A Produce with acks=0 is answered with nothing; the next response on the connection
    belongs to the next request, which is handled after the produce (requests on one
    connection are processed in order)."""
    topic = create_topic(1)
    conn = wire.RawConnection.to(bootstrap)
    try:
        batch = wire.record_batch([(b"k", b"fire and forget", [])])
        conn.send(wire.produce_request(1, topic, 0, batch, acks=0))
        corr, body = conn.read_response_after(wire.api_versions_request(2))
        assert corr == 2, f"got a response with correlation id {corr} (the acks=0 produce was answered)"
        (_, _, error, latest), = wire.parse_list_offsets_response(
            conn.call(wire.list_offsets_request(3, topic, 0, -1), 3)
        )
        assert error == 0
        assert latest == 1, "the acks=0 record was not appended before the next request's answer"
    finally:
        conn.close()
