"""Random bytes after a well-formed start, for every API version and every method.

Kafka: ApiVersions v0 lists what the broker speaks; for every advertised api key and
every version in its range, requests with a correct header for that version (request
header v1 for non-flexible versions, v2 for flexible ones, and the other style too, as
more garbage) are followed by random bytes (fixed seeds, lengths 0..512), by bytes that
read as huge lengths and counts (0x7fffffff, endless varints), and by a size prefix
claiming 1 MiB more than is sent before the client's EOF. Api keys the broker does not
advertise get the same. Each request is on a fresh connection; the broker may answer,
close the connection (as Kafka does for undecodable requests) or hold a request that
happened to decode into a long wait (then the client gives up after 2 s).

AMQP: after login and channel.open, every (class, method) pair of AMQP 0-9-1
(connection 10.x on channel 0, channel 20.x, access 30.x, exchange 40.x, queue 50.x,
basic 60.x, confirm 85.x, tx 90.x on channel 1) is sent with random argument bytes and
crafted huge lengths; then channel.open on channel 2 is the sentinel: the broker must
either answer it (it accepted or survived the method) or close the connection, within
5 s. Random content-header property bytes after basic.publish, and frames of unknown
types, get the same treatment.

Structure-aware: random bytes rarely get past the first field, so well-formed inputs
are mutated too (one mutation each: bytes flipped, a window turned into a huge or
negative length, truncation, a repeated slice, an endless varint). Kafka: requests of
every advertised api key and version generated from Apache Kafka's JSON message
definitions (hostile_kafka_gen.py), each sent as it is and as 48 mutants. AMQP: every
method pika's spec encodes, with plausible arguments (nested field tables included),
as it is and as 48 mutants, and a content header carrying every basic property as 512
mutants.

Proves that none of this kills the broker, hangs it or grows its memory past 64 MiB,
and that real clients still round-trip afterwards. The seeds are fixed, so a failure
reproduces.
"""

import random
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from kafka import KafkaProducer

import hostile_kafka_gen as gen
import hostile_wire as w
from hostile_broker import parallel, running_sluice

SEED = 20240917
RANDOM_PER_VERSION = 24  # random bodies per (api key, version, header style)
RANDOM_PER_METHOD = 32  # random argument strings per AMQP method
HOLD_GIVE_UP_S = 2.0  # a request that decoded into a long wait is abandoned after this


@pytest.fixture(scope="module")
def broker():
    with running_sluice("random") as b:
        yield b


class Tally:
    """Outcome counts, shared by the worker threads."""

    def __init__(self):
        self.counts = Counter()
        self.lock = threading.Lock()

    def add(self, key):
        with self.lock:
            self.counts[key] += 1

    def __repr__(self):
        return repr(dict(self.counts))


# ---------------------------------------------------------------------------------------
# Kafka.


def kafka_cases(apis):
    rng = random.Random(SEED)
    cases = []
    for key, (lo, hi) in sorted(apis.items()):
        for version in range(lo, hi + 1):
            for flexible in (False, True):
                style = "v2" if flexible else "v1"
                for i in range(RANDOM_PER_VERSION):
                    # Half short (more likely to decode into something), half up to 512.
                    body = rng.randbytes(rng.randrange(0, 33 if i % 2 else 513))
                    cases.append((f"{key}v{version}/{style}/random{i}({len(body)})", key, version, flexible, body, 0))
                cases.append((f"{key}v{version}/{style}/0x7fffffff", key, version, flexible,
                              b"\x7f\xff\xff\xff" * 8 + rng.randbytes(32), 0))
                cases.append((f"{key}v{version}/{style}/endless-varint", key, version, flexible, b"\xff" * 48, 0))
                cases.append((f"{key}v{version}/{style}/claims-1MiB-more", key, version, flexible,
                              rng.randbytes(64), 1 << 20))
    # Keys the broker does not advertise (up to 70): version 0, random bodies.
    for key in range(0, 71):
        if key not in apis:
            body = rng.randbytes(rng.randrange(0, 129))
            cases.append((f"{key}v0/unadvertised", key, 0, False, body, 0))
    return cases


def send_kafka_case(port, case, outcomes):
    label, key, version, flexible, body, claim_more = case
    payload = w.request_header(key, version, 77, flexible=flexible) + body
    try:
        s = w.tcp(port)
    except OSError as e:
        raise AssertionError(f"{label}: cannot connect: {e!r}")
    try:
        s.settimeout(5)
        w.send_quietly(s, w.i32(len(payload) + claim_more) + payload)
        if claim_more:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        deadline = time.monotonic() + HOLD_GIVE_UP_S
        try:
            size = struct.unpack(">i", w.recv_exact(s, 4, deadline))[0]
            assert 4 <= size <= 64 * 1024 * 1024, f"{label}: implausible response size {size}"
            frame = w.recv_exact(s, size, time.monotonic() + 5)
            corr = struct.unpack(">i", frame[:4])[0]
            assert corr == 77, f"{label}: answered with correlation id {corr}"
            outcomes.add("answered")
        except w.Closed:
            outcomes.add("closed")
        except TimeoutError:
            outcomes.add("held")
    finally:
        s.close()


@pytest.mark.timeout(120)
def test_kafka_random_bodies_for_every_api_version(broker, survives):
    with survives(broker, rss_growth_mib=64):
        c = w.Kafka(broker.kafka_port)
        try:
            apis = c.api_versions()
        finally:
            c.close()
        assert len(apis) >= 10, apis
        cases = kafka_cases(apis)
        outcomes = Tally()
        started = time.monotonic()
        chunks = [cases[i::16] for i in range(16)]

        def worker(chunk):
            def run():
                for case in chunk:
                    send_kafka_case(broker.kafka_port, case, outcomes)
                    if not broker.alive():
                        raise AssertionError(f"sluice died after {case[0]}; stderr:\n" + broker.tail())
            return run

        parallel([(f"worker {i}", worker(ch)) for i, ch in enumerate(chunks)], workers=16)
        print(f"kafka random: {len(cases)} requests over {len(apis)} apis in {time.monotonic() - started:.1f}s: "
              f"{outcomes!r}")


# ---------------------------------------------------------------------------------------
# AMQP.


def amqp_cases():
    rng = random.Random(SEED)
    cases = []
    for cls, methods in w.AMQP_METHODS.items():
        for mid in methods:
            for i in range(RANDOM_PER_METHOD):
                args = rng.randbytes(rng.randrange(0, 33 if i % 2 else 513))
                cases.append((f"{cls}.{mid}/random{i}({len(args)})", "method", cls, mid, args))
            # A reserved short, then a short string length 255 running past the end.
            cases.append((f"{cls}.{mid}/short-string-past-end", "method", cls, mid, b"\x00\x00\xff" + rng.randbytes(8)))
            # Long string / table lengths of 0xffffffff.
            cases.append((f"{cls}.{mid}/ffffffff", "method", cls, mid, b"\xff" * 24))
            # Nothing at all after the ids.
            cases.append((f"{cls}.{mid}/no-arguments", "method", cls, mid, b""))
    for i in range(128):
        flags = rng.randrange(0, 0x10000) & 0xFFFE  # bit 0 would announce more flag words
        props = rng.randbytes(rng.randrange(0, 257))
        cases.append((f"content-header/random{i}(flags {flags:#06x})", "header", flags, None, props))
    for kind in (0, 4, 5, 7, 9, 0x41, 0xCE, 0xFF):
        cases.append((f"frame-type-{kind}", "frame", kind, None, rng.randbytes(rng.randrange(0, 65))))
    return cases


def is_sentinel_answer(f):
    return f.channel == 2 and f.class_method == (20, 11)


def send_amqp_case(port, case, outcomes):
    label, kind, a, b, data = case
    c = w.Amqp(port)
    try:
        c.login().open_channel(1)
        if kind == "method":
            channel = 0 if a == 10 else 1
            c.send(w.frame(w.FRAME_METHOD, channel, w.method(a, b, data)))
        elif kind == "header":
            body = b"payload"
            c.send(w.frame(w.FRAME_METHOD, 1, w.basic_publish("amq.fanout", ""))
                   + w.content_header(1, len(body), a, data)
                   + w.frame(w.FRAME_BODY, 1, body))
        else:
            c.send(w.frame(a, 1, data))
        c.send(w.method_frame(2, 20, 10, w.short_str("")))
        result = c.outcome(timeout=5.0, until=is_sentinel_answer)
        if result[0] == "timeout":
            raise AssertionError(f"{label}: the broker neither answered channel.open on channel 2 nor closed "
                                 f"the connection within 5 s (frames: {result[1][:5]!r})")
        if result[0] == "close":
            outcomes.add(f"close {result[1].close_info()[0]}")
        else:
            outcomes.add(result[0])
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_amqp_random_arguments_for_every_method(broker, survives):
    with survives(broker, rss_growth_mib=64):
        cases = amqp_cases()
        outcomes = Tally()
        started = time.monotonic()
        chunks = [cases[i::8] for i in range(8)]

        def worker(chunk):
            def run():
                for case in chunk:
                    try:
                        send_amqp_case(broker.amqp_port, case, outcomes)
                    except (w.Closed, TimeoutError, OSError) as e:
                        raise AssertionError(f"{case[0]}: {e!r}") from e
                    if not broker.alive():
                        raise AssertionError(f"sluice died after {case[0]}; stderr:\n" + broker.tail())
            return run

        parallel([(f"worker {i}", worker(ch)) for i, ch in enumerate(chunks)], workers=8)
        print(f"amqp random: {len(cases)} cases in {time.monotonic() - started:.1f}s: {outcomes!r}")


# ---------------------------------------------------------------------------------------
# Structure-aware: mutations of well-formed requests and methods.

MUTANTS_PER_VERSION = 48
MUTANTS_PER_METHOD = 48
MUTANTS_CONTENT_HEADER = 512
MUTATION_TOPIC = "hostile-mut-topic"


@pytest.mark.timeout(120)
def test_kafka_mutated_requests_for_every_api_version(broker, survives):
    """Well-formed requests of every advertised api key and version (generated from
    Kafka's JSON message definitions), sent as they are and with one mutation each."""
    with survives(broker, rss_growth_mib=64):
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000, max_block_ms=10000)
        try:
            producer.send(MUTATION_TOPIC, b"seed").get(timeout=15)
        finally:
            producer.close(timeout=5)
        c = w.Kafka(broker.kafka_port)
        try:
            apis = c.api_versions()
        finally:
            c.close()
        schemas = gen.request_schemas()
        rng = random.Random(SEED + 1)
        cases = []
        for key, (lo, hi) in sorted(apis.items()):
            assert key in schemas, f"no message definition for advertised api key {key}"
            for version in range(lo, hi + 1):
                frame, header_len = gen.valid_request(schemas[key], version, 77, rng, MUTATION_TOPIC)
                cases.append((f"{key}v{version}/valid", frame))
                for i in range(MUTANTS_PER_VERSION):
                    cases.append((f"{key}v{version}/mutant{i}", gen.mutate(frame, header_len, rng)))
        outcomes = Tally()
        started = time.monotonic()

        def worker(chunk):
            def run():
                for label, frame in chunk:
                    send_kafka_frame(broker.kafka_port, label, frame, outcomes)
                    if not broker.alive():
                        raise AssertionError(f"sluice died after {label}; stderr:\n" + broker.tail())
            return run

        parallel([(f"worker {i}", worker(cases[i::16])) for i in range(16)], workers=16)
        print(f"kafka mutated: {len(cases)} requests in {time.monotonic() - started:.1f}s: {outcomes!r}")


def send_kafka_frame(port, label, frame, outcomes):
    s = w.tcp(port)
    try:
        w.send_quietly(s, frame)
        deadline = time.monotonic() + HOLD_GIVE_UP_S
        try:
            size = struct.unpack(">i", w.recv_exact(s, 4, deadline))[0]
            assert 4 <= size <= 64 * 1024 * 1024, f"{label}: implausible response size {size}"
            body = w.recv_exact(s, size, time.monotonic() + 5)
            corr = struct.unpack(">i", body[:4])[0]
            assert corr == 77, f"{label}: answered with correlation id {corr}"
            outcomes.add("answered")
        except w.Closed:
            outcomes.add("closed")
        except TimeoutError:
            outcomes.add("held")
    finally:
        s.close()


@pytest.mark.timeout(120)
def test_amqp_mutated_methods_and_content_headers(broker, survives):
    """Every method pika's spec can encode, with plausible arguments, sent as it is and
    with one mutation each; and a content header carrying every basic property, mutated."""
    rng = random.Random(SEED + 2)
    cases = []
    for cls, mid, name, args in w.pika_methods():
        cases.append((f"{name}/valid", "method", cls, mid, args))
        for i in range(MUTANTS_PER_METHOD):
            cases.append((f"{name}/mutant{i}", "method", cls, mid, w.mutate_bytes(args, rng)))
    props = w.pika_full_properties()
    flags = struct.unpack(">H", props[:2])[0]
    cases.append(("content-header/valid", "header", flags, None, props[2:]))
    for i in range(MUTANTS_CONTENT_HEADER):
        mutated = w.mutate_bytes(props, rng)
        if len(mutated) < 2:
            mutated = mutated + b"\x00\x00"
        mflags = struct.unpack(">H", mutated[:2])[0] & 0xFFFE
        cases.append((f"content-header/mutant{i}", "header", mflags, None, mutated[2:]))
    with survives(broker, rss_growth_mib=64):
        outcomes = Tally()
        started = time.monotonic()

        def worker(chunk):
            def run():
                for case in chunk:
                    try:
                        send_amqp_case(broker.amqp_port, case, outcomes)
                    except (w.Closed, TimeoutError, OSError) as e:
                        raise AssertionError(f"{case[0]}: {e!r}") from e
                    if not broker.alive():
                        raise AssertionError(f"sluice died after {case[0]}; stderr:\n" + broker.tail())
            return run

        parallel([(f"worker {i}", worker(cases[i::8])) for i in range(8)], workers=8)
        print(f"amqp mutated: {len(cases)} cases in {time.monotonic() - started:.1f}s: {outcomes!r}")
