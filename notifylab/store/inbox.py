"""Each user's notification inbox: a capped Redis Stream.

The stream id *is* the notification id. Redis makes ids strictly increasing
per stream, so "what did I miss since X" is one XRANGE, and any two
notifications of a user compare by id. Each appended notification also
carries ``prev``, the id that was last before it: an instance that receives a
notification whose ``prev`` is not the last one it delivered knows it missed
something, and reads the gap from the stream (see ``server/feed.py``).

The stream holds every notification; the unread count counts only inbox
items (``protocol.is_inbox_item``: an operation's outcome and restarts, and
published notifications), not an operation's progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from .. import codec
from ..config import Settings
from ..ids import ZERO, id_after
from ..protocol import BusNotification, Notification, is_inbox_item
from .replication import Replication

ENTRY_FIELD = "n"  # a stream entry is one field: the notification as JSON
ITEMS_PAGE = 200  # entries read per round trip when looking back for inbox items

APPEND_SCRIPT = """
-- KEYS: the n streams; the keys that must exist for anything to be written;
--       last, if ARGV[4] is not '', the key that records this append as done
-- ARGV: 1 n, 2 the streams' MAXLEN (~), 3 the entry's field,
--       4 the record's fingerprint ('' for none), 5 its lifetime (s), 6.. the n notifications
-- Returns {'done', record} if the record exists, {'missing', position, ...}
-- (1-based, among the keys that must exist), both having written nothing,
-- or {'ok', prev 1, id 1, prev 2, id 2, ...}.
local n = tonumber(ARGV[1])
local once = ARGV[4] ~= ''
local required_end = #KEYS
if once then
  local done = redis.call('GET', KEYS[#KEYS])
  if done then
    -- Written again, unchanged: a write of this call's own, so that a WAIT
    -- after it confirms the first call's appends (store/replication.py).
    redis.call('SET', KEYS[#KEYS], done, 'KEEPTTL')
    return {'done', done}
  end
  required_end = #KEYS - 1
end
local missing = {'missing'}
for i = n + 1, required_end do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i - n end
end
if #missing > 1 then return missing end
local reply, record = {'ok'}, {ARGV[4]}
for i = 1, n do
  local newest = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  reply[#reply + 1] = newest[1] and newest[1][1] or ''
  reply[#reply + 1] = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[5 + i])
  record[#record + 1] = reply[#reply]
end
if once then redis.call('SET', KEYS[#KEYS], table.concat(record, ' '), 'EX', ARGV[5]) end
return reply
"""


class KeysMissing(LookupError):
    """Keys that :meth:`Inbox.append_all` required do not exist; nothing was
    written. ``positions``: their places in the ``required`` it was given."""

    def __init__(self, positions: list[int]):
        super().__init__(f"required keys missing at {positions}")
        self.positions = positions


@dataclass(frozen=True)
class Once:
    """Makes :meth:`Inbox.append_all` happen at most once per ``key`` (a
    Redis key) for ``seconds``: a later call with the same key writes nothing
    and raises :class:`AppendedBefore`. ``fingerprint`` (no spaces) stands
    for what was asked, so that the caller can tell a retry of the same
    request from a different one that reused the key."""

    key: str
    fingerprint: str
    seconds: int


class AppendedBefore(Exception):
    """An append under the same :class:`Once` key was done already: nothing
    was written now. ``fingerprint`` and ``ids`` are the first append's."""

    def __init__(self, fingerprint: str, ids: list[str]):
        super().__init__(f"appended before, as {ids}")
        self.fingerprint = fingerprint
        self.ids = ids


class Inbox:
    """``<prefix>:inbox:<user>`` (the stream) and ``<prefix>:read:<user>``
    (the id up to which the user has read).

    ``patience``: how long an append waits for replicas to confirm it, when
    they must (see ``store/replication.py``), before it is refused."""

    def __init__(self, redis: Redis, settings: Settings, patience: float = 0.0):
        self.redis = redis
        self.settings = settings
        self.replication = Replication(redis, settings, patience)
        self._append_script = redis.register_script(APPEND_SCRIPT)

    def key(self, user: str) -> str:
        return self.settings.key("inbox", user)

    def _read_key(self, user: str) -> str:
        return self.settings.key("read", user)

    def entry(self, user: str, notification: dict[str, Any]) -> tuple[str, int, str, bytes]:
        """How a notification is stored, for a caller that appends it inside a
        Lua script (``store/operations.py``): the stream, its MAXLEN (``~``),
        the entry's field and value (JSON, as ``codec.dumpb`` writes it)."""
        return self.key(user), self.settings.inbox_max, ENTRY_FIELD, codec.dumpb(notification)

    @staticmethod
    def with_ids(notification: dict[str, Any], new_id: str, prev: str) -> BusNotification:
        """The notification as it travels: with its stream id and the id before it."""
        return cast(BusNotification, {**notification, "id": new_id, "prev": prev})

    async def append(self, user: str, notification: dict[str, Any]) -> BusNotification:
        """Append one notification to ``user``'s stream (see :meth:`append_all`)."""
        [appended] = await self.append_all([user], [notification])
        return appended

    async def append_all(
        self,
        users: Sequence[str],
        notifications: Sequence[dict[str, Any]],
        required: Sequence[str] = (),
        once: Once | None = None,
    ) -> list[BusNotification]:
        """Append ``notifications[i]`` to ``users[i]``'s stream, each with its
        ``id`` and ``prev``, all or none, in one round trip (APPEND_SCRIPT).

        ``required``: keys that must all exist for anything to be written
        (the publish API passes the recipients' accounts); if any does not,
        nothing is and :class:`KeysMissing` says which. A script rather than
        a check, then a transaction: one round trip, and no account can go
        between the two.

        ``once``: see :class:`Once`. The record is written in the same script
        as the appends, so no crash can leave one without the other.

        With replicas required (``NOTIFYLAB_REDIS_WAIT_REPLICAS``), it returns
        (or raises :class:`AppendedBefore`) only once they confirmed the
        appends; else :class:`~.replication.NotReplicated`."""
        values = [codec.dumpb(note) for note in notifications]
        mark = [once.key] if once else []
        reply = await self.replication.run(
            self._append_script,
            keys=[*(self.key(user) for user in users), *required, *mark],
            args=[
                len(users),
                self.settings.inbox_max,
                ENTRY_FIELD,
                once.fingerprint if once else "",
                once.seconds if once else 0,
                *values,
            ],
            confirm_when=("ok", "done"),
        )
        if reply[0] == "done":
            fingerprint, *ids = reply[1].split(" ")
            raise AppendedBefore(fingerprint, ids)
        if reply[0] == "missing":
            raise KeysMissing([int(position) - 1 for position in reply[1:]])
        return [
            self.with_ids(note, new_id=reply[2 + 2 * i], prev=reply[1 + 2 * i] or ZERO)
            for i, note in enumerate(notifications)
        ]

    @staticmethod
    def _decode(entries: list) -> list[Notification]:
        return [
            cast(Notification, {**codec.loads(fields[ENTRY_FIELD]), "id": entry_id})
            for entry_id, fields in entries
        ]

    async def after(
        self, user: str, after: str = ZERO, upto: str = "+", limit: int | None = None
    ) -> list[Notification]:
        """Notifications with ids after ``after`` (and up to ``upto``), oldest first."""
        entries = await self.redis.xrange(self.key(user), min=f"({after}", max=upto, count=limit)
        return self._decode(entries)

    async def latest(self, user: str, limit: int = 100) -> list[Notification]:
        """The newest ``limit`` notifications, oldest first."""
        entries = await self.redis.xrevrange(self.key(user), count=limit)
        return self._decode(entries[::-1])

    async def last_id(self, user: str) -> str:
        newest = await self.redis.xrevrange(self.key(user), count=1)
        return newest[0][0] if newest else ZERO

    async def read_up_to(self, user: str) -> str:
        return await self.redis.get(self._read_key(user)) or ZERO

    async def latest_items(self, user: str, limit: int = 100) -> list[Notification]:
        """The newest ``limit`` inbox items (``is_inbox_item``), oldest first:
        what an inbox lists, however many progress steps lie between them."""
        found: list[Notification] = []
        before = "+"
        while len(found) < limit:
            entries = await self.redis.xrevrange(self.key(user), max=before, count=ITEMS_PAGE)
            found += [n for n in self._decode(entries) if is_inbox_item(n)]
            if len(entries) < ITEMS_PAGE:
                break
            before = f"({entries[-1][0]}"
        return found[:limit][::-1]

    async def unread(self, user: str, upto: str = "+") -> int:
        """How many inbox items (``is_inbox_item``) come after the read mark
        (and up to ``upto``)."""
        up_to = await self.read_up_to(user)
        entries = await self.redis.xrange(self.key(user), min=f"({up_to}", max=upto)
        return self.count_unread(entries)

    def queue_read_mark(self, pipe: Pipeline, user: str) -> None:
        """Add the read of the user's read mark to ``pipe`` (its result: the
        mark or None; :meth:`queue_unread` takes it)."""
        pipe.get(self._read_key(user))

    def queue_unread(self, pipe: Pipeline, user: str, mark: str | None, upto: str = "+") -> None:
        """Add what :meth:`unread` reads after the mark to ``pipe``; its result
        goes to :meth:`count_unread`. For callers that batch the round trips."""
        pipe.xrange(self.key(user), min=f"({mark or ZERO}", max=upto)

    @classmethod
    def count_unread(cls, entries: list) -> int:
        return sum(1 for note in cls._decode(entries) if is_inbox_item(note))

    async def mark_read(self, user: str, up_to: str) -> tuple[str, int]:
        """Move the read mark forward to ``up_to`` (never back, never past the
        newest notification); returns the mark and the unread count after it."""
        key = self._read_key(user)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:  # optimistic: two sessions marking at once must not move it back
                try:
                    await pipe.watch(key, self.key(user))
                    current = await pipe.get(key) or ZERO
                    newest = await pipe.xrevrange(self.key(user), count=1)
                    newest_id = newest[0][0] if newest else ZERO
                    target = up_to if not id_after(up_to, newest_id) else newest_id
                    if not id_after(target, current):
                        await pipe.unwatch()
                        mark = current
                        break
                    pipe.multi()
                    pipe.set(key, target)
                    await pipe.execute()
                    mark = target
                    break
                except WatchError:
                    continue
        return mark, await self.unread(user)
