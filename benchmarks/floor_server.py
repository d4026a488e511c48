"""The floor under notifylab's cost per notification: python-socketio and its
stock RabbitMQ manager, with nothing of ours (no Redis, no feed, no checks).

    python benchmarks/floor_server.py PORT EXCHANGE

A socket that connects with ``auth={"session": token}`` gets ``hello`` and
joins the room ``user:<token>``; an emit to that room from any process's
write-only ``socketio.AsyncAioPikaManager`` on ``EXCHANGE`` (a fanout
exchange, the stock manager's) reaches it. Websocket compression is off, as
notifylab's default. ``benchmarks/cost.py --floor`` measures this server's
CPU per notification beside notifylab's: what python-socketio, engine.io,
aiohttp and aio-pika cost before any work of ours.
"""

from __future__ import annotations

import argparse
import asyncio

import socketio
from aiohttp import web

from notifylab.server.sockets import Server  # python-socketio's server, compression as set


def build(exchange: str) -> web.Application:
    sio = Server(
        async_mode="aiohttp",
        client_manager=socketio.AsyncAioPikaManager(channel=exchange),
        ws_compression=False,
    )
    app = web.Application()
    sio.attach(app)
    tasks: set[asyncio.Task] = set()

    async def welcome(sid: str) -> None:
        while not sio.manager.is_connected(sid, "/"):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await sio.emit("hello", {"sid": sid}, to=sid)

    @sio.on("connect")
    async def connect(sid: str, environ: dict, auth: dict | None = None) -> None:
        await sio.enter_room(sid, f"user:{(auth or {}).get('session')}")
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
    parser.add_argument("exchange")
    args = parser.parse_args()
    runner = web.AppRunner(build(args.exchange), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"floor server on {args.port}, exchange {args.exchange}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
