"""Connection and channel basics: authentication, server properties, channels."""

import socket
import time
import urllib.parse

import pika
import pytest

from helpers import params_for


def test_connect_with_guest(connect):
    conn = connect()
    assert conn.is_open
    ch = conn.channel()
    assert ch.is_open
    conn.close()
    assert conn.is_closed


def test_wrong_password_is_refused_with_access_refused(broker):
    url = broker.url.replace("guest:guest@", "guest:not-the-password@")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as excinfo:
        pika.BlockingConnection(params_for(url))
    # RabbitMQ closes with 403 ACCESS_REFUSED (authentication_failure_close); pika wraps
    # the ConnectionClosedByBroker it got into ProbableAuthenticationError.
    text = str(excinfo.value)
    assert "403" in text and "ACCESS_REFUSED" in text, text


def test_unknown_user_is_refused(broker):
    url = broker.url.replace("guest:guest@", "nobody-here:guest@")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as excinfo:
        pika.BlockingConnection(params_for(url))
    assert "ACCESS_REFUSED" in str(excinfo.value)


def test_server_properties_and_capabilities(connection):
    impl = connection._impl
    props = impl.server_properties
    caps = impl.server_capabilities
    for cap in (
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "exchange_exchange_bindings",
        "per_consumer_qos",
    ):
        assert caps.get(cap) is True, (cap, caps)
    assert connection.publisher_confirms_supported
    assert connection.basic_nack_supported
    assert connection.consumer_cancel_notify_supported
    assert connection.exchange_exchange_bindings_supported
    # RabbitMQ also sends product / version / platform strings.
    assert "product" in props and "version" in props


def test_tune_negotiates_channel_max_and_frame_max(connection):
    params = connection._impl.params
    assert params.channel_max >= 1
    assert params.frame_max >= 4096


def test_channel_open_close(connection):
    ch = connection.channel()
    assert ch.is_open
    num = ch.channel_number
    ch.close()
    assert ch.is_closed
    # The number can be reused and the connection stays usable.
    ch2 = connection.channel(channel_number=num)
    assert ch2.is_open
    ch2.queue_declare("", exclusive=True)


def test_many_channels(connection, name):
    q = name("q")
    channels = [connection.channel() for _ in range(300)]
    assert len({c.channel_number for c in channels}) == 300
    channels[0].queue_declare(q, auto_delete=False)
    for c in channels:
        c.basic_publish("", q, b"x")
    # A synchronous round trip on every channel proves each is alive.
    for c in channels:
        c.basic_qos(prefetch_count=1)
    for c in channels[1:]:
        c.close()
    counts = channels[0].queue_declare(q, passive=True).method.message_count
    assert counts == 300
    channels[0].queue_delete(q)


def test_many_connections(connect):
    conns = [connect() for _ in range(20)]
    for c in conns:
        ch = c.channel()
        ch.queue_declare("", exclusive=True)
    for c in conns:
        c.close()


def _host_port(url):
    u = urllib.parse.urlparse(url)
    return u.hostname, u.port or 5672


def _read_until_closed(sock, timeout=5.0):
    """Everything the server sends until it closes (EOF or, as RabbitMQ does, a reset)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize(
    "header",
    # (RabbitMQ also accepts the old 0-8 / 0-9 headers, so those are not used here.)
    [b"AMQP\x00\x00\x09\x00", b"AMQP\x00\x01\x00\x00", b"AMQP\x03\x01\x00\x00", b"HTTP/1.1"],
    ids=["0-9-0", "amqp-1.0", "amqp-1.0-sasl", "http"],
)
def test_wrong_protocol_header_gets_ours_back_and_close(broker, header):
    with socket.create_connection(_host_port(broker.url), timeout=5) as s:
        s.sendall(header)
        assert _read_until_closed(s) == b"AMQP\x00\x00\x09\x01"


def test_heartbeats_keep_idle_connection_open(connect):
    conn = connect(heartbeat=1)
    assert conn._impl.params.heartbeat == 1
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert conn.is_open
    conn.channel().queue_declare("", exclusive=True)
