"""Fuzz the REST API from its OpenAPI description (docs/openapi.yaml).

Schemathesis generates requests for every operation of the description,
valid ones and ones that break it (wrong types, missing fields, strings where
numbers go, odd characters), and sends them to a real instance with a
logged-in cookie. Every answer must be what the description promises: no
500, a documented status, the documented content type and body shape. The
run is bounded (``MAX_EXAMPLES`` per operation), and afterwards the instance
must still be ready and deliver a normal user's operation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from notifylab.lab import Lab
from notifylab.lab.client import Client
from notifylab.protocol import COOKIE
from support import PASSWORD, new_prefix, new_username, servers

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
MAX_EXAMPLES = 20  # per operation and phase: the whole file runs in well under a minute
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# These end sessions: each example gets a session of its own, of a user kept for that.
ENDS_SESSIONS = {"/api/logout", "/api/logout-all"}

schema = schemathesis.openapi.from_path(OPENAPI)
# The cookie is ours to give (a real session); generated ones would only be 401s.
schema.config.generation.update(with_security_parameters=False)


@dataclass
class Target:
    url: str
    user: str
    token: str
    throwaway: str  # the user whose sessions logout and logout-all end


@pytest.fixture(scope="module")
async def fuzz_lab(services: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    # Wrong passwords are part of the fuzz: the login throttle must not turn
    # the rest of the run into 429s (it has tests of its own).
    env = {
        "NOTIFYLAB_PREFIX": new_prefix(),
        "NOTIFYLAB_LOG_LEVEL": "INFO",
        "NOTIFYLAB_LOGIN_ATTEMPTS": "1000000",
    }
    lab = Lab(env, log_dir=tmp_path_factory.mktemp("fuzz-rest"))
    async with lab:
        await lab.start_server(instance_id="a")
        await lab.start_worker()
        yield lab


async def _register(url: str, user: str) -> str:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{url}/api/register", json={"username": user, "password": PASSWORD}) as r:
            assert r.status == 201
            return r.cookies[COOKIE].value


@pytest.fixture(scope="module")
async def target(fuzz_lab: Lab) -> Target:
    url = servers(fuzz_lab)[0]
    user, throwaway = new_username(), new_username()
    token = await _register(url, user)
    await _register(url, throwaway)
    return Target(url, user, token, throwaway)


def _fresh_session(target: Target) -> str:
    answer = requests.post(
        f"{target.url}/api/login", json={"username": target.throwaway, "password": PASSWORD}, timeout=10
    )
    token = answer.cookies.get(COOKIE)
    assert answer.status_code == 200 and token, answer.text
    return token


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the work tree; each run draws anew
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
)
def test_no_input_breaks_the_rest_api_or_its_description(case, target):
    token = _fresh_session(target) if case.path in ENDS_SESSIONS else target.token
    response = case.call(base_url=target.url, cookies={COOKIE: token}, timeout=10)
    case.validate_response(response, checks=CHECKS)


# What a schema-driven generator does not reach: the body parser's own limits.
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_wild = _json | st.sampled_from(
    ["\ud800", "abc\udfffdefgh", "１２-3", "18446744073709551615-18446744073709551615", "ann\n"]
)
_fields = st.sampled_from(["username", "password", "kind", "params", "up_to", "steps"])
BODIES = st.one_of(
    st.binary(max_size=64),
    _json.map(lambda v: json.dumps(v, allow_nan=True).encode()),  # NaN and Infinity are not JSON
    st.dictionaries(_fields, _wild, max_size=4).map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.integers(900, 13_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),  # deeper than the decoder goes
    st.integers(900, 30_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(4_000, 6_000).map(lambda n: b'{"kind":"report","params":{"steps":' + b"7" * n + b"}}"),
    st.builds(
        lambda user, pw: json.dumps({"username": user, "password": pw}).encode(),
        st.text(max_size=40),
        st.text(min_size=8, max_size=40),  # may hold lone surrogates: JSON escapes them
    ),
)
POSTS = ["/api/register", "/api/login", "/api/operations", "/api/inbox/read", "/api/operations/x/cancel"]
TYPES = ["application/json", "application/json; charset=utf-8", "text/plain", "application/octet-stream", ""]


@settings(max_examples=150, deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
@given(path=st.sampled_from(POSTS), body=BODIES, ctype=st.sampled_from(TYPES))
def test_no_body_breaks_a_post(target, path, body, ctype):
    answer = requests.post(
        f"{target.url}{path}",
        data=body,
        headers={"Content-Type": ctype},
        cookies={COOKIE: target.token},
        timeout=10,
    )
    assert answer.status_code in {200, 201, 202, 400, 401, 404, 409, 413, 415, 429}, (
        answer.status_code,
        body[:80],
    )
    assert "error" in answer.json() or answer.status_code < 300


async def test_after_the_fuzz_the_instance_is_ready_and_delivers(fuzz_lab, target, clients):
    url = target.url
    async with aiohttp.ClientSession(cookies={COOKIE: target.token}) as http:
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 200
        # Free the worker from whatever the fuzz started (up to 100 steps of 30 s).
        async with http.get(f"{url}/api/operations") as r:
            operations = (await r.json())["operations"]
        for op in operations:
            if op["state"] in {"queued", "running", "restarted"}:
                async with http.post(f"{url}/api/operations/{op['id']}/cancel", json={}) as r:
                    assert r.status in (202, 409)
    me: Client = await clients(url)
    op = await me.start("report", steps=2, step_seconds=0.01)
    final = await me.wait_operation(op["id"], 30)
    assert final["type"] == "operation.succeeded"
