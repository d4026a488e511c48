"""Connecting to Redis, or to the in-memory stand-in of the embedded mode."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..config import ConfigError, Settings, redact
from ..errors import ServiceUnavailable


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
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max(settings.redis_pool_size, settings.worker_concurrency + 8),
        timeout=settings.redis_pool_wait,
        decode_responses=True,
        socket_connect_timeout=5,
        health_check_interval=10,
    )
    client = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except (OSError, RedisError, TimeoutError) as exc:
        await client.aclose()
        raise ServiceUnavailable(
            f"cannot reach Redis at {redact(settings.redis_url)}: {exc or type(exc).__name__}"
        ) from None
    return client
