"""Every setting notifylab reads, in one place.

Settings come from ``NOTIFYLAB_*`` environment variables over defaults, and the
command line (``notifylab serve --port 8082``) over both. Nothing else in the
package reads ``os.environ``: pass a :class:`Settings` down instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_STATIC_DIR = PACKAGE_DIR.parent / "frontend" / "dist"


class ConfigError(ValueError):
    """A setting has a value notifylab cannot use; the message names it."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class Settings:
    """The configuration of one notifylab process (server or worker).

    Build it with :meth:`from_env`. ``secret`` is hidden from ``repr`` so that logging the
    settings never leaks it.
    """

    # One RabbitMQ URL, or the nodes of one cluster separated by commas: a
    # process then fails over between them (broker_urls, bus/broker.py).
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8081
    instance_id: str = ""
    # Keys the HMAC that turns a cookie into a Redis key, so a copy of Redis
    # holds no usable session. Every instance must share it.
    secret: str = field(default="notifylab-lab-secret-change-me", repr=False)
    routing: str = "topic"
    prefix: str = "notifylab"
    static_dir: str = str(DEFAULT_STATIC_DIR)
    log_level: str = "INFO"
    worker_concurrency: int = 2
    max_attempts: int = 3
    # The jobs queue's type: "classic" (one node's, with priorities: fair
    # between users) or "quorum" (replicated over a cluster, so it survives
    # a node; no priorities). See bus/jobs.py.
    jobs_queue_type: str = "classic"
    session_ttl: int = 7 * 24 * 3600
    cookie_secure: bool = False
    inbox_max: int = 1000
    # Origins allowed to make cookie-authenticated requests besides the
    # instance's own (comma-separated; e.g. the load balancer's public URL).
    allowed_origins: str = ""
    # Proxies whose X-Forwarded-For is believed when counting failed logins
    # and new sockets per address (comma-separated addresses or networks:
    # nginx's own address, not a whole subnet other clients also come from).
    trusted_proxies: str = ""
    login_attempts: int = 5  # failed logins per username or address before backoff
    hash_concurrency: int = 2  # Argon2 hashes in flight per instance (CPU-bound)
    max_active_operations: int = 10  # per user: queued or running at once
    session_check_seconds: int = 30  # how often open sockets' sessions are re-checked
    # The keys other backend services present to POST /api/publish (as
    # "Authorization: Bearer <key>"): one, or several separated by commas (a
    # key per calling service, or the old and the new while rotating one).
    # Empty: the publish API is off.
    api_key: str = field(default="", repr=False)
    # Notifications per second each API key may publish, over all instances
    # (store/ratelimit.py); past it, 429 with Retry-After. 0: no limit.
    publish_rate: int = 1000
    # How long an Idempotency-Key on POST /api/publish is remembered: a
    # retry within it gets the first answer instead of publishing again.
    idempotency_seconds: int = 24 * 3600
    # Redis connections per process. A full pool makes a caller wait (up to
    # redis_pool_wait seconds) instead of failing: a reconnect storm or a busy
    # worker slows down rather than losing work. A worker's pool is never
    # smaller than its concurrency needs (see store/connect.py).
    redis_pool_size: int = 64
    redis_pool_wait: int = 20
    # Replicas that must confirm (Redis WAIT) each write a client is told is
    # done (an operation's step, a publish) before it is acknowledged or sent
    # on; each WAIT waits up to redis_wait_ms. 0: off, as a single Redis has
    # no replica (store/replication.py; docs/architecture.md, "Redis with Sentinel").
    redis_wait_replicas: int = 0
    redis_wait_ms: int = 500
    # permessage-deflate on websockets. Off: our frames are small JSON, and
    # each compressing socket keeps a zlib state, about 90 KB of an idle
    # socket's 122 KB (server/engine.py, benchmarks/README.md).
    ws_compression: bool = False
    # The event loop of servers and workers: "uvloop" (the default; asyncio's
    # own loop where uvloop is missing) or "asyncio" (notifylab/loop.py).
    event_loop: str = "uvloop"
    # New sockets an instance takes in at once; past it a new connection
    # gets a 503 before the websocket upgrade, which clients retry after a
    # jittered delay (server/admission.py). 0: no limit.
    max_connecting: int = 1000
    # New sockets one client address may open on an instance: a burst of
    # address_connect_burst, then address_connect_rate a second; past it, a
    # 429 with Retry-After before the upgrade, retried like the 503
    # (server/flood.py). The burst lets an office behind one NAT come back
    # after a restart; 20 a second keeps one address flooding the instance
    # to about 5% of a core. The address is the peer, or behind a trusted
    # proxy the one it forwarded for: set NOTIFYLAB_TRUSTED_PROXIES behind
    # nginx, or every client counts as the proxy. Rate 0: no limit.
    address_connect_rate: int = 20
    address_connect_burst: int = 200

    ENV_NAMES: ClassVar[dict[str, str]] = {  # field -> environment variable
        "broker_url": "NOTIFYLAB_BROKER_URL",
        "redis_url": "NOTIFYLAB_REDIS_URL",
        "host": "NOTIFYLAB_HOST",
        "port": "NOTIFYLAB_PORT",
        "instance_id": "NOTIFYLAB_INSTANCE_ID",
        "secret": "NOTIFYLAB_SECRET",
        "routing": "NOTIFYLAB_ROUTING",
        "prefix": "NOTIFYLAB_PREFIX",
        "static_dir": "NOTIFYLAB_STATIC_DIR",
        "log_level": "NOTIFYLAB_LOG_LEVEL",
        "worker_concurrency": "NOTIFYLAB_WORKER_CONCURRENCY",
        "max_attempts": "NOTIFYLAB_MAX_ATTEMPTS",
        "jobs_queue_type": "NOTIFYLAB_JOBS_QUEUE",
        "session_ttl": "NOTIFYLAB_SESSION_TTL",
        "cookie_secure": "NOTIFYLAB_COOKIE_SECURE",
        "inbox_max": "NOTIFYLAB_INBOX_MAX",
        "allowed_origins": "NOTIFYLAB_ALLOWED_ORIGINS",
        "trusted_proxies": "NOTIFYLAB_TRUSTED_PROXIES",
        "login_attempts": "NOTIFYLAB_LOGIN_ATTEMPTS",
        "hash_concurrency": "NOTIFYLAB_HASH_CONCURRENCY",
        "max_active_operations": "NOTIFYLAB_MAX_ACTIVE_OPERATIONS",
        "session_check_seconds": "NOTIFYLAB_SESSION_CHECK_SECONDS",
        "api_key": "NOTIFYLAB_API_KEY",
        "publish_rate": "NOTIFYLAB_PUBLISH_RATE",
        "idempotency_seconds": "NOTIFYLAB_IDEMPOTENCY_SECONDS",
        "redis_pool_size": "NOTIFYLAB_REDIS_POOL_SIZE",
        "redis_pool_wait": "NOTIFYLAB_REDIS_POOL_WAIT",
        "redis_wait_replicas": "NOTIFYLAB_REDIS_WAIT_REPLICAS",
        "redis_wait_ms": "NOTIFYLAB_REDIS_WAIT_MS",
        "ws_compression": "NOTIFYLAB_WS_COMPRESSION",
        "event_loop": "NOTIFYLAB_EVENT_LOOP",
        "max_connecting": "NOTIFYLAB_MAX_CONNECTING",
        "address_connect_rate": "NOTIFYLAB_ADDRESS_CONNECT_RATE",
        "address_connect_burst": "NOTIFYLAB_ADDRESS_CONNECT_BURST",
    }

    def __post_init__(self) -> None:
        if self.routing not in {"topic", "fanout"}:
            raise ConfigError(f"NOTIFYLAB_ROUTING must be 'topic' or 'fanout', not {self.routing!r}")
        if self.event_loop not in {"uvloop", "asyncio"}:
            raise ConfigError(f"NOTIFYLAB_EVENT_LOOP must be 'uvloop' or 'asyncio', not {self.event_loop!r}")
        if self.jobs_queue_type not in {"classic", "quorum"}:
            raise ConfigError(
                f"NOTIFYLAB_JOBS_QUEUE must be 'classic' or 'quorum', not {self.jobs_queue_type!r}"
            )
        if not self.broker_urls or (len(self.broker_urls) > 1 and self.memory):
            raise ConfigError(
                "NOTIFYLAB_BROKER_URL must be memory://, or one or more RabbitMQ URLs separated by commas"
            )
        if self.max_connecting < 0:
            raise ConfigError(
                f"NOTIFYLAB_MAX_CONNECTING must be 0 (no limit) or more, not {self.max_connecting}"
            )
        if self.address_connect_rate < 0:
            raise ConfigError(
                "NOTIFYLAB_ADDRESS_CONNECT_RATE must be 0 (no limit) or more, "
                f"not {self.address_connect_rate}"
            )
        if self.redis_wait_replicas < 0:
            raise ConfigError(
                f"NOTIFYLAB_REDIS_WAIT_REPLICAS must be 0 (off) or more, not {self.redis_wait_replicas}"
            )
        if self.publish_rate < 0:
            raise ConfigError(f"NOTIFYLAB_PUBLISH_RATE must be 0 (no limit) or more, not {self.publish_rate}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"NOTIFYLAB_PORT must be 1-65535, not {self.port}")
        at_least_one = (
            "worker_concurrency",
            "max_attempts",
            "login_attempts",
            "hash_concurrency",
            "max_active_operations",
            "session_check_seconds",
            "redis_pool_size",
            "redis_pool_wait",
            "redis_wait_ms",  # WAIT with 0 ms would wait for ever
            "address_connect_burst",
            "idempotency_seconds",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.ENV_NAMES[name]} must be at least 1, not {getattr(self, name)}")
        if not self.prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"NOTIFYLAB_PREFIX must be letters, digits, - or _, not {self.prefix!r}")
        if self.memory != (
            self.broker_url.startswith("memory://") and self.redis_url.startswith("memory://")
        ):
            raise ConfigError(
                "the embedded mode needs both NOTIFYLAB_BROKER_URL and NOTIFYLAB_REDIS_URL "
                "set to memory:// (one in-memory part cannot be shared with real ones)"
            )
        # Frozen dataclasses need object.__setattr__ for derived defaults.
        if not self.instance_id:
            object.__setattr__(self, "instance_id", f"{socket.gethostname()}-{self.port}")
        self.proxies  # noqa: B018 (validates NOTIFYLAB_TRUSTED_PROXIES now, not at the first login)

    @property
    def origins(self) -> tuple[str, ...]:
        """``allowed_origins`` as a tuple, without trailing slashes."""
        return tuple(o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip())

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """``broker_url`` as a tuple: one URL, or every node of a RabbitMQ
        cluster that a process may connect to (in the order given)."""
        return tuple(u.strip() for u in self.broker_url.split(",") if u.strip())

    @property
    def api_keys(self) -> tuple[str, ...]:
        """``api_key`` as a tuple: every key the publish API accepts."""
        return tuple(k.strip() for k in self.api_key.split(",") if k.strip())

    @property
    def proxies(self) -> tuple[str, ...]:
        """``trusted_proxies`` as a tuple; a bad entry fails at start-up."""
        found = tuple(p.strip() for p in self.trusted_proxies.split(",") if p.strip())
        for proxy in found:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(
                    f"NOTIFYLAB_TRUSTED_PROXIES: {proxy!r} is not an address or network"
                ) from None
        return found

    @property
    def memory(self) -> bool:
        """True in the embedded single-process mode (``memory://`` URLs)."""
        return self.broker_url.startswith("memory://") or self.redis_url.startswith("memory://")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``NOTIFYLAB_*`` from ``environ`` (default ``os.environ``);
        keyword ``overrides`` that are not None win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = cls.ENV_NAMES.get(f.name)
            if name and name in environ:
                values[f.name] = _cast(f, name, environ[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    # Names on the broker and in Redis, derived from the prefix so that a test
    # run (or a second lab) can share one RabbitMQ and one Redis with others.
    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def fanout_exchange(self) -> str:
        return f"{self.prefix}.fanout"

    @property
    def jobs_queue(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.jobs.dead"

    def instance_queue(self, instance_id: str | None = None) -> str:
        return f"{self.prefix}.instance.{instance_id or self.instance_id}"

    def key(self, *parts: str) -> str:
        """A Redis key under the prefix: ``key('inbox', 'ann')`` is
        ``notifylab:inbox:ann``."""
        return ":".join((self.prefix, *parts))


def _cast(f: dataclasses.Field, env_name: str, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "bool":
            return _bool(raw)
    except ValueError:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {kind}") from None
    return raw


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``, fit for an error message."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
