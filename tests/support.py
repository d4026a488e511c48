"""Helpers the tests share (imported by both conftest files and the tests).

tests/ is on sys.path for every test, tests/browser/ only once its conftest
has loaded, so what tests/test_kit.py shares with the browser tests lives
here: ``notifylab kit`` as a subprocess and Debian's Chromium. And a Redis of
a test's own, for the tests that take Redis away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import aiohttp
import psutil
import pytest

from notifylab.config import Settings
from notifylab.lab import Lab
from notifylab.lab.client import Client
from notifylab.lab.cluster import remove_prefix
from notifylab.lab.redis_sentinel import RedisServer
from notifylab.lab.verdict import Verdict
from notifylab.redisurl import make_client

ROOT = Path(__file__).resolve().parent.parent

BROKER = Settings().broker_url
REDIS = Settings().redis_url
PASSWORD = "correct horse battery"

PREFIXES: list[str] = []  # every prefix this run made, removed at its end
CHAOS_ROWS: list[dict] = []  # one per fault tried under load (test_chaos.py...), printed at the end
Pairs = list[tuple[Client, Client]]  # a user's session on instance a, and on b


def new_prefix() -> str:
    prefix = f"nltest{uuid.uuid4().hex[:10]}"
    PREFIXES.append(prefix)
    return prefix


def new_username() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


async def check_services() -> None:
    client = make_client(REDIS)
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is not running at {REDIS} ({exc}); start it (see README)", pytrace=False)
    finally:
        await client.aclose()
    try:
        connection = await aio_pika.connect(BROKER, timeout=5)
        await connection.close()
    except Exception as exc:
        pytest.fail(f"RabbitMQ is not running at {BROKER} ({exc}); start it (see README)", pytrace=False)


async def remove(prefixes: list[str]) -> None:
    for prefix in prefixes:
        await remove_prefix(Settings(prefix=prefix))


@contextlib.asynccontextmanager
async def two_instances_and_a_worker(log_dir: Path, **env: str) -> AsyncIterator[Lab]:
    """Instances a and b and one worker under a fresh prefix (``env`` over
    the defaults), all stopped on the way out: what a test module shares."""
    lab = Lab({"NOTIFYLAB_PREFIX": new_prefix(), "NOTIFYLAB_LOG_LEVEL": "INFO", **env}, log_dir=log_dir)
    async with lab:
        await lab.start_server(instance_id="a")
        await lab.start_server(instance_id="b")
        await lab.start_worker()
        yield lab


def servers(lab: Lab) -> list[str]:
    return [p.url for p in lab.processes if p.url]


# --- a Redis of the test's own -----------------------------------------------------------------


class PrivateRedis(RedisServer):
    """A ``redis-server`` on a free port of 127.0.0.1, for a test to kill (an
    outage, :meth:`kill`) and start again (:meth:`start`: same port, same
    folder). It keeps nothing on disk, unless ``keep_data``: then an
    append-only file written at every command, so that it comes back with
    its data, like a production one. The process itself is the lab's
    :class:`RedisServer` (``notifylab/lab/redis_sentinel.py``)."""

    def __init__(self, folder: Path, keep_data: bool = False):
        persistence = ["appendonly yes", "appendfsync always"] if keep_data else ["appendonly no"]
        super().__init__(folder, ['save ""', *persistence])

    async def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers PING; a failure fails the test."""
        try:
            await super().start(timeout)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)


@contextlib.asynccontextmanager
async def private_redis(keep_data: bool = False) -> AsyncIterator[PrivateRedis]:
    """A running :class:`PrivateRedis`; killed, and its folder removed, on the way out."""
    redis = PrivateRedis(Path(tempfile.mkdtemp(prefix="notifylab-redis-")), keep_data)
    try:
        await redis.start()
        yield redis
    finally:
        await redis.kill()
        shutil.rmtree(redis.folder, ignore_errors=True)


# --- `notifylab kit` as a subprocess (tests/test_kit.py, tests/browser/test_jupyterlab.py) ----

# The URL the kit prints: JupyterLab's base URL, its port and the token.
KIT_URL = re.compile(
    r"(?P<base>http://127\.0\.0\.1:(?P<port>\d+))/lab/workspaces/notifylab\?token=(?P<token>\S+)"
)
KIT_START_TIMEOUT = 120.0  # two instances, a worker, then JupyterLab (10-30 s here)
KIT_STOP_TIMEOUT = 60.0


class Kit:
    """``notifylab kit`` as a subprocess, as ``make up`` runs it (or
    ``notifylab up``, with ``command``); a thread collects its output lines.
    Its waits block: Playwright's sync tests call them as they are, async
    tests through ``asyncio.to_thread``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, command: str = "kit"):
        # Never NOTIFYLAB_KIT_ISOLATE (set for the lessons): the kernels must join the kit's cluster.
        inherited = {k: v for k, v in os.environ.items() if k != "NOTIFYLAB_KIT_ISOLATE"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "notifylab", command, *args],
            cwd=ROOT,
            env={**inherited, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self.seen: list[psutil.Process] = []  # every descendant looked at, to kill should the kit not
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern, timeout: float = KIT_START_TIMEOUT) -> re.Match:
        """The first output line matching ``pattern``; fails if the kit exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := pattern.search(line):
                    return m
            if self.process.poll() is not None:
                self._reader.join(5)
                pytest.fail(
                    f"the kit exited ({self.process.returncode}) before printing "
                    f"{pattern.pattern!r}:\n{self.output[-4000:]}",
                    pytrace=False,
                )
            time.sleep(0.1)
        pytest.fail(f"no {pattern.pattern!r} from the kit in {timeout:.0f} s:\n{self.output[-4000:]}")

    def descendants(self) -> list[psutil.Process]:
        """Its descendants now, each also remembered in ``seen``."""
        found: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            found = psutil.Process(self.process.pid).children(recursive=True)
        self.seen += [proc for proc in found if proc not in self.seen]
        return found

    def named(self, word: str) -> psutil.Process:
        """The descendant whose command line holds ``word``."""
        for proc in self.descendants():
            with contextlib.suppress(psutil.Error):
                if word in " ".join(proc.cmdline()):
                    return proc
        raise AssertionError(
            f"no child of the kit runs {word!r}: {[p.cmdline() for p in self.descendants()]}"
        )

    def wait_exit(self, timeout: float = KIT_STOP_TIMEOUT) -> int:
        """Its exit code, once it has exited and all its output is read."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the kit did not exit in {timeout:.0f} s:\n{self.output[-4000:]}")
        self._reader.join(5)
        return code

    def interrupt(self, timeout: float = KIT_STOP_TIMEOUT) -> int:
        """SIGINT, as Ctrl-C in the terminal; its exit code."""
        self.descendants()
        self.process.send_signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def alive_after(self, timeout: float = 10.0) -> list[str]:
        """Descendants seen while it ran that still run after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            alive = []
            for proc in self.seen:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Whatever a failed test left: stop the kit and what it started (only that)."""
        if self.process.poll() is None:
            self.descendants()
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=KIT_STOP_TIMEOUT)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for proc in self.seen:
            with contextlib.suppress(psutil.Error):
                proc.kill()  # psutil checks that the pid is still the process it saw
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def running_kit(*args: str, env: dict[str, str] | None = None, command: str = "kit") -> Iterator[Kit]:
    """``notifylab kit *args`` (or ``command``), ``env`` over this environment; stopped after."""
    kit = Kit(*args, env=env, command=command)
    try:
        yield kit
    finally:
        kit.cleanup()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_ports_free(ports: list[int], timeout: float = 15.0) -> list[int]:
    """Those of ``ports`` still taken after up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        taken = [p for p in ports if not port_free(p)]
        if not taken or time.monotonic() > deadline:
            return taken
        time.sleep(0.2)


# --- Debian's Chromium, for Playwright (which downloads no browser here) ----------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# -- load for the fault tests (test_chaos, test_ha_broker, test_ha_redis) ------


async def users_running_operations(
    lab: Lab, clients: Callable[..., Awaitable[Client]], users: int, steps: int, step_seconds: float
) -> tuple[Pairs, list[str]]:
    """``users`` users, a session of each on a and on b, each running an
    operation; returns once every session has seen a few of its notifications."""
    url_a, url_b = servers(lab)
    pairs = []
    for _ in range(users):
        first = await clients(url_a)
        pairs.append((first, await clients(url_b, user=first.user)))
    ops = [(await first.start("train", steps=steps, step_seconds=step_seconds))["id"] for first, _ in pairs]
    for (_, second), op_id in zip(pairs, ops, strict=True):
        await second.wait_for(lambda s=second, o=op_id: len(s.of_operation(o)) >= 5, 30)
    return pairs, ops


def longest_silence(client: Client) -> float:
    """The longest time between two notifications this session received:
    how long delivery paused for it."""
    times = sorted(n["received"] for n in client.notifications if "received" in n)
    return max((b - a for a, b in itertools.pairwise(times)), default=0) / 1000


def add_chaos_row(
    fault: str,
    done: str,
    rate: float,
    judged: Verdict,
    finals: list[dict],
    restarted: int,
    pause: float,
    resumed: float,
) -> None:
    """One row of the table of faults tried under load (printed at the end)."""
    succeeded = sum(f["type"] == "operation.succeeded" for f in finals)
    CHAOS_ROWS.append(
        {
            "fault": fault,
            "done": done,
            "load (notifications/s)": round(rate),
            "delivered": sum(v.received for v in judged),
            "lost": sum(v.lost for v in judged),
            "duplicated": sum(v.duplicated for v in judged),
            "reordered": sum(v.out_of_order for v in judged),
            "operations": f"{succeeded}/{len(finals)} succeeded"
            + (f", {restarted} restarted" if restarted else ""),
            "longest pause (s)": round(pause, 2),
            "delivery resumed (s after undone)": round(resumed, 2),
        }
    )


MANAGEMENT = "http://127.0.0.1:15672/api"  # RabbitMQ's management API
GUEST = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}


async def drop_broker_connection(transport: asyncio.BaseTransport) -> None:
    """Have RabbitMQ close the connection that ``transport`` is our end of
    (as a node's restart would), through the management API. It is found
    by its port (other tests' processes are connected too); a connection
    is listed within a second or so of opening."""
    port = transport.get_extra_info("sockname")[1]
    async with aiohttp.ClientSession(headers=GUEST) as http:
        async with asyncio.timeout(10):
            while True:
                async with http.get(f"{MANAGEMENT}/connections") as response:
                    response.raise_for_status()
                    names = [c["name"] for c in await response.json() if c.get("peer_port") == port]
                if names:
                    break
                await asyncio.sleep(0.2)
        async with http.delete(f"{MANAGEMENT}/connections/{names[0]}") as response:
            assert response.status in (200, 204), await response.text()
