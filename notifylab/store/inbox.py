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

from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from .. import codec
from ..config import Settings
from ..ids import ZERO, id_after
from ..protocol import BusNotification, Notification, is_inbox_item

ENTRY_FIELD = "n"  # a stream entry is one field: the notification as JSON
ITEMS_PAGE = 200  # entries read per round trip when looking back for inbox items


class Inbox:
    """``<prefix>:inbox:<user>`` (the stream) and ``<prefix>:read:<user>``
    (the id up to which the user has read)."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings

    def key(self, user: str) -> str:
        return self.settings.key("inbox", user)

    def _read_key(self, user: str) -> str:
        return self.settings.key("read", user)

    def entry(self, user: str, notification: dict[str, Any]) -> tuple[str, int, str, bytes]:
        """How a notification is stored, for a caller that appends it inside a
        Lua script (``store/operations.py``): the stream, its MAXLEN (``~``),
        the entry's field and value (JSON, as ``codec.dumpb`` writes it)."""
        return self.key(user), self.settings.inbox_max, ENTRY_FIELD, codec.dumpb(notification)

    def queue_append(self, pipe: Pipeline, user: str, notification: dict[str, Any]) -> None:
        """Add the append to a transaction ``pipe``; its last two results are
        [the previous newest entry] and the new id (see :meth:`appended`)."""
        key, maxlen, field_name, value = self.entry(user, notification)
        pipe.xrevrange(key, count=1)
        pipe.xadd(key, {field_name: value}, maxlen=maxlen, approximate=True)

    @classmethod
    def appended(cls, results: list, notification: dict[str, Any]) -> BusNotification:
        """The notification with the ``id`` and ``prev`` a transaction gave it."""
        previous, new_id = results[-2], results[-1]
        return cls.with_ids(notification, new_id, previous[0][0] if previous else ZERO)

    @staticmethod
    def with_ids(notification: dict[str, Any], new_id: str, prev: str) -> BusNotification:
        """The notification as it travels: with its stream id and the id before it."""
        return cast(BusNotification, {**notification, "id": new_id, "prev": prev})

    async def append(self, user: str, notification: dict[str, Any]) -> BusNotification:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.queue_append(pipe, user, notification)
            return self.appended(await pipe.execute(), notification)

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
