"""A minimal hand-rolled Kafka wire-protocol client for the tests that real clients cannot
express: malformed frames, acks=0 response suppression, replayed idempotent batches.

Only non-flexible request versions are used (ApiVersions v0, Produce v3, InitProducerId
v0, ListOffsets v1), so no compact encodings or tagged fields are needed except in the
deliberately unsupported ApiVersions request. Layouts follow the Kafka protocol guide.
"""

import socket
import struct
import time

import crc32c

API_PRODUCE = 0
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18
API_INIT_PRODUCER_ID = 22

# Error codes (Kafka protocol guide, "Error Codes").
NONE = 0
CORRUPT_MESSAGE = 2
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46


# ---------------------------------------------------------------------------------------
# Primitive encoders.


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def u32(v):
    return struct.pack(">I", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def nbytes(b):
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items):
    items = list(items)
    return i32(len(items)) + b"".join(items)


def uvarint(v):
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(v):
    return uvarint((v << 1) ^ (v >> 63))  # zigzag


def compact_string(s):
    b = s.encode()
    return uvarint(len(b) + 1) + b


# ---------------------------------------------------------------------------------------
# Requests and responses.


def request(api_key, version, correlation_id, body=b"", client_id="compat-raw"):
    """A size-prefixed request with a v1 header (api key, version, correlation id,
    client id)."""
    payload = i16(api_key) + i16(version) + i32(correlation_id) + string(client_id) + body
    return i32(len(payload)) + payload


def api_versions_request(correlation_id, version=0):
    return request(API_API_VERSIONS, version, correlation_id)


def record_batch(records, base_offset=0, producer_id=-1, producer_epoch=-1, base_sequence=-1,
                 base_timestamp=None, transactional=False):
    """A v2 record batch (magic 2, no compression). `records` is a list of
    (key, value, headers) with bytes or None and headers a list of (str, bytes)."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    body = bytearray()
    for delta, (key, value, headers) in enumerate(records):
        rec = bytearray()
        rec += i8(0)  # attributes
        rec += varint(0)  # timestamp delta
        rec += varint(delta)  # offset delta
        for field in (key, value):
            if field is None:
                rec += varint(-1)
            else:
                rec += varint(len(field)) + field
        rec += varint(len(headers))
        for hk, hv in headers:
            hkb = hk.encode()
            rec += varint(len(hkb)) + hkb
            rec += varint(-1) if hv is None else varint(len(hv)) + hv
        body += varint(len(rec)) + rec
    after_crc = (
        i16(0x10 if transactional else 0)  # attributes: no compression, CreateTime
        + i32(len(records) - 1)  # last offset delta
        + i64(base_timestamp)
        + i64(base_timestamp)  # max timestamp
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(records))
        + bytes(body)
    )
    crc = crc32c.crc32c(after_crc)
    after_length = i32(0) + i8(2) + u32(crc) + after_crc  # leader epoch, magic, crc
    return i64(base_offset) + i32(len(after_length)) + after_length


def produce_request(correlation_id, topic, partition, batch, acks=-1, timeout_ms=10000,
                    transactional_id=None):
    """Produce v3: transactional id, acks, timeout, [topic, [partition, records]]."""
    body = (
        string(transactional_id)
        + i16(acks)
        + i32(timeout_ms)
        + array([string(topic) + array([i32(partition) + nbytes(batch)])])
    )
    return request(API_PRODUCE, 3, correlation_id, body)


def parse_produce_response(body):
    """Produce v3 response -> list of (topic, partition, error_code, base_offset)."""
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            partition, error, base_offset, _append_time = r.i32(), r.i16(), r.i64(), r.i64()
            out.append((topic, partition, error, base_offset))
    r.i32()  # throttle time
    return out


def init_producer_id_request(correlation_id, timeout_ms=60000):
    """InitProducerId v0 for an idempotent (non-transactional) producer."""
    return request(API_INIT_PRODUCER_ID, 0, correlation_id, string(None) + i32(timeout_ms))


def parse_init_producer_id_response(body):
    """-> (error_code, producer_id, producer_epoch)."""
    r = Reader(body)
    r.i32()  # throttle time
    return r.i16(), r.i64(), r.i16()


def list_offsets_request(correlation_id, topic, partition, timestamp):
    """ListOffsets v1: replica id -1, [topic, [partition, timestamp]]; -1 latest, -2 earliest."""
    body = i32(-1) + array([string(topic) + array([i32(partition) + i64(timestamp)])])
    return request(API_LIST_OFFSETS, 1, correlation_id, body)


def parse_list_offsets_response(body):
    """ListOffsets v1 response -> list of (topic, partition, error_code, offset)."""
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            partition, error, _ts, offset = r.i32(), r.i16(), r.i64(), r.i64()
            out.append((topic, partition, error, offset))
    return out


def parse_api_versions_v0(body):
    """ApiVersions v0 response -> (error_code, {api_key: (min, max)})."""
    r = Reader(body)
    error = r.i16()
    apis = {}
    for _ in range(r.i32()):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        apis[key] = (lo, hi)
    return error, apis


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

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


# ---------------------------------------------------------------------------------------
# Connections.


class Closed(Exception):
    """The server closed (or reset) the connection."""


class RawConnection:
    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def to(cls, bootstrap, timeout=5.0):
        host, port = bootstrap.rsplit(":", 1)
        return cls(host, int(port), timeout)

    def send(self, data):
        self.sock.sendall(data)

    def _recv_exact(self, n, deadline):
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete frame within the deadline ({len(buf)}/{n} bytes)")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError) as e:
                raise Closed(str(e))
            if not chunk:
                raise Closed("EOF")
            buf += chunk
        return bytes(buf)

    def read_response(self, timeout=5.0):
        """-> (correlation_id, body) of the next response frame (header v0). Raises Closed
        on EOF/reset, TimeoutError when nothing complete arrives in time."""
        deadline = time.monotonic() + timeout
        size = struct.unpack(">i", self._recv_exact(4, deadline))[0]
        assert 4 <= size <= 100 * 1024 * 1024, f"implausible response size {size}"
        frame = self._recv_exact(size, deadline)
        return struct.unpack(">i", frame[:4])[0], frame[4:]

    def read_response_after(self, data, timeout=5.0):
        """Sends `data` and returns the next response frame, whichever request it answers."""
        self.send(data)
        return self.read_response(timeout)

    def call(self, data, correlation_id, timeout=5.0):
        self.send(data)
        corr, body = self.read_response(timeout)
        assert corr == correlation_id, f"response correlation id {corr}, expected {correlation_id}"
        return body

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
