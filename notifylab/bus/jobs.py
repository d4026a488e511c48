"""The jobs queue between the servers and the workers.

On RabbitMQ: a durable queue of persistent messages, published with
confirms. A worker acks a job only when its operation has ended, so a worker
that dies mid-job hands the job back and another worker runs it. A job its
worker gives up on is rejected into the dead-letter queue, where it stays
for inspection. In the embedded mode an asyncio queue stands in for it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from ..config import Settings
from .broker import close_broker, connect_broker, publish_confirmed

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    DONE = "done"  # ack: the operation ended (however it ended)
    RETRY = "retry"  # requeue: try again, on this or another worker
    DEAD = "dead"  # reject into the dead-letter queue


# job -> outcome. Whether a job is a redelivery is read from the operation's
# record in Redis, which also knows how far it got, not from the broker's flag.
Handler = Callable[[dict], Awaitable[Outcome]]


class RabbitJobs:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._queue: aio_pika.abc.AbstractRobustQueue | None = None

    async def start(self) -> None:
        """Connect and declare the jobs queue and its dead-letter queue."""
        self._connection = await connect_broker(self.settings.broker_url)
        self._channel = await self._connection.channel()  # confirms on
        await self._channel.declare_queue(self.settings.dead_queue, durable=True)
        self._queue = await self._channel.declare_queue(
            self.settings.jobs_queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.settings.dead_queue},
        )

    @property
    def connected(self) -> bool:
        """True while the connection to RabbitMQ is up (``/readyz`` asks)."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def publish(self, job: dict) -> None:
        """Queue ``job``; returns once RabbitMQ has confirmed it."""
        assert self._channel is not None, "start() first"
        message = aio_pika.Message(
            json.dumps(job).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await publish_confirmed(self._channel.default_exchange, message, self.settings.jobs_queue)

    async def consume(self, handler: Handler, concurrency: int) -> None:
        """Run ``handler`` on jobs, at most ``concurrency`` at once."""
        assert self._channel is not None and self._queue is not None, "start() first"
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
    """The same interface over an asyncio queue (embedded mode)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    connected = True  # nothing to lose a connection to

    async def start(self) -> None:
        pass

    async def publish(self, job: dict) -> None:
        await self.queue.put(job)

    async def consume(self, handler: Handler, concurrency: int) -> None:
        async def run() -> None:
            while True:
                job = await self.queue.get()
                outcome = await handler(job)
                if outcome is Outcome.RETRY:
                    await self.queue.put(job)
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
