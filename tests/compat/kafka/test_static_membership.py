"""Static membership (KIP-345, group.instance.id): a static member that restarts within
its session timeout gets its own partitions back, and the rest of the group is not
rebalanced at all, whether the restarted member was the group's leader or a follower."""

import time

import pytest
from confluent_kafka import ConsumerGroupState

from kafka_helpers import Deadline, Member, pump, split_evenly

PARTS = [0, 1, 2, 3]


@pytest.mark.parametrize("restarted", ["leader", "follower"])
def test_static_member_restart_keeps_its_partitions(clients, create_topic, name, admin, restarted):
    topic, group = create_topic(4), name("group")
    id_first, id_second = name("first"), name("second")
    # The first member to join becomes the group leader (it computes the assignment).
    first_consumer = clients.consumer(group, **{"group.instance.id": id_first})
    first = Member(first_consumer, topic, "first")
    pump([first], lambda: first.assigned == set(PARTS), what="the first member's assignment")
    second_consumer = clients.consumer(group, **{"group.instance.id": id_second})
    second = Member(second_consumer, topic, "second")
    pump([first, second], lambda: split_evenly([first, second], PARTS), what="both static members assigned")

    if restarted == "leader":
        gone, gone_consumer, gone_id, stay = first, first_consumer, id_first, second
    else:
        gone, gone_consumer, gone_id, stay = second, second_consumer, id_second, first
    gone_parts, stay_parts = set(gone.assigned), set(stay.assigned)
    stay_assigns, stay_revokes = stay.assigns, stay.revokes

    # A static member does not send LeaveGroup when it closes; the group keeps its slot
    # until the session timeout.
    gone_consumer.close()
    clients.forget(gone_consumer)
    (fut,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    desc = fut.result(timeout=15)
    assert desc.state == ConsumerGroupState.STABLE
    assert {m.group_instance_id for m in desc.members} == {id_first, id_second}

    started = time.monotonic()
    back = Member(clients.consumer(group, **{"group.instance.id": gone_id}), topic, "back")
    pump([back, stay], lambda: back.assigned, timeout=15, what="the restarted member's assignment")
    assert back.assigned == gone_parts
    assert time.monotonic() - started < 6, "the restarted member waited for the old session to time out"

    deadline = Deadline(1.0)
    while not deadline.passed():  # let any rebalance that was triggered reach the other member
        stay.poll(0.05)
        back.poll(0.05)
    assert (stay.assigned, stay.assigns, stay.revokes) == (stay_parts, stay_assigns, stay_revokes), (
        f"the {'follower' if restarted == 'leader' else 'leader'} was rebalanced "
        f"(assigns {stay_assigns} -> {stay.assigns}, revokes {stay_revokes} -> {stay.revokes})"
    )
    assert back.assigns == 1 and back.revokes == 0, back
