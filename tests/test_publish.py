"""The publish API (issue 9): other backend services notify users without
running an operation, by ``POST /api/publish`` with the API key, or from
Python with :class:`notifylab.lab.publisher.Publisher`.

Auth (only the key opens it; a cookie does not; off without a key),
validation (400 naming the field, nothing appended) and delivery (through
the inbox stream and the feed, so every session gets it once, in order,
also after a reconnect), all against real instances, RabbitMQ and Redis.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from notifylab.ids import ZERO, id_after
from notifylab.lab import Lab, free_port
from notifylab.lab.client import Client, ClientError
from notifylab.lab.publisher import Publisher, publish
from notifylab.lab.verdict import verdict
from notifylab.protocol import COOKIE
from support import PASSWORD, new_username, servers, two_instances_and_a_worker

KEY = "test-publish-key-0123456789abcdef"
DATA_MAX = 8 * 1024
NEUTRAL = {"operation": "", "kind": "", "state": "", "step": 0, "steps": 0, "progress": 0}


@pytest.fixture(scope="module")
async def lab(services: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """Instances a and b and a worker, with the publish API on (one lab for
    the module: a lab per test would cost seconds each)."""
    async with two_instances_and_a_worker(tmp_path_factory.mktemp("publish"), NOTIFYLAB_API_KEY=KEY) as lab:
        yield lab


@pytest.fixture(scope="module")
async def quiet(lab: Lab) -> AsyncIterator[Client]:
    """A user every refused request is aimed at: its stream must stay empty."""
    client = Client(servers(lab)[0])
    await client.register(new_username(), PASSWORD)
    yield client
    await client.close()


async def post(
    url: str,
    payload: Any = None,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict, aiohttp.ClientResponse]:
    """POST /api/publish: ``payload`` as JSON (or ``raw`` bytes), with the key unless None."""
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    sent.update(headers or {})
    data = raw if raw is not None else json.dumps(payload).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/publish", data=data, headers=sent) as r:
            return r.status, await r.json(content_type=None), r


async def stream_ids(client: Client) -> list[str]:
    return [n["id"] for n in (await client.inbox(limit=1000))["notifications"]]


def one(payload: dict, **changes: Any) -> dict:
    return {"type": "billing.invoice", "title": "Invoice 42 is ready", **payload, **changes}


# -- auth --------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer not-the-key",
        f"Bearer {KEY[:-1]}",
        f"Bearer {KEY}x",
        "Bearer ",
        f"Bearer{KEY}",
        KEY,
        "Basic " + base64.b64encode(f"publisher:{KEY}".encode()).decode(),
    ],
    ids=["none", "wrong", "prefix", "longer", "empty", "no-space", "no-scheme", "basic"],
)
async def test_without_the_key_nothing_is_published(lab, quiet, authorization):
    url = servers(lab)[0]
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, response = await post(url, one({"user": quiet.user}), key=None, headers=headers)
    assert status == 401, body
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert ("Authorization: Bearer" if authorization is None else "wrong") in body["error"]
    assert await stream_ids(quiet) == []


async def test_a_user_cookie_is_not_a_key(lab, quiet):
    """A logged-in session (even the recipient's own) cannot publish: no
    cookie, no CSRF; and a browser could not send the key cross-site."""
    url = servers(lab)[0]
    assert quiet.token
    cookie = {"Cookie": f"{COOKIE}={quiet.token}"}  # a header: no cookie jar decides for us
    status, body, _ = await post(url, one({"user": quiet.user}), key=None, headers=cookie)
    assert status == 401, body
    # With the key, what a browser sends on another site's behalf is still refused.
    foreign = [
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "https://evil.example"}, 403),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "text/plain"}, 415),
    ]
    for headers, expected in foreign:
        status, body, _ = await post(url, one({"user": quiet.user}), headers={**cookie, **headers})
        assert status == expected, (headers, body)
    assert await stream_ids(quiet) == []


async def test_without_a_configured_key_the_api_is_off(make_lab, clients):
    lab = await make_lab(servers=1, workers=0)  # no NOTIFYLAB_API_KEY
    url = servers(lab)[0]
    me = await clients(url, connect=False)
    for key in (None, "", KEY):  # "Bearer " must not match an empty key
        status, body, _ = await post(url, one({"user": me.user}), key=key)
        assert status == 404, body
        assert "NOTIFYLAB_API_KEY" in body["error"]
    with pytest.raises(ClientError) as refused:
        await publish(url, me.user, "billing.invoice", "Invoice", api_key=KEY)
    assert refused.value.status == 404
    assert await stream_ids(me) == []


# -- validation --------------------------------------------------------------

ME = "<the quiet user>"  # replaced by its name in each case

BAD = {
    "no recipient": ({"type": "billing.invoice", "title": "t"}, "users"),
    "user and users": (one({"user": ME, "users": [ME]}), "users"),
    "user not a string": (one({"user": 5}), "user"),
    "user not a username": (one({"user": "Not A Name"}), "user"),
    "users empty": (one({"users": []}), "users"),
    "users a string": (one({"users": ME}), "users"),
    "users with a number": (one({"users": [ME, 7]}), "users"),
    "users over 1000": (one({"users": [f"u{i:05d}" for i in range(1001)]}), "users"),
    "unknown user": (one({"user": "nosuch_one"}), "user"),
    "one unknown among users": (one({"users": [ME, "nosuch_two"]}), "users"),
    "type missing": ({"user": ME, "title": "t"}, "type"),
    "type empty": (one({"user": ME}, type=""), "type"),
    "type upper case": (one({"user": ME}, type="Billing.Invoice"), "type"),
    "type with a space": (one({"user": ME}, type="billing invoice"), "type"),
    "type empty part": (one({"user": ME}, type="billing..invoice"), "type"),
    "type leading dot": (one({"user": ME}, type=".billing"), "type"),
    "type trailing dot": (one({"user": ME}, type="billing."), "type"),
    "type not ascii": (one({"user": ME}, type="facturation.é"), "type"),
    "type newline": (one({"user": ME}, type="billing\n"), "type"),
    "type too long": (one({"user": ME}, type="b" * 65), "type"),
    "type operation": (one({"user": ME}, type="operation"), "type"),
    "type operation.*": (one({"user": ME}, type="operation.succeeded"), "type"),
    "type a number": (one({"user": ME}, type=5), "type"),
    "title missing": ({"user": ME, "type": "billing.invoice"}, "title"),
    "title empty": (one({"user": ME}, title=""), "title"),
    "title blank": (one({"user": ME}, title="   "), "title"),
    "title null": (one({"user": ME}, title=None), "title"),
    "title too long": (one({"user": ME}, title="t" * 201), "title"),
    "title a number": (one({"user": ME}, title=5), "title"),
    "title lone surrogate": (one({"user": ME}, title="abc\ud800"), "title"),
    "body too long": (one({"user": ME}, body="b" * 2001), "body"),
    "body a list": (one({"user": ME}, body=["b"]), "body"),
    "data a list": (one({"user": ME}, data=[1]), "data"),
    "data a string": (one({"user": ME}, data="{}"), "data"),
    "data too big": (one({"user": ME}, data={"k": "x" * (DATA_MAX - 7)}), "data"),
    "data lone surrogate": (one({"user": ME}, data={"k": "\udfff"}), "data"),
    "unknown field": (one({"user": ME}, titel="t"), "titel"),
}


def _as(value: Any, user: str) -> Any:
    if value == ME:
        return user
    if isinstance(value, list):
        return [_as(v, user) for v in value]
    if isinstance(value, dict):
        return {k: _as(v, user) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_appended(lab, quiet, case):
    payload, field = BAD[case]
    status, body, _ = await post(servers(lab)[1], _as(payload, quiet.user))
    assert status == 400, body
    assert body["field"] == field, body
    if "unknown user" in case or "unknown among" in case:
        assert "nosuch_" in body["error"]  # names who
    assert await stream_ids(quiet) == []


async def test_a_body_that_is_not_a_json_object_or_too_big_is_refused(lab, quiet):
    url = servers(lab)[0]
    for raw in (b"{not json", b"[]", b'"x"', b'{"user": NaN}'):
        status, body, _ = await post(url, raw=raw)
        assert status == 400 and "error" in body, (raw, body)
    status, body, _ = await post(url, one({"user": quiet.user}, body="b" * (64 * 1024)))
    assert status == 413, body
    assert await stream_ids(quiet) == []


async def test_the_limits_themselves_are_accepted(lab, clients):
    me = await clients(servers(lab)[0], connect=False)
    payload = {
        "users": [me.user, me.user],  # named twice, published once
        "type": "b" * 64,
        "title": "t" * 200,
        "body": "b" * 2000,
        "data": {"k": "é" * ((DATA_MAX - 8) // 2)},  # 8 KiB as UTF-8 JSON: bytes count, not characters
    }
    status, body, _ = await post(servers(lab)[0], payload)
    assert status == 202, body
    assert list(body["ids"]) == [me.user]
    assert await stream_ids(me) == [body["ids"][me.user]]


# -- delivery ----------------------------------------------------------------


async def test_both_sessions_get_it_once_in_order_with_an_operations_notifications(lab, clients):
    url_a, url_b = servers(lab)
    first = await clients(url_a)
    second = await clients(url_b, user=first.user)
    op = await first.start("train", steps=6, step_seconds=0.1)
    await second.wait_for(
        lambda: any(n["type"] == "operation.progress" for n in second.of_operation(op["id"]))
    )

    # 2**70 + 1: past what orjson writes and what a float holds, so the stream,
    # the bus and the frames take codec.py's standard-library way for this one
    # and must keep it exact.
    data = {"invoice": 42, "lines": [{"item": "coffee", "eur": 2.5}], "paid": False, "ref": 2**70 + 1}
    status, body, _ = await post(url_b, one({"user": first.user}, body="12.50 EUR, due Friday", data=data))
    assert status == 202, body
    note_id = body["ids"][first.user]
    await first.wait_operation(op["id"])
    await second.wait_operation(op["id"])

    (await verdict(first, second)).assert_clean()  # against the stream: nothing lost, duplicated, reordered
    stream = (await first.inbox(limit=1000))["notifications"]
    for session in (first, second):
        assert [n["id"] for n in session.notifications] == [n["id"] for n in stream]
        got = [n for n in session.notifications if n["id"] == note_id]
        assert len(got) == 1
        ids = [n["id"] for n in session.notifications]
        at = ids.index(note_id)
        before, after = session.notifications[:at], session.notifications[at + 1 :]
        assert any(n.get("operation") == op["id"] for n in before)  # amid the operation's steps
        assert any(n.get("operation") == op["id"] for n in after)
        assert "" not in session.operations  # not taken for an operation
    stored = next(n for n in stream if n["id"] == note_id)
    expected = {
        "user": first.user,
        "type": "billing.invoice",
        "title": "Invoice 42 is ready",
        "body": "12.50 EUR, due Friday",
        "data": data,
        "message": "Invoice 42 is ready",
        **NEUTRAL,
    }
    assert {k: stored[k] for k in expected} == expected
    assert {k: got[0][k] for k in expected} == expected
    # An inbox item: unread beside the operation's outcome, on both sessions and the server.
    assert first.unread == second.unread == (await second.inbox())["unread"] == 2


async def test_several_users_at_once_each_get_their_own(lab, clients):
    url_a, url_b = servers(lab)
    ann, bob = await clients(url_a), await clients(url_b)
    cat_a = await clients(url_a)
    cat_b = await clients(url_b, user=cat_a.user)
    users = [ann.user, bob.user, cat_a.user]
    status, body, _ = await post(
        url_a, one({"users": [*users, ann.user]}, type="deploy.done", title="v1.2 is live")
    )
    assert status == 202, body
    assert list(body["ids"]) == users  # once each, in the order given
    sessions = [ann, bob, cat_a, cat_b]
    for session in sessions:
        await session.wait_for(lambda s=session: len(s.notifications) == 1, 10)
    (await verdict(*sessions)).assert_clean()
    for session in sessions:
        [note] = session.notifications
        assert note["user"] == session.user and note["id"] == body["ids"][session.user]
        assert note["type"] == "deploy.done" and note["title"] == "v1.2 is live"


async def test_a_session_that_was_away_gets_it_on_reconnect(lab, clients):
    url_a, url_b = servers(lab)
    away = await clients(url_a)
    stays = await clients(url_b, user=away.user)
    status, body, _ = await post(url_a, one({"user": away.user}, title="before"))
    assert status == 202
    await away.wait_for(lambda: len(away.notifications) == 1)
    await away.disconnect()

    missed = []
    for title in ("while away 1", "while away 2"):
        status, body, _ = await post(url_b, one({"user": away.user}, title=title))
        assert status == 202, body
        missed.append(body["ids"][away.user])
    await stays.wait_for(lambda: len(stays.notifications) == 3)

    await away.connect(url_b)  # back, on the other instance: it sends its last id
    await away.wait_for(lambda: len(away.notifications) == 3)
    replayed = away.notifications[1:]
    assert [n["id"] for n in replayed] == missed
    assert [n["title"] for n in replayed] == ["while away 1", "while away 2"]
    assert all("published" not in n for n in replayed)  # from the stream, not the bus
    (await verdict(away, stays)).assert_clean()

    late = await clients(url_a, user=away.user, connect=False)  # a session that never connected
    await late.connect(catch_up=True)
    await late.wait_for(lambda: len(late.notifications) == 3)
    assert [n["id"] for n in late.notifications] == [n["id"] for n in stays.notifications]


async def test_the_python_publisher_does_the_same(lab, clients, monkeypatch):
    url_a, url_b = servers(lab)
    ann = await clients(url_a)
    bob = await clients(url_b)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: the next instance is tried

    async with Publisher([nobody, url_b], KEY) as publisher:
        assert KEY not in repr(publisher)
        first = await publisher.publish(ann.user, "billing.invoice", "Invoice 1", data={"n": 1})
        both = await publisher.publish([ann.user, bob.user], "deploy.done", "Deployed", body="v1.2")
        with pytest.raises(ClientError) as refused:
            await publisher.publish(ann.user, "operation.succeeded", "forged")
        assert refused.value.status == 400 and refused.value.body["field"] == "type"
        with pytest.raises(ClientError) as refused:
            await publisher.publish([ann.user, "nosuch_three"], "deploy.done", "Deployed")
        assert refused.value.status == 400 and "nosuch_three" in refused.value.body["error"]

    async with Publisher(url_a, "not-the-key") as wrong:
        with pytest.raises(ClientError) as refused:
            await wrong.publish(ann.user, "billing.invoice", "Invoice 2")
        assert refused.value.status == 401

    monkeypatch.setenv("NOTIFYLAB_API_KEY", KEY)  # the module-level call's default key
    last = await publish(url_a, bob.user, "billing.invoice", "Invoice 3")
    monkeypatch.delenv("NOTIFYLAB_API_KEY")
    with pytest.raises(ValueError, match="NOTIFYLAB_API_KEY"):
        Publisher(url_a)

    await ann.wait_for(lambda: len(ann.notifications) == 2)
    await bob.wait_for(lambda: len(bob.notifications) == 2)
    assert [n["id"] for n in ann.notifications] == [first[ann.user], both[ann.user]]
    assert [n["id"] for n in bob.notifications] == [both[bob.user], last[bob.user]]
    assert [n["title"] for n in bob.notifications] == ["Deployed", "Invoice 3"]
    assert ann.notifications[0]["data"] == {"n": 1} and bob.notifications[0]["body"] == "v1.2"
    assert all(id_after(n["id"], ZERO) for n in ann.notifications + bob.notifications)
    (await verdict(ann, bob)).assert_clean()
