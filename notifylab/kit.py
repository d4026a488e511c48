"""The kit's JupyterLab: the launcher ``notifylab kit`` (``make up``) runs beside the cluster.

JupyterLab on the kit folder's notebooks/, configured by its jupyter/ (the
React client proxied into a tab), opening the kit's workspace, with a token
of its own, in a process group of its own; and the checks and helpers around
it: where the kit folder is, whether JupyterLab's port is free, opening the
browser. ``cli.py`` starts the cluster and this beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import webbrowser
from pathlib import Path

from .config import PACKAGE_DIR, ConfigError

WORKSPACE = "notifylab"  # jupyter/workspace.json's metadata id: /lab/workspaces/notifylab


def find_kit_dir(given: Path | None) -> Path:
    """The folder with jupyter/ and notebooks/: the repository, or ``given``."""
    if given is not None:
        return given.resolve()
    for candidate in (PACKAGE_DIR.parent, Path.cwd()):  # editable install, or run from a checkout
        if (candidate / "jupyter" / "workspace.json").exists():
            return candidate
    raise ConfigError(
        "no jupyter/workspace.json next to the package or here; run from the repository or pass --kit-dir"
    )


class JupyterLab:
    """JupyterLab as a child process, in a process group of its own.

    Its own group (a new session): Ctrl-C in the terminal reaches the kit, not
    JupyterLab (which would stop to ask "Shutdown this Jupyter server?"); the
    kit stops the whole group with SIGTERM, then SIGKILL, so nothing it
    started is left holding a port.
    """

    name = "jupyterlab"

    def __init__(self, kit_dir: Path, port: int, ip: str, env: dict[str, str], runtime: Path):
        self.kit_dir, self.port, self.ip = kit_dir, port, ip
        self.token = secrets.token_urlsafe(24)
        self.notebooks = kit_dir / "notebooks"
        self.workspaces = runtime / "workspaces"
        # 0.0.0.0 inside a container: the host reaches it through a 127.0.0.1 port mapping.
        host = "127.0.0.1" if ip in {"0.0.0.0", "::", ""} else ip
        self.base = f"http://{host}:{port}"
        config_path = [str(kit_dir / "jupyter"), *filter(None, [os.environ.get("JUPYTER_CONFIG_PATH")])]
        self.env = {
            **os.environ,
            **env,
            "JUPYTER_CONFIG_PATH": os.pathsep.join(config_path),
            # From the environment, not the command line: not in `ps`.
            "JUPYTER_TOKEN": self.token,
        }
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{self.base}/lab/workspaces/{WORKSPACE}?token={self.token}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def import_workspace(self) -> None:
        """jupyter/workspace.json into a workspaces folder of this run's own: the
        page opens on the kit's layout every time, and the layout JupyterLab
        saves as you work never lands in the repository or in ~/.jupyter."""
        try:
            from jupyterlab_server.workspaces_handler import WorkspacesManager
        except ImportError:
            raise ConfigError("JupyterLab is not installed: pip install -e '.[kit]' (make up does)") from None
        raw = (self.kit_dir / "jupyter" / "workspace.json").read_text()
        WorkspacesManager(str(self.workspaces)).save(WORKSPACE, json.dumps(json.loads(raw)))

    def args(self) -> list[str]:
        args = [
            "--no-browser",
            f"--ip={self.ip}",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",  # the printed URL must be the port asked for
            f"--ServerApp.root_dir={self.notebooks}",
            f"--LabApp.workspaces_dir={self.workspaces}",
            f"--LabApp.default_url=/lab/workspaces/{WORKSPACE}",
            "--ServerApp.log_level=WARN",
            "--LabApp.log_level=WARN",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--allow-root")
        return args

    async def start(self) -> None:
        self.notebooks.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jupyterlab",
            *self.args(),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until JupyterLab answers with the token; fail early if it exits."""
        from .lab.processes import wait_answering

        headers = {"Authorization": f"token {self.token}"}
        url = f"{self.base}/api/status"
        await wait_answering(
            self.process, url, "JupyterLab", timeout, headers, lambda: "(its messages are above)"
        )

    def _signal_group(self, sig: int) -> None:
        from .lab.processes import signal_group

        if self.process is not None:
            signal_group(self.process.pid, sig)  # its pid is its group's id (new session)

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the group (JupyterLab shuts its kernels down), then SIGKILL."""
        if self.process is None:
            return
        if self.running:
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.process.wait()
            except TimeoutError:
                pass
        self._signal_group(signal.SIGKILL)  # anything left in its group
        await self.process.wait()


def open_browser(url: str) -> None:
    # Without a display, webbrowser would pick a text browser and take the terminal.
    if sys.platform in {"darwin", "win32"} or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        with contextlib.suppress(Exception):
            webbrowser.open(url)


def check_free(ip: str, port: int, hint: str = "another JupyterLab? pass --jupyter-port") -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as JupyterLab binds it
        try:
            s.bind((ip, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {ip}:{port} ({exc.strerror}): {hint}") from None
