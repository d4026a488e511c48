"""Redis round trips on the hot paths, counted against the real Redis.

Counts, not times: each write to a Redis connection is one round trip (a
pipeline or a script is one). A worker's step costs one, a new operation one,
a cancel two (read, then the compare-and-set), a publish to several users
one. Issue 9's profile had the worker spending 43% of its time in a
WATCH/GET/MULTI/EXEC per step (three round trips); this fails if a change
brings that back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio.connection import Connection

from notifylab.config import Settings
from notifylab.ids import ZERO
from notifylab.store.connect import connect_redis
from notifylab.store.inbox import Inbox, KeysMissing
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


async def test_a_publish_to_several_users_checks_and_appends_in_one_trip_all_or_nothing(operations, trips):
    """The publish API's write (``Inbox.append_all``): the recipients' accounts
    checked and every stream appended in one script, one round trip; with
    one account missing, no stream gets anything."""
    inbox, redis = operations.inbox, operations.redis
    accounts = [operations.settings.key("user", name) for name in ("ann", "bob", "cat")]
    for key in accounts[:2]:
        await redis.hset(key, "created", "1")
    notes = [{"user": name, "n": i} for i, name in enumerate(("ann", "bob", "cat"))]
    await inbox.append_all(["warm"], [{"n": 0}])  # the script's first run loads it (NOSCRIPT, EVAL)
    trips()
    with pytest.raises(KeysMissing) as missing:
        await inbox.append_all(["ann", "bob", "cat"], notes, required=accounts)
    assert missing.value.positions == [2] and trips() == 1
    assert [await inbox.last_id(name) for name in ("ann", "bob", "cat")] == [ZERO] * 3
    await redis.hset(accounts[2], "created", "1")
    trips()
    sent = await inbox.append_all(["ann", "bob", "cat"], notes, required=accounts)
    assert trips() == 1
    for name, note in zip(("ann", "bob", "cat"), sent, strict=True):
        assert note["prev"] == ZERO and [n["id"] for n in await inbox.after(name)] == [note["id"]]
    again = await inbox.append_all(["ann"], [notes[0]])
    assert again[0]["prev"] == sent[0]["id"]
