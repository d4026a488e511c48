"""Connecting to Redis, or to the in-memory stand-in of the embedded mode.

``NOTIFYLAB_REDIS_URL`` is one Redis (``redis://``) or a primary found
through Sentinels (``redis+sentinel://``, see ``notifylab/redisurl.py``);
either way the client is the same to the rest of the store. Through
Sentinel, a connection that breaks (the primary died) or finds itself on a
demoted primary (READONLY) is closed, the command in flight raises
ConnectionError (never sent again: it may have run), and the next command
asks the Sentinels where the primary is now.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..config import ConfigError, Settings, redact
from ..errors import ServiceUnavailable
from ..redisurl import make_client

log = logging.getLogger(__name__)


async def connect_redis(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client for ``settings.redis_url``, checked with a PING.

    Raises :class:`ServiceUnavailable` with a one-line message naming the URL
    when Redis does not answer within five seconds.
    """
    if settings.memory:
        try:
            import fakeredis  # only the embedded mode needs it
        except ImportError:
            raise ConfigError(
                "the embedded mode (memory://) needs fakeredis: pip install 'notifylab[memory]'"
            ) from None

        return fakeredis.FakeAsyncRedis(decode_responses=True)
    # A blocking pool: when every connection is busy a caller waits for one
    # (bounded by redis_pool_wait) instead of failing with "Too many
    # connections", as redis-py's default pool does. Each running operation
    # holds at most one connection at a time, so a worker's pool covers its
    # concurrency plus the few its own bookkeeping needs.
    client = make_client(
        settings.redis_url,
        max_connections=max(settings.redis_pool_size, settings.worker_concurrency + 8),
        pool_timeout=settings.redis_pool_wait,
        decode_responses=True,
        socket_connect_timeout=5,
        health_check_interval=10,
    )
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except (OSError, RedisError, TimeoutError) as exc:
        await client.aclose()
        raise ServiceUnavailable(
            f"cannot reach Redis at {redact(settings.redis_url)}: {exc or type(exc).__name__}"
        ) from None
    await _check_replicas(client, settings)
    return client


async def _check_replicas(client: aioredis.Redis, settings: Settings) -> None:
    """Say so at start-up when writes are to be confirmed by more replicas
    than the primary has: every acknowledged write would be refused (503)."""
    wanted = settings.redis_wait_replicas
    if not wanted:
        return
    try:
        info = await client.info("replication")
    except RedisError:
        return  # not ours to fail the start on: the writes will say it
    connected = int(info.get("connected_slaves", 0))
    if connected < wanted:
        log.warning(
            "NOTIFYLAB_REDIS_WAIT_REPLICAS=%d, but the Redis primary has %d replica(s) connected: "
            "writes will be refused (503) until enough are",
            wanted,
            connected,
        )
