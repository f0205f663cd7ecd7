"""Hostile input on the RocketMQ gRPC and admin HTTP listeners: random bytes, lying
HTTP/2 frame lengths, a huge HTTP body claim and a crowd of half-open connections. The
server must survive each and go on answering real clients."""

import os
import socket

from rocketmq.grpc_protocol import Code, QueryRouteRequest, Resource

from test_rocketmq import raw_call

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def send_and_close(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            s.settimeout(2)
            s.recv(65536)
        except OSError:
            pass


def still_answers(sluice, topic):
    route = raw_call(sluice, "QueryRoute", QueryRouteRequest(topic=Resource(name=topic)))
    assert route.status.code == Code.OK


def test_garbage_and_lying_frames_leave_the_grpc_listener_serving(sluice, make_topic):
    topic = make_topic(1)
    port = sluice.ports["rocketmq"]
    send_and_close(port, os.urandom(4096))
    send_and_close(port, PREFACE + os.urandom(4096))
    # A frame that claims 16 MiB - 1 of payload and sends 10 bytes.
    send_and_close(port, PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 10)
    # HEADERS on stream 1 with random HPACK bytes.
    send_and_close(port, PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x40\x01\x05\x00\x00\x00\x01" + os.urandom(64))
    still_answers(sluice, topic)


def test_the_admin_listener_survives_lies_and_half_open_crowds(sluice, make_topic):
    topic = make_topic(1)
    port = sluice.ports["http"]
    send_and_close(port, os.urandom(4096))
    send_and_close(port, b"PUT /api/sluice/rocketmq/groups/g HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 99999999999\r\n\r\n{")
    crowd = [socket.create_connection(("127.0.0.1", p), timeout=5)
             for p in (port, sluice.ports["rocketmq"]) for _ in range(200)]
    try:
        still_answers(sluice, topic)
        made = sluice.admin("group", "create", "after-the-crowd")
        assert made.returncode == 0, made.stderr
    finally:
        for s in crowd:
            s.close()
