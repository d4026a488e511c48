"""The connection to RabbitMQ: connect, publish with confirms, close.

Every part that talks to RabbitMQ (the jobs queue, the event managers, the
lab's inspector) goes through these three functions, so a broker that is down
gives the same one-line error everywhere and a publish is never taken as sent
until RabbitMQ has confirmed it.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import aiormq

from ..config import redact
from ..errors import ServiceUnavailable

log = logging.getLogger(__name__)

PUBLISH_DEADLINE = 30.0  # seconds a publish keeps retrying (broker restarting) before it fails
# Seconds between reconnect attempts of a robust connection. aio-pika's
# default of 5 is, on average, 2.5 s more of delivery paused after the
# broker is back, in every process (measured by tests/test_chaos.py); an
# attempt a second against a broker that is down costs nothing to speak of.
RECONNECT_SECONDS = 1.0


async def connect_broker(url: str) -> aio_pika.abc.AbstractRobustConnection:
    """A robust (auto-reconnecting) connection; a one-line error if the
    broker does not answer within five seconds."""
    # aio-pika and aiormq log a failed first attempt themselves; we raise one
    # clear line instead, so quiet them for this attempt only.
    quiet = [logging.getLogger(name) for name in ("aiormq.connection", "aio_pika.robust_connection")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        return await aio_pika.connect_robust(url, timeout=5, reconnect_interval=RECONNECT_SECONDS)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise ServiceUnavailable(
            f"cannot reach RabbitMQ at {redact(url)}: {exc or type(exc).__name__}"
        ) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


async def publish_confirmed(
    exchange: aio_pika.abc.AbstractExchange, message: aio_pika.Message, key: str
) -> None:
    """Publish and return once the broker has confirmed it. While the broker
    is away (a restart), retry with backoff for up to PUBLISH_DEADLINE
    seconds, then raise TimeoutError: the caller must not take it as sent."""
    delay = 0.1
    async with asyncio.timeout(PUBLISH_DEADLINE):
        while True:
            try:
                await exchange.publish(message, routing_key=key)  # a nack raises here
                return
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                log.warning("publish to %s failed (%s); retrying", key, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


# A notification on the bus needs no headers: transient (the inbox stream is
# its durable copy), and a message id we never read. One object for all of
# them, so aiormq neither builds properties nor draws a random id per publish.
EVENT_PROPERTIES = aiormq.spec.Basic.Properties(delivery_mode=1, message_id="n")


async def publish_raw(channel: aio_pika.abc.AbstractChannel, exchange: str, body: bytes, key: str) -> None:
    """``publish_confirmed`` for the hot path: ``body`` published as it is on
    the aiormq channel under aio-pika's ``channel``, without an aio-pika
    ``Message`` (measured: building one was a tenth of a publish). Returns
    once the broker has confirmed it; retries and deadline as there."""
    delay = 0.1
    async with asyncio.timeout(PUBLISH_DEADLINE):
        while True:
            try:
                raw = await channel.get_underlay_channel()  # a robust channel waits while it reconnects
                confirmation = await raw.basic_publish(
                    body, exchange=exchange, routing_key=key, properties=EVENT_PROPERTIES
                )
                if isinstance(confirmation, aiormq.spec.Basic.Nack):
                    raise aiormq.exceptions.DeliveryError(None, confirmation)
                return
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                log.warning("publish to %s failed (%s); retrying", key, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


async def close_broker(connection: aio_pika.abc.AbstractConnection | None) -> None:
    """Close a connection and let aio-pika's close callbacks run: they are
    tasks of their own, and the loop may end right after this."""
    if connection is not None:
        await connection.close()
        await asyncio.sleep(0.05)
