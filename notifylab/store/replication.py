"""Replicas confirming a write before anyone is told it is done: Redis's WAIT.

Redis replication is asynchronous: the primary runs a write, answers the
client, and only then streams the write to its replicas. If the primary
dies in between, Sentinel promotes a replica that never saw the write, and
it is gone, although the client was told "done". For a notification that
means a 202 to a publisher, or a progress step a session already showed,
that no longer exists anywhere.

``WAIT numreplicas timeout`` closes that window for the writes that matter:
it blocks the connection that sent it until ``numreplicas`` replicas have
acknowledged every write *that connection* made before it, or until
``timeout`` ms have passed, and answers how many did. So the WAIT must go on
the same connection as the write: here they go together in one pipeline,
one round trip (a WAIT on another pooled connection would confirm that
connection's writes, i.e. nothing, and answer at once).

With ``NOTIFYLAB_REDIS_WAIT_REPLICAS=0`` (the default) nothing of this runs:
a script is called exactly as before, and a single Redis pays nothing.

What a short WAIT means: the write is on the primary (WAIT never undoes
anything), but a failover now could lose it. The caller is refused with
:class:`NotReplicated` (a 503) instead of being told "done", and nothing is
sent on the bus, so no session sees a notification that might vanish. If
the write survives, the stream holds it and the feed delivers it with the
user's next notification (its ``prev``); a publisher's retry under the same
Idempotency-Key gets the first answer. A patient caller (a worker, which
holds its job) keeps confirming instead, for up to ``patience`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ..config import Settings
from ..errors import ServiceUnavailable


class NotReplicated(ServiceUnavailable):
    """A write is on the Redis primary but fewer replicas than required
    confirmed it in time: it was not acknowledged, and may or may not
    survive a failover. Retrying is safe where the write is idempotent
    (a publish with its Idempotency-Key, a worker's step)."""

    def __init__(self, confirmed: int, wanted: int, waited_ms: int):
        # "service unavailable" first, as every 503 a socket acks with (sockets.py).
        super().__init__(
            f"service unavailable: written to the Redis primary, but {confirmed} of {wanted} "
            f"replicas confirmed it within {waited_ms} ms, so a failover could still lose it; "
            "retry in a moment"
        )
        self.confirmed = confirmed
        self.subject: str | None = None  # the id of what was written, where the writer has one


class Replication:
    """How many replicas must confirm this process's writes, and how long
    it waits for them (``settings.redis_wait_replicas``, ``redis_wait_ms``).

    ``patience``: seconds to keep confirming after a first short WAIT before
    giving up with :class:`NotReplicated` (0: one WAIT, then refuse). A
    request handler should refuse fast; a worker, which holds its job, can
    wait for a replica to come back."""

    def __init__(self, redis: Redis, settings: Settings, patience: float = 0.0):
        self.redis = redis
        self.wanted = 0 if settings.memory else settings.redis_wait_replicas  # no replica in-process
        self.wait_ms = settings.redis_wait_ms
        self.patience = patience
        # A confirmation that follows a short WAIT writes here first (a write
        # of its own, so that its WAIT covers everything the connection
        # and, replication being in order, everyone before it, wrote).
        self._mark = settings.key("replicated")

    @property
    def on(self) -> bool:
        return self.wanted > 0

    async def run(
        self,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        confirm_when: Collection[str] = ("ok",),
    ) -> Any:
        """Run ``script`` (registered on this client). When replicas are
        required and the script's reply (its first element) is one of
        ``confirm_when`` (it wrote something the caller will acknowledge),
        return only once they confirmed it; raise :class:`NotReplicated`
        if they did not in time."""
        if not self.on:
            return await script(keys=keys, args=args)
        started = time.monotonic()
        try:
            reply, confirmed = await self._with_wait(script, keys, args)
        except NoScriptError:
            # NOSCRIPT: this primary never saw the script (a replica promoted
            # since: the script cache is not replicated). Nothing ran; load it
            # and run it once more.
            script.sha = await self.redis.script_load(script.script)
            reply, confirmed = await self._with_wait(script, keys, args)
        if reply[0] in confirm_when and confirmed < self.wanted:
            await self._confirm(confirmed, started)
        return reply

    async def _with_wait(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> tuple[Any, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.wait(self.wanted, self.wait_ms)
            reply, confirmed = await pipe.execute()
        return reply, int(confirmed)

    async def _confirm(self, confirmed: int, started: float) -> None:
        """Ask again until enough replicas confirmed, for ``patience`` seconds."""
        deadline = time.monotonic() + self.patience
        while confirmed < self.wanted:
            if time.monotonic() >= deadline:
                raise NotReplicated(confirmed, self.wanted, round((time.monotonic() - started) * 1000))
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._mark, str(time.time()))
                pipe.wait(self.wanted, self.wait_ms)
                _, answer = await pipe.execute()
            confirmed = int(answer)


__all__ = ["NotReplicated", "Replication"]
