"""A bare python-socketio server (aiohttp, no Redis, no RabbitMQ): the baseline
of benchmarks/scale.py. It accepts any socket and emits ``hello`` once connected,
as notifylab does, so a storm or idle-memory figure can be set beside it.

    python benchmarks/bare_server.py PORT [--no-compression]

As shipped, engine.io's aiohttp websocket has permessage-deflate on (aiohttp's
default, no option in engine.io); ``--no-compression`` swaps in a websocket
class that passes ``compress=False``, as ``notifylab.server.sockets`` does, and
changes nothing else.
"""

from __future__ import annotations

import argparse
import asyncio

import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as engineio_aiohttp


class NoDeflateWebSocket(engineio_aiohttp.WebSocket):
    """engine.io's aiohttp websocket with ``compress=False``."""

    async def __call__(self, environ: dict) -> web.WebSocketResponse:
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        await self.handler(self)
        return self._sock


def build(compression: bool = True) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
    if not compression:
        sio.eio._async = {**sio.eio._async, "websocket": NoDeflateWebSocket}
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
    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--no-compression", action="store_true", help="websocket permessage-deflate off")
    args = parser.parse_args()
    runner = web.AppRunner(build(compression=not args.no_compression), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    deflate = "off" if args.no_compression else "on"
    print(f"bare python-socketio server on {args.port}, deflate {deflate}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
