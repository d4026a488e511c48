"""Publishing notifications with confirms, on a connection of its own (``amqp.py``).

A notification is taken as sent only once RabbitMQ has confirmed it (the
channel is in confirm mode: the broker answers each publish with
``Basic.Ack``, or ``Basic.Nack`` if it could not take it). Many publishes
are in flight at once: a worker runs many operations, an instance serves
many requests, and each waits only for its own confirm. What the callers
publish in one turn of the event loop leaves in one write to the socket.

A publish is three frames (AMQP 0-9-1, section 4.2.6): ``Basic.Publish``
(exchange, routing key), a content header (the body's size, and its one
property: transient), then the body. They are written by hand below;
``tests/test_publisher.py`` reads them back with pamqp.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Sequence

from pamqp import commands, frame
from yarl import URL

from ..config import redact
from ..errors import ServiceUnavailable
from .amqp import (
    CHANNEL,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_METHOD,
    U64,
    AmqpProtocol,
    connect,
    method_id,
)
from .broker import PUBLISH_DEADLINE

log = logging.getLogger(__name__)

ACK, NACK = method_id(60, 80), method_id(60, 120)  # Basic.Ack, Basic.Nack
PUBLISH = struct.pack(">HHH", 60, 40, 0)  # Basic.Publish's class and method ids, and ticket 0
# A content header's class (basic), weight (0), [body size], then its
# properties: only delivery-mode (flag 0x1000), 1, transient: the inbox
# stream is a notification's durable copy, the bus only carries it.
HEADER_START, HEADER_END = struct.pack(">HH", 60, 0), struct.pack(">HB", 0x1000, 1)
FRAME_HEAD = struct.Struct(">BHI")


class Refused(ConnectionError):
    """The broker nacked a publish: it could not take it (tried again)."""


def short_string(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"an AMQP short string holds 255 bytes at most: {text[:40]!r}...")
    return bytes((len(data),)) + data


def publish_frames(exchange: str, key: str, body: bytes, frame_max: int) -> bytes:
    """``body`` published to ``exchange`` with routing key ``key``, as bytes
    on the wire: the method frame, the content header, the body frames."""
    method = PUBLISH + short_string(exchange) + short_string(key) + b"\0"  # mandatory, immediate: off
    content = HEADER_START + U64.pack(len(body)) + HEADER_END
    parts = [
        FRAME_HEAD.pack(FRAME_METHOD, CHANNEL, len(method)),
        method,
        bytes((FRAME_END,)),
        FRAME_HEAD.pack(FRAME_HEADER, CHANNEL, len(content)),
        content,
        bytes((FRAME_END,)),
    ]
    room = frame_max - 8  # a frame's head and end count against frame_max
    for start in range(0, len(body), room):
        piece = body[start : start + room]
        parts += (FRAME_HEAD.pack(FRAME_BODY, CHANNEL, len(piece)), piece, bytes((FRAME_END,)))
    return b"".join(parts)


class PublisherProtocol(AmqpProtocol):
    """One connection publishing with confirms. ``publish`` returns a
    future that the broker's confirm resolves (or its nack, or the
    connection's end, fails). The topic exchange ``exchange`` is declared
    (durable) at each connection, so that one deleted meanwhile is back
    before the first publish."""

    PRODUCT = "notifylab publisher"

    def __init__(self, url: URL, exchange: str):
        super().__init__(url)
        self.exchange = exchange
        self._tag = 0  # the last publish's delivery tag: the broker counts them from 1
        self._waiting: dict[int, asyncio.Future[None]] = {}  # by tag, oldest first
        self._out: list[bytes] = []  # written at the end of this loop turn

    def publish(self, key: str, body: bytes) -> asyncio.Future[None]:
        if not self.open:
            raise ConnectionError("not connected to RabbitMQ")
        data = publish_frames(self.exchange, key, body, self.frame_max)
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)
        self._tag += 1
        confirmed = self._waiting[self._tag] = self._loop.create_future()
        return confirmed

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None:
            self._transport.write(b"".join(out))

    def _opened(self) -> None:
        self._send(commands.Exchange.Declare(exchange=self.exchange, exchange_type="topic", durable=True))

    def _reply(self, method: frame.FrameTypes) -> None:
        match method:
            case commands.Exchange.DeclareOk():
                self._send(commands.Confirm.Select())
            case commands.Confirm.SelectOk():
                if not self.ready.done():
                    self.ready.set_result(None)

    def _fast(self, ids: int, buffer: bytearray, start: int) -> bool:
        if ids != ACK and ids != NACK:
            return False
        # Class, method, the delivery tag, then its bits: "multiple" first.
        tag = U64.unpack_from(buffer, start + 4)[0]
        multiple = buffer[start + 12] & 1
        waiting = self._waiting
        if multiple:
            done = []
            for t in waiting:  # oldest first
                if t > tag:
                    break
                done.append(t)
        else:
            done = [tag] if tag in waiting else []
        for t in done:
            future = waiting.pop(t)
            if future.done():  # its caller gave up waiting
                continue
            if ids == ACK:
                future.set_result(None)
            else:
                future.set_exception(Refused(f"RabbitMQ refused a publish (nack of {t})"))
        return True

    def _ended(self, problem: ConnectionError) -> None:
        # Unconfirmed: perhaps never routed, perhaps routed; the caller sends
        # it again, and the feed drops a second copy (its rule 2).
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(problem)


class Publisher:
    """Publish with confirms to the topic exchange ``exchange`` on whichever
    node of ``urls`` answers, moving to the next when a connection is lost
    or refused. A publish that fails (the broker away, a nack) is sent
    again, with backoff, for up to ``PUBLISH_DEADLINE`` seconds; then it
    raises TimeoutError, and the caller must not take it as sent (as
    ``broker.publish_confirmed``, for the jobs)."""

    def __init__(self, urls: Sequence[str], exchange: str):
        self.urls = list(urls)
        self.exchange = exchange
        self.index = random.randrange(len(self.urls))  # spread the processes over the nodes
        self._protocol: PublisherProtocol | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect now: a clear error if no node answers."""
        try:
            await self._connected()
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise ServiceUnavailable(f"cannot publish to RabbitMQ: {exc}") from exc

    async def publish(self, key: str, body: bytes) -> None:
        """Return once the broker has confirmed ``body`` (see the class)."""
        delay = 0.1
        async with asyncio.timeout(PUBLISH_DEADLINE):
            while True:
                try:
                    protocol = self._protocol
                    if protocol is None or not protocol.open:
                        protocol = await self._connected()
                    await protocol.publish(key, body)
                    return
                except (OSError, ConnectionError) as exc:
                    log.warning("publish to %s failed (%s); retrying", key, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

    async def _connected(self) -> PublisherProtocol:
        async with self._lock:  # one connection for every caller waiting here
            if self._protocol is not None:
                if self._protocol.open:
                    return self._protocol
                self.index = (self.index + 1) % len(self.urls)  # lost: its node may be gone, try the next
            problems = []
            for _ in self.urls:
                url = self.urls[self.index]
                try:
                    self._protocol = await connect(lambda u: PublisherProtocol(u, self.exchange), url)
                    return self._protocol
                except (OSError, TimeoutError, ConnectionError) as exc:
                    problems.append(f"{redact(url)}: {exc or type(exc).__name__}")
                    self.index = (self.index + 1) % len(self.urls)
            raise ConnectionError("; ".join(problems))

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.open:
            protocol.close()
            try:
                async with asyncio.timeout(1):
                    await protocol.lost
            except TimeoutError:
                protocol.abort()
