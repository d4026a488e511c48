"""The Python client fails over: given several instances, it moves to a live
one when its own dies, and misses nothing."""

from __future__ import annotations

import itertools
import random

from notifylab.lab.client import Client, backoff
from notifylab.lab.verdict import verdict
from support import PASSWORD, new_username, servers


def test_reconnect_delays_grow_jittered_up_to_a_cap():
    random.seed(8)
    delays = list(itertools.islice(backoff(0.25, 2.0, 0.5), 12))
    nominal = [min(0.25 * 2**i, 2.0) for i in range(12)]
    assert all(0.5 * n <= d <= 1.5 * n for d, n in zip(delays, nominal, strict=True))
    assert len(set(delays)) == len(delays)  # jittered: clients of a dead instance spread out


async def test_a_client_given_two_instances_continues_on_the_other_and_misses_nothing(make_lab, clients):
    lab = await make_lab()
    url_a, url_b = servers(lab)
    me = Client([url_a, url_b])
    try:
        await me.register(new_username(), PASSWORD)
        await me.connect()
        await me.wait_for(lambda: me.hello is not None, 10)
        assert me.instance == "a" and me.url == url_a
        other = await clients(url_b, user=me.user)  # a session on b starts the operations
        before = await other.start("report", steps=2, step_seconds=0.05)
        await me.wait_operation(before["id"])  # so that the reconnect has a last_id to send

        await lab.processes[0].kill()  # instance a dies: no goodbye, its sockets just drop
        op = await other.start("train", steps=10, step_seconds=0.1)  # runs while me moves

        final = await me.wait_operation(op["id"], 30)
        assert final["type"] == "operation.succeeded"
        assert me.instance == "b" and me.url == url_b and me.failovers == 1
        await other.wait_operation(op["id"])
        assert [n["id"] for n in me.of_operation(op["id"])] == [n["id"] for n in other.of_operation(op["id"])]
        (await verdict(me)).assert_clean()  # every notification once, in order, against b's inbox
        assert me.duplicates == 0 and me.out_of_order == 0
        assert me.unread == (await me.inbox())["unread"] == 2  # REST goes to b; both outcomes unread
    finally:
        await me.close()

    # A client that starts while a is down goes to b for REST and its socket.
    late = Client([url_a, url_b])
    try:
        await late.login(me.user, PASSWORD)
        assert late.url == url_b
        await late.connect()
        await late.wait_for(lambda: late.hello is not None, 10)
        assert late.instance == "b" and late.hello["unread"] == 2
    finally:
        await late.close()
