"""Helpers the tests share (imported by both conftest files and the tests)."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
import redis.asyncio as aioredis

from notifylab.config import Settings
from notifylab.lab import Lab
from notifylab.lab.cluster import remove_prefix

BROKER = Settings().broker_url
REDIS = Settings().redis_url
PASSWORD = "correct horse battery"

PREFIXES: list[str] = []  # every prefix this run made, removed at its end


def new_prefix() -> str:
    prefix = f"nltest{uuid.uuid4().hex[:10]}"
    PREFIXES.append(prefix)
    return prefix


def new_username() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


async def check_services() -> None:
    client = aioredis.from_url(REDIS)
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is not running at {REDIS} ({exc}); start it (see README)", pytrace=False)
    finally:
        await client.aclose()
    try:
        connection = await aio_pika.connect(BROKER, timeout=5)
        await connection.close()
    except Exception as exc:
        pytest.fail(f"RabbitMQ is not running at {BROKER} ({exc}); start it (see README)", pytrace=False)


async def remove(prefixes: list[str]) -> None:
    for prefix in prefixes:
        await remove_prefix(Settings(prefix=prefix))


def servers(lab: Lab) -> list[str]:
    return [p.url for p in lab.processes if p.url]
