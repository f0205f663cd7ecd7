"""Sluice's own endpoints: the engine's topics with partitions and offsets, Kafka consumer
groups with members and lag, RocketMQ subscriptions and held messages."""

import os

import pytest

pytestmark = pytest.mark.skipif(bool(os.environ.get("MGMT_URL")), reason="Sluice's own API")


def test_topics_and_kafka_groups_with_lag(broker, name):
    from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
    producer = KafkaProducer(bootstrap_servers=broker.kafka_bootstrap)
    for i in range(4):
        producer.send(name, f"r{i}".encode(), partition=0)
    producer.flush()
    producer.close()
    topic = broker.get(f"/api/sluice/topics/{name}")
    assert (topic["name"], topic["partitions"], topic["messages"]) == (name, 1, 4)
    [p0] = topic["partition_details"]
    assert (p0["partition"], p0["log_start_offset"], p0["end_offset"]) == (0, 0, 4) and p0["bytes"] > 0
    assert any(t["name"] == name for t in broker.get("/api/sluice/topics"))
    assert broker.call("GET", "/api/sluice/topics/no-such-" + name)[0] == 404

    group = name + "-g"
    consumer = KafkaConsumer(name, bootstrap_servers=broker.kafka_bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        got = []
        while len(got) < 1:
            for records in consumer.poll(timeout_ms=1000).values():
                got.extend(records)
        consumer.commit({TopicPartition(name, 0): OffsetAndMetadata(1, None, -1)})
        listed = next(g for g in broker.get("/api/sluice/kafka/groups") if g["group"] == group)
        assert listed["members"] == 1 and listed["lag"] == 3 and listed["state"] == "Stable"
        detail = broker.get(f"/api/sluice/kafka/groups/{group}")
        assert detail["offsets"] == [{"topic": name, "partition": 0, "committed": 1, "end_offset": 4, "lag": 3}]
        assert detail["members"][0]["client_id"]
    finally:
        consumer.close()
    assert broker.call("GET", "/api/sluice/kafka/groups/no-such-" + group)[0] == 404


def test_rocketmq_views_answer(broker):
    assert isinstance(broker.get("/api/sluice/rocketmq/subscriptions"), list)
    held = broker.get("/api/sluice/rocketmq/held")
    assert set(held) == {"delayed", "transactions"}
    assert broker.call("GET", "/api/sluice/topics", auth=None)[0] == 401


def test_amqp_delayed_exchanges_show_what_they_hold(broker, name):
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        ch = connection.channel()
        ch.exchange_declare(name, "x-delayed-message", arguments={"x-delayed-type": "direct"})
        ch.basic_publish(name, "k", b"later", pika.BasicProperties(headers={"x-delay": 600000}))
        connection.process_data_events(0.1)
        delayed = broker.get("/api/sluice/amqp/delayed")
        assert {"vhost": "/", "exchange": name, "messages": 1} in delayed
        ch.exchange_delete(name)
    finally:
        connection.close()
