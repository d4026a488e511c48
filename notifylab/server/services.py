"""What one instance holds, and the actions a user can take through it.

REST (``http.py``) and Socket.IO (``sockets.py``) are two doors to the same
actions: both call :class:`Services`, and neither imports the other. This
module imports neither of them: it is the leaf they share.
"""

from __future__ import annotations

import logging
import time

import socketio
from redis.asyncio import Redis

from ..bus.jobs import Jobs, job_priority, make_jobs
from ..bus.managers import publish_notification
from ..config import Settings
from ..errors import BadRequest, Conflict, NotFound
from ..ids import is_id
from ..kinds import get_kind
from ..protocol import user_room
from ..store.accounts import Accounts
from ..store.connect import connect_redis
from ..store.inbox import Inbox
from ..store.operations import TERMINAL, Operation, Operations, TransitionRefused
from ..store.presence import Presence
from ..store.sessions import Session, Sessions
from .feed import Feed
from .metrics import Metrics

log = logging.getLogger(__name__)


class Services:
    """The parts of one instance (connected by :meth:`start`) and the actions
    REST and Socket.IO share."""

    redis: Redis
    accounts: Accounts
    sessions: Sessions
    presence: Presence
    inbox: Inbox
    operations: Operations
    jobs: Jobs
    feed: Feed

    def __init__(self, settings: Settings, sio: socketio.AsyncServer):
        self.settings = settings
        self.sio = sio
        self.metrics = Metrics()
        self.started = time.time()

    @property
    def instance(self) -> str:
        return self.settings.instance_id

    async def start(self) -> None:
        """Connect to Redis and RabbitMQ; fails with a one-line error naming
        the URL when either is unreachable."""
        self.redis = redis = await connect_redis(self.settings)
        self.accounts = Accounts(redis, self.settings)
        self.sessions = Sessions(redis, self.settings)
        self.presence = Presence(redis, self.settings)
        self.inbox = Inbox(redis, self.settings)
        self.operations = Operations(redis, self.settings, self.inbox)
        self.feed = Feed(self.sio, self.inbox, self.metrics, self.instance)
        self.jobs = make_jobs(self.settings)
        await self.jobs.start()

    async def close(self) -> None:
        try:
            await self.presence.stop(self.instance)
        except Exception:  # Redis may be the thing that is down
            pass
        await self.jobs.close()
        await self.redis.aclose()

    # -- operations ---------------------------------------------------------

    async def start_operation(self, user: str, kind: object, params: object) -> Operation:
        """Validate, record, notify and queue a new operation. TooManyRequests
        (429) if the user already has ``max_active_operations`` active ones."""
        checked = get_kind(kind).validate(params)
        op, note = await self.operations.create(user, str(kind), checked)
        await publish_notification(self.sio, note)
        # Fewer active operations of this user, sooner a worker takes it: see bus/jobs.py.
        # A hint, so a count a moment old is good enough.
        ahead = await self.operations.active_count(user) - 1
        try:
            await self.jobs.publish({"operation": op.id}, priority=job_priority(ahead))
        except Exception as exc:  # the broker stayed away: say so, do not leave it "queued"
            log.error("could not queue operation %s: %s", op.id, exc)
            op, note = await self.operations.transition(
                op.id, "operation.failed", error="could not be queued: the broker is unreachable"
            )
            await publish_notification(self.sio, note)
        return op

    async def user_operation(self, user: str, op_id: object) -> Operation:
        op = await self.operations.get(op_id)
        if op is None or op.user != user:  # another user's operation is "not found" too
            raise NotFound("no such operation")
        return op

    async def cancel_operation(self, user: str, op_id: object, device: str) -> Operation:
        op = await self.user_operation(user, op_id)
        if op.state in TERMINAL:
            raise Conflict(f"the operation already {op.state}")
        try:
            op, note = await self.operations.transition(
                op.id, "operation.cancelled", message=f"Cancelled from {device}"
            )
        except TransitionRefused as exc:
            raise Conflict(str(exc)) from None
        await publish_notification(self.sio, note)
        return op

    # -- inbox --------------------------------------------------------------

    async def mark_read(self, user: str, up_to: object) -> tuple[str, int]:
        if not is_id(up_to):
            raise BadRequest("up_to must be a notification id like '1732512345678-0'", "up_to")
        mark, unread = await self.inbox.mark_read(user, str(up_to))
        await self.sio.emit("inbox:read", {"up_to": mark, "unread": unread}, room=user_room(user))
        return mark, unread

    # -- sessions -----------------------------------------------------------

    async def revoke(self, session: Session) -> int:
        """End a session: its record goes, and its sockets, on whichever
        instance, are told and disconnected. Returns how many sockets."""
        await self.sessions.delete(session)
        sockets = await self.presence.sockets(session.id)
        for socket in sockets:
            # Through the client manager: reaches the socket's own instance.
            await self.sio.emit("session:revoked", {"session": session.id}, to=socket["sid"])
            await self.sio.disconnect(socket["sid"])
        await self.presence.forget_session(session.id)
        return len(sockets)

    async def sessions_of(self, user: str) -> list[dict]:
        """The user's sessions, each with its live sockets and their instance."""
        live = set(await self.presence.instances())
        return [
            {**s.as_dict(), "sockets": await self.presence.sockets(s.id, live)}
            for s in await self.sessions.of_user(user)
        ]
