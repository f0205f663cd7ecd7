"""Prometheus metrics: RabbitMQ's names (as its rabbitmq_prometheus plugin exposes them)
for AMQP objects, kafka_exporter's for Kafka topics and groups, Sluice's own for RocketMQ
and storage. Checked with Debian's promtool and scraped by a real Prometheus (both taken
out of the prometheus package by scripts/prometheus)."""

import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request

import pika
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def scrape(broker, path="/metrics"):
    # RabbitMQ serves its metrics on a port of their own (METRICS_URL when validating).
    base = os.environ.get("METRICS_URL") or broker.http_url
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def samples(text):
    """{(name, frozenset(labels)): value}"""
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(text, name, **labels):
    want = frozenset(labels.items())
    found = [v for (n, l), v in samples(text).items() if n == name and want <= l]
    assert found, f"no {name} with {labels}"
    return sum(found)


@pytest.fixture(scope="module")
def prometheus_dir():
    return subprocess.run([os.path.join(ROOT, "scripts", "prometheus")], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]


def test_amqp_metrics_have_rabbitmq_s_names_and_labels(broker, name):
    r = broker.call("PUT", f"/api/queues/%2F/{name}", {"durable": True})
    assert r[0] in (201, 204)
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        ch = connection.channel()
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", name, f"m{i}".encode())
        method, _, _ = ch.basic_get(name)  # one unacked
        # RabbitMQ's numbers lag by up to its 5 s collection interval; Sluice's do not.
        deadline = time.monotonic() + 15
        while True:
            content_type, per_object = scrape(broker, "/metrics/per-object")
            try:
                if value(per_object, "rabbitmq_queue_messages_unacked", vhost="/", queue=name) == 1:
                    break
            except AssertionError:
                pass
            assert time.monotonic() < deadline, "the queue's metrics never showed"
            time.sleep(0.5)
        assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
        assert value(per_object, "rabbitmq_queue_messages_ready", vhost="/", queue=name) == 2
        assert value(per_object, "rabbitmq_queue_messages_unacked", vhost="/", queue=name) == 1
        assert value(per_object, "rabbitmq_queue_messages", vhost="/", queue=name) == 3
        assert value(per_object, "rabbitmq_queue_consumers", vhost="/", queue=name) == 0
        assert value(per_object, "rabbitmq_connections") >= 1
        assert value(per_object, "rabbitmq_channels") >= 1
        assert value(per_object, "rabbitmq_global_messages_received_total", protocol="amqp091") >= 3
        assert value(per_object, "rabbitmq_global_messages_confirmed_total", protocol="amqp091") >= 3
        assert value(per_object, "rabbitmq_global_messages_delivered_get_manual_ack_total", protocol="amqp091") >= 1
        _, aggregated = scrape(broker)
        assert not any(n == "rabbitmq_queue_messages_ready" and dict(l).get("queue")
                       for (n, l) in samples(aggregated)), "aggregated: no per-queue labels"
        assert value(aggregated, "rabbitmq_queue_messages_ready") >= 2
        ch.basic_ack(method.delivery_tag)
    finally:
        connection.close()
    broker.call("DELETE", f"/api/queues/%2F/{name}")


@pytest.mark.skipif(bool(os.environ.get("MGMT_URL")), reason="Kafka and RocketMQ metrics are Sluice's")
def test_kafka_metrics_have_kafka_exporter_s_names(broker, name):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    _, text = scrape(broker)
    kafka_port = value(text, "kafka_brokers")  # present
    assert kafka_port == 1
    bootstrap = broker.kafka_bootstrap
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(5):
        producer.send(name, f"r{i}".encode(), partition=0)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=name + "-g",
                             enable_auto_commit=False, auto_offset_reset="earliest")
    tp = TopicPartition(name, 0)
    consumer.assign([tp])
    consumer.commit({tp: __import__("kafka").OffsetAndMetadata(2, None, -1)})
    consumer.close()
    _, text = scrape(broker)
    assert value(text, "kafka_topic_partition_current_offset", topic=name, partition="0") == 5
    assert value(text, "kafka_topic_partition_oldest_offset", topic=name, partition="0") == 0
    assert value(text, "kafka_consumergroup_current_offset", consumergroup=name + "-g", topic=name, partition="0") == 2
    assert value(text, "kafka_consumergroup_lag", consumergroup=name + "-g", topic=name, partition="0") == 3
    assert value(text, "sluice_partition_bytes", topic=name, partition="0") > 0
    # Kafka offsets are stored with an fsync: the fsync latency histogram has counted them.
    assert value(text, "sluice_fsync_duration_seconds_count") >= 1
    assert value(text, "sluice_fsync_duration_seconds_bucket", le="+Inf") == value(
        text, "sluice_fsync_duration_seconds_count")


@pytest.mark.skipif(bool(os.environ.get("MGMT_URL")),
                    reason="RabbitMQ's own Erlang metrics fail promtool's lint (counters without _total)")
def test_promtool_accepts_the_metrics(broker, prometheus_dir):
    for path in ("/metrics", "/metrics/per-object"):
        _, text = scrape(broker, path)
        done = subprocess.run([os.path.join(prometheus_dir, "promtool"), "check", "metrics"],
                              input=text, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (path, done.stdout, done.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_prometheus_scrapes_the_broker(broker, prometheus_dir):
    import json
    import urllib.parse
    port = free_port()
    target = urllib.parse.urlparse(os.environ.get("METRICS_URL") or broker.http_url).netloc
    with tempfile.TemporaryDirectory(prefix="sluice-prom-") as d:
        config = os.path.join(d, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: broker
    metrics_path: /metrics/per-object
    static_configs:
      - targets: ["{target}"]
""")
        proc = subprocess.Popen([os.path.join(prometheus_dir, "prometheus"), f"--config.file={config}",
                                 f"--storage.tsdb.path={d}/data", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    url = f"http://127.0.0.1:{port}/api/v1/query?query=rabbitmq_queues"
                    with urllib.request.urlopen(url, timeout=5) as r:
                        result = json.loads(r.read())["data"]["result"]
                    if result:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "prometheus never scraped rabbitmq_queues"
                time.sleep(0.5)
            url = f"http://127.0.0.1:{port}/api/v1/targets"
            with urllib.request.urlopen(url, timeout=5) as r:
                targets = json.loads(r.read())["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"], targets
        finally:
            proc.terminate()
            proc.wait(timeout=30)
