"""Who is connected where: live sockets and the instances that hold them.

Every server instance writes a heartbeat key that expires unless renewed, and
records each socket under its session. A socket whose instance has stopped
beating is not live, even if the instance died before it could clean up.

An instance killed (SIGKILL, a lost host) and started again under the same
id beats again at once, and the sockets its previous process recorded would
look live until their sessions end. So each process has an *incarnation*, a
random token it puts in its heartbeat and in every socket record: a record is
live only while its instance beats with the same incarnation.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from ..config import Settings
from ..ids import now_ms
from ..protocol import is_live

HEARTBEAT_SECONDS = 5
HEARTBEAT_TTL = 15


class Presence:
    """``<prefix>:instance:<id>`` heartbeats and ``<prefix>:sockets:<session>``
    hashes (socket id -> {instance, incarnation, transport, connected_at}),
    written as this instance (``settings.instance_id``) and this process."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.incarnation = secrets.token_hex(8)

    def sockets_key(self, session_id: str) -> str:
        return self.settings.key("sockets", session_id)

    async def heartbeat(self, info: dict) -> None:
        """Say this instance is alive for HEARTBEAT_TTL seconds more."""
        record = {**info, "incarnation": self.incarnation}
        await self.redis.set(
            self.settings.key("instance", self.settings.instance_id), json.dumps(record), ex=HEARTBEAT_TTL
        )

    async def stop(self) -> None:
        await self.redis.delete(self.settings.key("instance", self.settings.instance_id))

    async def instances(self) -> dict[str, dict]:
        """The instances that beat in the last HEARTBEAT_TTL seconds."""
        prefix = self.settings.key("instance", "")
        found = {}
        async for key in self.redis.scan_iter(match=prefix + "*"):
            raw = await self.redis.get(key)
            if raw:
                found[key[len(prefix) :]] = json.loads(raw)
        return found

    async def live(self) -> dict[str, str | None]:
        """Each beating instance's incarnation: what :func:`is_live` asks."""
        return {instance: info.get("incarnation") for instance, info in (await self.instances()).items()}

    def queue_add_socket(self, pipe: Pipeline, session_id: str, sid: str, transport: str) -> None:
        """Add the recording of a socket on this instance to ``pipe`` (two commands)."""
        record = {
            "instance": self.settings.instance_id,
            "incarnation": self.incarnation,
            "transport": transport,
            "connected_at": now_ms(),
        }
        pipe.hset(self.sockets_key(session_id), sid, json.dumps(record))
        pipe.expire(self.sockets_key(session_id), self.settings.session_ttl)

    async def add_socket(self, session_id: str, sid: str, transport: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.queue_add_socket(pipe, session_id, sid, transport)
            await pipe.execute()

    async def set_transport(self, session_id: str, sid: str, transport: str) -> None:
        raw = await self.redis.hget(self.sockets_key(session_id), sid)
        if raw:
            await self.redis.hset(
                self.sockets_key(session_id), sid, json.dumps({**json.loads(raw), "transport": transport})
            )

    async def remove_socket(self, session_id: str, sid: str) -> None:
        await self.redis.hdel(self.sockets_key(session_id), sid)

    async def sockets(self, session_id: str, live: Mapping[str, str | None] | None = None) -> list[dict]:
        """The session's sockets on live instances, oldest first. Entries left
        behind by a dead instance, or by a previous process of a live one,
        are removed as they are found."""
        live = await self.live() if live is None else live
        raw = await self.redis.hgetall(self.sockets_key(session_id))
        result, stale = [], []
        for sid, text in raw.items():
            record = json.loads(text)
            if is_live(record, live):
                result.append({"sid": sid, **record})
            else:
                stale.append(sid)
        if stale:
            await self.redis.hdel(self.sockets_key(session_id), *stale)
        return sorted(result, key=lambda r: r["connected_at"])

    async def forget_session(self, session_id: str) -> None:
        await self.redis.delete(self.sockets_key(session_id))
