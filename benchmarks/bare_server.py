"""A bare python-socketio server (aiohttp, no Redis, no RabbitMQ): the baseline
of benchmarks/scale.py. It accepts any socket and emits ``hello`` once connected,
as notifylab does, so a storm or idle-memory figure can be set beside it.

    python benchmarks/bare_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import socketio
from aiohttp import web


async def main(port: int) -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)

    async def welcome(sid: str) -> None:
        while not sio.manager.is_connected(sid, "/"):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await sio.emit("hello", {"sid": sid}, to=sid)

    tasks: set[asyncio.Task] = set()

    @sio.on("connect")
    async def connect(sid: str, environ: dict, auth: object = None) -> None:
        task = asyncio.create_task(welcome(sid))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"bare python-socketio server on {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
