"""AMQP over TLS (amqps): pika connects with the CA of a certificate generated here
(trustme, never committed), a plaintext client is refused on the TLS port, and a renewed
certificate is presented to new connections without a restart."""

import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pika
import pytest

from conftest import SLUICE_BIN

LISTENING = re.compile(r"listening amqps=(\S+):(\d+)")


@pytest.fixture(scope="module")
def tls_broker():
    import trustme
    ca = trustme.CA()
    with tempfile.TemporaryDirectory(prefix="sluice-tls-") as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        issued = ca.issue_cert("127.0.0.1", "localhost")
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        # Low caps on connections (100) and on those not logged in (50), so the crowd
        # test below runs into both.
        env = dict(os.environ, NO_COLOR="1", SLUICE_AMQP_TLS_LISTEN="127.0.0.1:0",
                   SLUICE_TLS_CERT_FILE=cert, SLUICE_TLS_KEY_FILE=key,
                   SLUICE_LIMITS_UNAUTHENTICATED_CONNECTIONS_MAX="50", SLUICE_LIMITS_CONNECTIONS_MAX="100")
        proc = subprocess.Popen(
            [SLUICE_BIN, "serve", "--data-dir", os.path.join(d, "data"), "--amqp-listen", "127.0.0.1:0",
             "--kafka-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        port, lines = [], []

        def read():
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                m = LISTENING.search(line)
                if m:
                    port.append(int(m.group(2)))
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 20
        while not port:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        try:
            yield {"port": port[0], "ca": ca, "cert": cert, "key": key, "dir": d}
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def context(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def test_pika_publishes_and_consumes_over_tls(tls_broker):
    params = pika.ConnectionParameters(host="127.0.0.1", port=tls_broker["port"],
                                       ssl_options=pika.SSLOptions(context(tls_broker["ca"]), "127.0.0.1"))
    connection = pika.BlockingConnection(params)
    try:
        ch = connection.channel()
        ch.queue_declare("tls-q")
        ch.basic_publish("", "tls-q", b"secret cargo")
        method, _, body = ch.basic_get("tls-q", auto_ack=True)
        assert body == b"secret cargo"
    finally:
        connection.close()


def test_a_plaintext_client_is_refused_on_the_tls_port(tls_broker):
    params = pika.ConnectionParameters(host="127.0.0.1", port=tls_broker["port"],
                                       socket_timeout=5, connection_attempts=1)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params).close()


def peer_cert(tls_broker):
    with socket.create_connection(("127.0.0.1", tls_broker["port"]), timeout=5) as raw:
        with context(tls_broker["ca"]).wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.getpeercert(binary_form=True)


def test_a_renewed_certificate_is_used_without_a_restart(tls_broker):
    before = peer_cert(tls_broker)
    renewed = tls_broker["ca"].issue_cert("127.0.0.1", "renewed.localhost")
    tmp = tls_broker["cert"] + ".new"
    renewed.cert_chain_pems[0].write_to_path(tmp)
    renewed.private_key_pem.write_to_path(tls_broker["key"] + ".new")
    os.replace(tls_broker["key"] + ".new", tls_broker["key"])
    os.replace(tmp, tls_broker["cert"])
    deadline = time.monotonic() + 10
    while peer_cert(tls_broker) == before:
        assert time.monotonic() < deadline, "the renewed certificate was never presented"
        time.sleep(0.3)
    # And it works for AMQP.
    params = pika.ConnectionParameters(host="127.0.0.1", port=tls_broker["port"],
                                       ssl_options=pika.SSLOptions(context(tls_broker["ca"]), "127.0.0.1"))
    pika.BlockingConnection(params).close()


def test_garbage_and_silent_crowds_on_the_tls_port_leave_it_serving(tls_broker):
    port = tls_broker["port"]
    for junk in (os.urandom(4096), b"\x16\x03\x01\xff\xff" + os.urandom(64), b"AMQP\x00\x00\x09\x01"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                s.sendall(junk)
                s.settimeout(2)
                s.recv(4096)
            except OSError:
                pass
    # Half-open sockets that never start a handshake: twice the connection cap. A real
    # client must still get in.
    crowd = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        test_pika_publishes_and_consumes_over_tls(tls_broker)
    finally:
        for s in crowd:
            s.close()
