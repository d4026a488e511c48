"""Attacks on the REST API and careless clients of it (issue 8, findings 3, 4, 5
and 7): each test here failed before its fix.

The lab of this module allows 3 failed logins (an address gets four times
that) and one extra origin. Tests that fail logins on purpose send them from
addresses of their own (127.1.x.y: all of 127.0.0.0/8 is this machine), so
that the address lockouts they cause touch no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from notifylab.lab import Lab, free_port
from notifylab.lab.client import Client
from support import (
    PASSWORD,
    REDIS,
    PrivateRedis,
    new_username,
    private_redis,
    servers,
    two_instances_and_a_worker,
)

ATTEMPTS = 3
BALANCER = "https://notifylab.example:8443"  # the extra allowed origin
JSON = {"Content-Type": "application/json"}
_addresses = itertools.count()


def new_address() -> str:
    """A loopback address no other test sends from."""
    n = next(_addresses)
    return f"127.1.{n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
async def lab(services: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    async with two_instances_and_a_worker(
        tmp_path_factory.mktemp("hardening-rest"),
        NOTIFYLAB_LOGIN_ATTEMPTS=str(ATTEMPTS),
        NOTIFYLAB_ALLOWED_ORIGINS=BALANCER + "/",
    ) as lab:
        yield lab


@contextlib.asynccontextmanager
async def browser(address: str = "127.0.0.1") -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session with a cookie jar, sending from ``address``."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    data: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict, aiohttp.ClientResponse]:
    """Send ``data`` (JSON-encoded unless bytes; as JSON unless ``headers`` say
    otherwise) and return status, body and response."""
    raw = data if isinstance(data, bytes) or data is None else json.dumps(data).encode()
    headers = headers or {}
    sent = {**JSON, **headers} if raw is not None and "Content-Type" not in headers else headers
    async with http.request(method, url, data=raw, headers=sent) as r:
        return r.status, await r.json(content_type=None), r


async def registered(url: str) -> tuple[str, aiohttp.ClientSession]:
    """A new user logged in, with the session that holds its cookie (close it)."""
    user = new_username()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    status, _, _ = await call(http, "POST", f"{url}/api/register", {"username": user, "password": PASSWORD})
    assert status == 201
    return user, http


def server_logs(lab: Lab) -> str:
    return "\n".join(
        p.log_path.read_text(errors="replace") for p in lab.processes if p.url and p.log_path is not None
    )


def assert_no_request_failed(lab: Lab) -> None:
    """No request ended in a 500 (logged at ERROR with a traceback). Other
    tracebacks are not ours to judge here: a RabbitMQ restarted by another
    test makes aiormq log one."""
    logs = server_logs(lab)
    assert "ERROR notifylab.server.http" not in logs
    for exception in ("RecursionError", "UnicodeEncodeError", "Exceeds the limit", "ResponseError"):
        assert exception not in logs


# --- Finding 3: CSRF ---------------------------------------------------------------------------------


async def test_a_form_post_with_a_valid_cookie_is_refused_and_starts_nothing(lab):
    url = servers(lab)[0]
    _, http = await registered(url)
    async with http:
        start = json.dumps({"kind": "report", "params": {"steps": 1}}).encode()
        # What a form on another port of this host sends (same-site: the Lax cookie goes along)...
        cross = {"Origin": f"http://127.0.0.1:{free_port()}", "Sec-Fetch-Site": "same-site"}
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            status, body, _ = await call(
                http, "POST", f"{url}/api/operations", start, headers={**cross, "Content-Type": ctype}
            )
            assert status == 403 and "error" in body
        # ... and the same body from a browser that sends neither header.
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, body, _ = await call(
                http, "POST", f"{url}/api/operations", start, headers={"Content-Type": ctype}
            )
            assert status == 415 and "application/json" in body["error"]
        status, body, _ = await call(
            http, "POST", f"{url}/api/operations", start, headers={"Content-Type": ""}
        )
        assert status == 415
        status, body, _ = await call(http, "GET", f"{url}/api/operations")
        assert status == 200 and body["operations"] == []


async def test_another_origin_of_this_host_cannot_sign_out_everywhere_or_log_in_but_this_one_can(lab):
    url = servers(lab)[0]
    user, http = await registered(url)
    async with http:
        other = f"http://127.0.0.1:{free_port()}"
        for headers in (
            {"Origin": other},
            {"Sec-Fetch-Site": "same-site"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "null"},
        ):
            status, body, _ = await call(http, "POST", f"{url}/api/logout-all", {}, headers=headers)
            assert status == 403 and "error" in body
            status, _, r = await call(
                http, "POST", f"{url}/api/login", {"username": user, "password": PASSWORD}, headers=headers
            )
            assert status == 403 and "Set-Cookie" not in r.headers
        status, _, _ = await call(http, "GET", f"{url}/api/me")
        assert status == 200  # still signed in

        # The page's own origin passes, as does the browser's word that it is same-origin
        # (behind a proxy that terminates TLS, Origin says https and the instance sees http).
        own = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
        status, _, _ = await call(
            http, "POST", f"{url}/api/login", {"username": user, "password": PASSWORD}, headers=own
        )
        assert status == 200
        https = {"Origin": url.replace("http:", "https:"), "Sec-Fetch-Site": "same-origin"}
        status, _, _ = await call(
            http, "POST", f"{url}/api/login", {"username": user, "password": PASSWORD}, headers=https
        )
        assert status == 200
        status, body, _ = await call(http, "POST", f"{url}/api/logout-all", {}, headers={"Origin": url})
        assert status == 200 and body["revoked"] == 3


async def test_a_configured_origin_is_allowed_and_others_are_not(lab):
    url = servers(lab)[1]
    user, http = await registered(url)
    async with http:
        login = {"username": user, "password": PASSWORD}
        status, _, _ = await call(
            http, "POST", f"{url}/api/login", login, headers={"Origin": "https://evil.example"}
        )
        assert status == 403
        status, _, _ = await call(http, "POST", f"{url}/api/login", login, headers={"Origin": BALANCER})
        assert status == 200
        status, body, _ = await call(http, "POST", f"{url}/api/logout", None, headers={"Origin": BALANCER})
        assert status == 200 and body == {"ok": True}


async def test_through_jupyter_server_proxy_the_page_is_same_origin(lab, tmp_path):
    """The React client in JupyterLab (/proxy/<port>/) works; another site's page does not.

    jupyter-server-proxy passes Host, Origin and Sec-Fetch-Site through
    unchanged, so the instance sees JupyterLab's origin as its own.
    """
    pytest.importorskip("jupyter_server_proxy")
    port, token = free_port(), "h8-proxy-token"
    with (tmp_path / "jupyter.log").open("wb") as log:
        jupyter = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={port}",
            "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
    try:
        jupyter_url = f"http://127.0.0.1:{port}"
        instance_port = servers(lab)[0].rsplit(":", 1)[1]
        proxied = f"{jupyter_url}/proxy/{instance_port}"
        auth = {"Authorization": f"token {token}"}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{proxied}/healthz", headers=auth) as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.2)
            user = new_username()
            page = {**auth, "Origin": jupyter_url, "Sec-Fetch-Site": "same-origin"}
            account = {"username": user, "password": PASSWORD}
            status, _, _ = await call(http, "POST", f"{proxied}/api/register", account, headers=page)
            assert status == 201
            # An old browser sends Origin only: JupyterLab's, which is the Host the instance sees.
            status, _, _ = await call(
                http, "POST", f"{proxied}/api/login", account, headers={**auth, "Origin": jupyter_url}
            )
            assert status == 200
            evil = {**auth, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
            status, _, _ = await call(http, "POST", f"{proxied}/api/logout-all", {}, headers=evil)
            assert status == 403
            status, body, _ = await call(http, "POST", f"{proxied}/api/logout-all", {}, headers=page)
            assert status == 200 and body["revoked"] == 2
    finally:
        jupyter.terminate()
        try:
            async with asyncio.timeout(10):
                await jupyter.wait()
        except TimeoutError:
            jupyter.kill()
            await jupyter.wait()


# --- Finding 4: ids ----------------------------------------------------------------------------------

BAD_IDS = ["１２-3", "99999999999999999999999-0", "1-18446744073709551616", "12", "-1-0", " 1-0", "1-0\n"]
TOP = "18446744073709551615-18446744073709551615"  # a valid id with nothing after it: Redis's range ends


async def test_ids_out_of_range_or_in_other_digits_are_400_and_store_nothing(lab, clients):
    url_a, url_b = servers(lab)
    me = await clients(url_a)
    op = await me.start("report", steps=1, step_seconds=0.01)
    await me.wait_operation(op["id"])
    newest = (await me.inbox())["last_id"]
    read_key = f"{lab.env['NOTIFYLAB_PREFIX']}:read:{me.user}"
    store = aioredis.from_url(REDIS, decode_responses=True)
    try:
        for bad in BAD_IDS:
            async with me.http.get(f"{url_a}/api/inbox", params={"after": bad}) as r:
                assert r.status == 400 and (await r.json())["field"] == "after", bad
            async with me.http.post(f"{url_a}/api/inbox/read", json={"up_to": bad}) as r:
                assert r.status == 400 and (await r.json())["field"] == "up_to", bad
            assert await store.get(read_key) is None
        # Valid ids at the edges of Redis's range: no 500 (XRANGE's exclusive start after
        # 18446744073709551615-18446744073709551615 does not exist, and Redis says so).
        for edge, expected in ((TOP, []), ("0-18446744073709551615", [newest]), ("0-0", [newest])):
            async with me.http.get(f"{url_a}/api/inbox", params={"after": edge}) as r:
                assert r.status == 200, edge
                assert [n["id"] for n in (await r.json())["notifications"]][-1:] == expected, edge
        async with me.http.post(f"{url_a}/api/inbox/read", json={"up_to": TOP}) as r:
            assert r.status == 200 and (await r.json())["up_to"] == newest  # never past the newest
        assert await store.get(read_key) == newest
    finally:
        await store.aclose()
    assert (await me.inbox())["unread"] == 0
    again = await clients(url_b, user=me.user)  # connects: its hello came
    assert again.hello["last_id"] == newest and again.hello["unread"] == 0


# --- Finding 5: brute force --------------------------------------------------------------------------


async def test_failed_logins_lock_the_username_on_every_instance_then_the_password_works(lab):
    url_a, url_b = servers(lab)
    user, http = await registered(url_a)
    await http.close()
    wrong = {"username": user, "password": "not the password"}
    right = {"username": user, "password": PASSWORD}
    async with browser(new_address()) as attacker, browser(new_address()) as owner:
        for _ in range(ATTEMPTS):
            status, _, _ = await call(attacker, "POST", f"{url_a}/api/login", wrong)
            assert status == 401
        status, body, r = await call(attacker, "POST", f"{url_a}/api/login", wrong)
        assert status == 429 and "too many failed logins" in body["error"]
        wait = int(r.headers["Retry-After"])
        assert 1 <= wait <= 2
        # The right password is refused too while the lock holds, from anywhere, on any instance.
        for http_, url in ((attacker, url_a), (owner, url_b)):
            status, _, r = await call(http_, "POST", f"{url}/api/login", right)
            assert status == 429 and "Retry-After" in r.headers
        await asyncio.sleep(wait + 0.2)
        status, _, _ = await call(owner, "POST", f"{url_b}/api/login", right)
        assert status == 200
        # The success reset the username's count: one more mistake is a plain 401.
        status, _, _ = await call(owner, "POST", f"{url_b}/api/login", wrong)
        assert status == 401


async def test_the_lockout_grows_with_each_failure_after_it(lab):
    url = servers(lab)[0]
    wrong = {"username": new_username(), "password": "not the password"}  # unknown users are locked too
    async with browser(new_address()) as attacker:
        waits = []
        for _ in range(2):
            while True:
                status, _, r = await call(attacker, "POST", f"{url}/api/login", wrong)
                if status == 429:
                    break
                assert status == 401
            waits.append(int(r.headers["Retry-After"]))
            await asyncio.sleep(waits[-1] + 0.1)
        assert waits == [1, 2]


async def test_failures_from_one_address_lock_that_address_only(lab):
    url = servers(lab)[0]
    user, http = await registered(url)
    await http.close()
    async with browser(new_address()) as sprayer, browser(new_address()) as neighbour:
        # One attempt per username: no username reaches its limit, the address does.
        for _ in range(ATTEMPTS * 4):
            status, _, _ = await call(
                sprayer, "POST", f"{url}/api/login", {"username": new_username(), "password": "guess 1234"}
            )
            assert status == 401
        right = {"username": user, "password": PASSWORD}
        status, body, r = await call(sprayer, "POST", f"{url}/api/login", right)
        assert status == 429 and "address" in body["error"] and "Retry-After" in r.headers
        status, _, _ = await call(neighbour, "POST", f"{url}/api/login", right)
        assert status == 200


def test_the_lockout_doubles_from_the_limit_and_is_capped():
    from notifylab.store.throttle import LOCKOUT_CAP_SECONDS, lockout_seconds

    assert [lockout_seconds(n, 3) for n in range(1, 8)] == [0, 0, 1, 2, 4, 8, 16]
    assert lockout_seconds(40, 3) == lockout_seconds(10**6, 3) == LOCKOUT_CAP_SECONDS


def test_a_forwarded_address_counts_only_behind_a_trusted_proxy():
    from notifylab.server.http import address_of

    spoofed = ["6.6.6.6, 203.0.113.7"]  # the client wrote 6.6.6.6; nginx appended what it saw
    assert address_of("10.0.0.2", spoofed, ()) == "10.0.0.2"  # no proxy trusted: the header is anyone's
    proxies = ("10.0.0.0/8",)
    assert address_of("10.0.0.2", spoofed, proxies) == "203.0.113.7"
    assert address_of("10.0.0.2", [spoofed[0] + ", 10.0.0.9"], proxies) == "203.0.113.7"  # two deep
    assert address_of("192.0.2.1", spoofed, proxies) == "192.0.2.1"  # not from the proxy: not believed
    assert address_of("2001:db8::1:2", [], ()) == "2001:db8::/64"  # one host may hold a whole /64
    assert address_of("::ffff:192.0.2.1", [], ()) == "192.0.2.1"


async def test_registration_of_taken_names_is_rate_limited_per_address(lab):
    url = servers(lab)[1]
    taken, http = await registered(url)
    await http.close()
    async with browser(new_address()) as prober:
        for _ in range(ATTEMPTS * 4):
            status, body, _ = await call(
                prober, "POST", f"{url}/api/register", {"username": taken, "password": "another one 42"}
            )
            assert status == 409 and body["field"] == "username"
        status, _, r = await call(
            prober, "POST", f"{url}/api/register", {"username": new_username(), "password": PASSWORD}
        )
        assert status == 429 and "Retry-After" in r.headers


async def test_a_login_flood_is_queued_or_shed_and_a_valid_login_still_gets_through(lab):
    """40 wrong logins at once, from 40 addresses (no throttle applies): the
    instance hashes a few at a time, queues some and answers the rest 503 at
    once; a real user's login, retried on 503 as a client would, gets through
    in seconds, and the loop keeps answering meanwhile."""
    url = servers(lab)[0]
    user, http = await registered(url)
    await http.close()

    async def wrong_login() -> tuple[int, str | None]:
        async with browser(new_address()) as attacker:
            status, _, r = await call(
                attacker, "POST", f"{url}/api/login", {"username": new_username(), "password": "flood 12345"}
            )
            return status, r.headers.get("Retry-After")

    async def real_login() -> tuple[float, int]:
        async with browser(new_address()) as owner:
            began, tries = time.monotonic(), 0
            while True:
                tries += 1
                status, _, _ = await call(
                    owner, "POST", f"{url}/api/login", {"username": user, "password": PASSWORD}
                )
                if status != 503:
                    assert status == 200
                    return time.monotonic() - began, tries
                await asyncio.sleep(0.2)

    normal, _ = await real_login()
    flood = [asyncio.create_task(wrong_login()) for _ in range(40)]
    await asyncio.sleep(0.1)  # the flood is in
    began = time.monotonic()
    async with aiohttp.ClientSession() as probe, probe.get(f"{url}/readyz") as r:
        assert r.status == 200
    readyz = time.monotonic() - began
    took, tries = await real_login()
    answers = await asyncio.gather(*flood)
    statuses = sorted({status for status, _ in answers})
    assert set(statuses) <= {401, 503}, statuses
    shed = [retry for status, retry in answers if status == 503]
    assert shed and all(retry is not None for retry in shed)
    assert readyz < 2.0, f"/readyz took {readyz:.2f} s during the flood"
    # A turn comes after at most MAX_HASH_WAITING / hash_concurrency hashes, ~10 logins'
    # time (Argon2 takes ~0.2 s here); a loaded machine stretches both figures.
    assert took < max(10, 30 * normal), (
        f"a valid login took {took:.1f} s ({tries} tries), {normal:.2f} s alone"
    )


# --- Finding 7: errors -------------------------------------------------------------------------------


async def test_malformed_bodies_are_400_with_one_log_line_and_no_traceback(lab):
    url = servers(lab)[0]
    user, http = await registered(url)
    async with http:
        nested = b'{"username": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
        surrogate = b'{"username": "%s", "password": "abc\\ud800defgh"}' % user.encode()
        digits = b'{"kind": "report", "params": {"steps": ' + b"7" * 5000 + b"}}"
        not_a_number = b'{"kind": "report", "params": {"steps": NaN}}'
        cases = [
            ("/api/login", nested, None),
            ("/api/register", nested, None),
            ("/api/login", surrogate, "password"),
            ("/api/register", surrogate.replace(user.encode(), b"fresh_name"), "password"),
            ("/api/operations", digits, None),
            ("/api/operations", not_a_number, None),
            ("/api/inbox/read", b'{"up_to": "\\udfff-0"}', "up_to"),
            ("/api/login", b"\xff\xfe not utf-8", None),
        ]
        for path, raw, field in cases:
            status, body, _ = await call(http, "POST", f"{url}{path}", raw)
            assert status == 400 and "error" in body, (path, raw[:40])
            assert body.get("field") == field, (path, body)
        async with http.get(f"{url}/api/inbox", params={"limit": "7" * 5000}) as r:
            assert r.status == 400
        async with http.get(f"{url}/api/inbox", params={"limit": "１２"}) as r:
            assert r.status == 400
    assert_no_request_failed(lab)


async def test_a_username_with_a_trailing_newline_is_refused(lab):
    url = servers(lab)[0]
    name = new_username()
    async with browser() as http:
        status, body, _ = await call(
            http, "POST", f"{url}/api/register", {"username": name + "\n", "password": PASSWORD}
        )
        assert status == 400 and body["field"] == "username"
        status, _, _ = await call(
            http, "POST", f"{url}/api/register", {"username": name, "password": PASSWORD}
        )
        assert status == 201
        status, _, _ = await call(
            http, "POST", f"{url}/api/login", {"username": name + "\n", "password": PASSWORD}
        )
        assert status == 401


@pytest.mark.parametrize(
    "password", ["12345678", "password", "Password1", "qwertyuiop", "aaaaaaaaaa", "{user}-2024!"]
)
async def test_common_passwords_and_ones_holding_the_username_are_refused(lab, password):
    url = servers(lab)[1]
    user = new_username()
    async with browser() as http:
        account = {"username": user, "password": password.format(user=user)}
        status, body, _ = await call(http, "POST", f"{url}/api/register", account)
        assert status == 400 and body["field"] == "password", body


@pytest.fixture
async def doomed_redis() -> AsyncIterator[PrivateRedis]:
    """A Redis of the test's own, keeping nothing on disk, for the test to kill."""
    async with private_redis() as redis:
        yield redis


async def test_rest_answers_503_while_redis_is_down(make_lab, doomed_redis):
    lab = await make_lab(servers=1, workers=0, NOTIFYLAB_REDIS_URL=doomed_redis.url)
    url = servers(lab)[0]
    me = Client(url)
    try:
        await me.register(new_username(), PASSWORD)
        await doomed_redis.kill()
        async with me.http.get(f"{url}/api/me") as r:
            assert r.status == 503 and "retry" in (await r.json())["error"]
            assert r.headers["Retry-After"].isdigit()
        for path, data in (
            ("/api/login", {"username": me.user, "password": PASSWORD}),
            ("/api/operations", {}),
        ):
            async with me.http.post(f"{url}{path}", json=data) as r:
                assert r.status == 503, path
        async with me.http.get(f"{url}/api/inbox") as r:
            assert r.status == 503
    finally:
        await me.close()
    assert_no_request_failed(lab)
    assert "WARNING notifylab.server.http: GET /api/me -> 503 Redis unreachable" in server_logs(lab)
