"""Does an instance stay responsive for others while one client abuses it?

    .venv/bin/python benchmarks/abuse.py                  # about 90 s
    .venv/bin/python benchmarks/abuse.py --seconds 8      # shorter phases

Two instances, A and B, and one worker. An honest user has a session on
each (ann on A, bob on B), and each runs operations back to back: a
``report`` of 100 steps of 0.02 s, about 50 notifications a second, from
the worker through the bus to the instance. Then five phases of
``--seconds`` each:

1. quiet: nobody else;
2. malformed packets at A: an abuser (a process of its own) keeps four
   websockets busy sending what the server cannot take (packets engine.io
   or python-socketio cannot read, events that are none of ours), each
   reconnecting as soon as it is shed;
3. a connect flood at A: 64 loops opening sockets (each a full Socket.IO
   connect with a session) as fast as they can, never waiting, from one
   address; A has the per-address limit on (its default: 20 a second after
   a burst of 200), so most get a 429;
4. the same connect flood at B, which has the limit off (0): what the limit
   saves;
5. a user's sockets stop reading at A: four websockets of a third user that
   never read a frame (frozen tabs) while that user is sent SLOW_RATE
   notifications a second of about 6 KB through the publish API; A cuts
   each once it holds ``engine.QUEUE_LIMIT`` packets for it.

The abusers come from addresses of their own (X-Forwarded-For, with
127.0.0.1 trusted as the proxy), the honest sessions from 127.0.0.1.

For each phase and honest session: the delivery latency (the client's
receive time minus the notification's ``ts``, written by the worker) at
p50, p99 and max, and p99 against the same session's quiet p99 (the
ratio); what the abuser managed (packets sent, connections shed, sockets
taken in, 429s); the instances' CPU; the lines their logs grew by. At the
end, the verdict of both sessions over the whole run (lost, duplicated,
reordered): the figures are printed, only the verdict is pass or fail.

Everything runs on this one machine: the abusers take CPU from the same
cores as the instances (``nproc`` is printed), so the ratios include that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from notifylab.config import Settings
from notifylab.lab import Client, ClientError, Lab, LabProcess, verdict
from notifylab.lab.cluster import remove_prefix
from notifylab.lab.publisher import Publisher
from notifylab.protocol import COOKIE

PASSWORD = "benchmark password"
WS = "/socket.io/?EIO=4&transport=websocket"
STEPS, STEP_SECONDS = 100, 0.02  # one operation: about 50 notifications a second for 2 s
MALFORMED_SOCKETS = 4
FLOOD_LOOPS = 64
PACKETS_PER_SOCKET = 10_000
SLOW_SOCKETS = 4
SLOW_RATE = 400  # notifications a second published to the slow reader's user, about 6 KB each
API_KEY = "abuse-" + uuid.uuid4().hex

# What the malformed abuser sends, one kind per connection in turn (as in tests/test_abuse.py).
JUNK = [
    lambda i: f"9junk{i}",  # an engine.io type past 6
    lambda i: f"xjunk{i}",  # no engine.io type at all
    lambda i: f"4garbage{i}",  # a Socket.IO packet that does not decode
    lambda i: '42["sync",{"after":' + str(i),  # not JSON
    lambda i: bytes([0, 255, i % 256]),  # binary junk
    lambda i: f'42{i}["no such event",{{}}]',  # events refused, each answered
    lambda i: f"42{i}[{i},{{}}]",  # events named by a number
]


# -- the abusers (each run as a process of its own: python abuse.py --abuse KIND ...) ------------


async def _connect(
    http: aiohttp.ClientSession, url: str, token: str, headers: dict[str, str]
) -> aiohttp.ClientWebSocketResponse:
    """A raw websocket through Engine.IO's open and Socket.IO's connect, up to ``hello``."""
    ws = await http.ws_connect(url.replace("http://", "ws://") + WS, headers=headers, max_msg_size=0)
    try:
        async with asyncio.timeout(10):
            if not (await ws.receive_str()).startswith("0{"):
                raise ConnectionError("no engine.io open packet")
            await ws.send_str("40" + json.dumps({"session": token}))
            while not (await ws.receive_str()).startswith('42["hello"'):
                pass
    except BaseException:
        await ws.close()
        raise
    return ws


async def malformed(url: str, token: str, seconds: float, address: str) -> dict[str, int]:
    """MALFORMED_SOCKETS loops: connect, send junk until shed, again."""
    counts = {"packets sent": 0, "connections shed": 0, "connects refused": 0}
    deadline = time.monotonic() + seconds
    headers = {"X-Forwarded-For": address}

    async def loop(k: int, http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            make = JUNK[k % len(JUNK)]
            k += MALFORMED_SOCKETS
            try:
                ws = await _connect(http, url, token, headers)
            except (aiohttp.ClientError, ConnectionError, TimeoutError, ValueError):
                counts["connects refused"] += 1  # a 429, mostly: it tries again 10 ms later
                await asyncio.sleep(0.01)
                continue
            try:
                for i in range(PACKETS_PER_SOCKET):
                    if ws.closed or time.monotonic() >= deadline:
                        break
                    packet = make(i)
                    if isinstance(packet, bytes):
                        await ws.send_bytes(packet)
                    else:
                        await ws.send_str(packet)
                    counts["packets sent"] += 1
                    if i % 64 == 63:
                        await asyncio.sleep(0)  # let the reader see a close
            except (ConnectionError, aiohttp.ClientError):
                pass
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    while not ws.closed and (await ws.receive()).type not in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        pass
                    counts["connections shed"] += 1
            await ws.close()

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(loop(k, http) for k in range(MALFORMED_SOCKETS)))
    return counts


async def connect_flood(url: str, token: str, seconds: float, address: str) -> dict[str, int]:
    """FLOOD_LOOPS loops opening sockets as fast as they can, never waiting."""
    counts = {"sockets taken in": 0, "429": 0, "other refusals": 0}
    deadline = time.monotonic() + seconds
    headers = {"X-Forwarded-For": address}

    async def loop(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            try:
                ws = await _connect(http, url, token, headers)
            except aiohttp.WSServerHandshakeError as exc:
                counts["429" if exc.status == 429 else "other refusals"] += 1
                continue
            except (aiohttp.ClientError, ConnectionError, TimeoutError, ValueError):
                counts["other refusals"] += 1
                continue
            counts["sockets taken in"] += 1
            await ws.close()

    connector = aiohttp.TCPConnector(limit=FLOOD_LOOPS)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(loop(http) for _ in range(FLOOD_LOOPS)))
    return counts


async def slow_reader(url: str, token: str, seconds: float, address: str) -> dict[str, int]:
    """SLOW_SOCKETS websockets of a user who is sent many notifications
    (by the benchmark, meanwhile), none of which ever reads a frame: a frozen
    tab. What the server holds for them is bounded (engine.QUEUE_LIMIT): it
    cuts each once its queue is full. Counted at the end: those cut."""
    headers = {"X-Forwarded-For": address}
    async with aiohttp.ClientSession() as http:
        sockets = [await _connect(http, url, token, headers) for _ in range(SLOW_SOCKETS)]
        async with http.get(f"{url}/api/me", headers={"Cookie": f"{COOKIE}={token}"}) as response:
            user = (await response.json())["user"]["username"]
        published = await feed(url, user, seconds)  # meanwhile, reading nothing
        cut = 0
        for ws in sockets:
            # Reading now drains what the kernel held; a cut connection ends in a close or an error.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while (await ws.receive()).type not in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        pass
                    cut += 1
            await ws.close()
    return {
        "sockets that never read": SLOW_SOCKETS,
        "cut by the server": cut,
        "notifications sent them": published,
    }


ABUSERS = {"malformed": malformed, "connect-flood": connect_flood, "slow-reader": slow_reader}


# -- the honest users --------------------------------------------------------------------------


class Honest:
    """A session running operations back to back until :meth:`stop`."""

    def __init__(self, client: Client):
        self.client = client
        self._running = True
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._running:
            try:
                op = await self.client.start("report", steps=STEPS, step_seconds=STEP_SECONDS)
                await self.client.wait_operation(op["id"], 60)
            except (ClientError, aiohttp.ClientError, TimeoutError) as exc:  # the instance is swamped: again
                print(f"an honest operation failed ({exc!r}); starting another", file=sys.stderr)
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._running = False
        await asyncio.wait_for(self.task, 60)

    def latencies(self, start_ms: float, end_ms: float) -> list[int]:
        """Delivery latency (ms) of the live notifications received in [start, end)."""
        return sorted(
            n["received"] - n["ts"]
            for n in self.client.notifications
            if "published" in n and "received" in n and start_ms <= n["received"] < end_ms
        )


def percentile(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    return float(values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))])


def log_lines(proc: LabProcess) -> int:
    assert proc.log_path is not None
    with proc.log_path.open("rb") as log:
        return sum(1 for _ in log)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


async def feed(url: str, user: str, seconds: float) -> int:
    """Publish SLOW_RATE notifications a second to ``user`` for ``seconds``
    (the slow reader's user): what its sockets are sent and do not read. In
    the abuser's process, so that the honest clients' loop is not the one
    doing it."""
    sent = 0
    data = {"blob": "x" * 6000}
    async with Publisher(url) as publisher:  # the key from $NOTIFYLAB_API_KEY
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * SLOW_RATE) - sent
            if due > 0:
                await asyncio.gather(
                    *(
                        publisher.publish(user, "bench.slow", "for a tab that never reads", data=data)
                        for _ in range(due)
                    )
                )
                sent += due
            await asyncio.sleep(0.01)
    return sent


async def run_abuser(kind: str, url: str, token: str, seconds: float, address: str) -> dict[str, int]:
    """This script as a process of its own, doing ``kind``; what it counted."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "--abuse", kind, url, token, str(seconds), address),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "NOTIFYLAB_API_KEY": API_KEY},  # the slow reader publishes to its own user
    )
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    if proc.returncode or not out:
        return {"abuser failed": proc.returncode or 1}
    return json.loads(out.decode().strip().splitlines()[-1])


@dataclass
class Phase:
    """One phase: who abuses which instance (None: nobody), and what was measured."""

    label: str
    kind: str | None = None
    target: str = ""  # "A" or "B"
    latencies: dict[str, list[int]] = field(default_factory=dict)  # session -> ms, sorted
    counts: dict[str, int] = field(default_factory=dict)  # what the abuser counted
    cpu: dict[str, float] = field(default_factory=dict)  # instance -> percent of one core
    log_lines: dict[str, int] = field(default_factory=dict)  # instance -> lines its log grew by


async def run(seconds: float, log_dir: Path, prefix: str) -> tuple[list[Phase], Any]:
    """Start A (the limit on), B (off) and a worker; run the phases; the
    phases and the verdict of the honest sessions."""
    common = {
        "NOTIFYLAB_PREFIX": prefix,
        "NOTIFYLAB_LOG_LEVEL": "INFO",
        "NOTIFYLAB_TRUSTED_PROXIES": "127.0.0.1",  # the abusers' X-Forwarded-For is believed
        "NOTIFYLAB_LOGIN_ATTEMPTS": "100",
        "NOTIFYLAB_INBOX_MAX": "20000",  # the verdict judges the whole run against the streams
        "NOTIFYLAB_API_KEY": API_KEY,  # the slow reader's notifications come through the publish API
        "NOTIFYLAB_PUBLISH_RATE": "0",
    }
    limit_on = str(Settings().address_connect_rate)  # the default a deployment runs with
    lab_a = Lab({**common, "NOTIFYLAB_ADDRESS_CONNECT_RATE": limit_on}, log_dir=log_dir / "a")
    lab_b = Lab({**common, "NOTIFYLAB_ADDRESS_CONNECT_RATE": "0"}, log_dir=log_dir / "b")
    clients: list[Client] = []
    async with lab_a, lab_b:
        servers = {
            "A": await lab_a.start_server(instance_id="a"),
            "B": await lab_b.start_server(instance_id="b"),
        }
        await lab_a.start_worker()
        urls = {name: proc.url or "" for name, proc in servers.items()}
        try:
            for user, instance in (("ann", "A"), ("bob", "B"), ("mallory", "A")):
                client = Client(urls[instance])
                clients.append(client)
                await client.register(f"{user}{uuid.uuid4().hex[:6]}", PASSWORD)
            honest = {"ann@A": clients[0], "bob@B": clients[1]}
            for client in honest.values():
                await client.connect()
                await client.wait_for(lambda c=client: c.hello is not None, 10)
            token = clients[2].token or ""  # the abuser has an account, as any user
            runners = [Honest(client) for client in honest.values()]
            await asyncio.sleep(2)  # the first operations under way

            phases = [
                Phase("quiet"),
                Phase("malformed packets at A", "malformed", "A"),
                Phase("connect flood at A (limit on)", "connect-flood", "A"),
                Phase("connect flood at B (limit off)", "connect-flood", "B"),
                Phase("sockets that stop reading at A", "slow-reader", "A"),
            ]
            processes = {name: psutil.Process(proc.pid) for name, proc in servers.items()}
            for number, phase in enumerate(phases):
                lines = {name: log_lines(proc) for name, proc in servers.items()}
                cpu = {name: cpu_seconds(proc) for name, proc in processes.items()}
                start = time.time() * 1000
                if phase.kind is None:
                    await asyncio.sleep(seconds)
                else:
                    address = f"203.0.113.{10 + number}"  # an address of its own each phase
                    phase.counts = await run_abuser(phase.kind, urls[phase.target], token, seconds, address)
                end = time.time() * 1000
                for name, runner in zip(honest, runners, strict=True):
                    phase.latencies[name] = runner.latencies(start, end)
                for name, proc in processes.items():
                    phase.cpu[name] = (cpu_seconds(proc) - cpu[name]) / ((end - start) / 1000) * 100
                phase.log_lines = {name: log_lines(proc) - lines[name] for name, proc in servers.items()}
                await asyncio.sleep(2)  # let the instances settle between phases
            for runner in runners:
                await runner.stop()
            return phases, await verdict(*honest.values())
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def report(seconds: float, phases: list[Phase], judged: Any, log_dir: Path) -> None:
    print(f"abuse benchmark: {seconds:g} s a phase, {os.cpu_count()} CPUs, logs in {log_dir}")
    rate = 1 / STEP_SECONDS
    print(f"honest sessions: ann on A, bob on B, about {rate:.0f} notifications/s each (worker, bus, socket)")
    print()
    quiet = {name: percentile(lat, 99) for name, lat in phases[0].latencies.items()}
    columns = ("session", "count", "p50 ms", "p99 ms", "max ms", "p99/quiet")
    header = f"{'phase':32} {columns[0]:8}" + "".join(f" {c:>9}" for c in columns[1:])
    print(header)
    print("-" * len(header))
    for phase in phases:
        for name, lat in phase.latencies.items():
            p99 = percentile(lat, 99)
            worst = float(lat[-1]) if lat else float("nan")
            ratio = p99 / quiet[name] if quiet[name] else float("nan")
            print(
                f"{phase.label:32} {name:8} {len(lat):9} {percentile(lat, 50):9.0f} {p99:9.0f} "
                f"{worst:9.0f} {ratio:9.2f}"
            )
    print()
    print(f"{'phase':32} {'CPU A':>6} {'CPU B':>6} {'log A':>6} {'log B':>6}  what the abuser counted")
    for phase in phases:
        said = ", ".join(f"{k} {v}" for k, v in phase.counts.items()) or "-"
        cpu, lines = phase.cpu, phase.log_lines
        print(f"{phase.label:32} {cpu['A']:5.0f}% {cpu['B']:5.0f}% {lines['A']:6} {lines['B']:6}  {said}")
    print()
    print("verdict over the whole run (both honest sessions):")
    print(repr(judged))


async def main(seconds: float) -> int:
    prefix = f"nlbench{uuid.uuid4().hex[:10]}"
    log_dir = Path(tempfile.mkdtemp(prefix="abuse-"))
    try:
        phases, judged = await run(seconds, log_dir, prefix)
    finally:
        settings = Settings(prefix=prefix)
        await remove_prefix(settings, [settings.instance_queue(i) for i in "ab"])
    report(seconds, phases, judged, log_dir)
    return 0 if judged.clean else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase (default 15)")
    parser.add_argument(
        "--abuse", nargs=5, metavar=("KIND", "URL", "TOKEN", "SECONDS", "ADDRESS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.abuse:
        kind, url, token, length, address = args.abuse
        print(json.dumps(asyncio.run(ABUSERS[kind](url, token, float(length), address))))
    else:
        sys.exit(asyncio.run(main(args.seconds)))
