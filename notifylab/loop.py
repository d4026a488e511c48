"""The event loop a server instance or a worker runs on.

uvloop (libuv under asyncio's interface) runs the same code with a cheaper
loop: scheduling a callback, a task step and a socket write cost a fraction
of what asyncio's pure-Python loop spends on them, and a notification takes
several of each on its way (benchmarks/cost.py; "Under load" in
docs/architecture.md). ``NOTIFYLAB_EVENT_LOOP=asyncio`` runs on asyncio's own
loop instead, which is also what happens where uvloop is not installed.

The lab's kernel side (notebooks) stays on the loop Jupyter gives it: the
kernel owns its loop, and nothing there is on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
LOOPS = ("uvloop", "asyncio")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for loop ``name``; None means asyncio's default."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; running on asyncio's own event loop")
            return None
        return uvloop.new_event_loop
    return None


def running() -> str:
    """The name of the loop running now: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """``asyncio.run(main)`` on the event loop ``name`` (one of LOOPS)."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
