"""An async Python session of a notifylab user.

The tests, the notebooks, the widgets and the benchmark all use it::

    async with Client("http://127.0.0.1:8081") as me:
        await me.login("ann", "correct horse")
        await me.connect()
        op = await me.start("report", steps=3, step_seconds=0.2)
        final = await me.wait_operation(op["id"])

It keeps the newest notification id it has seen and sends it on every
(re)connect, so the server replays what it missed; it drops any notification
it already has (counting them in ``duplicates``), so what it shows is each
notification once, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import socketio

from ..ids import ZERO, id_after, now_ms
from ..protocol import COOKIE, TERMINAL_TYPES, Notification


class ClientError(Exception):
    """The server refused a request; ``status`` and ``body`` say why."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"{status}: {body.get('error', body)}")
        self.status, self.body = status, body


class Client:
    def __init__(self, url: str, *, reconnect: bool = True):
        self.url = url.rstrip("/")
        # unsafe=True: accept cookies from an IP address such as 127.0.0.1.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.sio = socketio.AsyncClient(
            reconnection=reconnect,
            reconnection_delay=0.2,
            reconnection_delay_max=1.0,
            randomization_factor=0.2,
        )
        self.token: str | None = None
        self.user: str | None = None
        self.notifications: list[Notification] = []  # each once, in the order received
        self.last_id: str | None = None
        self.duplicates = 0  # notifications received again and dropped
        self.out_of_order = 0  # notifications older than one already shown (should stay 0)
        self.unread: int | None = None
        # The server's unread count includes every notification up to this
        # id; only newer ones add to it (a replay must not count twice).
        self._unread_counted_to = ZERO
        self.hello: dict | None = None
        # The id after which this session must have seen every notification
        # of its user (its cursor at the first connect): what a verdict checks.
        self.baseline: str | None = None
        self.operations: dict[str, dict] = {}  # id -> latest known state
        self.revoked = False
        self.connect_errors: list[Any] = []
        self._changed = asyncio.Event()
        self._seen: set[str] = set()
        self._wire()

    # -- REST ---------------------------------------------------------------

    async def request(self, method: str, path: str, json: Any = None, url: str | None = None) -> dict:
        """Call the REST API; raise ClientError on a 4xx/5xx."""
        async with self.http.request(method, f"{url or self.url}{path}", json=json) as response:
            body = await response.json(content_type=None)
            if response.status >= 400:
                raise ClientError(response.status, body or {})
            cookie = response.cookies.get(COOKIE)
            if cookie is not None:
                self.token = cookie.value or None
            return body

    async def register(self, username: str, password: str) -> dict:
        body = await self.request("POST", "/api/register", {"username": username, "password": password})
        self.user = username
        return body

    async def login(self, username: str, password: str) -> dict:
        body = await self.request("POST", "/api/login", {"username": username, "password": password})
        self.user = username
        return body

    async def logout(self) -> dict:
        return await self.request("POST", "/api/logout")

    async def logout_all(self) -> dict:
        return await self.request("POST", "/api/logout-all")

    async def sessions(self) -> list[dict]:
        return (await self.request("GET", "/api/sessions"))["sessions"]

    async def revoke(self, session_id: str) -> dict:
        return await self.request("DELETE", f"/api/sessions/{session_id}")

    async def inbox(self, after: str | None = None, limit: int = 100) -> dict:
        query = f"?limit={limit}" + (f"&after={after}" if after else "")
        return await self.request("GET", "/api/inbox" + query)

    async def me(self) -> dict:
        return await self.request("GET", "/api/me")

    # -- Socket.IO ----------------------------------------------------------

    def _wire(self) -> None:
        @self.sio.on("hello")
        async def hello(data: dict) -> None:
            if self.baseline is None:  # the first hello: from here on, nothing may be missing
                self.baseline = self.last_id or data["last_id"]
            self.hello, self.unread = data, data["unread"]
            self._unread_counted_to = data["last_id"]
            for op in data["operations"]:
                self.operations[op["id"]] = op
            self._poke()

        @self.sio.on("notification")
        async def notification(note: Notification) -> None:
            self._receive(note)

        @self.sio.on("inbox:read")
        async def inbox_read(data: dict) -> None:
            self.unread = data["unread"]
            self._poke()

        @self.sio.on("session:revoked")
        async def revoked(data: dict) -> None:
            self.revoked = True
            self._poke()

        @self.sio.event
        async def connect_error(data: Any) -> None:
            self.connect_errors.append(data)
            self._poke()

        @self.sio.event
        async def disconnect(reason: Any = None) -> None:
            self._poke()

    def _receive(self, note: Notification) -> None:
        note = {**note, "received": now_ms()}
        if note["id"] in self._seen:
            self.duplicates += 1
            return
        if self.last_id is not None and not id_after(note["id"], self.last_id):
            self.out_of_order += 1
        self._seen.add(note["id"])
        self.notifications.append(note)
        self.last_id = (
            note["id"] if self.last_id is None or id_after(note["id"], self.last_id) else self.last_id
        )
        if self.unread is not None and id_after(note["id"], self._unread_counted_to):
            self.unread += 1
        op = self.operations.setdefault(note["operation"], {"id": note["operation"]})
        op.update({k: note[k] for k in ("kind", "state", "step", "steps", "progress", "message")})
        self._poke()

    def _auth(self) -> dict:
        # Called on every (re)connect, so the server always gets the newest id.
        return {"session": self.token, "last_id": self.last_id}

    async def connect(self, url: str | None = None, *, catch_up: bool = False) -> None:
        """Open the socket (to ``url``, default the login URL). With
        ``catch_up``, a first connect also replays the whole inbox."""
        if catch_up and self.last_id is None:
            self.last_id = ZERO
        await self.sio.connect(url or self.url, auth=self._auth, transports=["websocket"], wait_timeout=10)

    async def disconnect(self) -> None:
        await self.sio.disconnect()

    @property
    def connected(self) -> bool:
        return self.sio.connected

    @property
    def instance(self) -> str | None:
        return self.hello["instance"] if self.hello else None

    async def call(self, event: str, data: dict, timeout: float = 10) -> dict:
        """Send a client event and return its ack; ClientError if not ok."""
        ack = await self.sio.call(event, data, timeout=timeout)
        if not ack.get("ok"):
            raise ClientError(400, ack)
        return ack

    async def start(self, kind: str, **params: Any) -> dict:
        """Start an operation (over the socket when connected); returns it."""
        if self.connected:
            return (await self.call("operation:start", {"kind": kind, "params": params}))["operation"]
        return (await self.request("POST", "/api/operations", {"kind": kind, "params": params}))["operation"]

    async def cancel(self, op_id: str) -> dict:
        if self.connected:
            return (await self.call("operation:cancel", {"id": op_id}))["operation"]
        return (await self.request("POST", f"/api/operations/{op_id}/cancel"))["operation"]

    async def mark_read(self, up_to: str | None = None) -> int:
        """Mark read up to ``up_to`` (default: the newest seen); returns unread."""
        ack = await self.call("inbox:read", {"up_to": up_to or self.last_id})
        self.unread = ack["unread"]
        return ack["unread"]

    # -- waiting ------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        """Wait until ``predicate()`` is true, re-checking on every event."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_operation(self, op_id: str, timeout: float = 30) -> Notification:
        """Wait for the operation to end; returns its final notification."""
        await self.wait_for(
            lambda: any(n["operation"] == op_id and n["type"] in TERMINAL_TYPES for n in self.notifications),
            timeout,
        )
        return next(n for n in reversed(self.notifications) if n["operation"] == op_id)

    def of_operation(self, op_id: str) -> list[Notification]:
        return [n for n in self.notifications if n["operation"] == op_id]

    async def close(self) -> None:
        """Disconnect (also stopping any reconnection attempts) and close."""
        await self.sio.shutdown()
        await self.http.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
