"""Shared fixtures for the Kafka client compatibility suite (kafka-python, confluent-kafka, kcat).

Broker selection:
- KAFKA_BOOTSTRAP set ("host:port"): use that broker as it is (e.g. an Apache Kafka).
  Tests that restart or kill the server, and the ones that use Sluice-only topic configs,
  are skipped.
- otherwise: start Sluice from SLUICE_BIN (default target/debug/sluice) on a temporary
  data directory, once per session, and stop it with SIGTERM at the end. Restarts reuse the
  Kafka port, so `bootstrap` stays valid and a client's cached broker address still points
  at the broker after a restart, as with a real Kafka broker coming back.
"""

import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from kafka_helpers import (
    EXTERNAL,
    KAFKA_BOOTSTRAP,
    confluent_consumer_conf,
    confluent_producer_conf,
    kp_consumer_kwargs,
    wait_topic_ready,
)

RDKAFKA_LOG = logging.getLogger("librdkafka")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(ROOT, "target", "debug", "sluice")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

LISTENING = re.compile(r"listening kafka=(\S+):(\d+)")
LISTENING_AMQP = re.compile(r"listening amqp=(\S+):(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Server settings for the tests. Kafka's group.initial.rebalance.delay.ms (default 3000)
# holds the first rebalance of a new group back; at 0 a group forms as soon as its first
# member joins, which is what every group test here wants.
SERVER_ENV = {
    "SLUICE_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    # Compacted topics are cleaned within a fraction of a second (Kafka: 15 s).
    "SLUICE_KAFKA_LOG_CLEANER_BACKOFF_MS": "200",
}


class SluiceProcess:
    """One `sluice serve` process on a data directory; restartable on the same directory
    and the same Kafka port."""

    def __init__(self, binary, data_dir):
        self.binary = binary
        self.data_dir = data_dir
        self.proc = None
        self.port = None
        self.lines = deque(maxlen=500)  # recent stderr, for failure messages
        self.amqp_port = None
        self.env = {}  # extra server settings (SLUICE_* variables)

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        if not os.path.exists(self.binary):
            pytest.fail(
                f"Sluice binary {self.binary} not found: build it (cargo build) or set SLUICE_BIN, "
                "or set KAFKA_BOOTSTRAP to test another broker",
                pytrace=False,
            )
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"), **SERVER_ENV)
        env.update(self.env)
        kafka_listen = f"127.0.0.1:{self.port or 0}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            port, failure = self._spawn(env, kafka_listen)
            if port is not None:
                self.port = port
                return self
            # The old port can stay busy for a moment after a kill -9 (the kernel tears
            # the process's sockets down asynchronously); retry the bind until the deadline.
            if self.port and "cannot bind" in failure and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            pytest.fail(failure, pytrace=False)

    def _spawn(self, env, kafka_listen):
        """Starts one process; -> (port, None) once it listens, or (None, why) if it did not."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "serve",
                "--data-dir",
                self.data_dir,
                "--amqp-listen",
                "127.0.0.1:0",
                "--kafka-listen",
                kafka_listen,
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        found = queue.Queue()
        proc = self.proc

        def read_stderr():
            # Keeps draining stderr for the life of the process so it never blocks on a
            # full pipe; reports the Kafka port once.
            for raw in proc.stderr:
                line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                self.lines.append(line)
                m = LISTENING_AMQP.search(line)
                if m:
                    self.amqp_port = int(m.group(2))
                m = LISTENING.search(line)
                if m:
                    found.put(int(m.group(2)))
            found.put(None)  # EOF: the process closed stderr (exited)

        threading.Thread(target=read_stderr, name="sluice-stderr", daemon=True).start()
        try:
            port = found.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.kill()
            return None, (
                f"sluice printed no 'listening kafka=' line within {START_TIMEOUT}s; stderr:\n"
                + "\n".join(self.lines)
            )
        if port is None:
            code = proc.wait(timeout=STOP_TIMEOUT)
            return None, f"sluice exited ({code}) before listening; stderr:\n" + "\n".join(self.lines)
        return port, None

    def stop(self):
        """SIGTERM and wait for a clean exit (SIGKILL if it hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"sluice did not stop within {STOP_TIMEOUT}s after SIGTERM")
        assert code == 0, f"sluice exited with {code} after SIGTERM; stderr:\n" + "\n".join(self.lines)

    def kill(self):
        """SIGKILL (kill -9) and reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def restart(self):
        self.stop()
        return self.start()

    def kill9_restart(self):
        self.kill()
        return self.start()


class Broker:
    """What the tests talk to: `bootstrap` is always the current address."""

    def __init__(self, bootstrap=None, process=None):
        self._bootstrap = bootstrap
        self.process = process

    @property
    def external(self):
        return self.process is None

    @property
    def bootstrap(self):
        return self._bootstrap if self.process is None else self.process.bootstrap

    @property
    def amqp_url(self):
        """The same server's AMQP listener (Sluice only)."""
        if self.process is None:
            pytest.skip("needs the AMQP face of the same broker (KAFKA_BOOTSTRAP is set)")
        return f"amqp://guest:guest@127.0.0.1:{self.process.amqp_port}/%2F"

    def restart(self):
        """Graceful restart (SIGTERM, start on the same data dir and port)."""
        if self.process is None:
            pytest.skip("cannot restart an external broker (KAFKA_BOOTSTRAP is set)")
        self.process.restart()

    def kill9_restart(self):
        """Crash (kill -9) and start again on the same data dir and port."""
        if self.process is None:
            pytest.skip("cannot kill an external broker (KAFKA_BOOTSTRAP is set)")
        self.process.kill9_restart()

    def assert_alive(self):
        if self.process is not None:
            assert self.process.alive(), "sluice exited; stderr:\n" + "\n".join(self.process.lines)


_session_broker = []  # for the failure report hook


@pytest.fixture(scope="session")
def broker():
    if EXTERNAL:
        yield Broker(bootstrap=KAFKA_BOOTSTRAP)
        return
    data_dir = tempfile.mkdtemp(prefix="sluice-kafka-compat-")
    process = SluiceProcess(SLUICE_BIN, data_dir)
    process.start()
    b = Broker(process=process)
    _session_broker.append(b)
    try:
        yield b
    finally:
        _session_broker.clear()
        try:
            process.stop()
        finally:
            process.kill()
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A failing test gets the server's recent stderr attached: most broker bugs show there.
    outcome = yield
    report = outcome.get_result()
    if report.failed and _session_broker:
        lines = list(_session_broker[0].process.lines)[-60:]
        report.sections.append(("sluice stderr (last 60 lines)", "\n".join(lines)))


@pytest.fixture(autouse=True)
def _broker_survives(broker):
    """Fails the test during which the server exited (a crash, or something outside the
    suite stopping it) and starts it again, so that one crash does not fail every test
    after it for an unrelated reason."""
    yield
    process = broker.process
    if process is None or process.alive():
        return
    code = process.proc.returncode
    lines = "\n".join(list(process.lines)[-60:])
    process.start()
    pytest.fail(f"sluice exited with {code} during this test (restarted for the next ones); stderr:\n{lines}",
                pytrace=False)


@pytest.fixture
def bootstrap(broker):
    return broker.bootstrap


@pytest.fixture
def restart_broker(broker):
    """Callable that restarts the broker gracefully; skips on external brokers."""
    if broker.external:
        pytest.skip("needs to restart the broker; KAFKA_BOOTSTRAP points at an external broker")
    return broker.restart


@pytest.fixture
def crash_broker(broker):
    """Callable that kill -9s the broker and starts it again; skips on external brokers."""
    if broker.external:
        pytest.skip("needs to kill -9 the broker; KAFKA_BOOTSTRAP points at an external broker")
    return broker.kill9_restart


@pytest.fixture
def name(request):
    """Unique-name factory: name('topic') -> 'compat-<test>-topic-<uuid>'.

    Only [A-Za-z0-9-] from the test name: Kafka topic names allow '.', '_' and '-', but
    warns about mixing '.' and '_' (they collide in metric names)."""
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:80]

    def make(kind="topic"):
        return f"compat-{test}-{kind}-{uuid.uuid4().hex[:12]}"

    return make


class Clients:
    """Creates clients against the current broker and closes them all at teardown."""

    def __init__(self, broker):
        self.broker = broker
        self.opened = []  # (kind, client)

    def _track(self, kind, client):
        self.opened.append((kind, client))
        return client

    # confluent-kafka. librdkafka's log lines go through Python logging, so pytest shows
    # them with a failing test instead of printing them to the terminal.
    def producer(self, **conf):
        conf = confluent_producer_conf(self.broker.bootstrap, logger=RDKAFKA_LOG, **conf)
        return self._track("producer", Producer(conf))

    def consumer(self, group=None, **conf):
        conf = confluent_consumer_conf(self.broker.bootstrap, group, logger=RDKAFKA_LOG, **conf)
        return self._track("consumer", Consumer(conf))

    def admin(self, **conf):
        conf = {"bootstrap.servers": self.broker.bootstrap, "socket.timeout.ms": 10000, "logger": RDKAFKA_LOG, **conf}
        return self._track("admin", AdminClient(conf))

    # kafka-python
    def kp_producer(self, **kw):
        kw = dict(bootstrap_servers=self.broker.bootstrap, request_timeout_ms=10000, **kw)
        return self._track("kp", KafkaProducer(**kw))

    def kp_consumer(self, *topics, group=None, **kw):
        return self._track("kp", KafkaConsumer(*topics, **kp_consumer_kwargs(self.broker.bootstrap, group, **kw)))

    def kp_admin(self, **kw):
        kw = dict(bootstrap_servers=self.broker.bootstrap, request_timeout_ms=10000, **kw)
        return self._track("kp", KafkaAdminClient(**kw))

    def forget(self, client):
        """The test closed (or deliberately abandoned) this client itself."""
        self.opened = [(k, c) for k, c in self.opened if c is not client]

    def close_all(self):
        for kind, client in reversed(self.opened):
            try:
                if kind == "producer":
                    client.flush(5)
                    client.purge()  # whatever is still queued: close() would wait for it
                    client.close()
                elif kind == "admin":
                    pass  # AdminClient has no close; dropped with the reference
                elif kind == "kp":
                    client.close(timeout=5) if isinstance(client, KafkaProducer) else client.close()
                else:
                    client.close()
            except Exception:
                pass
        self.opened.clear()


@pytest.fixture
def clients(broker):
    c = Clients(broker)
    yield c
    c.close_all()


@pytest.fixture
def admin(clients):
    """A confluent-kafka AdminClient."""
    return clients.admin()


@pytest.fixture
def create_topic(admin, name):
    """`create_topic(partitions=1, config=None, topic=None)` creates a topic through
    CreateTopics, waits until its partitions have leaders, and returns its name."""

    def make(partitions=1, config=None, topic=None):
        topic = topic or name("topic")
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=10,
            request_timeout=15,
        )
        futures[topic].result(timeout=20)
        wait_topic_ready(admin, topic, partitions)
        return topic

    return make
