"""The REST API (JSON under ``/api/``), health checks, metrics and the web client."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import PACKAGE_DIR, Settings
from ..errors import BadRequest, NotFound, NotifylabError, ServiceUnavailable, TooManyRequests, Unauthorized
from ..ids import parse_id
from ..kinds import KINDS
from ..protocol import COOKIE, Notification
from ..store.sessions import Session
from .metrics import CONTENT_TYPE_LATEST
from .services import Services, check_publication

log = logging.getLogger(__name__)

SERVICES = web.AppKey("services", Services)
SESSION = web.RequestKey("session", Session)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPENAPI = PACKAGE_DIR.parent / "docs" / "openapi.yaml"
RETRY_AFTER_UNAVAILABLE = 2  # seconds, sent with every 503

_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The types an HTML form or a no-cors fetch() may send cross-origin without
# a CORS preflight: what a forged request can use.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
_LIMIT = re.compile(r"[0-9]{1,4}")
_LAST_ID = (2**64 - 1, 2**64 - 1)  # the last stream id there can be


class Forbidden(NotifylabError):
    """A request a browser made on another site's behalf (CSRF)."""

    status = 403


class UnsupportedMediaType(NotifylabError):
    status = 415


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse forged requests (see :func:`guard`), then serve; every error
    leaves as ``{"error": ...}`` with its status and one log line, and the
    instance goes on serving everyone else."""
    try:
        guard(request)
        return await handler(request)
    except NotifylabError as exc:
        log.info("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        response = web.json_response(exc.as_dict(), status=exc.status)
        if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        elif isinstance(exc, ServiceUnavailable):
            response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        log.info("%s %s -> %d", request.method, request.path, exc.status)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # 405 must say
        return web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
    except ConnectionResetError:
        # The client went away mid-request (a websocket upgrade it gave up on,
        # in a storm): nothing to answer, and not an error of ours.
        log.info("%s %s: the client closed the connection", request.method, request.path)
        return web.Response(status=499)
    except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
        # ReadOnlyError: a server that a failover made a replica, still
        # reached through a plain redis:// URL (redis+sentinel:// moves on).
        log.warning("%s %s -> 503 Redis unreachable: %s", request.method, request.path, exc)
        return web.json_response(
            {"error": "the store is unreachable: retry in a moment"},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
        )
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


def guard(request: web.Request) -> None:
    """Refuse a state-changing ``/api/`` request that a browser sent on behalf
    of another site: ``Sec-Fetch-Site`` of ``cross-site`` or ``same-site``
    (another port of the same host is same-site, and SameSite=Lax cookies
    go along), or an ``Origin`` that is neither this instance's nor one of
    ``settings.origins`` (403); and a body that is not ``application/json``
    (415), which no form and no fetch() without a CORS preflight can send.

    ``Sec-Fetch-Site: same-origin`` is the browser's own word that the page
    is on the origin it requests (no script can set it), so it passes without
    comparing ``Origin`` with ``Host``: behind a proxy that terminates TLS the
    two differ in scheme. A request with neither header is not a browser's
    (or is a very old one's) and passes: without a victim's cookie a forged
    request gains nothing. A request without a body and without a form type
    passes too: that is how the Python client sends logout (aiohttp labels an
    empty body application/octet-stream) and the React client a DELETE.
    """
    if request.method not in _UNSAFE_METHODS or not request.path.startswith("/api/"):
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site in ("cross-site", "same-site"):
        raise Forbidden("requests from other sites are refused")
    if site != "same-origin":
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() not in _allowed_origins(request):
            raise Forbidden("requests from other origins are refused")
    mime = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if mime != "application/json" and (request.body_exists or mime in _FORM_TYPES):
        raise UnsupportedMediaType("send the body as application/json")


def _allowed_origins(request: web.Request) -> set[str]:
    own = f"{request.scheme}://{request.host}".lower()
    return {own, *(o.lower() for o in services(request).settings.origins)}


def client_address(request: web.Request) -> str:
    """The address failed logins are counted against (see :func:`address_of`)."""
    return peer_address(request, services(request).settings.proxies)


def peer_address(request: web.Request, proxies: tuple[str, ...]) -> str:
    """The address ``request`` is counted against, trusting ``proxies`` (see :func:`address_of`)."""
    return address_of(request.remote, request.headers.getall("X-Forwarded-For", []), proxies)


def address_of(peer: str | None, forwarded: list[str], proxies: tuple[str, ...]) -> str:
    """The peer's address, unless the peer is one of the trusted ``proxies``
    (``NOTIFYLAB_TRUSTED_PROXIES``): then the nearest address in
    ``X-Forwarded-For`` that is not a trusted proxy (read from the right:
    nginx appends the address it saw, and whatever the client wrote stands to
    the left of it). Anyone can send the header, so with no proxy trusted it
    is ignored. An IPv6 address counts as its /64, which one host can hold whole.
    """
    networks = [ipaddress.ip_network(net, strict=False) for net in proxies]

    def trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in networks)

    peer = peer or "unknown"
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if trusted(ip):
        for hop in reversed(",".join(forwarded).split(",")):
            try:
                ip = ipaddress.ip_address(hop.strip())
            except ValueError:
                break
            if not trusted(ip):
                break
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


async def body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    raw = await request.read()
    try:
        # ValueError covers bad UTF-8, bad JSON, NaN and Infinity, and ints
        # past Python's digit limit; RecursionError, nesting deeper than the
        # decoder's recursion limit (a 64 KiB body can nest 32,000 deep).
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
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
    user = await services(request).accounts.register(
        data.get("username"), data.get("password"), client_address(request)
    )
    return await _login_response(request, user, 201)


async def login(request: web.Request) -> web.Response:
    data = await body(request)
    user = await services(request).accounts.authenticate(
        data.get("username"), data.get("password"), client_address(request)
    )
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
    text = request.query.get("limit", "100")
    if not _LIMIT.fullmatch(text):
        raise BadRequest("limit must be a whole number", "limit")
    limit = int(text)
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000", "limit")
    after = request.query.get("after")
    parsed = parse_id(after)
    if after is not None and parsed is None:
        raise BadRequest("after must be a notification id like '1732512345678-0'", "after")
    # Nothing comes after the last id there can be, and Redis refuses a range starting past it.
    notes: list[Notification] = []
    if parsed != _LAST_ID:
        try:
            notes = await (
                inbox.after(session.user, after, limit=limit) if after else inbox.latest(session.user, limit)
            )
        except ResponseError as exc:  # Redis refused the id: the id is at fault, not the server
            log.debug("Redis refused after=%r: %s", after, exc)
            raise BadRequest("after is not an id the store accepts", "after") from None
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
    try:
        mark, unread = await services(request).mark_read(session.user, data.get("up_to"))
    except ResponseError as exc:  # Redis refused the id: the id is at fault, not the server
        log.debug("Redis refused up_to=%r: %s", data.get("up_to"), exc)
        raise BadRequest("up_to is not an id the store accepts", "up_to") from None
    return web.json_response({"ok": True, "up_to": mark, "unread": unread})


def _caller(header: str | None, keys: tuple[str, ...]) -> str | None:
    """Which of ``keys`` the ``Authorization: Bearer <key>`` header holds, as
    a short digest of it (the name its limits are kept under in Redis; the
    key itself is never stored), or None. Every key is compared, in constant
    time, as digests, so neither a key's bytes, its length nor its place in
    the list show in the timing."""
    scheme, _, token = (header or "").strip().partition(" ")
    # aiohttp decodes header bytes that are not UTF-8 as surrogate escapes.
    given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    found = None
    for key in keys:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        if hmac.compare_digest(given, digest) and scheme.lower() == "bearer":
            found = digest.hex()[:16]
    return found


IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as the header's draft standard advises


def _idempotency_key(request: web.Request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    # A quoted string is how the draft writes it ("8e03978e-..."); the quotes are not the key.
    key = value.strip().removeprefix('"').removesuffix('"')
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1-255 visible ASCII characters", "Idempotency-Key")
    return key


async def publish(request: web.Request) -> web.Response:
    """Notify users for another backend service (see docs/architecture.md,
    "The publish API"). Authenticated by one of ``settings.api_keys``
    alone: a session cookie counts for nothing here."""
    srv = services(request)
    if not srv.settings.api_keys:
        # Off, not forbidden: no key can work, so no 401 that invites one.
        raise NotFound("the publish API is off: set NOTIFYLAB_API_KEY on the instances to turn it on")
    caller = _caller(request.headers.get("Authorization"), srv.settings.api_keys)
    if caller is None:
        message = (
            "send the API key as 'Authorization: Bearer <key>'"
            if "Authorization" not in request.headers
            else "the API key is wrong"
        )
        log.warning(
            "%s %s -> 401 from %s: %s", request.method, request.path, client_address(request), message
        )
        return web.json_response(
            {"error": message}, status=401, headers={"WWW-Authenticate": 'Bearer realm="notifylab"'}
        )
    once = _idempotency_key(request)
    ids, replayed = await srv.publish(check_publication(await body(request)), caller, once)
    # The header Stripe's API and others send, so that a client can tell.
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return web.json_response({"ids": ids}, status=202, headers=headers)


async def openapi(request: web.Request) -> web.Response:
    """This API's OpenAPI description (docs/openapi.yaml), for tools and people."""
    try:
        text = await asyncio.to_thread(OPENAPI.read_text, encoding="utf-8")
    except OSError:
        raise NotFound("the OpenAPI description is not installed with this copy") from None
    return web.Response(text=text, content_type="application/yaml")


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
    r.add_post("/api/publish", publish)
    r.add_get("/api/openapi.yaml", openapi)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/", web_client)
    r.add_get("/{name}", web_client)
    assets = Path(settings.static_dir) / "assets"
    if assets.is_dir():
        r.add_static("/assets", assets)
