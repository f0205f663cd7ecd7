"""Users and permissions, as RabbitMQ checks them: a login with a wrong password is
refused (403), a user without permissions in a virtual host cannot open it (530), and
each operation needs its name to match the user's configure, write or read pattern
(403 ACCESS_REFUSED with RabbitMQ's text).

The suite's Sluice runs with users guest (full access), alice (configure and write
`^alice-`, read `.*`) and carol (no permissions). Against RabbitMQ (AMQP_URL) these tests
run only when AMQP_USERS_READY=1 says the same users exist, e.g.:

    rabbitmqctl add_user alice alice-pw
    rabbitmqctl set_permissions -p / alice '^alice-' '^alice-' '.*'
    rabbitmqctl add_user carol carol-pw
"""

import os

import pika
import pytest

from helpers import AMQP_URL, params_for

pytestmark = pytest.mark.skipif(
    AMQP_URL is not None and os.environ.get("AMQP_USERS_READY") != "1",
    reason="the external broker needs the users in this module's docstring (AMQP_USERS_READY=1)",
)


def login(broker, user, password):
    p = params_for(broker.url, credentials=pika.PlainCredentials(user, password))
    return pika.BlockingConnection(p)


def refused(ch_action):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch_action()
    return e.value.reply_code, e.value.reply_text


def test_a_wrong_password_is_refused(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        login(broker, "alice", "wrong")


def test_a_user_without_permissions_cannot_open_the_vhost(broker):
    # pika reports a close during the handshake as "probable access denied".
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        login(broker, "carol", "carol-pw")
    assert "(530) \"NOT_ALLOWED - access to vhost '/' refused for user 'carol'\"" in str(e.value)


def test_configure_write_and_read_patterns_are_enforced(broker):
    conn = login(broker, "alice", "alice-pw")
    try:
        ch = conn.channel()
        assert refused(lambda: ch.queue_declare("bob-q")) == (
            403,
            "ACCESS_REFUSED - access to queue 'bob-q' in vhost '/' refused for user 'alice'",
        )
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("alice-q")
        ch.exchange_declare("alice-x", "fanout")
        # Publishing to the default exchange needs write on `amq.default`.
        assert refused(lambda: ch.basic_publish("", "alice-q", b"no")) == (
            403,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'alice'",
        )
        ch = conn.channel()
        ch.confirm_delivery()
        # Binding needs write on the queue and read on the exchange.
        ch.queue_bind("alice-q", "alice-x")
        ch.basic_publish("alice-x", "", b"yes")
        method, _props, body = ch.basic_get("alice-q", auto_ack=True)
        assert body == b"yes"
        ch.queue_purge("alice-q")
        ch.queue_delete("alice-q")
        ch.exchange_delete("alice-x")
        assert refused(lambda: ch.exchange_declare("bob-x", "fanout"))[0] == 403
    finally:
        conn.close()
