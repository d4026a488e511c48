"""The worker's state machine, fencing and retry limit, and the operation
transitions, in process (fakeredis, an emitter that records).

test_operations.py and test_restarts.py prove the same end to end, with real
workers killed and RabbitMQ and Redis restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fakes import SETTINGS, fake_redis, make_operations
from notifylab.bus import jobs
from notifylab.bus.jobs import MemoryJobs, Outcome
from notifylab.errors import TooManyRequests
from notifylab.store.operations import TRANSITIONS, Operations, TransitionRefused
from notifylab.worker import Worker

PARAMS = {"steps": 3, "step_seconds": 0.01}


class Emitter:
    """Records the types of what the worker publishes; ``hook`` runs after
    each one, to play what another process does meanwhile."""

    def __init__(self) -> None:
        self.types: list[str] = []
        self.hook: Callable[[dict], Awaitable[None]] | None = None

    async def emit(self, event: str, data: Any, room: str | None = None) -> None:
        self.types.append(data["type"].removeprefix("operation."))
        if self.hook is not None:
            await self.hook(data)


@pytest.fixture
def parts() -> tuple[Operations, Emitter, Callable[[str], Worker]]:
    redis = fake_redis()
    emitter = Emitter()
    return (
        make_operations(redis),
        emitter,
        lambda name: Worker(SETTINGS, redis, MemoryJobs(SETTINGS), emitter, worker_id=name),
    )  # type: ignore[arg-type]


async def test_a_job_runs_queued_to_succeeded_step_by_step(parts):
    operations, emitter, worker = parts
    op, _ = await operations.create("ann", "report", PARAMS)
    assert await worker("w1").handle({"operation": op.id}) is Outcome.DONE
    assert emitter.types == ["started", "progress", "progress", "progress", "succeeded"]
    done = await operations.get(op.id)
    assert (done.state, done.step, done.attempts, done.worker) == ("succeeded", 3, 1, "w1")


async def test_a_redelivered_job_restarts_after_the_last_recorded_step(parts):
    operations, emitter, worker = parts
    op, _ = await operations.create("ann", "report", PARAMS)
    await operations.transition(op.id, "operation.started", attempts=1, worker="dead-worker")
    await operations.transition(op.id, "operation.progress", attempt=1, step=1)
    assert await worker("w2").handle({"operation": op.id}) is Outcome.DONE
    assert emitter.types == ["restarted", "progress", "progress", "succeeded"]
    assert (await operations.get(op.id)).attempts == 2


async def test_a_fenced_worker_stops_once_another_attempt_took_over(parts):
    operations, emitter, worker = parts
    op, _ = await operations.create("ann", "report", {"steps": 5, "step_seconds": 0.01})

    async def take_over(note: dict) -> None:
        if note["type"] == "operation.progress" and note["step"] == 1:
            # The job came back to another worker (its connection seemed lost).
            await operations.transition(op.id, "operation.restarted", attempts=2, worker="w2")

    emitter.hook = take_over
    assert await worker("w1").handle({"operation": op.id}) is Outcome.DONE
    # w1 wrote nothing after the takeover: its next step was refused.
    assert emitter.types == ["started", "progress"]
    record = await operations.get(op.id)
    assert (record.state, record.step, record.attempts, record.worker) == ("restarted", 1, 2, "w2")


async def test_a_job_that_keeps_breaking_is_dead_lettered_after_max_attempts(parts):
    operations, emitter, worker = parts
    op, _ = await operations.create("ann", "report", {**PARAMS, "error_at": 2})
    outcomes = [await worker(f"w{i}").handle({"operation": op.id}) for i in range(SETTINGS.max_attempts)]
    assert outcomes == [Outcome.RETRY] * (SETTINGS.max_attempts - 1) + [Outcome.DEAD]
    record = await operations.get(op.id)
    assert record.state == "failed" and f"after {SETTINGS.max_attempts} attempts" in record.error
    assert emitter.types.count("restarted") == SETTINGS.max_attempts - 1 and emitter.types[-1] == "failed"


async def test_a_job_seen_max_attempts_times_already_is_given_up_at_once(parts):
    operations, emitter, worker = parts
    op, _ = await operations.create("ann", "report", PARAMS)
    await operations.transition(op.id, "operation.started", attempts=SETTINGS.max_attempts)
    assert await worker("w9").handle({"operation": op.id}) is Outcome.DEAD
    assert emitter.types == ["failed"]


async def test_cancelling_mid_run_stops_the_worker(parts):
    operations, emitter, worker = parts
    op, _ = await operations.create("ann", "report", {"steps": 5, "step_seconds": 0.05})

    async def cancel(note: dict) -> None:
        if note["type"] == "operation.started":
            await operations.transition(op.id, "operation.cancelled", message="Cancelled from a test")

    emitter.hook = cancel
    assert await worker("w1").handle({"operation": op.id}) is Outcome.DONE
    assert emitter.types == ["started"]  # no progress after the cancel
    assert (await operations.get(op.id)).state == "cancelled"


async def test_fail_at_is_a_final_failure_not_a_retry(parts):
    operations, emitter, worker = parts
    op, _ = await operations.create("ann", "report", {**PARAMS, "fail_at": 2})
    assert await worker("w1").handle({"operation": op.id}) is Outcome.DONE
    assert emitter.types == ["started", "progress", "failed"]


async def test_a_stale_copy_is_refused_by_its_version_never_written_over():
    # A worker writes from the record it last wrote; a cancel moved it since.
    operations = make_operations(fake_redis())
    op, _ = await operations.create("ann", "report", PARAMS)
    started, _ = await operations.transition(op.id, "operation.started", attempts=1)
    await operations.transition(op.id, "operation.cancelled", message="Cancelled from a test")
    with pytest.raises(TransitionRefused, match="cancelled"):
        await operations.transition(op.id, "operation.progress", attempt=1, current=started, step=1)
    record = await operations.get(op.id)
    assert (record.state, record.step, record.version) == ("cancelled", 0, 3)
    types = [n["type"] for n in await operations.inbox.after("ann")]
    assert types == ["operation.queued", "operation.started", "operation.cancelled"]


async def test_a_stale_copy_still_allowed_is_read_again_then_written():
    operations = make_operations(fake_redis())
    op, _ = await operations.create("ann", "report", PARAMS)
    started, _ = await operations.transition(op.id, "operation.started", attempts=1)
    # Something else wrote meanwhile (here: a step of the same attempt).
    await operations.transition(op.id, "operation.progress", attempt=1, step=1, message="one")
    moved, note = await operations.transition(op.id, "operation.progress", attempt=1, current=started, step=2)
    # Built on what is in Redis now (version 3, message "one"), not on the stale copy.
    assert (moved.step, moved.version, moved.message) == (2, 4, "one")
    assert await operations.get(op.id) == moved and note["step"] == 2


async def test_creating_an_operation_whose_id_exists_fails_and_writes_nothing(monkeypatch):
    operations = make_operations(fake_redis())
    op, _ = await operations.create("ann", "report", PARAMS)
    monkeypatch.setattr("secrets.token_hex", lambda _n: op.id)
    with pytest.raises(RuntimeError, match="taken"):
        await operations.create("ann", "report", {**PARAMS, "steps": 9})
    assert (await operations.get(op.id)).steps == PARAMS["steps"]
    assert len(await operations.inbox.after("ann")) == 1


STATES = ["queued", "running", "restarted", "succeeded", "failed", "cancelled"]


@pytest.mark.parametrize("type_", [t for t in TRANSITIONS if t != "operation.queued"])
@pytest.mark.parametrize("state", STATES)
async def test_each_transition_is_allowed_from_exactly_its_states(type_, state):
    operations = make_operations(fake_redis())
    op, _ = await operations.create("ann", "report", PARAMS)
    await operations.redis.hset(operations.record_key(op.id), "state", state)
    new_state, allowed = TRANSITIONS[type_]
    if state in allowed:
        moved, note = await operations.transition(op.id, type_)
        assert moved.state == new_state and note["type"] == type_ and note["state"] == new_state
    else:
        with pytest.raises(TransitionRefused):
            await operations.transition(op.id, type_)
        assert (await operations.get(op.id)).state == state  # untouched


# -- quotas and fairness (issue 8, finding 6; test_quotas.py proves them end to end) --


def test_a_users_first_job_has_the_top_priority_and_each_one_ahead_lowers_it():
    top = jobs.PRIORITIES - 1
    assert [jobs.job_priority(ahead) for ahead in range(top + 3)] == [*range(top, -1, -1), 0, 0]
    assert jobs.job_priority(-1) == top  # counted after the operation already ended


async def test_jobs_run_round_robin_between_users_and_a_retry_keeps_its_place():
    queue = MemoryJobs(SETTINGS)
    # ann queued three at once, then bob two and cid one: each got the priority of its place.
    for name, ahead in [("ann1", 0), ("ann2", 1), ("ann3", 2), ("bob1", 0), ("bob2", 1), ("cid1", 0)]:
        await queue.publish({"operation": name}, priority=jobs.job_priority(ahead))
    ran: list[str] = []
    all_ran = asyncio.Event()

    async def handler(job: dict) -> Outcome:
        ran.append(job["operation"])
        if ran == ["ann1", "bob1"]:
            return Outcome.RETRY  # e.g. Redis was away
        if len(ran) == 7:
            all_ran.set()
        return Outcome.DONE

    await queue.consume(handler, 1)
    try:
        await asyncio.wait_for(all_ran.wait(), 5)
    finally:
        await queue.close()
    assert ran == ["ann1", "bob1", "bob1", "cid1", "ann2", "bob2", "ann3"]


async def test_create_refuses_one_more_than_the_cap_per_user_and_records_nothing():
    operations = make_operations(fake_redis())
    cap = SETTINGS.max_active_operations
    for _ in range(cap):
        await operations.create("ann", "report", PARAMS)
    with pytest.raises(TooManyRequests) as refused:
        await operations.create("ann", "report", PARAMS)
    assert refused.value.status == 429
    assert str(refused.value) == f"at most {cap} active operations; wait for one to end or cancel one"
    assert len(await operations.of_user("ann")) == cap
    await operations.create("bob", "report", PARAMS)  # a cap per user, not for everyone


@pytest.mark.parametrize("end", ["operation.succeeded", "operation.failed", "operation.cancelled"])
async def test_an_operation_that_ends_frees_its_slot_and_a_restart_does_not(end):
    operations = make_operations(fake_redis())
    ops = [
        (await operations.create("ann", "report", PARAMS))[0] for _ in range(SETTINGS.max_active_operations)
    ]
    await operations.transition(ops[0].id, "operation.started", attempts=1)
    await operations.transition(ops[0].id, "operation.restarted", attempts=2)
    with pytest.raises(TooManyRequests):  # restarted is still active
        await operations.create("ann", "report", PARAMS)
    await operations.transition(ops[0].id, end)
    await operations.create("ann", "report", PARAMS)
    assert await operations.active_count("ann") == SETTINGS.max_active_operations


async def test_concurrent_creates_for_one_user_never_pass_the_cap():
    redis = fake_redis()
    instances = [make_operations(redis), make_operations(redis)]  # two servers, one Redis
    cap = SETTINGS.max_active_operations
    results = await asyncio.gather(
        *(instances[i % 2].create("ann", "report", PARAMS) for i in range(2 * cap)), return_exceptions=True
    )
    assert sum(isinstance(r, TooManyRequests) for r in results) == cap
    assert len(await instances[0].of_user("ann")) == cap == await instances[1].active_count("ann")
