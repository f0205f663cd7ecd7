"""Exchanges and routing: direct, fanout, topic, headers, default, e2e, AE, internal."""

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import get_all, message_count


def bodies(channel, q):
    return sorted(m[2] for m in get_all(channel, q))


@pytest.fixture
def ch(channel):
    """A channel in confirm mode, so routing has happened when basic_publish returns."""
    channel.confirm_delivery()
    return channel


def make_queues(ch, name, n):
    qs = [name("q%d" % i) for i in range(n)]
    for q in qs:
        ch.queue_declare(q, exclusive=True)
    return qs


def test_direct_routing(ch, name):
    x = name("x")
    ch.exchange_declare(x, "direct")
    q1, q2, q3 = make_queues(ch, name, 3)
    ch.queue_bind(q1, x, "a")
    ch.queue_bind(q2, x, "b")
    ch.queue_bind(q3, x, "a")
    ch.queue_bind(q3, x, "b")
    ch.basic_publish(x, "a", b"A")
    ch.basic_publish(x, "b", b"B")
    ch.basic_publish(x, "c", b"C")
    assert bodies(ch, q1) == [b"A"]
    assert bodies(ch, q2) == [b"B"]
    assert bodies(ch, q3) == [b"A", b"B"]


def test_direct_same_queue_bound_twice_gets_one_copy(ch, name):
    x = name("x")
    ch.exchange_declare(x, "direct")
    (q,) = make_queues(ch, name, 1)
    ch.queue_bind(q, x, "a")
    ch.queue_bind(q, x, "a")  # duplicate binding is a no-op
    ch.basic_publish(x, "a", b"once")
    assert bodies(ch, q) == [b"once"]


def test_fanout_ignores_routing_key(ch, name):
    x = name("x")
    ch.exchange_declare(x, "fanout")
    qs = make_queues(ch, name, 3)
    for i, q in enumerate(qs):
        ch.queue_bind(q, x, "key-%d" % i)
    ch.basic_publish(x, "whatever", b"F")
    for q in qs:
        assert bodies(ch, q) == [b"F"]


TOPIC_CASES = [
    # (binding pattern, routing key, matches?)
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.b.b.d", False),
    ("#.c", "c", True),
    ("#.c", "x.y.c", True),
    ("#.c", "x.c.d", False),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "ab", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("#", "", True),
    ("#", "a.b.c", True),
    ("#.#", "a", True),
    ("#.#", "", True),
    ("*", "", False),
    ("a.*.b", "a..b", True),  # an empty word is a word
    ("*.b", ".b", True),
    ("#.*", "a", True),
    ("#.*", "", False),
    ("a.#.#.b", "a.b", True),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a", False),
]


def test_topic_patterns(ch, name):
    x = name("x")
    ch.exchange_declare(x, "topic")
    qs = make_queues(ch, name, len(TOPIC_CASES))
    for q, (pattern, _, _) in zip(qs, TOPIC_CASES):
        ch.queue_bind(q, x, pattern)
    keys = sorted({key for _, key, _ in TOPIC_CASES})
    for key in keys:
        ch.basic_publish(x, key, key.encode() or b"<empty>")
    failures = []
    for q, (pattern, key, matches) in zip(qs, TOPIC_CASES):
        got = set(bodies(ch, q))
        expected_body = key.encode() or b"<empty>"
        if (expected_body in got) != matches:
            failures.append((pattern, key, matches))
    assert failures == []


def test_topic_multiple_matching_bindings_one_copy(ch, name):
    x = name("x")
    ch.exchange_declare(x, "topic")
    (q,) = make_queues(ch, name, 1)
    for pattern in ("a.*", "*.b", "#", "a.b"):
        ch.queue_bind(q, x, pattern)
    ch.basic_publish(x, "a.b", b"m")
    assert bodies(ch, q) == [b"m"]


def test_headers_x_match_all_and_any(ch, name):
    x = name("x")
    ch.exchange_declare(x, "headers")
    q_all, q_any, q_default, q_int = make_queues(ch, name, 4)
    ch.queue_bind(q_all, x, "", arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, x, "", arguments={"x-match": "any", "format": "pdf", "type": "report"})
    ch.queue_bind(q_default, x, "", arguments={"format": "pdf", "type": "report"})  # all
    ch.queue_bind(q_int, x, "", arguments={"x-match": "all", "n": 42})

    def pub(body, headers):
        ch.basic_publish(x, "ignored", body, pika.BasicProperties(headers=headers))

    pub(b"both", {"format": "pdf", "type": "report", "extra": 1})
    pub(b"format-only", {"format": "pdf"})
    pub(b"wrong-value", {"format": "zip", "type": "log"})
    pub(b"none", None)
    pub(b"int", {"n": 42})
    pub(b"int-as-str", {"n": "42"})
    assert bodies(ch, q_all) == [b"both"]
    assert bodies(ch, q_any) == sorted([b"both", b"format-only"])
    assert bodies(ch, q_default) == [b"both"]
    assert bodies(ch, q_int) == [b"int"]


def test_headers_x_prefixed_keys_ignored_unless_with_x(ch, name):
    x = name("x")
    ch.exchange_declare(x, "headers")
    q_all, q_all_x, q_any_x = make_queues(ch, name, 3)
    ch.queue_bind(q_all, x, "", arguments={"x-match": "all", "x-tag": "t", "k": "v"})
    ch.queue_bind(q_all_x, x, "", arguments={"x-match": "all-with-x", "x-tag": "t", "k": "v"})
    ch.queue_bind(q_any_x, x, "", arguments={"x-match": "any-with-x", "x-tag": "t"})
    ch.basic_publish(x, "", b"k-only", pika.BasicProperties(headers={"k": "v"}))
    ch.basic_publish(x, "", b"k-and-x", pika.BasicProperties(headers={"k": "v", "x-tag": "t"}))
    assert bodies(ch, q_all) == sorted([b"k-only", b"k-and-x"])
    assert bodies(ch, q_all_x) == [b"k-and-x"]
    assert bodies(ch, q_any_x) == [b"k-and-x"]


def test_headers_key_presence_with_void_value(ch, name):
    # A binding argument with a void (None) value matches on the key's presence.
    x = name("x")
    ch.exchange_declare(x, "headers")
    (q,) = make_queues(ch, name, 1)
    ch.queue_bind(q, x, "", arguments={"x-match": "all", "present": None})
    ch.basic_publish(x, "", b"with", pika.BasicProperties(headers={"present": "anything"}))
    ch.basic_publish(x, "", b"without", pika.BasicProperties(headers={"other": 1}))
    assert bodies(ch, q) == [b"with"]


def test_default_exchange_routes_by_queue_name(ch, name):
    (q,) = make_queues(ch, name, 1)
    ch.basic_publish("", q, b"direct-to-queue")
    assert bodies(ch, q) == [b"direct-to-queue"]


def test_default_exchange_cannot_be_bound_to(ch, name):
    (q,) = make_queues(ch, name, 1)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_bind(q, "", "k")
    assert e.value.reply_code == 403


def test_amq_exchanges_predeclared(ch):
    for x, kind in [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ]:
        ch.exchange_declare(x, kind, passive=True)


def test_amq_prefix_reserved(ch, name):
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare("amq.custom-" + name("x"), "direct")
    assert e.value.reply_code == 403


def test_exchange_to_exchange_bindings(ch, name):
    src, mid, leaf = name("src"), name("mid"), name("leaf")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(mid, "direct")
    ch.exchange_declare(leaf, "fanout")
    q_mid, q_leaf = make_queues(ch, name, 2)
    ch.exchange_bind(destination=mid, source=src, routing_key="orders.#")
    ch.exchange_bind(destination=leaf, source=mid, routing_key="orders.eu")
    ch.queue_bind(q_mid, mid, "orders.us")
    ch.queue_bind(q_leaf, leaf, "")
    ch.basic_publish(src, "orders.eu", b"eu")
    ch.basic_publish(src, "orders.us", b"us")
    ch.basic_publish(src, "billing.eu", b"billing")
    assert bodies(ch, q_mid) == [b"us"]
    assert bodies(ch, q_leaf) == [b"eu"]
    ch.exchange_unbind(destination=leaf, source=mid, routing_key="orders.eu")
    ch.basic_publish(src, "orders.eu", b"eu2")
    assert bodies(ch, q_leaf) == []


def test_exchange_binding_cycle_delivers_once(ch, name):
    a, b = name("a"), name("b")
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_bind(destination=b, source=a)
    ch.exchange_bind(destination=a, source=b)
    qa, qb = make_queues(ch, name, 2)
    ch.queue_bind(qa, a)
    ch.queue_bind(qb, b)
    ch.basic_publish(a, "", b"loop")
    assert bodies(ch, qa) == [b"loop"]
    assert bodies(ch, qb) == [b"loop"]


def test_alternate_exchange(ch, name):
    x, ae = name("x"), name("ae")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    q_main, q_ae = make_queues(ch, name, 2)
    ch.queue_bind(q_main, x, "known")
    ch.queue_bind(q_ae, ae, "")
    ch.basic_publish(x, "known", b"routed")
    # Mandatory is satisfied by the AE: no basic.return (pika would raise UnroutableError).
    ch.basic_publish(x, "unknown", b"to-ae", mandatory=True)
    assert bodies(ch, q_main) == [b"routed"]
    assert bodies(ch, q_ae) == [b"to-ae"]


def test_alternate_exchange_missing_means_unroutable(ch, name):
    x = name("x")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": name("no-such-ae")})
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish(x, "k", b"lost", mandatory=True)
    assert e.value.messages[0].method.reply_code == 312


def test_internal_exchange(ch, name):
    front, internal = name("front"), name("internal")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_declare(front, "fanout")
    ch.exchange_bind(destination=internal, source=front)
    (q,) = make_queues(ch, name, 1)
    ch.queue_bind(q, internal)
    ch.basic_publish(front, "", b"via-binding")
    assert bodies(ch, q) == [b"via-binding"]
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_publish(internal, "", b"direct")
    assert e.value.reply_code == 403
    assert e.value.reply_text.startswith("ACCESS_REFUSED")


def test_passive_declare_missing_exchange_404(connection, ch, name):
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(name("missing"), "direct", passive=True)
    assert e.value.reply_code == 404
    assert connection.is_open


@pytest.mark.parametrize(
    "first,second",
    [
        (dict(exchange_type="direct"), dict(exchange_type="fanout")),
        (dict(exchange_type="direct", durable=True), dict(exchange_type="direct", durable=False)),
        (dict(exchange_type="topic"), dict(exchange_type="topic", auto_delete=True)),
        (dict(exchange_type="topic"), dict(exchange_type="topic", internal=True)),
    ],
    ids=["type", "durable", "auto_delete", "internal"],
)
def test_redeclare_exchange_mismatch_406(connect, name, first, second):
    ch = connect().channel()
    x = name("x")
    ch.exchange_declare(x, **first)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(x, **second)
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith("PRECONDITION_FAILED")
    connect().channel().exchange_delete(x)


def test_unknown_exchange_type_is_503(channel, name):
    # RabbitMQ closes the connection with 503 COMMAND_INVALID for an unknown type.
    with pytest.raises(
        (pika.exceptions.ConnectionClosedByBroker, pika.exceptions.ChannelClosedByBroker)
    ) as e:
        channel.exchange_declare(name("x"), "no-such-type")
    assert e.value.reply_code == 503


def test_exchange_delete_if_unused(connect, name):
    ch = connect().channel()
    x = name("x")
    ch.exchange_declare(x, "direct")
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, "k")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_delete(x, if_unused=True)
    assert e.value.reply_code == 406
    ch = connect().channel()
    ch.exchange_delete(x)  # unconditional delete removes its bindings too
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(x, "direct", passive=True)
    assert e.value.reply_code == 404


def test_exchange_delete_missing_is_ok(channel, name):
    channel.exchange_delete(name("missing"))


def test_auto_delete_exchange_goes_with_last_binding(ch, name):
    x = name("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    (q,) = make_queues(ch, name, 1)
    ch.queue_bind(q, x, "k")
    ch.queue_unbind(q, x, "k")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(x, "direct", passive=True)
    assert e.value.reply_code == 404


def test_queue_delete_removes_its_bindings(ch, name):
    x = name("x")
    ch.exchange_declare(x, "direct")
    q = name("q")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    ch.queue_delete(q)
    ch.queue_declare(q)
    ch.basic_publish(x, "k", b"after")
    assert message_count(ch, q) == 0
    ch.queue_delete(q)
