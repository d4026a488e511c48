"""Quotas and fairness, end to end (issue 8, finding 6): a user may have at
most ``max_active_operations`` operations active at once, across instances,
and one user's backlog does not make another user's operation wait for it.

The cap is counted in Redis (``store/operations.py``), the fairness is the
jobs queue's priority (``bus/jobs.py``); test_worker_unit.py has the rules in
process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from notifylab.lab import Lab
from notifylab.lab.client import Client, ClientError
from support import new_prefix, servers

CAP = 6
REFUSED = f"at most {CAP} active operations; wait for one to end or cancel one"
# Long enough to stay active for the whole test; cancelled at its end.
LONG = {"kind": "report", "params": {"steps": 100, "step_seconds": 30}}


@pytest.fixture(scope="module")
async def lab(services: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """Instances a and b and one worker, with a cap of CAP."""
    lab = Lab(
        {"NOTIFYLAB_PREFIX": new_prefix(), "NOTIFYLAB_MAX_ACTIVE_OPERATIONS": str(CAP)},
        log_dir=tmp_path_factory.mktemp("quotas"),
    )
    async with lab:
        await lab.start_server(instance_id="a")
        await lab.start_server(instance_id="b")
        await lab.start_worker()
        yield lab


async def post_operation(client: Client, body: dict = LONG) -> dict:
    return (await client.request("POST", "/api/operations", body))["operation"]


async def start_long(client: Client) -> dict:
    """Over the socket when connected, else over REST."""
    return await client.start(LONG["kind"], **LONG["params"])


async def active(client: Client) -> list[dict]:
    ops = (await client.request("GET", "/api/operations"))["operations"]
    return [op for op in ops if op["state"] in {"queued", "running", "restarted"}]


async def cancel_all(client: Client) -> None:
    """Free the worker for the next test (it notices a cancel within 0.2 s)."""
    for op in await active(client):
        await client.request("POST", f"/api/operations/{op['id']}/cancel")


async def test_one_more_than_the_cap_is_refused_with_429_over_rest_and_the_socket(lab, clients):
    url_a, url_b = servers(lab)
    rest = await clients(url_a, connect=False)
    live = await clients(url_b, user=rest.user)
    try:
        for _ in range(CAP):
            await post_operation(rest)

        with pytest.raises(ClientError) as refused:
            await post_operation(rest)
        assert refused.value.status == 429 and refused.value.body == {"error": REFUSED}
        ack = await live.sio.call("operation:start", LONG, timeout=10)
        assert ack == {"ok": False, "error": REFUSED}

        assert len((await rest.request("GET", "/api/operations"))["operations"]) == CAP  # none recorded
    finally:
        await cancel_all(rest)


async def test_an_operation_that_ends_frees_its_slot(lab, clients):
    me = await clients(servers(lab)[0])
    try:
        succeeded = await me.start("report", steps=1, step_seconds=0.05)
        failed = await me.start("report", steps=2, step_seconds=0.05, fail_at=1)
        assert (await me.wait_operation(succeeded["id"]))["type"] == "operation.succeeded"
        assert (await me.wait_operation(failed["id"]))["type"] == "operation.failed"

        longs = [await start_long(me) for _ in range(CAP)]  # the two ended ones do not count
        with pytest.raises(ClientError, match="at most"):
            await start_long(me)
        await me.cancel(longs[0]["id"])
        await start_long(me)  # the cancelled one's slot
        with pytest.raises(ClientError) as refused:
            await start_long(me)
        assert refused.value.body == {"ok": False, "error": REFUSED}
    finally:
        await cancel_all(me)


async def test_two_instances_racing_accept_exactly_the_cap(lab, clients):
    url_a, url_b = servers(lab)
    over_rest = await clients(url_a, connect=False)
    over_socket = await clients(url_b, user=over_rest.user)

    async def start(client: Client) -> dict | ClientError:
        try:
            return await start_long(client)  # REST when not connected, else the socket
        except ClientError as exc:
            return exc

    try:
        results = await asyncio.gather(*(start(c) for c in [over_rest, over_socket] * CAP))
        accepted = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, ClientError)]
        assert len(accepted) == CAP, f"{len(accepted)} of {2 * CAP} accepted with a cap of {CAP}"
        assert all(r.body["error"] == REFUSED for r in refused) and len(refused) == CAP
        assert {op["id"] for op in await active(over_rest)} == {op["id"] for op in accepted}
    finally:
        await cancel_all(over_rest)


async def test_a_backlog_of_one_user_does_not_hold_back_another(make_lab, clients):
    # One worker with two slots; ann's backlog is 10 operations of 3 s: 15 s of work.
    lab = await make_lab(
        servers=1, workers=1, NOTIFYLAB_WORKER_CONCURRENCY="2", NOTIFYLAB_MAX_ACTIVE_OPERATIONS="10"
    )
    url = servers(lab)[0]
    ann = await clients(url)
    backlog = [await ann.start("train", steps=10, step_seconds=0.3) for _ in range(10)]
    bob = await clients(url)
    quick = await bob.start("report", steps=1, step_seconds=0.3)

    # bob waits for the next free slot (ann's first two end after 3 s), not for her backlog.
    final = await bob.wait_operation(quick["id"], timeout=8)
    assert final["type"] == "operation.succeeded"
    states = [
        (await ann.request("GET", f"/api/operations/{op['id']}"))["operation"]["state"] for op in backlog
    ]
    assert states.count("queued") >= 5, f"ann's operations when bob's ended: {states}"
