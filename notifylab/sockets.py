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
from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable

import socketio

from .app import Services
from .errors import BadRequest, NotifylabError, Unauthorized
from .inbox import parse_id

log = logging.getLogger(__name__)

CONNECT_WAIT_SECONDS = 5
UPGRADE_WAIT_SECONDS = 5


def _cookie_token(environ: dict) -> str | None:
    try:
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return None
    morsel = cookie.get("notifylab_session")
    return morsel.value if morsel else None


def register(sio: socketio.AsyncServer, services: Services) -> None:
    """Attach the connect/disconnect handlers and the client events."""
    welcomes: set[asyncio.Task] = set()  # strong references until each finishes

    @sio.event
    async def connect(sid: str, environ: dict, auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("session") or _cookie_token(environ)
        session = await services.sessions.resolve(token)
        if session is None:
            log.info("refused socket %s: no valid session", sid)
            raise socketio.exceptions.ConnectionRefusedError("unauthorized: log in first")
        last_id = auth.get("last_id")
        if last_id is not None and parse_id(last_id) is None:
            raise socketio.exceptions.ConnectionRefusedError("last_id is not a notification id")
        await sio.save_session(sid, {"user": session.user, "session": session.id})
        transport = sio.transport(sid)
        await services.presence.add_socket(session.id, sid, services.instance, transport)
        services.metrics.sockets.inc()
        task = asyncio.create_task(_welcome(sid, session.user, session.id, last_id, transport))
        welcomes.add(task)
        task.add_done_callback(welcomes.discard)

    async def _welcome(sid: str, user: str, session_id: str, last_id: str | None, transport: str) -> None:
        # The connect handler runs before the client is told it is connected;
        # anything emitted then would be dropped, so wait for that moment.
        try:
            async with asyncio.timeout(CONNECT_WAIT_SECONDS):
                while not sio.manager.is_connected(sid, "/"):
                    await asyncio.sleep(0.005)

            async def hello(cursor: str) -> None:
                await sio.emit("hello", {
                    "instance": services.instance, "user": user, "session": session_id,
                    "unread": await services.inbox.unread(user, upto=cursor), "last_id": cursor,
                    "operations": [op.public() for op in await services.operations.of_user(user)],
                }, to=sid, ignore_queue=True)

            await services.feed.attach(sid, user, last_id, before_replay=hello)
            if transport == "polling":
                await _record_upgrade(sid, session_id)
        except TimeoutError:
            log.info("socket %s left before it was connected", sid)
        except Exception:
            log.exception("welcoming socket %s failed; disconnecting it", sid)
            await sio.disconnect(sid)

    async def _record_upgrade(sid: str, session_id: str) -> None:
        # Browsers connect by long-polling and upgrade to a websocket a moment
        # later; engine.io has no hook for that, so look for it a little while.
        for _ in range(UPGRADE_WAIT_SECONDS * 10):
            if not sio.manager.is_connected(sid, "/"):
                return
            if sio.transport(sid) == "websocket":
                await services.presence.set_transport(session_id, sid, "websocket")
                return
            await asyncio.sleep(0.1)

    @sio.event
    async def disconnect(sid: str, reason: Any = None) -> None:
        data = await sio.get_session(sid)
        services.metrics.sockets.dec()
        await services.feed.detach(sid, data["user"])
        await services.presence.remove_socket(data["session"], sid)

    def acked(handler: Callable[[str, dict], Awaitable[dict]]) -> Callable:
        """Wrap an event handler: check the session, validate the payload,
        turn errors into ``{ok: false, error}``."""

        async def wrapper(sid: str, data: Any = None) -> dict:
            try:
                state = await sio.get_session(sid)
                if await services.sessions.get(state["session"]) is None:
                    raise Unauthorized("this session was signed out")
                if not isinstance(data, dict):
                    raise BadRequest("the event's data must be an object")
                return {"ok": True, **await handler(state["user"], data)}
            except NotifylabError as exc:
                log.info("event %s from %s refused: %s", handler.__name__, sid, exc.message)
                return {"ok": False, **exc.as_dict()}
            except Exception:
                log.exception("event %s from %s failed", handler.__name__, sid)
                return {"ok": False, "error": "internal error"}

        return wrapper

    async def operation_start(user: str, data: dict) -> dict:
        op = await services.start_operation(user, data.get("kind"), data.get("params"))
        return {"operation": op.public()}

    async def operation_cancel(user: str, data: dict) -> dict:
        op = await services.cancel_operation(user, data.get("id"), "a live session")
        return {"operation": op.public()}

    async def inbox_read(user: str, data: dict) -> dict:
        mark, unread = await services.mark_read(user, data.get("up_to"))
        return {"up_to": mark, "unread": unread}

    async def sync(user: str, data: dict) -> dict:
        after = data.get("after") or "0-0"
        if parse_id(after) is None:
            raise BadRequest("after must be a notification id", "after")
        return {"notifications": await services.inbox.after(user, after),
                "unread": await services.inbox.unread(user)}

    sio.on("operation:start", acked(operation_start))
    sio.on("operation:cancel", acked(operation_cancel))
    sio.on("inbox:read", acked(inbox_read))
    sio.on("sync", acked(sync))
