"""Delivering a user's notifications to the sockets on one instance.

The guarantee: every socket sees every notification of its user once, in
stream order, with no gap, whether it arrived live or was missed while the
socket was away. Three facts make that work:

1. Bind before reading. When the first socket of a user arrives, the feed
   binds the instance's queue to the user's routing key, THEN reads the
   stream's newest id as its cursor. Anything appended after that read is
   published after the bind, so it arrives live; anything before it is in
   the stream, so it is replayed. Nothing falls between.
2. A cursor per user. The feed remembers the last id it emitted to the
   user's room; a notification at or before the cursor is a duplicate.
3. ``prev``. Each notification names the id that preceded it in the stream.
   If ``prev`` is not the cursor, something was missed (a publish lost while
   RabbitMQ restarted, a worker killed between append and publish, two
   workers publishing out of order) and the feed reads the gap from the
   stream before going on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from ..ids import id_after, now_ms
from ..protocol import BusNotification, Notification, to_client, user_room
from ..store.inbox import Inbox
from .metrics import Metrics

log = logging.getLogger(__name__)


class Sockets(Protocol):
    """What the feed uses of the instance's Socket.IO server (``sockets.Server``)."""

    manager: Any

    async def emit(self, event: str, data: Any, to: str | None = None, **kwargs: Any) -> Any: ...

    def emit_now(self, event: str, data: Any, room: str) -> int: ...

    async def enter_room(self, sid: str, room: str) -> Any: ...


class UserLock:
    """A user's lock, and how many tasks hold or wait on it. The count is
    taken without awaiting (``Feed._hold``), so a notification sent to the
    slow path is queued behind the lock before the next one is looked at."""

    __slots__ = ("count", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.count = 0


class Feed:
    def __init__(self, sio: Sockets, inbox: Inbox, metrics: Metrics, instance: str):
        self.sio = sio
        self.instance = instance
        self.inbox = inbox
        self.metrics = metrics
        self.cursors: dict[str, str] = {}  # user -> last id emitted to the user's room here
        self.members: dict[str, set[str]] = {}  # user -> sids on this instance
        # user -> its lock, while a task holds or waits on it: an entry goes
        # when the count falls to 0, so a user who left costs nothing, and no
        # second lock for a user is made while a task still waits on the first.
        self._locks: dict[str, UserLock] = {}
        self._tasks: set[asyncio.Task] = set()  # slow-path deliveries, until each ends

    def _hold(self, user: str) -> UserLock:
        entry = self._locks.get(user)
        if entry is None:
            entry = self._locks[user] = UserLock()
        entry.count += 1
        return entry

    def _release(self, user: str, entry: UserLock) -> None:
        entry.count -= 1
        if not entry.count:
            del self._locks[user]

    @asynccontextmanager
    async def _lock(self, user: str) -> AsyncIterator[None]:
        entry = self._hold(user)
        try:
            async with entry.lock:
                yield
        finally:
            self._release(user, entry)

    @property
    def manager(self):
        return self.sio.manager

    def users(self) -> list[str]:
        return list(self.members)

    async def attach(
        self,
        sid: str,
        user: str,
        last_id: str | None,
        before_replay: Callable[[str], Awaitable[None]] | None = None,
    ) -> int:
        """Put socket ``sid`` in its user's room, first replaying what it
        missed after ``last_id`` (None: nothing to replay). ``before_replay``
        is awaited with the cursor before any notification is sent.
        Returns how many notifications were replayed."""
        async with self._lock(user):
            if not self.manager.is_connected(sid, "/"):
                return 0  # it left before we got here; detach has run already
            if user not in self.members:
                await self.manager.subscribe(user)  # 1. bind ...
                self.cursors[user] = await self.inbox.last_id(user)  # ... then read
                self.members[user] = set()
            cursor = self.cursors[user]
            self.members[user].add(sid)
            if before_replay is not None:
                await before_replay(cursor)
            replayed = 0
            if last_id is not None and id_after(cursor, last_id):
                for note in await self.inbox.after(user, last_id, upto=cursor):
                    await self.sio.emit("notification", self._stamped(note), to=sid, ignore_queue=True)
                    replayed += 1
                self.metrics.replayed.inc(replayed)
            await self.sio.enter_room(sid, user_room(user))
            return replayed

    async def detach(self, sid: str, user: str) -> None:
        """Forget socket ``sid``; unbind the user when it was the last one."""
        async with self._lock(user):
            members = self.members.get(user)
            if members is None:
                return
            members.discard(sid)
            if not members:
                del self.members[user], self.cursors[user]
                await self.manager.unsubscribe(user)

    def receive(self, notes: list[BusNotification]) -> None:
        """Notifications that arrived from the bus together, in bus order.

        The fast path awaits nothing, so it needs no lock: while nobody holds
        or waits on the user's lock, a notification that follows the cursor
        (``prev``) goes out to the user's sockets at once. Anything else waits
        its turn behind the lock, in order (``_deliver``): a gap to read from
        the stream, or a user whose socket is being attached."""
        self.metrics.batch_size.observe(len(notes))
        emitted = 0
        for note in notes:
            user = note.get("user")
            if user not in self.members:
                self.metrics.not_local.inc()
                continue
            if user in self._locks or note.get("prev") != self.cursors[user]:
                self._spawn(self._deliver(note, user, self._hold(user)))
                continue
            emitted += self._emit(user, (note,))
        if emitted:
            self.metrics.delivered.inc(emitted)

    async def settle(self) -> None:
        """Wait until every notification ``receive`` sent the slow way is
        delivered (or dropped): for tests, and for a clean stop."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, note: BusNotification, user: str, entry: UserLock) -> None:
        """The slow path of ``receive``: under the user's lock, held since
        ``receive`` (the count was taken there, in bus order)."""
        try:
            async with entry.lock:
                cursor = self.cursors.get(user)
                if cursor is None:  # the last socket left while we waited
                    return
                if not id_after(note["id"], cursor):
                    self.metrics.duplicates.inc()
                    return
                if note.get("prev") == cursor:
                    batch: list[Notification] | tuple[BusNotification, ...] = (note,)
                else:  # 3. a gap: the stream has what we missed, in order
                    self.metrics.gaps.inc()
                    batch = await self.inbox.after(user, cursor)
                self.metrics.delivered.inc(self._emit(user, batch))
        except Exception:
            # Not lost: the next notification's prev, or a reconnect, reads it from the stream.
            log.exception("delivering %s to %s failed", note.get("id"), user)
        finally:
            self._release(user, entry)

    async def catch_up(self) -> None:
        """Read every local user's stream past its cursor: run after the bus
        reconnected, when publishes may have been lost meanwhile."""
        for user in self.users():
            async with self._lock(user):
                if user in self.cursors:
                    batch = await self.inbox.after(user, self.cursors[user])
                    if batch:
                        self.metrics.gaps.inc()
                        self.metrics.delivered.inc(self._emit(user, batch))

    def _emit(self, user: str, batch: Sequence[Notification] | Sequence[BusNotification]) -> int:
        """Send ``batch`` to the user's sockets here and move the cursor:
        no await, so nothing can come between. Returns the sends made."""
        room = user_room(user)
        sent = 0
        now = time.time()
        for note in batch:
            sent += self.sio.emit_now("notification", self._stamped(note), room)
            self.cursors[user] = note["id"]
            self.metrics.latency.observe(max(0.0, now - note["ts"] / 1000))
        return sent

    def _stamped(self, note: Notification) -> Notification:
        """What a socket receives: the notification, stamped with this
        instance and the time it left it (for the lab's timeline)."""
        return {**to_client(note), "emitted": now_ms(), "instance": self.instance}
