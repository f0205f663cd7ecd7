"""Kafka security: TLS listeners (SSL, SASL_SSL), SASL logins (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512) as the broker's users, authorization through their permissions with
Kafka's error codes, the SCRAM credential and ACL admin APIs, and re-authentication
(KIP-368). Real clients throughout: confluent-kafka, kafka-python, kcat; hand-made frames
only where a client cannot misbehave on purpose. Certificates are made here (trustme)."""

import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, Consumer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

import kafka_wire as wire
from conftest import SLUICE_BIN, SluiceProcess
from kafka_helpers import EXTERNAL

pytestmark = pytest.mark.skipif(EXTERNAL, reason="starts its own Sluice brokers with security settings")

ADMIN, ADMIN_PW = "admin", "admin-secret"
# Config users administer the broker; `reader` may only read topics and groups named
# "shared-*" (its permissions are set here, in vhost "/").
USERS = f"{ADMIN}:{ADMIN_PW},reader:reader-pw"
PERMISSIONS = "admin@/ .* .* .*; reader@/ ^$ ^$ ^shared-"


@pytest.fixture(scope="module")
def certs():
    import trustme
    ca = trustme.CA()
    d = tempfile.mkdtemp(prefix="sluice-kafka-tls-")
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"dir": d, "cert": os.path.join(d, "cert.pem"), "key": os.path.join(d, "key.pem"),
             "ca": os.path.join(d, "ca.pem")}
    issued.cert_chain_pems[0].write_to_path(paths["cert"])
    issued.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    yield paths
    shutil.rmtree(d, ignore_errors=True)


def start(certs, protocol, **env):
    data = tempfile.mkdtemp(prefix="sluice-kafka-sec-")
    p = SluiceProcess(SLUICE_BIN, data)
    p.env = {"SLUICE_KAFKA_SECURITY_PROTOCOL": protocol, "SLUICE_TLS_CERT_FILE": certs["cert"],
             "SLUICE_TLS_KEY_FILE": certs["key"], "SLUICE_AMQP_USERS": USERS,
             "SLUICE_AMQP_PERMISSIONS": PERMISSIONS, **env}
    p.start()
    return p, data


@pytest.fixture(scope="module")
def sasl_ssl(certs):
    p, data = start(certs, "SASL_SSL")
    yield p
    p.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def ssl_only(certs):
    p, data = start(certs, "SSL")
    yield p
    p.stop()
    shutil.rmtree(data, ignore_errors=True)


def conf(broker, certs, user=ADMIN, password=ADMIN_PW, mechanism="SCRAM-SHA-512", **extra):
    c = {"bootstrap.servers": broker.bootstrap, "security.protocol": "SASL_SSL",
         "sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password,
         "ssl.ca.location": certs["ca"], "socket.timeout.ms": 10000}
    c.update(extra)
    return c


def produce(c, topic, values):
    p = Producer(c)
    errors = []
    for v in values:
        p.produce(topic, v, on_delivery=lambda e, m: errors.append(e))
    assert p.flush(20) == 0
    return errors


def consume(c, topic, n, group=None, timeout=20):
    consumer = Consumer({**c, "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.subscribe([topic])
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error():
                return got, m.error()
            got.append(m.value())
        return got, None
    finally:
        consumer.close()


def create_topic(c, name, partitions=1):
    admin = AdminClient(c)
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(15)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_confluent_kafka_logs_in_over_sasl_ssl_and_round_trips(sasl_ssl, certs, mechanism):
    c = conf(sasl_ssl, certs, mechanism=mechanism)
    topic = f"secure-{mechanism.lower()}-{uuid.uuid4().hex[:6]}"
    create_topic(c, topic)
    values = [f"m{i}".encode() * 100 for i in range(200)]
    assert produce(c, topic, values) == [None] * 200
    got, err = consume(c, topic, 200)
    assert err is None and got == values


def test_large_fetches_are_copied_through_tls_intact(sasl_ssl, certs):
    # Fetched record data goes through the TLS session rather than sendfile(2).
    c = conf(sasl_ssl, certs)
    topic = f"secure-big-{uuid.uuid4().hex[:6]}"
    create_topic(c, topic)
    values = [os.urandom(200_000) for _ in range(20)]
    assert produce(c, topic, values) == [None] * 20
    got, err = consume(c, topic, 20)
    assert err is None and got == values


def test_kafka_python_logs_in_with_scram_sha_512_over_sasl_ssl(sasl_ssl, certs):
    from kafka import KafkaConsumer, KafkaProducer
    ctx = ssl.create_default_context(cafile=certs["ca"])
    kw = dict(bootstrap_servers=sasl_ssl.bootstrap, security_protocol="SASL_SSL", ssl_context=ctx,
              sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=ADMIN, sasl_plain_password=ADMIN_PW)
    topic = f"secure-kp-{uuid.uuid4().hex[:6]}"
    create_topic(conf(sasl_ssl, certs), topic)
    producer = KafkaProducer(**kw)
    for i in range(50):
        producer.send(topic, f"kp{i}".encode())
    producer.flush(15)
    producer.close()
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000, **kw)
    got = [m.value for m in consumer][:50]
    consumer.close()
    assert got == [f"kp{i}".encode() for i in range(50)]


def test_a_wrong_password_is_refused_with_kafka_s_authentication_error(sasl_ssl, certs):
    # A user of its own: librdkafka retries the login quickly, and the failures of a user
    # from one address hold that user's logins back for a while.
    errors = []
    c = conf(sasl_ssl, certs, user="intruder", password="wrong", error_cb=lambda e: errors.append(e))
    admin = AdminClient(c)
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    admin.poll(1)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert any("Authentication failed" in e.str() for e in errors), errors

    # (kafka-python reads the same error, SaslAuthenticationFailedError, but its client
    # retries the bootstrap for ever rather than raise it, so it is not driven here.)


class TlsRaw(wire.RawConnection):
    def __init__(self, bootstrap, ca):
        host, port = bootstrap.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=5)
        self.sock = ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname=host)


def handshake(mechanism, corr=1):
    return wire.request(17, 1, corr, wire.string(mechanism))


def authenticate(auth_bytes, corr=2):
    return wire.request(36, 1, corr, wire.i32(len(auth_bytes)) + auth_bytes)


def parse_authenticate(body):
    r = wire.Reader(body)
    code, message = r.i16(), r.string()
    n = r.i32()
    data = r.take(n) if n >= 0 else b""
    return code, message, data, r.i64()


def test_requests_before_login_close_the_connection(sasl_ssl, certs):
    c = TlsRaw(sasl_ssl.bootstrap, certs["ca"])
    # ApiVersions is allowed; Metadata is not.
    c.call(wire.api_versions_request(1), 1)
    with pytest.raises((wire.Closed, TimeoutError)):
        c.call(wire.request(wire.API_METADATA, 1, 2, wire.i32(-1)), 2, timeout=3)
    c.close()
    # An unknown mechanism is refused with the ones offered, then the connection closes.
    c = TlsRaw(sasl_ssl.bootstrap, certs["ca"])
    body = c.call(handshake("GSSAPI"), 1)
    r = wire.Reader(body)
    assert r.i16() == 33  # UNSUPPORTED_SASL_MECHANISM
    assert [r.string() for _ in range(r.i32())] == ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    with pytest.raises((wire.Closed, TimeoutError)):
        c.call(wire.api_versions_request(3), 3, timeout=3)
    c.close()


def test_a_plaintext_client_is_refused_on_the_tls_listener(sasl_ssl):
    errors = []
    admin = AdminClient({"bootstrap.servers": sasl_ssl.bootstrap, "error_cb": errors.append,
                         "socket.timeout.ms": 3000})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=4)
    # A Kafka frame where a TLS handshake belongs gets a TLS alert record and the close.
    with socket.create_connection(sasl_ssl.bootstrap.rsplit(":", 1), timeout=5) as raw:
        raw.sendall(wire.api_versions_request(1))
        answer = b""
        while True:
            chunk = raw.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer == b"" or answer[0] == 0x15, answer


def test_ssl_listener_serves_confluent_kafka_and_kafka_python_without_sasl(ssl_only, certs):
    c = {"bootstrap.servers": ssl_only.bootstrap, "security.protocol": "SSL",
         "ssl.ca.location": certs["ca"]}
    topic = f"ssl-{uuid.uuid4().hex[:6]}"
    create_topic(c, topic)
    values = [os.urandom(50_000) for _ in range(10)]
    assert produce(c, topic, values) == [None] * 10
    got, err = consume(c, topic, 10)
    assert err is None and got == values
    from kafka import KafkaConsumer
    ctx = ssl.create_default_context(cafile=certs["ca"])
    consumer = KafkaConsumer(topic, bootstrap_servers=ssl_only.bootstrap, security_protocol="SSL",
                             ssl_context=ctx, auto_offset_reset="earliest", consumer_timeout_ms=10000)
    assert [m.value for m in consumer][:10] == values
    consumer.close()
    # Without SASL nobody may read or change users and ACLs.
    admin = AdminClient(c)
    # (librdkafka drops DescribeAcls' top-level error and shows an empty list; kafka-python
    # raises it.)
    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                             KafkaAdminClient, ResourcePatternFilter, ResourceType as KRes)
    from kafka.errors import SecurityDisabledError
    kp_admin = KafkaAdminClient(bootstrap_servers=ssl_only.bootstrap, security_protocol="SSL", ssl_context=ctx)
    try:
        with pytest.raises(SecurityDisabledError):
            kp_admin.describe_acls(ACLFilter(
                principal=None, host=None, operation=ACLOperation.ANY, permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(KRes.ANY, None, ACLResourcePatternType.ANY)))
    finally:
        kp_admin.close()
    assert admin.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                                AclOperation.ANY, AclPermissionType.ANY)).result(10) == []
    # (A refused DescribeUserScramCredentials of all users, answered as Apache Kafka does
    # with the error and no results, makes librdkafka 2.16 abort the process: not driven.)


def test_scram_users_and_acls_decide_what_a_user_may_do(sasl_ssl, certs):
    admin = AdminClient(conf(sasl_ssl, certs))
    user = f"carol{uuid.uuid4().hex[:4]}"
    prefix = f"{user}-"
    mine, other, group = f"{prefix}t", f"other-{uuid.uuid4().hex[:6]}", f"{prefix}g"
    for t in (mine, other):
        create_topic(conf(sasl_ssl, certs), t)
    # A Kafka user exists by its credentials: created with SCRAM-SHA-512 and nothing more.
    up = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                      b"carol-pw", b"some-salt-bytes")
    for f in admin.alter_user_scram_credentials([up]).values():
        f.result(10)
    info = admin.describe_user_scram_credentials([user])[user].result(10).scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in info] == [(ScramMechanism.SCRAM_SHA_512, 8192)]
    carol = conf(sasl_ssl, certs, user=user, password="carol-pw")
    # Logged in, but no permissions yet: every topic is refused.
    errors = produce(carol, mine, [b"x"])
    assert errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Grant write and read on the prefix and read on the group.
    acls = [AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, f"User:{user}", "*",
                       AclOperation.WRITE, AclPermissionType.ALLOW),
            AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, f"User:{user}", "*",
                       AclOperation.READ, AclPermissionType.ALLOW),
            AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, f"User:{user}", "*",
                       AclOperation.DESCRIBE, AclPermissionType.ALLOW)]
    for f in admin.create_acls(acls).values():
        f.result(10)
    listed = admin.describe_acls(AclBindingFilter(ResourceType.TOPIC, None, ResourcePatternType.ANY,
                                                  f"User:{user}", None, AclOperation.ANY,
                                                  AclPermissionType.ANY)).result(10)
    assert {(a.name, a.resource_pattern_type, a.operation) for a in listed} == {
        (prefix, ResourcePatternType.PREFIXED, AclOperation.WRITE),
        (prefix, ResourcePatternType.PREFIXED, AclOperation.READ)}
    assert produce(carol, mine, [b"one", b"two"]) == [None, None]
    errors = produce(carol, other, [b"x"])
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    got, err = consume(carol, mine, 2, group=group)
    assert err is None and got == [b"one", b"two"]
    # A group outside the grant is refused as Kafka refuses it.
    got, err = consume(carol, mine, 1, group=f"not-{user}", timeout=10)
    assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    # Cluster operations need the administrator tag.
    carol_admin = AdminClient(carol)
    with pytest.raises(KafkaException) as e:
        for f in carol_admin.create_acls([acls[0]]).values():
            f.result(10)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    topics = carol_admin.list_topics(timeout=10).topics
    assert mine in topics and other not in topics, "topics it may not describe are not listed"
    # Deleting the ACLs takes the permissions away again.
    deleted = admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED,
                                                  f"User:{user}", None, AclOperation.WRITE,
                                                  AclPermissionType.ANY)])
    for f in deleted.values():
        assert len(f.result(10)) >= 1
    errors = produce(carol, mine, [b"x"])
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Deleting the credential ends SCRAM logins.
    for f in admin.alter_user_scram_credentials(
            [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)]).values():
        f.result(10)
    with pytest.raises(KafkaException) as e:
        for f in admin.alter_user_scram_credentials(
                [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)]).values():
            f.result(10)
    assert e.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND


def test_scram_admin_refuses_bad_iterations_and_unknown_users(sasl_ssl, certs):
    admin = AdminClient(conf(sasl_ssl, certs))
    bad = UserScramCredentialUpsertion("weak", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 100),
                                       b"pw", b"salt")
    with pytest.raises(KafkaException) as e:
        for f in admin.alter_user_scram_credentials([bad]).values():
            f.result(10)
    assert e.value.args[0].code() == KafkaError.UNACCEPTABLE_CREDENTIAL
    with pytest.raises(KafkaException) as e:
        admin.describe_user_scram_credentials(["nobody-here"])["nobody-here"].result(10)
    assert e.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND


def test_a_config_user_with_read_only_permissions(sasl_ssl, certs):
    admin_conf = conf(sasl_ssl, certs)
    shared = f"shared-{uuid.uuid4().hex[:6]}"
    create_topic(admin_conf, shared)
    assert produce(admin_conf, shared, [b"for readers"]) == [None]
    reader = conf(sasl_ssl, certs, user="reader", password="reader-pw", mechanism="SCRAM-SHA-256")
    got, err = consume(reader, shared, 1, group=f"shared-{uuid.uuid4().hex[:4]}")
    assert err is None and got == [b"for readers"]
    errors = produce(reader, shared, [b"x"])
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Creating a topic needs configure permission.
    with pytest.raises(KafkaException) as e:
        create_topic(reader, f"shared-new-{uuid.uuid4().hex[:4]}")
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_kafka_python_manages_acls(sasl_ssl, certs):
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType, KafkaAdminClient,
                             ResourcePattern, ResourcePatternFilter, ResourceType as KRes)
    from kafka.admin import ACLResourcePatternType
    ctx = ssl.create_default_context(cafile=certs["ca"])
    admin = KafkaAdminClient(bootstrap_servers=sasl_ssl.bootstrap, security_protocol="SASL_SSL",
                             ssl_context=ctx, sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=ADMIN,
                             sasl_plain_password=ADMIN_PW)
    try:
        acl = ACL(principal="User:reader", host="*", operation=ACLOperation.READ,
                  permission_type=ACLPermissionType.ALLOW,
                  resource_pattern=ResourcePattern(KRes.TOPIC, "kp-granted", ACLResourcePatternType.LITERAL))
        result = admin.create_acls([acl])
        assert not result["failed"], result
        found, error = admin.describe_acls(ACLFilter(
            principal="User:reader", host=None, operation=ACLOperation.ANY, permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(KRes.TOPIC, "kp-granted", ACLResourcePatternType.LITERAL)))
        assert [(a.resource_pattern.resource_name, a.operation) for a in found] == [("kp-granted", ACLOperation.READ)]
        deleted = admin.delete_acls([ACLFilter(
            principal="User:reader", host=None, operation=ACLOperation.READ, permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(KRes.TOPIC, "kp-granted", ACLResourcePatternType.LITERAL))])
        assert len(deleted[0][1]) == 1
        deny = ACL(principal="User:reader", host="*", operation=ACLOperation.READ,
                   permission_type=ACLPermissionType.DENY,
                   resource_pattern=ResourcePattern(KRes.TOPIC, "x", ACLResourcePatternType.LITERAL))
        assert admin.create_acls([deny])["failed"], "DENY ACLs are refused: permissions only grant"
    finally:
        admin.close()


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat_produces_and_consumes_with_sasl_ssl(sasl_ssl, certs):
    topic = f"kcat-sasl-{uuid.uuid4().hex[:6]}"
    create_topic(conf(sasl_ssl, certs), topic)
    base = ["kcat", "-b", sasl_ssl.bootstrap, "-X", "security.protocol=SASL_SSL",
            "-X", "sasl.mechanisms=SCRAM-SHA-256", "-X", f"sasl.username={ADMIN}",
            "-X", f"sasl.password={ADMIN_PW}", "-X", f"ssl.ca.location={certs['ca']}", "-t", topic]
    r = subprocess.run(base + ["-P"], input=b"one\ntwo\nthree\n", timeout=30, capture_output=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["-C", "-o", "beginning", "-c", "3", "-e"], timeout=30, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"one", b"two", b"three"]
    bad = ["kcat", "-b", sasl_ssl.bootstrap, "-X", "security.protocol=SASL_SSL",
           "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=admin", "-X", "sasl.password=nope",
           "-X", f"ssl.ca.location={certs['ca']}", "-L", "-m", "5"]
    r = subprocess.run(bad, timeout=30, capture_output=True)
    assert r.returncode != 0 and b"Authentication failed" in r.stderr


def test_logins_are_renewed_before_their_lifetime_ends(certs):
    # KIP-368: a 2 s lifetime; librdkafka re-authenticates on the same connection.
    p, data = start(certs, "SASL_SSL", SLUICE_KAFKA_REAUTH_MS="2000")
    try:
        c = conf(p, certs)
        topic = f"reauth-{uuid.uuid4().hex[:6]}"
        create_topic(c, topic)
        producer = Producer(c)
        delivered = []
        end = time.monotonic() + 6
        i = 0
        while time.monotonic() < end:
            producer.produce(topic, f"r{i}".encode(), on_delivery=lambda e, m: delivered.append(e))
            producer.poll(0.05)
            i += 1
        assert producer.flush(20) == 0
        assert delivered == [None] * i
        # A client that does not renew is cut off at its first request after the lifetime.
        raw = TlsRaw(p.bootstrap, certs["ca"])
        raw.call(handshake("PLAIN"), 1)
        code, _, _, lifetime = parse_authenticate(raw.call(authenticate(f"\0{ADMIN}\0{ADMIN_PW}".encode()), 2))
        assert code == 0 and lifetime == 2000
        raw.call(wire.api_versions_request(3), 3)
        time.sleep(2.3)
        with pytest.raises((wire.Closed, TimeoutError)):
            raw.call(wire.request(wire.API_METADATA, 1, 4, wire.i32(-1)), 4, timeout=3)
        raw.close()
    finally:
        p.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_repeated_failures_from_one_address_are_held_back(certs):
    # After a burst of failures the address is refused without a password check, so even
    # the right password fails until the bucket refills. Its own broker: the address is
    # this machine's, shared with every other test.
    p, data = start(certs, "SASL_SSL")

    def attempt(password):
        raw = TlsRaw(p.bootstrap, certs["ca"])
        try:
            raw.call(handshake("PLAIN"), 1)
            return parse_authenticate(raw.call(authenticate(f"\0reader\0{password}".encode()), 2))[0]
        finally:
            raw.close()
    try:
        codes = [attempt("guess") for _ in range(25)]
        assert set(codes) == {58}
        assert attempt("reader-pw") == 58, "held back despite the right password"
    finally:
        p.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_hostile_sasl_input_closes_the_connection_and_leaves_the_broker_serving(sasl_ssl, certs):
    import random
    rnd = random.Random(7)
    cases = []
    for mech in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        cases += [(mech, 1, bytes(rnd.randrange(256) for _ in range(n))) for n in (0, 1, 17, 300, 5000)]
        cases.append((mech, 1, b"n,,n=" + b"=" * 1000 + b",r=x"))
        cases.append((mech, 0, os.urandom(64)))  # v0: a bare token after the handshake
    for mech, version, token in cases:
        c = TlsRaw(sasl_ssl.bootstrap, certs["ca"])
        try:
            c.call(wire.request(17, version, 1, wire.string(mech)), 1)
            if version == 1:
                c.send(authenticate(token))
            else:
                c.send(wire.i32(len(token)) + token)
            try:
                c.read_response(timeout=3)
                c.read_response(timeout=3)  # the close follows a refusal
            except (wire.Closed, TimeoutError, OSError, AssertionError):
                pass
        finally:
            c.close()
    # A SCRAM final message full of junk after a real first round.
    c = TlsRaw(sasl_ssl.bootstrap, certs["ca"])
    c.call(handshake("SCRAM-SHA-256"), 1)
    code, _, _, _ = parse_authenticate(c.call(authenticate(b"n,,n=admin,r=abcdef"), 2))
    assert code == 0
    code, _, _, _ = parse_authenticate(c.call(authenticate(os.urandom(200), 3), 3))
    assert code == 58
    c.close()
    # A size claim past sasl.server.max.receive.size (512 KiB) before login closes at once.
    c = TlsRaw(sasl_ssl.bootstrap, certs["ca"])
    c.call(handshake("PLAIN"), 1)
    c.send(wire.i32(600_000) + wire.i16(36) + wire.i16(1))
    with pytest.raises((wire.Closed, ConnectionError)):  # closed, not waiting for the rest
        c.read_response(timeout=5)
    c.close()
    # Still serving real clients.
    test_confluent_kafka_logs_in_over_sasl_ssl_and_round_trips(sasl_ssl, certs, "SCRAM-SHA-256")
