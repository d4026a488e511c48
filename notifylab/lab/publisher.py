"""Publishing notifications from another Python service (``POST /api/publish``).

A backend that is not a user session (billing, a CI runner, a cron job)
notifies users without running an operation::

    async with Publisher("http://127.0.0.1:8081", api_key) as pub:
        ids = await pub.publish("ann", "billing.invoice", "Invoice 42 is ready", data={"amount": 12})

or, once, with the key from ``NOTIFYLAB_API_KEY``::

    ids = await publish("http://127.0.0.1:8081", ["ann", "bob"], "deploy.done", "Deployed v1.2")

Each recipient's notification is appended to its inbox stream and delivered
like an operation's: in order, once, replayed to sessions that were away.
The answer maps each user to its notification id. A refusal raises
:class:`~notifylab.lab.client.ClientError` (``status``; ``body["field"]``
names the field at fault on a 400). Nothing here imports the server or the
store.

Each publish carries an ``Idempotency-Key`` (a fresh UUID, or one you give),
and is retried under it, on the next instance if need be, when the answer
did not come (a timeout, a dropped connection), was 503 (Redis away) or 429
(the key's rate limit, after its ``Retry-After``): whichever instance takes
the retry answers it with the first publish's ids, so nothing is published
twice.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp

from .client import ClientError

API_KEY_ENV = "NOTIFYLAB_API_KEY"
TIMEOUT = 60.0  # seconds; the server may wait up to 30 s for RabbitMQ's confirm
ATTEMPTS = 4  # tries of one publish (each on every instance given) before its error is raised
RETRY_WAIT_MAX = 10.0  # seconds: the longest Retry-After waited for
RETRIED_STATUSES = frozenset({429, 503})


class Publisher:
    """A client of the publish API of one instance (``url``), or of whichever
    of several instances answers (``url`` a list). ``api_key`` defaults to
    ``$NOTIFYLAB_API_KEY``."""

    def __init__(self, url: str | Sequence[str], api_key: str | None = None, *, timeout: float = TIMEOUT):
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError("Publisher needs an instance URL, or a list of them")
        key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
        if not key:
            raise ValueError(f"Publisher needs an API key (pass api_key or set {API_KEY_ENV})")
        self.urls = [u.rstrip("/") for u in urls]
        self._headers = {"Authorization": f"Bearer {key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"<Publisher {', '.join(self.urls)}>"

    async def publish(
        self,
        users: str | Iterable[str],
        type: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, str]:
        """Notify ``users`` (one username, or several): returns ``{user: id}``.
        ``type`` is a dotted name such as ``"billing.invoice"`` (not
        ``operation.*``); ``data`` a JSON object for the receiving client.
        ``idempotency_key``: give the same one when you call again for the
        same notification (after a crash of yours, say); by default each
        call makes its own, and its retries reuse it."""
        payload: dict[str, Any] = {"user": users} if isinstance(users, str) else {"users": list(users)}
        payload.update(type=type, title=title, body=body)
        if data is not None:
            payload["data"] = data
        key = idempotency_key or str(uuid.uuid4())
        answer = await self._post("/api/publish", payload, {**self._headers, "Idempotency-Key": key})
        return answer["ids"]

    async def _post(self, path: str, payload: dict[str, Any], headers: dict[str, str]) -> dict:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        error: Exception | None = None
        for attempt in range(ATTEMPTS):
            wait = 0.0
            for url in self.urls:
                try:
                    async with self._http.post(f"{url}{path}", json=payload, headers=headers) as response:
                        answer = await response.json(content_type=None)
                        if response.status < 400:
                            return answer
                        error = ClientError(response.status, answer if isinstance(answer, dict) else {})
                        if response.status not in RETRIED_STATUSES:
                            raise error
                        wait = max(wait, _retry_after(response.headers.get("Retry-After")))
                except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                    error = exc  # it may have been published: the retry's key tells the server
            if attempt < ATTEMPTS - 1:
                await asyncio.sleep(wait or 0.25 * 2**attempt)
        assert error is not None
        raise error

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _retry_after(header: str | None) -> float:
    try:
        return min(max(float(header or 0), 0.0), RETRY_WAIT_MAX)
    except ValueError:
        return 0.0


async def publish(
    url: str | Sequence[str],
    users: str | Iterable[str],
    type: str,
    title: str,
    body: str = "",
    data: dict[str, Any] | None = None,
    *,
    api_key: str | None = None,
) -> dict[str, str]:
    """Publish once through a :class:`Publisher` made for the call (the key
    from ``api_key`` or ``$NOTIFYLAB_API_KEY``); returns ``{user: id}``."""
    async with Publisher(url, api_key) as publisher:
        return await publisher.publish(users, type, title, body, data)


__all__ = ["Publisher", "publish"]
