"""Consuming an instance's queue, on a connection of its own (``amqp.py``).

Every message that one read from the socket completed goes to ``on_batch``
in one call, in queue order: the batch the feed takes.

A delivered message is three frames on the wire (AMQP 0-9-1, section
4.2.6): a method frame ``Basic.Deliver`` (which holds the delivery tag), a
content header (which holds the body's size), then the body, in one frame or
more. Those three are read by hand below, because only two numbers of them
are needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pamqp import commands, frame
from yarl import URL

from ..config import redact
from ..errors import ServiceUnavailable
from .amqp import FRAME_HEADER, U64, AmqpProtocol, Missing, connect, method_id
from .broker import RECONNECT_SECONDS

log = logging.getLogger(__name__)

ACK_EVERY = 256  # messages acknowledged at once at most (below the prefetch, or the broker would wait)
ACK_DELAY = 0.02  # seconds an ack waits for more messages to cover
CONSUMER_TAG = "notifylab"
# Seconds a queue may be missing before the consumer asks for it to be
# declared again (``on_missing``): time for aio-pika to restore it after a
# failover, which takes a second or two when it works.
MISSING_GRACE = 3.0
DELIVER = method_id(60, 60)  # Basic.Deliver

OnBatch = Callable[[list[bytes]], None]


class ConsumerProtocol(AmqpProtocol):
    """One connection consuming one queue.

    Acks go many at a time: one ``Basic.Ack`` with "multiple" covers every
    message up to its tag, sent once ``ACK_EVERY`` are waiting or
    ``ACK_DELAY`` after the last batch. At a low rate each message arrives
    alone, so an ack per batch would still be a frame per message (a tenth
    of the bus path's CPU, measured). Delaying an ack delays nothing a
    socket sees; a message handled but not acked when the connection drops
    comes again, and the feed drops it as a duplicate (its rule 2)."""

    PRODUCT = "notifylab consumer"

    def __init__(self, url: URL, queue: str, prefetch: int, on_batch: OnBatch):
        super().__init__(url)
        self.queue = queue
        self.prefetch = prefetch
        self.on_batch = on_batch
        self._batch: list[bytes] = []  # what this read completed
        # The message being read: its tag, the body's size, the parts so far.
        self._tag = 0
        self._size = 0
        self._parts: list[bytes] = []
        self._received = 0  # bytes of the body so far
        self._last_tag = 0  # the newest tag received
        self._unacked = 0  # handled, not yet acked
        self._ack_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        """Ack what is handled, then close; what is not acked goes back to the queue."""
        self._ack()
        super().close()

    # -- the set-up ---------------------------------------------------------

    def _opened(self) -> None:
        self._send(commands.Basic.Qos(prefetch_count=self.prefetch))

    def _reply(self, method: frame.FrameTypes) -> None:
        match method:
            case commands.Basic.QosOk():
                self._send(commands.Basic.Consume(queue=self.queue, consumer_tag=CONSUMER_TAG))
            case commands.Basic.ConsumeOk():
                if not self.ready.done():
                    self.ready.set_result(None)
            case commands.Basic.Cancel():
                # The broker ended our consumer: the queue was deleted (its
                # node died, or it expired). Start over on a new connection.
                self._fail("the broker cancelled the consumer (the queue is gone)", Missing)

    # -- deliveries -------------------------------------------------------

    def _fast(self, ids: int, buffer: bytearray, start: int) -> bool:
        if ids != DELIVER:
            return False
        # Class, method, consumer tag (a short string), then the delivery tag.
        self._tag = U64.unpack_from(buffer, start + 5 + buffer[start + 4])[0]
        return True

    def _content(self, kind: int, buffer: bytearray, start: int, stop: int) -> None:
        if kind == FRAME_HEADER:  # class, weight, then the body's size
            self._size = U64.unpack_from(buffer, start + 4)[0]
            self._parts, self._received = [], 0
            if not self._size:
                self._delivered(b"")
            return
        part = bytes(buffer[start:stop])
        self._received += len(part)
        if self._received >= self._size and not self._parts:
            self._delivered(part)  # the usual case: the body in one frame
        else:
            self._parts.append(part)
            if self._received >= self._size:
                self._delivered(b"".join(self._parts))

    def _delivered(self, body: bytes) -> None:
        self._batch.append(body)
        self._last_tag = self._tag
        self._unacked += 1
        self._parts = []

    def _read(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            self.on_batch(batch)
        except Exception:
            # Acked all the same: sent back, the same batch would fail
            # again. Nothing is lost for good: the feed reads a gap from
            # the stream when the user's next notification names it.
            log.exception("handling %d messages from %s failed", len(batch), self.queue)
        if self._unacked >= ACK_EVERY:
            self._ack()
        elif self._ack_timer is None:
            self._ack_timer = self._loop.call_later(ACK_DELAY, self._ack)

    def _ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._unacked and self._last_tag:
            self._send(commands.Basic.Ack(delivery_tag=self._last_tag, multiple=True))
            self._unacked = 0

    def _ended(self, problem: ConnectionError) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None


class Consumer:
    """Consume ``queue`` for as long as this runs, through whichever node
    ``url()`` names at each attempt (the node aio-pika's listener is on),
    reconnecting every ``RECONNECT_SECONDS`` after the connection drops.

    A drop loses nothing: unacked messages go back to the queue and come
    again. If the queue itself went with a node, aio-pika declares it again
    with its bindings and the feed catches up from the streams
    (``managers.py``); until the queue is back, an attempt to consume it is
    refused and tried again. Should it still be missing after
    ``MISSING_GRACE`` seconds (aio-pika failed to restore it, or someone
    deleted it), ``on_missing`` is awaited to declare it again, and again
    each ``MISSING_GRACE`` while it stays missing."""

    def __init__(
        self,
        url: Callable[[], str],
        queue: str,
        prefetch: int,
        on_batch: OnBatch,
        on_missing: Callable[[], Awaitable[None]] | None = None,
    ):
        self.url = url
        self.queue = queue
        self.prefetch = prefetch
        self.on_batch = on_batch
        self.on_missing = on_missing
        self._protocol: ConsumerProtocol | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> None:
        """Consume now (again, after ``close``); a clear error if the
        broker cannot be reached."""
        self._closing = False
        try:
            self._protocol = await self._connect()
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise ServiceUnavailable(f"cannot consume {self.queue} at {redact(self.url())}: {exc}") from exc
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def _connect(self) -> ConsumerProtocol:
        return await connect(
            lambda url: ConsumerProtocol(url, self.queue, self.prefetch, self.on_batch), self.url()
        )

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            assert self._protocol is not None
            await asyncio.shield(self._protocol.lost)  # cancelling this task leaves it to close()
            if self._closing:
                return
            log.warning("the consumer of %s lost its connection; reconnecting", self.queue)
            missing_since = loop.time() if isinstance(self._protocol.failure, Missing) else None
            while not self._closing:
                await asyncio.sleep(RECONNECT_SECONDS)
                try:
                    self._protocol = await self._connect()
                except Missing:
                    missing_since = missing_since or loop.time()
                    if self.on_missing is not None and loop.time() - missing_since >= MISSING_GRACE:
                        log.warning("%s is still missing: declaring it again", self.queue)
                        try:
                            await self.on_missing()
                        except Exception:  # the broker may be away again: the next round tries
                            log.exception("declaring %s again failed", self.queue)
                        missing_since = loop.time()
                    continue
                except (OSError, TimeoutError, ConnectionError) as exc:
                    log.debug("consuming %s: %s", self.queue, exc)
                    continue
                log.info("consuming %s again", self.queue)
                break

    async def close(self) -> None:
        """Stop consuming; what is handled is acked first."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._protocol is not None:
            self._protocol.close()
            try:
                async with asyncio.timeout(1):
                    await self._protocol.lost
            except TimeoutError:
                self._protocol.abort()
