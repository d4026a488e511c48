"""``notifylab serve`` with tracemalloc on: what benchmarks/scale.py's memory
scenario runs to see what holds an idle session's memory.

    NOTIFYLAB_TRACE_FILE=/tmp/snap python benchmarks/traced_serve.py --port P --instance-id I

On SIGUSR1 it writes a tracemalloc snapshot to ``$NOTIFYLAB_TRACE_FILE.<n>``
(n = 0, 1, ...) after a full garbage collection. Only for measuring: tracemalloc
costs memory and time, so RSS figures come from a plain instance.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import tracemalloc

from aiohttp import web

from notifylab.config import Settings
from notifylab.server.app import create_app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance-id", required=True)
    args = parser.parse_args()
    settings = Settings.from_env(host="127.0.0.1", port=args.port, instance_id=args.instance_id)
    tracemalloc.start(8)
    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    dumps = 0

    def dump() -> None:
        nonlocal dumps
        gc.collect()
        tracemalloc.take_snapshot().dump(f"{os.environ['NOTIFYLAB_TRACE_FILE']}.{dumps}")
        print(f"snapshot {dumps} written", flush=True)
        dumps += 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        print(f"traced instance {settings.instance_id} on {settings.port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
