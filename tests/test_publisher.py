"""Publishing notifications (``bus/publisher.py``): the frames it writes, its
confirms, then the real broker: order, a dropped connection, a deleted exchange."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import pytest
from pamqp import body, commands, frame, header
from yarl import URL

from notifylab.bus.amqp import CHANNEL
from notifylab.bus.publisher import Publisher, PublisherProtocol, Refused, publish_frames
from support import BROKER, drop_broker_connection, new_prefix


def read_frames(data: bytes) -> list:
    values = []
    while data:
        size, channel, value = frame.unmarshal(data)
        assert channel == CHANNEL
        values.append(value)
        data = data[size:]
    return values


def test_the_frames_written_by_hand_are_what_pamqp_reads():
    """Basic.Publish, a content header (transient, the body's size) and the
    body, split at the broker's frame size: as the AMQP codec reads them."""
    payload = bytes(range(256)) * 50  # 12.8 KB: four body frames of at most 4 KB
    method, content, *parts = read_frames(publish_frames("events", "user.ann", payload, frame_max=4096))
    assert isinstance(method, commands.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == ("events", "user.ann", False)
    assert isinstance(content, header.ContentHeader)
    assert content.body_size == len(payload) and content.properties.delivery_mode == 1
    assert all(isinstance(p, body.ContentBody) and len(p.value) <= 4096 - 8 for p in parts)
    assert b"".join(p.value for p in parts) == payload
    assert len(read_frames(publish_frames("events", "user.ann", b"", frame_max=4096))) == 2  # no body frame
    with pytest.raises(ValueError, match="255 bytes"):
        publish_frames("events", "user." + "x" * 300, b"{}", frame_max=4096)


class Wire:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        pass


async def _protocol() -> tuple[PublisherProtocol, Wire]:
    """A publisher past its set-up, writing to ``Wire``."""
    protocol = PublisherProtocol(URL(BROKER), "events")
    wire = Wire()
    protocol.connection_made(wire)  # type: ignore[arg-type]
    protocol.ready.set_result(None)
    wire.written = b""  # the protocol header
    return protocol, wire


def _confirm(protocol: PublisherProtocol, value: commands.Basic.Ack | commands.Basic.Nack) -> None:
    protocol.data_received(frame.marshal(value, CHANNEL))


async def test_confirms_resolve_their_own_publishes_and_a_nack_fails_one():
    """Delivery tags count publishes from 1; an ack with "multiple" confirms
    every one up to its tag, a single ack or nack only its own; what one
    loop turn published goes out in one write."""
    protocol, wire = await _protocol()
    futures = [protocol.publish("user.ann", b"%d" % i) for i in range(6)]
    assert wire.written == b""  # written at the end of this turn, together
    await asyncio.sleep(0)
    assert [f.routing_key for f in read_frames(wire.written)[::3]] == ["user.ann"] * 6
    _confirm(protocol, commands.Basic.Ack(delivery_tag=3, multiple=True))
    _confirm(protocol, commands.Basic.Nack(delivery_tag=5, multiple=False))
    await asyncio.sleep(0)
    assert [f.done() for f in futures] == [True, True, True, False, True, False]
    assert all(f.exception() is None for f in futures[:3])
    assert isinstance(futures[4].exception(), Refused)
    _confirm(protocol, commands.Basic.Ack(delivery_tag=6, multiple=True))
    assert futures[3].exception() is None and futures[5].exception() is None


async def test_publishes_waiting_when_the_connection_ends_fail_so_they_are_sent_again():
    protocol, _ = await _protocol()
    waiting = protocol.publish("user.ann", b"x")
    protocol.connection_lost(None)
    with pytest.raises(ConnectionError):
        await waiting
    with pytest.raises(ConnectionError):
        protocol.publish("user.ann", b"y")


@contextlib.asynccontextmanager
async def publishing() -> AsyncIterator[tuple[Publisher, aio_pika.abc.AbstractQueue]]:
    """A started ``Publisher`` to a new topic exchange, and a queue bound to
    every user's key on it; both removed afterwards."""
    exchange = new_prefix() + ".events"
    connection = await aio_pika.connect(BROKER)
    channel = await connection.channel()
    topic = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exchange + ".q", arguments={"x-expires": 60_000})
    await queue.bind(topic, "user.#")
    publisher = Publisher([BROKER], exchange)
    await publisher.start()
    try:
        yield publisher, queue
    finally:
        await publisher.close()
        await queue.delete(if_unused=False, if_empty=False)
        await channel.exchange_delete(exchange)
        await connection.close()


async def _bodies(queue: aio_pika.abc.AbstractQueue, count: int, timeout: float = 15.0) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(timeout):
        async with queue.iterator(no_ack=True) as messages:
            async for message in messages:
                got.append(message.body)
                if len(set(got)) >= count:  # a publish sent again may come twice
                    return got
    return got


async def test_published_in_order_and_confirmed_by_the_broker():
    async with publishing() as (publisher, queue):
        bodies = [b"%d" % i for i in range(300)]
        for b in bodies[:100]:  # one at a time, each confirmed
            await publisher.publish("user.ann", b)
        await asyncio.gather(*(publisher.publish("user.ann", b) for b in bodies[100:]))  # in flight together
        assert await _bodies(queue, 300) == bodies


async def test_a_publish_survives_its_connection_being_dropped():
    """The broker drops the publisher's connection with publishes in flight:
    each is sent again on a new connection, none is lost (one in flight may
    arrive twice: the feed drops the second copy)."""
    async with publishing() as (publisher, queue):
        first = [b"%d" % i for i in range(50)]
        await asyncio.gather(*(publisher.publish("user.ann", b) for b in first))
        dropped = publisher._protocol
        assert dropped is not None and dropped._transport is not None
        sent: list[bytes] = []
        stop = asyncio.Event()

        async def keep_sending() -> None:  # 50 in flight at a time, until the drop is over
            while not stop.is_set():
                batch = [b"%d" % i for i in range(50 + len(sent), 100 + len(sent))]
                await asyncio.gather(*(publisher.publish("user.ann", b) for b in batch))
                sent.extend(batch)
                await asyncio.sleep(0.05)

        sending = asyncio.create_task(keep_sending())
        await drop_broker_connection(dropped._transport)
        await asyncio.sleep(1.5)  # the reconnect, and more publishes after it
        stop.set()
        await sending
        assert publisher._protocol is not dropped  # it connected again
        got = await _bodies(queue, 50 + len(sent))
        assert set(got) == set(first + sent)


async def test_an_exchange_deleted_meanwhile_is_declared_again():
    """Publishing to a missing exchange closes the channel (404); the
    publisher connects again, declares the exchange, and the publish goes."""
    exchange = new_prefix() + ".events"
    publisher = Publisher([BROKER], exchange)
    await publisher.start()
    connection = await aio_pika.connect(BROKER)
    channel = await connection.channel()
    await channel.exchange_delete(exchange)
    try:
        await asyncio.wait_for(publisher.publish("user.ann", b"after"), 10)
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True, passive=True)
    finally:
        await publisher.close()
        await channel.exchange_delete(exchange)
        await connection.close()
