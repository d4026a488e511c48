"""Assembling one server instance and running its lifetime.

``create_app(settings)`` builds the aiohttp application with the Socket.IO
server attached, the REST routes (``http.py``) and the Socket.IO handlers
(``sockets.py``). At start-up it connects (failing fast with the URL), wires
the client manager to the feed, and starts reading the bus before the first
socket arrives; at exit it closes every socket first, then its connections.
In the background it beats (``presence.py``) and re-checks the sessions of
its open sockets every ``session_check_seconds``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .. import codec
from ..bus.managers import make_manager
from ..config import Settings
from ..store.presence import HEARTBEAT_SECONDS
from . import http, sockets
from .admission import Admission
from .flood import ConnectLimit
from .services import Services

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes; a bigger request body is refused with 413

HANDLERS = web.AppKey("handlers", sockets.SocketHandlers)


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    services = app[http.SERVICES]
    settings = services.settings
    manager = services.sio.manager
    await services.start()
    background: list[asyncio.Task] = []
    try:
        manager.deliver = services.feed.receive
        manager.on_message = services.metrics.bus_received.inc
        manager.on_malformed = services.metrics.bus_malformed.inc
        manager.on_reconnect.append(services.feed.catch_up)
        await manager.start_publisher()
        await manager.start_listener()
        # Start reading the bus now: python-socketio would wait for the first socket.
        services.sio.manager_initialized = True
        manager.initialize()
        if settings.memory:
            from ..worker import Worker  # the embedded mode runs its worker in-process

            worker = Worker(settings, services.redis, services.jobs, manager, worker_id="embedded")
            await worker.start()
            log.warning(
                "embedded mode (memory://): ONE process holds the bus, the store and a worker; "
                "it cannot be scaled to several instances and keeps nothing after exit"
            )
        _freeze_what_lives_forever()
        background.append(asyncio.create_task(_heartbeat(services)))
        background.append(asyncio.create_task(_check_sessions(app[HANDLERS], settings.session_check_seconds)))
        yield
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        listener = getattr(manager, "thread", None)
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await services.close()
        await manager.close()


def _freeze_what_lives_forever() -> None:
    """Take what is alive once the instance has started (its modules, the
    app, its connections: about 70,000 objects) out of the garbage
    collector's sight. Python's full collection walks every object it
    tracks, and a busy instance (sockets coming and going in thousands, a
    flood of bad packets) runs one every second or so: 40-60 ms during which
    nobody's notification moves; frozen, the same collection takes a few
    milliseconds (``gc.callbacks``, benchmarks/abuse.py). What start-up left
    as garbage is collected first, so none of it is kept for ever."""
    gc.collect()
    gc.freeze()


async def _disconnect_everyone(app: web.Application) -> None:
    """On a graceful stop, close every socket first: their clients reconnect
    (to another instance, or to this one when it is back), and the server
    does not wait on open websockets."""
    eio = app[http.SERVICES].sio.eio
    if eio.sockets:  # engine.io's disconnect() fails on an empty set
        await eio.disconnect()


async def _heartbeat(services: Services) -> None:
    info = {"port": services.settings.port, "routing": services.settings.routing, "started": services.started}
    while True:
        try:
            await services.presence.heartbeat(info)
        except Exception as exc:  # keep beating once Redis is back
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def _check_sessions(handlers: sockets.SocketHandlers, every: float) -> None:
    """No socket outlives its session: one that expires (or is deleted while
    its socket was not found) ends its sockets here within ``every`` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            await handlers.check_sessions()
        except sockets.OUTAGE as exc:  # keep checking once Redis is back
            log.warning("re-checking the sockets' sessions failed: %s", exc)
        except Exception:
            log.exception("re-checking the sockets' sessions failed")


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application of one server instance."""
    sio = sockets.Server(
        async_mode="aiohttp",
        client_manager=make_manager(settings),
        max_http_buffer_size=MAX_BODY,
        json=codec.SocketIOJSON,
        logger=False,
        engineio_logger=False,
        ws_compression=settings.ws_compression,
        proxies=settings.proxies,
    )
    services = Services(settings, sio)
    admission = Admission(settings.max_connecting, on_refused=services.metrics.connects_refused.inc)
    # One address's flood is refused (429) before it can take admission's places.
    limit = ConnectLimit(
        settings.address_connect_rate,
        settings.address_connect_burst,
        settings.proxies,
        on_refused=services.metrics.connects_flooded.inc,
    )
    sio.on_shed = services.metrics.sockets_shed.inc
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[http.errors_middleware, limit.middleware(), admission.middleware()],
    )
    app[http.SERVICES] = services
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_disconnect_everyone)
    sio.attach(app)
    http.add_routes(app, settings)
    handlers = app[HANDLERS] = sockets.SocketHandlers(sio, services)
    handlers.register()
    return app
