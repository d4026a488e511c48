"""Constants and small helpers shared by the browser tests and their conftest."""

from __future__ import annotations

import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
DIST = FRONTEND / "dist"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery"
READY_TIMEOUT = 30.0
# Every Playwright wait in these tests is bounded by this (ms).
WAIT_MS = 20_000


def new_username() -> str:
    return f"b{uuid.uuid4().hex[:10]}"
