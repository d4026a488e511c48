"""The kernel side: what a notebook (or a test, or the benchmark) drives.

``client`` is one live session of a user (REST + Socket.IO); ``processes``
starts, stops and kills server instances and workers; ``cluster`` joins the
kit's cluster or starts a private one; ``verdict`` judges what sessions
received against the inbox streams; ``redis_view`` and ``rabbitmq_view``
show what Redis and RabbitMQ hold, as ``tables``. Nothing here imports the
server or the store, so ``pip install notifylab[lab]`` is enough in a kernel
that talks to a cluster running elsewhere.
"""

from .client import Client, ClientError
from .cluster import PASSWORD, Cluster
from .processes import Lab, LabProcess, free_port
from .publisher import Publisher, publish
from .rabbitmq_view import RabbitView
from .redis_view import RedisView
from .tables import Table, wait_until
from .verdict import Verdict, verdict

__all__ = [
    "PASSWORD",
    "Client",
    "ClientError",
    "Cluster",
    "Lab",
    "LabProcess",
    "Publisher",
    "RabbitView",
    "RedisView",
    "Table",
    "Verdict",
    "free_port",
    "publish",
    "verdict",
    "wait_until",
]
