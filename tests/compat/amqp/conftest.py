"""Shared fixtures for the AMQP 0-9-1 compatibility suite (pika).

Broker selection:
- AMQP_URL set: use that broker as it is (e.g. a RabbitMQ started by scripts/rabbitmq).
  Tests that need to restart or kill the server are skipped.
  With AMQP_RESTART_CMD / AMQP_KILL_CMD also set (shell commands that restart the broker
  gracefully / kill -9 it and start it again, keeping the URL), those tests run too; this
  is how the durability tests are validated against RabbitMQ (see README.md).
- otherwise: start Sluice from SLUICE_BIN (default target/debug/sluice) on a temporary
  data directory and free ports, once per session, and stop it with SIGTERM at the end.
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

import pika
import pytest

from helpers import AMQP_URL, EXTERNAL, params_for
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(ROOT, "target", "debug", "sluice")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

LISTENING = re.compile(r"listening amqp=(\S+):(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

class SluiceProcess:
    """One `sluice serve` process on a data directory; restartable on the same directory."""

    def __init__(self, binary, data_dir):
        self.binary = binary
        self.data_dir = data_dir
        self.proc = None
        self.port = None
        self.lines = deque(maxlen=500)  # recent stderr, for failure messages

    @property
    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self):
        if not os.path.exists(self.binary):
            pytest.fail(
                f"Sluice binary {self.binary} not found: build it (cargo build) or set SLUICE_BIN, "
                "or set AMQP_URL to test another broker",
                pytrace=False,
            )
        env = dict(
            os.environ,
            NO_COLOR="1",
            RUST_LOG=os.environ.get("RUST_LOG", "info"),
            # The users test_permissions.py expects (see its docstring for RabbitMQ).
            SLUICE_AMQP_USERS="guest:guest,alice:alice-pw,carol:carol-pw",
            SLUICE_AMQP_PERMISSIONS="guest@/ .* .* .*; alice@/ ^alice- ^alice- .*",
            # Stream queue retention is checked often enough for a test to see it.
            SLUICE_STORAGE_RETENTION_CHECK_INTERVAL_MS="500",
        )
        self.proc = subprocess.Popen(
            [
                self.binary,
                "serve",
                "--data-dir",
                self.data_dir,
                "--amqp-listen",
                "127.0.0.1:0",
                "--kafka-listen",
                "127.0.0.1:0",
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
            # full pipe; reports the listening port once.
            for raw in proc.stderr:
                line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                self.lines.append(line)
                m = LISTENING.search(line)
                if m:
                    found.put(int(m.group(2)))
            found.put(None)  # EOF: the process closed stderr (exited)

        threading.Thread(target=read_stderr, name="sluice-stderr", daemon=True).start()
        try:
            port = found.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.kill()
            pytest.fail(
                f"sluice printed no 'listening amqp=' line within {START_TIMEOUT}s; stderr:\n"
                + "\n".join(self.lines),
                pytrace=False,
            )
        if port is None:
            code = proc.wait(timeout=STOP_TIMEOUT)
            pytest.fail(
                f"sluice exited ({code}) before listening; stderr:\n" + "\n".join(self.lines),
                pytrace=False,
            )
        self.port = port
        return self

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

    def restart(self):
        self.stop()
        return self.start()

    def kill9_restart(self):
        self.kill()
        return self.start()


class Broker:
    """What the tests talk to: `url` is always the current address."""

    def __init__(self, url=None, process=None):
        self._url = url
        self.process = process
        self.restart_cmd = os.environ.get("AMQP_RESTART_CMD") if process is None else None
        self.kill_cmd = os.environ.get("AMQP_KILL_CMD") if process is None else None

    @property
    def external(self):
        return self.process is None

    def _run(self, cmd):
        subprocess.run(cmd, shell=True, check=True, cwd=ROOT, timeout=120,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    @property
    def url(self):
        return self._url if self.process is None else self.process.url

    def restart(self):
        """Graceful restart (SIGTERM, start on the same data dir, new port)."""
        if self.process is None:
            if not self.restart_cmd:
                pytest.skip("cannot restart an external broker (AMQP_URL is set)")
            return self._run(self.restart_cmd)
        self.process.restart()

    def kill9_restart(self):
        """Crash (kill -9) and start again on the same data dir (new port)."""
        if self.process is None:
            if not self.kill_cmd:
                pytest.skip("cannot kill an external broker (AMQP_URL is set)")
            # RabbitMQ 3.10 was seen to lose a durable queue declared ~1 s before a kill -9
            # (its Mnesia record, and with it the queue's confirmed messages); give an
            # external broker this long to settle its definitions first. Sluice gets none.
            time.sleep(float(os.environ.get("AMQP_KILL_SETTLE_S", "0")))
            return self._run(self.kill_cmd)
        self.process.kill9_restart()


@pytest.fixture(scope="session")
def broker():
    if EXTERNAL:
        yield Broker(url=AMQP_URL)
        return
    data_dir = tempfile.mkdtemp(prefix="sluice-compat-")
    process = SluiceProcess(SLUICE_BIN, data_dir)
    process.start()
    try:
        yield Broker(process=process)
    finally:
        try:
            process.stop()
        finally:
            process.kill()
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def restart_broker(broker):
    """Callable that restarts the broker gracefully; skips on external brokers."""
    if broker.external and not broker.restart_cmd:
        pytest.skip("needs to restart the broker; AMQP_URL points at an external broker")
    return broker.restart


@pytest.fixture
def crash_broker(broker):
    """Callable that kill -9s the broker and starts it again; skips on external brokers."""
    if broker.external and not broker.kill_cmd:
        pytest.skip("needs to kill -9 the broker; AMQP_URL points at an external broker")
    return broker.kill9_restart


class Connections:
    """Opens connections to the current broker URL and closes them all at teardown."""

    def __init__(self, broker):
        self.broker = broker
        self.opened = []

    def __call__(self, **overrides):
        conn = pika.BlockingConnection(params_for(self.broker.url, **overrides))
        self.opened.append(conn)
        return conn

    def close_all(self):
        for conn in self.opened:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass


@pytest.fixture
def connect(broker):
    """`connect()` returns a new BlockingConnection to the broker; all closed at teardown."""
    conns = Connections(broker)
    yield conns
    conns.close_all()


@pytest.fixture
def connection(connect):
    return connect()


@pytest.fixture
def channel(connection):
    return connection.channel()


@pytest.fixture
def name(request):
    """Unique-name factory: name('q') -> 'compat.<test>.q.<uuid>'."""
    test = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]

    def make(kind="q"):
        return f"compat.{test}.{kind}.{uuid.uuid4().hex[:12]}"

    return make
