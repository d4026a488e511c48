"""Per-user topic routing against python-socketio's fanout, counted on the instances."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import aiohttp
import orjson
import pytest
from pamqp import commands

from notifylab.bus.consumer import ACK_DELAY, ACK_EVERY, ConsumerProtocol
from notifylab.bus.managers import TopicManager, emit_message
from notifylab.config import Settings
from notifylab.lab.verdict import verdict
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
    dropped = "notifylab_duplicates_dropped_total"
    before = {url: await metric(url, received) for url in (url_a, url_b)}
    dropped_before = await metric(url_a, dropped)
    batched = {url: await metric(url, "notifylab_feed_batch_size_sum") for url in (url_a, url_b)}

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
    # What reached each instance reached its feed once, in batches (an
    # instance's own emits as it sent them, the rest as the bus brought them).
    for url, expected in ((url_a, expected_a), (url_b, expected_b)):
        await settled(url, "notifylab_feed_batch_size_sum", batched[url], expected)
    assert len(ann.of_operation(op["id"])) == PER_OPERATION and not bob.of_operation(op["id"])
    # a's own emit (the operation's "queued") went to its feed as it was sent;
    # coming back from the bus it is left out, not offered to the feed again.
    assert await metric(url_a, dropped) == dropped_before
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


async def _left_in(settings: Settings) -> int:
    """How many messages the instance's queue still holds; deletes it."""
    connection = await aio_pika.connect(settings.broker_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(settings.instance_queue(), passive=True)
    left = queue.declaration_result.message_count
    await channel.queue_delete(settings.instance_queue())
    await connection.close()
    return left


class Batches(list):
    """What a listener delivered, batch by batch; ``full`` is set once
    ``expected`` notifications are in."""

    def __init__(self, expected: int):
        super().__init__()
        self.expected = expected
        self.full = asyncio.Event()

    def deliver(self, notes: list) -> None:
        self.append(notes)
        if sum(map(len, self)) >= self.expected:
            self.full.set()

    def notes(self) -> list:
        return [note for batch in self for note in batch]


def note(i: int, **fields) -> dict:
    """Ann's ``i``-th notification on the bus (what the feed needs of one)."""
    return {"user": "ann", "i": i, "id": f"{i + 1}-0", "prev": f"{i}-0", "ts": 1, **fields}


async def _listening(settings: Settings, expected: int) -> tuple[TopicManager, Batches]:
    """A listener for ann whose deliveries are recorded."""
    batches = Batches(expected)
    listener = TopicManager(settings)
    listener.deliver = batches.deliver
    await listener.start_listener()
    await listener.subscribe("ann")
    return listener, batches


async def test_an_instance_acks_what_it_handled_in_batches(services, monkeypatch):
    """The listener acks with ``multiple`` (one frame for up to ACK_EVERY
    messages, or what came within ACK_DELAY), and everything handled is
    acked: closing the connection after handling sends nothing back to the
    queue."""
    acks: list[bool] = []
    original = ConsumerProtocol._send

    def counted(self, value, channel: int = 1) -> None:
        if isinstance(value, commands.Basic.Ack):
            acks.append(value.multiple)
        original(self, value, channel)

    monkeypatch.setattr(ConsumerProtocol, "_send", counted)
    settings = Settings(prefix=new_prefix(), instance_id="acks")
    count = 3 * ACK_EVERY
    listener, batches = await _listening(settings, count)
    publisher = TopicManager(settings, write_only=True)
    for i in range(count):  # one at a time, each confirmed: they arrive alone, or nearly
        await publisher.emit("notification", note(i), room="user:ann")
    await asyncio.wait_for(batches.full.wait(), 10)
    await asyncio.sleep(ACK_DELAY * 5)  # the last ack's delay
    await listener.close()
    await publisher.close()
    assert [note["i"] for note in batches.notes()] == list(range(count))  # bus order
    assert all(acks) and len(acks) < count / 2  # batched: far fewer frames than messages
    assert await _left_in(settings) == 0  # none came back unacked


async def test_what_arrives_together_is_delivered_in_batches(services):
    """Notifications that arrive together (here: waiting in the queue when
    the instance starts consuming it) reach the feed in batches, one call
    each, in queue order."""
    settings = Settings(prefix=new_prefix(), instance_id="batches")
    count = 500
    listener, batches = await _listening(settings, count)
    assert listener._consumer is not None
    await listener._consumer.close()  # the queue fills while nobody reads it
    publisher = TopicManager(settings, write_only=True)
    await asyncio.gather(*(publisher.emit("notification", note(i), room="user:ann") for i in range(count)))
    await publisher.close()
    await listener._consumer.start()
    await asyncio.wait_for(batches.full.wait(), 10)
    await asyncio.sleep(ACK_DELAY * 5)
    await listener.close()
    assert [note["i"] for note in batches.notes()] == list(range(count))
    # The consumer hands over what one read from the socket completed: many
    # messages at once (the prefetch's worth arrives in a few reads).
    assert len(batches) < count / 10, [len(batch) for batch in batches]
    assert await _left_in(settings) == 0


async def test_a_malformed_message_on_the_bus_is_dropped_and_the_batch_goes_on(services, caplog):
    """What another process publishes cannot break an instance: a body that
    is not JSON, or a notification without what the feed orders by, is
    dropped (counted, acked, logged within a budget) and the good
    notifications around it are delivered, in order."""
    settings = Settings(prefix=new_prefix(), instance_id="malformed")
    good = 50
    listener, batches = await _listening(settings, good)
    dropped: list[None] = []
    listener.on_malformed = lambda: dropped.append(None)
    bad = [
        b"not json at all",
        b"[1, 2, 3]",
        *(
            orjson.dumps(emit_message(note(0, **change)))
            for change in ({"ts": None}, {"id": "soon"}, {"prev": 7}, {"user": ""})
        ),
        orjson.dumps({**emit_message(note(0)), "data": []}),
    ] * 10
    connection = await aio_pika.connect(settings.broker_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange(settings.events_exchange)
    for i in range(good):  # one good notification, then the bad ones, each time
        await exchange.publish(aio_pika.Message(orjson.dumps(emit_message(note(i)))), "user.ann")
        for body in bad[i::good]:
            await exchange.publish(aio_pika.Message(body), "user.ann")
    await connection.close()
    with caplog.at_level(logging.WARNING, logger="notifylab.bus.managers"):
        await asyncio.wait_for(batches.full.wait(), 10)
        await asyncio.sleep(ACK_DELAY * 5)
    await listener.close()
    assert [n["i"] for n in batches.notes()] == list(range(good))
    assert len(dropped) == len(bad)
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 5, len(lines)  # a budget, not a line per message
    assert await _left_in(settings) == 0  # dropped means acked, not sent back


async def test_an_instance_whose_queue_vanishes_declares_it_again_with_its_bindings(make_lab, clients):
    # What a node's death does to an instance's queue when aio-pika fails to
    # restore its channel after the failover (seen once in CI): the queue is
    # gone and nothing declares it. Deleted here under a running instance:
    # its consumer waits MISSING_GRACE, then the instance declares it again,
    # with every user's binding, and catches up from the streams.
    lab = await make_lab()
    url_a, url_b = servers(lab)
    ann = await clients(url_a)
    bob = await clients(url_b)
    queue = Settings.from_env(lab.env).instance_queue("a")
    connection = await aio_pika.connect(Settings.from_env(lab.env).broker_urls[0])
    async with connection:
        await (await connection.channel()).queue_delete(queue)
    # Published while the queue is missing (a's own "queued" aside): it
    # reaches no queue of a's, only ann's stream.
    gone = await bob.start("report", steps=1, step_seconds=0.01)
    await bob.wait_operation(gone["id"])
    meanwhile = await (await clients(url_b, user=ann.user)).start("report", steps=2, step_seconds=0.01)
    final = await ann.wait_operation(meanwhile["id"], 30)  # caught up from the stream
    assert final["type"] == "operation.succeeded"
    # And bound again: what comes next arrives by the bus.
    after = await (await clients(url_b, user=ann.user)).start("report", steps=2, step_seconds=0.05)
    assert (await ann.wait_operation(after["id"], 15))["type"] == "operation.succeeded"
    connection = await aio_pika.connect(Settings.from_env(lab.env).broker_urls[0])
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        assert declared.declaration_result.consumer_count == 1
    (await verdict(ann)).assert_clean()
