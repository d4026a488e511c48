"""Prometheus metrics of one server instance, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the server)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    """One registry per instance (not the global one), so that several
    servers in one process, as in the tests, keep separate figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sockets = Gauge(
            "notifylab_sockets_connected", "Socket.IO connections open on this instance", registry=r
        )
        self.delivered = Counter(
            "notifylab_notifications_delivered",
            "Notifications emitted to sockets (one per socket)",
            registry=r,
        )
        self.replayed = Counter(
            "notifylab_notifications_replayed",
            "Notifications replayed from the inbox stream on (re)connect",
            registry=r,
        )
        self.gaps = Counter(
            "notifylab_gaps_filled", "Times a missing notification was read from the stream", registry=r
        )
        self.duplicates = Counter(
            "notifylab_duplicates_dropped", "Notifications received again and not re-emitted", registry=r
        )
        self.connects_refused = Counter(
            "notifylab_connects_refused",
            "New connections answered 503 before the upgrade: too many sockets being taken in at once",
            registry=r,
        )
        self.connects_flooded = Counter(
            "notifylab_connects_flooded",
            "New connections answered 429 before the upgrade: their address opened sockets too fast",
            registry=r,
        )
        self.sockets_shed = Counter(
            "notifylab_sockets_shed",
            "Sockets disconnected for what their client sent (unreadable packets, floods of refused events)",
            registry=r,
        )
        self.bus_received = Counter(
            "notifylab_bus_messages_received", "Messages this instance's queue delivered to it", registry=r
        )
        self.bus_malformed = Counter(
            "notifylab_bus_messages_malformed",
            "Messages dropped as unusable: not JSON, or a notification without id, prev, user or ts",
            registry=r,
        )
        self.not_local = Counter(
            "notifylab_bus_messages_not_local",
            "Notifications received for users with no socket here",
            registry=r,
        )
        self.batch_size = Histogram(
            "notifylab_feed_batch_size",
            "Notifications handed to the feed at once: what the bus brought in one loop turn",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.latency = Histogram(
            "notifylab_delivery_latency_seconds",
            "From a notification's creation to its emit on this instance",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
