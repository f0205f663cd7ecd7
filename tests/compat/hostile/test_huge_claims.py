"""Huge size claims: what a client announces must not be what the broker allocates.

Kafka: 100 connections each send a size prefix of ~100 MiB (under the default max
request size of 129 MiB, so the broker must wait for it) plus a few bytes of a Produce
request header, and stall. While all 100 are held, the broker's VmRSS stays flat (growth
under 32 MiB, where allocating the claims would take 10 GiB), its address space does not
grow by the claims either (VmSize growth under 4 GiB: reserved but untouched pages would
not show in RSS), and real clients still round-trip. Size prefixes of 2^31-1, just over
the maximum, and negative are closed at once.

AMQP: 100 logged-in connections (frame_max 131072) each send basic.publish and a content
header announcing a 100 MiB body, then stall (another 100 also send two small body
frames first, so the body buffer exists and must grow with what arrives, not with the
announced size); VmRSS stays flat and VmSize bounded while they are held. A frame header
claiming a 4 GiB frame is refused before anything is read: before connection.tune the
socket is closed (after the silent-close delay, no connection.close), after it 501
FRAME_ERROR.
"""

import struct
import time
import uuid

import pytest

import hostile_wire as w
from hostile_broker import amqp_round_trip, kafka_round_trip, parallel, running_sluice

CLAIM = 100 * 1024 * 1024 - 4096  # under max request bytes (129 MiB by default)
HELD = 100
# Held connections are watched this long (RSS sampled every 20 ms meanwhile), after the
# real-client round trips that run while they are held.
HOLD_S = 1.0
# Address space may grow with allocator arenas and thread stacks, but reserving what the
# 100 connections claim would add ~10 GiB: this bound tells the two apart even where
# RSS cannot (reserved pages that are never written are not resident).
VMSIZE_GROWTH_MAX_MIB = 4096


@pytest.fixture(scope="module")
def broker():
    with running_sluice("claims") as b:
        yield b


def assert_vmsize_bounded(broker, start_kib):
    growth = (broker.status_kib("VmSize") - start_kib) / 1024
    assert growth < VMSIZE_GROWTH_MAX_MIB, (
        f"VmSize grew {growth:.0f} MiB while the claims were held (bound {VMSIZE_GROWTH_MAX_MIB} MiB): "
        "the broker reserved memory for what was announced, not for what arrived")
    return growth


def hold_window(broker, seconds):
    """Keeps the held connections for `seconds` more while the RSS sampler runs; fails
    early if the broker dies."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert broker.alive(), "sluice died while the connections were held; stderr:\n" + broker.tail()
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_kafka_100_connections_claiming_100_mib(broker, survives):
    header = w.request_header(w.API_PRODUCE, 3, 1)  # 8 + client id
    conns = []
    vmsize_start = broker.status_kib("VmSize")
    with survives(broker, rss_growth_mib=32) as case:
        try:
            for _ in range(HELD):
                c = w.Kafka(broker.kafka_port)
                c.sock.sendall(w.i32(CLAIM) + header + b"\x00\x00")
                conns.append(c)
            amqp_round_trip(broker)
            kafka_round_trip(broker)
            hold_window(broker, HOLD_S)
            # None of them was answered or closed: the broker is still waiting for the
            # rest of each (so the RSS measured is that of 100 held claims).
            for c in conns[:: max(1, len(conns) // 10)]:
                c.sock.settimeout(0)
                try:
                    data = c.sock.recv(1)
                except BlockingIOError:
                    continue
                raise AssertionError(f"a held claim got {data!r} (closed or answered) while held")
            vm = assert_vmsize_bounded(broker, vmsize_start)
            print(f"kafka claims: VmRSS {case.start_rss:.1f} -> peak {case.samples_peak:.1f} MiB, "
                  f"VmSize +{vm:.0f} MiB")
        finally:
            for c in conns:
                c.close()


KAFKA_BAD_SIZES = {
    "2^31-1": 0x7FFFFFFF,
    "just-over-max-request": 129 * 1024 * 1024 + 1,
    "negative": -1,
    "min-negative": -0x80000000,
}


@pytest.mark.parametrize("case", list(KAFKA_BAD_SIZES))
def test_kafka_impossible_size_is_closed(broker, survives, case):
    with survives(broker, rss_growth_mib=32):
        c = w.Kafka(broker.kafka_port)
        try:
            c.send(w.i32(KAFKA_BAD_SIZES[case]) + w.request_header(w.API_METADATA, 1, 1) + b"\x00" * 16)
            waited, got = w.wait_closed(c.sock, timeout=5)
            assert got == b"", f"got an answer {got[:40]!r} to a size prefix of {case}"
        finally:
            c.close()


def amqp_publisher_claiming(port, queue, body_frames):
    c = w.Amqp(port).login().open_channel(1)
    c.sock.sendall(w.frame(w.FRAME_METHOD, 1, w.basic_publish("", queue))
                   + w.content_header(1, CLAIM, 0)
                   + b"".join(w.frame(w.FRAME_BODY, 1, b"x" * 1024) for _ in range(body_frames)))
    return c


@pytest.mark.timeout(90)
def test_amqp_100_publishers_announcing_100_mib_bodies(broker, survives):
    conns = []
    vmsize_start = broker.status_kib("VmSize")
    with survives(broker, rss_growth_mib=32) as case:
        try:
            q = f"hostile.claims.{uuid.uuid4().hex[:10]}"
            for i in range(2 * HELD):
                conns.append(amqp_publisher_claiming(broker.amqp_port, q, 0 if i < HELD else 2))
            amqp_round_trip(broker)
            kafka_round_trip(broker)
            hold_window(broker, HOLD_S)
            # The broker is waiting for the bodies: no connection was closed. A heartbeat
            # frame from the client is valid mid-content; nothing answers it, so check
            # just that no close arrived.
            for c in conns[:: max(1, len(conns) // 10)]:
                result = c.outcome(timeout=0.05)
                assert result[0] == "timeout" and not result[1], f"a held publisher got {result!r}"
            vm = assert_vmsize_bounded(broker, vmsize_start)
            print(f"amqp claims: VmRSS {case.start_rss:.1f} -> peak {case.samples_peak:.1f} MiB, "
                  f"VmSize +{vm:.0f} MiB")
        finally:
            for c in conns:
                c.close()


def test_amqp_4_gib_frame_before_tune(broker, survives):
    with survives(broker, rss_growth_mib=32):
        cases = []
        for kind in (w.FRAME_METHOD, w.FRAME_HEADER, w.FRAME_BODY):
            def check(kind=kind):
                c = w.Amqp(broker.amqp_port)
                try:
                    c.handshake_start()
                    c.send(struct.pack(">BHI", kind, 0, 0xFFFFFFFF) + b"\x00" * 64)
                    c.expect_silent_close(timeout=12, min_delay=2.5)
                finally:
                    c.close()
            cases.append((f"frame type {kind}", check))
        parallel(cases)


@pytest.mark.parametrize("kind", [w.FRAME_METHOD, w.FRAME_HEADER, w.FRAME_BODY])
def test_amqp_4_gib_frame_after_tune(broker, survives, kind):
    with survives(broker, rss_growth_mib=32):
        c = w.Amqp(broker.amqp_port).login().open_channel(1)
        try:
            c.send(struct.pack(">BHI", kind, 1, 0xFFFFFFFF) + b"\x00" * 64)
            c.expect_connection_close(w.FRAME_ERROR, "FRAME_ERROR")
        finally:
            c.close()
