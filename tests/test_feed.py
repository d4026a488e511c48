"""The feed's three rules, in process (fakeredis, a recording Socket.IO server).

These point at the cause when delivery breaks; test_delivery.py and
test_restarts.py prove the same guarantees end to end.
"""

from __future__ import annotations

from fakes import fake_redis, make_feed
from notifylab.ids import ZERO
from notifylab.protocol import user_room

ANN = "ann"
ROOM = user_room(ANN)


def note(n: int) -> dict:
    return {
        "user": ANN,
        "type": "operation.progress",
        "operation": "op1",
        "kind": "report",
        "state": "running",
        "step": n,
        "steps": 9,
        "progress": n / 9,
        "message": f"step {n}",
        "ts": 1,
    }


async def test_rule_1_bind_then_read_nothing_falls_between():
    feed, sio, inbox, _ = make_feed(fake_redis())
    before = await inbox.append(ANN, note(1))

    async def appended_during_the_bind(user: str) -> None:
        # Published before this instance's binding took effect, so it never
        # arrives here live: only the stream has it.
        await inbox.append(user, note(2))

    sio.manager.on_subscribe = appended_during_the_bind
    sio.manager.connected.add("s1")
    replayed = await feed.attach("s1", ANN, last_id=before["id"])
    # Read after the bind, the cursor covers the note, so the replay has it.
    assert replayed == 1 and len(sio.notifications("s1")) == 1
    assert feed.cursors[ANN] == await inbox.last_id(ANN)
    assert sio.manager.calls == [("subscribe", ANN)] and "s1" in sio.rooms[ROOM]


async def test_rule_2_the_cursor_drops_what_was_emitted_already():
    feed, sio, inbox, metrics = make_feed(fake_redis())
    sio.manager.connected.add("s1")
    await feed.attach("s1", ANN, last_id=None)
    first = await inbox.append(ANN, note(1))
    feed.receive([first])
    feed.receive([first])  # the same message again (redelivered, or our own emit coming back)
    await feed.settle()
    assert sio.notifications(ROOM) == [first["id"]]
    assert metrics.duplicates._value.get() == 1


async def test_rule_3_a_gap_named_by_prev_is_read_from_the_stream_in_order():
    feed, sio, inbox, metrics = make_feed(fake_redis())
    sio.manager.connected.add("s1")
    await feed.attach("s1", ANN, last_id=None)
    lost = await inbox.append(ANN, note(1))  # its publish never arrives
    second = await inbox.append(ANN, note(2))
    assert second["prev"] == lost["id"]
    feed.receive([second])
    await feed.settle()
    assert sio.notifications(ROOM) == [lost["id"], second["id"]]
    assert metrics.gaps._value.get() == 1
    emitted = [data for event, data, _ in sio.emitted if event == "notification"]
    assert all("prev" not in data and data["instance"] == "unit-instance" for data in emitted)


async def test_the_last_socket_leaving_unbinds_and_forgets_the_cursor():
    feed, sio, inbox, _ = make_feed(fake_redis())
    sio.manager.connected.update({"s1", "s2"})
    await feed.attach("s1", ANN, last_id=None)
    await feed.attach("s2", ANN, last_id=ZERO)
    await feed.detach("s1", ANN)
    assert ("unsubscribe", ANN) not in sio.manager.calls and ANN in feed.cursors
    await feed.detach("s2", ANN)
    assert sio.manager.calls[-1] == ("unsubscribe", ANN) and ANN not in feed.cursors
    late = await inbox.append(ANN, note(1))
    feed.receive([late])  # nobody here any more: nothing emitted
    await feed.settle()
    assert sio.notifications() == []


async def test_a_socket_gone_before_attach_is_not_bound():
    feed, sio, _, _ = make_feed(fake_redis())
    assert await feed.attach("gone", ANN, last_id=None) == 0
    assert sio.manager.calls == [] and ANN not in feed.members


async def test_a_users_lock_lives_only_while_a_task_holds_or_waits_on_it():
    """Feed keeps one lock per user while anyone holds or waits on it, never
    two, and forgets it once the user's last socket left (no lock per user
    who ever connected)."""
    import asyncio

    feed, sio, _, _ = make_feed(fake_redis())
    sio.manager.connected.update({"s1", "s2", "s3"})
    release, seen = asyncio.Event(), []

    async def slow_bind(user: str) -> None:
        seen.append(user)
        await release.wait()

    sio.manager.on_subscribe = slow_bind
    attaches = [asyncio.create_task(feed.attach(sid, ANN, last_id=None)) for sid in ("s1", "s2", "s3")]
    await asyncio.sleep(0.01)  # s1 holds the lock inside the bind, s2 and s3 wait on it
    assert len(feed._locks) == 1
    release.set()
    await asyncio.gather(*attaches)
    # The waiters went through the same lock, one after the other: one bind only.
    assert len(seen) == 1 and sio.manager.calls == [("subscribe", ANN)]
    assert feed.members[ANN] == {"s1", "s2", "s3"} and feed._locks == {}
    for sid in ("s1", "s2", "s3"):
        await feed.detach(sid, ANN)
    assert feed._locks == {} and feed.members == {} and feed.cursors == {}


async def test_a_batch_goes_out_in_bus_order_through_both_paths():
    """What arrived in one read is one ``receive``: the notifications that
    follow the cursor go out at once (no await), the rest wait behind the
    user's lock, and the sockets still see stream order, with no gap."""
    feed, sio, inbox, metrics = make_feed(fake_redis())
    sio.manager.connected.add("s1")
    await feed.attach("s1", ANN, last_id=None)
    notes = [await inbox.append(ANN, note(n)) for n in range(1, 6)]
    arrived = [notes[0], notes[2], notes[0], notes[3], notes[4]]  # 2 lost, 1 again
    feed.receive(arrived)
    assert sio.notifications(ROOM) == [notes[0]["id"]]  # the fast path, before any await
    await feed.settle()
    assert sio.notifications(ROOM) == [n["id"] for n in notes]
    # The gap is read to the stream's end (2 to 5), so 4 and 5 come again after it, dropped with 1.
    assert metrics.gaps._value.get() == 1 and metrics.duplicates._value.get() == 3
    assert feed._locks == {}


async def test_notifications_wait_behind_an_attach_in_progress():
    """While a socket of the user is being attached (its replay not sent
    yet), a notification that arrives takes the slow path and goes out
    after the replay: the new socket never sees a live one before what it
    missed."""
    import asyncio

    feed, sio, inbox, _ = make_feed(fake_redis())
    sio.manager.connected.update({"s1", "s2"})
    await feed.attach("s1", ANN, last_id=None)
    missed = await inbox.append(ANN, note(1))
    feed.receive([missed])
    live = await inbox.append(ANN, note(2))
    release = asyncio.Event()

    async def before_replay(_cursor: str) -> None:
        await release.wait()

    attach = asyncio.create_task(feed.attach("s2", ANN, last_id=ZERO, before_replay=before_replay))
    await asyncio.sleep(0.01)  # s2's attach holds the lock
    feed.receive([live])
    assert sio.notifications(ROOM) == [missed["id"]]  # held back
    release.set()
    assert await attach == 1
    await feed.settle()
    assert sio.notifications("s2") == [missed["id"]]  # the replay, to s2 alone
    assert sio.notifications(ROOM) == [missed["id"], live["id"]]
    kinds = [to for event, _, to in sio.emitted if event == "notification"]
    assert kinds == [ROOM, "s2", ROOM]  # live after the replay
