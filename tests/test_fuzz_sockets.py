"""A fuzz test of the Socket.IO events: random names, payloads, sizes and
argument counts, sent by a real python-socketio client.

Every event within the size limit must be answered with an ack (``{ok,
...}``); what the server cannot take (over the size limit, an integer of
more than 100 digits, a packet that is not JSON or nested past the recursion
limit) must be refused by closing the socket cleanly, and the client comes back. Nothing may leave a
traceback or an error in the server's log, and afterwards the server is ready
and delivers a normal user's operation. Bounded: about half a minute.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifylab.lab.client import Client, ClientError
from notifylab.lab.verdict import verdict
from support import PASSWORD, new_username, servers

MAX_EXAMPLES = 300
LIMIT = 64 * 1024  # the server's buffer limit (app.MAX_BODY)

EVENTS = ["operation:start", "operation:cancel", "inbox:read", "sync"]
RESERVED = ["connect", "disconnect", "connect_error", "message", "*", "hello", "notification", ""]


def nested(depth: int) -> list:
    return functools.reduce(lambda inner, _: [inner], range(depth), [])


def size(name: Any, args: tuple) -> int:
    """About the bytes the event's packet takes (JSON escapes what is not ASCII)."""
    return len(json.dumps([name, *args], default=lambda b: "x" * len(b) * 2))


# Leaves: every JSON scalar, integers as long as the server's JSON takes (100
# digits), ids that are almost ids (other scripts' digits, past Redis's range),
# bytes (a binary packet), and big strings (made by repetition: drawing 60,000
# characters one by one would be slow).
ids = st.one_of(
    st.from_regex(r"\A[0-9]{1,25}-[0-9]{1,25}\Z"),
    st.sampled_from(["0-0", "１２-3", "-1-0", "1-", "+", "-", "$", "(0-0", "18446744073709551616-0"]),
)
big_strings = st.one_of(
    st.builds(
        lambda c, n: c * n, st.characters(min_codepoint=0x20, max_codepoint=0x7E), st.integers(1, LIMIT)
    ),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1, 4000)),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**99) + 1, max_value=10**99),  # 100 characters at most, the sign counted
    st.floats(),
    st.text(max_size=40),
    ids,
    st.binary(max_size=64),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
# Payloads shaped like the real ones, with wrong types and values inside.
shaped = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.one_of(st.sampled_from(["report", "export", "train"]), json_values)},
        optional={
            "params": st.one_of(
                json_values,
                st.dictionaries(
                    st.sampled_from(["steps", "step_seconds", "fail_at", "error_at", "other"]), json_values
                ),
            )
        },
    ),
    st.fixed_dictionaries({"id": st.one_of(st.text(max_size=20), json_values)}),
    st.fixed_dictionaries({"up_to": st.one_of(ids, json_values)}),
    st.fixed_dictionaries({"after": st.one_of(ids, json_values)}),
)
payloads = st.one_of(
    shaped,
    json_values,
    big_strings,
    st.dictionaries(st.text(max_size=5), big_strings, max_size=3),
    st.integers(1, 300).map(nested),
)
names = st.one_of(
    st.sampled_from(EVENTS),
    st.sampled_from(RESERVED),
    st.text(max_size=60),
    big_strings,
    json_values,  # not a string at all
)
events = st.tuples(names, st.lists(payloads, max_size=4).map(tuple)).filter(
    lambda event: size(*event) < LIMIT - 1024
)


class Fuzzer:
    """One connected session sending the events, and what the server logged since the last look."""

    def __init__(self, client: Client, log_path: Path):
        self.client = client
        self.log_path = log_path
        self.offset = log_path.stat().st_size
        self.answered = self.refused = 0

    def new_log(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self.offset)
            raw = log.read()
        self.offset += len(raw)
        return raw.decode(errors="replace")

    async def send(self, name: Any, args: tuple) -> dict | None:
        """The event's ack, or None if the server closed the socket instead."""
        client = self.client
        await client.wait_for(lambda: client.connected and client.hello is not None, 10)
        try:
            ack = await client.call(name, args, timeout=5)  # type: ignore[arg-type]
        except ClientError as exc:  # answered {ok: false, error}
            ack = exc.body
        except ConnectionError:  # refused: the server closed the socket
            self.refused += 1
            return None
        self.answered += 1
        assert isinstance(ack, dict) and "ok" in ack, ack
        assert ack["ok"] is True or isinstance(ack.get("error"), str), ack
        return ack

    def assert_log_clean(self) -> None:
        log = self.new_log()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@pytest.fixture(scope="module")
async def fuzzer(stack):
    client = Client(servers(stack)[0])
    await client.register(new_username(), PASSWORD)
    await client.connect()
    yield Fuzzer(client, stack.processes[0].log_path)
    await client.close()


# A failing example holds big strings: report it without Hypothesis's warning about their size.
@pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning")
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(event=events)
async def test_every_event_within_the_limit_is_answered_and_nothing_breaks(fuzzer, event):
    name, args = event
    assert await fuzzer.send(name, args) is not None, "the socket was closed on an event within the limit"
    fuzzer.assert_log_clean()


@pytest.mark.parametrize(
    "args",
    [
        ({"after": "0-0", "padding": "x" * (LIMIT + 1)},),
        ("x" * (LIMIT // 3),) * 4,  # each within the limit, not together
        ({"kind": "report", "params": {"steps": 10**100}},),  # 101 digits
    ],
    ids=["over-the-limit", "four-big-arguments", "101-digit-integer"],
)
async def test_what_the_server_cannot_take_is_refused_cleanly_and_the_client_comes_back(fuzzer, args):
    ack = await fuzzer.send("sync", args)
    if ack is None:  # refused: the client reconnects by itself, and the socket works again
        await fuzzer.client.wait_for(lambda: fuzzer.client.connected, 10)
    assert await fuzzer.send("sync", {"after": "0-0"}) is not None
    fuzzer.assert_log_clean()


@pytest.mark.parametrize(
    "packet",
    [
        '20["sync",' + "[" * 5000 + "]" * 5000 + "]",  # nested past the recursion limit
        '21["sync",{"after":',  # not JSON
        "22[]",  # an event without a name
        '23{"sync":1}',  # not a list
    ],
    ids=["nested-5000-deep", "not-json", "no-name", "not-a-list"],
)
async def test_a_packet_the_server_cannot_read_is_refused_cleanly(fuzzer, packet):
    """python-socketio's client cannot encode these: they go out as raw
    Socket.IO packets (type 2, an event; then the ack id) in Engine.IO messages."""
    client = fuzzer.client
    await client.wait_for(lambda: client.connected and client.hello is not None, 10)
    reconnects = client.failovers
    await client.sio.eio.send(packet)
    await client.wait_for(lambda: client.failovers > reconnects and client.connected, 10)
    assert await fuzzer.send("sync", {"after": "0-0"}) is not None
    fuzzer.assert_log_clean()


async def test_afterwards_the_server_is_healthy_and_delivers(stack, fuzzer, clients):
    """Runs after the fuzz (same module, in order)."""
    url = servers(stack)[0]
    # The fuzz started real operations: cancel them, so the worker is free.
    for op in (await fuzzer.client.request("GET", "/api/operations"))["operations"]:
        if op["state"] in ("queued", "running", "restarted"):
            try:
                await fuzzer.client.cancel(op["id"])
            except ClientError:
                pass  # it ended meanwhile
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as ready:
        assert ready.status == 200

    me = await clients(url)
    op = await me.start("report", steps=2, step_seconds=0.05)
    assert (await me.wait_operation(op["id"], 20))["type"] == "operation.succeeded"
    (await verdict(me)).assert_clean()
    await asyncio.sleep(0.5)  # anything a stray task still logs
    fuzzer.assert_log_clean()
