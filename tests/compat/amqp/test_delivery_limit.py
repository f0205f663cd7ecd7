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
    counts = []
    while True:
        method, props, body = ch.basic_get(q, auto_ack=False)
        if method is None:
            break
        assert body == b"poison"
        counts.append((props.headers or {}).get("x-delivery-count"))
        ch.basic_nack(method.delivery_tag, requeue=True)
        returns += 1
        assert returns <= 10, "the delivery limit was never applied"
    assert returns == 3  # returned three times: more than the limit of 2
    # Quorum queues count earlier returns in `x-delivery-count`; basic.get shows it from
    # the first delivery on (0), as RabbitMQ does.
    assert counts == [0, 1, 2]
    ((m, props, body),) = consume(ch.connection, ch, dlq, 1)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert get_all(ch, q) == []
    ch.queue_delete(q)


def test_quorum_deliveries_count_returns_in_x_delivery_count(connect, name):
    ch = connect().channel()
    ch.confirm_delivery()
    q = name("q")
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.basic_publish("", q, b"again", pika.BasicProperties(delivery_mode=2))
    counts = []
    for method, props, _body in ch.consume(q, inactivity_timeout=5):
        assert method is not None, "the message did not come back"
        counts.append((props.headers or {}).get("x-delivery-count"))
        if len(counts) < 3:
            ch.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch.basic_ack(method.delivery_tag)
            break
    ch.cancel()
    # No header on the first delivery; then the number of earlier returns.
    assert counts == [None, 1, 2]
    ch.queue_delete(q)


def test_classic_queues_add_no_delivery_count(connect, name):
    ch = connect().channel()
    ch.confirm_delivery()
    q = name("q")
    ch.queue_declare(q, durable=True)
    ch.basic_publish("", q, b"plain", pika.BasicProperties(delivery_mode=2))
    method, props, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, _ = ch.basic_get(q, auto_ack=True)
    assert (props.headers or {}).get("x-delivery-count") is None
    ch.queue_delete(q)
