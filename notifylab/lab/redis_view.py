"""Looking inside Redis: everything notifylab keeps, as tables.

Redis is notifylab's memory; RabbitMQ only carries messages. Every key starts
with the prefix (``notifylab:`` by default), so several labs share one Redis:

- ``session:<id>`` (hash, expiring) a login session; ``user-sessions:<user>``
  (set) the user's session ids;
- ``sockets:<session>`` (hash) socket id -> where that socket is connected;
- ``instance:<id>`` (string, 15 s TTL) a server's heartbeat: an instance
  whose key has expired is gone, and so are the sockets it held;
- ``op:<id>`` (hash) an operation; ``ops:<user>`` (sorted set) its ids;
- ``inbox:<user>`` (stream) the user's notifications, the entry id being the
  notification id; ``read:<user>`` the id up to which the user has read.

This view only reads, and on purpose imports neither the server nor the
store: it is what a notebook kernel uses to check what the cluster did, with
its own Redis connection and nothing else of notifylab's running in it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from ..config import Settings, redact
from ..ids import ZERO
from ..protocol import is_inbox_item, is_live
from ..redisurl import make_client
from .tables import Check, Table, _short, wait_until

TIMEOUT = 5.0  # seconds for any one command: a notebook cell must never hang
T = TypeVar("T")


class RedisView:
    """The Redis side of one notifylab deployment (keys under ``prefix:``)."""

    def __init__(self, prefix: str = "notifylab", redis_url: str = "redis://127.0.0.1:6379/0"):
        # Settings derives every key from the prefix, exactly as servers do.
        self.names = Settings(prefix=prefix, redis_url=redis_url)
        # A redis:// or a redis+sentinel:// URL (redisurl.py), as the servers take.
        self.redis = make_client(
            redis_url, decode_responses=True, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT
        )
        self._last = ""  # the last answer, for wait_until's timeout message

    def key(self, *parts: str) -> str:
        """A key under the prefix: ``key("inbox", "ann")``."""
        return self.names.key(*parts)

    async def _ask(self, call: str, work: Callable[[], Awaitable[T]]) -> T:
        # One place turns "Redis is not there" into one clear line.
        try:
            answer = await work()
        except (RedisConnectionError, RedisTimeout, OSError) as exc:
            raise ConnectionError(
                f"cannot reach Redis at {redact(self.names.redis_url)} "
                f"({type(exc).__name__}); is redis-server running?"
            ) from None
        self._last = f"{call} -> {_short(answer)}"
        return answer

    async def _ttl(self, key: str) -> int | None:
        ttl = await self.redis.ttl(key)
        return ttl if ttl >= 0 else None  # -1: no expiry, -2: gone

    async def sessions(self, user: str) -> Table:
        """The user's login sessions, oldest first: id, device, created,
        last_seen (milliseconds) and ttl (seconds until it expires unused)."""

        async def work() -> Table:
            rows = []
            for sid in await self.redis.smembers(self.key("user-sessions", user)):
                data = await self.redis.hgetall(self.key("session", sid))
                if data:  # an expired session's id lingers in the set until the server prunes it
                    rows.append(
                        {
                            "id": sid,
                            "device": data.get("device"),
                            "created": int(data["created"]),
                            "last_seen": int(data["last_seen"]),
                            "ttl": await self._ttl(self.key("session", sid)),
                        }
                    )
            rows.sort(key=lambda r: (r["created"], r["id"]))
            return Table(rows, ["id", "device", "created", "last_seen", "ttl"])

        return await self._ask(f"sessions({user!r})", work)

    async def sockets(self, user: str | None = None) -> Table:
        """Open sockets (of ``user``, or everyone's), oldest first: sid, user,
        session, instance, transport, connected_at, and live: whether that
        instance still beats, as the same process. A socket of a crashed
        instance stays in Redis (live False) until a server notices and
        removes it, even if the instance has been started again."""

        async def work() -> Table:
            if user is not None:
                ids = await self.redis.smembers(self.key("user-sessions", user))
                sessions = [self.key("sockets", s) for s in ids]
            else:
                sessions = [k async for k in self.redis.scan_iter(match=self.key("sockets", "*"))]
            live = {row["id"]: row["incarnation"] for row in await self._instances()}
            rows = []
            for sockets_key in sessions:
                session = sockets_key.removeprefix(self.key("sockets", ""))
                owner = user or await self.redis.hget(self.key("session", session), "user")
                for sid, raw in (await self.redis.hgetall(sockets_key)).items():
                    record = json.loads(raw)
                    where = record["instance"]
                    rows.append(
                        {
                            "sid": sid,
                            "user": owner,
                            "session": session,
                            "instance": where,
                            "transport": record.get("transport"),
                            "connected_at": record.get("connected_at"),
                            "live": is_live(record, live),
                        }
                    )
            rows.sort(key=lambda r: (r["connected_at"] or 0, r["sid"]))
            return Table(rows, ["sid", "user", "session", "instance", "transport", "connected_at", "live"])

        return await self._ask("sockets()" if user is None else f"sockets({user!r})", work)

    async def _instances(self) -> Table:
        prefix = self.key("instance", "")
        rows = []
        async for key in self.redis.scan_iter(match=prefix + "*"):
            raw = await self.redis.get(key)
            if raw:  # it may expire between SCAN and GET
                info = json.loads(raw)
                rows.append(
                    {
                        "id": key.removeprefix(prefix),
                        "port": info.get("port"),
                        "routing": info.get("routing"),
                        "started": info.get("started"),
                        "incarnation": info.get("incarnation"),
                        "ttl": await self._ttl(key),
                    }
                )
        columns = ["id", "port", "routing", "started", "incarnation", "ttl"]
        return Table(sorted(rows, key=lambda r: r["id"]), columns)

    async def instances(self) -> Table:
        """Live server instances (their heartbeats): id, port, routing,
        started, incarnation (a token of the process: a restart under the
        same id changes it), ttl (seconds left: renewed every 5 s, so 10-15
        while alive)."""
        return await self._ask("instances()", self._instances)

    async def operations(self, user: str) -> Table:
        """The user's operations, newest first: id, kind, state, step, steps,
        attempts (how many times a worker picked it up) and worker."""

        async def work() -> Table:
            rows = []
            for op_id in await self.redis.zrevrange(self.key("ops", user), 0, -1):
                op = await self.redis.hgetall(self.key("op", op_id))
                if op:
                    rows.append(
                        {
                            "id": op_id,
                            "kind": op.get("kind"),
                            "state": op.get("state"),
                            "step": int(op.get("step", 0)),
                            "steps": int(op.get("steps", 0)),
                            "attempts": int(op.get("attempts", 0)),
                            "worker": op.get("worker"),
                        }
                    )
            return Table(rows, ["id", "kind", "state", "step", "steps", "attempts", "worker"])

        return await self._ask(f"operations({user!r})", work)

    async def inbox(self, user: str, count: int = 50) -> Table:
        """The user's newest ``count`` notifications, oldest first: id, prev,
        type, operation, state, step.

        ``prev`` is not stored in the entry: it is the id of the entry before
        it in the stream (``0-0`` for the very first), which is what the
        worker put in the notification it published, so a learner can follow
        the chain an instance checks to detect a gap."""

        async def work() -> Table:
            # One entry more than shown, to know the first shown entry's prev.
            entries = (await self.redis.xrevrange(self.key("inbox", user), count=count + 1))[::-1]
            rows, prev = [], ZERO
            for entry_id, fields in entries:
                note = json.loads(fields["n"])
                rows.append(
                    {
                        "id": entry_id,
                        "prev": prev,
                        "type": note.get("type"),
                        "operation": note.get("operation"),
                        "state": note.get("state"),
                        "step": note.get("step"),
                    }
                )
                prev = entry_id
            shown = rows[-count:] if count > 0 else []
            return Table(shown, ["id", "prev", "type", "operation", "state", "step"])

        return await self._ask(f"inbox({user!r})", work)

    async def read_mark(self, user: str) -> str:
        """The id up to which ``user`` has read (``0-0``: nothing read yet)."""

        async def work() -> str:
            return await self.redis.get(self.key("read", user)) or ZERO

        return await self._ask(f"read_mark({user!r})", work)

    async def unread(self, user: str) -> int:
        """How many inbox items (``protocol.is_inbox_item``: not an
        operation's progress) come after the read mark: what the server and
        every client count as unread."""

        async def work() -> int:
            mark = await self.redis.get(self.key("read", user)) or ZERO
            entries = await self.redis.xrange(self.key("inbox", user), min=f"({mark}")
            return sum(is_inbox_item(json.loads(fields["n"])) for _, fields in entries)

        return await self._ask(f"unread({user!r})", work)

    async def keys(self, pattern: str = "*") -> Table:
        """The prefix's keys matching ``pattern`` (after ``prefix:``), sorted,
        with their Redis type (hash, set, zset, stream, string)."""

        async def work() -> Table:
            found = sorted([k async for k in self.redis.scan_iter(match=self.key(pattern))])
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in found:
                    pipe.type(key)
                types = await pipe.execute()
            return Table([{"key": k, "type": t} for k, t in zip(found, types, strict=True)], ["key", "type"])

        return await self._ask(f"keys({pattern!r})", work)

    async def wait_until(self, check: Check, timeout: float = 10.0, interval: float = 0.2) -> Any:
        """Await ``check()`` (plain or async) until it is true; returns its value.
        After ``timeout`` s, raises TimeoutError saying what it returned last
        and this view's last answer (see ``tables.wait_until``)."""
        return await wait_until(check, timeout, interval, seen=lambda: self._last)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()

    async def __aenter__(self) -> RedisView:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
