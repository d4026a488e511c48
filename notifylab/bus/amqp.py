"""Just enough AMQP 0-9-1 for the hot path: one connection, one channel.

Every notification crosses RabbitMQ twice: a worker or an instance publishes
it, and each instance that holds its user's sockets consumes it. aio-pika
and aiormq, under it, are built for every use of AMQP: each frame goes
through an ``asyncio.StreamReader``, a lock and a per-channel queue, a task
writes every frame out, and a consumer gets a message object and a task per
message. Measured with ``benchmarks/cost.py``, that machinery was 40% of an
instance's CPU on the bus path and a third of a worker's
(docs/architecture.md, "Under load").

This is the part both ends of the hot path share, as an
``asyncio.Protocol``: the bytes one read brought are cut into frames where
they arrive (``data_received``); the frames of the hot path (a delivery, a
publish, a confirm) are read and written by hand by the subclasses
(``consumer.py``, ``publisher.py``), as only a few numbers of them matter;
every other frame (the handshake, closing) is read and written by pamqp, the
codec aiormq itself uses. aio-pika keeps the control plane: declaring,
binding, and restoring both after a reconnect.

A frame (AMQP 0-9-1, section 2.3.5): type (1 byte), channel (2), payload
size (4), the payload, then 0xCE.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable
from typing import TypeVar, cast

from pamqp import commands, frame, header
from pamqp import heartbeat as amqp_heartbeat
from pamqp.common import FieldTable
from pamqp.exceptions import UnmarshalingException
from yarl import URL

from .broker import CONNECT_TIMEOUT

log = logging.getLogger(__name__)

HEARTBEAT = 60  # seconds, aiormq's default; the URL's ?heartbeat= overrides it
CHANNEL = 1  # the one channel a connection here opens
# Told the broker at login: a consumer whose queue is deleted hears of it (Basic.Cancel).
CAPABILITIES: FieldTable = {"consumer_cancel_notify": True}

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = 0xCE
FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size: 7 bytes before the payload
U32, U64 = struct.Struct(">I"), struct.Struct(">Q")


def method_id(class_id: int, method: int) -> int:
    """A method frame's first four bytes (class id, method id), as one number."""
    return class_id << 16 | method


class Missing(ConnectionError):
    """The broker closed the channel with 404: no such queue (or exchange)."""


class AmqpProtocol(asyncio.Protocol):
    """One AMQP connection with one channel open: the handshake, heartbeats,
    closing, and the cutting of what arrives into frames.

    ``ready`` is done once the subclass's set-up on the channel is confirmed
    (``_opened``; or failed: a refused login, no such queue), ``lost`` once
    the connection is over. A subclass reads the hot path's frames in
    ``_fast`` (method frames, by their class and method ids) and
    ``_content`` (content header and body frames), and its other replies
    in ``_reply``; ``_read`` runs after each read's frames are done.
    ``failure`` says why the connection ended (:class:`Missing` for a 404)."""

    PRODUCT = "notifylab"  # what the broker shows of the connection (rabbitmqctl list_connections)

    def __init__(self, url: URL):
        loop = asyncio.get_running_loop()
        self.url = url
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.frame_max = 131072  # until the broker says
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._heartbeat = 0.0  # negotiated, seconds; 0: none
        self._heard = loop.time()  # when the broker last sent anything
        self._beat: asyncio.TimerHandle | None = None
        self.failure: ConnectionError | None = None  # why it ended, once it has

    @property
    def open(self) -> bool:
        return self._transport is not None and self.ready.done() and not self.ready.exception()

    # -- the connection ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(header.ProtocolHeader().marshal())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._beat is not None:
            self._beat.cancel()
        problem = exc or ConnectionError("the broker closed the connection")
        if self.failure is None:
            self.failure = problem if isinstance(problem, ConnectionError) else ConnectionError(str(problem))
        if not self.ready.done():
            self.ready.set_exception(problem)
        self._ended(ConnectionError(f"the connection to RabbitMQ was lost ({problem})"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        """Ask the broker to close; the connection ends at its
        ``Connection.CloseOk``."""
        self._send(commands.Connection.Close(200, "closing", 0, 0), 0)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _send(self, value: frame.FrameTypes, channel: int = CHANNEL) -> None:
        if self._transport is not None:
            self._transport.write(frame.marshal(value, channel))

    def _fail(self, problem: str, kind: type[ConnectionError] = ConnectionError) -> None:
        log.error("%s: %s; connecting again", self.PRODUCT, problem)
        self.failure = kind(problem)
        if not self.ready.done():
            self.ready.set_exception(self.failure)
        self.abort()

    # -- what the subclasses fill in ----------------------------------------

    def _opened(self) -> None:
        """The channel is open: set it up (``Basic.Qos``, ``Confirm.Select``...)."""
        raise NotImplementedError

    def _reply(self, method: frame.FrameTypes) -> None:
        """A method frame the handshake does not know (the set-up's replies)."""

    def _fast(self, ids: int, buffer: bytearray, start: int) -> bool:
        """Read a hot-path method frame at ``start`` by hand; False: not one."""
        return False

    def _content(self, kind: int, buffer: bytearray, start: int, stop: int) -> None:
        """A content header or body frame, its payload ``buffer[start:stop]``."""

    def _read(self) -> None:
        """Every complete frame of one read has been handled."""

    def _ended(self, problem: ConnectionError) -> None:
        """The connection is over: what was waiting on it has failed."""

    # -- reading ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._heard = self._loop.time()
        buffer = self._buffer
        buffer += data
        pos, end = 0, len(buffer)
        while end - pos >= 8:
            kind, channel, size = FRAME_HEAD.unpack_from(buffer, pos)
            start, stop = pos + 7, pos + 7 + size
            if stop >= end:
                break  # the rest of this frame is still on its way
            if buffer[stop] != FRAME_END:
                self._fail(f"a frame from the broker does not end with {FRAME_END:#x}")
                return
            if kind == FRAME_METHOD:
                if not self._fast(U32.unpack_from(buffer, start)[0], buffer, start):
                    try:
                        method = frame.unmarshal(bytes(buffer[pos : stop + 1]))[2]
                    except UnmarshalingException as exc:
                        self._fail(f"a frame from the broker cannot be read ({exc})")
                        return
                    self._method(channel, method)
            elif kind == FRAME_HEADER or kind == FRAME_BODY:
                self._content(kind, buffer, start, stop)
            pos = stop + 1  # a heartbeat (type 8) needs nothing but _heard
        del buffer[:pos]
        self._read()

    # -- the handshake and closing ----------------------------------------

    def _method(self, channel: int, method: frame.FrameTypes) -> None:
        match method:
            case commands.Connection.Start():
                if "PLAIN" not in method.mechanisms.split():
                    self._fail(f"the broker offers no PLAIN login ({method.mechanisms})")
                    return
                user, password = self.url.user or "guest", self.url.password or "guest"
                properties: FieldTable = {
                    "product": self.PRODUCT,
                    "capabilities": {"consumer_cancel_notify": True},
                }
                self._send(commands.Connection.StartOk(properties, "PLAIN", f"\0{user}\0{password}"), 0)
            case commands.Connection.Tune():
                wanted = float(self.url.query.get("heartbeat", HEARTBEAT))
                self._heartbeat = min(wanted, method.heartbeat) if wanted and method.heartbeat else 0.0
                self.frame_max = method.frame_max or self.frame_max
                tuned = commands.Connection.TuneOk(method.channel_max, self.frame_max, int(self._heartbeat))
                self._send(tuned, 0)
                self._send(commands.Connection.Open(virtual_host=self.url.path[1:] or "/"), 0)
                if self._heartbeat:
                    self._beat = self._loop.call_later(self._heartbeat / 2, self._pulse)
            case commands.Connection.OpenOk():
                self._send(commands.Channel.Open())
            case commands.Channel.OpenOk():
                self._opened()
            case commands.Channel.Close() | commands.Connection.Close():
                reply = f"{method.reply_code} {method.reply_text}"
                if isinstance(method, commands.Channel.Close):
                    self._send(commands.Channel.CloseOk(), channel)
                else:
                    self._send(commands.Connection.CloseOk(), 0)
                kind = Missing if method.reply_code == 404 else ConnectionError
                self._fail(f"the broker closed the {'channel' if channel else 'connection'}: {reply}", kind)
            case commands.Connection.CloseOk():
                if self._transport is not None:
                    self._transport.close()
            case _:
                self._reply(method)

    def _pulse(self) -> None:
        """Every half heartbeat: send one, and cut a broker silent for two."""
        if self._loop.time() - self._heard > 2 * self._heartbeat:
            self._fail(f"no heartbeat from the broker in {2 * self._heartbeat:.0f} s")
            return
        if self._transport is not None:
            self._transport.write(amqp_heartbeat.Heartbeat.value)
            self._beat = self._loop.call_later(self._heartbeat / 2, self._pulse)


P = TypeVar("P", bound=AmqpProtocol)


async def connect(factory: Callable[[URL], P], url: str) -> P:
    """A connection to ``url`` made by ``factory``, once its set-up is
    confirmed; within CONNECT_TIMEOUT seconds."""
    parsed = URL(url)
    secure = parsed.scheme == "amqps"
    async with asyncio.timeout(CONNECT_TIMEOUT):
        _transport, protocol = await asyncio.get_running_loop().create_connection(
            lambda: factory(parsed),
            parsed.host or "localhost",
            parsed.port or (5671 if secure else 5672),
            ssl=ssl.create_default_context() if secure else None,
        )
        try:
            await protocol.ready
        except BaseException:
            protocol.abort()
            raise
    return protocol
