"""Helpers shared by the AMQP compatibility tests (import with `from helpers import ...`)."""

import os
import time

import pika
import pytest

AMQP_URL = os.environ.get("AMQP_URL") or None
EXTERNAL = AMQP_URL is not None

def sluice_only(reason):
    """Skip on an external broker: Sluice deliberately differs from RabbitMQ here."""
    return pytest.mark.skipif(EXTERNAL, reason=reason)


# ---------------------------------------------------------------------------------------
# Bounded waits and small wrappers.


def params_for(url, **overrides):
    p = pika.URLParameters(url)
    p.connection_attempts = 1
    p.socket_timeout = 5
    p.stack_timeout = 10
    p.blocked_connection_timeout = 10
    for k, v in overrides.items():
        setattr(p, k, v)
    return p


def wait_for(predicate, timeout=5.0, interval=0.02, what="condition"):
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pump(connection, until, timeout=5.0, what="condition"):
    """Processes connection I/O until `until()` is true, with a deadline."""
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        connection.process_data_events(time_limit=min(left, 0.05))


class Collector:
    """A consumer callback that records deliveries: (method, properties, body)."""

    def __init__(self, channel=None, ack=False):
        self.channel = channel
        self.ack = ack
        self.messages = []

    def __call__(self, ch, method, properties, body):
        self.messages.append((method, properties, body))
        if self.ack:
            ch.basic_ack(method.delivery_tag)

    @property
    def bodies(self):
        return [m[2] for m in self.messages]


def consume(connection, channel, queue_name, n, timeout=5.0, auto_ack=True, **kwargs):
    """Consumes exactly n messages (bounded wait), cancels, returns [(method, props, body)]."""
    col = Collector()
    tag = channel.basic_consume(queue_name, col, auto_ack=auto_ack, **kwargs)
    try:
        pump(connection, lambda: len(col.messages) >= n, timeout, f"{n} messages from {queue_name}")
    finally:
        if channel.is_open:
            channel.basic_cancel(tag)
    return col.messages


def get_all(channel, queue_name, auto_ack=True, limit=10000):
    """basic.get until get-empty; returns [(method, props, body)]."""
    out = []
    for _ in range(limit):
        method, props, body = channel.basic_get(queue_name, auto_ack=auto_ack)
        if method is None:
            return out
        out.append((method, props, body))
    raise AssertionError(f"more than {limit} messages in {queue_name}")


def message_count(channel, queue_name):
    return channel.queue_declare(queue_name, passive=True).method.message_count


class AsyncConfirms:
    """Publishes without waiting, through pika's async channel under a BlockingConnection,
    and records confirms and returns in the order the frames arrived."""

    def __init__(self, connection):
        self.connection = connection
        self.blocking = connection.channel()
        self.ch = self.blocking._impl
        self.events = []  # ("ack"|"nack", delivery_tag, multiple) or ("return", body)
        self.next_tag = 1
        selected = []
        self.ch.add_on_return_callback(
            lambda ch, method, props, body: self.events.append(("return", body, method.reply_code))
        )
        self.ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        pump(connection, lambda: selected, what="confirm.select-ok")

    def _on_confirm(self, frame):
        m = frame.method
        kind = "ack" if isinstance(m, pika.spec.Basic.Ack) else "nack"
        self.events.append((kind, m.delivery_tag, m.multiple))

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        self.ch.basic_publish(exchange, routing_key, body, properties, mandatory)
        tag = self.next_tag
        self.next_tag += 1
        return tag

    def confirmed(self, kind="ack"):
        """Set of delivery tags confirmed with `kind`, expanding `multiple`."""
        out = set()
        for ev in self.events:
            if ev[0] == kind:
                _, tag, multiple = ev
                if multiple:
                    out.update(range(1, tag + 1))
                else:
                    out.add(tag)
        return out

    def all_confirmed(self):
        return self.confirmed("ack") | self.confirmed("nack")

    def wait_all(self, timeout=10.0):
        want = set(range(1, self.next_tag))
        pump(self.connection, lambda: want <= self.all_confirmed(), timeout, "all confirms")
