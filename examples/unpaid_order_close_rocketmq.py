#!/usr/bin/env python3
"""Close an order if it is still unpaid 30 minutes after it was created — with RocketMQ 5.

Every new order is sent as a delayed message (RocketMQ's DELAY type: a delivery time on
the message) to the topic the payment checker consumes; the broker holds it, durably,
until then. The checker, a SimpleConsumer, closes the orders that were not paid.

Run it against Sluice (the topic must exist: create it with any Kafka admin client,
e.g. `kcat -b localhost:9092 -L -t orders-check-payment` auto-creates it):

    python examples/unpaid_order_close_rocketmq.py --endpoint 127.0.0.1:8081 \
        --delay-ms 1800000        # 30 minutes; use e.g. 2000 to watch it happen
"""

import argparse
import json
import time
import uuid

from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer

TOPIC = "orders-check-payment"
GROUP = "payment-checker"


def send_delayed(producer, topic, order, delay_ms):
    m = Message()
    m.topic = topic
    m.body = json.dumps(order).encode()
    m.keys = order["id"]
    m.tag = "order-created"
    # Milliseconds, as rocketmq-python-client 5.1.2 documents it.
    m.delivery_timestamp = int(time.time() * 1000) + delay_ms
    return producer.send(m)


def close_unpaid(consumer, paid, timeout_s, expected):
    """Receives due orders; closes those not paid. Returns (closed, kept) order ids."""
    closed, kept = [], []
    deadline = time.monotonic() + timeout_s
    while len(closed) + len(kept) < expected and time.monotonic() < deadline:
        for message in consumer.receive(16, 30):
            order = json.loads(message.body)
            (kept if order["id"] in paid else closed).append(order["id"])
            consumer.ack(message)
    return closed, kept


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:8081")
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--group", default=GROUP)
    parser.add_argument("--delay-ms", type=int, default=30 * 60 * 1000)
    args = parser.parse_args()

    config = ClientConfiguration(args.endpoint, Credentials())
    producer = Producer(config, (args.topic,))
    producer.startup()
    consumer = SimpleConsumer(config, args.group, {args.topic: FilterExpression("order-created")},
                              await_duration=5)
    consumer.startup()
    try:
        orders = [{"id": str(uuid.uuid4()), "item": f"book-{i}"} for i in range(3)]
        paid = {orders[1]["id"]}  # the customer paid for one of them in time
        for order in orders:
            send_delayed(producer, args.topic, order, args.delay_ms)
        print(f"created {len(orders)} orders; checking payment in {args.delay_ms} ms")
        closed, kept = close_unpaid(consumer, paid, args.delay_ms / 1000 + 30, len(orders))
        print(f"closed unpaid orders: {closed}")
        print(f"kept paid orders: {kept}")
    finally:
        consumer.shutdown()
        producer.shutdown()


if __name__ == "__main__":
    main()
