"""JSON on the hot path: orjson to write, and to read what we wrote.

A notification is encoded or decoded several times on its way (the inbox
stream, the bus, the socket frame). The standard library's ``json`` is
pure-Python glue around a C scanner; orjson is C (Rust) throughout, several
times faster on our small dicts (``benchmarks/cost.py``, "codec" in
docs/architecture.md). Two rules keep it safe:

- ``dumps`` returns ``str`` (orjson gives bytes) so callers need not care;
  ``dumpb`` is the bytes form for the bus and Redis.
- What *clients* send is still read by engine.io's own reader
  (``SocketIOJSON``: the standard library, refusing integers of over 100
  digits): the hardening tests pin its behaviour on hostile input (huge
  integers, deep nesting, lone surrogates), and client events are not the
  hot path.

Without orjson (it ships wheels for every common platform, but a source
install may lack a Rust toolchain) everything falls back to ``json``.
"""

from __future__ import annotations

import json
from typing import Any

from engineio import json as engineio_json

try:
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None  # type: ignore[assignment]

ENGINE = "orjson" if orjson is not None else "json"


def _std_dumps(obj: Any) -> str:
    # ASCII, so that a lone surrogate is written as an escape: valid UTF-8 on any wire.
    return json.dumps(obj, separators=(",", ":"))


if orjson is not None:
    # orjson refuses what the standard library writes: integers past 64 bits
    # (a publisher's data may hold one), keys that are not strings, lone
    # surrogates. Those few go the standard library's way; on the bus and in
    # Redis they start with a space (still JSON), so that ``loads`` reads
    # them back the same way: orjson would read a big integer as a float.
    _REFUSED = (orjson.JSONEncodeError, TypeError)

    def dumpb(obj: Any) -> bytes:
        """``obj`` as compact UTF-8 JSON bytes, for ``loads`` to read."""
        try:
            return orjson.dumps(obj)
        except _REFUSED:
            return b" " + _std_dumps(obj).encode()

    def dumps(obj: Any) -> str:
        """``obj`` as compact JSON text."""
        try:
            return orjson.dumps(obj).decode()
        except _REFUSED:
            return _std_dumps(obj)

    def loads(data: bytes | str) -> Any:
        """Parse JSON that ``dumpb`` wrote (the bus, the stream)."""
        if data[:1] in (b" ", " "):
            return json.loads(data)
        return orjson.loads(data)

else:  # pragma: no cover

    def dumpb(obj: Any) -> bytes:
        return _std_dumps(obj).encode()

    def dumps(obj: Any) -> str:
        return _std_dumps(obj)

    def loads(data: bytes | str) -> Any:
        return json.loads(data)


class SocketIOJSON:
    """The ``json`` module python-socketio is given (``AsyncServer(json=...)``):
    our encoder for every packet we send, engine.io's guarded reader for
    every packet a client sends."""

    @staticmethod
    def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        return dumps(obj)  # python-socketio passes separators=(",", ":"): orjson is compact anyway

    @staticmethod
    def loads(data: str | bytes, *args: Any, **kwargs: Any) -> Any:
        return engineio_json.loads(data, *args, **kwargs)
