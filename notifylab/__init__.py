"""notifylab: real-time notifications across a distributed system, to learn from.

The folders are the boxes of the architecture picture (docs/architecture.md):
``store`` (Redis), ``bus`` (RabbitMQ), ``server`` (one instance), ``worker``
(runs operations), ``lab`` (the kernel side: a client, processes,
inspectors) and ``widgets`` (live panels for notebooks). Beside them:
``config`` (settings), ``ids`` (notification ids), ``protocol`` (what
servers and clients agree on), ``kinds`` (the operations one can start),
``errors`` and ``cli``.
"""

from .config import Settings

__all__ = ["Settings"]
__version__ = "0.1.0"
