"""Operation records and their state machine.

An operation's record (``<prefix>:op:<id>``, a hash) and the notification that
tells the user about a change are written in ONE atomic step: the server
(queue, cancel) and the workers (start, progress, end) race on the same
operation, and whoever moves it first wins; the loser sees a refused
transition instead of writing over it.

The step is a compare-and-set on the record's ``version``, run inside Redis
as a short Lua script (``WRITE_SCRIPT``): "if the record is still at version
v, write version v+1 and append its notification". The state machine itself
stays here in Python: a caller reads the record (or, like a worker, keeps the
one it wrote last), decides, and asks Redis to write only if nobody moved it
in between; if somebody did, it reads again and decides again. A worker's
step is thus one round trip, where a WATCH/GET/MULTI/EXEC transaction was
three and cost the worker 43% of its time under load.

Each user's active operations (queued, running, restarted) are also kept as a
set of ids, ``<prefix>:active:<user>``, changed by the same script when an
operation is created or ends. ``create`` counts it inside the script, so two
instances starting operations for one user at once cannot both take the last
free slot.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis

from .. import codec
from ..config import Settings
from ..errors import TooManyRequests
from ..ids import ZERO, now_ms
from ..protocol import BusNotification
from .inbox import Inbox
from .replication import NotReplicated, Replication

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
    version: int = 0  # times the record was written: what a compare-and-set compares

    @property
    def progress(self) -> float:
        return round(self.step / self.steps, 4) if self.steps else 0.0

    # Shallow copies, not dataclasses.asdict: that deep-copies every field
    # and was a tenth of a worker's CPU per step (benchmarks/ladder.py
    # --profile); nothing here is changed in place after it is copied.

    def as_dict(self) -> dict:
        """What the API shows of it (the version is the store's business)."""
        shown = dict(vars(self))
        del shown["version"]
        return {**shown, "progress": self.progress}

    def to_redis(self) -> dict:
        return {**vars(self), "params": codec.dumps(self.params)}

    @classmethod
    def from_redis(cls, data: dict) -> Operation:
        ints = {"steps", "step", "attempts", "created", "updated", "version"}
        values: dict[str, Any] = {
            k: (int(v) if k in ints else v) for k, v in data.items() if k in cls.__dataclass_fields__
        }
        values["params"] = codec.loads(data["params"])
        return cls(**values)


class TransitionRefused(Exception):
    """The operation is not in a state that allows this change (it already
    ended, or someone else moved it first)."""


# The one atomic step (see the module's docstring). Run by Redis with no other
# command in between, so "check the version" and "write" cannot be split.
WRITE_SCRIPT = """
-- KEYS: the record, the user's active set, the user's index, the user's inbox stream
-- ARGV: 1 expected version ('' = the record must not exist yet), 2 operation id,
--       3 active set: 'add' | 'remove' | 'keep', 4 cap on the active set (0 = none),
--       5 index score ('' = leave the index), 6 stream MAXLEN, 7 stream field,
--       8 the notification, 9.. the record's fields and values
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[1] == '' then
  if exists then return {'conflict'} end
elseif not exists then
  return {'missing'}
elseif (redis.call('HGET', KEYS[1], 'version') or '0') ~= ARGV[1] then
  return {'conflict'}
end
local cap = tonumber(ARGV[4])
if cap > 0 and redis.call('SCARD', KEYS[2]) >= cap then return {'full'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
if ARGV[3] == 'add' then
  redis.call('SADD', KEYS[2], ARGV[2])
elseif ARGV[3] == 'remove' then
  redis.call('SREM', KEYS[2], ARGV[2])
end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2]) end
local newest = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
local prev = newest[1] and newest[1][1] or ''
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', ARGV[7], ARGV[8])
return {'ok', prev, id}
"""


class Operations:
    """Operation records. ``patience``: how long a write waits for replicas
    to confirm it, when they must (``store/replication.py``), before it is
    refused with NotReplicated: a worker waits, a request handler does not."""

    def __init__(self, redis: Redis, settings: Settings, inbox: Inbox, patience: float = 0.0):
        self.redis = redis
        self.settings = settings
        self.inbox = inbox
        self.replication = Replication(redis, settings, patience)
        self._write_script = redis.register_script(WRITE_SCRIPT)

    def record_key(self, op_id: str) -> str:
        """The operation's record, a hash."""
        return self.settings.key("op", op_id)

    def index_key(self, user: str) -> str:
        """The user's operations, a sorted set of ids by creation time."""
        return self.settings.key("ops", user)

    def _active_key(self, user: str) -> str:
        return self.settings.key("active", user)

    async def get(self, op_id: object) -> Operation | None:
        if not isinstance(op_id, str) or not op_id.isalnum() or len(op_id) > 40:
            return None
        data = await self.redis.hgetall(self.record_key(op_id))
        return Operation.from_redis(data) if data else None

    async def state(self, op_id: str) -> str | None:
        return await self.redis.hget(self.record_key(op_id), "state")

    async def active_count(self, user: str) -> int:
        """How many of the user's operations are queued, running or restarted."""
        return await self.redis.scard(self._active_key(user))

    async def of_user(self, user: str, limit: int = 50) -> list[Operation]:
        """The user's operations, newest first."""
        ids = await self.redis.zrevrange(self.index_key(user), 0, limit - 1)
        ops = [await self.get(op_id) for op_id in ids]
        return [op for op in ops if op is not None]

    async def create(self, user: str, kind: str, params: dict) -> tuple[Operation, BusNotification]:
        """Record a new queued operation; returns it and its 'queued' notification.

        Raises TooManyRequests if the user already has ``max_active_operations``
        active operations; NotReplicated (its ``subject`` the operation's id)
        if replicas must confirm it and did not: it is recorded on the primary."""
        cap = self.settings.max_active_operations
        op = Operation(
            secrets.token_hex(8),
            user,
            kind,
            params,
            steps=params["steps"],
            message="Waiting for a worker",
            version=1,
        )
        note = _notification("operation.queued", op)
        try:
            outcome, appended = await self._write(op, None, note, active="add", cap=cap, index=op.created)
        except NotReplicated as exc:
            exc.subject = op.id  # the caller may still queue its job: see services.start_operation
            raise
        if outcome == "full":
            raise TooManyRequests(f"at most {cap} active operations; wait for one to end or cancel one")
        if appended is None:  # a fresh random id that exists already: not a race we can lose
            raise RuntimeError(f"operation id {op.id} is taken ({outcome})")
        return op, appended

    async def transition(
        self,
        op_id: str,
        type_: str,
        attempt: int | None = None,
        current: Operation | None = None,
        **changes: Any,
    ) -> tuple[Operation, BusNotification]:
        """Move the operation to the state ``type_`` implies, apply
        ``changes`` to its record and append the notification, atomically.

        ``attempt`` fences a worker: if another attempt has taken the
        operation over since (its job came back after a lost connection),
        this worker's change is refused instead of interleaving with it.
        ``current`` is the record as the caller last wrote it, if it has one
        (a worker does): it saves reading it first, and if it is out of date
        the write is refused by Redis and the record read again.
        Raises TransitionRefused if the current state does not allow it.
        """
        new_state, allowed = TRANSITIONS[type_]
        op = current if current is not None else await self.get(op_id)
        while True:
            if op is None:
                raise TransitionRefused(f"operation {op_id} does not exist")
            if op.state not in allowed:
                raise TransitionRefused(f"operation {op_id} is {op.state}")
            if attempt is not None and op.attempts != attempt:
                raise TransitionRefused(f"operation {op_id} was taken over by attempt {op.attempts}")
            moved = replace(op, **changes, state=new_state, updated=now_ms(), version=op.version + 1)
            note = _notification(type_, moved)
            # Its slot is free from the same moment it ends.
            active = "remove" if new_state in TERMINAL else "keep"
            _, appended = await self._write(moved, op.version, note, active=active)
            if appended is not None:
                return moved, appended
            # Someone moved it since we read it (or it is gone): decide again on what is there now.
            op = await self.get(op_id)

    async def _write(
        self,
        op: Operation,
        expected: int | None,
        note: dict,
        active: str,
        cap: int = 0,
        index: int | None = None,
    ) -> tuple[str, BusNotification | None]:
        """Run WRITE_SCRIPT: write ``op`` if its record is at version
        ``expected`` (None: if it does not exist), and append ``note``.
        A write replicas must confirm returns once they did, or raises
        NotReplicated (``store/replication.py``)."""
        fields = [item for pair in op.to_redis().items() for item in pair]
        stream_key, maxlen, field_name, value = self.inbox.entry(op.user, note)
        reply = await self.replication.run(
            self._write_script,
            keys=[self.record_key(op.id), self._active_key(op.user), self.index_key(op.user), stream_key],
            args=[
                "" if expected is None else expected,
                op.id,
                active,
                cap,
                "" if index is None else index,
                maxlen,
                field_name,
                value,
                *fields,
            ],
        )
        if reply[0] != "ok":  # 'conflict', 'missing' or 'full': nothing was written
            return reply[0], None
        return "ok", self.inbox.with_ids(note, new_id=reply[2], prev=reply[1] or ZERO)


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
