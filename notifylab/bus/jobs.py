"""The jobs queue between the servers and the workers.

On RabbitMQ: a durable queue of persistent messages, published with
confirms. A worker acks a job only when its operation has ended, so a worker
that dies mid-job hands the job back and another worker runs it. A job its
worker gives up on is rejected into the dead-letter queue, where it stays
for inspection. In the embedded mode an asyncio priority queue stands in for it.

Fairness between users. A worker takes jobs in queue order, so one user who
queues many operations at once would hold every worker slot until their
backlog is done, and another user's one-step operation would wait behind all
of it. So the queue is a priority queue (``x-max-priority``), and a job's
priority says how many active operations its user already had when it was
queued (:func:`job_priority`): a user's first operation goes ahead of
everybody's second, their second ahead of everybody's third, and so on (from
the tenth on, all share the lowest level). A backlog then runs round-robin
between its users, and a newcomer waits only for the next free slot, not for
the backlog; with the per-user cap (``max_active_operations``) the backlog
itself is bounded too.

Why a priority and not a rule in the workers (say, "put back a job whose user
already runs more than a fair share"): RabbitMQ keeps the order itself, so no
worker needs to know how many slots all workers have or who else is waiting,
and no job is ever put back (a requeue returns to the head of the queue, so
"to the back" would mean publishing a copy: a duplicate if the worker dies in
between). The message is the same message all the way (a requeue keeps its
priority, a dead letter too), so acks at the end, fencing by attempt and the
retry limit work as before. What it does not do is stop a running operation:
the newcomer gets the next slot that frees. And a user's own operations may
start out of creation order when a newer one was queued while fewer of theirs
were active.

Two kinds of jobs queue (``NOTIFYLAB_JOBS_QUEUE``). ``classic``, the
default, is all of the above: a classic queue, which lives on the one
RabbitMQ node it was declared on, and is unavailable while that node is
down (its jobs are on that node's disk, back when it is). ``quorum`` is for
a RabbitMQ cluster: a quorum queue keeps a copy on every node of the
cluster and goes on while a majority of them runs (a leader elected
among the copies takes over), so a node's death loses no job and pauses
the workers for well under a second (tests/test_ha_broker.py). What it
gives up is the fairness above: RabbitMQ 3.10's quorum queues have no
priorities (``x-max-priority`` is refused), so jobs run in arrival order
and one user's backlog delays the others' (the per-user cap still bounds
it). The dead-letter queue is a quorum queue too (dead-lettering is at
most once: a job rejected just as a node dies may miss it; its record
already says it failed). Acks at the end, requeues, fencing by attempt
and the retry limit work the same in both; see :class:`RabbitJobs` for
the delivery limit a quorum queue adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from ..config import ConfigError, Settings
from .broker import close_broker, connect_broker, publish_confirmed

log = logging.getLogger(__name__)

PRIORITIES = 10  # priority levels of the (classic) jobs queue; RabbitMQ advises at most 10
# Deliveries of one job after which a quorum queue dead-letters it by itself
# (x-delivery-limit): a backstop far above NOTIFYLAB_MAX_ATTEMPTS, see RabbitJobs.
DELIVERY_LIMIT = 1000


def job_priority(ahead: int) -> int:
    """The priority of a job whose user has ``ahead`` other active operations:
    ``PRIORITIES - 1`` for a user's only one, one less for each one ahead, never below 0."""
    return PRIORITIES - 1 - min(max(ahead, 0), PRIORITIES - 1)


class Outcome(enum.Enum):
    DONE = "done"  # ack: the operation ended (however it ended)
    RETRY = "retry"  # requeue: try again, on this or another worker
    DEAD = "dead"  # reject into the dead-letter queue


# job -> outcome. Whether a job is a redelivery is read from the operation's
# record in Redis, which also knows how far it got, not from the broker's flag.
Handler = Callable[[dict], Awaitable[Outcome]]


class RabbitJobs:
    """The jobs queue on RabbitMQ (classic or quorum, ``settings.jobs_queue_type``).

    Our retry limit, and the quorum queue's. Each time a worker picks a job
    up it records the attempt in the operation's record (``attempts``), and
    every step it writes is fenced by that number (``worker.py``); at
    ``NOTIFYLAB_MAX_ATTEMPTS`` it marks the operation failed, with a
    notification, and rejects the job into the dead-letter queue. A quorum
    queue counts deliveries too (``x-delivery-count``) and can dead-letter
    a job itself past ``x-delivery-limit``. We set that limit as a
    *backstop* (DELIVERY_LIMIT), not as the retry limit, because the two
    counts are not the same thing:

    - RabbitMQ counts every return of the job: a requeue while Redis is away
      (about one a second, and no attempt of ours: nothing could be
      recorded) and every job a worker held when its node or connection
      died. At a limit near ours, a Redis outage of a few seconds, or two
      failovers, would dead-letter healthy jobs.
    - When RabbitMQ drops a job at its limit it tells nobody: the record
      would stay ``running``, holding one of its user's active slots, and
      no session would hear of it. Our give-up writes ``failed`` first.

    What the backstop catches is a job that goes round for ever without our
    count moving, one the worker cannot even record (a bug before its first
    write): it stops after DELIVERY_LIMIT deliveries, at least that many
    seconds (a failed pickup pauses a second before it requeues).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._queue: aio_pika.abc.AbstractRobustQueue | None = None
        self._publisher: aio_pika.abc.AbstractRobustChannel | None = None  # what publish() uses
        self._publisher_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and declare the jobs queue and its dead-letter queue."""
        self._connection = await connect_broker(self.settings.broker_urls)
        self._channel = await self._connection.channel()  # confirms on
        self._publisher = await self._connection.channel()  # see _renew
        try:
            if self.settings.jobs_queue_type == "quorum":
                await self._declare_quorum()
            else:
                await self._declare_classic()
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise self._type_mismatch(exc) from None

    async def _declare_quorum(self) -> None:
        assert self._channel is not None
        quorum = {"x-queue-type": "quorum"}  # a quorum queue is always durable
        await self._channel.declare_queue(self.settings.dead_queue, durable=True, arguments=quorum)
        self._queue = await self._channel.declare_queue(
            self.settings.jobs_queue,
            durable=True,
            arguments={**quorum, **self._dead_letters(), "x-delivery-limit": DELIVERY_LIMIT},
        )

    async def _declare_classic(self) -> None:
        assert self._connection is not None and self._channel is not None
        await self._channel.declare_queue(self.settings.dead_queue, durable=True)
        arguments = self._dead_letters()
        name = self.settings.jobs_queue
        try:
            self._queue = await self._channel.declare_queue(
                name, durable=True, arguments={**arguments, "x-max-priority": PRIORITIES}
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            if "x-queue-type" in str(exc):
                raise  # a quorum queue of that name: start() says what to do
            # An older notifylab declared it without priorities, and RabbitMQ cannot change a
            # queue's arguments: keep it (it may hold jobs) and run first come, first served.
            log.warning(
                "queue %s has no priorities (declared by an older notifylab): jobs run in arrival "
                "order, not fairly between users, until it is deleted while empty",
                name,
            )
            self._channel = await self._connection.channel()  # the failed declare closed the other
            self._queue = await self._channel.declare_queue(name, durable=True, arguments=arguments)

    def _dead_letters(self) -> dict[str, str]:
        """A job rejected without requeue goes to the dead-letter queue (by the default exchange)."""
        return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.settings.dead_queue}

    def _type_mismatch(self, exc: Exception) -> Exception:
        """RabbitMQ refuses to declare a queue of another type than the one
        it holds under that name (PRECONDITION_FAILED): say which setting to change."""
        if "x-queue-type" not in str(exc):
            return exc
        wanted = self.settings.jobs_queue_type
        other = "classic" if wanted == "quorum" else "quorum"
        jobs, dead = self.settings.jobs_queue, self.settings.dead_queue
        return ConfigError(
            f"RabbitMQ holds {jobs} (or {dead}) as a {other} queue, but NOTIFYLAB_JOBS_QUEUE={wanted}: "
            f"set NOTIFYLAB_JOBS_QUEUE={other}, or delete both queues once empty "
            f"(rabbitmqctl delete_queue {jobs}; rabbitmqctl delete_queue {dead})"
        )

    @property
    def connected(self) -> bool:
        """True while the connection to RabbitMQ is up (``/readyz`` asks)."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def publish(self, job: dict, priority: int = 0) -> None:
        """Queue ``job`` (ahead of jobs of a lower ``priority``, see
        :func:`job_priority`; a quorum queue ignores it); returns once
        RabbitMQ has confirmed it."""
        assert self._publisher is not None, "start() first"
        message = aio_pika.Message(
            json.dumps(job).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=priority,
        )
        exchange = self._publisher.default_exchange
        await publish_confirmed(exchange, message, self.settings.jobs_queue, renew=self._renew)

    async def _renew(self, refused: aio_pika.abc.AbstractExchange) -> aio_pika.abc.AbstractExchange:
        """After ``refused`` had a publish nacked: the exchange of a new
        publishing channel (or of the one another publish renewed meanwhile).

        Why a new channel after a refusal: on RabbitMQ 3.10, a channel whose
        first publish to a quorum queue comes while the queue has no leader
        (a failover: its node died, the others are electing) refuses every
        publish to that queue after it, for as long as the channel lives
        (measured: 11 s of retries, until the caller gave up), while a new
        channel's publish is confirmed once a leader is elected (0.2 s
        here). Publishing has a channel of its own, so that a renewal never
        cancels a worker's consumer."""
        assert self._connection is not None and self._publisher is not None
        async with self._publisher_lock:
            current = self._publisher
            if refused is current.default_exchange:
                self._publisher = await self._connection.channel()  # confirms on
                with contextlib.suppress(Exception):  # it may be closed already
                    await current.close()
            return self._publisher.default_exchange

    async def consume(self, handler: Handler, concurrency: int) -> None:
        """Run ``handler`` on jobs, at most ``concurrency`` at once."""
        assert self._channel is not None and self._queue is not None, "start() first"
        # Prefetch = concurrency: a worker holds no job it is not running, so the ones
        # waiting stay in the queue, where RabbitMQ orders them by priority.
        await self._channel.set_qos(prefetch_count=concurrency)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                job = json.loads(message.body)
            except ValueError:
                log.error("dead-lettering a job that is not JSON: %r", message.body[:200])
                await message.reject(requeue=False)
                return
            outcome = await handler(job)
            try:
                if outcome is Outcome.DONE:
                    await message.ack()
                elif outcome is Outcome.RETRY:
                    await message.nack(requeue=True)
                else:
                    await message.reject(requeue=False)
            except Exception as exc:  # its channel closed: the broker has requeued it already
                log.warning("could not settle job %r (%s); the broker redelivers it", job, exc)

        await self._queue.consume(on_message)

    async def close(self) -> None:
        await close_broker(self._connection)


class MemoryJobs:
    """The same interface over an asyncio priority queue (embedded mode)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # (-priority, arrival, job): the highest priority first, in arrival order.
        self.queue: asyncio.PriorityQueue[tuple[int, int, dict]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._tasks: list[asyncio.Task] = []

    connected = True  # nothing to lose a connection to

    async def start(self) -> None:
        pass

    async def publish(self, job: dict, priority: int = 0) -> None:
        await self.queue.put((-priority, next(self._arrivals), job))

    async def consume(self, handler: Handler, concurrency: int) -> None:
        async def run() -> None:
            while True:
                entry = await self.queue.get()
                outcome = await handler(entry[2])
                if outcome is Outcome.RETRY:  # back in its place, as RabbitMQ requeues it
                    await self.queue.put(entry)
                # DEAD: the embedded mode has no dead-letter queue; the
                # operation's record already says it failed.

        self._tasks = [asyncio.create_task(run()) for _ in range(concurrency)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Jobs = RabbitJobs | MemoryJobs


def make_jobs(settings: Settings) -> Jobs:
    return MemoryJobs(settings) if settings.memory else RabbitJobs(settings)
