"""``notifylab serve`` (or, with ``--bare``, benchmarks/bare_server.py) with
tracemalloc on: what benchmarks/scale.py's memory scenario runs to see what
holds an idle session's memory.

    NOTIFYLAB_TRACE_FILE=/tmp/snap python benchmarks/traced_serve.py --port P --instance-id I
    NOTIFYLAB_TRACE_FILE=/tmp/snap python benchmarks/traced_serve.py --port P --bare [--no-compression]

On SIGUSR1 it writes, after a full garbage collection, a tracemalloc snapshot
to ``$NOTIFYLAB_TRACE_FILE.<n>`` (n = 0, 1, ...) and a census of the objects
the garbage collector tracks to ``$NOTIFYLAB_TRACE_FILE.<n>.census.json``:
``{type: [count, bytes]}`` (bytes: ``sys.getsizeof`` of the object itself,
not what it refers to). Only for measuring: tracemalloc costs memory and
time, so RSS figures come from a plain instance. The websocket's compression
follows ``NOTIFYLAB_WS_COMPRESSION`` (notifylab) or ``--no-compression`` (bare).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import tracemalloc
from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent


def census() -> dict[str, list[int]]:
    counts: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        entry = counts.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj, 0)
    return counts


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance-id", default="traced")
    parser.add_argument("--bare", action="store_true", help="benchmarks/bare_server.py instead of notifylab")
    parser.add_argument("--no-compression", action="store_true", help="with --bare: websocket deflate off")
    args = parser.parse_args()
    tracemalloc.start(8)
    if args.bare:
        sys.path.insert(0, str(HERE))
        from bare_server import build

        app = build(compression=not args.no_compression)
        host = "127.0.0.1"
    else:
        from notifylab.config import Settings
        from notifylab.server.app import create_app

        settings = Settings.from_env(host="127.0.0.1", port=args.port, instance_id=args.instance_id)
        app = create_app(settings)
        host = settings.host
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    dumps = 0

    def dump() -> None:
        nonlocal dumps
        gc.collect()
        base = f"{os.environ['NOTIFYLAB_TRACE_FILE']}.{dumps}"
        tracemalloc.take_snapshot().dump(base)
        Path(f"{base}.census.json").write_text(json.dumps(census()))
        print(f"snapshot {dumps} written", flush=True)
        dumps += 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await web.TCPSite(runner, host, args.port).start()
        print(f"traced {'bare server' if args.bare else 'instance'} on {args.port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
