"""The teaching kit: ``notifylab kit`` (what ``make up`` runs), jupyter/, and
environment.yml.

The kit runs for real here: two instances and a worker against the machine's
RabbitMQ and Redis under a fresh prefix, and JupyterLab on free ports. The
tests reach the React client and the REST API through JupyterLab's proxy
with the kit's token, start a kernel, and check that Ctrl-C (SIGINT), or one
child dying, leaves no process behind and no port taken. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path

import aiohttp
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from traitlets.config.loader import PyFileConfigLoader

from notifylab.lab import free_port
from support import CHROMIUM, CHROMIUM_ARGS, KIT_URL, new_prefix, port_free, running_kit

ROOT = Path(__file__).resolve().parent.parent
JUPYTER = ROOT / "jupyter"
WORKSPACE = JUPYTER / "workspace.json"
DIST_INDEX = ROOT / "frontend" / "dist" / "index.html"

# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"redis": "redis-py", "prometheus-client": "prometheus_client", "matplotlib": "matplotlib-base"}


# --- running the kit (support.Kit) ---------------------------------------------------------


def kit_dir_with_a_notebook(tmp_path: Path) -> Path:
    """A kit folder: the repository's jupyter/, and a notebooks/ of its own
    with a stand-in 00-start-here.ipynb (the real notebooks are not needed)."""
    import nbformat

    kit_dir = tmp_path / "kit"
    (kit_dir / "notebooks").mkdir(parents=True)
    (kit_dir / "jupyter").symlink_to(JUPYTER)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Start here (a stand-in)"),
        nbformat.v4.new_code_cell("import os\nos.environ['NOTIFYLAB_KIT_PORTS']"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, kit_dir / "notebooks" / "00-start-here.ipynb")
    return kit_dir


# --- the kit, for real ------------------------------------------------------------------


async def test_kit_runs_the_cluster_and_jupyterlab_and_ctrl_c_stops_all(services, tmp_path):
    a, b, jp = free_port(), free_port(), free_port()
    prefix = new_prefix()
    # Stands for the user's own ~/.jupyter: it must still load, and stay untouched.
    user_config = tmp_path / "user-jupyter"
    user_config.mkdir()
    marker = tmp_path / "user-config-loaded"
    (user_config / "jupyter_server_config.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    before = sorted(p.name for p in user_config.rglob("*"))
    env = {"NOTIFYLAB_PREFIX": prefix, "JUPYTER_CONFIG_DIR": str(user_config)}

    with running_kit("--ports", f"{a},{b}", "--jupyter-port", str(jp), "--no-browser", env=env) as kit:
        m = await asyncio.to_thread(kit.wait_for, KIT_URL)
        base, token = m["base"], m["token"]
        assert int(m["port"]) == jp
        for port in (a, b):
            assert f"http://127.0.0.1:{port}" in kit.output

        auth = {"Authorization": f"token {token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(f"{base}/api/status", headers=auth) as r:
                assert r.status == 200
            # The page the printed URL opens, with the token as printed.
            async with http.get(m.group(0)) as r:
                assert r.status == 200 and "jupyter-config-data" in await r.text()
            # Nothing without the token, the proxy included.
            for path in ("/api/status", "/notifylab/", f"/proxy/{a}/api/kinds"):
                async with http.get(f"{base}{path}", allow_redirects=False) as r:
                    assert r.status in (302, 403), (path, r.status)

            # The React client and the REST API, through JupyterLab: the named
            # server (the workspace's tab) and plain /proxy/<port>/.
            index = DIST_INDEX.read_text()
            for path in ("/notifylab/", f"/proxy/{a}/", f"/proxy/{b}/"):
                async with http.get(f"{base}{path}", headers=auth) as r:
                    assert r.status == 200, path
                    assert r.content_type == "text/html"
                    assert await r.text() == index, path
            for path in (
                f"/proxy/{a}/api/kinds",
                f"/proxy/{b}/api/kinds",
                "/notifylab/api/kinds",
                "/notifylab-2/api/kinds",
            ):
                async with http.get(f"{base}{path}", headers=auth) as r:
                    assert r.status == 200 and r.content_type == "application/json", path
                    assert (await r.json())["kinds"], path

            # The workspace is loaded, with the React client's tab in it.
            async with http.get(f"{base}/lab/api/workspaces/notifylab", headers=auth) as r:
                workspace = await r.json()
            assert workspace["data"] == json.loads(WORKSPACE.read_text())["data"]

            # A kernel: it finds the kit's cluster in its environment.
            async with http.post(f"{base}/api/kernels", headers=auth, json={"name": "python3"}) as r:
                assert r.status == 201, await r.text()
            # The instances accept requests from JupyterLab's origin (the proxied client's).
            origins = kit.named("--instance-id a").environ()["NOTIFYLAB_ALLOWED_ORIGINS"].split(",")
            assert f"http://127.0.0.1:{jp}" in origins and f"http://localhost:{jp}" in origins
            kernel_env = kit.named("ipykernel").environ()
            assert kernel_env["NOTIFYLAB_KIT_PORTS"] == f"{a},{b}"
            assert kernel_env["NOTIFYLAB_PREFIX"] == prefix

        # JupyterLab runs in a process group of its own; so do the instances
        # and the worker (notifylab.lab): a Ctrl-C in the terminal reaches the
        # kit alone, and the kit stops them.
        jupyter = kit.named("-m jupyterlab")
        assert os.getpgid(jupyter.pid) == jupyter.pid != os.getpgid(kit.process.pid)
        assert "--ip=127.0.0.1" in jupyter.cmdline()
        assert "--allow-root" in jupyter.cmdline() or os.geteuid() != 0
        assert marker.exists()  # the user's config loaded too
        children = kit.descendants()
        assert len(children) >= 5, [p.cmdline() for p in children]  # a, b, worker, JupyterLab, kernel

        assert await asyncio.to_thread(kit.interrupt) == 0, kit.output[-4000:]
        assert "stopping..." in kit.output
        assert await asyncio.to_thread(kit.alive_after) == []
        assert all(port_free(p) for p in (a, b, jp))
    # Nothing written there but Jupyter's own one-off "migrated" marker (any
    # Jupyter program writes it once, when ~/.ipython exists).
    assert sorted(p.name for p in user_config.rglob("*") if p.name != "migrated") == before


async def test_kit_stops_everything_when_a_child_dies(services):
    a, b, jp = free_port(), free_port(), free_port()
    with running_kit(
        "--ports",
        f"{a},{b}",
        "--jupyter-port",
        str(jp),
        "--no-browser",
        env={"NOTIFYLAB_PREFIX": new_prefix()},
    ) as kit:
        await asyncio.to_thread(kit.wait_for, KIT_URL)
        kit.descendants()
        kit.named("--instance-id b").kill()
        assert await asyncio.to_thread(kit.wait_exit) == 1
        assert "server-b exited with -9; stopping the rest" in kit.output
        assert await asyncio.to_thread(kit.alive_after) == []
        assert all(port_free(p) for p in (a, b, jp))


async def test_kit_refuses_a_jupyter_port_in_use_before_starting_anything():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with running_kit(
            "--ports",
            str(free_port()),
            "--jupyter-port",
            str(port),
            "--no-browser",
            env={"NOTIFYLAB_PREFIX": new_prefix()},
        ) as kit:
            assert await asyncio.to_thread(kit.wait_exit, 30) == 2
            assert f"127.0.0.1:{port}" in kit.output and "--jupyter-port" in kit.output
            assert "serving on" not in kit.output  # no instance was started


@pytest.mark.browser
async def test_the_workspace_lays_the_notebook_and_the_react_client_side_by_side(services, tmp_path):
    from playwright.async_api import async_playwright

    a, jp = free_port(), free_port()
    kit_dir = kit_dir_with_a_notebook(tmp_path)
    with running_kit(
        "--ports",
        str(a),
        "--jupyter-port",
        str(jp),
        "--no-browser",
        "--kit-dir",
        str(kit_dir),
        env={"NOTIFYLAB_PREFIX": new_prefix()},
    ) as kit:
        url = (await asyncio.to_thread(kit.wait_for, KIT_URL)).group(0)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 800})
                await page.goto(url)
                notebook = page.locator(".jp-NotebookPanel")
                client = page.locator(".jp-MainAreaWidget.jp-ServerProxy")
                await notebook.wait_for(timeout=60_000)
                await client.wait_for(timeout=30_000)
                labels = await page.locator(".lm-DockPanel-tabBar .lm-TabBar-tabLabel").all_inner_texts()
                assert labels == ["00-start-here.ipynb", "notifylab"], labels
                left, right = await notebook.bounding_box(), await client.bounding_box()
                assert left["x"] + left["width"] <= right["x"], (left, right)  # side by side
                frame = page.frame_locator(".jp-ServerProxy iframe")
                await frame.get_by_role("button", name="Create account").wait_for(timeout=30_000)
                # No news toast: the announcements plugin is off.
                assert await page.locator(".Toastify__toast").count() == 0
                await page.screenshot(path=str(tmp_path / "kit.png"))
            finally:
                await browser.close()
        assert await asyncio.to_thread(kit.interrupt) == 0, kit.output[-4000:]


# --- jupyter/: the config and the workspace -----------------------------------------------


def load_server_config(ports: str) -> dict:
    old = os.environ.get("NOTIFYLAB_KIT_PORTS")
    os.environ["NOTIFYLAB_KIT_PORTS"] = ports
    try:
        return PyFileConfigLoader("jupyter_server_config.py", path=str(JUPYTER)).load_config()
    finally:
        if old is None:
            del os.environ["NOTIFYLAB_KIT_PORTS"]
        else:
            os.environ["NOTIFYLAB_KIT_PORTS"] = old


def test_the_config_proxies_each_kit_instance_by_name():
    config = load_server_config("1234,5678")
    servers = config.ServerProxy.servers
    assert {name: s["port"] for name, s in servers.items()} == {"notifylab": 1234, "notifylab-2": 5678}
    for server in servers.values():
        assert "command" not in server  # proxies the kit's running instance, starts nothing
        assert server["new_browser_tab"] is False  # a JupyterLab tab
        assert server["launcher_entry"]["title"]
    assert config.LabApp.news_url is None
    page_config = json.loads((JUPYTER / "labconfig" / "page_config.json").read_text())
    assert page_config["disabledExtensions"]["@jupyterlab/apputils-extension:announcements"] is True


def test_the_workspace_opens_start_here_and_the_named_server_side_by_side():
    workspace = json.loads(WORKSPACE.read_text())
    assert workspace["metadata"]["id"] == "notifylab"  # /lab/workspaces/notifylab
    data = workspace["data"]
    dock = data["layout-restorer:data"]["main"]["dock"]
    assert dock["type"] == "split-area" and dock["orientation"] == "horizontal"
    tabs = [area["widgets"] for area in dock["children"]]
    assert tabs == [["notebook:00-start-here.ipynb"], ["server-proxy:server-proxy:notifylab"]]
    assert data["notebook:00-start-here.ipynb"]["data"] == {
        "path": "00-start-here.ipynb",
        "factory": "Notebook",
    }
    # jupyter-server-proxy's tab tracker (namespace "server-proxy") names a tab by
    # its id, "server-proxy:<server name>", and reopens it with this data.
    tab = data["server-proxy:server-proxy:notifylab"]["data"]
    servers = load_server_config("8081,8082").ServerProxy.servers
    name = tab["id"].removeprefix("server-proxy:")
    assert name in servers and tab["url"] == f"/{name}/" and tab["newBrowserTab"] is False


# --- environment.yml --------------------------------------------------------------------


def conda_pins() -> tuple[dict[str, str], dict[str, str]]:
    """environment.yml as {conda name: version} and {pip name: version}."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                if not line.startswith("-"):
                    req = Requirement(line)
                    pip[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
            continue
        name, _, pinned = dep.partition("=")
        conda[name.strip()] = pinned.strip()
    return conda, pip


def test_environment_yml_pins_every_dependency_at_the_tested_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    conda, pip = conda_pins()

    named = set()
    for req in requirements:
        name = canonicalize_name(req.name)
        if name == "notifylab":  # an extra naming another extra of the project itself
            continue
        conda_name = CONDA_NAMES.get(name, name)
        pinned = conda.get(conda_name) or pip.get(name)
        assert pinned, f"environment.yml does not name {req.name} (conda-forge: {conda_name})"
        installed = installed_version(req.name)
        assert pinned == installed, f"{conda_name}: environment.yml has {pinned}, the venv {installed}"
        assert req.specifier.contains(installed, prereleases=True), (req, installed)
        named.add(conda_name if conda_name in conda else name)

    # Nothing else but the toolchain: no stale entry for a dependency that went.
    assert set(conda) - named == {"python", "nodejs", "pip"}, set(conda) - named
    assert set(pip) - named == set(), set(pip) - named
    # The toolchain the README names: Python 3.11 (pyproject's floor), Node 20.
    assert conda["python"] == project["requires-python"].removeprefix(">=") == "3.11"
    assert conda["nodejs"] == "20"
