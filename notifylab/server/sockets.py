"""The Socket.IO side of a server instance.

A socket authenticates with its session (the browser's cookie, or
``auth={"session": token}`` from other clients) and may send ``last_id``,
the newest notification it has seen. Once connected it gets ``hello``, then
what it missed, then live notifications (``feed.py``). Every event a client
sends is validated and acknowledged with ``{ok: true, ...}`` or
``{ok: false, error}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any

import socketio

from ..errors import BadRequest, NotifylabError, Unauthorized
from ..ids import ZERO, is_id
from ..protocol import COOKIE
from .services import Services

log = logging.getLogger(__name__)

CONNECT_WAIT_SECONDS = 5
UPGRADE_WAIT_SECONDS = 5

# A client event's handler: (user, data) -> the fields of its ack.
EventHandler = Callable[[str, dict], Awaitable[dict]]


def cookie_token(environ: dict) -> str | None:
    """The session token from the request's cookie, if any."""
    try:
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return None
    morsel = cookie.get(COOKIE)
    return morsel.value if morsel else None


class SocketHandlers:
    """The handlers of one instance's Socket.IO server, one method each:
    ``connect`` and ``disconnect`` for a socket's lifetime, and one method a
    client event (``operation:start`` is :meth:`operation_start`)."""

    def __init__(self, sio: socketio.AsyncServer, services: Services):
        self.sio = sio
        self.services = services
        self._welcomes: set[asyncio.Task] = set()  # strong references until each finishes
        # Sockets whose connect was accepted here. python-socketio runs the
        # connect/disconnect handlers for a client *event* of that name too;
        # this set tells such a forgery from the real lifecycle.
        self._live: set[str] = set()

    def register(self) -> None:
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        events: dict[str, EventHandler] = {
            "operation:start": self.operation_start,
            "operation:cancel": self.operation_cancel,
            "inbox:read": self.inbox_read,
            "sync": self.sync,
        }
        for name, handler in events.items():
            self.sio.on(name, self._acked(name, handler))
        self.sio.on("*", self.unknown_event)

    # -- a socket's lifetime --------------------------------------------------

    async def connect(self, sid: str, environ: Any = None, auth: Any = None) -> dict | None:
        """Refuse a socket without a live session; otherwise record it and
        welcome it (in a task: see :meth:`_welcome`)."""
        if sid in self._live:  # a client event named "connect" on a live socket
            return _reserved("connect", sid)
        environ = environ if isinstance(environ, dict) else {}
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("session") or cookie_token(environ)
        session = await self.services.sessions.resolve(token)
        if session is None:
            log.info("refused socket %s: no valid session", sid)
            raise socketio.exceptions.ConnectionRefusedError("unauthorized: log in first")
        last_id = auth.get("last_id")
        if last_id is not None and not is_id(last_id):
            raise socketio.exceptions.ConnectionRefusedError("last_id is not a notification id")
        await self.sio.save_session(sid, {"user": session.user, "session": session.id})
        self._live.add(sid)
        transport = self.sio.transport(sid)
        await self.services.presence.add_socket(session.id, sid, self.services.instance, transport)
        self.services.metrics.sockets.inc()
        task = asyncio.create_task(self._welcome(sid, session.user, session.id, last_id, transport))
        self._welcomes.add(task)
        task.add_done_callback(self._welcomes.discard)
        return None

    async def _welcome(
        self, sid: str, user: str, session_id: str, last_id: str | None, transport: str
    ) -> None:
        """Send ``hello``, replay what the socket missed, then join it to its
        user's room (``Feed.attach``)."""
        services = self.services
        # The connect handler runs before the client is told it is connected;
        # anything emitted then would be dropped, so wait for that moment.
        try:
            async with asyncio.timeout(CONNECT_WAIT_SECONDS):
                while not self.sio.manager.is_connected(sid, "/"):  # noqa: ASYNC110 (python-socketio has no event for it)
                    await asyncio.sleep(0.005)

            async def hello(cursor: str) -> None:
                await self.sio.emit(
                    "hello",
                    {
                        "instance": services.instance,
                        "user": user,
                        "session": session_id,
                        "unread": await services.inbox.unread(user, upto=cursor),
                        "last_id": cursor,
                        "operations": [op.as_dict() for op in await services.operations.of_user(user)],
                    },
                    to=sid,
                    ignore_queue=True,
                )

            await services.feed.attach(sid, user, last_id, before_replay=hello)
            if transport == "polling":
                await self._record_upgrade(sid, session_id)
        except TimeoutError:
            log.info("socket %s left before it was connected", sid)
        except Exception:
            log.exception("welcoming socket %s failed; disconnecting it", sid)
            await self.sio.disconnect(sid)

    async def _record_upgrade(self, sid: str, session_id: str) -> None:
        # Browsers connect by long-polling and upgrade to a websocket a moment
        # later; engine.io has no hook for that, so look for it a little while.
        for _ in range(UPGRADE_WAIT_SECONDS * 10):
            if not self.sio.manager.is_connected(sid, "/"):
                return
            if self.sio.transport(sid) == "websocket":
                await self.services.presence.set_transport(session_id, sid, "websocket")
                return
            await asyncio.sleep(0.1)

    async def disconnect(self, sid: str, reason: Any = None) -> dict | None:
        """Forget a socket that went away. python-socketio marks it
        disconnected before calling this, so a socket still connected is
        sending an event named "disconnect": refused, and it stays in place
        (presence, feed, room) for revocation to find."""
        if self.sio.manager.is_connected(sid, "/"):
            return _reserved("disconnect", sid)
        if sid not in self._live:  # refused at connect, or gone already
            return None
        self._live.discard(sid)
        data = await self.sio.get_session(sid)
        self.services.metrics.sockets.dec()
        await self.services.feed.detach(sid, data["user"])
        await self.services.presence.remove_socket(data["session"], sid)
        return None

    # -- client events --------------------------------------------------------

    def _acked(self, name: str, handler: EventHandler) -> Callable[..., Awaitable[dict]]:
        """Wrap an event handler: check the session, validate the payload,
        turn errors into ``{ok: false, error}``."""

        async def acked(sid: str, data: Any = None, *extra: Any) -> dict:
            try:
                state = await self.sio.get_session(sid)
                if await self.services.sessions.get(state["session"]) is None:
                    raise Unauthorized("this session was signed out")
                if not isinstance(data, dict):
                    raise BadRequest("the event's data must be an object")
                return {"ok": True, **await handler(state["user"], data)}
            except NotifylabError as exc:
                log.info("event %s from %s refused: %s", name, sid, exc.message)
                return {"ok": False, **exc.as_dict()}
            except Exception:
                log.exception("event %s from %s failed", name, sid)
                return {"ok": False, "error": "internal error"}

        return acked

    async def unknown_event(self, event: str, sid: str, *args: Any) -> dict:
        """Every event without a handler (``connect_error`` included): refused."""
        log.info("socket %s sent unknown event %.40r", sid, event)
        return {"ok": False, "error": f"unknown event {str(event)[:40]!r}"}

    async def operation_start(self, user: str, data: dict) -> dict:
        op = await self.services.start_operation(user, data.get("kind"), data.get("params"))
        return {"operation": op.as_dict()}

    async def operation_cancel(self, user: str, data: dict) -> dict:
        op = await self.services.cancel_operation(user, data.get("id"), "a live session")
        return {"operation": op.as_dict()}

    async def inbox_read(self, user: str, data: dict) -> dict:
        mark, unread = await self.services.mark_read(user, data.get("up_to"))
        return {"up_to": mark, "unread": unread}

    async def sync(self, user: str, data: dict) -> dict:
        after = data.get("after") or ZERO
        if not is_id(after):
            raise BadRequest("after must be a notification id", "after")
        return {
            "notifications": await self.services.inbox.after(user, after),
            "unread": await self.services.inbox.unread(user),
        }


def _reserved(event: str, sid: str) -> dict:
    log.warning("socket %s sent the reserved event %r; refused", sid, event)
    return {"ok": False, "error": f"{event!r} is reserved for the Socket.IO lifecycle"}
