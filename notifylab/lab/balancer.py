"""nginx in front of the lab's instances, as the compose topology has it.

One process carries only so much: past it, more instance processes on the
same host share the load, and a load balancer gives clients one address for
all of them. ``notifylab up --instances N --balancer PORT`` and the benchmarks
run Debian's nginx with ``nginx.conf.template`` (next to this module): the
balancing of ``deploy/nginx.conf``, with one upstream line per instance.

A user's requests and sockets stick to one instance (nginx hashes the login
cookie on a consistent ring); users spread over the instances. When an
instance dies, only its own users move, spread over the others, and they come
back to it when it answers again.
"""

from __future__ import annotations

import os
import shutil
import string
from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
SEARCHED = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


def nginx_binary() -> str:
    """The nginx executable, or ConfigError saying how to install it."""
    found = shutil.which("nginx") or next((p for p in SEARCHED if os.access(p, os.X_OK)), None)
    if found is None:
        raise ConfigError("the load balancer needs nginx, not installed here (Debian: apt-get install nginx)")
    return found


def render(rundir: Path, ports: Sequence[int], port: int) -> Path:
    """Write ``rundir/nginx.conf``: nginx on 127.0.0.1:``port`` in front of
    instances on 127.0.0.1:``ports``; returns its path."""
    if not ports:
        raise ValueError("a load balancer needs at least one instance")
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in ports)
    text = string.Template(TEMPLATE.read_text()).safe_substitute(
        SERVERS=servers, LB_PORT=port, RUNDIR=str(rundir)
    )
    rundir.mkdir(parents=True, exist_ok=True)
    conf = rundir / "nginx.conf"
    conf.write_text(text)
    return conf


def command(rundir: Path, conf: Path) -> list[str]:
    """How to run nginx on ``conf`` in the foreground, its files in ``rundir``."""
    return [
        nginx_binary(),
        "-p",
        str(rundir),
        "-c",
        str(conf),
        "-e",
        str(rundir / "error.log"),
        "-g",
        "daemon off;",
    ]
