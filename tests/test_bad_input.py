"""Bad input gets a clear error, and the instance keeps serving everyone else."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import socketio

from notifylab.lab.client import Client, ClientError
from support import PASSWORD, servers


@pytest.fixture
async def http(stack):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def answer(response: aiohttp.ClientResponse) -> tuple[int, dict]:
    return response.status, await response.json()


@pytest.mark.parametrize(
    "payload, status, fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"username": "A!", "password": "long enough"}', 400, "username must be"),
        (b'{"username": "fine_name", "password": "short"}', 400, "password must be"),
    ],
)
async def test_register_rejects_malformed_input(stack, http, payload, status, fragment):
    url = servers(stack)[0]
    async with http.post(
        f"{url}/api/register", data=payload, headers={"Content-Type": "application/json"}
    ) as r:
        code, body = await answer(r)
    assert code == status and fragment in body["error"]


async def test_an_oversized_body_is_refused_with_413(stack, http):
    url = servers(stack)[0]
    async with http.post(
        f"{url}/api/login",
        data=b'{"username": "' + b"x" * 100_000 + b'"}',
        headers={"Content-Type": "application/json"},
    ) as r:
        code, body = await answer(r)
    assert code == 413 and "error" in body


@pytest.mark.parametrize(
    "request_body, field, fragment",
    [
        ({"kind": "teleport", "params": {}}, "kind", "unknown operation kind"),
        ({"kind": "report", "params": {"steps": 0}}, "params.steps", "between 1 and 100"),
        ({"kind": "report", "params": {"steps": 1000}}, "params.steps", "between 1 and 100"),
        ({"kind": "report", "params": {"steps": 2.5}}, "params.steps", "whole number"),
        ({"kind": "report", "params": {"steps": True}}, "params.steps", "whole number"),
        ({"kind": "report", "params": {"step_seconds": "fast"}}, "params.step_seconds", "a number"),
        ({"kind": "report", "params": {"steps": 3, "fail_at": 5}}, "params.fail_at", "at most steps"),
        ({"kind": "report", "params": {"colour": "red"}}, "params.colour", "unknown parameter"),
        ({"kind": "report", "params": [1]}, "params", "must be an object"),
    ],
)
async def test_bad_operations_name_the_field(stack, clients, request_body, field, fragment):
    me = await clients(servers(stack)[0])
    with pytest.raises(ClientError) as rest:
        await me.request("POST", "/api/operations", request_body)
    assert rest.value.status == 400 and rest.value.body["field"] == field
    assert fragment in rest.value.body["error"]
    ack = await me.sio.call("operation:start", request_body, timeout=5)
    assert ack == {"ok": False, **rest.value.body}


async def test_requests_without_or_with_a_forged_session_are_401(stack, http):
    url = servers(stack)[0]
    for cookie in (None, "forged-" + "x" * 40, "short"):
        headers = {"Cookie": f"notifylab_session={cookie}"} if cookie else {}
        async with http.get(f"{url}/api/operations", headers=headers) as r:
            code, body = await answer(r)
        assert code == 401 and body == {"error": "log in first"}


async def test_sockets_without_or_with_a_forged_session_are_refused(stack):
    url = servers(stack)[0]
    for token in (None, "forged-" + "x" * 40):
        client = Client(url, reconnect=False)
        client.token = token
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect()
        assert not client.connected
        assert client.connect_errors and "unauthorized" in str(client.connect_errors[-1])
        await client.close()


async def test_another_users_operation_is_not_found_by_rest_or_socket(stack, clients):
    url_a, url_b = servers(stack)
    owner = await clients(url_a)
    intruder = await clients(url_b)
    op = await owner.start("train", steps=30, step_seconds=0.1)
    for path in (f"/api/operations/{op['id']}", f"/api/operations/{op['id']}/cancel"):
        with pytest.raises(ClientError) as refused:
            await intruder.request("GET" if path.endswith(op["id"]) else "POST", path)
        assert refused.value.status == 404
    with pytest.raises(ClientError, match="no such operation"):
        await intruder.cancel(op["id"])
    await owner.cancel(op["id"])
    await owner.wait_operation(op["id"])
    # Before saying nothing reached the intruder, give it time to: its own
    # operation, started after the owner's ended, must arrive first.
    own = await intruder.start("report", steps=1, step_seconds=0.01)
    await intruder.wait_operation(own["id"])
    await asyncio.sleep(0.3)
    assert not intruder.of_operation(op["id"])


@pytest.mark.parametrize(
    "event, data, fragment",
    [
        ("operation:cancel", {"id": None}, "no such operation"),
        ("inbox:read", {"up_to": "yesterday"}, "up_to must be"),
        ("sync", {"after": 42}, "after must be"),
        ("operation:start", "not an object", "must be an object"),
    ],
)
async def test_bad_socket_events_are_acked_with_an_error(stack, clients, event, data, fragment):
    me = await clients(servers(stack)[1])
    ack = await me.sio.call(event, data, timeout=5)
    assert ack["ok"] is False and fragment in ack["error"]
    assert me.connected  # the socket stays up


async def test_the_inbox_query_is_checked(stack, clients):
    me = await clients(servers(stack)[0], connect=False)
    for query, field in (("?after=nope", "after"), ("?limit=0", "limit"), ("?limit=x", "limit")):
        with pytest.raises(ClientError) as refused:
            await me.request("GET", "/api/inbox" + query)
        assert refused.value.status == 400 and refused.value.body["field"] == field


async def test_unknown_api_routes_answer_json(stack, http):
    async with http.get(f"{servers(stack)[0]}/api/nothing-here") as r:
        code, body = await answer(r)
    assert code == 404 and "error" in body


async def test_after_all_that_the_instance_still_serves(stack, clients):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    other = await clients(url_b, user=me.user)
    op = await me.start("report", steps=2, step_seconds=0.02)
    assert (await other.wait_operation(op["id"]))["type"] == "operation.succeeded"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url_a}/api/login", json={"username": me.user, "password": PASSWORD}) as r:
            assert r.status == 200
