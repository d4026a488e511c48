"""Operation records and their state machine.

An operation's record (``<prefix>:op:<id>``, a hash) and the notification that
tells the user about a change are written in ONE Redis transaction, under an
optimistic lock on the record: the server (queue, cancel) and the workers
(start, progress, end) race on the same operation, and whoever moves it first
wins; the loser sees a refused transition instead of writing over it.

Each user's active operations (queued, running, restarted) are also kept as a
set of ids, ``<prefix>:active:<user>``, changed in the same transactions that
create and end an operation. ``create`` reads its size under ``WATCH``, so
two instances starting operations for one user at once cannot both take the
last free slot: one transaction fails, retries, and sees the cap.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from ..config import Settings
from ..errors import TooManyRequests
from ..ids import now_ms
from ..protocol import BusNotification
from .inbox import Inbox

TERMINAL = {"succeeded", "failed", "cancelled"}
ACTIVE = {"queued", "running", "restarted"}

# notification type -> (new state, states it may come from)
TRANSITIONS: dict[str, tuple[str, set[str]]] = {
    "operation.queued": ("queued", set()),
    "operation.started": ("running", {"queued"}),
    "operation.restarted": ("restarted", {"running", "restarted"}),
    "operation.progress": ("running", {"running", "restarted"}),
    "operation.succeeded": ("succeeded", {"running", "restarted"}),
    "operation.failed": ("failed", ACTIVE),
    "operation.cancelled": ("cancelled", ACTIVE),
}


@dataclass
class Operation:
    id: str
    user: str
    kind: str
    params: dict
    steps: int
    state: str = "queued"
    step: int = 0
    message: str = ""
    attempts: int = 0
    error: str = ""
    worker: str = ""
    created: int = field(default_factory=now_ms)
    updated: int = field(default_factory=now_ms)

    @property
    def progress(self) -> float:
        return round(self.step / self.steps, 4) if self.steps else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "progress": self.progress}

    def to_redis(self) -> dict:
        return {**asdict(self), "params": json.dumps(self.params)}

    @classmethod
    def from_redis(cls, data: dict) -> Operation:
        ints = {"steps", "step", "attempts", "created", "updated"}
        values: dict[str, Any] = {
            k: (int(v) if k in ints else v) for k, v in data.items() if k in cls.__dataclass_fields__
        }
        values["params"] = json.loads(data["params"])
        return cls(**values)


class TransitionRefused(Exception):
    """The operation is not in a state that allows this change (it already
    ended, or someone else moved it first)."""


class Operations:
    def __init__(self, redis: Redis, settings: Settings, inbox: Inbox):
        self.redis = redis
        self.settings = settings
        self.inbox = inbox

    def _key(self, op_id: str) -> str:
        return self.settings.key("op", op_id)

    def _user_key(self, user: str) -> str:
        return self.settings.key("ops", user)

    def _active_key(self, user: str) -> str:
        return self.settings.key("active", user)

    async def get(self, op_id: object) -> Operation | None:
        if not isinstance(op_id, str) or not op_id.isalnum() or len(op_id) > 40:
            return None
        data = await self.redis.hgetall(self._key(op_id))
        return Operation.from_redis(data) if data else None

    async def state(self, op_id: str) -> str | None:
        return await self.redis.hget(self._key(op_id), "state")

    async def active_count(self, user: str) -> int:
        """How many of the user's operations are queued, running or restarted."""
        return await self.redis.scard(self._active_key(user))

    async def of_user(self, user: str, limit: int = 50) -> list[Operation]:
        """The user's operations, newest first."""
        ids = await self.redis.zrevrange(self._user_key(user), 0, limit - 1)
        ops = [await self.get(op_id) for op_id in ids]
        return [op for op in ops if op is not None]

    async def create(self, user: str, kind: str, params: dict) -> tuple[Operation, BusNotification]:
        """Record a new queued operation; returns it and its 'queued' notification.

        Raises TooManyRequests if the user already has ``max_active_operations``
        active operations."""
        cap = self.settings.max_active_operations
        op = Operation(
            secrets.token_hex(8), user, kind, params, steps=params["steps"], message="Waiting for a worker"
        )
        active = self._active_key(user)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # Watched: if another instance adds or ends one of this user's operations
                    # between the count and the write, EXEC fails and we count again.
                    await pipe.watch(active)
                    if await pipe.scard(active) >= cap:
                        raise TooManyRequests(
                            f"at most {cap} active operations; wait for one to end or cancel one"
                        )
                    pipe.multi()
                    pipe.hset(self._key(op.id), mapping=op.to_redis())
                    pipe.zadd(self._user_key(user), {op.id: op.created})
                    pipe.sadd(active, op.id)
                    note = _notification("operation.queued", op)
                    self.inbox.queue_append(pipe, user, note)
                    results = await pipe.execute()
                    return op, self.inbox.appended(results, note)
                except WatchError:
                    continue

    async def transition(
        self, op_id: str, type_: str, attempt: int | None = None, **changes
    ) -> tuple[Operation, BusNotification]:
        """Move the operation to the state ``type_`` implies, apply
        ``changes`` to its record and append the notification, atomically.

        ``attempt`` fences a worker: if another attempt has taken the
        operation over since (its job came back after a lost connection),
        this worker's change is refused instead of interleaving with it.
        Raises TransitionRefused if the current state does not allow it.
        """
        new_state, allowed = TRANSITIONS[type_]
        key = self._key(op_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    data = await pipe.hgetall(key)
                    if not data:
                        raise TransitionRefused(f"operation {op_id} does not exist")
                    op = Operation.from_redis(data)
                    if op.state not in allowed:
                        raise TransitionRefused(f"operation {op_id} is {op.state}")
                    if attempt is not None and op.attempts != attempt:
                        raise TransitionRefused(f"operation {op_id} was taken over by attempt {op.attempts}")
                    for name, value in changes.items():
                        setattr(op, name, value)
                    op.state, op.updated = new_state, now_ms()
                    pipe.multi()
                    pipe.hset(key, mapping=op.to_redis())
                    if new_state in TERMINAL:  # its slot is free from the same moment
                        pipe.srem(self._active_key(op.user), op.id)
                    note = _notification(type_, op)
                    self.inbox.queue_append(pipe, op.user, note)
                    return op, self.inbox.appended(await pipe.execute(), note)
                except WatchError:
                    continue


def _notification(type_: str, op: Operation) -> dict:
    return {
        "user": op.user,
        "type": type_,
        "operation": op.id,
        "kind": op.kind,
        "state": op.state,
        "step": op.step,
        "steps": op.steps,
        "progress": op.progress,
        "message": op.error or op.message,
        "ts": now_ms(),
    }
