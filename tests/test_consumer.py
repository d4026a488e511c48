"""The instance queue's consumer (``bus/consumer.py``): its reading of the
wire, then the real broker: big bodies, a dropped connection, a deleted queue."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
from pamqp import body, commands, frame, header, heartbeat
from yarl import URL

from notifylab.bus.amqp import CHANNEL
from notifylab.bus.consumer import MISSING_GRACE, Consumer, ConsumerProtocol
from support import BROKER, drop_broker_connection, new_prefix


class Wire:
    """What the consumer wrote, in place of a socket (for the parser's tests)."""

    def __init__(self) -> None:
        self.frames: list = []

    def write(self, data: bytes) -> None:
        while data:
            size, _channel, value = frame.unmarshal(data)
            self.frames.append(value)
            data = data[size:]

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def delivery(tag: int, payload: bytes, frame_max: int = 131072) -> bytes:
    """Message ``payload`` as RabbitMQ sends it: Deliver, header, body frames."""
    out = frame.marshal(commands.Basic.Deliver("notifylab", tag, False, "events", "user.ann"), CHANNEL)
    out += frame.marshal(header.ContentHeader(0, len(payload), commands.Basic.Properties()), CHANNEL)
    room = frame_max - 8
    for start in range(0, len(payload), room):
        out += frame.marshal(body.ContentBody(payload[start : start + room]), CHANNEL)
    return out


async def test_messages_are_read_whole_however_the_bytes_are_cut():
    """Deliveries cut at every kind of place (inside a frame's head, its
    payload, between the three frames), a body spread over frames, an empty
    body and heartbeats in between: each body comes out whole, once, in
    order; what one read completed comes out in one batch; and the acks
    cover every tag."""
    batches: list[list[bytes]] = []
    protocol = ConsumerProtocol(URL(BROKER), "q", 10, batches.append)
    wire = Wire()
    protocol.connection_made(wire)  # type: ignore[arg-type]
    payloads = [f"note {i}".encode() * (1 + i % 7) for i in range(200)]
    payloads[50] = b""
    payloads[120] = bytes(range(256)) * 40  # 10 KB, in three frames of 4 KB
    stream = b""
    for tag, payload in enumerate(payloads, 1):
        stream += delivery(tag, payload, frame_max=4096)
        if tag % 17 == 0:
            stream += heartbeat.Heartbeat.value
    rng = random.Random(13)
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 5, 7, 8, 30, 200, 3000])
        protocol.data_received(stream[pos : pos + step])
        pos += step
    assert [b for batch in batches for b in batch] == payloads
    assert max(len(batch) for batch in batches) > 1  # a read of 3,000 bytes completes several
    await asyncio.sleep(0.05)  # the ack's delay
    acks = [f for f in wire.frames if isinstance(f, commands.Basic.Ack)]
    assert acks and all(a.multiple for a in acks) and acks[-1].delivery_tag == len(payloads)
    assert len(acks) < len(payloads) / 10


async def test_a_broken_frame_ends_the_connection_rather_than_guessing():
    """A frame that does not end where its size says is not read on: the
    connection is cut (and the consumer starts over), nothing handed on."""
    batches: list[list[bytes]] = []
    protocol = ConsumerProtocol(URL(BROKER), "q", 10, batches.append)
    aborted: list[bool] = []
    wire = Wire()
    wire.abort = lambda: aborted.append(True)  # type: ignore[method-assign]
    protocol.connection_made(wire)  # type: ignore[arg-type]
    broken = bytearray(delivery(1, b"hello"))
    broken[-1] = 0  # the body frame's end marker
    protocol.data_received(bytes(broken))
    assert aborted and batches == []


async def _declare(connection: aio_pika.abc.AbstractConnection, name: str) -> aio_pika.abc.AbstractQueue:
    """Queue ``name`` declared as an instance's is (a minute's expiry)."""
    channel = await connection.channel()
    return await channel.declare_queue(name, arguments={"x-expires": 60_000})


async def _publish(connection: aio_pika.abc.AbstractConnection, queue: str, bodies: list[bytes]) -> None:
    channel = await connection.channel()
    for b in bodies:
        await channel.default_exchange.publish(aio_pika.Message(b), routing_key=queue)
    await channel.close()


class Received:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.changed = asyncio.Event()

    def __call__(self, batch: list[bytes]) -> None:
        self.bodies.extend(batch)
        self.changed.set()

    async def until(self, count: int, timeout: float = 15.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.bodies) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.bodies


@contextlib.asynccontextmanager
async def consuming(
    what: str, on_missing: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractConnection, Received, Consumer]]:
    """A queue declared as an instance's, and a started ``Consumer`` of it
    recording what it hands on; the queue's name, a connection to publish
    and declare with, the record, the consumer. All removed afterwards."""
    name = new_prefix() + ".consumer." + what
    connection = await aio_pika.connect(BROKER)
    await _declare(connection, name)
    received = Received()
    consumer = Consumer(lambda: BROKER, name, 100, received, on_missing)
    await consumer.start()
    try:
        yield name, connection, received, consumer
    finally:
        await consumer.close()
        channel = await connection.channel()
        await channel.queue_delete(name)
        await connection.close()


async def test_a_big_body_arrives_whole_from_the_broker():
    """Bodies past the broker's frame size (128 KB) come in several body
    frames: they reach ``on_batch`` whole, between the small ones, in order."""
    async with consuming("big") as (name, connection, received, _):
        bodies = [b"small", bytes(range(256)) * 2000, b"small again"]  # 512 KB in the middle
        await _publish(connection, name, bodies)
        assert await received.until(3) == bodies


async def test_the_consumer_comes_back_after_the_broker_drops_its_connection():
    """The broker closes the consumer's connection (as on a node's restart,
    or ``rabbitmqctl close_connection``): the consumer connects again by
    itself, and what was published meanwhile, or not yet acked, arrives."""
    async with consuming("drop") as (name, connection, received, consumer):
        await _publish(connection, name, [b"%d" % i for i in range(10)])
        await received.until(10)
        assert consumer._protocol is not None and consumer._protocol._transport is not None
        await drop_broker_connection(consumer._protocol._transport)
        await _publish(connection, name, [b"%d" % i for i in range(10, 20)])
        got = await received.until(20)
        assert sorted(set(got), key=int) == [b"%d" % i for i in range(20)]  # none lost (unacked may repeat)


async def test_a_deleted_queue_is_consumed_again_once_it_is_back():
    """The broker cancels the consumer when its queue goes (its node died);
    the consumer retries until the queue is declared again (aio-pika does
    that for an instance), then consumes it."""
    async with consuming("gone") as (name, connection, received, _):
        await _publish(connection, name, [b"before"])
        await received.until(1)
        channel = await connection.channel()
        await channel.queue_delete(name)
        await asyncio.sleep(1.5)  # the consumer is refused meanwhile: no such queue
        await _declare(connection, name)
        await _publish(connection, name, [b"after"])
        assert await received.until(2) == [b"before", b"after"]


async def test_a_queue_still_missing_after_the_grace_is_declared_again_through_on_missing():
    """Nobody declares the queue again (aio-pika failed to restore it):
    after MISSING_GRACE the consumer asks ``on_missing`` to, then consumes
    it; before the grace it does not ask (aio-pika may be about to)."""
    asked: list[float] = []
    was_asked = asyncio.Event()
    holder: dict = {}

    async def on_missing() -> None:
        asked.append(asyncio.get_running_loop().time())
        await _declare(holder["connection"], holder["name"])
        was_asked.set()

    async with consuming("missing", on_missing) as (name, connection, received, _):
        holder.update(connection=connection, name=name)
        await _publish(connection, name, [b"before"])
        await received.until(1)
        deleted = asyncio.get_running_loop().time()
        await (await connection.channel()).queue_delete(name)
        async with asyncio.timeout(MISSING_GRACE + 10):
            await was_asked.wait()
        assert asked[0] - deleted >= MISSING_GRACE
        await _publish(connection, name, [b"after"])
        assert await received.until(2) == [b"before", b"after"]
        assert len(asked) == 1
