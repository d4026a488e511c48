"""Per-user topic routing against python-socketio's stock fanout manager.

    python benchmarks/routing.py [--users N] [--instances K] [--events M] [--quick]

For each mode (``NOTIFYLAB_ROUTING=topic``, then ``fanout``) it starts K
server instances and two workers under a fresh ``NOTIFYLAB_PREFIX``, connects
N users (user i to instance i mod K), has every user start a ``report`` of M
steps at once, waits (bounded) until each client has seen its operation end,
and reads each instance's ``/metrics``. It prints one table with both modes
and their ratio (fanout/topic), then a correctness verdict per mode: per
client, notifications lost (expected M+3 per operation) and duplicates.

The figures are printed, never asserted: on a shared machine they move from
run to run. Only the verdict is a pass/fail (exit status 1 if a mode lost or
duplicated anything). Everything the run made in Redis and RabbitMQ is
removed at the end. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiohttp

from notifylab.config import Settings
from notifylab.lab import Lab, LabProcess
from notifylab.lab.client import Client
from notifylab.lab.cluster import remove_prefix
from notifylab.redisurl import make_client as redis_client

PASSWORD = "benchmark password"
STEP_SECONDS = 0.01  # the smallest step a report accepts
WORKERS = 2
TERMINAL = {"operation.succeeded", "operation.failed", "operation.cancelled"}
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)
SETUP_TIMEOUT = 30.0  # registering + connecting one client
SETTLE_TIMEOUT = 10.0  # metrics still moving after the clients are done
CLEANUP_TIMEOUT = 20.0

METRICS = {  # short name -> Prometheus sample name on /metrics
    "received": "notifylab_bus_messages_received_total",
    "not_local": "notifylab_bus_messages_not_local_total",
    "delivered": "notifylab_notifications_delivered_total",
    "gaps": "notifylab_gaps_filled_total",
    "dropped": "notifylab_duplicates_dropped_total",
    "latency_sum": "notifylab_delivery_latency_seconds_sum",
    "latency_count": "notifylab_delivery_latency_seconds_count",
}


class TimedClient(Client):
    """A Client that notes when each notification first arrived."""

    def __init__(self, url: str):
        super().__init__(url)
        self.latencies_ms: list[float] = []

    def _receive(self, note: dict) -> None:  # the "notification" handler calls this
        now = time.time()
        if note.get("id") not in self._seen and isinstance(note.get("ts"), (int, float)):
            self.latencies_ms.append(now * 1000 - note["ts"])
        super()._receive(note)


@dataclass
class Result:
    mode: str
    prefix: str
    wall: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)  # deltas summed over instances
    per_instance_received: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    server_hwm_kib: list[int] = field(default_factory=list)
    worker_hwm_kib: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # per client
    duplicates: list[int] = field(default_factory=list)  # per client
    out_of_order: list[int] = field(default_factory=list)  # per client
    unfinished: int = 0  # clients whose operation did not end within the wait
    received_by_clients: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def valid(self) -> bool:
        return not (
            self.errors or self.unfinished or any(self.lost) or any(self.duplicates) or any(self.out_of_order)
        )


# -- reading the instances ---------------------------------------------------


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with asyncio.timeout(5):
        async with http.get(f"{url}/metrics") as response:
            response.raise_for_status()
            text = await response.text()
    wanted = {name: short for short, name in METRICS.items()}
    values = {short: 0.0 for short in METRICS}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in wanted:
            values[wanted[name]] = float(rest.split()[0])
    return values


async def scrape_all(http: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, float]]:
    return list(await asyncio.gather(*(scrape(http, url) for url in urls)))


def reset_peak_rss(proc: LabProcess) -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so that
    the peak read later belongs to the run, not to start-up and the Argon2
    password hashing of the registrations (64 MiB each)."""
    try:
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_kib(proc: LabProcess) -> int | None:
    """VmHWM (the peak resident set size) of a running process, in KiB."""
    if proc.pid is None or not proc.running:
        return None
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- one mode ------------------------------------------------------------------


async def make_client(url: str, index: int) -> TimedClient:
    client = TimedClient(url)
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            await client.register(f"b{index}-{uuid.uuid4().hex[:8]}", PASSWORD)
            await client.connect()
            await client.wait_for(lambda: client.hello is not None, 10)
    except BaseException:
        await client.close()
        raise
    return client


async def run_mode(mode: str, args: argparse.Namespace, log_root: Path) -> Result:
    prefix = f"nlbench{uuid.uuid4().hex[:10]}"
    result = Result(mode, prefix, log_dir=log_root / mode)
    concurrency = max(8, math.ceil(args.users / WORKERS))
    env = {
        "NOTIFYLAB_PREFIX": prefix,
        "NOTIFYLAB_ROUTING": mode,
        "NOTIFYLAB_LOG_LEVEL": "WARNING",
        "NOTIFYLAB_WORKER_CONCURRENCY": str(concurrency),
    }
    clients: list[TimedClient] = []
    instance_ids = [f"s{i}" for i in range(args.instances)]
    try:
        async with (
            Lab(env, log_dir=result.log_dir) as lab,
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
        ):
            try:
                servers = await asyncio.gather(*(lab.start_server(instance_id=i) for i in instance_ids))
                workers = await asyncio.gather(*(lab.start_worker(f"worker-{w + 1}") for w in range(WORKERS)))
                urls = [s.url for s in servers]
                made = await asyncio.gather(
                    *(make_client(urls[i % len(urls)], i) for i in range(args.users)), return_exceptions=True
                )
                clients = [c for c in made if isinstance(c, Client)]
                failures = [c for c in made if not isinstance(c, Client)]
                if failures:
                    raise RuntimeError(f"{len(failures)} client(s) could not connect: {failures[0]!r}")

                if not all([reset_peak_rss(p) for p in (*servers, *workers)]):
                    result.notes.append("could not reset VmHWM: peak RSS includes start-up and registration")
                before = await scrape_all(http, urls)
                started = time.perf_counter()
                ops = await asyncio.gather(
                    *(c.start("report", steps=args.events, step_seconds=STEP_SECONDS) for c in clients)
                )
                waits = await asyncio.gather(
                    *(
                        c.wait_operation(op["id"], timeout=args.timeout)
                        for c, op in zip(clients, ops, strict=True)
                    ),
                    return_exceptions=True,
                )
                result.wall = time.perf_counter() - started
                result.unfinished = sum(isinstance(w, BaseException) for w in waits)

                # Counters on the instances may trail the clients by a moment (in
                # fanout, an instance without the user still has to read its copy).
                after = await scrape_all(http, urls)
                try:
                    async with asyncio.timeout(SETTLE_TIMEOUT):
                        while True:
                            await asyncio.sleep(0.3)
                            again = await scrape_all(http, urls)
                            if again == after:
                                break
                            after = again
                except TimeoutError:
                    result.notes.append(
                        f"metrics still moving after {SETTLE_TIMEOUT:.0f}s; figures are the last read"
                    )

                deltas = [{k: a[k] - b[k] for k in METRICS} for a, b in zip(after, before, strict=True)]
                result.metrics = {k: sum(d[k] for d in deltas) for k in METRICS}
                result.per_instance_received = [d["received"] for d in deltas]
                result.server_hwm_kib = [h for h in map(peak_rss_kib, servers) if h is not None]
                result.worker_hwm_kib = [h for h in map(peak_rss_kib, workers) if h is not None]

                expected = args.events + 3  # queued, started, progress x M, succeeded
                for client, op in zip(clients, ops, strict=True):
                    got = len(client.of_operation(op["id"]))
                    result.lost.append(max(0, expected - got))
                    result.duplicates.append(client.duplicates)
                    result.out_of_order.append(client.out_of_order)
                    result.received_by_clients += len(client.notifications)
                    result.latencies_ms.extend(client.latencies_ms)
                    if got > expected:
                        result.errors.append(
                            f"a client got {got} notifications of one operation, expected {expected}"
                        )
            finally:
                # Close the clients while their servers still run: a client whose
                # server went away first keeps reconnecting (see README).
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    except Exception as exc:  # report it with the others; cleanup still runs
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        # The Lab has stopped every process by now; remove what they left behind
        # (in a finally, so a Ctrl-C leaves nothing either).
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                await remove(prefix, instance_ids)
        except Exception as exc:
            result.errors.append(f"cleanup of {prefix} failed: {type(exc).__name__}: {exc}")
    return result


# -- cleaning up ---------------------------------------------------------------


async def _fanout_queues(settings: Settings) -> list[str]:
    """The server-named queues python-socketio's fanout manager bound to our
    exchange. AMQP cannot list them, so ask the management API (if it is
    there); else they expire by themselves 5 minutes after their instance."""
    url = urlsplit(settings.broker_urls[0])
    vhost = quote(url.path[1:] or "/", safe="")
    api = (
        f"http://{url.hostname or '127.0.0.1'}:15672/api/exchanges/{vhost}/{quote(settings.fanout_exchange)}"
    )
    token = base64.b64encode(
        f"{unquote(url.username or 'guest')}:{unquote(url.password or 'guest')}".encode()
    )
    try:
        async with aiohttp.ClientSession(
            timeout=HTTP_TIMEOUT, headers={"Authorization": "Basic " + token.decode()}
        ) as http:
            async with http.get(f"{api}/bindings/source") as response:
                if response.status != 200:
                    return []
                return [
                    b["destination"] for b in await response.json() if b.get("destination_type") == "queue"
                ]
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return []


async def remove(prefix: str, instance_ids: list[str]) -> None:
    """Delete the prefix's Redis keys, queues and exchanges, the instances'
    own queues and the fanout mode's server-named ones."""
    settings = Settings(prefix=prefix)
    queues = [*map(settings.instance_queue, instance_ids), *await _fanout_queues(settings)]
    await remove_prefix(settings, queues)


async def check_services() -> None:
    settings = Settings()
    client = redis_client(settings.redis_url)
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except Exception as exc:
        raise SystemExit(
            f"Redis is not answering at {settings.redis_url} ({exc}); run scripts/services.sh"
        ) from None
    finally:
        await client.aclose()
    try:
        connection = await aio_pika.connect(settings.broker_urls[0], timeout=5)
        await connection.close()
    except Exception as exc:
        raise SystemExit(
            f"RabbitMQ is not answering ({type(exc).__name__}); run scripts/services.sh"
        ) from None


# -- printing ------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def rows(r: Result) -> list[tuple[str, float, str]]:
    m = r.metrics

    def mib(kibs: list[int], combine=sum) -> float:
        return combine(kibs) / 1024 if kibs else math.nan

    mean_ms = m.get("latency_sum", 0) / m["latency_count"] * 1000 if m.get("latency_count") else math.nan
    return [
        ("wall time to deliver everything (s)", r.wall, "{:.2f}"),
        ("bus messages received, all instances", m.get("received", math.nan), "{:.0f}"),
        ("  of them for users not on the instance", m.get("not_local", math.nan), "{:.0f}"),
        ("  most received by one instance", max(r.per_instance_received, default=math.nan), "{:.0f}"),
        ("notifications delivered (server count)", m.get("delivered", math.nan), "{:.0f}"),
        ("notifications received by clients", r.received_by_clients, "{:.0f}"),
        ("client latency p50 (ms)", percentile(r.latencies_ms, 50), "{:.1f}"),
        ("client latency p95 (ms)", percentile(r.latencies_ms, 95), "{:.1f}"),
        ("server latency mean (ms, histogram)", mean_ms, "{:.1f}"),
        ("gaps filled from the stream (server)", m.get("gaps", math.nan), "{:.0f}"),
        ("duplicates dropped (server)", m.get("dropped", math.nan), "{:.0f}"),
        ("peak RSS during the run, all servers (MiB)", mib(r.server_hwm_kib), "{:.1f}"),
        ("  largest server (MiB)", mib(r.server_hwm_kib, max), "{:.1f}"),
        ("peak RSS during the run, all workers (MiB)", mib(r.worker_hwm_kib), "{:.1f}"),
    ]


def fmt(value: float, pattern: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def ratio(fanout: float, topic: float) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (fanout, topic)):
        return "-"
    if topic == 0:
        return "=" if fanout == 0 else "inf"
    return f"{fanout / topic:.2f}x"


def print_table(topic: Result, fanout: Result) -> None:
    width = 42
    print(f"{'':{width}} {'topic':>10} {'fanout':>10} {'fanout/topic':>13}")
    for (label, t, pattern), (_, f, _) in zip(rows(topic), rows(fanout), strict=True):
        print(f"{label:{width}} {fmt(t, pattern):>10} {fmt(f, pattern):>10} {ratio(f, t):>13}")


def print_verdict(r: Result, expected: int) -> None:
    state = "valid" if r.valid else "INVALID"
    print(
        f"{r.mode:6} {state}: {len(r.lost)} clients, expected {expected} notifications each; "
        f"lost {sum(r.lost)}, duplicates {sum(r.duplicates)}, out of order {sum(r.out_of_order)}, "
        f"unfinished {r.unfinished}"
    )
    print(f"       lost per client:       {r.lost}")
    print(f"       duplicates per client: {r.duplicates}")
    for error in r.errors:
        print(f"       error: {error}")
    for note in r.notes:
        print(f"       note: {note}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8, help="users, one client each (default 8)")
    parser.add_argument("--instances", type=int, default=4, help="server instances (default 4)")
    parser.add_argument("--events", type=int, default=50, help="steps per report, 1-100 (default 50)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the operations to end, per mode (default 60)",
    )
    parser.add_argument("--quick", action="store_true", help="4 users, 2 instances, 5 steps")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args()
    if args.quick:
        args.users, args.instances, args.events = 4, 2, 5
    if args.users < 1 or args.instances < 1 or not 1 <= args.events <= 100:
        parser.error("--users and --instances must be at least 1, --events 1-100")

    await check_services()
    log_root = Path(tempfile.mkdtemp(prefix="notifylab-bench-"))
    per_op = args.events + 3
    total = args.users * per_op
    print(
        f"notifylab routing benchmark: {args.users} users on {args.instances} instances, "
        f"{WORKERS} workers, one report of {args.events} steps x {STEP_SECONDS}s each "
        f"({per_op} notifications per user, {total} in all)"
    )
    print(
        f"ideal bus messages: topic {total} (each to its user's instance), "
        f"fanout {total * args.instances} (every one to every instance)"
    )
    results = {}
    for mode in ("topic", "fanout"):
        began = time.perf_counter()
        results[mode] = await run_mode(mode, args, log_root)
        print(
            f"  {mode}: done in {time.perf_counter() - began:.1f}s (start-up, run, stop, cleanup)", flush=True
        )
    print()
    print_table(results["topic"], results["fanout"])
    print()
    for mode in ("topic", "fanout"):
        print_verdict(results[mode], per_op)
    ok = all(r.valid for r in results.values())
    if ok and not args.keep_logs:
        shutil.rmtree(log_root, ignore_errors=True)
    else:
        print(f"process logs: {log_root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
