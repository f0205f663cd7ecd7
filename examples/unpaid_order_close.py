#!/usr/bin/env python3
"""Close an order if it is still unpaid 30 minutes after it was created — two ways.

1. TTL + dead-letter exchange (what RabbitMQ users know): every new order goes into a
   holding queue with `x-message-ttl`; when it expires it is dead-lettered to the queue
   the payment checker consumes.
2. Delayed exchange (Sluice's native answer): publish the order to an `x-delayed-message`
   exchange with an `x-delay` header; it is routed when the delay is over. Delays can
   differ per message, nothing waits at the head of a queue, and durable delayed
   messages survive a broker restart.

Run it against a broker (Sluice or RabbitMQ with the delayed-message plugin):

    python examples/unpaid_order_close.py --url amqp://guest:guest@localhost:5672/%2F \
        --delay-ms 1800000        # 30 minutes; use e.g. 2000 to watch it happen
"""

import argparse
import json
import time
import uuid

import pika

CHECK_QUEUE = "orders.check-payment"


def declare_ttl_dlx(ch, delay_ms, prefix=""):
    """Holding queue with a TTL whose expired orders are dead-lettered to the checker."""
    ch.exchange_declare(prefix + "orders.timeout", "direct", durable=True)
    ch.queue_declare(prefix + CHECK_QUEUE, durable=True)
    ch.queue_bind(prefix + CHECK_QUEUE, prefix + "orders.timeout", routing_key="check")
    ch.queue_declare(
        prefix + "orders.pending",
        durable=True,
        arguments={
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": prefix + "orders.timeout",
            "x-dead-letter-routing-key": "check",
        },
    )


def publish_ttl_dlx(ch, order, prefix=""):
    ch.basic_publish(
        "",
        prefix + "orders.pending",
        json.dumps(order).encode(),
        pika.BasicProperties(delivery_mode=2, content_type="application/json"),
    )


def declare_delayed(ch, prefix=""):
    """A delayed exchange routing due orders straight to the checker."""
    ch.exchange_declare(
        prefix + "orders.delayed",
        "x-delayed-message",
        durable=True,
        arguments={"x-delayed-type": "direct"},
    )
    ch.queue_declare(prefix + CHECK_QUEUE, durable=True)
    ch.queue_bind(prefix + CHECK_QUEUE, prefix + "orders.delayed", routing_key="check")


def publish_delayed(ch, order, delay_ms, prefix=""):
    ch.basic_publish(
        prefix + "orders.delayed",
        "check",
        json.dumps(order).encode(),
        pika.BasicProperties(delivery_mode=2, content_type="application/json", headers={"x-delay": delay_ms}),
    )


def close_unpaid(ch, paid, timeout_s, expected, prefix=""):
    """Consumes due orders; closes those not paid. Returns (closed, kept) order ids."""
    closed, kept = [], []
    deadline = time.monotonic() + timeout_s
    for method, _props, body in ch.consume(prefix + CHECK_QUEUE, inactivity_timeout=0.1):
        if method is not None:
            order = json.loads(body)
            (kept if order["id"] in paid else closed).append(order["id"])
            ch.basic_ack(method.delivery_tag)
        if len(closed) + len(kept) >= expected or time.monotonic() > deadline:
            break
    ch.cancel()
    return closed, kept


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--delay-ms", type=int, default=30 * 60 * 1000)
    parser.add_argument("--way", choices=["ttl-dlx", "delayed"], default="delayed")
    args = parser.parse_args()

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.confirm_delivery()
    orders = [{"id": str(uuid.uuid4()), "item": f"book-{i}"} for i in range(3)]
    paid = {orders[1]["id"]}  # the customer paid for one of them in time
    if args.way == "ttl-dlx":
        declare_ttl_dlx(ch, args.delay_ms)
        for order in orders:
            publish_ttl_dlx(ch, order)
    else:
        declare_delayed(ch)
        for order in orders:
            publish_delayed(ch, order, args.delay_ms)
    print(f"created {len(orders)} orders; checking payment in {args.delay_ms} ms ({args.way})")
    closed, kept = close_unpaid(ch, paid, args.delay_ms / 1000 + 30, len(orders))
    print(f"closed unpaid orders: {closed}")
    print(f"kept paid orders: {kept}")
    conn.close()


if __name__ == "__main__":
    main()
