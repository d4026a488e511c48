"""In-process stand-ins for the unit tests: a Socket.IO server that records
what it emits, and a client manager that records binds. Redis is fakeredis.

They stand in for the parts a unit test is not about; the end-to-end tests
run the real ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis

from notifylab.config import Settings
from notifylab.server.feed import Feed
from notifylab.server.metrics import Metrics
from notifylab.store.inbox import Inbox
from notifylab.store.operations import Operations

SETTINGS = Settings(prefix="unit")


def fake_redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=True)


class FakeManager:
    """Records (un)subscribes; ``on_subscribe`` runs inside a bind, to play
    what may happen while the bind is on its way to RabbitMQ."""

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.on_subscribe: Callable[[str], Awaitable[None]] | None = None

    def is_connected(self, sid: str, namespace: str) -> bool:
        return sid in self.connected

    async def subscribe(self, user: str) -> None:
        self.calls.append(("subscribe", user))
        if self.on_subscribe is not None:
            await self.on_subscribe(user)

    async def unsubscribe(self, user: str) -> None:
        self.calls.append(("unsubscribe", user))


class FakeSio:
    """Records every emit as (event, data, to-or-room)."""

    def __init__(self) -> None:
        self.manager = FakeManager()
        self.emitted: list[tuple[str, Any, str | None]] = []
        self.rooms: dict[str, set[str]] = {}

    async def emit(
        self, event: str, data: Any, to: str | None = None, room: str | None = None, **kwargs: Any
    ) -> None:
        self.emitted.append((event, data, to or room))

    def emit_now(self, event: str, data: Any, room: str) -> int:
        self.emitted.append((event, data, room))
        return len(self.rooms.get(room, ()))

    async def enter_room(self, sid: str, room: str) -> None:
        self.rooms.setdefault(room, set()).add(sid)

    def notifications(self, target: str | None = None) -> list[str]:
        """The ids of the notifications emitted (to ``target`` only, if given)."""
        return [
            data["id"]
            for event, data, to in self.emitted
            if event == "notification" and (target is None or to == target)
        ]


def make_feed(redis: fakeredis.FakeAsyncRedis) -> tuple[Feed, FakeSio, Inbox, Metrics]:
    sio = FakeSio()
    inbox = Inbox(redis, SETTINGS)
    metrics = Metrics()
    return Feed(sio, inbox, metrics, "unit-instance"), sio, inbox, metrics  # type: ignore[arg-type]


def make_operations(redis: fakeredis.FakeAsyncRedis) -> Operations:
    return Operations(redis, SETTINGS, Inbox(redis, SETTINGS))
