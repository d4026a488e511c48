"""notifylab: real-time notifications across a distributed system, to learn from.

The parts, each in its own module: ``config`` (settings), ``accounts`` and
``sessions`` (who you are), ``kinds`` and ``operations`` (what you run),
``inbox`` (what you were told), ``jobs`` and ``worker`` (running it),
``routing`` and ``feed`` (getting the news to every socket), ``app``, ``api``
and ``sockets`` (a server instance), ``client`` (a Python session), ``lab``
(processes to start and kill).
"""
from .config import Settings

__all__ = ["Settings"]
__version__ = "0.1.0"
