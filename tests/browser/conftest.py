"""Fixtures of the browser tests: a real stack and Debian's Chromium.

The stack is two server instances (``a`` and ``b``) on free ports and one
worker, all real subprocesses sharing one fresh ``NOTIFYLAB_PREFIX``, against
the RabbitMQ and Redis already running on the machine. The built web client
(``frontend/dist``) is built first if it is missing. Everything started here
is stopped at the end, also when a test fails; the run's Redis keys and
RabbitMQ queues are removed.

Playwright's sync API is used from plain ``def`` tests, so it never meets
pytest-asyncio's event loop. For the same reason the processes here are
plain ``subprocess.Popen`` ones rather than ``notifylab.lab``'s asyncio ones:
a sync test cannot await them when it kills and restarts an instance.
``playwright install`` is never run: the tests drive ``/usr/bin/chromium``
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, DIST, FRONTEND, READY_TIMEOUT, ROOT, WAIT_MS
from notifylab.lab import free_port
from support import new_prefix


@dataclass
class Proc:
    """One notifylab subprocess; ``url`` is set for a server instance."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    url: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Proc:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "notifylab", *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if self.url:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=10)


@dataclass
class Stack:
    prefix: str
    a: Proc
    b: Proc
    worker: Proc

    @property
    def processes(self) -> list[Proc]:
        return [self.a, self.b, self.worker]

    def ensure_running(self) -> None:
        """Start again whatever a previous test left stopped."""
        for proc in self.processes:
            if not proc.running:
                proc.start()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)


def _build_frontend() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to build frontend/dist (Node 20.19+)", pytrace=False)
    for args in (["ci", "--no-audit", "--no-fund"], ["run", "build"]):
        done = subprocess.run([npm, *args], cwd=FRONTEND, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(
                f"npm {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False
            )


@pytest.fixture(scope="session")
def frontend_dist() -> Path:
    if not (DIST / "index.html").is_file():
        _build_frontend()
    return DIST


@pytest.fixture(scope="session")
def _stack(services: None, frontend_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The `services` fixture (tests/conftest.py) checks RabbitMQ and Redis and
    # removes everything made under prefixes from new_prefix() after the run.
    prefix = new_prefix()
    log_dir = tmp_path_factory.mktemp("browser-stack")
    env = {
        **os.environ,
        "NOTIFYLAB_PREFIX": prefix,
        "NOTIFYLAB_STATIC_DIR": str(frontend_dist),
        "NOTIFYLAB_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }

    def server(instance: str) -> Proc:
        port = free_port()
        return Proc(
            f"server-{instance}",
            ["serve", "--host", "127.0.0.1", "--port", str(port), "--instance-id", instance],
            env,
            log_dir / f"server-{instance}.log",
            url=f"http://127.0.0.1:{port}",
        )

    stack = Stack(
        prefix,
        server("a"),
        server("b"),
        Proc("worker", ["worker", "--worker-id", f"{prefix}-w1"], env, log_dir / "worker.log"),
    )
    try:
        for proc in stack.processes:
            proc.start()
        yield stack
    finally:
        for proc in stack.processes:
            try:
                proc.stop()
            except Exception as exc:
                print(f"stopping {proc.name} failed: {exc}", file=sys.stderr)


@pytest.fixture
def stack(_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The running stack; a test that stopped a process gets it back after."""
    _stack.ensure_running()
    yield _stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\nnotifylab logs (prefix {_stack.prefix}):\n{_stack.logs()}", file=sys.stderr)
    _stack.ensure_running()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Module scope, not session: Playwright's sync API keeps an event loop
    # running in this thread while it is open, and pytest-asyncio cannot run
    # the async tests that come after until it is closed.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_context(browser) -> Iterator[object]:
    """Make browser contexts (each is one cookie jar: one device); all closed after."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    made = []

    def make(**options):
        options.setdefault("viewport", {"width": 1280, "height": 860})
        context = browser.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()
