"""kill -9 under load, many times: a publisher with confirms and a consumer with manual
acks on a durable AMQP queue, and an acks=all producer on a `flush=sync` Kafka topic, run
while the broker is killed and restarted six times. Afterwards every confirmed AMQP
message was either acknowledged by the consumer or is still in the queue, and every
acknowledged Kafka record is stored at its offset. Redeliveries after each crash are
counted and bounded."""

import threading
import time

import pika
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROUNDS = 6
LOAD_S = 1.5
QUEUE = "crash.q"
TOPIC = "crash"


def amqp_params(sluice):
    host, port = sluice.amqp
    return pika.ConnectionParameters(host, port, "/", pika.PlainCredentials("guest", "guest"),
                                     connection_attempts=1, socket_timeout=5, blocked_connection_timeout=10)


def declare(sluice):
    deadline = time.monotonic() + 20
    while True:
        try:
            c = pika.BlockingConnection(amqp_params(sluice))
            break
        except pika.exceptions.AMQPConnectionError:
            assert time.monotonic() < deadline, "AMQP did not come back"
            time.sleep(0.1)
    c.channel().queue_declare(QUEUE, durable=True)
    c.close()


class AmqpPublisher(threading.Thread):
    def __init__(self, sluice, round_, confirmed):
        super().__init__(daemon=True)
        self.sluice, self.round, self.confirmed = sluice, round_, confirmed
        self.stop = threading.Event()

    def run(self):
        try:
            c = pika.BlockingConnection(amqp_params(self.sluice))
            ch = c.channel()
            ch.confirm_delivery()
            i = 0
            while not self.stop.is_set():
                body = f"r{self.round}-{i}".encode()
                ch.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2))
                self.confirmed.add(body)  # basic_publish returned: the broker confirmed it
                i += 1
        except Exception:
            pass  # the broker was killed under us


class AmqpConsumer(threading.Thread):
    """Acks each message after recording it; `acked` holds bodies whose ack was sent
    before the crash (an ack in flight at the kill may be lost: then the message comes
    back, which counts as a redelivery, not a loss)."""

    def __init__(self, sluice, received):
        super().__init__(daemon=True)
        self.sluice, self.received = sluice, received
        self.stop = threading.Event()

    def run(self):
        try:
            c = pika.BlockingConnection(amqp_params(self.sluice))
            ch = c.channel()
            ch.basic_qos(prefetch_count=200)
            for method, _props, body in ch.consume(QUEUE, inactivity_timeout=0.1):
                if self.stop.is_set():
                    break
                if method is None:
                    continue
                self.received.append(body)
                ch.basic_ack(method.delivery_tag)
        except Exception:
            pass


class KafkaLoad(threading.Thread):
    def __init__(self, sluice, round_, acked):
        super().__init__(daemon=True)
        self.sluice, self.round, self.acked = sluice, round_, acked
        self.stop = threading.Event()

    def run(self):
        p = Producer({"bootstrap.servers": self.sluice.bootstrap, "acks": "all",
                      "enable.idempotence": False, "linger.ms": 2, "message.timeout.ms": 5000,
                      "log_level": 2})

        def done(err, msg):
            if err is None:
                self.acked[(msg.partition(), msg.offset())] = msg.value()

        i = 0
        while not self.stop.is_set():
            try:
                p.produce(TOPIC, f"k{self.round}-{i}".encode(), on_delivery=done)
                i += 1
            except BufferError:
                pass
            p.poll(0.001)
        # Reports that arrived before the kill are in `acked`; nothing after it counts.
        p.purge(in_queue=True, in_flight=True)
        p.poll(0)


def test_confirmed_and_acknowledged_survive_repeated_kill9_under_load(sluice):
    admin = AdminClient({"bootstrap.servers": sluice.bootstrap})
    fut = admin.create_topics([NewTopic(TOPIC, 3, 1, config={"flush": "sync"})])[TOPIC]
    fut.result(15)
    declare(sluice)

    confirmed, received, acked = set(), [], {}
    for round_ in range(ROUNDS):
        load = [AmqpPublisher(sluice, round_, confirmed), AmqpConsumer(sluice, received),
                KafkaLoad(sluice, round_, acked)]
        for t in load:
            t.start()
        time.sleep(LOAD_S)  # the load itself: this is how long the broker runs before the kill
        sluice.kill9()
        # Everything the clients were told before the kill is recorded now.
        for t in load:
            t.stop.set()
        for t in load:
            t.join(timeout=20)
            assert not t.is_alive(), f"{type(t).__name__} did not stop"
        sluice.start()
        declare(sluice)

    # Drain what is left: everything confirmed is acked-before or still queued.
    c = pika.BlockingConnection(amqp_params(sluice))
    ch = c.channel()
    left = []
    while True:
        method, _props, body = ch.basic_get(QUEUE, auto_ack=True)
        if method is None:
            break
        left.append(body)
    c.close()
    seen = set(received) | set(left)
    lost = confirmed - seen
    assert confirmed, "the publisher confirmed nothing"
    assert not lost, f"{len(lost)} of {len(confirmed)} confirmed AMQP messages lost, e.g. {sorted(lost)[:5]}"
    duplicates = len(received) + len(left) - len(seen)
    # At most what was in flight to the consumer at each crash comes back (prefetch 200).
    assert duplicates <= 200 * ROUNDS, f"{duplicates} redeliveries"

    cons = Consumer({"bootstrap.servers": sluice.bootstrap, "group.id": "crash-check",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    stored = {}
    highs = {}
    for part in range(3):
        _low, high = cons.get_watermark_offsets(TopicPartition(TOPIC, part), timeout=15, cached=False)
        highs[part] = high
    cons.assign([TopicPartition(TOPIC, p, 0) for p in range(3)])
    deadline = time.monotonic() + 60
    while len(stored) < sum(highs.values()):
        assert time.monotonic() < deadline, f"read {len(stored)} of {sum(highs.values())} records"
        for m in cons.consume(500, timeout=0.5):
            if m.error():
                raise KafkaException(m.error())
            stored[(m.partition(), m.offset())] = m.value()
    cons.close()
    assert acked, "the producer got no acknowledgement"
    missing = [k for k, v in acked.items() if stored.get(k) != v]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records lost or changed, e.g. {sorted(missing)[:5]}"
    print(f"\ncrash suite: {ROUNDS} kill -9s; AMQP {len(confirmed)} confirmed, {duplicates} delivered twice "
          f"({duplicates / ROUNDS:.1f} per crash); Kafka {len(acked)} acknowledged, all stored")
