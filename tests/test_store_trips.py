"""Redis round trips on the hot paths, counted against the real Redis.

Counts, not times: each write to a Redis connection is one round trip (a
pipeline or a script is one). A worker's step costs one, a new operation one,
a cancel two (read, then the compare-and-set). Issue 9's profile had the
worker spending 43% of its time in a WATCH/GET/MULTI/EXEC per step (three
round trips); this fails if a change brings that back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio.connection import Connection

from notifylab.config import Settings
from notifylab.store.connect import connect_redis
from notifylab.store.inbox import Inbox
from notifylab.store.operations import Operations
from support import new_prefix

PARAMS = {"steps": 3, "step_seconds": 0.01}


@pytest.fixture
async def operations(services: None) -> AsyncIterator[Operations]:
    settings = Settings(prefix=new_prefix())
    redis = await connect_redis(settings)
    yield Operations(redis, settings, Inbox(redis, settings))
    await redis.aclose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many writes to any Redis connection since the last call."""
    count = [0]
    original = Connection.send_packed_command

    async def counted(self, command, check_health=True):  # type: ignore[no-untyped-def]
        count[0] += 1
        return await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)

    def since() -> int:
        seen, count[0] = count[0], 0
        return seen

    return since


async def test_a_workers_step_a_new_operation_and_a_cancel_cost_one_one_and_two_trips(operations, trips):
    await operations.create("warm", "report", PARAMS)  # the script's first run loads it (NOSCRIPT, EVAL)
    trips()
    op, _ = await operations.create("ann", "report", PARAMS)
    assert trips() == 1
    op, _ = await operations.transition(op.id, "operation.started", current=op, attempts=1)
    op, _ = await operations.transition(op.id, "operation.progress", attempt=1, current=op, step=1)
    assert trips() == 2  # one each
    cancelled, note = await operations.transition(op.id, "operation.cancelled")
    assert trips() == 2 and cancelled.state == "cancelled" and note["prev"] != note["id"]
