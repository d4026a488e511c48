"""engine.io, made lighter per socket: what an idle connection keeps.

engine.io (under python-socketio) gives every connection an aiohttp
websocket, an ``asyncio.Queue`` of packets to send and a socket object with
tasks of its own. Three of its choices cost more than our notifications
need, and it has no option for any, so ``sockets.Server`` swaps in these
(``tests/test_contract.py`` and ``tests/test_engine.py`` hold them to
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
- ``Socket``: engine.io's ``AsyncSocket`` with two waits made lighter. Its
  writer's ``poll`` waits through ``asyncio.wait_for``, which in Python 3.11
  wraps ``queue.get()`` in a task of its own, and its ping is a task per
  socket asleep for ``ping_interval``: ``asyncio.timeout`` and a
  ``loop.call_later`` timer do the same waits with no task: about 2 KB less
  an idle socket, 28.8-29.0 against 30.7-31.3 KB at 1,000 (two tasks of six,
  three coroutines of 24; ``benchmarks/README.md``).
  engine.io builds its sockets itself, with no hook: ``Sockets``, the dict
  it files them in, gives each one this class as it is filed.

And one that costs time, not memory: engine.io's per-socket writer wakes for
every packet and sends it through aiohttp's ``send_str``. While that
writer is idle, with nothing queued before it, a notification cannot
overtake anything: ``SocketQueue.send_now`` writes it to the connection at
once (``WebSocket.write_now``), and the writer stays asleep. It still
sends everything else (pings, the handlers' acks, what queues up behind a
slow client), so engine.io's own housekeeping is untouched.

And what a client can send engine.io. It decodes a client's frame before
anything can refuse it, and a frame it cannot decode (empty, not starting
with a packet type, a type past 6, bad base64) either escapes its websocket
handler (a traceback, and an HTTP 500 written into the open websocket) or
is logged with a traceback by engine.io itself, once per frame: 16 lines a
frame, 160,000 for 10,000 of them (tests/test_abuse.py). ``WebSocket.wait``
and ``checked_translate_request`` (the polling transport's POST bodies) try
each frame with engine.io's own decoder first; one that fails it goes to
the server's ``on_unreadable``, which sheds the socket (``sockets.py``):
:func:`cut` ends its connection at once, as for a slow client, whatever
else the client had sent is dropped unread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from engineio import async_socket, exceptions, packet, payload
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
# What aiohttp's receive() returns once the connection is over.
_LAST_MESSAGES = (web.WSMsgType.CLOSE, web.WSMsgType.CLOSING, web.WSMsgType.CLOSED, web.WSMsgType.ERROR)
# The packet types engine.io knows (OPEN to NOOP); it fails on the others.
PACKET_TYPES = range(len(packet.packet_names))
# What engine.io's decoder raises on a frame it cannot read (bad base64 is a ValueError).
UNDECODABLE = (ValueError, TypeError, IndexError, KeyError)

# Called with an engine.io socket id and what was wrong, for a client that
# sent what engine.io cannot read: ``sockets.Server.shed``.
OnUnreadable = Callable[[str, str], Awaitable[None]]


def readable(frame: str | bytes) -> bool:
    """Whether engine.io can take ``frame`` (one packet, as a websocket
    frame carries it): tried with engine.io's own decoder, which raises on
    some, and its type one engine.io knows (it fails on the others)."""
    try:
        return packet.Packet(encoded_packet=frame).packet_type in PACKET_TYPES
    except UNDECODABLE:
        return False


def readable_payload(body: bytes) -> bool:
    """Whether engine.io can take ``body``, a polling POST's packets."""
    try:
        packets = payload.Payload(encoded_payload=body.decode("utf-8")).packets
    except UNDECODABLE:  # UnicodeDecodeError, too many packets, a packet that does not decode
        return False
    return all(p.packet_type in PACKET_TYPES for p in packets)


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
    """engine.io's aiohttp websocket with permessage-deflate as ``compress``
    says, whose frames engine.io cannot read go to ``on_unreadable``."""

    compress = False
    on_unreadable: OnUnreadable | None = None

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
        if isinstance(queue, SocketQueue):
            queue.websocket = self
        try:
            await self.handler(self)
        finally:
            if isinstance(queue, SocketQueue):
                queue.websocket = None
            self._transport = None
        return self._sock

    async def wait(self) -> Any:
        """The next frame, as engine.io reads it; one engine.io cannot read
        cuts the connection instead, and is reported to ``on_unreadable``.
        Once the socket is closed (shed, say), what its client had sent
        already is not read on."""
        frame = await super().wait()
        socket = self.socket
        if socket is not None and socket.closed:
            return await self._end()
        if readable(frame):
            return frame
        self.abort()  # nothing more is read from it
        if self.on_unreadable is not None and socket is not None:
            await self.on_unreadable(socket.sid, "a frame engine.io cannot read")
        return await self._end()

    async def _end(self) -> None:
        """End engine.io's reading as when the client closes (None). A cut
        connection's frames that aiohttp had read ahead (64 KB and more:
        thousands in a flood) are dropped first. aiohttp's request objects
        hold one another in a cycle, so left there they would wait for a
        full garbage collection: with 100 sheds in 6 s, a pause of 100-150 ms
        of the whole instance every second or so (seen with
        ``gc.callbacks``). Not an exception either: engine.io would keep it,
        and its traceback the loop's frame, one more cycle. (During an
        upgrade from polling, engine.io takes only an OSError.)"""
        if self._transport is None or self._transport.is_closing():
            while (await self._sock.receive()).type not in _LAST_MESSAGES:
                pass
        if self.socket is not None and not self.socket.upgraded:
            raise OSError("the websocket upgrade was refused")
        return None

    def write_now(self, encoded: str) -> bool:
        """Write engine.io packet ``encoded`` as one frame now, if the
        connection can take it: uncompressed (a compressing one gets its
        frames from engine.io's writer), upgraded (engine.io sends on the
        websocket only once the client confirmed the upgrade), open, and not
        holding ``WRITE_BUFFER_LIMIT`` bytes already. False: it was not written."""
        transport = self._transport
        socket = self.socket
        if (
            self.compress
            or transport is None
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


def websocket_class(compress: bool, on_unreadable: OnUnreadable) -> type[WebSocket]:
    """A ``WebSocket`` subclass fixed to ``compress`` and ``on_unreadable``
    (engine.io makes one per connection)."""
    return type(
        "WebSocket", (WebSocket,), {"compress": compress, "on_unreadable": staticmethod(on_unreadable)}
    )


def cut(socket: Any) -> bool:
    """Cut engine.io socket ``socket``'s websocket connection at once, as
    for a client that stopped reading; False if it has none open (it polls)."""
    queue = getattr(socket, "queue", None)
    websocket = queue.websocket if isinstance(queue, SocketQueue) else None
    if websocket is None:
        return False
    websocket.abort()
    return True


class _Body:
    """A request body read already, as engine.io reads ``wsgi.input``."""

    def __init__(self, data: bytes):
        self.data = data

    async def read(self, length: int = -1) -> bytes:
        return self.data if length < 0 else self.data[:length]


def checked_translate_request(on_unreadable: OnUnreadable) -> Callable[[web.Request], Awaitable[dict]]:
    """engine.io's ``translate_request`` for aiohttp, which also reads a
    polling POST (a socket's packets; at most the app's ``client_max_size``)
    and tries it with engine.io's decoder: one it cannot read goes to
    ``on_unreadable``, and engine.io gets an empty body instead."""

    async def translate_request(request: web.Request) -> dict:
        environ = engineio_aiohttp.translate_request(request)
        sid = request.query.get("sid")
        if request.method == "POST" and sid is not None:
            body = await request.read()
            if not readable_payload(body):
                await on_unreadable(sid, "a polling request engine.io cannot read")
                body = b""
            environ["wsgi.input"] = _Body(body)
        return environ

    return translate_request


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


class Socket(async_socket.AsyncSocket):
    """engine.io's socket, waiting for its next packet and its next ping
    without a task of their own: Python 3.11's ``wait_for`` makes a task
    per wait, and engine.io a task per ping, held for the socket's life
    while it is idle. The rest is engine.io's.

    It adds no state (no ``__init__``, no slots), so that an ``AsyncSocket``
    engine.io has just built can be given this class (:class:`Sockets`).
    """

    last_ping: float | None  # engine.io's: when the last ping went out; None while the next waits

    async def poll(self) -> list[Any]:
        """engine.io's ``poll``: the first packet waited for up to
        ping_interval + ping_timeout (QueueEmpty past it, or when cancelled),
        then what else is queued, up to a None (the writer's stop). A None
        behind other packets is put back, last: they go out first, and the
        next poll after them returns [], which ends the writer."""
        queue = self.queue
        try:
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                first = await queue.get()
            queue.task_done()
        except (TimeoutError, asyncio.CancelledError):
            raise exceptions.QueueEmpty() from None
        if first is None:
            return []
        packets = [first]
        while True:
            try:
                pkt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    def schedule_ping(self) -> None:
        """engine.io's: a ping ``ping_interval`` from now, unless one is out
        unanswered (``last_ping`` None until it is sent)."""
        if self.last_ping:
            self.last_ping = None
            asyncio.get_running_loop().call_later(self.server.ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        """What engine.io's ping task does once awake, as ``send(PING)``
        does it. The ``check_ping_timeout`` that ``send`` starts with cannot
        fail here (``last_ping`` is now, and a closed socket sends no ping),
        and engine.io 4.15's ``send`` holds nothing back while upgrading: so
        the packet is queued at once (the queue is unbounded), with
        ``send``'s log line. ``tests/test_engine.py`` holds this to
        engine.io's own."""
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        self.queue.put_nowait(packet.Packet(packet.PING))
        self.server.logger.info("%s: Sending packet %s data %s", self.sid, "PING", None)


class Sockets(dict[str, Any]):
    """engine.io's ``sockets`` (socket id -> socket), filing each socket
    engine.io builds as a :class:`Socket`.

    Why here: engine.io's ``_handle_connect`` builds ``AsyncSocket`` itself,
    then files it (``self.sockets[sid] = s``) before it sends or waits on
    anything. Overriding ``_handle_connect`` (through python-socketio's
    ``_engineio_server_class``) could not reach the socket in between
    without copying its body, to be kept in step with every engine.io
    release; patching ``engineio.async_socket.AsyncSocket`` would change
    every engine.io server in the process (the tests' bare ones, the
    benchmarks'). Re-classing is legal because ``Socket`` adds no state, and
    only engine.io's own class is re-classed. If engine.io builds or files
    its sockets otherwise, they stay engine.io's, working but heavier, and
    tests/test_contract.py fails. Sockets connected after an
    ``eio.disconnect()`` of all (a graceful stop, app.py), which puts a
    plain dict in its place, stay engine.io's too.
    """

    __slots__ = ()

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is async_socket.AsyncSocket:
            socket.__class__ = Socket
        super().__setitem__(sid, socket)
