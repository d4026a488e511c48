"""Scale scenarios of issue 9: the reconnect storm and idle memory per session.

    python benchmarks/scale.py storm  [--storm-sizes 500,1000,10000]
    python benchmarks/scale.py memory [--memory-sizes 1000,10000] [--batch 250] [--trace 1000]
    python benchmarks/scale.py all
    [--servers bare+deflate,bare,notifylab,notifylab+deflate,notifylab+lb] [--pythonpath DIR] [--log-dir DIR]

Each scenario runs, in the same run, against one notifylab instance
(``notifylab.lab.Lab``, a fresh ``NOTIFYLAB_PREFIX``, no worker) and against a
bare python-socketio server (``bare_server.py``: no Redis, no RabbitMQ) as the
baseline, each with websocket permessage-deflate off and on: ``notifylab`` is
the default (``NOTIFYLAB_WS_COMPRESSION=false``), ``notifylab+deflate`` sets it
true, ``notifylab+lb`` (storms only) is two instances behind nginx as the
compose topology runs them, ``bare+deflate`` is python-socketio as shipped
(aiohttp compresses by default) and ``bare`` is the same with
``compress=False``. "vs bare" is the
ratio to the bare server with the same deflate setting.

The sockets come from ``loadgen.mjs`` (Node's socket.io-client, websocket
transport, which offers permessage-deflate) in separate processes, at most
2,500 sockets each, so the generator is not what limits the figures: the
baseline's storm times are the proof (same generator, a server that does
nothing).

- storm: N sockets connect at once, spread over ceil(N / 2,500) generator
  processes started together (users' sessions reused: 100 sockets per
  session at most); time until every socket got ``hello``, failures, silent
  sockets and the lines of the instance's log that say error.
- memory: N idle sockets connected in batches (``--batch``, 250: each batch
  opened at once, the next once each of its sockets got ``hello`` or an
  error), spread over the generator processes; sockets refused or silent are
  replaced by extra batches (at most half as many again), so ``held`` reaches
  N if the server can, the failures staying counted; RSS of the server process
  (psutil) before, after each batch, and 5 s after the last. ``KB/session``
  is (after - before) / held; ``slope`` is the least-squares slope of RSS
  against held sockets over the batches (one-time costs excluded). ``held``
  is what the generators still hold at the end (``dropped``: welcomed, then
  disconnected, with socket.io-client's reasons in the JSON), ``srv conns`` the server's
  established connections on its port. With ``--trace N``, the same on a
  notifylab instance and a bare server run under tracemalloc
  (``traced_serve.py``, deflate off) and the top allocation sites of the
  difference, and a census of the objects the garbage collector tracks.

``--pythonpath DIR`` puts DIR first on the servers' PYTHONPATH (a scratch
copy of the tree, or patched copies of installed packages) to measure a
change without touching the tree. Results: a table on stdout,
``benchmarks/scale_results.json`` and ``benchmarks/scale.png``. Figures are
printed, never asserted. See benchmarks/README.md ("Scale").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import aiohttp
import psutil

from notifylab.config import Settings
from notifylab.lab import Lab
from notifylab.lab.processes import LAB_DEFAULTS, free_port
from notifylab.protocol import COOKIE
from notifylab.redisurl import make_client

HERE = Path(__file__).resolve().parent
PASSWORD = "benchmark password"
PER_LOADGEN = 2500
PER_SESSION = 100
TOP_UP_ROUNDS = 0.5  # batched(): at most this many extra batches per planned batch
BAD_LINES = ("Too many connections", "message async handler error", "Traceback", "ERROR")
# name -> (server, websocket deflate)
SERVERS = {
    "bare+deflate": ("bare", True),
    "bare": ("bare", False),
    "notifylab": ("notifylab", False),
    "notifylab+deflate": ("notifylab", True),
    "notifylab+lb": ("notifylab", False),
}
# Two instances behind nginx (notifylab.lab.balancer), as the compose topology
# runs them: the sockets carry their login cookie, which nginx hashes. Storms only.
BALANCED = {"notifylab+lb"}


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load = os.getloadavg()
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, load average {load[0]:.1f} at start"


async def register_tokens(url: str, count: int) -> list[str]:
    """One session token per new user (Argon2 bounds this; 4 at a time)."""
    limit = asyncio.Semaphore(4)

    async def one(http: aiohttp.ClientSession) -> str:
        async with limit:
            body = {"username": f"b{uuid.uuid4().hex[:12]}", "password": PASSWORD}
            async with http.post(f"{url}/api/register", json=body) as response:
                if response.status not in (200, 201):
                    raise RuntimeError(f"register: {response.status} {await response.text()}")
                return response.cookies[COOKIE].value

    async with aiohttp.ClientSession() as http:
        return await asyncio.gather(*(one(http) for _ in range(count)))


def _add_errors(into: dict[str, int], errors: dict[str, int]) -> None:
    for k, v in errors.items():
        into[k] = into.get(k, 0) + v


class Loadgen:
    """Several ``loadgen.mjs`` processes holding ``count`` sockets between them:
    all at once (:meth:`storm`) or in batches (:meth:`batched`)."""

    def __init__(
        self,
        urls: list[str],
        tokens: list[str],
        count: int,
        timeout: float,
        retry: bool = False,
        cookie: bool = False,
    ) -> None:
        self.urls, self.tokens, self.count, self.timeout = urls, tokens, count, timeout
        self.retry = retry  # refused sockets try again with jittered backoff, as our clients do
        self.cookie = cookie  # the session in the login cookie too, which a balancer hashes
        self.procs: list[asyncio.subprocess.Process] = []

    def _parts(self) -> list[int]:
        parts = [PER_LOADGEN] * (self.count // PER_LOADGEN)
        if self.count % PER_LOADGEN:
            parts.append(self.count % PER_LOADGEN)
        return parts

    async def _spawn(self, counts: list[int]) -> None:
        """One process per entry, connecting that many sockets at once when told."""
        for _ in counts:
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(HERE / "loadgen.mjs"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=2**26,
            )
            self.procs.append(proc)

    async def _start(self, counts: list[int]) -> None:
        for i, (proc, n) in enumerate(zip(self.procs, counts, strict=True)):
            spec = {
                "urls": self.urls,
                "tokens": self.tokens,
                "count": n,
                "timeout": self.timeout,
                "offset": i * PER_LOADGEN,
                "retry": self.retry,
                "cookie": self.cookie,
            }
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode() + b"\n\n")
        await asyncio.gather(*(p.stdin.drain() for p in self.procs if p.stdin))

    async def storm(self) -> dict:
        parts = self._parts()
        await self._spawn(parts)
        t0 = time.monotonic()
        await self._start(parts)
        reports = await asyncio.gather(*(self._line(p) for p in self.procs))
        wall = time.monotonic() - t0
        errors: dict[str, int] = {}
        for r in reports:
            _add_errors(errors, r["errors"])
        alls = [r["all_ms"] for r in reports if r["all_ms"] is not None]
        return {
            "count": self.count,
            "hellos": sum(r["hellos"] for r in reports),
            "failed": sum(r["failed"] for r in reports),
            "retried": sum(r.get("retried", 0) for r in reports),
            "unanswered": sum(r["unanswered"] for r in reports),
            "errors": errors,
            "all_s": max(alls) / 1000 if alls else None,
            "p50_s": max(r["p50_ms"] or 0 for r in reports) / 1000,
            "wall_s": wall,
            "loadgens": len(self.procs),
            "loadgen_cpu_s": sum(_cpu(p.pid) for p in self.procs),
        }

    async def batched(self, batch: int, after_batch: Callable[[int], Awaitable[None]] | None = None) -> dict:
        """``count`` sockets, ``batch`` at a time (a batch never spans two
        processes); each batch starts once the previous one's sockets each got
        hello, an error or the timeout. ``after_batch(welcomed so far)``."""
        parts = self._parts()
        await self._spawn(parts)
        await self._start([0] * len(parts))
        await asyncio.gather(*(self._line(p) for p in self.procs))  # the empty storms
        totals = {"hellos": 0, "failed": 0, "unanswered": 0}
        errors: dict[str, int] = {}
        batch_s: list[float] = []
        t0 = time.monotonic()

        async def one_batch(proc: asyncio.subprocess.Process, n: int) -> None:
            r = await self.command(proc, f"connect {n}")
            for key in totals:
                totals[key] += r[key]
            _add_errors(errors, r["errors"])
            batch_s.append((r["all_ms"] or 0) / 1000)
            if after_batch:
                await after_batch(totals["hellos"])

        for proc, part in zip(self.procs, parts, strict=True):
            for start in range(0, part, batch):
                await one_batch(proc, min(batch, part - start))
        topped = 0
        while totals["hellos"] < self.count and topped < TOP_UP_ROUNDS * -(-self.count // batch):
            # Refused or silent sockets are replaced (the last process takes them),
            # so the instance holds ``count`` if it can; the failures stay counted.
            topped += 1
            await one_batch(self.procs[-1], min(batch, self.count - totals["hellos"]))
        hellos, failed, unanswered = totals["hellos"], totals["failed"], totals["unanswered"]
        batch_s.sort()
        return {
            "top_up_batches": topped,
            "count": self.count,
            "batch": batch,
            "batches": len(batch_s),
            "hellos": hellos,
            "failed": failed,
            "unanswered": unanswered,
            "errors": errors,
            "batch_p50_s": batch_s[len(batch_s) // 2] if batch_s else None,
            "batch_max_s": batch_s[-1] if batch_s else None,
            "wall_s": time.monotonic() - t0,
            "loadgens": len(self.procs),
            "loadgen_cpu_s": sum(_cpu(p.pid) for p in self.procs),
        }

    async def status(self) -> dict:
        """What the processes hold now: sockets opened, connected, dropped."""
        replies = [await self.command(p, "status") for p in self.procs]
        status = {k: sum(r[k] for r in replies) for k in ("sockets", "connected", "dropped")}
        status["drop_reasons"] = {}
        for r in replies:
            _add_errors(status["drop_reasons"], r["drop_reasons"])
        return status

    async def command(self, proc: asyncio.subprocess.Process, command: str) -> dict:
        assert proc.stdin is not None
        proc.stdin.write(command.encode() + b"\n")
        await proc.stdin.drain()
        return await self._line(proc)

    async def _line(self, proc: asyncio.subprocess.Process) -> dict:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), self.timeout + 30)
        if not line:
            raise RuntimeError(f"loadgen {proc.pid} exited ({await proc.wait()})")
        return json.loads(line)

    async def quit(self) -> None:
        for p in self.procs:
            if p.stdin and p.returncode is None:
                p.stdin.write(b"quit\n")
                p.stdin.close()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()
        self.procs.clear()


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def established(pid: int, port: int) -> int:
    """The server's established TCP connections on its listening port."""
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def slope_kb(series: list[tuple[int, float]]) -> float | None:
    """Least-squares KB of RSS per held socket over (held, RSS MiB) points."""
    pts = [(x, y) for x, y in series if x > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if not sxx:
        return None
    return sum((x - mx) * (y - my) for x, y in pts) / sxx * 1024


class Target:
    """The server under test: a notifylab instance or the bare baseline."""

    def __init__(self, name: str, log_dir: Path, traced: bool = False, pythonpath: str | None = None):
        self.name, self.log_dir, self.traced, self.pythonpath = name, log_dir, traced, pythonpath
        self.kind, self.deflate = SERVERS[name]
        self.prefix = f"nlbench{uuid.uuid4().hex[:10]}"
        self.lab: Lab | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.port = 0
        self.log_paths: list[Path | None] = []
        self.pids: list[int] = []  # the server processes (two behind a balancer)
        self.instance_urls: list[str] = []  # behind a balancer: each instance's own
        self.trace_file = str(log_dir / f"trace-{self.prefix}")
        self.dumps = 0

    def env(self) -> dict[str, str]:
        env = {
            "NOTIFYLAB_PREFIX": self.prefix,
            "NOTIFYLAB_LOG_LEVEL": "INFO",
            "NOTIFYLAB_WS_COMPRESSION": "true" if self.deflate else "false",
            "NOTIFYLAB_TRACE_FILE": self.trace_file,
        }
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.pythonpath, os.environ.get("PYTHONPATH")]))
        return env

    async def start(self) -> None:
        self.port = port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        if self.name in BALANCED:
            self.lab = Lab(self.env(), log_dir=self.log_dir / self.prefix)
            servers = [await self.lab.start_server(instance_id=i) for i in "ab"]
            await self.lab.start_balancer(servers, port)
            self.pids = [s.pid for s in servers if s.pid]
            self.log_paths = [s.log_path for s in servers if s.log_path]
            self.instance_urls = [s.url for s in servers if s.url]
            return
        if self.kind == "notifylab" and not self.traced:
            self.lab = Lab(self.env(), log_dir=self.log_dir)
            server = await self.lab.start_server(port=port)
            self.pids, self.log_paths = [server.pid], [server.log_path]
            return
        if self.traced:
            args = [str(HERE / "traced_serve.py"), "--port", str(port), "--instance-id", f"t{port}"]
            args += ["--bare"] if self.kind == "bare" else []
        else:
            args = [str(HERE / "bare_server.py"), str(port)]
        if self.kind == "bare" and not self.deflate:
            args.append("--no-compression")
        log_path = self.log_dir / f"{self.name}-{port}.log"
        self.log_paths = [log_path]
        with open(log_path, "ab") as out:  # noqa: ASYNC230 (a local file, before the child starts)
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                env={**LAB_DEFAULTS, **os.environ, **self.env()},  # as a Lab's: no per-address limit
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.pids = [self.proc.pid]
        async with aiohttp.ClientSession() as http, asyncio.timeout(120):  # tracemalloc, on a loaded box
            while True:
                try:
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)

    async def tokens(self, sockets: int, per_session: int = PER_SESSION) -> list[str]:
        """Sessions for ``sockets`` sockets, ``per_session`` sharing each (one user's)."""
        if self.kind == "bare":
            return ["x" * 40]
        return await register_tokens(self.url, max(1, -(-sockets // per_session)))

    @property
    def pid(self) -> int:
        """The (first) server process."""
        return self.pids[0]

    def bad_lines(self) -> list[str]:
        lines = []
        for path in self.log_paths:
            if path and path.exists():
                text = path.read_text(errors="replace")
                lines += [line for line in text.splitlines() if any(b in line for b in BAD_LINES)]
        return lines

    async def snapshot(self) -> tuple[tracemalloc.Snapshot, dict[str, list[int]]]:
        assert self.proc is not None
        path = Path(f"{self.trace_file}.{self.dumps}")
        self.dumps += 1
        self.proc.send_signal(signal.SIGUSR1)
        census = Path(f"{path}.census.json")
        async with asyncio.timeout(120):
            while not census.exists() or census.stat().st_size == 0:  # noqa: ASYNC110, ASYNC240 (polling a file)
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # let it finish writing
        return tracemalloc.Snapshot.load(str(path)), json.loads(census.read_text())  # noqa: ASYNC240

    async def stop(self) -> None:
        if self.lab:
            await self.lab.stop_all()
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.kind != "bare":
            await cleanup(self.prefix)


async def cleanup(prefix: str) -> None:
    settings = Settings()
    client = make_client(settings.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()
    connection = await aio_pika.connect(settings.broker_urls[0])
    async with connection:
        for queue in (f"{prefix}.jobs", f"{prefix}.jobs.dead"):
            channel = await connection.channel()
            await channel.queue_delete(queue)
        channel = await connection.channel()
        await channel.exchange_delete(f"{prefix}.events")


def _row(target: Target, scenario: str, size: int) -> dict:
    return {"scenario": scenario, "server": target.name, "deflate": target.deflate, "size": size}


async def storm(
    name: str,
    size: int,
    log_dir: Path,
    timeout: float,
    pythonpath: str | None,
    per_session: int = PER_SESSION,
    retry: bool = False,
) -> dict:
    target = Target(name, log_dir, pythonpath=pythonpath)
    await target.start()
    try:
        tokens = await target.tokens(size, per_session)
        server_cpu = sum(map(_cpu, target.pids))
        rss0 = sum(map(rss_mib, target.pids))
        gen = Loadgen([target.url], tokens, size, timeout, retry=retry, cookie=name in BALANCED)
        try:
            result = await gen.storm()
            result["server_cpu_s"] = sum(map(_cpu, target.pids)) - server_cpu
            result["rss_before_mib"], result["rss_after_mib"] = rss0, sum(map(rss_mib, target.pids))
            if target.instance_urls:  # how the balancer spread them
                result["per_instance"] = [await sockets_on(url) for url in target.instance_urls]
        finally:
            await gen.quit()
        await asyncio.sleep(1)
        result["bad_log_lines"] = len(target.bad_lines())
        result["bad_log_sample"] = target.bad_lines()[:3]
        return {**_row(target, "storm", size), **result}
    finally:
        await target.stop()


async def sockets_on(url: str) -> int:
    """The Socket.IO connections an instance holds (its ``/metrics``)."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("notifylab_sockets_connected "):
                return int(float(line.split()[1]))
    return -1


def census_diff(c0: dict[str, list[int]], c1: dict[str, list[int]], per: int, top: int = 20) -> list[str]:
    rows = []
    for name, (n1, b1) in c1.items():
        n0, b0 = c0.get(name, (0, 0))
        if n1 - n0:
            rows.append((b1 - b0, n1 - n0, name))
    rows.sort(reverse=True)
    return [f"{b / per:8.0f} B/session  {n / per:6.2f} objects/session  {name}" for b, n, name in rows[:top]]


async def memory(
    name: str,
    size: int,
    log_dir: Path,
    timeout: float,
    batch: int,
    traced: bool = False,
    pythonpath: str | None = None,
) -> dict:
    target = Target(name, log_dir, traced=traced, pythonpath=pythonpath)
    await target.start()
    try:
        tokens = await target.tokens(size)
        await asyncio.sleep(3)
        before = rss_mib(target.pid)
        snap0 = await target.snapshot() if traced else None
        series: list[tuple[int, float]] = [(0, before)]

        async def sample(held: int) -> None:
            series.append((held, rss_mib(target.pid)))

        gen = Loadgen([target.url], tokens, size, timeout)
        try:
            result = await gen.batched(batch, sample)
            await asyncio.sleep(5)
            after = rss_mib(target.pid)
            status = await gen.status()
            conns = established(target.pid, target.port)
            top: list[str] = []
            if traced:
                snap1, census1 = await target.snapshot()
                assert snap0 is not None
                per = max(1, status["connected"])
                top.append(f"-- {name} under tracemalloc, {per} sockets held; per held socket:")
                total = sum(s.size_diff for s in snap1.compare_to(snap0[0], "filename"))
                top.append(f"{total / per:8.0f} B/session  in all (what Python allocated)")
                for group, n in (("filename", 15), ("lineno", 25)):
                    diff = snap1.compare_to(snap0[0], group)
                    top.append(f"-- by {group}")
                    top += [
                        f"{s.size_diff / per:8.0f} B/session  {s.count_diff / per:+7.2f} blocks/session"
                        f"  {s.traceback}"
                        for s in diff[:n]
                    ]
                top.append("-- census of gc-tracked objects (count, sys.getsizeof of each)")
                top += census_diff(snap0[1], census1, per)
        finally:
            await gen.quit()
        held = status["connected"]
        return {
            **_row(target, "memory-traced" if traced else "memory", size),
            **result,
            "connected": held,
            "dropped": status["dropped"],
            "drop_reasons": status["drop_reasons"],
            "server_conns": conns,
            "rss_before_mib": before,
            "rss_after_mib": after,
            "rss_series": series,
            "kb_per_session": (after - before) * 1024 / max(1, held),
            "slope_kb": slope_kb(series),
            "top": top,
        }
    finally:
        await target.stop()


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


def table(results: list[dict]) -> str:
    lines = []
    storms = [r for r in results if r["scenario"] == "storm"]
    if storms:
        lines.append(
            f"{'storm (at once)':<16}{'server':>18}{'hello':>7}{'failed':>7}{'silent':>7}{'all in s':>9}"
            f"{'p50 s':>7}{'vs bare':>8}{'srv CPU s':>10}{'gen CPU s':>10}{'errlog':>7}{'gens':>5}"
            f"{'retried':>8}  per instance"
        )
        base = {(r["size"], r["deflate"]): r for r in storms if SERVERS[r["server"]][0] == "bare"}
        for r in storms:
            ratio = ""
            b = base.get((r["size"], r["deflate"]))
            if b and b["all_s"] and r["all_s"] and b is not r:
                ratio = f"{r['all_s'] / b['all_s']:.2f}x"
            lines.append(
                f"{r['size']:<16}{r['server']:>18}{r['hellos']:>7}{r['failed']:>7}{r['unanswered']:>7}"
                f"{_fmt(r['all_s'], '.2f'):>9}{r['p50_s']:>7.2f}{ratio:>8}{r['server_cpu_s']:>10.1f}"
                f"{r['loadgen_cpu_s']:>10.1f}{r['bad_log_lines']:>7}{r['loadgens']:>5}"
                f"{r.get('retried', 0):>8}  {'/'.join(map(str, r.get('per_instance', [])))}"
            )
    mems = [r for r in results if r["scenario"].startswith("memory")]
    if mems:
        lines.append("")
        lines.append(
            f"{'idle (sessions)':<16}{'server':>27}{'held':>7}{'failed':>7}{'silent':>7}{'dropped':>8}"
            f"{'srv conns':>10}{'RSS before':>11}{'RSS after':>10}{'KB/session':>11}{'slope KB':>9}"
            f"{'vs bare':>8}{'batch max s':>12}"
        )
        base = {
            (r["size"], r["deflate"], r["scenario"]): r for r in mems if SERVERS[r["server"]][0] == "bare"
        }
        for r in mems:
            b = base.get((r["size"], r["deflate"], r["scenario"]))  # traced against traced
            ratio = f"{r['kb_per_session'] / b['kb_per_session']:.2f}x" if b and b is not r else ""
            name = r["server"] + (" (traced)" if r["scenario"] == "memory-traced" else "")
            lines.append(
                f"{r['size']:<16}{name:>27}{r['connected']:>7}{r['failed']:>7}{r['unanswered']:>7}"
                f"{r['dropped']:>8}{r['server_conns']:>10}{r['rss_before_mib']:>11.1f}{r['rss_after_mib']:>10.1f}"
                f"{r['kb_per_session']:>11.1f}{_fmt(r['slope_kb'], '.1f'):>9}{ratio:>8}"
                f"{_fmt(r['batch_max_s'], '.2f'):>12}"
            )
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"bare+deflate": "s", "bare": "D", "notifylab": "o", "notifylab+deflate": "^"}
    for name, marker in markers.items():
        style = {"marker": marker, "label": name, "ls": "--" if SERVERS[name][0] == "bare" else "-"}
        rows = sorted(
            (r for r in results if r["scenario"] == "storm" and r["server"] == name), key=lambda r: r["size"]
        )
        if rows:
            ax1.plot([r["size"] for r in rows], [r["all_s"] or 0 for r in rows], **style)
            for r in rows:
                if r["failed"] or r["unanswered"]:
                    ax1.annotate(
                        f"{r['failed'] + r['unanswered']} failed", (r["size"], r["all_s"] or 0), fontsize=7
                    )
        rows = sorted(
            (r for r in results if r["scenario"] == "memory" and r["server"] == name), key=lambda r: r["size"]
        )
        if rows:
            ax2.plot([r["size"] for r in rows], [r["kb_per_session"] for r in rows], **style)
    ax1.axhline(5, ls=":", c="grey")
    ax1.axhline(60, ls=":", c="grey")
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="sockets connecting at once",
        ylabel="s until every hello",
        title="storm (target: 1,000 in 5 s, 10,000 in 60 s)",
    )
    ax2.axhline(30, ls=":", c="grey")
    ax2.set(
        xscale="log",
        xlabel="idle sessions on one instance (connected in batches)",
        ylabel="KB RSS per session",
        title="idle memory (target < 30 KB)",
    )
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["storm", "memory", "all"])
    parser.add_argument("--storm-sizes", default="500,1000,10000")
    parser.add_argument("--memory-sizes", default="1000,10000")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"some of {', '.join(SERVERS)}")
    parser.add_argument("--batch", type=int, default=250, help="memory: sockets connected at once")
    parser.add_argument(
        "--retry",
        action="store_true",
        help="storm: refused sockets retry with full-jitter backoff (1 s doubling to 20 s), as clients do",
    )
    parser.add_argument(
        "--per-session",
        type=int,
        default=PER_SESSION,
        help="storm: sockets sharing one user's session (an instance's users coming back: 1-3)",
    )
    parser.add_argument("--trace", type=int, default=1000, help="sockets for the tracemalloc runs; 0: none")
    parser.add_argument("--trace-servers", default="notifylab,bare")
    parser.add_argument("--timeout", type=float, default=90)
    parser.add_argument("--pythonpath", help="first on the servers' PYTHONPATH (a scratch tree)")
    parser.add_argument("--log-dir", help="keep the servers' logs and traces here (default: a temporary one)")
    parser.add_argument("--out", default=str(HERE / "scale_results.json"))
    parser.add_argument("--png", default=str(HERE / "scale.png"))
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    about = machine()
    print(f"machine: {about}", flush=True)
    if args.pythonpath:
        print(f"servers' PYTHONPATH starts with {args.pythonpath}", flush=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="nlbench") as tmp:
        log_dir = Path(args.log_dir or tmp)
        log_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before anything runs)
        if args.scenario in ("storm", "all"):
            for size in [int(x) for x in args.storm_sizes.split(",") if x]:
                for name in servers:
                    print(f"storm {size} on {name} ...", flush=True)
                    results.append(
                        await storm(
                            name, size, log_dir, args.timeout, args.pythonpath, args.per_session, args.retry
                        )
                    )
                    shown = {k: v for k, v in results[-1].items() if k != "bad_log_sample"}
                    print("  ", shown, flush=True)
        if args.scenario in ("memory", "all"):
            for size in [int(x) for x in args.memory_sizes.split(",") if x]:
                for name in servers:
                    if name in BALANCED:
                        continue  # memory is measured per instance
                    print(f"memory {size} on {name} (batches of {args.batch}) ...", flush=True)
                    r = await memory(
                        name, size, log_dir, args.timeout, args.batch, pythonpath=args.pythonpath
                    )
                    results.append(r)
                    print("  ", {k: v for k, v in r.items() if k not in ("top", "rss_series")}, flush=True)
            if args.trace:
                for name in args.trace_servers.split(","):
                    print(f"memory {args.trace} on {name} under tracemalloc ...", flush=True)
                    r = await memory(
                        name, args.trace, log_dir, args.timeout, args.batch, True, pythonpath=args.pythonpath
                    )
                    results.append(r)
    print()
    print(table(results))
    for r in results:
        if r.get("top"):
            print()
            print("\n".join(r["top"]))
        if r.get("bad_log_sample"):
            print(f"\n{r['server']} storm {r['size']}: log says {r['bad_log_sample']}")
    Path(args.out).write_text(  # noqa: ASYNC240 (once, at the end)
        json.dumps({"machine": about, "pythonpath": args.pythonpath, "results": results}, indent=1)
    )
    if any(r["scenario"] in ("storm", "memory") for r in results):
        plot(results, Path(args.png), f"notifylab scale, {about}")


if __name__ == "__main__":
    asyncio.run(main())
