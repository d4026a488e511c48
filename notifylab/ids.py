"""Notification ids and the clock: the one module every other part may use.

A notification id is its Redis Stream entry id, ``"<milliseconds>-<seq>"``.
Redis makes them strictly increasing per stream, so two notifications of a
user compare by id, and "what did I miss since X" is one range read. This
module has no dependencies, so the kernel side (``notifylab.lab``) can use it
without the server's.
"""

from __future__ import annotations

import re
import time

ZERO = "0-0"  # the id before every real one: "after ZERO" means "everything"

# ASCII digits only (str.isdigit() also accepts other scripts' digits, which
# Redis refuses), and each part within Redis's unsigned 64-bit range.
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX = 2**64 - 1


def parse_id(text: object) -> tuple[int, int] | None:
    """``"1732512345678-3"`` -> ``(1732512345678, 3)``; None if ``text`` is
    not a stream id Redis would accept."""
    if not isinstance(text, str):
        return None
    match = _ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    if ms > _MAX or seq > _MAX:
        return None
    return ms, seq


def is_id(text: object) -> bool:
    """True if ``text`` is a notification id."""
    return parse_id(text) is not None


def id_after(a: str, b: str) -> bool:
    """True if id ``a`` comes after id ``b``. Both must be valid ids."""
    pa, pb = parse_id(a), parse_id(b)
    if pa is None or pb is None:
        raise ValueError(f"not notification ids: {a!r}, {b!r}")
    return pa > pb


def now_ms() -> int:
    """Wall-clock time in milliseconds, the unit of ids and ``ts`` fields."""
    return int(time.time() * 1000)
