"""The Socket.IO side of issue 8: sockets that outlive their session (finding
2), odd events and a Redis outage (finding 7), and an inbox a person keeps
(unread counts what is worth reading, not progress). Each test here failed
before its fix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import socketio

from notifylab.lab.client import Client, ClientError
from support import PrivateRedis, private_redis, servers


def log_of(lab, index: int = 0) -> str:
    path: Path = lab.processes[index].log_path
    return path.read_text(errors="replace")


# -- finding 2: a socket does not outlive its session --------------------------------------------


async def test_a_socket_whose_session_expires_is_disconnected_and_gets_nothing_more(make_lab, clients):
    lab = await make_lab(NOTIFYLAB_SESSION_TTL="4", NOTIFYLAB_SESSION_CHECK_SECONDS="1")
    url_a, url_b = servers(lab)
    stale = await clients(url_a)
    await asyncio.sleep(2)
    assert stale.connected and not stale.revoked  # a live session keeps its socket

    # Registered 4 s ago and not used since: the session expires, and the
    # next re-check (every second) ends its socket.
    await stale.wait_for(lambda: stale.revoked and not stale.connected, 8)

    fresh = await clients(url_b, user=stale.user)  # the user signs in again, elsewhere
    op = await fresh.start("report", steps=3, step_seconds=0.05)
    await fresh.wait_operation(op["id"])
    await asyncio.sleep(0.5)
    assert stale.of_operation(op["id"]) == [] and not stale.connected and not stale.reconnecting
    assert "its session" in log_of(lab) and "Traceback" not in log_of(lab)


# -- finding 7: odd events are answered ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args"),
    [
        (["a", "list"], ({},)),  # python-socketio raised TypeError (unhashable): no ack ever came
        ({"an": "object"}, ({},)),
        ("*", ()),  # went to the catch-all handler without the event's name
        ("connect", (1, 2, 3)),  # the lifecycle handlers raised TypeError on extra arguments
        ("disconnect", (1, 2, 3)),
        ("sync", ({"after": "0-0"}, "an extra argument")),  # was silently ignored
    ],
    ids=["list-name", "object-name", "star", "connect-3-args", "disconnect-3-args", "extra-argument"],
)
async def test_an_odd_event_is_refused_with_an_ack_and_the_socket_stays(stack, clients, name, args):
    url_a, _ = servers(stack)
    me = await clients(url_a)
    ack = await me.sio.call(name, args, timeout=5)
    assert isinstance(ack, dict) and ack["ok"] is False and ack["error"]
    assert me.connected
    assert (await me.call("sync", {"after": "0-0"}))["ok"]  # the socket still works
    assert "Traceback" not in log_of(stack)


async def test_an_event_over_the_size_limit_is_refused_at_once_and_the_client_comes_back(stack, clients):
    url_a, _ = servers(stack)
    me = await clients(url_a)
    started = time.monotonic()
    with pytest.raises(ConnectionError):  # the server closed the socket (1009, too big): no wait
        await me.call("sync", {"after": "0-0", "padding": "x" * 70_000}, timeout=10)
    assert time.monotonic() - started < 3
    await me.wait_for(lambda: me.connected and me.failovers == 1, 10)
    assert (await me.call("sync", {"after": "0-0"}))["ok"]
    assert "Traceback" not in log_of(stack)


# -- finding 7: a Redis outage is a clear "service unavailable" ----------------------------------


@pytest.fixture
async def doomed_redis() -> AsyncIterator[PrivateRedis]:
    """A Redis of the test's own, keeping nothing on disk, that the test kills."""
    async with private_redis() as redis:
        yield redis


async def test_during_a_redis_outage_events_and_connects_say_service_unavailable(
    make_lab, clients, doomed_redis
):
    lab = await make_lab(servers=1, workers=0, NOTIFYLAB_REDIS_URL=doomed_redis.url)
    (instance,) = servers(lab)
    me = await clients(instance)
    await doomed_redis.kill()

    for event, data in (("sync", {"after": "0-0"}), ("operation:start", {"kind": "report"})):
        with pytest.raises(ClientError) as refused:
            await me.call(event, data)
        assert refused.value.status == 503, refused.value.body
        assert refused.value.body["error"].startswith("service unavailable")
    assert me.connected

    # A new socket is refused at once, saying why (it hung with no connect_error).
    again = Client(instance, reconnect=False)
    again.token = me.token
    started = time.monotonic()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await again.connect()
        assert time.monotonic() - started < 5
        assert again.connect_errors and "service unavailable" in str(again.connect_errors[-1])
    finally:
        await again.close()
    assert "Traceback" not in log_of(lab)


# -- an inbox a person keeps: progress is an operation's state, not something to read -------------


async def test_a_ten_step_operation_adds_one_unread_and_every_count_agrees(stack, clients):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    other = await clients(url_b, user=me.user)
    op = await other.start("report", steps=10, step_seconds=0.02)
    await me.wait_operation(op["id"])
    await other.wait_operation(op["id"])
    assert len(me.of_operation(op["id"])) == 13  # the stream keeps every step, for recovery
    assert me.unread == other.unread == 1  # but only "succeeded" is something to read
    assert [n["type"] for n in me.inbox_items] == ["operation.succeeded"]

    new_tab = await clients(url_b, user=me.user)
    inbox = await new_tab.inbox()
    assert new_tab.hello["unread"] == inbox["unread"] == 1 and len(inbox["notifications"]) == 13

    # Read up to the last step: the outcome after it is still unread, everywhere.
    last_step = me.of_operation(op["id"])[-2]["id"]
    assert await me.mark_read(last_step) == 1
    assert await me.mark_read() == 0
    await other.wait_for(lambda: other.unread == 0, 10)
    await new_tab.wait_for(lambda: new_tab.unread == 0, 10)

    second = await me.start("export", steps=3, step_seconds=0.02, fail_at=2)
    await other.wait_operation(second["id"])
    for session in (me, other, new_tab):
        await session.wait_for(lambda s=session: s.unread == 1, 10)  # "failed"
    assert (await me.inbox())["unread"] == 1


async def test_a_restart_is_one_more_thing_to_read(make_lab, clients):
    lab = await make_lab(servers=1, workers=1)
    (url,) = servers(lab)
    me = await clients(url)
    op = await me.start("train", steps=10, step_seconds=0.2)
    await me.wait_for(lambda: any(n["type"] == "operation.progress" for n in me.of_operation(op["id"])))
    worker = lab.processes[1]
    await worker.kill()  # its job comes back to the next worker, which says "restarted"
    await worker.start()
    await me.wait_operation(op["id"], 30)
    assert [n["type"] for n in me.inbox_items] == ["operation.restarted", "operation.succeeded"]
    assert me.unread == (await me.inbox())["unread"] == 2
    late = await clients(url, user=me.user)
    assert late.hello["unread"] == 2


async def test_a_published_notification_is_one_unread_item_and_no_operation(make_lab, clients):
    lab = await make_lab(servers=1, workers=0, NOTIFYLAB_API_KEY="a-test-key-" + "k" * 24)
    (url,) = servers(lab)
    me = await clients(url)
    published = {"user": me.user, "type": "billing.invoice", "title": "Your invoice is ready"}
    headers = {"Authorization": "Bearer " + lab.env["NOTIFYLAB_API_KEY"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/publish", json=published, headers=headers) as response:
            assert response.status == 202, await response.text()
    await me.wait_for(lambda: len(me.notifications) == 1, 10)
    assert [n["type"] for n in me.inbox_items] == ["billing.invoice"]
    assert me.unread == (await me.inbox())["unread"] == 1
    assert me.operations == {}  # it belongs to no operation (its "operation" is "")


async def test_the_unread_count_and_the_inbox_items_follow_one_rule():
    """The store, in process: published notifications count, steps do not,
    and the newest items are found past any number of steps."""
    from fakes import SETTINGS, fake_redis
    from notifylab.protocol import is_inbox_item
    from notifylab.store.inbox import ITEMS_PAGE, Inbox

    redis = fake_redis()
    inbox = Inbox(redis, SETTINGS)
    types = ["operation.queued", "operation.started", "operation.restarted", "notification"]
    types += ["operation.progress"] * (2 * ITEMS_PAGE + 7) + ["operation.cancelled", "operation.progress"]
    ids = [(await inbox.append("ann", {"type": t, "operation": "x"}))["id"] for t in types]
    assert await inbox.unread("ann") == 3  # restarted, notification, cancelled
    assert [n["type"] for n in await inbox.latest_items("ann", 2)] == ["notification", "operation.cancelled"]
    assert len(await inbox.latest_items("ann", 10)) == 3
    assert await inbox.mark_read("ann", ids[2]) == (ids[2], 2)
    assert not is_inbox_item({"type": ""}) and not is_inbox_item({}) and is_inbox_item({"type": "news"})
    await redis.aclose()
