"""The embedded mode (memory:// URLs): one process, no RabbitMQ, no Redis."""

from __future__ import annotations

import subprocess
import sys

import fakeredis
import pytest

from notifylab.config import ConfigError, Settings
from notifylab.lab import Lab
from notifylab.lab.client import Client
from notifylab.store.inbox import Inbox
from notifylab.store.operations import Operations, TransitionRefused
from support import new_username

MEMORY = {"NOTIFYLAB_BROKER_URL": "memory://", "NOTIFYLAB_REDIS_URL": "memory://"}


@pytest.fixture
async def embedded(tmp_path):
    async with Lab(MEMORY, log_dir=tmp_path) as lab:
        yield await lab.start_server(instance_id="solo")


async def test_the_embedded_mode_runs_end_to_end(embedded):
    user = new_username()
    async with Client(embedded.url) as laptop, Client(embedded.url) as phone:
        await laptop.register(user, "memory only!")
        await phone.login(user, "memory only!")
        for client in (laptop, phone):
            await client.connect()
            await client.wait_for(lambda c=client: c.hello is not None)
        op = await laptop.start("report", steps=3, step_seconds=0.02)
        for client in (laptop, phone):
            final = await client.wait_operation(op["id"])
            assert final["type"] == "operation.succeeded"
            assert [n["type"] for n in client.notifications] == [
                "operation.queued",
                "operation.started",
                "operation.progress",
                "operation.progress",
                "operation.progress",
                "operation.succeeded",
            ]
        buggy = await phone.start("export", steps=2, step_seconds=0.01, error_at=1)
        assert "gave up after 3 attempts" in (await laptop.wait_operation(buggy["id"]))["message"]
        assert laptop.duplicates == phone.duplicates == 0
        assert await laptop.mark_read() == 0
        await phone.wait_for(lambda: phone.unread == 0)
    assert "it cannot be scaled to several instances" in embedded.log_tail(50)


def test_the_embedded_mode_needs_both_urls_in_memory():
    with pytest.raises(ConfigError, match="both"):
        Settings.from_env({"NOTIFYLAB_BROKER_URL": "memory://"})


def test_a_separate_worker_is_refused_in_the_embedded_mode():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "notifylab",
            "worker",
            "--broker-url",
            "memory://",
            "--redis-url",
            "memory://",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "cannot share memory://" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
async def memory_store():
    settings = Settings.from_env({}, prefix="unit")
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    inbox = Inbox(redis, settings)
    yield inbox, Operations(redis, settings, inbox)
    await redis.aclose()


async def test_each_notification_names_its_predecessor(memory_store):
    inbox, _ = memory_store
    first = await inbox.append("ann", {"n": 1})
    second = await inbox.append("ann", {"n": 2})
    assert first["prev"] == "0-0" and second["prev"] == first["id"]
    assert [n["n"] for n in await inbox.after("ann", first["id"])] == [2]


async def test_the_read_mark_never_moves_back_nor_past_the_newest(memory_store):
    inbox, _ = memory_store
    ids = [(await inbox.append("ann", {"n": i, "type": "notification"}))["id"] for i in range(3)]
    assert await inbox.mark_read("ann", ids[1]) == (ids[1], 1)
    assert await inbox.mark_read("ann", ids[0]) == (ids[1], 1)
    assert await inbox.mark_read("ann", "99999999999999-0") == (ids[2], 0)


async def test_an_ended_operation_refuses_further_transitions(memory_store):
    _, operations = memory_store
    op, queued = await operations.create("ann", "report", {"steps": 2, "step_seconds": 0.1})
    assert queued["type"] == "operation.queued" and queued["state"] == "queued"
    await operations.transition(op.id, "operation.started", attempts=1)
    await operations.transition(op.id, "operation.cancelled")
    with pytest.raises(TransitionRefused, match="cancelled"):
        await operations.transition(op.id, "operation.progress", step=1)
    with pytest.raises(TransitionRefused):
        await operations.transition(op.id, "operation.succeeded")
