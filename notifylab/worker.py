"""The worker: runs operations taken from the jobs queue and reports on them.

For each step it records the new state and appends a notification to the
user's inbox stream in one Redis transaction (``store/operations.py``),
then publishes the notification (``bus/managers.py``). The job is acked only when the
operation has ended, so a killed worker's job goes to another worker, which
carries on from the last recorded step and says that it restarted.

Fairness between users is not decided here: the jobs queue is a priority
queue, and a job's priority, set when it is queued, is higher the fewer active
operations its user had (see ``bus/jobs.py``). So a worker simply runs what it
is given; no job is ever put back, or counted as an attempt, for fairness.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from redis.asyncio import Redis

from .bus.jobs import Jobs, Outcome
from .bus.managers import Manager, publish_notification
from .config import Settings
from .kinds import KINDS
from .store.inbox import Inbox
from .store.operations import TERMINAL, Operation, Operations, TransitionRefused

log = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.2  # how often a running step checks whether it was cancelled
RETRY_PAUSE_SECONDS = 1.0  # pause before requeueing while a service is down, not to spin
# With NOTIFYLAB_REDIS_WAIT_REPLICAS, how long a step written on the primary
# waits for a replica to confirm it (store/replication.py). After a failover
# the new primary has no replica until one (re)joins; requeueing meanwhile
# would cost an attempt per pickup, so the worker holds its job and waits.
REPLICA_PATIENCE_SECONDS = 30.0


class SimulatedBug(Exception):
    """Raised by ``error_at``: stands for a bug or crash in the worker."""


class Worker:
    """Runs jobs. ``emitter`` is a python-socketio client manager (write-only
    on RabbitMQ, the server's own in the embedded mode)."""

    def __init__(
        self, settings: Settings, redis: Redis, jobs: Jobs, emitter: Manager, worker_id: str | None = None
    ):
        self.settings = settings
        self.jobs = jobs
        self.emitter = emitter
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.operations = Operations(
            redis, settings, Inbox(redis, settings), patience=REPLICA_PATIENCE_SECONDS
        )

    async def start(self) -> None:
        await self.jobs.consume(self.handle, self.settings.worker_concurrency)
        log.info(
            "worker %s consuming %s (concurrency %d)",
            self.id,
            self.settings.jobs_queue,
            self.settings.worker_concurrency,
        )

    async def _move(self, op: Operation, type_: str, fenced: bool = True, **changes) -> Operation:
        # Fenced by our attempt number, except for the moves that start one.
        # ``op`` is the record as we last wrote it, so the step is one round
        # trip; if someone moved it since (a cancel), Redis refuses and it is read again.
        attempt = op.attempts if fenced else None
        op, note = await self.operations.transition(op.id, type_, attempt, current=op, **changes)
        await publish_notification(self.emitter, note)
        return op

    async def handle(self, job: dict) -> Outcome:
        """Run one job to its end; never raises (the outcome says what to do)."""
        try:
            return await self._handle(job)
        except Exception as exc:  # Redis or the broker is away: let the job come back later
            log.warning("job %r: %s; requeueing", job, exc)
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            return Outcome.RETRY

    async def _handle(self, job: dict) -> Outcome:
        op = await self.operations.get(job.get("operation"))
        if op is None:
            log.error("dropping job for unknown operation: %r", job)
            return Outcome.DONE
        if op.state in TERMINAL:  # e.g. cancelled while it waited in the queue
            return Outcome.DONE
        try:
            if op.attempts >= self.settings.max_attempts:
                return await self._give_up(op)
            return await self._run(op)
        except TransitionRefused as exc:  # cancelled under our feet
            log.info("operation %s stopped: %s", op.id, exc)
            return Outcome.DONE
        except Exception as exc:
            log.warning("operation %s attempt %d broke: %s", op.id, op.attempts + 1, exc)
            current = await self.operations.get(op.id)
            if current is None or current.state in TERMINAL:
                return Outcome.DONE
            if current.attempts >= self.settings.max_attempts:
                return await self._give_up(current, str(exc))
            return Outcome.RETRY

    async def _give_up(self, op: Operation, reason: str = "the worker running it stopped") -> Outcome:
        await self._move(
            op, "operation.failed", fenced=False, error=f"gave up after {op.attempts} attempts: {reason}"
        )
        return Outcome.DEAD

    async def _run(self, op: Operation) -> Outcome:
        kind = KINDS[op.kind]
        params = op.params
        if op.state == "queued":
            op = await self._move(
                op,
                "operation.started",
                fenced=False,
                attempts=1,
                worker=self.id,
                message=f"Started on worker {self.id}",
            )
        else:  # it was running elsewhere when that worker stopped
            op = await self._move(
                op,
                "operation.restarted",
                fenced=False,
                attempts=op.attempts + 1,
                worker=self.id,
                message=f"Restarted on worker {self.id} at step {op.step + 1} (attempt {op.attempts + 1})",
            )
        for step in range(op.step + 1, op.steps + 1):
            if not await self._wait_step(op, params["step_seconds"]):
                return Outcome.DONE  # cancelled
            if params.get("error_at") == step:
                raise SimulatedBug(f"simulated bug at step {step}")
            if params.get("fail_at") == step:
                await self._move(
                    op,
                    "operation.failed",
                    step=step,
                    error=f"step {step} failed: {kind.step_messages[0].lower()} hit an error",
                )
                return Outcome.DONE
            op = await self._move(
                op, "operation.progress", step=step, message=kind.step_message(step, op.steps)
            )
        await self._move(op, "operation.succeeded", message=f"{kind.title} finished")
        return Outcome.DONE

    async def _wait_step(self, op: Operation, seconds: float) -> bool:
        """Sleep one step; False if the operation was cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        # Only a long wait looks for a cancel: after a short one the next
        # step's write is refused anyway if the operation was cancelled.
        while (left := end - loop.time()) > CANCEL_POLL_SECONDS:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            if await self.operations.state(op.id) in TERMINAL:
                return False
        await asyncio.sleep(max(0.0, left))
        return True
