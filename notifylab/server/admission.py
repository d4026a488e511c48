"""Admission: how many new sockets an instance takes in at once.

When an instance restarts, its users' clients all come back to the others
in the same second. Each new socket costs a websocket upgrade, engine.io's
handshake, and our connect (the session, presence, the feed's cursor, the
``hello`` reads: about 2.4 ms of CPU here, benchmarks/README.md). Taken all
at once, 10,000 of them flood the event loop: every connect waits behind all
the others, its Redis reads pass ``STORE_WAIT_SECONDS``, it is refused with
its work wasted, and its client comes back to do it again.

So an instance takes in at most ``max_connecting`` sockets at a time. A new
engine.io connection (a request to ``/socket.io/`` without a ``sid``) past
that gets a plain HTTP 503 with ``Retry-After`` before any upgrade, which
costs a fraction of a handshake; socket.io-client (the React client) and
our Python client retry a failed connect after a jittered delay, so the
refused come back spread out, when the instance has room. A socket's place
is given back once it is welcomed (``sockets.py``) or refused, or when its
connection closes, whichever comes first.

One address opening sockets as fast as it can is held back before it
gets here, by its own token bucket (``flood.py``: a 429).

Over polling, the handshake is a request of its own, so the place is given
back when that request ends, before the socket's connect: only websocket
connections (every client of ours) are held to the limit all the way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

ENGINEIO_PATH = "/socket.io/"
RETRY_AFTER_SECONDS = 1


class Place:
    """One new socket's place among those being taken in; :meth:`leave`
    gives it back (once, however many times it is called)."""

    __slots__ = ("_admission",)

    def __init__(self, admission: Admission):
        self._admission: Admission | None = admission

    def leave(self) -> None:
        if self._admission is not None:
            self._admission.taking -= 1
            self._admission = None


PLACE = web.RequestKey("notifylab.admission", Place)  # where a new connection's request keeps its place


class Admission:
    """The count of sockets being taken in, against ``limit`` (0: no limit)."""

    def __init__(self, limit: int, on_refused: Callable[[], object] | None = None):
        self.limit = limit
        self.taking = 0
        self.on_refused = on_refused  # called for each 503 (a metric)

    def enter(self) -> Place | None:
        """A place for one more new socket, or None if the instance is full."""
        if self.limit and self.taking >= self.limit:
            if self.on_refused is not None:
                self.on_refused()
            return None
        self.taking += 1
        return Place(self)

    def middleware(self) -> Any:
        """The aiohttp middleware that holds new engine.io connections to the limit."""

        @web.middleware
        async def admission_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            if not new_connection(request):
                return await handler(request)
            place = self.enter()
            if place is None:
                return web.json_response(
                    {"error": "service unavailable: too many connections at once, retry in a moment"},
                    status=503,
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            request[PLACE] = place
            try:
                return await handler(request)  # a websocket's handler returns when it closes
            finally:
                place.leave()

        return admission_middleware


def new_connection(request: web.Request) -> bool:
    """Whether ``request`` opens a new engine.io connection: a request to
    ``/socket.io/`` without a ``sid`` (a connected socket's requests carry one)."""
    return request.path.startswith(ENGINEIO_PATH) and "sid" not in request.query


def leave(environ: dict) -> None:
    """Give back the place of the socket whose engine.io ``environ`` this is
    (once it is welcomed or refused); nothing if it holds none."""
    request = environ.get("aiohttp.request")
    place = request.get(PLACE) if request is not None else None
    if place is not None:
        place.leave()
