"""The README's worked example — close an order if unpaid after a delay — both ways, at a
scaled-down delay, plus the delayed exchange's own rules."""

import os
import sys
import time

import pytest
from pika.exceptions import ChannelClosedByBroker

from helpers import get_all, sluice_only

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples"))
import unpaid_order_close as example  # noqa: E402

DELAY_MS = 400


def orders(n=3):
    return [{"id": f"o{i}", "item": f"book-{i}"} for i in range(n)]


@pytest.mark.parametrize("way", ["ttl-dlx", "delayed"])
def test_unpaid_orders_are_closed_after_the_delay_and_paid_ones_kept(connect, name, way):
    if way == "delayed" and os.environ.get("AMQP_URL"):
        pytest.skip("RabbitMQ needs the delayed-message plugin for this way")
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    prefix = name("shop") + "."
    started = time.monotonic()
    if way == "ttl-dlx":
        example.declare_ttl_dlx(ch, DELAY_MS, prefix)
        for order in orders():
            example.publish_ttl_dlx(ch, order, prefix)
    else:
        example.declare_delayed(ch, prefix)
        for order in orders():
            example.publish_delayed(ch, order, DELAY_MS, prefix)
    # Nothing is due before the delay.
    assert get_all(ch, prefix + example.CHECK_QUEUE) == []
    closed, kept = example.close_unpaid(ch, {"o1"}, 10, 3, prefix)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert sorted(closed) == ["o0", "o2"]
    assert kept == ["o1"]
    assert elapsed_ms >= DELAY_MS * 0.9


@sluice_only("RabbitMQ needs the delayed-message plugin")
def test_delays_differ_per_message_and_are_not_held_up_by_longer_ones(connect, name):
    ch = connect().channel()
    ch.confirm_delivery()
    prefix = name("shop") + "."
    example.declare_delayed(ch, prefix)
    example.publish_delayed(ch, {"id": "late"}, 60_000, prefix)
    example.publish_delayed(ch, {"id": "soon"}, 200, prefix)
    closed, _ = example.close_unpaid(ch, set(), 5, 1, prefix)
    assert closed == ["soon"]


@sluice_only("RabbitMQ needs the delayed-message plugin")
def test_a_message_without_x_delay_is_routed_at_once(connect, name):
    ch = connect().channel()
    ch.confirm_delivery()
    prefix = name("shop") + "."
    example.declare_delayed(ch, prefix)
    ch.basic_publish(prefix + "orders.delayed", "check", b'{"id": "now"}')
    assert [m[2] for m in get_all(ch, prefix + example.CHECK_QUEUE)] == [b'{"id": "now"}']


@sluice_only("RabbitMQ needs the delayed-message plugin")
def test_a_delayed_exchange_needs_x_delayed_type(connect, name):
    ch = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(name("x"), "x-delayed-message")
    assert e.value.reply_code == 406


@sluice_only("RabbitMQ needs the delayed-message plugin")
def test_durable_delayed_messages_survive_a_restart(connect, restart_broker, name):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    prefix = name("shop") + "."
    example.declare_delayed(ch, prefix)
    example.publish_delayed(ch, {"id": "kept-across-restart"}, 1500, prefix)
    conn.close()
    restart_broker()
    conn = connect()
    ch = conn.channel()
    closed, _ = example.close_unpaid(ch, set(), 10, 1, prefix)
    assert closed == ["kept-across-restart"]
    conn.close()
