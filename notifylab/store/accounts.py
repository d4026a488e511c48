"""User accounts: registration and password checks.

Passwords are hashed with Argon2id (argon2-cffi). Hashing is deliberately slow
and CPU-bound, so it runs in a thread: the event loop keeps serving sockets
while a login is checked.
"""

from __future__ import annotations

import asyncio
import re
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from redis.asyncio import Redis

from ..config import Settings
from ..errors import BadRequest, Conflict, Unauthorized

USERNAME = re.compile(r"^[a-z0-9_-]{3,32}$")  # no dots: it becomes a routing key
PASSWORD_MIN, PASSWORD_MAX = 8, 128

_hasher = PasswordHasher()
# Verifying against this keeps a login for an unknown user as slow as a wrong
# password, so response times do not reveal which usernames exist.
# It is a constant, not hashed at import: hashing takes ~50 ms of CPU that
# every process start (and every test) would pay. Its parameters are those
# of PasswordHasher() today; a test checks they still match.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$203P/xxlEsmceghPrWihZQ$qc9KNAMVa11roMfqmdhyVsT+pdtCPhpDLwrx/VNWbkE"
)


def check_credentials(username: object, password: object) -> tuple[str, str]:
    """Validate the shape of a username and password; raise BadRequest if off."""
    if not isinstance(username, str) or not USERNAME.match(username):
        raise BadRequest("username must be 3-32 characters: a-z, 0-9, '_' or '-'", "username")
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise BadRequest(f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters", "password")
    return username, password


class Accounts:
    """Accounts in Redis: ``<prefix>:user:<name>`` is a hash with the
    Argon2 hash of the password and the creation time."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings

    def _key(self, username: str) -> str:
        return self.settings.key("user", username)

    async def register(self, username: object, password: object) -> str:
        """Create an account; raise Conflict if the name is taken."""
        username, password = check_credentials(username, password)
        hashed = await asyncio.to_thread(_hasher.hash, password)
        # HSETNX on the hash field makes "create if absent" atomic across instances.
        created = await self.redis.hsetnx(self._key(username), "password", hashed)
        if not created:
            raise Conflict(f"the username {username!r} is taken", "username")
        await self.redis.hset(self._key(username), "created", int(time.time() * 1000))
        return username

    async def authenticate(self, username: object, password: object) -> str:
        """Return the username if the password matches; else raise Unauthorized."""
        if not isinstance(username, str) or not isinstance(password, str) or len(password) > PASSWORD_MAX:
            raise Unauthorized("wrong username or password")
        stored = await self.redis.hget(self._key(username), "password") if USERNAME.match(username) else None
        try:
            await asyncio.to_thread(_hasher.verify, stored or _DUMMY_HASH, password)
        except (VerifyMismatchError, InvalidHashError):
            raise Unauthorized("wrong username or password") from None
        if stored is None:
            raise Unauthorized("wrong username or password")
        return username
