"""How events travel between processes: python-socketio client managers.

python-socketio lets a server share rooms across processes through a
"client manager": ``sio.emit(..., room=...)`` on one process reaches the
sockets on every other. Its stock ``AsyncAioPikaManager`` sends every event to
every instance through a fanout exchange. ``TopicManager`` is ours: it
publishes an event for room ``user:<name>`` with routing key ``user.<name>``
on a topic exchange, and each instance's queue is bound only to the users it
holds sockets for. An instance then receives only what its own users need.

On a server, both hand notifications to the instance's feed
(``server/feed.py``, through ``DeliveryHook.deliver``) instead of emitting
them straight away: the feed is what makes delivery ordered, gap-free and
duplicate-free. Workers use the same managers write-only, to publish.

Every manager here has ``start_publisher()``, ``start_listener()`` and
``close()`` besides python-socketio's interface (see ``make_manager``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import socketio
from socketio.async_pubsub_manager import AsyncPubSubManager

from .. import codec
from ..config import Settings
from ..ids import now_ms
from ..logbudget import LogBudget
from ..protocol import BusNotification, check_bus_notification, user_room
from .broker import close_broker, connect_broker
from .consumer import Consumer
from .publisher import Publisher

log = logging.getLogger(__name__)

LISTEN_PREFETCH = 1024  # messages the broker sends an instance before its acks

# One budget for the process: a broken publisher floods every manager alike.
_malformed_log = LogBudget(log)


async def publish_notification(emitter: Any, note: BusNotification) -> None:
    """Send ``note`` to every instance that holds a socket of its user.

    ``emitter`` is a Socket.IO server (on an instance) or a write-only client
    manager (in a worker); both route by the room. The copy on the bus is
    stamped with the time it left, for the lab's timeline.
    """
    await emitter.emit("notification", {**note, "published": now_ms()}, room=user_room(note["user"]))


def routing_key(message: dict) -> str:
    """``user.<name>`` for an emit to a user's room; ``control.<method>`` for
    everything every instance must see (emits to a socket id, disconnects)."""
    room = message.get("room")
    if message.get("method") == "emit" and isinstance(room, str) and room.startswith("user:"):
        return "user." + room[len("user:") :]
    return "control." + str(message.get("method"))


class DeliveryHook:
    """Mixed into a pub/sub manager so that the server can take over what
        arrives from the bus: notifications go to ``deliver`` (the instance's
        feed) in batches, in bus order, instead of straight to the sockets; the
        number of messages received is reported to ``on_message`` and each one
    dropped as malformed to ``on_malformed`` (metrics), and
        ``on_reconnect`` callbacks run after the listener reconnected. The server
        sets them; a write-only manager (a worker's) leaves them unset. Nothing
        here knows the server.

        ``deliver`` is a plain function, not a coroutine: the feed hands most
        notifications to the sockets without awaiting anything (``feed.py``), and
        a batch costs one call instead of a task per notification.
    """

    deliver: Callable[[list[BusNotification]], None] | None = None
    on_message: Callable[[int], None] | None = None
    on_malformed: Callable[[], None] | None = None
    on_reconnect: list[Callable[[], Awaitable[None]]]

    async def subscribe(self, user: str) -> None:
        """Start receiving ``user``'s events on this instance (no-op here)."""

    async def unsubscribe(self, user: str) -> None:
        """Stop receiving ``user``'s events on this instance (no-op here)."""

    # python-socketio's AsyncPubSubManager calls _handle_emit(message) for
    # each emit it receives, with message["data"] the emit's arguments as
    # published by emit(): a tuple/list whose first item is our payload. That
    # format is python-socketio's, not ours: tests/test_contract.py fails if
    # an upgrade changes it, rather than letting delivery degrade silently.
    async def _handle_emit(self, message: dict) -> None:
        if self.deliver is not None and message.get("event") == "notification":
            data = message.get("data")
            try:
                note = check_bus_notification(data[0] if isinstance(data, list | tuple) and data else None)
            except ValueError as exc:
                self._drop(message, str(exc))
                return
            self.deliver([note])
        else:
            await super()._handle_emit(message)  # type: ignore[misc]

    def _drop(self, message: object, problem: str) -> None:
        """A message no instance could use: acked with the rest (a redelivery
        would be as bad), counted, and logged within a budget."""
        if self.on_malformed is not None:
            self.on_malformed()
        _malformed_log.warning("dropped a malformed message from the bus (%s): %.200r", problem, message)

    async def _listen(self) -> AsyncIterator[Any]:
        async for message in super()._listen():  # type: ignore[misc]
            if self.on_message is not None:
                self.on_message(1)
            yield message


class _TopicTransport(AsyncPubSubManager):
    """Publish by routing key on a topic exchange; consume one queue per
    instance whose bindings change at run time.

    aio-pika declares the queue, binds users and restores both after a
    reconnect (the control plane); the notifications themselves (the data
    plane) are published and consumed on connections of their own that
    speak just enough AMQP (``publisher.py``, ``consumer.py``): measured,
    aio-pika's and aiormq's machinery per message was 40% of an instance's
    CPU on the bus path (docs/architecture.md, "Under load")."""

    name = "notifylab-topic"

    def __init__(self, settings: Settings, write_only: bool = False, logger: Any = None):
        super().__init__(channel=settings.events_exchange, write_only=write_only, logger=logger)
        self.settings = settings
        self._publisher: Publisher | None = None
        self._publish_lock = asyncio.Lock()
        self._listener: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._queue: aio_pika.abc.AbstractRobustQueue | None = None
        self._listen_exchange: aio_pika.abc.AbstractExchange | None = None
        self._ready = asyncio.Event()
        # Control messages (emits to one socket, disconnects) go the way
        # python-socketio handles them: its listener task reads them here.
        self._control: asyncio.Queue[dict] = asyncio.Queue()
        self._consumer: Consumer | None = None
        self._bound: set[str] = set()  # the users whose key the queue is bound to
        self._binding = asyncio.Lock()  # one change of the bindings at a time, and not during _declare
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []  # run after the listener reconnects

    async def start_publisher(self) -> None:
        """Connect for publishing now, so a bad URL fails at start-up."""
        async with self._publish_lock:
            if self._publisher is None:
                publisher = Publisher(self.settings.broker_urls, self.channel)
                await publisher.start()
                self._publisher = publisher

    async def _publish(self, data: dict) -> None:
        await self.start_publisher()
        assert self._publisher is not None
        await self._publisher.publish(routing_key(data), codec.dumpb(data))

    async def start_listener(self) -> None:
        """Declare this instance's queue and start consuming it. Called at
        start-up (python-socketio would wait for the first socket)."""
        self._listener = listener = await connect_broker(self.settings.broker_urls)
        name = self.settings.instance_queue()
        # A previous run of this instance id may have left its queue (and its
        # users' bindings) behind: start clean.
        channel = await listener.channel()
        await channel.queue_delete(name)
        await self._declare(channel)
        # Consume where the listener is (its node holds the queue), following it when it fails over.
        self._consumer = Consumer(
            lambda: str(getattr(listener, "url", "")), name, LISTEN_PREFETCH, self._drain, self._redeclare
        )
        await self._consumer.start()
        listener.reconnect_callbacks.add(self._reconnected)
        self._ready.set()

    async def _declare(self, channel: aio_pika.abc.AbstractRobustChannel) -> None:
        """Declare, on ``channel``, the exchange, this instance's queue and
        its bindings: ``control.#`` and every user bound here.

        Not exclusive, so a short disconnect keeps the queue and what it
        holds; it expires a minute after its instance is gone for good. Not
        durable, and a classic queue: it lives on the node we are connected
        to, and goes when that node dies. That is fine: it is this
        instance's alone, and everything it held is in the streams. After
        failing over to another node, aio-pika declares it there again with
        its bindings, our consumer consumes it there again (consumer.py), and
        the feed reads the streams past its cursors (_reconnected)."""
        exchange = await channel.declare_exchange(self.channel, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.settings.instance_queue(), arguments={"x-expires": 60_000})
        await queue.bind(exchange, "control.#")
        for user in sorted(self._bound):
            await queue.bind(exchange, "user." + user)
        self._channel, self._listen_exchange, self._queue = channel, exchange, queue

    async def _redeclare(self) -> None:
        """The queue went missing and nothing brought it back (the consumer
        waited ``MISSING_GRACE``): aio-pika restores a channel after a
        failover, but a race in it can leave one unrestored, the queue gone
        with its node. Declare it again on a new channel, with its
        bindings, and catch up from the streams: what was published while
        it was missing reached no queue of ours."""
        assert self._listener is not None
        async with self._binding:
            old = self._channel
            await self._declare(await self._listener.channel())
            if old is not None:
                with contextlib.suppress(Exception):  # broken already, most likely
                    await old.close()
        await self._reconnected(None)

    async def _reconnected(self, _connection: Any) -> None:
        log.warning("reconnected to RabbitMQ; catching up from the inbox streams")
        for callback in self.on_reconnect:
            await callback()

    def _drain(self, bodies: list[bytes]) -> None:
        """What one read from the broker brought (``consumer.py``), handled
        as one batch: notifications to ``deliver`` (the feed), in bus order;
        the rest to python-socketio's listener."""
        notes: list[BusNotification] = []
        received = 0
        for body in bodies:
            try:
                message = codec.loads(body)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                self._drop(body, "it is not a JSON object")
                continue
            if message.get("method") == "emit" and message.get("event") == "notification":
                received += 1
                # python-socketio's emit hands its own host's emits to
                # _handle_emit before publishing them, and its listener skips
                # them when they come back; so must we, or the feed would
                # take every notification this instance published twice.
                if message.get("host_id") == self.host_id:
                    continue
                data = message.get("data")
                try:
                    notes.append(check_bus_notification(data[0] if isinstance(data, list) and data else None))
                except ValueError as exc:
                    self._drop(body, str(exc))
            else:
                self._control.put_nowait(message)
        if received and self.on_message is not None:  # control messages: counted by DeliveryHook._listen
            self.on_message(received)
        if notes:
            if self.deliver is not None:
                self.deliver(notes)
            else:  # nobody took delivery over: python-socketio emits them itself
                for note in notes:
                    self._control.put_nowait(emit_message(note))

    async def _listen(self) -> AsyncIterator[Any]:
        while True:
            yield await self._control.get()

    async def _bind(self, user: str, bind: bool) -> None:
        async with asyncio.timeout(10):
            await self._ready.wait()
        key = "user." + user
        async with self._binding:
            assert self._queue is not None and self._listen_exchange is not None
            if bind:
                await self._queue.bind(self._listen_exchange, key)
                self._bound.add(user)
            else:
                self._bound.discard(user)
                await self._queue.unbind(self._listen_exchange, key)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.close()
        if self._publisher is not None:
            await self._publisher.close()
        await close_broker(self._listener)


def emit_message(note: BusNotification, host_id: str | None = None) -> dict:
    """python-socketio's pub/sub message for an emit of ``note`` to its
    user's room, as the manager of host ``host_id`` publishes it."""
    return {
        "method": "emit",
        "event": "notification",
        "data": [note],
        "namespace": "/",
        "room": user_room(note["user"]),
        "skip_sid": None,
        "callback": None,
        "host_id": host_id,
    }


class TopicManager(DeliveryHook, _TopicTransport):
    """Per-user topic routing (notifylab's default)."""

    async def subscribe(self, user: str) -> None:
        await self._bind(user, True)

    async def unsubscribe(self, user: str) -> None:
        await self._bind(user, False)


class FanoutManager(DeliveryHook, socketio.AsyncAioPikaManager):
    """python-socketio's stock manager (fanout: every instance gets every
    event), kept as the comparison mode ``NOTIFYLAB_ROUTING=fanout``."""

    def __init__(self, settings: Settings, write_only: bool = False, logger: Any = None):
        url = settings.broker_urls[0]  # unused: _connection() below connects
        super().__init__(url=url, channel=settings.fanout_exchange, write_only=write_only, logger=logger)
        self.settings = settings
        self.on_reconnect = []

    async def start_publisher(self) -> None:
        # The stock _publish() connects lazily and sets publisher_connection
        # before publisher_exchange: an emit in between publishes to None,
        # retries once and drops the message (the benchmark saw 36 of 1696
        # lost). Connecting fully here, before any emit, closes that window.
        connection = await self._connection()
        channel = await self._channel(connection)
        self.publisher_exchange = await self._exchange(channel)
        self.publisher_channel = channel
        self.publisher_connection = connection

    async def _connection(self) -> aio_pika.abc.AbstractRobustConnection:
        # The stock manager connects to its one URL; ours fails over between
        # every URL of NOTIFYLAB_BROKER_URL, for its publisher and its listener.
        return await connect_broker(self.settings.broker_urls)

    async def start_listener(self) -> None:
        pass  # the stock manager connects its listener itself, in _listen()

    async def close(self) -> None:
        # The stock manager has no close(); its publisher connection is ours to close.
        await close_broker(self.publisher_connection)


class MemoryManager(DeliveryHook, AsyncPubSubManager):
    """The embedded mode's manager: one process, so every emit is local."""

    name = "notifylab-memory"

    def __init__(self, settings: Settings, write_only: bool = False, logger: Any = None):
        super().__init__(write_only=write_only, logger=logger)
        self.on_reconnect = []

    async def start_publisher(self) -> None:
        pass

    async def start_listener(self) -> None:
        pass

    async def _publish(self, data: dict) -> None:
        pass  # emit() already handled it in this process

    async def close(self) -> None:
        pass

    async def _listen(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()  # nothing ever arrives from elsewhere
        yield  # pragma: no cover


Manager = TopicManager | FanoutManager | MemoryManager


def make_manager(settings: Settings, write_only: bool = False) -> Manager:
    """The client manager that ``settings`` ask for."""
    if settings.memory:
        return MemoryManager(settings, write_only=write_only)
    if settings.routing == "fanout":
        return FanoutManager(settings, write_only=write_only)
    return TopicManager(settings, write_only=write_only)
