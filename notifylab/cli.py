"""``notifylab up | kit | serve | worker``: the command line.

Flags override ``NOTIFYLAB_*`` environment variables (see ``config.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from .config import ConfigError, Settings
from .errors import ServiceUnavailable
from .kit import JupyterLab, check_free, find_kit_dir, open_browser
from .lab.balancer import nginx_binary
from .loop import run as run_on_loop
from .loop import running as running_loop

if TYPE_CHECKING:
    from .lab.processes import Lab

log = logging.getLogger("notifylab")

INSTANCE_IDS = "a,b,c,d,e,f,g,h"
# Connections the kernel holds for an instance before it accepts them
# (capped by net.core.somaxconn). aiohttp's default, 128, drops the SYNs of a
# reconnect storm past it, and each dropped client waits 1, 3, 7... s to
# try again (benchmarks/README.md, "Issue 13: storm").
LISTEN_BACKLOG = 4096


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
    worker.add_argument(
        "--concurrency",
        type=int,
        dest="worker_concurrency",
        help="operations run at once (NOTIFYLAB_WORKER_CONCURRENCY)",
    )

    up = sub.add_parser("up", help="run two server instances and a worker (the lab)")
    common(up)

    def cluster(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--ports",
            help="comma-separated ports, one instance each (default: 8081 onward, one per instance)",
        )
        p.add_argument("--instances", type=int, help="how many server instances (default 2, or one a port)")
        p.add_argument("--workers", type=int, default=1, help="how many workers")
        p.add_argument(
            "--instance-ids",
            default=INSTANCE_IDS,
            help="the instances' names, comma-separated, in the order of --ports "
            "(default a,b,...; unique within a cluster)",
        )

    cluster(up)
    up.add_argument(
        "--balancer",
        type=int,
        metavar="PORT",
        help="also run nginx on 127.0.0.1:PORT in front of the instances, as the compose topology does",
    )

    kit = sub.add_parser("kit", help="the lab (like up), and JupyterLab on the notebooks beside it")
    common(kit)
    cluster(kit)
    kit.add_argument("--jupyter-port", type=int, default=8888, help="JupyterLab's port")
    kit.add_argument(
        "--jupyter-ip",
        default="127.0.0.1",
        help="address JupyterLab listens on (0.0.0.0 only inside a container)",
    )
    kit.add_argument(
        "--kit-dir",
        type=Path,
        default=None,
        help="folder holding notebooks/ and jupyter/ (default: the repository)",
    )
    kit.add_argument("--no-browser", action="store_true", help="only print the URL, open no browser")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = {
        "broker_url",
        "redis_url",
        "prefix",
        "routing",
        "log_level",
        "host",
        "port",
        "instance_id",
        "static_dir",
        "worker_concurrency",
    }
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})


def _wait_for_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(settings: Settings) -> None:
    from .server.app import create_app

    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()  # opens Redis and RabbitMQ: fails here with the URL
    try:
        stop = _wait_for_signal()
        await web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG).start()
        print(
            f"notifylab instance {settings.instance_id} serving on http://{settings.host}:{settings.port}"
            f" (event loop: {running_loop()})",
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


async def _worker(settings: Settings, worker_id: str | None) -> None:
    from .bus.jobs import make_jobs
    from .bus.managers import make_manager
    from .store.connect import connect_redis
    from .worker import Worker

    if settings.memory:
        raise ConfigError(
            "a separate worker cannot share memory:// with a server; "
            "`notifylab serve` runs one inside itself in the embedded mode"
        )
    redis = await connect_redis(settings)
    jobs = make_jobs(settings)
    emitter = make_manager(settings, write_only=True)
    try:
        await jobs.start()
        await emitter.start_publisher()
        worker = Worker(settings, redis, jobs, emitter, worker_id)
        stop = _wait_for_signal()
        await worker.start()
        print(
            f"notifylab worker {worker.id} running jobs from {settings.jobs_queue}"
            f" (event loop: {running_loop()})",
            flush=True,
        )
        await stop.wait()
    finally:
        await jobs.close()  # unacked jobs go back to the queue for another worker
        await emitter.close()
        await redis.aclose()


def _lab_env(settings: Settings) -> dict[str, str]:
    """The settings every process of the lab shares, as ``NOTIFYLAB_*`` variables."""
    return {
        name: str(getattr(settings, field))
        for field, name in Settings.ENV_NAMES.items()
        if field not in {"instance_id", "port"}
    }


@contextlib.asynccontextmanager
async def _cluster(
    settings: Settings, ports: list[int], workers: int, ids: str = INSTANCE_IDS
) -> AsyncIterator[Lab]:
    """``ports`` instances (named from ``ids``) and ``workers`` workers, stopped on the way out."""
    from .lab.processes import Lab

    names = [i.strip() for i in ids.split(",") if i.strip()]
    async with Lab(_lab_env(settings)) as lab:
        for i, port in enumerate(ports):
            await lab.start_server(port, instance_id=names[i] if i < len(names) else f"i{port}")
        if not settings.memory:
            for _ in range(workers):
                await lab.start_worker()
        yield lab


def _ports(settings: Settings, args: argparse.Namespace) -> list[int]:
    """The instances' ports, from --ports and --instances (ConfigError if they disagree)."""
    if args.instances is not None and args.instances < 1:
        raise ConfigError(f"--instances {args.instances}: at least one instance")
    if args.ports:
        try:
            ports = [int(p) for p in args.ports.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"--ports {args.ports!r}: want comma-separated port numbers") from None
        if args.instances is not None and args.instances != len(ports):
            raise ConfigError(f"--instances {args.instances} but --ports names {len(ports)}")
    else:
        ports = [8081 + i for i in range(args.instances or 2)]
    if settings.memory:
        print("embedded mode: one instance only (memory:// cannot be shared between processes)")
        ports = ports[:1]
    return ports


async def _until_stopped(stop: asyncio.Event, children: list) -> int:
    """Wait for SIGINT/SIGTERM (0), or until one of ``children`` exits (1).

    A child is anything with ``name``, ``running`` and ``process.returncode``.
    """
    while not stop.is_set():
        dead = [p for p in children if not p.running]
        if dead:
            print(
                f"notifylab: {dead[0].name} exited with {dead[0].process.returncode}; stopping the rest",
                file=sys.stderr,
                flush=True,
            )
            return 1
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass
    print("stopping...", flush=True)
    return 0


async def _up(settings: Settings, args: argparse.Namespace) -> int:
    ports = _ports(settings, args)
    if args.balancer:
        # nginx passes the Host header on, so the instances take the
        # balancer's origin as their own: no allowed origin to add.
        check_free("127.0.0.1", args.balancer, "pass another --balancer port")
        nginx_binary()  # or a ConfigError saying how to install it, before anything starts
    stop = _wait_for_signal()
    try:
        async with _cluster(settings, ports, args.workers, args.instance_ids) as lab:
            servers = [p for p in lab.processes if p.url]
            if args.balancer:
                await lab.start_balancer(servers, args.balancer)
            print("\nnotifylab is up:")
            for proc in lab.processes:
                print(f"  {proc.name:10} {proc.url or ''}")
            if args.balancer:
                print(
                    f"Open http://127.0.0.1:{args.balancer} in your browser: nginx spreads the logins "
                    f"over the {len(servers)} instances (or open an instance's own URL).",
                    flush=True,
                )
            else:
                print("Open the URLs in your browser (each is one instance).", flush=True)
            print("Ctrl-C stops everything.", flush=True)
            return await _until_stopped(stop, lab.processes)
    except RuntimeError as exc:  # a child did not start
        return _start_failed(stop, exc)


# --- the kit: the lab, and JupyterLab beside it (kit.py) ---------------------------------


async def _kit(settings: Settings, args: argparse.Namespace) -> int:
    kit_dir = find_kit_dir(args.kit_dir)
    ports = _ports(settings, args)
    check_free(args.jupyter_ip, args.jupyter_port)
    # The React client in JupyterLab's tab is served through JupyterLab's
    # proxy: its requests come from JupyterLab's origin, which the instances
    # must accept besides their own.
    jupyter_origins = [f"http://{host}:{args.jupyter_port}" for host in ("127.0.0.1", "localhost")]
    settings = dataclasses.replace(
        settings, allowed_origins=",".join(dict.fromkeys([*settings.origins, *jupyter_origins]))
    )
    runtime = Path(tempfile.mkdtemp(prefix="notifylab-kit-"))
    try:
        # The kernels find the kit's cluster from these (notifylab.lab.cluster).
        env = {**_lab_env(settings), "NOTIFYLAB_KIT_PORTS": ",".join(map(str, ports))}
        jupyter = JupyterLab(kit_dir, args.jupyter_port, args.jupyter_ip, env, runtime)
        jupyter.import_workspace()  # fails before anything starts if JupyterLab is missing
        stop = _wait_for_signal()  # from here on, Ctrl-C stops what has started so far
        try:
            async with _cluster(settings, ports, args.workers, args.instance_ids) as lab:
                try:
                    await jupyter.start()
                    await jupyter.wait_ready()
                    print("\nnotifylab kit is up:")
                    for proc in lab.processes:
                        print(f"  {proc.name:10} {proc.url or ''}")
                    print(f"  {'jupyterlab':10} {jupyter.base} (notebooks in {jupyter.notebooks})")
                    print(
                        "\nOpen JupyterLab (a notebook and the React client side by side):\n\n"
                        f"    {jupyter.url}\n\n"
                        "Open the instance URLs above in more browser tabs to add sessions "
                        "(with 127.0.0.1 there too: the login cookie goes by host name).\n"
                        "Ctrl-C stops everything.",
                        flush=True,
                    )
                    if not args.no_browser:
                        open_browser(jupyter.url)
                    return await _until_stopped(stop, [jupyter, *lab.processes])
                finally:
                    await jupyter.stop()
        except RuntimeError as exc:  # a child did not start
            return _start_failed(stop, exc)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _start_failed(stop: asyncio.Event, exc: RuntimeError) -> int:
    if stop.is_set():  # stopped (Ctrl-C) while starting
        return 130
    print(f"notifylab: {exc}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format=f"%(asctime)s {args.command}[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        )
        # Servers and workers carry the load: they run on settings.event_loop
        # (uvloop by default). kit and up only start and watch processes.
        if args.command == "serve":
            run_on_loop(_serve(settings), settings.event_loop)
        elif args.command == "worker":
            run_on_loop(_worker(settings, args.worker_id), settings.event_loop)
        elif args.command == "kit":
            return asyncio.run(_kit(settings, args))
        else:
            return asyncio.run(_up(settings, args))
    except (ServiceUnavailable, ConfigError) as exc:
        print(f"notifylab {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
