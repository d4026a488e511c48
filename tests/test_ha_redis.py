"""Redis with Sentinel: a primary, a replica and three Sentinels, and the
primary killed under load.

The URL tests need nothing running. The rest share one
:class:`~notifylab.lab.redis_sentinel.SentinelGroup` (Debian's redis-server,
on loopback) and one lab (instances a and b and a worker) that finds the
primary through it (``redis+sentinel://``), with every acknowledged write
confirmed by the replica (``NOTIFYLAB_REDIS_WAIT_REPLICAS=1``).

The load is tests/test_chaos.py's: users with a session on each instance,
each running an operation (a notification every 50 ms: 200 a second for 10
users), and here also a publisher posting to ``/api/publish`` at about 20 a
second, retrying each publication under its Idempotency-Key until it is
acknowledged. Then the fault; then every operation must succeed, every
session must hold its user's stream (read after the failover) once and in
order, every acknowledged publication must be in the stream and in both
its user's sessions, and no session may hold a notification the stream
does not (a write taken back by the failover).

Run it with ``NOTIFYLAB_REDIS_WAIT_REPLICAS=0`` in the environment to see
what WAIT prevents: in the "replica behind" crash, publications answered
202 are missing after the failover and sessions hold notifications the
stream lost; and the lost replica is no longer refused.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from notifylab.config import ConfigError, Settings, redact
from notifylab.ids import id_after
from notifylab.lab import Lab, free_port
from notifylab.lab.client import ClientError
from notifylab.lab.redis_sentinel import RedisServer, SentinelGroup, ask
from notifylab.lab.verdict import stream_after, verdict
from notifylab.redisurl import BlockingSentinelPool, SentinelRedis, make_client, parse_sentinel_url
from notifylab.store.connect import connect_redis
from notifylab.store.inbox import Inbox
from notifylab.store.replication import NotReplicated
from support import new_prefix, servers, two_instances_and_a_worker, users_running_operations

pytestmark = pytest.mark.ha

KEY = "test-ha-publish-key-0123456789abcdef"
WAIT = os.environ.get("NOTIFYLAB_REDIS_WAIT_REPLICAS", "1")  # 0: see the module's docstring
USERS = 10  # each with two sessions and an operation running
STEP_SECONDS = 0.05  # a notification every 50 ms per user: 10 users make 200 a second
STEPS = 100  # 5 s of steps (the most an operation has): the fault lands early in them
TARGET_SECONDS = 15.0  # the target: failover and writing again within it
# What a refused publication may say: Redis away, or written but not confirmed.
REFUSALS = ("the store is unreachable", "replicas confirmed it")


# --- the URL (nothing running) ---------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db():
    target = parse_sentinel_url("redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-2,[::1]:5000/cache/3")
    assert target.sentinels == (("10.0.0.1", 26379), ("sentinel-2", 26379), ("::1", 5000))
    assert (target.service, target.db, target.username, target.password) == ("cache", 3, None, "s@cret")
    assert parse_sentinel_url("redis+sentinel://127.0.0.1:1/notifylab").db == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://127.0.0.1:26379", "service name"),
        ("redis+sentinel://127.0.0.1:26379/", "service name"),
        ("redis+sentinel://127.0.0.1:26379/notifylab/zero", "database must be a number"),
        ("redis+sentinel://127.0.0.1:port/notifylab", "port must be a number"),
        ("redis+sentinel://127.0.0.1:0/notifylab", "out of range"),
        ("redis+sentinel://a:1,,b:2/notifylab", "host:port for every Sentinel"),
        ("redis+sentinel://:secret@:1/notifylab", "host:port for every Sentinel"),
    ],
)
def test_a_malformed_sentinel_url_says_what_is_wrong(url, says):
    with pytest.raises(ConfigError, match=says) as refused:
        parse_sentinel_url(url)
    assert "secret" not in str(refused.value)


async def test_a_sentinel_url_makes_a_client_that_asks_the_sentinels():
    client = make_client(
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/cache/2", max_connections=7, pool_timeout=3
    )
    try:
        pool = client.connection_pool
        assert isinstance(client, SentinelRedis) and isinstance(pool, BlockingSentinelPool)
        assert pool.service_name == "cache" and pool.is_master
        assert (pool.max_connections, pool.timeout, pool.connection_kwargs["db"]) == (7, 3, 2)
        asked = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        assert [(k["host"], k["port"]) for k in asked] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
        # Nothing answers there: a clear ConnectionError, within the Sentinels' timeouts.
        with pytest.raises(
            RedisConnectionError,
            match=r"no Sentinel \(127.0.0.1:1, 127.0.0.1:2\) names a primary for 'cache'",
        ):
            async with asyncio.timeout(10):
                await client.ping()
    finally:
        await client.aclose()


async def test_a_plain_url_is_handed_to_redis_py_as_before():
    plain = make_client("redis://127.0.0.1:6379/4", decode_responses=True)
    blocking = make_client("redis://127.0.0.1:6379/0", max_connections=9, pool_timeout=5)
    try:
        assert type(plain.connection_pool).__name__ == "ConnectionPool"
        assert plain.connection_pool.connection_kwargs["db"] == 4
        assert type(blocking.connection_pool).__name__ == "BlockingConnectionPool"
        assert (blocking.connection_pool.max_connections, blocking.connection_pool.timeout) == (9, 5)
    finally:
        await plain.aclose()
        await blocking.aclose()


def test_the_wait_settings_are_off_by_default_and_checked():
    assert Settings().redis_wait_replicas == 0
    assert Settings.from_env({"NOTIFYLAB_REDIS_WAIT_REPLICAS": "1"}).redis_wait_replicas == 1
    with pytest.raises(ConfigError, match="NOTIFYLAB_REDIS_WAIT_REPLICAS"):
        Settings(redis_wait_replicas=-1)
    with pytest.raises(ConfigError, match="NOTIFYLAB_REDIS_WAIT_MS"):
        Settings(redis_wait_ms=0)  # WAIT n 0 would wait for ever
    assert redact("redis+sentinel://:pw@a:1,b:2/notifylab/0") == "redis+sentinel://:***@a:1,b:2/notifylab/0"


# --- the group, and a lab on it --------------------------------------------------------------


@pytest.fixture(scope="module")
async def group(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SentinelGroup]:
    async with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture
async def healthy(group: SentinelGroup) -> SentinelGroup:
    """The group as each test needs it: a primary with its replica online."""
    await group.wait_replicas(1, timeout=20)
    return group


@pytest.fixture(scope="module")
async def lab(
    services: None, group: SentinelGroup, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Lab]:
    env = {
        "NOTIFYLAB_REDIS_URL": group.url,
        "NOTIFYLAB_REDIS_WAIT_REPLICAS": WAIT,
        "NOTIFYLAB_API_KEY": KEY,
        "NOTIFYLAB_PUBLISH_RATE": "0",
        # Every operation runs at once: the worker's default of 2 would queue the rest.
        "NOTIFYLAB_WORKER_CONCURRENCY": str(USERS),
        "NOTIFYLAB_MAX_ACTIVE_OPERATIONS": "5",
    }
    async with two_instances_and_a_worker(tmp_path_factory.mktemp("ha"), **env) as lab:
        yield lab


# --- WAIT in the store -------------------------------------------------------------------------


async def test_a_write_no_replica_confirms_is_refused_and_a_patient_one_waits(healthy):
    """With the replica gone, an append is refused (NotReplicated) after one
    WAIT: written on the primary, as WAIT undoes nothing, but never
    acknowledged. A patient writer (a worker) waits for the replica instead."""
    group = healthy
    settings = Settings(prefix=new_prefix(), redis_url=group.url, redis_wait_replicas=1, redis_wait_ms=200)
    redis = await connect_redis(settings)
    [replica] = await group.replicas()
    try:
        inbox = Inbox(redis, settings)
        assert (await inbox.append("ann", {"n": 1}))["prev"] == "0-0"  # confirmed: the replica is there
        await replica.kill()
        started = time.monotonic()
        with pytest.raises(NotReplicated, match=r"0 of 1 replicas confirmed it within \d+ ms"):
            await inbox.append("ann", {"n": 2})
        assert time.monotonic() - started < 2
        assert len(await inbox.after("ann")) == 2  # on the primary all the same

        patient = Inbox(redis, settings, patience=20)
        back = asyncio.create_task(_restart_after(group, replica, 0.5))
        started = time.monotonic()
        appended = await patient.append("ann", {"n": 3})
        waited = time.monotonic() - started
        await back
        assert 0.5 < waited < 20, waited
        await group.wait_replicas(1)
        copy = await ask(replica.port, "XRANGE", inbox.key("ann"), "-", "+")
        assert isinstance(copy, list) and copy[-1][0] == appended["id"]  # the replica has it
    finally:
        if not replica.running:
            await group.restart(replica)
        await redis.aclose()


async def _restart_after(group: SentinelGroup, server: RedisServer, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await group.restart(server)


# --- the system under load -------------------------------------------------------------------


@dataclass
class Publication:
    """One notification published through ``/api/publish``, retried under
    its Idempotency-Key until acknowledged (202)."""

    user: str
    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    acked: float = 0.0  # time.time() of the 202 (0: never)
    acked_try: float = 0.0  # when the try that got it was sent
    id: str = ""
    refusals: list[tuple[int, str]] = field(default_factory=list)  # (status, error); 0: no answer


class Publishing:
    """Publishes to the load's users, two at a time, until stopped; each
    publication retried (bounded) until acknowledged. (Not the lab's
    Publisher: this one records every try and answer.)"""

    def __init__(self, urls: list[str], users: list[str]):
        self.urls, self.users = urls, users
        self.done: list[Publication] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(k)) for k in range(2)]

    async def stop(self) -> None:
        self._stop.set()
        try:
            async with asyncio.timeout(45):  # a publication in flight retries for at most 30 s
                await asyncio.gather(*self._tasks)
        finally:
            await self._http.close()

    async def _run(self, k: int) -> None:
        for n in itertools.count(k):
            if self._stop.is_set():
                return
            self.done.append(await self._publish(Publication(self.users[n % len(self.users)])))
            await asyncio.sleep(0.1)

    async def _publish(self, pub: Publication) -> Publication:
        body = {"user": pub.user, "type": "ha.check", "title": f"publication {pub.key}"}
        headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": pub.key}
        deadline = time.time() + 30
        for attempt in itertools.count():
            sent = time.time()
            try:
                url = self.urls[attempt % len(self.urls)]
                async with self._http.post(f"{url}/api/publish", json=body, headers=headers) as r:
                    answer = await r.json(content_type=None)
                    if r.status == 202:
                        pub.acked, pub.acked_try, pub.id = time.time(), sent, answer["ids"][pub.user]
                        return pub
                    pub.refusals.append((r.status, str(answer.get("error"))))
                    if r.status != 503:
                        return pub  # a refusal the test fails on
            except (aiohttp.ClientError, TimeoutError) as exc:
                pub.refusals.append((0, type(exc).__name__))
            if time.time() > deadline:
                return pub
            await asyncio.sleep(0.1)
        raise AssertionError("unreachable")


def _ms(notification_id: str) -> int:
    """When the primary wrote it: a stream id is ``<milliseconds>-<sequence>``."""
    return int(notification_id.split("-")[0])


async def leave_the_replica_behind(group: SentinelGroup, lag: float) -> None:
    """The replica loses its primary for ``lag`` seconds before the crash,
    as in a network blip: it is pointed at an address where nothing listens
    (``REPLICAOF``), so what the primary takes meanwhile only the primary
    has. (Cutting its link on the primary's side, CLIENT KILL, is no use:
    the replica links up again and catches up within milliseconds.)"""
    [replica] = await group.replicas()
    await ask(replica.port, "REPLICAOF", "127.0.0.1", str(free_port()))
    await asyncio.sleep(lag)


FAULTS = {
    "crash": "SIGKILL the primary",
    "crash-with-the-replica-behind": "the replica cut off 0.3 s, then SIGKILL the primary",
    "switchover": "SENTINEL FAILOVER (planned; the old primary lives on and is demoted)",
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_the_primary_lost_under_load(lab, healthy, clients, fault):
    group = healthy
    pairs, ops = await users_running_operations(lab, clients, USERS, STEPS, STEP_SECONDS)
    publisher = Publishing(servers(lab), [first.user for first, _ in pairs])
    publisher.start()
    epoch = await group.failovers()
    try:
        await asyncio.sleep(1.5)  # publications acknowledged before the fault
        if fault == "crash-with-the-replica-behind":
            await leave_the_replica_behind(group, lag=0.3)
        if fault == "switchover":
            old = await group.switchover()
        else:
            old = await group.kill_primary()
        killed_at = time.time()  # a killed one is dead by now: nothing after this was written on it
        new = await group.wait_for_new_primary(old, timeout=TARGET_SECONDS)
        promoted_at = time.time()
        promoted = promoted_at - killed_at
        if fault != "switchover":
            # The crashed server comes back (as an orchestrator would restart
            # it), as a replica of the new primary: with one replica and WAIT
            # 1, nothing can be acknowledged until a replica is back.
            await group.restart(old)
        await group.wait_replicas(1, timeout=TARGET_SECONDS)
        rejoined = time.time() - killed_at
        await asyncio.sleep(2)  # publishing on after the failover
    finally:
        await publisher.stop()

    failovers = await group.failovers() - epoch  # 1, unless a Sentinel failed over again on a hiccup
    finals = [await first.wait_operation(op_id, 90) for (first, _), op_id in zip(pairs, ops, strict=True)]
    sessions = [client for pair in pairs for client in pair]
    judged = await verdict(*sessions, timeout=30)
    streams = {first.user: set(await stream_after(first, first.baseline)) for first, _ in pairs}

    pubs = publisher.done
    acked = [p for p in pubs if p.acked]
    before = [p for p in acked if p.acked < killed_at]
    not_kept = [p for p in acked if p.id not in streams[p.user]]
    shown = {id(c): {n["id"] for n in c.notifications if id_after(n["id"], c.baseline)} for c in sessions}
    undelivered = [p for p in acked if any(p.id not in shown[id(c)] for c in sessions if c.user == p.user)]
    # Notifications a session was shown that the stream (after the failover) no longer holds.
    taken_back = sum(len(shown[id(c)] - streams[c.user]) for c in sessions)
    # Writing again: the first notification written after the promotion that
    # reached a session, and the first publication asked and acknowledged after it.
    promoted_ms = int(promoted_at * 1000)
    delivered = [n["received"] for c in sessions for n in c.notifications if _ms(n["id"]) > promoted_ms]
    steps_again = min(delivered) / 1000 - killed_at if delivered else float("inf")
    writes_again = min(
        (p.acked - killed_at for p in acked if p.acked_try > promoted_at), default=float("inf")
    )
    refusals = [r for p in pubs for r in p.refusals]
    restarted = sum(
        any(n["type"] == "operation.restarted" for n in first.of_operation(op_id))
        for (first, _), op_id in zip(pairs, ops, strict=True)
    )
    print(
        f"\n[{fault}] WAIT {WAIT}: {failovers} failover(s), promoted in {promoted:.2f} s, "
        f"replica back at {rejoined:.2f} s, notifications delivered again at {steps_again:.2f} s, "
        f"publications acknowledged again at {writes_again:.2f} s; {len(acked)}/{len(pubs)} "
        f"publications acknowledged ({len(before)} before the kill), {len(not_kept)} of them lost, "
        f"{len(undelivered)} undelivered; {sum(v.received for v in judged)} delivered, "
        f"{sum(v.lost for v in judged)} lost, {sum(v.duplicated for v in judged)} duplicated, "
        f"{sum(v.out_of_order for v in judged)} reordered, {taken_back} taken back; "
        f"{restarted}/{len(ops)} operations restarted; refusals: "
        f"{sorted({(s, e[:60]) for s, e in refusals})}"
    )

    assert new is not old  # and it said it was the primary (wait_for_new_primary asked it)
    assert promoted < TARGET_SECONDS and steps_again < TARGET_SECONDS and writes_again < TARGET_SECONDS
    assert before, "no publication was acknowledged before the kill: the check checked nothing"
    assert len(acked) == len(pubs), [p.refusals for p in pubs if not p.acked]
    assert all(
        status == 0 or (status == 503 and any(why in error for why in REFUSALS)) for status, error in refusals
    )
    assert not not_kept, f"acknowledged, then lost in the failover: {[p.id for p in not_kept]}"
    assert not undelivered, f"acknowledged, not delivered to every session: {[p.id for p in undelivered]}"
    assert taken_back == 0, f"{taken_back} notifications shown to sessions were taken back by the failover"
    judged.assert_clean()
    assert all(f["type"] == "operation.succeeded" for f in finals), [f["type"] for f in finals]


async def test_without_a_replica_writes_are_refused_and_steps_wait(lab, healthy, clients):
    """The replica lost, the primary alive: nothing can be confirmed. A
    publication and a new operation are refused (503, saying why) rather than
    acknowledged without a copy; the worker holds its steps until the
    replica is back, and the operation carries on without a restart. What
    was refused was written on the primary all the same: the publication's
    retry under its key gets the first ids, and the refused operation runs."""
    group = healthy
    url_a, url_b = servers(lab)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    op_id = (await first.start("train", steps=60, step_seconds=STEP_SECONDS))["id"]
    await second.wait_for(lambda: len(second.of_operation(op_id)) >= 5, 30)
    [replica] = await group.replicas()
    body = {"user": first.user, "type": "ha.check", "title": "while the replica is away"}
    headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": str(uuid.uuid4())}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await replica.kill()
        try:
            async with http.post(f"{url_a}/api/publish", json=body, headers=headers) as r:
                status, answer = r.status, await r.json()
            steps_before = len(second.of_operation(op_id))
            with pytest.raises(ClientError) as started:
                await first.start("train", steps=3, step_seconds=STEP_SECONDS)
            await asyncio.sleep(1)
            held = len(second.of_operation(op_id)) - steps_before
        finally:
            await group.restart(replica)
        await group.wait_replicas(1)
        async with http.post(f"{url_b}/api/publish", json=body, headers=headers) as r:
            retried, again = r.status, await r.json()
            replayed = r.headers.get("Idempotent-Replayed")
    final = await first.wait_operation(op_id, 60)
    [refused] = [
        op["id"] for op in (await first.request("GET", "/api/operations"))["operations"] if op["id"] != op_id
    ]
    refused_final = await first.wait_operation(refused, 30)
    judged = await verdict(first, second, timeout=30)

    assert status == 503, answer
    assert "0 of 1 replicas confirmed it" in answer["error"]
    assert started.value.status == 503 and "0 of 1 replicas confirmed it" in started.value.body["error"]
    assert held <= 1, f"{held} steps went out while no replica could confirm them"
    assert retried == 202 and replayed == "true", again
    assert again["ids"][first.user] in {n["id"] for n in second.notifications}
    assert final["type"] == "operation.succeeded" and refused_final["type"] == "operation.succeeded"
    assert not any(n["type"] == "operation.restarted" for n in first.of_operation(op_id))
    judged.assert_clean()


async def test_a_server_that_became_a_replica_is_a_503_not_a_500(make_lab, tmp_path):
    """A process given a plain redis:// URL keeps talking to that server
    after a failover made it a replica: its writes get READONLY, which must
    read as the store being unavailable (503, retry), not as our bug (500)."""
    primary, replica = RedisServer(tmp_path / "p"), RedisServer(tmp_path / "r")
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    try:
        await primary.start()
        await replica.start()
        await ask(replica.port, "REPLICAOF", "127.0.0.1", str(primary.port))
        lab = await make_lab(servers=1, workers=0, NOTIFYLAB_REDIS_URL=replica.url)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{servers(lab)[0]}/api/register", json={"username": "ro_user", "password": "long enough pw"}
            ) as response:
                assert response.status == 503, await response.text()
                assert "Retry-After" in response.headers
    finally:
        await replica.kill()
        await primary.kill()
