"""Live panels for notebooks (ipywidgets 8), built on the kernel-side client.

In a notebook cell (top-level ``await`` works there)::

    from notifylab.lab import Client
    from notifylab.widgets import NotificationPanel, SessionsPanel, Timeline

    me = Client("http://127.0.0.1:8081")
    await me.login("ann", "correct horse")
    panel = NotificationPanel(me)   # connects me, then stays in sync
    panel                           # shows it; browser tabs of ann agree with it
    SessionsPanel(me)               # every session of ann, on every instance
    Timeline(me)                    # where each notification spent its time

Each panel is a ``VBox`` kept live by one asyncio task on the kernel's loop;
``panel.close()`` stops it and leaves the client open (you own the client).
Like ``notifylab.lab``, this package needs neither the server nor the store.
"""

from .panel import LiveBox, NotificationPanel, connection_state
from .sessions import SessionsPanel
from .timeline import Timeline

__all__ = ["LiveBox", "NotificationPanel", "SessionsPanel", "Timeline", "connection_state"]
