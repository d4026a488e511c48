"""Operations through real workers: success, failure, cancel, crash, dead letters."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from notifylab.lab.client import ClientError
from support import BROKER, servers


async def test_an_operation_can_fail_at_a_step(stack, clients):
    me = await clients(servers(stack)[0])
    op = await me.start("report", steps=4, step_seconds=0.02, fail_at=3)
    final = await me.wait_operation(op["id"])
    assert final["type"] == "operation.failed" and final["step"] == 3
    assert "step 3 failed" in final["message"]
    assert (await me.request("GET", f"/api/operations/{op['id']}"))["operation"]["state"] == "failed"


async def test_any_session_can_cancel_and_every_session_hears_it(stack, clients):
    url_a, url_b = servers(stack)
    starter = await clients(url_a)
    other = await clients(url_b, user=starter.user)
    op = await starter.start("train", steps=50, step_seconds=0.1)
    await other.wait_for(lambda: any(n["type"] == "operation.progress" for n in other.of_operation(op["id"])))

    cancelled = await other.cancel(op["id"])
    assert cancelled["state"] == "cancelled"
    final = await starter.wait_operation(op["id"])
    assert final["type"] == "operation.cancelled"
    await asyncio.sleep(0.5)  # the worker notices within a poll; nothing may follow the cancel
    assert starter.of_operation(op["id"])[-1]["type"] == "operation.cancelled"
    with pytest.raises(ClientError, match="already cancelled"):
        await starter.cancel(op["id"])


async def test_a_worker_killed_mid_operation_hands_it_to_another(make_lab, clients):
    lab = await make_lab(servers=1, workers=2)
    me = await clients(servers(lab)[0])
    op = await me.start("train", steps=10, step_seconds=0.15)
    await me.wait_for(lambda: sum(n["type"] == "operation.progress" for n in me.of_operation(op["id"])) >= 2)

    record = await me.request("GET", f"/api/operations/{op['id']}")
    running_on = next(p for p in lab.processes if p.name == record["operation"]["worker"])
    await running_on.kill()

    final = await me.wait_operation(op["id"], 30)
    assert final["type"] == "operation.succeeded"
    notes = me.of_operation(op["id"])
    restarted = [n for n in notes if n["type"] == "operation.restarted"]
    assert len(restarted) == 1 and running_on.name not in restarted[0]["message"]
    steps = [n["step"] for n in notes if n["type"] == "operation.progress"]
    assert steps == list(range(1, 11))  # it carried on from the last recorded step
    assert me.duplicates == 0


async def test_a_job_that_keeps_failing_is_dead_lettered_and_marked_failed(make_lab, clients):
    lab = await make_lab(servers=1, workers=1, NOTIFYLAB_MAX_ATTEMPTS="3")
    me = await clients(servers(lab)[0])
    op = await me.start("export", steps=3, step_seconds=0.02, error_at=2)
    final = await me.wait_operation(op["id"])
    assert final["type"] == "operation.failed"
    assert "gave up after 3 attempts" in final["message"] and "simulated bug at step 2" in final["message"]
    assert sum(n["type"] == "operation.restarted" for n in me.of_operation(op["id"])) == 2

    prefix = lab.env["NOTIFYLAB_PREFIX"]
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        dead = await channel.declare_queue(f"{prefix}.jobs.dead", passive=True)
        async with asyncio.timeout(10):
            message = await dead.get(fail=False)
            while message is None:
                await asyncio.sleep(0.1)
                message = await dead.get(fail=False)
        assert op["id"] in message.body.decode()
        await message.ack()


async def test_operations_are_listed_newest_first(stack, clients):
    me = await clients(servers(stack)[1], connect=False)
    first = await me.start("report", steps=1, step_seconds=0.01)
    second = await me.start("export", steps=1, step_seconds=0.01)
    listed = (await me.request("GET", "/api/operations"))["operations"]
    assert [o["id"] for o in listed] == [second["id"], first["id"]]
