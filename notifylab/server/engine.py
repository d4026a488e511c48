"""engine.io, made lighter per socket: what an idle connection keeps.

engine.io (under python-socketio) gives every connection an aiohttp
websocket and an ``asyncio.Queue`` of packets to send. Two of its choices
cost more than our notifications need, and it has no option for either, so
``sockets.Server`` swaps in these (``tests/test_contract.py`` holds both to
engine.io's behaviour):

- ``WebSocket``: aiohttp compresses websocket frames by default
  (permessage-deflate), and keeps a zlib state per connection for it: about
  90 KB of an idle socket's 122 KB (``benchmarks/scale.py memory``, 10,000
  idle sockets). Our frames are a few hundred bytes of JSON, and compressing
  them did not measurably save CPU either (``benchmarks/cost.py``). Off by
  default; ``NOTIFYLAB_WS_COMPRESSION`` turns it back on.
- ``SocketQueue``: ``asyncio.Queue`` holds four deques (its items, getters,
  putters and an Event's waiters), about 3 KB per connection while empty.
  Ours is a list and a waiter made only while someone waits.

And one that costs time, not memory: engine.io's per-socket writer wakes for
every packet, through ``asyncio.wait_for`` (a new task per wake-up) and
aiohttp's ``send_str``. While that writer is idle, with nothing queued
before it, a notification cannot overtake anything: ``SocketQueue.send_now``
writes it to the connection at once (``WebSocket.write_now``), and the
writer stays asleep. It still sends everything else (pings, the handlers'
acks, what queues up behind a slow client), so engine.io's own
housekeeping is untouched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from engineio.async_drivers import aiohttp as engineio_aiohttp

log = logging.getLogger(__name__)

# Past this many bytes waiting in the connection's write buffer (a slow
# client), notifications go through the queue and engine.io's writer, which
# waits for the buffer to drain, instead of piling up in the buffer here.
WRITE_BUFFER_LIMIT = 64 * 1024
# Packets a websocket's queue holds at most. Past the kernel's buffers and
# WRITE_BUFFER_LIMIT, only a client that stopped reading (a frozen tab, a
# phone in a tunnel) lets them pile up; rather than hold its user's
# notifications without bound, its connection is cut: the client reconnects
# and catches up from the inbox stream (rule 3), like after any drop.
QUEUE_LIMIT = 512


def text_frame(payload: bytes) -> bytes:
    """A websocket text frame (RFC 6455 section 5.2) as a server sends it:
    final, unmasked, uncompressed."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


class WebSocket(engineio_aiohttp.WebSocket):
    """engine.io's aiohttp websocket with permessage-deflate as ``compress`` says."""

    compress = False

    async def __call__(self, environ: dict) -> Any:
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=self.compress
        )
        request = environ["aiohttp.request"]
        await self._sock.prepare(request)
        self.environ = environ
        # engine.io's handler is a method of the socket this websocket carries.
        self.socket = getattr(self.handler, "__self__", None)
        queue = getattr(self.socket, "queue", None)
        self._transport = request.transport
        if isinstance(queue, SocketQueue) and not self.compress:
            queue.websocket = self
        try:
            await self.handler(self)
        finally:
            if isinstance(queue, SocketQueue):
                queue.websocket = None
            self._transport = None
        return self._sock

    def write_now(self, encoded: str) -> bool:
        """Write engine.io packet ``encoded`` as one frame now, if the
        connection can take it: upgraded (engine.io sends on the websocket
        only once the client confirmed the upgrade), open, and not holding
        ``WRITE_BUFFER_LIMIT`` bytes already. False: it was not written."""
        transport = self._transport
        socket = self.socket
        if (
            transport is None
            or socket is None
            or not socket.upgraded
            or socket.closing
            or self._sock.closed
            or transport.is_closing()
            or transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT
        ):
            return False
        transport.write(text_frame(encoded.encode()))
        return True

    def abort(self) -> None:
        """Cut the connection at once (what is buffered for it is dropped);
        engine.io and the socket's handlers see it close as after any drop."""
        if self._transport is not None:
            self._transport.abort()


def websocket_class(compress: bool) -> type[WebSocket]:
    """A ``WebSocket`` subclass fixed to ``compress`` (engine.io makes one per connection)."""
    return type("WebSocket", (WebSocket,), {"compress": compress})


class SocketQueue:
    """The part of ``asyncio.Queue`` engine.io uses for a socket's outgoing
    packets: ``put``/``put_nowait``, ``get``/``get_nowait`` (raising
    ``asyncio.QueueEmpty``), ``task_done`` and ``join``. Unbounded, FIFO.

    A waiting ``get`` that is cancelled (engine.io's poll times out) takes
    nothing: an item leaves the list only when a getter runs again.
    """

    __slots__ = ("_finished", "_getters", "_items", "_unfinished", "websocket")

    def __init__(self) -> None:
        self.websocket: WebSocket | None = None  # while the socket's websocket is open
        self._items: list[Any] = []
        self._getters: list[asyncio.Future] | None = None  # only while someone waits
        self._unfinished = 0
        self._finished: asyncio.Event | None = None  # only once someone joins

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._unfinished += 1
        if self._finished is not None:
            self._finished.clear()
        self._wake_one()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def send_now(self, packet: Any) -> None:
        """``put_nowait(packet)``, or, while engine.io's writer waits with
        nothing queued (so nothing sent before can be overtaken), the packet
        written to the websocket at once. A websocket whose queue holds
        QUEUE_LIMIT packets already is cut instead (its client stopped
        reading)."""
        websocket = self.websocket
        if websocket is not None:
            if self._getters and not self._items and websocket.write_now(packet.encode()):
                return
            if len(self._items) >= QUEUE_LIMIT:
                log.warning("a client stopped reading: %d packets wait for it; cutting it off", QUEUE_LIMIT)
                websocket.abort()
                self.websocket = None  # once: what follows is dropped with the connection
                return
        self.put_nowait(packet)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Woken for an item, then cancelled before taking it: wake the next one.
                if waiter.done() and not waiter.cancelled() and self._items:
                    self._wake_one()
                raise
            finally:
                self._getters.remove(waiter)
                if not self._getters:
                    self._getters = None
        return self._items.pop(0)

    def _wake_one(self) -> None:
        for waiter in self._getters or ():
            if not waiter.done():
                waiter.set_result(None)
                return

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if not self._unfinished and self._finished is not None:
            self._finished.set()

    async def join(self) -> None:
        if self._unfinished:
            if self._finished is None:
                self._finished = asyncio.Event()
            await self._finished.wait()
