"""Accounts and sessions: cookies, listing, revocation across instances."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis
import socketio

from notifylab.lab.client import Client, ClientError
from notifylab.lab.redis_view import RedisView
from support import PASSWORD, REDIS, new_username, servers


async def test_the_cookie_is_httponly_samesite_and_works_on_every_instance(stack):
    url_a, url_b = servers(stack)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(
            f"{url_a}/api/register", json={"username": new_username(), "password": PASSWORD}
        ) as r:
            assert r.status == 201
            header = r.headers["Set-Cookie"]
        assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
        async with http.get(f"{url_b}/api/me") as r:
            assert r.status == 200
            assert (await r.json())["instance"] == "b"


async def test_the_password_is_stored_as_an_argon2_hash(stack):
    user = new_username()
    async with Client(servers(stack)[0]) as me:
        await me.register(user, PASSWORD)
    redis = aioredis.from_url(REDIS, decode_responses=True)
    stored = await redis.hget(f"{stack.env['NOTIFYLAB_PREFIX']}:user:{user}", "password")
    await redis.aclose()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_sessions_list_their_live_sockets_and_instances(stack, clients):
    url_a, url_b = servers(stack)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    listed = await first.sessions()
    assert len(listed) == 2
    by_current = {s["current"]: s for s in listed}
    assert [s["instance"] for s in by_current[True]["sockets"]] == ["a"]
    assert [s["instance"] for s in by_current[False]["sockets"]] == ["b"]
    assert by_current[False]["sockets"][0]["sid"] == second.sio.get_sid()
    assert {"device", "created", "last_seen"} <= set(by_current[True])


async def test_revoking_a_session_disconnects_its_socket_on_the_other_instance(stack, clients):
    url_a, url_b = servers(stack)
    keeper = await clients(url_a)
    victim = await clients(url_b, user=keeper.user)
    victim_session = next(s for s in await keeper.sessions() if not s["current"])

    result = await keeper.revoke(victim_session["id"])
    assert result["sockets"] == 1
    await victim.wait_for(lambda: victim.revoked and not victim.connected, 10)
    with pytest.raises(ClientError) as refused:
        await victim.me()
    assert refused.value.status == 401
    assert keeper.connected and len(await keeper.sessions()) == 1


async def test_a_revoked_session_cannot_reconnect(stack, clients):
    url_a, _ = servers(stack)
    me = await clients(url_a)
    token = me.token
    await me.logout()
    ghost = Client(url_a, reconnect=False)
    ghost.token = token
    with pytest.raises(socketio.exceptions.ConnectionError):
        await ghost.connect()
    assert not ghost.connected
    assert ghost.connect_errors and "unauthorized" in str(ghost.connect_errors[-1])
    await ghost.close()


async def test_logout_everywhere_ends_every_session(stack, clients):
    url_a, url_b = servers(stack)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    third = await clients(url_a, user=first.user, connect=False)
    assert (await first.logout_all())["revoked"] == 3
    await second.wait_for(lambda: not second.connected, 10)
    for client in (first, second, third):
        with pytest.raises(ClientError):
            await client.me()


async def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(stack):
    url = servers(stack)[0]
    user = new_username()
    async with Client(url) as me:
        await me.register(user, PASSWORD)
        with pytest.raises(ClientError) as wrong:
            await me.login(user, "not the password")
        with pytest.raises(ClientError) as unknown:
            await me.login(new_username(), PASSWORD)
    assert wrong.value.status == unknown.value.status == 401
    assert wrong.value.body == unknown.value.body


async def test_an_instance_killed_and_started_again_under_its_id_lists_none_of_its_old_sockets(
    make_lab, clients
):
    """SIGKILL leaves the dead process's socket records in Redis. The new
    process beats under the same id at once, so only the incarnation in each
    record tells the two apart: without it, the old socket would be listed
    as live until its session ended."""
    lab = await make_lab(workers=0)
    url_a, url_b = servers(lab)
    keeper = await clients(url_b)
    gone = await clients(url_a, user=keeper.user)
    sessions = {s["current"]: s["id"] for s in await keeper.sessions()}
    async with RedisView(prefix=lab.env["NOTIFYLAB_PREFIX"], redis_url=REDIS) as rview:
        assert [(s["instance"], s["live"]) for s in await rview.sockets(keeper.user)] == [
            ("b", True),
            ("a", True),
        ]

        await lab.processes[0].kill()  # no goodbye: its socket records stay in Redis
        await gone.close()  # the tab is gone too, so nothing reconnects to a
        await lab.processes[0].start()  # a again, same id and port, a new process

        listed = {s["id"]: s["sockets"] for s in await keeper.sessions()}
        assert listed[sessions[False]] == []
        assert [s["instance"] for s in listed[sessions[True]]] == ["b"]
        # The old record was removed as it was found; the lab's view agrees.
        assert [(s["instance"], s["live"]) for s in await rview.sockets(keeper.user)] == [("b", True)]
