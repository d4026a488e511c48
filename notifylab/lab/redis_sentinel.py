"""A Redis that outlives its primary: a primary, replicas and three Sentinels.

One Redis server is one machine's memory: when it dies, notifylab stops
until it is back. Redis's answer is *replication* plus *Sentinel*:

- the **primary** takes every write and streams it to its **replicas**
  (``replicaof``), which keep a copy, asynchronously: the primary answers
  the client first and sends the write on afterwards;
- the **Sentinels** (``redis-server --sentinel``) watch the primary. When
  ``quorum`` of them (2 of 3 here) cannot reach it for
  ``down-after-milliseconds``, they elect a leader, which promotes a
  replica (the one with the most data, of those with the same priority)
  and points the other servers at it;
- clients do not know a fixed address: they ask the Sentinels who the
  primary is (``SENTINEL get-master-addr-by-name``), and ask again when
  their connection breaks. notifylab does so for a
  ``redis+sentinel://`` URL (``notifylab/redisurl.py``).

:class:`SentinelGroup` runs such a group on 127.0.0.1, every process a
``redis-server`` from Debian's package on a free port, under one folder::

    async with SentinelGroup() as group:
        cluster = await Cluster.start(
            "09", NOTIFYLAB_REDIS_URL=group.url, NOTIFYLAB_REDIS_WAIT_REPLICAS="1"
        )
        old = await group.kill_primary()            # SIGKILL, as in a crash
        new = await group.wait_for_new_primary(old)  # Sentinel promotes the replica
        await group.restart(old)                     # it comes back as a replica
        await group.wait_replicas(1)

Every wait here is bounded and says what it waited for when it gives up.
:class:`RedisServer` is one such process alone (the tests' private Redis
is one too).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .processes import _die_with_parent, free_port, signal_group

HOST = "127.0.0.1"
SERVICE = "notifylab"  # the name the Sentinels monitor the primary under (the URL's path)
ASK_TIMEOUT = 1.0  # seconds for one question to one process: a dead one answers nothing
POLL = 0.1  # seconds between two looks while waiting for something to happen

_started: set[RedisServer] = set()  # killed at interpreter exit if still running


@atexit.register
def _kill_leftovers() -> None:
    """A kernel restarted or a test run interrupted: leave no redis-server behind."""
    for server in list(_started):
        if server.running and server.process is not None:
            signal_group(server.process.pid, signal.SIGKILL)


async def ask(port: int, *command: str) -> object:
    """Send one command to the process on ``port`` of 127.0.0.1 and return
    its answer; raises redis-py's ConnectionError or TimeoutError, within
    :data:`ASK_TIMEOUT`, when nothing answers."""
    client = aioredis.Redis(
        host=HOST,
        port=port,
        decode_responses=True,
        socket_connect_timeout=ASK_TIMEOUT,
        socket_timeout=ASK_TIMEOUT,
        retry=Retry(NoBackoff(), 0),  # a client of its own retries ten times (about 3 s) by default
    )
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()


class RedisServer:
    """One ``redis-server`` on a free port of 127.0.0.1, with its
    configuration file, data and log in ``folder``.

    ``config`` is the configuration's lines besides the port, address,
    folder and log; they are written once, at the first start, and then
    kept: Sentinel rewrites the file (``CONFIG REWRITE``) when it makes a
    server a replica or a primary, and a server started again reads what it
    was last told. ``sentinel``: run it as a Sentinel (``--sentinel``).
    """

    def __init__(self, folder: Path, config: Sequence[str] = (), *, sentinel: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.sentinel = sentinel
        self.config_file = folder / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_file = folder / ("sentinel.log" if sentinel else "redis.log")
        self.config = [
            f"port {self.port}",
            f"bind {HOST}",
            f'dir "{folder}"',
            f'logfile "{self.log_file}"',
            *config,
        ]
        self.process: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        kind = "sentinel" if self.sentinel else "redis"
        return f"<{kind} {HOST}:{self.port} {'running' if self.running else 'stopped'}>"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``: this server alone, no Sentinel asked."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, timeout: float = 10.0) -> None:
        """Start it (again: same port, same folder, the configuration as it
        was last rewritten) and wait until it answers PING.

        Raises RuntimeError with the log's tail if it exits or stays silent."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.config_file.exists():
            self.config_file.write_text("\n".join(self.config) + "\n")
        self.process = await asyncio.create_subprocess_exec(
            binary,
            str(self.config_file),
            *(["--sentinel"] if self.sentinel else []),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own group: kill() takes a forked child (a sync) with it
            preexec_fn=_die_with_parent,
        )
        _started.add(self)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.process.returncode is not None:
                        raise RuntimeError(
                            f"redis-server on {self.port} exited ({self.process.returncode}):\n{self.log()}"
                        )
                    try:
                        await ask(self.port, "PING")
                        return
                    except (OSError, RedisError):
                        await asyncio.sleep(0.05)
        except TimeoutError:
            await self.kill()
            raise RuntimeError(
                f"redis-server on {self.port} did not answer PING in {timeout:.0f} s:\n{self.log()}"
            ) from None

    def replicate(self, host: str, port: int) -> None:
        """Make its configuration file say it replicates ``host:port`` (for
        its next start), in place of what it said it replicated before."""
        lines = [
            line
            for line in self.config_file.read_text().splitlines()
            if not line.startswith(("replicaof ", "slaveof "))
        ]
        self.config_file.write_text("\n".join([*lines, f"replicaof {host} {port}"]) + "\n")

    async def kill(self) -> None:
        """SIGKILL, as in a crash: nothing is saved, no client is told."""
        if self.process is not None and self.process.returncode is None:
            signal_group(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        _started.discard(self)

    async def role(self) -> str:
        """``master`` or ``slave``, as the server itself says (ROLE)."""
        answer = await ask(self.port, "ROLE")
        assert isinstance(answer, list)
        return str(answer[0])

    def log(self, chars: int = 3000) -> str:
        """The end of its log file."""
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else "(no log)"


class SentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels on
    127.0.0.1, under ``folder`` (a fresh temporary folder if None, removed
    at the end). Use it as ``async with SentinelGroup() as group:``; every
    process is killed on the way out.

    ``down_after_ms``: how long the Sentinels wait for an unanswered primary
    before they call it down (Redis's default is 30 s; 2 s here, so a lesson
    sees a failover in about 3 s). A Sentinel pings once a second, so keep
    it at two pings or more: with 1 s, a Sentinel that had just switched to
    the new primary, on this busy 2-core machine, called it down before its
    first answer and failed over again. ``failover_timeout_ms``: how long
    one failover may take before another Sentinel tries (and twice that
    before the same one tries again).
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        service: str = SERVICE,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        if replicas < 1 or sentinels < quorum or quorum < 1:
            raise ValueError("a group needs a replica, and at least quorum Sentinels")
        self._own_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="notifylab-sentinel-"))
        self.service = service
        # No persistence: the replica is the copy. A diskless sync with no
        # delay (Redis waits 5 s by default for more replicas to share it):
        # a server that rejoins has its copy within a second.
        data = ['save ""', "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
        first = RedisServer(self.folder / "redis-1", data)
        self.nodes = [first] + [
            RedisServer(self.folder / f"redis-{i + 2}", [*data, f"replicaof {HOST} {first.port}"])
            for i in range(replicas)
        ]
        watch = [
            f"sentinel monitor {service} {HOST} {first.port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ]
        self.sentinels = [
            RedisServer(self.folder / f"sentinel-{i + 1}", watch, sentinel=True) for i in range(sentinels)
        ]

    def __repr__(self) -> str:  # no ports: a notebook's output stays the same run to run
        servers, sentinels = len(self.nodes), len(self.sentinels)
        return f"<SentinelGroup {self.service!r}: {servers} Redis servers, {sentinels} Sentinels>"

    # -- what to give notifylab -------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every Sentinel."""
        return [(HOST, s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        """The ``NOTIFYLAB_REDIS_URL`` that finds the primary through the Sentinels."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    # -- starting and ending ----------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> SentinelGroup:
        """Start the primary, the replicas (and wait until each holds its
        copy), then the Sentinels (and wait until each sees every replica and
        every other Sentinel: only then can they agree on a failover)."""
        try:
            async with asyncio.timeout(timeout):
                await self.nodes[0].start()
                await asyncio.gather(*(node.start() for node in self.nodes[1:]))
                await self._until(self._replicas_online, len(self.nodes) - 1)
                await asyncio.gather(*(s.start() for s in self.sentinels))
                await self._until(self._sentinels_ready)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, TimeoutError):
                raise RuntimeError(
                    f"the Sentinel group was not ready in {timeout:.0f} s:\n{self._logs()}"
                ) from None
            raise
        return self

    async def close(self) -> None:
        """Kill every process (the Sentinels first, so that none starts a
        failover while the servers go) and remove the folder if it was ours."""
        await asyncio.gather(*(s.kill() for s in self.sentinels))
        await asyncio.gather(*(node.kill() for node in self.nodes))
        if self._own_folder:
            await asyncio.to_thread(shutil.rmtree, self.folder, True)

    async def __aenter__(self) -> SentinelGroup:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- who is who -------------------------------------------------------------------------

    async def failovers(self) -> int:
        """How many failovers the Sentinels have done so far: the service's
        configuration epoch, which each one increments (most answering
        Sentinels' figure)."""
        epochs = []
        for sentinel in self.sentinels:
            try:
                state = await ask(sentinel.port, "SENTINEL", "MASTER", self.service)
            except (OSError, RedisError):
                continue
            if isinstance(state, dict):
                epochs.append(int(state.get("config-epoch", 0)))
        if not epochs:
            raise RuntimeError("no Sentinel answered")
        return collections.Counter(epochs).most_common(1)[0][0]

    async def primary_address(self) -> tuple[str, int]:
        """Where most answering Sentinels say the primary is
        (``SENTINEL get-master-addr-by-name``), as a client would be told.
        Raises RuntimeError if no Sentinel answers."""
        answers: list[tuple[str, int]] = []
        for sentinel in self.sentinels:
            try:
                answer = await ask(sentinel.port, "SENTINEL", "get-master-addr-by-name", self.service)
            except (OSError, RedisError):
                continue  # down
            if isinstance(answer, list) and len(answer) == 2:  # None: it knows no primary right now
                answers.append((str(answer[0]), int(answer[1])))
        if not answers:
            raise RuntimeError("no Sentinel named a primary")
        return collections.Counter(answers).most_common(1)[0][0]

    async def primary(self) -> RedisServer:
        """The server the Sentinels name as the primary now."""
        _, port = await self.primary_address()
        return self._node(port)

    async def replicas(self) -> list[RedisServer]:
        """The other servers (running or not)."""
        primary = await self.primary()
        return [node for node in self.nodes if node is not primary]

    def _node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise RuntimeError(f"the Sentinels name {HOST}:{port}, which is none of this group's servers")

    # -- breaking it ------------------------------------------------------------------------

    async def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (to :meth:`restart` later).
        Whatever it had not sent to a replica yet is gone with it."""
        primary = await self.primary()
        await primary.kill()
        return primary

    async def switchover(self) -> RedisServer:
        """A planned failover (``SENTINEL FAILOVER``), nothing killed: a
        Sentinel promotes a replica at once and then makes the old primary
        its replica. Returns the old primary. Clients still connected to it
        get READONLY on their next write, and ask the Sentinels again."""
        primary = await self.primary()
        for sentinel in self.sentinels:
            try:
                await ask(sentinel.port, "SENTINEL", "FAILOVER", self.service)
                return primary
            except (OSError, RedisError):
                continue  # down, or busy with a failover already: ask the next one
        raise RuntimeError("no Sentinel started the failover")

    async def wait_for_new_primary(self, old: RedisServer, timeout: float = 15.0) -> RedisServer:
        """Wait until the Sentinels name a primary other than ``old``, and
        that server says it is one (ROLE); return it."""
        found: list[RedisServer] = []

        async def promoted() -> bool:
            try:
                node = await self.primary()
                if node is not old and node.running and await node.role() == "master":
                    found.append(node)
                    return True
            except (OSError, RedisError, RuntimeError):
                pass
            return False

        try:
            await self._until(promoted, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"no new primary in {timeout:.0f} s after {old!r}:\n{self._logs()}") from None
        return found[0]

    async def restart(self, node: RedisServer) -> None:
        """Start a killed server again, as a replica of the current primary.

        An old primary comes back believing it still is one (its
        configuration says so) and empty (no persistence). A Sentinel would
        tell it to replicate the new primary, but only at its next look at
        that server: Sentinels ask a replica for its INFO every 10 s. So we
        tell it at once (``REPLICAOF``, then ``CONFIG REWRITE`` so that its
        file says so too), as an orchestrator would; it then copies the
        primary's data (:meth:`wait_replicas` waits for that). Never restart
        an empty primary *before* the failover: it would stay the primary,
        and the replicas would copy its emptiness.

        Its configuration is told before it starts, not just after: a
        Sentinel that caught it answering INFO as a primary in between would
        hold that for 10 s (the next look), and a planned failover within
        them saw that Sentinel turn the newly promoted replica back, as a
        "primary" of old (CI, the switchover right after a crash)."""
        host, port = await self.primary_address()
        if port != node.port:
            await asyncio.to_thread(node.replicate, host, port)
        await node.start()

    async def wait_replicas(self, count: int | None = None, timeout: float = 20.0) -> None:
        """Wait until the primary has ``count`` replicas (default: all the
        others) connected and holding their copy (``state=online``)."""
        wanted = len(self.nodes) - 1 if count is None else count
        try:
            await self._until(self._replicas_online, wanted, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"the primary had not {wanted} replicas online in {timeout:.0f} s") from None

    # -- waiting ----------------------------------------------------------------------------

    async def _replicas_online(self, wanted: int) -> bool:
        try:
            primary = await self.primary() if self._sentinels_running() else self.nodes[0]
            info = await ask(primary.port, "INFO", "replication")
        except (OSError, RedisError, RuntimeError):
            return False
        assert isinstance(info, dict)
        online = sum(1 for key, value in info.items() if key.startswith("slave") and _online(value))
        return online >= wanted

    def _sentinels_running(self) -> bool:
        return any(s.running for s in self.sentinels)

    async def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            try:
                state = await ask(sentinel.port, "SENTINEL", "MASTER", self.service)
            except (OSError, RedisError):
                return False
            assert isinstance(state, dict)
            if int(state.get("num-slaves", 0)) < len(self.nodes) - 1:
                return False
            if int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return True

    async def _until(
        self, check: Callable[..., Awaitable[bool]], *args: object, timeout: float | None = None
    ) -> None:
        """Poll ``check(*args)`` until it is true (within ``timeout`` if given:
        TimeoutError; the callers' own ``asyncio.timeout`` bounds the rest)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not await check(*args):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(POLL)

    def _logs(self) -> str:
        parts = [f"--- {p!r}\n{p.log(1200)}" for p in (*self.nodes, *self.sentinels)]
        return "\n".join(parts)


def _online(replica: object) -> bool:
    # redis-py parses "slave0:ip=...,port=...,state=online,..." into a dict.
    return isinstance(replica, dict) and replica.get("state") == "online"


__all__ = ["RedisServer", "SentinelGroup", "ask"]
