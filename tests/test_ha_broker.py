"""RabbitMQ beyond one machine: a three-node cluster, a node SIGKILLed under load.

The module starts a cluster of three RabbitMQ nodes on loopback once
(``notifylab.lab.rabbit_cluster``, about 20 s here), beside the machine's
own RabbitMQ, and removes it at the end. Each fault test runs a lab (two
instances, a worker) that knows all three nodes (``NOTIFYLAB_BROKER_URL``
holds their URLs) and keeps its jobs in a quorum queue
(``NOTIFYLAB_JOBS_QUEUE=quorum``); under about 200 notifications a second
(users running operations, as in tests/test_chaos.py) it kills one node:

- the leader of the jobs queue (where its jobs are kept and handed out),
- the node the worker takes its jobs through (its jobs come back, and every
  operation restarts from its last recorded step), and
- the node an instance's own queue lives on (where its users' news arrive).

Then every operation must succeed, every session must hold every
notification of its user's stream once and in order (``lab.verdict``), and
delivery must have resumed within RESUME_LIMIT seconds of the kill. The
killed node is started again after each test, so each one starts with three.

The first tests, without the cluster, check the order in which a
connection walks the URLs, and that one URL and the classic jobs queue
work as they did; the next one checks the jobs queue's type against the
setting.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika
import pytest

from notifylab.bus.broker import FailoverConnection, connect_broker
from notifylab.bus.jobs import RabbitJobs
from notifylab.config import ConfigError, Settings
from notifylab.errors import ServiceUnavailable
from notifylab.lab import Lab
from notifylab.lab.client import Client
from notifylab.lab.rabbit_cluster import RabbitCluster, RabbitNode
from notifylab.lab.tables import wait_until
from notifylab.lab.verdict import verdict
from support import BROKER, add_chaos_row, longest_silence, new_prefix, servers

pytestmark = pytest.mark.ha

USERS = 8  # each with a session on a and on b, and an operation running
STEP_SECONDS = 0.04  # a notification every 40 ms per user: 8 users make 200 a second
STEPS = 100  # 4 s of steps (the most an operation has): the kill lands early in them
RESUME_LIMIT = 5.0  # seconds: the target for delivery to resume after a node dies
WAIT = 60.0  # seconds any one wait of a test may take, at most


# -- the order of the URLs (no cluster needed) ----------------------------------


async def test_a_connection_walks_the_urls_in_turn_from_where_it_started():
    """Three "nodes" that take a TCP connection and hang up at once: each
    attempt fails, and the next goes to the next URL, round the list."""
    seen: list[int] = []

    def listener(index: int) -> Callable[..., Awaitable[None]]:
        async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(index)
            writer.close()

        return hang_up

    nodes = [await asyncio.start_server(listener(i), "127.0.0.1", 0) for i in range(3)]
    urls = [f"amqp://guest:guest@127.0.0.1:{n.sockets[0].getsockname()[1]}/" for n in nodes]
    # fail_fast off: keep trying after the first attempt fails, as after a lost connection.
    connection = FailoverConnection(urls, start=1, reconnect_interval=0.01, fail_fast=False)
    connecting = asyncio.create_task(connection.connect(timeout=1))
    try:
        await wait_until(lambda: len(seen) >= 7, timeout=10, interval=0.01)
    finally:
        connecting.cancel()
        await connection.close()
        for node in nodes:
            node.close()
    assert seen[:7] == [1, 2, 0, 1, 2, 0, 1]


async def test_connect_broker_takes_the_first_node_that_answers():
    dead = [f"amqp://guest:guest@127.0.0.1:{port}/" for port in _closed_ports(2)]
    connection = await connect_broker([*dead, BROKER])  # wherever it starts, it ends on the live one
    try:
        assert str(connection.url) == BROKER
    finally:
        await connection.close()
    with pytest.raises(ServiceUnavailable) as refused:
        await connect_broker(dead)
    assert all(f":{url.rsplit(':', 1)[1].rstrip('/')}" in str(refused.value) for url in dead)


async def test_one_url_and_the_classic_queue_are_what_they_were(make_lab, clients):
    """The single-node default costs nothing: one URL (the machine's
    RabbitMQ), the classic priority queue for jobs, operations run."""
    lab = await make_lab()
    settings = Settings.from_env(lab.env)
    assert settings.broker_urls == (BROKER,) and settings.jobs_queue_type == "classic"
    first = await clients(servers(lab)[0])
    second = await clients(servers(lab)[1], user=first.user)
    op = await first.start("train", steps=5, step_seconds=0.02)
    assert (await first.wait_operation(op["id"], WAIT))["type"] == "operation.succeeded"
    (await verdict(first, second, timeout=30)).assert_clean()
    connection = await aio_pika.connect(BROKER)
    async with connection:  # the queue has today's arguments: declaring it with them is accepted
        dead_letters = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_queue}
        arguments = {**dead_letters, "x-max-priority": 10}
        await (await connection.channel()).declare_queue(
            settings.jobs_queue, durable=True, arguments=arguments
        )


def _closed_ports(count: int) -> list[int]:
    """Ports nothing listens on (bound for a moment, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# -- the cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
async def rabbit(services: None) -> AsyncIterator[RabbitCluster]:
    """Three RabbitMQ nodes, clustered, on free ports; removed after the module.
    Names of their own too, so that two runs (or xdist workers) never meet."""
    cluster = RabbitCluster(name=f"nltestha{uuid.uuid4().hex[:4]}", base_port=None)
    await cluster.start()  # removes what it started if it fails
    try:
        yield cluster
    finally:
        await cluster.remove()


async def test_the_jobs_queue_type_is_checked_against_the_setting(rabbit: RabbitCluster):
    """A quorum queue where the setting says classic (or the reverse) is a
    one-line error naming NOTIFYLAB_JOBS_QUEUE and the fix, not a channel error."""
    prefix = new_prefix()
    quorum = RabbitJobs(Settings(prefix=prefix, broker_url=rabbit.broker_url, jobs_queue_type="quorum"))
    classic = RabbitJobs(Settings(prefix=prefix, broker_url=rabbit.broker_url, jobs_queue_type="classic"))
    try:
        await quorum.start()
        with pytest.raises(
            ConfigError, match=r"NOTIFYLAB_JOBS_QUEUE=classic: set NOTIFYLAB_JOBS_QUEUE=quorum"
        ):
            await classic.start()
    finally:
        await classic.close()
        await quorum.close()
        connection = await aio_pika.connect(rabbit.urls[0])
        async with connection:
            await (await connection.channel()).queue_delete(f"{prefix}.jobs")
            await (await connection.channel()).queue_delete(f"{prefix}.jobs.dead")


def lab_env(rabbit: RabbitCluster) -> dict[str, str]:
    """What the lab's processes get: every node, and a quorum jobs queue."""
    return {
        "NOTIFYLAB_BROKER_URL": rabbit.broker_url,
        "NOTIFYLAB_JOBS_QUEUE": "quorum",
        # Every operation runs at once: the worker's default of 2 would queue the rest.
        "NOTIFYLAB_WORKER_CONCURRENCY": str(USERS),
        "NOTIFYLAB_MAX_ACTIVE_OPERATIONS": "5",
    }


@dataclass
class Load:
    """The users' sessions (one on a, one on b each) and their operations:
    per user, one running when the node dies (its progress is the load), one
    waiting in the jobs queue then, and one started just after the kill."""

    pairs: list[tuple[Client, Client]]
    running: list[str]
    queued: list[str]
    later: list[str] = field(default_factory=list)

    @property
    def sessions(self) -> list[Client]:
        return [client for pair in self.pairs for client in pair]

    @property
    def operations(self) -> list[tuple[Client, str]]:
        """Every operation, with the session that started it."""
        return [
            (first, op_id)
            for ops in (self.running, self.queued, self.later)
            for (first, _), op_id in zip(self.pairs, ops, strict=True)
        ]

    @property
    def restarted(self) -> list[str]:
        """The operations that restarted (their job came back to a worker)."""
        return [
            op_id
            for first, op_id in self.operations
            if any(n["type"] == "operation.restarted" for n in first.of_operation(op_id))
        ]

    async def start_later(self) -> None:
        """One more short operation per user: its job is published while the
        broker fails over, and must be confirmed, not lost."""
        self.later = await start_each(self.pairs, 5)

    async def judge(self, fault: str, killed_at: float) -> None:
        """Wait for every operation, judge every session, add the chaos
        table's row, and assert: all succeeded, nothing lost, duplicated or
        reordered, delivery resumed within RESUME_LIMIT of the kill."""
        finals = [await first.wait_operation(op_id, WAIT) for first, op_id in self.operations]
        judged = await verdict(*self.sessions, timeout=30)
        pause = max(
            _pause_after(client, op_id, killed_at)
            for pair, op_id in zip(self.pairs, self.running, strict=True)
            for client in pair
        )
        add_chaos_row(
            fault,
            "SIGKILL of the node's beam.smp; 'resumed' counts from the kill",
            len(self.pairs) / STEP_SECONDS,
            judged,
            finals,
            len(self.restarted),
            max(longest_silence(c) for c in self.sessions),
            pause,
        )
        judged.assert_clean()
        assert all(f["type"] == "operation.succeeded" for f in finals), [f["type"] for f in finals]
        assert pause < RESUME_LIMIT, f"delivery paused {pause:.2f} s after the kill"


def _pause_after(client: Client, op_id: str, killed_at: float) -> float:
    """How long the progress of operation ``op_id`` stopped for this session
    because of the kill: the longest silence between its notifications that
    ends after the kill (the first one from the last before it). The
    operation runs for seconds after the kill, so a session that heard
    nothing more of it counts as a pause without end."""
    kill_ms = killed_at * 1000
    times = sorted(n["received"] for n in client.of_operation(op_id) if "received" in n)
    before = [t for t in times if t < kill_ms]
    after = [t for t in times if t >= kill_ms]
    if not after:
        return float("inf")
    edges = [before[-1] if before else kill_ms, *after]
    return max(b - a for a, b in itertools.pairwise(edges)) / 1000


async def start_load(lab: Lab, clients: Callable[..., Awaitable[Client]]) -> Load:
    """USERS users with a session on a and on b, each running an operation
    and one more waiting in the jobs queue behind it (the worker has a slot
    per user); returns once every session has seen a few notifications."""
    url_a, url_b = servers(lab)
    pairs = []
    for _ in range(USERS):
        first = await clients(url_a)
        pairs.append((first, await clients(url_b, user=first.user)))
    running = await start_each(pairs, STEPS)
    for (_, second), op_id in zip(pairs, running, strict=True):
        await second.wait_for(lambda s=second, o=op_id: len(s.of_operation(o)) >= 5, 30)
    return Load(pairs, running, queued=await start_each(pairs, 5))


async def start_each(pairs: list[tuple[Client, Client]], steps: int) -> list[str]:
    """Start an operation of ``steps`` steps for each user; their ids."""
    return [(await first.start("train", steps=steps, step_seconds=STEP_SECONDS))["id"] for first, _ in pairs]


async def kill_under_load(rabbit: RabbitCluster, running: Load, node: RabbitNode, fault: str) -> None:
    """Kill ``node``, start one more operation per user, and judge the run."""
    killed_at = time.time()
    await rabbit.kill(node)
    await running.start_later()
    await running.judge(fault, killed_at)


async def test_the_jobs_queues_leader_killed_under_load(rabbit, make_lab, clients):
    lab = await make_lab(**lab_env(rabbit))
    running = await start_load(lab, clients)
    jobs = Settings.from_env(lab.env).jobs_queue
    leader = await rabbit.leader(jobs)
    try:
        await kill_under_load(rabbit, running, leader, "RabbitMQ node leading the jobs queue killed")
        # The two nodes left elected a leader among themselves; the queue went on there.
        assert (await rabbit.leader(jobs)) != leader
    finally:
        await rabbit.restart(leader)


async def test_the_node_the_worker_takes_jobs_through_killed_under_load(rabbit, make_lab, clients):
    lab = await make_lab(**lab_env(rabbit))
    running = await start_load(lab, clients)
    jobs = Settings.from_env(lab.env).jobs_queue
    [through] = await rabbit.consumer_nodes(jobs)  # the one worker's consumer
    try:
        await kill_under_load(rabbit, running, through, "RabbitMQ node the worker consumed through killed")
        # Its unacked jobs went back to the queue and came again, after it
        # failed over: every running operation restarted from its last
        # recorded step, and the first runner of each was fenced off
        # (nothing interleaved, or the verdict would have seen it).
        assert set(running.running) <= set(running.restarted)
        assert (await rabbit.consumer_nodes(jobs)) != [through]
    finally:
        await rabbit.restart(through)


async def test_the_node_holding_an_instances_queue_killed_under_load(rabbit, make_lab, clients):
    lab = await make_lab(**lab_env(rabbit))
    running = await start_load(lab, clients)
    queue = Settings.from_env(lab.env).instance_queue("a")
    home = await rabbit.leader(queue)  # a classic queue: the one node it lives on
    try:
        await kill_under_load(rabbit, running, home, "RabbitMQ node holding instance a's queue killed")
        # The queue died with its node; instance a declared it again, with its
        # bindings, on the node it failed over to.
        assert (await rabbit.leader(queue)) != home
    finally:
        await rabbit.restart(home)
