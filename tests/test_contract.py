"""Contracts with what we do not own, and with our own layout.

- python-socketio's pub/sub message format: our managers read a notification
  out of ``message["data"]``, a format python-socketio changed three times in
  5.x. If an upgrade changes it again, this fails instead of delivery quietly
  falling back on the feed's gap filling.
- engine.io's aiohttp websocket class, which we swap to set compression,
  its socket class, which we swap as it files each socket, and the parts of
  python-socketio ``Server.emit_now`` uses.
- The package's import graph: no circle, and the kernel side (``lab``,
  ``widgets``) never imports the server or the store.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web

from fakes import SETTINGS, fake_redis, make_feed
from notifylab.bus.managers import TopicManager, publish_notification, routing_key
from notifylab.lab.processes import free_port
from notifylab.protocol import user_room
from notifylab.server import engine
from notifylab.server.sockets import Server
from support import servers

PACKAGE = Path(__file__).resolve().parent.parent / "notifylab"


async def test_an_emit_on_one_instance_reaches_the_feed_of_another():
    publisher = TopicManager(SETTINGS, write_only=True)
    sent: list[dict] = []

    async def publish(message: dict) -> None:  # instead of RabbitMQ: the wire is JSON
        sent.append(json.loads(json.dumps(message)))

    publisher._publish = publish  # type: ignore[method-assign]
    redis = fake_redis()
    feed, sio, inbox, _ = make_feed(redis)
    sio.manager.connected.add("s1")
    await feed.attach("s1", "ann", last_id=None)
    note = await inbox.append(
        "ann",
        {
            "user": "ann",
            "type": "operation.queued",
            "operation": "op1",
            "kind": "report",
            "state": "queued",
            "step": 0,
            "steps": 1,
            "progress": 0.0,
            "message": "",
            "ts": 1,
        },
    )
    await publish_notification(publisher, note)
    assert len(sent) == 1 and routing_key(sent[0]) == "user.ann"

    receiver = TopicManager(SETTINGS)  # the instance holding ann's socket
    receiver.deliver = feed.receive
    await receiver._handle_emit(sent[0])
    assert sio.notifications(user_room("ann")) == [note["id"]]


def _imports(path: Path, module: str) -> set[str]:
    """The notifylab modules ``module`` (at ``path``) imports, outside TYPE_CHECKING."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("notifylab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("notifylab"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {
        name: {m for m in _imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_module_imports_itself_through_others():
    graph = _graph()
    assert len(graph) > 20  # the walk found the package
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [], done)
    # A package's __init__ importing its own modules is not a circle of concepts.
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_kernel_side_never_imports_the_server_or_the_store():
    graph = _graph()
    kernel_side = [m for m in graph if m.startswith(("notifylab.lab", "notifylab.widgets"))]
    assert kernel_side
    for module in kernel_side:
        bad = {m for m in graph[module] if m.startswith(("notifylab.server", "notifylab.store"))}
        assert not bad, f"{module} imports {bad}"
    # And at run time, whatever the imports' imports do:
    code = (
        "import sys, notifylab.lab, notifylab.lab.cluster, notifylab.lab.verdict\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('notifylab.widgets'): import notifylab.widgets\n"
        "print([m for m in sys.modules if m.startswith(('notifylab.server', 'notifylab.store'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


async def test_websocket_compression_is_what_the_settings_say(make_lab):
    """engine.io has no option for permessage-deflate; sockets.Server swaps
    its aiohttp websocket class to honour NOTIFYLAB_WS_COMPRESSION. A client
    that offers deflate gets it only where the setting turns it on (an
    engine.io upgrade that renames the driver's class fails here)."""
    offered = {}
    for setting in ("false", "true"):
        lab = await make_lab(servers=1, workers=0, NOTIFYLAB_WS_COMPRESSION=setting)
        url = servers(lab)[0] + "/socket.io/?EIO=4&transport=websocket"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, compress=15) as ws:
            opening = await ws.receive_str()  # engine.io's "0{...}" open packet
            assert opening.startswith("0{"), opening
            offered[setting] = ws.compress
    assert offered == {"false": 0, "true": 15}


async def serving_ann(**options: Any) -> tuple[Server, web.AppRunner, int]:
    """Our Server (with ``options``) on a free port, every socket that
    connects put in user ann's room: what emit_now is aimed at."""
    sio = Server(async_mode="aiohttp", logger=False, engineio_logger=False, **options)
    app = web.Application()
    sio.attach(app)

    @sio.on("connect")
    async def connect(sid: str, environ: dict, auth: Any = None) -> None:
        await sio.enter_room(sid, "user:ann")

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return sio, runner, port


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_emit_now_reaches_a_client_exactly_as_emit_does(transport: str):
    """The feed's emit_now uses python-socketio's rooms and engine.io's
    sockets and queues: a client must get the same event, with the same
    data, as from emit(), over either transport."""
    sio, runner, port = await serving_ann()
    client = socketio.AsyncClient()
    got: list[Any] = []
    arrived = asyncio.Event()

    @client.on("notification")
    async def on_notification(data: Any) -> None:
        got.append(data)
        if len(got) == 2:
            arrived.set()

    try:
        await client.connect(f"http://127.0.0.1:{port}", transports=[transport])
        note = {"id": "1-0", "title": "é ✓", "nested": {"n": [1, 2.5, None, True]}}
        await asyncio.sleep(0.1)  # the connect handler has put it in the room
        assert sio.emit_now("notification", note, "user:ann") == 1
        await sio.emit("notification", note, room="user:ann")
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [note, note]
        assert sio.emit_now("notification", note, "user:nobody") == 0
        # A client that stopped answering pings is not sent to: engine.io closes it.
        (socket,) = sio.eio.sockets.values()
        socket.last_ping = time.time() - sio.eio.ping_timeout - 1
        assert sio.emit_now("notification", note, "user:ann") == 0
    finally:
        await client.disconnect()
        await runner.cleanup()


async def test_direct_writes_keep_order_and_leave_engineio_pinging(monkeypatch):
    """Notifications written straight to idle websockets (engine.py) arrive
    in order with what engine.io's writer sends (emit, acks), and the writer,
    left asleep meanwhile, still pings: the connection outlives several ping
    timeouts while only direct writes flow."""
    from notifylab.server import engine

    direct: list[str] = []
    original = engine.WebSocket.write_now

    def counted(self: engine.WebSocket, encoded: str) -> bool:
        written = original(self, encoded)
        if written:
            direct.append(encoded)
        return written

    monkeypatch.setattr(engine.WebSocket, "write_now", counted)
    sio, runner, port = await serving_ann(ping_interval=0.3, ping_timeout=0.3)
    client = socketio.AsyncClient()
    got: list[int] = []
    rounds = 40  # 2 s: several times ping interval + timeout
    all_in, disconnected = asyncio.Event(), asyncio.Event()

    @client.on("notification")
    def on_notification(data: dict) -> None:
        got.append(data["n"])
        if len(got) == 3 * rounds:
            all_in.set()

    client.on("disconnect", lambda *_: disconnected.set())
    try:
        await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"])
        await asyncio.sleep(0.1)
        n = 0
        for _ in range(rounds):
            sio.emit_now("notification", {"n": n}, "user:ann")
            await sio.emit("notification", {"n": n + 1}, room="user:ann")  # through the writer
            sio.emit_now("notification", {"n": n + 2}, "user:ann")  # behind it, queued
            n += 3
            await asyncio.sleep(0.05)
        await asyncio.wait_for(all_in.wait(), 5)
        assert got == list(range(n))
        assert direct  # the idle writer's path was taken ...
        assert not disconnected.is_set() and client.connected  # ... and pings went on
    finally:
        await client.disconnect()
        await runner.cleanup()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_engineio_builds_each_socket_as_ours(transport: str):
    """engine.io builds ``AsyncSocket`` itself; ``engine.Sockets`` gives it
    our class as engine.io files it. If engine.io builds or files its
    sockets otherwise, this fails, rather than the saving going quietly.
    (Short pings: a polling client's last GET waits ping_interval +
    ping_timeout for the server's cleanup.)"""
    sio, runner, port = await serving_ann(ping_interval=1, ping_timeout=1)
    client = socketio.AsyncClient()
    try:
        await client.connect(f"http://127.0.0.1:{port}", transports=[transport])
        assert isinstance(sio.eio.sockets, engine.Sockets)
        (socket,) = sio.eio.sockets.values()
        assert type(socket) is engine.Socket
    finally:
        await client.disconnect()
        await runner.cleanup()


async def test_pings_go_out_and_a_client_that_stops_answering_is_closed():
    """A raw engine.io client on our Server with pings every 0.2 s and 0.2 s
    to answer: while it answers, pings come a ping_interval apart and the
    connection lasts; once it stops, one more ping comes and the connection
    is closed after ping_interval + ping_timeout (with slack: the machine
    may be loaded)."""
    interval = timeout = 0.2
    sio, runner, port = await serving_ann(ping_interval=interval, ping_timeout=timeout)
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    pings: list[float] = []
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            assert (await ws.receive_str()).startswith("0{")  # engine.io's open
            await ws.send_str("40")  # Socket.IO's connect
            assert (await ws.receive_str()).startswith("40")
            answering_until = time.monotonic() + 5 * (interval + timeout)
            while time.monotonic() < answering_until:
                frame = await asyncio.wait_for(ws.receive_str(), 5)  # late is load; early is checked below
                assert frame == "2", frame
                pings.append(time.monotonic())
                await ws.send_str("3")
            last_pong = time.monotonic()
            after: list[str] = []
            while True:
                message = await asyncio.wait_for(ws.receive(), 5)
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                after.append(message.data)
            closed_after = time.monotonic() - last_pong
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 5 and min(gaps) > interval * 0.75, gaps  # about 10 on a quiet machine
        assert after == ["2"]  # the ping it did not answer, then the close
        assert interval < closed_after < interval + timeout + 3, closed_after  # slack for a loaded machine
        for _ in range(100):  # engine.io closes its socket once its writer is done
            if all(socket.closed for socket in sio.eio.sockets.values()):
                break
            await asyncio.sleep(0.01)
        assert all(socket.closed for socket in sio.eio.sockets.values())
    finally:
        await runner.cleanup()
