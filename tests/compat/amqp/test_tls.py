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


# --- Client certificates, EXTERNAL, TLS-only listeners, https ----------------------------

LISTENING_ANY = re.compile(r"listening (\w+)=(\S+):(\d+)")


def start_secure(d, ca, required, login_from="common_name"):
    """A broker with AMQP over TLS only, client certificates checked against `ca`, the
    management API over https, and users alice (a password) and certuser (none)."""
    cert, key, ca_file = (os.path.join(d, n) for n in ("cert.pem", "key.pem", "ca.pem"))
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    env = dict(os.environ, NO_COLOR="1", SLUICE_AMQP_LISTEN="none", SLUICE_AMQP_TLS_LISTEN="127.0.0.1:0",
               SLUICE_TLS_CERT_FILE=cert, SLUICE_TLS_KEY_FILE=key, SLUICE_TLS_CLIENT_CA_FILE=ca_file,
               SLUICE_TLS_FAIL_IF_NO_PEER_CERT="true" if required else "false", SLUICE_HTTP_TLS="true",
               SLUICE_AMQP_USERS="admin:admin-pw,alice:alice-pw", SLUICE_AMQP_SSL_CERT_LOGIN_FROM=login_from)
    proc = subprocess.Popen(
        [SLUICE_BIN, "serve", "--data-dir", os.path.join(d, "data"), "--kafka-listen", "127.0.0.1:0",
         "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    ports, lines = {}, []

    def read():
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            m = LISTENING_ANY.search(line)
            if m:
                ports[m.group(1)] = int(m.group(3))
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 20
    while "http" not in ports:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    return proc, ports, lines, ca_file


@pytest.fixture(scope="module")
def mtls_broker():
    import trustme
    ca = trustme.CA()
    with tempfile.TemporaryDirectory(prefix="sluice-mtls-") as d:
        proc, ports, lines, ca_file = start_secure(d, ca, required=False)
        try:
            yield {"ports": ports, "ca": ca, "ca_file": ca_file, "lines": lines}
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def client_context(ca, common_name=None):
    ctx = context(ca)
    if common_name:
        ca.issue_cert(f"{common_name}.clients.test", common_name=common_name).configure_cert(ctx)
    return ctx


def amqps(broker, ctx, credentials):
    params = pika.ConnectionParameters(host="127.0.0.1", port=broker["ports"]["amqps"],
                                       ssl_options=pika.SSLOptions(ctx, "127.0.0.1"),
                                       credentials=credentials, connection_attempts=1, socket_timeout=5)
    return pika.BlockingConnection(params)


def test_only_the_tls_listener_serves_amqp(mtls_broker):
    assert "amqp" not in mtls_broker["ports"] and "amqps" in mtls_broker["ports"]


def test_external_logs_in_as_the_certificate_s_common_name(mtls_broker):
    # The user named by the certificate exists: it logs in with no password at all.
    import requests
    conn = amqps(mtls_broker, client_context(mtls_broker["ca"], "alice"), pika.credentials.ExternalCredentials())
    try:
        ch = conn.channel()
        ch.queue_declare("external-q")
        ch.basic_publish("", "external-q", b"by certificate")
        assert ch.basic_get("external-q", auto_ack=True)[2] == b"by certificate"
        # The management API shows who logged in, how, and over TLS.
        listed = requests.get(f"https://127.0.0.1:{mtls_broker['ports']['http']}/api/connections",
                              auth=("admin", "admin-pw"), verify=mtls_broker["ca_file"], timeout=5).json()
        assert [(c["user"], c["auth_mechanism"], c["ssl"]) for c in listed] == [("alice", "EXTERNAL", True)]
    finally:
        conn.close()


def test_external_is_refused_for_a_certificate_naming_no_user(mtls_broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        amqps(mtls_broker, client_context(mtls_broker["ca"], "mallory"), pika.credentials.ExternalCredentials())
    # RabbitMQ 3.10.8 with rabbitmq_auth_mechanism_ssl answers exactly this.
    assert ("(403) 'ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. "
            "For details see the broker logfile.'") in repr(e.value)


def test_external_without_a_certificate_is_refused_but_plain_still_works(mtls_broker):
    # As RabbitMQ: EXTERNAL is offered on every TLS connection, and refused with 403 when
    # the client presented no certificate.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        amqps(mtls_broker, client_context(mtls_broker["ca"]), pika.credentials.ExternalCredentials())
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL" in repr(e.value)
    conn = amqps(mtls_broker, client_context(mtls_broker["ca"]), pika.PlainCredentials("alice", "alice-pw"))
    conn.close()


def test_a_certificate_from_another_ca_is_refused(mtls_broker):
    import trustme
    stranger = trustme.CA()
    ctx = context(mtls_broker["ca"])
    stranger.issue_cert("alice.clients.test", common_name="alice").configure_cert(ctx)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps(mtls_broker, ctx, pika.credentials.ExternalCredentials())


def test_the_management_api_is_served_over_https_only(mtls_broker):
    import requests
    port = mtls_broker["ports"]["http"]
    r = requests.get(f"https://127.0.0.1:{port}/api/overview", auth=("admin", "admin-pw"),
                     verify=mtls_broker["ca_file"], timeout=5)
    assert r.status_code == 200 and r.json()["management_version"]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/overview", auth=("admin", "admin-pw"), timeout=5)


def test_failed_logins_are_counted_in_metrics(mtls_broker):
    import requests
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps(mtls_broker, client_context(mtls_broker["ca"]), pika.PlainCredentials("alice", "wrong"))
    text = requests.get(f"https://127.0.0.1:{mtls_broker['ports']['http']}/metrics",
                        verify=mtls_broker["ca_file"], timeout=5).text
    counts = dict(re.findall(r'^sluice_auth_failures_total\{protocol="(\w+)"\} (\d+)', text, re.M))
    assert int(counts["amqp091"]) >= 1, text


def test_a_client_without_a_certificate_is_refused_when_one_is_required():
    import trustme
    ca = trustme.CA()
    with tempfile.TemporaryDirectory(prefix="sluice-mtls-req-") as d:
        proc, ports, lines, _ = start_secure(d, ca, required=True)
        broker = {"ports": ports}
        try:
            with pytest.raises(pika.exceptions.AMQPConnectionError):
                amqps(broker, client_context(ca), pika.PlainCredentials("alice", "alice-pw"))
            conn = amqps(broker, client_context(ca, "alice"), pika.PlainCredentials("alice", "alice-pw"))
            conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_by_default_external_logs_in_as_the_distinguished_name():
    # RabbitMQ's default ssl_cert_login_from: the subject, most specific first.
    import requests
    import trustme
    from cryptography import x509
    ca = trustme.CA()
    with tempfile.TemporaryDirectory(prefix="sluice-mtls-dn-") as d:
        proc, ports, lines, ca_file = start_secure(d, ca, required=False, login_from="distinguished_name")
        broker = {"ports": ports}
        try:
            leaf = ca.issue_cert("alice.clients.test", common_name="alice")
            dn = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).subject.rfc4514_string()
            assert dn.startswith("CN=alice,OU=") and "O=trustme" in dn
            ctx = context(ca)
            leaf.configure_cert(ctx)
            # The user "alice" exists, but the certificate names its whole subject.
            with pytest.raises(pika.exceptions.ProbableAuthenticationError):
                amqps(broker, ctx, pika.credentials.ExternalCredentials())
            url = f"https://127.0.0.1:{ports['http']}/api"
            r = requests.put(f"{url}/users/{requests.utils.quote(dn, safe='')}", json={"password": "x", "tags": ""},
                             auth=("admin", "admin-pw"), verify=ca_file, timeout=5)
            assert r.status_code in (201, 204), r.text
            r = requests.put(f"{url}/permissions/%2F/{requests.utils.quote(dn, safe='')}",
                             json={"configure": ".*", "write": ".*", "read": ".*"},
                             auth=("admin", "admin-pw"), verify=ca_file, timeout=5)
            assert r.status_code in (201, 204), r.text
            ctx = context(ca)
            leaf.configure_cert(ctx)
            amqps(broker, ctx, pika.credentials.ExternalCredentials()).close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_sluice_admin_talks_to_an_https_api(mtls_broker):
    port = mtls_broker["ports"]["http"]
    r = subprocess.run([SLUICE_BIN, "admin", "--server", f"https://127.0.0.1:{port}", "--user", "admin",
                        "--password", "admin-pw", "--ca", mtls_broker["ca_file"], "list", "users"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "alice" in r.stdout and "admin" in r.stdout
    # Without the CA the server's certificate is not trusted.
    r = subprocess.run([SLUICE_BIN, "admin", "--server", f"https://127.0.0.1:{port}", "--user", "admin",
                        "--password", "admin-pw", "list", "users"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
