"""Flood control: how fast one address may open new sockets on an instance.

A reconnect storm is many addresses coming back at once, and admission
(``admission.py``) spreads it out. A flood is one address opening sockets as
fast as it can: a script in a loop, a broken client reconnecting without a
pause, someone trying to tire the instance. Each new socket costs a
handshake and a connect (about 2.4 ms of CPU, benchmarks/README.md), and
admission alone would hand such a flood every free place. So each address
has a token bucket: ``burst`` new sockets at once, then ``rate`` more each
second. Past it, a new engine.io connection gets HTTP 429 with
``Retry-After`` (the seconds until the address has a token again) before
any upgrade, and the clients retry after a jittered delay, as after a 503.

The address is :func:`http.address_of`'s, the one the login throttle counts:
the peer, or behind a trusted proxy (``NOTIFYLAB_TRUSTED_PROXIES``) the
address the proxy forwarded for; an IPv6 address counts as its /64. The
buckets live in the instance's memory, not in Redis: the check must cost
far less than the connect it saves, and a limit per instance is what keeps
each instance responsive.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..logbudget import LogBudget
from .admission import new_connection
from .http import peer_address

log = logging.getLogger(__name__)

# Buckets kept before the full ones (addresses quiet long enough to have
# their whole burst back, which a fresh bucket would give them too) are
# swept away: what bounds the memory of many addresses. The next sweep waits
# until there are twice as many as the last one kept, so that sweeping costs
# a constant time per bucket made, however many addresses are busy.
SWEEP_AT = 10_000


class TokenBuckets:
    """A token bucket per key: each holds up to ``burst`` tokens and gains
    ``rate`` a second; :meth:`take` spends one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a rate above 0 and a burst of at least 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when they were counted)
        self._sweep_at = SWEEP_AT

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one of ``key``'s tokens: 0.0 if it had one, or else the
        seconds until it will (and nothing is spent)."""
        now = self.clock()
        tokens, counted = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - counted) * self.rate)
        if tokens >= 1:
            if key not in self._buckets and len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        full = [
            key
            for key, (tokens, counted) in self._buckets.items()
            if tokens + (now - counted) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._buckets))


class ConnectLimit:
    """New engine.io connections per address, held to a token bucket each
    (``rate`` new sockets a second after a ``burst``; ``rate`` 0: no limit)."""

    def __init__(
        self,
        rate: int,
        burst: int,
        proxies: tuple[str, ...] = (),
        on_refused: Callable[[], object] | None = None,
    ):
        self.buckets = TokenBuckets(rate, burst) if rate else None
        self.proxies = proxies
        self.on_refused = on_refused  # called for each 429 (a metric)
        self._log = LogBudget(log)  # a flood is thousands of refusals: a few lines, and their count

    def middleware(self) -> Any:
        """The aiohttp middleware answering 429 to an address past its bucket."""

        @web.middleware
        async def connect_limit_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.buckets is None or not new_connection(request):
                return await handler(request)
            address = peer_address(request, self.proxies)
            wait = self.buckets.take(address)
            if not wait:
                return await handler(request)
            retry_after = max(1, math.ceil(wait))
            if self.on_refused is not None:
                self.on_refused()
            self._log.warning(
                "new sockets from %s come faster than %g a second; answering 429 (retry in %d s)",
                address,
                self.buckets.rate,
                retry_after,
            )
            return web.json_response(
                {"error": "too many new connections from your address: retry in a moment"},
                status=429,
                headers={"Retry-After": str(retry_after)},
            )

        return connect_limit_middleware
