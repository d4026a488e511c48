"""Who is connected where: live sockets and the instances that hold them.

Every server instance writes a heartbeat key that expires unless renewed, and
records each socket under its session. A socket whose instance has stopped
beating is not live, even if the instance died before it could clean up.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from ..config import Settings
from ..ids import now_ms

HEARTBEAT_SECONDS = 5
HEARTBEAT_TTL = 15


class Presence:
    """``<prefix>:instance:<id>`` heartbeats and ``<prefix>:sockets:<session>``
    hashes (socket id -> {instance, transport, connected_at})."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings

    def sockets_key(self, session_id: str) -> str:
        return self.settings.key("sockets", session_id)

    async def heartbeat(self, instance_id: str, info: dict) -> None:
        await self.redis.set(self.settings.key("instance", instance_id), json.dumps(info), ex=HEARTBEAT_TTL)

    async def stop(self, instance_id: str) -> None:
        await self.redis.delete(self.settings.key("instance", instance_id))

    async def instances(self) -> dict[str, dict]:
        """The instances that beat in the last HEARTBEAT_TTL seconds."""
        prefix = self.settings.key("instance", "")
        found = {}
        async for key in self.redis.scan_iter(match=prefix + "*"):
            raw = await self.redis.get(key)
            if raw:
                found[key[len(prefix) :]] = json.loads(raw)
        return found

    def queue_add_socket(
        self, pipe: Pipeline, session_id: str, sid: str, instance_id: str, transport: str
    ) -> None:
        """Add the recording of a socket to ``pipe`` (two commands)."""
        record = {"instance": instance_id, "transport": transport, "connected_at": now_ms()}
        pipe.hset(self.sockets_key(session_id), sid, json.dumps(record))
        pipe.expire(self.sockets_key(session_id), self.settings.session_ttl)

    async def add_socket(self, session_id: str, sid: str, instance_id: str, transport: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.queue_add_socket(pipe, session_id, sid, instance_id, transport)
            await pipe.execute()

    async def set_transport(self, session_id: str, sid: str, transport: str) -> None:
        raw = await self.redis.hget(self.sockets_key(session_id), sid)
        if raw:
            await self.redis.hset(
                self.sockets_key(session_id), sid, json.dumps({**json.loads(raw), "transport": transport})
            )

    async def remove_socket(self, session_id: str, sid: str) -> None:
        await self.redis.hdel(self.sockets_key(session_id), sid)

    async def sockets(self, session_id: str, live: set[str] | None = None) -> list[dict]:
        """The session's sockets on live instances, oldest first. Entries left
        behind by a dead instance are removed as they are found."""
        live = set(await self.instances()) if live is None else live
        raw = await self.redis.hgetall(self.sockets_key(session_id))
        result, stale = [], []
        for sid, text in raw.items():
            record = json.loads(text)
            if record["instance"] in live:
                result.append({"sid": sid, **record})
            else:
                stale.append(sid)
        if stale:
            await self.redis.hdel(self.sockets_key(session_id), *stale)
        return sorted(result, key=lambda r: r["connected_at"])

    async def forget_session(self, session_id: str) -> None:
        await self.redis.delete(self.sockets_key(session_id))
