"""Hostile input on the RocketMQ gRPC and admin HTTP listeners: random bytes, lying
HTTP/2 frame lengths, a huge HTTP body claim and a crowd of half-open connections. The
server must survive each and go on answering real clients. Both listeners count toward
the one connection limit, and silent sockets are evicted oldest first."""

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


def fresh_route_call(sluice):
    """QueryRoute on a connection of its own: gRPC shares a process-wide pool of
    connections between channels, which would reuse one admitted earlier."""
    import grpc
    from rocketmq.grpc_protocol.service_pb2_grpc import MessagingServiceStub
    metadata = [("x-mq-language", "PYTHON"), ("x-mq-protocol", "GRPC_V2"), ("x-mq-client-id", "hostile")]
    with grpc.insecure_channel(sluice.endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return MessagingServiceStub(channel).QueryRoute(
            QueryRouteRequest(topic=Resource(name="t")), metadata=metadata, timeout=5)


def admitted(port):
    """A socket to the gRPC listener, and whether the server kept it (an admitted one
    gets the server's HTTP/2 settings; a refused one is closed at once)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return s, s.recv(1) != b""
    except ConnectionResetError:
        return s, False


def test_grpc_and_admin_connections_count_toward_the_connection_limit(tmp_path):
    import time

    import grpc
    from conftest import Sluice
    limited = Sluice(str(tmp_path), env={"SLUICE_LIMITS_CONNECTIONS_MAX": "20"})
    limited.start()
    crowd = [socket.create_connection(("127.0.0.1", limited.ports["http"]), timeout=5)
             for _ in range(10)]
    try:
        # Fill the rest with gRPC connections until one is refused: the admin API's 10
        # hold their places, so at most 10 get in.
        kept = 0
        while True:
            s, ok = admitted(limited.ports["rocketmq"])
            crowd.append(s)
            if not ok:
                break
            kept += 1
            assert kept <= 10, "admin API connections are not counted"
        assert limited.admin("group", "create", "g").returncode != 0
        try:
            fresh_route_call(limited)
            raise AssertionError("served past the limit")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    finally:
        for s in crowd:
            s.close()
    try:
        # The crowd's places come back once the server sees them closed.
        deadline = time.monotonic() + 15
        while True:
            try:
                route = fresh_route_call(limited)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "places never came back"
                time.sleep(0.1)
        assert route.status.code == Code.TOPIC_NOT_FOUND
        assert limited.admin("group", "create", "g").returncode == 0
    finally:
        limited.stop()


def test_silent_sockets_are_evicted_to_make_room_for_real_clients(tmp_path):
    from conftest import Sluice
    limited = Sluice(str(tmp_path), env={"SLUICE_LIMITS_UNAUTHENTICATED_CONNECTIONS_MAX": "5"})
    limited.start()
    try:
        crowd = [socket.create_connection(("127.0.0.1", p), timeout=5)
                 for p in (limited.ports["rocketmq"], limited.ports["http"]) for _ in range(50)]
        try:
            route = raw_call(limited, "QueryRoute", QueryRouteRequest(topic=Resource(name="t")))
            assert route.status.code == Code.TOPIC_NOT_FOUND
            assert limited.admin("group", "create", "g").returncode == 0
            # All but the newest 5 silent sockets were closed by the server (a gRPC one
            # gets the server's HTTP/2 settings first).
            closed = 0
            for s in crowd[:45] + crowd[50:95]:
                s.settimeout(5)
                try:
                    while s.recv(65536):
                        pass
                    closed += 1
                except ConnectionResetError:
                    closed += 1
                except socket.timeout:
                    pass
            assert closed == 90, closed
        finally:
            for s in crowd:
                s.close()
    finally:
        limited.stop()
