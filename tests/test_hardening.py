"""Attacks and careless clients: each test here failed before its fix."""

from __future__ import annotations

import pytest

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
