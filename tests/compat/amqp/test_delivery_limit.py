"""Quorum queues' `x-delivery-limit`: a message that keeps coming back unacknowledged is
dead-lettered (reason `delivery_limit`) once it has been returned more times than the
limit."""

import pika

from helpers import consume, get_all


def test_poison_message_is_dead_lettered_after_the_delivery_limit(connect, name):
    ch = connect().channel()
    ch.confirm_delivery()
    q, x, dlq = name("q"), name("dlx"), name("dlq")
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, x)
    ch.queue_declare(
        q,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": x},
    )
    ch.basic_publish("", q, b"poison", pika.BasicProperties(delivery_mode=2))
    returns = 0
    while True:
        method, _props, body = ch.basic_get(q, auto_ack=False)
        if method is None:
            break
        assert body == b"poison"
        ch.basic_nack(method.delivery_tag, requeue=True)
        returns += 1
        assert returns <= 10, "the delivery limit was never applied"
    assert returns == 3  # returned three times: more than the limit of 2
    ((m, props, body),) = consume(ch.connection, ch, dlq, 1)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert get_all(ch, q) == []
    ch.queue_delete(q)
