"""Per-user topic routing against python-socketio's fanout, counted on the instances."""

from __future__ import annotations

import asyncio

import aio_pika
import aiohttp
import pytest

from notifylab.bus.managers import ACK_EVERY, TopicManager
from notifylab.config import Settings
from support import new_prefix, servers

STEPS = 5
PER_OPERATION = STEPS + 3  # queued, started, progress x STEPS, succeeded


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def settled(url: str, name: str, start: float, expected: float) -> None:
    """Wait (5 s at most) until the metric has grown by exactly ``expected``
    since ``start`` (the other instance may lag a little); fail saying what
    it grew by instead. Overshooting never settles, so it fails too."""
    grown = await metric(url, name) - start
    try:
        async with asyncio.timeout(5):
            while grown != expected:
                await asyncio.sleep(0.1)
                grown = await metric(url, name) - start
    except TimeoutError:
        raise AssertionError(f"{name} on {url} grew by {grown}, expected {expected}") from None


@pytest.mark.parametrize("routing", ["topic", "fanout"])
async def test_an_instance_receives_only_events_of_users_connected_to_it(make_lab, clients, routing):
    lab = await make_lab(NOTIFYLAB_ROUTING=routing)
    url_a, url_b = servers(lab)
    ann = await clients(url_a)  # ann only on a
    bob = await clients(url_b)  # bob only on b
    received = "notifylab_bus_messages_received_total"
    before = {url: await metric(url, received) for url in (url_a, url_b)}

    op = await ann.start("report", steps=STEPS, step_seconds=0.02)
    await ann.wait_operation(op["id"])
    bob_op = await bob.start("report", steps=1, step_seconds=0.02)
    await bob.wait_operation(bob_op["id"])  # b has surely read its queue up to here

    bobs = 1 + 3
    if routing == "topic":  # each gets its own user's only (a's own emits come back once too)
        expected_a, expected_b = PER_OPERATION, bobs
    else:  # every event reaches every instance
        expected_a = expected_b = PER_OPERATION + bobs
    await settled(url_a, received, before[url_a], expected_a)
    await settled(url_b, received, before[url_b], expected_b)
    assert len(ann.of_operation(op["id"])) == PER_OPERATION and not bob.of_operation(op["id"])
    assert await metric(url_b, "notifylab_bus_messages_not_local_total") == (
        0 if routing == "topic" else PER_OPERATION
    )


async def test_the_metrics_page_speaks_prometheus(stack, clients):
    url = servers(stack)[0]
    me = await clients(url)
    op = await me.start("report", steps=1, step_seconds=0.01)
    await me.wait_operation(op["id"])
    assert await metric(url, "notifylab_sockets_connected") >= 1
    assert await metric(url, "notifylab_notifications_delivered_total") >= 4
    assert await metric(url, "notifylab_delivery_latency_seconds_count") >= 4


async def test_an_instance_acks_what_it_handled_in_batches(services, monkeypatch):
    """The listener acks with ``multiple`` (one frame for up to ACK_EVERY
    messages), and everything handled is acked: closing the connection
    after handling sends nothing back to the queue."""
    acks: list[bool] = []
    original = aio_pika.IncomingMessage.ack

    async def counted(self, multiple: bool = False) -> None:
        acks.append(multiple)
        await original(self, multiple)

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", counted)
    settings = Settings(prefix=new_prefix(), instance_id="acks")
    listener, publisher = TopicManager(settings), TopicManager(settings, write_only=True)
    await listener.start_listener()
    await listener.subscribe("ann")
    count = 3 * ACK_EVERY
    for i in range(count):
        await publisher.emit("notification", {"user": "ann", "i": i}, room="user:ann")
    received = listener._listen()
    bodies = [await received.__anext__() for _ in range(count)]
    with pytest.raises(TimeoutError):  # lets the last one be acked, then finds nothing more
        await asyncio.wait_for(received.__anext__(), 1)
    await listener.close()
    await publisher.close()
    assert len(bodies) == count
    assert all(acks) and len(acks) < count / 2  # batched: far fewer frames than messages
    connection = await aio_pika.connect(settings.broker_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(settings.instance_queue(), passive=True)
    left = queue.declaration_result.message_count
    await channel.queue_delete(settings.instance_queue())
    await connection.close()
    assert left == 0  # none came back unacked
