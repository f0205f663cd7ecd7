"""RabbitMQ's management HTTP API at the HTTP level: status codes, JSON shapes and error
bodies as RabbitMQ 3.10.8 answers them (checked against it: see README.md)."""

import base64
import json

import pika
import pytest

Q = "/api/queues/%2F/"


def declare(broker, queue, body=None):
    status, _, reply = broker.call("PUT", Q + queue, body if body is not None else {"durable": True})
    assert status in (201, 204), (status, reply)


def delete(broker, queue):
    broker.call("DELETE", Q + queue)


def test_auth_is_rabbitmq_s(broker):
    status, headers, body = broker.call("GET", "/api/whoami", auth=None)
    assert status == 401 and body is None
    assert headers["www-authenticate"].startswith("Basic realm=")
    status, _, body = broker.call("GET", "/api/whoami", auth=("guest", "wrong"))
    assert (status, body) == (401, {"error": "not_authorized", "reason": "Login failed"})
    assert broker.get("/api/whoami")["name"] == "guest"
    status, _, body = broker.call("GET", "/api/no-such-thing")
    assert (status, body) == (404, {"error": "Object Not Found", "reason": "Not Found"})


def test_queue_put_is_201_then_204_and_a_different_declaration_is_400(broker, name):
    status, _, _ = broker.call("PUT", Q + name, {"durable": "true", "auto_delete": "false",
                                                 "arguments": {"x-message-ttl": 60000}, "vhost": "/"})
    assert status == 201
    status, _, _ = broker.call("PUT", Q + name, {"durable": True, "arguments": {"x-message-ttl": 60000}})
    assert status == 204
    status, _, body = broker.call("PUT", Q + name, {"durable": False, "arguments": {"x-message-ttl": 60000}})
    assert status == 400 and body["error"] == "bad_request"
    assert body["reason"] == f"inequivalent arg 'durable' for queue '{name}' in vhost '/': received 'false' but current is 'true'"
    q = broker.wait_for(Q + name, lambda q: "messages" in q)
    assert (q["name"], q["vhost"], q["durable"], q["auto_delete"], q["exclusive"]) == (name, "/", True, False, False)
    assert q["arguments"] == {"x-message-ttl": 60000}
    assert (q["messages"], q["messages_ready"], q["messages_unacknowledged"], q["consumers"]) == (0, 0, 0, 0)
    assert q["state"] == "running" and q["type"] == "classic"
    assert broker.call("DELETE", Q + name)[0] == 204
    assert broker.call("DELETE", Q + name)[:3:2] == (404, {"error": "Object Not Found", "reason": "Not Found"})


def test_an_empty_put_makes_a_transient_queue_and_reserved_names_are_refused(broker, name):
    status, _, _ = broker.call("PUT", Q + name, raw=b"")
    assert status == 201
    assert broker.get(Q + name)["durable"] is False
    delete(broker, name)
    status, _, body = broker.call("PUT", Q + "amq.mine", {})
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Access refused."})
    status, _, body = broker.call("PUT", Q + name, raw=b"{not json")
    assert (status, body) == (400, {"error": "bad_request", "reason": "not_json"})
    status, _, body = broker.call("PUT", "/api/queues/no-such-vhost/" + name, {})
    assert (status, body) == (404, {"error": "not_found", "reason": "vhost_not_found"})


def test_publish_get_and_purge(broker, name):
    declare(broker, name)
    for i in range(3):
        status, _, body = broker.call("POST", "/api/exchanges/%2F/amq.default/publish", {
            "properties": {"delivery_mode": 2, "headers": {"n": i}, "content_type": "text/plain"},
            "routing_key": name, "payload": f"hello-{i}", "payload_encoding": "string"})
        assert (status, body) == (200, {"routed": True})
    status, _, body = broker.call("POST", "/api/exchanges/%2F/amq.default/publish", {
        "properties": {}, "routing_key": "nowhere-" + name, "payload": "x", "payload_encoding": "string"})
    assert (status, body) == (200, {"routed": False})
    status, _, body = broker.call("POST", "/api/exchanges/%2F/no-such-exchange/publish", {
        "properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string"})
    assert (status, body) == (400, {"error": "bad_request",
                                    "reason": "404 NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"})
    broker.wait_for(Q + name, lambda q: q["messages"] == 3)
    status, _, got = broker.call("POST", Q + name + "/get",
                                 {"count": "2", "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert status == 200 and len(got) == 2
    first = got[0]
    assert (first["payload"], first["payload_encoding"], first["payload_bytes"]) == ("hello-0", "string", 7)
    assert (first["exchange"], first["routing_key"], first["redelivered"]) == ("", name, False)
    assert first["message_count"] == 2 and got[1]["message_count"] == 1
    assert first["properties"]["delivery_mode"] == 2
    assert first["properties"]["headers"] == {"n": 0}
    assert first["properties"]["content_type"] == "text/plain"
    broker.wait_for(Q + name, lambda q: q["message_stats"].get("publish", 0) >= 3
                    and q["message_stats"].get("deliver_get", 0) >= 2)
    # Requeued: they are there again, redelivered.
    status, _, again = broker.call("POST", Q + name + "/get",
                                   {"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"})
    assert again[0]["redelivered"] is True
    assert base64.b64decode(again[0]["payload"]) == b"hello-0" and again[0]["payload_encoding"] == "base64"
    broker.wait_for(Q + name, lambda q: q["messages"] == 2)
    status, _, body = broker.call("POST", Q + name + "/get", {"count": 1, "requeue": True, "encoding": "auto"})
    assert status == 400 and "ackmode" in body["reason"]
    assert broker.call("DELETE", Q + name + "/contents")[0] == 204
    broker.wait_for(Q + name, lambda q: q["messages"] == 0)
    status, _, body = broker.call("POST", Q + name + "/get",
                                  {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert (status, body) == (200, [])
    delete(broker, name)


def test_a_message_without_properties_shows_them_as_an_empty_list(broker, name):
    declare(broker, name)
    broker.call("POST", "/api/exchanges/%2F/amq.default/publish", {
        "properties": {}, "routing_key": name, "payload": "bare", "payload_encoding": "string"})
    _, _, got = broker.call("POST", Q + name + "/get",
                            {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert got[0]["properties"] == []
    delete(broker, name)


def test_exchanges_and_bindings(broker, name):
    ex, q = name + "-x", name + "-q"
    assert broker.call("PUT", "/api/exchanges/%2F/" + ex, {"type": "direct", "durable": True})[0] == 201
    assert broker.call("PUT", "/api/exchanges/%2F/" + ex, {"type": "direct", "durable": True})[0] == 204
    status, _, body = broker.call("PUT", "/api/exchanges/%2F/" + ex, {"type": "fanout", "durable": True})
    assert status == 400
    assert body["reason"] == f"inequivalent arg 'type' for exchange '{ex}' in vhost '/': received 'fanout' but current is 'direct'"
    status, _, body = broker.call("PUT", "/api/exchanges/%2F/amq.mine", {"type": "direct"})
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Access refused."})
    e = broker.get("/api/exchanges/%2F/" + ex)
    assert (e["name"], e["type"], e["durable"], e["auto_delete"], e["internal"], e["vhost"]) == (ex, "direct", True, False, False, "/")
    default = broker.get("/api/exchanges/%2F/amq.default")
    assert default["name"] == "" and default["type"] == "direct"
    names = [x["name"] for x in broker.get("/api/exchanges/%2F")]
    assert names == sorted(names) and "" in names and "amq.topic" in names and ex in names

    declare(broker, q)
    status, headers, _ = broker.call("POST", f"/api/bindings/%2F/e/{ex}/q/{q}", {"routing_key": "rk", "arguments": {}})
    assert status == 201 and headers["location"] == f"{q}/rk"
    status, _, _ = broker.call("POST", f"/api/bindings/%2F/e/{ex}/q/{q}", {"routing_key": "", "arguments": []})
    assert status == 201
    pair = broker.get(f"/api/bindings/%2F/e/{ex}/q/{q}")
    assert sorted(b["properties_key"] for b in pair) == ["rk", "~"]
    b = next(b for b in pair if b["routing_key"] == "rk")
    assert b == {"source": ex, "vhost": "/", "destination": q, "destination_type": "queue",
                 "routing_key": "rk", "arguments": {}, "properties_key": "rk"}
    on_queue = broker.get(Q + q + "/bindings")
    assert on_queue[0]["source"] == "" and on_queue[0]["routing_key"] == q, "implicit binding first"
    status, _, body = broker.call("POST", f"/api/exchanges/%2F/{ex}/publish", {
        "properties": {}, "routing_key": "rk", "payload": "via-binding", "payload_encoding": "string"})
    assert body == {"routed": True}
    assert broker.call("DELETE", f"/api/bindings/%2F/e/{ex}/q/{q}/rk")[0] == 204
    assert broker.call("DELETE", f"/api/bindings/%2F/e/{ex}/q/{q}/rk")[0] == 404
    assert broker.call("DELETE", f"/api/bindings/%2F/e/{ex}/q/{q}/~")[0] == 204
    status, _, body = broker.call("POST", f"/api/bindings/%2F/e/no-such-{ex}/q/{q}", {"routing_key": "k"})
    assert (status, body) == (404, {"error": "not_found", "reason": f"no exchange 'no-such-{ex}' in vhost '/'"})
    assert broker.call("DELETE", "/api/exchanges/%2F/" + ex)[0] == 204
    assert broker.call("DELETE", "/api/exchanges/%2F/" + ex)[0] == 404
    delete(broker, q)


def test_pagination_columns_and_sorting(broker, name):
    made = [f"{name}-{i}" for i in range(3)]
    for q in made:
        declare(broker, q)
    page = broker.wait_for(f"/api/queues?page=1&page_size=2&name={name}&columns=name,messages",
                           lambda p: all("messages" in i for i in p["items"]))
    assert (page["filtered_count"], page["item_count"], page["page"], page["page_count"], page["page_size"]) == (3, 2, 1, 2, 2)
    assert page["total_count"] >= 3
    assert page["items"] == [{"name": made[0], "messages": 0}, {"name": made[1], "messages": 0}]
    regex = broker.get(f"/api/queues?page=1&name=^{name}-[12]$&use_regex=true")
    assert [q["name"] for q in regex["items"]] == made[1:]
    status, _, body = broker.call("GET", f"/api/queues?page=9&page_size=2&name={name}")
    assert status == 400 and body["error"] == "page_out_of_range"
    status, _, body = broker.call("GET", "/api/queues?page=0")
    assert status == 400 and body["error"] == "invalid_pagination_parameters"
    listed = [q["name"] for q in broker.get("/api/queues/%2F?columns=name&sort=name&sort_reverse=true") if q["name"].startswith(name)]
    assert listed == list(reversed(made))
    assert broker.get("/api/queues/%2F/?columns=name") == broker.get("/api/queues/%2F?columns=name"), "trailing slash"
    for q in made:
        delete(broker, q)


def test_overview_counts_what_a_client_holds(broker, name):
    declare(broker, name)
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        ch = connection.channel()
        ch.basic_consume(name, lambda *a: None)
        ch.basic_publish("", name, b"x", pika.BasicProperties(delivery_mode=2))
        connection.process_data_events(0.2)
        o = broker.wait_for("/api/overview", lambda o: min(o["object_totals"][k] for k in
                                                           ("connections", "channels", "consumers")) >= 1)
        totals = o["object_totals"]
        assert totals["queues"] >= 1 and totals["exchanges"] >= 7
        assert set(o["queue_totals"]) >= {"messages", "messages_ready", "messages_unacknowledged"}
        assert o["rabbitmq_version"] == o["management_version"] == "3.10.8"
        assert {x["name"] for x in o["exchange_types"]} >= {"direct", "fanout", "headers", "topic"}
        assert any(l["protocol"] == "amqp" for l in o["listeners"])
        picked = broker.get("/api/overview?columns=rabbitmq_version,object_totals.queues")
        assert set(picked) == {"rabbitmq_version", "object_totals"}
        assert "connections" in picked["object_totals"], "a dotted column keeps the whole object"
        broker.wait_for(Q + name, lambda q: q["consumers"] == 1)
    finally:
        connection.close()
    delete(broker, name)


def test_vhosts_users_permissions_and_nodes(broker):
    vhosts = broker.get("/api/vhosts")
    assert "/" in [v["name"] for v in vhosts]
    root = broker.get("/api/vhosts/%2F")
    assert root["name"] == "/" and "messages" in root
    assert broker.call("GET", "/api/vhosts/no-such-vhost")[0] == 404
    users = broker.get("/api/users")
    guest = next(u for u in users if u["name"] == "guest")
    assert guest["tags"] == ["administrator"] and "hashing_algorithm" in guest
    perm = broker.get("/api/permissions/%2F/guest")
    assert perm == {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
    [node] = broker.get("/api/nodes?columns=name,type,mem_used")
    assert node["type"] == "disc" and node["mem_used"] > 0
    assert broker.get("/api/nodes/" + node["name"])["running"] is True


def test_definitions_export_holds_durable_objects(broker, name):
    ex, q = name + "-x", name + "-q"
    broker.call("PUT", "/api/exchanges/%2F/" + ex, {"type": "topic", "durable": True})
    declare(broker, q, {"durable": True, "arguments": {"x-max-length": 10}})
    broker.call("POST", f"/api/bindings/%2F/e/{ex}/q/{q}", {"routing_key": "a.#"})
    defs = broker.get("/api/definitions")
    assert {"rabbit_version", "users", "vhosts", "permissions", "queues", "exchanges", "bindings"} <= set(defs)
    assert {"name": q, "vhost": "/", "durable": True, "auto_delete": False,
            "arguments": {"x-max-length": 10}} in defs["queues"]
    assert {"name": ex, "vhost": "/", "type": "topic", "durable": True, "auto_delete": False,
            "internal": False, "arguments": {}} in defs["exchanges"]
    assert {"source": ex, "vhost": "/", "destination": q, "destination_type": "queue",
            "routing_key": "a.#", "arguments": {}} in defs["bindings"]
    assert not any(e["name"].startswith("amq.") or e["name"] == "" for e in defs["exchanges"])
    per_vhost = broker.get("/api/definitions/%2F")
    assert all("vhost" not in x for x in per_vhost["queues"])
    broker.call("DELETE", "/api/exchanges/%2F/" + ex)
    delete(broker, q)


def test_health_checks_and_aliveness(broker):
    assert broker.get("/api/health/checks/alarms") == {"status": "ok"}
    assert broker.get("/api/health/checks/virtual-hosts") == {"status": "ok"}
    assert broker.get("/api/health/checks/protocol-listener/amqp") == {"status": "ok", "protocol": "amqp"}
    assert broker.get(f"/api/health/checks/port-listener/{broker.http_port}") == {"status": "ok", "port": broker.http_port}
    status, _, body = broker.call("GET", "/api/health/checks/protocol-listener/stomp")
    assert status == 503 and body["status"] == "failed" and body["reason"] == "No active listener"
    assert broker.get("/api/aliveness-test/%2F") == {"status": "ok"}
    assert broker.call("GET", "/api/aliveness-test/no-such-vhost")[0] == 404


def test_connections_channels_consumers_and_closing_a_connection(broker, name):
    import urllib.parse
    declare(broker, name)
    params = pika.URLParameters(broker.amqp_url)
    params.client_properties = {"connection_name": name}
    connection = pika.BlockingConnection(params)
    try:
        publisher = connection.channel()
        publisher.confirm_delivery()
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=10)
        tag = consumer.basic_consume(name, lambda *a: None, consumer_tag=name + "-tag")
        connection.process_data_events(0.1)
        conns = broker.wait_for("/api/connections", lambda cs: any(
            c.get("user_provided_name") == name and c["channels"] == 2 for c in cs))
        c = next(c for c in conns if c.get("user_provided_name") == name)
        assert (c["user"], c["vhost"], c["protocol"], c["state"]) == ("guest", "/", "AMQP 0-9-1", "running")
        assert c["name"] == f"{c['peer_host']}:{c['peer_port']} -> {c['host']}:{c['port']}"
        assert c["client_properties"]["connection_name"] == name
        quoted = urllib.parse.quote(c["name"], safe="")
        assert broker.get("/api/connections/" + quoted)["name"] == c["name"]
        chans = broker.wait_for(f"/api/connections/{quoted}/channels", lambda chs: len(chs) == 2)
        by_number = {ch["number"]: ch for ch in chans}
        assert by_number[1]["confirm"] is True
        assert by_number[2]["consumer_count"] == 1 and by_number[2]["prefetch_count"] == 10
        assert by_number[1]["name"] == f"{c['name']} (1)"
        assert any(ch["name"] == f"{c['name']} (2)" for ch in broker.get("/api/channels"))
        assert any(x["name"] == c["name"] for x in broker.get("/api/vhosts/%2F/connections"))
        consumers = broker.wait_for("/api/consumers/%2F", lambda cs: any(x["consumer_tag"] == tag for x in cs))
        mine = next(x for x in consumers if x["consumer_tag"] == tag)
        assert mine["queue"] == {"name": name, "vhost": "/"}
        assert mine["ack_required"] is True and mine["exclusive"] is False
        status, _, _ = broker.call("DELETE", "/api/connections/" + quoted, headers={"X-Reason": "maintenance"})
        assert status == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(50):
                connection.process_data_events(0.1)
        assert closed.value.reply_code == 320
        assert closed.value.reply_text == "CONNECTION_FORCED - maintenance"
        broker.wait_for("/api/connections", lambda cs: not any(x["name"] == c["name"] for x in cs))
        assert broker.call("GET", "/api/connections/" + quoted)[0] == 404
    finally:
        if connection.is_open:
            connection.close()
    delete(broker, name)


def test_overview_message_stats_count_what_clients_did(broker, name):
    def stats():
        return broker.get("/api/overview")["message_stats"]
    before = stats()
    declare(broker, name)
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        ch = connection.channel()
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", name, f"m{i}".encode())
        with pytest.raises(pika.exceptions.UnroutableError):
            ch.basic_publish("", "nowhere-" + name, b"x", mandatory=True)
        for _ in range(2):
            method, _, _ = ch.basic_get(name, auto_ack=False)
            ch.basic_ack(method.delivery_tag)
        assert ch.basic_get(name, auto_ack=True)[0] is not None
        assert ch.basic_get(name, auto_ack=True)[0] is None
    finally:
        connection.close()
    grew = lambda after, k, n: after.get(k, 0) - before.get(k, 0) >= n
    after = broker.wait_for("/api/overview", lambda o: all(grew(o["message_stats"], k, n) for k, n in [
        ("publish", 4), ("confirm", 4), ("get", 2), ("get_no_ack", 1),
        ("deliver_get", 3), ("ack", 2), ("return_unroutable", 1)]))["message_stats"]
    assert "rate" in after["publish_details"]
    delete(broker, name)


def test_users_and_permissions_change_at_runtime(broker, name):
    user, pw = name + "-user", "pw-" + name
    assert broker.call("PUT", f"/api/users/{user}", {"password": pw})[:3:2] == (400, {"error": "bad_request", "reason": "tags_not_present"})
    assert broker.call("PUT", f"/api/users/{user}", {"password": pw, "tags": "management"})[0] == 201
    assert broker.call("PUT", f"/api/users/{user}", {"password": pw, "tags": "management"})[0] == 204
    shown = broker.get(f"/api/users/{user}")
    assert shown["tags"] == ["management"] and shown["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert shown["password_hash"] and pw not in shown["password_hash"]
    params = pika.URLParameters(broker.amqp_url.replace("guest:guest", f"{user}:{pw}"))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params).close()  # no permissions in vhost / yet
    status, _, body = broker.call("PUT", "/api/permissions/%2F/no-such-user-" + name,
                                  {"configure": ".*", "write": ".*", "read": ".*"})
    assert (status, body) == (400, {"error": "bad_request", "reason": "vhost_or_user_not_found"})
    assert broker.call("PUT", f"/api/permissions/%2F/{user}", {"configure": "^" + name, "write": ".*", "read": ".*"})[0] == 201
    assert broker.get(f"/api/permissions/%2F/{user}") == {"user": user, "vhost": "/", "configure": "^" + name,
                                                          "write": ".*", "read": ".*"}
    assert any(p["user"] == user for p in broker.get(f"/api/users/{user}/permissions"))
    assert any(p["user"] == user for p in broker.get("/api/vhosts/%2F/permissions"))
    connection = pika.BlockingConnection(params)
    try:
        ch = connection.channel()
        ch.queue_declare(name + "-mine")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            connection.channel().queue_declare("not-" + name)
        assert refused.value.reply_code == 403
    finally:
        connection.close()
    # Not an administrator: cannot manage users.
    status, _, body = broker.call("PUT", f"/api/users/{user}-2", {"password": "x", "tags": ""}, auth=(user, pw))
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Not administrator user"})
    assert broker.call("DELETE", f"/api/permissions/%2F/{user}")[0] == 204
    assert broker.call("DELETE", f"/api/permissions/%2F/{user}")[0] == 404
    assert broker.call("DELETE", f"/api/users/{user}")[0] == 204
    assert broker.call("DELETE", f"/api/users/{user}")[0] == 404
    broker.call("DELETE", Q + name + "-mine")


def test_a_rabbitmq_password_hash_imports_and_logs_in(broker, name):
    user = name + "-imported"
    # RabbitMQ 3.10.8's stored hash of "secret" (rabbit_password_hashing_sha256).
    body = {"password_hash": "1mUgIrx7Vy3wADfnr7Rn3xWpaX0SabgXZ0IK0lriPayZBvXv",
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}
    assert broker.call("PUT", f"/api/users/{user}", body)[0] == 201
    assert broker.call("PUT", f"/api/permissions/%2F/{user}", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    params = pika.URLParameters(broker.amqp_url.replace("guest:guest", f"{user}:secret"))
    pika.BlockingConnection(params).close()
    # Without a management tag the API is closed to the user, as in RabbitMQ.
    assert broker.call("GET", "/api/whoami", auth=(user, "secret"))[:3:2] == (
        401, {"error": "not_authorised", "reason": "Not management user"})
    body["tags"] = "monitoring"
    assert broker.call("PUT", f"/api/users/{user}", body)[0] == 204
    assert broker.call("GET", "/api/whoami", auth=(user, "secret"))[2] == {"name": user, "tags": ["monitoring"]}
    broker.call("DELETE", f"/api/users/{user}")


def test_definitions_import_creates_what_is_missing(broker, name):
    q, ex = name + "-q", name + "-x"
    defs = {"queues": [{"name": q, "vhost": "/", "durable": True, "auto_delete": False,
                        "arguments": {"x-max-length": 5}}],
            "exchanges": [{"name": ex, "vhost": "/", "type": "fanout", "durable": True,
                           "auto_delete": False, "internal": False, "arguments": {}}],
            "bindings": [{"source": ex, "vhost": "/", "destination": q, "destination_type": "queue",
                          "routing_key": "", "arguments": {}}]}
    assert broker.call("POST", "/api/definitions", defs)[0] == 204
    assert broker.get(Q + q)["arguments"] == {"x-max-length": 5}
    assert broker.get("/api/exchanges/%2F/" + ex)["type"] == "fanout"
    assert [b["destination"] for b in broker.get(f"/api/bindings/%2F/e/{ex}/q/{q}")] == [q]
    assert broker.call("POST", "/api/definitions", defs)[0] == 204, "again: nothing changes"
    status, _, body = broker.call("POST", "/api/definitions", raw=b"{nope")
    assert (status, body) == (400, {"error": "bad_request", "reason": "failed_to_parse_json"})
    broker.call("DELETE", "/api/exchanges/%2F/" + ex)
    delete(broker, q)
