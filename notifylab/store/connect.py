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
    client = aioredis.from_url(
        settings.redis_url, decode_responses=True, socket_connect_timeout=5, health_check_interval=10
    )
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except (OSError, RedisError, TimeoutError) as exc:
        await client.aclose()
        raise ServiceUnavailable(
            f"cannot reach Redis at {redact(settings.redis_url)}: {exc or type(exc).__name__}"
        ) from None
    return client
