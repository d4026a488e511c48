"""A notifylab cluster for a notebook: its instances, its workers, its users.

Every lesson starts one of two ways::

    cluster = await Cluster.kit()          # the kit's cluster (make up), started if missing
    cluster = await Cluster.start("07")    # a private one, for lessons that break things

``kit()`` joins the instances ``make up`` runs (ports ``NOTIFYLAB_KIT_PORTS``,
default 8081 and 8082; prefix ``NOTIFYLAB_PREFIX``, default ``notifylab``) and
starts whatever is missing, so running a lesson twice, or with nothing
started at all, gives the same cluster. ``start()`` makes a cluster of its own
on free ports under a fresh prefix: killing its instances disturbs nobody,
and :meth:`Cluster.close` removes every key and queue it made. With
``NOTIFYLAB_KIT_ISOLATE=1`` (CI runs lessons in parallel) ``kit()`` does
the same.

Whatever a cluster started is stopped by :meth:`close`, and at the latest
when the kernel exits (see ``processes.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from ..bus.broker import connect_plain
from ..config import Settings
from ..redisurl import make_client
from .client import Client, ClientError
from .processes import Lab, LabProcess, free_port

PASSWORD = "correct horse battery"  # every lesson user's password: the lessons are about delivery
KIT_PORTS = "NOTIFYLAB_KIT_PORTS"
KIT_ISOLATE = "NOTIFYLAB_KIT_ISOLATE"
INSTANCE_NAMES = "abcdefgh"


class Cluster:
    """Server instances and workers sharing one prefix, and the clients a
    lesson made on them. Build it with :meth:`kit` or :meth:`start`."""

    def __init__(self, prefix: str, lab: Lab, owns_prefix: bool):
        self.prefix = prefix
        self.lab = lab
        self.owns_prefix = owns_prefix  # True: close() removes every key and queue under the prefix
        self.settings = Settings.from_env(lab.env)
        # Instances as URLs: some may run outside this kernel (make up's).
        self.urls: list[str] = []
        self.clients: list[Client] = []

    def __repr__(self) -> str:  # no ports or ids: notebook outputs stay the same run to run
        return f"<Cluster {len(self.urls)} instances, {len(self.workers)} workers started here>"

    # -- making one ---------------------------------------------------------

    @classmethod
    async def start(cls, name: str = "lesson", servers: int = 2, workers: int = 1, **env: str) -> Cluster:
        """A private cluster on free ports under a fresh prefix ``<name>-<random>``.
        ``env`` adds settings by variable name, e.g. ``NOTIFYLAB_ROUTING="fanout"``."""
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "lesson"
        prefix = f"{slug}-{secrets.token_hex(3)}"
        cluster = cls(prefix, _lab(prefix, env), owns_prefix=True)
        try:
            for _ in range(servers):
                await cluster.add_server()
            for _ in range(workers):
                await cluster.add_worker()
        except BaseException:
            await cluster.close()
            raise
        return cluster

    @classmethod
    async def kit(cls, servers: int = 2, workers: int = 1) -> Cluster:
        """The kit's cluster: join its running instances, start what is missing."""
        if os.environ.get(KIT_ISOLATE, "") not in ("", "0"):
            return await cls.start("kit", servers, workers)
        ports = [int(p) for p in os.environ.get(KIT_PORTS, "8081,8082").split(",") if p.strip()]
        prefix = os.environ.get("NOTIFYLAB_PREFIX", "notifylab")
        cluster = cls(prefix, _lab(prefix, {}), owns_prefix=False)
        for i, port in enumerate(ports[:servers]):
            url = f"http://127.0.0.1:{port}"
            health = await _health(url)
            if health.get("ok") and health.get("prefix") == prefix:
                cluster.urls.append(url)  # already running (make up's): join it
            elif health:
                raise RuntimeError(
                    f"port {port} answers, but not as a notifylab instance of prefix "
                    f"{prefix!r} ({health}); stop it or set {KIT_PORTS}"
                )
            else:
                await cluster.add_server(port, INSTANCE_NAMES[i])
        for _ in range(workers - await cluster.job_consumers()):
            await cluster.add_worker()
        return cluster

    # -- processes ----------------------------------------------------------

    @property
    def servers(self) -> list[LabProcess]:
        """The instances this cluster started (not those it joined)."""
        return [p for p in self.lab.processes if p.url]

    @property
    def workers(self) -> list[LabProcess]:
        return [p for p in self.lab.processes if not p.url]

    async def add_server(self, port: int | None = None, instance_id: str | None = None) -> LabProcess:
        """Start one more instance (on a free port unless ``port``)."""
        instance_id = instance_id or INSTANCE_NAMES[len(self.urls) % len(INSTANCE_NAMES)]
        proc = await self.lab.start_server(port or free_port(), instance_id=instance_id)
        assert proc.url is not None
        self.urls.append(proc.url)
        return proc

    async def add_worker(self) -> LabProcess:
        """Start one more worker; returns once it consumes the jobs queue."""
        before = await self.job_consumers()
        proc = await self.lab.start_worker()
        async with asyncio.timeout(30):
            while await self.job_consumers() <= before:
                if not proc.running:
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
                await asyncio.sleep(0.1)
        return proc

    def server(self, instance_id: str) -> LabProcess:
        """The started instance called ``instance_id`` ("a", "b", ...)."""
        for proc in self.servers:
            if proc.name == f"server-{instance_id}":
                return proc
        raise KeyError(f"no instance {instance_id!r} started by this cluster")

    async def status(self) -> list[dict[str, Any]]:
        """One row a process this cluster started: name, pid, URL, health."""
        rows = []
        for proc in self.lab.processes:
            health = await proc.health()
            rows.append(
                {
                    "name": proc.name,
                    "running": proc.running,
                    "pid": proc.pid,
                    "url": proc.url or "",
                    "ready": bool(health.get("ok")),
                }
            )
        return rows

    async def job_consumers(self) -> int:
        """How many workers consume the jobs queue right now (exact, from
        RabbitMQ itself: a passive declare, not the 5 s-old statistics)."""
        connection = await connect_plain(self.settings.broker_urls)
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(self.settings.jobs_queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:  # no worker ever declared it
                return 0
            result = queue.declaration_result
            return (result.consumer_count or 0) if result is not None else 0

    # -- sessions -----------------------------------------------------------

    async def client(
        self, user: str, instance: int = 0, connect: bool = True, password: str = PASSWORD
    ) -> Client:
        """A live session of ``user`` (registered on first use) on the
        ``instance``-th URL; closed by :meth:`close`."""
        client = Client(self.urls[instance])
        self.clients.append(client)
        # Log in first: on the kit's cluster the user usually exists (a
        # lesson run twice), and every refused registration counts against
        # this address in the login throttle.
        try:
            await client.login(user, password)
        except ClientError as exc:
            if exc.status != 401:
                raise
            try:
                await client.register(user, password)
            except ClientError as taken:
                if taken.status != 409:  # 409: another session registered it meanwhile
                    raise
                await client.login(user, password)
        if connect:
            await client.connect()
            await client.wait_for(lambda: client.hello is not None, 10)
        return client

    def react_url(self, instance: int = 0) -> str:
        """The React client of an instance, as a path through JupyterLab's
        server proxy (same origin as JupyterLab, so its cookie works)."""
        port = self.urls[instance].rsplit(":", 1)[1]
        return f"/proxy/{port}/"

    # -- ending -------------------------------------------------------------

    async def close(self) -> None:
        """Close the clients, stop every process started here and, for a
        private cluster, remove its Redis keys and RabbitMQ queues."""
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        self.clients.clear()
        await self.lab.stop_all()
        if self.owns_prefix:
            ids = [p.name.removeprefix("server-") for p in self.servers]
            await remove_prefix(self.settings, map(self.settings.instance_queue, ids))

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _lab(prefix: str, env: dict[str, str]) -> Lab:
    log_dir = Path(tempfile.gettempdir()) / "notifylab-logs" / prefix
    # A lesson registers every user it needs from this one address: each new
    # user costs one refused login there. The throttle stays on; its
    # allowance fits a lesson (lesson 08 opens hundreds of sessions).
    defaults = {
        "NOTIFYLAB_PREFIX": prefix,
        "NOTIFYLAB_LOG_LEVEL": "WARNING",
        "NOTIFYLAB_LOGIN_ATTEMPTS": "100",
    }
    return Lab({**defaults, **env}, log_dir=log_dir)


async def _health(url: str) -> dict:
    """``/healthz`` of ``url``; {} when nothing answers there."""
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(3):
            async with http.get(f"{url}/healthz") as response:
                return await response.json(content_type=None) or {"ok": False}
    except (aiohttp.ClientError, TimeoutError):
        return {}
    except ValueError:
        return {"ok": False, "error": "not JSON"}


async def remove_prefix(settings: Settings, queues: Iterable[str] = ()) -> None:
    """Delete every Redis key under ``settings.prefix``, the jobs and dead
    queues, ``queues`` (e.g. the instances' own) and the prefix's exchanges.
    The lessons, the tests and the benchmark clean up with it."""
    redis = make_client(settings.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
    connection = await connect_plain(settings.broker_urls)
    async with connection:
        for queue in (settings.jobs_queue, settings.dead_queue, *queues):
            channel = await connection.channel()  # a failed delete closes its channel
            await channel.queue_delete(queue)
        for exchange in (settings.events_exchange, settings.fanout_exchange):
            channel = await connection.channel()
            await channel.exchange_delete(exchange)
