"""What servers and clients agree on: the cookie, the rooms, the shape of a
notification. Defined once here, used by the server, the worker and the
Python client alike; no dependencies, so the kernel side can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict, cast

from .ids import parse_id

COOKIE = "notifylab_session"  # the browser's session cookie (HttpOnly)

# Notification types an operation goes through (see store/operations.py).
TERMINAL_TYPES = frozenset({"operation.succeeded", "operation.failed", "operation.cancelled"})

# The inbox a person keeps. Every notification stays in the stream (replay
# and recovery need them all), but only these are inbox items: counted as
# unread and listed in the inbox. An operation's queued, started and progress
# notifications are its live state, shown on its card; a 60-step operation
# is one thing to read, not 60. Any type outside "operation." (notifications
# published for the user, e.g. "notification") is an inbox item too.
# Servers, the Python client, the React client (frontend/src/lib/inbox.js)
# and the widget panel all follow this one rule, so the unread count agrees.
OPERATION_TYPE_PREFIX = "operation."
INBOX_TYPES = TERMINAL_TYPES | {"operation.restarted"}


class Notification(TypedDict):
    """A notification as clients receive it (the ``notification`` event, REST
    ``/api/inbox``, ``sync``)."""

    id: str  # the inbox stream id: orders a user's notifications
    user: str
    type: str  # operation.queued|started|progress|restarted|succeeded|failed|cancelled (see INBOX_TYPES)
    operation: str
    kind: str
    state: str
    step: int
    steps: int
    progress: float  # 0..1
    message: str
    ts: int  # milliseconds, when it was written
    # Stamps for the lab's timeline (milliseconds): when its publisher sent it
    # to the exchange (absent on a replay from the stream), when an instance
    # emitted it, and which instance did.
    published: NotRequired[int]
    emitted: NotRequired[int]
    instance: NotRequired[str]
    received: NotRequired[int]  # set by the Python client when it arrived


class BusNotification(Notification):
    """A notification on its way from a worker to the instances: it also
    carries ``prev``, the id before it in the stream, so an instance can tell
    it missed one (see server/feed.py)."""

    prev: str


def check_bus_notification(note: object) -> BusNotification:
    """``note`` as a bus notification, or ValueError saying what it lacks.

    A notification on the bus comes from another process: a worker of
    another version, a broken publisher. One without what the feed orders
    and stamps by (``id``, ``prev``, ``user``, ``ts``) is dropped at the
    instance's door rather than failing the batch it arrived in."""
    if not isinstance(note, dict):
        raise ValueError("it is not a JSON object")
    for name in ("id", "prev"):
        if parse_id(note.get(name)) is None:
            raise ValueError(f"{name} is not a stream id")
    user = note.get("user")
    if not isinstance(user, str) or not user:
        raise ValueError("user is missing")
    ts = note.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise ValueError("ts is not a number")
    return cast(BusNotification, note)


def to_client(note: BusNotification | Notification) -> Notification:
    """The notification as clients see it (without the internal ``prev``)."""
    return {k: v for k, v in note.items() if k != "prev"}  # type: ignore[return-value]


def is_inbox_item(note: Mapping[str, Any]) -> bool:
    """True if ``note`` is one a person is notified of: counted as unread and
    listed in the inbox (see ``INBOX_TYPES``)."""
    kind = note.get("type")
    if not isinstance(kind, str) or not kind:
        return False
    return kind in INBOX_TYPES or not kind.startswith(OPERATION_TYPE_PREFIX)


def is_live(record: Mapping[str, Any], live: Mapping[str, str | None]) -> bool:
    """Whether a socket's presence ``record`` (store/presence.py) belongs to
    a process that still beats: ``live`` maps each beating instance to the
    incarnation of the process behind it. Here, not in the store, because
    the lab's Redis view applies the same rule without importing the store."""
    instance = record.get("instance")
    return isinstance(instance, str) and instance in live and record.get("incarnation") == live[instance]


def user_room(user: str) -> str:
    """The Socket.IO room that holds every socket of ``user``, on every instance."""
    return f"user:{user}"
