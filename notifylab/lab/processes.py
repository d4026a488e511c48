"""Starting, stopping and killing notifylab processes, for the lab.

``notifylab up``, the tests and the notebooks all use :class:`Lab`: it runs
server instances and workers as real subprocesses sharing one configuration,
waits until each is ready, and can kill one on purpose to show what survives.

Each process runs in a process group of its own, and every process still
running when the Python process exits (a notebook's kernel shut down or
restarted, a test run interrupted) is stopped then: none is left orphaned,
holding a port that the next run needs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

from . import balancer

READY_TIMEOUT = 30.0
# Settings the lab's processes get unless the caller's environment (or
# ``env``) says otherwise. The per-address limit on new sockets
# (server/flood.py) is off: every client of the lab, the tests, the lessons
# and the benchmarks (a storm of 10,000 sockets) connects from 127.0.0.1,
# and a limit meant for one flooding address would throttle the lab itself.
# tests/test_abuse.py and benchmarks/abuse.py turn it on where they need it.
LAB_DEFAULTS = {"NOTIFYLAB_ADDRESS_CONNECT_RATE": "0"}

_running: set[LabProcess] = set()  # every process started; those still running are stopped at exit


@atexit.register
def _stop_leftovers() -> None:
    """At interpreter exit the event loop may be gone: signal the process
    groups directly, give them a moment to exit, then kill what is left."""
    pids = [p.pid for p in list(_running) if p.running and p.pid]
    for pid in pids:
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    for pid in pids:
        signal_group(pid, signal.SIGKILL)


async def wait_answering(
    process: asyncio.subprocess.Process | None,
    url: str,
    name: str,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    details: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url`` until it answers 200, for at most ``timeout`` seconds;
    raise RuntimeError (with ``details()``, e.g. the log's tail) if the
    process exits first or the time runs out."""
    async with aiohttp.ClientSession() as http:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if process is None or process.returncode is not None:
                        code = process.returncode if process else None
                        raise RuntimeError(f"{name} exited ({code}):\n{details()}")
                    try:
                        async with http.get(url, headers=headers) as response:
                            if response.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise RuntimeError(f"{name} did not answer on {url} in {timeout:.0f} s:\n{details()}") from None


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (started with
    ``start_new_session``): the process and whatever it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _die_with_parent() -> None:
    """In the child, before it runs: ask Linux to send it SIGTERM when the
    process that started it dies. A kernel killed outright (nbval does that
    to a stuck one) runs no atexit handler, and its servers would live on."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # reaped already
        return False


def free_port() -> int:
    """A TCP port nothing listens on right now (for parallel runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NOTIFYLAB = (sys.executable, "-m", "notifylab")


class LabProcess:
    """One subprocess of the lab: ``notifylab serve`` or ``worker`` (``args``
    after ``command``), or the load balancer (``command`` nginx's)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str],
        log_path: Path | None,
        url: str | None = None,
        command: Sequence[str] = NOTIFYLAB,
    ):
        self.name, self.args, self.env, self.log_path, self.url = name, args, dict(env), log_path, url
        self.command = tuple(command)
        self.process: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{self.name} {state}{' ' + self.url if self.url else ''}>"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> LabProcess:
        """Start it (or start it again after a stop or a kill, with the same
        arguments and port); returns once a server (or the balancer in front
        of the servers) answers ``/readyz``."""
        # A quick local open, as the log file must exist before the child starts.
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: ASYNC230
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                *self.args,
                env=self.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT if out else None,
                start_new_session=True,  # its own process group: see _stop_leftovers
                preexec_fn=_die_with_parent,
            )
        finally:
            if out:
                out.close()
        _running.add(self)
        if self.url:
            await self.wait_ready()
        return self

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until ``/readyz`` answers 200; fail early if the process exits."""
        await wait_answering(self.process, f"{self.url}/readyz", self.name, timeout, details=self.log_tail)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask it to stop (SIGTERM), then kill it if it does not."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up, as in a crash."""
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def health(self) -> dict:
        """What ``/readyz`` says (a server), or whether it runs (a worker)."""
        if not self.url or not self.running:
            return {"ok": self.running}
        try:
            async with aiohttp.ClientSession() as http, asyncio.timeout(3):
                async with http.get(f"{self.url}/readyz") as response:
                    return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}


class Lab:
    """A set of notifylab processes sharing ``env`` (``NOTIFYLAB_*``) over
    this process's environment over ``LAB_DEFAULTS``.

    Use it as ``async with Lab(env) as lab:``; every process it started is
    stopped at the end, even on an error.
    """

    def __init__(self, env: Mapping[str, str] | None = None, log_dir: Path | str | None = None):
        self.env = {**LAB_DEFAULTS, **os.environ, **(env or {})}
        self.log_dir = Path(log_dir) if log_dir else None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[LabProcess] = []
        self._scratch: list[Path] = []  # the balancer's files, when there is no log_dir

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    async def start_server(
        self, port: int | None = None, instance_id: str | None = None, host: str = "127.0.0.1"
    ) -> LabProcess:
        port = port or free_port()
        instance_id = instance_id or f"i{port}"
        proc = LabProcess(
            f"server-{instance_id}",
            ["serve", "--host", host, "--port", str(port), "--instance-id", instance_id],
            self.env,
            self._log(f"server-{instance_id}"),
            url=f"http://{host}:{port}",
        )
        self.processes.append(proc)
        return await proc.start()

    async def start_worker(self, name: str | None = None) -> LabProcess:
        name = name or f"worker-{sum(p.name.startswith('worker') for p in self.processes) + 1}"
        proc = LabProcess(name, ["worker", "--worker-id", name], self.env, self._log(name))
        self.processes.append(proc)
        return await proc.start()

    async def start_balancer(self, servers: Sequence[LabProcess], port: int | None = None) -> LabProcess:
        """nginx on 127.0.0.1:``port`` in front of ``servers`` (started by
        this lab), balanced as in the compose topology (``lab.balancer``);
        returns once it answers ``/readyz`` from one of them."""
        ports = [int(s.url.rsplit(":", 1)[1]) for s in servers if s.url]
        port = port or free_port()
        if self.log_dir:
            rundir = self.log_dir / "balancer"
        else:
            rundir = Path(tempfile.mkdtemp(prefix="notifylab-lb-"))
            self._scratch.append(rundir)
        conf = balancer.render(rundir, ports, port)
        proc = LabProcess(
            "balancer",
            [],
            self.env,
            self._log("balancer"),
            url=f"http://127.0.0.1:{port}",
            command=balancer.command(rundir, conf),
        )
        self.processes.append(proc)
        return await proc.start()

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes))
        for folder in self._scratch:
            shutil.rmtree(folder, ignore_errors=True)

    async def __aenter__(self) -> Lab:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all()
