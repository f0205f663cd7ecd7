"""The broker process and the after-each-case check of the hostile-input suite (see
conftest.py): `running_sluice(label, **env)` starts `sluice serve` with SLUICE_* settings,
`Survives` is the check every case runs inside, `amqp_round_trip` / `kafka_round_trip`
are the real-client round trips it does.
"""

import contextlib
import os
import queue
import re
import resource
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
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(ROOT, "target", "debug", "sluice")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
LISTENING = re.compile(r"listening (amqp|kafka)=(\S+):(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_running = []  # brokers started and not yet stopped, for failure reports
_results = []  # one dict per case, for the terminal summary


def _raise_nofile():
    """The flood tests hold ~2,100 sockets; the broker inherits the limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass  # the flood test says so if what is left is not enough


class Sluice:
    """One `sluice serve` with extra SLUICE_* settings."""

    def __init__(self, label, env):
        self.label = label
        self.extra_env = dict(env)
        self.data_dir = tempfile.mkdtemp(prefix=f"sluice-hostile-{label}-")
        self.proc = None
        self.amqp_port = None
        self.kafka_port = None
        self.lines = deque(maxlen=400)
        self.panics = []  # stderr lines reporting a panic (with the few lines after each)
        self.warm_rss = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        if not os.path.exists(SLUICE_BIN):
            pytest.fail(f"Sluice binary {SLUICE_BIN} not found: build it (cargo build) or set SLUICE_BIN",
                        pytrace=False)
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"), **self.extra_env)
        self.proc = subprocess.Popen(
            [SLUICE_BIN, "serve", "--data-dir", self.data_dir,
             "--amqp-listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0",
             "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )
        found = queue.Queue()
        proc = self.proc

        def read_stderr():
            # Drains stderr for the life of the process (it must never block on a full
            # pipe: the floods make it log a lot), reports the two ports once, and keeps
            # every panic report: a panicking connection task does not end the process,
            # but it is a bug all the same.
            after_panic = 0
            for raw in proc.stderr:
                line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                self.lines.append(line)
                if "panicked at" in line:
                    self.panics.append(line)
                    after_panic = 4
                elif after_panic:
                    self.panics[-1] += "\n" + line
                    after_panic -= 1
                m = LISTENING.search(line)
                if m:
                    found.put((m.group(1), int(m.group(3))))
            found.put(None)

        threading.Thread(target=read_stderr, name=f"sluice-stderr-{self.label}", daemon=True).start()
        ports = {}
        deadline = time.monotonic() + START_TIMEOUT
        while len(ports) < 2:
            try:
                item = found.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"sluice ({self.label}) did not print both listening lines within "
                            f"{START_TIMEOUT}s; stderr:\n" + self.tail(), pytrace=False)
            if item is None:
                code = proc.wait(timeout=STOP_TIMEOUT)
                pytest.fail(f"sluice ({self.label}) exited ({code}) before listening; stderr:\n" + self.tail(),
                            pytrace=False)
            ports[item[0]] = item[1]
        self.amqp_port, self.kafka_port = ports["amqp"], ports["kafka"]
        _running.append(self)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start_again(self):
        """Starts a broker that exited (crashed) again on its data directory, warmed up."""
        if self in _running:
            _running.remove(self)
        self.start()
        amqp_round_trip(self)
        kafka_round_trip(self)

    def tail(self, n=60):
        return "\n".join(list(self.lines)[-n:])

    def status_kib(self, field="VmRSS"):
        """A memory field of /proc/<pid>/status in KiB (VmRSS, VmHWM, VmSize); None once
        the process is gone."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None

    def rss_mib(self):
        kib = self.status_kib("VmRSS")
        return None if kib is None else kib / 1024

    def stop(self):
        if self in _running:
            _running.remove(self)
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.kill()
                    raise AssertionError(f"sluice ({self.label}) did not stop within {STOP_TIMEOUT}s "
                                         "after SIGTERM; stderr:\n" + self.tail())
                assert code == 0, f"sluice ({self.label}) exited with {code} after SIGTERM; stderr:\n" + self.tail()
        finally:
            self.kill()
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def running_sluice(label, **env):
    """Starts a broker with `env` (SLUICE_* settings), warms it up with one round trip on
    each protocol, records its RSS, and stops it with SIGTERM at the end."""
    broker = Sluice(label, env).start()
    try:
        amqp_round_trip(broker)
        kafka_round_trip(broker)
        broker.warm_rss = broker.rss_mib()
        yield broker
    finally:
        broker.stop()


# ---------------------------------------------------------------------------------------
# Round trips with real clients.


def amqp_params(broker, **overrides):
    p = pika.ConnectionParameters(
        host="127.0.0.1", port=broker.amqp_port, virtual_host="/",
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1, socket_timeout=5, stack_timeout=10, blocked_connection_timeout=10,
    )
    for k, v in overrides.items():
        setattr(p, k, v)
    return p


def amqp_round_trip(broker, timeout=10.0):
    """pika: declare a fresh exclusive queue, publish to it, basic.get it back."""
    conn = pika.BlockingConnection(amqp_params(broker))
    try:
        ch = conn.channel()
        q = f"hostile.check.{uuid.uuid4().hex[:12]}"
        ch.queue_declare(q, exclusive=True)
        body = uuid.uuid4().bytes
        ch.basic_publish("", q, body)
        deadline = time.monotonic() + timeout
        while True:
            method, _props, got = ch.basic_get(q, auto_ack=True)
            if method is not None:
                assert got == body, f"pika got {got!r}, published {body!r}"
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"pika: the published message was not in {q} within {timeout}s")
            conn.process_data_events(time_limit=0.02)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def kafka_round_trip(broker, timeout=15.0):
    """kafka-python: produce one record to a fresh (auto-created) topic and read it
    back with a group-less consumer."""
    topic = f"hostile-check-{uuid.uuid4().hex[:12]}"
    value = uuid.uuid4().bytes
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000,
                             max_block_ms=int(timeout * 1000), linger_ms=0)
    try:
        md = producer.send(topic, value).get(timeout=timeout)
    finally:
        with contextlib.suppress(Exception):
            producer.close(timeout=5)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=100, request_timeout_ms=10000)
    try:
        tp = TopicPartition(topic, md.partition)
        consumer.assign([tp])
        consumer.seek(tp, md.offset)
        deadline = time.monotonic() + timeout
        while True:
            batch = consumer.poll(timeout_ms=200)
            records = [r for rs in batch.values() for r in rs]
            if records:
                assert records[0].value == value, f"kafka-python read {records[0].value!r}, produced {value!r}"
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"kafka-python: the produced record was not read back within {timeout}s")
    finally:
        with contextlib.suppress(Exception):
            consumer.close()


# ---------------------------------------------------------------------------------------
# The after-each-case check.


class Survives:
    """`with survives(broker, rss_growth_mib=64): ...` runs a case; afterwards the broker
    must be alive, must not have reported a panic on stderr, must serve a pika and a
    kafka-python round trip, and its VmRSS (sampled every 20 ms during the case) must not
    have grown more than `rss_growth_mib` over its value when the case began."""

    def __init__(self, nodeid, broker, rss_growth_mib):
        self.nodeid = nodeid
        self.broker = broker
        self.bound = rss_growth_mib
        self.samples_peak = None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while not self._stop.is_set():
            rss = self.broker.rss_mib()
            if rss is not None and (self.samples_peak is None or rss > self.samples_peak):
                self.samples_peak = rss
            self._stop.wait(0.02)

    def peak_growth(self):
        return (self.samples_peak or self.start_rss) - self.start_rss

    def __enter__(self):
        if not self.broker.alive():
            # An earlier case killed it (and failed for that): start it again on the same
            # data directory so that this case tests something.
            self.broker.start_again()
        self.start_rss = self.broker.rss_mib()
        self.start_panics = len(self.broker.panics)
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        self._thread.join(timeout=5)
        end_rss = self.broker.rss_mib()
        alive = self.broker.alive()
        result = {
            "case": self.nodeid,
            "broker": self.broker.label,
            "warm": self.broker.warm_rss,
            "start": self.start_rss,
            "peak": self.samples_peak,
            "end": end_rss,
            "bound": self.bound,
            "seconds": time.monotonic() - self.started,
            "verdict": "ok",
        }
        _results.append(result)
        if exc is not None:
            result["verdict"] = "case failed"
            if not alive:
                exc.add_note(f"sluice ({self.broker.label}) is dead (exit {self.broker.proc.returncode}); "
                             "stderr:\n" + self.broker.tail())
            panics = self.broker.panics[self.start_panics:]
            if panics:
                exc.add_note(f"sluice ({self.broker.label}) reported {len(panics)} panic(s) during the case:\n"
                             + "\n---\n".join(panics[:3]))
            return False
        if not alive:
            result["verdict"] = "broker died"
            raise AssertionError(f"sluice ({self.broker.label}) died during the case (exit "
                                 f"{self.broker.proc.returncode}); stderr:\n" + self.broker.tail())
        growth = self.peak_growth()
        try:
            amqp_round_trip(self.broker)
        except Exception as e:
            result["verdict"] = "amqp round trip failed"
            raise AssertionError(f"pika round trip failed after the case: {e!r}") from e
        try:
            kafka_round_trip(self.broker)
        except Exception as e:
            result["verdict"] = "kafka round trip failed"
            raise AssertionError(f"kafka-python round trip failed after the case: {e!r}") from e
        assert self.broker.alive(), "sluice died during the round trips; stderr:\n" + self.broker.tail()
        panics = self.broker.panics[self.start_panics:]
        if panics:
            result["verdict"] = "broker panicked"
            raise AssertionError(f"sluice ({self.broker.label}) reported {len(panics)} panic(s) during the case "
                                 "(the process survived, the task did not):\n" + "\n---\n".join(panics[:3]))
        if growth >= self.bound:
            result["verdict"] = "rss bound exceeded"
            raise AssertionError(
                f"VmRSS grew {growth:.1f} MiB during the case (from {self.start_rss:.1f} to a peak of "
                f"{self.samples_peak:.1f} MiB), bound {self.bound} MiB")
        return False


def parallel(named_calls, workers=16):
    """Runs [(name, zero-argument callable)] concurrently; -> their results in order.
    Every failure is collected and raised together, each with the name of its call."""
    from concurrent.futures import ThreadPoolExecutor

    named_calls = list(named_calls)
    results = [None] * len(named_calls)
    errors = []
    with ThreadPoolExecutor(max_workers=min(workers, max(1, len(named_calls)))) as pool:
        futures = [pool.submit(fn) for _, fn in named_calls]
        for i, f in enumerate(futures):
            try:
                results[i] = f.result()
            except Exception as e:  # noqa: BLE001 - all reported below
                errors.append((named_calls[i][0], e))
    if errors:
        lines = [f"{len(errors)} of {len(named_calls)} concurrent checks failed:"]
        lines += [f"  {name}: {type(e).__name__}: {e}" for name, e in errors[:12]]
        raise AssertionError("\n".join(lines)) from errors[0][1]
    return results
