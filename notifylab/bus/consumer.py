"""Consuming an instance's queue: just enough AMQP 0-9-1, on a connection of its own.

Every notification an instance delivers comes off its queue, so what a
delivered message costs here is paid thousands of times a second. aiormq
(under aio-pika) reads each frame through an ``asyncio.StreamReader``, a
lock and a per-channel ``asyncio.Queue``, then builds a message object and
starts a task for each message: measured with ``benchmarks/cost.py``, that
was 40% of an instance's CPU on the bus path (docs/architecture.md, "Under
load"). Here the socket's bytes are read where they arrive
(``data_received``), and every message that one read completed goes to
``on_batch`` in one call, in queue order: the batch the feed takes.

A delivered message is three frames on the wire (RFC: AMQP 0-9-1, section
4.2.6): a method frame ``Basic.Deliver`` (which holds the delivery tag), a
content header (which holds the body's size), then the body, in one frame or
more. Those three are read by hand below, because only two numbers of them
are needed; every other frame (the handshake, ``Basic.Qos``,
``Basic.Consume``, acks, closing) is read and written by pamqp, the codec
aiormq itself uses.

aio-pika keeps the control plane: it declares the queue, binds and unbinds
users, and restores all of that after a reconnect (``managers.py``). This
module only consumes, and reconnects by itself (:class:`Consumer`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable
from typing import cast

from pamqp import commands, frame, header
from pamqp import heartbeat as amqp_heartbeat
from pamqp.common import FieldTable
from pamqp.exceptions import UnmarshalingException
from yarl import URL

from ..config import redact
from ..errors import ServiceUnavailable
from .broker import CONNECT_TIMEOUT, RECONNECT_SECONDS

log = logging.getLogger(__name__)

ACK_EVERY = 256  # messages acknowledged at once at most (below the prefetch, or the broker would wait)
ACK_DELAY = 0.02  # seconds an ack waits for more messages to cover
HEARTBEAT = 60  # seconds, aiormq's default; the URL's ?heartbeat= overrides it
CHANNEL = 1  # the one channel a consumer opens
CONSUMER_TAG = "notifylab"
# What the broker shows of this connection (rabbitmqctl list_connections client_properties).
CLIENT_PROPERTIES: FieldTable = {
    "product": "notifylab consumer",
    "capabilities": {"consumer_cancel_notify": True},
}

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size: 7 bytes before the payload
DELIVER = 60 << 16 | 60  # Basic.Deliver's class and method ids, as one number
U32, U64 = struct.Struct(">I"), struct.Struct(">Q")

OnBatch = Callable[[list[bytes]], None]


class ConsumerProtocol(asyncio.Protocol):
    """One connection consuming one queue: the handshake, then deliveries.

    ``ready`` is done once the broker confirmed the consumer (or failed:
    refused login, no such queue); ``lost`` once the connection is over.
    Acks go many at a time: one ``Basic.Ack`` with "multiple" covers every
    message up to its tag, sent once ``ACK_EVERY`` are waiting or
    ``ACK_DELAY`` after the last batch. At a low rate each message arrives
    alone, so an ack per batch would still be a frame per message (a tenth
    of the bus path's CPU, measured). Delaying an ack delays nothing a
    socket sees; a message handled but not acked when the connection drops
    comes again, and the feed drops it as a duplicate (its rule 2)."""

    def __init__(self, url: URL, queue: str, prefetch: int, on_batch: OnBatch):
        loop = asyncio.get_running_loop()
        self.url = url
        self.queue = queue
        self.prefetch = prefetch
        self.on_batch = on_batch
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # The message being read: its tag, the body's size, the parts so far.
        self._tag = 0
        self._size = 0
        self._parts: list[bytes] = []
        self._received = 0  # bytes of the body so far
        self._heartbeat = 0.0  # negotiated, seconds; 0: none
        self._heard = loop.time()  # when the broker last sent anything
        self._beat: asyncio.TimerHandle | None = None
        self._last_tag = 0  # the newest tag received
        self._unacked = 0  # handled, not yet acked
        self._ack_timer: asyncio.TimerHandle | None = None

    # -- the connection ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(header.ProtocolHeader().marshal())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for timer in (self._beat, self._ack_timer):
            if timer is not None:
                timer.cancel()
        problem = exc or ConnectionError("the broker closed the connection")
        if not self.ready.done():
            self.ready.set_exception(problem)
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        """Ack what is handled, then ask the broker to close (it answers
        ``Connection.CloseOk``, and then the connection ends); what is not
        acked goes back to the queue."""
        self._ack()
        self._send(commands.Connection.Close(200, "closing", 0, 0), 0)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _send(self, value: frame.FrameTypes, channel: int = CHANNEL) -> None:
        if self._transport is not None:
            self._transport.write(frame.marshal(value, channel))

    # -- reading ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Read every complete frame; hand the messages they complete to
        ``on_batch`` at once, in one list."""
        self._heard = self._loop.time()
        buffer = self._buffer
        buffer += data
        batch: list[bytes] = []
        pos, end = 0, len(buffer)
        while end - pos >= 8:
            kind, channel, size = FRAME_HEAD.unpack_from(buffer, pos)
            start, stop = pos + 7, pos + 7 + size
            if stop >= end:
                break  # the rest of this frame is still on its way
            if buffer[stop] != FRAME_END:
                self._fail(f"a frame from the broker does not end with {FRAME_END:#x}")
                return
            if kind == FRAME_METHOD and U32.unpack_from(buffer, start)[0] == DELIVER:
                # Basic.Deliver: class, method, consumer tag (a short string), then the delivery tag.
                self._tag = U64.unpack_from(buffer, start + 5 + buffer[start + 4])[0]
            elif kind == FRAME_HEADER:
                self._size = U64.unpack_from(buffer, start + 4)[0]
                self._parts, self._received = [], 0
                if not self._size:
                    self._delivered(batch, b"")
            elif kind == FRAME_BODY:
                part = bytes(buffer[start:stop])
                self._received += len(part)
                if self._received >= self._size and not self._parts:
                    self._delivered(batch, part)
                else:
                    self._parts.append(part)
                    if self._received >= self._size:
                        self._delivered(batch, b"".join(self._parts))
            elif kind == FRAME_METHOD:
                try:
                    method = frame.unmarshal(bytes(buffer[pos : stop + 1]))[2]
                except UnmarshalingException as exc:
                    self._fail(f"a frame from the broker cannot be read ({exc})")
                    return
                self._method(channel, method)
            pos = stop + 1  # a heartbeat (type 8) needs nothing but _heard
        del buffer[:pos]
        if batch:
            try:
                self.on_batch(batch)
            except Exception:
                # Acked all the same: sent back, the same batch would fail
                # again. Nothing is lost for good: the feed reads a gap from
                # the stream when the user's next notification names it.
                log.exception("handling %d messages from %s failed", len(batch), self.queue)
            self._handled()

    def _delivered(self, batch: list[bytes], body: bytes) -> None:
        batch.append(body)
        self._last_tag = self._tag
        self._unacked += 1
        self._parts = []

    def _fail(self, problem: str) -> None:
        log.error("consumer of %s: %s; reconnecting", self.queue, problem)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(problem))
        self.abort()

    # -- the handshake and the broker's other methods -----------------------

    def _method(self, channel: int, method: frame.FrameTypes) -> None:
        match method:
            case commands.Connection.Start():
                if "PLAIN" not in method.mechanisms.split():
                    self._fail(f"the broker offers no PLAIN login ({method.mechanisms})")
                    return
                user, password = self.url.user or "guest", self.url.password or "guest"
                self._send(
                    commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", f"\0{user}\0{password}"), 0
                )
            case commands.Connection.Tune():
                wanted = float(self.url.query.get("heartbeat", HEARTBEAT))
                self._heartbeat = min(wanted, method.heartbeat) if wanted and method.heartbeat else 0.0
                self._send(
                    commands.Connection.TuneOk(method.channel_max, method.frame_max, int(self._heartbeat)), 0
                )
                self._send(commands.Connection.Open(virtual_host=self.url.path[1:] or "/"), 0)
                if self._heartbeat:
                    self._beat = self._loop.call_later(self._heartbeat / 2, self._pulse)
            case commands.Connection.OpenOk():
                self._send(commands.Channel.Open())
            case commands.Channel.OpenOk():
                self._send(commands.Basic.Qos(prefetch_count=self.prefetch))
            case commands.Basic.QosOk():
                self._send(commands.Basic.Consume(queue=self.queue, consumer_tag=CONSUMER_TAG))
            case commands.Basic.ConsumeOk():
                if not self.ready.done():
                    self.ready.set_result(None)
            case commands.Basic.Cancel():
                # The broker ended our consumer: the queue was deleted (its
                # node died, or it expired). Start over on a new connection.
                self._fail("the broker cancelled the consumer (the queue is gone)")
            case commands.Channel.Close() | commands.Connection.Close():
                reply = f"{method.reply_code} {method.reply_text}"
                if isinstance(method, commands.Channel.Close):
                    self._send(commands.Channel.CloseOk(), channel)
                else:
                    self._send(commands.Connection.CloseOk(), 0)
                self._fail(f"the broker closed the {'channel' if channel else 'connection'}: {reply}")
            case commands.Connection.CloseOk():
                if self._transport is not None:
                    self._transport.close()

    def _pulse(self) -> None:
        """Every half heartbeat: send one, and cut a broker silent for two."""
        if self._loop.time() - self._heard > 2 * self._heartbeat:
            self._fail(f"no heartbeat from the broker in {2 * self._heartbeat:.0f} s")
            return
        if self._transport is not None:
            self._transport.write(amqp_heartbeat.Heartbeat.value)
            self._beat = self._loop.call_later(self._heartbeat / 2, self._pulse)

    # -- acks -------------------------------------------------------------

    def _handled(self) -> None:
        if self._unacked >= ACK_EVERY:
            self._ack()
        elif self._ack_timer is None and self._unacked:
            self._ack_timer = self._loop.call_later(ACK_DELAY, self._ack)

    def _ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._unacked and self._last_tag:
            self._send(commands.Basic.Ack(delivery_tag=self._last_tag, multiple=True))
            self._unacked = 0


class Consumer:
    """Consume ``queue`` for as long as this runs, through whichever node
    ``url()`` names at each attempt (the node aio-pika's listener is on),
    reconnecting every ``RECONNECT_SECONDS`` after the connection drops.

    A drop loses nothing: unacked messages go back to the queue and come
    again. If the queue itself went with a node, aio-pika declares it again
    with its bindings and the feed catches up from the streams
    (``managers.py``); until the queue is back, an attempt to consume it is
    refused and tried again."""

    def __init__(self, url: Callable[[], str], queue: str, prefetch: int, on_batch: OnBatch):
        self.url = url
        self.queue = queue
        self.prefetch = prefetch
        self.on_batch = on_batch
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
        url = URL(self.url())
        loop = asyncio.get_running_loop()
        secure = url.scheme == "amqps"
        port = url.port or (5671 if secure else 5672)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _transport, protocol = await loop.create_connection(
                lambda: ConsumerProtocol(url, self.queue, self.prefetch, self.on_batch),
                url.host or "localhost",
                port,
                ssl=ssl.create_default_context() if secure else None,
            )
            try:
                await protocol.ready
            except BaseException:
                protocol.abort()
                raise
        return protocol

    async def _keep(self) -> None:
        while not self._closing:
            assert self._protocol is not None
            await asyncio.shield(self._protocol.lost)  # cancelling this task leaves it to close()
            if self._closing:
                return
            log.warning("the consumer of %s lost its connection; reconnecting", self.queue)
            while not self._closing:
                await asyncio.sleep(RECONNECT_SECONDS)
                try:
                    self._protocol = await self._connect()
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
