"""The deployment files: docker-compose.yml, Dockerfile and the nginx configs.

No Docker engine is needed. The compose file is validated against the
Compose specification's JSON schema (check-jsonschema ships it), its topology
is checked with PyYAML, and the nginx configs go through ``nginx -t``; the
native one is also run for real in front of two tiny HTTP servers, to see the
stickiness and the WebSocket headers it promises. The jupyter service's
command runs natively too, next to a cluster standing for server-a, server-b
and the workers, to see its instances join that cluster.

The ``ha`` profile (a RabbitMQ cluster, Redis with Sentinel, their own
servers, workers and lb) is checked the same way, and its parts natively:
the RabbitMQ config file through the installed RabbitMQ's own schema, the
nodes' start command (it writes the Erlang cookie), and the Sentinel
configuration the sentinels' command writes, run by Debian's redis-server
against a primary and a replica started with the compose servers' flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from ipaddress import ip_address, ip_network
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from notifylab.config import ConfigError, Settings
from notifylab.lab import balancer
from notifylab.lab.redis_sentinel import RedisServer, ask
from notifylab.redisurl import is_sentinel_url, parse_sentinel_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX_TEMPLATE = balancer.TEMPLATE
NGINX_HA_CONF = ROOT / "deploy" / "nginx.ha.conf"
RABBITMQ_HA_CONF = ROOT / "deploy" / "rabbitmq-ha.conf"

# Every NOTIFYLAB_* setting the package reads, from the one place it reads them.
KNOWN_SETTINGS = set(Settings.ENV_NAMES.values())
# Not the package's: `notifylab kit` sets it for the kernels, the notebooks read it.
KIT_SETTINGS = {"NOTIFYLAB_KIT_PORTS"}
SERVERS = ("server-a", "server-b")

# What `docker compose up` starts: the services without a profile, these exactly.
DEFAULT_SERVICES = {"rabbitmq", "redis", "server-a", "server-b", "worker", "lb", "jupyter"}
# The `ha` profile (`docker compose --profile ha up`).
HA_RABBITS = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
HA_REDIS = ("redis-primary", "redis-replica")
HA_SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
HA_BACKENDS = (*HA_RABBITS, *HA_REDIS, *HA_SENTINELS)
HA_SERVERS = ("ha-server-a", "ha-server-b")
HA_APPS = (*HA_SERVERS, "ha-worker")
HA_SERVICES = {*HA_BACKENDS, *HA_APPS, "ha-lb"}
# Who each `ha` service waits for, healthy: nothing else and nothing less.
HA_WAITS_FOR = {
    "rabbitmq-1": set(),
    "rabbitmq-2": {"rabbitmq-1"},  # rabbitmq-1 starts the cluster, the others join it
    "rabbitmq-3": {"rabbitmq-1"},
    "redis-primary": set(),
    "redis-replica": {"redis-primary"},
    **{name: {"redis-primary"} for name in HA_SENTINELS},
    **{name: set(HA_BACKENDS) for name in HA_APPS},
    "ha-lb": set(HA_SERVERS),
}


# --- helpers -------------------------------------------------------------------


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    # A dev dependency of the project: it sits next to this interpreter.
    exe = Path(sys.executable).parent / "check-jsonschema"
    assert exe.exists(), f"{exe} is missing: pip install -e '.[dev]'"
    return subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict) -> dict[str, str]:
    """service name -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd and cmd.index(name) + 1 < len(cmd) else None


def interpolation_default(value: str, name: str) -> str | None:
    """The default in ``${NAME:-default}``, or None when value is not that."""
    m = re.fullmatch(r"\$\{" + re.escape(name) + r":?-(.*)\}", value)
    return m.group(1) if m else None


def resolved_env(service: dict) -> dict[str, str]:
    """A service's environment with each ``${NAME:-default}`` as compose
    resolves it when nothing is set in the shell."""
    return {name: interpolation_default(value, name) or value for name, value in env_of(service).items()}


def networks_of(service: dict) -> set[str]:
    """The networks a service joins (list or mapping form; none named: default)."""
    return set(service.get("networks") or ["default"])


def url_hosts(value: str) -> set[str]:
    """The hosts a setting's URLs name: each of a comma-separated list, or
    each Sentinel of a ``redis+sentinel://`` URL; none for a value that is
    no URL."""
    if is_sentinel_url(value):
        return {host for host, _ in parse_sentinel_url(value).sentinels}
    return {urlsplit(part.strip()).hostname or "" for part in value.split(",") if "://" in part} - {""}


def published(service: dict) -> list[tuple[str, int]]:
    """(host address, host port) of each published port (short syntax)."""
    found = []
    for port in service.get("ports", []):
        parts = str(port).split(":")
        if len(parts) >= 2:
            found.append(("0.0.0.0" if len(parts) == 2 else parts[0], int(parts[-2])))
    return found


def shell_script(service: dict) -> str:
    """The script of a ``sh -c`` command as the container's shell gets it:
    compose turns ``$$`` into ``$``, and would interpolate a lone ``$``."""
    cmd = command_of(service)
    assert cmd[:2] == ["sh", "-c"] and len(cmd) == 3, cmd
    assert "$" not in cmd[2].replace("$$", ""), f"a lone $ is interpolated by compose: {cmd[2]}"
    return cmd[2].replace("$$", "$")


def printf_lines(script: str) -> list[str]:
    """The lines that ``printf '%s\\n' 'line' ... > file`` in ``script`` writes."""
    words = shlex.split(script)
    start = words.index("printf")
    assert words[start + 1] == "%s\\n", words
    return words[start + 2 : words.index(">")]


def flags_to_config(args: list[str]) -> list[str]:
    """``redis-server --name value ...`` arguments as the configuration
    lines they stand for (Redis reads them the same way)."""
    lines: list[list[str]] = []
    for arg in args:
        if arg.startswith("--"):
            lines.append([arg[2:]])
        else:
            assert lines, args
            lines[-1].append(arg)
    return [" ".join(line) for line in lines]


def stub_commands(folder: Path, *names: str) -> Path:
    """A bin folder of scripts named ``names`` that only note each call
    (name, arguments) in folder/calls; see :func:`stub_calls`."""
    bindir = folder / "bin"
    bindir.mkdir()
    for name in names:
        stub = bindir / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name}" "$@" "<end>" >> "{folder / "calls"}"\n')
        stub.chmod(0o755)
    return bindir


def stub_calls(folder: Path) -> list[list[str]]:
    calls, current = [], []
    for line in (folder / "calls").read_text().splitlines() if (folder / "calls").exists() else []:
        if line == "<end>":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


def nginx_binary() -> str:
    """nginx (``lab.balancer``'s), or skip where it is absent; under CI (CI set) absence fails."""
    try:
        return balancer.nginx_binary()
    except ConfigError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}, and CI is set")
        pytest.skip(str(exc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_test(exe: str, conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exe, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- (a) the Compose specification's schema ------------------------------------


def test_compose_file_matches_the_compose_schema():
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mutation", ["bogus-condition", "misspelt-key"])
def test_schema_check_rejects_a_broken_compose_file(compose, tmp_path, mutation):
    # Proves the check above can fail: the same file with one mistake in it.
    broken = copy.deepcopy(compose)
    if mutation == "bogus-condition":
        broken["services"]["server-a"]["depends_on"]["rabbitmq"]["condition"] = "service_ready"
    else:  # a typo that Compose would silently ignore without the schema
        broken["services"]["lb"]["depend_on"] = broken["services"]["lb"].pop("depends_on")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_jsonschema(path)
    assert result.returncode != 0, result.stdout
    assert "depend" in result.stdout + result.stderr


# --- (b) the topology ----------------------------------------------------------


def test_the_services_and_their_images(compose):
    svc = services(compose)
    assert set(svc) == DEFAULT_SERVICES | HA_SERVICES
    assert svc["rabbitmq"]["image"] == "rabbitmq:3.10-management"
    assert svc["redis"]["image"] == "redis:7"
    assert svc["lb"]["image"] == "nginx:1.25"
    # The ha profile runs the same images as the default services.
    assert {svc[name]["image"] for name in HA_RABBITS} == {svc["rabbitmq"]["image"]}
    assert {svc[name]["image"] for name in (*HA_REDIS, *HA_SENTINELS)} == {svc["redis"]["image"]}
    assert svc["ha-lb"]["image"] == svc["lb"]["image"]
    for name, service in svc.items():
        # The schema allows a service with neither; Compose would refuse it.
        assert "image" in service or "build" in service, name
    for name in (*SERVERS, "worker", "jupyter", *HA_APPS):
        assert svc[name]["image"] == "notifylab:latest", name  # one image for all
        build = svc[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, name
    assert DOCKERFILE.exists()


def test_backends_have_the_healthchecks_the_others_wait_for(compose):
    svc = services(compose)
    rabbit = svc["rabbitmq"]["healthcheck"]["test"]
    redis = svc["redis"]["healthcheck"]["test"]
    assert "rabbitmq-diagnostics -q ping" in " ".join(rabbit)
    assert "redis-cli ping" in " ".join(redis)
    # The ha profile's: the same checks (a Sentinel answers PING on its own port).
    for name in HA_RABBITS:
        assert svc[name]["healthcheck"] == svc["rabbitmq"]["healthcheck"], name
    for name in HA_REDIS:
        assert svc[name]["healthcheck"] == svc["redis"]["healthcheck"], name
    for name in HA_SENTINELS:
        assert svc[name]["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", "26379", "ping"], name


def test_every_service_waited_for_healthy_has_a_healthcheck(compose):
    # Compose refuses to start a service that waits for a dependency that
    # has none (and never starts one that is not defined).
    svc = services(compose)
    waited = set()
    for name, service in svc.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in svc, (name, dependency)
            if condition == "service_healthy":
                waited.add(dependency)
                assert svc[dependency].get("healthcheck", {}).get("test"), (name, dependency)
    assert waited >= {"rabbitmq", "redis", *SERVERS, *HA_BACKENDS, *HA_SERVERS}


def test_whoever_uses_a_backend_waits_for_it_healthy(compose):
    # Whatever a setting's URLs name (every node of a comma-separated broker
    # URL, every Sentinel of a redis+sentinel:// URL) that is a compose
    # service must be healthy before the process starts.
    svc = services(compose)
    used: dict[str, set[str]] = {}
    for name, service in svc.items():
        deps = depends_on(service)
        for value in env_of(service).values():
            named = url_hosts(value) & set(svc)
            for backend in named:
                assert deps.get(backend) == "service_healthy", (name, backend, deps)
            used.setdefault(name, set()).update(named)
    assert all(used[name] == {"rabbitmq", "redis"} for name in (*SERVERS, "worker", "jupyter")), used
    assert all(used[name] == {*HA_RABBITS, *HA_SENTINELS} for name in HA_APPS), used


def test_urls_point_at_the_compose_services(compose):
    for name in (*SERVERS, "worker", "jupyter"):
        env = env_of(services(compose)[name])
        broker = urlsplit(env["NOTIFYLAB_BROKER_URL"])
        redis = urlsplit(env["NOTIFYLAB_REDIS_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "rabbitmq", 5672), name
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379), name


def test_servers_are_two_distinct_instances_sharing_one_secret(compose):
    svc = services(compose)
    ids, secrets = [], set()
    for name in SERVERS:
        service = svc[name]
        cmd = command_of(service)
        assert cmd[:4] == ["python", "-m", "notifylab", "serve"], cmd
        assert flag(cmd, "--port") == "8080", cmd
        ids.append(flag(cmd, "--instance-id") or env_of(service).get("NOTIFYLAB_INSTANCE_ID"))
        env = env_of(service)
        # Reachable from the lb container, not only from itself.
        assert env.get("NOTIFYLAB_HOST") == "0.0.0.0", name
        # From the environment, with a default so the lab starts as it is.
        assert interpolation_default(env["NOTIFYLAB_SECRET"], "NOTIFYLAB_SECRET"), name
        secrets.add(env["NOTIFYLAB_SECRET"])
        assert "/readyz" in " ".join(service["healthcheck"]["test"]), name
    assert ids == ["a", "b"], ids
    # One secret for all: a session cookie from one instance works on the other.
    assert len(secrets) == 1, secrets


def test_worker_runs_twice(compose):
    worker = services(compose)["worker"]
    assert command_of(worker) == ["python", "-m", "notifylab", "worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker  # would forbid a second replica


def test_lb_fronts_both_servers(compose):
    lb = services(compose)["lb"]
    assert set(depends_on(lb)) >= set(SERVERS)
    assert all(depends_on(lb)[s] == "service_healthy" for s in SERVERS)
    published = [str(p) for p in lb["ports"]]
    assert any(p.split(":")[-2:][0] == "8080" for p in published if ":" in p), published
    mounts = [str(v) for v in lb["volumes"]]
    assert any(m.split(":")[0] == "./deploy/nginx.conf" for m in mounts), mounts
    assert NGINX_CONF.exists()


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (host path, mode), from the short volume syntax."""
    found = {}
    for volume in service.get("volumes", []):
        host, container, *mode = str(volume).split(":")
        found[container] = (host, mode[0] if mode else "rw")
    return found


def test_jupyter_service_runs_the_kit_on_the_notebooks(compose):
    svc = services(compose)
    jupyter = svc["jupyter"]
    cmd = command_of(jupyter)
    assert cmd[:4] == ["python", "-m", "notifylab", "kit"], cmd
    # The kit's folder is /app: the notebooks and the kit's Jupyter config are
    # the repository's, mounted (the image has neither); the config read-only.
    assert flag(cmd, "--kit-dir") == "/app"
    volumes = mounts(jupyter)
    assert volumes["/app/notebooks"] == ("./notebooks", "rw"), volumes
    assert volumes["/app/jupyter"] == ("./jupyter", "ro"), volumes
    assert (ROOT / "jupyter" / "jupyter_server_config.py").exists()
    # Every interface inside the container, published on the host's loopback only.
    assert flag(cmd, "--jupyter-ip") == "0.0.0.0"
    assert "--no-browser" in cmd
    port = flag(cmd, "--jupyter-port")
    assert [str(p) for p in jupyter["ports"]] == [f"127.0.0.1:{port}:{port}"]
    # Its instances join the compose cluster: their names must not clash with
    # server-a's and server-b's (a name names the instance's queue), and the
    # compose workers run the operations.
    ids = flag(cmd, "--instance-ids").split(",")
    ports = flag(cmd, "--ports").split(",")
    assert len(ids) == len(ports) == len(set(ids)) == 2, (ids, ports)
    server_ids = {flag(command_of(svc[s]), "--instance-id") for s in SERVERS}
    assert not set(ids) & server_ids, (ids, server_ids)
    assert flag(cmd, "--workers") == "0"
    # The same secret as the servers: a session cookie works on every instance.
    env = env_of(jupyter)
    assert env["NOTIFYLAB_SECRET"] == env_of(svc["server-a"])["NOTIFYLAB_SECRET"]
    assert "NOTIFYLAB_PREFIX" not in env and "NOTIFYLAB_PREFIX" not in env_of(svc["server-a"])
    assert env.get("HOME", "").startswith("/tmp")  # the image's user has no home
    assert all(depends_on(jupyter).get(s) == "service_healthy" for s in SERVERS)


async def test_jupyter_service_command_joins_the_cluster_natively(compose, make_lab, clients, tmp_path):
    """The jupyter service's own command, run here: server-a, server-b and a
    worker are a lab cluster; the compose URLs point at this machine's RabbitMQ
    and Redis; /app is the repository (what the volumes mount there)."""
    from support import BROKER, KIT_URL, REDIS, Kit, port_free, servers

    lab = await make_lab(servers=2, workers=1)  # instances a and b, as server-a and server-b
    jupyter = services(compose)["jupyter"]
    cmd = command_of(jupyter)
    ports = [str(free_port()), str(free_port())]
    jupyter_port = str(free_port())
    replace = {
        "/app": str(ROOT),
        "0.0.0.0": "127.0.0.1",
        flag(cmd, "--ports"): ",".join(ports),
        flag(cmd, "--jupyter-port"): jupyter_port,
    }
    args = [replace.get(arg, arg) for arg in cmd[4:]]
    # Each ${NAME:-default} as compose resolves it with nothing set in the shell.
    env = {name: interpolation_default(value, name) or value for name, value in env_of(jupyter).items()}
    env.update(
        NOTIFYLAB_BROKER_URL=BROKER,
        NOTIFYLAB_REDIS_URL=REDIS,
        HOME=str(tmp_path),
        NOTIFYLAB_LOG_LEVEL="INFO",
        NOTIFYLAB_PREFIX=lab.env["NOTIFYLAB_PREFIX"],
        # What the Dockerfile sets: the kit must still keep its instances on loopback.
        NOTIFYLAB_HOST="0.0.0.0",
        NOTIFYLAB_PORT="8080",
    )
    kit = Kit(*args, env=env)
    try:
        m = await asyncio.to_thread(kit.wait_for, KIT_URL)
        assert m.group("port") == jupyter_port
        ids = flag(cmd, "--instance-ids").split(",")
        mine = [f"http://127.0.0.1:{p}" for p in ports]
        for url, instance in zip(mine, ids, strict=True):
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
                health = await r.json()
            assert health["instance"] == instance and health["prefix"] == lab.env["NOTIFYLAB_PREFIX"]
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"token {m.group('token')}"}
            async with http.get(f"{m.group('base')}/notifylab/api/kinds", headers=headers) as r:
                assert r.status == 200 and (await r.json())["kinds"]

        # One user: a session on the jupyter service's instance, another on
        # server-a. An operation started from the first runs on the other
        # cluster's worker, and both sessions see it through.
        on_jupyter = await clients(mine[0])
        on_server_a = await clients(servers(lab)[0], user=on_jupyter.user)
        assert on_jupyter.instance == ids[0] and on_server_a.instance == "a"
        op = await on_jupyter.start("report", steps=3, step_seconds=0.05)
        for session in (on_jupyter, on_server_a):
            final = await session.wait_operation(op["id"], 30)
            assert final["type"] == "operation.succeeded"
            assert session.duplicates == 0

        assert await asyncio.to_thread(kit.interrupt) == 0
        assert await asyncio.to_thread(kit.alive_after) == []
        assert all(port_free(int(p)) for p in (*ports, jupyter_port))
    finally:
        await asyncio.to_thread(kit.cleanup)


# --- (b2) the `ha` profile -------------------------------------------------------


def test_without_the_profile_the_default_topology_is_unchanged(compose):
    svc = services(compose)
    default = {name for name, service in svc.items() if not service.get("profiles")}
    assert default == DEFAULT_SERVICES
    for name in default:
        # Nothing of the profile is needed to start it, and it stays on its own network.
        assert set(depends_on(svc[name])) <= default, name
        assert networks_of(svc[name]) == {"default"}, name
    (config,) = compose["networks"]["default"]["ipam"]["config"]
    assert ip_address(svc["lb"]["networks"]["default"]["ipv4_address"]) in ip_network(config["subnet"])


def test_the_ha_profile_is_a_topology_of_its_own(compose):
    svc = services(compose)
    ha = {name for name, service in svc.items() if service.get("profiles")}
    assert ha == HA_SERVICES
    for name in ha:
        assert svc[name]["profiles"] == ["ha"], name
        assert set(depends_on(svc[name])) <= ha, name  # none of it waits for a default service
        assert networks_of(svc[name]) == {"ha"}, name
    # Its own network. The lb's fixed address (the one its instances trust)
    # is outside the range the other containers get theirs from.
    (default,) = compose["networks"]["default"]["ipam"]["config"]
    (own,) = compose["networks"]["ha"]["ipam"]["config"]
    subnet, dynamic = ip_network(own["subnet"]), ip_network(own["ip_range"])
    assert not subnet.overlaps(ip_network(default["subnet"]))
    assert dynamic.subnet_of(subnet)
    lb_address = ip_address(svc["ha-lb"]["networks"]["ha"]["ipv4_address"])
    assert lb_address in subnet and lb_address not in dynamic, lb_address
    assert lb_address not in (subnet.network_address, subnet.network_address + 1)  # the gateway's
    for name in HA_APPS:
        assert env_of(svc[name])["NOTIFYLAB_TRUSTED_PROXIES"] == str(lb_address), name
    # With --profile ha both topologies run at once: no host port twice.
    ports = [port for service in svc.values() for _, port in published(service)]
    assert len(ports) == len(set(ports)), sorted(ports)
    # A volume of its own for each RabbitMQ node and Redis server.
    data = [mounts(svc[name])["/var/lib/rabbitmq"][0] for name in HA_RABBITS]
    data += [mounts(svc[name])["/data"][0] for name in HA_REDIS]
    assert len(set(data)) == len(data) == 5, data
    assert set(data) <= set(compose["volumes"]) - {"rabbitmq-data", "redis-data"}, data


def test_every_ha_service_waits_for_its_backends_healthy(compose):
    svc = services(compose)
    assert set(HA_WAITS_FOR) == HA_SERVICES
    for name, wanted in HA_WAITS_FOR.items():
        deps = depends_on(svc[name])
        assert set(deps) == wanted, (name, deps)
        assert set(deps.values()) <= {"service_healthy"}, (name, deps)


def test_ha_processes_use_every_node_a_quorum_queue_and_the_sentinels(compose):
    svc = services(compose)
    sentinel_conf = printf_lines(shell_script(svc["sentinel-1"]))
    sentinel_port = int(next(line.split()[1] for line in sentinel_conf if line.startswith("port ")))
    monitored = next(line.split()[2] for line in sentinel_conf if line.startswith("sentinel monitor "))
    ((_, lb_port),) = published(svc["ha-lb"])
    for name in HA_APPS:
        env = resolved_env(svc[name])
        settings = Settings.from_env(env)  # as the process reads it: a bad value raises here
        brokers = [urlsplit(url) for url in settings.broker_urls]
        assert [(b.scheme, b.hostname, b.port) for b in brokers] == [("amqp", n, 5672) for n in HA_RABBITS]
        assert settings.jobs_queue_type == "quorum", name
        assert settings.redis_wait_replicas == 1, name
        target = parse_sentinel_url(settings.redis_url)
        assert target.sentinels == tuple((s, sentinel_port) for s in HA_SENTINELS), name
        # The URL asks for the service the Sentinels monitor.
        assert (target.service, target.db) == (monitored, 0), name
        # Other backends, so no prefix of their own; the ha lb's origin.
        assert "NOTIFYLAB_PREFIX" not in env, name
        assert settings.origins and all(o.endswith(f":{lb_port}") for o in settings.origins), name
    ids = set()
    for name in HA_SERVERS:
        cmd = command_of(svc[name])
        assert cmd[:4] == ["python", "-m", "notifylab", "serve"] and flag(cmd, "--port") == "8080", cmd
        ids.add(flag(cmd, "--instance-id"))
        assert env_of(svc[name])["NOTIFYLAB_HOST"] == "0.0.0.0", name
        assert "/readyz" in " ".join(svc[name]["healthcheck"]["test"]), name
    default_ids = {flag(command_of(svc[s]), "--instance-id") for s in SERVERS}
    assert len(ids) == 2 and not ids & default_ids, ids
    worker = svc["ha-worker"]
    assert command_of(worker) == ["python", "-m", "notifylab", "worker"]
    assert worker["deploy"]["replicas"] == 2 and "container_name" not in worker


def test_ha_lb_fronts_the_ha_servers(compose):
    lb = services(compose)["ha-lb"]
    assert [str(p) for p in lb["ports"]] == ["8090:8080"]  # the default lb has 8080
    assert mounts(lb)["/etc/nginx/nginx.conf"] == ("./deploy/nginx.ha.conf", "ro")
    assert NGINX_HA_CONF.exists()


def test_rabbitmq_ha_nodes_share_a_cookie_and_list_each_other(compose):
    svc = services(compose)
    text = RABBITMQ_HA_CONF.read_text()
    assert re.search(r"^cluster_formation\.peer_discovery_backend\s*=\s*classic_config\s*$", text, re.M)
    listed = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+\s*=\s*(\S+)\s*$", text, re.M)
    # A node is rabbit@<its hostname>, and the others reach it by that name:
    # its service name on the compose network.
    assert [svc[name].get("hostname") for name in HA_RABBITS] == list(HA_RABBITS)
    assert listed == [f"rabbit@{name}" for name in HA_RABBITS]
    for name in HA_RABBITS:
        volumes = mounts(svc[name])
        assert volumes["/etc/rabbitmq/conf.d/20-ha-cluster.conf"] == ("./deploy/rabbitmq-ha.conf", "ro")
        ((address, _),) = published(svc[name])  # its management UI, on loopback only
        assert address == "127.0.0.1" and str(svc[name]["ports"][0]).endswith(":15672"), name
    # One command and one cookie for all three; the cookie goes into a file,
    # not the deprecated RABBITMQ_ERLANG_COOKIE.
    assert len({tuple(command_of(svc[name])) for name in HA_RABBITS}) == 1
    cookies = {resolved_env(svc[name])["HA_ERLANG_COOKIE"] for name in HA_RABBITS}
    assert len(cookies) == 1, cookies
    (cookie,) = cookies
    assert cookie.isalnum() and len(cookie) <= 255, cookie
    assert not any("RABBITMQ_ERLANG_COOKIE" in env_of(service) for service in svc.values())


def test_redis_ha_servers_and_sentinels(compose):
    svc = services(compose)
    primary, replica = (command_of(svc[name]) for name in HA_REDIS)
    assert primary[0] == replica[0] == "redis-server"
    primary_conf, replica_conf = flags_to_config(primary[1:]), flags_to_config(replica[1:])
    assert "appendonly yes" in primary_conf and "appendonly yes" in replica_conf
    assert "replicaof redis-primary 6379" in replica_conf
    assert not any(line.startswith("replicaof") for line in primary_conf)
    # Each gives its compose name as its address, as the Sentinels announce it.
    assert "replica-announce-ip redis-primary" in primary_conf
    assert "replica-announce-ip redis-replica" in replica_conf
    # The three Sentinels run one command: it writes their configuration in
    # a writable place and starts a Sentinel on that file.
    scripts = {shell_script(svc[name]) for name in HA_SENTINELS}
    assert len(scripts) == 1, scripts
    (script,) = scripts
    words = shlex.split(script)
    target = words[words.index(">") + 1]
    assert target.startswith("/tmp/"), target
    assert words[-5:] == ["&&", "exec", "redis-server", target, "--sentinel"], words
    lines = printf_lines(script)
    monitor = "sentinel monitor notifylab redis-primary 6379 2"
    for wanted in (
        "sentinel resolve-hostnames yes",
        monitor,
        "sentinel down-after-milliseconds notifylab 2000",
        "sentinel failover-timeout notifylab 5000",
    ):
        assert wanted in lines, (wanted, lines)
    # Read in order: hostnames must be allowed before a line names one.
    assert lines.index("sentinel resolve-hostnames yes") < lines.index(monitor)
    assert int(monitor.split()[-1]) == len(HA_SENTINELS) // 2 + 1  # a majority of them


def test_only_known_settings_are_used():
    # Raw text: catches names in ${...} interpolations and comments too, and
    # the Dockerfile's ENV lines.
    for path in (COMPOSE, DOCKERFILE):
        used = set(re.findall(r"NOTIFYLAB_[A-Z0-9_]+", path.read_text()))
        assert used, path
        assert used <= KNOWN_SETTINGS | KIT_SETTINGS, (path.name, sorted(used - KNOWN_SETTINGS))


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms[-1] == "python:3.11-slim", froms
    assert any(f.startswith("node:") for f in froms[:-1]), froms
    assert "npm ci" in text and "npm run build" in text
    # The package, with or without extras (the jupyter service needs ".[kit]").
    assert re.search(r"""pip install (-e )?["']?\.(\[[\w,-]+\])?["']?(\s|$)""", text, re.M)
    assert re.search(r'^CMD \["python", "-m", "notifylab", "serve"\]', text, re.M)
    assert (ROOT / "pyproject.toml").exists()


def test_nginx_configs_balance_and_stick_socketio():
    compose_conf = NGINX_CONF.read_text()
    native = NGINX_TEMPLATE.read_text()
    ha = NGINX_HA_CONF.read_text()
    assert re.search(r"server\s+server-a:8080", compose_conf)
    assert re.search(r"server\s+server-b:8080", compose_conf)
    assert re.search(r"upstream\s+\w+\s*\{[^}]*^\$\{SERVERS\}$", native, re.S | re.M)
    assert re.search(r"server\s+ha-server-a:8080", ha)
    assert re.search(r"server\s+ha-server-b:8080", ha)
    for text in (compose_conf, native, ha):
        upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", text, re.S).group(1)
        assert re.search(r"^\s*(ip_hash|hash|sticky)\b", upstream, re.M), upstream
        socketio = re.search(r"location /socket\.io/ \{(.*?)\}", text, re.S).group(1)
        assert "proxy_http_version 1.1;" in socketio
        assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", socketio)
        assert re.search(r"proxy_set_header Connection \$connection_upgrade;", socketio)
        assert "daemon" not in re.sub(r"#.*", "", text)  # -g 'daemon off;' must stay possible


def nginx_directives(text: str) -> list[str]:
    """An nginx config without its comments and blank lines, one stripped line each."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def test_nginx_ha_config_is_the_compose_one_with_the_ha_upstreams():
    # Two copies of one balancer: everything but the upstream's names must
    # stay the same (stickiness, WebSocket headers, timeouts).
    ha = nginx_directives(NGINX_HA_CONF.read_text())
    servers = [line.split()[1] for line in ha if re.match(r"server\s+\S+:8080\b", line)]
    assert servers == [f"{name}:8080" for name in HA_SERVERS]
    renamed = [re.sub(r"^server\s+ha-(server-[ab]):", r"server \1:", line) for line in ha]
    assert renamed == nginx_directives(NGINX_CONF.read_text())


# --- (c) nginx accepts the configs ----------------------------------------------


def test_nginx_accepts_the_native_template(tmp_path):
    exe = nginx_binary()
    conf = balancer.render(tmp_path, [free_port(), free_port(), free_port()], free_port())
    assert "${" not in "\n".join(nginx_directives(conf.read_text()))
    result = nginx_test(exe, conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_native_balancer_is_the_compose_one_on_loopback(tmp_path):
    # Two copies of one balancer: what differs is only where its files go,
    # where it listens and which instances it knows.
    local = re.compile(r"^(pid|error_log|access_log|\w+_temp_path|listen|server \S+:\d+ )")
    rendered = nginx_directives(balancer.render(tmp_path, [8081, 8082, 8083], 8080).read_text())
    assert [line for line in rendered if not local.match(line)] == [
        line for line in nginx_directives(NGINX_CONF.read_text()) if not local.match(line)
    ]
    servers = [line for line in rendered if line.startswith("server 127.0.0.1:")]
    assert servers == [f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in (8081, 8082, 8083)]
    with pytest.raises(ValueError):
        balancer.render(tmp_path, [], 8080)


def test_nginx_accepts_the_compose_config(tmp_path):
    # server-a and server-b resolve only inside the compose network.
    exe = nginx_binary()
    text = NGINX_CONF.read_text().replace("server-a:", "127.0.0.1:").replace("server-b:", "127.0.0.1:")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = nginx_test(exe, conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_nginx_accepts_the_ha_config(tmp_path):
    # ha-server-a and ha-server-b resolve only inside the compose network.
    exe = nginx_binary()
    text = re.sub(r"\bha-server-[ab]:", "127.0.0.1:", NGINX_HA_CONF.read_text())
    assert "ha-server" not in "\n".join(nginx_directives(text))
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = nginx_test(exe, conf, tmp_path)
    assert result.returncode == 0, result.stderr


class _Backend(http.server.BaseHTTPRequestHandler):
    """Answers with its own name and the headers it was sent."""

    def do_GET(self):
        body = json.dumps(
            {
                "name": self.server.name,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def backend(name: str) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    srv.daemon_threads = True
    srv.name = name
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@contextlib.contextmanager
def native_lb(tmp_path: Path, backends: list[http.server.ThreadingHTTPServer]):
    """The native balancer in front of ``backends``; yields GET(path, headers) through it."""
    lb_port = free_port()
    conf = balancer.render(tmp_path, [srv.server_address[1] for srv in backends], lb_port)
    nginx_binary()  # skips, or fails under CI, without nginx
    with open(tmp_path / "nginx.out", "w") as out:
        proc = subprocess.Popen(balancer.command(tmp_path, conf), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp_path / "nginx.out").read_text()
            try:
                socket.create_connection(("127.0.0.1", lb_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)

        def get(path, headers=None):
            req = urllib.request.Request(f"http://127.0.0.1:{lb_port}{path}", headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.load(resp)

        get.port = lb_port
        yield get
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for srv in backends:
            srv.shutdown()
            srv.server_close()


def login(i: int) -> dict[str, str]:
    return {"Cookie": f"notifylab_session=token{i}"}


def test_native_lb_sticks_spreads_and_passes_websocket_headers(tmp_path):
    with native_lb(tmp_path, [backend("a"), backend("b")]) as get:
        # Without a session cookie: every request of this client on one instance.
        assert len({get("/socket.io/?EIO=4&transport=polling")["name"] for _ in range(8)}) == 1
        # With one: the same login always on the same instance, and different
        # logins spread over both.
        placed = {}
        for i in range(24):
            first = get("/socket.io/?EIO=4&transport=polling", login(i))["name"]
            assert all(get("/api/me", login(i))["name"] == first for _ in range(3))
            placed[i] = first
        assert set(placed.values()) == {"a", "b"}, placed
        # The WebSocket upgrade headers reach the instance, and where the client came from.
        seen = get(
            "/socket.io/?EIO=4&transport=websocket", {"Upgrade": "websocket", "Connection": "Upgrade"}
        )["headers"]
        assert seen["upgrade"] == "websocket"
        assert seen["connection"].lower() == "upgrade"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["host"] == f"127.0.0.1:{get.port}"


def test_native_lb_spreads_a_dead_instances_users_and_moves_no_one_else(tmp_path):
    # The consistent ring: when an instance dies, its users (and only they)
    # move, spread over the others, instead of all landing on one neighbour.
    backends = [backend(name) for name in "abc"]
    with native_lb(tmp_path, backends) as get:
        users = range(90)
        before = {i: get("/api/me", login(i))["name"] for i in users}
        assert set(before.values()) == {"a", "b", "c"}, before
        backends[0].shutdown()
        backends[0].server_close()
        after = {i: get("/api/me", login(i))["name"] for i in users}
        moved = {i: after[i] for i in users if before[i] == "a"}
        assert all(after[i] == before[i] for i in users if before[i] != "a")
        assert set(moved.values()) == {"b", "c"}, moved


# --- (d) the `ha` profile's parts, natively -----------------------------------------

# Reads a rabbitmq.conf the way a node does at boot (cuttlefish, with the
# schemas RabbitMQ ships), and prints what it makes of cluster formation.
# Exit status 2: not valid syntax; 1: a key or value the schemas reject.
RABBITMQ_CONF_CHECK = """
[Plugins, File] = init:get_plain_arguments(),
Schemas = filelib:wildcard(filename:join([Plugins, "*", "priv", "schema", "*.schema"])),
Schema = cuttlefish_schema:files(Schemas),
case cuttlefish_conf:files([File]) of
    {errorlist, Errors} -> io:format("syntax: ~p~n", [Errors]), halt(2);
    Conf ->
        case cuttlefish_generator:map(Schema, Conf) of
            {error, Phase, {errorlist, Errors}} -> io:format("~p: ~p~n", [Phase, Errors]), halt(1);
            Config ->
                Rabbit = proplists:get_value(rabbit, Config, []),
                Formation = proplists:get_value(cluster_formation, Rabbit, []),
                io:format("backend ~p~n", [proplists:get_value(peer_discovery_backend, Formation)]),
                case proplists:get_value(cluster_nodes, Rabbit) of
                    {Nodes, Type} ->
                        [io:format("node ~s~n", [Node]) || Node <- lists:sort(Nodes)],
                        io:format("type ~p~n", [Type]);
                    undefined -> ok
                end,
                halt(0)
        end
end.
"""


def rabbitmq_plugins() -> Path:
    """The plugins folder of Debian's rabbitmq-server (its schemas, and
    cuttlefish), or skip where it or Erlang is absent; under CI absence fails."""
    found = sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins"))
    if not found or shutil.which("erl") is None:
        message = "RabbitMQ is not installed (apt-get install -y rabbitmq-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message} and CI is set")
        pytest.skip(message)
    return found[-1]


def rabbitmq_conf_check(conf: Path) -> subprocess.CompletedProcess:
    plugins = rabbitmq_plugins()
    code_path = [str(ebin) for ebin in sorted(plugins.glob("*/ebin"))]
    command = ["erl", "-noshell", "-boot", "no_dot_erlang", "-pa", *code_path, "-eval", RABBITMQ_CONF_CHECK]
    return subprocess.run(
        [*command, "-extra", str(plugins), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rabbitmq_ha_config_passes_rabbitmqs_own_schema():
    result = rabbitmq_conf_check(RABBITMQ_HA_CONF)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    assert "backend rabbit_peer_discovery_classic_config" in lines, output
    assert [line.split()[1] for line in lines if line.startswith("node ")] == [
        f"rabbit@{n}" for n in HA_RABBITS
    ]
    assert "type disc" in lines, output


@pytest.mark.parametrize("mistake", ["misspelt-key", "bad-value", "bad-syntax"])
def test_rabbitmq_schema_check_rejects_a_broken_config(tmp_path, mistake):
    # Proves the check above can fail: the same file with one mistake in it.
    text = RABBITMQ_HA_CONF.read_text()
    broken, status, named = {
        "misspelt-key": (text.replace("peer_discovery_backend", "peer_discovery_backnd"), 1, "backnd"),
        "bad-value": (text + "cluster_formation.node_type = floppy\n", 1, "floppy"),
        "bad-syntax": (text + "cluster_formation.classic_config.nodes.4\n", 2, "syntax"),
    }[mistake]
    conf = tmp_path / "rabbitmq.conf"
    conf.write_text(broken)
    result = rabbitmq_conf_check(conf)
    assert result.returncode == status, result.stdout + result.stderr
    assert named in result.stdout + result.stderr


def test_rabbitmq_ha_command_writes_the_cookie_then_starts_the_node(compose, tmp_path):
    """The nodes' command, run here: /var/lib/rabbitmq is a folder of the
    test's, and chown and the image's docker-entrypoint.sh are stubs that
    note how they are called."""
    service = services(compose)["rabbitmq-1"]
    script = shell_script(service)
    assert "/var/lib/rabbitmq/.erlang.cookie" in script
    data = tmp_path / "rabbitmq"
    data.mkdir()
    bindir = stub_commands(tmp_path, "chown", "docker-entrypoint.sh")
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", **resolved_env(service)}
    result = subprocess.run(
        ["sh", "-c", script.replace("/var/lib/rabbitmq/", f"{data}/")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cookie = data / ".erlang.cookie"
    assert cookie.read_text() == env["HA_ERLANG_COOKIE"]
    # Erlang refuses a cookie file that anyone but its owner may read.
    assert cookie.stat().st_mode & 0o777 == 0o600, oct(cookie.stat().st_mode)
    assert stub_calls(tmp_path) == [
        ["chown", "rabbitmq:rabbitmq", str(cookie)],
        ["docker-entrypoint.sh", "rabbitmq-server"],  # the image's own start, as without a command
    ]


async def test_sentinel_config_from_compose_monitors_a_primary_natively(compose, tmp_path):
    """The sentinels' command writes their configuration (run here, with a
    stub redis-server that notes what it is started on). That file, with the
    compose host names and ports swapped for 127.0.0.1 and free ports and
    every other line as it is, runs under Debian's redis-server --sentinel
    against a primary and a replica started with the compose servers' flags,
    and watches them."""
    svc = services(compose)
    script = shell_script(svc["sentinel-1"])
    words = shlex.split(script)
    written = tmp_path / "written.conf"
    bindir = stub_commands(tmp_path, "redis-server")
    result = await asyncio.to_thread(
        subprocess.run,
        ["sh", "-c", script.replace(words[words.index(">") + 1], str(written))],
        env={"PATH": f"{bindir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert stub_calls(tmp_path) == [["redis-server", str(written), "--sentinel"]]
    lines = written.read_text().splitlines()
    assert lines == printf_lines(script)  # what the YAML-level checks read
    port_line = "port 26379"
    assert port_line in lines  # the port the URL names; here the free one RedisServer picks

    hosts = re.compile(r"\b(redis-primary|redis-replica)\b")
    primary_conf = flags_to_config(command_of(svc["redis-primary"])[1:])
    primary = RedisServer(tmp_path / "primary", [hosts.sub("127.0.0.1", line) for line in primary_conf])

    def native(line: str) -> str:
        return hosts.sub("127.0.0.1", line.replace("redis-primary 6379", f"redis-primary {primary.port}"))

    replica_conf = flags_to_config(command_of(svc["redis-replica"])[1:])
    replica = RedisServer(tmp_path / "replica", [native(line) for line in replica_conf])
    sentinel_conf = [native(line) for line in lines if line != port_line]
    sentinel = RedisServer(tmp_path / "sentinel", sentinel_conf, sentinel=True)
    service = "notifylab"
    started = [primary, replica, sentinel]
    try:
        for server in started:
            await server.start()
        deadline = time.monotonic() + 20
        while True:
            state = await ask(sentinel.port, "SENTINEL", "MASTER", service)
            replicas = await ask(sentinel.port, "SENTINEL", "REPLICAS", service)
            assert isinstance(state, dict) and isinstance(replicas, list), (state, replicas)
            # Connected to the primary, which says it is one, and to its replica.
            primary_seen = (state["flags"], state["role-reported"], state["num-slaves"]) == (
                "master",
                "master",
                "1",
            )
            if primary_seen and [r["flags"] for r in replicas] == ["slave"]:
                break
            assert time.monotonic() < deadline, f"{state}\n{replicas}\n{sentinel.log()}"
            await asyncio.sleep(0.1)
        assert await ask(sentinel.port, "SENTINEL", "get-master-addr-by-name", service) == [
            "127.0.0.1",
            str(primary.port),
        ]
        assert (state["quorum"], state["down-after-milliseconds"], state["failover-timeout"]) == (
            "2",
            "2000",
            "5000",
        )
        (seen,) = replicas
        assert (seen["ip"], seen["port"], seen["role-reported"]) == (
            "127.0.0.1",
            str(replica.port),
            "slave",
        ), seen
        for name in ("resolve-hostnames", "announce-hostnames"):
            assert await ask(sentinel.port, "SENTINEL", "CONFIG", "GET", name) == {name: "yes"}
    finally:
        for server in reversed(started):
            await server.kill()
