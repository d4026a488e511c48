"""Fixtures shared by the tests: real RabbitMQ and Redis, real processes.

Every test run uses its own prefix for Redis keys and RabbitMQ names, so runs
never see each other's data, and removes what it made at the end. A missing
RabbitMQ or Redis is a failure, never a skip: the guarantees are about them.
"""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
import redis.asyncio as aioredis

from notifylab.client import Client
from notifylab.config import Settings
from notifylab.lab import Lab

BROKER = Settings().broker_url
REDIS = Settings().redis_url
PASSWORD = "correct horse battery"

_prefixes: list[str] = []


def new_prefix() -> str:
    prefix = f"nltest{uuid.uuid4().hex[:10]}"
    _prefixes.append(prefix)
    return prefix


def new_username() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


async def _check_services() -> None:
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


async def _remove(prefixes: list[str]) -> None:
    client = aioredis.from_url(REDIS)
    try:
        for prefix in prefixes:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()
    connection = await aio_pika.connect(BROKER)
    async with connection:
        for prefix in prefixes:
            for queue in (f"{prefix}.jobs", f"{prefix}.jobs.dead"):
                channel = await connection.channel()
                await channel.queue_delete(queue)
            for exchange in (f"{prefix}.events", f"{prefix}.fanout"):
                channel = await connection.channel()
                await channel.exchange_delete(exchange)


@pytest.fixture(scope="session")
async def services() -> AsyncIterator[None]:
    """RabbitMQ and Redis are up; everything the run made is removed after it."""
    await _check_services()
    yield
    await _remove(_prefixes)


LabFactory = Callable[..., Awaitable[Lab]]


@pytest.fixture
async def make_lab(services: None, tmp_path: Path) -> AsyncIterator[LabFactory]:
    """Make a :class:`Lab` with a fresh prefix; all its processes stop after the test."""
    labs: list[Lab] = []

    async def make(servers: int = 2, workers: int = 1, **env: str) -> Lab:
        lab = Lab({"NOTIFYLAB_PREFIX": new_prefix(), "NOTIFYLAB_LOG_LEVEL": "INFO", **env},
                  log_dir=tmp_path / f"lab{len(labs)}")
        labs.append(lab)
        for i in range(servers):
            await lab.start_server(instance_id="ab"[i] if i < 2 else None)
        for _ in range(workers):
            await lab.start_worker()
        return lab

    yield make
    await asyncio.gather(*(lab.stop_all() for lab in labs))


@pytest.fixture(scope="module")
async def stack(services: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """Two server instances (a, b) and one worker, shared by a test module."""
    lab = Lab({"NOTIFYLAB_PREFIX": new_prefix(), "NOTIFYLAB_LOG_LEVEL": "INFO"},
              log_dir=tmp_path_factory.mktemp("stack"))
    async with lab:
        await lab.start_server(instance_id="a")
        await lab.start_server(instance_id="b")
        await lab.start_worker()
        yield lab


def servers(lab: Lab) -> list[str]:
    return [p.url for p in lab.processes if p.url]


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Make logged-in clients (a new user, or another session of one); all
    are closed after the test."""
    made: list[Client] = []

    async def make(url: str, user: str | None = None, connect: bool = True) -> Client:
        client = Client(url)
        made.append(client)
        if user is None:
            await client.register(new_username(), PASSWORD)
        else:
            await client.login(user, PASSWORD)
        if connect:
            await client.connect()
            await client.wait_for(lambda: client.hello is not None, 10)
        return client

    yield make
    await asyncio.gather(*(c.close() for c in made), return_exceptions=True)
