"""Failed-login throttling, kept in Redis so that it holds across instances.

Failures are counted per username and per client address. Once a counter
reaches its limit, the next attempts are refused (429 with ``Retry-After``)
*before* any password is checked, for a lockout that doubles with each
further failure, up to a cap. A failure after a lockout has ended therefore
locks again, for twice as long; a counter is forgotten after
``WINDOW_SECONDS`` without failures, and a successful login resets its
username's counter (never its address's: an attacker could otherwise mix
logins to an account of their own into a guessing run).

An address gets ``ADDRESS_FACTOR`` times the username's allowance: many
people may share one address (a NAT, an office), and the address counter is
there to slow one source spraying many usernames, not to lock a whole office
out after a few typos.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from ..config import Settings
from ..errors import TooManyRequests

LOCKOUT_BASE_SECONDS = 1.0  # the first lockout; each further failure doubles it
LOCKOUT_CAP_SECONDS = 600.0
WINDOW_SECONDS = 900  # a counter is forgotten this long after its last failure (> the cap)
ADDRESS_FACTOR = 4


def lockout_seconds(failures: int, limit: int) -> float:
    """How long to refuse attempts after ``failures`` failures, 0 below ``limit``."""
    if failures < limit:
        return 0.0
    # min() on the exponent first: 2 ** a few thousand would overflow a float.
    return min(LOCKOUT_BASE_SECONDS * 2.0 ** min(failures - limit, 64), LOCKOUT_CAP_SECONDS)


class LoginThrottle:
    """``<prefix>:login-failures:<user|addr>:<id>`` counts failures;
    ``<prefix>:login-lock:<user|addr>:<id>`` exists while attempts are refused."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings

    def _subjects(self, user: str | None, address: str | None) -> list[tuple[str, str, int]]:
        limit = self.settings.login_attempts
        subjects = []
        if user:
            subjects.append(("user", user, limit))
        if address:
            subjects.append(("addr", address, limit * ADDRESS_FACTOR))
        return subjects

    def _count_key(self, kind: str, ident: str) -> str:
        return self.settings.key("login-failures", kind, ident)

    def _lock_key(self, kind: str, ident: str) -> str:
        return self.settings.key("login-lock", kind, ident)

    async def check(self, user: str | None, address: str | None) -> None:
        """Raise TooManyRequests (with ``retry_after``) while either is locked out."""
        subjects = self._subjects(user, address)
        if not subjects:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind, ident, _ in subjects:
                pipe.pttl(self._lock_key(kind, ident))
            remaining = await pipe.execute()
        # PTTL is -2 for a missing key (and -1 for one without expiry, which we never make).
        locked = [(ms, kind) for ms, (kind, _, _) in zip(remaining, subjects, strict=True) if ms > 0]
        if locked:
            ms, kind = max(locked)
            who = "this username" if kind == "user" else "your address"
            raise TooManyRequests(
                f"too many failed logins for {who}: retry later",
                retry_after=max(1, math.ceil(ms / 1000)),
            )

    async def failed(self, user: str | None, address: str | None) -> None:
        """Count a failure for each; lock out those at or past their limit."""
        subjects = self._subjects(user, address)
        if not subjects:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for kind, ident, _ in subjects:
                pipe.incr(self._count_key(kind, ident))
                pipe.expire(self._count_key(kind, ident), WINDOW_SECONDS)
            counts = (await pipe.execute())[::2]
        async with self.redis.pipeline(transaction=False) as pipe:
            for count, (kind, ident, limit) in zip(counts, subjects, strict=True):
                wait_ms = int(lockout_seconds(count, limit) * 1000)
                if wait_ms:
                    # Two failures at once may compute two waits: NX then GT keeps
                    # the longer one whichever lands first.
                    pipe.set(self._lock_key(kind, ident), count, px=wait_ms, nx=True)
                    pipe.pexpire(self._lock_key(kind, ident), wait_ms, gt=True)
            await pipe.execute()

    async def succeeded(self, user: str) -> None:
        """A correct password: forget the username's failures."""
        await self.redis.delete(self._count_key("user", user), self._lock_key("user", user))
