"""Login sessions: a random token in a cookie, a record in Redis.

The cookie holds a 256-bit random token. Redis never sees the token itself:
the session's id is an HMAC of it under ``settings.secret``, so a copy of
Redis holds no usable session, and the id can be shown and used to revoke a
session without exposing the token. Expiry slides: each use pushes it back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from ..config import Settings
from ..ids import now_ms

if TYPE_CHECKING:
    from .presence import Presence

TOUCH_EVERY_MS = 30_000  # refresh last_seen/expiry at most this often per session


@dataclass
class Session:
    id: str
    user: str
    device: str
    created: int
    last_seen: int

    def as_dict(self) -> dict:
        return asdict(self)


class Sessions:
    """Session records: ``<prefix>:session:<id>`` (hash, expiring) and the
    set of a user's session ids, ``<prefix>:user-sessions:<user>``."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings

    def session_id(self, token: str) -> str:
        return hmac.new(self.settings.secret.encode(), token.encode(), hashlib.sha256).hexdigest()[:32]

    def _key(self, session_id: str) -> str:
        return self.settings.key("session", session_id)

    def _user_key(self, user: str) -> str:
        return self.settings.key("user-sessions", user)

    async def create(self, user: str, device: str) -> tuple[str, Session]:
        """Start a session for ``user``; returns (cookie token, record)."""
        token = secrets.token_urlsafe(32)
        now = now_ms()
        session = Session(self.session_id(token), user, device[:200] or "unknown", now, now)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(session.id), mapping=asdict(session))
            pipe.expire(self._key(session.id), self.settings.session_ttl)
            pipe.sadd(self._user_key(user), session.id)
            await pipe.execute()
        return token, session

    async def get(self, session_id: str) -> Session | None:
        return _session(await self.redis.hgetall(self._key(session_id)))

    async def resolve(self, token: object) -> Session | None:
        """The live session behind a cookie token, its expiry slid forward;
        None for a missing, forged, expired or revoked token."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            return None
        session = await self.get(self.session_id(token))
        if session is None:
            return None
        now = now_ms()
        if now - session.last_seen > TOUCH_EVERY_MS:
            session.last_seen = now
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(session.id), "last_seen", now)
                pipe.expire(self._key(session.id), self.settings.session_ttl)
                await pipe.execute()
        return session

    async def resolve_socket(
        self, token: object, presence: Presence, sid: str, transport: str
    ) -> Session | None:
        """:meth:`resolve` for a socket's connect, recording the socket in
        ``presence`` in the same transaction (one round trip): the session id
        is computed here from the token, so the lookup need not come first.
        A missing session's socket entry is removed again before returning
        None, so a refused socket leaves no presence record."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            return None
        session_id = self.session_id(token)
        key = self._key(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            # Slides the expiry, and does nothing to a key that is gone (unlike an HSET).
            pipe.expire(key, self.settings.session_ttl)
            presence.queue_add_socket(pipe, session_id, sid, transport)
            data = (await pipe.execute())[0]
        session = _session(data)
        if session is None:
            await presence.remove_socket(session_id, sid)
            return None
        now = now_ms()
        if now - session.last_seen > TOUCH_EVERY_MS:  # at most once in TOUCH_EVERY_MS per session
            session.last_seen = now
            await self.redis.hset(key, "last_seen", now)
        return session

    async def alive(self, session_ids: Collection[str]) -> set[str]:
        """Which of ``session_ids`` still exist (an expired or deleted one does
        not), in one round trip however many there are."""
        ids = list(session_ids)
        if not ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                # The field, not the key: resolve() sliding the expiry of a
                # session that expired in between leaves a hash of last_seen
                # alone, which get() does not count as a session either.
                pipe.hexists(self._key(session_id), "user")
            found = await pipe.execute()
        return {session_id for session_id, there in zip(ids, found, strict=True) if there}

    async def of_user(self, user: str) -> list[Session]:
        """The user's live sessions, oldest first; expired ids are pruned."""
        ids = await self.redis.smembers(self._user_key(user))
        sessions = []
        for session_id in ids:
            session = await self.get(session_id)
            if session is None:
                await self.redis.srem(self._user_key(user), session_id)
            else:
                sessions.append(session)
        return sorted(sessions, key=lambda s: s.created)

    async def delete(self, session: Session) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(session.id))
            pipe.srem(self._user_key(session.user), session.id)
            await pipe.execute()


def _session(data: dict) -> Session | None:
    """A session from its hash; None for a missing one (or a hash left with
    last_seen alone, see :meth:`Sessions.alive`)."""
    if not data or "user" not in data:
        return None
    return Session(data["id"], data["user"], data["device"], int(data["created"]), int(data["last_seen"]))
