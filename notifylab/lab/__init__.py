"""The kernel side: what a notebook (or a test, or the benchmark) drives.

``client`` is one live session of a user (REST + Socket.IO); ``processes``
starts, stops and kills server instances and workers. Nothing here imports
the server or the store, so ``pip install notifylab[lab]`` is enough in a
kernel that talks to a cluster running elsewhere.
"""
from .client import Client, ClientError
from .processes import Lab, LabProcess, free_port

__all__ = ["Client", "ClientError", "Lab", "LabProcess", "free_port"]
