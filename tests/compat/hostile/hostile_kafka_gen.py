"""Well-formed Kafka requests of any api key and version, generated from Apache Kafka's
JSON message definitions (the copies kafka-python 3 ships), with plausible field values;
and mutations of them. Used by the structure-aware part of test_random_input.py: a
mutation of a valid request gets past the header and the first fields and reaches the
handlers, where pure random bytes rarely do.

Encoding follows the protocol guide: non-flexible versions use int16/int32 lengths and
counts, flexible versions compact (unsigned varint N+1) ones and a tagged-field section
after every struct; tagged fields themselves are left out (an empty section).
"""

import importlib.resources
import re
import struct
import time
import uuid

from kafka.protocol.schemas.load_json import load_json

import hostile_wire as w


def _versions(spec, v):
    if spec is None or spec == "none":
        return False
    m = re.fullmatch(r"(\d+)(\+|-(\d+))?", spec.strip())
    if not m:
        return False
    lo = int(m.group(1))
    if m.group(2) is None:
        return v == lo
    if m.group(2) == "+":
        return v >= lo
    return lo <= v <= int(m.group(3))


def request_schemas():
    """{api_key: schema json} for every request definition kafka-python carries."""
    out = {}
    package = "kafka.protocol.schemas.resources"
    for entry in importlib.resources.files(package).iterdir():
        name = entry.name
        if name.endswith("Request.json"):
            data = load_json(name[:-5], package)
            if data.get("type") == "request" and "apiKey" in data:
                out[data["apiKey"]] = data
    return out


class Values:
    """Plausible field values, drawn from a seeded generator."""

    def __init__(self, rng, topic):
        self.rng = rng
        self.topic = topic

    def string(self, name):
        n = name.lower()
        if "topic" in n or n == "name" or n == "resourcename":
            return self.rng.choice([self.topic, self.topic, f"hostile-mut-{self.rng.randrange(8)}", ""])
        if "group" in n:
            return self.rng.choice(["hostile-group", "hostile-group-2", ""])
        if "member" in n or "instance" in n:
            return self.rng.choice(["", "member-1", None])
        if "protocol" in n:
            return self.rng.choice(["consumer", "range", "roundrobin"])
        if "config" in n or n == "key":
            return self.rng.choice(["retention.ms", "cleanup.policy", "max.message.bytes", "segment.bytes", "x"])
        if n == "value":
            return self.rng.choice(["1000", "compact", "delete", "-1", "", None])
        return self.rng.choice(["hostile", "", "x" * self.rng.randrange(0, 40)])

    def int_(self, bits, name):
        n = name.lower()
        if "partitions" in n or "count" in n or "replication" in n:
            return self.rng.choice([-1, 0, 1, 2, 3])
        if "timeout" in n or "wait" in n:
            return self.rng.choice([0, 10, 100, 500])
        if "bytes" in n:
            return self.rng.choice([0, 1, 1024, 1 << 20])
        choices = [0, 1, -1, 2, 1000]
        if self.rng.random() < 0.1:
            choices.append((1 << (bits - 1)) - 1)
        return self.rng.choice(choices)


class Encoder:
    def __init__(self, version, flexible, values, rng):
        self.v = version
        self.flex = flexible
        self.values = values
        self.rng = rng

    def struct_(self, fields):
        out = bytearray()
        for f in fields:
            if not _versions(f.get("versions"), self.v):
                continue
            if _versions(f.get("taggedVersions"), self.v):
                continue  # tagged fields are optional: left out
            out += self.field(f)
        if self.flex:
            out += b"\x00"  # no tagged fields
        return bytes(out)

    def nullable(self, f):
        return _versions(f.get("nullableVersions"), self.v)

    def length(self, n, null=False, compact_kind="string"):
        if self.flex:
            return b"\x00" if null else w.uvarint(n + 1)
        if compact_kind == "string":
            return w.i16(-1) if null else w.i16(n)
        return w.i32(-1) if null else w.i32(n)

    def field(self, f):
        t = f["type"]
        name = f.get("name", "")
        if t.startswith("[]"):
            elem = t[2:]
            n = self.rng.choice([0, 1, 1, 2])
            if self.nullable(f) and self.rng.random() < 0.1:
                return self.length(0, null=True, compact_kind="array")
            items = b"".join(self.elem(elem, f, name) for _ in range(n))
            return self.length(n, compact_kind="array") + items
        return self.elem(t, f, name)

    def elem(self, t, f, name):
        v = self.values
        if t == "int8":
            return w.i8(max(-128, min(127, v.int_(8, name))))
        if t == "int16":
            return w.i16(max(-32768, min(32767, v.int_(16, name))))
        if t == "uint16":
            return struct.pack(">H", abs(v.int_(16, name)) & 0xFFFF)
        if t == "int32":
            return w.i32(v.int_(32, name))
        if t == "int64":
            return w.i64(v.int_(64, name))
        if t == "float64":
            return struct.pack(">d", self.rng.choice([0.0, 1.5, -1.0]))
        if t == "bool":
            return bytes([self.rng.randrange(2)])
        if t == "uuid":
            return self.rng.choice([b"\x00" * 16, uuid.UUID(int=self.rng.getrandbits(128)).bytes])
        if t == "string":
            s = v.string(name)
            if s is None and not self.nullable(f):
                s = ""
            if s is None:
                return self.length(0, null=True)
            b = s.encode()
            return self.length(len(b)) + b
        if t in ("bytes", "records"):
            if t == "records":
                data = w.record_batch([(b"k", b"mutated")], base_timestamp=int(time.time() * 1000))
            else:
                data = self.rng.randbytes(self.rng.randrange(0, 24))
            if self.flex:
                return w.uvarint(len(data) + 1) + data
            return w.i32(len(data)) + data
        # A struct type (its fields inline, or resolved from commonStructs).
        if "fields" in f:
            return self.struct_(f["fields"])
        raise ValueError(f"unknown field type {t!r}")


def valid_request(schema, version, correlation_id, rng, topic):
    """A whole request frame: size prefix, header (v1 or v2 by the schema's flexible
    versions), body."""
    flexible = _versions(schema.get("flexibleVersions"), version)
    body = Encoder(version, flexible, Values(rng, topic), rng).struct_(schema["fields"])
    payload = w.request_header(schema["apiKey"], version, correlation_id, flexible=flexible) + body
    return w.i32(len(payload)) + payload, len(payload) - len(body)


def mutate(frame, header_len, rng):
    """One mutation of a request frame (see hostile_wire.mutate_bytes), leaving the
    header intact; the size prefix is recomputed where the length changes."""
    head = frame[4:4 + header_len]
    payload = head + w.mutate_bytes(frame[4 + header_len:], rng)
    return w.i32(len(payload)) + payload
