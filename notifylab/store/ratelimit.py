"""A rate limit shared by every instance: so many units per second per subject.

The publish API holds each API key to ``NOTIFYLAB_PUBLISH_RATE``
notifications a second, whichever instance its calls reach, so one calling
service that loops cannot take the whole system's capacity from the others.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept
as a single timestamp): the key holds the "theoretical arrival time" at
which the subject's bucket would be full again. A call of ``cost`` units
pushes it ``cost / rate`` seconds later; a call that would push it more than
``burst / rate`` seconds past now is refused, and told how long to wait. One
key per subject, one script call per check, and the clock is Redis's own
(``TIME``), so instances whose clocks differ still agree.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from ..config import Settings

GCRA_SCRIPT = """
-- KEYS[1] the subject's timestamp; ARGV: 1 microseconds per unit, 2 burst (units), 3 cost (units)
-- Returns 0 if taken, else the microseconds to wait before this call would be.
local per_unit, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local new_tat = tat + cost * per_unit
local wait = new_tat - now - burst * per_unit
if wait > 0 then return wait end
-- '%.0f': tostring() would write 16 digits as 1.79e+15, losing the microseconds
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return 0
"""


class RateLimit:
    """``<prefix>:rate:<name>:<subject>``: one GCRA timestamp per subject."""

    def __init__(self, redis: Redis, settings: Settings, name: str, rate: float, burst: int):
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.redis = redis
        self.settings = settings
        self.name = name
        self.rate = rate
        self.burst = burst
        self._script = redis.register_script(GCRA_SCRIPT)

    async def take(self, subject: str, cost: int = 1) -> float:
        """Take ``cost`` units for ``subject``: 0.0 if they were there (and
        are now spent), else the seconds to wait before asking again
        (nothing is spent). A cost above the burst is taken from a full
        bucket only, and paid back before anything more is taken."""
        wait_us = await self._script(
            keys=[self.settings.key("rate", self.name, subject)],
            args=[math.ceil(1_000_000 / self.rate), max(self.burst, cost), cost],
        )
        return int(wait_us) / 1_000_000
