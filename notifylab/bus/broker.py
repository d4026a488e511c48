"""The connection to RabbitMQ: connect, publish with confirms, close.

Every part that talks to RabbitMQ (the jobs queue, the event managers, the
lab's inspector) goes through these functions, so a broker that is down
gives the same one-line error everywhere and a publish is never taken as sent
until RabbitMQ has confirmed it.

Several nodes. ``NOTIFYLAB_BROKER_URL`` may name several nodes of one
RabbitMQ cluster, comma-separated (``settings.broker_urls``). A process then
connects to one of them and, when that node dies, moves to the next
(:class:`FailoverConnection`); aio-pika restores its channels, exchanges,
queues, bindings and consumers there, and a publish that was waiting for
its confirm when the node died is sent again on the new connection
(:func:`publish_confirmed`; for notifications, ``publisher.py``). With one URL, all of this
is what it always was: reconnect to that one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from yarl import URL

from ..config import redact
from ..errors import ServiceUnavailable

log = logging.getLogger(__name__)

PUBLISH_DEADLINE = 30.0  # seconds a publish keeps retrying (broker restarting) before it fails
# Seconds between reconnect attempts of a robust connection. aio-pika's
# default of 5 is, on average, 2.5 s more of delivery paused after the
# broker is back, in every process (measured by tests/test_chaos.py); an
# attempt a second against a broker that is down costs nothing to speak of.
RECONNECT_SECONDS = 1.0
CONNECT_TIMEOUT = 5.0  # seconds for one connection attempt to one node


class FailoverConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, over several nodes of one cluster.

    aio-pika's ``RobustConnection`` reconnects to the one URL it was given
    (it has no list of hosts: aio-pika issue #141). This one holds a list,
    and moves to the next URL whenever a connection is lost or an attempt to
    connect fails, round the list: aio-pika calls ``_on_connection_close``
    in both cases, just before its reconnect loop tries again (after
    ``reconnect_interval`` when an attempt failed). Everything else, what is
    restored after a reconnect and when, is aio-pika's own.

    The URLs must differ only in host and port (the same account, virtual
    host and options): the options are read from the first one.
    """

    def __init__(self, urls: Sequence[str], start: int = 0, **kwargs: Any):
        if not urls:
            raise ValueError("FailoverConnection needs at least one URL")
        self.urls = [URL(url) for url in urls]
        self.index = start % len(self.urls)  # the URL in use, or the next attempt's
        super().__init__(self.urls[self.index], **kwargs)

    async def _on_connection_close(self, closing: asyncio.Future) -> None:
        if not self._close_called:  # lost or failed, not closed by us: try the next node next
            self.index = (self.index + 1) % len(self.urls)
            self.url = self.urls[self.index]
        await super()._on_connection_close(closing)


async def connect_broker(urls: str | Sequence[str]) -> aio_pika.abc.AbstractRobustConnection:
    """A robust (auto-reconnecting) connection to one of ``urls`` (one URL,
    or the nodes of one cluster), failing over to the others; a one-line
    error if none answers within five seconds.

    With several URLs the first attempt goes to a random one, so that the
    processes of a deployment spread over the nodes and a node's death
    moves only its share of them; the others are tried in turn after it."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    start = random.randrange(len(urls))
    problems = []
    # aio-pika and aiormq log a failed first attempt themselves; we raise one
    # clear line instead, so quiet them for these attempts only.
    quiet = [logging.getLogger(name) for name in ("aiormq.connection", "aio_pika.robust_connection")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        for k in range(len(urls)):
            index = (start + k) % len(urls)
            connection = FailoverConnection(urls, start=index, reconnect_interval=RECONNECT_SECONDS)
            try:
                await connection.connect(timeout=CONNECT_TIMEOUT)
                return connection
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                problems.append(f"{redact(urls[index])}: {exc or type(exc).__name__}")
                await connection.close()
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    raise ServiceUnavailable(f"cannot reach RabbitMQ at {'; '.join(problems)}")


async def connect_plain(urls: str | Sequence[str]) -> aio_pika.abc.AbstractConnection:
    """A plain connection (no reconnecting) to the first of ``urls`` that
    answers: for short jobs, such as the lab's counts and clean-ups."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    problems = []
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            problems.append(f"{redact(url)}: {exc or type(exc).__name__}")
    raise ServiceUnavailable(f"cannot reach RabbitMQ at {'; '.join(problems)}")


async def publish_confirmed(
    exchange: aio_pika.abc.AbstractExchange,
    message: aio_pika.Message,
    key: str,
    renew: Callable[[aio_pika.abc.AbstractExchange], Awaitable[aio_pika.abc.AbstractExchange]] | None = None,
) -> None:
    """Publish and return once the broker has confirmed it. While the broker
    is away (a restart, a failover to another node), retry with backoff for
    up to PUBLISH_DEADLINE seconds, then raise TimeoutError: the caller must
    not take it as sent. A publish whose confirm was still awaited when the
    connection dropped is sent again once it is back (it may then arrive
    twice: consumers must tell, as ours do by record or by id).

    ``renew``, if given, is called with the exchange after the broker
    refused (nacked) a publish, and returns the exchange to retry on: a new
    channel's, for a channel that cannot recover (see ``RabbitJobs``)."""
    delay = 0.1
    renewing = False  # True from a nack until renew() has given another exchange
    async with asyncio.timeout(PUBLISH_DEADLINE):
        while True:
            try:
                if renewing and renew is not None:
                    exchange = await renew(exchange)
                    renewing = False
                await exchange.publish(message, routing_key=key)  # a nack raises here
                return
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                log.warning("publish to %s failed (%s); retrying", key, exc)
                renewing = renewing or isinstance(exc, aio_pika.exceptions.DeliveryError)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


async def close_broker(connection: aio_pika.abc.AbstractConnection | None) -> None:
    """Close a connection and let aio-pika's close callbacks run: they are
    tasks of their own, and the loop may end right after this."""
    if connection is not None:
        await connection.close()
        await asyncio.sleep(0.05)
