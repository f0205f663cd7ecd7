"""Raw AMQP 0-9-1 and Kafka wire helpers for the hostile-input suite: just enough of both
protocols to build frames that real clients never send (nested 18,000 deep, lying
lengths and counts, random argument bytes) and to read what the broker answers.

Named hostile_wire (not kafka_wire or amqp_*) so that this suite can be collected in one
pytest run with tests/compat/amqp and tests/compat/kafka without modules shadowing each
other. Layouts follow the AMQP 0-9-1 specification (section 4.2 and the XML class
definitions) and the Kafka protocol guide.
"""

import os
import socket
import struct
import sys
import time

import crc32c

# The Kafka suite's wire primitives (big-endian integers, arrays, varints).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kafka"))
from kafka_wire import array, i8, i16, i32, i64, nbytes, u32, uvarint, varint  # noqa: E402

HOST = "127.0.0.1"

# ---------------------------------------------------------------------------------------
# Shared: reading with deadlines.


class Closed(Exception):
    """The peer closed (EOF) or reset the connection."""


def recv_exact(sock, n, deadline):
    """Exactly n bytes before `deadline` (monotonic); Closed on EOF/reset, TimeoutError
    when the deadline passes first."""
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(buf)}/{n} bytes before the deadline")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
            raise Closed(type(e).__name__)
        if not chunk:
            raise Closed("EOF")
        buf += chunk
    return bytes(buf)


def send_quietly(sock, data):
    """sendall that treats a reset or closed peer as 'the broker already hung up'.
    Returns False when the send failed that way."""
    try:
        sock.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return False
    except socket.timeout:
        return False


def wait_closed(sock, timeout):
    """Reads and discards until EOF/reset; -> (seconds waited, bytes received). Raises
    TimeoutError if the peer keeps the connection open past `timeout`."""
    start = time.monotonic()
    deadline = start + timeout
    got = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connection still open after {timeout}s ({len(got)} bytes received)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            return time.monotonic() - start, bytes(got)
        if not chunk:
            return time.monotonic() - start, bytes(got)
        got += chunk


def tcp(port, timeout=5.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def mutate_bytes(data, rng):
    """One random mutation of well-formed bytes: a few bytes flipped, a 4- or 2-byte
    window turned into a huge or negative length, truncation, a slice repeated, or a
    varint that never ends inserted."""
    body = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and body:
        for _ in range(rng.randrange(1, 5)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif kind == 1 and len(body) >= 4:
        at = rng.randrange(len(body) - 3)
        body[at:at + 4] = rng.choice([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00"])
    elif kind == 2 and len(body) >= 2:
        at = rng.randrange(len(body) - 1)
        body[at:at + 2] = rng.choice([b"\x7f\xff", b"\xff\xfe", b"\x80\x00"])
    elif kind == 3 and body:
        del body[rng.randrange(len(body)):]
    elif kind == 4 and body:
        at = rng.randrange(len(body))
        body[at:at] = body[at:at + rng.randrange(1, 32)] * rng.randrange(1, 4)
    else:
        at = rng.randrange(len(body) + 1)
        body[at:at] = b"\xff" * rng.randrange(5, 12)
    return bytes(body)


# ---------------------------------------------------------------------------------------
# AMQP 0-9-1 encoding.

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

# Reply codes.
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

# Every method of AMQP 0-9-1 (class id -> method ids), both directions.
AMQP_METHODS = {
    10: [10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61],  # connection (+ blocked/unblocked)
    20: [10, 11, 20, 21, 40, 41],  # channel
    30: [10, 11],  # access
    40: [10, 11, 20, 21, 30, 31, 40, 51],  # exchange
    50: [10, 11, 20, 21, 30, 31, 40, 41, 50, 51],  # queue
    60: [10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120],  # basic
    85: [10, 11],  # confirm
    90: [10, 11, 20, 21, 30, 31],  # tx
}


def short_str(s):
    b = s.encode() if isinstance(s, str) else s
    return bytes([len(b)]) + b


def long_str(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack(">I", len(b)) + b


def table(entries):
    """A field table from [(key, type-tagged value bytes)]."""
    body = b"".join(short_str(k) + v for k, v in entries)
    return struct.pack(">I", len(body)) + body


def nested_table(depth):
    """A field table `depth` levels deep (the outermost is level 1): {'a': {'a': ... {}}}.
    Each level costs 7 bytes."""
    t = table([])
    for _ in range(depth - 1):
        t = table([("a", b"F" + t)])
    return t


def nested_array(depth):
    """A field array `depth` levels deep: [[[...[]...]]]. Each level costs 5 bytes."""
    a = struct.pack(">I", 0)
    for _ in range(depth - 1):
        body = b"A" + a
        a = struct.pack(">I", len(body)) + body
    return a


def nested_mixed(depth):
    """Tables and arrays alternating, `depth` levels in all, outermost a table."""
    v = table([]) if depth % 2 == 1 else struct.pack(">I", 0)
    for level in range(depth - 1, 0, -1):
        if level % 2 == 1:  # a table holding the array below
            v = table([("a", b"A" + v)])
        else:  # an array holding the table below
            body = b"F" + v
            v = struct.pack(">I", len(body)) + body
    return v


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([FRAME_END])


def method(class_id, method_id, args=b""):
    return struct.pack(">HH", class_id, method_id) + args


def method_frame(channel, class_id, method_id, args=b""):
    return frame(FRAME_METHOD, channel, method(class_id, method_id, args))


def content_header(channel, body_size, flags=0, props=b"", class_id=60):
    return frame(FRAME_HEADER, channel, struct.pack(">HHQH", class_id, 0, body_size, flags) + props)


HEADERS_FLAG = 0x2000  # basic properties: `headers` (field table) present


def start_ok(client_properties, user="guest", password="guest", mechanism="PLAIN"):
    response = b"\0" + user.encode() + b"\0" + password.encode()
    return method(10, 11, client_properties + short_str(mechanism) + long_str(response) + short_str("en_US"))


def _args(arguments):
    return arguments if arguments is not None else table([])


def queue_declare(name, arguments=None, durable=False, exclusive=False, auto_delete=False):
    bits = (durable << 1) | (exclusive << 2) | (auto_delete << 3)
    return method(50, 10, b"\0\0" + short_str(name) + bytes([bits]) + _args(arguments))


def exchange_declare(name, kind="direct", arguments=None):
    return method(40, 10, b"\0\0" + short_str(name) + short_str(kind) + b"\0" + _args(arguments))


def exchange_bind(destination, source, key, arguments=None):
    return method(40, 30, b"\0\0" + short_str(destination) + short_str(source) + short_str(key) + b"\0"
                  + _args(arguments))


def queue_bind(queue, exchange, key, arguments=None):
    return method(50, 20, b"\0\0" + short_str(queue) + short_str(exchange) + short_str(key) + b"\0" + _args(arguments))


def basic_consume(queue, tag="", arguments=None):
    return method(60, 20, b"\0\0" + short_str(queue) + short_str(tag) + b"\0" + _args(arguments))


def basic_publish(exchange, routing_key):
    return method(60, 40, b"\0\0" + short_str(exchange) + short_str(routing_key) + b"\0")


def basic_get(queue, no_ack=True):
    return method(60, 70, b"\0\0" + short_str(queue) + bytes([1 if no_ack else 0]))


# ---------------------------------------------------------------------------------------
# AMQP connections.


class AmqpFrame:
    def __init__(self, kind, channel, payload):
        self.kind, self.channel, self.payload = kind, channel, payload

    @property
    def class_method(self):
        if self.kind != FRAME_METHOD or len(self.payload) < 4:
            return None
        return struct.unpack(">HH", self.payload[:4])

    def close_info(self):
        """(reply code, reply text, class id, method id) of a connection.close or
        channel.close, else None."""
        if self.class_method not in ((10, 50), (20, 40)):
            return None
        p = self.payload
        code = struct.unpack(">H", p[4:6])[0]
        n = p[6]
        text = p[7:7 + n].decode("utf-8", "replace")
        cls, mid = struct.unpack(">HH", p[7 + n:11 + n])
        return code, text, cls, mid

    def __repr__(self):
        info = self.close_info()
        if info:
            what = "connection.close" if self.class_method == (10, 50) else "channel.close"
            return f"<{what} ch{self.channel} {info[0]} {info[1]!r} during {info[2]}.{info[3]}>"
        if self.class_method:
            return f"<method {self.class_method[0]}.{self.class_method[1]} ch{self.channel}>"
        return f"<frame type {self.kind} ch{self.channel} {len(self.payload)} bytes>"


class Amqp:
    """A raw AMQP connection with a deadline on every read."""

    def __init__(self, port, timeout=5.0):
        self.sock = tcp(port, timeout)
        self.port = port

    def send(self, data):
        return send_quietly(self.sock, data)

    def read_frame(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        kind, channel, size = struct.unpack(">BHI", recv_exact(self.sock, 7, deadline))
        assert size <= 16 * 1024 * 1024, f"implausible frame size {size} from the broker"
        body = recv_exact(self.sock, size + 1, deadline)
        assert body[-1] == FRAME_END, "frame from the broker without its end octet"
        return AmqpFrame(kind, channel, body[:-1])

    def expect_method(self, class_id, method_id, timeout=5.0):
        f = self.read_frame(timeout)
        assert f.class_method == (class_id, method_id), f"expected {class_id}.{method_id}, got {f!r}"
        return f

    def handshake_start(self):
        """Protocol header; -> the connection.start frame."""
        self.sock.sendall(AMQP_HEADER)
        return self.expect_method(10, 10)

    def login(self, frame_max=131072, channel_max=2047, heartbeat=0, vhost="/"):
        self.handshake_start()
        self.sock.sendall(frame(FRAME_METHOD, 0, start_ok(table([]))))
        self.expect_method(10, 30)  # tune
        self.sock.sendall(method_frame(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, heartbeat)))
        self.sock.sendall(method_frame(0, 10, 40, short_str(vhost) + short_str("") + b"\0"))
        self.expect_method(10, 41)  # open-ok
        return self

    def open_channel(self, channel=1):
        self.sock.sendall(method_frame(channel, 20, 10, short_str("")))
        self.expect_method(20, 11)
        return self

    def outcome(self, timeout=5.0, until=None):
        """Reads until the broker closes the connection, sends connection.close, or
        `until(frame)` is true. -> ('close', frame) | ('eof', seconds, frames) |
        ('until', frame) | ('timeout', frames). A connection.close is answered with
        close-ok."""
        start = time.monotonic()
        deadline = start + timeout
        frames = []
        while True:
            try:
                f = self.read_frame(max(0.0, deadline - time.monotonic()))
            except Closed:
                return ("eof", time.monotonic() - start, frames)
            except TimeoutError:
                return ("timeout", frames)
            frames.append(f)
            if f.class_method == (10, 50):
                self.send(method_frame(0, 10, 51))
                return ("close", f)
            if until is not None and until(f):
                return ("until", f)

    def expect_connection_close(self, code, text_prefix=None, timeout=5.0):
        result = self.outcome(timeout)
        assert result[0] == "close", f"expected connection.close {code}, got {result!r}"
        f = result[1]
        got_code, text, _, _ = f.close_info()
        assert got_code == code, f"expected reply code {code}, got {f!r}"
        if text_prefix is not None:
            assert text.startswith(text_prefix), f"expected text starting {text_prefix!r}, got {f!r}"
        return f

    def expect_silent_close(self, timeout=10.0, min_delay=None):
        """The broker closes the socket without a method frame (before connection.open).
        -> seconds it took."""
        result = self.outcome(timeout)
        assert result[0] == "eof", f"expected the socket closed without a close method, got {result!r}"
        assert not result[2], f"expected no frames before the socket closed, got {result[2]!r}"
        if min_delay is not None:
            assert result[1] >= min_delay, (
                f"socket closed after {result[1]:.2f}s, expected the silent-close delay (>= {min_delay}s)")
        return result[1]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Kafka encoding.

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19

CORRUPT_MESSAGE = 2
INVALID_RECORD = 87

# First flexible version of each API (Apache Kafka's JSON message definitions,
# "flexibleVersions"); None: no flexible version. Flexible requests use request header v2
# (client id, then tagged fields), the others header v1.
FLEXIBLE_FROM = {
    0: 9,  # Produce
    1: 12,  # Fetch
    2: 6,  # ListOffsets
    3: 9,  # Metadata
    4: 4,  # LeaderAndIsr
    5: 2,  # StopReplica
    6: 6,  # UpdateMetadata
    7: 3,  # ControlledShutdown
    8: 8,  # OffsetCommit
    9: 6,  # OffsetFetch
    10: 3,  # FindCoordinator
    11: 6,  # JoinGroup
    12: 4,  # Heartbeat
    13: 4,  # LeaveGroup
    14: 4,  # SyncGroup
    15: 5,  # DescribeGroups
    16: 3,  # ListGroups
    17: None,  # SaslHandshake
    18: 3,  # ApiVersions
    19: 5,  # CreateTopics
    20: 4,  # DeleteTopics
    21: 2,  # DeleteRecords
    22: 2,  # InitProducerId
    23: 4,  # OffsetForLeaderEpoch
    24: 3,  # AddPartitionsToTxn
    25: 3,  # AddOffsetsToTxn
    26: 3,  # EndTxn
    27: 1,  # WriteTxnMarkers
    28: 3,  # TxnOffsetCommit
    29: 2,  # DescribeAcls
    30: 2,  # CreateAcls
    31: 2,  # DeleteAcls
    32: 4,  # DescribeConfigs
    33: 2,  # AlterConfigs
    34: 2,  # AlterReplicaLogDirs
    35: 2,  # DescribeLogDirs
    36: 2,  # SaslAuthenticate
    37: 2,  # CreatePartitions
    38: 2,  # CreateDelegationToken
    39: 2,  # RenewDelegationToken
    40: 2,  # ExpireDelegationToken
    41: 2,  # DescribeDelegationToken
    42: 2,  # DeleteGroups
    43: 2,  # ElectLeaders
    44: 1,  # IncrementalAlterConfigs
    45: 0,  # AlterPartitionReassignments
    46: 0,  # ListPartitionReassignments
    47: None,  # OffsetDelete
    48: 1,  # DescribeClientQuotas
    49: 1,  # AlterClientQuotas
    50: 0,  # DescribeUserScramCredentials
    51: 0,  # AlterUserScramCredentials
    60: 0,  # DescribeCluster
    61: 0,  # DescribeProducers
}


def kstring(s):
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def compact_string(s):
    b = s.encode() if isinstance(s, str) else s
    return uvarint(len(b) + 1) + b


def compact_array(items):
    items = list(items)
    return uvarint(len(items) + 1) + b"".join(items)


TAGS_NONE = b"\x00"


def header_version(api_key, version):
    flexible_from = FLEXIBLE_FROM.get(api_key)
    return 2 if flexible_from is not None and version >= flexible_from else 1


def request_header(api_key, version, correlation_id, client_id="hostile", flexible=None):
    """Request header v1 (api key, version, correlation id, client id), or v2 (the same
    plus an empty tagged-field section) when `flexible` (default: from FLEXIBLE_FROM)."""
    if flexible is None:
        flexible = header_version(api_key, version) == 2
    h = i16(api_key) + i16(version) + i32(correlation_id) + kstring(client_id)
    return h + TAGS_NONE if flexible else h


def request(api_key, version, correlation_id, body=b"", flexible=None):
    payload = request_header(api_key, version, correlation_id, flexible=flexible) + body
    return i32(len(payload)) + payload


def record_batch(records, base_timestamp=None, count=None, last_offset_delta=None, length_delta=0,
                 record_length_delta=0, crc=None):
    """A v2 record batch (magic 2, no compression) of (key, value) records. The lying
    knobs: `count` (record count field), `last_offset_delta`, `length_delta` (added to
    batchLength), `record_length_delta` (added to each record's length varint), `crc`
    (stored instead of the right one). The CRC is computed over the lying fields, so
    only a broker that reads the records themselves can tell."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    body = bytearray()
    for delta, (key, value) in enumerate(records):
        rec = bytearray()
        rec += i8(0)  # attributes
        rec += varint(0)  # timestamp delta
        rec += varint(delta)  # offset delta
        for field in (key, value):
            rec += varint(-1) if field is None else varint(len(field)) + field
        rec += varint(0)  # headers
        body += varint(len(rec) + record_length_delta) + rec
    n = len(records) if count is None else count
    lod = (len(records) - 1) if last_offset_delta is None else last_offset_delta
    after_crc = (
        i16(0)  # attributes
        + i32(lod)
        + i64(base_timestamp)
        + i64(base_timestamp)
        + i64(-1)  # producer id
        + i16(-1)  # producer epoch
        + i32(-1)  # base sequence
        + i32(n)
        + bytes(body)
    )
    the_crc = crc32c.crc32c(after_crc) if crc is None else crc
    after_length = i32(0) + i8(2) + u32(the_crc) + after_crc
    return i64(0) + i32(len(after_length) + length_delta) + after_length


def produce_v3(correlation_id, topic, partition, records_bytes, acks=-1, timeout_ms=5000):
    partitions = array([i32(partition) + nbytes(records_bytes)])
    body = kstring(None) + i16(acks) + i32(timeout_ms) + array([kstring(topic) + partitions])
    return request(API_PRODUCE, 3, correlation_id, body)


def parse_produce_v3(body):
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            partition, error, base_offset, _t = r.i32(), r.i16(), r.i64(), r.i64()
            out.append((topic, partition, error, base_offset))
    return out


def list_offsets_v1(correlation_id, topic, partition, timestamp=-1):
    body = i32(-1) + array([kstring(topic) + array([i32(partition) + i64(timestamp)])])
    return request(API_LIST_OFFSETS, 1, correlation_id, body)


def parse_list_offsets_v1(body):
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            partition, error, _ts, offset = r.i32(), r.i16(), r.i64(), r.i64()
            out.append((topic, partition, error, offset))
    return out


def metadata_v1(correlation_id, topics):
    return request(API_METADATA, 1, correlation_id, array(kstring(t) for t in topics))


def parse_api_versions_v0(body):
    r = Reader(body)
    error = r.i16()
    apis = {}
    for _ in range(r.i32()):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        apis[key] = (lo, hi)
    return error, apis


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"response truncated at {self.pos} (+{n}) of {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()


class Kafka:
    """A raw Kafka connection with a deadline on every read."""

    def __init__(self, port, timeout=5.0):
        self.sock = tcp(port, timeout)
        self.port = port

    def send(self, data):
        return send_quietly(self.sock, data)

    def read_response(self, timeout=5.0):
        """-> (correlation id, body); Closed on EOF/reset, TimeoutError if nothing
        complete arrives in time."""
        deadline = time.monotonic() + timeout
        size = struct.unpack(">i", recv_exact(self.sock, 4, deadline))[0]
        assert 4 <= size <= 64 * 1024 * 1024, f"implausible response size {size}"
        frame = recv_exact(self.sock, size, deadline)
        return struct.unpack(">i", frame[:4])[0], frame[4:]

    def call(self, data, correlation_id, timeout=5.0):
        self.sock.sendall(data)
        corr, body = self.read_response(timeout)
        assert corr == correlation_id, f"response correlation id {corr}, expected {correlation_id}"
        return body

    def closed_or_answered(self, timeout=5.0):
        """'closed', or ('answered', correlation id, body). Raises TimeoutError if the
        broker does neither in time."""
        try:
            corr, body = self.read_response(timeout)
        except Closed:
            return "closed"
        return ("answered", corr, body)

    def api_versions(self):
        error, apis = parse_api_versions_v0(self.call(request(API_API_VERSIONS, 0, 1), 1))
        assert error == 0, f"ApiVersions error {error}"
        return apis

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Well-formed AMQP methods and content headers, encoded by pika's spec (for mutation).


def _pika_value(name):
    if name in ("arguments", "client_properties", "server_properties"):
        return {"x-hostile": 1, "nested": {"a": [1, "b", {"c": None}], "d": True}}
    if name in ("reply_code", "class_id", "method_id", "message_count", "consumer_count", "delivery_tag"):
        return 1
    if name == "response":
        return "\0guest\0guest"
    return "hostile.mut"


def pika_methods():
    """[(class id, method id, name, argument bytes)] for every method pika's spec knows,
    with plausible arguments."""
    import inspect

    import pika.spec as spec

    out = []
    for index, cls in sorted(spec.methods.items()):
        kw = {}
        for name, p in list(inspect.signature(cls.__init__).parameters.items())[1:]:
            if p.default is inspect.Parameter.empty or p.default is None:
                kw[name] = _pika_value(name)
        try:
            args = b"".join(cls(**kw).encode())
        except Exception:  # noqa: BLE001 - a method pika cannot encode is left out
            continue
        out.append((index >> 16, index & 0xFFFF, cls.NAME, args))
    return out


def pika_full_properties():
    """Every basic property set, encoded by pika: (flags and property bytes)."""
    import pika.spec as spec

    props = spec.BasicProperties(
        content_type="text/plain", content_encoding="gzip",
        headers={"a": 1, "b": [1, 2, {"c": "d"}], "t": {"u": b"bytes"}},
        delivery_mode=2, priority=5, correlation_id="c", reply_to="r", expiration="60000",
        message_id="m", timestamp=1700000000, type="t", user_id="guest", app_id="a", cluster_id="x",
    )
    return b"".join(props.encode())
