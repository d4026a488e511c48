"""The React client against the real stack, in Debian's Chromium.

Two pages of one browser context share the session cookie (cookies ignore
ports), so a page on instance ``a`` and a page on instance ``b`` are two tabs
of the same session on two server instances. Another context is another
device (its own session). Every wait is bounded (``WAIT_MS``); nothing sleeps.

The inbox follows ``notifylab.protocol.is_inbox_item``: an operation's
outcome is listed and counted as unread, its queued, started and progress
notifications only move its card.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from browser_support import PASSWORD, ROOT, WAIT_MS, new_username
from notifylab.protocol import is_inbox_item

pytestmark = [pytest.mark.browser, pytest.mark.services]

SCREENSHOT = ROOT / "docs" / "screenshot-two-tabs.png"


# --- helpers -----------------------------------------------------------------


def api(context, method: str, url: str, data: dict | None = None) -> dict:
    """A REST call with the context's cookie (its session)."""
    response = context.request.fetch(
        url,
        method=method,
        data=json.dumps(data) if data is not None else None,
        headers={"Content-Type": "application/json"} if data is not None else None,
    )
    assert response.ok, f"{method} {url} -> {response.status} {response.text()}"
    return response.json()


def connection(page: Page):
    return page.get_by_test_id("connection")


def expect_connected(page: Page, instance: str) -> None:
    expect(connection(page)).to_have_attribute("data-status", "connected")
    expect(connection(page)).to_have_attribute("data-instance", instance)


def fill_credentials(page: Page, url: str, username: str) -> None:
    page.goto(url)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)


def sign_up(page: Page, url: str, username: str, instance: str) -> None:
    fill_credentials(page, url, username)
    page.get_by_role("button", name="Create account").click()
    expect_connected(page, instance)


def sign_in(page: Page, url: str, username: str, instance: str) -> None:
    fill_credentials(page, url, username)
    page.get_by_role("button", name="Sign in").click()
    expect_connected(page, instance)


def open_signed_in(page: Page, url: str, instance: str) -> None:
    page.goto(url)
    expect_connected(page, instance)


def start_operation(page: Page, kind: str, **params: object) -> str:
    """Start an operation with the form; returns its id (from the REST list)."""
    before = {
        op["id"] for op in api(page.context, "GET", page.url.rstrip("/") + "/api/operations")["operations"]
    }
    page.get_by_label("Operation kind").select_option(kind)
    for name, value in params.items():
        page.get_by_label(name, exact=True).fill(str(value))
    page.get_by_role("button", name="Start operation").click()
    expect(page.get_by_role("status").filter(has_text="Started")).to_be_visible()
    after = api(page.context, "GET", page.url.rstrip("/") + "/api/operations")["operations"]
    new = [op["id"] for op in after if op["id"] not in before]
    assert len(new) == 1, after
    return new[0]


def op_row(page: Page, op_id: str):
    return page.locator(f'[data-testid="operation"][data-id="{op_id}"]')


def notes(page: Page, op_id: str | None = None, type_: str | None = None, step: int | None = None):
    selector = '[data-testid="notification"]'
    if op_id is not None:
        selector += f'[data-operation="{op_id}"]'
    if type_ is not None:
        selector += f'[data-type="operation.{type_}"]'
    if step is not None:
        selector += f'[data-step="{step}"]'
    return page.locator(selector)


def shown_ids(page: Page) -> list[str]:
    return page.locator('[data-testid="notification"]').evaluate_all("rows => rows.map(r => r.dataset.id)")


def id_key(note_id: str) -> tuple[int, int]:
    """A stream id as two integers, the order of the stream."""
    ms, seq = note_id.split("-")
    return int(ms), int(seq)


def inbox_items(context, url: str) -> tuple[list[dict], int]:
    """The user's inbox items (newest 1000 notifications) and unread count, by REST."""
    inbox = api(context, "GET", f"{url}/api/inbox?limit=1000")
    return [n for n in inbox["notifications"] if is_inbox_item(n)], inbox["unread"]


def badge(page: Page):
    return page.get_by_test_id("unread")


def unread_rows(page: Page):
    return page.locator('[data-testid="notification"][data-unread="true"]')


# Records every notification event the page's socket gets (the client exposes
# itself as window.__notifylab); the socket object outlives reconnects.
RECORD_NOTIFICATIONS = """() => {
  window.__got = [];
  window.__notifylab.socket.on('notification',
    n => window.__got.push([n.id, n.operation, n.type, n.step]));
}"""


# Records every (state, step) an operation row shows, as React renders it.
RECORD_OPERATIONS = """() => {
  window.__seen = [];
  const last = {};
  const record = () => {
    for (const row of document.querySelectorAll('[data-testid="operation"]')) {
      const value = row.dataset.state + ':' + row.dataset.step;
      if (last[row.dataset.id] !== value) {
        last[row.dataset.id] = value;
        window.__seen.push([row.dataset.id, row.dataset.state, Number(row.dataset.step)]);
      }
    }
  };
  new MutationObserver(record).observe(document.body,
    {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state', 'data-step']});
  record();
}"""


# --- tests -------------------------------------------------------------------


def test_two_tabs_on_two_instances_follow_one_operation(stack, new_context):
    context = new_context()
    user = new_username()
    tab_a = context.new_page()
    sign_up(tab_a, stack.a.url, user, "a")
    tab_b = context.new_page()
    open_signed_in(tab_b, stack.b.url, "b")  # same cookie, other instance
    tab_b.evaluate(RECORD_OPERATIONS)

    steps = 4
    op_id = start_operation(tab_a, "report", steps=steps, step_seconds=0.3)

    # Tab b (instance b) sees the operation live, every step, then its end.
    row = op_row(tab_b, op_id)
    expect(row).to_have_attribute("data-state", "succeeded")
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    seen = [(state, step) for op, state, step in tab_b.evaluate("window.__seen") if op == op_id]
    running_steps = [step for state, step in seen if state == "running" and step > 0]
    assert running_steps == list(range(1, steps + 1)), seen
    assert seen[-1] == ("succeeded", steps), seen
    expect(op_row(tab_a, op_id)).to_have_attribute("data-state", "succeeded")

    # The inbox lists the outcome alone (the steps were the card's), unread:
    # one item to read in both tabs, as the server counts it.
    for tab in (tab_a, tab_b):
        expect(notes(tab, op_id, "succeeded")).to_have_count(1)
        expect(notes(tab, op_id)).to_have_count(1)
        expect(badge(tab)).to_have_text("1")
    items, unread = inbox_items(context, stack.a.url)
    assert [(n["operation"], n["type"]) for n in items] == [(op_id, "operation.succeeded")]
    assert unread == 1

    # A second operation: two items, two unread, in both tabs.
    second = start_operation(tab_b, "export", steps=2, step_seconds=0.1)
    for tab in (tab_a, tab_b):
        expect(notes(tab, second, "succeeded")).to_have_count(1)
        expect(badge(tab)).to_have_text("2")
        expect(tab.get_by_test_id("notification")).to_have_count(2)
    assert inbox_items(context, stack.b.url)[1] == 2

    # Mark the older one read in tab b: tab a's badge follows, the newer stays unread.
    notes(tab_b, op_id, "succeeded").get_by_role("button", name="Mark read").click()
    for tab in (tab_b, tab_a):
        expect(badge(tab)).to_have_text("1")
        expect(unread_rows(tab)).to_have_count(1)
        expect(unread_rows(tab)).to_have_attribute("data-operation", second)
    assert inbox_items(context, stack.a.url)[1] == 1

    # Mark all read in tab a: tab b's badge clears.
    tab_a.get_by_role("button", name="Mark all read").click()
    expect(badge(tab_a)).to_have_text("0")
    expect(badge(tab_b)).to_have_text("0")
    expect(unread_rows(tab_b)).to_have_count(0)
    assert inbox_items(context, stack.b.url)[1] == 0

    # The sessions panel marks this tab's socket, on its own instance.
    mine = tab_b.locator('[data-testid="socket"][data-this-tab="true"]')
    expect(mine).to_have_count(1)
    expect(mine).to_have_attribute("data-instance", "b")
    # The browser connected by long-polling, then upgraded; the listing (it
    # refreshes every few seconds) must say so.
    expect(mine).to_contain_text("websocket")


def test_another_user_sees_none_of_it(stack, new_context):
    alice_ctx, bob_ctx = new_context(), new_context()
    alice = alice_ctx.new_page()
    sign_up(alice, stack.a.url, new_username(), "a")
    alice_b = alice_ctx.new_page()
    open_signed_in(alice_b, stack.b.url, "b")
    bob = bob_ctx.new_page()
    sign_up(bob, stack.b.url, new_username(), "b")  # the same instance as alice_b

    op_id = start_operation(alice, "export", steps=3, step_seconds=0.2)
    # By the time alice's tab on instance b has everything, instance b has
    # delivered all of it: bob would have it by now if it leaked.
    expect(op_row(alice_b, op_id)).to_have_attribute("data-state", "succeeded")
    expect(notes(alice_b, op_id, "succeeded")).to_have_count(1)

    expect(bob.get_by_test_id("notification")).to_have_count(0)
    expect(bob.get_by_test_id("operation")).to_have_count(0)
    expect(bob.get_by_test_id("unread")).to_have_text("0")
    assert api(bob_ctx, "GET", f"{stack.b.url}/api/operations")["operations"] == []
    assert api(bob_ctx, "GET", f"{stack.b.url}/api/inbox")["notifications"] == []
    response = bob_ctx.request.get(f"{stack.b.url}/api/operations/{op_id}")
    assert response.status == 404


def test_reconnect_after_instance_restart_has_no_gap_and_no_duplicate(stack, new_context):
    context = new_context()
    tab_a = context.new_page()
    sign_up(tab_a, stack.a.url, new_username(), "a")
    tab_a.evaluate(RECORD_NOTIFICATIONS)
    tab_b = context.new_page()
    open_signed_in(tab_b, stack.b.url, "b")

    # Something already seen, so that the reconnect sends a last_id.
    first = start_operation(tab_b, "report", steps=2, step_seconds=0.1)
    expect(op_row(tab_a, first)).to_have_attribute("data-state", "succeeded")
    expect(notes(tab_a, first, "succeeded")).to_have_count(1)

    stack.a.kill()  # instance a crashes under tab a
    expect(connection(tab_a)).to_have_attribute("data-status", "reconnecting")
    expect(connection(tab_a)).to_contain_text("Reconnecting")

    missed_steps = 5
    missed = start_operation(tab_b, "export", steps=missed_steps, step_seconds=0.1)
    expect(op_row(tab_b, missed)).to_have_attribute("data-state", "succeeded")
    expect(connection(tab_a)).to_have_attribute("data-status", "reconnecting")

    stack.a.start()  # same port, same instance id
    expect_connected(tab_a, "a")
    expect(op_row(tab_a, missed)).to_have_attribute("data-state", "succeeded")
    expect(op_row(tab_a, missed)).to_have_attribute("data-step", str(missed_steps))
    # hello's snapshot can finish the card before the replay is through; the
    # replay's last notification is the missed outcome, listed in the inbox.
    expect(notes(tab_a, missed, "succeeded")).to_have_count(1)

    # The replay brought every notification tab a missed, once each and in
    # stream order, progress included (the card needs it) ...
    got = tab_a.evaluate("window.__got")
    got_ids = [g[0] for g in got]
    assert len(got_ids) == len(set(got_ids)), f"duplicates: {got}"
    assert got_ids == sorted(got_ids, key=id_key), got
    of_missed = [(type_, step) for _, op, type_, step in got if op == missed]
    assert of_missed == [
        ("operation.queued", 0),
        ("operation.started", 0),
        *(("operation.progress", step) for step in range(1, missed_steps + 1)),
        ("operation.succeeded", missed_steps),
    ], got
    last_id = api(context, "GET", f"{stack.b.url}/api/inbox?limit=1")["last_id"]
    assert tab_a.evaluate("window.__notifylab.getState().inbox.lastId") == last_id

    # ... and the inbox lists the two outcomes only, newest first, counted
    # as the server counts them, without a page reload.
    items, unread = inbox_items(context, stack.b.url)
    assert [(n["operation"], n["type"]) for n in items] == [
        (first, "operation.succeeded"),
        (missed, "operation.succeeded"),
    ]
    expected = [n["id"] for n in items]
    expect(tab_a.get_by_test_id("notification")).to_have_count(len(expected))
    ids = shown_ids(tab_a)
    assert ids == sorted(expected, key=id_key, reverse=True), f"shown {ids}, inbox {expected}"
    assert unread == 2
    expect(badge(tab_a)).to_have_text("2")
    expect(notes(tab_a, missed, "progress")).to_have_count(0)


def test_revoked_session_is_signed_out(stack, new_context):
    user = new_username()
    laptop_ctx, phone_ctx = new_context(), new_context(viewport={"width": 390, "height": 844})
    laptop = laptop_ctx.new_page()
    sign_up(laptop, stack.a.url, user, "a")
    phone = phone_ctx.new_page()
    sign_in(phone, stack.b.url, user, "b")

    sessions = laptop.get_by_test_id("session")
    expect(sessions).to_have_count(2)
    other = laptop.locator('[data-testid="session"][data-current="false"]')
    expect(other.get_by_test_id("socket")).to_have_attribute("data-instance", "b")
    other.get_by_role("button", name="Revoke session").click()

    expect(phone.get_by_test_id("signed-out")).to_contain_text("signed out from another device")
    expect(phone.get_by_label("Username")).to_be_visible()
    expect(phone.get_by_role("button", name="Sign in")).to_be_visible()
    assert phone_ctx.request.get(f"{stack.b.url}/api/me").status == 401

    expect(sessions).to_have_count(1)
    expect_connected(laptop, "a")
    assert laptop_ctx.request.get(f"{stack.a.url}/api/me").status == 200

    # The phone signs in again; "Sign out everywhere" on the laptop ends both.
    sign_in(phone, stack.b.url, user, "b")
    expect(sessions).to_have_count(2)
    laptop.get_by_role("button", name="Sign out everywhere").click()
    expect(laptop.get_by_test_id("signed-out")).to_contain_text("You signed out of every session")
    expect(phone.get_by_test_id("signed-out")).to_contain_text("signed out from another device")
    assert laptop_ctx.request.get(f"{stack.a.url}/api/me").status == 401
    assert phone_ctx.request.get(f"{stack.b.url}/api/me").status == 401


def test_screenshot_of_two_tabs(stack, new_context):
    context = new_context(viewport={"width": 900, "height": 960})
    tab_a = context.new_page()
    sign_up(tab_a, stack.a.url, "lab_" + new_username()[1:8], "a")
    tab_b = context.new_page()
    open_signed_in(tab_b, stack.b.url, "b")

    done = start_operation(tab_a, "report", steps=4, step_seconds=0.1)
    expect(op_row(tab_b, done)).to_have_attribute("data-state", "succeeded")
    expect(notes(tab_a, done, "succeeded")).to_have_count(1)
    exported = start_operation(tab_b, "export", steps=3, step_seconds=0.1)
    expect(op_row(tab_a, exported)).to_have_attribute("data-state", "succeeded")
    expect(notes(tab_a, exported, "succeeded")).to_have_count(1)
    expect(badge(tab_b)).to_have_text("2")
    # Read the report's outcome: the export's stays unread, in both tabs.
    notes(tab_a, done, "succeeded").get_by_role("button", name="Mark read").click()
    expect(badge(tab_b)).to_have_text("1")
    expect(badge(tab_a)).to_have_text("1")
    # Long enough (60 x 0.3 s) to still be running when it is cancelled below.
    running = start_operation(tab_b, "train", steps=60, step_seconds=0.3)
    for tab in (tab_a, tab_b):
        tab.wait_for_function(
            """id => Number(document.querySelector(`[data-testid="operation"][data-id="${id}"]`)
                      ?.dataset.step || 0) >= 8""",
            arg=running,
            timeout=WAIT_MS,
        )

    shots = [base64.b64encode(tab.screenshot()).decode() for tab in (tab_a, tab_b)]
    composer = context.new_page()
    composer.set_viewport_size({"width": 1840, "height": 1020})
    composer.set_content(f"""<!doctype html><html><body style="margin:0;background:#d9dce6;
      font:600 15px system-ui,sans-serif;color:#1c2030">
      <div style="display:flex;gap:16px;padding:14px 14px 0">
        <figure style="margin:0"><figcaption style="padding:0 0 6px">Tab 1 — instance a
          ({stack.a.url.rsplit(":", 1)[1]})</figcaption>
          <img src="data:image/png;base64,{shots[0]}" width="900"
               style="display:block;border-radius:8px"></figure>
        <figure style="margin:0"><figcaption style="padding:0 0 6px">Tab 2 — instance b
          ({stack.b.url.rsplit(":", 1)[1]})</figcaption>
          <img src="data:image/png;base64,{shots[1]}" width="900"
               style="display:block;border-radius:8px"></figure>
      </div></body></html>""")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    composer.screenshot(path=str(SCREENSHOT), full_page=True)
    assert Path(SCREENSHOT).stat().st_size > 20_000

    # Cancel from tab a; tab b shows it.
    expect(op_row(tab_a, running)).to_have_attribute("data-state", "running")
    op_row(tab_a, running).get_by_role("button", name="Cancel operation").click()
    expect(op_row(tab_b, running)).to_have_attribute("data-state", "cancelled")
    expect(notes(tab_b, running, "cancelled")).to_have_count(1)
