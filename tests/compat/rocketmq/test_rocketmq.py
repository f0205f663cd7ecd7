"""The official RocketMQ 5 Python client (rocketmq-python-client) against Sluice's gRPC
face: send, SimpleConsumer receive with an invisible time, ack, change of invisible
time, redelivery with an attempt count, tag filters, consumer groups, errors with
RocketMQ's codes, acknowledged progress across a kill -9, and one log shared with Kafka.
"""

import contextlib
import threading
import time

import grpc
import pytest
from kafka import KafkaConsumer, KafkaProducer
from rocketmq import (ClientConfiguration, ConsumeResult, Credentials, FilterExpression, Message,
                      MessageListener, Producer, PushConsumer, SimpleConsumer, TransactionChecker,
                      TransactionResolution)
from rocketmq.grpc_protocol import (AckMessageEntry, AckMessageRequest, Code, EndTransactionRequest,
                                    ForwardMessageToDeadLetterQueueRequest, MessagingServiceStub,
                                    QueryRouteRequest, Resource, TransactionSource)

INVISIBLE_S = 15
AWAIT_S = 2


def config(sluice):
    return ClientConfiguration(sluice.endpoint, Credentials())


@contextlib.contextmanager
def producer(sluice, topic):
    p = Producer(config(sluice), (topic,))
    p.startup()
    try:
        yield p
    finally:
        p.shutdown()


@contextlib.contextmanager
def consumer(sluice, group, topic, expression="*"):
    c = SimpleConsumer(config(sluice), group, {topic: FilterExpression(expression)}, await_duration=AWAIT_S)
    c.startup()
    try:
        yield c
    finally:
        c.shutdown()


def message(topic, body, tag=None, key=None, properties=None):
    m = Message()
    m.topic = topic
    m.body = body
    if tag:
        m.tag = tag
    if key:
        m.keys = key
    for k, v in (properties or {}).items():
        m.add_property(k, v)
    return m


def receive_all(c, expected, invisible=INVISIBLE_S, deadline_s=20):
    """Receives until `expected` messages arrived (or the deadline passed)."""
    got = []
    deadline = time.monotonic() + deadline_s
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(c.receive(32, invisible))
    return got


def test_sent_messages_are_received_with_what_the_producer_set_and_acked_once(sluice, make_topic, group):
    topic = make_topic(4)
    sent = {}
    with producer(sluice, topic) as p:
        for i in range(20):
            body = f"order-{i}".encode()
            receipt = p.send(message(topic, body, tag="TagA", key=f"key-{i}", properties={"n": str(i)}))
            sent[receipt.message_id] = (body, i)
    assert len(sent) == 20
    with consumer(sluice, group, topic) as c:
        got = receive_all(c, 20)
        assert sorted(m.message_id for m in got) == sorted(sent)
        for m in got:
            body, i = sent[m.message_id]
            assert m.body == body
            assert m.tag == "TagA"
            assert f"key-{i}" in m.keys
            assert m.properties.get("n") == str(i)
            assert m.delivery_attempt == 1
            assert m.topic == topic
            c.ack(m)
        # Acknowledged: nothing comes back, not even after the invisible time.
        assert c.receive(32, INVISIBLE_S) == []


def test_tag_expression_delivers_only_matching_tags(sluice, make_topic, group):
    topic = make_topic(2)
    with producer(sluice, topic) as p:
        for tag in ["TagA", "TagB", "TagC", "TagA"]:
            p.send(message(topic, tag.encode(), tag=tag))
        p.send(message(topic, b"untagged"))
    with consumer(sluice, group, topic, "TagA || TagC") as c:
        got = receive_all(c, 3)
        assert sorted(m.tag for m in got) == ["TagA", "TagA", "TagC"]
        for m in got:
            c.ack(m)
        assert c.receive(32, INVISIBLE_S) == []


def test_each_group_receives_everything_and_a_group_shares_its_messages(sluice, make_topic, group):
    topic = make_topic(4)
    with producer(sluice, topic) as p:
        ids = {p.send(message(topic, f"m{i}".encode())).message_id for i in range(12)}
    other = group + "-other"
    with consumer(sluice, group, topic) as a1, consumer(sluice, group, topic) as a2, \
            consumer(sluice, other, topic) as b:
        first = a1.receive(5, INVISIBLE_S)
        rest = receive_all(a2, 12 - len(first))
        shared = [m.message_id for m in first + rest]
        assert sorted(shared) == sorted(ids), "each message to one consumer of the group"
        assert sorted(m.message_id for m in receive_all(b, 12)) == sorted(ids)


@pytest.mark.timeout(90)
def test_an_unacknowledged_message_comes_back_after_its_invisible_time(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        sent_id = p.send(message(topic, b"retry me")).message_id
    with consumer(sluice, group, topic) as c:
        [first] = receive_all(c, 1, invisible=10)
        assert first.message_id == sent_id and first.delivery_attempt == 1
        # Invisible to the group until the deadline; operators see it in flight.
        assert c.receive(32, 10) == []
        [sub] = [s for s in admin_get(sluice, "/api/sluice/rocketmq/subscriptions")
                 if s["group"] == group and s["topic"] == topic]
        assert (sub["in_flight"], sub["committed"], sub["end_offset"], sub["lag"]) == (1, 0, 1, 1)
        again = receive_all(c, 1, invisible=10, deadline_s=30)
        assert [m.message_id for m in again] == [sent_id]
        assert again[0].delivery_attempt == 2
        # The first delivery's receipt is stale now.
        with pytest.raises(Exception) as refused:
            c.ack(first)
        assert getattr(refused.value, "code", None) == Code.INVALID_RECEIPT_HANDLE
        c.ack(again[0])


@pytest.mark.timeout(90)
def test_change_invisible_duration_renews_the_receipt(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        p.send(message(topic, b"slow job"))
    with consumer(sluice, group, topic) as c:
        [m] = receive_all(c, 1, invisible=10)
        old_handle = m.receipt_handle
        c.change_invisible_duration(m, 30)
        assert m.receipt_handle != old_handle
        # Past the first deadline it stays invisible: the new one holds.
        time.sleep(11)
        assert c.receive(32, 10) == []
        c.ack(m)


def admin_get(sluice, path):
    """GET on the broker's admin HTTP API as guest."""
    import base64
    import json
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{sluice.ports['http']}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def raw_call(sluice, method, request, client_id="raw-test-client"):
    """One unary call with the official client's generated stub; -> the response."""
    metadata = [("x-mq-language", "PYTHON"), ("x-mq-protocol", "GRPC_V2")]
    if client_id:
        metadata.append(("x-mq-client-id", client_id))
    with grpc.insecure_channel(sluice.endpoint) as channel:
        stub = MessagingServiceStub(channel)
        return getattr(stub, method)(request, metadata=metadata, timeout=5)


def test_errors_come_back_with_rocketmq_codes(sluice, make_topic, group):
    topic = make_topic(1)
    missing = Resource(name=f"{topic}-missing")
    route = raw_call(sluice, "QueryRoute", QueryRouteRequest(topic=missing))
    assert route.status.code == Code.TOPIC_NOT_FOUND and not route.message_queues
    anonymous = raw_call(sluice, "QueryRoute", QueryRouteRequest(topic=Resource(name=topic)), client_id=None)
    assert anonymous.status.code == Code.CLIENT_ID_REQUIRED
    ok = raw_call(sluice, "QueryRoute", QueryRouteRequest(topic=Resource(name=topic)))
    assert ok.status.code == Code.OK and len(ok.message_queues) == 1
    ack = raw_call(sluice, "AckMessage", AckMessageRequest(
        group=Resource(name=group), topic=Resource(name=topic),
        entries=[AckMessageEntry(message_id="x", receipt_handle="not-a-handle")]))
    assert ack.status.code == Code.INVALID_RECEIPT_HANDLE
    with producer(sluice, topic) as p:
        with pytest.raises(Exception, match="route"):
            p.send(message(f"{topic}-missing", b"x"))
    with consumer(sluice, group, topic) as c:
        with pytest.raises(Exception) as short:
            c.receive(1, 5)
        assert getattr(short.value, "code", None) == Code.ILLEGAL_INVISIBLE_TIME


def test_acknowledged_progress_survives_kill_9(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        ids = [p.send(message(topic, f"m{i}".encode())).message_id for i in range(10)]
    with consumer(sluice, group, topic) as c:
        got = receive_all(c, 10)
        got.sort(key=lambda m: ids.index(m.message_id))
        for m in got[:6]:
            c.ack(m)
    sluice.kill9_restart()
    with consumer(sluice, group, topic) as c:
        after = receive_all(c, 4)
        assert sorted(m.message_id for m in after) == sorted(ids[6:])


def test_kafka_and_rocketmq_read_each_others_messages(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        p.send(message(topic, b"from rocketmq", tag="T", key="order-1", properties={"region": "eu"}))
    kp = KafkaProducer(bootstrap_servers=sluice.bootstrap)
    kp.send(topic, key=b"k2", value=b"from kafka", headers=[("source", b"kafka")]).get(timeout=10)
    kp.close()

    kc = KafkaConsumer(topic, bootstrap_servers=sluice.bootstrap, auto_offset_reset="earliest",
                       consumer_timeout_ms=5000, enable_auto_commit=False)
    records = list(kc)
    kc.close()
    assert [r.value for r in records] == [b"from rocketmq", b"from kafka"]
    assert records[0].key == b"order-1"
    assert ("region", b"eu") in records[0].headers

    with consumer(sluice, group, topic) as c:
        got = receive_all(c, 2)
        by_body = {m.body: m for m in got}
        assert set(by_body) == {b"from rocketmq", b"from kafka"}
        assert by_body[b"from rocketmq"].tag == "T"
        k = by_body[b"from kafka"]
        assert "k2" in k.keys
        assert k.properties.get("source") == "kafka"


def delayed(topic, body, delay_ms):
    m = message(topic, body)
    # rocketmq-python-client 5.1.2 takes milliseconds (and sends them as seconds: Sluice
    # reads a seconds value past the year 5000 as milliseconds).
    m.delivery_timestamp = int(time.time() * 1000) + delay_ms
    return m


def test_a_delayed_message_is_delivered_at_its_time_and_not_before(sluice, make_topic, group):
    topic = make_topic(2)
    with producer(sluice, topic) as p:
        sent_at = time.time()
        receipt = p.send(delayed(topic, b"close order 7", 3000))
    with consumer(sluice, group, topic) as c:
        early = c.receive(32, INVISIBLE_S)
        assert early == [] and time.time() - sent_at < 3, "held until its delivery time"
        [m] = receive_all(c, 1)
        assert time.time() - sent_at >= 2.9
        assert m.message_id == receipt.message_id and m.body == b"close order 7"
        assert m.delivery_timestamp is not None
        c.ack(m)


def test_delayed_messages_survive_kill_9(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        ids = {p.send(delayed(topic, f"order-{i}".encode(), 4000)).message_id for i in range(3)}
    sluice.kill9_restart()
    with consumer(sluice, group, topic) as c:
        got = receive_all(c, 3, deadline_s=25)
        assert {m.message_id for m in got} == ids


def test_the_unpaid_order_example_closes_the_unpaid_orders(sluice, make_topic):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "unpaid_order_close_rocketmq.py")
    spec = importlib.util.spec_from_file_location("unpaid_order_close_rocketmq", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        orders = [{"id": f"o{i}"} for i in range(3)]
        for order in orders:
            example.send_delayed(p, topic, order, 1500)
    with consumer(sluice, "payment-checker-test", topic, "order-created") as c:
        closed, kept = example.close_unpaid(c, {"o1"}, 20, 3)
    assert sorted(closed) == ["o0", "o2"] and kept == ["o1"]


def test_message_types_are_checked_against_their_properties(sluice, make_topic):
    from google.protobuf.timestamp_pb2 import Timestamp
    from rocketmq.grpc_protocol import MessageType, SendMessageRequest
    from rocketmq.grpc_protocol.definition_pb2 import Message as PbMessage
    from rocketmq.grpc_protocol.definition_pb2 import SystemProperties
    topic = make_topic(1)

    def send(**system):
        msg = PbMessage(topic=Resource(name=topic), body=b"x",
                        system_properties=SystemProperties(message_id="01TEST", **system))
        return raw_call(sluice, "SendMessage", SendMessageRequest(messages=[msg])).status.code

    later = Timestamp(seconds=int(time.time()) + 60)
    assert send(message_type=MessageType.NORMAL, delivery_timestamp=later) == Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
    assert send(message_type=MessageType.DELAY) == Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
    assert send(message_type=MessageType.FIFO) == Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
    assert send(message_type=MessageType.NORMAL, message_group="g") == Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
    assert send(message_type=MessageType.TRANSACTION, message_group="g") == Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
    assert send(message_type=MessageType.FIFO, message_group="g") == Code.OK
    too_late = Timestamp(seconds=int(time.time()) + 4 * 24 * 3600)
    assert send(message_type=MessageType.DELAY, delivery_timestamp=too_late) == Code.ILLEGAL_DELIVERY_TIME
    assert send(message_type=MessageType.DELAY, delivery_timestamp=later) == Code.OK


def test_a_message_group_is_delivered_in_order_one_message_at_a_time(sluice, make_topic, group):
    topic = make_topic(2)
    made = sluice.admin("group", "create", group, "--fifo")
    assert made.returncode == 0, made.stderr
    with producer(sluice, topic) as p:
        for i in range(3):
            for order in ("order-1", "order-2"):
                m = message(topic, f"{order}/{i}".encode())
                m.message_group = order
                p.send(m)
        p.send(message(topic, b"no group"))
    seen = {"order-1": [], "order-2": []}
    with consumer(sluice, group, topic) as c:
        first = receive_all(c, 3)
        assert sorted(m.body for m in first) == [b"no group", b"order-1/0", b"order-2/0"]
        # The later messages of each group wait for the first one's ack.
        assert c.receive(32, INVISIBLE_S) == []
        pending = [m for m in first if m.message_group]
        c.ack(next(m for m in first if not m.message_group))
        while pending:
            for m in pending:
                seen[m.message_group].append(m.body.decode())
                c.ack(m)
            pending = receive_all(c, 2, deadline_s=6)
            groups = [m.message_group for m in pending]
            assert len(groups) == len(set(groups)), "one message per group at a time"
    assert seen == {g: [f"{g}/{i}" for i in range(3)] for g in seen}


class RecordingChecker(TransactionChecker):
    """Answers check-backs with `resolution` and remembers the message ids asked about."""

    def __init__(self, resolution):
        self.resolution = resolution
        self.asked = []

    def check(self, message):
        self.asked.append(message.message_id)
        return self.resolution


@contextlib.contextmanager
def transactional_producer(sluice, topic, checker):
    p = Producer(config(sluice), (topic,), checker)
    p.startup()
    try:
        yield p
    finally:
        p.shutdown()


def test_a_half_message_is_invisible_until_commit_and_gone_on_rollback(sluice, make_topic, group):
    topic = make_topic(1)
    checker = RecordingChecker(TransactionResolution.ROLLBACK)
    with transactional_producer(sluice, topic, checker) as p, consumer(sluice, group, topic) as c:
        committed = p.begin_transaction()
        kept = p.send(message(topic, b"paid"), committed)
        rolled_back = p.begin_transaction()
        dropped = p.send(message(topic, b"cancelled"), rolled_back)
        assert kept.transaction_id and dropped.transaction_id
        assert c.receive(32, INVISIBLE_S) == [], "half messages are invisible"
        committed.commit()
        rolled_back.rollback()
        got = receive_all(c, 1)
        assert [(m.message_id, m.body) for m in got] == [(kept.message_id, b"paid")]
        for m in got:
            c.ack(m)
        assert c.receive(32, INVISIBLE_S) == [], "the rolled-back one never shows"
    # Ended transactions cannot be ended again.
    again = raw_call(sluice, "EndTransaction", EndTransactionRequest(
        topic=Resource(name=topic), message_id=kept.message_id, transaction_id=kept.transaction_id,
        resolution=TransactionResolution.COMMIT, source=TransactionSource.SOURCE_CLIENT))
    assert again.status.code == Code.INVALID_TRANSACTION_ID


@pytest.mark.timeout(90)
def test_an_unresolved_transaction_is_checked_back_and_survives_kill_9(sluice, make_topic, group):
    topic = make_topic(1)
    with transactional_producer(sluice, topic, RecordingChecker(TransactionResolution.COMMIT)) as p:
        receipt = p.send(message(topic, b"order 9 paid?"), p.begin_transaction())
    # The producer went away without ending it, and so did the broker.
    sluice.kill9_restart()
    checker = RecordingChecker(TransactionResolution.COMMIT)
    with transactional_producer(sluice, topic, checker) as p, consumer(sluice, group, topic) as c:
        got = receive_all(c, 1, deadline_s=40)
        assert [m.message_id for m in got] == [receipt.message_id]
        assert checker.asked == [receipt.message_id], "committed by the check-back"


class CollectingListener(MessageListener):
    """Fails each message's first delivery when `fail_first` is set, then succeeds."""

    def __init__(self, fail_first=False):
        self.fail_first = fail_first
        self.deliveries = []
        self.lock = threading.Lock()

    def consume(self, message):
        with self.lock:
            self.deliveries.append((message.body, message.delivery_attempt))
        if self.fail_first and message.delivery_attempt == 1:
            return ConsumeResult.FAILURE
        return ConsumeResult.SUCCESS


@pytest.mark.timeout(90)
def test_a_push_consumer_gets_every_message_and_a_failed_one_again(sluice, make_topic, group):
    topic = make_topic(2)
    listener = CollectingListener(fail_first=True)
    push = PushConsumer(config(sluice), group, listener, {topic: FilterExpression()})
    push.startup()
    try:
        with producer(sluice, topic) as p:
            for i in range(4):
                p.send(message(topic, f"job-{i}".encode()))
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            with listener.lock:
                if len(listener.deliveries) >= 8:
                    break
            time.sleep(0.2)
    finally:
        push.shutdown()
    # Each job failed once and came back (after the server's 1 s backoff) as attempt 2.
    assert sorted(listener.deliveries) == sorted(
        [(f"job-{i}".encode(), a) for i in range(4) for a in (1, 2)])


def test_an_sql92_filter_selects_by_properties_and_tag(sluice, make_topic, group):
    from rocketmq.grpc_protocol import FilterType
    topic = make_topic(2)
    orders = [("eu", "250", "paid"), ("eu", "50", "paid"), ("us", "900", "paid"), ("eu", "300", "refund")]
    with producer(sluice, topic) as p:
        for region, amount, tag in orders:
            p.send(message(topic, f"{region}-{amount}-{tag}".encode(), tag=tag,
                           properties={"region": region, "amount": amount}))
        p.send(message(topic, b"no properties", tag="paid"))
    expression = "region = 'eu' AND amount > 100 AND TAGS = 'paid'"
    c = SimpleConsumer(config(sluice), group, {topic: FilterExpression(expression, FilterType.SQL)},
                       await_duration=AWAIT_S)
    c.startup()
    try:
        got = receive_all(c, 1)
        for m in got:
            c.ack(m)
        got += c.receive(32, INVISIBLE_S)
        assert [m.body for m in got] == [b"eu-250-paid"]
    finally:
        c.shutdown()
    with consumer(sluice, group + "-bad", topic) as bad:
        bad.subscribe(topic, FilterExpression("amount >", FilterType.SQL))
        with pytest.raises(Exception) as refused:
            bad.receive(1, INVISIBLE_S)
        assert getattr(refused.value, "code", None) == Code.ILLEGAL_FILTER_EXPRESSION


def test_a_message_past_its_last_attempt_goes_to_the_dead_letter_topic(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        sent = p.send(message(topic, b"poison", properties={"k": "v"})).message_id
    with consumer(sluice, group, topic) as c:
        for attempt in (1, 2, 3):
            [m] = receive_all(c, 1)
            assert (m.message_id, m.delivery_attempt) == (sent, attempt)
            c.change_invisible_duration(m, 0)  # given back at once: a failed attempt
        # The server allows 3 deliveries (conftest): the message left the topic.
        assert c.receive(32, INVISIBLE_S) == []
    with consumer(sluice, group + "-dlq", f"%DLQ%{group}") as dlq:
        [dead] = receive_all(dlq, 1)
        assert (dead.message_id, dead.body, dead.properties.get("k")) == (sent, b"poison", "v")
        dlq.ack(dead)


def test_a_group_s_new_retry_limit_applies_to_the_queues_it_already_reads(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        sent = p.send(message(topic, b"poison")).message_id
    with consumer(sluice, group, topic) as c:
        [m] = receive_all(c, 1)
        assert m.delivery_attempt == 1
        # The group is now allowed one retry (2 deliveries), not the server's 3.
        assert sluice.admin("group", "create", group, "--retry-max-times", "1").returncode == 0
        c.change_invisible_duration(m, 0)
        [m] = receive_all(c, 1)
        assert (m.message_id, m.delivery_attempt) == (sent, 2)
        c.change_invisible_duration(m, 0)
        assert c.receive(32, INVISIBLE_S) == []
    with consumer(sluice, group + "-dlq", f"%DLQ%{group}") as dlq:
        [dead] = receive_all(dlq, 1)
        assert dead.message_id == sent
        dlq.ack(dead)


def test_forward_to_dead_letter_queue_moves_a_delivery_at_once(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        sent = p.send(message(topic, b"unprocessable")).message_id
    with consumer(sluice, group, topic) as c:
        [m] = receive_all(c, 1)
        request = ForwardMessageToDeadLetterQueueRequest(
            group=Resource(name=group), topic=Resource(name=topic), receipt_handle=m.receipt_handle,
            message_id=m.message_id, delivery_attempt=1, max_delivery_attempts=3)
        assert raw_call(sluice, "ForwardMessageToDeadLetterQueue", request).status.code == Code.OK
        again = raw_call(sluice, "ForwardMessageToDeadLetterQueue", request)
        assert again.status.code == Code.INVALID_RECEIPT_HANDLE, "moved once"
        assert c.receive(32, INVISIBLE_S) == []
    with consumer(sluice, group + "-dlq", f"%DLQ%{group}") as dlq:
        assert [d.message_id for d in receive_all(dlq, 1)] == [sent]


def test_a_topic_accepts_only_its_message_type(sluice, make_topic):
    from rocketmq.grpc_protocol import MessageType, SendMessageRequest
    from rocketmq.grpc_protocol.definition_pb2 import Message as PbMessage
    from rocketmq.grpc_protocol.definition_pb2 import SystemProperties
    fifo = make_topic(2, {"message.type": "fifo"})  # any case, as RocketMQ's admin takes it
    route = raw_call(sluice, "QueryRoute", QueryRouteRequest(topic=Resource(name=fifo)))
    assert {tuple(q.accept_message_types) for q in route.message_queues} == {(MessageType.FIFO,)}

    def send(**system):
        msg = PbMessage(topic=Resource(name=fifo), body=b"x",
                        system_properties=SystemProperties(message_id="01TYPE", **system))
        return raw_call(sluice, "SendMessage", SendMessageRequest(messages=[msg])).status.code

    assert send(message_type=MessageType.NORMAL) == Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
    assert send(message_type=MessageType.FIFO, message_group="g") == Code.OK
    # The client checks the route's types itself before sending.
    with producer(sluice, fifo) as p:
        with pytest.raises(Exception):
            p.send(message(fifo, b"not fifo"))
        m = message(fifo, b"fifo")
        m.message_group = "order-1"
        assert p.send(m).message_id


def test_a_flush_sync_topic_answers_sends_and_keeps_them_across_kill_9(sluice, make_topic, group):
    topic = make_topic(1, {"flush": "sync"})
    with producer(sluice, topic) as p:
        ids = [p.send(message(topic, f"m{i}".encode())).message_id for i in range(5)]
        ids.append(p.send(delayed(topic, b"later", 1500)).message_id)
    sluice.kill9_restart()
    with consumer(sluice, group, topic) as c:
        assert sorted(m.message_id for m in receive_all(c, 6)) == sorted(ids)


def test_a_plain_group_gets_message_groups_concurrently(sluice, make_topic, group):
    topic = make_topic(1)
    with producer(sluice, topic) as p:
        for i in range(3):
            m = message(topic, f"order-1/{i}".encode())
            m.message_group = "order-1"
            p.send(m)
    with consumer(sluice, group, topic) as c:
        # Not a FIFO group: nothing waits for an ack.
        assert len(receive_all(c, 3)) == 3


def test_sluice_admin_creates_typed_topics_and_configures_groups(sluice, group):
    import uuid
    topic = f"admin-{uuid.uuid4().hex[:8]}"
    made = sluice.admin("topic", "create", topic, "--partitions", "3", "--message-type", "Delay")
    assert made.returncode == 0 and "created" in made.stdout, made.stderr
    again = sluice.admin("topic", "create", topic, "--partitions", "3", "--message-type", "delay")
    assert again.returncode == 0 and "ready" in again.stdout, "exists: usable, exit 0"
    route = raw_call(sluice, "QueryRoute", QueryRouteRequest(topic=Resource(name=topic)))
    assert len(route.message_queues) == 3
    from rocketmq.grpc_protocol import MessageType
    assert {tuple(q.accept_message_types) for q in route.message_queues} == {(MessageType.DELAY,)}
    bad = sluice.admin("topic", "create", topic + "-x", "--message-type", "urgent")
    assert bad.returncode == 1 and "message.type" in bad.stderr
    assert sluice.admin("group", "create", group, "--retry-max-times", "2").returncode == 0
    refused = sluice.admin("group", "create", group, password="wrong")
    assert refused.returncode == 1 and "401" in refused.stderr


def test_auto_creation_is_off_by_default_and_a_setting_turns_it_on(sluice, tmp_path):
    from conftest import Sluice
    missing = Resource(name="never-created")
    assert raw_call(sluice, "QueryRoute", QueryRouteRequest(topic=missing)).status.code == Code.TOPIC_NOT_FOUND
    other = Sluice(str(tmp_path), env={"SLUICE_ROCKETMQ_AUTO_CREATE_TOPICS": "true",
                                       "SLUICE_ROCKETMQ_DEFAULT_QUEUES": "3"})
    other.start()
    try:
        route = raw_call(other, "QueryRoute", QueryRouteRequest(topic=Resource(name="made-on-demand")))
        assert route.status.code == Code.OK and len(route.message_queues) == 3
        with producer(other, "made-on-demand") as p:
            assert p.send(message("made-on-demand", b"hello")).message_id
    finally:
        other.stop()


def test_a_body_over_4_mib_is_refused_with_rocketmq_s_code(sluice, make_topic):
    from rocketmq.grpc_protocol import MessageType, SendMessageRequest
    from rocketmq.grpc_protocol.definition_pb2 import Message as PbMessage
    from rocketmq.grpc_protocol.definition_pb2 import SystemProperties
    topic = make_topic(1)
    msg = PbMessage(topic=Resource(name=topic), body=b"x" * (4 * 1024 * 1024 + 1),
                    system_properties=SystemProperties(message_id="01BIG", message_type=MessageType.NORMAL))
    reply = raw_call(sluice, "SendMessage", SendMessageRequest(messages=[msg]))
    assert reply.status.code == Code.MESSAGE_BODY_TOO_LARGE
