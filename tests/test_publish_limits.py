"""The publish API's limits (issue 15): an ``Idempotency-Key`` makes a
retried POST publish once, on whichever instance it lands; each API key is
held to ``NOTIFYLAB_PUBLISH_RATE`` notifications a second over all
instances, past which it gets 429 with ``Retry-After`` and publishes
nothing. Against real instances, RabbitMQ and Redis, judged by the streams."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from notifylab.lab import Lab
from notifylab.lab.client import Client
from notifylab.lab.publisher import Publisher
from support import PASSWORD, new_username, servers, two_instances_and_a_worker

KEY = "limits-key-one-0123456789abcdef"
OTHER_KEY = "limits-key-two-0123456789abcdef"
RATE = 20  # notifications a second per key: small, so that a test reaches it at once


@pytest.fixture(scope="module")
async def lab(services: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """Instances a and b, two API keys, and a rate small enough to reach."""
    async with two_instances_and_a_worker(
        tmp_path_factory.mktemp("limits"),
        NOTIFYLAB_API_KEY=f"{KEY}, {OTHER_KEY}",
        NOTIFYLAB_PUBLISH_RATE=str(RATE),
    ) as lab:
        yield lab


@pytest.fixture
async def user(lab: Lab) -> AsyncIterator[Client]:
    client = Client(servers(lab)[0])
    await client.register(new_username(), PASSWORD)
    yield client
    await client.close()


async def post(
    url: str, payload: dict, key: str = KEY, once: str | None = None
) -> tuple[int, dict, dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if once is not None:
        headers["Idempotency-Key"] = once
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/publish", data=json.dumps(payload), headers=headers) as r:
            return r.status, await r.json(content_type=None), dict(r.headers)


def note(user: str, **changes: Any) -> dict:
    return {"user": user, "type": "billing.invoice", "title": "Invoice 42 is ready", **changes}


async def stream(client: Client) -> list[dict]:
    return (await client.inbox(limit=1000))["notifications"]


async def rate_window() -> None:
    """Wait until a full second's burst is back for both keys."""
    await asyncio.sleep(1.1)


# -- Idempotency-Key ----------------------------------------------------------


async def test_a_retry_with_the_same_key_gets_the_first_answer_on_any_instance(lab, user):
    await rate_window()
    url_a, url_b = servers(lab)
    once = str(uuid.uuid4())
    first = await post(url_a, note(user.user, data={"n": 1, "m": 2}), once=once)
    assert first[0] == 202 and "Idempotent-Replayed" not in first[2]
    # The same publication again, through the other instance, keys of data in another order.
    again = await post(url_b, note(user.user, data={"m": 2, "n": 1}), once=once)
    assert again[0] == 202 and again[1] == first[1]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert [n["id"] for n in await stream(user)] == [first[1]["ids"][user.user]]

    # The same key under the other API key is another key: keys are the caller's own.
    other = await post(url_a, note(user.user), key=OTHER_KEY, once=once)
    assert other[0] == 202 and other[1] != first[1]
    assert len(await stream(user)) == 2


async def test_concurrent_retries_with_one_key_publish_once(lab, user):
    await rate_window()
    url_a, url_b = servers(lab)
    once = str(uuid.uuid4())
    answers = await asyncio.gather(
        *(post((url_a, url_b)[i % 2], note(user.user), once=once) for i in range(10))
    )
    assert {status for status, _, _ in answers} == {202}
    assert len({json.dumps(body) for _, body, _ in answers}) == 1
    assert sum(1 for _, _, headers in answers if "Idempotent-Replayed" not in headers) == 1
    assert len(await stream(user)) == 1


async def test_the_key_reused_for_another_publication_is_422_and_publishes_nothing(lab, user):
    await rate_window()
    url = servers(lab)[0]
    once = str(uuid.uuid4())
    assert (await post(url, note(user.user), once=once))[0] == 202
    status, body, _ = await post(url, note(user.user, title="Another invoice"), once=once)
    assert status == 422 and body["field"] == "Idempotency-Key" and "different" in body["error"]
    assert [n["title"] for n in await stream(user)] == ["Invoice 42 is ready"]


@pytest.mark.parametrize("value", ["", " ", "é-key", "x" * 256, "tab\tin"])
async def test_a_malformed_key_is_400_and_publishes_nothing(lab, user, value):
    await rate_window()
    status, body, _ = await post(servers(lab)[0], note(user.user), once=value)
    assert status == 400 and body["field"] == "Idempotency-Key", body
    assert await stream(user) == []


async def test_a_refused_publication_does_not_use_up_its_key(lab, user):
    """Nothing was published, so nothing is remembered: the corrected
    request under the same key goes through."""
    await rate_window()
    url = servers(lab)[0]
    once = str(uuid.uuid4())
    status, body, _ = await post(
        url, {"users": [user.user, "nosuch_user"], "type": "a.b", "title": "t"}, once=once
    )
    assert status == 400 and "nosuch_user" in body["error"]
    status, body, _ = await post(url, {"users": [user.user], "type": "a.b", "title": "t"}, once=once)
    assert status == 202 and len(await stream(user)) == 1


# -- the rate limit -------------------------------------------------------------


async def test_past_its_rate_a_key_gets_429_with_retry_after_and_publishes_nothing(lab, user):
    await rate_window()
    url_a, url_b = servers(lab)
    # Publish, alternating instances, until refused: a burst (one second's
    # worth) and what came back at the rate meanwhile go through.
    statuses: list[int] = []
    started = time.monotonic()
    while 429 not in statuses and len(statuses) < 3 * RATE:
        status, body, headers = await post((url_a, url_b)[len(statuses) % 2], note(user.user, title="n"))
        statuses.append(status)
    taken = statuses.count(202)
    assert statuses == [202] * taken + [429]
    assert RATE <= taken <= RATE + (time.monotonic() - started) * RATE + 1
    assert "20 notifications a second" in body["error"] and int(headers["Retry-After"]) >= 1
    # The other key has a budget of its own.
    assert (await post(url_b, note(user.user, title="other key"), key=OTHER_KEY))[0] == 202
    titles = [n["title"] for n in await stream(user)]
    assert titles == ["n"] * taken + ["other key"]  # the refused one is not there

    # The budget comes back at the rate: after a second, a second's worth again.
    await asyncio.sleep(int(headers["Retry-After"]))
    assert (await post(url_a, note(user.user, title="later")))[0] == 202


async def test_a_call_costs_one_unit_per_recipient_and_a_bigger_one_than_the_burst_waits_for_a_full_budget(
    lab, user
):
    url = servers(lab)[0]
    others = [Client(url) for _ in range(RATE)]
    try:
        for other in others:
            await other.register(new_username(), PASSWORD)
        names = [o.user for o in others]
        await rate_window()
        assert (await post(url, {"users": names, "type": "a.b", "title": "all"}))[0] == 202  # the burst
        status, _, headers = await post(url, note(user.user))
        assert status == 429
        await asyncio.sleep(int(headers["Retry-After"]))  # a full budget again
        # More recipients than the burst holds: taken from the full budget ...
        assert (await post(url, {"users": [*names, user.user], "type": "a.b", "title": "big"}))[0] == 202
        assert (await post(url, note(user.user)))[0] == 429  # ... and paid back before the next
        assert [n["title"] for n in await stream(user)] == ["big"]
    finally:
        await asyncio.gather(*(o.close() for o in others))


async def test_the_publisher_retries_a_429_under_its_key_and_publishes_each_once(lab, user):
    """The Python publisher waits out Retry-After and retries with the same
    Idempotency-Key: every notification arrives, none twice."""
    await rate_window()
    count = RATE + 10
    started = time.monotonic()
    async with Publisher(servers(lab), KEY) as publisher:
        ids = [
            (await publisher.publish(user.user, "billing.invoice", f"n{i}"))[user.user] for i in range(count)
        ]
    assert time.monotonic() - started >= 0.4  # some had to wait for the budget
    assert [n["id"] for n in await stream(user)] == ids and len(set(ids)) == count
