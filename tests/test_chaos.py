"""The chaos suite (issue 15): each fault done *under load*, judged from the
streams.

The load: users with a session on each of instances a and b, each user
running a long operation (a notification every STEP_SECONDS), so that the
system carries a few hundred notifications a second when the fault comes.
Then every operation must end (succeeded, perhaps after a restart), and
every session must hold every notification of its user's stream once, in
order (``lab.verdict``). Each test adds a row to the table printed at the
end of the run: what was done, the load held, lost / duplicated / reordered,
and how long delivery paused (the longest silence any session saw).

``make test`` runs it at CI's size; ``make chaos`` at NOTIFYLAB_CHAOS_SIZE=full,
with the other fault tests (slow client, abuse, restarts when idle).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from notifylab.lab import Lab
from notifylab.lab.client import Client
from notifylab.lab.verdict import verdict
from support import PrivateRedis, add_chaos_row, longest_silence, private_redis, users_running_operations

pytestmark = pytest.mark.chaos

SIZES = {"ci": 8, "full": 24}  # users, each with two sessions and an operation running
USERS = SIZES[os.environ.get("NOTIFYLAB_CHAOS_SIZE", "ci")]
STEP_SECONDS = 0.04  # a notification every 40 ms per user: 8 users make 200 a second
STEPS = 100  # 4 s of steps (the most an operation has): the fault lands early in them


@dataclass
class Load:
    """The users' sessions and the operation each is running."""

    pairs: list[tuple[Client, Client]]
    operations: list[str]

    @property
    def rate(self) -> float:
        return len(self.pairs) / STEP_SECONDS

    async def finish(self, fault: str, done: str, over_at: float) -> None:
        """Wait for every operation, judge every session, and add the row.
        ``over_at`` (``time.time()``): when the fault was undone."""
        finals = [
            await first.wait_operation(op_id, 120)
            for (first, _), op_id in zip(self.pairs, self.operations, strict=True)
        ]
        sessions = [client for pair in self.pairs for client in pair]
        judged = await verdict(*sessions, timeout=30)
        restarted = sum(
            any(n["type"] == "operation.restarted" for n in first.of_operation(op_id))
            for (first, _), op_id in zip(self.pairs, self.operations, strict=True)
        )
        pause = max(longest_silence(client) for client in sessions)
        resumed = max(_resumed_after(client, over_at) for client in sessions)
        add_chaos_row(fault, done, self.rate, judged, finals, restarted, pause, resumed)
        judged.assert_clean()
        assert all(f["type"] == "operation.succeeded" for f in finals), [f["type"] for f in finals]


def _resumed_after(client: Client, over_at: float) -> float:
    """How long after ``over_at`` this session received its next notification."""
    after = [n["received"] for n in client.notifications if n.get("received", 0) >= over_at * 1000]
    return (min(after) / 1000 - over_at) if after else float("inf")


async def load(lab: Lab, clients: Callable[..., Awaitable[Client]]) -> Load:
    return Load(*await users_running_operations(lab, clients, USERS, STEPS, STEP_SECONDS))


async def run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode == 0, f"{command}: {err.decode()}"


def lab_env() -> dict[str, str]:
    # Every operation runs at once: the worker's default of 2 would queue the rest.
    return {"NOTIFYLAB_WORKER_CONCURRENCY": str(USERS), "NOTIFYLAB_MAX_ACTIVE_OPERATIONS": "5"}


async def test_rabbitmq_restarted_under_load(make_lab, clients):
    lab = await make_lab(**lab_env())
    running = await load(lab, clients)
    await run("rabbitmqctl", "stop_app")  # every connection drops; the instances' queues go
    await asyncio.sleep(1)
    await run("rabbitmqctl", "start_app")
    await run("rabbitmqctl", "await_startup")
    await running.finish("RabbitMQ restarted", "rabbitmqctl stop_app, 1 s, start_app", time.time())


@pytest.fixture
async def lasting_redis() -> AsyncIterator[PrivateRedis]:
    """A Redis of the test's own that keeps its data (append-only file)."""
    async with private_redis(keep_data=True) as redis:
        yield redis


async def test_redis_restarted_under_load(make_lab, clients, lasting_redis):
    lab = await make_lab(NOTIFYLAB_REDIS_URL=lasting_redis.url, **lab_env())
    running = await load(lab, clients)
    await lasting_redis.kill()  # steps cannot be recorded: the worker's jobs come back
    await asyncio.sleep(1.5)
    await lasting_redis.start()
    await running.finish("Redis restarted", "SIGKILL, 1.5 s, start (append-only file)", time.time())


async def test_an_instance_killed_and_restarted_under_load(make_lab, clients):
    lab = await make_lab(**lab_env())
    running = await load(lab, clients)
    await lab.processes[0].kill()  # a's sessions lose their sockets, with no goodbye
    await lab.processes[0].start()  # back under the same id and port; they reconnect
    await running.finish("an instance SIGKILLed", "SIGKILL a, start a again", time.time())


async def test_the_worker_killed_and_restarted_under_load(make_lab, clients):
    lab = await make_lab(**lab_env())
    running = await load(lab, clients)
    worker = lab.processes[2]
    await worker.kill()  # its jobs are unacked: RabbitMQ gives them to the next worker
    await worker.start()
    await running.finish("the worker SIGKILLed", "SIGKILL the worker, start it again", time.time())
