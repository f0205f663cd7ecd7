"""A `sluice serve` that can be killed with SIGKILL and started again on the same data
directory and the same AMQP and Kafka ports, for the crash suite."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(ROOT, "target", "debug", "sluice")
START_TIMEOUT = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sluice:
    def __init__(self, data_dir, env):
        self.data_dir = data_dir
        self.env = env
        self.amqp_port = free_port()
        self.kafka_port = free_port()
        self.proc = None
        self.lines = deque(maxlen=300)
        self.starts = 0

    @property
    def amqp(self):
        return ("127.0.0.1", self.amqp_port)

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka_port}"

    def start(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._spawn(deadline):
                self.starts += 1
                return
            # A port of the killed process can stay busy for a moment.
            if time.monotonic() >= deadline or not any("cannot bind" in l for l in self.lines):
                pytest.fail("sluice did not start; stderr:\n" + "\n".join(self.lines), pytrace=False)
            time.sleep(0.2)

    def _spawn(self, deadline):
        env = dict(os.environ, NO_COLOR="1", SLUICE_LOG_LEVEL="info", **self.env)
        self.proc = subprocess.Popen(
            [SLUICE_BIN, "serve", "--data-dir", self.data_dir,
             "--amqp-listen", f"127.0.0.1:{self.amqp_port}",
             "--kafka-listen", f"127.0.0.1:{self.kafka_port}", "--grpc-listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )
        ready = threading.Event()
        proc = self.proc

        def read():
            for raw in proc.stderr:
                line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                self.lines.append(line)
                if "listening kafka=" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(max(0.1, deadline - time.monotonic()))
        return proc.poll() is None and any("listening kafka=" in l for l in self.lines)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.lines.clear()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sluice():
    if not os.path.exists(SLUICE_BIN):
        pytest.fail(f"{SLUICE_BIN} not found: build it (cargo build) or set SLUICE_BIN", pytrace=False)
    data = tempfile.mkdtemp(prefix="sluice-crash-")
    s = Sluice(data, {"SLUICE_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"})
    s.start()
    yield s
    s.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def small_budget_sluice():
    """A broker allowed 256 open segment files: with thousands of queues and
    partitions, files are closed and opened again all the time."""
    if not os.path.exists(SLUICE_BIN):
        pytest.fail(f"{SLUICE_BIN} not found: build it (cargo build) or set SLUICE_BIN", pytrace=False)
    data = tempfile.mkdtemp(prefix="sluice-crash-")
    s = Sluice(data, {"SLUICE_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
                      "SLUICE_STORAGE_OPEN_FILES_MAX": "256"})
    s.start()
    yield s
    s.stop()
    shutil.rmtree(data, ignore_errors=True)
