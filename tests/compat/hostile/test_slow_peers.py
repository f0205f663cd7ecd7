"""Slow peers (slowloris), on a broker with SLUICE_AMQP_HANDSHAKE_TIMEOUT_MS=2000 and
SLUICE_KAFKA_CONNECTIONS_MAX_IDLE_MS=2000.

AMQP: the handshake timeout bounds the whole handshake, not each read: 20 clients that
send the 8-byte protocol header one byte every 0.4 s (3.2 s in all), clients that send
the header and then nothing, and clients that trickle connection.start-ok one byte at a
time are all closed about 2 s after connecting, before finishing, without a
connection.start for the trickled header (at most the protocol header RabbitMQ answers a
bad or missing header with).

Kafka: connections.max.idle.ms closes a connection that sends nothing, one that stalls
inside its size prefix, one that stalls inside a request, and an idle one after a whole
request, each about 2 s after its last byte.
"""

import select
import time

import pytest

import hostile_wire as w
from hostile_broker import parallel, running_sluice

TIMEOUT_S = 2.0
# Closed no earlier than this (the broker must not close early) and no later than
# this after the timeout started (its ticker checks every 0.5 s; a loaded 2-core machine
# adds scheduling delay).
EARLIEST = 1.5
LATEST = 6.0


@pytest.fixture(scope="module")
def broker():
    with running_sluice(
        "slow",
        SLUICE_AMQP_HANDSHAKE_TIMEOUT_MS=str(int(TIMEOUT_S * 1000)),
        SLUICE_KAFKA_CONNECTIONS_MAX_IDLE_MS=str(int(TIMEOUT_S * 1000)),
    ) as b:
        yield b


def trickle(sock, data, interval, started, limit):
    """Sends `data` one byte every `interval` seconds, watching the socket in between.
    -> (seconds from `started` to the broker closing the connection, bytes received).
    Fails if the broker keeps the connection past `limit` seconds after `started`."""
    got = bytearray()
    pending = bytearray(data)
    next_send = time.monotonic()
    while True:
        now = time.monotonic()
        if now - started > limit:
            raise AssertionError(f"still open {limit}s after connecting ({len(data) - len(pending)} of "
                                 f"{len(data)} bytes sent, {len(got)} received)")
        if pending and now >= next_send:
            if not w.send_quietly(sock, bytes(pending[:1])):
                return time.monotonic() - started, bytes(got)
            del pending[:1]
            next_send = now + interval
        wait = max(0.0, (next_send if pending else now + 0.2) - time.monotonic())
        poller = select.poll()  # not select(): it fails on descriptors past 1023
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        if poller.poll(wait * 1000):
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - started, bytes(got)
            if not chunk:
                return time.monotonic() - started, bytes(got)
            got += chunk


def amqp_header_byte_by_byte(port):
    def check():
        s = w.tcp(port)
        started = time.monotonic()
        try:
            waited, got = trickle(s, w.AMQP_HEADER, 0.4, started, LATEST)
        finally:
            s.close()
        assert EARLIEST <= waited, f"closed after {waited:.2f}s, before the 2 s handshake timeout"
        assert got in (b"", w.AMQP_HEADER), f"got {got[:40]!r} for a header never completed"
        return waited
    return check


def test_amqp_protocol_header_byte_by_byte(broker, survives):
    with survives(broker, rss_growth_mib=64):
        waits = parallel([(f"slow header #{i}", amqp_header_byte_by_byte(broker.amqp_port)) for i in range(20)],
                         workers=20)
        print(f"slow headers closed after {min(waits):.2f}..{max(waits):.2f}s")


def test_amqp_header_then_silence(broker, survives):
    with survives(broker, rss_growth_mib=64):
        c = w.Amqp(broker.amqp_port)
        try:
            started = time.monotonic()
            c.handshake_start()
            result = c.outcome(timeout=LATEST)
            waited = time.monotonic() - started
            assert result[0] == "eof", f"expected the socket closed after the handshake timeout, got {result!r}"
            assert EARLIEST <= waited <= LATEST, f"closed after {waited:.2f}s"
        finally:
            c.close()


def test_amqp_start_ok_trickled(broker, survives):
    with survives(broker, rss_growth_mib=64):
        c = w.Amqp(broker.amqp_port)
        try:
            started = time.monotonic()
            c.handshake_start()
            start_ok = w.frame(w.FRAME_METHOD, 0, w.start_ok(w.table([])))
            waited, got = trickle(c.sock, start_ok, 0.25, started, LATEST)
            assert EARLIEST <= waited, f"closed after {waited:.2f}s"
            # It never completed start-ok, so it must not have been tuned.
            assert b"\x00\x0a\x00\x1e" not in got, "connection.tune sent for an incomplete start-ok"
        finally:
            c.close()


def kafka_stall(port, first, after_request=False):
    def check():
        c = w.Kafka(port)
        try:
            if after_request:
                c.api_versions()
            if first:
                c.sock.sendall(first)
            stalled = time.monotonic()
            waited, got = w.wait_closed(c.sock, timeout=LATEST)
            assert got == b"", f"got {got[:40]!r} for a stalled request"
            assert EARLIEST <= waited, f"closed {waited:.2f}s after the last byte, before connections.max.idle.ms"
            return waited
        finally:
            c.close()
    return check


KAFKA_STALLS = {
    "silent": (b"", False),
    "inside-size-prefix": (b"\x00\x00", False),
    "inside-request": (w.request(w.API_METADATA, 1, 3, w.i32(0))[:12], False),
    "idle-after-a-request": (b"", True),
}


@pytest.mark.parametrize("case", list(KAFKA_STALLS))
def test_kafka_stalled_connection_is_closed(broker, survives, case):
    first, after_request = KAFKA_STALLS[case]
    with survives(broker, rss_growth_mib=64):
        waited = kafka_stall(broker.kafka_port, first, after_request)()
        print(f"kafka {case}: closed after {waited:.2f}s")
