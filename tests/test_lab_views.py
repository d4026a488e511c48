"""The lab's inspectors against a real cluster: what RabbitView and RedisView
show must be what the servers, the worker and the clients actually did."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from notifylab.lab import free_port
from notifylab.lab.rabbitmq_view import ManagementUnavailable, RabbitView
from notifylab.lab.redis_view import RedisView
from notifylab.lab.tables import Table
from support import BROKER, REDIS, servers

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def rabbit(stack) -> AsyncIterator[RabbitView]:
    async with RabbitView(prefix=stack.env["NOTIFYLAB_PREFIX"]) as view:
        yield view


@pytest.fixture
async def rview(stack) -> AsyncIterator[RedisView]:
    async with RedisView(prefix=stack.env["NOTIFYLAB_PREFIX"], redis_url=REDIS) as view:
        yield view


# -- Table and wait_until -----------------------------------------------------


def test_a_table_is_a_list_of_rows_shown_escaped_and_deterministic(monkeypatch):
    table = Table([{"name": "<b>ann</b>", "n": 1}, {"name": "bob", "n": None}], columns=["n", "name"])
    assert len(table) == 2 and table[0]["name"] == "<b>ann</b>" and [r["n"] for r in table] == [1, None]
    html = table._repr_html_()
    assert "&lt;b&gt;ann&lt;/b&gt;" in html and "<b>" not in html
    assert html.index("<th>n</th>") < html.index("<th>name</th>")
    assert repr(table) == "n  name\n-  ----------\n1  <b>ann</b>\n   bob\n(2 rows)"
    assert list(table.df.columns) == ["n", "name"] and table.df.shape == (2, 2)
    assert Table([{"b": 1, "a": 2}]).columns == ["b", "a"]
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match=r"pip install notifylab\[kit\]"):
        _ = table.df


async def test_wait_until_returns_the_value_and_gives_up_saying_what_it_saw(rabbit):
    answers = iter([0, [], "ready"])
    assert await rabbit.wait_until(lambda: next(answers), timeout=2, interval=0.01) == "ready"

    async def no_jobs() -> bool:
        return any(row["name"] == "no-such-queue" for row in await rabbit.queues())

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"last returned False; last seen: queues\(\) -> \["):
        await rabbit.wait_until(no_jobs, timeout=0.5, interval=0.05)
    with pytest.raises(TimeoutError, match="last returned"):  # a check that hangs is bounded too
        await rabbit.wait_until(lambda: asyncio.sleep(60), timeout=0.3)
    assert time.monotonic() - started < 3


def test_the_views_import_neither_the_server_nor_the_store():
    code = (
        "import sys, notifylab.lab.redis_view, notifylab.lab.rabbitmq_view\n"
        "assert 'notifylab.lab.redis_view' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.startswith(('notifylab.store', 'notifylab.server'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- RabbitView -----------------------------------------------------------------


async def test_an_unreachable_management_api_is_one_clear_error():
    async with RabbitView(api_url=f"http://127.0.0.1:{free_port()}") as view:
        with pytest.raises(ManagementUnavailable, match="rabbitmq-plugins enable rabbitmq_management"):
            await view.queues()


async def test_exchanges_and_queues_of_the_prefix(stack, rabbit):
    prefix = stack.env["NOTIFYLAB_PREFIX"]
    exchanges = await rabbit.exchanges()
    assert {"name": f"{prefix}.events", "type": "topic", "durable": True} in exchanges
    assert all(row["name"].startswith(prefix + ".") for row in exchanges)
    names = [row["name"] for row in await rabbit.queues()]
    assert names == sorted(names)
    assert {f"{prefix}.{name}" for name in ("jobs", "jobs.dead", "instance.a", "instance.b")} <= set(names)
    # The worker's consumer, exact over AMQP at once, in the statistics within a refresh or two.
    assert (await rabbit.exact_count(f"{prefix}.jobs"))[1] == 1

    async def worker_counted() -> bool:
        return any(r["name"] == f"{prefix}.jobs" and r["consumers"] == 1 for r in await rabbit.queues())

    await rabbit.wait_until(worker_counted, timeout=15)


async def test_an_instance_queue_is_bound_to_a_user_only_while_the_user_is_there(stack, clients, rabbit):
    url_a, _ = servers(stack)
    ann = await clients(url_a)
    key = f"user.{ann.user}"

    async def bound() -> dict[str, list[str]] | None:
        seen = await rabbit.instance_bindings()
        return seen if key in seen.get("a", []) else None

    seen = await rabbit.wait_until(bound)
    assert key not in seen["b"]
    assert not any(k.startswith("control.") for keys in seen.values() for k in keys)
    prefix = stack.env["NOTIFYLAB_PREFIX"]
    rows = await rabbit.bindings(f"{prefix}.instance.a")  # the raw rows keep control.#
    assert {(r["source"], r["routing_key"]) for r in rows} >= {
        (f"{prefix}.events", "control.#"),
        (f"{prefix}.events", key),
    }
    assert {(r["destination"], r["instance"]) for r in rows} == {(f"{prefix}.instance.a", "a")}

    await ann.close()

    async def unbound() -> bool:
        seen = await rabbit.instance_bindings()
        return "a" in seen and key not in seen["a"]

    await rabbit.wait_until(unbound)


async def test_exact_count_is_exact_at_once_and_counts_ready_messages(stack, rabbit):
    name = f"{stack.env['NOTIFYLAB_PREFIX']}.tmp.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()  # publisher confirms: each publish is in the queue on return
        queue = await channel.declare_queue(name)
        try:
            for i in range(3):
                await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=name)
            assert await rabbit.exact_count(name) == (3, 0)
            # A consumer holding one unacked message: ready drops to 2, one consumer.
            await channel.set_qos(prefetch_count=1)
            held: list[aio_pika.abc.AbstractIncomingMessage] = []
            await queue.consume(held.append)

            async def one_taken() -> bool:
                return await rabbit.exact_count(name) == (2, 1)

            await rabbit.wait_until(one_taken, timeout=5)
            assert len(held) == 1
        finally:
            await channel.queue_delete(name)
    with pytest.raises(LookupError, match=name):
        await rabbit.exact_count(name)


# -- RedisView ------------------------------------------------------------------


async def test_sessions_and_sockets_of_a_user_on_two_instances(stack, clients, rview):
    url_a, url_b = servers(stack)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    sessions = await rview.sessions(first.user)
    assert len(sessions) == 2
    assert sorted(r["id"] for r in sessions) == sorted(s["id"] for s in await first.sessions())
    assert all(
        0 < r["ttl"] <= 7 * 24 * 3600 and r["device"] and r["created"] <= r["last_seen"] for r in sessions
    )

    sockets = await rview.sockets(first.user)
    by_sid = {r["sid"]: r for r in sockets}
    assert set(by_sid) == {first.sio.get_sid(), second.sio.get_sid()}
    assert by_sid[first.sio.get_sid()]["instance"] == "a" and by_sid[second.sio.get_sid()]["instance"] == "b"
    assert all(r["live"] and r["user"] == first.user and r["transport"] == "websocket" for r in sockets)
    assert {r["session"] for r in sockets} == {r["id"] for r in sessions}
    everyone = await rview.sockets()
    assert {r["sid"]: r["user"] for r in everyone if r["user"] == first.user} == {
        sid: first.user for sid in by_sid
    }


async def test_instances_show_the_heartbeats_of_a_and_b(stack, rview):
    url_a, url_b = servers(stack)
    rows = {r["id"]: r for r in await rview.instances()}
    assert set(rows) == {"a", "b"}
    assert [rows["a"]["port"], rows["b"]["port"]] == [int(url.rsplit(":", 1)[1]) for url in (url_a, url_b)]
    assert all(r["routing"] == "topic" and 0 < r["ttl"] <= 15 for r in rows.values())


async def test_operations_inbox_and_read_mark_match_what_the_client_received(stack, clients, rview):
    me = await clients(servers(stack)[0])
    op = await me.start("report", steps=2, step_seconds=0.05)
    await me.wait_operation(op["id"])

    operations = await rview.operations(me.user)
    assert [(r["id"], r["kind"], r["state"], r["step"], r["steps"], r["attempts"]) for r in operations] == [
        (op["id"], "report", "succeeded", 2, 2, 1)
    ]
    assert operations[0]["worker"]

    inbox = await rview.inbox(me.user)
    received = me.of_operation(op["id"])
    assert [(r["id"], r["type"]) for r in inbox] == [(n["id"], n["type"]) for n in received]
    assert next(r["type"] for r in inbox) == "operation.queued" and inbox[-1]["state"] == "succeeded"
    assert [r["prev"] for r in inbox] == ["0-0"] + [r["id"] for r in inbox[:-1]]
    tail = await rview.inbox(me.user, count=2)  # a window: its first prev is still the entry before it
    assert [r["id"] for r in tail] == [r["id"] for r in inbox[-2:]] and tail[0]["prev"] == inbox[-3]["id"]

    # Unread counts inbox items only: of this operation, its ending (succeeded).
    assert await rview.read_mark(me.user) == "0-0" and await rview.unread(me.user) == 1
    assert await rview.unread(me.user) == (await me.inbox())["unread"]  # as the server counts
    await me.mark_read(inbox[-2]["id"])  # up to the last progress: the ending is still unread
    assert await rview.read_mark(me.user) == inbox[-2]["id"] and await rview.unread(me.user) == 1
    await me.mark_read(inbox[-1]["id"])
    assert await rview.unread(me.user) == 0


async def test_keys_lists_the_prefix_keys_with_their_types(stack, clients, rview):
    me = await clients(servers(stack)[0])
    op = await me.start("report", steps=1, step_seconds=0.01)
    await me.wait_operation(op["id"])
    prefix = stack.env["NOTIFYLAB_PREFIX"]
    types = {r["key"]: r["type"] for r in await rview.keys()}
    expected = {
        f"{prefix}:inbox:{me.user}": "stream",
        f"{prefix}:ops:{me.user}": "zset",
        f"{prefix}:op:{op['id']}": "hash",
        f"{prefix}:user:{me.user}": "hash",
        f"{prefix}:user-sessions:{me.user}": "set",
        f"{prefix}:instance:a": "string",
    }
    assert expected.items() <= types.items()
    assert list(types) == sorted(types) and all(k.startswith(prefix + ":") for k in types)
    assert [r["key"] for r in await rview.keys(f"inbox:{me.user}")] == [f"{prefix}:inbox:{me.user}"]
