"""The tools operators point at RabbitMQ's management API, unchanged: Debian's
rabbitmqadmin 3.10.8 (scripts/rabbitmqadmin takes it out of the rabbitmq-server package)
and pyrabbit2."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def admin_cli(broker):
    script = subprocess.run([os.path.join(ROOT, "scripts", "rabbitmqadmin")], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]

    def run(*args, expect=0):
        done = subprocess.run([sys.executable, script, "-H", "127.0.0.1", "-P", str(broker.http_port),
                               "-u", "guest", "-p", "guest", *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == expect, (args, done.stdout, done.stderr)
        return done.stdout + done.stderr

    return run


def eventually(check, timeout=15.0):
    """RabbitMQ's statistics lag by up to 5 s; Sluice's are current."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except KeyError:  # RabbitMQ leaves `messages` out of a queue it has no stats for yet
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.25)


def test_rabbitmqadmin_declares_publishes_lists_gets_and_deletes(admin_cli, name, tmp_path):
    ex = name + "-x"
    assert "queue declared" in admin_cli("declare", "queue", f"name={name}", "durable=true")
    assert "exchange declared" in admin_cli("declare", "exchange", f"name={ex}", "type=topic")
    assert "binding declared" in admin_cli("declare", "binding", f"source={ex}", f"destination={name}",
                                           "routing_key=a.*")
    assert "Message published" in admin_cli("publish", f"exchange={ex}", "routing_key=a.b", "payload=hello")
    assert "Message published" in admin_cli("publish", f"routing_key={name}", "payload=again")

    def listed():
        rows = [line.split("\t") for line in admin_cli("-f", "tsv", "list", "queues", "name", "messages").splitlines()]
        return [r for r in rows if r[0] == name and r[1] == "2"]
    eventually(listed)
    assert f"{ex}\ttopic" in admin_cli("-f", "tsv", "list", "exchanges")
    assert f"{ex}\t{name}\ta.*" in admin_cli("-f", "tsv", "list", "bindings")
    assert "/" in admin_cli("list", "vhosts")
    assert "guest" in admin_cli("list", "users")
    assert "disc" in admin_cli("list", "nodes")
    overview = admin_cli("-f", "raw_json", "show", "overview")
    assert json.loads(overview)[0]["rabbitmq_version"]

    got = admin_cli("-f", "raw_json", "get", f"queue={name}", "count=2")
    payloads = [m["payload"] for m in json.loads(got)]
    assert payloads == ["hello", "again"]
    assert "queue purged" in admin_cli("purge", "queue", f"name={name}")
    eventually(lambda: any(r == [name, "0"] for r in
                           (line.split("\t") for line in admin_cli("-f", "tsv", "list", "queues", "name", "messages").splitlines())))

    exported = tmp_path / "defs.json"
    assert "Exported definitions" in admin_cli("export", str(exported))
    defs = json.loads(exported.read_text())
    assert any(q["name"] == name for q in defs["queues"])
    assert any(e["name"] == ex for e in defs["exchanges"])
    # Gone, then back from the exported file, with its binding.
    admin_cli("delete", "queue", f"name={name}")
    admin_cli("delete", "exchange", f"name={ex}")
    assert "Uploaded definitions" in admin_cli("import", str(exported))
    assert name in admin_cli("-f", "tsv", "list", "queues", "name")
    assert f"{ex}\t{name}\ta.*" in admin_cli("-f", "tsv", "list", "bindings")

    assert "Not found" in admin_cli("get", "queue=no-such-queue-" + name, expect=1)
    assert "queue deleted" in admin_cli("delete", "queue", f"name={name}")
    assert "exchange deleted" in admin_cli("delete", "exchange", f"name={ex}")
    assert "Not found" in admin_cli("delete", "queue", f"name={name}", expect=1)


def test_pyrabbit2(broker, name):
    from pyrabbit2.api import Client
    client = Client(f"127.0.0.1:{broker.http_port}", "guest", "guest")
    assert client.is_alive()
    assert "/" in client.get_vhost_names()
    assert client.get_whoami()["name"] == "guest"
    assert client.get_overview()["rabbitmq_version"]
    client.create_queue("/", name, durable=True, auto_delete=False, arguments={})
    client.create_exchange("/", name + "-x", "fanout", durable=True)
    client.create_binding("/", name + "-x", name, "")
    assert client.publish("/", name + "-x", "", "one") is True
    assert client.publish("/", "amq.default", name, "two") is True
    eventually(lambda: client.get_queue_depth("/", name) == 2)
    got = client.get_messages("/", name, count=2, requeue=True)
    assert [m["payload"] for m in got] == ["one", "two"]
    paged = client.get_queues("/", pattern=name, regex=False)
    assert [q["name"] for q in paged] == [name]
    assert any(b["source"] == name + "-x" for b in client.get_queue_bindings("/", name))
    client.purge_queue("/", name)
    eventually(lambda: client.get_queue_depth("/", name) == 0)
    client.delete_exchange("/", name + "-x")
    client.delete_queue("/", name)
    assert name not in [q["name"] for q in client.get_queues("/")]


def test_rabbitmqadmin_lists_and_closes_connections(admin_cli, broker, name):
    import pika
    admin_cli("declare", "queue", f"name={name}")
    params = pika.URLParameters(broker.amqp_url)
    params.client_properties = {"connection_name": name}
    connection = pika.BlockingConnection(params)
    try:
        ch = connection.channel()
        tag = ch.basic_consume(name, lambda *a: None)
        connection.process_data_events(0.1)
        rows = eventually(lambda: [r.split("\t") for r in admin_cli("-f", "tsv", "list", "connections").splitlines()
                                   if r.endswith("\tguest\t1")])
        conn_name = rows[0][0]
        assert eventually(lambda: conn_name + " (1)\tguest" in admin_cli("-f", "tsv", "list", "channels"))
        assert eventually(lambda: tag in admin_cli("-f", "tsv", "list", "consumers"))
        assert "connection closed" in admin_cli("close", "connection", f"name={conn_name}")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
            for _ in range(50):
                connection.process_data_events(0.1)
    finally:
        if connection.is_open:
            connection.close()
    admin_cli("delete", "queue", f"name={name}")


@pytest.mark.skipif(bool(os.environ.get("MGMT_URL")), reason="sluice admin is Sluice's CLI")
def test_sluice_admin_lists_and_changes_objects(broker, name, tmp_path):
    binary = os.environ.get("SLUICE_BIN") or os.path.join(ROOT, "target", "debug", "sluice")

    def admin(*args, expect=0):
        done = subprocess.run([binary, "admin", "--server", broker.http_url, *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == expect, (args, done.stdout, done.stderr)
        return done.stdout + done.stderr

    assert f"queue {name} created" in admin("queue", "declare", name, "--durable")
    assert f"queue {name} ready" in admin("queue", "declare", name, "--durable")
    assert "inequivalent arg 'durable'" in admin("queue", "declare", name, expect=1)
    broker.call("POST", "/api/exchanges/%2F/amq.default/publish",
                {"properties": {}, "routing_key": name, "payload": "x", "payload_encoding": "string"})
    table = admin("list", "queues")
    header, *rows = table.splitlines()
    assert header.split() == ["vhost", "name", "type", "durable", "messages_ready",
                              "messages_unacknowledged", "consumers"]
    assert ["/", name, "classic", "true", "1", "0", "0"] in [r.split() for r in rows]
    listed = json.loads(admin("--json", "list", "queues", "--vhost", "/"))
    assert any(q["name"] == name for q in listed)
    assert "guest" in admin("list", "users")
    assert f"queue {name} purged" in admin("queue", "purge", name)
    user = name + "-u"
    assert f"user {user} created" in admin("user", "add", user, "--password", "pw", "--tags", "management")
    assert "created" in admin("permission", "set", user, "--configure", "^x")
    assert any(p.split()[:2] == [user, "/"] for p in admin("list", "permissions").splitlines())
    exported = tmp_path / "defs.json"
    assert "exported" in admin("definitions", "export", str(exported))
    assert any(q["name"] == name for q in json.loads(exported.read_text())["queues"])
    assert f"queue {name} deleted" in admin("queue", "delete", name)
    assert "imported" in admin("definitions", "import", str(exported))
    assert any(q["name"] == name for q in json.loads(admin("--json", "list", "queues")))
    assert "deleted" in admin("permission", "delete", user)
    assert "deleted" in admin("user", "delete", user)
    assert "404" in admin("user", "delete", user, expect=1)
    admin("queue", "delete", name)
    for what in ("exchanges", "bindings", "vhosts", "connections", "channels", "consumers",
                 "topics", "kafka-groups", "rocketmq-subscriptions"):
        admin("list", what)


@pytest.mark.skipif(bool(os.environ.get("MGMT_URL")),
                    reason="Flower asks for /api/queues// for the default vhost, which RabbitMQ 3.10.8 answers 404")
def test_celery_flower_reads_queue_depths(broker, name):
    import asyncio
    import urllib.parse

    from flower.utils.broker import Broker
    broker.call("PUT", f"/api/queues/%2F/{name}", {"durable": True})
    for i in range(2):
        broker.call("POST", "/api/exchanges/%2F/amq.default/publish",
                    {"properties": {}, "routing_key": name, "payload": f"task {i}", "payload_encoding": "string"})
    amqp_port = urllib.parse.urlparse(broker.amqp_url).port
    flower = Broker(f"amqp://guest:guest@127.0.0.1:{amqp_port}//", http_api=f"{broker.http_url}/api/")
    [info] = asyncio.run(flower.queues([name]))
    assert (info["name"], info["messages"], info["messages_ready"], info["consumers"]) == (name, 2, 2, 0)
    broker.call("DELETE", f"/api/queues/%2F/{name}")
