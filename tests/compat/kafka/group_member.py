"""A consumer-group member run as a separate process, so a test can kill it with SIGKILL:
it then never sends LeaveGroup and only the session timeout can free its partitions.

Usage: python group_member.py BOOTSTRAP TOPIC GROUP
Prints one JSON object per line on stdout:
  {"assigned": [partitions]}               after each assignment
  {"committed": {"partition": next_offset}} after each synchronous commit
It commits (synchronously) everything it has read after every poll that returned records.
"""

import json
import sys

from confluent_kafka import Consumer, TopicPartition

from kafka_helpers import confluent_consumer_conf


def say(obj):
    print(json.dumps(obj), flush=True)


def main():
    bootstrap, topic, group = sys.argv[1:4]
    c = Consumer(confluent_consumer_conf(bootstrap, group))
    c.subscribe(
        [topic],
        on_assign=lambda _c, parts: say({"assigned": sorted(p.partition for p in parts)}),
    )
    while True:
        msgs = c.consume(num_messages=500, timeout=0.1)
        nxt = {}
        for m in msgs:
            if m.error() is not None:
                say({"error": str(m.error())})
                continue
            nxt[m.partition()] = m.offset() + 1
        if nxt:
            c.commit(offsets=[TopicPartition(topic, p, o) for p, o in nxt.items()], asynchronous=False)
            say({"committed": {str(p): o for p, o in nxt.items()}})


if __name__ == "__main__":
    main()
