"""The worker's state machine, fencing and retry limit, and the operation
transitions, in process (fakeredis, an emitter that records).

test_operations.py and test_restarts.py prove the same end to end, with real
workers killed and RabbitMQ and Redis restarted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fakes import SETTINGS, fake_redis, make_operations
from notifylab.bus.jobs import MemoryJobs, Outcome
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


STATES = ["queued", "running", "restarted", "succeeded", "failed", "cancelled"]


@pytest.mark.parametrize("type_", [t for t in TRANSITIONS if t != "operation.queued"])
@pytest.mark.parametrize("state", STATES)
async def test_each_transition_is_allowed_from_exactly_its_states(type_, state):
    operations = make_operations(fake_redis())
    op, _ = await operations.create("ann", "report", PARAMS)
    await operations.redis.hset(operations._key(op.id), "state", state)
    new_state, allowed = TRANSITIONS[type_]
    if state in allowed:
        moved, note = await operations.transition(op.id, type_)
        assert moved.state == new_state and note["type"] == type_ and note["state"] == new_state
    else:
        with pytest.raises(TransitionRefused):
            await operations.transition(op.id, type_)
        assert (await operations.get(op.id)).state == state  # untouched
