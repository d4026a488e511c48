"""A RabbitMQ cluster of three nodes on this machine, for the high-availability lesson.

One RabbitMQ node is one Erlang virtual machine (a ``beam.smp`` process).
Several nodes that know each other form a *cluster*: they share the
definitions (exchanges, queues, bindings, users), and a client may connect
to any of them. What they do not share by default is the *messages*: a
classic queue lives on one node, and dies with it. A *quorum queue* keeps a
copy on every node (its members), one of them the *leader* that takes
publishes and delivers; when the leader dies, the others elect a new one,
and what a majority had confirmed is still there.

This module starts such a cluster from Debian's packages, beside the
machine's own RabbitMQ (``rabbit@localhost``, port 5672), which it never
touches::

    async with RabbitCluster() as cluster:            # nlha1..3@localhost
        cluster.broker_url                            # for NOTIFYLAB_BROKER_URL
        leader = await cluster.leader("notifylab.jobs")
        await cluster.kill(leader)                    # SIGKILL: a crashed host
        await cluster.restart(leader)                 # it rejoins by itself

How the nodes are kept apart on one machine: each has its own name
(``RABBITMQ_NODENAME``; Erlang finds a node by name through ``epmd``), its
own ports (AMQP, the management API, and the distribution port the nodes
talk to each other on), and its own folder for its data, logs, pid file,
``rabbitmq.conf`` and ``enabled_plugins``. They share the Erlang cookie of
the machine's RabbitMQ (``/var/lib/rabbitmq/.erlang.cookie``): nodes, and
the ``rabbitmqctl`` that talks to them, must hold the same cookie.

How the cluster is formed: every node starts on its own (in parallel), then
each node but the first stops its RabbitMQ application, joins the first
(``rabbitmqctl join_cluster``), and starts it again. A node restarted later
remembers its cluster and rejoins by itself.

Debian's ``rabbitmq-server`` and ``rabbitmqctl`` run as the ``rabbitmq``
user (as root they switch to it), so run this as root or as ``rabbitmq``.
Every call here is an asyncio subprocess with a time limit: a notebook
cell never blocks the kernel's loop, and never waits for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tables import Table, wait_until

START_TIMEOUT = 60.0  # seconds for a node to boot (about 6 s alone; longer when three share 2 cores)
COMMAND_TIMEOUT = 60.0  # seconds for one rabbitmqctl call
STOP_TIMEOUT = 30.0  # seconds for a graceful stop before a kill
ELECTION_WAIT = 30.0  # seconds a quorum queue may take to show a live leader after its leader died
RABBITMQ_USER = "rabbitmq"  # who Debian's scripts run the broker as


class ClusterError(RuntimeError):
    """A node did not start, join or answer in time; the message says which, with its log."""


@dataclass
class RabbitNode:
    """One node of the cluster: its name, its ports and its folder."""

    index: int  # 1, 2, 3...
    name: str  # e.g. nlha1@localhost
    amqp_port: int
    management_port: int  # used only with RabbitCluster(management=True)
    dist_port: int  # where the other nodes (and rabbitmqctl) reach it
    folder: Path

    @property
    def url(self) -> str:
        """The AMQP URL clients connect to."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def api_url(self) -> str:
        """The management API (and web UI, user guest, password guest)."""
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def pid_file(self) -> Path:
        return self.folder / "rabbitmq.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "log" / f"{self.name}.log"

    def __repr__(self) -> str:
        return f"<RabbitNode {self.name} amqp {self.amqp_port}>"

    def env(self) -> dict[str, str]:
        """The environment that makes ``rabbitmq-server`` this node."""
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }


class RabbitCluster:
    """``size`` RabbitMQ nodes on 127.0.0.1, clustered; an async context manager.

    ``name`` makes the node names (``<name>1@localhost``...); ``base_port``
    the ports: node *i* takes ``base_port + i - 1`` for AMQP, 10000 more for
    the management API and 20000 more for the distribution port (5681,
    15681, 25681 for the first node by default). ``base_port=None`` picks
    free ports instead (for tests that may run beside a lesson). Everything
    lives under ``folder`` (a fresh one in the temporary directory by
    default), which :meth:`remove` deletes.

    ``management=True`` enables the management plugin on every node (its web
    UI and HTTP API at ``node.api_url``, for ``RabbitView``); it is off by
    default because it doubles how long a node takes to start and to stop.
    What this class reports itself it asks ``rabbitmqctl``.
    """

    def __init__(
        self,
        size: int = 3,
        name: str = "nlha",
        base_port: int | None = 5681,
        folder: Path | str | None = None,
        management: bool = False,
    ):
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.size = size
        self.management = management
        self.folder = Path(folder) if folder else Path(tempfile.gettempdir()) / f"notifylab-rabbit-{name}"
        self.nodes: list[RabbitNode] = []
        free = _free_ports(3 * size) if base_port is None else []
        for i in range(1, size + 1):
            if base_port is None:
                amqp, api, dist = free[3 * (i - 1) : 3 * i]
            else:
                amqp, api, dist = (base_port + i - 1 + k * 10_000 for k in range(3))
            short = f"{name}{i}"
            self.nodes.append(RabbitNode(i, f"{short}@localhost", amqp, api, dist, self.folder / short))
        self._down: set[str] = set()  # nodes killed or stopped here, not started again

    def __repr__(self) -> str:
        return f"<RabbitCluster {', '.join(n.name for n in self.nodes)}>"

    # -- what clients need ------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every node's AMQP URL, in node order."""
        return [node.url for node in self.nodes]

    @property
    def broker_url(self) -> str:
        """The URLs comma-separated: the value of ``NOTIFYLAB_BROKER_URL``
        that lets a notifylab process fail over between the nodes."""
        return ",".join(self.urls)

    def node(self, which: RabbitNode | int | str) -> RabbitNode:
        """A node by itself, by index (1, 2, 3) or by name (``nlha2@localhost``)."""
        if isinstance(which, RabbitNode):
            return which
        for node in self.nodes:
            if which in (node.index, node.name):
                return node
        raise KeyError(f"no node {which!r} in {self!r}")

    # -- starting and clustering --------------------------------------------

    async def start(self) -> RabbitCluster:
        """Start the nodes and cluster them; returns once all of them run, as
        one cluster. On a failure, removes what it started.

        All nodes boot at once (a boot is mostly waiting); each node but the
        first then stops its RabbitMQ application (its Erlang VM keeps
        running), joins the first, and starts the application again."""
        try:
            await self._check_free()
            await asyncio.gather(*(asyncio.to_thread(self._prepare, node) for node in self.nodes))
            first, first_up = self.nodes[0], asyncio.Event()
            joins = asyncio.Lock()  # one join at a time: each changes the membership every member records

            async def boot_first() -> None:
                await self._boot(first)
                first_up.set()

            async def join(node: RabbitNode) -> None:
                await self._boot(node)
                await self._ctl(node, "stop_app")
                await first_up.wait()
                async with joins:
                    await self._ctl(node, "join_cluster", first.name)
                await self._ctl(node, "start_app")
                await self._wait_ready(node)

            await _together(boot_first(), *(join(node) for node in self.nodes[1:]))
            await self._wait_clustered()
        except BaseException:
            await self.remove()
            raise
        return self

    async def _check_free(self) -> None:
        """Refuse to start over a node of the same name that still runs (a
        kernel that died before :meth:`remove`): its folder is ours, so say how to end it."""
        for node in self.nodes:
            if await self._registered(node):
                raise ClusterError(
                    f"a RabbitMQ node {node.name} is already running (a cluster not removed?): "
                    f"stop it with `rabbitmqctl -n {node.name} stop`, or use another name"
                )
            for port in (node.amqp_port, node.management_port, node.dist_port):
                if not _port_free(port):
                    raise ClusterError(f"port {port} for {node.name} is taken; pass another base_port")

    def _prepare(self, node: RabbitNode) -> None:
        """The node's folder, config and plugins file (run in a thread: file I/O)."""
        if node.folder.exists():
            shutil.rmtree(node.folder)  # a previous run's data: start clean
        (node.folder / "log").mkdir(parents=True)
        (node.folder / "mnesia").mkdir()
        (node.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {node.management_port}\n"
            # guest may log in from anywhere, not only "localhost" (we bind 127.0.0.1 anyway).
            "loopback_users = none\n"
        )
        plugins = "rabbitmq_management" if self.management else ""
        (node.folder / "enabled_plugins").write_text(f"[{plugins}].\n")
        if os.geteuid() == 0:  # the node runs as rabbitmq and must own its folder
            account = pwd.getpwnam(RABBITMQ_USER)
            for path in [self.folder, *node.folder.rglob("*"), node.folder]:
                os.chown(path, account.pw_uid, account.pw_gid)

    async def _boot(self, node: RabbitNode) -> None:
        """Start the node's Erlang VM in the background and wait until it is ready."""
        await _run("rabbitmq-server", "-detached", env=node.env(), timeout=COMMAND_TIMEOUT)
        await self._wait_ready(node)

    async def _wait_ready(self, node: RabbitNode, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node takes AMQP connections (its listener opens last
        in its boot), then let ``rabbitmqctl await_startup`` confirm it."""
        try:
            async with asyncio.timeout(timeout):
                await wait_until(lambda: _port_open(node.amqp_port), timeout)
                await self._ctl(node, "await_startup", "--timeout", str(int(timeout)))
        except TimeoutError:
            raise ClusterError(
                f"{node.name} did not start in {timeout:.0f} s; its log ends:\n{await _tail(node.log_file)}"
            ) from None

    async def _wait_clustered(self, timeout: float = 30.0) -> None:
        """Wait until the cluster lists as running every node not killed here."""
        expected = {n.name for n in self.nodes} - self._down

        async def formed() -> bool:
            return {row["name"] for row in await self.running_nodes()} == expected

        try:
            await wait_until(formed, timeout, interval=0.5)
        except TimeoutError:
            raise ClusterError(f"the nodes did not form one cluster in {timeout:.0f} s") from None

    # -- faults -------------------------------------------------------------

    async def kill(self, which: RabbitNode | int | str) -> RabbitNode:
        """SIGKILL the node's Erlang VM, found by its pid file: it gets no
        chance to say goodbye, as when its host crashes. The other nodes
        notice at once (its connections to them drop). Returns the node."""
        node = self.node(which)
        pid = await self._pid(node)
        if pid is None:
            raise ClusterError(f"{node.name} is not running (no pid file)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Not our child (it daemonized), so there is nothing to wait() for: poll.
        await wait_until(lambda: not _alive(pid), 10, interval=0.05)
        await wait_until(lambda: self._gone(node), 10, interval=0.05)  # epmd forgot its name
        await asyncio.to_thread(node.pid_file.unlink, missing_ok=True)
        self._down.add(node.name)
        return node

    async def restart(self, which: RabbitNode | int | str) -> RabbitNode:
        """Start a killed (or stopped) node again; returns once it runs and
        has rejoined the cluster (it remembers its peers in its data folder)."""
        node = self.node(which)
        if await self._registered(node):
            # A second rabbitmq-server of the same name would fail, and take the pid file with it.
            raise ClusterError(f"{node.name} is running already")
        await self._boot(node)
        self._down.discard(node.name)
        await self._wait_clustered()
        return node

    # -- looking inside -------------------------------------------------------

    async def running_nodes(self) -> Table:
        """The cluster's nodes that run, as a live node sees them (``rabbitmqctl
        cluster_status``): name and AMQP URL of each."""
        status = json.loads(await self._ask("cluster_status", "--formatter", "json"))
        rows = [{"name": name, "url": self.node(name).url} for name in sorted(status["running_nodes"])]
        return Table(rows, ["name", "url"])

    async def leader(self, queue: str, vhost: str = "/") -> RabbitNode:
        """The node that leads ``queue``: a quorum queue's Raft leader, which
        takes its publishes and delivers to its consumers; for a classic
        queue, the one node that holds it (it lives and dies there).

        Just after its leader died, a quorum queue is missing from
        ``list_queues`` or still names the dead node while the others elect
        a new one: this waits for a live leader, ``ELECTION_WAIT`` seconds
        at most (LookupError after that, or for a queue that is not there)."""
        found = await self._elected(queue, vhost)
        if found["type"] == "quorum":
            return self.node(found["leader"])
        # A classic queue's row names no node: ask each live node for the queues it hosts.
        live = [n for n in self.nodes if n.name not in self._down]
        hosted = await asyncio.gather(
            *(
                self._ctl(n, "-q", "list_queues", "-p", vhost, "--local", "name", "--formatter", "json")
                for n in live
            )
        )
        for node, rows in zip(live, hosted, strict=True):
            if any(row["name"] == queue for row in json.loads(rows or "[]")):
                return node
        raise LookupError(f"no live node hosts {queue!r}")

    async def members(self, queue: str, vhost: str = "/") -> list[RabbitNode]:
        """The nodes holding a copy of a quorum queue (just its node for a classic one)."""
        found = await self._queue(queue, vhost)
        if found["type"] == "quorum":
            return [self.node(name) for name in found["members"]]
        return [await self.leader(queue, vhost)]

    async def consumer_nodes(self, queue: str, vhost: str = "/") -> list[RabbitNode]:
        """The node each consumer of ``queue`` is connected to (a worker may
        consume through one node a queue led by another: the nodes pass the
        messages between them). Consumer -> its channel -> its connection ->
        the AMQP port it came in on, each a list of one node's ``rabbitmqctl``."""
        node = next(n for n in self.nodes if n.name not in self._down)

        async def rows(*args: str) -> list[dict[str, Any]]:
            # All three from the same node: process ids print the same way within one node.
            return json.loads(await self._ctl(node, "-q", *args, "--formatter", "json") or "[]")

        consumers = await rows("list_consumers", "-p", vhost, "queue_name", "channel_pid")
        channels = {r["pid"]: r["connection"] for r in await rows("list_channels", "pid", "connection")}
        ports = {r["pid"]: r["port"] for r in await rows("list_connections", "pid", "port")}
        by_port = {n.amqp_port: n for n in self.nodes}
        return [
            by_port[ports[channels[c["channel_pid"]]]]
            for c in consumers
            if c["queue_name"] == queue and channels.get(c["channel_pid"]) in ports
        ]

    async def _elected(self, queue: str, vhost: str) -> dict[str, Any]:
        """``_queue``'s row, once a quorum queue has a live leader."""

        async def live() -> dict[str, Any] | None:
            try:
                found = await self._queue(queue, vhost)
            except LookupError:
                return None
            if found["type"] != "quorum" or found.get("leader") not in (None, "", *self._down):
                return found
            return None

        try:
            return await wait_until(live, ELECTION_WAIT, interval=0.5)
        except TimeoutError as exc:
            wait = f"{ELECTION_WAIT:.0f} s"
            raise LookupError(f"{queue!r} shows no live leader {wait} after asking: {exc}") from None

    async def _queue(self, queue: str, vhost: str) -> dict[str, Any]:
        columns = ("name", "type", "leader", "members")
        rows = json.loads(
            await self._ask("list_queues", "-p", vhost, *columns, "--formatter", "json") or "[]"
        )
        for row in rows:
            if row["name"] == queue:
                return row
        raise LookupError(f"RabbitMQ has no queue {queue!r} in vhost {vhost!r}")

    async def _ask(self, *args: str) -> str:
        """``rabbitmqctl -q <args>`` on the first node that answers (they all
        know the whole cluster's definitions)."""
        problems = []
        for node in sorted(self.nodes, key=lambda n: n.name in self._down):  # live ones first
            try:
                return await self._ctl(node, "-q", *args)
            except ClusterError as exc:
                problems.append(f"{node.name}: {str(exc)[:200]}")
        raise ClusterError("no node answered: " + "; ".join(problems))

    async def _pid(self, node: RabbitNode) -> int | None:
        try:
            text = await asyncio.to_thread(node.pid_file.read_text)
        except FileNotFoundError:
            return None
        return int(text.strip()) if text.strip() else None

    async def _ctl(self, node: RabbitNode, *args: str) -> str:
        return await _run("rabbitmqctl", "-n", node.name, *args, timeout=COMMAND_TIMEOUT)

    # -- ending ---------------------------------------------------------------

    async def remove(self) -> None:
        """Stop every node (gracefully, else SIGKILL) and delete the folder.
        Safe to call twice, and after a failed start."""
        await asyncio.gather(*(self._stop(node) for node in self.nodes))
        await asyncio.to_thread(shutil.rmtree, self.folder, ignore_errors=True)

    async def _stop(self, node: RabbitNode) -> None:
        """Stop one node: ``rabbitmqctl stop``, which returns once it halted;
        SIGKILL by its pid file if it is still there after STOP_TIMEOUT."""
        pid = await self._pid(node)  # read first: a stopping node deletes its pid file
        # Asked by name, not by pid: a node between stop_app and start_app has no pid file.
        if await self._registered(node):
            with contextlib.suppress(ClusterError):  # it did not stop: killed below
                await self._ctl(node, "stop")
        if pid is not None and _alive(pid):
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: not _alive(pid), STOP_TIMEOUT, interval=0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        # Gone when its VM has left epmd: its name and ports are free again.
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: self._gone(node), STOP_TIMEOUT, interval=0.1)
        self._down.add(node.name)

    async def _gone(self, node: RabbitNode) -> bool:
        return not await self._registered(node)

    async def _registered(self, node: RabbitNode) -> bool:
        """True while the node's Erlang VM runs (it is registered with ``epmd``)."""
        return node.name.split("@")[0] in await _epmd_names()

    async def __aenter__(self) -> RabbitCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.remove()


# -- helpers ------------------------------------------------------------------


async def _together(*steps: Coroutine[Any, Any, None]) -> None:
    """Run ``steps`` at once; the first to fail cancels the others, and its
    error is raised as it is (not wrapped in an ExceptionGroup)."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


async def _run(*command: str, env: dict[str, str] | None = None, timeout: float) -> str:
    """Run a command; its output, or ClusterError with what it said."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise ClusterError(f"`{' '.join(command)}` did not finish in {timeout:.0f} s") from None
    text = out.decode(errors="replace").strip()
    if process.returncode != 0:
        raise ClusterError(f"`{' '.join(command)}` failed ({process.returncode}): {text[-2000:]}")
    return text


async def _epmd_names() -> set[str]:
    """The names of the Erlang nodes registered on this machine (``epmd -names``)."""
    try:
        out = await _run("epmd", "-names", timeout=10)
    except (ClusterError, FileNotFoundError):
        return set()  # no epmd running: no node either
    return {line.split()[1] for line in out.splitlines() if line.startswith("name ")}


async def _port_open(port: int) -> bool:
    try:
        async with asyncio.timeout(1):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As a listener binds: a port whose last connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing listens on (all held open while picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    # A zombie still answers signal 0: look at its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:  # procfs: answered from memory, never blocks
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


async def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = await asyncio.to_thread(path.read_text, errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
