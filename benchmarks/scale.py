"""Scale scenarios of issue 9: the reconnect storm and idle memory per session.

    python benchmarks/scale.py storm  [--sizes 500,1000,10000]
    python benchmarks/scale.py memory [--sizes 1000,10000] [--trace 1000]
    python benchmarks/scale.py all

Each scenario runs against one notifylab instance (``notifylab.lab.Lab``, a
fresh ``NOTIFYLAB_PREFIX``, no worker) and, in the same run, against a bare
python-socketio server (``bare_server.py``: no Redis, no RabbitMQ) as the
baseline; every figure is printed beside the baseline's and their ratio.

The sockets come from ``loadgen.mjs`` (Node's socket.io-client, websocket
transport) in separate processes, at most 2,500 sockets each, so the
generator is not what limits the figures: the baseline's storm times are
the proof (same generator, a server that does nothing).

- storm: N sockets connect at once (users' sessions reused: 100 sockets per
  session at most); time until every socket got ``hello``, failures, and the
  lines of the instance's log that say error.
- memory: RSS of the server process before and after N idle sockets (psutil,
  after 3 s of quiet), per session; then, with ``--trace N``, the same on an
  instance run under tracemalloc (``traced_serve.py``) and the top allocation
  sites of the difference.

Results: a table on stdout, ``benchmarks/scale_results.json`` and
``benchmarks/scale.png``. Figures are printed, never asserted. See
benchmarks/README.md ("Scale").
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
from pathlib import Path

import aio_pika
import aiohttp
import psutil
import redis.asyncio as aioredis

from notifylab.config import Settings
from notifylab.lab import Lab
from notifylab.lab.processes import free_port
from notifylab.protocol import COOKIE

HERE = Path(__file__).resolve().parent
PASSWORD = "benchmark password"
PER_LOADGEN = 2500
PER_SESSION = 100
BAD_LINES = ("Too many connections", "message async handler error", "Traceback", "ERROR")


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


class Loadgen:
    """Several ``loadgen.mjs`` processes holding ``count`` sockets between them."""

    def __init__(self, urls: list[str], tokens: list[str], count: int, timeout: float):
        self.urls, self.tokens, self.count, self.timeout = urls, tokens, count, timeout
        self.procs: list[asyncio.subprocess.Process] = []

    async def storm(self) -> dict:
        parts = [PER_LOADGEN] * (self.count // PER_LOADGEN)
        if self.count % PER_LOADGEN:
            parts.append(self.count % PER_LOADGEN)
        for _ in parts:
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(HERE / "loadgen.mjs"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=2**26,
            )
            self.procs.append(proc)
        t0 = time.monotonic()
        for proc, n in zip(self.procs, parts, strict=True):
            spec = {"urls": self.urls, "tokens": self.tokens, "count": n, "timeout": self.timeout}
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode() + b"\n\n")
        await asyncio.gather(*(p.stdin.drain() for p in self.procs if p.stdin))
        reports = [await self._line(p) for p in self.procs]
        wall = time.monotonic() - t0
        errors: dict[str, int] = {}
        for r in reports:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        alls = [r["all_ms"] for r in reports if r["all_ms"] is not None]
        return {
            "count": self.count,
            "hellos": sum(r["hellos"] for r in reports),
            "failed": sum(r["failed"] for r in reports),
            "unanswered": sum(r["unanswered"] for r in reports),
            "errors": errors,
            "all_s": max(alls) / 1000 if alls else None,
            "p50_s": max(r["p50_ms"] or 0 for r in reports) / 1000,
            "wall_s": wall,
            "loadgens": len(self.procs),
            "loadgen_cpu_s": sum(_cpu(p.pid) for p in self.procs),
        }

    async def _line(self, proc: asyncio.subprocess.Process) -> dict:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), self.timeout + 30)
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


class Target:
    """The server under test: a notifylab instance or the bare baseline."""

    def __init__(self, kind: str, log_dir: Path, traced: bool = False):
        self.kind, self.log_dir, self.traced = kind, log_dir, traced
        self.prefix = f"nlbench{uuid.uuid4().hex[:10]}"
        self.lab: Lab | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.log_path: Path | None = None
        self.trace_file = str(log_dir / f"trace-{self.prefix}")

    async def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        if self.kind == "notifylab" and not self.traced:
            self.lab = Lab(
                {"NOTIFYLAB_PREFIX": self.prefix, "NOTIFYLAB_LOG_LEVEL": "INFO"}, log_dir=self.log_dir
            )
            server = await self.lab.start_server(port=port)
            self.pid, self.log_path = server.pid, server.log_path
            return
        if self.kind == "bare":
            args = [str(HERE / "bare_server.py"), str(port)]
        else:
            args = [str(HERE / "traced_serve.py"), "--port", str(port), "--instance-id", f"t{port}"]
        env = {**os.environ, "NOTIFYLAB_PREFIX": self.prefix, "NOTIFYLAB_TRACE_FILE": self.trace_file}
        self.log_path = self.log_dir / f"{self.kind}-{port}.log"
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 (a local file, before the child starts)
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        self.pid = self.proc.pid
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                try:
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)

    async def tokens(self, sockets: int) -> list[str]:
        if self.kind == "bare":
            return ["x" * 40]
        return await register_tokens(self.url, max(1, -(-sockets // PER_SESSION)))

    def bad_lines(self) -> list[str]:
        if not self.log_path or not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if any(b in line for b in BAD_LINES)]

    async def snapshot(self) -> tracemalloc.Snapshot:
        n = sum(1 for p in self.log_dir.glob(Path(self.trace_file).name + ".*"))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        path = Path(f"{self.trace_file}.{n}")
        async with asyncio.timeout(60):
            while not path.exists() or path.stat().st_size == 0:  # noqa: ASYNC110, ASYNC240 (polling a file)
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # let it finish writing
        return tracemalloc.Snapshot.load(str(path))

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
    client = aioredis.from_url(settings.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()
    connection = await aio_pika.connect(settings.broker_url)
    async with connection:
        for queue in (f"{prefix}.jobs", f"{prefix}.jobs.dead"):
            channel = await connection.channel()
            await channel.queue_delete(queue)
        channel = await connection.channel()
        await channel.exchange_delete(f"{prefix}.events")


async def storm(kind: str, size: int, log_dir: Path, timeout: float) -> dict:
    target = Target(kind, log_dir)
    await target.start()
    try:
        tokens = await target.tokens(size)
        server_cpu = _cpu(target.pid)
        gen = Loadgen([target.url], tokens, size, timeout)
        try:
            result = await gen.storm()
            result["server_cpu_s"] = _cpu(target.pid) - server_cpu
        finally:
            await gen.quit()
        await asyncio.sleep(1)
        result["bad_log_lines"] = len(target.bad_lines())
        result["bad_log_sample"] = target.bad_lines()[:3]
        return {"scenario": "storm", "server": kind, "size": size, **result}
    finally:
        await target.stop()


async def memory(kind: str, size: int, log_dir: Path, timeout: float, traced: bool = False) -> dict:
    target = Target(kind, log_dir, traced=traced)
    await target.start()
    try:
        tokens = await target.tokens(size)
        await asyncio.sleep(3)
        before = rss_mib(target.pid)
        snap0 = await target.snapshot() if traced else None
        gen = Loadgen([target.url], tokens, size, timeout)
        try:
            result = await gen.storm()
            await asyncio.sleep(3)
            after = rss_mib(target.pid)
            top: list[str] = []
            if traced:
                snap1 = await target.snapshot()
                assert snap0 is not None
                for group in ("filename", "lineno"):
                    diff = snap1.compare_to(snap0, group)
                    top.append(f"-- by {group}")
                    top += [
                        f"{s.size_diff / size:8.0f} B/session  {s.count_diff:+8d} blocks  {s.traceback}"
                        for s in diff[:15]
                    ]
        finally:
            await gen.quit()
        return {
            "scenario": "memory-traced" if traced else "memory",
            "server": kind,
            "size": size,
            "connected": result["hellos"],
            "rss_before_mib": before,
            "rss_after_mib": after,
            "kb_per_session": (after - before) * 1024 / max(1, result["hellos"]),
            "top": top,
        }
    finally:
        await target.stop()


def table(results: list[dict]) -> str:
    lines = []
    storms = [r for r in results if r["scenario"] == "storm"]
    if storms:
        lines.append(
            f"{'storm (sockets at once)':<26}{'server':>10}{'hello':>8}{'failed':>8}{'silent':>8}"
            f"{'all in (s)':>12}{'p50 (s)':>9}{'vs bare':>9}{'srv CPU s':>10}{'gen CPU s':>10}{'errlog':>8}"
        )
        base = {r["size"]: r for r in storms if r["server"] == "bare"}
        for r in storms:
            ratio = ""
            b = base.get(r["size"])
            if b and b["all_s"] and r["all_s"] and r["server"] != "bare":
                ratio = f"{r['all_s'] / b['all_s']:.2f}x"
            lines.append(
                f"{r['size']:<26}{r['server']:>10}{r['hellos']:>8}{r['failed']:>8}{r['unanswered']:>8}"
                f"{(r['all_s'] or float('nan')):>12.2f}{r['p50_s']:>9.2f}{ratio:>9}{r['server_cpu_s']:>10.1f}"
                f"{r['loadgen_cpu_s']:>10.1f}{r['bad_log_lines']:>8}"
            )
    mems = [r for r in results if r["scenario"].startswith("memory")]
    if mems:
        lines.append("")
        lines.append(
            f"{'idle memory (sessions)':<26}{'server':>16}{'held':>8}{'RSS before':>12}"
            f"{'RSS after':>11}{'KB/session':>12}{'vs bare':>9}"
        )
        base = {r["size"]: r for r in mems if r["server"] == "bare"}
        for r in mems:
            b = base.get(r["size"])
            ratio = f"{r['kb_per_session'] / b['kb_per_session']:.2f}x" if b and r["server"] != "bare" else ""
            name = r["server"] + (" (traced)" if r["scenario"] == "memory-traced" else "")
            lines.append(
                f"{r['size']:<26}{name:>16}{r['connected']:>8}{r['rss_before_mib']:>12.1f}"
                f"{r['rss_after_mib']:>11.1f}{r['kb_per_session']:>12.1f}{ratio:>9}"
            )
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, marker in (("notifylab", "o"), ("bare", "s")):
        rows = sorted(
            (r for r in results if r["scenario"] == "storm" and r["server"] == kind), key=lambda r: r["size"]
        )
        if rows:
            ax1.plot([r["size"] for r in rows], [r["all_s"] or 0 for r in rows], marker=marker, label=kind)
            for r in rows:
                if r["failed"] or r["unanswered"]:
                    ax1.annotate(f"{r['failed'] + r['unanswered']} failed", (r["size"], r["all_s"] or 0))
        rows = sorted(
            (r for r in results if r["scenario"] == "memory" and r["server"] == kind), key=lambda r: r["size"]
        )
        if rows:
            ax2.plot(
                [r["size"] for r in rows], [r["kb_per_session"] for r in rows], marker=marker, label=kind
            )
    ax1.axhline(5, ls=":", c="grey")
    ax1.set(
        xscale="log",
        xlabel="sockets connecting at once",
        ylabel="s until every hello",
        title="storm (target: 1,000 in 5 s, 10,000 in 60 s)",
    )
    ax2.axhline(30, ls=":", c="grey")
    ax2.set(
        xscale="log",
        xlabel="idle sessions on one instance",
        ylabel="KB RSS per session",
        title="idle memory (target < 30 KB)",
    )
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["storm", "memory", "all"])
    parser.add_argument("--storm-sizes", default="500,1000,10000")
    parser.add_argument("--memory-sizes", default="1000,10000")
    parser.add_argument("--trace", type=int, default=1000, help="sockets for the tracemalloc run; 0: none")
    parser.add_argument("--timeout", type=float, default=90)
    parser.add_argument("--out", default=str(HERE / "scale_results.json"))
    args = parser.parse_args()
    about = machine()
    print(f"machine: {about}", flush=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="nlbench") as tmp:
        log_dir = Path(tmp)
        if args.scenario in ("storm", "all"):
            for size in map(int, args.storm_sizes.split(",")):
                for kind in ("bare", "notifylab"):
                    print(f"storm {size} on {kind} ...", flush=True)
                    results.append(await storm(kind, size, log_dir, args.timeout))
                    print("  ", {k: v for k, v in results[-1].items() if k != "bad_log_sample"}, flush=True)
        if args.scenario in ("memory", "all"):
            for size in map(int, args.memory_sizes.split(",")):
                for kind in ("bare", "notifylab"):
                    print(f"memory {size} on {kind} ...", flush=True)
                    results.append(await memory(kind, size, log_dir, args.timeout))
            if args.trace:
                print(f"memory {args.trace} under tracemalloc ...", flush=True)
                results.append(await memory("notifylab", args.trace, log_dir, args.timeout, traced=True))
    print()
    print(table(results))
    for r in results:
        if r.get("top"):
            print("\ntracemalloc, what the idle sessions added (per session):")
            print("\n".join(r["top"]))
        if r.get("bad_log_sample"):
            print(f"\n{r['server']} storm {r['size']}: log says {r['bad_log_sample']}")
    Path(args.out).write_text(  # noqa: ASYNC240 (once, at the end)
        json.dumps({"machine": about, "results": results}, indent=1)
    )
    if any(r["scenario"] == "storm" or r["scenario"] == "memory" for r in results):
        plot(results, HERE / "scale.png", f"notifylab scale, {about}")


if __name__ == "__main__":
    asyncio.run(main())
