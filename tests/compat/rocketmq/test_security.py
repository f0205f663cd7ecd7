"""RocketMQ over TLS with signed calls: the official Python client with `tls_enable` and
access-key credentials against a broker whose gRPC listener speaks TLS only and which
checks every call's signature and the signer's permissions (RocketMQ's UNAUTHORIZED and
FORBIDDEN codes). Certificates are made here (trustme)."""

import os
import re
import shutil
import tempfile
import time
import uuid

import grpc
import pytest
import requests
from kafka.admin import KafkaAdminClient, NewTopic
from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer

from conftest import Sluice

# grpc reads its default roots once, at the first TLS channel: the test CA goes there.
CA_DIR = tempfile.mkdtemp(prefix="sluice-rmq-ca-")


@pytest.fixture(scope="module")
def secure():
    import trustme
    ca = trustme.CA()
    cert, key, ca_file = (os.path.join(CA_DIR, n) for n in ("cert.pem", "key.pem", "ca.pem"))
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = ca_file
    data = tempfile.mkdtemp(prefix="sluice-rmq-sec-")
    s = Sluice(data, env={
        "SLUICE_ROCKETMQ_TLS": "true", "SLUICE_TLS_CERT_FILE": cert, "SLUICE_TLS_KEY_FILE": key,
        "SLUICE_AMQP_USERS": "guest:guest,app:unused-password,reader:unused-password",
        "SLUICE_AMQP_PERMISSIONS": "guest@/ .* .* .*; app@/ .* .* .*; reader@/ ^$ ^$ .*",
        "SLUICE_ROCKETMQ_CREDENTIALS": "app:app-secret,reader:reader-secret",
    })
    s.start()
    try:
        yield s, ca_file
    finally:
        s.stop()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(CA_DIR, ignore_errors=True)


def make_topic(s, queues=2):
    name = f"sec-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=queues, replication_factor=1)])
    finally:
        admin.close()
    return name


def config(s, ak, sk):
    return ClientConfiguration(s.endpoint, Credentials(ak, sk), request_timeout=5)


def msg(topic, body):
    m = Message()
    m.topic = topic
    m.body = body
    return m


def test_signed_clients_send_and_receive_over_tls(secure):
    s, _ = secure
    topic = make_topic(s)
    p = Producer(config(s, "app", "app-secret"), (topic,), tls_enable=True)
    p.startup()
    try:
        for i in range(5):
            p.send(msg(topic, f"secure-{i}".encode()))
    finally:
        p.shutdown()
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = SimpleConsumer(config(s, "reader", "reader-secret"), group, {topic: FilterExpression("*")},
                       await_duration=2, tls_enable=True)
    c.startup()
    try:
        got, deadline = [], time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            for m in c.receive(16, 15):
                got.append(m.body)
                c.ack(m)
    finally:
        c.shutdown()
    assert sorted(got) == [f"secure-{i}".encode() for i in range(5)]


def signed_route(s, ca_file, ak, sk, topic):
    """QueryRoute signed as the official clients sign; -> the response's status."""
    from rocketmq.grpc_protocol import MessagingServiceStub, QueryRouteRequest, Resource
    import hmac, hashlib
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    sig = hmac.new(sk.encode(), when.encode(), hashlib.sha1).hexdigest()
    metadata = [("x-mq-client-id", "raw-secure"), ("x-mq-date-time", when),
                ("authorization", f"MQv2-HMAC-SHA1 Credential={ak}, SignedHeaders=x-mq-date-time, Signature={sig}")]
    with open(ca_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(f.read())
    with grpc.secure_channel(s.endpoint, creds) as channel:
        r = MessagingServiceStub(channel).QueryRoute(
            QueryRouteRequest(topic=Resource(name=topic)), metadata=metadata, timeout=5)
    return r.status


def test_a_wrong_secret_is_refused_with_unauthorized_and_counted(secure):
    from rocketmq.grpc_protocol import Code
    s, ca_file = secure
    topic = make_topic(s)
    assert signed_route(s, ca_file, "app", "app-secret", topic).code == Code.OK
    refused = signed_route(s, ca_file, "app", "not-the-secret", topic)
    assert (refused.code, refused.message) == (Code.UNAUTHORIZED, "check signature failed")
    unknown = signed_route(s, ca_file, "nobody", "x", topic)
    assert (unknown.code, unknown.message) == (Code.UNAUTHORIZED, "User:nobody is not found")
    # The official client refuses to start with it.
    p = Producer(config(s, "app", "not-the-secret"), (topic,), tls_enable=True)
    with pytest.raises(Exception):
        p.startup()
        p.send(msg(topic, b"x"))
    p.shutdown()
    text = requests.get(f"http://127.0.0.1:{s.ports['http']}/metrics", timeout=5).text
    failures = re.search(r'^sluice_auth_failures_total\{protocol="rocketmq"\} (\d+)', text, re.M)
    assert failures and int(failures.group(1)) >= 2, text


def test_a_user_without_write_permission_may_not_send(secure):
    s, _ = secure
    topic = make_topic(s)
    p = Producer(config(s, "reader", "reader-secret"), (topic,), tls_enable=True)
    p.startup()
    try:
        with pytest.raises(Exception) as e:
            p.send(msg(topic, b"not allowed"))
        assert "40300" in str(e.value) or "permission" in str(e.value), str(e.value)
    finally:
        p.shutdown()


def test_a_plaintext_grpc_client_is_refused_on_the_tls_port(secure):
    s, _ = secure
    channel = grpc.insecure_channel(s.endpoint)
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=3)
    channel.close()
