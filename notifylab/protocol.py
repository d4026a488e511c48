"""What servers and clients agree on: the cookie, the rooms, the shape of a
notification. Defined once here, used by the server, the worker and the
Python client alike; no dependencies, so the kernel side can import it.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

COOKIE = "notifylab_session"  # the browser's session cookie (HttpOnly)

# Notification types an operation goes through (see store/operations.py).
TERMINAL_TYPES = frozenset({"operation.succeeded", "operation.failed", "operation.cancelled"})


class Notification(TypedDict):
    """A notification as clients receive it (the ``notification`` event, REST
    ``/api/inbox``, ``sync``)."""

    id: str  # the inbox stream id: orders a user's notifications
    user: str
    type: str  # operation.queued|started|progress|restarted|succeeded|failed|cancelled
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


def to_client(note: BusNotification | Notification) -> Notification:
    """The notification as clients see it (without the internal ``prev``)."""
    return {k: v for k, v in note.items() if k != "prev"}  # type: ignore[return-value]


def user_room(user: str) -> str:
    """The Socket.IO room that holds every socket of ``user``, on every instance."""
    return f"user:{user}"
