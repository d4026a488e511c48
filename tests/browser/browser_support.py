"""Constants and small helpers shared by the browser tests and their conftest."""

from __future__ import annotations

import uuid

# Chromium's set-up is shared with tests/test_kit.py, which cannot import this module (see support.py).
from support import CHROMIUM, CHROMIUM_ARGS, ROOT  # noqa: F401 (the conftest imports them from here)

FRONTEND = ROOT / "frontend"
DIST = FRONTEND / "dist"
PASSWORD = "correct horse battery"
READY_TIMEOUT = 30.0
# Every Playwright wait in these tests is bounded by this (ms).
WAIT_MS = 20_000


def new_username() -> str:
    return f"b{uuid.uuid4().hex[:10]}"
