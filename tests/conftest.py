"""Fixtures shared by the tests: real RabbitMQ and Redis, real processes.

Every test run uses its own prefix for Redis keys and RabbitMQ names, so runs
never see each other's data, and removes what it made at the end. A missing
RabbitMQ or Redis is a failure, never a skip: the guarantees are about them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from notifylab.lab import Lab
from notifylab.lab.client import Client
from support import (
    CHAOS_ROWS,
    PASSWORD,
    PREFIXES,
    check_services,
    new_prefix,
    new_username,
    remove,
    two_instances_and_a_worker,
)


@pytest.fixture(scope="session")
async def services() -> AsyncIterator[None]:
    """RabbitMQ and Redis are up; everything the run made is removed after it."""
    await check_services()
    yield
    await remove(PREFIXES)


LabFactory = Callable[..., Awaitable[Lab]]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos suite's table: one row per fault tried under load."""
    if not CHAOS_ROWS:
        return
    columns = list(CHAOS_ROWS[0])
    widths = [max(len(c), *(len(str(row[c])) for row in CHAOS_ROWS)) for c in columns]
    terminalreporter.section("faults under load (tests/test_chaos.py)")
    for line in (columns, ["-" * w for w in widths], *([str(row[c]) for c in columns] for row in CHAOS_ROWS)):
        terminalreporter.write_line(
            " | ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True))
        )


@pytest.fixture
async def make_lab(services: None, tmp_path: Path) -> AsyncIterator[LabFactory]:
    """Make a :class:`Lab` with a fresh prefix; all its processes stop after the test."""
    labs: list[Lab] = []

    async def make(servers: int = 2, workers: int = 1, **env: str) -> Lab:
        lab = Lab(
            {"NOTIFYLAB_PREFIX": new_prefix(), "NOTIFYLAB_LOG_LEVEL": "INFO", **env},
            log_dir=tmp_path / f"lab{len(labs)}",
        )
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
    async with two_instances_and_a_worker(tmp_path_factory.mktemp("stack")) as lab:
        yield lab


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
