"""The REST API (JSON under ``/api/``), health checks, metrics and the web client."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import Settings
from ..errors import BadRequest, NotFound, NotifylabError, Unauthorized
from ..ids import is_id
from ..kinds import KINDS
from ..protocol import COOKIE
from ..store.sessions import Session
from .metrics import CONTENT_TYPE_LATEST
from .services import Services

log = logging.getLogger(__name__)

SERVICES = web.AppKey("services", Services)
SESSION = web.RequestKey("session", Session)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": ...}`` with its status; the
    instance logs it and goes on serving everyone else."""
    try:
        return await handler(request)
    except NotifylabError as exc:
        log.info("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return web.json_response(exc.as_dict(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        log.info("%s %s -> %d", request.method, request.path, exc.status)
        return web.json_response({"error": exc.reason}, status=exc.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def device_of(request: web.Request) -> str:
    return request.headers.get("User-Agent", "unknown")


async def current_session(request: web.Request) -> Session:
    session = await services(request).sessions.resolve(request.cookies.get(COOKIE))
    if session is None:
        raise Unauthorized("log in first")
    request[SESSION] = session
    return session


def _with_cookie(response: web.Response, request: web.Request, token: str) -> web.Response:
    settings = services(request).settings
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        path="/",
        secure=settings.cookie_secure,
        max_age=settings.session_ttl,
    )
    return response


async def _login_response(request: web.Request, user: str, status: int) -> web.Response:
    token, session = await services(request).sessions.create(user, device_of(request))
    return _with_cookie(
        web.json_response({"user": {"username": user}, "session": session.as_dict()}, status=status),
        request,
        token,
    )


async def register(request: web.Request) -> web.Response:
    data = await body(request)
    user = await services(request).accounts.register(data.get("username"), data.get("password"))
    return await _login_response(request, user, 201)


async def login(request: web.Request) -> web.Response:
    data = await body(request)
    user = await services(request).accounts.authenticate(data.get("username"), data.get("password"))
    return await _login_response(request, user, 200)


async def logout(request: web.Request) -> web.Response:
    session = await current_session(request)
    await services(request).revoke(session)
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def logout_all(request: web.Request) -> web.Response:
    session = await current_session(request)
    srv = services(request)
    sessions = await srv.sessions.of_user(session.user)
    for other in sessions:
        await srv.revoke(other)
    response = web.json_response({"ok": True, "revoked": len(sessions)})
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    session = await current_session(request)
    return web.json_response(
        {
            "user": {"username": session.user},
            "session": session.as_dict(),
            "instance": services(request).instance,
        }
    )


async def list_sessions(request: web.Request) -> web.Response:
    session = await current_session(request)
    listed = await services(request).sessions_of(session.user)
    for item in listed:
        item["current"] = item["id"] == session.id
    return web.json_response({"sessions": listed})


async def delete_session(request: web.Request) -> web.Response:
    session = await current_session(request)
    srv = services(request)
    target = await srv.sessions.get(request.match_info["id"])
    if target is None or target.user != session.user:
        raise NotFound("no such session")
    sockets = await srv.revoke(target)
    return web.json_response({"ok": True, "sockets": sockets})


async def kinds(request: web.Request) -> web.Response:
    return web.json_response({"kinds": [k.as_dict() for k in KINDS.values()]})


async def list_operations(request: web.Request) -> web.Response:
    session = await current_session(request)
    ops = await services(request).operations.of_user(session.user)
    return web.json_response({"operations": [op.as_dict() for op in ops]})


async def start_operation(request: web.Request) -> web.Response:
    session = await current_session(request)
    data = await body(request)
    op = await services(request).start_operation(session.user, data.get("kind"), data.get("params"))
    return web.json_response({"operation": op.as_dict()}, status=202)


async def get_operation(request: web.Request) -> web.Response:
    session = await current_session(request)
    op = await services(request).user_operation(session.user, request.match_info["id"])
    return web.json_response({"operation": op.as_dict()})


async def cancel_operation(request: web.Request) -> web.Response:
    session = await current_session(request)
    op = await services(request).cancel_operation(session.user, request.match_info["id"], device_of(request))
    return web.json_response({"operation": op.as_dict()}, status=202)


async def get_inbox(request: web.Request) -> web.Response:
    session = await current_session(request)
    inbox = services(request).inbox
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a whole number", "limit") from None
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000", "limit")
    after = request.query.get("after")
    if after is not None and not is_id(after):
        raise BadRequest("after must be a notification id like '1732512345678-0'", "after")
    notes = await (
        inbox.after(session.user, after, limit=limit) if after else inbox.latest(session.user, limit)
    )
    return web.json_response(
        {
            "notifications": notes,
            "unread": await inbox.unread(session.user),
            "last_id": await inbox.last_id(session.user),
        }
    )


async def mark_read(request: web.Request) -> web.Response:
    session = await current_session(request)
    data = await body(request)
    mark, unread = await services(request).mark_read(session.user, data.get("up_to"))
    return web.json_response({"ok": True, "up_to": mark, "unread": unread})


async def healthz(request: web.Request) -> web.Response:
    srv = services(request)
    return web.json_response({"ok": True, "instance": srv.instance, "prefix": srv.settings.prefix})


async def readyz(request: web.Request) -> web.Response:
    """200 only when this instance can reach Redis and RabbitMQ."""
    srv = services(request)
    checks: dict[str, str] = {}
    try:
        await srv.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {exc}"
    checks["broker"] = "ok" if srv.jobs.connected else "unreachable"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"ok": ok, "instance": srv.instance, "checks": checks}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    srv = services(request)
    response = web.Response(body=srv.metrics.render())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def _client_file(dist: Path, name: str) -> Path | None:
    """The file ``name`` inside ``dist``, or None (never a path outside it)."""
    path = (dist / name).resolve()
    return path if path.parent == dist.resolve() and path.is_file() else None


async def web_client(request: web.Request) -> web.StreamResponse:
    """The built React client: index.html at ``/``, its files beside it."""
    dist = Path(services(request).settings.static_dir)
    name = request.match_info.get("name") or "index.html"
    # resolve() and is_file() touch the disk: not on the event loop.
    path = await asyncio.to_thread(_client_file, dist, name)
    if path is None:
        if name == "index.html":
            return web.Response(
                text="<h1>notifylab</h1><p>The web client is not built: run <code>make build</code>.</p>",
                content_type="text/html",
            )
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def add_routes(app: web.Application, settings: Settings) -> None:
    """Every route of an instance: REST, health, metrics and the web client."""
    r = app.router
    r.add_post("/api/register", register)
    r.add_post("/api/login", login)
    r.add_post("/api/logout", logout)
    r.add_post("/api/logout-all", logout_all)
    r.add_get("/api/me", me)
    r.add_get("/api/sessions", list_sessions)
    r.add_delete("/api/sessions/{id}", delete_session)
    r.add_get("/api/kinds", kinds)
    r.add_get("/api/operations", list_operations)
    r.add_post("/api/operations", start_operation)
    r.add_get("/api/operations/{id}", get_operation)
    r.add_post("/api/operations/{id}/cancel", cancel_operation)
    r.add_get("/api/inbox", get_inbox)
    r.add_post("/api/inbox/read", mark_read)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/", web_client)
    r.add_get("/{name}", web_client)
    assets = Path(settings.static_dir) / "assets"
    if assets.is_dir():
        r.add_static("/assets", assets)
