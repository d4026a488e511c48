"""A bare python-socketio server (aiohttp, no Redis, no RabbitMQ): the baseline
of benchmarks/scale.py. It accepts any socket and emits ``hello`` once connected,
as notifylab does, so a storm or idle-memory figure can be set beside it.

    python benchmarks/bare_server.py PORT [--no-compression] [--exchange NAME]

As shipped, engine.io's aiohttp websocket has permessage-deflate on (aiohttp's
default, no option in engine.io); ``--no-compression`` swaps in a websocket
class that passes ``compress=False``, as ``notifylab.server.sockets`` does, and
changes nothing else.

``--exchange NAME`` makes it the floor of ``benchmarks/cost.py``: python-socketio
with its stock RabbitMQ manager (``socketio.AsyncAioPikaManager``, a fanout
exchange NAME) and nothing of notifylab's. A socket that connects with
``auth={"session": token}`` joins the room ``user:<token>``, and an emit to that
room from any process's write-only manager on NAME reaches it.
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


def build(compression: bool = True, exchange: str | None = None) -> web.Application:
    manager = socketio.AsyncAioPikaManager(channel=exchange) if exchange else None
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", client_manager=manager)
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
        if exchange:
            session = auth.get("session") if isinstance(auth, dict) else None
            await sio.enter_room(sid, f"user:{session}")
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
    parser.add_argument(
        "--exchange", help="join rooms user:<auth.session>, fed by RabbitMQ (cost.py's floor)"
    )
    args = parser.parse_args()
    app = build(compression=not args.no_compression, exchange=args.exchange)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    deflate = "off" if args.no_compression else "on"
    print(f"bare python-socketio server on {args.port}, deflate {deflate}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
