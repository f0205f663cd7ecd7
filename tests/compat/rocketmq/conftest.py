"""Fixtures for the RocketMQ 5 client suite: the official `rocketmq-python-client` against
a `sluice serve` started on a temporary data directory with free loopback ports.

Topics are made over Kafka (kafka-python's admin client): a RocketMQ topic's message
queues are the partitions of the engine's stream, whichever face created it.
"""

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
from kafka.admin import KafkaAdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(ROOT, "target", "debug", "sluice")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LISTENING = {
    "kafka": re.compile(r"listening kafka=(\S+):(\d+)"),
    "rocketmq": re.compile(r"listening rocketmq=(\S+):(\d+)"),
    "http": re.compile(r"listening http=(\S+):(\d+)"),
}


class Sluice:
    """One `sluice serve`, restartable on the same data directory and ports."""

    def __init__(self, data_dir, env=None):
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.proc = None
        self.ports = {}
        self.lines = deque(maxlen=300)

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.ports['rocketmq']}"

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.ports['kafka']}"

    def start(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            failure = self._spawn()
            if failure is None:
                return
            # After a kill -9 the old ports can stay busy for a moment.
            if self.ports and "bind" in failure and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            pytest.fail(failure, pytrace=False)

    def _spawn(self):
        args = [
            SLUICE_BIN, "serve", "--data-dir", self.data_dir,
            "--amqp-listen", "127.0.0.1:0",
            "--kafka-listen", f"127.0.0.1:{self.ports.get('kafka', 0)}",
            "--grpc-listen", f"127.0.0.1:{self.ports.get('rocketmq', 0)}",
            "--http-listen", f"127.0.0.1:{self.ports.get('http', 0)}",
        ]
        # Three deliveries before a message is dead-lettered (RocketMQ's default is 17),
        # so the dead-letter test does not wait out sixteen retries.
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"),
                   SLUICE_ROCKETMQ_MAX_DELIVERY_ATTEMPTS="3", **self.extra_env)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        found = queue.Queue()
        proc = self.proc

        def read_stderr():
            for raw in proc.stderr:
                line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                self.lines.append(line)
                for face, pattern in LISTENING.items():
                    m = pattern.search(line)
                    if m:
                        found.put((face, int(m.group(2))))
            found.put(None)

        threading.Thread(target=read_stderr, daemon=True).start()
        seen = {}
        while len(seen) < len(LISTENING):
            try:
                item = found.get(timeout=START_TIMEOUT)
            except queue.Empty:
                self.kill()
                return "sluice did not report its listeners; stderr:\n" + "\n".join(self.lines)
            if item is None:
                proc.wait(timeout=STOP_TIMEOUT)
                return f"sluice exited ({proc.returncode}); stderr:\n" + "\n".join(self.lines)
            seen[item[0]] = item[1]
        self.ports = seen
        return None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=STOP_TIMEOUT)
        assert code == 0, f"sluice exited with {code}; stderr:\n" + "\n".join(self.lines)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)

    def admin(self, *args, password="guest"):
        """Runs `sluice admin` against this server; -> the finished process."""
        return subprocess.run(
            [SLUICE_BIN, "admin", "--server", f"http://127.0.0.1:{self.ports['http']}",
             "--password", password, *args],
            capture_output=True, text=True, timeout=30)

    def kill9_restart(self):
        self.kill()
        self.start()


@pytest.fixture(scope="session")
def sluice():
    if not os.path.exists(SLUICE_BIN):
        pytest.fail(f"{SLUICE_BIN} not found: build it (cargo build) or set SLUICE_BIN", pytrace=False)
    data_dir = tempfile.mkdtemp(prefix="sluice-rocketmq-compat-")
    s = Sluice(data_dir)
    s.start()
    try:
        yield s
    finally:
        try:
            s.stop()
        finally:
            s.kill()
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def make_topic(sluice):
    """Creates a topic with `queues` message queues and Kafka topic `configs` (such as
    Sluice's `message.type` and `flush`); returns its name."""

    def make(queues=4, configs=None):
        name = f"rmq-{uuid.uuid4().hex[:10]}"
        admin = KafkaAdminClient(bootstrap_servers=sluice.bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(name, num_partitions=queues, replication_factor=1,
                                          topic_configs=configs or {})])
        finally:
            admin.close()
        return name

    return make


@pytest.fixture
def group():
    return f"group-{uuid.uuid4().hex[:8]}"
