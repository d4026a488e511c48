"""Redis round trips of one socket's connect, counted inside the instance.

    python benchmarks/connect_trips.py [--sockets 5]

It runs a notifylab instance in this process (``create_app``, a fresh
``NOTIFYLAB_PREFIX``), registers a user, and counts every write to a Redis
connection (``Connection.send_packed_command``: a pipeline is one write, one
round trip) and the commands in it, from the socket's connect until its
``hello`` arrived and the socket is in its room, for a first socket of the user
and for later ones. Issue 9 asks for one pipeline for the session lookup,
presence and the hello data.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter

import aiohttp
import socketio
from aiohttp import web
from redis.asyncio.connection import Connection

from notifylab.config import Settings
from notifylab.lab.processes import free_port
from notifylab.protocol import COOKIE
from notifylab.server.app import create_app

TRIPS: list[list[str]] = []


def _count() -> None:
    original = Connection.send_packed_command

    async def counted(self, command, check_health=True):  # type: ignore[no-untyped-def]
        parts = command if isinstance(command, list) else [command]
        names = []
        for part in parts:
            text = part if isinstance(part, (bytes, bytearray)) else bytes(part)
            # "*N\r\n$len\r\nNAME\r\n..." : the name is the fourth line of each command
            for chunk in text.split(b"*")[1:]:
                lines = chunk.split(b"\r\n")
                if len(lines) > 2:
                    names.append(lines[2].decode(errors="replace").upper())
        TRIPS.append(names)
        return await original(self, command, check_health)

    Connection.send_packed_command = counted  # type: ignore[method-assign]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=5)
    args = parser.parse_args()
    _count()
    port = free_port()
    prefix = f"nlbench{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env(host="127.0.0.1", port=port, instance_id=f"t{port}", prefix=prefix)
    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            body = {"username": f"b{uuid.uuid4().hex[:10]}", "password": "benchmark password"}
            async with http.post(f"{url}/api/register", json=body) as response:
                token = response.cookies[COOKIE].value
        await asyncio.sleep(6)  # past the first heartbeat
        rows = []
        clients = []
        for i in range(args.sockets):
            got = asyncio.Event()
            sio = socketio.AsyncClient(reconnection=False)
            sio.on("hello", lambda data, got=got: got.set())
            TRIPS.clear()
            t0 = time.perf_counter()
            await sio.connect(url, transports=["websocket"], auth={"session": token})
            await asyncio.wait_for(got.wait(), 10)
            await asyncio.sleep(0.3)  # what follows hello (joining the room)
            elapsed = (time.perf_counter() - t0) * 1000
            trips = [t for t in TRIPS if t]
            commands = Counter(name for t in trips for name in t)
            rows.append((i, len(trips), sum(commands.values()), elapsed, dict(commands)))
            clients.append(sio)
        for sio in clients:
            await sio.disconnect()
        print(f"{'socket':>6} {'round trips':>12} {'commands':>9} {'ms to hello':>12}  commands")
        for i, trips, commands, ms, names in rows:
            print(f"{i:>6} {trips:>12} {commands:>9} {ms:>12.1f}  {names}")
    finally:
        await runner.cleanup()
        from notifylab.redisurl import make_client

        client = make_client(settings.redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
