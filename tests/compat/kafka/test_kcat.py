"""kcat (librdkafka's command-line client) smoke test: metadata, produce with -P, consume
with -C -e."""

import shutil
import subprocess

import pytest

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not on PATH (Debian: apt-get install kcat)")


def kcat(*args, input=None):
    res = subprocess.run([KCAT, *args], input=input, capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, f"kcat {' '.join(args)} exited {res.returncode}: {res.stderr}"
    return res.stdout


def test_kcat_produce_and_consume(bootstrap, create_topic):
    topic = create_topic(1)
    assert f'topic "{topic}" with 1 partitions' in kcat("-b", bootstrap, "-L", "-t", topic)

    lines = [f"key{i}:value {i}" for i in range(20)]
    kcat("-b", bootstrap, "-t", topic, "-P", "-K", ":", "-H", "source=kcat", input="\n".join(lines) + "\n")
    out = kcat("-b", bootstrap, "-t", topic, "-C", "-o", "beginning", "-e", "-q", "-f", "%k|%s|%o|%h\n")
    assert out.splitlines() == [f"key{i}|value {i}|{i}|source=kcat" for i in range(20)]
