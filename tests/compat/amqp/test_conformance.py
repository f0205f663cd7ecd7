"""Conformance: RabbitMQ 3.10.8's exact answers on the error and negotiation paths of the
connection, channel and basic classes.

Most cases drive a hand-built client over a plain socket (struct-built frames): pika cannot
send malformed or out-of-order frames, and only the wire shows a close's class / method ids
and when the socket goes away. Each case pins the reply code, reply text and class.method
of the connection.close / channel.close, or that no close is sent at all, and how long after
the offending frame the socket is closed.

RabbitMQ answers in four shapes:

- hard error once the connection is open: connection.close on channel 0 at once; it then
  waits for close-ok (it would wait ~30 s) and closes the socket as soon as it arrives;
- soft error: channel.close on that channel; the connection stays up;
- anything wrong before connection.open (a tune-ok it does not accept, a bad start-ok, a
  wrong password from a client without the authentication_failure_close capability,
  garbage): no close method at all; the socket is closed 3 s later (its
  SILENT_CLOSE_DELAY, to slow down abusive clients);
- framing errors after which the frame boundary is lost (no 0xCE frame-end octet, a frame
  above frame_max): connection.close 501 at once, then the socket is closed 3 s later
  whether or not the client answered close-ok.

An unknown class or method id crashes RabbitMQ's reader process: the socket is closed at
once with no close method.

The ~3 s cases all run concurrently, once per module (the `delayed` fixture), so they cost
about 3 s together rather than 3 s each.
"""

import concurrent.futures
import socket
import struct
import time
import urllib.parse
import uuid
from typing import NamedTuple, Optional

import pika
import pytest

from helpers import params_for, pump

# ---------------------------------------------------------------------------------------
# Wire format.

METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
SILENT_CLOSE_DELAY = (2.5, 4.5)  # RabbitMQ: 3.0 s, measured from the offending frame
AT_ONCE = 1.0  # "immediately": the socket closes within this many seconds


def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return bytes([len(b)]) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def table(*entries):
    """entries: (key, encoded value with its type octet)."""
    body = b"".join(shortstr(k) + v for k, v in entries)
    return struct.pack(">I", len(body)) + body


def flag(value):
    return b"t" + bytes([bool(value)])


def bits(*flags):
    return bytes([sum(1 << i for i, f in enumerate(flags) if f)])


def frame(kind, channel, payload, end=b"\xce"):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + end


def method(channel, class_id, method_id, args=b""):
    return frame(METHOD, channel, struct.pack(">HH", class_id, method_id) + args)


def header(channel, body_size, class_id=60, weight=0, flags=0, props=b""):
    return frame(HEADER, channel, struct.pack(">HHQH", class_id, weight, body_size, flags) + props)


def body(channel, data):
    return frame(BODY, channel, data)


CAPABILITIES = table(
    (
        "capabilities",
        b"F"
        + table(
            ("authentication_failure_close", flag(True)),
            ("basic.nack", flag(True)),
            ("consumer_cancel_notify", flag(True)),
            ("publisher_confirms", flag(True)),
        ),
    )
)
NO_CAPABILITIES = table()


def start_ok_args(properties=CAPABILITIES, mechanism="PLAIN", response=b"\0guest\0guest",
                  locale="en_US"):
    return properties + shortstr(mechanism) + longstr(response) + shortstr(locale)


def start_ok(properties=CAPABILITIES, user="guest", password="guest", **kw):
    response = b"\0" + user.encode() + b"\0" + password.encode()
    return method(0, 10, 11, start_ok_args(properties, response=response, **kw))


def tune_ok(channel_max, frame_max, heartbeat):
    return method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, heartbeat))


def connection_open(vhost="/", insist=False):
    return method(0, 10, 40, shortstr(vhost) + shortstr("") + bits(insist))


def connection_close(code=200, text="bye"):
    return method(0, 10, 50, struct.pack(">H", code) + shortstr(text) + struct.pack(">HH", 0, 0))


CONNECTION_CLOSE_OK = method(0, 10, 51)


def channel_open(ch):
    return method(ch, 20, 10, shortstr(""))


def channel_close(ch, code=200, text="bye"):
    return method(ch, 20, 40, struct.pack(">H", code) + shortstr(text) + struct.pack(">HH", 0, 0))


def channel_close_ok(ch):
    return method(ch, 20, 41)


def channel_flow(ch, active):
    return method(ch, 20, 20, bits(active))


def exchange_declare(ch, name, kind="direct", passive=False):
    return method(ch, 40, 10, b"\0\0" + shortstr(name) + shortstr(kind) + bits(passive) + table())


def queue_declare(ch, name, passive=False, durable=False, exclusive=False, auto_delete=False,
                  nowait=False, arguments=None):
    args = table() if arguments is None else arguments
    flags = bits(passive, durable, exclusive, auto_delete, nowait)
    return method(ch, 50, 10, b"\0\0" + shortstr(name) + flags + args)


def basic_qos(ch, prefetch_size=0, prefetch_count=0, global_=False):
    return method(ch, 60, 10, struct.pack(">IH", prefetch_size, prefetch_count) + bits(global_))


def basic_consume(ch, queue, tag="", no_local=False, no_ack=False, exclusive=False, nowait=False):
    flags = bits(no_local, no_ack, exclusive, nowait)
    return method(ch, 60, 20, b"\0\0" + shortstr(queue) + shortstr(tag) + flags + table())


def basic_publish(ch, exchange, routing_key, mandatory=False, immediate=False):
    args = b"\0\0" + shortstr(exchange) + shortstr(routing_key) + bits(mandatory, immediate)
    return method(ch, 60, 40, args)


def publish(ch, exchange, routing_key, data, **flags):
    """basic.publish with its content header and one body frame."""
    return (basic_publish(ch, exchange, routing_key, **flags) + header(ch, len(data))
            + body(ch, data))


def basic_ack(ch, tag, multiple=False, class_method=(60, 80)):
    return method(ch, *class_method, struct.pack(">Q", tag) + bits(multiple))


def unique(prefix="conf"):
    return f"compat.conformance.{prefix}.{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------
# A hand-driven client.


class Frame(NamedTuple):
    kind: int
    channel: int
    payload: bytes

    @property
    def class_method(self):
        if self.kind != METHOD or len(self.payload) < 4:
            return None
        return struct.unpack(">HH", self.payload[:4])

    @property
    def args(self):
        return self.payload[4:]


class Close(NamedTuple):
    """A connection.close (on channel 0) or channel.close as received."""

    channel: int
    code: int
    text: str
    class_id: int
    method_id: int


def as_close(f):
    if f.class_method not in ((10, 50), (20, 40)):
        return None
    a = f.args
    code, n = struct.unpack(">HB", a[:3])
    text = a[3 : 3 + n].decode("utf-8", "replace")
    class_id, method_id = struct.unpack(">HH", a[3 + n : 7 + n])
    return Close(f.channel, code, text, class_id, method_id)


def describe(f):
    close = as_close(f)
    if close:
        kind = "connection.close" if close.channel == 0 else "channel.close"
        ids = f"{close.class_id}.{close.method_id}"
        return f"{kind} ch{close.channel} {close.code} {close.text!r} {ids}"
    if f.class_method:
        return "method %d.%d ch%d" % (f.class_method + (f.channel,))
    return f"frame type {f.kind} ch{f.channel} {f.payload[:32]!r}"


class Outcome(NamedTuple):
    """What the server did after our last frame: what it sent (heartbeats left out) and
    when (seconds after that frame) it closed the socket; None if it was still open."""

    frames: list
    closed_after: Optional[float]

    @property
    def closes(self):
        return [as_close(f) for f in self.frames if as_close(f)]

    def __repr__(self):
        sent = "; ".join(describe(f) for f in self.frames) or "nothing"
        if self.closed_after is None:
            when = "still open"
        else:
            when = f"closed after {self.closed_after:.2f} s"
        return f"<server sent {sent}; socket {when}>"


def host_port(url):
    u = urllib.parse.urlparse(url)
    return u.hostname, u.port or 5672


class Raw:
    """An AMQP 0-9-1 client driven frame by frame; heartbeat 0 unless asked."""

    def __init__(self, broker):
        self.sock = socket.create_connection(host_port(broker.url), timeout=5)
        self.buf = b""
        self.eof = False
        self.sent_at = time.monotonic()
        self.offered = None  # (channel_max, frame_max, heartbeat) from connection.tune

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *chunks):
        self.sent_at = time.monotonic()
        self.sock.sendall(b"".join(chunks))

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.eof = True
                return False
            self.buf += chunk
        return True

    def read(self, timeout=5.0):
        """The next frame, None once the server closed the socket; TimeoutError if none."""
        deadline = time.monotonic() + timeout
        if not self._fill(7, deadline):
            return None
        kind, channel, size = struct.unpack(">BHI", self.buf[:7])
        if not self._fill(7 + size + 1, deadline):
            return None
        payload, end = self.buf[7 : 7 + size], self.buf[7 + size]
        self.buf = self.buf[8 + size :]
        assert end == 0xCE, f"server frame without frame-end octet: {kind} {channel} {payload!r}"
        return Frame(kind, channel, payload)

    def next(self, timeout=5.0):
        """The next frame other than a heartbeat; fails on a timeout or a closed socket."""
        while True:
            try:
                f = self.read(timeout)
            except TimeoutError:
                raise AssertionError(f"nothing from the server within {timeout}s") from None
            assert f is not None, "the server closed the socket"
            if f.kind != HEARTBEAT:
                return f

    def expect(self, channel, class_id, method_id, timeout=5.0):
        """Reads the next frame, which must be this method; returns its arguments."""
        f = self.next(timeout)
        assert (f.channel, f.class_method) == (channel, (class_id, method_id)), (
            f"expected method {class_id}.{method_id} on ch{channel}, got {describe(f)}"
        )
        return f.args

    def outcome(self, timeout=5.0, close_ok=True):
        """Reads until the server closes the socket or `timeout` passes after our last frame;
        answers a connection.close with close-ok unless told not to."""
        frames = []
        deadline = self.sent_at + timeout
        while True:
            try:
                f = self.read(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return Outcome(frames, None)
            if f is None:
                return Outcome(frames, time.monotonic() - self.sent_at)
            if f.kind == HEARTBEAT and f.channel == 0 and not f.payload:
                continue
            frames.append(f)
            if close_ok and f.class_method == (10, 50):
                try:
                    # Not send(): sent_at stays at the offence, timings count from it.
                    self.sock.sendall(CONNECTION_CLOSE_OK)
                except OSError:
                    pass

    # Handshake steps.

    def hello(self):
        self.send(PROTOCOL_HEADER)
        self.expect(0, 10, 10)  # connection.start
        return self

    def login(self, properties=CAPABILITIES, user="guest", password="guest"):
        self.hello()
        self.send(start_ok(properties, user, password))
        a = self.expect(0, 10, 30)  # connection.tune
        self.offered = struct.unpack(">HIH", a[:8])
        return self

    def tune(self, channel_max=None, frame_max=None, heartbeat=0):
        cm, fm, _ = self.offered
        cm = cm if channel_max is None else channel_max
        fm = fm if frame_max is None else frame_max
        self.send(tune_ok(cm, fm, heartbeat))
        return self

    def open(self, vhost="/"):
        self.send(connection_open(vhost))
        self.expect(0, 10, 41)
        return self

    def ready(self, channels=(1,), **tune):
        """Logs in, tunes (offered values unless given; heartbeat 0), opens `/` and channels."""
        self.login().tune(**tune).open()
        for ch in channels:
            self.open_channel(ch)
        return self

    def open_channel(self, ch):
        self.send(channel_open(ch))
        self.expect(ch, 20, 11)

    def sync(self, ch=1):
        """A round trip on `ch` (passive declare of amq.direct): everything sent before it
        has been handled when this returns, and the server answered nothing else."""
        self.send(exchange_declare(ch, "amq.direct", passive=True))
        self.expect(ch, 40, 11)


@pytest.fixture
def raw(broker):
    """raw() opens a new hand-driven client; all are closed at teardown."""
    opened = []

    def make():
        c = Raw(broker)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def client(raw):
    """A client logged in with the offered tune values, `/` open, channel 1 open."""
    return raw().ready()


# Assertions on what the server did.


def assert_connection_close(c, code, text, class_id, method_id, closed_within=(0.0, AT_ONCE)):
    """The server sends exactly connection.close(code, text, class_id.method_id) and, once
    we answer close-ok, closes the socket within `closed_within` s of our offending frame."""
    out = c.outcome(timeout=closed_within[1] + 1.0)
    assert out.closes == [Close(0, code, text, class_id, method_id)] and len(out.frames) == 1, out
    lo, hi = closed_within
    assert out.closed_after is not None and lo <= out.closed_after <= hi, out


def assert_channel_close(c, ch, code, text, class_id, method_id):
    """The server sends channel.close(code, text, class_id.method_id) on `ch`; after our
    close-ok the connection is still up and the channel number can be opened again."""
    f = c.next()
    assert as_close(f) == Close(ch, code, text, class_id, method_id), describe(f)
    c.send(channel_close_ok(ch))
    c.open_channel(ch)


def assert_silent_close(out, after=SILENT_CLOSE_DELAY):
    """No frame at all; the socket closed `after` seconds (a range) after the offence."""
    assert out.frames == [] and out.closed_after is not None, out
    assert after[0] <= out.closed_after <= after[1], out


def assert_close_then_socket_closed_after(out, close, after=SILENT_CLOSE_DELAY):
    """Exactly `close` at once, then the socket closed `after` seconds after the offence."""
    assert out.closes == [close] and len(out.frames) == 1, out
    assert out.closed_after is not None and after[0] <= out.closed_after <= after[1], out


def assert_closed_at_once_silently(c):
    assert_silent_close(c.outcome(timeout=AT_ONCE + 1.0), after=(0.0, AT_ONCE))


# ---------------------------------------------------------------------------------------
# The slow (~3 s) cases, all started at once per module. Each takes a fresh client and
# returns its Outcome; the tests below assert on them by name.

DELAYED = {}


def delayed_case(name):
    def register(fn):
        DELAYED[name] = fn
        return fn

    return register


def _tune_case(channel_max, frame_max):
    def run(c):
        c.login()
        cm, fm, _ = c.offered
        c.send(tune_ok(channel_max(cm), frame_max(fm), 0))
        return c.outcome(timeout=6)

    return run


for _name, _cm, _fm in [
    ("frame_max 4095 (below 4096)", lambda cm: cm, lambda fm: 4095),
    ("frame_max 0", lambda cm: cm, lambda fm: 0),
    ("frame_max above offered", lambda cm: cm, lambda fm: fm + 1),
    ("channel_max 0", lambda cm: 0, lambda fm: fm),
    ("channel_max above offered", lambda cm: cm + 1, lambda fm: fm),
]:
    DELAYED["tune-ok " + _name] = _tune_case(_cm, _fm)


@delayed_case("connection.open before tune-ok")
def _(c):
    c.login()
    c.send(connection_open())
    return c.outcome(timeout=6)


def _start_ok_case(frames):
    def run(c):
        c.hello()
        c.send(frames)
        return c.outcome(timeout=6)

    return run


for _name, _frames in [
    ("wrong password, no capabilities", start_ok(NO_CAPABILITIES, password="wrong")),
    (
        "wrong password, authentication_failure_close=false",
        start_ok(
            table(("capabilities", b"F" + table(("authentication_failure_close", flag(False))))),
            password="wrong",
        ),
    ),
    ("unknown mechanism", method(0, 10, 11, start_ok_args(mechanism="FOO"))),
    ("PLAIN response without NULs", method(0, 10, 11, start_ok_args(response=b"garbage"))),
    # Garbage where start-ok should be.
    (
        "client-properties table longer than the frame",
        method(0, 10, 11, start_ok_args(properties=struct.pack(">I", 1000) + b"abc")),
    ),
    (
        "unknown field type in client-properties",
        method(0, 10, 11, start_ok_args(properties=table(("k", b"Z\x01")))),
    ),
    ("truncated start-ok", method(0, 10, 11, b"\0\0")),
    ("connection.open instead of start-ok", connection_open()),
    ("start-ok on channel 1", frame(METHOD, 1, start_ok()[7:-1])),
    ("body frame before start-ok", body(0, b"x")),
    ("unknown frame type before start-ok", frame(5, 0, b"x")),
    ("start-ok without frame-end octet", start_ok()[:-1] + b"\x00"),
]:
    DELAYED["start-ok: " + _name] = _start_ok_case(_frames)


def start_ok_of_size(payload_size):
    """A start-ok method frame whose payload is exactly `payload_size` octets."""
    base = 4 + len(start_ok_args(NO_CAPABILITIES))
    pad = payload_size - base - len(shortstr("p") + b"S" + longstr(b""))
    props = table(("p", b"S" + longstr(b"a" * pad)))
    payload = struct.pack(">HH", 10, 11) + start_ok_args(props)
    assert len(payload) == payload_size
    return frame(METHOD, 0, payload)


DELAYED["start-ok: 4097-octet payload"] = _start_ok_case(start_ok_of_size(4097))


@delayed_case("wrong password with authentication_failure_close, no close-ok")
def _(c):
    c.hello()
    c.send(start_ok(password="wrong"))
    return c.outcome(timeout=6, close_ok=False)


def queue_declare_of_size(ch, payload_size):
    """A queue.declare (exclusive, server-named) whose method payload is `payload_size` octets."""
    base = len(queue_declare(ch, "", exclusive=True)) - 8
    pad = payload_size - base - len(shortstr("p") + b"S" + longstr(b""))
    f = queue_declare(ch, "", exclusive=True, arguments=table(("p", b"S" + longstr(b"a" * pad))))
    assert len(f) - 8 == payload_size
    return f


@delayed_case("frame without frame-end octet")
def _(c):
    c.ready()
    c.send(channel_flow(1, True)[:-1] + b"\x00")
    return c.outcome(timeout=6)


@delayed_case("method frame above frame_max")
def _(c):
    c.ready(frame_max=4096)
    c.send(queue_declare_of_size(1, 4097))
    return c.outcome(timeout=6)


@delayed_case("body frame above frame_max")
def _(c):
    c.ready(frame_max=4096)
    c.send(basic_publish(1, "", "nowhere") + header(1, 5000) + body(1, b"a" * 5000))
    return c.outcome(timeout=6)


@pytest.fixture(scope="module")
def delayed(broker):
    """name -> Outcome of that DELAYED case; all cases run concurrently, once."""
    clients = []

    def run(fn):
        c = Raw(broker)
        clients.append(c)
        return fn(c)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(DELAYED))
    futures = {name: pool.submit(run, fn) for name, fn in DELAYED.items()}
    yield lambda name: futures[name].result(timeout=15)
    pool.shutdown(wait=True)
    for c in clients:
        c.close()


# ---------------------------------------------------------------------------------------
# 1. connection.tune / tune-ok.


def test_tune_offers_rabbitmq_defaults(raw):
    """connection.tune offers channel_max 2047, frame_max 131072, heartbeat 60."""
    assert raw().login().offered == (2047, 131072, 60)


@pytest.mark.parametrize(
    "case",
    [
        "frame_max 4095 (below 4096)",
        "frame_max 0",
        "frame_max above offered",
        "channel_max 0",
        "channel_max above offered",
    ],
)
def test_tune_ok_out_of_range_is_a_silent_close_after_3s(delayed, case):
    """RabbitMQ logs "failed to negotiate connection parameters: negotiated frame_max = 4095
    is lower than the minimum allowed value (4096)" (or "= 0 is higher than the maximum
    allowed value (131072)", "channel_max = 0 (no limit) is higher than ...") and sends no
    connection.close: it closes the socket 3 s after the tune-ok."""
    assert_silent_close(delayed("tune-ok " + case))


@pytest.mark.parametrize(
    "channel_max, frame_max, heartbeat",
    [
        (1, 4096, 0),  # the smallest accepted
        (None, None, 0),  # exactly the offered values
        (10, 8192, 65535),  # heartbeat above the offered 60 is accepted as is
        (None, None, 61),
    ],
    ids=["minimum", "offered", "small-limits-huge-heartbeat", "heartbeat-above-offered"],
)
def test_tune_ok_in_range_is_accepted(raw, channel_max, frame_max, heartbeat):
    """channel_max 1..offered, frame_max 4096..offered and any heartbeat are accepted."""
    c = raw().login().tune(channel_max, frame_max, heartbeat).open()
    c.open_channel(1)
    c.sync(1)


def test_heartbeat_1_sends_heartbeats_every_half_second(raw):
    """With heartbeat 1 RabbitMQ sends a heartbeat frame every 0.5 s."""
    c = raw().login().tune(heartbeat=1).open()
    started = time.monotonic()
    beats = 0
    while beats < 2:
        f = c.read(timeout=1.5)
        assert f is not None and (f.kind, f.channel, f.payload) == (HEARTBEAT, 0, b""), f
        beats += 1
        c.send(frame(HEARTBEAT, 0, b""))
    assert time.monotonic() - started < 1.4


def test_heartbeat_0_sends_none(raw):
    """With heartbeat 0 nothing arrives on an idle connection."""
    c = raw().login().tune(heartbeat=0).open()
    with pytest.raises(TimeoutError):
        c.read(timeout=1.2)


def test_pre_tune_frame_of_4096_octets_is_accepted(raw):
    """Before tune the frame_max is 4096 and counts the payload only: a 4096-octet start-ok
    payload (a 4104-octet frame) is accepted."""
    c = raw().hello()
    c.send(start_ok_of_size(4096))
    c.expect(0, 10, 30)


def test_pre_tune_frame_above_4096_is_a_silent_close_after_3s(delayed):
    """A 4097-octet start-ok payload: no close method, socket closed 3 s later."""
    assert_silent_close(delayed("start-ok: 4097-octet payload"))


def test_frame_payload_equal_to_frame_max_is_accepted(raw):
    """RabbitMQ compares the payload size (not the frame size) with frame_max: a 4096-octet
    payload on a connection tuned to frame_max 4096 is accepted."""
    c = raw().ready(frame_max=4096)
    c.send(queue_declare_of_size(1, 4096))
    c.expect(1, 50, 11)


@pytest.mark.parametrize("kind", ["method", "body"])
def test_frame_above_frame_max_is_501_then_closed_after_3s(delayed, kind):
    """A 4097-octet method payload (or a 5000-octet body) with frame_max 4096:
    connection.close 501 "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,4097,4088}"
    (type 3 and 5000 for the body), class.method 0.0; the socket closes 3 s later, close-ok
    or not."""
    out = delayed(f"{kind} frame above frame_max")
    text = {
        "method": "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,4097,4088}",
        "body": "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,5000,4088}",
    }[kind]
    assert_close_then_socket_closed_after(out, Close(0, 501, text, 0, 0))


def test_connection_open_before_tune_ok_is_a_silent_close_after_3s(delayed):
    """connection.open straight after start-ok, without tune-ok: silent close after 3 s."""
    assert_silent_close(delayed("connection.open before tune-ok"))


# ---------------------------------------------------------------------------------------
# connection.open and connection-class methods out of place.


def test_open_with_insist_is_accepted(raw):
    """The insist bit is ignored: connection.open-ok."""
    c = raw().login().tune()
    c.send(connection_open(insist=True))
    c.expect(0, 10, 41)


def test_open_unknown_vhost_is_530(raw):
    """530 "NOT_ALLOWED - vhost /nope not found", class.method 10.40."""
    c = raw().login().tune()
    c.send(connection_open("/nope"))
    assert_connection_close(c, 530, "NOT_ALLOWED - vhost /nope not found", 10, 40)


def test_server_waits_for_close_ok_before_closing_the_socket(raw):
    """After a connection.close of its own RabbitMQ keeps the socket open until close-ok
    (up to 30 s), and closes it as soon as close-ok arrives."""
    c = raw().ready()
    c.send(exchange_declare(1, unique("x"), "foo"))  # any hard error
    assert as_close(c.next()).channel == 0
    with pytest.raises(TimeoutError):
        c.read(timeout=1.0)
    c.send(CONNECTION_CLOSE_OK)
    assert c.read(timeout=AT_ONCE) is None


def test_client_close_gets_close_ok(client):
    """connection.close from the client is answered with connection.close-ok."""
    client.send(connection_close())
    client.expect(0, 10, 51)


UNEXPECTED_IN_RUNNING = "CHANNEL_ERROR - unexpected method in connection state running"


@pytest.mark.parametrize(
    "frames, class_method",
    [
        (connection_open(), (10, 40)),
        (start_ok(), (10, 11)),
        (tune_ok(2047, 131072, 0), (10, 31)),
    ],
    ids=["second-open", "start-ok", "tune-ok"],
)
def test_handshake_method_when_open_is_504(client, frames, class_method):
    """504 "CHANNEL_ERROR - unexpected method in connection state running"."""
    client.send(frames)
    assert_connection_close(client, 504, UNEXPECTED_IN_RUNNING, *class_method)


def test_channel_open_before_connection_open_is_505(raw):
    """channel.open after tune-ok but before connection.open: 505 "UNEXPECTED_FRAME - type 1,
    all octets = <<0,20,0,10,0>>", class.method 0.0."""
    c = raw().login().tune()
    c.send(channel_open(1))
    assert_connection_close(c, 505, "UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,0>>", 0, 0)


@pytest.mark.parametrize("frames, class_method", [
    (method(1, 10, 40, shortstr("/") + shortstr("") + b"\0"), (10, 40)),
    (method(1, 10, 50, struct.pack(">H", 200) + shortstr("bye") + b"\0\0\0\0"), (10, 50)),
], ids=["open", "close"])
def test_connection_method_on_a_channel_is_503(client, frames, class_method):
    """A connection-class method on channel 1: 503 "COMMAND_INVALID - unimplemented method"."""
    client.send(frames)
    assert_connection_close(client, 503, "COMMAND_INVALID - unimplemented method", *class_method)


# ---------------------------------------------------------------------------------------
# 2. Channels.


def test_channel_max_caps_open_channels_not_channel_numbers(raw):
    """channel_max 2: channels 1 and 2 open; a third is 530 "NOT_ALLOWED - number of
    channels opened (2) has reached the negotiated channel_max (2)", class.method 0.0."""
    c = raw().ready(channels=(1, 2), channel_max=2)
    c.send(channel_open(3))
    assert_connection_close(
        c, 530,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
        0, 0,
    )


def test_channel_numbers_above_channel_max_are_allowed(raw):
    """channel_max 1 and channel 5 (or 65535 with the offered 2047) opens fine: only the
    count is limited. A second channel is then 530 with "(1) ... (1)"."""
    c = raw().ready(channels=(5,), channel_max=1)
    c.sync(5)
    c.send(channel_open(6))
    assert_connection_close(
        c, 530,
        "NOT_ALLOWED - number of channels opened (1) has reached the negotiated channel_max (1)",
        0, 0,
    )
    raw().ready(channels=(65535,)).sync(65535)


def test_closing_a_channel_frees_its_slot(raw):
    """channel_max 2: open 1 and 2, close 2, open 3: open-ok."""
    c = raw().ready(channels=(1, 2), channel_max=2)
    c.send(channel_close(2))
    c.expect(2, 20, 41)
    c.open_channel(3)


def test_channel_open_on_channel_0_is_504(client):
    """504 "CHANNEL_ERROR - unexpected method in connection state running", 20.10."""
    client.send(channel_open(0))
    assert_connection_close(client, 504, UNEXPECTED_IN_RUNNING, 20, 10)


def test_channel_class_method_on_channel_0_is_504(client):
    """basic.qos on channel 0: 504 "CHANNEL_ERROR - unexpected method in connection state
    running", 60.10."""
    client.send(basic_qos(0, prefetch_count=1))
    assert_connection_close(client, 504, UNEXPECTED_IN_RUNNING, 60, 10)


def test_reopening_an_open_channel_is_504(client):
    """504 "CHANNEL_ERROR - second 'channel.open' seen", 20.10."""
    client.send(channel_open(1))
    assert_connection_close(client, 504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)


@pytest.mark.parametrize(
    "frames, class_method",
    [
        (queue_declare(7, "", exclusive=True), (50, 10)),
        (channel_close(7), (20, 40)),
        (channel_close_ok(7), (20, 41)),
        (basic_qos(7, prefetch_count=1), (60, 10)),
    ],
    ids=["queue.declare", "channel.close", "channel.close-ok", "basic.qos"],
)
def test_method_on_a_channel_never_opened_is_504(client, frames, class_method):
    """504 "CHANNEL_ERROR - expected 'channel.open'" with the method's class.method, even for
    channel.close and channel.close-ok."""
    client.send(frames)
    assert_connection_close(client, 504, "CHANNEL_ERROR - expected 'channel.open'", *class_method)


@pytest.mark.parametrize(
    "frames, class_method",
    [
        (method(1, 20, 11, longstr(b"")), (20, 11)),
        (method(1, 20, 21, bits(True)), (20, 21)),
        (method(1, 60, 11), (60, 11)),
        (method(1, 85, 11), (85, 11)),
    ],
    ids=["channel.open-ok", "channel.flow-ok", "basic.qos-ok", "confirm.select-ok"],
)
def test_server_only_method_from_the_client_is_503(client, frames, class_method):
    """A method only the server sends: 503 "COMMAND_INVALID - unimplemented method"."""
    client.send(frames)
    assert_connection_close(client, 503, "COMMAND_INVALID - unimplemented method", *class_method)


def test_closing_channel_ignores_other_methods_until_close_ok(client):
    """After the server's channel.close, other methods on that channel are dropped until
    the client's close-ok; then the number can be opened again."""
    client.send(queue_declare(1, unique("missing"), passive=True))
    assert as_close(client.next()).code == 404
    client.send(
        queue_declare(1, "", exclusive=True), basic_qos(1, prefetch_count=1), channel_close_ok(1)
    )
    client.open_channel(1)
    client.sync(1)


def test_channel_open_before_close_ok_is_504(client):
    """channel.open on a channel the server is closing (before close-ok): 504
    "CHANNEL_ERROR - second 'channel.open' seen", 20.10."""
    client.send(queue_declare(1, unique("missing"), passive=True))
    assert as_close(client.next()).code == 404
    client.send(channel_open(1))
    assert_connection_close(client, 504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)


def test_crossing_channel_close_gets_close_ok(client):
    """A channel.close from the client crossing the server's own is answered with
    channel.close-ok; the channel is still the server's to close: a channel.open before
    the client's close-ok is 504 "CHANNEL_ERROR - second 'channel.open' seen", 20.10."""
    client.send(queue_declare(1, unique("missing"), passive=True))
    assert as_close(client.next()).code == 404
    client.send(channel_close(1))
    client.expect(1, 20, 41)
    client.send(channel_close_ok(1))
    client.open_channel(1)
    client.send(queue_declare(1, unique("missing"), passive=True))
    assert as_close(client.next()).code == 404
    client.send(channel_close(1))
    client.expect(1, 20, 41)
    client.send(channel_open(1))
    assert_connection_close(client, 504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)


# ---------------------------------------------------------------------------------------
# 3. Fields and methods RabbitMQ does not implement, or ignores.


@pytest.mark.parametrize("global_", [False, True])
def test_qos_prefetch_size_is_540(client, global_):
    """prefetch_size != 0: 540 "NOT_IMPLEMENTED - prefetch_size!=0 (1000)", 60.10 (a
    connection error)."""
    client.send(basic_qos(1, prefetch_size=1000, prefetch_count=10, global_=global_))
    assert_connection_close(client, 540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)", 60, 10)


def test_recover_async_with_requeue_is_accepted_without_reply(client):
    """basic.recover-async requeue=true: no reply, the channel stays open."""
    client.send(method(1, 60, 100, bits(True)))
    client.sync(1)


@pytest.mark.parametrize("method_id", [100, 110], ids=["recover-async", "recover"])
def test_recover_without_requeue_is_540(client, method_id):
    """requeue=false: 540 "NOT_IMPLEMENTED - requeue=false", 60.100 / 60.110."""
    client.send(method(1, 60, method_id, bits(False)))
    assert_connection_close(client, 540, "NOT_IMPLEMENTED - requeue=false", 60, method_id)


def test_recover_with_requeue_gets_recover_ok(client):
    client.send(method(1, 60, 110, bits(True)))
    client.expect(1, 60, 111)


def test_consume_no_local_is_ignored(client):
    """no_local is accepted and ignored: a consumer gets its own connection's messages."""
    q = unique("q")
    client.send(queue_declare(1, q, exclusive=True))
    client.expect(1, 50, 11)
    client.send(basic_consume(1, q, "ct", no_local=True, no_ack=True))
    client.expect(1, 60, 21)
    client.send(publish(1, "", q, b"hi"))
    client.expect(1, 60, 60)  # basic.deliver
    assert client.next().kind == HEADER
    assert client.next() == Frame(BODY, 1, b"hi")


@pytest.mark.parametrize("kind", ["foo", ""])
def test_exchange_declare_unknown_type_is_503(client, kind):
    """503 "COMMAND_INVALID - invalid exchange type 'foo'", 40.10 (a connection error)."""
    client.send(exchange_declare(1, unique("x"), kind))
    text = f"COMMAND_INVALID - invalid exchange type '{kind}'"
    assert_connection_close(client, 503, text, 40, 10)


def test_passive_exchange_declare_of_missing_with_unknown_type_is_404(client):
    """passive: the type is not checked; a missing exchange is channel 404 "NOT_FOUND - no
    exchange 'X' in vhost '/'", 40.10."""
    x = unique("x")
    client.send(exchange_declare(1, x, "foo", passive=True))
    assert_channel_close(client, 1, 404, f"NOT_FOUND - no exchange '{x}' in vhost '/'", 40, 10)


def test_access_request_gets_ticket_1(client):
    """access.request is still answered: access.request-ok with ticket 1."""
    client.send(method(1, 30, 10, shortstr("/data") + bits(False, False, True, True, True)))
    assert client.expect(1, 30, 11) == struct.pack(">H", 1)


def test_channel_flow_active_true_gets_flow_ok(client):
    client.send(channel_flow(1, True))
    assert client.expect(1, 20, 21) == bits(True)


def test_channel_flow_active_false_is_540(client):
    """540 "NOT_IMPLEMENTED - active=false", 20.20."""
    client.send(channel_flow(1, False))
    assert_connection_close(client, 540, "NOT_IMPLEMENTED - active=false", 20, 20)


@pytest.mark.parametrize("mandatory", [False, True])
def test_publish_immediate_is_540_after_the_content(client, mandatory):
    """immediate=true: nothing until the content is complete, then 540
    "NOT_IMPLEMENTED - immediate=true", 60.40."""
    client.send(basic_publish(1, "", "nowhere", mandatory=mandatory, immediate=True))
    client.send(header(1, 1), body(1, b"x"))
    assert_connection_close(client, 540, "NOT_IMPLEMENTED - immediate=true", 60, 40)


def test_publish_immediate_waits_for_the_content(client):
    """The immediate check runs when the content is complete: the publish method alone
    gets no answer; a method on another channel is still served."""
    client.send(basic_publish(1, "", "nowhere", immediate=True))
    client.send(channel_open(2))
    client.expect(2, 20, 11)


# queue.declare: nowait and passive.


def test_queue_declare_nowait_creates_without_reply(client):
    q = unique("q")
    client.send(queue_declare(1, q, exclusive=True, nowait=True))
    client.send(queue_declare(1, q, passive=True))
    client.expect(1, 50, 11)


def test_passive_nowait_on_existing_queue_has_no_reply(client):
    q = unique("q")
    client.send(queue_declare(1, q, exclusive=True))
    client.expect(1, 50, 11)
    client.send(queue_declare(1, q, passive=True, nowait=True))
    client.sync(1)


@pytest.mark.parametrize("nowait", [False, True])
def test_passive_on_missing_queue_is_404_even_with_nowait(client, nowait):
    """Channel 404 "NOT_FOUND - no queue 'Q' in vhost '/'", 50.10."""
    q = unique("q")
    client.send(queue_declare(1, q, passive=True, nowait=nowait))
    assert_channel_close(client, 1, 404, f"NOT_FOUND - no queue '{q}' in vhost '/'", 50, 10)


def test_passive_ignores_flags_and_arguments(client):
    """A passive declare with other durable / auto-delete flags and arguments than the
    queue has is answered with declare-ok."""
    q = unique("q")
    client.send(queue_declare(1, q, exclusive=True))
    client.expect(1, 50, 11)
    max_len = table(("x-max-length", b"I" + struct.pack(">i", 5)))
    client.send(
        queue_declare(1, q, passive=True, durable=True, auto_delete=True, arguments=max_len)
    )
    assert client.expect(1, 50, 11) == shortstr(q) + struct.pack(">II", 0, 0)


@pytest.mark.parametrize("declared_before", [False, True])
def test_passive_with_empty_name_is_404(client, declared_before):
    """The empty name does not mean "the last declared queue" for a passive declare:
    404 "NOT_FOUND - no queue '' in vhost '/'", 50.10."""
    if declared_before:
        client.send(queue_declare(1, "", exclusive=True))
        client.expect(1, 50, 11)
    client.send(queue_declare(1, "", passive=True))
    assert_channel_close(client, 1, 404, "NOT_FOUND - no queue '' in vhost '/'", 50, 10)


def test_redeclare_mismatch_with_nowait_is_still_406(client):
    """nowait does not hide a 406 "PRECONDITION_FAILED - inequivalent arg 'durable' for
    queue 'Q' in vhost '/': received 'true' but current is 'false'", 50.10."""
    q = unique("q")
    client.send(queue_declare(1, q, auto_delete=True))
    client.expect(1, 50, 11)
    client.send(queue_declare(1, q, durable=True, auto_delete=True, nowait=True))
    assert_channel_close(
        client, 1, 406,
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': "
        "received 'true' but current is 'false'",
        50, 10,
    )
    client.send(method(1, 50, 40, b"\0\0" + shortstr(q) + bits(False, False, False)))  # delete
    client.expect(1, 50, 41)


def test_redeclare_exclusive_queue_as_durable_is_accepted(client):
    """An exclusive queue is not checked for 'durable' on redeclare: declare-ok."""
    q = unique("q")
    client.send(queue_declare(1, q, exclusive=True))
    client.expect(1, 50, 11)
    client.send(queue_declare(1, q, exclusive=True, durable=True))
    client.expect(1, 50, 11)


def test_queue_declare_reserved_prefix_is_403(client):
    """403 "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'", 50.10."""
    client.send(queue_declare(1, "amq.foo", exclusive=True))
    text = "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'"
    assert_channel_close(client, 1, 403, text, 50, 10)


# Other basic-class errors.


def test_duplicate_consumer_tag_is_530(client):
    """530 "NOT_ALLOWED - attempt to reuse consumer tag 'ct'", 60.20 (a connection error)."""
    q = unique("q")
    client.send(queue_declare(1, q, exclusive=True))
    client.expect(1, 50, 11)
    client.send(basic_consume(1, q, "ct", no_ack=True))
    client.expect(1, 60, 21)
    client.send(basic_consume(1, q, "ct", no_ack=True))
    assert_connection_close(client, 530, "NOT_ALLOWED - attempt to reuse consumer tag 'ct'", 60, 20)


def test_consume_empty_queue_name_without_declare_is_404(client):
    """Channel 404 "NOT_FOUND - no previously declared queue", 60.20."""
    client.send(basic_consume(1, "", "ct", no_ack=True))
    assert_channel_close(client, 1, 404, "NOT_FOUND - no previously declared queue", 60, 20)


NOPE = "compat.conformance.nope"


@pytest.mark.parametrize(
    "frames, class_method, missing",
    [
        (basic_consume(1, NOPE, no_ack=True), (60, 20), "queue"),
        (method(1, 60, 70, b"\0\0" + shortstr(NOPE) + bits(True)), (60, 70), "queue"),
        (basic_publish(1, NOPE, "x") + header(1, 0), (60, 40), "exchange"),
    ],
    ids=["consume", "get", "publish"],
)
def test_missing_queue_or_exchange_is_404(client, frames, class_method, missing):
    """Channel 404 "NOT_FOUND - no queue 'nope' in vhost '/'" with the method's ids."""
    client.send(frames)
    text = f"NOT_FOUND - no {missing} '{NOPE}' in vhost '/'"
    assert_channel_close(client, 1, 404, text, *class_method)


def test_cancel_unknown_consumer_tag_gets_cancel_ok(client):
    client.send(method(1, 60, 30, shortstr("nope") + bits(False)))
    assert client.expect(1, 60, 31) == shortstr("nope")


@pytest.mark.parametrize(
    "class_method, tag, multiple",
    [((60, 80), 5, False), ((60, 80), 0, False), ((60, 90), 7, False), ((60, 120), 7, False)],
    ids=["ack", "ack-0", "reject", "nack"],
)
def test_unknown_delivery_tag_is_406(client, class_method, tag, multiple):
    """Channel 406 "PRECONDITION_FAILED - unknown delivery tag 5" with the method's ids."""
    client.send(basic_ack(1, tag, multiple, class_method))
    text = f"PRECONDITION_FAILED - unknown delivery tag {tag}"
    assert_channel_close(client, 1, 406, text, *class_method)


def test_ack_0_multiple_with_nothing_outstanding_is_a_no_op(client):
    client.send(basic_ack(1, 0, multiple=True))
    client.sync(1)


# ---------------------------------------------------------------------------------------
# 4. basic.qos: per-consumer (global=false) and per-channel (global=true) prefetch.


class QosBench:
    """Queues preloaded with messages, a consumer channel, and the unacked deliveries
    each of its consumers got (auto_ack off)."""

    def __init__(self, connect, queues=2, preload=10):
        self.conn = connect()
        self.pub = self.conn.channel()
        self.pub.confirm_delivery()
        self.queues = [unique(f"q{i}") for i in range(queues)]
        for q in self.queues:
            self.pub.queue_declare(q, exclusive=True)
        self.publish(preload)
        self.ch = self.conn.channel()
        self.got = {}

    def publish(self, n):
        for q in self.queues:
            for _ in range(n):
                self.pub.basic_publish("", q, b"x")

    def qos(self, count, global_=False):
        self.ch.basic_qos(prefetch_count=count, global_qos=global_)

    def consume(self, i):
        self.got[i] = []
        self.ch.basic_consume(
            self.queues[i], lambda ch, m, p, b: self.got[i].append(m.delivery_tag)
        )

    def counts(self):
        return {i: len(tags) for i, tags in self.got.items()}

    def settle(self, expected=None, total=None, each_at_most=None):
        """Waits (bounded) until the consumers hold `expected` ({consumer: count}), or
        `total` deliveries with none over `each_at_most`, then 0.25 s more to see that no
        further deliveries come."""
        if expected is not None:
            total = sum(expected.values())

        def done():
            return sum(self.counts().values()) >= total

        try:
            pump(self.conn, done, timeout=5, what=f"{total} deliveries")
        except AssertionError as e:
            raise AssertionError(f"{e}; got {self.counts()}") from None
        deadline = time.monotonic() + 0.25
        while time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.05)
        counts = self.counts()
        if expected is not None:
            assert counts == expected
        assert sum(counts.values()) == total, counts
        if each_at_most is not None:
            assert max(counts.values()) <= each_at_most, counts

    def ack(self, tag, multiple=False):
        self.ch.basic_ack(tag, multiple=multiple)


def test_qos_per_consumer_limits_each_consumer(connect):
    """basic.qos(2): each consumer created afterwards gets 2 unacked."""
    b = QosBench(connect)
    b.qos(2)
    b.consume(0)
    b.consume(1)
    b.settle({0: 2, 1: 2})


def test_qos_global_is_shared_by_the_channel(connect):
    """basic.qos(3, global): the channel's consumers share 3 (the first takes all 3)."""
    b = QosBench(connect)
    b.qos(3, True)
    b.consume(0)
    b.consume(1)
    b.settle(total=3)  # RabbitMQ: {0: 3, 1: 0}


def test_qos_per_consumer_then_global_both_apply(connect):
    """qos(2) then qos(3, global): each consumer at most 2, the channel at most 3."""
    b = QosBench(connect)
    b.qos(2)
    b.qos(3, True)
    b.consume(0)
    b.consume(1)
    b.settle(total=3, each_at_most=2)  # RabbitMQ: {0: 2, 1: 1}


def test_qos_global_then_per_consumer_drops_the_global_limit(connect):
    """qos(3, global) then qos(2): RabbitMQ 3.10 lifts the channel's global limit when a
    per-consumer prefetch is set (rabbit_limiter:unlimit_prefetch), so each consumer gets 2,
    4 in all, over the global 3."""
    b = QosBench(connect)
    b.qos(3, True)
    b.qos(2)
    b.consume(0)
    b.consume(1)
    b.settle({0: 2, 1: 2})


def test_qos_global_set_again_after_per_consumer_applies(connect):
    """qos(3, global), qos(2), qos(3, global): the global limit is back: 3 in all."""
    b = QosBench(connect)
    b.qos(3, True)
    b.qos(2)
    b.qos(3, True)
    b.consume(0)
    b.consume(1)
    b.settle(total=3, each_at_most=2)


def test_qos_per_consumer_lifts_the_global_limit_of_existing_consumers(connect):
    """qos(3, global), consume (3 arrive), then qos(5): the global limit is gone, so the
    consumer (created with no per-consumer limit) now gets all 10; a new one gets 5."""
    b = QosBench(connect)
    b.qos(3, True)
    b.consume(0)
    b.settle({0: 3})
    b.qos(5)
    b.consume(1)
    b.settle({0: 10, 1: 5})


def test_qos_per_consumer_does_not_change_existing_consumers(connect):
    """A consumer created with no limit stays unlimited after qos(2); a new one gets 2."""
    b = QosBench(connect, preload=0)
    b.consume(0)
    b.qos(2)
    b.publish(5)
    b.consume(1)
    b.settle({0: 5, 1: 2})


def test_qos_per_consumer_change_applies_to_new_consumers_only(connect):
    """qos(2), consume, qos(5), consume: the first keeps 2, the second gets 5."""
    b = QosBench(connect)
    b.qos(2)
    b.consume(0)
    b.qos(5)
    b.consume(1)
    b.settle({0: 2, 1: 5})


def test_qos_global_applies_to_existing_consumers(connect):
    """Consume first, then qos(2, global), then publish 5: 2 arrive."""
    b = QosBench(connect, queues=1, preload=0)
    b.consume(0)
    b.qos(2, True)
    b.publish(5)
    b.settle({0: 2})


def test_qos_raising_global_delivers_more_at_once(connect):
    """qos(2, global), consume (2 arrive), qos(4, global): 2 more arrive, with no ack."""
    b = QosBench(connect, queues=1)
    b.qos(2, True)
    b.consume(0)
    b.settle({0: 2})
    b.qos(4, True)
    b.settle({0: 4})


def test_qos_lowering_global_holds_deliveries_until_under_the_limit(connect):
    """qos(4, global), consume (4 arrive), qos(2, global), ack 1 and 2: still 2 unacked =
    the limit, so nothing new; ack 3: one more arrives."""
    b = QosBench(connect, queues=1)
    b.qos(4, True)
    b.consume(0)
    b.settle({0: 4})
    b.qos(2, True)
    b.ack(1)
    b.ack(2)
    b.settle({0: 4})
    b.ack(3)
    b.settle({0: 5})


def test_qos_global_0_lifts_the_channel_limit(connect):
    """qos(2, global), consume (2 arrive), qos(0, global): the other 8 arrive at once."""
    b = QosBench(connect, queues=1)
    b.qos(2, True)
    b.consume(0)
    b.settle({0: 2})
    b.qos(0, True)
    b.settle({0: 10})


def test_qos_global_0_keeps_a_consumers_own_prefetch(connect):
    """qos(2), consume, qos(0, global): the consumer still gets only 2."""
    b = QosBench(connect, queues=1)
    b.qos(2)
    b.consume(0)
    b.qos(0, True)
    b.settle({0: 2})


def test_qos_per_consumer_0_is_unlimited(connect):
    b = QosBench(connect, queues=1)
    b.qos(2)
    b.qos(0)
    b.consume(0)
    b.settle({0: 10})


def test_qos_ack_makes_room(connect):
    """qos(2): acking both (multiple) lets 2 more through."""
    b = QosBench(connect, queues=1)
    b.qos(2)
    b.consume(0)
    b.settle({0: 2})
    b.ack(2, multiple=True)
    b.settle({0: 4})


# ---------------------------------------------------------------------------------------
# 5. Malformed frames once the connection is open.


@pytest.mark.parametrize(
    "frames, text, class_method",
    [
        (
            method(1, 50, 10, b"\0\0" + shortstr("abcdef")[:4]),
            "FRAME_ERROR - cannot decode <<0,0,6,97,98,99>>",
            (50, 10),
        ),
        (
            method(1, 50, 10, b"\0\0" + shortstr("q") + b"\0" + struct.pack(">I", 10) + b"ab"),
            "FRAME_ERROR - cannot decode <<0,0,1,113,0,0,0,0,10,97,98>>",
            (50, 10),
        ),
        (method(1, 50, 10), "FRAME_ERROR - cannot decode <<>>", (50, 10)),
        (
            method(1, 20, 40, struct.pack(">H", 200) + shortstr("bye") + b"\0\0\0\0" + b"junk"),
            "FRAME_ERROR - cannot decode <<0,200,3,98,121,101,0,0,0,0,106,117,110,107>>",
            (20, 40),
        ),
        (
            frame(METHOD, 1, b"\x00\x3c"),
            "FRAME_ERROR - type 1, all octets = <<0,60>>: unknown_frame",
            (0, 0),
        ),
    ],
    ids=[
        "truncated-shortstr", "truncated-table", "no-arguments", "trailing-octets", "no-method-id"
    ],
)
def test_undecodable_method_is_501(client, frames, text, class_method):
    """501 FRAME_ERROR "cannot decode <<the argument octets>>" with the method's ids; a
    method frame too short for its ids is "type 1, all octets = <<...>>: unknown_frame", 0.0."""
    client.send(frames)
    assert_connection_close(client, 501, text, *class_method)


@pytest.mark.parametrize(
    "frames",
    [method(1, 99, 10), method(1, 60, 999), method(0, 10, 99)],
    ids=["unknown-class", "unknown-method", "unknown-connection-method"],
)
def test_unknown_class_or_method_id_closes_the_socket_at_once(client, frames):
    """RabbitMQ's reader crashes (unknown_method_id): the socket is closed at once, no close."""
    client.send(frames)
    assert_closed_at_once_silently(client)


def test_unknown_method_id_before_start_ok_closes_the_socket_at_once(raw):
    c = raw().hello()
    c.send(method(0, 10, 99))
    assert_closed_at_once_silently(c)


PUB = basic_publish(1, "", "x")
UNEXPECTED_NON_METHOD = "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
EXPECTED_HEADER = (
    "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
)
EXPECTED_BODY = "UNEXPECTED_FRAME - expected content body, got non content body frame instead"


@pytest.mark.parametrize(
    "frames, code, text, class_method",
    [
        (header(1, 1), 505, UNEXPECTED_NON_METHOD, (0, 0)),
        (body(1, b"x"), 505, UNEXPECTED_NON_METHOD, (0, 0)),
        (PUB + header(1, 1) + body(1, b"x") + body(1, b"y"), 505, UNEXPECTED_NON_METHOD, (0, 0)),
        (PUB + header(1, 0) + body(1, b"x"), 505, UNEXPECTED_NON_METHOD, (0, 0)),
        (PUB + header(1, 0) + body(1, b""), 505, UNEXPECTED_NON_METHOD, (0, 0)),
        (basic_publish(1, "", "x") + header(2, 1), 505, UNEXPECTED_NON_METHOD, (0, 0)),
        (
            basic_publish(1, "", "x") + header(1, 1, class_id=50) + body(1, b"x"),
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            (60, 40),
        ),
        (basic_publish(1, "", "x") + header(1, 0, weight=5), 505, EXPECTED_HEADER, (60, 40)),
        (PUB + basic_qos(1, prefetch_count=1), 505, EXPECTED_HEADER, (60, 40)),
        (PUB + header(1, 2) + body(1, b"x") + basic_qos(1), 505, EXPECTED_BODY, (60, 40)),
        # RabbitMQ does not notice a body larger than announced (its remaining size goes
        # negative and it waits for more), only the next method.
        (PUB + header(1, 1) + body(1, b"xy") + basic_qos(1), 505, EXPECTED_BODY, (60, 40)),
        (
            header(0, 1),
            505,
            "UNEXPECTED_FRAME - type 2, all octets = <<0,60,0,0,0,0,0,0,0,0,0,1,0,0>>",
            (0, 0),
        ),
        (body(0, b"x"), 505, 'UNEXPECTED_FRAME - type 3, all octets = <<"x">>', (0, 0)),
        (frame(HEARTBEAT, 1, b""), 505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", (0, 0)),
        (
            frame(HEARTBEAT, 0, b"abc"),
            501,
            'FRAME_ERROR - type 8, all octets = <<"abc">>: unknown_frame',
            (0, 0),
        ),
        (
            frame(5, 1, b"abc"),
            501,
            'FRAME_ERROR - type 5, all octets = <<"abc">>: unknown_frame',
            (0, 0),
        ),
        (frame(9, 0, b""), 501, "FRAME_ERROR - type 9, all octets = <<>>: unknown_frame", (0, 0)),
        # A malformed content header (no property flags) is only decoded with the body; the
        # channel process crashes on it.
        (
            PUB + frame(HEADER, 1, struct.pack(">HHQ", 60, 0, 1)) + body(1, b"x"),
            541,
            "INTERNAL_ERROR",
            (0, 0),
        ),
    ],
    ids=[
        "header-without-publish",
        "body-without-header",
        "body-after-complete-content",
        "body-after-empty-content",
        "empty-body-after-empty-content",
        "header-on-unopened-channel",
        "header-for-class-50",
        "header-with-weight",
        "method-instead-of-header",
        "method-instead-of-body",
        "method-after-oversized-body",
        "header-on-channel-0",
        "body-on-channel-0",
        "heartbeat-on-channel-1",
        "heartbeat-with-payload",
        "unknown-frame-type",
        "unknown-frame-type-channel-0",
        "header-without-property-flags",
    ],
)
def test_misplaced_or_malformed_frame(client, frames, code, text, class_method):
    """connection.close with RabbitMQ's code, text and class.method; socket closed after
    close-ok."""
    client.send(frames)
    assert_connection_close(client, code, text, *class_method)


def test_frame_without_frame_end_is_501_then_closed_after_3s(delayed):
    """501 "FRAME_ERROR - type 1, all octets = <<0,20,0,20,1>>: {invalid_frame_end_marker,0}",
    0.0; the socket closes 3 s later, close-ok or not."""
    out = delayed("frame without frame-end octet")
    text = "FRAME_ERROR - type 1, all octets = <<0,20,0,20,1>>: {invalid_frame_end_marker,0}"
    assert_close_then_socket_closed_after(out, Close(0, 501, text, 0, 0))


def test_empty_body_frames_are_accepted(client):
    """Zero-length body frames in the middle of a content are fine."""
    q = unique("q")
    client.send(queue_declare(1, q, exclusive=True))
    client.expect(1, 50, 11)
    client.send(basic_publish(1, "", q) + header(1, 1) + body(1, b"") + body(1, b"x"))
    client.send(queue_declare(1, q, passive=True))
    client.expect(1, 50, 11)


def test_other_channels_may_interleave_with_a_content(client):
    """Frames of channel 2 between a publish's frames on channel 1 are served; the content
    then completes."""
    client.open_channel(2)
    client.send(basic_publish(1, "", "nowhere") + header(1, 2) + basic_qos(2))
    client.expect(2, 60, 11)
    client.send(body(1, b"xy") + basic_qos(1))
    client.expect(1, 60, 11)


def test_heartbeat_on_channel_0_is_accepted(client):
    client.send(frame(HEARTBEAT, 0, b""))
    client.sync(1)


# ---------------------------------------------------------------------------------------
# 6. Failed login.


@pytest.mark.parametrize(
    "case",
    ["wrong password, no capabilities", "wrong password, authentication_failure_close=false"],
)
def test_wrong_password_without_capability_is_a_silent_close_after_3s(delayed, case):
    """A client that does not announce authentication_failure_close gets no close method:
    the socket is closed 3 s after its start-ok."""
    assert_silent_close(delayed("start-ok: " + case))


ACCESS_REFUSED_PLAIN = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
    "For details see the broker logfile."
)


@pytest.mark.parametrize("user", ["guest", "nobody-here"])
def test_wrong_password_with_capability_is_403(raw, user):
    """With authentication_failure_close: connection.close 403 "ACCESS_REFUSED - Login was
    refused using authentication mechanism PLAIN. For details see the broker logfile.",
    class.method 0.0 (not 10.11), at once; socket closed once close-ok arrives."""
    c = raw().hello()
    c.send(start_ok(user=user, password="wrong"))
    assert_connection_close(c, 403, ACCESS_REFUSED_PLAIN, 0, 0)


def test_wrong_password_with_capability_no_close_ok_closes_after_3s(delayed):
    """Without close-ok from the client, the socket is closed 3 s after the start-ok."""
    out = delayed("wrong password with authentication_failure_close, no close-ok")
    assert_close_then_socket_closed_after(out, Close(0, 403, ACCESS_REFUSED_PLAIN, 0, 0))


def test_pika_wrong_password_is_403(broker):
    """pika announces the capability and gets the 403."""
    url = broker.url.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        pika.BlockingConnection(params_for(url))
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in str(e.value)


@pytest.mark.parametrize("case", ["unknown mechanism", "PLAIN response without NULs"])
def test_bad_mechanism_or_response_is_a_silent_close_after_3s(delayed, case):
    """Even with authentication_failure_close: RabbitMQ logs "unknown authentication
    mechanism 'FOO'" / "response <<"garbage">> invalid" and closes 3 s later, no close."""
    assert_silent_close(delayed("start-ok: " + case))


# ---------------------------------------------------------------------------------------
# 7. Malformed input before login.


@pytest.mark.parametrize(
    "case",
    [
        "client-properties table longer than the frame",
        "unknown field type in client-properties",
        "truncated start-ok",
        "connection.open instead of start-ok",
        "start-ok on channel 1",
        "body frame before start-ok",
        "unknown frame type before start-ok",
        "start-ok without frame-end octet",
    ],
)
def test_garbage_before_login_is_a_silent_close_after_3s(delayed, case):
    """No close method: the socket is closed 3 s after the offending frame."""
    assert_silent_close(delayed("start-ok: " + case))


def test_heartbeat_before_start_ok_is_ignored(raw):
    c = raw().hello()
    c.send(frame(HEARTBEAT, 0, b""), start_ok())
    c.expect(0, 10, 30)


def test_unknown_locale_is_accepted(raw):
    c = raw().hello()
    c.send(start_ok(locale="xx_XX"))
    c.expect(0, 10, 30)
