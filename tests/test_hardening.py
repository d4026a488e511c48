"""Attacks and careless clients: each test here failed before its fix."""

from __future__ import annotations

import pytest
import socketio

from notifylab.lab.client import Client
from support import servers
from test_routing import metric


@pytest.mark.parametrize("event", ["disconnect", "connect", "connect_error", "no-such-event"])
async def test_a_reserved_or_unknown_event_is_refused_and_revocation_still_holds(stack, clients, event):
    url_a, url_b = servers(stack)
    me = await clients(url_a)
    before = await metric(url_a, "notifylab_sockets_connected")
    ack = await me.sio.call(event, {"session": me.token}, timeout=5)
    assert ack["ok"] is False and ("reserved" in ack["error"] or "unknown event" in ack["error"])
    assert me.connected and await metric(url_a, "notifylab_sockets_connected") == before

    # The socket is still where revocation looks for it: signing out
    # everywhere (from another instance) disconnects it.
    other = await clients(url_b, user=me.user, connect=False)
    await other.logout_all()
    await me.wait_for(lambda: me.revoked and not me.connected, 10)
    assert await metric(url_a, "notifylab_sockets_connected") == before - 1


@pytest.mark.parametrize("bad", ["１２-3", "99999999999999999999999-0", "1-18446744073709551616", "12"])
async def test_loose_ids_are_refused_on_the_socket_side_too(stack, clients, bad):
    """Finding 4 on the socket side: `sync` and `auth.last_id` took
    full-width digits and numbers past Redis's range, and broke the user's
    sockets at welcome."""
    url_a, _ = servers(stack)
    me = await clients(url_a)
    ack = await me.sio.call("sync", {"after": bad}, timeout=5)
    assert ack["ok"] is False and ack["field"] == "after"
    late = Client(url_a, reconnect=False)
    late.token, late.last_id = me.token, bad
    with pytest.raises(socketio.exceptions.ConnectionError):
        await late.connect()
    assert late.connect_errors and "last_id" in str(late.connect_errors[-1])
    await late.close()
    # The user's sockets are fine: a new one is welcomed and replays from a good id.
    again = await clients(url_a, user=me.user)
    assert again.hello is not None and me.connected
