"""The deployment files: docker-compose.yml, Dockerfile and the nginx configs.

No Docker engine is needed. The compose file is validated against the
Compose specification's JSON schema (check-jsonschema ships it), its topology
is checked with PyYAML, and both nginx configs go through ``nginx -t``; the
native one is also run for real in front of two tiny HTTP servers, to see the
stickiness and the WebSocket headers it promises. The jupyter service's
command runs natively too, next to a cluster standing for server-a, server-b
and the workers, to see its instances join that cluster.
"""

from __future__ import annotations

import asyncio
import copy
import http.server
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from notifylab.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.native.conf.template"

# Every NOTIFYLAB_* setting the package reads, from the one place it reads them.
KNOWN_SETTINGS = set(Settings.ENV_NAMES.values())
# Not the package's: `notifylab kit` sets it for the kernels, the notebooks read it.
KIT_SETTINGS = {"NOTIFYLAB_KIT_PORTS"}
SERVERS = ("server-a", "server-b")
BACKENDS = {"rabbitmq": "NOTIFYLAB_BROKER_URL", "redis": "NOTIFYLAB_REDIS_URL"}


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


def nginx_binary() -> str:
    """nginx, or skip where it is absent; under CI (CI set) absence fails."""
    exe = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (apt-get install -y nginx) and CI is set")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_native(rundir: Path, port_a: int, port_b: int, lb_port: int) -> Path:
    text = string.Template(NGINX_TEMPLATE.read_text()).safe_substitute(
        PORT_A=port_a, PORT_B=port_b, LB_PORT=lb_port, RUNDIR=str(rundir)
    )
    conf = rundir / "nginx.conf"
    conf.write_text(text)
    return conf


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
    assert set(svc) == {"rabbitmq", "redis", "server-a", "server-b", "worker", "lb", "jupyter"}
    assert svc["rabbitmq"]["image"] == "rabbitmq:3.10-management"
    assert svc["redis"]["image"] == "redis:7"
    assert svc["lb"]["image"] == "nginx:1.25"
    for name, service in svc.items():
        # The schema allows a service with neither; Compose would refuse it.
        assert "image" in service or "build" in service, name
    for name in (*SERVERS, "worker", "jupyter"):
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


def test_whoever_uses_rabbitmq_or_redis_waits_for_them_healthy(compose):
    users = set()
    for name, service in services(compose).items():
        env = env_of(service)
        deps = depends_on(service)
        for backend, variable in BACKENDS.items():
            uses = variable in env or any(urlsplit(v).hostname == backend for v in env.values() if "://" in v)
            if uses:
                users.add(name)
                assert deps.get(backend) == "service_healthy", (name, backend, deps)
    assert users >= {*SERVERS, "worker", "jupyter"}


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
    assert re.search(r"server\s+server-a:8080", compose_conf)
    assert re.search(r"server\s+server-b:8080", compose_conf)
    assert re.search(r"server\s+127\.0\.0\.1:\$\{PORT_A\}", native)
    assert re.search(r"server\s+127\.0\.0\.1:\$\{PORT_B\}", native)
    for text in (compose_conf, native):
        upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", text, re.S).group(1)
        assert re.search(r"^\s*(ip_hash|hash|sticky)\b", upstream, re.M), upstream
        socketio = re.search(r"location /socket\.io/ \{(.*?)\}", text, re.S).group(1)
        assert "proxy_http_version 1.1;" in socketio
        assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", socketio)
        assert re.search(r"proxy_set_header Connection \$connection_upgrade;", socketio)
        assert "daemon" not in re.sub(r"#.*", "", text)  # -g 'daemon off;' must stay possible


# --- (c) nginx accepts the configs ----------------------------------------------


def test_nginx_accepts_the_native_template(tmp_path):
    exe = nginx_binary()
    conf = render_native(tmp_path, free_port(), free_port(), free_port())
    assert "${" not in conf.read_text()
    result = nginx_test(exe, conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_nginx_accepts_the_compose_config(tmp_path):
    # server-a and server-b resolve only inside the compose network.
    exe = nginx_binary()
    text = NGINX_CONF.read_text().replace("server-a:", "127.0.0.1:").replace("server-b:", "127.0.0.1:")
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


def test_native_lb_sticks_spreads_and_passes_websocket_headers(tmp_path):
    exe = nginx_binary()
    backends = []
    for name in ("a", "b"):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
        srv.daemon_threads = True
        srv.name = name
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        backends.append(srv)
    lb_port = free_port()
    conf = render_native(tmp_path, backends[0].server_address[1], backends[1].server_address[1], lb_port)
    with open(tmp_path / "nginx.out", "w") as out:
        proc = subprocess.Popen(
            [
                exe,
                "-p",
                str(tmp_path),
                "-c",
                str(conf),
                "-e",
                str(tmp_path / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
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

        # Without a session cookie: every request of this client on one instance.
        assert len({get("/socket.io/?EIO=4&transport=polling")["name"] for _ in range(8)}) == 1
        # With one: the same login always on the same instance, and different
        # logins spread over both.
        placed = {}
        for i in range(24):
            cookie = {"Cookie": f"notifylab_session=token{i}"}
            first = get("/socket.io/?EIO=4&transport=polling", cookie)["name"]
            assert all(get("/api/me", cookie)["name"] == first for _ in range(3))
            placed[i] = first
        assert set(placed.values()) == {"a", "b"}, placed
        # The WebSocket upgrade headers reach the instance, and where the client came from.
        seen = get(
            "/socket.io/?EIO=4&transport=websocket", {"Upgrade": "websocket", "Connection": "Upgrade"}
        )["headers"]
        assert seen["upgrade"] == "websocket"
        assert seen["connection"].lower() == "upgrade"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["host"] == f"127.0.0.1:{lb_port}"
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
