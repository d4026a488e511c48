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

Given several instances, ``Client(["http://127.0.0.1:8081", "http://127.0.0.1:8082"])``
fails over: when its socket drops without being asked to (its instance died
or stopped), it tries the instances in turn, the others first, after a
jittered, growing delay (see :func:`backoff`), until one takes it; it keeps
its ``last_id``, so it misses nothing. REST calls go to the instance its
socket is on. It stops trying when its session ends (``session:revoked``, or
a reconnect refused as unauthorized). A reconnect an instance refuses before
the upgrade, with 503 (it takes in too many sockets at once) or 429 (too
many new sockets from this address), fails like any other attempt and is
retried after the next delay, the same way.

``unread`` counts inbox items only (``protocol.is_inbox_item``), as the
server does: an operation's outcome and restarts, not its progress.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiohttp
import socketio

from ..ids import ZERO, id_after, now_ms
from ..protocol import COOKIE, TERMINAL_TYPES, Notification, is_inbox_item

FAILOVER_DELAY = 0.25  # seconds before the first reconnect attempt (jittered)
FAILOVER_DELAY_MAX = 2.0  # the delay doubles per attempt up to this
FAILOVER_JITTER = 0.5  # each delay is drawn from delay * (1 +/- this)
# A connect refused for one of these reasons is refused by every instance
# (the session is the same everywhere): trying again is pointless.
FINAL_REFUSALS = ("unauthorized", "last_id")


def backoff(
    first: float = FAILOVER_DELAY, most: float = FAILOVER_DELAY_MAX, jitter: float = FAILOVER_JITTER
) -> Iterator[float]:
    """Delays before reconnect attempts: ``first``, doubling up to ``most``,
    each drawn from ``delay * (1 +/- jitter)``, so the clients of an instance
    that died do not all land on the next one at the same moment."""
    delay = first
    while True:
        yield delay * random.uniform(1 - jitter, 1 + jitter)
        delay = min(delay * 2, most)


class ClientError(Exception):
    """The server refused a request; ``status`` and ``body`` say why."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"{status}: {body.get('error', body)}")
        self.status, self.body = status, body


class Client:
    """One session of a user on one instance (``url``) or on whichever of
    several instances is up (``url`` a list). With ``reconnect=False`` a
    dropped socket stays closed."""

    def __init__(self, url: str | Sequence[str], *, reconnect: bool = True):
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError("Client needs an instance URL, or a list of them")
        self.urls = [u.rstrip("/") for u in urls]
        self.url = self.urls[0]  # the instance REST calls and the next connect go to
        self.reconnect = reconnect
        # unsafe=True: accept cookies from an IP address such as 127.0.0.1.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        # python-socketio reconnects to the same URL only: failing over is ours (_failover).
        # Engine.io uses our HTTP session rather than one of its own, so that
        # close() closes everything, whatever state a connect was left in.
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
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
        self.failovers = 0  # times the socket came back (on the same instance or another)
        self._stay_connected = False  # True from connect() until disconnect(), close() or the session ends
        self._failover_task: asyncio.Task | None = None
        self._last_refusals: list[Any] = []  # the connect_errors of the last failed attempt
        self._pending: set[asyncio.Future] = set()  # calls waiting for their ack
        self._changed = asyncio.Event()
        self._seen: set[str] = set()
        self._wire()

    # -- REST ---------------------------------------------------------------

    async def request(self, method: str, path: str, json: Any = None, url: str | None = None) -> dict:
        """Call the REST API (on ``url``, by default the current instance);
        raise ClientError on a 4xx/5xx. When the current instance cannot be
        reached at all (nothing sent), the next of ``urls`` that can becomes
        the current one."""
        if url is not None:
            return await self._request(method, url, path, json)
        error: aiohttp.ClientConnectorError | None = None
        for candidate in self._order(current_first=True):
            try:
                body = await self._request(method, candidate, path, json)
            except aiohttp.ClientConnectorError as exc:  # refused before anything was sent: safe to redo
                error = exc
                continue
            if not self.connected:  # a connected socket decides the current instance
                self.url = candidate
            return body
        assert error is not None
        raise error

    async def _request(self, method: str, url: str, path: str, json: Any) -> dict:
        # The token travels explicitly: the cookie jar keeps it per host, and
        # the instances of a cluster may be on several hosts.
        cookies = {COOKIE: self.token} if self.token else None
        async with self.http.request(method, f"{url}{path}", json=json, cookies=cookies) as response:
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
            self._stay_connected = False  # the server disconnects it next: no failover
            self._poke()

        @self.sio.event
        async def connect_error(data: Any) -> None:
            self.connect_errors.append(data)
            self._poke()

        @self.sio.event
        async def disconnect(reason: Any = None) -> None:
            for answer in self._pending:  # no ack comes for them any more
                if not answer.done():
                    answer.set_exception(ConnectionError(f"the socket closed before the answer ({reason})"))
            if self._stay_connected and self.reconnect and self._failover_task is None:
                self._failover_task = asyncio.create_task(self._failover())
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
        if self.unread is not None and is_inbox_item(note) and id_after(note["id"], self._unread_counted_to):
            self.unread += 1
        if note.get("operation"):  # a published notification may belong to none
            op = self.operations.setdefault(note["operation"], {"id": note["operation"]})
            op.update(
                {k: note[k] for k in ("kind", "state", "step", "steps", "progress", "message") if k in note}
            )
        self._poke()

    def _auth(self) -> dict:
        # Called on every (re)connect, so the server always gets the newest id.
        return {"session": self.token, "last_id": self.last_id}

    async def connect(self, url: str | None = None, *, catch_up: bool = False) -> None:
        """Open the socket: to ``url``, or else to the current instance, then
        the others of ``urls`` until one accepts it. With ``catch_up``, a first
        connect also replays the whole inbox. Raises
        ``socketio.exceptions.ConnectionError`` if none does (``connect_errors``
        says why)."""
        if catch_up and self.last_id is None:
            self.last_id = ZERO
        await self._stop_failover()
        candidates = [url.rstrip("/")] if url else self._order(current_first=True)
        error: Exception | None = None
        for candidate in candidates:
            try:
                await self._open(candidate)
            except socketio.exceptions.ConnectionError as exc:
                error = exc
                if self._refused_for_good():
                    break
                continue
            self._stay_connected = True
            return
        assert error is not None
        raise error

    async def _open(self, url: str) -> None:
        refusals = len(self.connect_errors)
        try:
            await self.sio.connect(url, auth=self._auth, transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError:
            self._last_refusals = self.connect_errors[refusals:]
            raise
        self.url = url

    def _refused_for_good(self) -> bool:
        return any(reason in str(error) for error in self._last_refusals for reason in FINAL_REFUSALS)

    def _order(self, current_first: bool = False) -> list[str]:
        """The instances to try: the others first (the current one just
        failed), or the current one first."""
        urls = self.urls if self.url in self.urls else [self.url, *self.urls]
        i = urls.index(self.url)
        others = urls[i + 1 :] + urls[:i]
        return [self.url, *others] if current_first else [*others, self.url]

    async def _failover(self) -> None:
        """Reconnect after the socket dropped: each instance in turn after a
        jittered delay, until one accepts or the session is over."""
        try:
            delays = backoff()
            while self._stay_connected and not self.connected:
                for url in self._order():
                    await asyncio.sleep(next(delays))
                    if not self._stay_connected or self.connected:
                        return
                    try:
                        await self._open(url)
                    except ValueError:
                        # engine.io is still closing the old connection (a
                        # graceful stop of the instance): try again shortly.
                        continue
                    except socketio.exceptions.ConnectionError:
                        if self._refused_for_good():
                            self._stay_connected = False
                            self._poke()
                            return
                        continue
                    self.failovers += 1
                    self._poke()
                    return
        finally:
            self._failover_task = None

    async def _stop_failover(self) -> None:
        task, self._failover_task = self._failover_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def disconnect(self) -> None:
        """Close the socket (no failover follows)."""
        self._stay_connected = False
        await self._stop_failover()
        await self.sio.disconnect()

    @property
    def connected(self) -> bool:
        return self.sio.connected

    @property
    def reconnecting(self) -> bool:
        """True while the socket is down and the client is trying to get it back."""
        return self._failover_task is not None and not self.connected

    @property
    def inbox_items(self) -> list[Notification]:
        """What a person is notified of (``protocol.is_inbox_item``), in order:
        what an inbox lists; the rest is operations' live state."""
        return [n for n in self.notifications if is_inbox_item(n)]

    @property
    def instance(self) -> str | None:
        return self.hello["instance"] if self.hello else None

    async def call(self, event: str, data: dict, timeout: float = 10) -> dict:
        """Send a client event and return its ack; ClientError if not ok (503
        when the service is unavailable); ConnectionError as soon as the
        socket closes before the ack came (the server refused the event, say
        one over its size limit, or went away); TimeoutError after ``timeout``."""
        answer: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_ack(*args: Any) -> None:
            if not answer.done():
                answer.set_result(args[0] if args else None)

        self._pending.add(answer)
        try:
            await self.sio.emit(event, data, callback=on_ack)
            async with asyncio.timeout(timeout):
                ack = await answer
        finally:
            self._pending.discard(answer)
        if not isinstance(ack, dict) or not ack.get("ok"):
            body = ack if isinstance(ack, dict) else {"error": f"unexpected ack {ack!r}"}
            unavailable = str(body.get("error", "")).startswith("service unavailable")
            raise ClientError(503 if unavailable else 400, body)
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
            lambda: any(
                n.get("operation") == op_id and n["type"] in TERMINAL_TYPES for n in self.notifications
            ),
            timeout,
        )
        return next(n for n in reversed(self.notifications) if n.get("operation") == op_id)

    def of_operation(self, op_id: str) -> list[Notification]:
        return [n for n in self.notifications if n.get("operation") == op_id]

    async def close(self) -> None:
        """Disconnect (also stopping any reconnection attempts) and close."""
        self._stay_connected = False
        try:
            await self._stop_failover()
            await self.sio.shutdown()
        finally:
            await self.http.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
