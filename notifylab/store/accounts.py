"""User accounts: registration and password checks.

Passwords are hashed with Argon2id (argon2-cffi). Hashing is deliberately slow
and CPU-bound, so it runs in a thread: the event loop keeps serving sockets
while a login is checked. At most ``settings.hash_concurrency`` hashes run at
once per instance, and at most ``MAX_HASH_WAITING`` more wait for a turn:
beyond that a login or registration is answered 503 at once, so a flood of
logins costs a bounded queue instead of every thread and minutes of delay.

Account enumeration, decided: **registration says that a name is taken**
(409). Usernames here are public handles (they name rooms and appear to other
sessions), there is no e-mail channel through which "check your inbox" could
hide the answer, and a person picking a name must learn that it is taken.
What keeps that from becoming a cheap oracle: a taken name counts as a failed
attempt of the client's address in the login throttle (``throttle.py``), so a
source probing names is slowed down and then locked out like one guessing
passwords; and the check costs no Argon2 work. Login does not reveal names:
an unknown user is refused with the same message, after the same Argon2 work
against a dummy hash, and is throttled like a known one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import TypeGuard, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from ..config import Settings
from ..errors import BadRequest, Conflict, ServiceUnavailable, Unauthorized
from .throttle import LoginThrottle

USERNAME = re.compile(r"[a-z0-9_-]{3,32}")  # always fullmatch(); no dots: it becomes a routing key
PASSWORD_MIN, PASSWORD_MAX = 8, 128
MAX_HASH_WAITING = 20  # logins/registrations queued for an Argon2 turn before 503

# The most common passwords of at least PASSWORD_MIN characters (from the
# public breach top lists), compared lower-cased. Short on purpose: it stops
# the first guesses of any attacker, not a dictionary.
COMMON_PASSWORDS = frozenset(
    """
    12345678 123456789 1234567890 12345678910 0123456789 87654321 98765432 11111111 00000000
    11223344 12341234 12121212 123123123 1234qwer 1q2w3e4r 1q2w3e4r5t 1qaz2wsx 1qazxsw2 zaq12wsx
    password password1 password12 password123 passw0rd p@ssw0rd p@ssword qwertyui qwertyuiop
    qwerty12 qwerty123 qwerty1234 asdfghjk asdfghjkl zxcvbnm1 zxcvbnm123 abc12345 abcd1234
    abcdefgh iloveyou iloveyou1 letmein1 letmein123 welcome1 welcome123 sunshine princess
    football baseball basketball superman starwars trustno1 whatever computer internet
    changeme admin123 administrator monkey123 dragon123 michael1 jennifer charlie1 shadow12
    master12 freedom1 liverpool chelsea1 secret123 test1234 testtest notifylab
    """.split()
)

_hasher = PasswordHasher()
# Verifying against this keeps a login for an unknown user as slow as a wrong
# password, so response times do not reveal which usernames exist.
# It is a constant, not hashed at import: hashing takes ~50 ms of CPU that
# every process start (and every test) would pay. Its parameters are those
# of PasswordHasher() today; a test checks they still match.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$203P/xxlEsmceghPrWihZQ$qc9KNAMVa11roMfqmdhyVsT+pdtCPhpDLwrx/VNWbkE"
)

T = TypeVar("T")


def is_username(text: object) -> TypeGuard[str]:
    """True if ``text`` is a well-formed username (the whole string: no trailing newline)."""
    return isinstance(text, str) and USERNAME.fullmatch(text) is not None


def _encodable(text: str) -> bool:
    # JSON may carry lone surrogates ("\ud800"); Argon2 hashes UTF-8 bytes.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_credentials(username: object, password: object) -> tuple[str, str]:
    """Validate a new account's username and password; raise BadRequest if off."""
    if not is_username(username):
        raise BadRequest("username must be 3-32 characters: a-z, 0-9, '_' or '-'", "username")
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise BadRequest(f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters", "password")
    if not _encodable(password):
        raise BadRequest("password must be valid Unicode text", "password")
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or len(set(lowered)) == 1:
        raise BadRequest("password is one of the most common ones: choose another", "password")
    if username in lowered:
        raise BadRequest("password must not contain the username", "password")
    return username, password


class Accounts:
    """Accounts in Redis: ``<prefix>:user:<name>`` is a hash with the
    Argon2 hash of the password and the creation time."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.throttle = LoginThrottle(redis, settings)
        self._hashing = asyncio.Semaphore(settings.hash_concurrency)
        self._waiting = 0

    def key(self, username: str) -> str:
        """The account's record (a hash); it exists while the account does."""
        return self.settings.key("user", username)

    async def _hash_work(self, work: Callable[..., T], *args: object) -> T:
        """Run Argon2 ``work`` in a thread, at most ``hash_concurrency`` at once;
        ServiceUnavailable when too many already wait for a turn."""
        if self._waiting >= MAX_HASH_WAITING:
            raise ServiceUnavailable("busy: too many logins at once, retry in a moment")
        self._waiting += 1
        try:
            await self._hashing.acquire()
        finally:
            self._waiting -= 1
        # The thread cannot be stopped: if the request is cancelled meanwhile,
        # the slot is freed only when the hash is really done.
        done = asyncio.ensure_future(asyncio.to_thread(work, *args))
        done.add_done_callback(self._release)
        return await asyncio.shield(done)

    def _release(self, done: asyncio.Future) -> None:
        self._hashing.release()
        if not done.cancelled():
            done.exception()  # retrieved, so an abandoned failure is not logged as "never retrieved"

    async def register(self, username: object, password: object, address: str | None = None) -> str:
        """Create an account; raise Conflict if the name is taken (see the
        module's note on enumeration), TooManyRequests while ``address`` is
        locked out."""
        username, password = check_credentials(username, password)
        await self.throttle.check(None, address)
        if await self.redis.exists(self.key(username)):
            await self.throttle.failed(None, address)
            raise Conflict(f"the username {username!r} is taken", "username")
        hashed = await self._hash_work(_hasher.hash, password)
        # HSETNX on the hash field makes "create if absent" atomic across instances.
        created = await self.redis.hsetnx(self.key(username), "password", hashed)
        if not created:
            await self.throttle.failed(None, address)
            raise Conflict(f"the username {username!r} is taken", "username")
        await self.redis.hset(self.key(username), "created", int(time.time() * 1000))
        return username

    async def authenticate(self, username: object, password: object, address: str | None = None) -> str:
        """Return the username if the password matches; else raise
        Unauthorized. While the username or ``address`` is locked out after
        failures, raise TooManyRequests without checking the password."""
        if not isinstance(username, str) or not isinstance(password, str) or len(password) > PASSWORD_MAX:
            raise Unauthorized("wrong username or password")
        if not _encodable(password):
            raise BadRequest("password must be valid Unicode text", "password")
        user = username if is_username(username) else None
        await self.throttle.check(user, address)
        stored = await self.redis.hget(self.key(user), "password") if user else None
        try:
            await self._hash_work(_hasher.verify, stored or _DUMMY_HASH, password)
            matched = user is not None and stored is not None
        except (VerificationError, InvalidHashError):
            matched = False
        if not matched or user is None:
            await self.throttle.failed(user, address)
            raise Unauthorized("wrong username or password")
        await self.throttle.succeeded(user)
        return user
