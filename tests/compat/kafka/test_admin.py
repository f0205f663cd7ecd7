"""Admin APIs through confluent_kafka.admin.AdminClient and kafka-python's KafkaAdminClient:
topics (create with partitions and configs, metadata, delete), configs (describe, alter,
incremental alter), partitions (create), consumer groups (list, describe, delete, offsets)
and the cluster description."""

import pytest
from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType
from kafka.errors import InvalidPartitionsError, TopicAlreadyExistsError

from kafka_helpers import (
    confluent_consume,
    kafka_error_code,
    kp_consume,
    produce,
    sluice_only,
    wait_for,
    wait_topic_ready,
)

CONFIGS = {"retention.ms": "3600000", "max.message.bytes": "65536", "cleanup.policy": "delete"}


def create(admin, topic, partitions=1, replication=1, config=None, validate_only=False):
    """CreateTopics for one topic; returns the KafkaError code (None when it succeeded)."""
    fut = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication, config=config or {})],
        operation_timeout=10,
        request_timeout=15,
        validate_only=validate_only,
    )[topic]
    try:
        fut.result(timeout=20)
        return None
    except KafkaException as e:
        return kafka_error_code(e)


def describe(admin, topic):
    (fut,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return fut.result(timeout=15)


def src(entry):
    """The entry's ConfigSource (the C layer may hand back the plain int)."""
    return ConfigSource(entry.source)


def topic_names(admin):
    return set(admin.list_topics(timeout=10).topics)


# ---------------------------------------------------------------------------------------
# confluent-kafka AdminClient.


def test_create_topic_with_partitions_and_configs(admin, name):
    topic = name("topic")
    assert create(admin, topic, 3, config=CONFIGS) is None
    wait_topic_ready(admin, topic, 3)

    md = admin.list_topics(timeout=10)
    assert topic in md.topics
    (broker_id,) = md.brokers
    for pid, p in md.topics[topic].partitions.items():
        # One broker: it leads every partition and is the only replica, always in sync.
        assert (p.leader, p.replicas, p.isrs) == (broker_id, [broker_id], [broker_id]), pid

    configs = describe(admin, topic)
    for key, value in CONFIGS.items():
        entry = configs[key]
        assert entry.value == value, key
        assert src(entry) == ConfigSource.DYNAMIC_TOPIC_CONFIG, key
        assert not entry.is_default, key


def test_describe_configs_reports_defaults(admin, create_topic):
    topic = create_topic(1)
    configs = describe(admin, topic)
    for key in ("retention.ms", "max.message.bytes", "cleanup.policy"):
        assert key in configs, f"{key} missing from DescribeConfigs"
        assert src(configs[key]) != ConfigSource.DYNAMIC_TOPIC_CONFIG, key
    assert configs["cleanup.policy"].value == "delete"  # Kafka's default


# The topic configs an Apache Kafka 3.6 broker lists for every topic.
KAFKA_TOPIC_CONFIGS = {
    "cleanup.policy", "compression.type", "delete.retention.ms", "file.delete.delay.ms",
    "flush.messages", "flush.ms", "follower.replication.throttled.replicas",
    "index.interval.bytes", "leader.replication.throttled.replicas", "local.retention.bytes",
    "local.retention.ms", "max.compaction.lag.ms", "max.message.bytes",
    "message.downconversion.enable", "message.format.version",
    "message.timestamp.after.max.ms", "message.timestamp.before.max.ms",
    "message.timestamp.difference.max.ms", "message.timestamp.type",
    "min.cleanable.dirty.ratio", "min.compaction.lag.ms", "min.insync.replicas",
    "preallocate", "remote.storage.enable", "retention.bytes", "retention.ms",
    "segment.bytes", "segment.index.bytes", "segment.jitter.ms", "segment.ms",
    "unclean.leader.election.enable",
}


def test_describe_configs_lists_every_kafka_topic_config_with_sources_and_synonyms(admin, name):
    topic = name("topic")
    assert create(admin, topic, 1, config={"retention.ms": "3600000"}) is None
    wait_topic_ready(admin, topic, 1)
    # librdkafka always asks for synonyms.
    configs = describe(admin, topic)
    missing = KAFKA_TOPIC_CONFIGS - set(configs)
    assert not missing, f"missing from DescribeConfigs: {sorted(missing)}"
    retention = configs["retention.ms"]
    assert retention.value == "3600000"
    assert src(retention) == ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert not retention.is_default and not retention.is_read_only
    synonyms = [(s.name, ConfigSource(s.source)) for s in retention.synonyms.values()]
    assert synonyms[0] == ("retention.ms", ConfigSource.DYNAMIC_TOPIC_CONFIG), synonyms
    assert any(n.startswith("log.retention") for n, _ in synonyms[1:]), synonyms
    segment = configs["segment.bytes"]
    assert src(segment) in (ConfigSource.DEFAULT_CONFIG, ConfigSource.STATIC_BROKER_CONFIG)
    assert segment.is_default == (src(segment) == ConfigSource.DEFAULT_CONFIG)
    assert configs["min.insync.replicas"].value == "1"
    assert configs["compression.type"].value == "producer"
    assert configs["cleanup.policy"].value == "delete"


@sluice_only("flush is a Sluice topic config")
def test_flush_topic_config(admin, name):
    for policy in ("sync", "async"):
        topic = name(policy)
        assert create(admin, topic, 1, config={"flush": policy}) is None
        assert describe(admin, topic)["flush"].value == policy
    assert create(admin, name("bogus"), 1, config={"flush": "sometimes"}) == KafkaError.INVALID_CONFIG


def test_create_topic_errors(admin, create_topic, name):
    existing = create_topic(1)
    assert create(admin, existing, 1) == KafkaError.TOPIC_ALREADY_EXISTS
    # One broker cannot hold three replicas.
    assert create(admin, name("rf"), 1, replication=3) == KafkaError.INVALID_REPLICATION_FACTOR
    assert create(admin, name("cfg"), 1, config={"no.such.config": "1"}) == KafkaError.INVALID_CONFIG
    assert create(admin, name("val"), 1, config={"retention.ms": "soon"}) == KafkaError.INVALID_CONFIG
    assert create(admin, "bad/topic name", 1) == KafkaError.TOPIC_EXCEPTION
    assert create(admin, "a" * 250, 1) == KafkaError.TOPIC_EXCEPTION  # longer than 249

    dry = name("dry")
    assert create(admin, dry, 2, validate_only=True) is None
    assert dry not in topic_names(admin), "validate_only created the topic"


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")  # tested on purpose
def test_alter_configs_replaces_the_whole_set(admin, create_topic):
    """AlterConfigs (non-incremental) sets exactly the given configs: any other dynamic
    config of the topic goes back to its default."""
    default_max = describe(admin, create_topic(1))["max.message.bytes"].value
    topic = create_topic(1, {"retention.ms": "3600000", "max.message.bytes": "65536"})
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "7200000"})
    (fut,) = admin.alter_configs([res]).values()
    fut.result(timeout=15)
    configs = describe(admin, topic)
    assert configs["retention.ms"].value == "7200000"
    assert configs["max.message.bytes"].value == default_max
    assert src(configs["max.message.bytes"]) != ConfigSource.DYNAMIC_TOPIC_CONFIG


def test_incremental_alter_configs(admin, create_topic):
    default_max = describe(admin, create_topic(1))["max.message.bytes"].value
    topic = create_topic(1, {"retention.ms": "3600000", "max.message.bytes": "65536", "cleanup.policy": "delete"})
    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    (fut,) = admin.incremental_alter_configs([res]).values()
    fut.result(timeout=15)
    configs = describe(admin, topic)
    assert configs["retention.ms"].value == "60000"
    assert configs["max.message.bytes"].value == default_max  # deleted: back to the default
    assert configs["cleanup.policy"].value == "delete"  # untouched
    assert src(configs["cleanup.policy"]) == ConfigSource.DYNAMIC_TOPIC_CONFIG

    bad = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)],
    )
    (fut,) = admin.incremental_alter_configs([bad]).values()
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=15)
    assert kafka_error_code(e.value) == KafkaError.INVALID_CONFIG
    assert describe(admin, topic)["retention.ms"].value == "60000"


def test_create_partitions(admin, clients, create_topic):
    topic = create_topic(2)
    (fut,) = admin.create_partitions([NewPartitions(topic, 5)]).values()
    fut.result(timeout=15)
    wait_topic_ready(admin, topic, 5)
    assert produce(clients, "confluent", topic, [{"value": b"new partition", "partition": 4}]) == [(4, 0)]

    for total in (3, 5):  # fewer, or as many as it has: both invalid
        (fut,) = admin.create_partitions([NewPartitions(topic, total)]).values()
        with pytest.raises(KafkaException) as e:
            fut.result(timeout=15)
        assert kafka_error_code(e.value) == KafkaError.INVALID_PARTITIONS, total


def test_delete_topic(admin, clients, create_topic):
    topic = create_topic(2)
    produce(clients, "confluent", topic, [{"value": b"doomed"}] * 5)
    (fut,) = admin.delete_topics([topic], operation_timeout=10).values()
    fut.result(timeout=15)
    wait_for(lambda: topic not in topic_names(admin), what="the topic to leave the metadata")

    (fut,) = admin.delete_topics([topic], operation_timeout=10).values()
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=15)
    assert kafka_error_code(e.value) == KafkaError.UNKNOWN_TOPIC_OR_PART

    # The name can be used again, for a new, empty topic.
    assert create(admin, topic, 1) is None
    wait_topic_ready(admin, topic, 1)
    c = clients.consumer()
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False) == (0, 0)
    assert produce(clients, "confluent", topic, [{"value": b"reborn"}]) == [(0, 0)]


def test_consumer_group_admin(admin, clients, create_topic, name):
    topic, group = create_topic(2), name("group")
    produce(clients, "confluent", topic, [{"value": b"x", "partition": p} for p in (0, 1)])
    c = clients.consumer(group, **{"client.id": "compat-admin-member"})
    c.subscribe([topic])
    confluent_consume(c, 2)
    c.commit(asynchronous=False)

    def listed():
        res = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
        return {g.group_id: g for g in res.valid}

    assert listed()[group].state == ConsumerGroupState.STABLE
    (fut,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    desc = fut.result(timeout=15)
    assert desc.state == ConsumerGroupState.STABLE
    assert not desc.is_simple_consumer_group
    assert desc.partition_assignor in ("range", "roundrobin")
    (member,) = desc.members
    assert member.client_id == "compat-admin-member"
    assert {(tp.topic, tp.partition) for tp in member.assignment.topic_partitions} == {(topic, 0), (topic, 1)}

    # A group with members cannot be deleted.
    (fut,) = admin.delete_consumer_groups([group], request_timeout=10).values()
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=15)
    assert kafka_error_code(e.value) == KafkaError.NON_EMPTY_GROUP

    c.close()
    clients.forget(c)
    (fut,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    desc = fut.result(timeout=15)
    assert desc.state == ConsumerGroupState.EMPTY and not desc.members

    (fut,) = admin.delete_consumer_groups([group], request_timeout=10).values()
    fut.result(timeout=15)
    assert group not in listed()


def test_describe_cluster(admin, bootstrap):
    res = admin.describe_cluster(request_timeout=10).result(timeout=15)
    assert res.cluster_id, "empty cluster id"
    (node,) = res.nodes
    # The one broker advertises the address the clients bootstrapped from.
    assert f"{node.host}:{node.port}" == bootstrap
    assert res.controller is not None and res.controller.id == node.id
    md = admin.list_topics(timeout=10)
    assert md.cluster_id == res.cluster_id
    assert list(md.brokers) == [node.id]


# ---------------------------------------------------------------------------------------
# kafka-python KafkaAdminClient.


def test_kafka_python_topic_lifecycle(clients, name):
    kadmin = clients.kp_admin()
    topic = name("topic")
    res = kadmin.create_topics(
        {topic: {"num_partitions": 2, "replication_factor": 1, "configs": {"retention.ms": "7200000"}}},
        wait_for_metadata=True,
    )
    assert [t["error_code"] for t in res["topics"]] == [0]
    with pytest.raises(TopicAlreadyExistsError):
        kadmin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
    with pytest.raises(InvalidPartitionsError):
        kadmin.create_topics({name("zero"): {"num_partitions": 0, "replication_factor": 1}})

    assert topic in kadmin.list_topics()
    (desc,) = kadmin.describe_topics([topic])
    assert len(desc["partitions"]) == 2

    def config(key):
        out = kadmin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        return out["topic"][topic][key]["value"]

    assert config("retention.ms") == "7200000"
    res = kadmin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "1800000"})])
    assert res == {"topic": {topic: "OK"}}
    assert config("retention.ms") == "1800000"

    kadmin.create_partitions({topic: 4})
    wait_for(lambda: len(kadmin.describe_topics([topic])[0]["partitions"]) == 4, what="4 partitions")

    kadmin.delete_topics([topic])
    wait_for(lambda: topic not in kadmin.list_topics(), what="the topic to disappear")


def test_kafka_python_groups_and_cluster(clients, create_topic, name):
    topic, group = create_topic(1), name("group")
    produce(clients, "kafka-python", topic, [{"value": b"x"}])
    c = clients.kp_consumer(topic, group=group)
    kp_consume(c, 1)
    c.commit()

    kadmin = clients.kp_admin()
    assert group in {g["group_id"] for g in kadmin.list_groups()}
    desc = kadmin.describe_groups([group])[group]
    assert desc["error"] is None
    assert desc["group_state"] == "Stable"
    assert desc["protocol_type"] == "consumer"
    assert len(desc["members"]) == 1
    offsets = kadmin.list_group_offsets(group)[group]
    assert {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()} == {(topic, 0): 1}

    c.close()
    clients.forget(c)
    wait_for(lambda: kadmin.describe_groups([group])[group]["group_state"] == "Empty", what="group to empty")
    assert kadmin.delete_groups([group]) == {group: "OK"}
    assert group not in {g["group_id"] for g in kadmin.list_groups()}

    cluster = kadmin.describe_cluster()
    assert cluster["cluster_id"]
    (b,) = cluster["brokers"]
    assert f"{b['host']}:{b['port']}" == clients.broker.bootstrap
