"""What one instance holds, and the actions a user can take through it.

REST (``http.py``) and Socket.IO (``sockets.py``) are two doors to the same
actions: both call :class:`Services`, and neither imports the other. This
module imports neither of them: it is the leaf they share.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import socketio
from redis.asyncio import Redis

from ..bus.jobs import Jobs, job_priority, make_jobs
from ..bus.managers import publish_notification
from ..config import Settings
from ..errors import BadRequest, Conflict, NotFound, TooManyRequests, Unprocessable
from ..ids import is_id, now_ms
from ..kinds import get_kind
from ..protocol import OPERATION_TYPE_PREFIX, user_room
from ..store.accounts import Accounts, is_username
from ..store.connect import connect_redis
from ..store.inbox import AppendedBefore, Inbox, KeysMissing, Once
from ..store.operations import TERMINAL, Operation, Operations, TransitionRefused
from ..store.presence import Presence
from ..store.ratelimit import RateLimit
from ..store.replication import NotReplicated
from ..store.sessions import Session, Sessions
from .feed import Feed
from .metrics import Metrics

log = logging.getLogger(__name__)

# The publish API (POST /api/publish): what another backend service may send.
PUBLISH_FIELDS = frozenset({"user", "users", "type", "title", "body", "data"})
PUBLISH_MAX_USERS = 1000
PUBLISH_TYPE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")  # always fullmatch(): "billing.invoice"
PUBLISH_TYPE_MAX = 64
PUBLISH_TITLE_MAX = 200  # characters
PUBLISH_BODY_MAX = 2000  # characters
PUBLISH_DATA_MAX = 8 * 1024  # bytes of the object as compact UTF-8 JSON
_NAMED_UNKNOWN = 10  # unknown recipients named in a refusal; the rest are counted


@dataclass(frozen=True)
class Publication:
    """A checked publish request (see :func:`check_publication`)."""

    users: tuple[str, ...]  # distinct, in the order given
    type: str
    title: str
    body: str
    data: dict[str, Any]
    users_field: str  # "user" or "users": where a refusal of a recipient points

    def fingerprint(self) -> str:
        """A digest of what is asked (whatever the order of ``data``'s keys),
        to tell a retry from another request under the same Idempotency-Key."""
        asked = [self.users, self.type, self.title, self.body, self.data]
        text = json.dumps(asked, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _text(fields: Mapping[str, object], name: str, most: int, required: bool) -> str:
    value = fields.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", name)
    if required and not value.strip():
        raise BadRequest(f"{name} must not be empty", name)
    if len(value) > most:
        raise BadRequest(f"{name} must be at most {most} characters", name)
    try:  # JSON may carry lone surrogates ("\ud800"), which no client can show
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} must be valid Unicode text", name) from None
    return value


def _recipients(fields: Mapping[str, object]) -> tuple[tuple[str, ...], str]:
    if "user" in fields and "users" in fields:
        raise BadRequest("give either user (one username) or users (a list), not both", "users")
    if "user" in fields:
        if not is_username(fields["user"]):
            raise BadRequest("user must be a username (3-32 characters: a-z, 0-9, '_' or '-')", "user")
        return (fields["user"],), "user"
    if "users" not in fields:
        raise BadRequest("name the recipients: user (one username) or users (a list)", "users")
    users = fields["users"]
    if not isinstance(users, list) or not users:
        raise BadRequest("users must be a non-empty list of usernames", "users")
    if len(users) > PUBLISH_MAX_USERS:
        raise BadRequest(f"users must list at most {PUBLISH_MAX_USERS} usernames", "users")
    for name in users:
        if not is_username(name):
            raise BadRequest(f"users holds {str(name)[:40]!r}, which is not a username", "users")
    return tuple(dict.fromkeys(users)), "users"


def check_publication(fields: Mapping[str, object]) -> Publication:
    """Validate the body of a publish request: raise BadRequest (400) naming
    the first field at fault. Whether the recipients exist is checked by
    :meth:`Services.publish`, which needs the store."""
    for name in fields:
        if name not in PUBLISH_FIELDS:
            expected = ", ".join(sorted(PUBLISH_FIELDS))
            raise BadRequest(f"unknown field {name[:40]!r}: expected {expected}", name[:40])
    users, users_field = _recipients(fields)
    kind = fields.get("type")
    if not isinstance(kind, str) or len(kind) > PUBLISH_TYPE_MAX or not PUBLISH_TYPE.fullmatch(kind):
        raise BadRequest(
            f"type must be a dotted name like 'billing.invoice' (a-z, 0-9, '_', '-'; "
            f"at most {PUBLISH_TYPE_MAX} characters)",
            "type",
        )
    # Clients read "operation.*" as an operation's news (its card, not the inbox).
    if kind == OPERATION_TYPE_PREFIX.rstrip(".") or kind.startswith(OPERATION_TYPE_PREFIX):
        raise BadRequest("the types operation and operation.* are reserved for operations", "type")
    title = _text(fields, "title", PUBLISH_TITLE_MAX, required=True)
    text = _text(fields, "body", PUBLISH_BODY_MAX, required=False)
    data = fields.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRequest("data must be a JSON object", "data")
    try:
        size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("data must hold valid Unicode text only", "data") from None
    except RecursionError:
        raise BadRequest("data is nested too deeply", "data") from None
    if size > PUBLISH_DATA_MAX:
        raise BadRequest(f"data must be at most {PUBLISH_DATA_MAX} bytes as JSON, not {size}", "data")
    return Publication(users, kind, title, text, data, users_field)


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
        rate = self.settings.publish_rate
        # A burst of one second's worth (a call to more recipients than that
        # passes when the key's budget is full, and the next ones wait).
        self.publish_limit = RateLimit(redis, self.settings, "publish", rate, rate) if rate else None
        self.jobs = make_jobs(self.settings)
        await self.jobs.start()

    async def close(self) -> None:
        try:
            await self.presence.stop()
        except Exception:  # Redis may be the thing that is down
            pass
        await self.jobs.close()
        await self.redis.aclose()

    # -- operations ---------------------------------------------------------

    async def start_operation(self, user: str, kind: object, params: object) -> Operation:
        """Validate, record, notify and queue a new operation. TooManyRequests
        (429) if the user already has ``max_active_operations`` active ones."""
        checked = get_kind(kind).validate(params)
        try:
            op, note = await self.operations.create(user, str(kind), checked)
        except NotReplicated as exc:
            # Recorded on the primary, not confirmed by a replica: refused (503),
            # but its job is queued all the same, so that it runs if the record
            # survives instead of staying "queued" for ever (a worker drops the
            # job of a record that is gone).
            if exc.subject is not None:
                try:
                    await self.jobs.publish({"operation": exc.subject}, priority=job_priority(0))
                except Exception as broker:
                    log.error("could not queue unconfirmed operation %s: %s", exc.subject, broker)
            raise
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

    # -- publish ------------------------------------------------------------

    async def publish(
        self, pub: Publication, caller: str, idempotency_key: str | None = None
    ) -> tuple[dict[str, str], bool]:
        """Append ``pub`` to each recipient's inbox stream and send it on, as
        an operation's notifications are: the feed's order, no duplicate and
        gap filling hold for it. Returns each user's notification id, and
        whether this was a retry answered from the first publish.

        ``caller`` names the API key (not the key itself): its rate limit
        (TooManyRequests past ``publish_rate``) and its idempotency keys.
        Every recipient must have an account (BadRequest names the others).
        The check and all the appends are one Redis script (one round trip,
        all or nothing): a failure (503) leaves no recipient with it, so the
        caller may simply retry. With ``idempotency_key``, the same script
        records the ids under it: a retry within ``idempotency_seconds`` gets
        them back and publishes nothing, on any instance; the key reused for
        a different publication is Unprocessable. Once appended it is kept:
        a publish the bus does not confirm is logged, not undone, and the
        feed delivers it from the stream (see ``feed.py``)."""
        if self.publish_limit is not None:
            wait = await self.publish_limit.take(caller, cost=len(pub.users))
            if wait:
                rate = self.settings.publish_rate
                raise TooManyRequests(
                    f"this API key may publish {rate} notifications a second: retry later",
                    retry_after=max(1, math.ceil(wait)),
                )
        once = None
        if idempotency_key is not None:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
            key = self.settings.key("publish-once", caller, digest)
            once = Once(key, pub.fingerprint(), self.settings.idempotency_seconds)
        ts = now_ms()
        fields = [_published(user, pub, ts) for user in pub.users]
        try:
            sent = await self.inbox.append_all(
                pub.users, fields, required=[self.accounts.key(user) for user in pub.users], once=once
            )
        except KeysMissing as exc:
            unknown = [pub.users[position] for position in exc.positions]
            named = ", ".join(unknown[:_NAMED_UNKNOWN])
            more = f" and {len(unknown) - _NAMED_UNKNOWN} more" if len(unknown) > _NAMED_UNKNOWN else ""
            raise BadRequest(f"no such user: {named}{more}", pub.users_field) from None
        except AppendedBefore as exc:
            assert once is not None
            if exc.fingerprint != once.fingerprint:
                raise Unprocessable(
                    "this Idempotency-Key was used for a different publication: use a new key for a new one",
                    "Idempotency-Key",
                ) from None
            return dict(zip(pub.users, exc.ids, strict=True)), True
        # One user's notification does not wait for another's confirm.
        outcomes = await asyncio.gather(
            *(publish_notification(self.sio, note) for note in sent), return_exceptions=True
        )
        for note, outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, Exception):
                # Stored, so not lost: the feed reads it from the stream at the user's
                # next notification (prev), after the bus reconnects, or on a replay.
                log.error(
                    "published notification %s for %s is stored but the bus did not take it: %s",
                    note["id"],
                    note["user"],
                    outcome,
                )
        return {note["user"]: note["id"] for note in sent}, False

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
        live = await self.presence.live()
        return [
            {**s.as_dict(), "sockets": await self.presence.sockets(s.id, live)}
            for s in await self.sessions.of_user(user)
        ]


def _published(user: str, pub: Publication, ts: int) -> dict[str, Any]:
    """The notification a publish appends for ``user``. It also carries every
    field an operation's notification has, neutral, so clients that read
    them (cards, timelines) need no special case; ``message`` repeats the title."""
    return {
        "user": user,
        "type": pub.type,
        "title": pub.title,
        "body": pub.body,
        "data": pub.data,
        "ts": ts,
        "operation": "",
        "kind": "",
        "state": "",
        "step": 0,
        "steps": 0,
        "progress": 0.0,
        "message": pub.title,
    }
