"""Fixtures for the management API suite: RabbitMQ's HTTP API as rabbitmqadmin, pyrabbit2
and plain HTTP clients use it.

Broker selection:
- MGMT_URL and AMQP_URL set (e.g. http://127.0.0.1:15692 and amqp://guest:guest@127.0.0.1:5692/%2F):
  use that broker as it is, to validate the suite against RabbitMQ with its management plugin.
- otherwise: start Sluice from SLUICE_BIN (default target/debug/sluice) on a temporary
  data directory and free ports, once per session, and stop it at the end.
"""

import base64
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
import queue as queue_mod

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(ROOT, "target", "debug", "sluice")
LISTENING = {face: re.compile(rf"listening {face}=(\S+):(\d+)") for face in ("amqp", "http", "kafka")}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
START_TIMEOUT = 20.0


class Broker:
    def __init__(self, http_url, amqp_url, is_sluice, kafka_bootstrap=None):
        self.http_url = http_url.rstrip("/")
        self.amqp_url = amqp_url
        self.is_sluice = is_sluice
        self.kafka_bootstrap = kafka_bootstrap

    @property
    def http_port(self):
        return urllib.parse.urlparse(self.http_url).port

    def call(self, method, path, body=None, auth=("guest", "guest"), headers=None, raw=None):
        """One request; -> (status, headers, parsed JSON or raw text or None)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.http_url + path, data=data, method=method)
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, hdrs, text = r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            status, hdrs, text = e.code, dict(e.headers), e.read().decode()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return status, {k.lower(): v for k, v in hdrs.items()}, parsed

    def get(self, path):
        status, _, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def wait_for(self, path, check, timeout=15.0):
        """GETs `path` until `check(body)` holds: RabbitMQ's statistics lag by up to its
        5 s collection interval (Sluice's are current, so its first answer holds)."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(path)
            try:
                if check(body):
                    return body
            except (KeyError, IndexError, TypeError):
                pass
            assert time.monotonic() < deadline, f"{path} never satisfied the check: {body}"
            time.sleep(0.25)


def start_sluice(data_dir):
    proc = subprocess.Popen(
        [SLUICE_BIN, "serve", "--data-dir", data_dir, "--amqp-listen", "127.0.0.1:0",
         "--kafka-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(os.environ, NO_COLOR="1"))
    found, lines = queue_mod.Queue(), deque(maxlen=200)

    def read():
        for raw in proc.stderr:
            line = ANSI.sub("", raw.decode("utf-8", "replace"))
            lines.append(line)
            for face, pattern in LISTENING.items():
                m = pattern.search(line)
                if m:
                    found.put((face, int(m.group(2))))
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    ports = {}
    while len(ports) < 3:
        try:
            item = found.get(timeout=START_TIMEOUT)
        except queue_mod.Empty:
            item = None
        if item is None:
            proc.kill()
            pytest.fail("sluice did not start:\n" + "".join(lines), pytrace=False)
        ports[item[0]] = item[1]
    return proc, ports


@pytest.fixture(scope="session")
def broker():
    if os.environ.get("MGMT_URL"):
        yield Broker(os.environ["MGMT_URL"], os.environ["AMQP_URL"], is_sluice=False)
        return
    with tempfile.TemporaryDirectory(prefix="sluice-mgmt-") as d:
        proc, ports = start_sluice(d)
        try:
            yield Broker(f"http://127.0.0.1:{ports['http']}",
                         f"amqp://guest:guest@127.0.0.1:{ports['amqp']}/%2F", is_sluice=True,
                         kafka_bootstrap=f"127.0.0.1:{ports['kafka']}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def name():
    """A fresh object name."""
    return f"mgmt-{uuid.uuid4().hex[:10]}"
