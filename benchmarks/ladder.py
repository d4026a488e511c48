"""The throughput ladder: notifications/s offered against delivered.

    python benchmarks/ladder.py [--users 200] [--rates 250,500,1000,2000] [--seconds 6]
                                [--paths operations,publish] [--modes topic,fanout]
                                [--per-publish 10] [--instances 2] [--profile topic:operations:1000]
                                [--config base:topic:/tmp/notifylab-base --config new:topic ...]

For each routing mode (``NOTIFYLAB_ROUTING``) it starts 2 server instances
(``--instances``; a list, e.g. 1,2,3, runs each mode once per count) and
2 workers (one ``NOTIFYLAB_PREFIX`` for the whole run, so the users are
registered once), connects every user twice (the sockets round robin over the
instances: one on each of two, or both on one if there is one,
``loadgen.mjs``: Node socket.io-client, websocket, in its own process), then
climbs the rungs: for ``--seconds`` it offers a rate of notifications,

- operations path: ``POST /api/operations`` (a ``report`` of 10 steps of
  0.1 s: 13 notifications each) from the users' sessions, round robin;
- publish path: ``POST /api/publish`` with the API key, ``--per-publish``
  users a call (10; 1 is the issue's shape, one user a call);

then waits until the streams stop growing and every socket's count stops
moving, and judges each socket against its user's inbox stream (the entries
appended since the rung began): lost (in the stream, never received),
duplicated (received twice), reordered (received out of stream order). Latency
is the socket's receive time minus the notification's ``ts``; the delivered
rate counts each notification once per user (not per socket), from the rung's
start to its last delivery. Writes ``ladder_results.json`` and ``ladder.png``;
The HTTP calls come from ``offer.mjs`` (Node's http client, ``--driver
node``, the default) or from this process (aiohttp, ``--driver python``), the
same calls either way; Node's takes less of the cores the system needs.
``--profile`` runs py-spy on one server instance during the named rung
(``pip install py-spy`` in the venv; it needs ptrace). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing import remove
from scale import Loadgen, machine

from notifylab.config import Settings
from notifylab.lab import Lab
from notifylab.protocol import COOKIE
from notifylab.redisurl import is_sentinel_url, make_client

HERE = Path(__file__).resolve().parent
PASSWORD = "benchmark password"
API_KEY = "ladder-" + uuid.uuid4().hex
STEPS, STEP_SECONDS = 10, 0.1
PER_OPERATION = STEPS + 3  # queued, started, 10 steps, succeeded
PER_PUBLISH = 10  # users named by one publish call
TICK = 0.02  # the offer is topped up this often
IN_FLIGHT = 128  # HTTP calls outstanding at most (more is the driver hiding the server's backlog)
DRAIN_TIMEOUT = 40.0


def id_key(note_id: str) -> tuple[int, int]:
    ms, _, seq = note_id.partition("-")
    return int(ms), int(seq)


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def cpu_seconds(proc: psutil.Process) -> float | None:
    """User + system CPU seconds of ``proc`` so far; None once it is gone."""
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


async def node_line(proc: asyncio.subprocess.Process, event: str) -> dict:
    """offer.mjs's next line, which must be ``event``."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if not line:
        raise RuntimeError(f"offer.mjs exited ({await proc.wait()}) before saying {event!r}")
    message = json.loads(line)
    if message.get("event") != event:
        raise RuntimeError(f"offer.mjs said {message}, not {event!r}")
    return message


async def go(proc: asyncio.subprocess.Process) -> dict:
    """Let offer.mjs make its offer; what its calls came to, as ``Run.offer``'s.
    It stays until its stdin is closed, so that its CPU seconds can be read."""
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    done = await node_line(proc, "done")
    return {"calls": done["calls"], "skipped": done["skipped"], "statuses": done["statuses"]}


def waited_seconds(proc: psutil.Process) -> float | None:
    """Seconds ``proc``'s threads have spent runnable but waiting for a core
    so far (Linux's schedstat, summed over its threads); None once it is gone
    or where there is no schedstat. CPU seconds say how much a part worked;
    this says how long it was kept from working by the others."""
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[1])  # ns on the run queue
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def listening(ports: set[int], name: str) -> list[psutil.Process]:
    """The processes listening on ``ports``, with their children (RabbitMQ's
    beam.smp runs erl_child_setup, inet_gethost and its disk monitor's shell).

    Found by socket rather than by name, so that another RabbitMQ or Redis on
    the machine (a test's cluster of its own) is not counted; by ``name`` only
    where the sockets' owners are hidden from us (not root)."""
    try:
        found = [
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports
        ]
    except psutil.AccessDenied:
        found = [None]
    if None in found:
        procs = [p for p in psutil.process_iter(["name"]) if p.info["name"] == name]
    else:
        procs = [psutil.Process(pid) for pid in set(found)]
    return procs + [child for p in procs for child in p.children(recursive=True)]


def busy_seconds(times: object) -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine in ``psutil.cpu_times()``
    (every CPU summed). Busy is user, nice, system, irq and softirq: not idle
    or iowait, not guest (Linux counts it in user already), and not steal (the
    hypervisor ran something else: no process of ours had those seconds)."""
    busy = sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq"))
    return busy, getattr(times, "steal", 0.0)


def kind_seconds(cpu_s: dict[str, float], kind: str) -> float:
    """The CPU seconds of the lab processes of one kind (``server``, ``worker``)."""
    return sum(v for k, v in cpu_s.items() if k.startswith(kind))


class CpuMeter:
    """Where the machine's CPU went from its start to :meth:`read`: the CPU
    seconds of named groups of processes, and of the whole machine.

    A process gone before :meth:`read` counts nothing (its seconds fall in the
    machine's rest); one started meanwhile (py-spy with ``--profile``) is in
    the rest too."""

    def __init__(self, groups: dict[str, list[psutil.Process]]) -> None:
        self.groups = groups
        self.before = {p.pid: cpu_seconds(p) for procs in groups.values() for p in procs}
        self.waited_before = {p.pid: waited_seconds(p) for procs in groups.values() for p in procs}
        self.started, self.machine = time.monotonic(), busy_seconds(psutil.cpu_times())

    def _spent(self, proc: psutil.Process) -> float:
        before, now = self.before[proc.pid], cpu_seconds(proc)
        return now - before if before is not None and now is not None else 0.0

    def _waited(self, proc: psutil.Process) -> float:
        before, now = self.waited_before[proc.pid], waited_seconds(proc)
        return max(0.0, now - before) if before is not None and now is not None else 0.0

    def read(self) -> tuple[dict[str, float], dict[str, float]]:
        """(CPU seconds per group, and the machine's: wall_s, busy_s, steal_s)."""
        wall = time.monotonic() - self.started
        now = busy_seconds(psutil.cpu_times())
        spent = {name: sum(self._spent(p) for p in procs) for name, procs in self.groups.items()}
        busy, steal = (after - before for after, before in zip(now, self.machine, strict=True))
        return spent, {"wall_s": wall, "busy_s": busy, "steal_s": steal}

    def waited(self) -> dict[str, float]:
        """Seconds each group's processes waited for a core (run queue), so far."""
        return {name: sum(self._waited(p) for p in procs) for name, procs in self.groups.items()}


def breakdown(
    cpu: dict[str, float], spent: dict[str, float], whole: dict[str, float], waited: dict[str, float]
) -> dict:
    """A rung's ``cpu_breakdown``: the CPU seconds of each part of the system
    (``cpu``, the lab's processes, summed by kind; the other groups of
    ``spent`` as they are) and of the rest of the machine (``other``: its busy
    seconds minus all of those), and its cores busy on average, over the
    interval of ``cpu_s``: where the cores went, when the rung saturates.
    ``waited_s``: the seconds each part was runnable but had no core."""

    def by_part(seconds: dict[str, float]) -> dict[str, float]:
        mine = {n: v for n, v in seconds.items() if n in cpu}
        parts = {"servers": kind_seconds(mine, "server"), "workers": kind_seconds(mine, "worker")}
        return parts | {name: v for name, v in seconds.items() if name not in cpu}

    parts = by_part(spent)
    parts["other"] = whole["busy_s"] - sum(spent.values())
    return {
        "wall_s": round(whole["wall_s"], 2),
        "cores": psutil.cpu_count(),
        "busy_s": round(whole["busy_s"], 2),
        "steal_s": round(whole["steal_s"], 2),
        "cores_busy": round(whole["busy_s"] / whole["wall_s"], 2),
        "parts_s": {name: round(seconds, 2) for name, seconds in parts.items()},
        "waited_s": {name: round(seconds, 2) for name, seconds in by_part(waited).items()},
    }


async def register(url: str, count: int) -> list[tuple[str, str]]:
    """(username, session token) of ``count`` new users; Argon2 bounds this."""
    limit = asyncio.Semaphore(4)

    async def one(http: aiohttp.ClientSession) -> tuple[str, str]:
        async with limit:
            name = f"l{uuid.uuid4().hex[:12]}"
            async with http.post(f"{url}/api/register", json={"username": name, "password": PASSWORD}) as r:
                if r.status not in (200, 201):
                    raise RuntimeError(f"register: {r.status} {await r.text()}")
                return name, r.cookies[COOKIE].value

    async with aiohttp.ClientSession() as http:
        return list(await asyncio.gather(*(one(http) for _ in range(count))))


class Run:
    """One mode's lab, users and sockets; :meth:`rung` runs one rung."""

    def __init__(
        self,
        mode: str,
        prefix: str,
        users: list[tuple[str, str]],
        urls: list[str],
        lab: Lab,
        per_publish: int = PER_PUBLISH,
        driver: str = "node",
    ):
        self.mode, self.prefix, self.users, self.urls, self.lab = mode, prefix, users, urls, lab
        self.per_publish = per_publish  # users named by one publish call
        self.driver = driver  # who makes the HTTP calls: offer.mjs (node) or this process (python)
        self.redis = make_client(Settings(prefix=prefix).redis_url, decode_responses=True)
        self.settings = Settings(prefix=prefix)
        self.loadgen: Loadgen | None = None

    async def connect(self) -> dict:
        # tokens[i] for socket i: user j's two sockets are 2j (urls[0]) and 2j+1 (urls[1]).
        tokens = [token for _, token in self.users for _ in range(2)]
        self.loadgen = Loadgen(self.urls, tokens, len(tokens), timeout=60)
        return await self.loadgen.storm()

    async def command(self, command: str) -> list[dict]:
        assert self.loadgen is not None
        for p in self.loadgen.procs:
            assert p.stdin is not None
            p.stdin.write(command.encode() + b"\n")
            await p.stdin.drain()
        return [await self.loadgen._line(p) for p in self.loadgen.procs]

    def beside(self, offerer: asyncio.subprocess.Process | None = None) -> dict[str, list[psutil.Process]]:
        """The processes sharing the machine with the lab's, by part: the
        broker, Redis (the ports of the URLs the lab's processes use; none for
        a Sentinel URL, whose primary moves), the load generator and the HTTP
        driver (this process, not its children, the lab's processes; and
        ``offerer``, offer.mjs, when it makes the calls)."""
        assert self.loadgen is not None
        redis_url = self.settings.redis_url
        return {
            "rabbitmq": listening({urlsplit(u).port or 5672 for u in self.settings.broker_urls}, "beam.smp"),
            "redis": listening(
                set() if is_sentinel_url(redis_url) else {urlsplit(redis_url).port or 6379}, "redis-server"
            ),
            "loadgen": [psutil.Process(p.pid) for p in self.loadgen.procs],
            "driver": [psutil.Process(), *([psutil.Process(offerer.pid)] if offerer else [])],
        }

    async def lasts(self) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in self.users:
                pipe.xrevrange(self.settings.key("inbox", name), count=1)
            return [r[0][0] if r else "0-0" for r in await pipe.execute()]

    async def lengths(self) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in self.users:
                pipe.xlen(self.settings.key("inbox", name))
            return sum(await pipe.execute())

    async def node_offer(self, path: str, rate: int, seconds: float) -> asyncio.subprocess.Process:
        """offer.mjs, told the offer and ready to make it at :func:`go`."""
        spec = {
            "path": path,
            "urls": self.urls,
            "users": self.users,
            "rate": rate,
            "seconds": seconds,
            "per_call": PER_OPERATION if path == "operations" else self.per_publish,
            "per_publish": self.per_publish,
            "api_key": API_KEY,
            "steps": STEPS,
            "step_seconds": STEP_SECONDS,
            "in_flight": IN_FLIGHT,
            "tick": TICK,
        }
        proc = await asyncio.create_subprocess_exec(
            "node", str(HERE / "offer.mjs"), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        await proc.stdin.drain()
        await node_line(proc, "ready")
        return proc

    async def offer(self, path: str, rate: int, seconds: float) -> dict:
        """Offer ``rate`` notifications/s for ``seconds``; the calls' outcomes."""
        per_call = PER_OPERATION if path == "operations" else self.per_publish
        limit = asyncio.Semaphore(IN_FLIGHT)
        statuses: dict[str, int] = {}
        tasks: set[asyncio.Task] = set()
        behind = 0  # calls not made because IN_FLIGHT were outstanding: the offer was not met
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def call(i: int) -> None:
                try:
                    url = self.urls[i % len(self.urls)]
                    if path == "operations":
                        _, token = self.users[i % len(self.users)]
                        body = {"kind": "report", "params": {"steps": STEPS, "step_seconds": STEP_SECONDS}}
                        kw: dict = {"json": body, "cookies": {COOKIE: token}}
                        target = f"{url}/api/operations"
                    else:
                        first = (i * self.per_publish) % len(self.users)
                        names = [
                            self.users[(first + k) % len(self.users)][0] for k in range(self.per_publish)
                        ]
                        body = {"users": names, "type": "bench.tick", "title": f"tick {i}"}
                        kw = {"json": body, "headers": {"Authorization": f"Bearer {API_KEY}"}}
                        target = f"{url}/api/publish"
                    async with http.post(target, **kw) as r:
                        await r.read()
                        key = str(r.status)
                except Exception as exc:
                    key = type(exc).__name__
                finally:
                    limit.release()
                statuses[key] = statuses.get(key, 0) + 1

            started = time.monotonic()
            made = 0
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(rate * elapsed / per_call) + 1
                while made < due:
                    if limit.locked():
                        behind += due - made
                        made = due
                        break
                    await limit.acquire()
                    task = asyncio.create_task(call(made))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    made += 1
                await asyncio.sleep(TICK)
            await asyncio.gather(*tasks)
        return {"calls": made - behind, "skipped": behind, "statuses": statuses}

    async def drain(self) -> None:
        """Until the streams stop growing and the sockets' counts stop moving."""
        last, still = None, 0
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and still < 3:
            await asyncio.sleep(0.5)
            reports = await self.command("report")
            now = (await self.lengths(), sum(len(r) for rep in reports for r in rep["received"]))
            still = still + 1 if now == last else 0
            last = now

    async def counters(self) -> dict[str, float]:
        """The instances' gap and duplicate counters, summed (``/metrics``)."""
        totals = {"notifylab_gaps_filled_total": 0.0, "notifylab_duplicates_dropped_total": 0.0}
        async with aiohttp.ClientSession() as http:
            for url in self.urls:
                async with http.get(f"{url}/metrics") as response:
                    for line in (await response.text()).splitlines():
                        name, _, value = line.partition(" ")
                        if name in totals:
                            totals[name] += float(value)
        return totals

    async def rung(self, path: str, rate: int, seconds: float, profile: bool) -> dict:
        befores = await self.lasts()
        counted = await self.counters()
        await self.command("reset")
        procs = {p.name: [psutil.Process(p.pid)] for p in self.lab.processes if p.pid}
        offerer = await self.node_offer(path, rate, seconds) if self.driver == "node" else None
        meter = CpuMeter({**procs, **self.beside(offerer)})
        spies = []
        if profile:  # py-spy on one server instance and one worker, for the offer's duration
            for kind in ("server", "worker"):
                proc = next(p for p in self.lab.processes if p.name.startswith(kind))
                out = HERE / f"ladder_profile_{self.mode}_{path}_{rate}_{kind}.txt"
                spies.append(subprocess.Popen(  # noqa: ASYNC220 (py-spy runs beside the loop; never waited on it)
                    [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                     "--pid", str(proc.pid), "--duration", str(int(seconds)), "--format", "raw",
                     "--output", str(out), "--rate", "100", "--gil"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                ))  # fmt: skip
        t0 = time.time() * 1000
        offered = await go(offerer) if offerer else await self.offer(path, rate, seconds)
        await self.drain()
        spent, whole = meter.read()
        waited = meter.waited()
        if offerer:  # read, so it may go
            assert offerer.stdin is not None
            offerer.stdin.close()
            await offerer.wait()
        cpu = {n: spent[n] for n in procs}
        counted = {k: v - counted[k] for k, v in (await self.counters()).items()}
        for spy in spies:
            _, err = spy.communicate(timeout=60)
            if spy.returncode:
                offered["profile_error"] = err.decode()[-300:]
        reports = await self.command("report")
        received = [r for rep in reports for r in rep["received"]]
        # A socket refused at connect (the connect storm before the first rung) is
        # not judged: it is counted apart, its user's other socket still is.
        connected = [c for rep in reports for c in rep["connected_each"]]
        expected: list[list[str]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for (name, _), before in zip(self.users, befores, strict=True):
                pipe.xrange(self.settings.key("inbox", name), min=f"({before}", max="+")
            for entries in await pipe.execute():
                expected.append([entry_id for entry_id, _ in entries])
        lost = duplicated = reordered = foreign = 0
        latencies: list[float] = []
        last_ms = t0
        per_user_delivered: list[set[str]] = [set() for _ in self.users]
        absent = 0
        for i, got in enumerate(received):
            if not connected[i]:
                absent += 1
                continue
            user = i // 2
            want = set(expected[user])
            ids = [g[0] for g in got if g[0] in want]
            foreign += len(got) - len(ids)  # late ones of an earlier rung
            lost += len(want - set(ids))
            duplicated += len(ids) - len(set(ids))
            keys = [id_key(x) for x in ids]
            reordered += sum(1 for a, b in itertools.pairwise(keys) if a >= b)
            per_user_delivered[user].update(ids)
            for g in got:
                if g[0] in want:
                    latencies.append(g[2])
                    last_ms = max(last_ms, id_key(g[0])[0] + g[2])
        appended = sum(len(e) for e in expected)
        delivered = sum(len(s) for s in per_user_delivered)
        # Rates over the stream's own clock (an id's ms): from the first append
        # to the last append, and to the last delivery. An operation appends
        # for about a second after the offer stops; this counts that tail in both.
        times = [id_key(x)[0] for e in expected for x in e] or [t0]
        first, last_append = min(times), max(times)
        window_s = max(last_ms - first, 1) / 1000
        return {
            "mode": self.mode,
            "path": path,
            "offered": rate,
            "per_call": PER_OPERATION if path == "operations" else self.per_publish,
            "appended_per_s": appended / (max(last_append - first, 1) / 1000),
            "delivered_per_s": delivered / window_s,
            "appended": appended,
            "deliveries": len(latencies),
            "sockets": len(received),
            "sockets_not_connected": absent,
            "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99),
            "max_ms": max(latencies, default=math.nan),
            "lost": lost,
            "duplicated": duplicated,
            "reordered": reordered,
            "late_from_before": foreign,
            "cpu_s": {n: round(v, 1) for n, v in cpu.items()},
            "cpu_breakdown": breakdown(cpu, spent, whole, waited),
            "gaps_filled": int(counted["notifylab_gaps_filled_total"]),
            "duplicates_dropped": int(counted["notifylab_duplicates_dropped_total"]),
            "window_s": window_s,
            **offered,
        }

    async def close(self) -> None:
        if self.loadgen is not None:
            await self.loadgen.quit()
        await self.redis.aclose()


def top_costs(path: Path, count: int = 12) -> str:
    """The functions a py-spy raw profile (collapsed stacks) spent most samples
    in: by self time (the innermost frame) and inclusive (anywhere on the stack)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        samples = int(n)
        total += samples
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
                  for f in stack.split(";")]  # fmt: skip
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    out = [f"{path.name}: {total} samples"]
    for title, counts in (("self", own), ("inclusive", inclusive)):
        out.append(f"  top {title}:")
        for frame, n in sorted(counts.items(), key=lambda kv: -kv[1])[:count]:
            out.append(f"    {100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    head = (
        f"{'mode':8} {'path':10} {'offered/s':>9} {'appended/s':>10} {'delivered/s':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'lost':>5} {'dup':>4} {'reord':>5} {'skipped':>7}"
        f" {'gaps':>5}  cpu s (servers, workers)  cpu us/notification (servers, workers)"
    )
    lines = [head]
    for r in rows:
        servers, workers = kind_seconds(r["cpu_s"], "server"), kind_seconds(r["cpu_s"], "worker")
        skipped = r["skipped"] * r.get("per_call", PER_CALL[r["path"]])  # calls -> notifications
        lines.append(
            f"{r['mode']:8} {r['path']:10} {r['offered']:>9} {r['appended_per_s']:>10.0f} "
            f"{r['delivered_per_s']:>11.0f} {r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f} {r['max_ms']:>7.0f} "
            f"{r['lost']:>5} {r['duplicated']:>4} {r['reordered']:>5} {skipped:>7}"
            f" {r.get('gaps_filled', 0):>5}  {servers:.1f}, {workers:.1f}"
            f"  {1e6 * servers / max(r['appended'], 1):.0f}, {1e6 * workers / max(r['appended'], 1):.0f}"
        )
    return "\n".join(lines)


PER_CALL = {"operations": PER_OPERATION, "publish": PER_PUBLISH}
PARTS = ("servers", "workers", "rabbitmq", "redis", "loadgen", "driver", "other")


def breakdown_table(rows: list[dict]) -> str:
    """Where the cores went, rung by rung: the CPU seconds of each part
    (``cpu_breakdown``; a row of an older JSON without it is left out), and
    under them the seconds each part waited for a core."""
    lines = [
        f"{'mode':8} {'path':10} {'offered/s':>9} {'wall s':>6}  cpu s: "
        + " ".join(f"{part:>8}" for part in PARTS)
        + f" {'steal':>6}  cores busy"
    ]
    for r in rows:
        if "cpu_breakdown" not in r:
            continue
        b = r["cpu_breakdown"]
        lines.append(
            f"{r['mode']:8} {r['path']:10} {r['offered']:>9} {b['wall_s']:>6.1f}         "
            + " ".join(f"{b['parts_s'][part]:>8.1f}" for part in PARTS)
            + f" {b['steal_s']:>6.1f}  {b['cores_busy']:.2f} of {b['cores']}"
        )
        if "waited_s" in b:  # the same parts' seconds on the run queue, without a core
            lines.append(
                f"{'':8} {'':10} {'':>9} {'':>6} waited: "
                + " ".join(
                    f"{b['waited_s'][part]:>8.1f}" if part in b["waited_s"] else f"{'-':>8}" for part in PARTS
                )
            )
    return "\n".join(lines)


STYLES = ["o-", "s--", "^-", "v--", "D-", "x--", "P-", "*--"]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for (mode, p), style in zip(
        sorted({(r["mode"], r["path"]) for r in rows}),
        ["o-", "s--", "^-", "v--", "D-", "x--", "P-", "*--"],
        strict=False,
    ):
        mine = [r for r in rows if r["mode"] == mode and r["path"] == p]
        xs = [r["offered"] for r in mine]
        left.plot(xs, [r["delivered_per_s"] for r in mine], style, label=f"{mode}, {p}")
        right.plot(xs, [r["p99_ms"] for r in mine], style, label=f"{mode}, {p} p99")
    top = max(r["offered"] for r in rows)
    left.plot([0, top], [0, top], ":", color="grey", label="delivered = offered")
    left.set(xlabel="notifications/s offered", ylabel="notifications/s delivered (per user)")
    right.set(xlabel="notifications/s offered", ylabel="latency p99 (ms)", yscale="log")
    right.axhline(50, color="red", lw=0.8, ls=":")
    right.axhline(100, color="orange", lw=0.8, ls=":")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def checkout(path: str, given: str) -> str:
    """``path`` as an absolute checkout of notifylab whose package the
    processes will import (through PYTHONPATH); ``given`` names the option."""
    tree = Path(path).resolve()
    if not (tree / "notifylab" / "__init__.py").exists():
        raise SystemExit(f"--config {given!r}: no notifylab package in {tree}")
    if (Path.cwd() / "notifylab").is_dir():  # python -m puts the current directory first
        raise SystemExit("--config with a TREE: run from outside a checkout (cd /tmp)")
    return str(tree)


def _config(text: str) -> tuple[str, str, str | None]:
    """``LABEL:MODE[:TREE]`` -> (label, mode, tree or None)."""
    label, mode, *rest = text.split(":", 2)
    if mode not in ("topic", "fanout") or not label.isalnum():
        raise SystemExit(f"--config {text!r}: want LABEL:topic|fanout[:TREE], LABEL letters and digits")
    return label, mode, checkout(rest[0], text) if rest else None


def title_of(args: dict, users: int) -> str:
    instances = args.get("instances", "2")  # runs before --instances was an option had 2
    workers = args["workers"]
    return f"notifylab throughput ladder, {instances} instances, {workers} workers, {users} users x 2 sockets"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rates", default="250,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--paths", default="operations,publish")
    parser.add_argument("--modes", default="topic,fanout")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--driver",
        choices=["node", "python"],
        default="node",
        help="who makes the HTTP calls: offer.mjs (node, the default: a fraction of the CPU) "
        "or this process (python, aiohttp: the driver before issue 13's third pass)",
    )
    parser.add_argument(
        "--instances",
        default="2",
        help="server instances per config; a list (1,2,3) runs each config once per count, "
        "labelled LABELxN, to see what more processes on the same cores carry",
    )
    parser.add_argument(
        "--per-publish",
        type=int,
        default=PER_PUBLISH,
        help="users named by one publish call (1: one user a call)",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="LABEL:path:rate of the rung to profile (LABEL: the mode, or a --config label)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="LABEL:MODE[:TREE]",
        help="instead of --modes: a routing mode run from another checkout of notifylab "
        "(e.g. base:topic:/tmp/notifylab-base, made with `git worktree add`), so that code "
        "before and after a change is measured in the same run; repeat it",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw ladder.png from ladder_results.json")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((HERE / "ladder_results.json").read_text())
        users = saved["args"]["users"]
        plot(saved["rows"], HERE / "ladder.png", f"{title_of(saved['args'], users)}; {saved['machine']}")
        return
    configs = [_config(c) for c in args.config] or [(m, m, None) for m in args.modes.split(",")]
    counts = [int(n) for n in args.instances.split(",")]
    if len(counts) > 1:
        configs = [(f"{label}x{n}", mode, tree, n) for label, mode, tree in configs for n in counts]
    else:
        configs = [(label, mode, tree, counts[0]) for label, mode, tree in configs]
    rates = [int(x) for x in args.rates.split(",")]
    about = machine()
    print(about, flush=True)
    prefix = f"nlbench{uuid.uuid4().hex[:10]}"
    log_root = Path(tempfile.mkdtemp(prefix="ladder-"))
    rows: list[dict] = []
    users: list[tuple[str, str]] = []
    instance_ids: list[str] = []
    try:
        for label, mode, tree, count in configs:
            env = {
                **({"PYTHONPATH": tree} if tree else {}),  # its notifylab before the installed one
                "NOTIFYLAB_STATIC_DIR": str(HERE.parent / "frontend" / "dist"),
                "NOTIFYLAB_PREFIX": prefix,
                "NOTIFYLAB_ROUTING": mode,
                "NOTIFYLAB_LOG_LEVEL": "WARNING",
                "NOTIFYLAB_API_KEY": API_KEY,
                "NOTIFYLAB_PUBLISH_RATE": "0",  # the capacity is measured, not the key's limit
                "NOTIFYLAB_WORKER_CONCURRENCY": "200",
                "NOTIFYLAB_MAX_ACTIVE_OPERATIONS": "100",
            }
            ids = [f"{label}{i}" for i in range(count)]
            instance_ids += ids
            async with Lab(env, log_dir=log_root / label) as lab:
                servers = await asyncio.gather(*(lab.start_server(instance_id=i) for i in ids))
                await asyncio.gather(*(lab.start_worker(f"worker-{w + 1}") for w in range(args.workers)))
                urls = [s.url for s in servers]
                if not users:
                    t = time.monotonic()
                    users = await register(urls[0], args.users)
                    print(f"registered {len(users)} users in {time.monotonic() - t:.1f}s", flush=True)
                run = Run(label, prefix, users, urls, lab, args.per_publish, args.driver)
                try:
                    storm = await run.connect()
                    print(f"{label}: {storm['hellos']}/{storm['count']} sockets welcomed", flush=True)
                    for path in args.paths.split(","):
                        for rate in rates:
                            profile = args.profile == f"{label}:{path}:{rate}"
                            row = await run.rung(path, rate, args.seconds, profile)
                            rows.append(row)
                            print(table([row]).splitlines()[1], flush=True)
                finally:
                    await run.close()
    finally:
        await remove(prefix, instance_ids)
        print(f"logs: {log_root}")
    print(about)
    print(table(rows))
    print(breakdown_table(rows))
    results = {"machine": about, "args": vars(args), "rows": rows}
    (HERE / "ladder_results.json").write_text(json.dumps(results, indent=1))
    if rows:
        plot(rows, HERE / "ladder.png", f"{title_of(vars(args), len(users))}; {about}")
    for found in sorted(HERE.glob("ladder_profile_*.txt")):
        if args.profile and args.profile.replace(":", "_") in found.name:
            print(top_costs(found))
    bad = [r for r in rows if r["lost"] or r["duplicated"] or r["reordered"]]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
