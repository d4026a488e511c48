"""Restarting RabbitMQ or Redis in the middle of an operation loses nothing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from notifylab.ids import id_after
from support import PrivateRedis, private_redis, servers

STEPS = 16


async def run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode == 0, f"{command}: {err.decode()}"


def assert_complete(client, op_id: str) -> None:
    notes = client.of_operation(op_id)
    assert notes[-1]["type"] == "operation.succeeded"
    steps = [n["step"] for n in notes if n["type"] == "operation.progress"]
    assert steps == list(range(1, STEPS + 1))  # every step once, in order
    ids = [n["id"] for n in client.notifications]
    assert all(id_after(b, a) for a, b in itertools.pairwise(ids))
    assert client.duplicates == 0


async def both_see_it_through(first, second, op_id: str) -> None:
    await first.wait_operation(op_id, 90)
    await second.wait_operation(op_id, 90)
    for client in (first, second):
        assert_complete(client, op_id)
    assert [n["id"] for n in first.notifications] == [n["id"] for n in second.notifications]


async def test_restarting_rabbitmq_mid_operation_loses_nothing(make_lab, clients):
    lab = await make_lab()
    url_a, url_b = servers(lab)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    op = await first.start("train", steps=STEPS, step_seconds=0.25)
    await second.wait_for(lambda: len(second.of_operation(op["id"])) >= 4)

    await run("rabbitmqctl", "stop_app")  # every connection drops; non-durable queues go
    await asyncio.sleep(1)
    await run("rabbitmqctl", "start_app")
    await run("rabbitmqctl", "await_startup")

    await both_see_it_through(first, second, op["id"])


@pytest.fixture
async def lasting_redis() -> AsyncIterator[PrivateRedis]:
    """A Redis of the test's own that keeps its data on disk (append-only
    file), so it can be killed and brought back like a production one."""
    async with private_redis(keep_data=True) as redis:
        yield redis


async def test_restarting_redis_mid_operation_loses_nothing(make_lab, clients, lasting_redis):
    lab = await make_lab(NOTIFYLAB_REDIS_URL=lasting_redis.url)
    url_a, url_b = servers(lab)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    op = await first.start("train", steps=STEPS, step_seconds=0.25)
    await second.wait_for(lambda: len(second.of_operation(op["id"])) >= 4)

    await lasting_redis.kill()  # the worker's next step cannot be recorded: its job comes back
    await asyncio.sleep(1.5)
    await lasting_redis.start()

    await both_see_it_through(first, second, op["id"])
