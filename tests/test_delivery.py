"""Delivery guarantees, end to end: real instances, a real worker, real sockets."""

from __future__ import annotations

import itertools

import aio_pika
import redis.asyncio as aioredis

from notifylab import codec
from notifylab.bus.managers import emit_message
from notifylab.config import Settings
from notifylab.ids import id_after
from notifylab.protocol import is_inbox_item
from notifylab.store.inbox import Inbox
from support import BROKER, REDIS, servers

STEPS = 6


def types(notes: list[dict]) -> list[str]:
    return [n["type"] for n in notes]


def expected_types(steps: int = STEPS) -> list[str]:
    return (
        ["operation.queued", "operation.started"] + ["operation.progress"] * steps + ["operation.succeeded"]
    )


def assert_in_order(notes: list[dict]) -> None:
    ids = [n["id"] for n in notes]
    assert all(id_after(b, a) for a, b in itertools.pairwise(ids)), ids


async def test_every_event_reaches_every_session_on_both_instances_in_order_once(stack, clients):
    url_a, url_b = servers(stack)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    assert {first.instance, second.instance} == {"a", "b"}

    op = await first.start("report", steps=STEPS, step_seconds=0.05)
    await first.wait_operation(op["id"])
    await second.wait_operation(op["id"])

    for client in (first, second):
        notes = client.of_operation(op["id"])
        assert types(notes) == expected_types()
        assert [n["step"] for n in notes if n["type"] == "operation.progress"] == list(range(1, STEPS + 1))
        assert_in_order(notes)
        assert client.duplicates == 0 and client.out_of_order == 0
    assert [n["id"] for n in first.notifications] == [n["id"] for n in second.notifications]


async def test_no_user_receives_another_users_events(stack, clients):
    url_a, url_b = servers(stack)
    ann = await clients(url_a)
    bob = await clients(url_a)  # same instance: the rooms must still keep them apart
    bob_elsewhere = await clients(url_b, user=bob.user)

    ann_op = await ann.start("export", steps=3, step_seconds=0.05)
    bob_op = await bob.start("export", steps=2, step_seconds=0.05)
    await ann.wait_operation(ann_op["id"])
    await bob.wait_operation(bob_op["id"])
    await bob_elsewhere.wait_operation(bob_op["id"])

    assert {n["user"] for n in ann.notifications} == {ann.user}
    assert {n["user"] for n in bob.notifications} == {bob.user}
    assert {n["user"] for n in bob_elsewhere.notifications} == {bob.user}
    assert {n["operation"] for n in ann.notifications} == {ann_op["id"]}


async def test_a_client_that_reconnects_gets_exactly_what_it_missed(stack, clients):
    url_a, url_b = servers(stack)
    watcher = await clients(url_a)
    roamer = await clients(url_b, user=watcher.user)

    op = await watcher.start("train", steps=10, step_seconds=0.1)
    await roamer.wait_for(
        lambda: any(n["type"] == "operation.progress" for n in roamer.of_operation(op["id"]))
    )
    await roamer.disconnect()
    seen_before = len(roamer.notifications)
    await watcher.wait_for(lambda: sum(n["type"] == "operation.progress" for n in watcher.notifications) >= 6)

    await roamer.connect(url_a)  # back, on the other instance this time
    await roamer.wait_operation(op["id"])
    await watcher.wait_operation(op["id"])

    assert roamer.duplicates == 0 and roamer.out_of_order == 0
    assert [n["id"] for n in roamer.notifications] == [n["id"] for n in watcher.notifications]
    assert len(roamer.notifications) > seen_before
    # Replayed ones counted once, and only the inbox item (succeeded), not the steps.
    assert roamer.unread == watcher.unread == sum(map(is_inbox_item, watcher.notifications)) == 1
    assert types(roamer.of_operation(op["id"])) == expected_types(10)


async def test_a_new_tab_gets_operations_and_unread_count_in_hello(stack, clients):
    url_a, url_b = servers(stack)
    first = await clients(url_a)
    op = await first.start("report", steps=2, step_seconds=0.05)
    await first.wait_operation(op["id"])

    new_tab = await clients(url_b, user=first.user)
    assert len(first.notifications) == 5 and new_tab.hello["unread"] == first.unread == 1  # succeeded
    assert new_tab.hello["operations"][0]["id"] == op["id"]
    assert new_tab.hello["operations"][0]["state"] == "succeeded"
    assert new_tab.hello["last_id"] == first.last_id


async def test_marking_read_updates_the_unread_count_in_every_session(stack, clients):
    url_a, url_b = servers(stack)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    op = await first.start("report", steps=2, step_seconds=0.05)
    await first.wait_operation(op["id"])
    await second.wait_operation(op["id"])
    assert first.unread == second.unread == 1  # succeeded; its steps are not inbox items

    assert await first.mark_read() == 0
    await second.wait_for(lambda: second.unread == 0, 10)
    inbox = await second.inbox()
    assert inbox["unread"] == 0 and len(inbox["notifications"]) == 5


async def test_a_notification_lost_on_the_bus_is_read_back_from_the_stream(stack, clients):
    """Append one notification without publishing it (as a worker killed
    between the two would), then publish the next: the instance sees that
    ``prev`` is not its cursor and fills the gap from the stream."""
    url_a, _ = servers(stack)
    client = await clients(url_a)
    settings = Settings.from_env({"NOTIFYLAB_PREFIX": stack.env["NOTIFYLAB_PREFIX"]})
    redis = aioredis.from_url(REDIS, decode_responses=True)
    inbox = Inbox(redis, settings)
    base = {
        "user": client.user,
        "operation": "manual",
        "kind": "report",
        "state": "running",
        "steps": 2,
        "progress": 0.5,
        "ts": 0,
    }
    lost = await inbox.append(
        client.user, {**base, "type": "operation.progress", "step": 1, "message": "lost"}
    )
    sent = await inbox.append(
        client.user, {**base, "type": "operation.progress", "step": 2, "message": "sent"}
    )
    assert sent["prev"] == lost["id"]

    # Publish like a worker's write-only manager would.
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(settings.events_exchange)
        await exchange.publish(
            aio_pika.Message(codec.dumpb(emit_message(sent, host_id="test"))),
            routing_key=f"user.{client.user}",
        )
    await redis.aclose()

    await client.wait_for(lambda: len(client.notifications) == 2, 10)
    assert [n["message"] for n in client.notifications] == ["lost", "sent"]
    assert client.duplicates == 0


async def test_killing_an_instance_loses_nothing(make_lab, clients):
    lab = await make_lab()
    url_a, url_b = servers(lab)
    steady = await clients(url_b)
    doomed = await clients(url_a, user=steady.user)
    op = await steady.start("train", steps=12, step_seconds=0.1)
    await doomed.wait_for(lambda: len(doomed.of_operation(op["id"])) >= 3)

    server_a = lab.processes[0]
    await server_a.kill()  # no goodbye: its sockets just drop
    await doomed.wait_for(lambda: not doomed.connected, 10)
    await steady.wait_for(lambda: sum(n["type"] == "operation.progress" for n in steady.notifications) >= 8)
    await server_a.start()  # back on the same port; the client reconnects by itself

    await doomed.wait_operation(op["id"], 30)
    await steady.wait_operation(op["id"])
    assert doomed.duplicates == 0 and doomed.out_of_order == 0
    assert [n["id"] for n in doomed.notifications] == [n["id"] for n in steady.notifications]
