"""Heartbeats: a connection that negotiated a heartbeat is kept alive by the broker's
heartbeat frames while idle, and a client that goes silent is disconnected after missing
two heartbeat intervals, as RabbitMQ does."""

import socket
import struct
import time
import urllib.parse


def test_an_idle_connection_with_heartbeats_stays_open(connect):
    conn = connect(heartbeat=1)
    ch = conn.channel()
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
    assert conn.is_open
    ch.queue_declare("", exclusive=True)  # still usable


def _frame(channel, payload):
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def _short(s):
    return bytes([len(s)]) + s


def test_a_silent_client_is_disconnected_after_missed_heartbeats(broker):
    url = urllib.parse.urlparse(broker.url)
    s = socket.create_connection((url.hostname, url.port or 5672), timeout=10)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    s.recv(65536)  # connection.start
    start_ok = (
        struct.pack(">HH", 10, 11)
        + struct.pack(">I", 0)
        + _short(b"PLAIN")
        + struct.pack(">I", 12)
        + b"\x00guest\x00guest"
        + _short(b"en_US")
    )
    s.sendall(_frame(0, start_ok))
    s.recv(65536)  # tune
    tune_ok = struct.pack(">HHHIH", 10, 31, 16, 131072, 1)  # heartbeat: 1 s
    open_ = struct.pack(">HH", 10, 40) + _short(b"/") + _short(b"") + b"\x00"
    s.sendall(_frame(0, tune_ok) + _frame(0, open_))
    started = time.monotonic()
    # Say nothing more; read (heartbeats from the broker) until it closes the socket.
    while True:
        data = s.recv(65536)
        if not data:
            break
        assert time.monotonic() - started < 8, "the broker kept a silent client"
    assert time.monotonic() - started >= 1.5
