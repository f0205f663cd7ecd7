"""kill -9 under load with 10,000 durable queues and 10,000 Kafka partitions on a broker
allowed 256 open segment files. Publishers with confirms write to random queues (and
every 20th message through a fanout exchange to 100 of them, stored once in the
journal) and an acks=all producer writes to random partitions of `flush=sync` topics;
the broker is killed twice. Afterwards every confirmed message is in its queue and
every acknowledged record is stored at its offset, and the broker never held more
segment files open than allowed plus its sockets."""

import os
import random
import threading
import time

import pika
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

QUEUES = 10_000
FANNED = 100  # queues 0..99 are bound to the fanout exchange and get nothing else
TOPICS = 100
PARTITIONS = 100
ROUNDS = 2
LOAD_S = 2.0
FANOUT = "scale.fan"
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def queue(i):
    return f"scale.q.{i:05}"


def topic(t):
    return f"scale.t.{t:03}"


def params(sluice):
    host, port = sluice.amqp
    return pika.ConnectionParameters(host, port, "/", pika.PlainCredentials("guest", "guest"),
                                     connection_attempts=1, socket_timeout=10, blocked_connection_timeout=30,
                                     heartbeat=0)


def connect(sluice):
    deadline = time.monotonic() + 30
    while True:
        try:
            return pika.BlockingConnection(params(sluice))
        except pika.exceptions.AMQPConnectionError:
            assert time.monotonic() < deadline, "AMQP did not come back"
            time.sleep(0.1)


class Publisher(threading.Thread):
    def __init__(self, sluice, seed, confirmed):
        super().__init__(daemon=True)
        self.sluice, self.rng, self.confirmed = sluice, random.Random(seed), confirmed
        self.seed = seed
        self.stop = threading.Event()

    def run(self):
        try:
            ch = connect(self.sluice).channel()
            ch.confirm_delivery()
            i = 0
            while not self.stop.is_set():
                body = f"p{self.seed}-{i}".encode()
                if i % 20 == 0:
                    ch.basic_publish(FANOUT, "", body, PERSISTENT)
                    self.confirmed.append((None, body))
                else:
                    q = self.rng.randrange(FANNED, QUEUES)
                    ch.basic_publish("", queue(q), body, PERSISTENT)
                    self.confirmed.append((q, body))
                i += 1
        except Exception:
            pass  # the broker was killed under us


class KafkaLoad(threading.Thread):
    def __init__(self, sluice, seed, acked):
        super().__init__(daemon=True)
        self.sluice, self.rng, self.acked, self.seed = sluice, random.Random(seed), acked, seed
        self.stop = threading.Event()

    def run(self):
        p = Producer({"bootstrap.servers": self.sluice.bootstrap, "acks": "all", "linger.ms": 2,
                      "enable.idempotence": False, "message.timeout.ms": 5000, "log_level": 2})

        def done(err, msg):
            if err is None:
                self.acked[(msg.topic(), msg.partition(), msg.offset())] = msg.value()

        i = 0
        while not self.stop.is_set():
            try:
                p.produce(topic(self.rng.randrange(TOPICS)), f"k{self.seed}-{i}".encode(),
                          partition=self.rng.randrange(PARTITIONS), on_delivery=done)
                i += 1
            except BufferError:
                pass
            p.poll(0.001)
        p.purge(in_queue=True, in_flight=True)
        p.poll(0)


def drain(ch, name):
    stored = set()
    while True:
        method, _props, body = ch.basic_get(name, auto_ack=True)
        if method is None:
            return stored
        stored.add(body)


def segment_files(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".log"):
                n += 1
        except OSError:
            pass
    return n


def test_ten_thousand_queues_and_partitions_lose_nothing_confirmed_through_kill9(small_budget_sluice):
    sluice = small_budget_sluice
    started = time.monotonic()
    c = connect(sluice)
    ch = c.channel()
    ch.exchange_declare(FANOUT, "fanout", durable=True)
    for i in range(QUEUES):
        ch.queue_declare(queue(i), durable=True)
        if i < FANNED:
            ch.queue_bind(queue(i), FANOUT)
    c.close()
    admin = AdminClient({"bootstrap.servers": sluice.bootstrap})
    futures = admin.create_topics([NewTopic(topic(t), PARTITIONS, 1, config={"flush": "sync"})
                                   for t in range(TOPICS)], request_timeout=120)
    for f in futures.values():
        f.result(120)
    made = time.monotonic() - started

    confirmed, acked = [], {}
    most_files = 0
    for round_ in range(ROUNDS):
        load = [Publisher(sluice, 10 * round_ + k, confirmed) for k in range(2)]
        load.append(KafkaLoad(sluice, 10 * round_ + 5, acked))
        for t in load:
            t.start()
        deadline = time.monotonic() + LOAD_S
        while time.monotonic() < deadline:
            most_files = max(most_files, segment_files(sluice.proc.pid))
            time.sleep(0.1)
        sluice.kill9()
        for t in load:
            t.stop.set()
        for t in load:
            t.join(timeout=30)
            assert not t.is_alive(), f"{type(t).__name__} did not stop"
        sluice.start()

    assert most_files <= 256, f"{most_files} segment files open, budget 256"
    # Every confirmed message is in its queue: bodies checked for the direct queues and
    # three of the fanned ones, counts for every fanned one.
    fanned = [b for q, b in confirmed if q is None]
    direct = {}
    for q, b in confirmed:
        if q is not None:
            direct.setdefault(q, set()).add(b)
    assert len(direct) > 100 and fanned, f"too little load: {len(direct)} queues, {len(fanned)} fanned"
    c = connect(sluice)
    ch = c.channel()
    lost = []
    for q, bodies in direct.items():
        lost.extend(bodies - drain(ch, queue(q)))
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
    for i in range(FANNED):
        count = ch.queue_declare(queue(i), durable=True, passive=True).method.message_count
        assert count >= len(fanned), f"{queue(i)} holds {count} of {len(fanned)} confirmed"
    for i in (0, 50, FANNED - 1):
        missing = set(fanned) - drain(ch, queue(i))
        assert not missing, f"{queue(i)} lost {len(missing)} fanned messages"
    c.close()

    assert acked, "the producer got no acknowledgement"
    touched = sorted({(t, p) for t, p, _ in acked})
    cons = Consumer({"bootstrap.servers": sluice.bootstrap, "group.id": "scale-check",
                     "enable.auto.commit": False, "log_level": 2})
    highs = {tp: cons.get_watermark_offsets(TopicPartition(*tp), timeout=30, cached=False)[1] for tp in touched}
    cons.assign([TopicPartition(t, p, 0) for t, p in touched])
    stored = {}
    deadline = time.monotonic() + 120
    while len(stored) < sum(highs.values()):
        assert time.monotonic() < deadline, f"read {len(stored)} of {sum(highs.values())} records"
        for m in cons.consume(1000, timeout=0.5):
            if m.error():
                raise KafkaException(m.error())
            stored[(m.topic(), m.partition(), m.offset())] = m.value()
    cons.close()
    missing = [k for k, v in acked.items() if stored.get(k) != v]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records lost, e.g. {missing[:5]}"
    print(f"\nscale crash: {QUEUES} queues and {TOPICS * PARTITIONS} partitions made in {made:.1f} s; "
          f"{ROUNDS} kill -9s; AMQP {len(confirmed)} confirmed ({len(fanned)} to {FANNED} queues each), "
          f"Kafka {len(acked)} acknowledged over {len(touched)} partitions; at most {most_files} segment files open")
