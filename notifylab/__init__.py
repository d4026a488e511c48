"""notifylab: real-time notifications across a distributed system, to learn from.

The folders are the boxes of the architecture picture (docs/architecture.md):
``store`` (Redis), ``bus`` (RabbitMQ), ``server`` (one instance), ``worker``
(runs operations), ``lab`` (the kernel side: a client, processes,
inspectors) and ``widgets`` (live panels for notebooks). Beside them:
``config`` (settings), ``ids`` (notification ids), ``protocol`` (what
servers and clients agree on), ``kinds`` (the operations one can start),
``errors``, ``cli`` and ``kit`` (the kit's JupyterLab).
"""

from typing import Any

from .config import Settings

__all__ = ["Publisher", "Settings", "publish"]


def __getattr__(name: str) -> Any:
    # notifylab.publish(...) for other services, imported on first use only:
    # a server importing notifylab.config need not load the client's libraries.
    if name in {"publish", "Publisher"}:
        from .lab import publisher

        return getattr(publisher, name)
    raise AttributeError(f"module 'notifylab' has no attribute {name!r}")


__version__ = "0.1.0"
