"""Looking inside RabbitMQ: the exchanges, queues and bindings notifylab made.

RabbitMQ answers two protocols. AMQP (port 5672) is what servers and workers
publish and consume with. The *management API* (HTTP, port 15672, the
``rabbitmq_management`` plugin) is for people and tools: it lists every
exchange, queue and binding, with counters. This view reads it, so a learner
can watch the routing of notifylab change as users come and go:

- ``<prefix>.events`` is a topic exchange; each server instance has a queue
  ``<prefix>.instance.<id>`` bound to it with ``control.#`` always, and with
  ``user.<name>`` while that user has a socket on the instance. So an
  instance receives only its own users' notifications.
- ``<prefix>.jobs`` holds operations waiting for a worker, and
  ``<prefix>.jobs.dead`` the jobs a worker gave up on.

One caveat shapes the API: the management API's message *counts* are
statistics, refreshed every 5 seconds, so they trail what just happened. For
an exact count now, :meth:`RabbitView.exact_count` asks the queue itself over
AMQP. Everything that settles "eventually" is awaited with
:meth:`RabbitView.wait_until`, which always gives up in the end.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import aiohttp
from aio_pika.exceptions import AMQPConnectionError, ChannelNotFoundEntity

from ..config import Settings, redact
from .tables import Check, Table, _short, wait_until

REQUEST_TIMEOUT = 5.0  # seconds for any one call: a notebook cell must never hang


class ManagementUnavailable(ConnectionError):
    """The RabbitMQ management API (or the broker) did not answer."""


class RabbitView:
    """The RabbitMQ side of one notifylab deployment (names under ``prefix``)."""

    def __init__(
        self,
        prefix: str = "notifylab",
        api_url: str = "http://127.0.0.1:15672",
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        broker_url: str | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self.vhost = vhost
        # HTTP basic auth, built by hand: aiohttp.BasicAuth is deprecated in 3.14,
        # and its replacement does not exist in the older aiohttp we support.
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        if broker_url is None:  # the AMQP port of the same host, same account
            host = urlsplit(self.api_url).hostname
            path = "/" if vhost == "/" else "/" + quote(vhost, safe="")
            broker_url = f"amqp://{quote(user)}:{quote(password)}@{host}:5672{path}"
        # Settings derives every name from the prefix, exactly as servers do.
        self.names = Settings(prefix=prefix, broker_url=broker_url)
        self._http: aiohttp.ClientSession | None = None
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self._last = ""  # the last answer, for wait_until's timeout message

    # -- the management API -------------------------------------------------

    async def _get(self, what: str) -> Any:
        if self._http is None:  # made here, inside the running loop
            self._http = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            )
        url = f"{self.api_url}/api/{what}/{quote(self.vhost, safe='')}"
        try:
            async with self._http.get(url) as response:
                if response.status == 401:
                    raise ManagementUnavailable(
                        f"the RabbitMQ management API at {self.api_url} refused the user and password (401)"
                    )
                response.raise_for_status()
                return await response.json()
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ManagementUnavailable(
                f"cannot reach the RabbitMQ management API at {self.api_url} ({type(exc).__name__}); "
                "enable it with `rabbitmq-plugins enable rabbitmq_management`"
            ) from None

    def _mine(self, name: str) -> bool:
        return name.startswith(self.names.prefix + ".")

    def _remember(self, call: str, answer: Any) -> Any:
        self._last = f"{call} -> {_short(answer)}"
        return answer

    async def exchanges(self) -> Table:
        """The prefix's exchanges: name, type (topic, fanout...) and durable."""
        rows = [
            {"name": e["name"], "type": e["type"], "durable": e["durable"]}
            for e in await self._get("exchanges")
            if self._mine(e["name"])
        ]
        return self._remember(
            "exchanges()", Table(sorted(rows, key=lambda r: r["name"]), ["name", "type", "durable"])
        )

    async def queues(self) -> Table:
        """The prefix's queues: messages ready and unacked, consumers, and the
        publish and deliver rates (messages/s) once statistics exist.

        The counts are the management API's statistics, up to 5 s old; use
        :meth:`exact_count` when a cell must assert an exact number now."""
        rows = []
        for q in await self._get("queues"):
            if not self._mine(q["name"]):
                continue
            stats = q.get("message_stats", {})
            rows.append(
                {
                    "name": q["name"],
                    "ready": q.get("messages_ready"),
                    "unacked": q.get("messages_unacknowledged"),
                    "consumers": q.get("consumers"),
                    "publish_rate": stats.get("publish_details", {}).get("rate"),
                    "deliver_rate": stats.get("deliver_get_details", {}).get("rate"),
                }
            )
        columns = ["name", "ready", "unacked", "consumers", "publish_rate", "deliver_rate"]
        return self._remember("queues()", Table(sorted(rows, key=lambda r: r["name"]), columns))

    async def bindings(self, queue: str | None = None) -> Table:
        """Bindings into the prefix's queues (or into ``queue`` only): source
        exchange, destination queue, routing key, and the instance id when the
        queue is an instance's ``<prefix>.instance.<id>``."""
        # "<prefix>.instance.", from config's own naming (instance_queue("") would mean "mine").
        instance_prefix = self.names.instance_queue("*").removesuffix("*")
        rows = [
            {
                "source": b["source"],
                "destination": b["destination"],
                "routing_key": b["routing_key"],
                "instance": b["destination"].removeprefix(instance_prefix)
                if b["destination"].startswith(instance_prefix)
                else "",
            }
            for b in await self._get("bindings")
            # Source "" is the default exchange, which binds every queue by
            # its own name: true of all queues, so it only adds noise.
            if b["source"]
            and b["destination_type"] == "queue"
            and (b["destination"] == queue if queue else self._mine(b["destination"]))
        ]
        rows.sort(key=lambda r: (r["destination"], r["source"], r["routing_key"]))
        return self._remember(
            f"bindings({queue!r})" if queue else "bindings()",
            Table(rows, ["source", "destination", "routing_key", "instance"]),
        )

    async def instance_bindings(self) -> dict[str, list[str]]:
        """Instance id -> the sorted user routing keys (``user.ann``...) its
        queue is bound to on the events exchange: which users each instance
        receives notifications for. ``control.#`` (bound on every instance
        queue) is left out; an instance with no users maps to ``[]``."""
        found: dict[str, list[str]] = {}
        for row in await self.bindings():
            if row["instance"] and row["source"] == self.names.events_exchange:
                keys = found.setdefault(row["instance"], [])
                if not row["routing_key"].startswith("control."):
                    keys.append(row["routing_key"])
        answer = {instance: sorted(keys) for instance, keys in sorted(found.items())}
        return self._remember("instance_bindings()", answer)

    # -- AMQP ---------------------------------------------------------------

    async def exact_count(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) of ``queue``, exact at this moment.

        The management API's counts are statistics that RabbitMQ refreshes
        every 5 seconds, so right after a publish :meth:`queues` may still show
        the old number. A *passive* declare over AMQP ("does this queue exist?
        do not create it") is answered by the queue itself, with its current
        count of ready messages (not those delivered and not yet acked) and
        of consumers. Raises LookupError if there is no such queue."""
        try:
            if self._amqp is None or self._amqp.is_closed:
                self._amqp = await aio_pika.connect(self.names.broker_url, timeout=REQUEST_TIMEOUT)
            # A channel of its own: a passive declare of a missing queue closes it.
            async with self._amqp.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True, timeout=REQUEST_TIMEOUT)
                result = declared.declaration_result
                answer = (result.message_count or 0, result.consumer_count or 0)
        except ChannelNotFoundEntity:
            raise LookupError(f"RabbitMQ has no queue {queue!r}") from None
        except (AMQPConnectionError, OSError, TimeoutError) as exc:
            raise ManagementUnavailable(
                f"cannot reach RabbitMQ at {redact(self.names.broker_url)} ({type(exc).__name__})"
            ) from None
        return self._remember(f"exact_count({queue!r})", answer)

    # -- waiting and closing --------------------------------------------------

    async def wait_until(self, check: Check, timeout: float = 10.0, interval: float = 0.2) -> Any:
        """Await ``check()`` (plain or async) every ``interval`` s until it is true;
        returns its value. After ``timeout`` s, raises TimeoutError saying what
        ``check`` returned last and this view's last answer. ``check`` must ask
        again each time (a dict fetched once never changes)::

            async def ann_on_a() -> bool:
                return "user.ann" in (await rabbit.instance_bindings()).get("a", [])
            await rabbit.wait_until(ann_on_a)
        """
        return await wait_until(check, timeout, interval, seen=lambda: self._last)

    async def close(self) -> None:
        """Close the HTTP session and the AMQP connection (if any was opened)."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._amqp is not None:
            await self._amqp.close()
            self._amqp = None

    async def __aenter__(self) -> RabbitView:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
