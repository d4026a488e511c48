"""The notebook widgets against the real cluster: their trait values are what
a learner sees, so the tests read traits (not the client underneath).

No kernel is needed: outside one, ipywidgets 8 gives each widget a dummy
comm, and models, traits and ``Button.click()`` work as in a notebook.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator

import ipywidgets as w
import pytest

from notifylab.widgets import NotificationPanel, SessionsPanel, Timeline
from support import servers

WAIT = 15  # seconds: a bound on every wait, far above what any step needs


async def eventually(check: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Wait until ``check()`` is true (a widget updates on its own task's time)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():  # noqa: ASYNC110 (widget traits have no awaitable change event)
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"not true after {timeout} s: {what}")


@pytest.fixture
def keep(clients) -> Iterator[Callable]:
    """Close every widget a test made, before its clients close (hence ``clients``)."""
    made: list[w.Widget] = []

    def keep(widget):
        made.append(widget)
        return widget

    yield keep
    for widget in made:
        widget.close()


def ended(client, op_id: str, type_: str) -> Callable[[], bool]:
    return lambda: any(n["operation"] == op_id and n["type"] == type_ for n in client.notifications)


# -- NotificationPanel -------------------------------------------------------


async def test_panel_connects_and_follows_an_operation_started_on_the_other_instance(stack, clients, keep):
    url_a, url_b = servers(stack)
    me = await clients(url_a, connect=False)
    panel = keep(NotificationPanel(me))
    assert repr(panel) == f"<NotificationPanel user={me.user}>"
    await eventually(lambda: panel.connection_label.value == "connected", "the panel connected its client")
    assert (panel.instance_label.value, panel.transport_label.value) == ("a", "websocket")

    other = await clients(url_b, user=me.user)
    op = (await other.start("report", steps=3, step_seconds=0.05))["id"]
    await eventually(lambda: panel.state_of(op) == "succeeded", "the panel shows the operation succeeded")
    assert panel.progress_of(op) == 100
    assert panel.cancel_button(op).disabled
    assert me.unread and panel.unread_label.value == f"{me.unread} unread"
    assert "succeeded" in panel.inbox.value and op[:8] in panel.inbox.value
    assert panel.error_label.value == ""

    # Idle, the panel's task re-reads the client but changes no trait, so it
    # sends nothing to the browser.
    changes: list[str] = []
    for widget in [panel, *panel_widgets(panel)]:
        widget.observe(lambda change, widget=widget: changes.append(f"{widget!r}.{change['name']}"))
    await asyncio.sleep(0.5)
    assert changes == []


def panel_widgets(box: w.Widget) -> list[w.Widget]:
    found = []
    for child in getattr(box, "children", ()):
        found += [child, *panel_widgets(child)]
    return found


async def test_panel_start_button_starts_what_the_controls_say(stack, clients, keep):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    other = await clients(url_b, user=me.user)
    panel = keep(NotificationPanel(me))
    panel.kind.value = "train"
    await eventually(lambda: panel.steps.value == 20, "choosing a kind fills in its default steps")
    panel.steps.value, panel.step_seconds.value = 2, 0.05
    await asyncio.to_thread(panel.start_button.click)  # as from a comm on a subshell thread

    await other.wait_for(lambda: any(n["type"] == "operation.succeeded" for n in other.notifications), WAIT)
    note = next(n for n in other.notifications if n["type"] == "operation.succeeded")
    assert (note["kind"], note["steps"]) == ("train", 2)
    await eventually(lambda: panel.progress_of(note["operation"]) == 100, "the panel's bar is full")


async def test_panel_cancel_button_cancels_for_every_session(stack, clients, keep):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    other = await clients(url_b, user=me.user)
    panel = keep(NotificationPanel(me))
    op = (await other.start("export", steps=100, step_seconds=0.5))["id"]
    await eventually(lambda: panel.state_of(op) == "running", "the panel shows the operation running")
    assert 0 <= panel.progress_of(op) < 100

    panel.cancel_button(op).click()
    await other.wait_for(ended(other, op, "operation.cancelled"), WAIT)
    await eventually(lambda: panel.state_of(op) == "cancelled", "the panel shows it cancelled")
    assert panel.cancel_button(op).disabled and panel.progress_of(op) < 100
    assert panel.error_label.value == ""

    # Cancelling it again is refused by the server: the panel says so.
    panel.cancel_button(op).click()
    await eventually(lambda: "cancel failed" in panel.error_label.value, "the refusal is shown")


async def test_mark_read_agrees_between_the_panel_and_other_sessions(stack, clients, keep):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    other = await clients(url_b, user=me.user)
    panel = keep(NotificationPanel(me))
    op = (await other.start("report", steps=2, step_seconds=0.05))["id"]
    await eventually(lambda: panel.state_of(op) == "succeeded", "the operation ended")
    await other.wait_for(ended(other, op, "operation.succeeded"), WAIT)
    assert panel.unread_label.value != "0 unread"

    await other.mark_read()
    await eventually(
        lambda: panel.unread_label.value == "0 unread", "another session's mark-read reached the panel"
    )

    op = (await other.start("report", steps=1, step_seconds=0.05))["id"]
    await other.wait_for(ended(other, op, "operation.succeeded"), WAIT)
    await eventually(lambda: panel.unread_label.value != "0 unread", "new notifications count as unread")
    await eventually(lambda: me.last_id == other.last_id, "the panel's session has them all")
    panel.mark_read_button.click()
    await other.wait_for(lambda: other.unread == 0, WAIT)
    await eventually(lambda: panel.unread_label.value == "0 unread", "the panel's own mark-read shows")


async def test_close_stops_the_panel_task_and_leaves_the_client_open(stack, clients, keep):
    me = await clients(servers(stack)[0])
    panel = keep(NotificationPanel(me))
    await eventually(lambda: panel.connection_label.value == "connected", "the panel is live")
    panel.close()
    await asyncio.wait({panel.task}, timeout=WAIT)
    assert panel.task.cancelled()
    assert me.connected


def test_a_widget_needs_a_running_loop_and_the_package_needs_no_server():
    with pytest.raises(RuntimeError, match="running asyncio loop"):
        NotificationPanel(object())  # type: ignore[arg-type]
    code = (
        "import sys, notifylab.widgets; "
        "print([m for m in sys.modules if m.startswith(('notifylab.server', 'notifylab.store'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- SessionsPanel -------------------------------------------------------------


async def test_sessions_panel_lists_sessions_and_revokes_one(stack, clients, keep):
    url_a, url_b = servers(stack)
    keeper = await clients(url_a)
    victim = await clients(url_b, user=keeper.user)
    sessions = keep(SessionsPanel(keeper, every=0.3))
    assert repr(sessions) == f"<SessionsPanel user={keeper.user}>"
    victim_panel = keep(NotificationPanel(victim))
    mine, theirs = keeper.hello["session"], victim.hello["session"]

    await eventually(lambda: sorted(sessions.session_ids()) == sorted([mine, theirs]), "two sessions listed")
    assert [s["instance"] for s in sessions.sockets_of(theirs)] == ["b"]
    assert [s["sid"] for s in sessions.sockets_of(mine)] == [keeper.sio.get_sid()]
    assert sessions.summary.value == "2 sessions, 2 sockets"

    third = await clients(url_b, user=keeper.user)
    await eventually(
        lambda: third.hello["session"] in sessions.session_ids(),
        "the periodic refresh found the third session",
    )

    sessions.revoke_button(theirs).click()
    await victim.wait_for(lambda: victim.revoked and not victim.connected, WAIT)
    await eventually(lambda: theirs not in sessions.session_ids(), "the revoked session left the list")
    await eventually(lambda: victim_panel.connection_label.value == "revoked", "its own panel says revoked")
    assert keeper.connected and third.connected and sessions.error_label.value == ""


# -- Timeline ------------------------------------------------------------------


async def test_timeline_rows_have_every_stamp_and_the_delivering_instance(stack, clients, keep):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    other = await clients(url_b, user=me.user)
    timeline = keep(Timeline([me, other]))
    op = (await me.start("report", steps=3, step_seconds=0.05))["id"]
    for client in (me, other):
        await client.wait_for(ended(client, op, "operation.succeeded"), WAIT)

    rows = timeline.rows()
    assert len(me.notifications) >= 3 and len(rows) == len(me.notifications) + len(other.notifications)
    for client, instance in ((me, "a"), (other, "b")):
        mine = [r for r in rows if r["instance"] == instance]
        assert [r["id"] for r in mine] == [n["id"] for n in client.notifications]
        assert len({r["session"] for r in mine}) == 1
    for row in rows:
        assert not row["replayed"]
        assert row["latency_ms"] == row["received"] - row["ts"] >= 0
        # One machine, one clock: each stamp comes after the one before it.
        assert row["ts"] <= row["published"] <= row["emitted"] <= row["received"]
        assert row["stream_ms"] == int(row["id"].split("-")[0])
    await eventually(lambda: timeline.svg.value.count("<polyline") == len(rows), "every row is drawn")
    assert "via a" in timeline.svg.value and "via b" in timeline.svg.value


async def test_timeline_draws_replayed_notifications_differently(stack, clients, keep):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    op = (await me.start("report", steps=1, step_seconds=0.05))["id"]
    await me.wait_for(ended(me, op, "operation.succeeded"), WAIT)

    late = await clients(url_b, user=me.user, connect=False)
    await late.connect(catch_up=True)  # gets the inbox replayed from the stream
    await late.wait_for(ended(late, op, "operation.succeeded"), WAIT)
    timeline = keep(Timeline(late))
    rows = timeline.rows()
    assert [r["id"] for r in rows] == [n["id"] for n in me.notifications]
    assert all(r["replayed"] and r["published"] is None and r["instance"] == "b" for r in rows)
    await eventually(lambda: timeline.svg.value.count("stroke-dasharray") == len(rows), "replays are dashed")
