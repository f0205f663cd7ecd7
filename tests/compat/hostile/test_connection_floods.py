"""Floods of connections.

Half-open sockets (broker with SLUICE_LIMITS_UNAUTHENTICATED_CONNECTIONS_MAX=200 and
SLUICE_LIMITS_CONNECTIONS_MAX=2000): 1,500 silent AMQP sockets, 300 AMQP sockets that
send only the protocol header and stall, and 300 Kafka sockets (half silent, half with a
partial request) are opened and held. Proves that while they are held a real pika client
and a real kafka-python client still connect and complete a round trip, because the
broker evicts the oldest connection that has not logged in when a new one arrives past
the unauthenticated limit: at most 200 of the flood's sockets stay open on the broker's
side, all the others are closed by it, and memory stays bounded.

Total cap (a separate broker with SLUICE_LIMITS_CONNECTIONS_MAX=50): 50 logged-in pika
connections fill it; past that a new connection, AMQP or Kafka, is closed right after
accept without a byte of answer; once some are closed, new connections work again.
"""

import resource
import select
import socket
import time

import pika
import pytest

import hostile_wire as w
from hostile_broker import amqp_params, amqp_round_trip, kafka_round_trip, running_sluice

UNAUTH_MAX = 200
FLOOD_AMQP_SILENT = 1500
FLOOD_AMQP_HEADER = 300
FLOOD_KAFKA = 300
CAP = 50


@pytest.fixture(scope="module")
def flood_broker():
    with running_sluice(
        "flood",
        SLUICE_LIMITS_UNAUTHENTICATED_CONNECTIONS_MAX=str(UNAUTH_MAX),
        SLUICE_LIMITS_CONNECTIONS_MAX="2000",
    ) as b:
        yield b


@pytest.fixture(scope="module")
def capped_broker():
    with running_sluice("cap", SLUICE_LIMITS_CONNECTIONS_MAX=str(CAP)) as b:
        yield b


class Flood:
    """Raw sockets held open by the test; tracks which ones the broker has closed."""

    def __init__(self):
        self.socks = []
        self.closed = set()  # fds the broker closed (EOF or reset seen)
        self.poller = select.poll()
        self.by_fd = {}

    def open(self, port, first_bytes=b""):
        s = socket.create_connection((w.HOST, port), timeout=10)
        if first_bytes:
            s.sendall(first_bytes)
        s.setblocking(False)
        self.socks.append(s)
        self.by_fd[s.fileno()] = s
        self.poller.register(s.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        return s

    def reap(self):
        """Reads what is ready; notes the sockets the broker closed."""
        for fd, _ev in self.poller.poll(0):
            s = self.by_fd[fd]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed.add(fd)
                self.poller.unregister(fd)

    def still_open(self):
        self.reap()
        return len(self.socks) - len(self.closed)

    def close(self):
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks.clear()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_half_open_flood_does_not_lock_out_real_clients(flood_broker, survives):
    b = flood_broker
    need = FLOOD_AMQP_SILENT + FLOOD_AMQP_HEADER + FLOOD_KAFKA + 200
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == resource.RLIM_INFINITY or soft >= need, (
        f"RLIMIT_NOFILE is {soft} and cannot be raised past it here; the flood needs about {need} descriptors")
    flood = Flood()
    with survives(b, rss_growth_mib=64):
        try:
            for _ in range(FLOOD_AMQP_SILENT):
                flood.open(b.amqp_port)
            for _ in range(FLOOD_AMQP_HEADER):
                flood.open(b.amqp_port, w.AMQP_HEADER)
            for i in range(FLOOD_KAFKA):
                # Half send nothing, half a size prefix of 100 bytes and 10 of them.
                flood.open(b.kafka_port, b"" if i % 2 == 0 else w.i32(100) + b"\x00\x03\x00\x01" + b"\x00" * 6)
            total = len(flood.socks)
            # The broker keeps at most UNAUTH_MAX of them and closes the rest.
            wait_until(lambda: flood.still_open() <= UNAUTH_MAX, 30,
                       f"at most {UNAUTH_MAX} of {total} flood sockets left open by the broker")
            left = flood.still_open()
            # Real clients get in while all the flood's sockets are still held on this side.
            amqp_round_trip(b)
            kafka_round_trip(b)
            c = pika.BlockingConnection(amqp_params(b))
            try:
                ch = c.channel()
                ch.queue_declare("", exclusive=True)
            finally:
                c.close()
            assert b.alive()
            print(f"flood: {total} sockets, {left} left open by the broker before the real clients, "
                  f"{flood.still_open()} after")
        finally:
            flood.close()


def refused_right_after_accept(port, first_bytes):
    """Connects, sends `first_bytes`, and expects the broker to close without answering."""
    s = w.tcp(port)
    try:
        w.send_quietly(s, first_bytes)
        waited, got = w.wait_closed(s, timeout=5.0)
        assert got == b"", f"a connection past the cap got {got[:40]!r} before being closed"
        return waited
    finally:
        s.close()


@pytest.mark.timeout(90)
def test_connection_cap(capped_broker, survives):
    b = capped_broker
    held = []
    with survives(b, rss_growth_mib=64):
        try:
            # The warm-up clients' connections may still hold their places for a moment
            # after they closed: retry the fill until CAP are held.
            deadline = time.monotonic() + 15
            while len(held) < CAP:
                try:
                    held.append(pika.BlockingConnection(amqp_params(b)))
                except pika.exceptions.AMQPConnectionError:
                    assert time.monotonic() < deadline, f"only {len(held)} of {CAP} connections admitted"
                    time.sleep(0.05)
            # Full: a new connection on either port is closed right after accept.
            refused_right_after_accept(b.amqp_port, w.AMQP_HEADER)
            refused_right_after_accept(b.kafka_port, w.request(w.API_API_VERSIONS, 0, 1))
            with pytest.raises(pika.exceptions.AMQPConnectionError):
                pika.BlockingConnection(amqp_params(b))
            # The held connections still work.
            for c in held[:5]:
                ch = c.channel()
                ch.queue_declare("", exclusive=True)
                ch.close()
            # Close some: new connections are admitted again.
            for c in held[:10]:
                c.close()
            del held[:10]
            fresh = wait_until(lambda: _try_connect(b), 10, "a new connection after closing 10")
            fresh.close()
        finally:
            for c in held:
                try:
                    c.close()
                except Exception:
                    pass


def _try_connect(b):
    try:
        return pika.BlockingConnection(amqp_params(b))
    except pika.exceptions.AMQPConnectionError:
        return None
