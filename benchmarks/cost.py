"""CPU per notification on one server instance, piece by piece.

    python benchmarks/cost.py [--users 100] [--count 4000] [--rate 500] [--per-call 10]
                              [--floor] [--floor-node] [--repeat 1] [--profile]
                              [--config LABEL[:TREE][:ENV=VALUE,...]] ...

The ladder (``ladder.py``) measures the whole system at once, on a machine
where the load generator, RabbitMQ, Redis, the workers and the servers share
two cores: its CPU figures include everything an instance does meanwhile.
This one isolates the server instance's own cost, at a rate it keeps up with:

1. one instance (``notifylab.lab.Lab``, no worker), ``--users`` users with
   two sockets each on it (``loadgen.mjs``, websocket);
2. ``idle``: the instance's CPU over 8 s with the sockets connected and
   nothing sent (pings, heartbeats, session checks);
3. ``bus``: ``--count`` notifications, appended to the users' inbox streams
   and published on the bus by this process (what a worker does), paced at
   ``--rate`` per second, round robin over the users; the instance receives
   each from its queue and emits it to the user's two sockets;
4. ``publish``: the same count through ``POST /api/publish``, 10 users a call
   (``--per-call``):
   the instance also validates, appends and publishes them.

For 3 and 4: the instance's CPU (user + system, psutil) from the first send
until the sockets hold every notification, minus the idle rate over the same
time, divided by the count: microseconds of server CPU per notification (each
one emitted to two sockets). The verdict checks that every socket got every
notification once, in order.

Each ``--config`` is measured in the same run: ``LABEL`` alone is this tree
as it is; ``:TREE`` runs the instance from another checkout (``git worktree
add /tmp/notifylab-base <commit>``: code before and after a change, compared
in one run; run this from outside a checkout, as ``python -m`` puts the
current directory first); ``:ENV=VALUE,...`` sets settings (for example
``NOTIFYLAB_WS_COMPRESSION=true``).

The floors are the bus path on a server with nothing of notifylab's, the
same users and sockets, the notifications published by python-socketio's
own write-only manager (``socketio.AsyncAioPikaManager``, JSON on a fanout
exchange) rather than appended and published as a worker does: what the
stack alone costs. ``--floor`` is ``bare_server.py --exchange``,
python-socketio with its stock RabbitMQ manager; ``--floor-node`` is
``node_relay.mjs``, the seed's stack: a Node socket.io server and an
amqplib consumer of the same exchange emitting to rooms (``cd benchmarks &&
npm ci`` installs it). Each is a row (``floor``, ``node``) of every round;
the medians give every row's ratio to the first config and, on the bus
path, to ``floor``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import psutil
import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ladder import API_KEY, checkout, register, top_costs
from routing import remove
from scale import Loadgen, machine

from notifylab.bus.managers import TopicManager, publish_notification
from notifylab.config import Settings
from notifylab.lab import Lab
from notifylab.lab.processes import free_port, wait_answering
from notifylab.store.connect import connect_redis
from notifylab.store.inbox import Inbox

HERE = Path(__file__).resolve().parent
IDLE_SECONDS = 8.0
PER_CALL = 10  # users named by one publish call
SETTLE_TIMEOUT = 60.0

# The floors: a server with nothing of notifylab's, each started as COMMAND PORT
# --exchange NAME and fed by python-socketio's own write-only manager on that
# fanout exchange (the same publications for both).
FLOORS = {
    "floor": (
        "python-socketio alone (bare_server.py --exchange)",
        [sys.executable, str(HERE / "bare_server.py"), "--no-compression"],
    ),
    "node": (
        "Node socket.io + amqplib alone (node_relay.mjs --exchange)",
        ["node", str(HERE / "node_relay.mjs")],
    ),
}


def parse_config(text: str) -> tuple[str, str | None, dict[str, str]]:
    """``LABEL[:TREE][:ENV=VALUE,...]`` -> (label, tree or None, env)."""
    label, *rest = text.split(":")
    tree, env = None, {}
    for part in rest:
        if "=" in part:
            env.update(item.split("=", 1) for item in part.split(","))
        elif part:
            tree = checkout(part, text)
    if not label.isalnum():
        raise SystemExit(f"--config {text!r}: LABEL must be letters and digits")
    return label, tree, env


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def system_seconds(pid: int) -> float:
    """CPU time spent in the kernel on the process's behalf (syscalls)."""
    return psutil.Process(pid).cpu_times().system


class Sockets:
    """The loadgen processes and what their sockets received."""

    def __init__(self, url: str, tokens: list[str]):
        self.loadgen = Loadgen([url], tokens, len(tokens), timeout=60)

    async def connect(self) -> dict:
        return await self.loadgen.storm()

    async def command(self, command: str) -> list[dict]:
        for p in self.loadgen.procs:
            assert p.stdin is not None
            p.stdin.write(command.encode() + b"\n")
            await p.stdin.drain()
        return [await self.loadgen._line(p) for p in self.loadgen.procs]

    async def received(self) -> list[list[str]]:
        """Per socket, the ids it received since the last reset, in order."""
        return [[got[0] for got in r] for rep in await self.command("report") for r in rep["received"]]

    async def settled(self, expected_each: int) -> list[list[str]]:
        """Wait until every socket holds ``expected_each``, or the counts
        have not moved for 3 s (then the verdict says what is missing)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        last, still = -1, 0
        while True:
            got = await self.received()
            total = sum(len(g) for g in got)
            still = still + 1 if total == last else 0
            if all(len(g) >= expected_each for g in got) or still >= 6 or time.monotonic() > deadline:
                return got
            last = total
            await asyncio.sleep(0.5)


async def paced(count: int, rate: float, send) -> None:  # type: ignore[no-untyped-def]
    """Call ``send(i)`` for i in range(count) at ``rate`` per second, at most
    64 at once (a slow send does not hold back the clock)."""
    limit = asyncio.Semaphore(64)
    tasks: list[asyncio.Task] = []
    start = time.monotonic()

    async def one(i: int) -> None:
        async with limit:
            await send(i)

    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


def verdict(got: list[list[str]], expected: dict[int, list[str]]) -> dict:
    """Socket i belongs to user i // 2; each must hold its user's ids in order, once."""
    lost = duplicated = reordered = 0
    for i, ids in enumerate(got):
        want = expected.get(i // 2, [])
        lost += len(set(want) - set(ids))
        duplicated += len(ids) - len(set(ids))
        keys = [tuple(int(x) for x in n.split("-")) for n in ids]
        reordered += sum(1 for a, b in itertools.pairwise(keys) if a >= b)
    return {"lost": lost, "duplicated": duplicated, "reordered": reordered}


async def measure(label: str, tree: str | None, env: dict[str, str], args, prefix: str, users: list) -> dict:  # type: ignore[no-untyped-def]
    settings = Settings(prefix=prefix)
    lab_env = {
        **({"PYTHONPATH": tree} if tree else {}),
        "NOTIFYLAB_PREFIX": prefix,
        "NOTIFYLAB_LOG_LEVEL": "WARNING",
        "NOTIFYLAB_API_KEY": API_KEY,
        "NOTIFYLAB_PUBLISH_RATE": "0",  # the capacity is measured, not the key's limit
        "NOTIFYLAB_STATIC_DIR": str(HERE.parent / "frontend" / "dist"),
        **env,
    }
    row: dict = {"config": label, "tree": tree or "this tree", "env": env}
    async with Lab(lab_env, log_dir=Path(tempfile.mkdtemp(prefix=f"cost-{label}-"))) as lab:
        server = await lab.start_server(instance_id=f"cost{label}")
        assert server.pid is not None and server.url is not None
        if not users:
            users += await register(server.url, args.users)
        sockets = Sockets(server.url, [token for _, token in users for _ in range(2)])
        redis = await connect_redis(settings)
        inbox = Inbox(redis, settings)
        bus = TopicManager(settings, write_only=True)
        await bus.start_publisher()
        try:
            storm = await sockets.connect()
            row["sockets"] = storm["hellos"]
            await asyncio.sleep(2)
            before = cpu_seconds(server.pid)
            await asyncio.sleep(IDLE_SECONDS)
            idle_rate = (cpu_seconds(server.pid) - before) / IDLE_SECONDS
            row["idle_cpu_ms_per_s"] = 1000 * idle_rate

            async def by_bus(i: int) -> str:
                user = users[i % len(users)][0]
                note = await inbox.append(user, _note(user, i))
                await publish_notification(bus, note)
                return user

            per_call = args.per_call
            async with aiohttp.ClientSession() as http:

                async def by_publish(i: int) -> None:
                    names = [users[(i * per_call + k) % len(users)][0] for k in range(per_call)]
                    body = {"users": names, "type": "bench.cost", "title": f"n{i}", "body": "x" * 60}
                    headers = {"Authorization": f"Bearer {API_KEY}"}
                    async with http.post(f"{server.url}/api/publish", json=body, headers=headers) as r:
                        if r.status != 202:
                            raise RuntimeError(f"publish: {r.status} {await r.text()}")

                for path, send, calls in (
                    ("bus", by_bus, args.count),
                    ("publish", by_publish, args.count // per_call),
                ):
                    await sockets.command("reset")
                    lasts = {j: await inbox.last_id(name) for j, (name, _) in enumerate(users)}
                    spy = _profile(server.pid, label, path, args.count / args.rate) if args.profile else None
                    t0, c0, s0 = time.monotonic(), cpu_seconds(server.pid), system_seconds(server.pid)
                    await paced(calls, args.rate / (1 if path == "bus" else per_call), send)
                    per_socket = -(-args.count // len(users))
                    got = await sockets.settled(per_socket)
                    wall, cpu = time.monotonic() - t0, cpu_seconds(server.pid) - c0
                    kernel = system_seconds(server.pid) - s0
                    expected = {
                        j: [n["id"] for n in await inbox.after(name, lasts[j])]
                        for j, (name, _) in enumerate(users)
                    }
                    sent = sum(len(v) for v in expected.values())
                    if spy is not None:
                        spy.wait()
                        print(top_costs(HERE / f"cost_profile_{label}_{path}.txt", 25))
                    row[path] = {
                        "notifications": sent,
                        "wall_s": wall,
                        "cpu_s": cpu,
                        "us_per_notification": 1e6 * (cpu - idle_rate * wall) / max(sent, 1),
                        "kernel_share": kernel / cpu if cpu else 0.0,
                        **verdict(got, expected),
                    }
        finally:
            await sockets.loadgen.quit()
            await bus.close()
            await redis.aclose()
    return row


async def measure_floor(args, prefix: str, label: str, tree: str, command: list[str]) -> dict:  # type: ignore[no-untyped-def]
    """The bus path on a floor server, ``command PORT --exchange NAME``
    (``FLOORS``), as ``measure`` does it on an instance: the stack's own cost."""
    exchange = Settings(prefix=prefix).fanout_exchange  # removed with the prefix afterwards
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkdtemp(prefix=f"cost-{label}-")) / f"{label}.log"
    log = open(log_path, "wb")  # noqa: ASYNC230
    server = await asyncio.create_subprocess_exec(
        *command, str(port), "--exchange", exchange, stdout=log, stderr=log
    )
    row: dict = {"config": label, "tree": tree, "env": {}}
    tokens = [f"{label}{j}" for j in range(args.users)]
    sockets = Sockets(url, [t for t in tokens for _ in range(2)])
    bus = socketio.AsyncAioPikaManager(Settings().broker_url, channel=exchange, write_only=True)
    try:
        await wait_answering(
            server,
            f"{url}/readyz",
            f"{label} server",
            30,
            details=lambda: log_path.read_text(errors="replace")[-2000:],
        )
        row["sockets"] = (await sockets.connect())["hellos"]
        await bus.emit("warm-up", {}, room="nobody")  # its publisher connects lazily
        await asyncio.sleep(2)
        before = cpu_seconds(server.pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle_rate = (cpu_seconds(server.pid) - before) / IDLE_SECONDS
        row["idle_cpu_ms_per_s"] = 1000 * idle_rate
        sent: dict[int, list[str]] = {j: [] for j in range(args.users)}

        async def send(i: int) -> None:
            j = i % args.users
            note = _note(tokens[j], i)
            note["id"] = f"{i + 1}-0"  # increasing per user, as stream ids are
            sent[j].append(note["id"])
            await bus.emit("notification", note, room=f"user:{tokens[j]}")

        await sockets.command("reset")
        t0, c0, s0 = time.monotonic(), cpu_seconds(server.pid), system_seconds(server.pid)
        await paced(args.count, args.rate, send)
        got = await sockets.settled(-(-args.count // args.users))
        wall, cpu = time.monotonic() - t0, cpu_seconds(server.pid) - c0
        row["bus"] = {
            "notifications": args.count,
            "wall_s": wall,
            "cpu_s": cpu,
            "us_per_notification": 1e6 * (cpu - idle_rate * wall) / args.count,
            "kernel_share": (system_seconds(server.pid) - s0) / cpu if cpu else 0.0,
            **verdict(got, sent),
        }
    finally:
        await sockets.loadgen.quit()
        if bus.publisher_connection is not None:  # the stock manager has no close()
            await bus.publisher_connection.close()
        server.terminate()
        await server.wait()
        log.close()
    return row


def _profile(pid: int, label: str, path: str, seconds: float) -> subprocess.Popen:
    """py-spy on the instance while a path runs (``pip install py-spy``), sampling
    only while it holds the GIL: a thread waiting in a syscall, or for another
    thread, is not counted as busy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = HERE / f"cost_profile_{label}_{path}.txt"
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]  # noqa: RUF005
        + ["--format", "raw", "--output", str(out), "--rate", "200", "--gil"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _note(user: str, i: int) -> dict:
    return {
        "user": user,
        "type": "bench.cost",
        "title": f"n{i}",
        "body": "x" * 60,
        "data": {},
        "ts": int(time.time() * 1000),
    }


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if "publish" in r), rows[0])
    lines = [
        f"{'config':10} {'sockets':>7} {'idle ms/s':>9} {'bus us/n':>9} {'vs ' + base['config']:>8} "
        f"{'publish us/n':>12} {'vs ' + base['config']:>8}  lost/dup/reord (bus; publish)"
    ]
    for r in rows:
        b, p = (
            r["bus"],
            r.get("publish")
            or {
                "us_per_notification": float("nan"),
                "lost": "-",
                "duplicated": "-",
                "reordered": "-",
            },
        )
        lines.append(
            f"{r['config']:10} {r['sockets']:>7} {r['idle_cpu_ms_per_s']:>9.1f} "
            f"{b['us_per_notification']:>9.0f} "
            f"{b['us_per_notification'] / base['bus']['us_per_notification']:>7.2f}x "
            f"{p['us_per_notification']:>12.0f} "
            f"{p['us_per_notification'] / base.get('publish', p)['us_per_notification']:>7.2f}x  "
            f"{b['lost']}/{b['duplicated']}/{b['reordered']}; {p['lost']}/{p['duplicated']}/{p['reordered']}"
        )
    return "\n".join(lines)


def medians(rows: list[dict]) -> str:
    """Each config's median over the rounds, and its ratio to the first
    config's (the baseline) and, on the bus path, to the floor's."""
    labels = list(dict.fromkeys(r["config"] for r in rows))
    bus: dict[str, float] = {}
    publish: dict[str, float] = {}
    for label in labels:
        mine = [r for r in rows if r["config"] == label]
        bus[label] = statistics.median(r["bus"]["us_per_notification"] for r in mine)
        publishes = [r["publish"]["us_per_notification"] for r in mine if "publish" in r]
        if publishes:
            publish[label] = statistics.median(publishes)
    base = next(iter(publish), labels[0])
    lines = [f"medians over rounds (ratios: to {base}, and on the bus path to the floor):"]
    for label in labels:
        text = f"  {label:10} bus {bus[label]:5.0f} us/n ({bus[label] / bus[base]:.2f}x"
        text += f", {bus[label] / bus['floor']:.2f}x floor)" if "floor" in bus else ")"
        if label in publish:
            text += f", publish {publish[label]:5.0f} us/n ({publish[label] / publish[base]:.2f}x)"
        lines.append(text)
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--count", type=int, default=4000, help="notifications per path")
    parser.add_argument("--rate", type=float, default=500, help="notifications per second offered")
    parser.add_argument("--per-call", type=int, default=PER_CALL, help="users named by one publish call")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure every config this many times, interleaved"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the instance on each path")
    parser.add_argument(
        "--floor", action="store_true", help="also measure python-socketio alone (bare_server.py --exchange)"
    )
    parser.add_argument(
        "--floor-node",
        action="store_true",
        help="also measure Node socket.io + amqplib alone (node_relay.mjs; cd benchmarks && npm ci)",
    )
    parser.add_argument("--config", action="append", default=[], metavar="LABEL[:TREE][:ENV=VALUE,...]")
    args = parser.parse_args()
    configs = [parse_config(c) for c in args.config] or [("now", None, {})]
    floors = [label for label, wanted in (("floor", args.floor), ("node", args.floor_node)) if wanted]
    if args.floor_node and not (HERE / "node_modules" / "socket.io").is_dir():
        raise SystemExit("--floor-node needs the relay's packages: cd benchmarks && npm ci")
    about = machine()
    print(about, flush=True)
    prefix = f"nlbench{uuid.uuid4().hex[:10]}"
    users: list = []
    rows: list[dict] = []
    try:
        for round_ in range(args.repeat):
            for label in floors:
                row = await measure_floor(args, prefix, label, *FLOORS[label])
                row["round"] = round_
                rows.append(row)
                print(table([row]).splitlines()[1], flush=True)
            for label, tree, env in configs:
                row = await measure(label, tree, env, args, prefix, users)
                row["round"] = round_
                rows.append(row)
                print(table([row]).splitlines()[1], flush=True)
    finally:
        await remove(prefix, [f"cost{label}" for label, _, _ in configs])
    print(about)
    print(table(rows))
    if args.repeat > 1:
        print(medians(rows))
    (HERE / "cost_results.json").write_text(
        json.dumps({"machine": about, "args": vars(args), "rows": rows}, indent=1)
    )
    checked = [r[p] for r in rows for p in ("bus", "publish") if p in r]
    bad = [c for c in checked if c["lost"] or c["duplicated"] or c["reordered"]]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    asyncio.run(main())
