"""``notifylab up | serve | worker``: the command line.

Flags override ``NOTIFYLAB_*`` environment variables (see ``config.py``).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from .config import ConfigError, Settings
from .errors import ServiceUnavailable

log = logging.getLogger("notifylab")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifylab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--broker-url", help="RabbitMQ URL, or memory:// (NOTIFYLAB_BROKER_URL)")
        p.add_argument("--redis-url", help="Redis URL, or memory:// (NOTIFYLAB_REDIS_URL)")
        p.add_argument("--prefix", help="prefix of every Redis key and RabbitMQ name (NOTIFYLAB_PREFIX)")
        p.add_argument("--routing", choices=["topic", "fanout"], help="event routing (NOTIFYLAB_ROUTING)")
        p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (NOTIFYLAB_LOG_LEVEL)")

    serve = sub.add_parser("serve", help="run one server instance")
    common(serve)
    serve.add_argument("--host", help="address to listen on (NOTIFYLAB_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (NOTIFYLAB_PORT)")
    serve.add_argument("--instance-id", help="this instance's name (NOTIFYLAB_INSTANCE_ID)")
    serve.add_argument("--static-dir", help="the built web client (NOTIFYLAB_STATIC_DIR)")

    worker = sub.add_parser("worker", help="run one worker")
    common(worker)
    worker.add_argument("--worker-id", help="this worker's name (default: host-pid)")
    worker.add_argument("--concurrency", type=int, dest="worker_concurrency",
                        help="operations run at once (NOTIFYLAB_WORKER_CONCURRENCY)")

    up = sub.add_parser("up", help="run two server instances and a worker (the lab)")
    common(up)
    up.add_argument("--ports", default="8081,8082", help="comma-separated ports, one instance each")
    up.add_argument("--workers", type=int, default=1, help="how many workers")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = {"broker_url", "redis_url", "prefix", "routing", "log_level", "host", "port",
             "instance_id", "static_dir", "worker_concurrency"}
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})


def _wait_for_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(settings: Settings) -> None:
    from .server.app import create_app

    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None,
                           shutdown_timeout=5)
    await runner.setup()  # opens Redis and RabbitMQ: fails here with the URL
    try:
        stop = _wait_for_signal()
        await web.TCPSite(runner, settings.host, settings.port).start()
        print(f"notifylab instance {settings.instance_id} serving on http://{settings.host}:{settings.port}",
              flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _worker(settings: Settings, worker_id: str | None) -> None:
    from .bus.jobs import make_jobs
    from .bus.managers import make_manager
    from .store.connect import connect_redis
    from .worker import Worker

    if settings.memory:
        raise ConfigError("a separate worker cannot share memory:// with a server; "
                          "`notifylab serve` runs one inside itself in the embedded mode")
    redis = await connect_redis(settings)
    jobs = make_jobs(settings)
    emitter = make_manager(settings, write_only=True)
    try:
        await jobs.start()
        await emitter.start_publisher()
        worker = Worker(settings, redis, jobs, emitter, worker_id)
        stop = _wait_for_signal()
        await worker.start()
        print(f"notifylab worker {worker.id} running jobs from {settings.jobs_queue}", flush=True)
        await stop.wait()
    finally:
        await jobs.close()  # unacked jobs go back to the queue for another worker
        await emitter.close()
        await redis.aclose()


async def _up(settings: Settings, ports: list[int], workers: int) -> int:
    from .lab.processes import Lab

    if settings.memory:
        print("embedded mode: one instance only (memory:// cannot be shared between processes)")
        ports = ports[:1]
    env = {name: str(getattr(settings, field)) for field, name in Settings.ENV_NAMES.items()
           if field not in {"instance_id", "port"}}
    async with Lab(env) as lab:
        for i, port in enumerate(ports):
            await lab.start_server(port, instance_id="abcdefgh"[i] if i < 8 else f"i{port}")
        if not settings.memory:
            for _ in range(workers):
                await lab.start_worker()
        print("\nnotifylab is up:")
        for proc in lab.processes:
            print(f"  {proc.name:10} {proc.url or ''}")
        print("Open the URLs in your browser (each is one instance). Ctrl-C stops everything.", flush=True)
        stop = _wait_for_signal()
        while not stop.is_set():
            dead = [p for p in lab.processes if not p.running]
            if dead:
                print(f"{dead[0].name} exited with {dead[0].process.returncode}; stopping the rest",
                      file=sys.stderr)
                return 1
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
        print("stopping...", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        logging.basicConfig(level=settings.log_level.upper(),
                            format=f"%(asctime)s {args.command}[{os.getpid()}] %(levelname)s %(name)s: %(message)s")
        if args.command == "serve":
            asyncio.run(_serve(settings))
        elif args.command == "worker":
            asyncio.run(_worker(settings, args.worker_id))
        else:
            ports = [int(p) for p in args.ports.split(",") if p.strip()]
            return asyncio.run(_up(settings, ports, args.workers))
    except (ServiceUnavailable, ConfigError) as exc:
        print(f"notifylab {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
