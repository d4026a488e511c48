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
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from engineio.async_drivers import aiohttp as engineio_aiohttp


class WebSocket(engineio_aiohttp.WebSocket):
    """engine.io's aiohttp websocket with permessage-deflate as ``compress`` says."""

    compress = False

    async def __call__(self, environ: dict) -> Any:
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=self.compress
        )
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        await self.handler(self)
        return self._sock


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

    __slots__ = ("_finished", "_getters", "_items", "_unfinished")

    def __init__(self) -> None:
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
