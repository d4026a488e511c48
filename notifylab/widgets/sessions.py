"""Every session of a user, and where its sockets are, refreshed live.

A *session* is one login (a browser, a notebook, a phone); each has zero or
more *sockets*, each held by one server instance. This panel lists them from
``GET /api/sessions`` (which reads the presence records the instances keep
in Redis), so it shows the whole cluster, not one instance's view. Revoking
a session logs it out everywhere: the server tells its sockets
(``session:revoked``) and closes them, on whichever instance they are.

Unlike :class:`~notifylab.widgets.panel.NotificationPanel`, nothing pushes
session changes to a client, so this panel asks the server again every few
seconds (and after each Revoke or Refresh).
"""

from __future__ import annotations

import asyncio
import html

import ipywidgets as w

from ..lab.client import Client
from .panel import LiveBox, clock


class SessionsPanel(LiveBox):
    """The sessions of ``client``'s user with their sockets, a Revoke button
    each, and Refresh. Re-fetched every ``every`` seconds, each fetch bounded
    by ``timeout``; it stops asking once ``client`` is revoked or closed, and
    on :meth:`close` (which leaves the client open).

    For tests and notebooks: :meth:`session_ids`, :meth:`sockets_of`,
    :meth:`revoke_button`, ``refresh_button``, ``error_label``, ``fetched``
    (how many fetches succeeded).
    """

    def __init__(self, client: Client, *, every: float = 3.0, timeout: float = 5.0):
        self.client = client
        self.every, self.timeout = every, timeout
        self.fetched = 0
        self._sessions: list[dict] = []
        self._rows: dict[str, tuple[w.HTML, w.Button, w.HBox]] = {}  # session id -> its widgets
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _button: self.run_soon("refresh", self.refresh))
        self.summary = w.Label()
        self.list_box = w.VBox()
        super().__init__([w.HBox([self.summary, self.refresh_button]), self.list_box], every)

    def __repr__(self) -> str:
        return f"<SessionsPanel user={getattr(getattr(self, 'client', None), 'user', None)}>"

    # -- what a caller reads ------------------------------------------------

    def session_ids(self) -> list[str]:
        """The sessions listed, as last fetched (oldest first, as the server sends them)."""
        return [s["id"] for s in self._sessions]

    def sockets_of(self, session_id: str) -> list[dict]:
        """The session's sockets as last fetched: sid, instance, transport, connected_at."""
        return next(s.get("sockets", []) for s in self._sessions if s["id"] == session_id)

    def revoke_button(self, session_id: str) -> w.Button:
        """The Revoke button of a listed session (KeyError if not listed)."""
        return self._rows[session_id][1]

    async def refresh(self) -> None:
        """Fetch the sessions now and show them."""
        async with asyncio.timeout(self.timeout):
            self._sessions = await self.client.sessions()
        self.fetched += 1
        self.render()

    # -- the live part ---------------------------------------------------------

    async def _live(self) -> None:
        # Replaces LiveBox's render loop: here the state lives on the server.
        while not (self.client.revoked or self.client.http.closed):
            await self._guard("refresh", self.refresh)
            await asyncio.sleep(self.every)
        self.summary.value = "stopped: this session was revoked" if self.client.revoked else "stopped"

    def _revoke(self, session_id: str) -> None:
        async def revoke() -> None:
            await self.client.revoke(session_id)
            # Revoking our own session ends our right to ask for the list.
            if session_id != (self.client.hello or {}).get("session"):
                await self.refresh()

        self.run_soon("revoke", revoke)

    def render(self) -> None:
        sockets = sum(len(s.get("sockets", [])) for s in self._sessions)
        self.summary.value = f"{len(self._sessions)} sessions, {sockets} sockets"
        listed = {s["id"] for s in self._sessions}
        for gone in set(self._rows) - listed:  # revoked or expired since last time
            for widget in self._rows.pop(gone):
                widget.close()
        for session in self._sessions:
            if session["id"] not in self._rows:
                self._rows[session["id"]] = self._new_row(session["id"])
            self._rows[session["id"]][0].value = self._session_html(session)
        boxes = tuple(self._rows[s["id"]][2] for s in self._sessions)
        if boxes != self.list_box.children:
            self.list_box.children = boxes

    def _new_row(self, session_id: str) -> tuple[w.HTML, w.Button, w.HBox]:
        info = w.HTML(layout=w.Layout(width="36em"))
        button = w.Button(
            description="Revoke", icon="ban", button_style="danger", layout=w.Layout(width="7em")
        )
        button.on_click(lambda _button: self._revoke(session_id))
        return info, button, w.HBox([info, button])

    @staticmethod
    def _session_html(session: dict) -> str:
        this = " <b>(this session)</b>" if session.get("current") else ""
        sockets = "".join(
            f"<li><code>{html.escape(sock['sid'][:8])}</code> on instance "
            f"<b>{html.escape(str(sock.get('instance')))}</b> via {html.escape(str(sock.get('transport')))}"
            f" since {clock(sock.get('connected_at'))}</li>"
            for sock in session.get("sockets", [])
        )
        device = html.escape(session.get("device", "?"))
        return (
            f"<code>{html.escape(session['id'][:8])}</code>{this} · {device}"
            f" · logged in {clock(session.get('created'))}, last seen {clock(session.get('last_seen'))}"
            f'<ul style="margin:0;padding-left:1.2em">{sockets or "<li><i>no sockets</i></li>"}</ul>'
        )

    def close(self) -> None:
        """Stop refreshing and close the panel's widgets (the client stays open)."""
        super().close()
        for row in self._rows.values():
            for widget in row:
                widget.close()
