"""A live notification panel: one more session of a user, inside a notebook.

The panel shows what a browser tab of the same user shows (the operations
with their progress, the inbox, the unread count) and keeps in step with
those tabs, because it is one more Socket.IO session of that user: every
notification and every ``inbox:read`` reaches it as it reaches them.

How it stays live in a Jupyter kernel (see docs "The kernel side"):

* The :class:`~notifylab.lab.client.Client` receives events on the kernel's
  asyncio loop and updates plain Python state (``notifications``,
  ``operations``, ``unread``...).
* One asyncio task per panel copies that state into widget traits every
  ``interval`` seconds (0.1 s by default). Setting a trait to the value it
  already has sends nothing, so an idle panel costs a few dictionary reads.
  Polling rather than waiting on the client's change event keeps the panel
  out of the client's internals, never steals a wake-up from the client's
  own ``wait_for``, and also catches changes that are not events at all (the
  transport in use, ``mark_read``'s new count, a reconnect under way).
* Button callbacks may run on another thread (ipykernel 7 handles comms on
  subshells), so they only hand a coroutine to the loop; what it does is
  shown through traits, and an error goes to ``error_label``, never lost.
* ``print()`` and ``with out:`` do not work from a background task (the
  output would land in whichever cell made the task), which is why every
  update here is a trait.

:class:`LiveBox`, the base of every notifylab widget, holds that pattern once.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as w

from ..kinds import KINDS
from ..lab.client import Client

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
BAR_STYLES = {"succeeded": "success", "failed": "danger", "cancelled": "warning"}


def clock(ms: int | None) -> str:
    """``HH:MM:SS.mmm`` in local time, for a millisecond timestamp."""
    if ms is None:
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def connection_state(client: Client) -> str:
    """``connected``, ``connecting``, ``reconnecting``, ``revoked`` or ``disconnected``."""
    if client.revoked:
        return "revoked"
    if client.connected:
        # The socket is open but the server has not said hello yet.
        return "connected" if client.hello is not None else "connecting"
    # python-socketio keeps no public "reconnecting" flag; its reconnect task
    # is the one sign that it will try again (None after disconnect()).
    if client.reconnecting:  # failing over to another instance, or waiting for one
        return "reconnecting"
    return "disconnected"


class LiveBox(w.VBox):
    """A VBox kept up to date by one asyncio task on the loop that made it.

    Subclasses implement :meth:`render` (copy state into traits; no awaits)
    and may override :meth:`_setup` (awaited once before the first render).
    Make it in a notebook cell or a coroutine: it needs the running loop.
    """

    def __init__(self, children: Iterable[w.Widget], interval: float, **kwargs: Any):
        try:
            # The kernel's loop, captured now: button callbacks may later run
            # on a thread where there is no running loop (or another one).
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"make a {type(self).__name__} in a notebook cell or a coroutine: "
                "it needs a running asyncio loop"
            ) from None
        self.interval = interval
        self.error_label = w.HTML(layout=w.Layout(min_height="0"))
        self._actions: set[asyncio.Task] = set()  # strong references while they run
        self._error_of: str | None = None  # what error_label's error came from
        super().__init__(children=[*children, self.error_label], **kwargs)
        self._task = self._loop.create_task(self._live(), name=f"notifylab {type(self).__name__}")

    @property
    def task(self) -> asyncio.Task:
        """The task that keeps the widget live (done after :meth:`close`)."""
        return self._task

    async def _setup(self) -> None:
        """Awaited once in the task, before the first render."""

    def render(self) -> None:
        """Copy the current state into widget traits."""
        raise NotImplementedError

    async def _live(self) -> None:
        await self._guard("setup", self._setup)
        while True:
            self._render_safely()
            await asyncio.sleep(self.interval)

    def _render_safely(self) -> None:
        try:
            self.render()
        except Exception as exc:
            self.show_error("refresh", exc)

    def show_error(self, what: str, exc: BaseException) -> None:
        """Show ``exc`` in ``error_label`` (the only place errors can go from a task)."""
        self._error_of = what
        self.error_label.value = (
            f'<span style="color:#b00020">{html.escape(what)} failed: '
            f"{html.escape(str(exc) or type(exc).__name__)}</span>"
        )

    async def _guard(self, what: str, action: Callable[[], Awaitable[object]], *, user: bool = False) -> bool:
        """Await ``action()``; show an error rather than raise it. Success
        clears the error label if a user action succeeded, or if the error
        was from this same background step (so a periodic refresh does not
        wipe out a failed click the user has not read yet)."""
        try:
            await action()
        except Exception as exc:
            self.show_error(what, exc)
            return False
        if user or self._error_of == what:
            self.error_label.value, self._error_of = "", None
        return True

    def run_soon(self, what: str, action: Callable[[], Awaitable[object]]) -> None:
        """Run ``action()`` on the widget's loop; safe from any thread.

        ``action`` makes the coroutine (so it is made on the loop's thread);
        an error is shown in ``error_label``; the widget re-renders after it.
        """

        async def run() -> None:
            await self._guard(what, action, user=True)
            self._render_safely()

        def create() -> None:
            task = self._loop.create_task(run(), name=f"notifylab {what}")
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)

        self._loop.call_soon_threadsafe(create)

    def close(self) -> None:
        """Stop the task and close this widget and the ones inside it."""
        task = getattr(self, "_task", None)
        # ipywidgets also calls close() from __del__, perhaps after the loop
        # has ended: only a task still running needs stopping.
        if task is not None and not task.done():
            try:
                same_loop = asyncio.get_running_loop() is self._loop
            except RuntimeError:
                same_loop = False
            # Task.cancel is not thread-safe: from elsewhere, ask the loop.
            task.cancel() if same_loop else self._loop.call_soon_threadsafe(task.cancel)
        for child in _descendants(self):
            child.close()
        super().close()


def _descendants(box: w.Widget) -> list[w.Widget]:
    found: list[w.Widget] = []
    for child in getattr(box, "children", ()):
        found.extend(_descendants(child))
        found.append(child)
    return found


class _OperationRow:
    """The widgets of one operation: what it is, a progress bar, its state, Cancel."""

    def __init__(self, op_id: str, on_cancel: Callable[[str], None]):
        self.title = w.Label(layout=w.Layout(width="14em"))
        self.bar = w.IntProgress(min=0, max=100, layout=w.Layout(width="14em"))
        self.state = w.Label(layout=w.Layout(width="6em"))
        self.message = w.Label(layout=w.Layout(width="16em"))
        self.cancel = w.Button(description="Cancel", icon="stop", layout=w.Layout(width="7em"))
        self.cancel.on_click(lambda _button: on_cancel(op_id))
        self.box = w.HBox([self.title, self.bar, self.state, self.message, self.cancel])

    def show(self, op: Mapping[str, Any]) -> None:
        state = op.get("state", "?")
        progress = op.get("progress")
        if progress is None:
            steps = op.get("steps") or 0
            progress = (op.get("step") or 0) / steps if steps else 0.0
        self.title.value = f"{op.get('kind', '?')} {op['id'][:8]}"
        self.bar.value = 100 if state == "succeeded" else max(0, min(100, round(progress * 100)))
        self.bar.bar_style = BAR_STYLES.get(state, "info")
        self.state.value = state
        self.message.value = op.get("message", "")
        self.cancel.disabled = state in TERMINAL_STATES


class NotificationPanel(LiveBox):
    """One live session of ``client``'s user: start, watch and cancel
    operations, read the inbox. ``client`` must be logged in; the panel
    connects it if it never was. Closing the panel leaves the client open.

    For tests and notebooks: :meth:`progress_of`, :meth:`state_of`,
    :meth:`cancel_button`, ``unread_label``, ``connection_label``,
    ``error_label``, ``start_button``, ``mark_read_button``.
    """

    def __init__(self, client: Client, *, last: int = 10, max_operations: int = 10, interval: float = 0.1):
        self.client = client
        self.last, self.max_operations = last, max_operations
        self._rows: dict[str, _OperationRow] = {}
        self._first_seen: dict[str, float] = {}  # op id -> sort key (newest first)

        self.user_label = w.HTML()
        self.instance_label = w.Label()
        self.transport_label = w.Label()
        self.connection_label = w.Label()
        header = w.HBox(
            [
                self.user_label,
                w.Label("on instance"),
                self.instance_label,
                w.Label("via"),
                self.transport_label,
                w.Label("·"),
                self.connection_label,
            ]
        )

        first = next(iter(KINDS.values()))
        self.kind = w.Dropdown(
            options=[(k.title, k.name) for k in KINDS.values()],
            value=first.name,
            description="Kind",
            layout=w.Layout(width="18em"),
        )
        self.steps = w.BoundedIntText(min=1, max=100, description="Steps", layout=w.Layout(width="10em"))
        self.step_seconds = w.BoundedFloatText(
            min=0.01, max=30, step=0.1, description="s/step", layout=w.Layout(width="10em")
        )
        self._apply_kind_defaults()
        # The frontend may change the kind on a comm thread: apply on the loop.
        self.kind.observe(
            lambda _change: self._loop.call_soon_threadsafe(self._apply_kind_defaults), names="value"
        )
        self.start_button = w.Button(description="Start", icon="play", button_style="primary")
        self.start_button.on_click(lambda _button: self._start())

        self.operations_box = w.VBox()
        self.unread_label = w.Label()
        self.mark_read_button = w.Button(description="Mark all read", icon="check")
        self.mark_read_button.on_click(lambda _button: self.run_soon("mark read", self.client.mark_read))
        self.inbox = w.HTML()

        super().__init__(
            [
                header,
                w.HBox([self.kind, self.steps, self.step_seconds, self.start_button]),
                self.operations_box,
                w.HBox([self.unread_label, self.mark_read_button]),
                self.inbox,
            ],
            interval,
        )

    def __repr__(self) -> str:
        # Deterministic: nbval compares the text/plain of displayed widgets.
        return f"<NotificationPanel user={getattr(getattr(self, 'client', None), 'user', None)}>"

    # -- what a caller reads ------------------------------------------------

    def progress_of(self, op_id: str) -> int | None:
        """The operation's progress bar value (0-100), None if not shown."""
        row = self._rows.get(op_id)
        return row.bar.value if row else None

    def state_of(self, op_id: str) -> str | None:
        """The state label of the operation's row, None if not shown."""
        row = self._rows.get(op_id)
        return row.state.value if row else None

    def cancel_button(self, op_id: str) -> w.Button:
        """The operation's Cancel button (KeyError if it has no row yet)."""
        return self._rows[op_id].cancel

    # -- actions -------------------------------------------------------------

    def _apply_kind_defaults(self) -> None:
        params = KINDS[self.kind.value].params
        self.steps.value = params["steps"].default
        self.step_seconds.value = params["step_seconds"].default

    def _start(self) -> None:
        # Read the values now, on click, not when the loop gets to it.
        kind, steps, step_seconds = self.kind.value, self.steps.value, self.step_seconds.value
        self.run_soon("start", lambda: self.client.start(kind, steps=steps, step_seconds=step_seconds))

    def _cancel(self, op_id: str) -> None:
        self.run_soon("cancel", lambda: self.client.cancel(op_id))

    def close(self) -> None:
        """Stop updating and close the panel's widgets (the client stays open)."""
        super().close()
        # Rows beyond max_operations are not children just now.
        for row in self._rows.values():
            for child in [*_descendants(row.box), row.box]:
                child.close()

    # -- the live part ---------------------------------------------------------

    async def _setup(self) -> None:
        client = self.client
        if not client.connected and client.hello is None:
            await client.connect()

    def render(self) -> None:
        client = self.client
        hello = client.hello or {}
        # Each trait is set once per render: a value that flips back and forth
        # within one render would still cost two messages to the browser.
        session = f" (session {html.escape(hello['session'][:6])})" if hello.get("session") else ""
        self.user_label.value = f"<b>{html.escape(client.user or '?')}</b>{session}"
        self.instance_label.value = client.instance or "-"
        self.transport_label.value = client.sio.transport() if client.connected else "-"
        self.connection_label.value = connection_state(client)

        for op_id, op in client.operations.items():
            if op_id not in self._rows:
                self._rows[op_id] = _OperationRow(op_id, self._cancel)
                # Operations from hello carry "created"; later ones are newer.
                self._first_seen[op_id] = op.get("created") or time.time() * 1000
            self._rows[op_id].show(op)
        newest = sorted(self._rows, key=self._first_seen.__getitem__, reverse=True)[: self.max_operations]
        boxes = tuple(self._rows[op_id].box for op_id in newest)
        if boxes != self.operations_box.children:
            self.operations_box.children = boxes

        self.unread_label.value = f"{client.unread if client.unread is not None else '?'} unread"
        # The inbox lists what a person is notified of (protocol.is_inbox_item);
        # progress shows on the operation's row above.
        self.inbox.value = self._inbox_html(client.inbox_items[-self.last :])

    @staticmethod
    def _inbox_html(notes: Sequence[Mapping[str, Any]]) -> str:
        if not notes:
            return "<i>no notifications yet</i>"
        items = "".join(
            f"<li><code>{clock(n.get('ts'))}</code> {html.escape(n['type'].removeprefix('operation.'))}"
            f" · {html.escape(n.get('kind', ''))} {html.escape(n['operation'][:8])}"
            f" · {html.escape(n.get('message', ''))}</li>"
            for n in reversed(notes)
        )
        return f'<ul style="margin:0;padding-left:1.2em">{items}</ul>'
