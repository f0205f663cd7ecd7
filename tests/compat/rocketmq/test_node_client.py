"""The official RocketMQ 5 Node.js client (rocketmq-client-nodejs, pinned in
node/package-lock.json; scripts/test installs it with `npm ci`) against Sluice."""

import json
import os
import shutil
import subprocess

import pytest

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


def test_the_node_client_sends_and_receives(sluice, make_topic, group):
    node = shutil.which("node")
    if node is None or not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "rocketmq-client-nodejs")):
        pytest.fail("needs node and `npm ci` in tests/compat/rocketmq/node (scripts/test does both)",
                    pytrace=False)
    topic = make_topic(2)
    run = subprocess.run([node, "roundtrip.js", sluice.endpoint, topic, group], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=50)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    received = result["received"]
    assert sorted(m["messageId"] for m in received) == sorted(result["sent"])
    assert sorted(m["body"] for m in received) == ["delayed-0", "fifo-0", "normal-0", "normal-1", "normal-2"]
    assert all(m["tag"] == "node" and not m["corrupted"] for m in received)
    normal = sorted((m for m in received if m["body"].startswith("normal")), key=lambda m: m["body"])
    assert [m["keys"] for m in normal] == [["key-0"], ["key-1"], ["key-2"]]
    assert [m["n"] for m in normal] == ["0", "1", "2"]
