"""One server instance: its parts, what it can do for a user, and its lifetime.

``create_app(settings)`` builds the aiohttp application with the Socket.IO
server attached; ``api.py`` and ``sockets.py`` add the REST routes and the
Socket.IO events, both calling the actions of :class:`Services`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import socketio
from aiohttp import web

from .accounts import Accounts
from .config import Settings
from .feed import Feed
from .inbox import Inbox, parse_id
from .jobs import MemoryJobs, RabbitJobs, make_jobs
from .kinds import get_kind
from .metrics import Metrics
from .operations import TERMINAL, Operation, Operations, TransitionRefused
from .presence import HEARTBEAT_SECONDS, Presence
from .routing import make_manager, user_room
from .errors import BadRequest, Conflict, NotFound
from .sessions import Session, Sessions
from .store import connect_redis

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes; a bigger request body is refused with 413


@dataclass
class Services:
    """Everything one instance holds, and the actions REST and Socket.IO share."""

    settings: Settings
    sio: socketio.AsyncServer
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.time)
    # Set when the instance starts (they need the connections):
    redis: object = None
    accounts: Accounts = None  # type: ignore[assignment]
    sessions: Sessions = None  # type: ignore[assignment]
    presence: Presence = None  # type: ignore[assignment]
    inbox: Inbox = None  # type: ignore[assignment]
    operations: Operations = None  # type: ignore[assignment]
    jobs: RabbitJobs | MemoryJobs = None  # type: ignore[assignment]
    feed: Feed = None  # type: ignore[assignment]

    @property
    def instance(self) -> str:
        return self.settings.instance_id

    async def start_operation(self, user: str, kind: object, params: object) -> Operation:
        """Validate, record, notify and queue a new operation."""
        checked = get_kind(kind).validate(params)
        op, note = await self.operations.create(user, str(kind), checked)
        await self.sio.emit("notification", note, room=user_room(user))
        try:
            await self.jobs.publish({"operation": op.id})
        except Exception as exc:  # the broker stayed away: say so, do not leave it "queued"
            log.error("could not queue operation %s: %s", op.id, exc)
            op, note = await self.operations.transition(op.id, "operation.failed",
                                                        error="could not be queued: the broker is unreachable")
            await self.sio.emit("notification", note, room=user_room(user))
        return op

    async def user_operation(self, user: str, op_id: object) -> Operation:
        op = await self.operations.get(op_id)
        if op is None or op.user != user:  # another user's operation is "not found" too
            raise NotFound("no such operation")
        return op

    async def cancel_operation(self, user: str, op_id: object, device: str) -> Operation:
        op = await self.user_operation(user, op_id)
        if op.state in TERMINAL:
            raise Conflict(f"the operation already {op.state}")
        try:
            op, note = await self.operations.transition(op.id, "operation.cancelled",
                                                        message=f"Cancelled from {device}")
        except TransitionRefused as exc:
            raise Conflict(str(exc)) from None
        await self.sio.emit("notification", note, room=user_room(user))
        return op

    async def mark_read(self, user: str, up_to: object) -> tuple[str, int]:
        if parse_id(up_to) is None:
            raise BadRequest("up_to must be a notification id like '1732512345678-0'", "up_to")
        mark, unread = await self.inbox.mark_read(user, str(up_to))
        await self.sio.emit("inbox:read", {"up_to": mark, "unread": unread}, room=user_room(user))
        return mark, unread

    async def revoke(self, session: Session) -> int:
        """End a session: its record goes, and its sockets, on whichever
        instance, are told and disconnected. Returns how many sockets."""
        await self.sessions.delete(session)
        sockets = await self.presence.sockets(session.id)
        for socket in sockets:
            # Through the client manager: reaches the socket's own instance.
            await self.sio.emit("session:revoked", {"session": session.id}, to=socket["sid"])
            await self.sio.disconnect(socket["sid"])
        await self.presence.forget_session(session.id)
        return len(sockets)

    async def sessions_of(self, user: str) -> list[dict]:
        live = set(await self.presence.instances())
        return [{**s.public(), "sockets": await self.presence.sockets(s.id, live)}
                for s in await self.sessions.of_user(user)]


SERVICES = web.AppKey("services", Services)


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """Open connections at start-up (failing fast with the URL), close them at exit."""
    services = app[SERVICES]
    settings = services.settings
    manager = services.sio.manager
    redis = await connect_redis(settings)
    services.redis = redis
    services.accounts = Accounts(redis, settings)
    services.sessions = Sessions(redis, settings)
    services.presence = Presence(redis, settings)
    services.inbox = Inbox(redis, settings)
    services.operations = Operations(redis, settings, services.inbox)
    services.feed = Feed(services.sio, services.inbox, services.metrics)
    services.jobs = make_jobs(settings)
    background: list[asyncio.Task] = []
    worker = None
    try:
        await services.jobs.start()
        manager.feed, manager.metrics = services.feed, services.metrics
        manager.on_reconnect.append(services.feed.catch_up)
        await manager.start_publisher()
        await manager.start_listener()
        # Start reading the bus now: python-socketio would wait for the first socket.
        services.sio.manager_initialized = True
        manager.initialize()
        if settings.memory:
            from .worker import Worker

            worker = Worker(settings, redis, services.jobs, manager, worker_id="embedded")
            await worker.start()
            log.warning("embedded mode (memory://): ONE process holds the bus, the store and a worker; "
                        "it cannot be scaled to several instances and keeps nothing after exit")
        background.append(asyncio.create_task(_heartbeat(services)))
        yield
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        try:
            await services.presence.stop(services.instance)
        except Exception:  # Redis may be the thing that is down
            pass
        await services.jobs.close()
        listener = getattr(manager, "thread", None)
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await manager.close()
        await redis.aclose()


async def _disconnect_everyone(app: web.Application) -> None:
    """On a graceful stop, close every socket first: their clients reconnect
    (to another instance, or to this one when it is back), and the server
    does not wait on open websockets."""
    eio = app[SERVICES].sio.eio
    if eio.sockets:  # engine.io's disconnect() fails on an empty set
        await eio.disconnect()


async def _heartbeat(services: Services) -> None:
    info = {"port": services.settings.port, "routing": services.settings.routing, "started": services.started}
    while True:
        try:
            await services.presence.heartbeat(services.instance, info)
        except Exception as exc:  # keep beating once Redis is back
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_SECONDS)


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application of one server instance."""
    from . import api, sockets

    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=make_manager(settings),
                               max_http_buffer_size=MAX_BODY, logger=False, engineio_logger=False)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[api.errors_middleware])
    services = Services(settings, sio)
    app[SERVICES] = services
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_disconnect_everyone)
    sio.attach(app)
    api.add_routes(app)
    sockets.register(sio, services)
    return app
