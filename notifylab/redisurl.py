"""Where Redis is: one server, or a primary that Sentinels watch.

``NOTIFYLAB_REDIS_URL`` takes either shape:

- ``redis://[[user]:password@]host:port/db`` (and ``rediss://``, ``unix://``):
  one Redis, handed to redis-py exactly as it was before Sentinel support;
- ``redis+sentinel://[[user]:password@]host:port,host:port,.../service/db``:
  ask these Sentinels which server is the primary of ``service`` now, and
  ask again whenever it goes away (redis-py's ``Sentinel.master_for``). The
  password is the Redis servers'; the Sentinels are asked without one.

Why one URL rather than a second setting (``NOTIFYLAB_REDIS_SENTINELS``):
"where is Redis" stays one value whatever the topology, so everything that
already passes a Redis URL around (the lab's ``Lab`` env, ``RedisView``,
``remove_prefix``, the benchmarks, docker-compose) works with Sentinel
without a new argument, and there is no way to set both and wonder which
one wins.

Both the store (``store/connect.py``) and the kernel side (``lab/``) build
their clients through :func:`make_client`: this module imports nothing of
notifylab's but ``config``, so the lab still imports neither the server nor
the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from .config import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379  # Sentinel's own default port, when an address gives none
SENTINEL_TIMEOUT = 2.0  # seconds for one question to one Sentinel: a dead one must not hold us up


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://`` URL, taken apart."""

    sentinels: tuple[tuple[str, int], ...]  # (host, port) of each Sentinel
    service: str  # the name the Sentinels monitor the primary under
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` URL."""
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Take a ``redis+sentinel://`` URL apart; :class:`ConfigError` says what
    is wrong with a malformed one (and never shows its password)."""
    if not is_sentinel_url(url):
        raise ConfigError(f"not a {SENTINEL_SCHEME}:// URL")
    rest = url[len(SENTINEL_SCHEME) + 3 :]
    rest = rest.split("?", 1)[0].split("#", 1)[0]  # no options are defined: ignore a query
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = tuple(_address(part) for part in netloc.split(","))
    service, _, db_text = path.strip("/").partition("/")
    if not service:
        raise ConfigError(
            f"{SENTINEL_SCHEME}:// needs the service name the Sentinels monitor: "
            f"{SENTINEL_SCHEME}://host:port,host:port/<service>/<db>"
        )
    try:
        db = int(db_text or 0)
    except ValueError:
        raise ConfigError(f"{SENTINEL_SCHEME}:// database must be a number, not {db_text!r}") from None
    return SentinelTarget(sentinels, unquote(service), db, username, password)


def _address(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:26379
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ConfigError(f"{SENTINEL_SCHEME}:// needs host:port for every Sentinel, got {text!r}")
    try:
        number = int(port) if port else SENTINEL_PORT
    except ValueError:
        raise ConfigError(f"{SENTINEL_SCHEME}:// Sentinel port must be a number, got {text!r}") from None
    if not 0 < number < 65536:
        raise ConfigError(f"{SENTINEL_SCHEME}:// Sentinel port out of range in {text!r}")
    return host, number


class Sentinels(Sentinel):
    """redis-py's Sentinel client, with a one-line error when no Sentinel
    names a primary (redis-py's own message quotes the repr of every
    Sentinel client: 2 KB in each log line while a failover is under way)."""

    async def discover_master(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError:
            asked = ", ".join(
                f"{s.connection_pool.connection_kwargs['host']}:{s.connection_pool.connection_kwargs['port']}"
                for s in self.sentinels
            )
            raise MasterNotFoundError(
                f"no Sentinel ({asked}) names a primary for {service_name!r} now: "
                "they are down, or a failover is under way"
            ) from None


class SentinelRedis(aioredis.Redis):
    """The client of a Sentinel-watched primary. Closing it also closes its
    connections to the Sentinels (redis-py leaves those open)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        try:
            await super().aclose(close_connection_pool)
        finally:
            if isinstance(pool, SentinelConnectionPool):
                await pool.sentinel_manager.aclose()


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to whichever server the Sentinels name as the primary,
    with the blocking pool's manners: a caller waits for a free connection
    (up to ``timeout``) rather than failing with "Too many connections"."""


def make_client(
    url: str,
    *,
    max_connections: int | None = None,
    pool_timeout: float | None = None,
    **options: Any,
) -> aioredis.Redis:
    """A redis-py asyncio client for ``url``, either shape (see the module).

    ``options`` go to every connection (``decode_responses``,
    ``socket_timeout``, ...). With ``pool_timeout``, the pool is a blocking
    one of ``max_connections``; without, redis-py's default pool. Nothing is
    connected yet: the first command connects (and, through Sentinel, first
    asks who the primary is).

    Commands are never retried here (redis-py's default): a script whose
    connection broke may have run, and sending it again would append twice.
    """
    if not is_sentinel_url(url):
        if pool_timeout is None:
            if max_connections is not None:
                options["max_connections"] = max_connections
            return aioredis.from_url(url, **options)
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections or 50, timeout=pool_timeout, **options
        )
        return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
    target = parse_sentinel_url(url)
    # Bounded questions to the Sentinels, whatever the data connections use,
    # and no retries: a client of its own would retry a refused connection
    # ten times (about 3 s) before the next Sentinel is asked.
    sentinel_options = {
        "socket_connect_timeout": options.get("socket_connect_timeout") or SENTINEL_TIMEOUT,
        "socket_timeout": SENTINEL_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinel = Sentinels(list(target.sentinels), sentinel_kwargs=sentinel_options)
    pool_options: dict[str, Any] = {}  # the pool classes' own defaults otherwise, as for redis://
    if max_connections is not None:
        pool_options["max_connections"] = max_connections
    if pool_timeout is not None:
        pool_options["timeout"] = pool_timeout
    return sentinel.master_for(
        target.service,
        redis_class=SentinelRedis,
        connection_pool_class=BlockingSentinelPool if pool_timeout is not None else SentinelConnectionPool,
        db=target.db,
        username=target.username,
        password=target.password,
        **pool_options,
        **options,
    )


__all__ = [
    "SentinelRedis",
    "SentinelTarget",
    "is_sentinel_url",
    "make_client",
    "parse_sentinel_url",
]
